"""Benchmark the network node: traffic, CPU per message (ours vs py-libp2p's), the gossipsub and
muxer settings, late-join time and the memory of an idle node.

    python -m neuroshard_p2p.bench node [--nodes 8] [--seconds 8] [--only PART ...]

Parts (all run by default, in one process except `rss`):

- traffic  N nodes with capacity re-announce every `--interval` s (default 5, the real default is
           20): gossip messages each peer receives per second (every copy from every mesh peer,
           duplicates included) and gossipsub control RPCs; scaled to the 20 s default.
- cpu      every node changes its offer every tick (one announcement per node per second, the
           most the validator lets a signer send): process CPU per received message copy, and
           the share spent in our code (the engine's on_gossip + poll) measured around the calls.
- profile  the same load under cProfile: self time by package (ours, libp2p, trio, crypto, ...).
- settings the cpu load under Yamux and Mplex, with /meshsub/1.1.0 only and with 1.2.0 added:
           CPU per received message, and the ratio to the chosen setting in the same run.
- late     a late joiner bootstrapped from one node: seconds until its view digest equals the
           network's (median of repeats).
- rss      three `neuroshard-node run` processes (one bootstrap, two peers): resident memory of
           each after it has been idle for a few seconds.

All nodes run on 127.0.0.1. Figures come from one run on whatever machine runs it; the ratios
compare rows measured back to back under the same load.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, Callable

import coincurve
import trio

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.settings import NodeSettings

PARTS = ("traffic", "cpu", "profile", "settings", "late", "rss")


def _key(i: int) -> coincurve.PrivateKey:
    return coincurve.PrivateKey((1000 + i).to_bytes(32, "big"))


def _settings(tmp: Path, i: int, **changes: Any) -> NodeSettings:
    return NodeSettings(data_dir=tmp / f"n{i}", listen=("/ip4/127.0.0.1/tcp/0",), api="off",
                        peer_exchange_interval_s=0.5, bootstrap_retry_initial_s=0.2,
                        shutdown_grace_s=0.2,
                        charter=builtin("simnet").replace(market=MarketConfig())).replace(**changes)


class _Counting:
    """Counts what a node's pubsub receives, by wrapping two of its bound methods (measurement
    only: the wrapped methods run unchanged)."""

    def __init__(self, node: Node) -> None:
        self.messages = 0
        self.unique: set[bytes] = set()
        self.control = 0
        self.ours_s = 0.0
        pubsub, router, engine = node.pubsub, node.gossipsub, node.engine
        assert pubsub is not None and router is not None
        push, handle_rpc = pubsub.push_msg, router.handle_rpc
        on_gossip, poll = engine.on_gossip, engine.poll_announcements

        async def counted_push(forwarder: Any, msg: Any) -> None:
            self.messages += 1
            self.unique.add(bytes(msg.from_id) + bytes(msg.seqno))
            await push(forwarder, msg)

        async def counted_rpc(rpc: Any, sender: Any) -> None:
            self.control += 1
            await handle_rpc(rpc, sender)

        def timed_gossip(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return on_gossip(*args, **kwargs)
            finally:
                self.ours_s += time.perf_counter() - start

        def timed_poll(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return poll(*args, **kwargs)
            finally:
                self.ours_s += time.perf_counter() - start

        pubsub.push_msg = counted_push  # type: ignore[method-assign,assignment]
        router.handle_rpc = counted_rpc  # type: ignore[method-assign,assignment]
        engine.on_gossip = timed_gossip  # type: ignore[method-assign]
        engine.poll_announcements = timed_poll  # type: ignore[method-assign]

    def reset(self) -> None:
        self.messages = self.control = 0
        self.unique = set()
        self.ours_s = 0.0


async def _network(stack: AsyncExitStack, tmp: Path, n: int, **changes: Any) -> list[Node]:
    """n nodes, the first the bootstrap of the others; returns when all are fully connected."""
    nodes: list[Node] = []
    first = await stack.enter_async_context(Node(_settings(tmp, 0, **changes), private_key=_key(0)))
    nodes.append(first)
    for i in range(1, n):
        node = Node(_settings(tmp, i, bootstrap=(first.addrs[0],), **changes),
                    private_key=_key(i))
        nodes.append(await stack.enter_async_context(node))
    with trio.move_on_after(30):
        while not all(node.peer_count >= min(n - 1, node.settings.target_peers) for node in nodes):
            await trio.sleep(0.1)
    return nodes


async def _flip_offers(nodes: list[Node], seconds: float) -> None:
    """Every node changes its offer every tick: one announcement per node per second."""
    end = trio.current_time() + seconds
    flip = 0
    while trio.current_time() < end:
        flip += 1
        for node in nodes:
            node.set_offer(1000 + flip % 2, 0)
        await trio.sleep(1.0)


async def _load(n: int, seconds: float, tmp: Path, *, profile: bool = False,
                **changes: Any) -> dict[str, float]:
    async with AsyncExitStack() as stack:
        nodes = await _network(stack, tmp, n, **changes)
        counters = [_Counting(node) for node in nodes]
        await _flip_offers(nodes, 2)  # warm up: meshes formed, first syncs done
        for c in counters:
            c.reset()
        accepted0 = sum(node.engine.gossip_counts[("accepted", "accepted")] for node in nodes)
        # CPU time, not wall time: a wall-clock profile charges idle waits in epoll to "builtins"
        profiler = cProfile.Profile(time.process_time) if profile else None
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if profiler:
            profiler.enable()
        await _flip_offers(nodes, seconds)
        if profiler:
            profiler.disable()
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        received = sum(c.messages for c in counters)
        result = {"cpu_s": cpu, "wall_s": wall, "received": received,
                  "control": sum(c.control for c in counters),
                  "ours_s": sum(c.ours_s for c in counters),
                  "accepted": sum(node.engine.gossip_counts[("accepted", "accepted")]
                                  for node in nodes) - accepted0}
        if profiler:
            result["profile"] = profiler  # type: ignore[assignment]
        return result


# ---------------------------------------------------------------------------------------------
# parts


async def part_traffic(args: argparse.Namespace, tmp: Path) -> None:
    n, interval = args.nodes, args.interval
    async with AsyncExitStack() as stack:
        nodes = await _network(stack, tmp / "traffic", n, announce_interval_s=interval)
        for i, node in enumerate(nodes):
            node.set_offer(1000 + i, 0)
        counters = [_Counting(node) for node in nodes]
        await trio.sleep(interval)  # first announcements and syncs out of the way
        for c in counters:
            c.reset()
        seconds = max(args.seconds, 3 * interval)
        cpu0 = time.process_time()
        await trio.sleep(seconds)
        cpu = time.process_time() - cpu0
        # read before leaving: a clean stop publishes one withdrawal per node
        per_peer = [c.messages / seconds for c in counters]
        unique = [len(c.unique) / seconds for c in counters]
        control = [c.control / seconds for c in counters]
    scale = interval / 20.0
    print(f"traffic: {n} nodes with capacity, keep-alive every {interval:g} s, {seconds:g} s")
    print(f"  gossip copies received per peer   {statistics.mean(per_peer):7.2f} msg/s "
          f"(≈ {statistics.mean(per_peer) * scale:.2f} msg/s at the 20 s default)")
    print(f"  distinct messages per peer        {statistics.mean(unique):7.2f} msg/s "
          f"(N/interval = {n / interval:.2f}: its own included)")
    print(f"  copies per distinct message       {sum(per_peer) / max(sum(unique), 1e-9):7.2f} "
          f"(each mesh peer forwards it once)")
    print(f"  gossipsub control RPCs per peer   {statistics.mean(control):7.2f} /s "
          f"(heartbeat: GRAFT/PRUNE/IHAVE/IWANT)")
    print(f"  CPU of all {n} nodes               {100 * cpu / seconds:7.1f} % of one core "
          f"({100 * cpu / seconds / n:.2f} % per node)")


async def part_cpu(args: argparse.Namespace, tmp: Path) -> None:
    r = await _load(args.nodes, args.seconds, tmp / "cpu")
    per_msg = 1000 * r["cpu_s"] / max(1, r["received"])
    ours = 1000 * r["ours_s"] / max(1, r["received"])
    print(f"cpu: {args.nodes} nodes, one announcement per node per second, {r['wall_s']:.1f} s")
    print(f"  message copies received            {int(r['received'])} "
          f"({int(r['accepted'])} accepted, the rest duplicates dropped by pubsub)")
    print(f"  process CPU per received copy      {per_msg:6.2f} ms")
    print(f"  of which ours (on_gossip + poll)   {ours:6.3f} ms  ({100 * ours / per_msg:.1f} %); "
          f"{1000 * r['ours_s'] / max(1, r['accepted']):.3f} ms per accepted announcement")
    print(f"  libp2p + trio + the rest           {per_msg - ours:6.2f} ms  "
          f"(ratio libp2p/ours {(per_msg - ours) / max(ours, 1e-9):.0f}×)")


_GROUPS = (("neuroshard_p2p", "ours (neuroshard_p2p)"), ("libp2p", "libp2p"),
           ("trio", "trio"), ("coincurve", "crypto"), ("cryptography", "crypto"),
           ("nacl", "crypto"), ("noise", "crypto"), ("google", "protobuf"),
           ("multiaddr", "multiaddr"), ("msgpack", "msgpack"))


async def part_profile(args: argparse.Namespace, tmp: Path) -> None:
    r = await _load(args.nodes, args.seconds, tmp / "profile", profile=True)
    stats = pstats.Stats(r["profile"])  # type: ignore[arg-type]
    by_group: dict[str, float] = {}
    total = 0.0
    for (filename, _, _), (_, _, tottime, _, _) in stats.stats.items():  # type: ignore[attr-defined]
        group = "python stdlib / builtins"
        for needle, name in _GROUPS:
            if f"/{needle}/" in filename or f"/{needle}." in filename:
                group = name
                break
        by_group[group] = by_group.get(group, 0.0) + tottime
        total += tottime
    ours = sum(ct for (filename, _, name), (_, _, _, ct, _) in stats.stats.items()  # type: ignore[attr-defined]
               if filename.endswith("node/engine.py") and name in ("on_gossip", "poll_announcements"))
    print(f"profile: CPU self time by package under cProfile ({args.nodes} nodes, "
          f"{r['wall_s']:.1f} s, {int(r['received'])} copies received)")
    for group, seconds in sorted(by_group.items(), key=lambda kv: -kv[1]):
        print(f"  {group:28s} {100 * seconds / total:5.1f} %")
    print(f"  engine.on_gossip + poll_announcements, cumulative (validation, signature check, "
          f"merge): {100 * ours / total:.1f} %")


async def part_settings(args: argparse.Namespace, tmp: Path) -> None:
    rows = [("yamux", ("1.1.0",)), ("mplex", ("1.1.0",)), ("yamux", ("1.2.0", "1.1.0"))]
    results = []
    for i, (muxer, meshsub) in enumerate(rows):
        r = await _load(args.nodes, args.seconds, tmp / f"settings{i}", muxer=muxer, meshsub=meshsub)
        results.append((muxer, meshsub, 1000 * r["cpu_s"] / max(1, r["received"]), r))
    base = results[0][2]
    print(f"settings: CPU per received message copy ({args.nodes} nodes, one announcement per "
          f"node per second)")
    for muxer, meshsub, per_msg, r in results:
        print(f"  {muxer:6s} meshsub {'+'.join(meshsub):12s} {per_msg:6.2f} ms   ×{per_msg / base:4.2f}"
              f"   control RPCs {int(r['control'])}")


async def part_late(args: argparse.Namespace, tmp: Path) -> None:
    times = []
    async with AsyncExitStack() as stack:
        nodes = await _network(stack, tmp / "late", args.nodes)
        for i, node in enumerate(nodes):
            node.set_offer(1000 + i, 0)
        with trio.move_on_after(10):
            while len({n.engine.view.digest() for n in nodes}) > 1 or \
                    nodes[0].engine.view.message_count < args.nodes:
                await trio.sleep(0.05)
        for rep in range(args.repeats):
            settings = _settings(tmp / "late", 100 + rep, bootstrap=(nodes[-1].addrs[0],))
            start = time.perf_counter()
            async with Node(settings, private_key=_key(100 + rep)) as late:
                with trio.move_on_after(20):
                    while late.engine.view.digest() != nodes[0].engine.view.digest():
                        await trio.sleep(0.005)
                times.append(time.perf_counter() - start)
    print(f"late: a node joining a network of {args.nodes} (bootstrap from one peer); seconds from "
          f"start to an equal view digest over {args.repeats} joins")
    print(f"  median {statistics.median(times):.3f} s, max {max(times):.3f} s "
          f"(includes starting the libp2p host)")


def part_rss(args: argparse.Namespace, tmp: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}

    def run(name: str, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir",
                                 str(tmp / name), "--listen", "/ip4/127.0.0.1/tcp/0", "--api",
                                 "127.0.0.1:0", "--log-level", "warning", *extra],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, cwd=root)

    procs = [run("rss0", "--capacity", "1000")]
    try:
        first = _wait_line(procs[0], lambda line: line.startswith("  /ip4/"), 30).strip()
        procs += [run(f"rss{i}", "--bootstrap", first) for i in (1, 2)]
        for p in procs[1:]:
            _wait_line(p, lambda line: line.startswith("ready"), 30)
        time.sleep(args.idle)
        rss = [_rss_mb(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    print(f"rss: `neuroshard-node run` processes idle for {args.idle:g} s in a 3-node network "
          f"(HTTP API on)")
    print(f"  resident memory {', '.join(f'{r:.0f}' for r in rss)} MB (goal ≤ 150 MB)")


def _wait_line(proc: subprocess.Popen[str], match: Callable[[str], bool], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"process ended early (exit {proc.poll()})")
        if match(line):
            return line
    raise RuntimeError("timed out waiting for the node")


def _rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench node",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=8, help="nodes in the network (default 8)")
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per load")
    parser.add_argument("--interval", type=float, default=5.0,
                        help="keep-alive interval of the traffic part (default 5 s)")
    parser.add_argument("--repeats", type=int, default=5, help="late joins (default 5)")
    parser.add_argument("--idle", type=float, default=8.0, help="idle seconds before RSS")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for part in args.only:
            if part == "rss":
                part_rss(args, tmp)
            else:
                trio.run(globals()[f"part_{part}"], args, tmp)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
