"""The merged market view: CRDT laws, convergence, expiry, eviction, and the incremental price
against a naive recomputation written here from the rules in the view's docstrings.

Messages are real signed announcements (signed once per module: signing costs ~50 µs each).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import defaultdict
from functools import lru_cache
from typing import Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import assert_sans_io, make_key
from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import smoothed_price, target_price_nano
from neuroshard_p2p.view import (
    BUCKETS,
    CountedOffer,
    MarketView,
    MergeOutcome,
    TickPrice,
    bucket_of,
    default_max_per_signer,
)
from neuroshard_p2p.wire import Announcement

# A small market so that retention, expiry and the window are all exercised by ~60 messages:
# horizon = 4 ticks + 2 s settle + 10 s timeout + 30 s clock slack = 46 s.
CONFIG = MarketConfig(window_ticks=4, tick_s=1.0, settle_delay_s=2.0, capacity_timeout_s=10.0,
                      max_node_tokens_per_s=50_000, max_tokens_per_minute=1_000_000)
KEEP = 4
TIMEOUT_MS = 10_000
HORIZON_MS = 46_000
BASE_S = 1_700_000_000
BASE_MS = BASE_S * 1000
TICKS = range(BASE_S - 3, BASE_S + 100)

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@lru_cache(maxsize=None)
def key(i: int):  # type: ignore[no-untyped-def]
    return make_key(i)


def signer(i: int) -> bytes:
    return wire.public_key_of(key(i))


def announce(i: int, seq: int, at_ms: int, tps: int = 1000, price: int = 0, tokens: int = 0,
             requests: int = 0) -> Announcement:
    """A signed announcement by test key i."""
    return wire.sign(Announcement(signer=signer(i), issued_at_ms=at_ms, seq=seq,
                                  tokens_per_second=tps, min_price_nano=price,
                                  pending_tokens=tokens, pending_requests=requests), key(i))


def _pool() -> tuple[Announcement, ...]:
    """Signed once: 4 signers × 9 seqs 6.5 s apart (history longer than the horizon), two
    equivocations, a seq/time inversion, a withdrawal, an over-the-limit capacity, demand."""
    out: list[Announcement] = []
    for i in range(1, 5):
        for seq in range(1, 10):
            at = BASE_MS + seq * 6_500 + i * 333
            out.append(announce(i, seq, at, tps=100 * i + seq, price=10 * seq,
                                tokens=(seq * 7_000) % 50_000, requests=seq % 4))
    out.append(announce(2, 4, BASE_MS + 4 * 6_500 + 2 * 333, tps=9_999))   # equivocates seq 4
    out.append(announce(3, 8, BASE_MS + 8 * 6_500 + 1_000, tps=1))         # equivocates seq 8
    out.append(announce(4, 12, BASE_MS + 20_000, tps=77))                  # high seq, early time
    out.append(announce(1, 10, BASE_MS + 70_000, tps=0, tokens=40_000, requests=2))  # withdrawal
    out.append(announce(5, 1, BASE_MS + 5_000, tps=10_000_000, tokens=5_000_000, requests=1))
    out.append(announce(5, 2, BASE_MS + 30_000, tps=2_000, tokens=0, requests=0))
    return tuple(out)


POOL = _pool()

messages = st.lists(st.sampled_from(POOL), max_size=45)


def new_view(**kwargs: int) -> MarketView:
    return MarketView(CONFIG, max_per_signer=kwargs.pop("max_per_signer", KEEP), **kwargs)


def view_of(msgs: Iterable[Announcement], **kwargs: int) -> MarketView:
    view = new_view(**kwargs)
    for message in msgs:
        view.merge_message(message)
    return view


def ids(msgs: Iterable[Announcement]) -> list[bytes]:
    return sorted(m.msg_id for m in msgs)


# ---------------------------------------------------------------------------------------------
# The naive model: the rules, restated plainly, recomputed from scratch for every question.

def naive_retained(received: Iterable[Announcement], keep: int = KEEP,
                   horizon_ms: int = HORIZON_MS) -> dict[bytes, list[Announcement]]:
    by_signer: dict[bytes, dict[bytes, Announcement]] = defaultdict(dict)
    for m in received:
        by_signer[m.signer][m.msg_id] = m
    out = {}
    for who, held in by_signer.items():
        ordered = sorted(held.values(), key=lambda m: (m.issued_at_ms, m.seq, m.msg_id))
        newest = ordered[-1].issued_at_ms
        out[who] = [m for m in ordered[-keep:] if m.issued_at_ms >= newest - horizon_ms]
    return out


def naive_counted(held: list[Announcement], t_ms: int) -> Announcement | None:
    if len({m.seq for m in held}) < len(held):  # equivocating: counts nothing
        return None
    candidates = [m for m in held if m.issued_at_ms <= t_ms]
    if not candidates:
        return None
    best = max(candidates, key=lambda m: m.seq)
    return best if t_ms < best.issued_at_ms + TIMEOUT_MS else None


def naive_totals(retained: dict[bytes, list[Announcement]], t_ms: int) -> tuple[int, int, int]:
    nodes = supply = demand = 0
    for held in retained.values():
        m = naive_counted(held, t_ms)
        if m is None:
            continue
        capacity = min(m.tokens_per_second, CONFIG.max_node_tokens_per_s)
        nodes += capacity > 0
        supply += capacity
        demand += min(m.pending_tokens, m.pending_requests * CONFIG.max_tokens_per_minute)
    return nodes, supply, demand


def naive_price(retained: dict[bytes, list[Announcement]], tick: int) -> TickPrice:
    targets, state = [], (0, 0)
    for j in range(tick - CONFIG.window_ticks + 1, tick + 1):
        _, supply, demand = naive_totals(retained, j * 1000 - 2000)
        targets.append(target_price_nano(supply, demand, CONFIG))
        state = (supply, demand)
    return TickPrice(tick, smoothed_price(targets, CONFIG), targets[-1], state[0], state[1])


def instants(msgs: Iterable[Announcement]) -> list[int]:
    """Every instant where something can change, and its neighbours."""
    out = {BASE_MS - 1}
    for m in msgs:
        for t in (m.issued_at_ms, m.issued_at_ms + TIMEOUT_MS):
            out.update((t - 1, t, t + 1))
    return sorted(out)


def fingerprint(view: MarketView) -> tuple[bytes, list[bytes], list[TickPrice]]:
    return view.digest(), ids(view.all_messages()), [view.price_at_tick(k) for k in TICKS]


# ---------------------------------------------------------------------------------------------
# Exact values

def test_one_announcement_exact_totals_and_price() -> None:
    view = new_view()
    a = announce(1, 1, BASE_MS, tps=1000, price=5, tokens=60_000, requests=3)
    assert view.merge_message(a) is MergeOutcome.NEW
    version = view.version
    assert view.merge_message(a) is MergeOutcome.DUPLICATE
    assert view.version == version
    stats = view.stats_at_ms(BASE_MS)
    assert (stats.available_nodes, stats.counted_nodes, stats.supply_tokens_per_sec,
            stats.demand_tokens_waiting, stats.pending_requests, stats.utilization) == (
        1, 1, 1000, 60_000, 3, 1.0)
    assert view.stats_at(BASE_S + 0.5) == dataclasses.replace(stats, at_ms=BASE_MS + 500)
    assert view.offers_at_ms(BASE_MS) == [CountedOffer(signer(1), 1000, 5, BASE_MS)]
    # Tick k is evaluated at k s − 2 s: the announcement first counts at tick BASE_S + 2.
    # u = (60,000 / 60) / 1000 = 1 → target = 0.01 + 0.99 · σ(0) = 0.505 NEURO.
    # Empty market: 0.01 + 0.99 · σ(−1) = 0.056951614… NEURO (steepness 3).
    assert view.price_at_tick(BASE_S + 1) == TickPrice(BASE_S + 1, 56_951_614, 56_951_614, 0, 0)
    # W = 4: fold from the oldest target, 56951614 ×3 then 505000000 with smoothing 0.7.
    assert view.price_at_tick(BASE_S + 2) == TickPrice(BASE_S + 2, 191_366_130, 505_000_000,
                                                       1000, 60_000)
    assert view.price_at(BASE_S + 2.9).price_nano == 191_366_130


def test_expiry_exactly_at_issued_plus_timeout_on_every_replica() -> None:
    last = announce(1, 2, BASE_MS + 3_000, tps=700)
    others = [announce(2, 1, BASE_MS + 1_000, tps=50), announce(3, 1, BASE_MS + 12_000, tps=9)]
    history = [announce(1, 1, BASE_MS, tps=600), last, *others]
    replicas = [view_of(history), view_of(reversed(history)),
                view_of(history[2:] + history[:2])]
    for view in replicas:
        assert view.counted_at_ms(signer(1), BASE_MS + 2_999).tokens_per_second == 600
        assert view.counted_at_ms(signer(1), BASE_MS + 3_000) == last
        assert view.counted_at_ms(signer(1), BASE_MS + 12_999) == last
        assert view.counted_at_ms(signer(1), BASE_MS + 13_000) is None
        assert view.supply_at_ms(BASE_MS + 12_999) == 700 + 9
        assert view.supply_at_ms(BASE_MS + 13_000) == 9
        assert [o.signer for o in view.offers_at_ms(BASE_MS + 13_000)] == [signer(3)]
    assert len({v.digest() for v in replicas}) == 1


def test_superseded_announcement_stops_counting_when_the_next_is_issued() -> None:
    view = view_of([announce(1, 1, BASE_MS, tps=100, tokens=10, requests=1),
                    announce(1, 2, BASE_MS + 4_000, tps=0, tokens=0, requests=0)])
    assert view.stats_at_ms(BASE_MS + 3_999).supply_tokens_per_sec == 100
    after = view.stats_at_ms(BASE_MS + 4_000)
    # A withdrawal counts (the node is there) but offers nothing.
    assert (after.available_nodes, after.counted_nodes, after.supply_tokens_per_sec) == (0, 1, 0)
    assert view.offers_at_ms(BASE_MS + 4_000) == []


def test_equivocation_marks_the_signer_everywhere_and_stops_it_counting() -> None:
    first = announce(2, 5, BASE_MS, tps=100)
    second = announce(2, 5, BASE_MS + 1, tps=200)
    honest = announce(1, 1, BASE_MS, tps=1)
    view = view_of([honest, first])
    assert view.supply_at_ms(BASE_MS + 10) == 101
    assert view.merge_message(second) is MergeOutcome.EQUIVOCATION
    assert view.equivocators() == [signer(2)] and view.is_equivocating(signer(2))
    assert view.supply_at_ms(BASE_MS + 10) == 1
    assert view.counted_at_ms(signer(2), BASE_MS + 10) is None
    # Lower message id wins the register.
    assert view.current(signer(2)) == min((first, second), key=lambda m: m.msg_id)
    # Both messages are evidence: the mark travels through merge and through bucket sync.
    other = view_of([first])
    other.merge(view)
    assert other.equivocators() == [signer(2)]
    assert other.digest() == view.digest()
    synced = new_view()
    synced.merge_messages(view.messages_in_buckets([bucket_of(signer(2))]))
    assert synced.is_equivocating(signer(2))


def test_retention_keeps_the_newest_within_the_horizon() -> None:
    view = new_view()
    msgs = [announce(1, seq, BASE_MS + seq * 20_000) for seq in range(1, 5)]
    outcomes = [view.merge_message(m) for m in msgs]
    assert outcomes == [MergeOutcome.NEW, MergeOutcome.NEWER, MergeOutcome.NEWER,
                        MergeOutcome.NEWER]
    # Newest at +80 s; the horizon (46 s) keeps +40 s … +80 s.
    assert view.messages_of(signer(1)) == tuple(msgs[1:])
    version = view.version
    assert view.merge_message(msgs[0]) is MergeOutcome.STALE
    assert view.version == version
    filler = announce(1, 9, BASE_MS + 50_000)
    assert view.merge_message(filler) is MergeOutcome.OLDER
    assert view.version > version
    assert view.messages_of(signer(1)) == (msgs[1], filler, msgs[2], msgs[3])
    # The per-signer cap (4) drops the oldest, even within the horizon.
    assert view.merge_message(announce(1, 10, BASE_MS + 81_000)) is MergeOutcome.NEWER
    assert view.messages_of(signer(1))[0] == filler
    assert view.message_count == 4


def test_horizon_boundary_is_inclusive() -> None:
    newest = announce(1, 3, BASE_MS + HORIZON_MS + 1)
    at_edge = announce(1, 2, BASE_MS + 1)      # exactly horizon before the newest: kept
    beyond = announce(1, 1, BASE_MS)           # 1 ms further: dropped
    view = view_of([beyond, at_edge, newest])
    assert view.messages_of(signer(1)) == (at_edge, newest)
    assert view.merge_message(beyond) is MergeOutcome.STALE


@pytest.mark.parametrize("bad", [
    "not an announcement",
    None,
    Announcement(signer(1), BASE_MS, 1, 1, 0, 0, 0),  # no msg_id: never signed
    dataclasses.replace(POOL[0], seq=-1),
    dataclasses.replace(POOL[0], tokens_per_second=1.5),
    dataclasses.replace(POOL[0], signer=b"\x02" * 5),
    dataclasses.replace(POOL[0], msg_id=b"short"),
    # Beyond the wire's unsigned 64-bit range: would spill into the next 128-bit lane of the
    # step sums (pending_requests into counted_nodes) instead of counting.
    dataclasses.replace(POOL[0], pending_requests=2**64),
    dataclasses.replace(POOL[0], pending_tokens=2**200, pending_requests=2**200),
])
def test_malformed_input_is_refused_not_raised(bad: object) -> None:
    view = view_of(POOL[:3])
    before = fingerprint(view)
    assert view.merge_message(bad) is MergeOutcome.INVALID  # type: ignore[arg-type]
    assert fingerprint(view) == before


def test_config_not_in_whole_milliseconds_is_refused() -> None:
    with pytest.raises(ValueError, match="tick_s must be a whole number of milliseconds"):
        MarketView(CONFIG.replace(tick_s=0.0005))
    with pytest.raises(ValueError, match="max_per_signer"):
        MarketView(CONFIG, max_per_signer=1)
    assert default_max_per_signer(MarketConfig()) == 42


def test_plausibility_caps_a_signers_contribution() -> None:
    view = view_of([announce(5, 1, BASE_MS, tps=10_000_000, tokens=5_000_000, requests=1)])
    stats = view.stats_at_ms(BASE_MS)
    assert stats.supply_tokens_per_sec == 50_000          # max_node_tokens_per_s
    assert stats.demand_tokens_waiting == 1_000_000       # 1 request × max_tokens_per_minute
    assert view.offers_at_ms(BASE_MS)[0].tokens_per_second == 50_000


def test_digests_identify_the_view_and_its_buckets() -> None:
    empty = new_view()
    a, b = view_of(POOL[:20]), view_of(reversed(POOL[:20]))
    assert a.digest() == b.digest() and a.bucket_digests() == b.bucket_digests()
    assert a.digest() != empty.digest()
    c = view_of(POOL[:19])
    assert c.digest() != a.digest()
    differing = [i for i in range(BUCKETS) if a.bucket_digests()[i] != c.bucket_digests()[i]]
    assert differing == [bucket_of(POOL[19].signer)]
    sent = a.messages_in_buckets(differing)
    assert {m.signer for m in sent} <= {s for s in a.signers() if bucket_of(s) == differing[0]}
    c.merge_messages(sent)
    assert c.digest() == a.digest()
    assert a.messages_in_buckets([99, -1]) == []
    assert len(a.bucket_digests()) == BUCKETS == wire.SYNC_BUCKETS
    assert bucket_of(POOL[0].signer) == hashlib.sha256(POOL[0].signer).digest()[0] >> 4


def test_eviction_drops_the_longest_silent_signer_with_a_deterministic_tie_break() -> None:
    view = new_view(max_signers=2)
    view.merge_message(announce(1, 1, BASE_MS + 5_000))
    view.merge_message(announce(2, 1, BASE_MS + 1_000))
    # Signer 3 is newer than signer 2 (the longest silent): 2 goes.
    assert view.merge_message(announce(3, 1, BASE_MS + 2_000)) is MergeOutcome.NEW
    assert view.signers() == sorted([signer(1), signer(3)]) and view.evictions == 1
    # A newcomer more silent than everyone held is not taken in.
    assert view.merge_message(announce(4, 1, BASE_MS)) is MergeOutcome.EVICTED
    assert len(view) == 2
    # Equal silence: the smaller public key is evicted first.
    for first, second in ((1, 2), (2, 1)):
        tie = new_view(max_signers=1)
        tie.merge_message(announce(first, 1, BASE_MS))
        outcome = tie.merge_message(announce(second, 1, BASE_MS))
        assert tie.signers() == [max(signer(1), signer(2))]
        assert outcome is (MergeOutcome.NEW if signer(second) > signer(first)
                           else MergeOutcome.EVICTED)


def test_forgetting_every_signer_leaves_nothing_behind() -> None:
    """Memory: every structure the view keeps per announcement (step-sum deltas, prefix sums,
    digests, the silence order) shrinks back to empty; nothing grows with the view's history."""
    view = view_of(POOL)
    prices = [view.price_at_tick(k) for k in TICKS]
    assert view.message_count == 18 and len(view._steps) > 10
    assert view.forget_silent_before(BASE_MS + 10**9) == 5
    empty = new_view()
    assert (len(view), view.message_count, len(view._steps), len(view._steps._blocks),
            len(view._silence)) == (0, 0, 0, 0, 0)
    assert view.digest() == empty.digest()
    assert [view.price_at_tick(k) for k in TICKS] == [empty.price_at_tick(k) for k in TICKS] \
        != prices
    assert len(view._steps._keys) == 0  # the prefix cache was rebuilt from the empty sums


