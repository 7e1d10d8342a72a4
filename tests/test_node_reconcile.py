"""sync/2.1.0 sessions between real engines, keep-alives off gossip, the material-change rule and
the periods (market-v2.md §1.3, §8.4, revision 2.1: reconciliation)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.node.policy import (
    DEMAND_STEP, NETWORK_NOISE, demand_step, demand_threshold, material_change, periods,
    rounds_to_reach, session_start,
)
from neuroshard_p2p.node.reconcile import ReconSession
from neuroshard_p2p.wire.frames import encode_sync
from neuroshard_p2p.wire.messages import SyncResponse
from tests.conftest import make_key

T0 = 1_700_000_000.0
CONFIG = MarketConfig(capacity_timeout_s=60.0)


def engine(i: int, **kwargs: object) -> PeerEngine:
    return PeerEngine(CONFIG, make_key(i), **kwargs)  # type: ignore[arg-type]


def run_session(dialer: PeerEngine, listener: PeerEngine, now: float) -> tuple[ReconSession, ReconSession, int]:
    """Both sides of one session, frames passed as bytes until both are done; returns bytes sent."""
    a, b = ReconSession(dialer, dialer=True), ReconSession(listener, dialer=False)
    in_flight = [(b, f) for f in a.start(now)]
    sent = sum(len(f) for _, f in in_flight)
    while in_flight:
        to, frame = in_flight.pop(0)
        other = a if to is b else b
        replies = to.receive(frame, now)
        sent += sum(len(r) for r in replies)
        in_flight += [(other, r) for r in replies]
    # Nothing in flight: a side that is done has closed its writing side; the other reads EOF.
    assert a.done or b.done
    for side in (a, b):
        side.on_peer_closed()
    return a, b, sent


def test_a_session_leaves_both_views_equal_and_costs_the_difference() -> None:
    nodes = [engine(i, tokens_per_second=100 + i) for i in range(1, 61)]
    first, second = engine(100), engine(101)
    for i, node in enumerate(nodes):
        (data,) = node.poll_announcements(T0)
        if i < 50:
            assert first.on_gossip(data, T0 + 1).accepted
        if i >= 10:
            assert second.on_gossip(data, T0 + 1).accepted
    a, b, sent = run_session(first, second, T0 + 2)
    assert first.view.digest() == second.view.digest()
    assert first.view.message_count == second.view.message_count == 60
    assert (a.sent_messages, b.sent_messages) == (10, 10)
    assert a.counts.accepted == b.counts.accepted == 10
    # Equal views now. The dialer's opening lists the ids issued in the last T/3 = 20 s (the 60
    # announcements: 60 × 34 B and 2 IdList bounds, §8.4 "since" opening); nothing comes back.
    _, _, again = run_session(first, second, T0 + 3)
    assert again == 2_092
    # Once they are older than that window: one 36-byte fingerprint.
    _, _, later = run_session(first, second, T0 + 21)
    assert later == 36
    assert sent < 20 * 700  # the twenty messages and a few ranges, not the sixty


def test_keep_alives_leave_gossip_and_arrive_by_reconciliation() -> None:
    node = engine(1, tokens_per_second=1000, min_price_nano=5, quiet_keep_alives=True)
    peer = engine(2)
    (first,) = node.poll_announcements(T0)            # the first announcement gossips
    assert peer.on_gossip(first, T0).accepted
    assert node.poll_announcements(T0 + 20.0) == []   # the keep-alive does not
    assert node.keep_alives_unpublished == 1
    assert node.view.message_count == 2
    run_session(peer, node, T0 + 21)
    assert peer.view.digest() == node.view.digest()
    newest = peer.view.current(node.signer)
    assert newest is not None and newest.issued_at_ms > int(T0 * 1000)


def test_only_material_changes_gossip_at_once() -> None:
    node = engine(1, tokens_per_second=1000, min_price_nano=5, quiet_keep_alives=True)
    assert len(node.poll_announcements(T0)) == 1
    node.set_demand(100_000, 100)
    assert len(node.poll_announcements(T0 + 1)) == 1           # demand appears: new step
    node.set_demand(102_000, 102)                               # +2 %: same step
    assert node.poll_announcements(T0 + 2) == []
    assert node.view.current(node.signer).pending_tokens == 100_000
    node.set_demand(120_000, 102)                               # +20 %: next step
    assert len(node.poll_announcements(T0 + 3)) == 1
    node.set_offer(900, 5)                                      # capacity: always
    assert len(node.poll_announcements(T0 + 4)) == 1
    node.set_demand(0, 0)
    assert len(node.poll_announcements(T0 + 5)) == 1


def test_demand_steps_are_12_5_percent_wide() -> None:
    assert demand_step(0) == 0 and demand_step(1) == 1
    # Same step ⇒ within 12.5 %: 1.125·x is always on a higher step than x.
    for x in list(range(1, 20_000)) + [10**k + 7 for k in range(5, 18)]:
        assert demand_step(-(-9 * x // 8)) > demand_step(x)
    assert demand_step(2**62) - demand_step(1) <= 372  # 62 octaves × 6 steps: few steps at all
    assert not material_change((1, 2, 100, 10), (1, 2, 105, 10))
    assert material_change((1, 2, 100, 10), (1, 3, 100, 10))


def test_periods_follow_the_network_size() -> None:
    assert [rounds_to_reach(n) for n in (100, 1_000, 10_000, 100_000)] == [9, 12, 14, 16]
    keep_alive, reconcile = periods(60.0, 10_000)
    assert keep_alive == 20.0 and round(reconcile, 3) == round(40 / 2 / 14, 3)
    assert periods(60.0, 2) == (20.0, 40 / 2 / rounds_to_reach(2))
    assert periods(6.0, 100_000) == (2.0, 1.0)  # never below 1 s


def test_a_session_due_during_a_gossip_burst_waits_for_a_lull_at_most_until_its_deadline() -> None:
    # Due at 100 s, may wait until 102.5 s (one period), waits for 1 s without new gossip.
    assert session_start(100.0, None, 102.5, 1.0) == 100.0        # no gossip yet: at once
    assert session_start(100.0, 98.9, 102.5, 1.0) == 100.0        # quiet for 1.1 s: at once
    assert session_start(100.0, 99.5, 102.5, 1.0) == 100.5        # 0.5 s ago: in 0.5 s
    assert session_start(100.5, 100.2, 102.5, 1.0) == 101.2       # more came meanwhile
    assert session_start(102.0, 101.9, 102.5, 1.0) == 102.5       # never after the deadline
    assert session_start(102.5, 102.4, 102.5, 1.0) == 102.5       # at the deadline: now
    assert session_start(100.0, 99.9, 102.5, 0.0) == 100.0        # 0: never waits


def test_a_bad_item_ends_the_session_with_a_fault() -> None:
    honest = engine(1, tokens_per_second=10)
    (data,) = honest.poll_announcements(T0)
    victim = ReconSession(engine(2), dialer=True)
    victim.start(T0)
    bad = bytearray(data)
    bad[-1] ^= 1
    assert victim.receive(encode_sync(SyncResponse((bytes(bad), data))), T0) == []
    assert victim.fault == "bad_signature" and victim.done
    assert victim.counts.accepted == 0 and victim.counts.unchecked == 1


def test_the_demand_step_widens_with_the_network() -> None:
    """On a network of 100 counted signers each queueing 100,000 tokens / 100 requests, the
    step is ε × total / √100 = 0.04 × 10,000,000 / 10 = 40,000 tokens (40 requests): a +20 %
    move rides the next keep-alive, a +50 % one gossips at once."""
    node = engine(1, quiet_keep_alives=True)
    node.set_demand(100_000, 100)
    assert len(node.poll_announcements(T0)) == 1
    for i in range(2, 101):
        peer = engine(i)
        peer.set_demand(100_000, 100)
        (data,) = peer.poll_announcements(T0)
        assert node.on_gossip(data, T0).accepted
    assert node._network_demand(T0 + 1) == (10_000_000, 10_000, 100)
    node.set_demand(120_000, 120)                    # +20 %: above 12.5 %, below the step
    assert node.poll_announcements(T0 + 1) == []
    node.set_demand(150_000, 150)                    # +50 %: above it
    assert len(node.poll_announcements(T0 + 2)) == 1
    node.set_demand(0, 0)                            # silent: always
    assert len(node.poll_announcements(T0 + 3)) == 1


@given(demands=st.lists(st.integers(0, 10**6), min_size=1, max_size=200),
       idle=st.integers(0, 600))
@settings(max_examples=200, deadline=None)
def test_independent_step_errors_stay_within_the_stated_fraction(demands, idle) -> None:
    """The bound of §1.3 / Appendix D 30: with every node's step s_i = demand_threshold(p_i,
    D, n), √(Σ s_i²) ≤ D × √(ε² + 0.125² / n_eff), n_eff = D² / Σ p_i² — so independent
    moves, each under its step, leave the total's error with SD ≤ that fraction of D."""
    total = sum(demands)
    if total == 0:
        return
    nodes = len(demands) + idle                      # counted signers: gateways and others
    spread = math.sqrt(sum(demand_threshold(p, total, nodes) ** 2 for p in demands))
    n_eff = total ** 2 / sum(p * p for p in demands)
    assert spread <= total * math.sqrt(NETWORK_NOISE ** 2 + DEMAND_STEP ** 2 / n_eff) * (1 + 1e-9)
