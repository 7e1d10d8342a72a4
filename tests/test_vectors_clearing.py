"""Our code against protocols/vectors/v2/clearing.json (revision 2.1: clearing), which
gen_clearing.py builds from the spec's text without importing the project."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import coincurve
import pytest

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import (DEMAND_BUCKET_EDGES_NANO, clearing_price_nano,
                                         demand_bucket)
from neuroshard_p2p.view import MarketView
from neuroshard_p2p.wire import Announcement, WireError, decode_unchecked_time, encode
from neuroshard_p2p.wire.validate import Validator
from neuroshard_p2p.wire.work import work_bits

VECTORS = json.loads((Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "v2"
                      / "clearing.json").read_text())
CLEARING = MarketConfig(curve="clearing")
T0_S = 1_767_225_600.0


def test_bucket_edges_and_buckets() -> None:
    assert list(DEMAND_BUCKET_EDGES_NANO) == VECTORS["edges"]
    for case in VECTORS["buckets"]:
        assert demand_bucket(case["max_price_nano"]) == case["bucket"], case


@pytest.mark.parametrize("case", VECTORS["announcements"], ids=lambda c: c["name"])
def test_announcement_bytes_and_who_accepts_them(case: dict[str, Any]) -> None:
    wire = bytes.fromhex(case["wire"])
    for config, expected in ((CLEARING, case["on_clearing_network"]),
                             (MarketConfig(), case["on_curve_network"])):
        try:
            message = Validator(config).check(wire, T0_S)
        except WireError as error:
            assert error.reason == expected, (config.curve, str(error))
            continue
        assert expected == "accepted", config.curve
        assert message.msg_id.hex() == case["id"] and message.wire == wire
        items = case["items"]
        bids = items[11] if len(items) == 12 else None
        assert message.demand_by_limit == (tuple(bids) if bids is not None else None)
        assert (message.seq, message.tokens_per_second, message.min_price_nano,
                message.pending_tokens, message.pending_requests) == tuple(items[4:9])


@pytest.mark.parametrize("case", VECTORS["counted_bids"], ids=lambda c: c["label"])
def test_counted_bids_in_the_view(case: dict[str, Any]) -> None:
    config = CLEARING.replace(identity_work_bits=case["identity_work_bits"], **case["caps"])
    key = coincurve.PrivateKey(bytes.fromhex(case["signer_key"]))
    signer = bytes.fromhex(case["signer"])
    assert work_bits(signer, case["work_nonce"]) == case["work_bits"]
    message = decode_unchecked_time(encode(Announcement(
        signer, 1_000_000, 1, 0, 0, case["pending_tokens"], case["pending_requests"],
        work_nonce=case["work_nonce"], demand_by_limit=tuple(case["demand_by_limit"])), key))
    view = MarketView(config)
    view.merge_message(message)
    _, bids = view.asks_and_bids_at_ms(1_000_000)
    assert bids == case["counted"]


@pytest.mark.parametrize("case", VECTORS["prices"], ids=lambda c: c["name"])
def test_clearing_prices(case: dict[str, Any]) -> None:
    config = CLEARING.replace(min_price=case["lo"] / 1e9, max_price=case["hi"] / 1e9,
                              target_response_s=case["target_response_ms"] / 1000)
    offers = [tuple(o) for o in case["offers"]]
    assert clearing_price_nano(offers, case["bids"], config) == case["price"], case["note"]


@pytest.mark.parametrize("case", VECTORS["charters"], ids=lambda c: c["name"])
def test_a_clearing_charter_is_a_network_of_its_own(case: dict[str, Any]) -> None:
    base = builtin(case["name"])
    assert base.network_id == case["network_id"]  # unchanged by the revision
    clearing = base.with_params(curve="clearing")
    assert clearing.canonical_bytes.hex() == case["clearing_canonical"]
    assert clearing.network_id == case["clearing_network_id"]
