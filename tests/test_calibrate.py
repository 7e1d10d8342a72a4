"""The machine's speed as a run sees it (simnet/calibrate.py): rounds of the calibration
operation timed by CPU clock in a background thread, summarised by their mean."""

from __future__ import annotations

import time

import pytest

from simnet.calibrate import SAMPLE_OPS, SpeedSampler, sample_speed, summary, time_round_cpu


def test_summary_of_known_timings() -> None:
    assert summary([1e-6, 2e-6, 6e-6]) == {"mean_us": 3.0, "median_us": 2.0,
                                           "range_us": [1.0, 6.0], "samples": 3}
    assert summary([]) == {"samples": 0}


def test_a_round_is_cpu_time_per_operation() -> None:
    # Sleeping is not counted: the thread's CPU clock does not run while it waits.
    started = time.thread_time()
    op = time_round_cpu()
    spent = time.thread_time() - started
    assert 0 < op * SAMPLE_OPS <= spent
    assert op < 1e-3  # one encode, hash and decode of a small map


def test_the_sampler_times_a_round_every_interval_until_stopped() -> None:
    sampler = SpeedSampler(every_s=0.05).start()
    deadline = time.monotonic() + 20.0
    while len(sampler.samples) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    samples = sampler.stop()
    assert len(samples) >= 4
    count = len(samples)
    time.sleep(0.2)  # stopped: no more rounds come
    assert len(sampler.samples) == count
    times = [at for at, _ in samples]
    assert times == sorted(times)
    assert all(0 < s < 1e-3 for _, s in samples)


def test_a_sampler_never_started_stops_with_nothing() -> None:
    assert SpeedSampler().stop() == []


@pytest.mark.parametrize("seconds,every,rounds", [(0.3, 0.1, 3), (0.05, 0.1, 1)])
def test_sample_speed_in_this_thread(seconds: float, every: float, rounds: int) -> None:
    out = sample_speed(seconds, every_s=every)
    assert out["samples"] == rounds
    assert out["range_us"][0] <= out["mean_us"] <= out["range_us"][1]
