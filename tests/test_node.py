"""Real nodes (py-libp2p hosts on 127.0.0.1, gossipsub, sync and peer exchange) in one process:
they agree on the market, a late joiner catches up, stopped nodes stop counting when they
should, and a hostile peer moves nothing."""

from __future__ import annotations

import time
from pathlib import Path

import trio
import trio.testing

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.view import MarketView, TickPrice
from neuroshard_p2p.wire import Announcement, encode
from tests.conftest import make_key
from tests.node_harness import TEST_MARKET, RunningNode, simnet_charter, start_node, test_settings
from tests.waiting import eventually


def market_of(nodes: list[Node], tick: int) -> list[TickPrice]:
    return [n.engine.tick_price(tick) for n in nodes]


def current_tick(nodes: list[Node]) -> int:
    node = nodes[0]
    return node.engine.tick_of(node.now())


def agree(nodes: list[Node], supply: int, demand: int) -> bool:
    """All nodes report the same price, supply and demand for the current tick (a keep-alive in
    flight cannot make them differ: it repeats what already counts)."""
    prices = market_of(nodes, current_tick(nodes))
    return all(p == prices[0] for p in prices) and (prices[0].supply, prices[0].demand) == (supply, demand)


async def test_five_nodes_agree_on_supply_demand_and_price_then_a_late_joiner_catches_up(
        tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        boot = await start_node(nursery, test_settings(tmp_path / "n0"), make_key(1))
        entry = (boot.node.addrs[0],)
        # The sellers ask more than the request's locked price, so the jobs layer cannot route
        # it: it stays queued at n3 and counts as demand everywhere.
        others = [
            await start_node(nursery, test_settings(tmp_path / "n1", bootstrap=entry, capacity=1000,
                                                    min_price=0.9), make_key(2)),
            await start_node(nursery, test_settings(tmp_path / "n2", bootstrap=entry, capacity=500,
                                                    min_price=0.9), make_key(3)),
            await start_node(nursery, test_settings(tmp_path / "n3", bootstrap=entry), make_key(4)),
            await start_node(nursery, test_settings(tmp_path / "n4", bootstrap=entry), make_key(5)),
        ]
        others[2].node.submit_request(60_000, 10**9)
        nodes = [boot.node] + [r.node for r in others]

        await eventually(lambda: agree(nodes, 1500, 60_000), 15,
                         "all five report supply 1500, demand 60000 and one price for one tick")
        tick = current_tick(nodes)
        prices = market_of(nodes, tick)
        assert len({p.price_nano for p in prices}) == 1
        assert prices[0].target_nano == TEST_MARKET_TARGET(1500, 60_000)
        # peer exchange: every node knew only the bootstrap node, all end up connected
        await eventually(lambda: all(n.peer_count == 4 for n in nodes), 10,
                         "every node connected to the four others")

        # a late joiner that knows only the last node pulls the view and agrees
        started = time.monotonic()
        late = await start_node(nursery, test_settings(tmp_path / "n5",
                                                       bootstrap=(others[3].node.addrs[0],)),
                                make_key(6))
        await eventually(lambda: late.node.engine.view.digest() == boot.node.engine.view.digest(),
                         5, "the late joiner holds the same view")
        agreed_after = time.monotonic() - started
        every = nodes + [late.node]
        await eventually(lambda: agree(every, 1500, 60_000), 5, "the late joiner agrees")
        for tick_back in range(TEST_MARKET.window_ticks * 2):
            k = current_tick(every) - tick_back
            assert late.node.engine.tick_price(k) == boot.node.engine.tick_price(k)
        print(f"late joiner agreed after {agreed_after:.3f} s")
        assert agreed_after < 5
        nursery.cancel_scope.cancel()


async def test_nodes_find_each_other_through_a_node_that_speaks_only_the_old_peer_list(
        tmp_path: Path) -> None:
    """A first-release node serves and asks only `/peers/1.0.0`; new nodes that know only it
    still learn of each other from its answer, and it reads theirs (protocol §11)."""
    from neuroshard_p2p.node.peering import peers_protocols

    old = Node(test_settings(tmp_path / "old"), private_key=make_key(1))
    old.peering.protocols = peers_protocols(old.settings.network)[1:]  # what 066bf93 spoke
    async with old, trio.open_nursery() as nursery:
        entry = (old.addrs[0],)
        new = [await start_node(nursery, test_settings(tmp_path / f"n{i}", bootstrap=entry),
                                make_key(2 + i)) for i in range(2)]
        await eventually(lambda: all(r.node.peer_count == 2 for r in new), 10,
                         "the two new nodes, which knew only the old one, connected to each other")
        nursery.cancel_scope.cancel()


def TEST_MARKET_TARGET(supply: int, demand: int) -> int:
    from neuroshard_p2p.core.pricing import target_price_nano

    return target_price_nano(supply, demand, TEST_MARKET)


async def test_a_hard_stopped_node_counts_until_its_timeout_a_cleanly_stopped_one_stops_at_once(
        tmp_path: Path) -> None:
    timeout = TEST_MARKET.capacity_timeout_s
    async with trio.open_nursery() as nursery:
        boot = await start_node(nursery, test_settings(tmp_path / "a"), make_key(1))
        entry = (boot.node.addrs[0],)
        hard = await start_node(nursery, test_settings(tmp_path / "b", bootstrap=entry, capacity=1000),
                                make_key(2))
        clean = await start_node(nursery, test_settings(tmp_path / "c", bootstrap=entry, capacity=300),
                                 make_key(3))
        observer = await start_node(nursery, test_settings(tmp_path / "d", bootstrap=entry),
                                    make_key(4))
        peers = [boot.node, observer.node]
        await eventually(lambda: all(n.stats().supply_tokens_per_sec == 1300
                                     for n in peers + [clean.node]),
                         10, "everyone counts 1300 tokens/s")

        signer = hard.node.engine.signer
        survivors = peers + [clean.node]
        await hard.kill()
        killed_at = time.time()
        hard_id = hard.node.host.get_id()

        def settled_on_the_dead_nodes_last_word() -> bool:
            # Once nobody is connected to it any more, nothing new of its can arrive; then all
            # hold the same last announcement (from gossip, or from a survivor by sync if the
            # kill cut its last keep-alive short).
            gone = all(hard_id not in n.host.get_network().connections for n in survivors)
            return gone and len({n.engine.view.current(signer).msg_id for n in survivors}) == 1

        await eventually(settled_on_the_dead_nodes_last_word, 10,
                         "every peer dropped the dead node and holds its same last announcement",
                         show=lambda: [(hard_id in n.host.get_network().connections,
                                        n.engine.view.current(signer).seq) for n in survivors])
        last = boot.node.engine.view.current(signer)
        assert last is not None and last.tokens_per_second == 1000
        assert last.issued_at_ms / 1000 <= killed_at
        expiry_ms = last.issued_at_ms + int(timeout * 1000)
        for node in survivors:
            # the signed timeline decides: the same instant on every peer
            assert node.engine.view.current(signer) == last
            assert node.engine.view.counted_at_ms(signer, expiry_ms - 1) == last
            assert node.engine.view.counted_at_ms(signer, expiry_ms) is None
            assert node.engine.view.counted_at_ms(signer, int(killed_at * 1000)) == last

        # A clean stop publishes a withdrawal (and waits until it is written to every peer):
        # every peer holds it, and from the instant it was issued the node counts no more, long
        # before its last keep-alive would have expired. Its arrival is what can take time on
        # a loaded machine; the instant it takes effect is in the signed message.
        clean_signer = clean.node.engine.signer
        before = boot.node.engine.view.current(clean_signer)
        assert before is not None and before.tokens_per_second == 300
        await clean.stop()
        stopped_at = time.time()
        await eventually(lambda: all(n.engine.view.current(clean_signer).tokens_per_second == 0
                                     for n in peers), 10,
                         "every peer holds the cleanly stopped node's withdrawal",
                         show=lambda: [n.engine.view.current(clean_signer) for n in peers])
        withdrawal = boot.node.engine.view.current(clean_signer)
        assert withdrawal is not None and withdrawal.seq > before.seq
        assert withdrawal.issued_at_ms / 1000 <= stopped_at
        assert withdrawal.issued_at_ms < before.issued_at_ms + int(timeout * 1000)
        for node in peers:
            assert node.engine.view.current(clean_signer) == withdrawal
            counted = node.engine.view.counted_at_ms(clean_signer, withdrawal.issued_at_ms)
            assert counted is None or counted.tokens_per_second == 0
            assert node.stats().supply_tokens_per_sec in (0, 1000)  # the dead node may still count

        # and in real time the dead node drops out exactly when its last word expires
        def expired_everywhere() -> bool:
            supplies = [n.stats().supply_tokens_per_sec for n in peers]
            # in the view's own integer ms (it rounds): read after the supplies, so if they
            # were read at or past the expiry, so is this
            assert all(s == 1000 for s in supplies) or ms_of(time.time()) >= expiry_ms, supplies
            return all(s == 0 for s in supplies)

        await eventually(expired_everywhere, max(expiry_ms / 1000 - time.time(), 0) + 5,
                         "the dead node expired everywhere")
        nursery.cancel_scope.cancel()


async def test_a_clean_stop_waits_until_its_withdrawal_is_written_to_every_peer(
        tmp_path: Path) -> None:
    """On a loaded machine py-libp2p's write of the withdrawal can take a while after the RPC
    left its queue; closing the connections then loses it and peers count the node until its
    timeout. Here every write of the stopping node takes 0.3 s (py-libp2p's `write_msg`, slowed
    on that node's pubsub only): the stop still delivers the withdrawal to every peer."""
    from neuroshard_p2p.node.libp2p_compat import senders_idle

    async with trio.open_nursery() as nursery:
        boot = await start_node(nursery, test_settings(tmp_path / "a"), make_key(1))
        entry = (boot.node.addrs[0],)
        other = await start_node(nursery, test_settings(tmp_path / "b", bootstrap=entry),
                                 make_key(2))
        leaving = await start_node(nursery, test_settings(tmp_path / "c", bootstrap=entry,
                                                          capacity=300), make_key(3))
        peers = [boot.node, other.node]
        await eventually(lambda: all(n.stats().supply_tokens_per_sec == 300 for n in peers)
                         and leaving.node.peer_count == 2, 10,
                         "both peers count the leaving node, which is connected to both")
        pubsub = leaving.node.pubsub
        assert pubsub is not None
        await eventually(lambda: senders_idle(pubsub), 10, "the leaving node's senders are idle")
        write = pubsub.write_msg

        async def slow_write(stream: object, rpc: object) -> bool:
            await trio.sleep(0.3)
            return await write(stream, rpc)  # type: ignore[arg-type]

        pubsub.write_msg = slow_write  # type: ignore[method-assign]
        signer = leaving.node.engine.signer
        await leaving.stop()
        await eventually(lambda: all(n.engine.view.current(signer).tokens_per_second == 0
                                     for n in peers), 10,
                         "every peer holds the withdrawal",
                         show=lambda: [n.engine.view.current(signer) for n in peers])
        nursery.cancel_scope.cancel()


async def test_leaving_a_node_closes_its_port_and_its_connections(tmp_path: Path) -> None:
    """A hard stop (cancellation) drops the node's connections at once, as a dying process
    would; a clean stop frees its port."""
    import socket

    def port_is_free(port: int) -> bool:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return False
            return True

    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, test_settings(tmp_path / "a"), make_key(1))
        b = await start_node(nursery, test_settings(tmp_path / "b", bootstrap=(a.node.addrs[0],)),
                             make_key(2))
        await eventually(lambda: a.node.peer_count == 1, 10, "a and b are connected")
        b_id, b_port = b.node.host.get_id(), int(b.node.addrs[0].split("/")[4])
        assert not port_is_free(b_port)
        await b.kill()
        await eventually(lambda: b_id not in a.node.host.get_network().connections, 5,
                         "a saw the killed node's connection close")
        assert port_is_free(b_port)
        a_port = int(a.node.addrs[0].split("/")[4])
        await a.stop()
        assert port_is_free(a_port)
        nursery.cancel_scope.cancel()


