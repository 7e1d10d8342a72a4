"""A node whose clock is wrong, on a real network: it is told, and says what it breaks.

Real parts: four libp2p nodes on loopback in this process, each with its own clock (the `clock`
a node is given, here `time.time` plus an offset, as a machine without NTP would have), and the
wrong-clocked node's HTTP API and metrics over real HTTP.

The failure this guards against, as measured before the clock watch: a node 45 s ahead offered
capacity that every peer refused as "from the future", so nobody counted it, and a node 45 s
behind refused every peer's announcement, so it priced an empty market; neither logged a word,
and only their peers' INFO lines said anything.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
import trio

from tests.api_harness import API_MARKET, api_node
from tests.conftest import make_key
from tests.node_harness import RunningNode, start_node, test_settings
from tests.waiting import eventually

ROOT = Path(__file__).resolve().parent.parent


def offset_clock(offset_s: float) -> Callable[[], float]:
    return lambda: time.time() + offset_s


async def market_node(nursery: trio.Nursery, data_dir: Path, key: int, *, capacity: int = 0,
                      boot: tuple[str, ...] = (),
                      clock: Callable[[], float] = time.time) -> RunningNode:
    """A node on API_MARKET (the API test nodes' network) offering `capacity`."""
    return await start_node(nursery, test_settings(data_dir, market=API_MARKET, capacity=capacity,
                                                   bootstrap=boot), make_key(key), clock=clock)


def clock_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and r.getMessage().startswith("clock: ")]


