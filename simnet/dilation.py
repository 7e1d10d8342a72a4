"""Time dilation for real nodes on one machine (`measure-real --dilation K`).

Run with dilation K, every worker process's trio loop and every node's clock run K times slower
than the wall: a node's 1 s tick, gossipsub's 1 s heartbeat, the send linger, the sync periods
and every timeout take K s of wall time, and a node's signed times advance 1 s per K s. The
network then sees K times the CPU per second of its own time that the machine has: 100 nodes on
2 cores with K = 2 each get as much CPU per network second as 25 nodes per core would. This is
time-warped network emulation (Gupta et al., "To Infinity and Beyond: Time-Warped Network
Emulation", NSDI 2006): the same code, the same messages, only the clocks scaled. It separates
what the protocol does from what the machine's share of a core does to it.

What it does not scale: loopback's own latency (tens of µs, already far below any timer) and
py-libp2p's reads of `time.time()` (gossipsub's prune backoff, GRAFT-flood threshold, spam-rate
windows and fanout TTL, pubsub's seen-message TTL), which then pass K times faster in network
time. docs/scaling.md, "Seventeenth pass", says what this does and does not show.

Network time is `origin + (wall − origin) / K`, one `origin` (a wall instant) for all the
processes of a run, so every process and node agrees on it as they agree on the wall.
"""

from __future__ import annotations

import time

import trio


def dilation(k: float) -> float:
    """`k` as a float, or ValueError unless it is at least 1 (NaN included)."""
    if not k >= 1.0:
        raise ValueError(f"dilation must be at least 1, not {k!r}")
    return float(k)


class NetClock:
    """The network's clock in seconds since the epoch: `origin + (time.time() − origin) / k`."""

    def __init__(self, k: float = 1.0, origin: float | None = None) -> None:
        self.k = dilation(k)
        self.origin = time.time() if origin is None else float(origin)

    def __call__(self) -> float:
        return self.of(time.time())

    def of(self, wall: float) -> float:
        """The network time of a wall instant (`time.time()` seconds)."""
        return self.origin + (wall - self.origin) / self.k


class DilatedClock(trio.abc.Clock):
    """A trio clock running `k` times slower than `time.perf_counter`: `trio.sleep(1)` takes
    `k` seconds of wall time, and `trio.current_time()` advances 1 s per `k` s."""

    def __init__(self, k: float) -> None:
        self.k = dilation(k)

    def start_clock(self) -> None:
        pass

    def current_time(self) -> float:
        return time.perf_counter() / self.k

    def deadline_to_sleep_time(self, deadline: float) -> float:
        return max(0.0, (deadline - self.current_time()) * self.k)
