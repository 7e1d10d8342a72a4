"""What the simulator shares between its peers changes no peer's outcome (issue 15 item 5).

The simulator gives all its views one `SharedFacts` (per-announcement weights, keys, segments,
steps, smoothed prices) and hands each engine its deliveries in batches (`on_gossip_many`). These
tests hold both to the plain path: same digests, totals, prices and verdicts.
"""

from __future__ import annotations

from functools import lru_cache

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import make_key
from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.view import MarketView, SharedFacts
from neuroshard_p2p.wire import Announcement
from neuroshard_p2p.wire.codec import decode_unchecked_time, encode
from simnet.metrics import figures
from simnet.report import deterministic_view
from simnet.scenario import load
from simnet.sim import SimNetwork

CONFIG = MarketConfig(window_ticks=4, tick_s=1.0, settle_delay_s=2.0, capacity_timeout_s=10.0,
                      max_node_tokens_per_s=50_000, max_tokens_per_minute=1_000_000)
BASE_S = 1_700_000_000
BASE_MS = BASE_S * 1000


@lru_cache(maxsize=None)
def key(i: int):  # type: ignore[no-untyped-def]
    return make_key(100 + i)


def announce_bytes(i: int, seq: int, at_ms: int, tps: int, tokens: int = 0,
                   requests: int = 0) -> bytes:
    return encode(Announcement(signer=wire.public_key_of(key(i)), issued_at_ms=at_ms, seq=seq,
                               tokens_per_second=tps, min_price_nano=0, pending_tokens=tokens,
                               pending_requests=requests), key(i))


@lru_cache(maxsize=None)
def pool_bytes() -> tuple[bytes, ...]:
    """3 signers × 8 seqs 6.5 s apart (longer than the horizon), an equivocation, a
    seq/time inversion and a withdrawal."""
    out = [announce_bytes(i, seq, BASE_MS + seq * 6_500 + i * 333, tps=100 * i + seq,
                          tokens=(seq * 7_000) % 50_000, requests=seq % 3)
           for i in range(1, 4) for seq in range(1, 9)]
    out.append(announce_bytes(2, 4, BASE_MS + 4 * 6_500 + 2 * 333, tps=9_999))
    out.append(announce_bytes(3, 12, BASE_MS + 20_000, tps=77))
    out.append(announce_bytes(1, 9, BASE_MS + 62_000, tps=0, tokens=40_000, requests=2))
    return tuple(out)


@lru_cache(maxsize=None)
def pool() -> tuple[Announcement, ...]:
    return tuple(decode_unchecked_time(data) for data in pool_bytes())  # type: ignore[misc]


def observe(view: MarketView) -> tuple[object, ...]:
    ticks = range(BASE_S - 2, BASE_S + 80)
    return (view.digest(), view.message_count,
            [view.stats_at(t) for t in ticks], [view.price_at(t) for t in ticks],
            {s: [tuple(seg[:3]) for seg in view._registers[s].segments] for s in view.signers()})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.permutations(range(27)), st.permutations(range(27)))
def test_views_sharing_facts_hold_what_a_view_of_its_own_holds(first: list[int],
                                                                 second: list[int]) -> None:
    messages = pool()
    facts = SharedFacts(CONFIG)
    shared_a, shared_b = MarketView(CONFIG, facts=facts), MarketView(CONFIG, facts=facts)
    alone_a, alone_b = MarketView(CONFIG), MarketView(CONFIG)
    for i in first:
        assert shared_a.merge_message(messages[i]) == alone_a.merge_message(messages[i])
    for i in second:  # the facts the first view left behind, in another order
        assert shared_b.merge_message(messages[i]) == alone_b.merge_message(messages[i])
    assert observe(shared_a) == observe(alone_a)
    assert observe(shared_b) == observe(alone_b)


def test_a_batch_of_deliveries_gives_what_one_call_each_gives() -> None:
    datas = list(pool_bytes())
    datas += [datas[0], b"\x00garbage", datas[5][:-3]]   # a duplicate and two bad messages
    now = BASE_S + 70.0
    batch = PeerEngine(CONFIG, make_key(7), announce_interval_s=5.0)
    single = PeerEngine(CONFIG, make_key(7), announce_interval_s=5.0)
    items = [(d, now + i * 0.01, None) for i, d in enumerate(datas)]
    verdicts = batch.on_gossip_many(items)
    assert verdicts == [single.on_gossip(d, t, p) for d, t, p in items]
    assert [v.outcome for v in verdicts[-3:]] == ["ignored", "rejected", "rejected"]
    assert batch.gossip_counts == single.gossip_counts
    assert batch.view.digest() == single.view.digest()


def test_a_run_times_the_calibration_op_during_the_run_and_reports_the_median() -> None:
    net = SimNetwork(load("shock").scaled(12.0), 30, seed=2, progress_every_s=0.0)
    rec = net.run()
    traffic = figures(rec)["traffic"]
    assert traffic["calibration_samples"] == len(net._calibrations) >= 3   # ends + every sample
    low, high = traffic["calibration_op_range_us"]
    assert low <= traffic["calibration_op_us"] <= high
    view = deterministic_view({"figures": figures(rec)})["traffic"]
    assert not {"calibration_op_us", "calibration_op_range_us", "calibration_samples"} & set(view)


def test_every_live_peer_stops_counting_a_crashed_node_at_its_signed_timeout() -> None:
    """`churn` kills a quarter of the peers without withdrawal: every live peer's own view
    (joiners' too) holds each killed signer's last announcement and counts it until, and not
    from, its issued_at + capacity_timeout; the same in one process and in two."""
    rows = []
    for workers in (1, 2):
        rec = SimNetwork(load("churn").scaled(100.0), 40, seed=4, workers=workers).run()
        (kill,) = figures(rec)["churn"]
        rows.append((kill["signed_timeout_pairs"], kill["signed_timeout_exact"]))
    pairs, exact = rows[0]
    assert rows[1] == rows[0]
    assert pairs >= 40 * 5 and exact == pairs


def test_an_observer_sample_runs_in_one_process_by_default() -> None:
    """With few observers the floods, which every process computes, are the work: more
    processes would only add CPU."""
    from simnet.sim import PARALLEL_FROM_PEERS, default_workers
    assert default_workers(10_000, observers=100) == 1
    assert default_workers(100_000, observers=PARALLEL_FROM_PEERS - 1) == 1
    assert default_workers(1_000, observers=None) == default_workers(1_000)
