"""The ledger for trio code: every blocking SQLite call runs in a worker thread.

Settlements go through one `trio.CapacityLimiter(1)`, so at most one worker thread holds the
ledger's connection at a time and a burst of receipts queues in trio rather than piling up
threads. `verify()` reads through its own connection (WAL snapshot), so it gets its own limiter
and a long verification never holds up settlements.

Calls are not abandoned on cancellation (trio's default): a settlement that has started either
commits or rolls back before the cancelled task sees `Cancelled`, so the caller never loses track
of money that moved.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, TypeVar

import trio

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.ledger.checks import MatchedJob
from neuroshard_p2p.ledger.store import Ledger, LedgerTotals, SettlementRecord, VerifyReport
from neuroshard_p2p.money import Settlement
from neuroshard_p2p.wire import Receipt

T = TypeVar("T")


class AsyncLedger:
    """`Ledger` with awaitable methods of the same names; use as `async with`."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self._writer = trio.CapacityLimiter(1)
        self._verifier = trio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, synchronous: str = "FULL") -> "AsyncLedger":
        ledger = await trio.to_thread.run_sync(partial(Ledger.open, path, synchronous=synchronous))
        return cls(ledger)

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(partial(fn, *args, **kwargs), limiter=self._writer)

    async def settle(self, receipt: Receipt | bytes, role: str, now: float,
                     burn_rate: float) -> Settlement:
        """See `Ledger.settle`."""
        return await self._run(self.ledger.settle, receipt, role, now, burn_rate)

    async def accept(self, data: bytes, job: MatchedJob, *, capacity_tokens_per_s: int,
                     now: float, config: MarketConfig, role: str = "gateway") -> Settlement:
        """See `Ledger.accept`."""
        return await self._run(self.ledger.accept, data, job,
                               capacity_tokens_per_s=capacity_tokens_per_s, now=now,
                               config=config, role=role)

    async def totals(self, role: str | None = None) -> LedgerTotals:
        return await self._run(self.ledger.totals, role)

    async def recent(self, limit: int = 20) -> list[SettlementRecord]:
        return await self._run(self.ledger.recent, limit)

    async def earnings(self, provider: bytes) -> int:
        return await self._run(self.ledger.earnings, provider)

    async def spent(self, user: str) -> int:
        return await self._run(self.ledger.spent, user)

    async def recent_tokens(self, provider: bytes, now: float) -> int:
        return await self._run(self.ledger.recent_tokens, provider, now)

    async def refusals(self) -> dict[str, int]:
        return await self._run(self.ledger.refusals)

    async def summary(self, recent_limit: int = 10,
                      provider: bytes | None = None) -> dict[str, Any]:
        return await self._run(self.ledger.summary, recent_limit, provider)

    async def verify(self) -> VerifyReport:
        return await trio.to_thread.run_sync(self.ledger.verify, limiter=self._verifier)

    async def aclose(self) -> None:
        await self._run(self.ledger.close)

    async def __aenter__(self) -> "AsyncLedger":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


__all__ = ["AsyncLedger"]
