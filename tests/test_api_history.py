"""The price-history recorder: exact series and averages from plain numbers, bounded memory, and
the trio driver recording every tick of a clock it is given."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from neuroshard_p2p.api.history import MAX_POINTS, PriceHistory, record_prices
from neuroshard_p2p.core.average import TickAverage, mean_nano


def test_fine_series_and_average_are_exact() -> None:
    history = PriceHistory(tick_s=1.0)
    for tick in range(100, 110):
        assert history.record(tick, tick * 1000)
    assert history.series(3600, now=109.5) == [(float(t), t * 1000) for t in range(100, 110)]
    # A 5-second window holds ticks 105..109 (their start times are within [104.5, 109.5]).
    assert history.series(5, now=109.5) == [(float(t), t * 1000) for t in range(105, 110)]
    assert history.average(5, now=109.5) == sum(t * 1000 for t in range(105, 110)) // 5
    assert history.average(5, now=10.0) is None


def test_old_and_repeated_ticks_are_ignored() -> None:
    history = PriceHistory(tick_s=1.0)
    assert history.record(5, 1)
    assert not history.record(5, 2)
    assert not history.record(4, 3)
    assert history.series(3600, now=5.0) == [(5.0, 1)]


def test_long_series_are_thinned_to_max_points_keeping_the_newest_time() -> None:
    history = PriceHistory(tick_s=1.0, max_points=10)
    for tick in range(1, 26):  # 25 ticks, groups of 3 from the newest end: 1 + 8 groups
        history.record(tick, tick)
    series = history.series(3600, now=25.0)
    assert len(series) == 9
    assert series[-1] == (25.0, (23 + 24 + 25) // 3)
    assert series[0] == (1.0, 1)  # the odd one at the old end stands alone
    assert [t for t, _ in series] == sorted(t for t, _ in series)


def test_day_window_is_minute_buckets_with_means_rounded_half_up() -> None:
    history = PriceHistory(tick_s=10.0)
    # Ticks 0..17 (0 s .. 170 s): minute 0 holds ticks 0-5, minute 1 ticks 6-11, minute 2 12-17.
    for tick in range(18):
        history.record(tick, 100 * (tick // 6) + tick)
    # Each minute's mean is n + 2.5 and the day's 1953 / 18 = 108.5: halves round up (the
    # core's mean_nano, the rounding of the embedded market's avg_price_24h too).
    assert history.series(86400, now=175.0) == [(0.0, 3), (60.0, 109), (120.0, 215)]
    assert sum(100 * (t // 6) + t for t in range(18)) == 1953
    assert history.average(86400, now=175.0) == 109
    assert history.average(3600, now=175.0) == 109   # the same ticks at tick resolution
    with pytest.raises(ValueError, match="must be 86400 s"):
        history.average(7200, now=175.0)


def test_day_average_is_the_core_one() -> None:
    """The API's 24 h average and the embedded market's are one implementation: the same ticks
    at the same prices give the same figure (here 2 ticks at 1 and 1 at 2: 4 / 3 rounds to 1)."""
    history = PriceHistory(tick_s=2.0)
    day = TickAverage(2.0)
    for tick, price in ((100, 1), (101, 1), (102, 2)):
        history.record(tick, price)
        day.add_run(tick, tick, price)
    assert history.average(86400, now=205.0) == day.average(102) == 1 == mean_nano(4, 3)
    assert mean_nano(5, 2) == 3 and mean_nano(7, 2) == 4 and mean_nano(8, 3) == 3


def test_memory_is_bounded() -> None:
    history = PriceHistory(tick_s=1.0)
    for tick in range(3 * 86400):
        history.record(tick, 7)
    assert len(history) == 3601
    assert len(history._coarse) == 1440  # whole minutes holding the last 86,400 ticks
    assert len(history.series(86400, now=3 * 86400.0)) <= MAX_POINTS
    assert len(history.series(3600, now=3 * 86400.0)) <= MAX_POINTS
    assert history.average(86400, now=3 * 86400.0) == 7


async def test_driver_records_every_tick_of_its_clock(autojump_clock: trio.testing.MockClock) -> None:
    """With trio's autojump clock the driver runs 50 ticks of 0.1 s instantly; it records each
    tick exactly once, with the price function's value."""
    history = PriceHistory(tick_s=0.1)
    start = trio.current_time()

    def now() -> float:
        return 1000.0 + trio.current_time() - start

    with trio.move_on_after(5.0):
        await record_prices(history, tick_price=lambda k: 3 * k, tick_of=lambda t: int(t * 10 + 1e-9),
                            clock=now, window_ticks=8)
    series = history.series(3600, now=now())
    ticks = [round(t * 10) for t, _ in series]
    assert ticks == list(range(ticks[0], ticks[-1] + 1))  # no tick missed or repeated
    assert ticks[0] == 10_000 - 7                       # caught up one window at start
    assert ticks[-1] >= 10_049
    assert all(price == 3 * tick for tick, (_, price) in zip(ticks, series))

