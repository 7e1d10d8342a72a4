"""Revision 2.1 (sync/2.1.0) at 1,000 / 10,000 / 100,000 peers: a sampled model, not the full sim.

    PYTHONPATH=. python -m simnet.recon_model            # all figures of docs/scaling.md §2.1

1. **Reach of a keep-alive.** Keep-alives no longer gossip: a node signs one into its view and its
   peers learn it by reconciliation. Every node opens a session with one random connected peer
   every R seconds (R = `node.policy.periods`), each at its own phase; a session is push-pull (both
   end with the union, §8.4) and takes `SESSION_S`. The model follows one keep-alive from its
   signer and records when 99.9 % and 100 % of the peers hold it, against the 40 s left before
   the previous keep-alive expires (capacity timeout 60 s − keep-alive period 20 s). Sampled:
   every peer is simulated (at 100,000 too), each with `DEGREE` random connected peers.
2. **Market CPU per node at 10,000 peers**, steady and busy (every 4th node a gateway whose queue
   changes every second): per-stream, per-message and per-gossip-copy costs × the counts of the
   model; the reconciliation itself is timed here, in this run, with the real code: the upkeep
   of the view's incremental ReconSet (a second of received keep-alives added, as many expired,
   one snapshot per session) and one exchange between two views built from the reach curve (an
   item `age` s old is held by each peer with the probability that part 1 gives, independently),
   opened with the recent items by id (§8.4), and each keep-alive received over a stream, through
   the engine's sync path (`item_cost`). The code as merged (a ReconSet rebuilt per session,
   the fingerprint opening) is timed on the same views for reference.
3. **Gossip copies received per peer per second** at 100 / 1,000 / 10,000: only material changes
   gossip (`node.policy.material_change`, with the network-relative step), counted on simulated
   gateway queues, with the 12.5 % per-node rule alone for reference.

The costs are measured (`COST_*`: the simulator's one cost model, simnet/costs.py, fitted on
real nodes; docs/scaling.md); `--stream-ms X` changes the per-stream one, the run prints the
largest per-stream cost that keeps the busy total within 10 % of a core, and its totals with the
fitted costs scaled to this machine's speed (its calibration op against the fit's).
"""

from __future__ import annotations

import bisect
import hashlib
import math
import random
import sys
import time
from typing import Callable

from neuroshard_p2p.node.policy import material_change, periods, recent_window_s
from neuroshard_p2p.view.recon import PairResult, ReconSet, reconcile_pair
from simnet.calibrate import sample_speed
from simnet.costs import CALIBRATION_OP_US, COSTS

CAPACITY_TIMEOUT_S = 60.0
SESSION_S = 0.2          # a session's duration (a few round trips on a WAN)
DEGREE = 20              # connected peers per node (gossip mesh D = 6 plus the rest)
#: Costs (seconds of CPU), all measured: the simulator's one cost model (simnet/costs.py: a
#: node's base, per gossip RPC read, per sync stream end; fitted on real nodes; every gossip
#: copy priced as its own RPC, an upper bound: busy gateways' changes come apart in time). Per
#: announcement received over a stream, `item_cost` times the real path in the run. The fitted
#: stream cost already carries the few announcements a session held at ≤ 100 nodes (~5 per
#: end, ~0.3 ms): counting them again here errs high.
COST_GOSSIP_COPY = COSTS.rpc_s
COST_BASE = COSTS.base
COST_STREAM = COSTS.stream_s
COPIES_PER_MESSAGE = 5.0  # gossipsub D = 6: copies of each message per peer (docs/scaling.md)
KEEP_ALIVE_MEAN_S = 18.0  # 20 s with up to 20 % jitter
RETAINED_PER_SIGNER = 7   # announcements a view keeps of an honest signer (view.py)


def reach(n: int, seed: int = 1) -> tuple[float, float, float, list[float]]:
    """(R, seconds to 99.9 %, seconds to 100 %, when each informed peer got it) for one
    keep-alive in a network of n peers."""
    rnd = random.Random(seed)
    _, period = periods(CAPACITY_TIMEOUT_S, n)
    neighbours = [[rnd.randrange(n) for _ in range(DEGREE)] for _ in range(n)]
    phase = [rnd.random() * period for _ in range(n)]
    order = sorted(range(n), key=phase.__getitem__)
    informed = bytearray(n)
    origin = rnd.randrange(n)
    informed[origin] = 1
    times = [0.0]
    target = math.ceil(0.999 * n)
    t999 = None
    for round_ in range(1000):
        # A session that starts in this round completes SESSION_S later; a message learnt in a
        # round is passed on from the next round (conservative: no chaining within a round).
        newly = []
        for i in order:
            j = neighbours[i][rnd.randrange(DEGREE)]
            if informed[i] != informed[j]:
                newly.append((phase[i] + SESSION_S, j if informed[i] else i))
        for at, k in newly:
            if not informed[k]:
                informed[k] = 1
                times.append(round_ * period + at)
                if len(times) >= target and t999 is None:
                    t999 = times[-1]
                if len(times) == n:
                    return period, t999 or 0.0, times[-1], sorted(times)
    return period, t999 or math.inf, math.inf, sorted(times)


