"""`neuroshard-simnet measure-real`'s driver and report: the runs of simnet/measure_real.py for
each size, scenario and protocol, the table, the fitted costs, the simulator's model against
them, and a micro-benchmark of one sync/2.1.0 session between two real hosts."""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from simnet.costs import CALIBRATION_OP_US, COSTS, fit_costs
from simnet.measure_real import (
    BURST_WINDOW_S,
    EVENT_CPU_WINDOW_S,
    LAG_EVERY,
    MEASURE_NODE,
    TABLE_HEAD,
    format_row,
    measure,
    model_error,
    node_share_kops,
)
from simnet.scenario import ScenarioError


async def stream_bench(sessions: int, *, signers: int = 100, differences: int = 0,
                       seed: int = 1) -> dict[str, Any]:
    """CPU of one sync/2.1.0 session (open, reconcile, close) between two real `Node`s in this
    process, both ends together: `sessions` sessions one after another, views of `signers`
    announcing nodes each, and before each session `differences` announcements (of fresh
    signers) that only the dialer holds. The two idle nodes' own CPU over the same wall time
    (heartbeats, their loops) is measured just before and taken off. The pacing budgets are
    lifted on both nodes (a benchmark asks far more often than a node may)."""
    import coincurve
    import trio

    from neuroshard_p2p.node.engine import PeerEngine
    from neuroshard_p2p.node.guard import TokenBuckets
    from neuroshard_p2p.node.host import Node
    from neuroshard_p2p.node.settings import NodeSettings
    from simnet.sim import peer_key, simnet_charter
    from simnet.scenario import load

    market = load("steady").market_config()
    charter = simnet_charter(market, f"bench-{random.randrange(1 << 30):x}")
    rng = random.Random(seed)

    def announcement(index: int, now: float) -> bytes:
        key = peer_key(seed, 10_000 + index, b"bench")
        engine = PeerEngine(market, key, tokens_per_second=1000, announce_interval_s=20.0)
        return engine.poll_announcements(now)[0]

    with tempfile.TemporaryDirectory(prefix="stream-bench-") as tmp:
        def settings(name: str) -> NodeSettings:
            return NodeSettings(data_dir=Path(tmp) / name, listen=("/ip4/127.0.0.1/tcp/0",),
                                api="off", charter=charter, mdns=False, upnp=False,
                                **MEASURE_NODE)  # type: ignore[arg-type]

        for name in ("a", "b"):
            (Path(tmp) / name).mkdir()
        a = Node(settings("a"), private_key=coincurve.PrivateKey(rng.randbytes(32)))
        b = Node(settings("b"), private_key=coincurve.PrivateKey(rng.randbytes(32)))
        async with a, b:
            now = time.time()
            for i in range(signers):
                data = announcement(i, now)
                a.engine.on_gossip(data, now)
                b.engine.on_gossip(data, now)
            for node in (a, b):
                node._sync_pace = TokenBuckets(1e9, 1e-3)
                node.guard.sync_budget = TokenBuckets(1e9, 1e-3)
            await a.connect(b.addrs[0])
            await trio.sleep(2.0)  # the syncs on connecting, identify, the first heartbeats
            wall0, cpu0 = time.perf_counter(), time.process_time()
            await trio.sleep(3.0)
            idle_per_s = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
            fresh = signers
            spent = wall = 0.0
            received = 0
            for _ in range(sessions):
                now = time.time()
                for _ in range(differences):
                    a.engine.on_gossip(announcement(fresh, now), now)
                    fresh += 1
                w0, c0 = time.perf_counter(), time.process_time()
                counts = await b.sync_with(a.host.get_id())
                spent += time.process_time() - c0
                wall += time.perf_counter() - w0
                received += counts.received
            cpu = spent - idle_per_s * wall
            return {"sessions": sessions, "signers": signers, "differences": differences,
                    "view_items": len(a.engine.view), "received_per_session": received / sessions,
                    "ms_cpu_per_session": round(1000 * cpu / sessions, 3),
                    "ms_wall_per_session": round(1000 * wall / sessions, 3),
                    "idle_cpu_pct": round(100 * idle_per_s, 2)}


