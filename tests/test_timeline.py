"""The one rule for seconds ↔ milliseconds (neuroshard_p2p.timeline)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neuroshard_p2p.timeline import ms_of, seconds_of, whole_ms


@given(st.integers(min_value=-(2**50), max_value=2**50))
def test_a_millisecond_survives_the_trip_through_seconds(ms: int) -> None:
    assert ms_of(seconds_of(ms)) == ms


def test_a_time_is_the_nearest_millisecond_not_the_one_below() -> None:
    assert 1.001 * 1000 < 1001 and int(1.001 * 1000) == 1000  # what truncating gave
    assert ms_of(1.001) == 1001
    assert (ms_of(0.0004), ms_of(0.0006), ms_of(-0.0006)) == (0, 1, -1)
    assert (ms_of(0.0025), ms_of(0.0035)) == (2, 4)  # half-even, as the float values lie


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_a_time_that_is_not_finite_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="finite number of seconds"):
        ms_of(bad)


def test_a_duration_must_be_a_whole_number_of_milliseconds() -> None:
    assert (whole_ms(60.0, "t"), whole_ms(0.001, "t"), whole_ms(0.3, "t")) == (60_000, 1, 300)
    with pytest.raises(ValueError, match="tick_s must be a whole number of milliseconds"):
        whole_ms(0.0005, "tick_s")
