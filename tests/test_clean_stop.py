"""A clean stop lets the jobs under way end: nobody is left unpaid or charged a fault by a node
that leaves (SIGINT, SIGTERM, SIGHUP in `run`; leaving a Daemon's block).

Measured before this: a gateway stopped with a job under way cut its provider off mid-job (served,
never paid: the provider counts it against the gateway, and three such jobs with a quarter of the
tokens get the restarted gateway refused `unpaid` for 600 s); a provider stopped mid-job cut its
gateway off (a `dropped` fault, the request sent again elsewhere). Real nodes (Daemons: libp2p,
the API, SQLite ledgers) on 127.0.0.1, the synthetic backend serving at the offered rate."""

from __future__ import annotations

import sqlite3
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

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


def ledger_rows(data_dir: Path) -> list[tuple[str, str, int, int]]:
    """(request id, role, tokens, payment) of every settlement in a stopped node's ledger file."""
    with sqlite3.connect(ledger_path(data_dir)) as db:
        return [tuple(r) for r in db.execute(  # type: ignore[misc]
            "SELECT request_id, role, tokens, payment FROM settlements ORDER BY request_id")]


def payments(provider: ApiNode, gateway: ApiNode) -> list[tuple[int, bool]]:
    """(tokens, paid) of each job the provider served to the gateway, as the provider saw it."""
    record = provider.node.jobs.provider.payers.record(gateway.node.jobs.signer)
    return [] if record is None else [(tokens, paid) for _, tokens, paid in record.recent]


async def test_a_stopping_gateway_lets_its_job_end_and_pays_for_it(tmp_path: Path) -> None:
    async with api_node(tmp_path / "provider", 3, capacity=RATE, min_price=0.01) as provider:
        with trio.fail_after(BOUND_S):  # the reader ends when the request does
            async with trio.open_nursery() as nursery:
                async with AsyncExitStack() as stack:
                    gateway = await stack.enter_async_context(api_node(
                        tmp_path / "gateway", 4, bootstrap=(provider.node.addrs[0],)))
                    rid, received = await started(gateway, provider, 3000, nursery)
                    # One no provider can take: it waits here for a match.
                    waiting = gateway.node.jobs.submit(900_000, to_nano(1.0))
                    assert gateway.node.jobs.status(waiting.request_id).state == "pending"
                    begun = trio.current_time()
                took = trio.current_time() - begun  # the gateway has stopped
        jobs = gateway.node.jobs
        done, gave_up = jobs.status(rid), jobs.status(waiting.request_id)
        assert (done.state, done.tokens_served) == ("completed", 3000), done
        assert sum(p.tokens for p in received) == 3000
        assert (gave_up.state, gave_up.reason) == ("failed", STOPPING)
        # It waited for the job, not for the drain's limit (30 s).
        assert took < 10, took
        paid = settle_amounts(3000, done.locked_price_nano, API_MARKET.burn_rate).payment
        assert ledger_rows(gateway.data_dir) == [(rid, "gateway", 3000, paid)]

        async def provider_paid() -> list[tuple[int, bool]]:
            return payments(provider, gateway)
        assert await eventually(provider_paid, 5, "the provider reads its settlement") == [
            (3000, True)]
        assert [(r.request_id, r.tokens, r.payment)
                for r in await provider.node.jobs.ledger.recent(10)] == [(rid, 3000, paid)]


