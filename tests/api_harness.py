"""Real nodes with their HTTP API for the API and dashboard tests: a data dir made by
`ensure_data_dir` (so the token is the file's), the API on a free 127.0.0.1 port, and an httpx
client. Nothing here stands in for project code."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import httpx

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.datadir import ensure_data_dir, load_api_token
from neuroshard_p2p.daemon import Daemon
from neuroshard_p2p.node.host import Node
from tests.conftest import make_key
from tests.node_harness import simnet_charter, test_settings

#: Short ticks and a short smoothing window, so a change in the market moves the price within a
#: second or two; everything else as the node harness sets it.
API_MARKET = MarketConfig(capacity_timeout_s=5.0, settle_delay_s=0.5, window_ticks=4, tick_s=0.5,
                          claim_timeout_s=10.0, request_expiry_s=60.0)
#: The network id of an API test node: the simnet charter around API_MARKET.
API_NETWORK = simnet_charter(API_MARKET).network_id


@dataclass
class ApiNode:
    """A running node, its API's URL, the token from its data dir and a client for it."""

    node: Node
    url: str
    token: str
    client: httpx.AsyncClient
    data_dir: Path

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.get(self.url + path, **kwargs)

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.client.post(self.url + path, **kwargs)

    async def market(self) -> dict[str, Any]:
        response = await self.get("/api/market")
        assert response.status_code == 200, response.text
        return response.json()


@asynccontextmanager
async def api_node(data_dir: Path, key_index: int, *, api: str = "127.0.0.1:0",
                   market: MarketConfig | None = None,
                   clock: Callable[[], float] = time.time,
                   **changes: Any) -> AsyncIterator[ApiNode]:
    """A node with its API, job service and ledger (a daemon) until the block ends: on the simnet
    charter around `market` (API_MARKET unless given), unless `charter` is given."""
    ensure_data_dir(data_dir)
    if market is None and "charter" not in changes:
        market = API_MARKET
    settings = test_settings(data_dir, api=api, market=market, announce_interval_s=2.0, **changes)
    async with Daemon(settings, private_key=make_key(key_index), clock=clock) as daemon:
        assert daemon.node is not None and daemon.api_url is not None
        async with httpx.AsyncClient(timeout=10.0) as client:
            yield ApiNode(daemon.node, daemon.api_url, load_api_token(data_dir), client, data_dir)