def _where_late(e: dict[str, Any]) -> str:
    """An event's late arrival: did it leave its publisher late or spread slowly once out, and
    on which worker processes were the last nodes (measure_real `_arrivals`)."""
    last = e.get("last")
    if not last:
        return ""
    nodes = ", ".join(f"{n} (worker {w}) {d} s" for n, w, d in e.get("last_nodes", []))
    return (f"; first arrival at another node p50 {e['first_p50_s']} s, latest "
            f"{e['first_max_s']} s; the last arrival, of node {last['announcer']}'s (worker "
            f"{last['announcer_worker']}), first reached another node at {last['first_s']} s and "
            f"node {last['node']} (worker {last['node_worker']}) at {last['last_s']} s; last to "
            f"hold all: {nodes}")


def _sent(row: dict[str, Any]) -> str:
    """How a run's announcements left their announcers at once (the arrivals' "gossiped", against
    "reconciled"): "relayed" on a relay network (charter `transport`), else "gossiped". Runs
    recorded before the row carried `transport` had any relay frames only on a relay network."""
    relay = row.get("transport") == "relay" or (
        "transport" not in row and bool(row.get("relay_frames_per_node_s")))
    return "relayed" if relay else "gossiped"


def _share(row: dict[str, Any], speed: dict[str, Any]) -> str:
    """A node's share of the machine during an event, in calibration ops (`node_share_kops`)."""
    kops = node_share_kops(row, speed.get("mean_us"))
    return f", a node's share {kops} thousand ops per s" if kops is not None else ""


def _agreed(e: dict[str, Any]) -> str:
    """When all nodes agreed after a market event: by the samples, and by the fine price checks
    (measure_real `_fine_agreement`) where the run made them."""
    line = f"all agree after {e.get('agree_s')} s"
    if "fine_check_s" in e:
        fine = e["agree_fine_s"]
        line += (f" ({fine} s by prices checked every {e['fine_check_s']:g} s)" if fine is not None
                 else f" (not within the {e['fine_window_s']:g} s of prices checked every "
                      f"{e['fine_check_s']:g} s)")
    return line


