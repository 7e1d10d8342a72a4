"""Running real nodes in one trio process for tests: start, stop cleanly or hard (waiting for a
condition is tests/waiting.py's). Nothing here stands in for project code."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import coincurve
import trio

from neuroshard_p2p.charter import Charter, builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.settings import NodeSettings

#: Short timings so a test sees keep-alives, syncs and expiry within seconds.
TEST_MARKET = MarketConfig(capacity_timeout_s=5.0, settle_delay_s=1.0, window_ticks=8)


def simnet_charter(market: MarketConfig = TEST_MARKET, **changes: Any) -> Charter:
    """The built-in `simnet` charter (no identity work, so prices are the v1 tests') with a
    test's market values; `changes` (e.g. name=) make it another network."""
    return builtin("simnet").replace(market=market, **changes)


def test_settings(data_dir: Path, **changes: Any) -> NodeSettings:
    """Settings of a test node: the simnet charter around `market` (TEST_MARKET unless given)
    unless `charter` is given."""
    market = changes.pop("market", None)
    charter = changes.pop("charter", None) or simnet_charter(market or TEST_MARKET)
    values: dict[str, Any] = dict(
        listen=("/ip4/127.0.0.1/tcp/0",), api="off",
        announce_interval_s=2.0, sync_interval_s=3.0, peer_exchange_interval_s=0.5,
        target_peers=8, dial_timeout_s=5.0, stream_timeout_s=5.0,
        bootstrap_retry_initial_s=0.2, bootstrap_retry_max_s=1.0, shutdown_grace_s=0.5,
        # One process holds many test nodes: no LAN discovery or router probing among them.
        mdns=False, upnp=False)
    values.update(changes)
    return NodeSettings(data_dir=data_dir, charter=charter, market=market, **values)


test_settings.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class RunningNode:
    """A node running in its own task: `stop()` leaves its `async with` normally (a clean stop
    with a withdrawal), `kill()` cancels it (a hard stop: no withdrawal)."""

    node: Node
    scope: trio.CancelScope
    leave: trio.Event
    done: trio.Event

    async def stop(self) -> None:
        self.leave.set()
        await self.done.wait()

    async def kill(self) -> None:
        self.scope.cancel()
        await self.done.wait()


async def start_node(nursery: trio.Nursery, settings: NodeSettings,
                     key: coincurve.PrivateKey, *,
                     clock: Callable[[], float] = time.time) -> RunningNode:
    node = Node(settings, private_key=key, clock=clock)
    running = RunningNode(node, trio.CancelScope(), trio.Event(), trio.Event())

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with running.scope:
                async with node:
                    task_status.started()
                    await running.leave.wait()
        finally:
            running.done.set()

    await nursery.start(run)
    return running
