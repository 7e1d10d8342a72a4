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
