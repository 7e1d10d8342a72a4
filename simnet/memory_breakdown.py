"""Where a full-fidelity simulation's memory goes, per held announcement per view.

`python -m simnet.memory_breakdown --peers 300 --duration 30` runs `shock` at full fidelity in
one process under `tracemalloc` and prints, for what is still allocated at the end, the bytes per
announcement held per view, by the source line that allocated them (top lines) and by module. It
is the measurement behind docs/scaling.md's "Size" finding: what a view costs per announcement it
holds, and which containers make it up. tracemalloc slows the run ~1.3× and counts Python
allocations only (numpy's arrays of the flood model are in `simnet/sim.py`)."""

from __future__ import annotations

import argparse
import gc
import sys
import time
import tracemalloc
from collections import Counter
from typing import Any

from simnet.scenario import load
from simnet.sim import SimNetwork


def breakdown(peers: int, duration_s: float, *, scenario: str = "shock", seed: int = 1,
              top: int = 12) -> dict[str, Any]:
    """Run `scenario` on `peers` full-fidelity peers for `duration_s` and break down what stays
    allocated: totals, `held` (announcements held, summed over the views), `by_module` and `top`
    source lines, each as bytes per held announcement per view."""
    sc = load(scenario).scaled(duration_s)
    tracemalloc.start(1)
    try:
        wall0 = time.perf_counter()
        net = SimNetwork(sc, peers, seed=seed, workers=1)
        net.run()
        wall = time.perf_counter() - wall0
        gc.collect()
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    held = sum(p.engine.view.message_count for p in net.peers if p.alive)
    stats = snapshot.statistics("lineno")
    total = sum(s.size for s in stats)
    modules: Counter[str] = Counter()
    lines = []
    for s in stats:
        frame = s.traceback[0]
        where = frame.filename.replace("\\", "/")
        for root in ("neuroshard_p2p/", "simnet/"):
            if root in where:
                where = root + where.split(root, 1)[1]
                break
        else:
            where = where.rsplit("/", 1)[-1]
        modules[where] += s.size
        lines.append((s.size, f"{where}:{frame.lineno}", s.count))
    lines.sort(reverse=True)
    per = max(held, 1)
    return {"peers": peers, "duration_s": duration_s, "scenario": scenario,
            "wall_s": round(wall, 1), "held": held, "total_bytes": total,
            "bytes_per_held": round(total / per, 1),
            "by_module": [(m, round(b / per, 1)) for m, b in modules.most_common()],
            "top": [(where, round(size / per, 1), count) for size, where, count in lines[:top]]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m simnet.memory_breakdown", description=__doc__)
    p.add_argument("--peers", type=int, default=300)
    p.add_argument("--duration", type=float, default=30.0)
    p.add_argument("--scenario", default="shock")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)
    r = breakdown(args.peers, args.duration, scenario=args.scenario, top=args.top)
    print(f"{r['scenario']}, {r['peers']} peers at full fidelity, {r['duration_s']:g} s "
          f"({r['wall_s']} s wall under tracemalloc): {r['held']} announcements held over all "
          f"views, {r['total_bytes'] / 1e6:.1f} MB allocated, {r['bytes_per_held']} bytes per held "
          f"announcement per view")
    print("by module (bytes per held announcement per view):")
    for module, b in r["by_module"]:
        if b >= 0.5:
            print(f"  {b:8.1f}  {module}")
    print("top source lines (bytes per held announcement per view, blocks):")
    for where, b, count in r["top"]:
        print(f"  {b:8.1f}  {where}  ({count} blocks)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