def test_forget_silent_before_drops_dead_signers_only() -> None:
    view = view_of([announce(1, 1, BASE_MS), announce(2, 1, BASE_MS + 10_000)])
    assert view.forget_silent_before(BASE_MS + 1) == 1
    assert view.signers() == [signer(2)] and view.supply_at_ms(BASE_MS + 1) == 0
    assert view.digest() == view_of([announce(2, 1, BASE_MS + 10_000)]).digest()


# ---------------------------------------------------------------------------------------------
# Laws

def test_joining_a_view_whose_batch_inserts_then_appends_for_one_signer() -> None:
    """Found by the property below (5 December): joining two views merges the other's messages
    as one batch; a message inserted out of order left its signer's segments stale until the
    batch's end, and a newer message of the same signer in that batch still took the append
    shortcut, which reads them: the joined view held the right messages and digest but counted
    no supply (0 against 207 tokens/s) at the ticks after."""
    order = [POOL[i] for i in (0, 0, 0, 13, 0, 0, 14, 15, 0, 0, 0, 0, 0, 0, 12, 36)]
    expected = fingerprint(view_of(order))
    left, right = view_of(order[:4]), view_of(order[4:])
    left.merge(right)
    assert fingerprint(left) == expected
    assert left.price_at_tick(1_700_000_050).supply == 207


