"""A clean stop lets the jobs under way end: nobody is left unpaid or charged a fault by a node
that leaves (SIGINT, SIGTERM, SIGHUP in `run`; leaving a Daemon's block).

Measured before this: a gateway stopped with a job under way cut its provider off mid-job (served,
never paid: the provider counts it against the gateway, and three such jobs with a quarter of the
tokens get the restarted gateway refused `unpaid` for 600 s); a provider stopped mid-job cut its
gateway off (a `dropped` fault, the request sent again elsewhere). Real nodes (Daemons: libp2p,
the API, SQLite ledgers) on 127.0.0.1, the synthetic backend serving at the offered rate."""

from __future__ import annotations

import sqlite3
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import pytest
import trio

from neuroshard_p2p.ledger import ledger_path
from neuroshard_p2p.money import settle_amounts, to_nano
from neuroshard_p2p.node.job_service import STOPPING, Piece
from tests.api_harness import API_MARKET, ApiNode, api_node
from tests.waiting import eventually

#: The provider's rate: a job of N tokens takes N / RATE seconds.
RATE = 1000
#: Longest a test waits for its request to end once a node stops.
BOUND_S = 40


async def started(gateway: ApiNode, provider: ApiNode, tokens: int,
                  nursery: trio.Nursery) -> tuple[str, list[Piece]]:
    """A streamed request of `tokens` at `gateway`, read to its end in `nursery`; returns once
    the provider has served some of it."""
    async def sees_offer() -> bool:
        return bool((await gateway.get("/api/market/offers")).json()["offers"])
    await eventually(sees_offer, 10, "the gateway sees the provider's offer")
    status, pieces = gateway.node.jobs.submit_streamed(tokens, to_nano(1.0), prompt="x")
    received: list[Piece] = []

    async def read() -> None:
        async for piece in pieces:
            received.append(piece)
    nursery.start_soon(read)

    def serving() -> bool:
        return sum(p.tokens for p in received) > 0
    await eventually(serving, 10, "the provider serves the request")
    return status.request_id, received


@dataclass
class Stopped:
    """A node pair after one of them stopped mid-job: the request, what its user read, how long
    the stop took, and what `before_stop` returned."""

    gateway: ApiNode
    provider: ApiNode
    rid: str
    received: list[Piece]
    took: float
    extra: Any


@asynccontextmanager
async def stopped_midway(tmp_path: Path, stops: str, tokens: int, *,
                         before_stop: Callable[[ApiNode], Any] | None = None,
                         **settings: Any) -> AsyncIterator[Stopped]:
    """A provider (RATE tokens/s) and a gateway; a streamed request of `tokens`; once it is being
    served, `stops` ("gateway" or "provider", run with `settings`) stops cleanly. Yields while
    the other node still runs."""
    offering = {"capacity": RATE, "min_price": 0.01}
    outer, inner = ("provider", "gateway") if stops == "gateway" else ("gateway", "provider")
    keys = {"provider": 3, "gateway": 4}
    async with api_node(tmp_path / outer, keys[outer],
                        **(offering if outer == "provider" else {})) as running:
        with trio.fail_after(BOUND_S):  # the reader ends when the request does
            async with trio.open_nursery() as nursery:
                async with api_node(tmp_path / inner, keys[inner],
                                    bootstrap=(running.node.addrs[0],),
                                    **(offering if inner == "provider" else {}),
                                    **settings) as stopping:
                    gateway, provider = ((stopping, running) if stops == "gateway"
                                         else (running, stopping))
                    rid, received = await started(gateway, provider, tokens, nursery)
                    extra = before_stop(gateway) if before_stop is not None else None
                    begun = trio.current_time()
                took = trio.current_time() - begun
        yield Stopped(gateway, provider, rid, received, took, extra)


def ledger_rows(data_dir: Path) -> list[tuple[str, str, int, int]]:
    """(request id, role, tokens, payment) of every settlement in a stopped node's ledger file."""
    with sqlite3.connect(ledger_path(data_dir)) as db:
        return [tuple(r) for r in db.execute(  # type: ignore[misc]
            "SELECT request_id, role, tokens, payment FROM settlements ORDER BY request_id")]


def payments(provider: ApiNode, gateway: ApiNode) -> list[tuple[int, bool]]:
    """(tokens, paid) of each job the provider served to the gateway, as the provider saw it."""
    record = provider.node.jobs.provider.payers.record(gateway.node.jobs.signer)
    return [] if record is None else [(tokens, paid) for _, tokens, paid in record.recent]


