"""Real nodes on a relay network (protocol v2 §8.5, revision 2.1: relay): announcements travel in
bundles on relay/2.1.0 streams to the gossip mesh, nothing on the topic; a hostile relaying peer
is stopped at its first forged item and at its budget, and charged."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from neuroshard_p2p.node.counters import NodeCounters
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.node.guard import RELAY_ITEM, RELAY_OVER_BUDGET, PeerGuard
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.relay import Relay, RelayOutbox, encode_frames, relay_protocol
from neuroshard_p2p.wire import Announcement, decode_unchecked_time
from neuroshard_p2p.wire.frames import encode_sync
from neuroshard_p2p.wire.framing import length_prefixed
from neuroshard_p2p.wire.messages import SyncResponse
from tests.conftest import make_key
from tests.node_harness import TEST_MARKET, simnet_charter, start_node, test_settings
from tests.waiting import eventually

RELAY = simnet_charter(TEST_MARKET.replace(transport="relay"))


def relay_settings(path: Path, **changes: object) -> object:
    return test_settings(path, charter=RELAY, **changes)


def announcement_of(data: bytes) -> Announcement:
    message = decode_unchecked_time(data)
    assert isinstance(message, Announcement)
    return message


def supply(node: Node) -> int:
    return node.stats().supply_tokens_per_sec


async def meshed_line(nursery: trio.Nursery, tmp_path: Path, count: int,
                      **changes: object) -> list:
    """`count` relay nodes a, b, c … in a line (each bootstraps from the one before: one
    connection each, no periodic sync), once every one of them is meshed."""
    settings = dict(target_peers=1, sync_interval_s=300.0, **changes)
    running: list = []
    for i in range(count):
        boot = {"bootstrap": (running[-1].node.addrs[0],)} if running else {}
        running.append(await start_node(
            nursery, relay_settings(tmp_path / "abcdef"[i], **boot, **settings), make_key(i + 1)))
    nodes = [r.node for r in running]
    line = tuple(1 if i in (0, count - 1) else 2 for i in range(count))
    await eventually(lambda: tuple(n.peer_count for n in nodes) == line
                     and all(n._mesh_peers() for n in nodes), 15,
                     f"a line of {count} nodes, every node meshed",
                     show=lambda: [(n.peer_count, len(n._mesh_peers())) for n in nodes])
    return running


def test_a_relay_charter_is_another_network_and_its_nodes_relay() -> None:
    assert RELAY.relay and not simnet_charter().relay
    assert RELAY.network_id != simnet_charter().network_id
    assert relay_protocol(RELAY.network_id) == f"/neuroshard/{RELAY.network_id}/relay/2.1.0"


def test_the_outbox_spaces_batches_and_sends_no_peer_what_it_sent_us() -> None:
    box = RelayOutbox(0.1)
    assert box.due() == float("-inf")  # a lone first change leaves at once
    box.add(b"own")
    box.add(b"from-a", "a")
    box.add(b"from-b", "b")
    # while the batch waits, c sends us a copy of b's item and d one of an item not waiting
    assert box.held_by(b"from-b", "c") and not box.held_by(b"other", "d")
    items = box.take(5.0)
    assert len(box) == 0 and box.due() == pytest.approx(5.1)
    assert RelayOutbox.share(items, "a") == [b"own", b"from-b"]
    assert RelayOutbox.share(items, "c") == [b"own", b"from-a"]
    assert RelayOutbox.share(items, "d") == [b"own", b"from-a", b"from-b"]
    assert not box.held_by(b"from-b", "d")  # gone with its batch
    assert box.take(5.05) == [] and box.due() == pytest.approx(5.1)  # nothing sent, no new wait
    data, frames = encode_frames([b"\x92" + bytes(10)] * 5000)
    assert frames == 2  # 4,096 items per frame at most (§8.2)


def test_a_copy_a_peer_sends_while_its_item_waits_is_not_sent_back_to_it() -> None:
    """The driver's frame handling, without a network: a's frame brings a new announcement (it
    waits for its batch), then b's frame brings a copy of it. Neither a nor b is sent it; c is."""
    engine = PeerEngine(TEST_MARKET, make_key(1), announce_interval_s=2.0)
    counters, faults = NodeCounters(), []
    now = 1_000.0
    relay = Relay(engine=engine, guard=PeerGuard(), counters=counters,
                  protocol=relay_protocol("spare"), batch_s=0.1, now=lambda: now,
                  mesh=lambda: (), fault=lambda *fault: faults.append(fault),
                  refuses=lambda peer: False, on_accepted=lambda: None)
    (item,) = PeerEngine(TEST_MARKET, make_key(30), tokens_per_second=100,
                         announce_interval_s=2.0).poll_announcements(now)
    frame = encode_sync(SyncResponse((item,)))
    assert relay._frame("a", frame) and len(relay.outbox) == 1  # accepted: waits for its batch
    assert relay._frame("b", frame)  # a copy of what we hold
    assert engine.relay_counts[("ignored", "duplicate")] == 1
    assert counters.relay_items_spared == 1 and faults == []
    batch = relay.outbox.take(now)
    assert [RelayOutbox.share(batch, peer) for peer in ("a", "b", "c")] == [[], [], [item]]
    assert relay._frame("d", frame) and counters.relay_items_spared == 1  # nothing waits now