def held_fraction(times: list[float], n: int, age_s: float) -> float:
    """Fraction of the n peers that hold a keep-alive `age_s` seconds after it was signed."""
    return bisect.bisect_right(times, age_s) / n


def busy_gossip_rate(gateways: int, counted: int, seconds: int = 120, seed: int = 2,
                     network_relative: bool = True) -> float:
    """Material changes per second (see `busy_gateways`)."""
    return busy_gateways(gateways, counted, seconds, seed, network_relative)[0]


def busy_gateways(gateways: int, counted: int, seconds: int = 120, seed: int = 2,
                  network_relative: bool = True) -> tuple[float, float, float]:
    """Material changes per second among `gateways` whose queue changes every second: a queue of
    pending requests doing a ±1..3 random walk around its own level (5..60), tokens = 500 ×
    requests; gossiped by `node.policy.material_change` against the last published state, with
    the network figures of a view that counts `counted` signers (`network_relative`) or without
    (12.5 % per node). A quiet keep-alive every 16–20 s publishes the exact state (resets the
    reference) without gossip. Returns (material changes per second, RMS and largest relative
    error of the counted total of pending requests, Σ published / Σ true − 1, over the seconds)."""
    rnd = random.Random(seed)
    queues = [rnd.randint(5, 60) for _ in range(gateways)]
    published = list(queues)
    keep_alive_at = [rnd.uniform(0, KEEP_ALIVE_MEAN_S) for _ in range(gateways)]
    changes = 0
    squares = worst = 0.0
    for second in range(seconds):
        requests_total = sum(queues)
        network = (500 * requests_total, requests_total, counted) if network_relative else None
        for g in range(gateways):
            q = max(0, queues[g] + rnd.choice((-3, -2, -1, 1, 2, 3)))
            queues[g] = q
            p = published[g]
            if material_change((0, 0, 500 * p, p), (0, 0, 500 * q, q), network):
                published[g] = q
                changes += 1
                keep_alive_at[g] = second + rnd.uniform(0.8, 1.0) * 20
            elif second >= keep_alive_at[g]:
                published[g] = q
                keep_alive_at[g] = second + rnd.uniform(0.8, 1.0) * 20
        error = sum(published) / max(1, sum(queues)) - 1
        squares += error * error
        worst = max(worst, abs(error))
    return changes / seconds, math.sqrt(squares / seconds), worst


def _item(k: int, ts: int) -> tuple[int, bytes]:
    return (ts, hashlib.sha256(k.to_bytes(8, "big")).digest())


def views_of_two_peers(n: int, times: list[float], now_ms: int, seed: int = 3
                       ) -> tuple[list[tuple[int, bytes]], list[tuple[int, bytes]]]:
    """The (ts, id) items of two peers' views at 10,000 … peers: keep-alives of the ¾ that
    announce, one per KEEP_ALIVE_MEAN_S, RETAINED_PER_SIGNER kept; one issued `age` seconds ago
    held by each peer with probability `held_fraction(age)` (the reach curve), independently."""
    rnd = random.Random(seed)
    rate = 0.75 * n / KEEP_ALIVE_MEAN_S
    span_s = RETAINED_PER_SIGNER * KEEP_ALIVE_MEAN_S
    total = int(rate * span_s)
    a, b = [], []
    for k in range(total):
        age = rnd.random() * span_s
        item = _item(k, now_ms - int(age * 1000))
        f = held_fraction(times, n, age)
        if f >= 1.0:
            a.append(item)
            b.append(item)
            continue
        if rnd.random() < f:
            a.append(item)
        if rnd.random() < f:
            b.append(item)
    return a, b


def _fastest(run: Callable[[], PairResult], repeat: int = 5) -> tuple[float, PairResult]:
    """The least CPU time of `repeat` runs (the machine is shared: the least is the code's)."""
    best, result = math.inf, None
    for _ in range(repeat):
        start = time.process_time()
        result = run()
        best = min(best, time.process_time() - start)
    assert result is not None
    return best, result