@SETTINGS
@given(msgs=messages, data=st.data())
def test_merge_order_and_grouping_do_not_change_the_view(msgs: list[Announcement],
                                                         data: st.DataObject) -> None:
    reference = view_of(msgs)
    assert ids(reference.all_messages()) == ids(m for held in naive_retained(msgs).values()
                                                for m in held)
    expected = fingerprint(reference)

    # Any order of single messages.
    shuffled = data.draw(st.permutations(msgs), label="order")
    assert fingerprint(view_of(shuffled)) == expected

    # Any grouping: split into views, then join them along a random tree.
    cuts = sorted(data.draw(st.lists(st.integers(0, len(shuffled)), max_size=4), label="cuts"))
    bounds = [0, *cuts, len(shuffled)]
    views = [view_of(shuffled[a:b]) for a, b in zip(bounds, bounds[1:])]
    while len(views) > 1:
        i = data.draw(st.integers(0, len(views) - 2), label="join at")
        left, right = views[i], views.pop(i + 1)
        if data.draw(st.booleans(), label="swap"):
            right.merge(left)
            views[i] = right
        else:
            left.merge(right)
    assert fingerprint(views[0]) == expected

    # Idempotent: merging a view into itself or into a copy of itself changes nothing.
    assert reference.merge(reference) == 0
    again = view_of(msgs)
    assert again.merge(reference) == 0
    assert fingerprint(again) == expected


