"""A job on a clearing network end to end (issue 18): real nodes on 127.0.0.1, a gateway whose
bids enter its announcements, a provider's ask, the clearing price every view computes from
them, and the settlement at that price in both ledgers."""

from __future__ import annotations

from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator

import trio

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.daemon import Daemon
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.job_service import JobService
from neuroshard_p2p.node.settings import NodeSettings
from tests.conftest import make_key
from tests.node_harness import simnet_charter
from tests.waiting import eventually

CLEARING_NET = MarketConfig(curve="clearing", target_response_s=2.0, claim_timeout_s=10.0,
                            request_expiry_s=60.0)
ASK = 300_000_000  # the provider's 0.3 NEURO per 1M tokens


@asynccontextmanager
async def job_node(data_dir: Path, key_index: int, *, capacity: int = 0,
                   min_price: float = 0.0) -> AsyncIterator[tuple[Node, JobService]]:
    settings = NodeSettings(data_dir=data_dir, listen=("/ip4/127.0.0.1/tcp/0",), api="off",
                            capacity=capacity, min_price=min_price, announce_interval_s=5.0,
                            stream_timeout_s=3.0, charter=simnet_charter(CLEARING_NET))
    async with Daemon(settings, private_key=make_key(key_index)) as daemon:
        assert daemon.node is not None
        yield daemon.node, daemon.node.jobs


async def test_a_bid_is_served_at_the_clearing_price_and_a_lower_bid_waits(tmp_path: Path) -> None:
    async with job_node(tmp_path / "a", 41) as (a, gateway), \
            job_node(tmp_path / "b", 42, capacity=1000, min_price=ASK / 1e9) as (b, provider):
        await a.connect(b.addrs[0])
        await eventually(lambda: any(o.signer == b.engine.signer
                                     for o in a.engine.view.offers_at(a.now())),
                         10, "the provider's offer in the gateway's view")
        # No bids yet: the clearing price is P_min, which nobody asks.
        assert a.engine.price(a.now()) == 10_000_000
        status = gateway.submit(500, 1_000_000_000, prompt="hello")
        assert status.state == "pending"  # a bid: it waits for the clearing price to reach it
        with trio.fail_after(15):
            done = await gateway.wait_finished(status.request_id)
        # Its 500 tokens bid up to 1.0; 1000 tokens/s × 2 s covers them at the provider's ask.
        assert (done.state, done.provider, done.locked_price_nano, done.cost_nano) == (
            "completed", b.peer_id, ASK, 500 * ASK // 1_000_000)
        # A bid below every ask waits, and both peers price it the same: just above the bid.
        low = gateway.submit(400, 200_000_000, prompt="too cheap")
        await eventually(lambda: a.engine.price(a.now()) == b.engine.price(b.now())
                         == 200_000_001, 10, "both peers clear just above the 0.2 bid")
        waiting = gateway.status(low.request_id)
        assert waiting is not None and waiting.state == "pending"
        assert "below the clearing price" in waiting.reason
        await eventually(lambda: provider.counters.earnings_recorded >= 1, 5,
                         "the provider recorded its earning")
