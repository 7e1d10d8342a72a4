"""The 10,000-entry tables that hold a penalty, exceeded on purpose by the identities an attacker
can make for free (node/bounded.py).

A provider refuses a gateway that does not settle (`Payers`), a gateway bans a provider that
lies (`Reputation`), and every node bans a peer that sends bad bytes (`PeerGuard`). Each table is
bounded at 10,000 and forgets the least recently seen first. Before node/bounded.py, 10,000 fresh
identities passing through lifted a refusal or a provider ban (the guard already spared its
bans); the attack here is exactly that, on all three tables at the shipped bounds, and what it
achieves is measured.
"""

from __future__ import annotations

from collections import OrderedDict

import coincurve
import pytest

from neuroshard_p2p.node.bounded import forget_beyond
from neuroshard_p2p.node.guard import SYNC_ITEM, GuardPolicy, PeerGuard, TokenBuckets
from neuroshard_p2p.node.job_records import NO_SETTLEMENT, Payers, PayerSettings
from neuroshard_p2p.node.reputation import NO_RESULT, ReputationSettings, Reputation

T0 = 1_000_000.0
#: The shipped bounds (the attack uses them, not a small stand-in).
BOUND = 10_000


def gateway(i: int) -> bytes:
    """A distinct 33-byte gateway key (the table keys on the signer's key bytes)."""
    return coincurve.PrivateKey.from_int(i + 1).public_key.format()


def refused_gateway(payers: Payers, gw: bytes, at: float) -> None:
    """`gw` leaves three jobs unpaid: refused from `at` + 2 for 600 s."""
    assert [payers.on_outcome(gw, NO_SETTLEMENT, 100, at + i) for i in range(3)] == [
        False, False, True]


def test_the_shipped_bounds_are_10_000() -> None:
    assert PayerSettings().max_gateways == ReputationSettings().max_providers == BOUND
    assert GuardPolicy().max_peers_tracked == BOUND


def test_gateways_passing_through_do_not_lift_a_refusal() -> None:
    payers = Payers()
    cheat = gateway(0)
    refused_gateway(payers, cheat, T0)
    assert payers.refusal(cheat, T0 + 3) is not None
    # The attack: 10,000 fresh gateways, each served one job (they need not pay: one unpaid job
    # is no refusal), all after the cheat, so the cheat is the least recently seen.
    for i in range(1, BOUND + 1):
        assert not payers.on_outcome(gateway(i), NO_SETTLEMENT, 1, T0 + 3 + i * 1e-3)
    assert len(payers) == BOUND
    words = payers.refusal(cheat, T0 + 20)
    assert words is not None and "no jobs from it for 582 s more" in words
    # the gateways that went were the oldest unrefused ones: the first newcomer, not the last
    assert payers.record(gateway(1)) is None and payers.record(gateway(BOUND)) is not None
    # Once the refusal has run out, the cheat is forgotten like anyone else.
    assert not payers.on_outcome(gateway(BOUND + 1), "settled", 1, T0 + 700)
    assert payers.record(cheat) is None and len(payers) == BOUND


def test_a_table_full_of_refusals_stays_bounded_and_lets_the_oldest_go() -> None:
    payers = Payers(PayerSettings(max_gateways=3))
    for i in range(3):
        refused_gateway(payers, gateway(i), T0 + 10 * i)
    refused_gateway(payers, gateway(3), T0 + 30)
    assert len(payers) == 3
    assert payers.record(gateway(0)) is None
    assert all(payers.refusal(gateway(i), T0 + 33) is not None for i in (1, 2, 3))


def test_providers_passing_through_do_not_lift_a_ban() -> None:
    reputation = Reputation()
    liar = "liar"
    for strike in range(3):  # three fault episodes: banned for 600 s
        reputation.on_fault(liar, NO_RESULT, "", T0 + 400 * strike)
    banned_at = T0 + 800
    record = reputation.get(liar)
    assert record is not None and record.banned_until == banned_at + 600
    # The attack: 10,000 fresh providers that each get one job from this gateway.
    for i in range(BOUND):
        reputation.on_sent(f"p{i}")
    reputation.on_settled(f"p{BOUND}", 0.0, banned_at + 1)
    assert len(reputation) == BOUND
    kept = reputation.get(liar)
    assert kept is record and kept.banned_until == banned_at + 600
    assert reputation.get("p0") is None and reputation.get("p1") is None
    assert reputation.get(f"p{BOUND}") is not None
    # The ban over, the liar's record goes the usual way.
    reputation.on_settled("late", 0.0, banned_at + 601)
    assert reputation.get(liar) is None and len(reputation) == BOUND


def test_peers_passing_through_do_not_lift_a_ban() -> None:
    guard = PeerGuard()
    guard.fault("bad", SYNC_ITEM, T0)
    ban = guard.fault("bad", SYNC_ITEM, T0)
    assert ban is not None and guard.should_refuse("bad", T0 + 1)
    for i in range(BOUND):
        guard.fault(f"p{i}", SYNC_ITEM, T0 + 1)
    assert guard.tracked == BOUND
    assert guard.should_refuse("bad", T0 + 2)
    assert ban.until > T0 + 2


def test_a_rate_limiters_keys_are_bounded() -> None:
    buckets = TokenBuckets(burst=2.0, refill_s=10.0, max_keys=BOUND)
    assert buckets.take("k", T0) and buckets.take("k", T0) and not buckets.take("k", T0)
    for i in range(BOUND + 5):
        buckets.take(i, T0)
    assert len(buckets) == BOUND
    # a key let go comes back with a full bucket: what a fresh identity gets anyway
    assert buckets.tokens("k", T0) == 2.0


def test_forget_beyond_spares_only_while_there_is_someone_else() -> None:
    table = OrderedDict((k, k in "bd") for k in "abcde")
    assert forget_beyond(table, 3, lambda spared: spared) == ["a", "c"]
    assert list(table) == ["b", "d", "e"]
    assert forget_beyond(table, 1, lambda spared: spared) == ["e", "b"]
    assert list(table) == ["d"]
    assert forget_beyond(table, 1, lambda spared: spared) == []
    with pytest.raises(KeyError):
        table["a"]
