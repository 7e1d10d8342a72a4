"""Every vector of protocols/vectors/v2/ against the project's code.

The vectors are data: `protocols/vectors/v2/generate.py` computes them from the text of
protocols/market-v2.md with plain msgpack, coincurve and hashlib (it imports nothing of ours).
This test reads the JSON only and asks the charter, the codec, the validator, the membership
rules, the frames and the view for the same bytes, reasons and integers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import coincurve
import pytest

from neuroshard_p2p.charter import Charter, CharterError
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.view import MarketView
from neuroshard_p2p.wire import WireError, decode_unchecked_time, encode
from neuroshard_p2p.wire.frames import (
    JOB_KINDS,
    PEER_KINDS,
    SYNC_KINDS,
    decode_frame,
    decode_peer_exchange_legacy,
    encode_frame,
)
from neuroshard_p2p.wire.codec import check_freshness
from neuroshard_p2p.wire.membership import Admission, check_announcement, check_job
from neuroshard_p2p.wire.messages import (
    Announcement,
    Credential,
    Job,
    Receipt,
    RevocationList,
)
from neuroshard_p2p.wire.validate import Validator
from neuroshard_p2p.wire.work import weight_shift, work_bits

ROOT = Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "v2"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((ROOT / f"{name}.json").read_text("utf-8"))
    return data


CHARTER = load("charter")
MESSAGES = load("messages")
WORK = load("work")
INVALID = load("invalid")
FRAMES = load("frames")
COUNTING = load("counting")

CHARTERS = {v["name"]: Charter.from_toml(v["toml"]) for v in CHARTER["valid"]}
STREAM_KINDS = {"sync": SYNC_KINDS, "job": JOB_KINDS, "peers/1.1.0": PEER_KINDS}
TYPES = {"announcement": Announcement, "job": Job, "receipt": Receipt, "credential": Credential,
         "revocation_list": RevocationList}


def test_the_generator_reproduces_every_file() -> None:
    """The files are what the spec's own reading gives today (generate.py --check)."""
    result = subprocess.run([sys.executable, str(ROOT / "generate.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# -- charter (§4.1) ------------------------------------------------------------------------------

@pytest.mark.parametrize("vector", CHARTER["valid"], ids=lambda v: v["name"])
def test_charter_canonical_bytes_hash_and_names(vector: dict[str, Any]) -> None:
    charter = Charter.from_toml(vector["toml"])
    assert charter.canonical_bytes.hex() == vector["canonical"]
    assert charter.hash.hex() == vector["hash"]
    assert charter.network_id == vector["network_id"]
    assert f"/neuroshard/{charter.network_id}/market/2" == vector["topic"]
    assert Charter.from_toml(charter.to_toml()).hash == charter.hash


@pytest.mark.parametrize("vector", CHARTER["equivalent"], ids=lambda v: v.get("note", "")[:40])
def test_charter_texts_that_hash_the_same(vector: dict[str, Any]) -> None:
    charter = Charter.from_toml(vector["toml"])
    assert (charter.hash.hex(), charter.network_id) == (vector["hash"], vector["network_id"])


@pytest.mark.parametrize("vector", CHARTER["invalid"], ids=lambda v: v.get("note", "")[:50])
def test_charter_refusals_name_the_rule_and_the_key(vector: dict[str, Any]) -> None:
    with pytest.raises(CharterError) as refused:
        Charter.from_toml(vector["toml"])
    assert (refused.value.reason, refused.value.key) == (vector["reason"], vector["key"])


@pytest.mark.parametrize("vector", CHARTER["node_market"], ids=lambda v: v["name"])
def test_a_node_config_may_repeat_but_never_change_a_charter_value(vector: dict[str, Any]) -> None:
    charter = CHARTERS[vector["charter"]]
    expect = vector["expect"]
    if expect.get("accept"):
        charter.check_local(vector["market"])
        return
    with pytest.raises(CharterError) as refused:
        charter.check_local(vector["market"])
    assert (refused.value.reason, refused.value.key) == (expect["refuse"], expect["key"])
    if "charter_value" in expect:
        error: Any = refused.value
        assert (error.charter_value, error.configured) == (expect["charter_value"],
                                                          expect["configured"])


# -- signed messages (§5) --------------------------------------------------------------------------

def _fields(kind: str, fields: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in fields.items():
        if name in ("credential", "network", "member", "provider", "gateway"):
            out[name] = bytes.fromhex(value)
        elif name == "revoked":
            out[name] = tuple((bytes.fromhex(m), int(t)) for m, t in value)
        else:
            out[name] = int(value) if isinstance(value, str) and name != "request_id" \
                and name not in ("user", "prompt") else value
    return out


@pytest.mark.parametrize("vector", MESSAGES["vectors"], ids=lambda v: v["name"])
def test_message_encodes_to_the_published_bytes_and_back(vector: dict[str, Any]) -> None:
    key = coincurve.PrivateKey(bytes.fromhex(vector["private_key"]))
    signer = bytes.fromhex(vector["signer"])
    assert key.public_key.format(compressed=True) == signer
    assert peer_id_of(signer) == vector["peer_id"]
    message = TYPES[vector["kind"]](signer=signer, **_fields(vector["kind"], vector["fields"]))
    wire = encode(message, key)
    assert wire.hex() == vector["wire"]
    decoded = decode_unchecked_time(wire)
    assert decoded == message
    assert decoded.msg_id.hex() == vector["id"] and len(wire) == vector["size"]
    assert decoded.signature.hex() == vector["signature"]
    if "work_bits" in vector:
        assert work_bits(signer, int(vector["fields"]["work_nonce"])) == vector["work_bits"]


@pytest.mark.parametrize("vector", WORK["vectors"] + WORK["ground"], ids=lambda v: v["label"])
def test_work_bits(vector: dict[str, Any]) -> None:
    assert work_bits(bytes.fromhex(vector["signer"]), int(vector["nonce"])) == vector["work_bits"]


@pytest.mark.parametrize("vector", WORK["shifts"], ids=str)
def test_work_shifts(vector: dict[str, Any]) -> None:
    shift = weight_shift(vector["work_bits"], vector["identity_work_bits"])
    assert (shift, 50_000 >> shift) == (vector["shift"], vector["c_of_50000"])


# -- validation (§6) -------------------------------------------------------------------------------

def _outcome(vector: dict[str, Any]) -> tuple[str, str]:
    charter = CHARTERS[vector["charter"]]
    admission = Admission.of(charter)
    wire = bytes.fromhex(vector["wire"])
    now = vector["now_ms"] / 1000
    try:
        if vector["path"] == "job":
            job = decode_unchecked_time(wire)
            assert isinstance(job, Job)
            check_job(job, admission)
        elif vector["path"] == "decode":  # W1–W13, W10 knowing the charter's policy
            message = decode_unchecked_time(wire)
            if not isinstance(message, (Credential, RevocationList)):  # W13: kinds 1–3
                check_freshness(message.issued_at_ms, now)
            if isinstance(message, Job):
                check_job(message, admission)
            elif isinstance(message, Announcement) and admission is None:
                check_announcement(message, admission)
        else:
            validator = Validator(charter.market, admission=admission)
            from_peer = vector.get("from_peer") if vector["path"] == "gossip" else None
            validator.check(wire, now, from_peer=from_peer)
    except WireError as error:
        return error.reason, error.action
    return "accepted", "accept"


@pytest.mark.parametrize("vector", INVALID["vectors"], ids=lambda v: v["name"])
def test_invalid_message_is_refused_for_its_reason(vector: dict[str, Any]) -> None:
    assert _outcome(vector) == (vector["reason"], vector["action"])


@pytest.mark.parametrize("vector", INVALID["accepted"], ids=lambda v: v["name"])
def test_boundary_message_is_accepted(vector: dict[str, Any]) -> None:
    assert _outcome(vector)[0] == vector["expect"]


# -- frames (§8.2) ---------------------------------------------------------------------------------

@pytest.mark.parametrize("vector", FRAMES["valid"], ids=lambda v: v["name"])
def test_valid_frame_decodes_and_encodes_to_the_same_bytes(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["bytes"])
    if vector["stream"] == "peers/1.0.0":
        peers = decode_peer_exchange_legacy(data)
        assert [[p, a] for p, a in peers] == vector["fields"][0]
        return
    frame = decode_frame(data, STREAM_KINDS[vector["stream"]])
    assert encode_frame(frame) == data


@pytest.mark.parametrize("vector", FRAMES["invalid"], ids=lambda v: v["name"])
def test_invalid_frame_is_refused_for_its_reason(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["bytes"])
    with pytest.raises(WireError) as refused:
        if vector["stream"] == "peers/1.0.0":
            decode_peer_exchange_legacy(data)
        else:
            decode_frame(data, STREAM_KINDS[vector["stream"]])
    assert (refused.value.reason, refused.value.action) == (vector["reason"], vector["action"])


@pytest.mark.parametrize("vector", FRAMES["view_digests"], ids=lambda v: v["name"])
def test_view_digests(vector: dict[str, Any]) -> None:
    view = MarketView(CHARTERS["simnet"].market)
    by_name = {v["name"]: v["wire"] for v in MESSAGES["vectors"]}
    for name in vector["announcements"]:
        message = decode_unchecked_time(bytes.fromhex(by_name[name]))
        assert isinstance(message, Announcement)
        view.merge_message(message)
    for name in vector["revocation_lists"]:
        message = decode_unchecked_time(bytes.fromhex(by_name[name]))
        assert isinstance(message, RevocationList)
        view.merge_revocations(message)
    assert [d.hex() for d in view.bucket_digests()] == vector["bucket_digests"]
    assert view.revocations_digest().hex() == vector["revocations_digest"]
    assert view.digest().hex() == vector["digest"]


# -- counting (§7.1) -------------------------------------------------------------------------------

def _scenario_view(scenario: dict[str, Any]) -> MarketView:
    charter = CHARTERS[scenario["charter"]]
    assert charter.market.identity_work_bits == int(scenario["identity_work_bits"])
    validator = Validator(charter.market, admission=Admission.of(charter))
    view = MarketView(charter.market)
    for entry in scenario["announcements"]:
        message = validator.check(bytes.fromhex(entry["wire"]), entry["issued_at_ms"] / 1000,
                                  history=True)
        assert isinstance(message, Announcement) and message.msg_id.hex() == entry["id"]
        view.merge_message(message)
    for entry in scenario["revocation_lists"]:
        message = decode_unchecked_time(bytes.fromhex(entry["wire"]))
        assert isinstance(message, RevocationList)
        view.merge_revocations(message)
    return view


@pytest.mark.parametrize("scenario", COUNTING["scenarios"], ids=lambda s: s["name"])
def test_counting_per_signer_and_totals(scenario: dict[str, Any]) -> None:
    view = _scenario_view(scenario)
    for signer, from_ms in scenario["revoked_from"].items():
        assert view.revoked_from(bytes.fromhex(signer)) == from_ms
    for instant in scenario["instants"]:
        t = instant["at_ms"]
        offers = {o.signer: o.tokens_per_second for o in view.offers_at_ms(t)}
        for row in instant["signers"]:
            signer = bytes.fromhex(row["signer"])
            got = view.contribution_at_ms(signer, t)
            if not row["counts"]:
                assert got is None, row["label"]
                continue
            assert got == (row["c"], row["d"], row["r"]), (t, row["label"])
            assert offers.get(signer, 0) == row["offer_capacity"], (t, row["label"])
        stats = view.stats_at_ms(t)
        assert (stats.supply_tokens_per_sec, stats.demand_tokens_waiting, stats.pending_requests,
                stats.available_nodes) == (instant["supply"], instant["demand"],
                                           instant["requests"], instant["available_nodes"]), t


@pytest.mark.parametrize("scenario", COUNTING["scenarios"], ids=lambda s: s["name"])
def test_counting_ticks(scenario: dict[str, Any]) -> None:
    view = _scenario_view(scenario)
    for row in scenario["ticks"]:
        tick = view.price_at_tick(row["tick"])
        assert (view.evaluation_ms(row["tick"]), tick.supply, tick.demand, tick.target_nano,
                tick.price_nano) == (row["evaluated_at_ms"], row["supply"], row["demand"],
                                     row["target_nano"], row["price_nano"]), row["tick"]


@pytest.mark.parametrize("vector", COUNTING["max_age"], ids=lambda v: str(v["clock_s"]))
def test_the_max_age_drop(vector: dict[str, Any]) -> None:
    view = MarketView(CHARTERS["simnet"].market)
    for held in vector["held"]:
        message = decode_unchecked_time(bytes.fromhex(held["wire"]))
        assert isinstance(message, Announcement)
        view.merge_message(message)
    view.expire_before(vector["clock_ms"] - 300_000)
    kept = sorted(m.msg_id.hex() for m in view.all_messages())
    assert kept == sorted(vector["kept"])