async def test_a_change_crosses_a_chain_of_relays_and_nothing_travels_on_the_topic(
        tmp_path: Path) -> None:
    """a – b – c in a line (one connection each, no periodic sync): c's offer reaches a only by
    b passing on what it accepted from c's relay stream."""
    async with trio.open_nursery() as nursery:
        a, b, c = await meshed_line(nursery, tmp_path, 3)
        nodes = [a.node, b.node, c.node]
        before = a.node.engine.relay_counts[("accepted", "accepted")]
        c.node.set_offer(700, 10**7)
        await eventually(lambda: supply(a.node) == 700, 10, "a counts c's 700 tokens/s",
                         show=lambda: [supply(n) for n in nodes])
        assert a.node.engine.relay_counts[("accepted", "accepted")] > before
        assert b.node.counters.relay_items_sent > 0 and a.node.counters.relay_items_received > 0
        for node in nodes:  # nobody published on the topic, so nobody validated gossip
            assert sum(node.engine.gossip_counts.values()) == 0, node.engine.gossip_counts
            assert node.guard.faults.total() == 0
        # A clean stop's withdrawal is relayed too: both others stop counting c at once.
        await c.stop()
        await eventually(lambda: supply(a.node) == 0 and supply(b.node) == 0, 5,
                         "a and b stop counting c, two hops and one hop away")
        nursery.cancel_scope.cancel()