async def provider_paid(provider: ApiNode, gateway: ApiNode) -> list[tuple[int, bool]]:
    async def read() -> list[tuple[int, bool]]:
        return payments(provider, gateway)
    return await eventually(read, 5, "the provider reads its settlement")  # type: ignore[no-any-return]


def no_faults(gateway: ApiNode) -> tuple[int, dict[str, int]]:
    desk = gateway.node.jobs.gateway
    return desk.counts["lost"], dict(desk.fault_counts)


def waiting_request(gateway: ApiNode) -> str:
    # One no provider can take: it waits at the gateway for a match.
    status = gateway.node.jobs.submit(900_000, to_nano(1.0))
    assert gateway.node.jobs.status(status.request_id).state == "pending"
    return status.request_id


async def test_a_stopping_gateway_lets_its_job_end_and_pays_for_it(tmp_path: Path) -> None:
    async with stopped_midway(tmp_path, "gateway", 3000, before_stop=waiting_request) as run:
        jobs = run.gateway.node.jobs
        done, gave_up = jobs.status(run.rid), jobs.status(run.extra)
        assert (done.state, done.tokens_served) == ("completed", 3000), done
        assert sum(p.tokens for p in run.received) == 3000
        assert (gave_up.state, gave_up.reason) == ("failed", STOPPING)
        # It waited for the job, not for the drain's limit (30 s).
        assert run.took < 10, run.took
        paid = settle_amounts(3000, done.locked_price_nano, API_MARKET.burn_rate).payment
        assert ledger_rows(run.gateway.data_dir) == [(run.rid, "gateway", 3000, paid)]
        assert await provider_paid(run.provider, run.gateway) == [(3000, True)]
        assert [(r.request_id, r.tokens, r.payment)
                for r in await run.provider.node.jobs.ledger.recent(10)] == [(run.rid, 3000, paid)]


async def test_a_stopping_provider_serves_its_job_to_the_end(tmp_path: Path) -> None:
    async with stopped_midway(tmp_path, "provider", 3000) as run:
        done = run.gateway.node.jobs.status(run.rid)
        assert (done.state, done.tokens_served, done.provider) == (
            "completed", 3000, run.provider.node.peer_id), done
        assert sum(p.tokens for p in run.received) == 3000
        assert run.took < 10, run.took
        # Not a fault: the gateway holds nothing against the provider.
        assert no_faults(run.gateway) == (0, {})
        assert payments(run.provider, run.gateway) == [(3000, True)]
        paid = settle_amounts(3000, done.locked_price_nano, API_MARKET.burn_rate).payment
        assert ledger_rows(run.provider.data_dir) == [(run.rid, "provider", 3000, paid)]
        # Its withdrawal was published when the stop began: the gateway counts no offer.
        assert await eventually(lambda: _no_offers(run.gateway), 5, "the offer is gone") is True


async def _no_offers(gateway: ApiNode) -> bool:
    return not (await gateway.get("/api/market/offers")).json()["offers"]


@pytest.mark.parametrize("stops", ["gateway", "provider"])
async def test_past_its_limit_a_stopping_node_ends_the_job_and_what_was_served_is_paid(
        tmp_path: Path, stops: str) -> None:
    # Cut off at the limit, the job went unpaid; a provider cut off was a `dropped` fault too.
    # Now a gateway cancels (JobCancel), a provider ends the job itself, and the receipt charges
    # what was served.
    async with stopped_midway(tmp_path, stops, 8000, shutdown_drain_s=1.0) as run:
        done = run.gateway.node.jobs.status(run.rid)
        assert done.state == "completed", done
        served = done.tokens_served
        # Ended at the limit, well short of the 8 s job; what the user read is what was paid.
        assert 0 < served < 8000 and sum(p.tokens for p in run.received) == served, served
        assert 1.0 <= run.took < 1.0 + 3.0 + 2.0, run.took
        gateway, provider = run.gateway.node.jobs.counters, run.provider.node.jobs.counters
        assert (gateway.cancels_sent, provider.jobs_cancelled, provider.jobs_ended_at_stop) == (
            (1, 1, 0) if stops == "gateway" else (0, 0, 1))
        assert no_faults(run.gateway) == (0, {})
        assert await provider_paid(run.provider, run.gateway) == [(served, True)]
        paid = settle_amounts(served, done.locked_price_nano, API_MARKET.burn_rate).payment
        stopped = run.gateway if stops == "gateway" else run.provider
        assert ledger_rows(stopped.data_dir) == [(run.rid, stops, served, paid)]