def recon_cpu(n: int, times: list[float], sessions_per_s: float, items_per_s: float
              ) -> dict[str, float]:
    """Seconds of CPU per node per second for keeping the view's ReconSet and for the exchanges
    (real code, timed here), with the reference figures of the code as merged."""
    now_ms = 10**7
    a_items, b_items = views_of_two_peers(n, times, now_ms)
    since_ms = now_ms - int(recent_window_s(CAPACITY_TIMEOUT_S) * 1000)
    a, b = ReconSet(a_items), ReconSet(b_items)
    differing = len(set(a_items) ^ set(b_items))
    # Upkeep: one second of received items added and as many expired, then one snapshot (and
    # the prefix sums it reads) per session; measured over 5 simulated seconds.
    kept = ReconSet(a_items)
    kept.snapshot()
    oldest = iter(sorted(a_items))
    fresh = iter(range(10**9, 2 * 10**9))
    start = time.process_time()
    for second in range(5):
        for _ in range(int(items_per_s)):
            kept.add(_item(next(fresh), now_ms + second * 1000))
            kept.discard(next(oldest))
        for _ in range(max(1, round(sessions_per_s))):
            kept.snapshot().fingerprint_of(0, len(kept))
    upkeep = (time.process_time() - start) / 5
    # The live sets hold their prefix sums already (their upkeep, above): snapshot before timing.
    a_now, b_now = a.snapshot(), b.snapshot()
    exchange, result = _fastest(lambda: reconcile_pair(a_now, b_now, since_ms=since_ms))
    assert result.a_lacks | result.b_lacks == {i for _, i in set(a_items) ^ set(b_items)}
    old_exchange, old_result = _fastest(lambda: reconcile_pair(a_now, b_now))
    exchange, old_exchange = exchange / 2, old_exchange / 2  # per side
    assert old_result.a_lacks == result.a_lacks
    start = time.process_time()
    ReconSet(a_items)
    rebuild = time.process_time() - start
    return {"upkeep": upkeep, "exchange": sessions_per_s * exchange,
            "item_s": item_cost(int(0.75 * n)),
            "old_exchange": sessions_per_s * old_exchange, "old_snapshot": sessions_per_s * rebuild,
            "view_items": float(len(a_items)), "differing": float(differing),
            "recent_bytes": float(len(result.frames[0])), "turns": float(result.turns),
            "old_turns": float(old_result.turns)}


def item_cost(signers: int, repeat: int = 3) -> float:
    """Seconds of CPU per keep-alive received over a stream, timed here with the real code: an
    engine whose view holds `signers` signers takes each one's next keep-alive (seq + 1, 18 s
    later) through `PeerEngine.on_sync_response` (decode, signature, the validator's rules, the
    merge), in sync frames as a session delivers them. The least of `repeat` rounds, each on a
    fresh engine."""
    import coincurve

    from neuroshard_p2p.charter import builtin
    from neuroshard_p2p.node.engine import PeerEngine
    from neuroshard_p2p.wire import Announcement, encode
    from neuroshard_p2p.wire.frames import encode_sync, split_sync_response

    keys = [coincurve.PrivateKey(hashlib.sha256(b"recon-model item %d" % i).digest())
            for i in range(signers)]
    now = 1_800_000_000.0

    def keep_alives(seq: int, at: float) -> list[bytes]:
        return [encode(Announcement(k.public_key.format(), int(at * 1000), seq, 1000, 0,
                                    7_000 * (i % 3), i % 3), k) for i, k in enumerate(keys)]

    first, second = keep_alives(1, now), keep_alives(2, now + KEEP_ALIVE_MEAN_S)
    frames = [encode_sync(f) for f in split_sync_response(second)]
    market = builtin("simnet").market
    best = math.inf
    for _ in range(repeat):
        engine = PeerEngine(market, coincurve.PrivateKey(hashlib.sha256(b"me").digest()))
        for data in first:
            engine.on_gossip(data, now)
        start = time.process_time()
        accepted = sum(engine.on_sync_response(f, now + KEEP_ALIVE_MEAN_S).accepted
                       for f in frames)
        best = min(best, time.process_time() - start)
        assert accepted == signers, accepted
    return best / signers


