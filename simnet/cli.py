"""`neuroshard-simnet`: many peers on one machine.

    neuroshard-simnet run --peers 20 --scenario shock                 # real libp2p nodes
    neuroshard-simnet run --transport sim --peers 1000 --scenario churn --out out/churn
    neuroshard-simnet testnet --peers 5                               # separate processes
    neuroshard-simnet economics --out out/economics
    neuroshard-simnet scaling --peers 10,100,1000,10000                # load per peer vs N
    neuroshard-simnet measure-real --peers 25,50,100 --workers 4       # real nodes, measured
    neuroshard-simnet attack --peers 1000                             # every attack vs honest
    neuroshard-simnet attack --peers 20 --transport libp2p --attack demand-pump,sybil-demand
    neuroshard-simnet scenarios                                       # what ships
    neuroshard-simnet liars --peers 20 --liars 3 --out out/liars      # hostile providers vs buyers

`run` and `scaling` need the `simnet` extra (numpy): pip install 'neuroshard-p2p[simnet]'. Without
it they say so and exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tomllib
from pathlib import Path
from typing import Any, Sequence

from simnet.scenario import Scenario, ScenarioError, load, shipped_scenarios

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# Commands whose code imports numpy, an optional dependency (the `simnet` extra): the simulated
# network's flood model, which `run` on libp2p and `scaling` use too. `testnet`, `economics` and
# `scenarios` run without it (matplotlib, the extra's other half, only costs the plots).
NEEDS_NUMPY = frozenset({"run", "scaling", "attack", "measure-real"})
MISSING_EXTRA = ("neuroshard-simnet needs the simnet extra (numpy is not installed): "
                 "pip install 'neuroshard-p2p[simnet]'")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="neuroshard-simnet",
        description="Run market scenarios on many peers on one machine: real libp2p nodes in one "
                    "process, a simulated network of thousands, a local testnet of node "
                    "processes, or the serve-or-train economics model.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="run a scenario and write a report",
                       description="Run a scenario on N peers; writes report.json, report.md and "
                                   "PNG plots to --out.")
    p.add_argument("--peers", type=int, required=True, metavar="N", help="peers at the start")
    p.add_argument("--scenario", required=True, metavar="NAME|FILE",
                   help=f"a shipped scenario ({', '.join(shipped_scenarios())}) or a .toml file")
    p.add_argument("--transport", choices=("libp2p", "sim"), default="libp2p",
                   help="libp2p: real nodes on 127.0.0.1 in this process (default); sim: the "
                        "deterministic simulated network")
    p.add_argument("--duration", type=float, metavar="S",
                   help="seconds of network time (the timeline is scaled to it; default: the "
                        "scenario's duration_s)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--out", metavar="DIR",
                   help="report directory (default out/<scenario>-<transport>-<N>)")
    p.add_argument("--sample", type=float, metavar="S",
                   help="seconds between samples of every peer's price (default: 0.5 on libp2p, "
                        "one tick on sim)")
    p.add_argument("--observers", type=int, metavar="K",
                   help="sim only: compute prices at K randomly chosen peers (plus late joiners) "
                        "instead of all; every peer still announces and forwards")
    p.add_argument("--workers", type=int, metavar="W",
                   help="sim only: processes to spread the peers' engines over (default: one per "
                        "usable CPU from 200 peers on, else 1); the report is the same for any W")
    p.add_argument("--flood", choices=("exact", "paths"), default="exact",
                   help="sim only, with --observers: how a message's arrivals are computed; "
                        "exact (default): fresh latencies on every link per message; paths: "
                        "looked up in 8 latency draws of the mesh precomputed towards the "
                        "observers (for 100,000 peers; docs/scaling.md, \"Ninth pass\")")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a scenario setting, e.g. market.capacity_timeout_s=8, "
                        "node.announce_interval_s=2.5, network.loss=0.05, peers.providers=0.5, "
                        "admission.policy=\"members\" or attack.keys=500 (repeatable; VALUE "
                        "is TOML)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--log-level", default="warning",
                   help="log level of the nodes (py-libp2p itself logs errors only unless debug)")

    p = sub.add_parser("testnet", help="K real node processes on consecutive ports",
                       description="Start K `neuroshard-node run` processes on 127.0.0.1 with "
                                   "their APIs and dashboards on consecutive ports, print the "
                                   "bootstrap multiaddr, run until Ctrl-C, then stop them all "
                                   "cleanly (each withdraws its capacity).")
    p.add_argument("--peers", type=int, required=True, metavar="K")
    p.add_argument("--data-dir", default="out/testnet", metavar="DIR",
                   help="one data dir per node under DIR (kept between runs: same peer ids)")
    p.add_argument("--port", type=int, default=4011, metavar="P",
                   help="libp2p TCP port of the first node; node i listens on P+i (default 4011)")
    p.add_argument("--api-port", type=int, default=8000, metavar="P",
                   help="HTTP API/dashboard port of the first node; node i on P+i (default 8000)")
    p.add_argument("--network", default="simnet",
                   help="a built-in network (simnet, the default: no identity work to grind; "
                        "testnet), or any other name: the simnet charter under that name, written "
                        "to DIR/charter.toml")
    p.add_argument("--capacity", type=int, default=1000, metavar="TOKENS_PER_S",
                   help="capacity each node offers (default 1000; 0 for none)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; use 0.0.0.0 to let other "
                        "machines join)")
    p.add_argument("--log-level", default="warning", help="log level of the nodes")

    p = sub.add_parser("economics", help="serve-or-train model of the price curves and the "
                                          "clearing mode",
                       description="Nodes choose each period to serve inference or train; demand "
                                   "grows through phases. Reports the price per phase, the "
                                   "equilibrium profit ratio, overshoot and oscillation, unmet "
                                   "demand and time to settle, and which of the design's claims "
                                   "the formula reproduces, for the seed and normalized curves "
                                   "(with and without a step cap) and the clearing mode (each "
                                   "node asks its break-even against training) side by side.")
    p.add_argument("--scenario", default="phases", metavar="NAME|FILE",
                   help="scenario whose [economics] and [market] tables to use (default phases)")
    p.add_argument("--out", default="out/economics", metavar="DIR")
    p.add_argument("--max-step", type=float, default=0.05, metavar="X",
                   help="step cap of the capped variants (default 0.05)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an [economics] parameter, e.g. nodes=200 (VALUE is TOML)")
    p.add_argument("--no-plots", action="store_true")

    p = sub.add_parser("scaling", help="gossip load per peer as the network grows (simulated)",
                       description="Run the `steady` scenario on the simulated network for each "
                                   "size and print messages received per peer per second and the "
                                   "CPU they cost (engine measured; py-libp2p at 2-6 ms per hop).")
    p.add_argument("--peers", default="10,100,1000,10000", metavar="N,N,...",
                   help="network sizes (default 10,100,1000,10000)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="seconds of network time per size (at least one keep-alive period)")
    p.add_argument("--observers", type=int, default=50, metavar="K",
                   help="peers that run their engines on gossip (the others are counted by the "
                        "flood model); default 50")
    p.add_argument("--degree", type=int, metavar="D", help="gossip mesh degree (default 6)")
    p.add_argument("--target-rate", type=float, metavar="MSGS_PER_S",
                   help="grow the keep-alive period with N so the network-wide keep-alive rate "
                        "stays at this many messages/s (timeout = 3 periods)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", metavar="DIR", help="write scaling.json and scaling.md here")
    p.add_argument("--quiet", action="store_true")

    p = sub.add_parser(
        "measure-real", help="real libp2p nodes in several processes: CPU and traffic per node",
        description="Start W worker processes, each hosting its share of N real nodes on "
                    "127.0.0.1, joined into one network; run each scenario for each N and "
                    "protocol (keep-alives by gossip, or quiet keep-alives by sync/2.1.0) and "
                    "print per node: CPU (process CPU time, not wall) as %% of a core, received "
                    "gossip RPCs, message copies, validated messages and sync streams per "
                    "second, the loop lag, gossip delivery, view lag and price agreement after "
                    "each event; then the per-RPC and per-stream costs fitted over all runs "
                    "and the simulator's cost model against the measured CPU. Writes "
                    "measure.json per run and measure-real.md to --out.")
    p.add_argument("--peers", default="25,50,100", metavar="N,N,...",
                   help="network sizes (default 25,50,100)")
    p.add_argument("--workers", type=int, default=4, metavar="W",
                   help="worker processes (default 4; the nodes are dealt round-robin)")
    p.add_argument("--scenario", default="steady,shock", metavar="NAME,...",
                   help="scenarios (default steady,shock; capacity, demand, kill and stop "
                        "events only)")
    p.add_argument("--protocol", default="gossip,quiet", metavar="P,...",
                   help="gossip: keep-alives by gossip (quiet_keep_alives off); quiet: only "
                        "material changes gossip (default both)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="measured seconds per run, after setup and the price's warm-up "
                        "(the scenario's timeline is scaled to it; default 60)")
    p.add_argument("--kill-at", type=float, metavar="S",
                   help="also crash (kill, no withdrawal) --kill-count providers at S: checks "
                        "every node stops counting them at their signed timeout")
    p.add_argument("--kill-count", type=int, default=1, metavar="K")
    p.add_argument("--sample", type=float, default=0.5, metavar="S",
                   help="seconds between samples of every node's price (default 0.5)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--setup-timeout", type=float, metavar="S",
                   help="give up when the nodes are not meshed and synced after S seconds "
                        "(default 60 + 2 s per node; network seconds with --dilation)")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a scenario setting (market, node or peers table), e.g. "
                        "market.window_ticks=4 (repeatable; VALUE is TOML)")
    p.add_argument("--min-ready", type=float, default=1.0, metavar="F",
                   help="start once this share of the nodes has a gossip mesh and at most "
                        "1 - F of the (node, announcer) pairs miss a first announcement "
                        "(default 1: all; a loaded machine may never get there)")
    p.add_argument("--views-every", type=int, default=10, metavar="K",
                   help="read every node's view of every announcer every K samples (default "
                        "10): the view-lag figures, and with 1 when each announcement reached "
                        "each node (measure.json 'arrivals')")
    p.add_argument("--bootstrap", choices=("first", "spread", "waves"), default="first",
                   help="how the processes' nodes join: all from the first process's nodes "
                        "(default; those become the network's hubs, all in one process); "
                        "spread: the same from five hubs, one in each of five processes; waves: "
                        "each from every node started before it (a denser mesh: ~7.4 copies "
                        "per message instead of ~5.3; docs/scaling.md, fifteenth pass)")
    p.add_argument("--dilation", type=float, default=1.0, metavar="K",
                   help="run every clock (the nodes', their trio loops', the timeline's) K times "
                        "slower than the wall: each node gets K times the CPU per second of "
                        "network time that it gets at 1 (time-warped emulation; default 1, "
                        "real time; docs/scaling.md, seventeenth pass)")
    p.add_argument("--stream-bench", type=int, default=0, metavar="K",
                   help="also time K sync/2.1.0 sessions between two real hosts, views of the "
                        "largest N signers, with 0 and 10 differences (0: none)")
    p.add_argument("--from", dest="from_dirs", action="append", default=[], metavar="DIR",
                   help="no new runs: the table, fit and model error of the measure.json files "
                        "under DIR (repeatable), e.g. runs made by earlier invocations")
    p.add_argument("--stream-ms", type=float, metavar="MS",
                   help="pin the fit's per-stream cost (one end) to MS, e.g. half the "
                        "micro-benchmark's session (default: from --stream-bench if run)")
    p.add_argument("--fit-out", metavar="FILE",
                   help="also write the runs' counts (CPU, copies, streams per node-second) in "
                        "the form of simnet/data/cost-fit.json, the runs simnet/costs.py is "
                        "fitted on")
    p.add_argument("--bench-only", action="store_true",
                   help="only the --stream-bench micro-benchmark, no network runs")
    p.add_argument("--out", default="out/measure-real", metavar="DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines")

    p = sub.add_parser("liars", help="hostile providers among honest ones: what buyers see",
                       description="Real libp2p nodes in this process: liars that announce the "
                                   "cheapest capacity and then hold, refuse or forge every job, "
                                   "honest providers, and gateways whose users submit requests. "
                                   "Reports requests completed / failed, who served them, time "
                                   "to complete against the honest providers' own, and how many "
                                   "jobs each liar drew before every gateway set it aside. "
                                   "Writes liars.json and liars.md to --out.")
    p.add_argument("--peers", type=int, default=20, metavar="N", help="nodes in all (default 20)")
    p.add_argument("--liars", type=int, default=3, metavar="K", help="liars among them (3)")
    p.add_argument("--honest", type=int, default=4, metavar="H", help="honest providers (4)")
    p.add_argument("--lies", default="silent,hold,forge", metavar="LIE,...",
                   help="how the liars lie, cycled (silent, hold, decline, forge, inflate, "
                        "wrong; default silent,hold,forge)")
    p.add_argument("--rate", type=float, default=4.0, metavar="R",
                   help="requests per second, all gateways together (default 4)")
    p.add_argument("--duration", type=float, default=60.0, metavar="S",
                   help="seconds users submit requests (default 60)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", default="out/liars", metavar="DIR")
    p.add_argument("--quiet", action="store_true")
    p = sub.add_parser(
        "attack", help="valid attacks on the price: deviation from the honest run",
        description="Run each attack scenario and its honest run (the same scenario without the "
                    "attack, the same seed) and report the price's largest deviation from the "
                    "honest run (nano-NEURO and %), the attackers' counted share of supply and "
                    "demand, and the bound the spec states, in an open network (the identity-"
                    "work ramp) and in a members network (attackers hold no credential). "
                    "Writes attack.json and attack.md to --out.")
    p.add_argument("--peers", type=int, required=True, metavar="N", help="peers at the start")
    p.add_argument("--attack", metavar="NAME,...",
                   help="attack scenarios (shipped names or .toml files, comma-separated; "
                        f"default: every shipped one: {', '.join(attack_scenarios())})")
    p.add_argument("--policy", default="open,members", metavar="POLICY,...",
                   help="admission policies to run each attack under (default open,members)")
    p.add_argument("--transport", choices=("libp2p", "sim"), default="sim",
                   help="sim: the simulated network (default); libp2p: real nodes on 127.0.0.1 "
                        "in this process, the attacker a real peer too")
    p.add_argument("--duration", type=float, metavar="S",
                   help="seconds of network time (the timeline is scaled to it)")
    p.add_argument("--seed", type=int, default=1, help="random seed of both runs (default 1)")
    p.add_argument("--observers", type=int, metavar="K",
                   help="sim only: compute prices at K peers (default: all up to 200 peers, "
                        "else 100); every peer still announces and relays")
    p.add_argument("--workers", type=int, metavar="W",
                   help="sim only: processes (default: one per usable CPU from 200 peers on)")
    p.add_argument("--sample", type=float, metavar="S", help="seconds between samples")
    p.add_argument("--set", action="append", default=[], metavar="TABLE.KEY=VALUE",
                   help="override a scenario setting, e.g. market.identity_work_bits=12, "
                        "peers.providers=0.5 or attack.keys=2000 (the attack events' "
                        "parameters; repeatable; VALUE is TOML)")
    p.add_argument("--out", metavar="DIR", help="report directory (default "
                                                "out/attacks-<transport>-<N>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--log-level", default="warning", help="log level of real nodes")

    sub.add_parser("scenarios", help="list the shipped scenarios")
    return parser


def attack_scenarios() -> list[str]:
    """Shipped scenarios that run an attack."""
    return [name for name in shipped_scenarios()
            if any(e.action == "attack" for e in load(name).events)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command in NEEDS_NUMPY and not numpy_installed():
        print(MISSING_EXTRA, file=sys.stderr)
        return EXIT_USAGE
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "testnet":
            from simnet.testnet import run_testnet

            return run_testnet(args.peers, data_dir=args.data_dir, port=args.port,
                               api_port=args.api_port, network=args.network,
                               capacity=args.capacity, host=args.host, log_level=args.log_level)
        if args.command == "economics":
            return cmd_economics(args)
        if args.command == "scaling":
            from simnet.scaling import run_scaling
            from simnet.sim import stderr_progress

            try:
                sizes = [int(x) for x in args.peers.split(",") if x.strip()]
            except ValueError:
                raise ScenarioError(f"--peers {args.peers!r}: expected sizes like 10,100,1000")
            if not sizes or min(sizes) < 2:
                raise ScenarioError("--peers: every size must be at least 2")
            run_scaling(sizes, out=args.out, duration_s=args.duration, observers=args.observers,
                        seed=args.seed, degree=args.degree, target_rate=args.target_rate,
                        progress=None if args.quiet else stderr_progress)
            return EXIT_OK
        if args.command == "liars":
            return cmd_liars(args)
        if args.command == "measure-real":
            from simnet.measure_report import cmd_measure_real

            return cmd_measure_real(args)
        if args.command == "attack":
            return cmd_attack(args)
        if args.command == "scenarios":
            for name in shipped_scenarios():
                scenario = load(name)
                print(f"{name:10s} {scenario.duration_s:5.0f} s  "
                      f"{' '.join(scenario.description.split())}")
            return EXIT_OK
    except (ScenarioError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return EXIT_USAGE


def numpy_installed() -> bool:
    try:
        import numpy  # noqa: F401 - only whether it imports
    except ImportError:
        return False
    return True


#: Scenario tables `--set` may change.
SET_TABLES = ("market", "node", "network", "peers", "admission", "attack")


def parse_overrides(items: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`table.key=value` strings (value as TOML) → {table: {key: value}}."""
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        name, sep, text = item.partition("=")
        table, dot, key = name.strip().partition(".")
        if not sep or not dot or table not in SET_TABLES:
            raise ScenarioError(f"--set {item!r}: expected market.KEY=VALUE (or another "
                                f"table: {', '.join(SET_TABLES)})")
        out.setdefault(table, {})[key.strip()] = _toml_value(item, text)
    return out


