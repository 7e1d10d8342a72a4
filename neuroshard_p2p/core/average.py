"""The 24 h average price: per-tick prices summed in buckets of about a minute, in bounded memory.

One implementation for the embedded market (`core.market`) and the node's price history
(`api.history`). The average is time-weighted (every tick lasts tick_s, so it weighs ticks, not
events) over the buckets that hold any of the last ⌈86,400 s / tick_s⌉ ticks up to the current
one: a bucket enters and leaves whole, so the horizon is 24 h give or take one bucket.

Rounding, everywhere an average of nano prices is taken (the 24 h average, a bucket's mean, a
thinned chart point): the exact mean rounded to the nearest nano-NEURO, halves up —
`mean_nano(total, count) = (total + count // 2) // count`, integers only.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from neuroshard_p2p.money import from_nano

AVERAGE_HORIZON_S = 24 * 3600.0
AVERAGE_BUCKET_S = 60.0


def mean_nano(total: int, count: int) -> int:
    """total / count rounded to the nearest integer, halves up (count > 0)."""
    return (total + count // 2) // count


@dataclass(frozen=True)
class PricePoint:
    """One bucket (about a minute) of price history: the time-weighted average price of its ticks."""

    at: float          # start of the bucket, seconds since the epoch
    price_nano: int    # mean of the bucket's tick prices (mean_nano), nano-NEURO per 1M tokens
    ticks: int         # how many ticks it averages

    @property
    def price(self) -> float:
        """The average price in NEURO per 1M tokens."""
        return from_nano(self.price_nano)


class TickAverage:
    """Sums of per-tick prices in buckets of about a minute (round(60 s / tick_s) ticks, at least
    one) over a 24 h horizon: a time-weighted average in memory bounded by horizon / bucket,
    whatever the traffic. Ticks are added in increasing order."""

    def __init__(self, tick_s: float) -> None:
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise ValueError("tick_s must be > 0")
        self.tick_s = tick_s
        self.bucket_ticks = max(1, round(AVERAGE_BUCKET_S / tick_s))
        self.horizon_ticks = max(1, math.ceil(AVERAGE_HORIZON_S / tick_s))
        self._buckets: deque[list[int]] = deque()   # [bucket id, sum of prices, ticks]

    def __len__(self) -> int:
        """Buckets held."""
        return len(self._buckets)

    def add_run(self, first: int, last: int, price_nano: int) -> None:
        """Ticks first..last (in order, after every tick added before) all had this price."""
        first = max(first, last - self.horizon_ticks + 1)  # older ticks would be evicted anyway
        size = self.bucket_ticks
        for bucket in range(first // size, last // size + 1):
            ticks = min(last, (bucket + 1) * size - 1) - max(first, bucket * size) + 1
            if self._buckets and self._buckets[-1][0] == bucket:
                self._buckets[-1][1] += price_nano * ticks
                self._buckets[-1][2] += ticks
            else:
                self._buckets.append([bucket, price_nano * ticks, ticks])
        self._evict(last + 1)

    def _oldest_bucket(self, current_tick: int) -> int:
        return (current_tick - self.horizon_ticks + 1) // self.bucket_ticks

    def _evict(self, current_tick: int) -> None:
        oldest = self._oldest_bucket(current_tick)
        while self._buckets and self._buckets[0][0] < oldest:
            self._buckets.popleft()

    def totals(self, current_tick: int) -> tuple[int, int]:
        """(sum of prices, ticks) of the recorded ticks in the buckets of the horizon that ends at
        `current_tick` (buckets after the current tick's are left out). Only reads."""
        oldest = self._oldest_bucket(current_tick)
        newest = current_tick // self.bucket_ticks
        total = count = 0
        for bucket, bucket_total, ticks in self._buckets:
            if oldest <= bucket <= newest:
                total += bucket_total
                count += ticks
        return total, count

    def average(self, current_tick: int, current_price_nano: int | None = None) -> int | None:
        """mean_nano over the recorded ticks of the horizon ending at `current_tick`, plus the
        current tick at `current_price_nano` if given (when it is not recorded yet); None if
        there is nothing to average."""
        total, count = self.totals(current_tick)
        if current_price_nano is not None:
            total += current_price_nano
            count += 1
        return mean_nano(total, count) if count else None

    def history(self) -> list[PricePoint]:
        """Every bucket held, oldest first, at its start time with its mean price."""
        return [PricePoint(at=bucket * self.bucket_ticks * self.tick_s,
                           price_nano=mean_nano(total, ticks), ticks=ticks)
                for bucket, total, ticks in self._buckets]


__all__ = ["TickAverage", "PricePoint", "mean_nano", "AVERAGE_HORIZON_S", "AVERAGE_BUCKET_S"]
