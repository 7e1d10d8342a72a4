"""A correlated burst at 1,000 and 10,000 peers: gossip against a bundled relay, in one model.

    python -m simnet.burst_model            # the figures of docs/scaling.md, twenty-first pass
    python -m simnet.burst_model --measure  # the relay's costs measured first (bench stream_cost)
    python -m simnet.burst_model --peers 100 --share 0.02   # 100 nodes on 2 cores

When B peers change at once (`shock`'s "supply halves": every provider, half the peers), every
peer must take all B signed changes. The protocol gossips each one (market-v2 §1.3), and a
py-libp2p peer pays for every message and every copy of it: the last peer holds the burst
≈ B × w after it (docs/scaling.md, nineteenth and twentieth passes: ~5.5 s at 10,000 peers,
where the 3 s goal needs ≲ 2–2.9 s).

This model asks what carrying the same changes in **bundles** would do: a *bundled relay*, a
design sketch that is **not in the protocol**. Each peer keeps one long-lived stream to each of
its mesh peers; what it newly holds it sends on, in one frame per mesh peer, at most once per
batch interval; each announcement in a frame is checked on its own (id, seen check; decode,
signature, the validator, the merge for a new one) before it is passed on, as gossip does.

Both modes are the same queueing model, the simulator's (`network.cpu_per_copy_ms`): a peer is
one server taking work in the order it arrives; the same random mesh (degree `--degree`), the
same lognormal link latency (median 40 ms, sigma 0.5, as `[network]`), no loss.

- **gossip**: a copy costs `copy_s`, a first copy also `message_s` (validation, engine,
  forwarding); a first copy is forwarded to every mesh peer but its sender. The simulator's
  exact flood model in miniature; its figures are checked against the simulator's here.
- **relay**: receiving a frame costs `frame_in_s`, plus `item_s` for each announcement new to
  the peer and `dup_s` for each it held; sending costs, per mesh peer in turn, `frame_out_s`
  plus `item_out_s` per announcement. A peer sends everything it newly holds to all its mesh
  peers (the one it came from too: a duplicate there costs only `dup_s`), at the earliest
  `batch_s` after its last send. An origin sends its own change at once.

Costs, all measured on py-libp2p hosts of this machine and brought to the speed the simulator's
costs were fitted at (simnet/costs.py, a calibration op of 3.01 µs): gossip's are the twentieth
pass's split (0.076 ms per copy, 0.679 ms more for a first copy; `bench gossip_cost
--duplicates`), the relay's come from `python -m neuroshard_p2p.bench stream_cost`: frames of
64 announcements, and of one, on one yamux stream between two hosts with the node's workarounds,
read by a `PeerEngine` (decode, signature, the validator, the merge) from signers its view
already holds, as in a burst; and frames of announcements it holds (duplicates). `--relay-costs`
replaces them.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from simnet.calibrate import SpeedSampler, summary
from simnet.costs import CALIBRATION_OP_US, RelayCosts

LATENCY_MEDIAN_S = 0.040
LATENCY_SIGMA = 0.5
#: The twentieth pass's measured split of a gossip message's cost on a py-libp2p peer.
GOSSIP_COPY_S = 0.076e-3
GOSSIP_MESSAGE_S = 0.679e-3
#: The relay's costs (`RelayCosts`, bench stream_cost's) live in simnet/costs.py, where the
#: simulator's scenario settings (network.relay_*_ms) take their defaults without numpy.


@dataclass(frozen=True)
class GossipCosts:
    copy_s: float = GOSSIP_COPY_S
    message_s: float = GOSSIP_MESSAGE_S

    def scaled(self, k: float) -> "GossipCosts":
        return GossipCosts(self.copy_s * k, self.message_s * k)


@dataclass
class Burst:
    """What one burst cost: when each peer held all of it, and the CPU it spent."""

    done_at: list[float]          # per peer: when it held the last of the burst's changes
    cpu_s: list[float]            # per peer: CPU spent on the burst
    frames_in: list[int]          # per peer: copies (gossip) or frames (relay) received

    def held_by_all_s(self) -> float:
        return max(self.done_at)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.done_at)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def summary(self) -> dict[str, float]:
        n = len(self.done_at)
        return {"held_by_all_s": round(self.held_by_all_s(), 3),
                "p50_s": round(self.quantile(0.5), 3), "p99_s": round(self.quantile(0.99), 3),
                "cpu_mean_s": round(sum(self.cpu_s) / n, 4), "cpu_max_s": round(max(self.cpu_s), 4),
                "received_per_peer": round(sum(self.frames_in) / n, 1)}


def mesh(n: int, degree: int, rng: random.Random) -> list[list[int]]:
    """A random graph of about `degree` links per peer (stubs paired at random, self-links and
    repeats dropped), connected: a peer left alone is linked to a random other."""
    stubs = [v for v in range(n) for _ in range(degree)]
    rng.shuffle(stubs)
    adj: list[set[int]] = [set() for _ in range(n)]
    for a, b in zip(stubs[::2], stubs[1::2]):
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    for v in range(n):
        if not adj[v]:
            u = (v + 1 + rng.randrange(n - 1)) % n
            adj[v].add(u)
            adj[u].add(v)
    return [sorted(s) for s in adj]


def _latency(rng: random.Random, median_s: float | None) -> float:
    return LATENCY_MEDIAN_S * math.exp(rng.gauss(0.0, LATENCY_SIGMA)) if median_s is None \
        else median_s


def gossip_burst(adj: list[list[int]], origins: list[int], costs: GossipCosts, seed: int = 1,
                 latency_s: float | None = None) -> Burst:
    """Every origin publishes one message at 0; each floods copy by copy. `latency_s` fixes
    every link's latency (tests); otherwise lognormal."""
    rng = random.Random(seed)
    n, b = len(adj), len(origins)
    busy = [0.0] * n
    cpu = [0.0] * n
    count = [0] * n
    received = [0] * n
    done_at = [math.inf] * n
    held = [bytearray(n) for _ in range(b)]
    heap: list[tuple[float, int, int, int, int]] = []
    seq = 0
    for m, o in enumerate(origins):
        held[m][o] = 1
        count[o] += 1
        if count[o] == b:
            done_at[o] = 0.0
        for u in adj[o]:
            seq += 1
            heap.append((_latency(rng, latency_s), seq, u, m, o))
    heapq.heapify(heap)
    while heap:
        at, _, v, m, sender = heapq.heappop(heap)
        received[v] += 1
        first = not held[m][v]
        work = costs.copy_s + (costs.message_s if first else 0.0)
        done = max(at, busy[v]) + work
        busy[v] = done
        cpu[v] += work
        if not first:
            continue
        held[m][v] = 1
        count[v] += 1
        if count[v] == b:
            done_at[v] = done
        for u in adj[v]:
            if u != sender:
                seq += 1
                heapq.heappush(heap, (done + _latency(rng, latency_s), seq, u, m, v))
    return Burst(done_at, cpu, received)