def _toml_value(item: str, text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        raise ScenarioError(f"--set {item!r}: the value is not TOML (strings need quotes)") from None


def prepare(args: argparse.Namespace) -> Scenario:
    scenario = load(args.scenario)
    if args.duration is not None:
        scenario = scenario.scaled(args.duration)
    overrides = parse_overrides(args.set)
    attack = overrides.pop("attack", None)
    if overrides:
        scenario = scenario.with_overrides(**overrides)
        scenario.market_config()  # checks the merged values
    if attack:
        scenario = scenario.with_attack(**attack)
    return scenario


def _setup_logging(level: str) -> None:
    """Our nodes log at `level`; py-libp2p's own messages (mesh back-off warnings, dozens per
    second with 20 nodes, and tracebacks of connections racing a node's shutdown) only at
    debug. libp2p resets its logger when first imported, so it is imported first."""
    import libp2p  # noqa: F401 - its import configures (and resets) the "libp2p" logger

    logging.basicConfig(level=getattr(logging, level.upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.DEBUG if level == "debug" else logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.WARNING)


def cmd_run(args: argparse.Namespace) -> int:
    from simnet.report import write_run_report
    from simnet.sim import stderr_progress

    _setup_logging(args.log_level)
    scenario = prepare(args)
    if args.peers < 2:
        raise ScenarioError("--peers must be at least 2")
    progress = None if args.quiet else stderr_progress
    out = Path(args.out or f"out/{scenario.name}-{args.transport}-{args.peers}")
    workers: int | None = None
    rss_before = _peak_rss_bytes()[0]
    if args.transport == "sim":
        from simnet.sim import SimNetwork, default_workers

        cpu = scenario.network.cpu_modelled
        # With the CPU model every process runs the copy-by-copy (or frame-by-frame) network,
        # most of such a run: more processes gain little, so one unless asked.
        workers = ((1 if cpu else default_workers(args.peers, args.observers))
                   if args.workers is None else args.workers)
        if workers < 1:
            raise ScenarioError("--workers must be at least 1")
        if cpu and args.flood != "exact":
            raise ScenarioError("network.cpu_per_copy_ms and cpu_per_message_ms run with the "
                                "exact flood model (--flood exact)")
        if args.flood == "paths" and (args.observers is None or args.observers >= args.peers):
            raise ScenarioError("--flood paths needs --observers K with K < --peers")
        rec = SimNetwork(scenario, args.peers, seed=args.seed, sample_s=args.sample,
                         observers=args.observers, progress=progress, workers=workers,
                         flood=args.flood).run()
    else:
        if args.observers is not None:
            raise ScenarioError("--observers is for --transport sim (real nodes all compute prices)")
        if args.flood != "exact":
            raise ScenarioError("--flood is for --transport sim")
        if args.workers is not None:
            raise ScenarioError("--workers is for --transport sim (real nodes share one trio "
                                "process; `testnet` runs separate processes)")
        import trio

        from simnet.real import RealNetwork

        network = RealNetwork(scenario, args.peers, seed=args.seed, sample_s=args.sample or 0.5,
                              progress=progress)
        rec = trio.run(network.run)
    meta = {"scenario": scenario.name, "description": " ".join(scenario.description.split()),
            "transport": args.transport, "peers": args.peers, "seed": args.seed,
            "duration_s": scenario.duration_s, "observers": args.observers,
            "workers": workers,
            "settings": scenario.to_dict()}
    data = write_run_report(rec, out, meta, plots=not args.no_plots)
    _print_summary(data, out)
    own, child = _peak_rss_bytes()
    # Peak RSS is what bounds the size a machine can run; the part the network added, divided by
    # its peers, is what a larger run needs per peer (workers hold disjoint shares of the peers).
    total = own + workers * child if workers and workers > 1 else own
    print(f"memory: peak RSS {own / 2**20:.0f} MiB (largest worker {child / 2**20:.0f} MiB; "
          f"at most {total / 2**20:.0f} MiB in all); "
          f"{(total - rss_before) / args.peers / 1024:.1f} KiB per peer above the "
          f"{rss_before / 2**20:.0f} MiB before the network")
    if args.transport == "sim" and rec.views and rec.view_announcements:
        # What one view costs per announcement it holds: the figure that says how far full
        # fidelity goes (a view holds every announcing peer's last few announcements, so the
        # network's memory grows as N²). Exact in one process; forked workers share pages.
        grown = (own if workers == 1 else total) - rss_before
        print(f"views: {rec.views} at the end holding {rec.view_signers / rec.views:.0f} signers "
              f"and {rec.view_announcements / rec.views:.0f} announcements each; "
              f"{grown / rec.view_announcements:.0f} bytes per held announcement per view "
              f"({grown / rec.view_signers:.0f} per signer per view"
              f"{'' if workers == 1 else '; an upper bound: measure with --workers 1'})")
    return EXIT_OK


def _peak_rss_bytes() -> tuple[int, int]:
    """Peak resident set of this process and of its largest finished child, in bytes."""
    import resource

    # ru_maxrss is in KiB on Linux.
    return (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)


def _print_summary(data: dict[str, Any], out: Path) -> None:
    figs = data["figures"]
    agree, traffic = figs["agreement"], figs["traffic"]
    after = agree["after_event_s"]
    share = agree["identical_share"]
    print(f"identical price on {100 * share:.1f} % of samples; largest spread "
          f"{agree['largest_spread_nano'] / 1e9:.6f} NEURO/1M" if share is not None
          else "no samples")
    print(f"all peers agree after an event: p50 {after['all_peers_p50']} s, p99 "
          f"{after['all_peers_p99']} s, max {after['all_peers_max']} s "
          f"({after['never_agreed']} of {after['events']} events never settled)")
    for e in figs["events"]:
        if e.get("gossiped"):
            print(f"  {e['event']} at {e['t']} s: all agree after {e['agree_s']} s; its "
                  f"{e['gossiped']} announcements held by every peer they reached after "
                  f"{e['held_by_all_s']} s")
    lapses = agree.get("lapses")
    if lapses and lapses["rows"]:
        print(f"live capacity not counted: {lapses['lapsed_rows']} of {lapses['rows']} peer "
              f"samples (outside start-up and event windows; "
              f"{lapses['samples_with_a_lapse']} samples had one)")
    print(f"published per peer per second: {traffic['published_per_peer_s']} "
          f"(steady {traffic['steady_published_per_peer_s']}); received "
          f"{traffic['received_per_peer_s']}; CPU per message {traffic['cpu_per_message_ms']} ms; "
          f"wall {traffic['wall_s']} s")
    for kill in data["figures"].get("churn", []):
        if "signed_timeout_pairs" in kill:
            print(f"crash at {kill['t']} s ({kill['killed']} killed, no withdrawal): "
                  f"{kill['signed_timeout_exact']} of {kill['signed_timeout_pairs']} live peer × "
                  "killed signer pairs stop counting it exactly at its last announcement + "
                  f"capacity_timeout; all peers' totals right {kill['stopped_counting_after_s']} s "
                  f"after the kill (bound {kill['bound_after_s']} s)")
    if traffic.get("wall_per_engine_message_ops") is not None:
        print(f"speed: wall {traffic['wall_per_engine_message_ops']} calibration ops per engine "
              f"message (engine CPU {traffic['engine_cpu_per_message_ops']}); one op "
              f"{traffic['calibration_op_us']} us on this machine now (median of "
              f"{traffic['calibration_samples']} timings during the run, range "
              f"{traffic['calibration_op_range_us'][0]}–{traffic['calibration_op_range_us'][1]} us)")
    if traffic.get("parallel_wait_share") is not None:
        print(f"parallel: {traffic['processes']} processes, each blocked "
              f"{100 * traffic['parallel_wait_share']:.1f} % of the wall time waiting for another; "
              f"{100 * traffic['engine_messages_ahead_share']:.1f} % of engine messages handed "
              "over while waiting")
    for goal in data["goals"]:
        print(f"goal: {goal['goal']}: {goal['measured']} -> {'met' if goal['met'] else 'NOT met'}")
    print(f"report: {out / 'report.md'}")


def cmd_liars(args: argparse.Namespace) -> int:
    import trio

    from simnet.liars import LiarsSetup, report_markdown, run_liars

    setup = LiarsSetup(peers=args.peers, liars=args.liars, honest=args.honest,
                       lies=tuple(x.strip() for x in args.lies.split(",") if x.strip()),
                       rate=args.rate, duration_s=args.duration, seed=args.seed)
    _setup_logging("warning")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    report = trio.run(lambda: run_liars(setup, progress=progress))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "liars.json").write_text(_json(report) + "\n")
    markdown = report_markdown(report)
    (out / "liars.md").write_text(markdown)
    print(markdown)
    print(f"wrote {out / 'liars.json'} and {out / 'liars.md'}")
    r = report["requests"]
    return EXIT_OK if r["served_by_a_liar"] == 0 and r["failed"] == 0 else EXIT_ERROR
def cmd_attack(args: argparse.Namespace) -> int:
    from simnet.attacks import PairRunner
    from simnet.report import write_attack_report
    from simnet.sim import default_workers, stderr_progress

    if args.peers < 2:
        raise ScenarioError("--peers must be at least 2")
    names = [n.strip() for n in (args.attack or ",".join(attack_scenarios())).split(",")
             if n.strip()]
    policies = [p.strip() for p in args.policy.split(",") if p.strip()]
    for policy in policies:
        if policy not in ("open", "members"):
            raise ScenarioError(f"--policy {policy!r}: expected open or members")
    sim = args.transport == "sim"
    if not sim and (args.observers is not None or args.workers is not None):
        raise ScenarioError("--observers and --workers are for --transport sim")
    if sim:
        observers = args.observers if args.observers is not None else (
            None if args.peers <= 200 else 100)
        workers = default_workers(args.peers) if args.workers is None else args.workers
    else:
        _setup_logging(args.log_level)
        observers, workers = None, 1
    overrides = parse_overrides(args.set)
    progress = None if args.quiet else stderr_progress
    runner = PairRunner(args.peers, seed=args.seed, transport=args.transport,
                        observers=observers, workers=workers, sample_s=args.sample,
                        progress=progress)
    outcomes = []
    for name in names:
        base = load(name)
        if not any(e.action == "attack" for e in base.events):
            raise ScenarioError(f"scenario {name!r} has no attack event")
        if args.duration is not None:
            base = base.scaled(args.duration)
        tables = {k: v for k, v in overrides.items() if k != "attack"}
        if tables:
            base = base.with_overrides(**tables)
        if "attack" in overrides:
            base = base.with_attack(**overrides["attack"])
        for policy in policies:
            scenario = base.with_overrides(admission={"policy": policy})
            for outcome in runner.measure(scenario):
                outcomes.append(outcome)
                print(_attack_line(outcome), flush=True)
    out = Path(args.out or f"out/attacks-{args.transport}-{args.peers}")
    meta = {"transport": args.transport, "peers": args.peers, "seed": args.seed,
            "observers": observers, "workers": workers, "set": list(args.set),
            "duration_s": args.duration}
    write_attack_report(outcomes, out, meta)
    print(f"report: {out / 'attack.md'}")
    return EXIT_OK


def _attack_line(o: Any) -> str:
    d, e = o.deviation, o.expected
    pct = f"{100 * d.max_relative:.4f} %"
    return (f"{o.attack:15s} {o.policy:8s} F={o.work_bits:<2d} identities {o.identities:5d} "
            f"sent {o.sent:6d}: max |dprice| {d.max_abs_nano} nano ({pct}); counted +supply "
            f"{d.max_extra_supply} tok/s ({100 * d.supply_share:.2f} %), +demand "
            f"{d.max_extra_demand} tokens ({100 * d.demand_share:.2f} %); stated bound "
            f"{e.get('bound_nano')} nano ({e.get('rule')}); wall {o.wall_s} s")


def cmd_economics(args: argparse.Namespace) -> int:
    from simnet import economics as econ
    from simnet.report import write_economics_report

    scenario = load(args.scenario)
    values = dict(scenario.economics)
    for item in args.set:
        key, sep, text = item.partition("=")
        if not sep:
            raise ScenarioError(f"--set {item!r}: expected KEY=VALUE")
        values[key.strip()] = _toml_value(item, text)
    params = econ.EconomicsParams.from_mapping(values)
    base = scenario.market_config()
    results = []
    for market in econ.variants(base, max_step=args.max_step):
        results.append(econ.run(market, params))
        print(f"ran {results[-1].label}", file=sys.stderr, flush=True)
    data = write_economics_report(results, args.out, plots=not args.no_plots)
    for variant in data["variants"]:
        print(f"{variant['label']}: " + ", ".join(
            f"{ph['name']} {ph['price_median']:.3f}" for ph in variant["phases"]))
        for claim in variant["claims"]:
            value = "—" if claim["model"] is None else f"{claim['model']:.3f}"
            note = f" ({claim['note']})" if claim.get("note") else ""
            print(f"   {claim['claim']}: {value}{note} -> "
                  f"{'reproduced' if claim['reproduced'] else 'NOT reproduced'}")
    print(f"report: {Path(args.out) / 'report.md'}")
    return EXIT_OK


def _json(data: Any) -> str:  # pragma: no cover - debugging helper
    return json.dumps(data, indent=2, default=str)


if __name__ == "__main__":
    sys.exit(main())
