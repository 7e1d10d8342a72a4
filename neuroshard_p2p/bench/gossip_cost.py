"""`python -m neuroshard_p2p.bench gossip_cost`: CPU a receiving host spends per gossip RPC and
per message, with py-libp2p's pubsub as shipped, with libp2p_compat's record caches (entry 14),
with those and go-yamux's window-update rule (entry 15), with all three and RPC coalescing
(entry 16), with all four and the task manager's task index (entry 17), with all five and seen
copies dropped before a task is started for them (entry 18), and with those five over mplex
instead of yamux (`muxer = "mplex"`; entry 15 is yamux's, so it does nothing there), in one run.

Per side, two processes on 127.0.0.1: the receiver (one host, gossipsub as the node configures
it, subscribed to one topic) and the senders (`--senders` hosts in one process, each connected
to the receiver and to each other, all subscribed; each publishes `--rate` messages per second
of 200 bytes for `--seconds`, `--burst` at a time). The receiver counts the messages it delivers
and the RPC frames it reads (counting wrappers, as `neuroshard-simnet measure-real`), and its
process CPU time over the publishing window (`time.process_time`, not wall time, so a busy
machine disturbs it less). It forwards what it receives to its mesh, as a node does. Entries 15
and 16 change what both ends send (fewer window updates, fewer RPCs), so the senders run with
the receiver's workarounds. The sides alternate, twice each. Per RPC is the figure for evenly
spread messages; per message is the one for bursts (entry 16 packs what waits into one RPC).

`--duplicates` measures instead what a duplicate copy costs the receiver, with every workaround
on: the senders meshed with each other (the receiver reads each message from its publisher and
again from every other sender) or not (a star: read once), alternating, `--rounds` times. The
receiver also counts the copies it reads (every message of every RPC).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import trio

from neuroshard_p2p.bench.pair import bench_host, receiver_and_sender

TOPIC = "/neuroshard-bench/gossip-cost"


def _gossipsub() -> Any:
    from neuroshard_p2p.node.libp2p_compat import make_gossipsub
    from neuroshard_p2p.node.settings import NodeSettings

    return make_gossipsub(NodeSettings())


#: The stream muxer both sides' hosts use: yamux, as a node prefers, unless a side says "mplex".
_muxer = "yamux"


def _host(index: int) -> Any:
    return bench_host(950_000 + index, _muxer)


#: The sides: which of libp2p_compat's pubsub workarounds each runs ("mplex": over mplex).
SIDES = {"shipped": (), "caches": ("14",), "caches+window": ("14", "15"),
         "+coalescing": ("14", "15", "16"), "+task index": ("14", "15", "16", "17"),
         "+early drop": ("14", "15", "16", "17", "18"),
         "mplex": ("14", "15", "16", "17", "18", "mplex")}


def _install(entries: tuple[str, ...] | list[str]) -> None:
    global _muxer
    from neuroshard_p2p.node.libp2p_compat import (
        install_early_duplicate_drop,
        install_record_caches,
        install_rpc_coalescing,
        install_task_index,
        install_window_hysteresis,
    )

    if "14" in entries:
        install_record_caches()
    if "15" in entries:
        install_window_hysteresis()
    if "16" in entries:
        install_rpc_coalescing()
    if "17" in entries:
        install_task_index()
    if "18" in entries:
        install_early_duplicate_drop()
    if "mplex" in entries:
        _muxer = "mplex"


async def _receiver(entries: list[str], seconds: float) -> None:
    import libp2p.pubsub.pubsub as pubsub_module
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    _install(entries)
    frames = [0]
    copies = [0]
    topic_check = Pubsub._is_subscribed_to_msg

    def counted_copy(self: Any, msg: Any) -> bool:  # once per message of every RPC read
        copies[0] += 1
        return topic_check(self, msg)
    Pubsub._is_subscribed_to_msg = counted_copy  # type: ignore[method-assign]
    read = pubsub_module.read_varint_prefixed_bytes_limited

    async def counted(*args: Any, **kwargs: Any) -> bytes:
        data = await read(*args, **kwargs)
        frames[0] += 1
        return data
    pubsub_module.read_varint_prefixed_bytes_limited = counted  # type: ignore[assignment]
    host, listen = _host(0)
    async with host.run(listen):
        router = _gossipsub()
        pubsub = Pubsub(host, router, strict_signing=True)
        async with background_trio_service(pubsub), background_trio_service(router):
            await pubsub.wait_until_ready()
            sub = await pubsub.subscribe(TOPIC)
            print("ready", f"{host.get_addrs()[0]}", flush=True)
            delivered = [0]

            async def drain() -> None:
                while True:
                    await sub.get()
                    delivered[0] += 1
            async with trio.open_nursery() as nursery:
                nursery.start_soon(drain)
                await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
                cpu0, frames0, got0 = time.process_time(), frames[0], delivered[0]
                copies0 = copies[0]
                await trio.sleep(seconds)
                cpu = time.process_time() - cpu0
                print("result", cpu, frames[0] - frames0, delivered[0] - got0,
                      copies[0] - copies0, flush=True)
                nursery.cancel_scope.cancel()


async def _senders(addr: str, count: int, rate: float, seconds: float,
                   entries: list[str], burst: int, meshed: bool = True) -> None:
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr
    from libp2p.pubsub.pubsub import Pubsub
    from libp2p.tools.anyio_service import background_trio_service

    _install(["14"] + entries)  # the senders' own cost is not measured
    async with trio.open_nursery() as nursery:
        pubsubs: list[Any] = []
        ready = trio.Event()
        done = trio.Event()

        async def one(i: int) -> None:
            host, listen = _host(1 + i)
            async with host.run(listen):
                router = _gossipsub()
                pubsub = Pubsub(host, router, strict_signing=True)
                async with background_trio_service(pubsub), background_trio_service(router):
                    await pubsub.wait_until_ready()
                    await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
                    sub = await pubsub.subscribe(TOPIC)
                    pubsubs.append((host, pubsub, sub))
                    if len(pubsubs) == count:
                        ready.set()
                    async with trio.open_nursery() as inner:
                        async def drain() -> None:
                            while True:
                                await sub.get()
                        inner.start_soon(drain)
                        await done.wait()
                        inner.cancel_scope.cancel()

        for i in range(count):
            nursery.start_soon(one, i)
        with trio.fail_after(30):
            await ready.wait()
        for host, _, _ in (pubsubs if meshed else ()):  # a full mesh among the senders too
            for other, _, _ in pubsubs:
                if other is not host:
                    await host.connect(info_from_p2p_addr(other.get_addrs()[0]))
        await trio.sleep(3)  # meshes form at the 1 s heartbeat
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        payload = b"x" * 200
        end = trio.current_time() + seconds
        k = 0
        while trio.current_time() < end:
            for _ in range(burst):
                for _, pubsub, _ in pubsubs:
                    await pubsub.publish(TOPIC, payload + k.to_bytes(8, "big"))
                    k += 1
            await trio.sleep(burst / rate)
        done.set()


def _side(side: str, args: argparse.Namespace, meshed: bool = True,
          ) -> tuple[float, int, int, int]:
    """One side's receiver: (CPU s, RPCs read, messages delivered, message copies read).
    `meshed`: the senders also connect to each other, so the receiver reads each message from
    its publisher and again from the others (duplicates); else only from its publisher."""
    entries = [f"--entry={e}" for e in SIDES[side]]
    with receiver_and_sender(
            "neuroshard_p2p.bench.gossip_cost",
            ["--role", "receiver", "--seconds", str(args.seconds)] + entries,
            lambda addr: ["--role", "senders", "--addr", addr, "--senders", str(args.senders),
                          "--rate", str(args.rate), "--seconds", str(args.seconds + 1),
                          "--burst", str(args.burst)] + entries
            + ([] if meshed else ["--star"])) as (rx, _):
        assert rx.stdout is not None
        line = rx.stdout.readline().split()
        return float(line[1]), int(line[2]), int(line[3]), int(line[4])


def _duplicates(args: argparse.Namespace) -> None:
    """What a duplicate copy costs the receiver, with every workaround a node runs (the
    "+early drop" side): the same messages at the same rate, read once each ("star": the senders
    connect only to the receiver) or also from the other senders ("mesh"), alternating. The
    difference in CPU per delivered message over the difference in copies read per delivered
    message is the CPU per extra copy, and the star's CPU per message is a first copy's (with
    its forwards to the other senders)."""
    sides = {"mesh": True, "star": False}
    figures: dict[str, list[tuple[float, float]]] = {name: [] for name in sides}
    for _ in range(args.rounds):
        for name, meshed in sides.items():
            cpu, frames, delivered, copies = _side("+early drop", args, meshed=meshed)
            per_message = cpu / max(delivered, 1)
            per_copies = copies / max(delivered, 1)
            figures[name].append((per_message, per_copies))
            print(f"  {name:>4}: {cpu:.2f} s CPU, {frames} RPCs read, {copies} copies read, "
                  f"{delivered} messages delivered: {per_message * 1e3:.3f} ms and "
                  f"{per_copies:.2f} copies per message", flush=True)
    med = {name: (statistics.median(m for m, _ in v), statistics.median(c for _, c in v))
           for name, v in figures.items()}
    (mesh_ms, mesh_copies), (star_ms, star_copies) = med["mesh"], med["star"]
    extra = mesh_copies - star_copies
    per_copy = (mesh_ms - star_ms) / extra if extra > 0 else float("nan")
    pairs = [(m[0] - s[0]) / (m[1] - s[1]) * 1e3 for m, s in zip(figures["mesh"], figures["star"])
             if m[1] > s[1]]
    print(f"gossip_cost duplicates: receiver CPU per delivered message {star_ms * 1e3:.3f} ms "
          f"with {star_copies:.2f} copies (star), {mesh_ms * 1e3:.3f} ms with {mesh_copies:.2f} "
          f"(mesh); per extra copy {per_copy * 1e3:.3f} ms (medians of {args.rounds}; per round "
          f"{', '.join(f'{x:.3f}' for x in pairs)} ms) ({args.senders} senders x {args.rate:g} "
          f"messages/s{f' in bursts of {args.burst}' if args.burst > 1 else ''}, "
          f"{args.seconds:g} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench gossip_cost",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--senders", type=int, default=4)
    parser.add_argument("--rate", type=float, default=5.0, help="messages/s per sender")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--burst", type=int, default=1,
                        help="messages each sender publishes at once, every burst/rate seconds "
                             "(default 1: evenly spread; a burst is what an event causes)")
    parser.add_argument("--duplicates", action="store_true",
                        help="measure instead what a duplicate copy costs: senders meshed with "
                             "each other or not, alternating (the node's workarounds on)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --duplicates: rounds of the two sides (default 3)")
    parser.add_argument("--role", choices=("receiver", "senders"), help=argparse.SUPPRESS)
    parser.add_argument("--entry", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--star", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "receiver":
        trio.run(_receiver, args.entry, args.seconds)
        return
    if args.role == "senders":
        trio.run(_senders, args.addr, args.senders, args.rate, args.seconds, args.entry,
                 args.burst, not args.star)
        return
    if args.duplicates:
        _duplicates(args)
        return
    per_rpc: dict[str, list[float]] = {side: [] for side in SIDES}
    per_message: dict[str, list[float]] = {side: [] for side in SIDES}
    for _ in range(2):
        for side in SIDES:
            cpu, frames, delivered, _copies = _side(side, args)
            per_rpc[side].append(cpu / max(frames, 1))
            per_message[side].append(cpu / max(delivered, 1))
            print(f"  {side:>13}: {cpu:.2f} s CPU, {frames} RPCs read, {delivered} messages "
                  f"delivered: {cpu / max(frames, 1) * 1e3:.2f} ms per RPC, "
                  f"{cpu / max(delivered, 1) * 1e3:.2f} ms per message", flush=True)
    setup = (f" ({args.senders} senders x {args.rate:g} messages/s"
             f"{f' in bursts of {args.burst}' if args.burst > 1 else ''}, {args.seconds:g} s, "
             "medians of 2)")
    for name, figures in (("RPC read", per_rpc), ("message delivered", per_message)):
        ms = {side: statistics.median(v) * 1e3 for side, v in figures.items()}
        base = ms["shipped"]
        print(f"gossip_cost: receiver CPU per {name}, " + ", ".join(
            f"{side} {value:.2f} ms ({value / base:.2f}x)" for side, value in ms.items()) + setup)


if __name__ == "__main__":
    main()
