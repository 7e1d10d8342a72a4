"""The sans-IO `PeerGuard`: exact scores, decay, ban periods and the sync budget, with time as an
argument (node/guard.py)."""

from __future__ import annotations

import pytest

from neuroshard_p2p.node.guard import (
    FAULT_KINDS,
    GOSSIP_REJECT,
    JOB_FRAME,
    SYNC_FRAME,
    SYNC_ITEM,
    SYNC_OVER_BUDGET,
    SYNC_PACE,
    Ban,
    GuardPolicy,
    PeerGuard,
    TokenBuckets,
    RELAY_FRAME,
    RELAY_ITEM,
    RELAY_OVER_BUDGET,
    RelayBudget,
    is_peer_fault,
)


def test_weights_and_the_threshold_are_the_documented_ones() -> None:
    p = GuardPolicy()
    assert dict(p.weights) == {GOSSIP_REJECT: 1.0, SYNC_ITEM: 10.0, SYNC_FRAME: 10.0,
                               SYNC_OVER_BUDGET: 5.0, JOB_FRAME: 10.0, RELAY_ITEM: 10.0,
                               RELAY_FRAME: 10.0, RELAY_OVER_BUDGET: 5.0}
    assert (p.half_life_s, p.graylist_threshold, p.ban_s, p.max_ban_s) == (60.0, -19.5, 300.0,
                                                                           86_400.0)
    assert (p.sync_burst, p.sync_refill_s) == (3.0, 10.0)


def test_faults_subtract_their_weight_and_decay_with_a_60_s_half_life() -> None:
    guard = PeerGuard()
    assert guard.fault("p", GOSSIP_REJECT, 100.0) is None
    assert guard.fault("p", SYNC_OVER_BUDGET, 100.0) is None
    assert guard.score("p", 100.0) == -6.0
    assert guard.score("p", 160.0) == -3.0
    assert guard.score("p", 220.0) == -1.5
    assert guard.score("p", 50.0) == -6.0  # never "un-decays" before the last fault
    assert guard.fault("p", SYNC_ITEM, 160.0) is None
    assert guard.score("p", 160.0) == -13.0
    assert guard.score("q", 160.0) == 0.0  # a peer never seen
    assert guard.faults == {GOSSIP_REJECT: 1, SYNC_OVER_BUDGET: 1, SYNC_ITEM: 1, SYNC_FRAME: 0,
                            JOB_FRAME: 0, RELAY_ITEM: 0, RELAY_FRAME: 0, RELAY_OVER_BUDGET: 0}
    assert set(guard.faults) == set(FAULT_KINDS)


def test_twenty_gossip_rejects_at_once_ban_for_300_s_and_the_score_starts_again() -> None:
    guard = PeerGuard()
    for _ in range(19):
        assert guard.fault("p", GOSSIP_REJECT, 10.0) is None
    assert guard.score("p", 10.0) == -19.0
    assert not guard.should_refuse("p", 10.0)
    ban = guard.fault("p", GOSSIP_REJECT, 10.0)
    assert ban == Ban("p", 310.0, 300.0, 0, GOSSIP_REJECT)
    assert guard.should_refuse("p", 10.0) and guard.should_refuse("p", 309.999)
    assert not guard.should_refuse("p", 310.0)
    assert guard.score("p", 10.0) == 0.0
    assert (guard.bans, guard.graylisted(10.0), guard.graylisted(310.0)) == (1, 1, 0)
    # faults while banned are counted, not scored, and ban nobody again
    assert guard.fault("p", SYNC_ITEM, 20.0) is None
    assert guard.score("p", 20.0) == 0.0
    assert guard.faults[SYNC_ITEM] == 1
    standing = guard.standing("p", 20.0)
    assert (standing.score, standing.banned_until, standing.bans, standing.faults) == (
        0.0, 310.0, 1, 21)