def relay_burst(adj: list[list[int]], origins: list[int], costs: RelayCosts, batch_s: float,
                seed: int = 1, latency_s: float | None = None) -> Burst:
    """Every origin holds one change at 0 and sends it at once; then every peer sends on what
    it newly holds, one frame per mesh peer, at most once per `batch_s`."""
    rng = random.Random(seed)
    n, b = len(adj), len(origins)
    held = np.zeros((n, b), dtype=bool)
    busy = [0.0] * n
    cpu = [0.0] * n
    count = [0] * n
    received = [0] * n
    done_at = [math.inf] * n
    pending: list[list[np.ndarray]] = [[] for _ in range(n)]
    last_send = [-math.inf] * n
    send_due = [False] * n
    # Events: (time, seq, kind, peer, frame); kind 0 = a frame arrives, 1 = a send is due.
    heap: list[tuple[float, int, int, int, np.ndarray | None]] = []
    seq = 0
    for m, o in enumerate(origins):
        held[o, m] = True
        count[o] += 1
        pending[o].append(np.array([m], dtype=np.int32))
    for v in range(n):
        if count[v] == b:
            done_at[v] = 0.0
        if pending[v]:
            seq += 1
            send_due[v] = True
            heap.append((0.0, seq, 1, v, None))
    heapq.heapify(heap)
    while heap:
        at, _, kind, v, frame = heapq.heappop(heap)
        start = max(at, busy[v])
        if kind == 1:
            items = np.concatenate(pending[v])
            pending[v] = []
            send_due[v] = False
            last_send[v] = start
            t = start
            per_frame = costs.frame_out_s + len(items) * costs.item_out_s
            for u in adj[v]:
                t += per_frame
                seq += 1
                heapq.heappush(heap, (t + _latency(rng, latency_s), seq, 0, u, items))
            cpu[v] += t - start
            busy[v] = t
            continue
        assert frame is not None
        received[v] += 1
        row = held[v]
        new = frame[~row[frame]]
        row[new] = True
        work = costs.frame_in_s + len(new) * costs.item_s + (len(frame) - len(new)) * costs.dup_s
        done = start + work
        busy[v] = done
        cpu[v] += work
        if len(new) == 0:
            continue
        count[v] += len(new)
        if count[v] == b:
            done_at[v] = done
        pending[v].append(new)
        if not send_due[v]:
            send_due[v] = True
            seq += 1
            heapq.heappush(heap, (max(done, last_send[v] + batch_s), seq, 1, v, None))
    return Burst(done_at, cpu, received)