def cpu_at(n: int, times: list[float], busy: bool, cost_stream: float = COST_STREAM,
           recon: dict[str, float] | None = None, base: float = COST_BASE,
           copy: float = COST_GOSSIP_COPY) -> dict[str, float]:
    _, period = periods(CAPACITY_TIMEOUT_S, n)
    sessions = 2 / period                      # dialled + answered, per node per second
    announcing = 0.75 * n                      # steady: ¾ of the peers offer or queue
    items = announcing / KEEP_ALIVE_MEAN_S     # keep-alives each node receives per second
    gossip = busy_gossip_rate(n // 4, int(announcing)) if busy else 0.0
    if recon is None:
        recon = recon_cpu(n, times, sessions, items)
    parts = {
        "streams": sessions * cost_stream,
        "upkeep": recon["upkeep"],
        "exchange": recon["exchange"],
        "items": items * recon["item_s"],
        "gossip": gossip * COPIES_PER_MESSAGE * copy,  # validation included
        "base": base,
    }
    parts["total"] = sum(parts.values())
    parts["gossip_copies_per_s"] = gossip * COPIES_PER_MESSAGE
    parts["period_s"] = period
    return parts


def main(argv: list[str]) -> int:
    cost_stream = COST_STREAM
    if argv[:1] == ["--stream-ms"]:
        cost_stream = float(argv[1]) / 1000
    print("keep-alive reach (sampled, every peer simulated, 20 random connected peers each):")
    curves = {}
    for n in (1_000, 10_000, 100_000):
        period, t999, t100, times = reach(n)
        curves[n] = times
        print(f"  {n:>7,} peers: R = {period:.2f} s, 99.9 % after {t999:.1f} s, 100 % after "
              f"{t100:.1f} s (previous keep-alive expires after 40 s)")
    print("gossip copies received per peer per second (busy: every 4th node a gateway, ¾ counted):")
    for n in (100, 1_000, 10_000):
        rate, rms, worst = busy_gateways(n // 4, 3 * n // 4)
        per_node, rms_node, worst_node = busy_gateways(n // 4, 3 * n // 4, network_relative=False)
        print(f"  {n:>7,} peers: steady 0 (keep-alives off gossip), busy "
              f"{rate * COPIES_PER_MESSAGE:.1f}, counted total off by {rms:.2%} RMS, "
              f"{worst:.2%} at most (12.5 % per-node step alone: "
              f"{per_node * COPIES_PER_MESSAGE:.1f}, {rms_node:.2%} RMS, {worst_node:.2%})")
    n = 10_000
    _, period = periods(CAPACITY_TIMEOUT_S, n)
    recon = recon_cpu(n, curves[n], 2 / period, 0.75 * n / KEEP_ALIVE_MEAN_S)
    print(f"one keep-alive received over a stream (engine sync path, a view of {int(0.75 * n):,} "
          f"signers, timed here): {recon['item_s'] * 1e6:.1f} us")
    print(f"two peers' views at {n:,} peers: {recon['view_items']:,.0f} items, "
          f"{recon['differing']:,.0f} differ; recent opening {recon['recent_bytes']:,.0f} B, "
          f"{recon['turns']:.0f} turn(s) (fingerprint opening: {recon['old_turns']:.0f} turns)")
    print(f"as merged (per node, share of a core): ReconSet rebuilt per session "
          f"{recon['old_snapshot'] * 100:.1f} %, fingerprint-opening exchange "
          f"{recon['old_exchange'] * 100:.1f} %")
    print(f"per-stream cost: {cost_stream * 1000:g} ms (--stream-ms to change)")
    for busy in (False, True):
        parts = cpu_at(n, curves[n], busy, cost_stream, recon)
        print(f"market CPU per node at {n:,} peers, {'busy' if busy else 'steady'}: "
              + ", ".join(f"{k} {v * 100:.2f} %" for k, v in parts.items()
                          if k not in ("gossip_copies_per_s", "period_s"))
              + f" (R = {parts['period_s']:.2f} s, gossip copies {parts['gossip_copies_per_s']:.1f}/s)")
    # The fitted costs are this machine's at the speed it had when they were measured; the timed
    # parts above are this run's. Scaled by the calibration operation of both, measured the same
    # way (simnet/calibrate: the mean of CPU-clock rounds over a few seconds; the fit's is the
    # mean over its runs):
    op_us = sample_speed(5.0)["mean_us"]
    k = op_us / CALIBRATION_OP_US
    for busy in (False, True):
        scaled = cpu_at(n, curves[n], busy, cost_stream * k, recon,
                        base=COST_BASE * k, copy=COST_GOSSIP_COPY * k)
        print(f"  with the fitted costs scaled to this machine now (one calibration op {op_us:.3f} "
              f"us, {k:.2f}x the {CALIBRATION_OP_US} us they were measured at): "
              f"{'busy' if busy else 'steady'} total {scaled['total'] * 100:.2f} %")
    # Every part is CPU time, so on a machine k times slower the total is about k times.
    slower = 0.10 / scaled["total"]
    print(f"  busy reaches 10 % of a core on a machine {slower:.1f}x slower than this one now "
          f"(one calibration op ~{slower * op_us:.1f} us)")
    rest = parts["total"] - parts["streams"]
    sessions = 2 / parts["period_s"]
    print(f"busy total within 10 % of a core while a stream costs at most "
          f"{(0.10 - rest) / sessions * 1000:.1f} ms ({sessions:.2f} streams/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