@SETTINGS
@given(msgs=messages, data=st.data())
def test_merge_is_commutative_and_associative_on_views(msgs: list[Announcement],
                                                       data: st.DataObject) -> None:
    def part() -> list[Announcement]:
        return data.draw(st.lists(st.sampled_from(msgs), max_size=len(msgs)), label="part") \
            if msgs else []

    a, b, c = part(), part(), part()

    def joined(*groups: list[Announcement]) -> MarketView:
        first, *rest = [view_of(g) for g in groups]
        for other in rest:
            first.merge(other)
        return first

    ab, ba = joined(a, b), joined(b, a)
    assert fingerprint(ab) == fingerprint(ba) == fingerprint(view_of(a + b))
    left = joined(a, b)
    left.merge(view_of(c))
    right_inner = joined(b, c)
    right = view_of(a)
    right.merge(right_inner)
    assert fingerprint(left) == fingerprint(right) == fingerprint(view_of(a + b + c))


@SETTINGS
@given(msgs=messages, data=st.data())
def test_replicas_converge_after_anti_entropy(msgs: list[Announcement],
                                              data: st.DataObject) -> None:
    """k replicas each hear a random interleaving with duplicates and drops; bucket sync (the
    wire protocol's digests → differing buckets → their messages) repairs them."""
    k = data.draw(st.integers(2, 4), label="replicas")
    replicas = [new_view() for _ in range(k)]
    delivered: list[Announcement] = []
    for message in msgs:
        for replica in replicas:
            copies = data.draw(st.integers(0, 2), label="copies")  # 0 = dropped
            for _ in range(copies):
                replica.merge_message(message)
                delivered.append(message)
    # Deliveries to different replicas interleave arbitrarily; the union is what counts.
    order = data.draw(st.permutations(range(k)), label="sync order")
    for _ in range(2):
        for i in order:
            for j in range(k):
                if i == j:
                    continue
                a, b = replicas[i], replicas[j]
                mine, theirs = a.bucket_digests(), b.bucket_digests()
                differing = [n for n in range(BUCKETS) if mine[n] != theirs[n]]
                b.merge_messages(a.messages_in_buckets(differing))
                a.merge_messages(b.messages_in_buckets(differing))
    target = fingerprint(view_of(delivered))
    for replica in replicas:
        assert fingerprint(replica) == target


