"""What a node's identity work costs its event loop: the wake-up delay of `trio.sleep(0.001)`
(median and p99) while the node is idle, while a thread of its process grinds (how the node ground
before: `hashlib` keeps the GIL for inputs this small), and while the node's `IdentityWork` grinds
in its child process. All three in one run, so the ratios travel between machines.

    python -m neuroshard_p2p.bench grind [--seconds 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Sequence

import coincurve
import trio

from neuroshard_p2p.node.work import CHUNK, IdentityWork
from neuroshard_p2p.wire.work import Found, grind

#: More bits than anyone finds in a benchmark's seconds: the grinder never stops by itself.
NEVER_BITS = 60


async def _wake_delays(seconds: float) -> tuple[float, float]:
    """Median and p99 of how late `trio.sleep(0.001)` returns, in ms, over `seconds`."""
    late: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end and len(late) < 1_000_000:
        t = time.perf_counter()
        await trio.sleep(0.001)
        late.append(time.perf_counter() - t - 0.001)
    late.sort()
    return late[len(late) // 2] * 1e3, late[int(len(late) * 0.99)] * 1e3


async def _thread_grinder(signer: bytes) -> None:
    start = 0
    while True:
        await trio.to_thread.run_sync(grind, signer, start, CHUNK, Found(0, 0), NEVER_BITS)
        start += CHUNK


async def _measure(seconds: float) -> None:
    signer = coincurve.PrivateKey().public_key.format(compressed=True)
    idle = await _wake_delays(seconds)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_thread_grinder, signer)
        await trio.sleep(0.3)
        thread = await _wake_delays(seconds)
        nursery.cancel_scope.cancel()
    with tempfile.TemporaryDirectory() as tmp:
        async with trio.open_nursery() as nursery:
            work = IdentityWork(signer, NEVER_BITS, Path(tmp), on_better=lambda _nonce: None)
            nursery.start_soon(work.run)
            await trio.sleep(1.0)  # the child process starts
            child = await _wake_delays(seconds)
            nursery.cancel_scope.cancel()
    print(f"{'event loop wake-up delay':40} {'median ms':>10} {'p99 ms':>8} {'median/idle':>12}")
    for name, (median, p99) in (("idle", idle), ("grinding in a thread (before)", thread),
                                ("grinding in a child process (node)", child)):
        print(f"{name:40} {median:10.2f} {p99:8.2f} {median / max(idle[0], 1e-6):12.1f}")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench grind",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="each measurement's length")
    args = parser.parse_args(argv)
    trio.run(_measure, args.seconds)


if __name__ == "__main__":
    main()
