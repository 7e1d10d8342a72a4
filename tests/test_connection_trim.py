"""Above max_peers a node lets peers go (node/peering.py, libp2p_compat 21): py-libp2p's own
pruner never closes a connection with an open stream, and every gossip connection has one."""

from __future__ import annotations

from pathlib import Path

import trio

from neuroshard_p2p.node.libp2p_compat import connections_by_peer
from neuroshard_p2p.node.policy import connections_to_trim
from tests.conftest import make_key
from tests.node_harness import start_node, test_settings
from tests.waiting import eventually


def test_nothing_is_trimmed_at_or_below_the_high_watermark() -> None:
    ages = {f"p{i}": 100.0 for i in range(4)}
    assert connections_to_trim(ages, set(), low=2, high=4, grace_s=0.0) == []


def test_above_it_the_newest_unprotected_peers_past_their_grace_go_down_to_the_low_watermark() -> None:
    ages = {"a": 50.0, "b": 5.0, "c": 40.0, "d": 31.0, "e": 30.0, "f": 29.0, "g": 60.0}
    # f is in its grace period (29 < 30), g is kept (our mesh); 7 connected, low 3: 4 go, the
    # most recently connected of b..e first; b (5 s) is also in its grace.
    assert connections_to_trim(ages, {"g"}, low=3, high=5, grace_s=30.0) == ["e", "d", "c", "a"]
    # Fewer candidates than the excess: all of them, no more.
    assert connections_to_trim(ages, {"g", "a", "c"}, low=3, high=5, grace_s=30.0) == ["e", "d"]
    # Equal ages go in the order of the peers' texts.
    assert connections_to_trim({"y": 10.0, "x": 10.0, "z": 10.0}, set(), low=1, high=2,
                               grace_s=0.0) == ["x", "y"]


async def test_connections_by_peer_tells_a_stream_in_use_from_gossip(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        hub = await start_node(nursery, test_settings(tmp_path / "hub"), make_key(1))
        idle = await start_node(nursery, test_settings(tmp_path / "idle"), make_key(2))
        using = await start_node(nursery, test_settings(tmp_path / "using"), make_key(3))
        release = trio.Event()

        async def hold(stream: object) -> None:
            await release.wait()

        hub.node.host.set_stream_handler("/test/hold/1", hold)
        for leaf in (idle, using):
            await leaf.node.connect(hub.node.addrs[0])
        gossip = hub.node._gossip_protocols()
        await eventually(lambda: len(hub.node.host.get_connected_peers()) == 2, 10, "both connected")
        await eventually(lambda: not any(busy for _, busy in
                                         connections_by_peer(hub.node.host, gossip).values()),
                         10, "only gossip streams open (identify and the first syncs done)")
        stream = await using.node.host.new_stream(hub.node.host.get_id(), ["/test/hold/1"])
        await stream.write(b"x")
        await eventually(lambda: connections_by_peer(hub.node.host, gossip)[
            using.node.host.get_id()][1], 10, "the held stream is seen")
        seen = connections_by_peer(hub.node.host, gossip)
        assert seen[using.node.host.get_id()][1] is True
        assert seen[idle.node.host.get_id()][1] is False
        assert all(0 < age < 60 for age, _ in seen.values())
        release.set()
        await stream.reset()
        for n in (idle, using, hub):
            await n.stop()


async def test_a_node_above_max_peers_lets_the_excess_go_and_keeps_its_mesh(tmp_path: Path) -> None:
    # The hub keeps at most 2 connections (target 2, max 2; libp2p takes up to 4), a gossip mesh
    # of one, and lets a peer go once it has been connected for 2 s. Four leaves dial it and
    # want no more than it (target 1): nobody redials, so exactly two go and two stay, its mesh
    # peer among them.
    async with trio.open_nursery() as nursery:
        hub = await start_node(nursery, test_settings(
            tmp_path / "hub", target_peers=2, max_peers=2, connection_grace_s=2.0,
            mesh_degree=1, mesh_degree_low=1, mesh_degree_high=1), make_key(1))
        leaves = [await start_node(nursery, test_settings(tmp_path / f"leaf{i}", target_peers=1),
                                   make_key(10 + i)) for i in range(4)]
        for leaf in leaves:
            await leaf.node.connect(hub.node.addrs[0])
        await eventually(lambda: hub.node.counters.connections_trimmed == 2
                         and len(hub.node.host.get_connected_peers()) == 2, 20,
                         "two of four let go")
        kept = set(hub.node.host.get_connected_peers())
        assert hub.node._mesh_peers() <= kept
        assert len(hub.node._mesh_peers()) == 1
        gone = [leaf for leaf in leaves if leaf.node.host.get_id() not in kept]
        assert len(gone) == 2
        for leaf in gone:
            await eventually(lambda leaf=leaf: not leaf.node.host.get_connected_peers(), 10,
                             "a leaf let go has no connection left")
        assert all(leaf.node.counters.connections_trimmed == 0 for leaf in leaves)
        assert hub.node.counters.connections_trimmed == 2
        for n in (*leaves, hub):
            await n.stop()