@SETTINGS
@given(msgs=messages, data=st.data())
def test_incremental_totals_and_price_equal_a_naive_recomputation(
        msgs: list[Announcement], data: st.DataObject) -> None:
    """Interleave merges with questions, so every cache is read, then invalidated by a merge."""
    view = new_view()
    received: list[Announcement] = []
    probe_ticks = st.sampled_from(list(TICKS))
    for message in msgs:
        view.merge_message(message)
        received.append(message)
        if data.draw(st.booleans(), label="ask now"):
            retained = naive_retained(received)
            tick = data.draw(probe_ticks, label="tick")
            assert view.price_at_tick(tick) == naive_price(retained, tick)
            t = data.draw(st.sampled_from(instants(received)), label="instant")
            stats = view.stats_at_ms(t)
            assert (stats.available_nodes, stats.supply_tokens_per_sec,
                    stats.demand_tokens_waiting) == naive_totals(retained, t)
    retained = naive_retained(received)
    for tick in TICKS:
        assert view.price_at_tick(tick) == naive_price(retained, tick)
    for t in instants(received):
        stats = view.stats_at_ms(t)
        assert (stats.available_nodes, stats.supply_tokens_per_sec,
                stats.demand_tokens_waiting) == naive_totals(retained, t)
        for who, held in retained.items():
            assert view.counted_at_ms(who, t) == naive_counted(held, t)


