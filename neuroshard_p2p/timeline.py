"""The signed timeline: seconds (float, what clocks and settings give) ↔ integer milliseconds
(what the wire carries and every time rule works in).

One rule everywhere: a time in seconds becomes the *nearest* millisecond (half-even), so that
`seconds_of(ms)` given back as a time means exactly `ms` again (1.001 s is 1000.9999999999999 ms
as a float; truncating would make it 1000). Durations that the view builds its
ticks from must be whole milliseconds (`whole_ms`), since rounding them would shift every tick.
"""

from __future__ import annotations

import math

MS_PER_S = 1000


def ms_of(seconds: float) -> int:
    """A time or duration in seconds to the nearest integer millisecond (half-even)."""
    if not math.isfinite(seconds):
        raise ValueError(f"a time must be a finite number of seconds, got {seconds!r}")
    return round(seconds * MS_PER_S)


def seconds_of(ms: int) -> float:
    """Integer milliseconds to seconds (float); `ms_of(seconds_of(ms)) == ms` for every ms below
    2^50 (any time before the year 37,000)."""
    return ms / MS_PER_S


def whole_ms(seconds: float, name: str) -> int:
    """A duration in seconds as integer milliseconds; refuses one that is not a whole number of
    ms (beyond float noise), naming the setting, since the view's timeline is integer ms."""
    ms = ms_of(seconds)
    if abs(ms - seconds * MS_PER_S) > 1e-6 * max(1.0, abs(seconds * MS_PER_S)):
        raise ValueError(f"{name} must be a whole number of milliseconds, got {seconds!r} s")
    return ms


__all__ = ["MS_PER_S", "ms_of", "seconds_of", "whole_ms"]