def cmd_measure_real(args: argparse.Namespace) -> int:
    import trio

    try:
        sizes = [int(x) for x in args.peers.split(",") if x.strip()]
    except ValueError:
        raise ScenarioError(f"--peers {args.peers!r}: expected sizes like 25,50,100") from None
    if not sizes or min(sizes) < 2:
        raise ScenarioError("--peers: every size must be at least 2")
    if args.workers < 1:
        raise ScenarioError("--workers must be at least 1")
    scenarios = [s.strip() for s in args.scenario.split(",") if s.strip()]
    protocols = [p.strip() for p in args.protocol.split(",") if p.strip()]
    from simnet.cli import parse_overrides

    overrides = parse_overrides(args.set)
    unknown = set(overrides) - {"market", "node", "peers"}
    if unknown:
        raise ScenarioError(f"--set: measure-real takes market, node and peers tables, not "
                            f"{', '.join(sorted(unknown))}")
    progress = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for path in sorted(p for d in args.from_dirs for p in Path(d).rglob("measure.json")):
        data = json.loads(path.read_text())
        rows.append(data["row"])
        runs.append({"row": data["row"], "crash": data["crash"], "lag": data["lag"],
                     "arrivals": data.get("arrivals", {}),
                     "windows": data["windows"], "model": model_error(data["row"])})
        # Per event, what decides it on a shared machine: the last arrival against the
        # machine's speed during the event (docs/scaling.md, "Twelfth pass").
        agree = {e.get("event"): _agreed(e) for e in data.get("events", [])}
        k = data["row"].get("dilation", 1.0)
        dilated = f"clocks {k:g}x slower than the wall; " if k != 1.0 else ""
        for e in data.get("arrivals", {}).get("events", []):
            speed = e.get("calibration", {})
            print(f"{path.parent}: {e['event']}: {agree.get(e['event'])}; {dilated}"
                  f"{e['announcements']} {_sent(data['row'])} announcements, the last reached "
                  f"every node "
                  f"{e['max_s']} s after issue; calibration op "
                  f"{speed.get('mean_us', '—')} us during it{_share(data['row'], speed)}"
                  f"{_where_late(e)}", flush=True)
    for n in ([] if args.bench_only or args.from_dirs else sizes):
        for name in scenarios:
            for protocol in protocols:
                try:
                    m = measure(name, n, protocol, workers=args.workers, duration_s=args.duration,
                                seed=args.seed, sample_s=args.sample, kill_at_s=args.kill_at,
                                kill_count=args.kill_count, setup_timeout_s=args.setup_timeout,
                                overrides=overrides, min_ready=args.min_ready,
                                views_every=args.views_every, bootstrap=args.bootstrap,
                                dilation=args.dilation,
                                out=out / f"{name}-{protocol}-{n}", progress=progress)
                except RuntimeError as exc:
                    print(f"N={n} {name} {protocol}: FAILED: {exc}", flush=True)
                    runs.append({"peers": n, "scenario": name, "protocol": protocol,
                                 "failed": str(exc)})
                    continue
                rows.append(m.row)
                runs.append({"row": m.row, "crash": m.crash, "lag": m.lag,
                             "arrivals": m.arrivals,
                             "windows": m.windows, "model": model_error(m.row)})
                print(format_row(m.row), flush=True)
                if "mesh_mean" in m.row:
                    procs = sorted(m.row["cpu_process_pct"])
                    print(f"   at the end: {m.row['connections_mean']} connections per node (max "
                          f"{m.row['connections_max']}), gossip mesh {m.row['mesh_mean']} (max "
                          f"{m.row['mesh_max']}); nodes joined by bootstrap plan "
                          f"{m.row['bootstrap']!r}; worker CPU % of a core: busiest {procs[-1]}, "
                          f"median {procs[len(procs) // 2]}", flush=True)
                for kind in ("gossiped", "reconciled"):
                    a = m.arrivals.get(kind)
                    if a:
                        said = _sent(m.row) if kind == "gossiped" else kind
                        print(f"   {said} announcements reached nodes (checks every "
                              f"{m.arrivals['check_every_s']} s): p50 {a['p50_s']} s, p99 "
                              f"{a['p99_s']} s, max {a['max_s']} s after issue; "
                              f"{a['after_settle_delay']} of {a['arrivals']} arrivals later than "
                              f"the settle delay + a sample", flush=True)
                agreed = {e.get("event"): _agreed(e) for e in m.figures["events"]}
                for e in m.arrivals.get("events", []):
                    window = m.windows.get(f"after {e['event']}", {})
                    rpcs, copies = window.get("rpcs_per_node_s"), window.get("copies_per_node_s")
                    packed = (f"; over {window['seconds']:g} s after it, {copies} copies in "
                              f"{rpcs} RPCs per node per s ({copies / rpcs:.2f} per RPC)"
                              if rpcs else "")
                    speed = e.get("calibration", {})
                    op = (f"; calibration op {speed['mean_us']} us (mean of {speed['samples']})"
                          f"{_share(m.row, speed)}" if speed.get("samples") else "")
                    print(f"   {e['event']} at {e['t']} s: {agreed.get(e['event'])}; "
                          f"{e['announcements']} {_sent(m.row)} "
                          f"announcements, their arrivals p50 {e['p50_s']} s, last {e['max_s']} s "
                          f"after issue (views read every {m.arrivals['check_every_s']} s)"
                          f"{packed}{op}{_where_late(e)}", flush=True)
                    burst = m.windows.get(f"first {BURST_WINDOW_S:g} s after {e['event']}")
                    if burst:
                        print(f"      in its first {burst['seconds']:g} s: sync stream ends "
                              f"{burst['streams_per_node_s']} per node per s (run "
                              f"{m.row['streams_per_node_s']}), periodic syncs that waited for a "
                              f"lull in gossip {burst.get('syncs_deferred_per_node_s', 0)} per node "
                              f"per s, sessions served that waited for one "
                              f"{burst.get('syncs_served_deferred_per_node_s', 0)}; RPCs read "
                              f"{burst['rpcs_per_node_s']} per node per s, "
                              f"{burst.get('control_rpcs_per_node_s')} of them with control "
                              f"({burst.get('ihave_per_node_s')} IHAVE); cyclic GC "
                              f"{_pct(burst.get('gc_cpu_share'))} of the nodes' CPU, "
                              f"{burst.get('gc_full_per_process_min')} full collections per "
                              f"process per min; the harness's sampling "
                              f"{_pct(burst.get('harness_cpu_share'))} of the workers' CPU",
                              flush=True)
                spent = [f"{e['event']} {e['cpu_ms_per_node']} ms"
                         for e in m.figures["events"] if "cpu_ms_per_node" in e]
                if spent:
                    print(f"   CPU per node for each event (over {EVENT_CPU_WINDOW_S:g} s, above "
                          f"the rate before the first event): {', '.join(spent)}", flush=True)
                run_w = m.windows.get("run", {})
                if run_w.get("gc_cpu_share") is not None:
                    print(f"   cyclic GC over the run: {_pct(run_w['gc_cpu_share'])} of the "
                          f"nodes' CPU, {run_w['gc_full_per_process_min']} full collections "
                          f"per process per min, longest pause {run_w['gc_pause_max_s']} s",
                          flush=True)
                print(f"   the harness's own sampling (prices every sample, views every "
                      f"{args.views_every}): {m.row['sampling_cpu_s']} CPU-s in all workers, "
                      "not counted as the nodes' CPU", flush=True)
                for crash in m.crash:
                    if crash["stopped_counting_after_s"] is not None:
                        totals = (f"every node's supply stopped counting it "
                                  f"{crash['stopped_counting_after_s']} s after the kill "
                                  f"(bound {crash['bound_after_s']} s)")
                    else:  # the supply totals changed for another reason first
                        totals = (f"the supply totals cannot show when it stopped counting "
                                  f"(bound {crash['bound_after_s']} s after the kill): another "
                                  "event changed them first; the view checks above do")
                    print(f"   crash of node {crash['node']} at {crash['killed_at_s']} s: last "
                          f"announced {crash['last_announced_s']} s, signed timeout at "
                          f"{crash['signed_timeout_at_s']} s; {crash['live_nodes']} live nodes, "
                          f"all hold its last announcement: {crash['all_hold_its_last']}; some "
                          f"node counted it at {crash['last_counted_at_s']} s, none from "
                          f"{crash['no_node_counts_from_s']} s (samples every {args.sample:g} s); "
                          f"{totals}", flush=True)
    bench = None
    if args.bench_only and not args.stream_bench:
        raise ScenarioError("--bench-only needs --stream-bench K")
    if args.stream_bench:
        _quiet_libp2p()
        bench = [trio.run(lambda d=d: stream_bench(args.stream_bench, signers=max(sizes),
                                                   differences=d)) for d in (0, 10)]
        for b in bench:
            print(f"sync/2.1.0 session, {b['view_items']} items, {b['differences']} differences: "
                  f"{b['ms_cpu_per_session']} ms CPU (both ends), {b['ms_wall_per_session']} ms "
                  f"wall", flush=True)
    fit = fit_costs(rows)  # per RPC read: the model
    stream_ms = args.stream_ms if args.stream_ms is not None else (
        bench[0]["ms_cpu_per_session"] / 2 if bench else None)
    pinned = fit_costs(rows, stream_ms) if stream_ms is not None else None
    per_copy = fit_costs(rows, per="copies")
    md = render(rows, runs, fit, bench, args, pinned, per_copy)
    (out / "measure-real.md").write_text(md)
    (out / "measure-real.json").write_text(json.dumps(
        {"runs": runs, "fit": fit, "fit_stream_pinned": pinned, "fit_per_copy": per_copy,
         "stream_bench": bench, "sim_model": COSTS.as_dict(), "load": os.getloadavg()},
        indent=2, default=str) + "\n")
    if args.fit_out:
        write_fit_runs(Path(args.fit_out), rows, args)
    print(md)
    print(f"report: {out / 'measure-real.md'}")
    return 1 if any("failed" in r for r in runs) else 0