cached_announce = lru_cache(maxsize=None)(announce)


@st.composite
def live_streams(draw: st.DrawFn) -> list[Announcement]:
    """What a peer mostly hears: each signer's announcements in the order it issued them (the
    view's fast path for a newer message), with gaps around the timeout and the horizon, repeated
    and changing weights, and now and then a message out of order, an equal seq (equivocation)
    or an equal timestamp, which leave the fast path."""
    out: list[Announcement] = []
    for i in range(1, draw(st.integers(1, 3)) + 1):
        at, seq = BASE_MS + i * 111, 0
        for _ in range(draw(st.integers(1, 12))):
            at += draw(st.sampled_from([0, 1, 700, 6_500, 9_999, 10_000, 10_001, 36_000, 46_000,
                                        46_001]))
            seq += draw(st.sampled_from([1, 1, 1, 3, 0]))
            tps = draw(st.sampled_from([0, 1_000, 1_000, 2_500]))
            tokens = draw(st.sampled_from([0, 0, 40_000]))
            out.append(cached_announce(i, seq, at, tps=tps, tokens=tokens,
                                       requests=1 if tokens else 0))
    out.sort(key=lambda m: m.issued_at_ms)
    for _ in range(draw(st.integers(0, 2))):  # a few late arrivals
        if len(out) > 1:
            j = draw(st.integers(0, len(out) - 2))
            out[j], out[j + 1] = out[j + 1], out[j]
    return out


