"""recon.json (§8.4, revision 2.1: reconciliation) against the project's codec and algorithm."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from neuroshard_p2p.view.recon import ReconSet, bound_between, fingerprint, reconcile_pair
from neuroshard_p2p.wire.errors import WireError
from neuroshard_p2p.wire.recon import decode_reconcile, encode_reconcile

DOC = json.loads((Path(__file__).parent.parent / "protocols/vectors/v2/recon.json").read_text("utf-8"))


def item_of(n: int, spread: int) -> tuple[int, bytes]:
    msg_id = hashlib.sha256(b"neuroshard recon vector item" + n.to_bytes(4, "big")).digest()
    return (int.from_bytes(msg_id[:4], "big") % spread, msg_id)


@pytest.mark.parametrize("case", DOC["fingerprints"])
def test_fingerprints(case):
    ids = [bytes.fromhex(i) for i in case["ids"]]
    assert fingerprint(len(ids), sum(int.from_bytes(i, "big") for i in ids)).hex() == case["fingerprint"]


@pytest.mark.parametrize("case", DOC["bounds"])
def test_bounds(case):
    below = (case["below"][0], bytes.fromhex(case["below"][1]))
    above = (case["above"][0], bytes.fromhex(case["above"][1]))
    assert bound_between(below, above) == (case["bound"][0], bytes.fromhex(case["bound"][1]))


@pytest.mark.parametrize("case", DOC["valid"], ids=lambda c: c["note"])
def test_valid_frames(case):
    data = bytes.fromhex(case["hex"])
    assert encode_reconcile(decode_reconcile(data)) == data


@pytest.mark.parametrize("case", DOC["invalid"], ids=lambda c: c["note"])
def test_invalid_frames(case):
    with pytest.raises(WireError) as caught:
        decode_reconcile(bytes.fromhex(case["hex"]))
    assert caught.value.reason == case["reason"]


@pytest.mark.parametrize("case", DOC["sessions"], ids=lambda c: c["note"])
def test_sessions(case):
    a = ReconSet(item_of(n, case["spread"]) for n in range(*case["a"]))
    b = ReconSet(item_of(n, case["spread"]) for n in range(*case["b"]))
    result = reconcile_pair(a, b, since_ms=case.get("since"))
    assert [f.hex() for f in result.frames] == case["frames"]
    assert sorted(x.hex() for x in result.a_lacks) == case["a_lacks"]
    assert sorted(x.hex() for x in result.b_lacks) == case["b_lacks"]