def write_fit_runs(path: Path, rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The runs' counts, as simnet/costs.py's shipped fit reads them, with the machine and its
    speed as the file is written (the costs scale with it: docs/scaling.md saw one machine run
    3x faster on one day than on the day before)."""
    import platform

    from simnet.calibrate import time_calibration_op

    model = "unknown CPU"
    try:
        model = next(line.split(":", 1)[1].strip() for line in
                     Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    keys = ("cpu_s", "copies", "rpcs", "validated", "streams", "node_seconds")
    runs = [{"peers": r["peers"], "scenario": r["scenario"], "protocol": r["protocol"],
             "counts": {k: round(r["_raw"][k], 4) for k in keys},
             **({"calibration_op_us": r["calibration"]["mean_us"]}
                if r.get("calibration", {}).get("samples") else {})}
            for r in rows if r.get("_raw") and r["_raw"]["node_seconds"] > 0]
    source = (f"{command_line(args)} ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{os.cpu_count()} × {model}, {platform.python_implementation()} "
              f"{platform.python_version()})")
    # The reference speed the fit is normalised to (simnet/costs.py `fit_costs`): the mean of the
    # runs' own (each the mean over its run); without them, one timing now.
    ops = [r["calibration_op_us"] for r in runs if "calibration_op_us" in r]
    op_us = (round(sum(ops) / len(ops), 3) if ops and len(ops) == len(runs)
             else round(1e6 * time_calibration_op(), 3))
    path.write_text(json.dumps({"source": source, "calibration_op_us": op_us, "runs": runs},
                               indent=1) + "\n")
    print(f"runs for the cost fit: {path}", file=sys.stderr)


def _quiet_libp2p() -> None:
    import logging

    import libp2p  # noqa: F401 - configures (and resets) its logger first

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)


def render(rows: list[dict[str, Any]], runs: list[dict[str, Any]], fit: dict[str, Any],
           bench: list[dict[str, Any]] | None, args: argparse.Namespace,
           pinned: dict[str, Any] | None = None,
           per_copy: dict[str, Any] | None = None) -> str:
    lines = ["# measure-real", "", TABLE_HEAD]
    lines += [format_row(r) for r in rows]
    lines += ["", "| N | scenario | protocol | calibration op (mean, range) | costs × | "
              "model (sim) CPU % | measured CPU % | model error | load before → after | setup s | "
              "wall s |", "|---:|---|---|---|---:|---:|---:|---:|---|---:|---:|"]
    for run in runs:
        if "row" not in run:
            continue
        r, m = run["row"], run["model"]
        speed = r.get("calibration", {})
        op = (f"{speed['mean_us']} us ({speed['range_us'][0]}–{speed['range_us'][1]}, "
              f"{speed['samples']} rounds)" if speed.get("samples") else "—")
        lines.append(f"| {r['peers']} | {r['scenario']} | {r['protocol']} | {op} | "
                     f"{m.get('speed_scale', 1.0)} | {m['model_pct']} | "
                     f"{m['measured_pct']} | {m['error']:+.0%} | "
                     f"{r['load_before'][0]} → {r['load_after'][0]} | {r['setup_s']} | "
                     f"{r['wall_s']} |")
    lines += ["", f"the simulator's model (simnet/costs.py): {json.dumps(COSTS.as_dict())} at one "
              f"calibration op = {CALIBRATION_OP_US} us (mean over the fitted runs; each run's "
              "model scaled by its own mean op against it: costs ×)",
              f"fit (per RPC read, as the model): {json.dumps(fit)}"]
    if pinned is not None:
        lines += [f"fit with the stream cost pinned: {json.dumps(pinned)}"]
    if per_copy is not None:
        lines += [f"fit per copy received (for reference): {json.dumps(per_copy)}"]
    if bench:
        lines += [f"stream bench: {json.dumps(b)}" for b in bench]
    failed = [r for r in runs if "failed" in r]
    lines += [f"FAILED: N={r['peers']} {r['scenario']} {r['protocol']}: {r['failed']}"
              for r in failed]
    if args.from_dirs:
        lines += ["", "runs read from " + ", ".join(args.from_dirs)]
        return "\n".join(lines) + "\n"
    lines += ["", f"command: {command_line(args)}"]
    return "\n".join(lines) + "\n"


def command_line(args: argparse.Namespace) -> str:
    """The command that made these runs (its measuring options)."""
    if args.from_dirs:
        return "neuroshard-simnet measure-real" + "".join(f" --from {d}" for d in args.from_dirs)
    return (f"neuroshard-simnet measure-real --peers {args.peers} --workers {args.workers} "
            f"--scenario {args.scenario} --protocol {args.protocol} --duration {args.duration:g}"
            + (f" --kill-at {args.kill_at:g}" if args.kill_at is not None else "")
            + (f" --views-every {args.views_every}" if args.views_every != LAG_EVERY else "")
            + (f" --bootstrap {args.bootstrap}" if args.bootstrap != "first" else "")
            + (f" --dilation {args.dilation:g}" if args.dilation != 1.0 else "")
            + "".join(f" --set {item}" for item in args.set))


def _pct(share: float | None) -> str:
    return "—" if share is None else f"{100 * share:.1f} %"


__all__ = ["cmd_measure_real", "command_line", "render", "stream_bench"]
