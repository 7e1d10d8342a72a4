"""Every benchmark of the project from one command.

    python -m neuroshard_p2p.bench                 run every section, one after another
    python -m neuroshard_p2p.bench core            run one section
    python -m neuroshard_p2p.bench core --offers 1000   (the rest goes to that section)
    python -m neuroshard_p2p.bench --list          list the sections

A section is a module of this package with `main(argv: list[str] | None) -> None` that prints its
figures, each with a baseline measured in the same run. To add one, add a line to SECTIONS.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, what it measures). Modules are imported only when run.
SECTIONS: dict[str, tuple[str, str]] = {
    "core": ("neuroshard_p2p.bench.core", "order-book matching and price ticks"),
    "wire": ("neuroshard_p2p.bench.wire", "decoding and verifying signed messages"),
    "view": ("neuroshard_p2p.bench.view", "merging announcements and the view's price"),
    "ledger": ("neuroshard_p2p.bench.ledger", "settling receipts in SQLite"),
    "jobs": ("neuroshard_p2p.bench.jobs", "routing jobs between two real nodes"),
    "node": ("neuroshard_p2p.bench.node", "a network of real nodes: traffic, CPU, memory"),
    "api": ("neuroshard_p2p.bench.api", "HTTP API latency against a real node"),
    "gossip_cost": ("neuroshard_p2p.bench.gossip_cost",
                    "a receiving host's CPU per gossip RPC, py-libp2p as shipped vs record caches"),
    "stream_cost": ("neuroshard_p2p.bench.stream_cost",
                    "a receiving host's CPU per frame and per announcement on one stream"),
    "openai": ("neuroshard_p2p.bench.openai",
               "streamed /v1 completions via the market vs direct: TTFT, tokens/s, 100 at once"),
    "sync_abuse": ("neuroshard_p2p.bench.sync_abuse",
                   "a node's CPU share while a peer pulls its view in a loop, vs idle"),
    "members": ("neuroshard_p2p.bench.members",
                "a members network: memory 2,000 non-member keys add to a real node"),
    "members_engine": ("neuroshard_p2p.bench.members_engine",
                       "a members network: 2,000 non-members' price move and memory, engine path"),
    "grind": ("neuroshard_p2p.bench.grind",
              "a node's event-loop delay while it grinds its identity work, vs idle"),
    "soak": ("neuroshard_p2p.bench.soak",
             "a gateway and a provider under steady /v1 buying: memory per request over time"),
    "clock": ("neuroshard_p2p.bench.clock",
              "the clock watch's cost per received announcement, with and without it"),
}


def run_section(name: str, argv: list[str]) -> None:
    """Import section `name` and run its main with `argv`."""
    module = importlib.import_module(SECTIONS[name][0])
    module.main(argv)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    if args and args[0] == "--list":
        for name, (module, what) in SECTIONS.items():
            print(f"{name:10} {what}  ({module})")
        return 0
    if args and not args[0].startswith("-"):
        name, rest = args[0], args[1:]
        if name not in SECTIONS:
            print(f"unknown section {name!r}; known: {', '.join(SECTIONS)}", file=sys.stderr)
            return 2
        run_section(name, rest)
        return 0
    if args:
        print("options go after a section name, e.g. `python -m neuroshard_p2p.bench core "
              "--offers 1000`", file=sys.stderr)
        return 2
    for name in SECTIONS:
        print(f"== {name}: {SECTIONS[name][1]}", flush=True)
        run_section(name, [])
    return 0
