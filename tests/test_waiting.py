"""tests/waiting.py, the tests' one way to wait: it returns the first truthy value, and at the
deadline it fails saying what was awaited and what the check last returned. The trio cases run
on trio's autojump clock, so their deadlines pass without waiting."""

from __future__ import annotations

import time
from typing import Any, Callable

import pytest
import trio
import trio.testing

from tests.waiting import eventually, wait_for


def answers(*values: Any) -> tuple[Callable[[], Any], list[Any]]:
    """A check that returns `values` one per call (then the last one again), and its calls."""
    calls: list[Any] = []

    def check() -> Any:
        value = values[min(len(calls), len(values) - 1)]
        calls.append(value)
        return value

    return check, calls


async def test_eventually_returns_the_first_truthy_value(
        autojump_clock: trio.testing.MockClock) -> None:
    check, calls = answers(0, None, "", 7, 8)
    started = trio.current_time()
    assert await eventually(check, 10, "a value") == 7
    assert calls == [0, None, "", 7]
    assert trio.current_time() - started == pytest.approx(3 * 0.02)  # a poll between two checks


async def test_eventually_awaits_an_async_check(autojump_clock: trio.testing.MockClock) -> None:
    check, calls = answers([], [], ["ready"])

    async def async_check() -> Any:
        await trio.sleep(0.1)
        return check()

    assert await eventually(async_check, 10, "a list") == ["ready"]
    assert len(calls) == 3


async def test_eventually_fails_with_what_and_the_last_value(
        autojump_clock: trio.testing.MockClock) -> None:
    check, _ = answers(None, [], set())
    started = trio.current_time()
    with pytest.raises(pytest.fail.Exception) as failed:
        await eventually(check, 2, "a peer answers")
    assert str(failed.value) == "within 2 s: a peer answers (last: set())"
    assert trio.current_time() - started == pytest.approx(2)


async def test_eventually_shows_what_show_returns(autojump_clock: trio.testing.MockClock) -> None:
    with pytest.raises(pytest.fail.Exception) as failed:
        await eventually(lambda: False, 1.5, "peers agree", show=lambda: {"a": 3, "b": 4})
    assert str(failed.value) == "within 1.5 s: peers agree (last: {'a': 3, 'b': 4})"


async def test_eventually_cancels_a_check_still_running_at_the_deadline(
        autojump_clock: trio.testing.MockClock) -> None:
    async def hangs() -> bool:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    started = trio.current_time()
    with pytest.raises(pytest.fail.Exception) as failed:
        await eventually(hangs, 3, "an answer")
    assert str(failed.value) == "within 3 s: an answer (last: None)"
    assert trio.current_time() - started == pytest.approx(3)


def test_wait_for_returns_the_first_truthy_value() -> None:
    check, calls = answers(False, False, "done")
    assert wait_for(check, 10, "done", interval=0.001) == "done"
    assert calls == [False, False, "done"]


def test_wait_for_fails_at_the_deadline_with_what_and_the_last_value() -> None:
    check, calls = answers(None, 0, [])
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception) as failed:
        wait_for(check, 0.2, "the queue fills", interval=0.01)
    waited = time.monotonic() - started
    assert str(failed.value) == "within 0.2 s: the queue fills (last: [])"
    assert 0.2 <= waited < 5  # not before the deadline; the upper bound only catches a hang
    assert len(calls) >= 5
