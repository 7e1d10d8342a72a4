"""Waiting for a condition in the tests: the one way, always with a deadline, never a bare sleep.

    await eventually(check, timeout, what)   in trio code; `check` may be sync or async
    wait_for(check, timeout, what)           in blocking code (other processes, files)

Both call `check` at once and then every `interval` seconds until it returns something truthy,
and return that value. If `timeout` seconds pass first they fail the test with
"within {timeout} s: {what} (last: ...)": what was awaited and the last value `check` returned,
or what `show()` returns, if given, when the value alone would not say why.

`eventually` measures the deadline on trio's clock and cancels a `check` still running when it
passes; `wait_for` measures it on time.monotonic() and cannot interrupt a `check`.
"""

from __future__ import annotations

import inspect
import time
from typing import Any, Callable, NoReturn

import pytest
import trio

#: Seconds between two checks unless a call site says otherwise.
POLL_S = 0.02


def _fail(timeout: float, what: str, last: Any, show: Callable[[], Any] | None) -> NoReturn:
    detail = show() if show is not None else last
    pytest.fail(f"within {timeout} s: {what} (last: {detail!r})")


async def eventually(check: Callable[[], Any], timeout: float, what: str,
                     interval: float = POLL_S, show: Callable[[], Any] | None = None) -> Any:
    """Call `check` (awaiting its result if it is awaitable) until it returns something truthy,
    at most `timeout` seconds; return that value or fail the test saying `what` did not happen."""
    last: Any = None
    with trio.move_on_after(timeout):
        while True:
            value = check()
            if inspect.isawaitable(value):
                value = await value  # cancelled at the deadline: `last` keeps the one before
            last = value
            if last:
                return last
            await trio.sleep(interval)
    _fail(timeout, what, last, show)


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = POLL_S,
             show: Callable[[], Any] | None = None) -> Any:
    """Blocking `eventually`: call `check` until it returns something truthy, at most `timeout`
    seconds; return that value or fail the test saying `what` did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        last = check()
        if last:
            return last
        left = deadline - time.monotonic()
        if left <= 0:
            _fail(timeout, what, last, show)
        time.sleep(min(interval, left))
