"""A fixed unit of interpreter work, timed in the same process as a run.

Wall seconds do not travel between machines (or between loads of one shared machine); a run's
wall time per engine call divided by the time of this fixed operation, measured minutes apart in
the same process, does much better: both slow down together when the CPU is slower or shared.
The operation is what a peer does per message, in miniature: msgpack-encode a small
announcement-shaped map, SHA-256 it, and decode it again.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgpack

#: The map encoded by one calibration operation (shape of a capacity announcement).
_SAMPLE = {"v": 1, "kind": "cap", "seq": 12345, "issued_at_ms": 1_700_000_000_000,
           "capacity": 1000, "queue": 17, "peer": b"\x01" * 38, "sig": b"\x02" * 64}


def calibration_op() -> bytes:
    """One calibration operation: encode, hash, decode."""
    packed = msgpack.packb(_SAMPLE)
    digest = hashlib.sha256(packed).digest()
    msgpack.unpackb(packed)
    return digest


def time_calibration_op(ops: int = 20_000, rounds: int = 3) -> float:
    """Seconds per calibration operation: the fastest of `rounds` rounds of `ops` operations
    (the fastest round is the one least disturbed by other processes on the machine)."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(ops):
            calibration_op()
        best = min(best, (time.perf_counter() - started) / ops)
    return best


#: Calibration operations in one round of a `SpeedSampler` (2-4 ms on the 2026 test machine).
SAMPLE_OPS = 1_000


def time_round_cpu(ops: int = SAMPLE_OPS) -> float:
    """Seconds per calibration operation over one round of `ops`, by this thread's CPU clock:
    the core's speed while the round ran, without the time the thread waited for a core (other
    processes' load does not count, as it does not count in a process's CPU time either)."""
    started = time.thread_time()
    for _ in range(ops):
        calibration_op()
    return (time.thread_time() - started) / ops


class SpeedSampler:
    """The machine's speed over a stretch of time, as the processes measured then saw it: one
    round of SAMPLE_OPS operations timed by CPU clock (`time_round_cpu`) every `every_s` seconds,
    in a background thread, until `stop`.

    One timing before a run is not enough on a virtual machine: the 2-core VM of docs/scaling.md
    flips between a fast and a slow mode within seconds, idle or not (rounds of 2.1 us and of
    3.6-4.0 us in the same minute), and a run's CPU seconds are the sum over both. The mean of the
    rounds in a window estimates the mean cost of a unit of work in it, the figure a run's CPU
    seconds are divided by to travel (`summary`)."""

    def __init__(self, every_s: float = 0.5) -> None:
        import threading

        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []  # (time.time(), seconds per op)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="speed-sampler", daemon=True)

    def start(self) -> "SpeedSampler":
        self._thread.start()
        return self

    def stop(self) -> list[tuple[float, float]]:
        self._stop.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=10.0)
        return self.samples

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.samples.append((time.time(), time_round_cpu()))


def summary(samples: list[float]) -> dict[str, Any]:
    """Seconds-per-op samples as microseconds: mean (the figure to scale by), median, range."""
    import statistics

    us = sorted(1e6 * s for s in samples)
    if not us:
        return {"samples": 0}
    return {"mean_us": round(statistics.fmean(us), 3), "median_us": round(statistics.median(us), 3),
            "range_us": [round(us[0], 3), round(us[-1], 3)], "samples": len(us)}


def sample_speed(seconds: float, every_s: float = 0.25) -> dict[str, Any]:
    """`SpeedSampler`'s rounds in this thread for `seconds` (for a command that has nothing
    else to do meanwhile), summarised."""
    rounds = max(1, round(seconds / every_s))
    out = []
    for _ in range(rounds):
        out.append(time_round_cpu())
        time.sleep(every_s)
    return summary(out)
