"""`python -m neuroshard_p2p.bench stream_cost`: CPU a receiving host spends per frame and per
announcement when announcements come in frames on one long-lived libp2p stream, as a bundled
relay would carry them (simnet/burst_model.py; not a protocol of the node).

Two processes on 127.0.0.1, with every libp2p workaround a node installs: the receiver (one
host, a handler that reads length-prefixed sync response frames, §8, and passes each to a
`PeerEngine` with `on_sync_response`: decode, signature, the validator, the merge, as a sync
session does) and the sender (one host, one stream to the receiver, announcements of distinct
signers signed before the window, written `--bundle` to a frame, or one per frame, at `--rate`
announcements per second for `--seconds`). Both count their process CPU over the window
(`time.process_time`). The two sides (one announcement per frame, and `--bundle` per frame)
alternate `--rounds` times, with a third: `--bundle` per frame of announcements the receiver
already holds (what a relay's duplicates cost). From the medians,

    CPU per announcement = frame / k + item   (k announcements per frame)

gives a frame's cost and an announcement's, for the receiver and the sender. CPU time scales
with the machine's speed: `python -m simnet.burst_model --measure` runs this bench with the
simulator's calibration op sampled meanwhile, and brings the figures to one speed.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import time
from typing import Any

import trio

from neuroshard_p2p.bench.pair import bench_host, receiver_and_sender

PROTOCOL = "/neuroshard-bench/stream-cost/1"
NOW_S = 1_800_000_000.0


def _install() -> None:
    from neuroshard_p2p.node.libp2p_compat import install_node_workarounds

    install_node_workarounds()


def _host(index: int) -> Any:
    return bench_host(960_000 + index, "yamux")


async def _receiver(rate: float, seconds: float) -> None:
    import coincurve
    from libp2p.custom_types import TProtocol

    from neuroshard_p2p.charter import builtin
    from neuroshard_p2p.node.engine import PeerEngine
    from neuroshard_p2p.node.streams import FrameStream
    from neuroshard_p2p.wire.framing import MAX_STREAM_FRAME

    _install()
    engine = PeerEngine(builtin("simnet").market,
                        coincurve.PrivateKey(hashlib.sha256(b"stream-cost receiver").digest()))
    # The signers are known to the view, as in a burst of changes: their first announcements
    # are merged before the window; the sender's are their second.
    for data in _announcements(_total(rate, seconds + 1), 1):
        engine.on_gossip(data, NOW_S + 11.0)
    frames = [0]
    accepted = [0]
    held = [0]
    refused = [0]

    async def handler(stream: Any) -> None:
        reader = FrameStream(stream, MAX_STREAM_FRAME)
        try:
            while (frame := await reader.next()) is not None:
                counts = engine.on_sync_response(frame, NOW_S + 21.0)
                frames[0] += 1
                accepted[0] += counts.accepted
                held[0] += counts.ignored
                refused[0] += counts.rejected
        except Exception as error:  # noqa: BLE001 - a bench: say what stopped it
            print(f"receiver: {error!r}", file=sys.stderr, flush=True)
            raise

    host, listen = _host(0)
    async with host.run(listen):
        host.set_stream_handler(TProtocol(PROTOCOL), handler)
        print("ready", f"{host.get_addrs()[0]}", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        cpu0, frames0, got0, held0 = time.process_time(), frames[0], accepted[0], held[0]
        await trio.sleep(seconds)
        cpu = time.process_time() - cpu0
        print("result", cpu, frames[0] - frames0, accepted[0] - got0, held[0] - held0,
              refused[0], flush=True)
        await trio.sleep_forever()  # until killed: the sender is still writing


def _announcements(count: int, seq: int) -> list[bytes]:
    """Announcement `seq` of each of `count` signers, `seq` × 10 s after NOW_S."""
    import coincurve

    from neuroshard_p2p.wire import Announcement, encode

    out = []
    for i in range(count):
        key = coincurve.PrivateKey(hashlib.sha256(b"stream-cost signer %d" % i).digest())
        out.append(encode(Announcement(key.public_key.format(), int((NOW_S + 10 * seq) * 1000),
                                       seq, 1000 + seq, 0, 7_000 * (i % 3), i % 3), key))
    return out


def _total(rate: float, seconds: float) -> int:
    return int(rate * (seconds + 2))


async def _sender(addr: str, rate: float, seconds: float, bundle: int, held: bool) -> None:
    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from neuroshard_p2p.wire.frames import SyncResponse, encode_sync
    from neuroshard_p2p.wire.framing import length_prefixed

    _install()
    total = _total(rate, seconds)
    wires = _announcements(total, 1 if held else 2)
    frames = [length_prefixed(encode_sync(SyncResponse(tuple(wires[i:i + bundle]))))
              for i in range(0, total, bundle)]
    host, listen = _host(1)
    async with host.run(listen):
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        await host.connect(info)
        stream = await host.new_stream(info.peer_id, [TProtocol(PROTOCOL)])
        print("ready", flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)  # "go"
        cpu0 = time.process_time()
        start = trio.current_time()
        sent = 0
        for k, frame in enumerate(frames):
            await trio.sleep_until(start + k * bundle / rate)
            await stream.write(frame)
            sent += 1
            if trio.current_time() - start >= seconds:
                break
        cpu = time.process_time() - cpu0
        print("result", cpu, sent, flush=True)
        await trio.sleep(1.0)
        await stream.close()


def _side(bundle: int, args: argparse.Namespace, held: bool = False,
          ) -> tuple[float, int, int, float, int]:
    """One side: (receiver CPU s, frames read, announcements taken, sender CPU s, frames
    written). `held`: the sender sends what the receiver's view already holds (duplicates)."""
    with receiver_and_sender(
            "neuroshard_p2p.bench.stream_cost",
            ["--role", "receiver", "--rate", str(args.rate), "--seconds", str(args.seconds)],
            lambda addr: ["--role", "sender", "--addr", addr, "--rate", str(args.rate),
                          "--seconds", str(args.seconds + 1), "--bundle", str(bundle)]
            + (["--held"] if held else [])) as (rx, tx):
        assert rx.stdout is not None and tx.stdout is not None
        line = rx.stdout.readline().split()
        accepted, ignored, refused = int(line[3]), int(line[4]), int(line[5])
        if refused or (ignored if not held else accepted):
            raise RuntimeError(f"the receiver took {accepted} as new, {ignored} as held and "
                               f"refused {refused}")
        sent = tx.stdout.readline().split()
        return float(line[1]), int(line[2]), accepted + ignored, float(sent[1]), int(sent[2])