async def test_a_node_with_a_wrong_clock_is_told_and_its_peers_are_not(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="neuroshard")
    async with trio.open_nursery() as nursery:
        a = await market_node(nursery, tmp_path / "a", 1, capacity=500)
        boot = tuple(a.node.addrs)
        b = await market_node(nursery, tmp_path / "b", 2, capacity=300, boot=boot)
        # the honest two hear each other first, as a network that was there before
        for node, other in ((a.node, b.node), (b.node, a.node)):
            watch = node.engine.clock_watch
            assert watch is not None
            await eventually(lambda: other.engine.signer in watch.offsets(node.now()), 20,
                             "the honest nodes hear each other")
        behind = await market_node(nursery, tmp_path / "d", 4, capacity=200, boot=boot,
                                   clock=offset_clock(-45.0))
        async with api_node(tmp_path / "c", 3, market=API_MARKET, capacity=1000, bootstrap=boot,
                            clock=offset_clock(45.0)) as ahead:

            async def told() -> dict[str, Any] | None:
                response = await ahead.get("/api/node")
                clock = response.json()["clock"]
                return clock if (clock["state"], clock["signers"], clock["off"]) == ("ahead", 3, 3) \
                    else None

            # each peer counts as behind it once heard over a keep-alive period (2 s here) + 5 s
            clock = await eventually(told, 30, "the node 45 s ahead is told, against 3 signers")
            # Its peers' announcements, signed 45 s (A, B) and 90 s (D) before its clock, arrive
            # within a second: the median of the three is A's or B's, 45 s and a delay.
            assert -46.0 < clock["offset_s"] <= -44.999
            assert (clock["off"], clock["warn_s"]) == (3, 5.0)
            assert clock["text"] == (
                "this node's clock is 45 s ahead of 3 of 3 signer(s): peers refuse its "
                "announcements (more than 30 s in the future), so nobody counts its capacity or "
                "demand. Set the clock right (e.g. enable NTP).")
            # ... and that is what happened: the honest nodes count 500 + 300, not its 1,000 (nor
            # the node behind, whose announcements they hold as 45 s old); it counts only its own.
            market = await ahead.market()
            assert market["supply_tokens_per_sec"] == 1000
            assert a.node.stats().supply_tokens_per_sec == 800
            assert a.node.engine.counts()[("rejected", "future")] >= 1

            health = await ahead.get("/api/health")
            assert health.status_code == 503
            assert health.json()["problems"] == [{"check": "clock", "detail": clock["text"]}]
            metrics = (await ahead.get("/metrics")).text
            assert 'neuroshard_clock{state="ahead"} 1.0' in metrics
            assert 'neuroshard_clock{state="agrees"} 0.0' in metrics
            assert "neuroshard_clock_signers 3.0" in metrics
            [offset_line] = [line for line in metrics.splitlines()
                             if line.startswith("neuroshard_clock_offset_seconds ")]
            assert -46.0 < float(offset_line.split()[1]) <= -44.999

            # The node behind refuses every peer's announcement as from the future, and is told.
            reading = await eventually(
                lambda: behind.node.clock_reading if behind.node.clock_reading.state == "behind"
                and behind.node.clock_reading.signers >= 2 else None, 30,
                "the node 45 s behind is told")
            assert reading.offset_s is not None and 44.0 < reading.offset_s <= 45.001
            assert behind.node.engine.counts().get(("accepted", "accepted"), 0) == 0
            assert behind.node.stats().supply_tokens_per_sec == 200

            # The honest nodes agree with each other, and count the two wrong clocks as such; A
            # can tell C's and D's operators by how much (its peers list).
            await eventually(lambda: a.node.clock_reading.signers == 3, 20,
                             "A measured B, C and D")
            assert (a.node.clock_reading.state, a.node.clock_reading.off) == ("agrees", 2)
            assert b.node.clock_reading.state == "agrees"
            clocks = {row["peer_id"]: row["clock_offset_s"] for row in a.node.peer_standings()}
            assert 44.0 < clocks[ahead.node.peer_id] <= 45.001
            assert -46.0 < clocks[behind.node.peer_id] <= -44.999
            assert -1.0 < clocks[b.node.peer_id] <= 0.001
            # and C's operator sees A's clock 45 s behind its own, in `peers`
            listed = await trio.run_process(
                [sys.executable, "-m", "neuroshard_p2p.cli", "peers", "--api", ahead.url],
                capture_stdout=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
            line = next(x for x in listed.stdout.decode().splitlines() if a.node.peer_id in x)
            assert line.endswith("  (clock -45 s from ours)"), line

        warned = clock_warnings(caplog)
        assert any(" 45 s ahead of " in w for w in warned), warned
        assert any(" 45 s behind " in w for w in warned), warned
        # nothing from the honest nodes: no warning they could have logged names a clock in step
        assert not [w for w in warned if "agrees" in w], warned
        await behind.stop()
        await b.stop()
        await a.stop()


async def test_a_clock_set_right_starts_the_measure_again(tmp_path: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """NTP steps a wrong clock right: the warning must not outlive the wrong clock by the
    watch's 5–10 minute window."""
    caplog.set_level(logging.WARNING, logger="neuroshard")
    offset = [45.0]
    async with trio.open_nursery() as nursery:
        a = await market_node(nursery, tmp_path / "a", 1, capacity=500)
        boot = tuple(a.node.addrs)
        b = await market_node(nursery, tmp_path / "b", 2, capacity=300, boot=boot)
        c = await market_node(nursery, tmp_path / "c", 3, capacity=100, boot=boot,
                              clock=lambda: time.time() + offset[0])
        await eventually(lambda: c.node.clock_reading.state == "ahead", 30, "C is told")
        assert a.node.stats().supply_tokens_per_sec == 800  # C's 100 refused as from the future
        offset[0] = 0.0  # the clock is set right
        # C says its offer again at once, not when its old clock's keep-alive falls due (45 s +
        # 20 s later): the others count it within a tick or two.
        await eventually(lambda: a.node.stats().supply_tokens_per_sec == 900, 5,
                         "A counts C's capacity soon after C's clock is set right")
        reading = await eventually(
            lambda: c.node.clock_reading if c.node.clock_reading.state == "agrees"
            and c.node.clock_reading.signers == 2 else None, 30, "C agrees again")
        assert reading.offset_s is not None and -1.0 < reading.offset_s <= 0.001
        warned = clock_warnings(caplog)
        assert any(w.startswith("clock: agrees with 2 of 2 signer(s)") for w in warned), warned
        assert [r.getMessage() for r in caplog.records
                if "this node's clock was set by -45" in r.getMessage()], warned
        for node in (c, b, a):
            await node.stop()


async def test_a_node_whose_clock_is_behind_does_not_ban_the_honest_peers_it_refuses(
        tmp_path: Path) -> None:
    """A node 45 s behind refuses every peer's announcement as from the future, and `future` from
    the peer that signed it is a fault (a peer pre-signing). So a busy honest peer (a gateway
    whose queue changes every tick announces once a second) earned a ban at the node with the
    wrong clock: 20 such rejects within about 20 s. Once the clock watch says this node's own
    clock is behind, `future` is its own fault and charges nobody."""
    async with trio.open_nursery() as nursery:
        busy = await market_node(nursery, tmp_path / "busy", 1, capacity=500)
        boot = tuple(busy.node.addrs)
        other = await market_node(nursery, tmp_path / "other", 2, capacity=300, boot=boot)
        behind = await market_node(nursery, tmp_path / "behind", 3, boot=boot,
                                   clock=offset_clock(-45.0))
        await eventually(lambda: behind.node.clock_reading.state == "behind", 30,
                         "the node behind is told")
        before = behind.node.guard.standing(busy.node.host.get_id(), behind.node.now()).faults
        # the busy peer changes what it announces 30 times, each announced (at most one a tick,
        # API_MARKET's 0.5 s) before the next change
        for step in range(30):
            said = busy.node.engine.announcements_published
            busy.node.engine.set_offer(500 + step + 1, 0)
            busy.node._poke.set()
            await eventually(lambda: busy.node.engine.announcements_published > said, 5,
                             f"change {step + 1} is announced")
        standing = behind.node.guard.standing(busy.node.host.get_id(), behind.node.now())
        assert (standing.faults - before, standing.bans) == (0, 0), standing
        assert behind.node.guard.bans == 0
        assert busy.node.host.get_id() in behind.node.host.get_connected_peers()
        for node in (behind, other, busy):
            await node.stop()