@SETTINGS
@given(msgs=live_streams())
def test_merging_in_issue_order_equals_a_naive_recomputation(msgs: list[Announcement]) -> None:
    """The in-order fast path keeps the same segments, totals and price as the general rule."""
    view = new_view()
    received: list[Announcement] = []
    for message in msgs:
        view.merge_message(message)
        received.append(message)
        for register in view._registers.values():
            assert register.segments == register.segments_for(TIMEOUT_MS, view._weigh)
    retained = naive_retained(received)
    assert {who: list(view.messages_of(who)) for who in view.signers()} == retained
    last_tick = max(m.issued_at_ms for m in msgs) // 1000 + 15
    for tick in range(BASE_S - 3, last_tick):
        assert view.price_at_tick(tick) == naive_price(retained, tick)
    for t in instants(received):
        stats = view.stats_at_ms(t)
        assert (stats.available_nodes, stats.supply_tokens_per_sec,
                stats.demand_tokens_waiting) == naive_totals(retained, t)
    assert view.digest() == view_of(reversed(msgs)).digest()


@SETTINGS
@given(msgs=messages, data=st.data())
def test_a_signer_stops_counting_at_its_last_issue_plus_timeout_on_every_replica(
        msgs: list[Announcement], data: st.DataObject) -> None:
    replicas = [view_of(msgs), view_of(data.draw(st.permutations(msgs), label="order"))]
    for who, held in naive_retained(msgs).items():
        if len({m.seq for m in held}) < len(held):
            continue
        last = max(held, key=lambda m: m.seq)
        if last.issued_at_ms != max(m.issued_at_ms for m in held):
            continue  # a seq/time inversion: covered by the naive comparison
        stop = last.issued_at_ms + TIMEOUT_MS
        for replica in replicas:
            assert replica.counted_at_ms(who, stop - 1) == last
            assert replica.counted_at_ms(who, stop) is None


@SETTINGS
@given(others=messages, mine_a=st.lists(st.sampled_from([m for m in POOL if m.signer == signer(2)])),
       mine_b=st.lists(st.sampled_from([m for m in POOL if m.signer == signer(2)])))
def test_a_signer_moves_the_totals_only_through_its_own_register(
        others: list[Announcement], mine_a: list[Announcement],
        mine_b: list[Announcement]) -> None:
    """Whatever signer 2 publishes, the totals are the others' totals plus signer 2's one
    counted announcement, capped by the plausibility limits."""
    rest = [m for m in others if m.signer != signer(2)]
    base = view_of(rest)
    for mine in (mine_a, mine_b):
        view = view_of(rest + mine)
        for t in instants(POOL):
            stats, without = view.stats_at_ms(t), base.stats_at_ms(t)
            own = view.counted_at_ms(signer(2), t)
            capacity = min(own.tokens_per_second, CONFIG.max_node_tokens_per_s) if own else 0
            demand = min(own.pending_tokens,
                         own.pending_requests * CONFIG.max_tokens_per_minute) if own else 0
            assert stats.supply_tokens_per_sec == without.supply_tokens_per_sec + capacity
            assert stats.demand_tokens_waiting == without.demand_tokens_waiting + demand
            assert [o for o in view.offers_at_ms(t) if o.signer != signer(2)] == \
                base.offers_at_ms(t)


@SETTINGS
@given(msgs=st.lists(st.sampled_from(POOL), max_size=45), bound=st.integers(1, 4))
def test_the_signer_bound_holds_and_evicts_the_longest_silent(msgs: list[Announcement],
                                                              bound: int) -> None:
    view = new_view(max_signers=bound)
    for message in msgs:
        before = {s: view.messages_of(s)[-1].issued_at_ms for s in view.signers()}
        outcome = view.merge_message(message)
        assert len(view) <= bound and view.message_count <= bound * KEEP
        if message.signer in before:
            continue
        if outcome is MergeOutcome.EVICTED:
            assert message.signer not in view
            assert (message.issued_at_ms, message.signer) < min((at, s) for s, at in before.items())
        elif len(before) == bound:
            gone = set(before) - set(view.signers())
            assert gone == {min(before, key=lambda s: (before[s], s))}