async def test_a_port_another_node_listens_on_is_a_clear_error(tmp_path: Path) -> None:
    """py-libp2p binds with SO_REUSEPORT, so a second node on a taken port used to start and
    share the port's incoming connections with the first (the kernel spreads them: a dial of
    that address reached either peer id). It must refuse instead; and a port left with
    connections in TIME_WAIT by a stopped node is free for its restart."""
    import pytest

    from neuroshard_p2p.node.host import NodeError

    async with trio.open_nursery() as nursery:
        first = await start_node(nursery, test_settings(tmp_path / "a"), make_key(1))
        port = int(first.node.addrs[0].split("/")[4])
        taken = test_settings(tmp_path / "b", listen=(f"/ip4/127.0.0.1/tcp/{port}",))
        with pytest.raises(NodeError) as refused:
            async with Node(taken, private_key=make_key(2)):
                pass  # pragma: no cover - must not start
        assert str(refused.value) == (f"cannot listen on /ip4/127.0.0.1/tcp/{port}: "
                                      f"address already in use")
        peer = await start_node(nursery, test_settings(tmp_path / "c", bootstrap=first.node.addrs),
                                make_key(3))
        await eventually(lambda: first.node.peer_count == 1, 10, "a peer connected")
        await first.stop()  # closes its side first: the connection waits in TIME_WAIT
        again = await start_node(nursery, test_settings(tmp_path / "a", listen=(
            f"/ip4/127.0.0.1/tcp/{port}",)), make_key(1))
        assert again.node.addrs[0].split("/")[4] == str(port)
        _ = peer
        nursery.cancel_scope.cancel()