async def test_a_node_of_a_gossip_network_speaks_no_relay(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        gossip = await start_node(nursery, test_settings(tmp_path / "g"), make_key(1))
        other = await start_node(nursery, test_settings(tmp_path / "h",
                                                        bootstrap=(gossip.node.addrs[0],)),
                                 make_key(2))
        await eventually(lambda: other.node.peer_count == 1, 10, "connected")
        assert gossip.node.relay is None
        protocol = relay_protocol(gossip.node.settings.network)
        with pytest.raises(Exception):
            await other.node.host.new_stream(gossip.node.host.get_id(), [protocol])
        nursery.cancel_scope.cancel()


async def _hostile_stream(attacker: Node, victim: Node) -> object:
    return await attacker.host.new_stream(victim.host.get_id(),
                                          [relay_protocol(victim.settings.network)])


async def test_a_hostile_relay_is_stopped_at_its_first_forged_item_and_charged(
        tmp_path: Path) -> None:
    """The attacker relays a valid announcement of a third key (accepted: V4 does not apply), a
    forged one, then another valid one: the victim takes the first, stops at the forgery, never
    checks the third, resets the stream and charges one relay_item fault."""
    async with trio.open_nursery() as nursery:
        victim = await start_node(nursery, relay_settings(tmp_path / "v"), make_key(1))
        attacker = await start_node(nursery, relay_settings(
            tmp_path / "x", bootstrap=(victim.node.addrs[0],)), make_key(2))
        await eventually(lambda: victim.node.peer_count == 1, 10, "connected")
        now = victim.node.now()
        third, fourth = (PeerEngine(TEST_MARKET, make_key(k), tokens_per_second=100,
                                    announce_interval_s=2.0)
                         for k in (30, 31))
        (good,) = third.poll_announcements(now)
        (later,) = fourth.poll_announcements(now)
        forged = good[:-5] + bytes(b ^ 0xFF for b in good[-5:])  # the signature's last bytes
        stream = await _hostile_stream(attacker.node, victim.node)
        await stream.write(length_prefixed(encode_sync(SyncResponse((good, forged, later)))))
        await eventually(lambda: victim.node.guard.faults[RELAY_ITEM] == 1, 5,
                         "the victim charged the attacker one relay_item fault")
        engine = victim.node.engine
        assert engine.view.current(third.signer).tokens_per_second == 100
        assert engine.view.current(fourth.signer) is None  # never checked
        assert victim.node.counters.relay_stopped == 1
        assert victim.node.guard.score(attacker.node.host.get_id(), victim.node.now()) < -9
        # the victim reset the stream: a yamux RST, not a close (py-libp2p reads both as EOF)
        await eventually(lambda: stream.muxed_stream.reset_received, 5,
                         "the victim reset the stream")
        nursery.cancel_scope.cancel()


async def test_a_relay_flood_is_cut_at_the_item_budget(tmp_path: Path) -> None:
    """Five frames of 4,096 copies of an announcement the victim holds: four are read (16,384
    items, the bucket's capacity; each copy is a duplicate, dropped before its signature), the
    fifth finds too few tokens — the refill is 4,096 a second and the four took well under one —
    so the stream is reset and the attacker charged relay_over_budget."""
    async with trio.open_nursery() as nursery:
        victim = await start_node(nursery, relay_settings(tmp_path / "v"), make_key(1))
        attacker = await start_node(nursery, relay_settings(
            tmp_path / "x", bootstrap=(victim.node.addrs[0],)), make_key(2))
        await eventually(lambda: victim.node.peer_count == 1, 10, "connected")
        third = PeerEngine(TEST_MARKET, make_key(30), tokens_per_second=100, announce_interval_s=2.0)
        (held,) = third.poll_announcements(victim.node.now())
        assert victim.node.engine.on_gossip(held, victim.node.now()).accepted
        frame = length_prefixed(encode_sync(SyncResponse((held,) * 4096)))
        stream = await _hostile_stream(attacker.node, victim.node)
        started = trio.current_time()
        try:
            await stream.write(frame * 5)
        except Exception:  # the reset may come while the fifth is still being written
            pass
        await eventually(lambda: victim.node.guard.faults[RELAY_OVER_BUDGET] == 1, 10,
                         "the victim charged the attacker relay_over_budget")
        elapsed = trio.current_time() - started
        counters = victim.node.counters
        assert (counters.relay_frames_received, counters.relay_items_received) == (4, 16_384)
        assert victim.node.engine.relay_counts[("ignored", "duplicate")] == 16_384
        assert elapsed < 1.0, "the refill could have let the fifth frame in"
        print(f"flood: 4 frames, 16,384 duplicate items read in {elapsed:.3f} s, then reset")
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize("protocol, dialer", [("sync/2.0.0", "b"), ("sync/2.1.0", "b"),
                                              ("sync/2.1.0", "a")])
async def test_a_change_that_reaches_a_node_by_sync_is_relayed_on_and_a_keep_alive_is_not(
        tmp_path: Path, protocol: str, dialer: str) -> None:
    """§8.5's MAY (3.): a – b – c in a line, no periodic sync. s and u are signers that are no
    node; all three hold their first announcements. a alone then holds s's change (as if its relay
    had missed b) and u's keep-alive. b gets them from a by one sync (2.0.0, b pulling; 2.1.0,
    either side dialling): it relays s's change on to c, not back to a, and keeps u's keep-alive
    to itself."""
    async with trio.open_nursery() as nursery:
        a, b, c = await meshed_line(nursery, tmp_path, 3, reconcile=protocol == "sync/2.1.0")
        nodes = [a.node, b.node, c.node]
        t0 = b.node.now()
        s = PeerEngine(TEST_MARKET, make_key(40), tokens_per_second=100, announce_interval_s=1.0)
        u = PeerEngine(TEST_MARKET, make_key(41), tokens_per_second=300, announce_interval_s=1.0)
        [s1], [u1] = s.poll_announcements(t0 - 1.5), u.poll_announcements(t0 - 1.5)
        s.set_offer(500, 0)
        [s2], [u2] = s.poll_announcements(t0 - 0.4), u.poll_announcements(t0 - 0.4)
        assert announcement_of(u2).tokens_per_second == 300  # a keep-alive: the same state
        for node in nodes:
            for wire in (s1, u1):
                assert node.engine.on_gossip(wire, t0).outcome == "accepted"
        for wire in (s2, u2):  # a alone, by its engine: nothing is published or relayed
            assert a.node.engine.on_gossip(wire, t0).outcome == "accepted"
        a_received = a.node.counters.relay_items_received
        sessions = b.node.counters.reconciliations
        if dialer == "b":
            counts = await b.node.sync_with(a.node.host.get_id())
            assert counts.accepted == 2 and counts.fault is None
        else:  # b, the listener, receives them in the session a opened
            await a.node.sync_with(b.node.host.get_id())
        assert b.node.counters.reconciliations - sessions == (protocol == "sync/2.1.0")
        assert b.node.counters.relay_synced_passed_on == 1
        await eventually(lambda: c.node.engine.view.current(s.signer) == announcement_of(s2), 5,
                         "c holds s's change, relayed by b")
        assert c.node.engine.relay_counts[("accepted", "accepted")] == 1
        # u's keep-alive would have been in the same batch: c never had it
        assert c.node.engine.view.current(u.signer) == announcement_of(u1)
        assert a.node.counters.relay_items_received == a_received  # a, the source, is left out
        for node in nodes:
            assert node.guard.faults.total() == 0
        nursery.cancel_scope.cancel()


async def test_a_relay_stream_is_open_to_each_mesh_peer_before_anything_is_sent(
        tmp_path: Path) -> None:
    """§8.5's SHOULD: a sender opens its stream when a peer joins its mesh, not with its first
    batch for it (a burst would pay for the open): two meshed nodes that have announced nothing
    hold a relay stream each way, and nothing was written on either."""
    async with trio.open_nursery() as nursery:
        a, b = await meshed_line(nursery, tmp_path, 2)
        nodes = [a.node, b.node]
        ids = [n.host.get_id() for n in nodes]
        relays = [n.relay for n in nodes]
        assert relays[0] is not None and relays[1] is not None

        def open_both_ways() -> bool:
            return all(other in r._links and r._links[other].stream is not None
                       and other in r._reading for r, other in zip(relays, reversed(ids)))

        await eventually(open_both_ways, 10, "a relay stream each way, before any batch",
                         show=lambda: [(len(r._links), len(r._reading)) for r in relays])
        for node in nodes:
            assert node.counters.relay_streams_opened == 1
            assert node.counters.relay_frames_sent == 0 and node.counters.relay_send_errors == 0
        nursery.cancel_scope.cancel()