def test_price_at_tick_is_a_pure_function_of_the_view() -> None:
    view = view_of(POOL)
    first = [view.price_at_tick(k) for k in TICKS]
    # Asking in another order (cold cache, then warm) gives the same answers.
    fresh = view_of(POOL)
    assert [fresh.price_at_tick(k) for k in reversed(TICKS)][::-1] == first
    assert first == [naive_price(naive_retained(POOL), k) for k in TICKS]
    assert len({p.price_nano for p in first}) > 5  # the pool really moves the price


@pytest.mark.parametrize("module_name", ["neuroshard_p2p.view.view", "neuroshard_p2p.view.register",
                                         "neuroshard_p2p.view.steps", "neuroshard_p2p.ledger.checks"])
def test_sans_io_modules_read_no_clock_and_do_no_io(module_name: str) -> None:
    """The view and the ledger's receipt checks take `now` as an argument (so every replica
    computes the same thing); their drivers own clocks, threads and files."""
    calls = assert_sans_io(module_name)
    assert calls > 10  # the walk really saw the module's code


def test_digest_without_equals_the_digest_of_the_view_without_those_messages() -> None:
    a1, a2, b1 = announce(1, 1, BASE_MS), announce(1, 2, BASE_MS + 5_000), announce(2, 1, BASE_MS)
    full = view_of([a1, a2, b1])
    assert full.digest_without([]) == full.digest()
    assert full.digest_without([(a2.signer, a2.msg_id)]) == view_of([a1, b1]).digest()
    assert full.digest_without([(a2.signer, a2.msg_id), (b1.signer, b1.msg_id)] * 2) == \
        view_of([a1]).digest()
    # A message the view does not hold changes nothing.
    other = announce(3, 1, BASE_MS)
    assert view_of([a1]).digest_without([(other.signer, other.msg_id)]) == view_of([a1]).digest()


# ---------------------------------------------------------------------------------------------
# Revision 2.1: the reconciliation set the view keeps alongside merges and expiries (§8.4).

view_steps = st.lists(st.one_of(
    st.tuples(st.just("merge"), st.sampled_from(POOL)),
    st.tuples(st.just("expire"), st.integers(0, 90_000)),
    st.tuples(st.just("forget"), st.integers(0, 90_000)),
    st.tuples(st.just("recon"), st.just(0)),
), max_size=60)


@SETTINGS
@given(steps=view_steps, max_signers=st.sampled_from([2, 100]))
def test_recon_set_kept_with_merges_and_expiry_equals_a_fresh_one(steps, max_signers) -> None:
    from neuroshard_p2p.view.recon import ReconSet

    view = new_view(max_signers=max_signers)
    snapshots = []
    for action, arg in steps:
        if action == "merge":
            view.merge_message(arg)
        elif action == "expire":
            view.expire_before(BASE_MS + arg)
        elif action == "forget":
            view.forget_silent_before(BASE_MS + arg)
        else:
            kept = view.recon_set()
            snapshots.append((kept.snapshot(), sorted((m.issued_at_ms, m.msg_id)
                                                      for m in view.all_messages())))
    kept = view.recon_set()
    held = view.all_messages()
    fresh = ReconSet((m.issued_at_ms, m.msg_id) for m in held)
    assert list(kept) == list(fresh)
    n = len(fresh)
    for lo in range(n + 1):
        assert kept.fingerprint_of(lo, n) == fresh.fingerprint_of(lo, n)
        assert kept.fingerprint_of(0, lo) == fresh.fingerprint_of(0, lo)
    assert {m.msg_id: view.wire_of(m.msg_id) for m in held} == {m.msg_id: m.wire for m in held}
    assert all(view.wire_of(m.msg_id) is None for m in POOL if m.msg_id not in {h.msg_id for h in held})
    for snapshot, items in snapshots:  # a session's snapshot does not move with later merges
        assert list(snapshot) == items
        assert snapshot.fingerprint_of(0, len(items)) == ReconSet(items).fingerprint_of(0, len(items))