async def test_a_hostile_peer_crashes_no_one_and_moves_no_price(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        boot = await start_node(nursery, test_settings(tmp_path / "a"), make_key(1))
        entry = (boot.node.addrs[0],)
        seller = await start_node(nursery, test_settings(tmp_path / "b", bootstrap=entry, capacity=1000),
                                  make_key(2))
        observer = await start_node(nursery, test_settings(tmp_path / "c", bootstrap=entry),
                                    make_key(3))
        hostile = await start_node(nursery, test_settings(tmp_path / "h", bootstrap=entry),
                                   make_key(66))
        honest = [boot.node, seller.node, observer.node]
        h = hostile.node
        await eventually(lambda: all(n.stats().supply_tokens_per_sec == 1000 for n in honest + [h]),
                         10, "everyone counts the seller")
        await eventually(lambda: len(h.gossipsub.mesh.get(h.topic, ())) == 3, 10,
                         "the hostile peer is in the mesh of all three honest nodes")

        genuine = seller.node.engine.view.current(seller.node.engine.signer)
        assert genuine is not None
        key = h.private_key
        me = h.engine.signer
        now_ms = int(time.time() * 1000)

        def signed(issued_ms: int, seq: int, capacity: int = 0, demand: int = 0) -> bytes:
            return encode(Announcement(me, issued_ms, seq, capacity, 0, demand, 1 if demand else 0), key)

        forged = bytearray(genuine.wire)
        forged[-5] ^= 0x40
        someone_else = make_key(77)
        foreign = encode(Announcement(someone_else.public_key.format(compressed=True), now_ms, 1,
                                      40_000, 0, 0, 0), someone_else)
        attacks = [
            bytes(forged),                                        # bad signature
            genuine.wire,                                         # replay of another's message
            foreign,                                              # another signer's, relayed
            signed(now_ms - 400_000, 10, capacity=40_000),        # stale
            signed(now_ms + 120_000, 11, capacity=40_000),        # from the future
            signed(now_ms, 12, capacity=TEST_MARKET.max_node_tokens_per_s + 1),  # implausible
            b"\xc1" * 300,                                        # garbage
            b"\x92" + b"\x00" * 100_000,                          # oversize (limit 80 KiB)
        ]
        attacks += [signed(now_ms + i, 100 + i) for i in range(12)]  # a flood (zero content)
        attacks += [signed(now_ms + 50, 100 + 50)] * 2            # exact replay of our own
        for data in attacks:
            await h.pubsub.publish(h.topic, data)
            # One RPC per attack, as an attacker who wants each counted sends them: the hostile
            # node's pubsub would pack what waits into one RPC (libp2p_compat 16), whose
            # messages py-libp2p validates in an order trio chooses, so most of a flood would
            # meet seq_regression before the rate limit.
            await trio.testing.wait_all_tasks_blocked()
        def reasons(node: Node) -> set[str]:
            return {reason for (outcome, reason), n in node.engine.gossip_counts.items()
                    if outcome != "accepted" and n}

        expected = {"bad_signature", "wrong_signer", "stale", "future", "implausible",
                    "malformed", "oversize", "rate_limited", "duplicate"}
        await eventually(lambda: all(expected <= reasons(n) for n in honest), 10,
                         "every honest node rejected or ignored each attack with its reason",
                         show=lambda: [(sorted(expected - reasons(n)), dict(n.engine.gossip_counts))
                                       for n in honest])
        # the price every honest node computes is the price of the seller's announcements alone
        reference = MarketView(TEST_MARKET)
        reference.merge_messages(seller.node.engine.view.messages_of(seller.node.engine.signer))
        tick = current_tick(honest)
        for k in range(tick - 10, tick + 1):
            for node in honest:
                here = node.engine.tick_price(k)
                there = reference.price_at_tick(k)
                assert (here.price_nano, here.supply, here.demand) == (
                    there.price_nano, there.supply, there.demand)
        for node in honest:
            assert node.counters.validator_errors == 0

        # a payload above py-libp2p's 1 MiB RPC limit: the hostile stream is reset, no more
        await h.pubsub.publish(h.topic, b"\x00" * (1024 * 1024 + 10))
        # everyone still works: a change by the seller reaches all honest nodes
        seller.node.set_offer(2000, 0)
        await eventually(lambda: all(n.stats().supply_tokens_per_sec == 2000 for n in honest), 10,
                         "honest nodes still gossip after the attack")
        nursery.cancel_scope.cancel()


async def test_an_unreachable_bootstrap_is_retried_with_a_clear_reason(
        tmp_path: Path, caplog: "object") -> None:
    import logging

    import pytest as _pytest

    assert isinstance(caplog, _pytest.LogCaptureFixture)
    caplog.set_level(logging.WARNING, logger="neuroshard.node")
    dead_peer = PeerEngine(MarketConfig(), make_key(9)).peer_id
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    address = f"/ip4/127.0.0.1/tcp/{port}/p2p/{dead_peer}"
    async with trio.open_nursery() as nursery:
        lonely = await start_node(nursery, test_settings(tmp_path / "x", bootstrap=(address,)),
                                  make_key(8))
        await eventually(lambda: lonely.node.counters.dial_failures >= 2, 10,
                         "the bootstrap dial was retried")
        messages = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert messages and address in messages[0]
        assert "connection refused" in messages[0]
        await lonely.stop()


async def test_nodes_on_different_networks_never_mix(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        main = await start_node(nursery, test_settings(tmp_path / "m", capacity=1000), make_key(1))
        other = await start_node(nursery, test_settings(tmp_path / "o", charter=simnet_charter(name="devnet"),
                                                        bootstrap=(main.node.addrs[0],)),
                                 make_key(2))
        await eventually(lambda: other.node.counters.syncs_failed >= 1, 5,
                         "the sync across networks was refused")
        assert other.node.topic != main.node.topic
        assert other.node.engine.view.message_count == 0
        assert other.node.stats().supply_tokens_per_sec == 0
        assert main.node.stats().supply_tokens_per_sec == 1000
        nursery.cancel_scope.cancel()


_ = RunningNode  # re-exported for readers of this file


async def test_a_newcomers_first_state_reaches_peers_it_is_not_connected_to_by_gossip(
        tmp_path: Path) -> None:
    # X and the newcomer N each know only the hub H and want no more peers, and keep-alives and
    # periodic syncs are far off: N's capacity can reach X within the deadline only if N gossips
    # its state again once it has a mesh peer (its first announcement left before it had any,
    # and H, which pulled it by sync, does not forward what it pulls).
    market = MarketConfig(capacity_timeout_s=60.0, settle_delay_s=1.0, window_ticks=8)
    quiet = dict(market=market, announce_interval_s=50.0, sync_interval_s=60.0, target_peers=1)
    async with trio.open_nursery() as nursery:
        hub = await start_node(nursery, test_settings(tmp_path / "h", **quiet), make_key(1))
        entry = (hub.node.addrs[0],)
        x = await start_node(nursery, test_settings(tmp_path / "x", bootstrap=entry, **quiet),
                             make_key(2))
        await eventually(lambda: x.node.peer_count == 1 and hub.node.peer_count == 1, 10,
                         "X connected to the hub")
        newcomer = await start_node(
            nursery, test_settings(tmp_path / "n", bootstrap=entry, capacity=700, **quiet),
            make_key(3))
        await eventually(lambda: newcomer.node.engine.view.supply_at(newcomer.node.now()) == 700, 5,
                         "the newcomer counts its own capacity")
        await eventually(lambda: x.node.engine.view.supply_at(x.node.now()) == 700, 8,
                         "X, not connected to the newcomer, counts its capacity from gossip")
        assert newcomer.node.peer_count == 1 and x.node.peer_count == 1  # never met directly
        nursery.cancel_scope.cancel()


async def test_a_peer_gets_one_sync_answer_at_a_time(tmp_path: Path) -> None:
    # Each answer can carry the whole view: a peer that opens sync streams without end must not
    # make the node serve (and buffer) it many times over.
    from neuroshard_p2p.node.streams import FrameStream
    from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE
    from neuroshard_p2p.wire.framing import length_prefixed
    from neuroshard_p2p.wire.messages import KIND_SYNC_RESPONSE

    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, test_settings(tmp_path / "a", capacity=100), make_key(1))
        b = await start_node(nursery, test_settings(tmp_path / "b", bootstrap=(a.node.addrs[0],),
                                                    sync_interval_s=60.0), make_key(2))
        await eventually(lambda: a.node.peer_count == 1, 10, "b connected to a")
        await eventually(lambda: a.node.counters.syncs_served >= 1, 10, "b's on-connect sync")
        served = a.node.counters.syncs_served
        a_id = a.node.host.get_id()
        held = await b.node.host.new_stream(a_id, [a.node._sync_protocol])
        for _ in range(6):
            try:  # a refused stream is reset at once, which py-libp2p may report while opening
                extra = await b.node.host.new_stream(a_id, [a.node._sync_protocol])
                await extra.write(length_prefixed(b.node.engine.sync_request(b.node.now())))
            except Exception:  # noqa: BLE001 - refused is what this test expects
                pass
        await eventually(lambda: a.node.counters.syncs_refused_busy == 6, 5,
                         "a refused the six streams b opened while its first was unanswered")
        await held.write(length_prefixed(b.node.engine.sync_request(b.node.now())))
        frames = FrameStream(held, MAX_FRAME_SIZE[KIND_SYNC_RESPONSE])
        for _ in range(100):  # the held one is still answered (views equal: maybe no frame)
            if await frames.next() is None:
                break
        await eventually(lambda: a.node.counters.syncs_served == served + 1, 5,
                         "a answered the first stream")
        nursery.cancel_scope.cancel()
