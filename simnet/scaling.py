"""Gossip load per peer as the network grows, measured on the simulated network.

For each network size N the `steady` scenario (only keep-alives) runs on the simulator; every
peer's received copies are counted by the flood model (all peers, whether observers or not), and
the node engine's own CPU per validated message is measured at the observer peers. The CPU a real
peer would spend is then received copies per second × py-libp2p's 2–6 ms per message hop as
first measured (docs: ../shared/notes/py-libp2p.md), plus the engine's share; and, as the
simulator's one cost model (simnet/costs.py, fitted on real nodes with libp2p_compat's
workarounds), its base + received copies per second × its per-RPC cost (every copy priced as
its own RPC: an upper bound).

`neuroshard-simnet scaling` prints the table and writes scaling.json; docs/scaling.md quotes it.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

from simnet.costs import COSTS
from simnet.metrics import figures
from simnet.scenario import load
from simnet.sim import SimNetwork

#: py-libp2p CPU per message hop, low and high end of what was measured (ms).
HOP_MS = (2.0, 6.0)
#: A peer's gossip work should stay below this share of one core.
CORE_BUDGET = 0.10


@dataclass
class ScalingRow:
    """One network size: traffic per peer in steady state and what it costs."""

    peers: int
    observers: int
    announce_interval_s: float
    capacity_timeout_s: float
    degree: int
    published_per_peer_s: float
    received_per_peer_s: float        # every copy a peer's gossip layer receives
    validated_per_peer_s: float       # first copies, handed to the engine
    engine_us_per_message: float | None
    engine_core_share: float | None   # validated/s × engine time
    libp2p_core_share_low: float      # received/s × 2 ms
    libp2p_core_share_high: float     # received/s × 6 ms
    wall_s: float
    model_core_share: float = 0.0     # simnet/costs.py: base + received/s × per-RPC cost


def interval_for(peers: int, announcing_share: float, target_rate: float | None,
                 base_interval: float) -> float:
    """The keep-alive period: fixed, or grown so the network-wide keep-alive rate stays at
    `target_rate` messages/s (never below the base period)."""
    if target_rate is None:
        return base_interval
    return max(base_interval, math.ceil(announcing_share * peers / target_rate))


def measure(peers: int, *, duration_s: float = 60.0, observers: int = 50, seed: int = 1,
            degree: int | None = None, target_rate: float | None = None,
            base_interval: float = 20.0,
            progress: Callable[[str], None] | None = None) -> ScalingRow:
    """Run `steady` on `peers` simulated peers and return the per-peer figures."""
    scenario = load("steady")
    announcing = scenario.peers.providers + scenario.peers.demand_peers
    interval = interval_for(peers, announcing, target_rate, base_interval)
    timeout = max(scenario.market_config().capacity_timeout_s, 3.0 * interval)
    overrides: dict[str, dict[str, object]] = {
        "market": {"capacity_timeout_s": timeout},
        "node": {"announce_interval_s": float(interval)},
    }
    if degree is not None:
        overrides["network"] = {"degree": degree}
    # Long enough that every announcing peer sends at least one keep-alive in the window.
    duration = max(duration_s, interval + 10.0)
    scenario = scenario.scaled(duration).with_overrides(**overrides)
    k = min(observers, peers)
    net = SimNetwork(scenario, peers, seed=seed, observers=k if k < peers else None,
                     sample_s=max(1.0, duration / 60), progress=progress,
                     start_spread_s=float(interval))
    rec = net.run()
    traffic = figures(rec)["traffic"]
    received = traffic["steady_received_per_peer_s"] or 0.0
    validated = traffic["steady_delivered_per_peer_s"] or 0.0
    engine_us = traffic["engine_cpu_per_message_us"]
    return ScalingRow(
        peers=peers, observers=k, announce_interval_s=float(interval),
        capacity_timeout_s=timeout, degree=scenario.network.degree,
        published_per_peer_s=traffic["steady_published_per_peer_s"] or 0.0,
        received_per_peer_s=received, validated_per_peer_s=validated,
        engine_us_per_message=engine_us,
        engine_core_share=None if engine_us is None else validated * engine_us / 1e6,
        libp2p_core_share_low=received * HOP_MS[0] / 1000,
        libp2p_core_share_high=received * HOP_MS[1] / 1000,
        wall_s=rec.wall_s, model_core_share=COSTS.node_cpu(received, 0.0))


def break_even_peers(rows: Sequence[ScalingRow], hop_ms: float, base: float = 0.0
                     ) -> float | None:
    """The N at which `base` + received copies × hop_ms reach CORE_BUDGET of a core, from the
    measured received-per-peer slope (received grows linearly with N at a fixed interval)."""
    slopes = [r.received_per_peer_s / r.peers for r in rows if r.peers >= 50 and r.received_per_peer_s]
    if not slopes or hop_ms <= 0 or base >= CORE_BUDGET:
        return None
    per_peer = sum(slopes) / len(slopes)
    return (CORE_BUDGET - base) / (hop_ms / 1000) / per_peer


def table(rows: Sequence[ScalingRow]) -> str:
    lines = ["| peers | observers | keep-alive / timeout (s) | D | published/peer/s | "
             "received/peer/s (all copies) | validated/peer/s | engine µs/msg | engine core | "
             "py-libp2p core at 2–6 ms/hop | model (costs.py) | sim wall (s) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        engine = "—" if r.engine_us_per_message is None else f"{r.engine_us_per_message:.0f}"
        share = "—" if r.engine_core_share is None else f"{100 * r.engine_core_share:.2f} %"
        lines.append(
            f"| {r.peers:,} | {r.observers} | {r.announce_interval_s:g} / {r.capacity_timeout_s:g} | "
            f"{r.degree} | {r.published_per_peer_s:.4f} | {r.received_per_peer_s:.2f} | "
            f"{r.validated_per_peer_s:.2f} | {engine} | {share} | "
            f"{100 * r.libp2p_core_share_low:.1f}–{100 * r.libp2p_core_share_high:.1f} % | "
            f"{100 * r.model_core_share:.1f} % | {r.wall_s:.0f} |")
    return "\n".join(lines)


def run_scaling(sizes: Sequence[int], *, out: str | Path | None, duration_s: float,
                observers: int, seed: int, degree: int | None, target_rate: float | None,
                progress: Callable[[str], None] | None) -> list[ScalingRow]:
    rows = []
    for n in sizes:
        if progress is not None:
            progress(f"[scaling] {n} peers …")
        rows.append(measure(n, duration_s=duration_s, observers=observers, seed=seed,
                            degree=degree, target_rate=target_rate, progress=progress))
    print(table(rows))
    for hop in HOP_MS:
        peers_at = break_even_peers(rows, hop) if target_rate is None else None
        if peers_at is not None:
            print(f"gossip work reaches {CORE_BUDGET:.0%} of a core at about {peers_at:,.0f} peers "
                  f"(at {hop:g} ms per message hop)")
    at_budget = (break_even_peers(rows, 1000 * COSTS.rpc_s, COSTS.base)
                 if target_rate is None else None)
    if at_budget is not None:
        print(f"with the simulator's cost model (simnet/costs.py: base {100 * COSTS.base:.2f} %, "
              f"{1000 * COSTS.rpc_s:.2f} ms per copy, each priced as an RPC): "
              f"{CORE_BUDGET:.0%} of a core at about {at_budget:,.0f} peers")
    if out is not None:
        path = Path(out)
        path.mkdir(parents=True, exist_ok=True)
        data = {"rows": [asdict(r) for r in rows], "hop_ms": HOP_MS, "core_budget": CORE_BUDGET,
                "break_even_peers": {str(h): break_even_peers(rows, h) for h in HOP_MS},
                "target_rate": target_rate, "degree": degree, "seed": seed}
        (path / "scaling.json").write_text(json.dumps(data, indent=2) + "\n")
        (path / "scaling.md").write_text(table(rows) + "\n")
        print(f"written: {path / 'scaling.json'}", file=sys.stderr)
    return rows


__all__ = ["ScalingRow", "measure", "run_scaling", "table", "break_even_peers", "interval_for",
           "HOP_MS", "CORE_BUDGET"]
