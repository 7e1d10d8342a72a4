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
   model; the reconciliation itself (ReconSet over the view, the frames) is timed here, in this
   run, with the real code.
3. **Gossip copies received per peer per second** at 100 / 1,000 / 10,000: only material changes
   gossip (`node.policy.material_change`), counted on simulated gateway queues.
"""

from __future__ import annotations

import hashlib
import math
import random
import sys
import time

from neuroshard_p2p.node.policy import demand_step, periods
from neuroshard_p2p.view.recon import ReconSet, reconcile_pair

CAPACITY_TIMEOUT_S = 60.0
SESSION_S = 0.2          # a session's duration (a few round trips on a WAN)
DEGREE = 20              # connected peers per node (gossip mesh D = 6 plus the rest)
#: Costs (seconds of CPU). Per gossip copy received: docs/scaling.md (py-libp2p, measured).
#: Per message received over a stream: signature check 45 µs + engine 12 µs + decode (measured
#: in docs/scaling.md and notes/py-libp2p.md). Per stream: ASSUMED 10 ms (stream open with
#: multistream-select and ~4 frames at the 2–6 ms per RPC of notes/py-libp2p.md, halved because a
#: frame on an open connection skips the gossip RPC's peer-record rebuild) — issue 15 item 4
#: (measure it on real nodes) is what replaces this assumption.
COST_GOSSIP_COPY = 0.7e-3
COST_ITEM = 70e-6
COST_STREAM = 10e-3
COPIES_PER_MESSAGE = 5.0  # gossipsub D = 6: copies of each message per peer (docs/scaling.md)
KEEP_ALIVE_MEAN_S = 18.0  # 20 s with up to 20 % jitter
RETAINED_PER_SIGNER = 7   # announcements a view keeps of an honest signer (view.py)


def reach(n: int, seed: int = 1) -> tuple[float, float, float]:
    """(R, seconds to 99.9 %, seconds to 100 %) for one keep-alive in a network of n peers."""
    rnd = random.Random(seed)
    _, period = periods(CAPACITY_TIMEOUT_S, n)
    neighbours = [[rnd.randrange(n) for _ in range(DEGREE)] for _ in range(n)]
    phase = [rnd.random() * period for _ in range(n)]
    order = sorted(range(n), key=phase.__getitem__)
    informed = bytearray(n)
    origin = rnd.randrange(n)
    informed[origin] = 1
    count = 1
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
                count += 1
                if count >= target and t999 is None:
                    t999 = round_ * period + at
                if count == n:
                    return period, t999 or 0.0, round_ * period + at
    return period, t999 or math.inf, math.inf


def busy_gossip_rate(gateways: int, seconds: int = 120, seed: int = 2) -> float:
    """Material changes per second among `gateways` whose queue changes every second: a queue of
    pending requests doing a ±1..3 random walk around its own level (5..60), tokens = 500 ×
    requests; counted by the 12.5 % log-step rule against the last gossiped state."""
    rnd = random.Random(seed)
    queues = [rnd.randint(5, 60) for _ in range(gateways)]
    gossiped = [demand_step(q) for q in queues]
    changes = 0
    for _ in range(seconds):
        for g in range(gateways):
            q = max(0, queues[g] + rnd.choice((-3, -2, -1, 1, 2, 3)))
            queues[g] = q
            step = demand_step(q * 500)
            if step != gossiped[g]:
                gossiped[g] = step
                changes += 1
    return changes / seconds


def recon_session_cpu(n: int, new_per_session: int) -> tuple[float, float]:
    """Seconds of CPU per side for one session at a view of n peers (real code, timed here):
    (building the side's ReconSet snapshot, the exchange of frames)."""
    items = RETAINED_PER_SIGNER * (3 * n // 4)
    def item(k: int) -> tuple[int, bytes]:
        msg_id = hashlib.sha256(k.to_bytes(8, "big")).digest()
        return (int.from_bytes(msg_id[:4], "big") % 300_000, msg_id)
    base = [item(k) for k in range(items)]
    a_new = [item(10**9 + k) for k in range(new_per_session)]
    b_new = [item(2 * 10**9 + k) for k in range(new_per_session)]
    start = time.process_time()
    a, b = ReconSet(base + a_new), ReconSet(base + b_new)
    built = time.process_time()
    result = reconcile_pair(a, b)
    done = time.process_time()
    assert len(result.a_lacks) == new_per_session
    return (built - start) / 2, (done - built) / 2


def cpu_at(n: int, busy: bool) -> dict[str, float]:
    _, period = periods(CAPACITY_TIMEOUT_S, n)
    sessions = 2 / period                      # dialled + answered, per node per second
    announcing = 0.75 * n                      # steady: ¾ of the peers offer or queue
    items = announcing / KEEP_ALIVE_MEAN_S     # keep-alives each node receives per second
    gossip = busy_gossip_rate(n // 4) if busy else 0.0
    new_per_session = max(1, int(items / sessions))
    build, exchange = recon_session_cpu(n, new_per_session)
    parts = {
        "streams": sessions * COST_STREAM,
        "snapshot": sessions * build,
        "exchange": sessions * exchange,
        "items": (items + gossip) * COST_ITEM,
        "gossip": gossip * COPIES_PER_MESSAGE * COST_GOSSIP_COPY,
    }
    parts["total"] = sum(parts.values())
    parts["total_without_snapshot"] = parts["total"] - parts["snapshot"]
    parts["gossip_copies_per_s"] = gossip * COPIES_PER_MESSAGE
    parts["period_s"] = period
    return parts


def main(argv: list[str]) -> int:
    print("keep-alive reach (sampled, every peer simulated, 20 random connected peers each):")
    for n in (1_000, 10_000, 100_000):
        period, t999, t100 = reach(n)
        print(f"  {n:>7,} peers: R = {period:.2f} s, 99.9 % after {t999:.1f} s, 100 % after "
              f"{t100:.1f} s (previous keep-alive expires after 40 s)")
    print("gossip copies received per peer per second (busy: every 4th node a gateway):")
    for n in (100, 1_000, 10_000):
        rate = busy_gossip_rate(n // 4) * COPIES_PER_MESSAGE
        print(f"  {n:>7,} peers: steady 0 (keep-alives off gossip), busy {rate:.1f}")
    for busy in (False, True):
        parts = cpu_at(10_000, busy)
        print(f"market CPU per node at 10,000 peers, {'busy' if busy else 'steady'}: "
              + ", ".join(f"{k} {v * 100:.2f} %" for k, v in parts.items()
                          if k not in ("gossip_copies_per_s", "period_s"))
              + f" (R = {parts['period_s']:.2f} s, gossip copies {parts['gossip_copies_per_s']:.1f}/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
