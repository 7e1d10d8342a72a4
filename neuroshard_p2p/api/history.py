"""The price history a node shows: the last hour tick by tick, the last day minute by minute.

The merged view keeps only the announcements the price window needs, so it cannot answer "what was
the price three hours ago". This recorder keeps that answer, in bounded memory: the price of every
tick for the last hour, and per-minute sums for the last 24 h — the core's `TickAverage`, the one
the embedded market's `avg_price_24h` uses, so the 24 h average is computed and rounded one way
(`core.average`: the mean rounded to the nearest nano, halves up; so is every mean here). It is
sans-IO — the driver (`record_prices`) reads the node's clock and feeds it ticks — so it is tested
with plain numbers.

A tick's price is a pure function of the announcements (the same on every peer), so recording
`tick_price(k)` for each tick k the node lives through gives the same series on every node that was
up at the time.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Callable

import trio

from neuroshard_p2p.core.average import TickAverage, mean_nano

FINE_WINDOW_S = 3600.0
COARSE_WINDOW_S = 86400.0
#: Most points a series carries; longer ones are averaged in consecutive groups (a chart a few
#: hundred pixels wide cannot show more, and the dashboard fetches it every 3 s).
MAX_POINTS = 720


class PriceHistory:
    """Recorded tick prices (see module docstring). Ticks must be recorded in increasing order;
    a tick already recorded (or older) is ignored, so a driver that catches up twice is harmless."""

    def __init__(self, tick_s: float, *, max_points: int = MAX_POINTS) -> None:
        if not (math.isfinite(tick_s) and tick_s > 0):
            raise ValueError("tick_s must be > 0")
        if max_points < 2:
            raise ValueError("max_points must be >= 2")
        self.tick_s = tick_s
        self.max_points = max_points
        self._fine: deque[tuple[int, int]] = deque(maxlen=math.ceil(FINE_WINDOW_S / tick_s) + 1)
        self._coarse = TickAverage(tick_s)
        self.last_tick: int | None = None

    def __len__(self) -> int:
        """Ticks held at fine resolution."""
        return len(self._fine)

    def record(self, tick: int, price_nano: int) -> bool:
        """Record the price of `tick`; False (and nothing changes) if it is not newer than the
        last one recorded."""
        if self.last_tick is not None and tick <= self.last_tick:
            return False
        self.last_tick = tick
        self._fine.append((tick, price_nano))
        self._coarse.add_run(tick, tick, price_nano)
        return True

    def series(self, window_s: float, now: float) -> list[tuple[float, int]]:
        """(time, price_nano) points of the last `window_s` seconds before `now`, oldest first,
        at most `max_points`. Up to an hour: one point per tick (averaged in groups when there are
        more than max_points); longer: one point per minute (the minute's mean, at its start;
        the day's `TickAverage` buckets)."""
        start = now - window_s
        if window_s <= FINE_WINDOW_S:
            points = [(tick * self.tick_s, price) for tick, price in self._fine
                      if start <= tick * self.tick_s <= now]
        else:
            points = [(p.at, p.price_nano) for p in self._coarse.history()
                      if start <= p.at <= now]
        return _thin(points, self.max_points)

    def average(self, window_s: float, now: float) -> int | None:
        """Mean price (nano-NEURO per 1M tokens, `mean_nano`: nearest, halves up) over the ticks
        recorded in the last `window_s` seconds; None when none were. Up to an hour: the ticks
        that start in [now − window_s, now]. The day (COARSE_WINDOW_S, the only longer window):
        the core's 24 h average up to the tick of `now` (`TickAverage.average`, whole minutes)."""
        if window_s > FINE_WINDOW_S:
            if window_s != COARSE_WINDOW_S:
                raise ValueError(f"windows over {FINE_WINDOW_S:g} s must be {COARSE_WINDOW_S:g} s")
            return self._coarse.average(math.floor(now / self.tick_s))
        start = now - window_s
        total = count = 0
        for tick, price in self._fine:
            if start <= tick * self.tick_s <= now:
                total += price
                count += 1
        return mean_nano(total, count) if count else None


def _thin(points: list[tuple[float, int]], max_points: int) -> list[tuple[float, int]]:
    """Average consecutive groups so at most `max_points` remain; each group is shown at the time
    of its last point (so the newest point keeps its time) with its mean price."""
    if len(points) <= max_points:
        return points
    size = math.ceil(len(points) / max_points)
    thinned = []
    # Group from the newest end so the latest point is always a group's last.
    first = len(points) % size
    if first:
        head = points[:first]
        thinned.append((head[-1][0], mean_nano(sum(p for _, p in head), len(head))))
    for i in range(first, len(points), size):
        group = points[i:i + size]
        thinned.append((group[-1][0], mean_nano(sum(p for _, p in group), len(group))))
    return thinned


async def record_prices(history: PriceHistory, tick_price: Callable[[int], int],
                        tick_of: Callable[[float], int], clock: Callable[[], float],
                        window_ticks: int) -> None:
    """Record the price of every tick as it starts, until cancelled. After a stall (a busy event
    loop, a suspended laptop) it catches up at most `window_ticks` ticks: older ones depend on
    announcements the view may no longer hold."""
    tick_s = history.tick_s
    while True:
        now = clock()
        current = tick_of(now)
        first = current - window_ticks + 1
        if history.last_tick is not None:
            first = max(first, history.last_tick + 1)
        for tick in range(first, current + 1):
            history.record(tick, tick_price(tick))
        # Wake just after the next tick starts (a hair late rather than early).
        await trio.sleep(max((current + 1) * tick_s - clock(), 0.0) + min(0.001, tick_s / 10))


__all__ = ["PriceHistory", "record_prices", "FINE_WINDOW_S", "COARSE_WINDOW_S", "MAX_POINTS"]