_STREAM_LINE = re.compile(
    r"receiver ([\d.]+) ms per frame \+ ([\d.]+) us per new announcement .*?, ([\d.]+) us per "
    r"held one; sender ([\d.]+) ms per frame \+ ([\d.]+) us per announcement")


def measure_relay_costs(rounds: int = 2) -> tuple[RelayCosts, dict[str, Any]]:
    """Run `python -m neuroshard_p2p.bench stream_cost` (its own processes) with the machine's
    speed sampled meanwhile, and bring its figures to the speed the costs are fitted at."""
    sampler = SpeedSampler().start()
    try:
        out = subprocess.run([sys.executable, "-m", "neuroshard_p2p.bench", "stream_cost",
                              "--rounds", str(rounds)], capture_output=True, text=True,
                             timeout=900, check=True).stdout
    finally:
        speed = summary([s for _, s in sampler.stop()])
    found = _STREAM_LINE.search(out)
    if found is None:
        raise RuntimeError(f"bench stream_cost printed no figures:\n{out}")
    fi, item, dup, fo, io = (float(x) for x in found.groups())
    k = CALIBRATION_OP_US / float(speed["mean_us"])
    return RelayCosts(fi / 1e3 * k, fo / 1e3 * k, item / 1e6 * k, dup / 1e6 * k,
                      io / 1e6 * k), {"bench": found.group(0), **speed}