def test_a_burst_counts_whole_but_faults_spread_over_minutes_do_not_add_up() -> None:
    guard = PeerGuard()
    # 20 rejects over 2 s (one every 0.1 s): decay takes 0.23 points off, the 20th still bans
    for i in range(19):
        assert guard.fault("p", GOSSIP_REJECT, i * 0.1) is None
    assert guard.fault("p", GOSSIP_REJECT, 1.9) is not None
    # one reject a minute never bans: the score tends to -1 / (1 - 1/2) = -2
    for minute in range(100):
        assert guard.fault("q", GOSSIP_REJECT, minute * 60.0) is None
    assert guard.score("q", 99 * 60.0) == -2.0  # to the last bit of a float


def test_decay_between_faults_delays_the_ban() -> None:
    guard = PeerGuard()
    # 10 at t=0, then 10 more 60 s later: 5 + 10 = 15, above -20
    for _ in range(10):
        guard.fault("p", GOSSIP_REJECT, 0.0)
    for _ in range(10):
        assert guard.fault("p", GOSSIP_REJECT, 60.0) is None
    assert guard.score("p", 60.0) == -15.0
    for _ in range(4):
        assert guard.fault("p", GOSSIP_REJECT, 60.0) is None
    assert guard.fault("p", GOSSIP_REJECT, 60.0) == Ban("p", 360.0, 300.0, 0, GOSSIP_REJECT)


def test_two_forged_sync_answers_or_four_over_budget_requests_ban() -> None:
    guard = PeerGuard()
    assert guard.fault("a", SYNC_ITEM, 0.0) is None
    assert guard.fault("a", SYNC_ITEM, 0.0) == Ban("a", 300.0, 300.0, 0, SYNC_ITEM)
    for _ in range(3):
        assert guard.fault("b", SYNC_OVER_BUDGET, 0.0) is None
    assert guard.fault("b", SYNC_OVER_BUDGET, 0.0) == Ban("b", 300.0, 300.0, 0, SYNC_OVER_BUDGET)
    assert guard.fault("c", JOB_FRAME, 0.0) is None
    assert guard.fault("c", SYNC_FRAME, 0.0) == Ban("c", 300.0, 300.0, 0, SYNC_FRAME)
    assert guard.graylisted(0.0) == 3


def test_repeat_bans_double_up_to_a_day_and_a_day_of_good_behaviour_forgives() -> None:
    guard = PeerGuard()
    t = 0.0
    periods = []
    for _ in range(11):
        guard.fault("p", SYNC_ITEM, t)
        ban = guard.fault("p", SYNC_ITEM, t)
        assert ban is not None
        periods.append(ban.period_s)
        assert guard.expire(ban.until) == ["p"]
        t = ban.until + 1.0
    assert periods == [300.0, 600.0, 1200.0, 2400.0, 4800.0, 9600.0, 19200.0, 38400.0, 76800.0,
                       86400.0, 86400.0]
    # a ban more than a day after the last one ended starts at 300 s again
    t += 86_400.0
    guard.fault("p", SYNC_ITEM, t)
    again = guard.fault("p", SYNC_ITEM, t)
    assert again is not None and (again.period_s, again.repeat) == (300.0, 0)
    assert guard.standing("p", t).bans == 12


def test_expire_lets_banned_peers_back_in_and_names_the_next_deadline() -> None:
    guard = PeerGuard()
    for peer, at in (("a", 0.0), ("b", 50.0)):
        guard.fault(peer, SYNC_ITEM, at)
        guard.fault(peer, SYNC_ITEM, at)
    assert guard.next_deadline() == 300.0
    assert guard.expire(299.0) == []
    assert guard.expire(300.0) == ["a"]
    assert guard.next_deadline() == 350.0
    assert not guard.should_refuse("a", 300.0) and guard.should_refuse("b", 300.0)
    assert guard.expire(400.0) == ["b"]
    assert guard.next_deadline() is None
    assert [s.peer for s in guard.standings(400.0)] == ["a", "b"]


