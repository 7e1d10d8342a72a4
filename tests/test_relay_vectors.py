"""The relay's vectors (protocol v2 §8.5 and §4.1, revision 2.1: relay) against the project's
code: `relay.json` (the receiver's budget, step by step, and whole relay streams, item by item)
and `charter.json`'s relay charters and `transport` entries.

The vectors are data: `protocols/vectors/v2/gen_relay.py` builds them from the text with plain
msgpack and coincurve (it imports nothing of ours). This test reads the JSON only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import coincurve
import msgpack
import pytest

from neuroshard_p2p.charter import OPTIONAL_PARAMS, PARAM_KEYS, Charter
from neuroshard_p2p.node.engine import RELAY_SKIPPED, PeerEngine
from neuroshard_p2p.node.guard import RelayBudget
from neuroshard_p2p.node.relay import relay_protocol
from neuroshard_p2p.wire import WireError
from neuroshard_p2p.wire.membership import Admission

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "v2"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text("utf-8"))
    return data


RELAY = load("relay.json")
CHARTER = load("charter.json")
CHARTERS = {v["name"]: Charter.from_toml(v["toml"]) for v in CHARTER["valid"]}
#: The receiver's own key: no vector item is its own, so any key gives the same outcomes.
RECEIVER = coincurve.PrivateKey(hashlib.sha256(b"neuroshard vector key: relay receiver").digest())


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_the_relay_vectors_cover_what_section_8_5_states() -> None:
    sessions = RELAY["sessions"]
    assert {s["charter"] for s in sessions} == {"relaynet", "guild-relay"}
    reasons = {o for s in sessions for o in s["outcomes"]}
    assert reasons == {"accepted", "duplicate", "seq_regression", "stale", "equivocation",
                       "rate_limited", "future", "bad_signature", "kind", "implausible",
                       "not_member"}
    assert {s["frame_error"] for s in sessions} == {None, "kind", "non_canonical"}
    assert sum(s["reset"] for s in sessions) == 8 and sum(s["faults"] for s in sessions) == 8
    assert [c["name"] for c in RELAY["budget"]["cases"]] == [
        "frame-burst", "items-burst", "frames-short-takes-no-items", "one-second-from-empty",
        "clock-set-back"]
    assert set(RELAY["arrival_dependent"]) == RELAY_SKIPPED == {"future", "rate_limited"}


# --- the budget (§8.5 rule 2) --------------------------------------------------------------------

def test_the_budgets_defaults_are_the_specs_numbers() -> None:
    budget = RelayBudget()
    frames, items = RELAY["budget"]["frames"], RELAY["budget"]["items"]
    assert (budget.frame_burst, budget.frame_rate, budget.item_burst, budget.item_rate) == (
        frames["capacity"], frames["per_s"], items["capacity"], items["per_s"]) == (
        32, 20, 16_384, 4_096)


@pytest.mark.parametrize("case", RELAY["budget"]["cases"], ids=lambda c: c["name"])
def test_relay_budget(case: dict[str, Any]) -> None:
    budget = RelayBudget()
    got = [("read" if budget.take(step["items"], step["at_s"]) else "reset")
           for step in case["steps"]]
    assert got == [step["expect"] for step in case["steps"]]


# --- sessions (§8.5 rules 1 and 3) ---------------------------------------------------------------

def receiver(session: dict[str, Any]) -> PeerEngine:
    """The receiver's engine on the session's charter, holding what it accepted by gossip."""
    charter = CHARTERS[session["charter"]]
    engine = PeerEngine(charter.market, RECEIVER, admission=Admission.of(charter))
    for held in session["held"]:
        verdict = engine.on_gossip(bytes.fromhex(held["wire"]), held["now_ms"] / 1000,
                                   from_peer=held["from_peer"])
        assert verdict.accepted, (held["id"], verdict)
    return engine


@pytest.mark.parametrize("session", RELAY["sessions"], ids=lambda s: s["name"])
def test_relay_session(session: dict[str, Any]) -> None:
    engine = receiver(session)
    now = session["now_ms"] / 1000
    outcomes: list[str] = []
    forward: list[bytes] = []
    fault: str | None = None
    frame_error: str | None = None
    unchecked = accepted = ignored = skipped = 0
    for frame in session["frames"]:
        try:
            counts = engine.on_relay_frame(bytes.fromhex(frame), now)
        except WireError as error:
            frame_error = error.reason
            break
        outcomes += counts.outcomes
        forward += counts.forward
        accepted, ignored, skipped = (accepted + counts.accepted, ignored + counts.ignored,
                                      skipped + counts.skipped)
        if counts.fault is not None:
            fault, unchecked = counts.fault, counts.unchecked
            break
        assert counts.unchecked == 0
    reset = fault is not None or frame_error is not None
    assert (outcomes, [sha(f) for f in forward], reset, int(reset), unchecked, frame_error) == (
        session["outcomes"], session["forward"], session["reset"], session["faults"],
        session["unchecked"], session["frame_error"])
    # The fault is the stopping item's reason; the counts add up to the outcomes before it.
    expected = session["outcomes"]
    stop = expected[-1] if session["reset"] and frame_error is None else None
    assert fault == stop
    before_stop = expected[:-1] if stop is not None else expected
    assert accepted == before_stop.count("accepted")
    assert skipped == sum(o in RELAY["arrival_dependent"] for o in before_stop)
    assert ignored == len(before_stop) - accepted - skipped


@pytest.mark.parametrize("session", [s for s in RELAY["sessions"] if s["forward"]],
                         ids=lambda s: s["name"])
def test_relayed_items_enter_the_seen_cache_as_gossiped_ones(session: dict[str, Any]) -> None:
    """§8.5 rule 3: an accepted item enters the view and the seen-cache exactly as a gossiped one:
    the same bytes again, on a new stream or on the topic, are duplicates."""
    engine = receiver(session)
    now = session["now_ms"] / 1000
    passed_on: list[bytes] = []
    for frame in session["frames"]:
        try:
            counts = engine.on_relay_frame(bytes.fromhex(frame), now)
        except WireError:
            break
        passed_on += counts.forward
        if counts.fault is not None:
            break
    again = engine.on_relay_frame(msgpack.packb([2, 17, passed_on], use_bin_type=True), now)
    assert list(again.outcomes) == ["duplicate"] * len(session["forward"])
    assert (again.accepted, again.ignored, again.forward, again.fault) == (
        0, len(session["forward"]), (), None)
    verdict = engine.on_gossip(passed_on[0], now)
    assert (verdict.outcome, verdict.reason) == ("ignored", "duplicate")


# --- charter.json: transport (§4.1, §4.4) --------------------------------------------------------

def test_param_types_are_the_charters_keys_and_transport_is_the_optional_one() -> None:
    assert sorted(CHARTER["param_types"]) == sorted(PARAM_KEYS)
    assert CHARTER["param_types"]["transport"] == "text"
    assert dict(OPTIONAL_PARAMS) == {"transport": "gossip"}


@pytest.mark.parametrize("vector", CHARTER["valid"], ids=lambda v: v["name"])
def test_a_relay_charter_names_its_relay_stream(vector: dict[str, Any]) -> None:
    charter = CHARTERS[vector["name"]]
    relay = vector["name"] in ("relaynet", "guild-relay")
    assert (charter.market.transport, charter.relay) == (
        ("relay", True) if relay else ("gossip", False))
    assert vector["params"].get("transport") == charter.params.get("transport") == (
        "relay" if relay else None)
    if relay:
        assert relay_protocol(charter.network_id) == vector["streams"]["relay"] == (
            f"/neuroshard/{vector['network_id']}/relay/2.1.0")
        again = Charter.from_toml(charter.to_toml())
        assert (again.market.transport, again.hash) == ("relay", charter.hash)
    else:
        assert "relay" not in vector["streams"]


def test_relay_charters_are_networks_of_their_own() -> None:
    """The relay charters differ from simnet and guild by the one transport pair."""
    for relay, base in (("relaynet", "simnet"), ("guild-relay", "guild")):
        by_name = {v["name"]: v for v in CHARTER["valid"]}
        with_pair = msgpack.unpackb(bytes.fromhex(by_name[relay]["canonical"]))
        without = msgpack.unpackb(bytes.fromhex(by_name[base]["canonical"]))
        assert [k for k, _ in with_pair[4]] == sorted(k for k, _ in with_pair[4])
        assert [p for p in with_pair[4] if p not in without[4]] == [["transport", "relay"]]
        assert with_pair[3] == without[3] and len(with_pair[4]) == len(without[4]) + 1
        assert CHARTERS[relay].network_id != CHARTERS[base].network_id


def test_the_charter_vectors_pin_transport() -> None:
    """The generic charter tests (test_vectors_v2) read every entry; these are the transport
    ones, present with the outcome §4.1 gives."""
    gossip = [(v["name"], v["same_as"]) for v in CHARTER["equivalent"]
              if 'transport = "gossip"' in v["toml"]]
    assert gossip == [("transport-gossip-written", "testnet"),
                      ("transport-gossip-written-guild", "guild")]
    for name, same_as in gossip:
        text = next(v["toml"] for v in CHARTER["equivalent"] if v["name"] == name)
        charter = Charter.from_toml(text)
        assert (charter.market.transport, charter.network_id) == (
            "gossip", CHARTERS[same_as].network_id)
    refused = {v["name"]: (v["reason"], v["key"]) for v in CHARTER["invalid"]
               if "transport" in v["name"]}
    assert refused == {"transport-unknown-value": ("bad_value", "transport"),
                       "transport-not-text": ("wrong_type", "transport"),
                       "transport-relay-capitalised": ("bad_value", "transport"),
                       "transport-relay-window-zero": ("bad_value", "window_ticks"),
                       "transport-bad-before-window": ("bad_value", "transport")}