async def test_a_stopping_provider_serves_its_job_to_the_end(tmp_path: Path) -> None:
    async with api_node(tmp_path / "gateway", 4) as gateway:
        with trio.fail_after(BOUND_S):  # the reader ends when the request does
            async with trio.open_nursery() as nursery:
                async with AsyncExitStack() as stack:
                    provider = await stack.enter_async_context(api_node(
                        tmp_path / "provider", 3, capacity=RATE, min_price=0.01,
                        bootstrap=(gateway.node.addrs[0],)))
                    rid, received = await started(gateway, provider, 3000, nursery)
                    begun = trio.current_time()
                took = trio.current_time() - begun  # the provider has stopped
        done = gateway.node.jobs.status(rid)
        assert (done.state, done.tokens_served, done.provider) == (
            "completed", 3000, provider.node.peer_id), done
        assert sum(p.tokens for p in received) == 3000
        assert took < 10, took
        # Not a fault: the gateway holds nothing against the provider.
        assert (gateway.node.jobs.gateway.counts["lost"],
                dict(gateway.node.jobs.gateway.fault_counts)) == (0, {})
        assert payments(provider, gateway) == [(3000, True)]
        paid = settle_amounts(3000, done.locked_price_nano, API_MARKET.burn_rate).payment
        assert ledger_rows(provider.data_dir) == [(rid, "provider", 3000, paid)]
        # Its offer was withdrawn when the stop began: the gateway counts none.
        assert await eventually(lambda: _no_offers(gateway), 5, "the offer is gone") is True


async def _no_offers(gateway: ApiNode) -> bool:
    return not (await gateway.get("/api/market/offers")).json()["offers"]


async def test_past_its_limit_a_stopping_gateway_cancels_and_pays_what_was_served(
        tmp_path: Path) -> None:
    async with api_node(tmp_path / "provider", 3, capacity=RATE, min_price=0.01) as provider:
        with trio.fail_after(BOUND_S):  # the reader ends when the request does
            async with trio.open_nursery() as nursery:
                async with AsyncExitStack() as stack:
                    gateway = await stack.enter_async_context(api_node(
                        tmp_path / "gateway", 4, bootstrap=(provider.node.addrs[0],),
                        shutdown_drain_s=1.0))
                    rid, received = await started(gateway, provider, 8000, nursery)
                    begun = trio.current_time()
                took = trio.current_time() - begun
        done = gateway.node.jobs.status(rid)
        assert done.state == "completed", done
        served = done.tokens_served
        # Cut at the limit, well short of the 8 s job; what the user read is what was paid.
        assert 0 < served < 8000 and sum(p.tokens for p in received) == served, served
        assert 1.0 <= took < 1.0 + 3.0 + 2.0, took
        paid = settle_amounts(served, done.locked_price_nano, API_MARKET.burn_rate).payment
        assert ledger_rows(gateway.data_dir) == [(rid, "gateway", served, paid)]

        async def provider_paid() -> list[tuple[int, bool]]:
            return payments(provider, gateway)
        assert await eventually(provider_paid, 5, "the provider reads its settlement") == [
            (served, True)]


async def test_past_its_limit_a_stopping_provider_ends_its_job_and_is_paid_for_it(
        tmp_path: Path) -> None:
    # Cut off at the limit, the job was a `dropped` fault at the gateway and unpaid.
    async with api_node(tmp_path / "gateway", 4) as gateway:
        with trio.fail_after(BOUND_S):  # the reader ends when the request does
            async with trio.open_nursery() as nursery:
                async with AsyncExitStack() as stack:
                    provider = await stack.enter_async_context(api_node(
                        tmp_path / "provider", 3, capacity=RATE, min_price=0.01,
                        bootstrap=(gateway.node.addrs[0],), shutdown_drain_s=1.0))
                    rid, received = await started(gateway, provider, 8000, nursery)
                    begun = trio.current_time()
                took = trio.current_time() - begun
        done = gateway.node.jobs.status(rid)
        assert done.state == "completed", done
        served = done.tokens_served
        assert 0 < served < 8000 and sum(p.tokens for p in received) == served, served
        assert 1.0 <= took < 1.0 + 3.0 + 2.0, took
        assert provider.node.jobs.counters.jobs_ended_at_stop == 1
        assert (gateway.node.jobs.gateway.counts["lost"],
                dict(gateway.node.jobs.gateway.fault_counts)) == (0, {})
        assert payments(provider, gateway) == [(served, True)]
        paid = settle_amounts(served, done.locked_price_nano, API_MARKET.burn_rate).payment
        assert ledger_rows(provider.data_dir) == [(rid, "provider", served, paid)]