def _ms(x: float) -> str:
    return f"{1000 * x:.3f} ms" if x >= 1e-4 else f"{1e6 * x:.2f} us"


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m simnet.burst_model", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", default="1000,10000",
                    help="network sizes; half the peers change at once (default 1000,10000)")
    ap.add_argument("--batch-ms", default="50,100,200",
                    help="the relay's batch intervals to try (default 50,100,200)")
    ap.add_argument("--degree", type=int, default=6, help="mesh degree (default 6)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--relay-costs", metavar="IN_MS,ITEM_US,DUP_US,OUT_MS,ITEM_OUT_US",
                    help="the relay's costs at a calibration op of 3.01 us: a frame read (ms), "
                         "a new announcement (us), a held one (us), a frame written (ms), an "
                         "announcement written (us); default: bench stream_cost's")
    ap.add_argument("--measure", action="store_true",
                    help="measure the relay's costs first (bench stream_cost, ~75 s, with the "
                         "machine's speed sampled meanwhile) instead of the shipped figures")
    ap.add_argument("--share", type=float, default=1.0,
                    help="each peer's share of a core (default 1; 0.02 for the 100 real nodes "
                         "of this 2-core machine): every cost divided by it")
    ap.add_argument("--no-gossip", action="store_true",
                    help="skip the gossip runs (1,000 peers, and 10,000 stood in for)")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.peers.split(",") if x]
    batches = [float(x) / 1000 for x in args.batch_ms.split(",") if x]

    relay = RelayCosts()
    if args.measure:
        relay, seen = measure_relay_costs()
        print(f"measured: {seen['bench']}; calibration op {seen['mean_us']} us (mean of "
              f"{seen['samples']}, {seen['range_us'][0]}-{seen['range_us'][1]})")
    elif args.relay_costs:
        try:
            fi, item, dup, fo, io = (float(x) for x in args.relay_costs.split(","))
        except ValueError:
            ap.error("--relay-costs takes five numbers: IN_MS,ITEM_US,DUP_US,OUT_MS,ITEM_OUT_US")
        relay = RelayCosts(fi / 1e3, fo / 1e3, item / 1e6, dup / 1e6, io / 1e6)
    gossip = GossipCosts()
    if args.share != 1.0:
        relay, gossip = relay.scaled(1 / args.share), gossip.scaled(1 / args.share)
        print(f"each peer has {args.share:g} of a core: costs x {1 / args.share:g}")
    print(f"costs at a calibration op of {CALIBRATION_OP_US} us: gossip {_ms(gossip.copy_s)} per "
          f"copy + {_ms(gossip.message_s)} per first copy; relay: a frame read {_ms(relay.frame_in_s)}"
          f", written {_ms(relay.frame_out_s)}, a new announcement {_ms(relay.item_s)}, a held one "
          f"{_ms(relay.dup_s)}, one written {_ms(relay.item_out_s)}")
    w = gossip.message_s + gossip.copy_s * (args.degree - 0.85)
    for n in sizes:
        rng = random.Random(args.seed)
        adj = mesh(n, args.degree, rng)
        origins = sorted(rng.sample(range(n), n // 2))
        b = len(origins)
        print(f"\n{n:,} peers, mesh degree {args.degree} (mean {sum(map(len, adj)) / n:.2f}), "
              f"{b:,} change at once; gossip's B x w = {b * w:.2f} s")
        if not args.no_gossip:
            if n <= 1_000:
                g, label = gossip_burst(adj, origins, gossip, args.seed), "gossip"
            else:
                # The simulator's stand-in: 1,000 peers, each message costing n / 1,000 times
                # as much, so each peer does the work of the whole burst; one hop fewer.
                small = random.Random(args.seed)
                adj_s = mesh(1_000, args.degree, small)
                org_s = sorted(small.sample(range(1_000), 500))
                g = gossip_burst(adj_s, org_s, gossip.scaled(n / 1_000), args.seed)
                label = f"gossip (1,000 peers at x{n / 1_000:g} costs)"
            print(f"  {label:<34} {g.summary()}")
        for batch in batches:
            started = time.perf_counter()
            r = relay_burst(adj, origins, relay, batch, args.seed)
            print(f"  relay, batch {1000 * batch:>4.0f} ms{'':<14} {r.summary()} "
                  f"({time.perf_counter() - started:.0f} s wall)")
        for name, costs in (("relay, batch 100 ms, all costs x2", relay.scaled(2.0)),):
            r = relay_burst(adj, origins, costs, 0.1, args.seed)
            print(f"  {name:<34} {r.summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