def fit(one: float, many: float, k: int) -> tuple[float, float]:
    """(per frame, per announcement) from the CPU per announcement at 1 and at k per frame."""
    frame = (one - many) / (1 - 1 / k)
    return frame, one - frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench stream_cost",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=300.0, help="announcements per second")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bundle", type=int, default=64, help="announcements per frame")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--role", choices=("receiver", "sender"), help=argparse.SUPPRESS)
    parser.add_argument("--addr", help=argparse.SUPPRESS)
    parser.add_argument("--held", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role == "receiver":
        trio.run(_receiver, args.rate, args.seconds)
        return
    if args.role == "sender":
        trio.run(_sender, args.addr, args.rate, args.seconds, args.bundle, args.held)
        return
    per: dict[int, list[tuple[float, float]]] = {1: [], args.bundle: []}
    dups: list[float] = []
    for _ in range(args.rounds):
        for k, held in ((1, False), (args.bundle, False), (args.bundle, True)):
            rx_cpu, frames, got, tx_cpu, sent = _side(k, args, held)
            (dups.append(rx_cpu / max(got, 1)) if held else
             per[k].append((rx_cpu / max(got, 1), tx_cpu / max(sent * k, 1))))
            print(f"  {k:>3} per frame{', held' if held else ''}: receiver {rx_cpu:.2f} s CPU, "
                  f"{frames} frames, {got} announcements {'held' if held else 'new'}: "
                  f"{rx_cpu / max(got, 1) * 1e6:.1f} us each; sender {tx_cpu:.2f} s for "
                  f"{sent} frames", flush=True)
    med = {k: (statistics.median(r for r, _ in v), statistics.median(s for _, s in v))
           for k, v in per.items()}
    rx_frame, rx_item = fit(med[1][0], med[args.bundle][0], args.bundle)
    tx_frame, tx_item = fit(med[1][1], med[args.bundle][1], args.bundle)
    rx_dup = statistics.median(dups) - rx_frame / args.bundle
    print(f"stream_cost: receiver {rx_frame * 1e3:.3f} ms per frame + {rx_item * 1e6:.1f} us per "
          f"new announcement (decode, signature, validator, merge), {rx_dup * 1e6:.1f} us per "
          f"held one; sender {tx_frame * 1e3:.3f} ms "
          f"per frame + {tx_item * 1e6:.2f} us per announcement ({args.rate:g} announcements/s,"
          f" 1 and {args.bundle} per frame, {args.seconds:g} s, medians of {args.rounds})",
          flush=True)


if __name__ == "__main__":
    main()