def test_the_sync_budget_is_3_at_once_then_one_per_10_s_and_a_refusal_takes_no_token() -> None:
    guard = PeerGuard()
    assert [guard.take_sync("p", 0.0) for _ in range(4)] == [True, True, True, False]
    assert not guard.take_sync("p", 9.999)
    assert guard.take_sync("p", 10.0)       # refused requests took nothing: one token at 10 s
    assert not guard.take_sync("p", 10.0)
    assert [guard.take_sync("p", 45.0) for _ in range(4)] == [True, True, True, False]  # capped at 3
    assert guard.take_sync("q", 45.0)       # per peer
    # in a window of 5 s a looping peer gets exactly 3 answers
    answered = sum(guard.take_sync("r", 100.0 + i * 0.01) for i in range(500))
    assert answered == 3


def test_an_honest_dialers_pace_never_exceeds_the_listeners_budget_despite_jitter() -> None:
    pace = TokenBuckets(*SYNC_PACE)
    budget = TokenBuckets(3.0, 10.0)
    t, jitter = 0.0, [0.0, 2.5, 0.0, 3.0, 0.1, 2.9]  # up to 3 s of varying one-way delay
    sent = 0
    for step in range(2000):
        t += 0.25  # the dialer tries every 0.25 s (a sync_interval far below any sane setting)
        if pace.take("listener", t):
            arrival = t + jitter[sent % len(jitter)]
            assert budget.take("dialer", arrival), f"request {sent} at {arrival} over budget"
            sent += 1
    assert sent == 2 + int(500 / 12)  # burst, then one per 12 s


def test_which_rejects_count_against_the_peer_it_came_from() -> None:
    for reason in ("bad_signature", "malformed", "implausible", "wrong_signer", "not_member"):
        assert is_peer_fault(reason, authored=False) and is_peer_fault(reason, authored=True)
    for reason in ("future", "rate_limited"):
        assert not is_peer_fault(reason, authored=False) and is_peer_fault(reason, authored=True)
    assert not is_peer_fault("internal_error", authored=True)


def test_memory_is_bounded_and_running_bans_are_kept_longest() -> None:
    guard = PeerGuard(GuardPolicy(max_peers_tracked=3))
    guard.fault("banned", SYNC_ITEM, 0.0)
    guard.fault("banned", SYNC_ITEM, 0.0)
    for i in range(5):
        guard.fault(f"p{i}", GOSSIP_REJECT, 1.0 + i)
    assert guard.tracked == 3
    assert guard.should_refuse("banned", 10.0)
    # banned first, then the worst score (p4's fault is the most recent, so decayed least)
    assert [s.peer for s in guard.standings(10.0)] == ["banned", "p4", "p3"]


def test_a_bad_policy_is_refused() -> None:
    with pytest.raises(ValueError):
        GuardPolicy(graylist_threshold=0.0)
    with pytest.raises(ValueError):
        GuardPolicy(half_life_s=0.0)
    with pytest.raises(ValueError):
        GuardPolicy(weights={GOSSIP_REJECT: 0.0})


def test_the_relay_budget_takes_a_frame_and_its_items_only_when_both_buckets_hold_them() -> None:
    """market-v2 §8.5 rule 2: frames 32, 20 a second; items 16,384, 4,096 a second."""
    budget = RelayBudget()
    assert all(budget.take(1, 10.0) for _ in range(32))
    assert not budget.take(1, 10.0)              # the 33rd frame at once
    assert not budget.take(1, 10.04)             # 0.8 of a frame refilled
    assert budget.take(1, 10.05)                 # one whole frame
    fresh = RelayBudget()
    assert fresh.take(16_384, 0.0) and not fresh.take(1, 0.0)
    assert not fresh.take(4_097, 1.0)            # a refused frame takes nothing ...
    assert fresh.take(4_096, 1.0)                # ... so exactly one second's refill is there
    back = RelayBudget()
    assert back.take(16_384, 100.0)
    assert not back.take(1, 50.0)                # the clock set back: no refill, and ...
    assert back.take(4_096, 51.0)                # ... it refills from the new time
    guard = PeerGuard()
    assert guard.take_relay("p", 16_384, 0.0) and not guard.take_relay("p", 1, 0.0)
    assert guard.take_relay("q", 1, 0.0)         # per peer
