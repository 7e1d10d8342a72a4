"""sync/2.1.0 between real libp2p nodes, with fallback to sync/2.0.0 for a node without it
(market-v2.md §8.4, §11, revision 2.1: reconciliation)."""

from __future__ import annotations

from pathlib import Path

import trio

from neuroshard_p2p.node.guard import SYNC_PACE
from neuroshard_p2p.node.host import Node
from tests.conftest import make_key
from tests.node_harness import RunningNode, start_node, test_settings
from tests.waiting import eventually


def newest_ms(node: Node, of: Node) -> int:
    message = node.engine.view.current(of.engine.signer)
    return message.issued_at_ms if message is not None else -1


async def change_capacity(provider: Node, nodes: tuple[Node, ...], tokens: int, what: str) -> None:
    """The provider announces `tokens` per second (gossiped at once); wait until `nodes` hold it."""
    provider.set_offer(tokens, provider.engine.offer.min_price_nano)
    await eventually(lambda: all(
        (m := node.engine.view.current(provider.engine.signer)) is not None
        and m.tokens_per_second == tokens for node in nodes), 10, what)


async def start_provider(nursery: trio.Nursery, tmp_path: Path) -> tuple[RunningNode, tuple[str]]:
    """A provider of 100 tokens/s (key 1), and the address others bootstrap from."""
    provider = await start_node(nursery, test_settings(tmp_path / "p", capacity=100), make_key(1))
    return provider, (provider.node.addrs[0],)


async def test_quiet_keep_alives_reach_new_and_old_peers_by_sync(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        quiet = await start_node(nursery, test_settings(tmp_path / "q", capacity=100,
                                                        quiet_keep_alives=True), make_key(1))
        entry = (quiet.node.addrs[0],)
        new = await start_node(nursery, test_settings(tmp_path / "n", bootstrap=entry, reconcile=True,
                                                      sync_interval_s=1.0),
                               make_key(2))
        old = await start_node(nursery, test_settings(tmp_path / "o", bootstrap=entry, reconcile=False,
                                                      sync_interval_s=1.0), make_key(3))
        q, n, o = quiet.node, new.node, old.node
        await eventually(lambda: q.engine.keep_alives_unpublished >= 2, 15,
                         "the quiet node signed two keep-alives without gossiping them")
        target = newest_ms(q, q)
        # Neither keep-alive was gossiped: the new node got it by reconciliation, the old one
        # by its bucket sync on sync/2.0.0.
        # A node pulls one peer at most once per SYNC_PACE[1] s after its first few pulls, so
        # the old node's next bucket sync with the quiet node can be that far away.
        await eventually(lambda: newest_ms(n, q) >= target and newest_ms(o, q) >= target,
                         SYNC_PACE[1] + 8, "both peers hold the quiet node's newest keep-alive")
        # Gossiped: the first announcement and its repeat when the mesh formed (§1.3), no more.
        assert q.engine.announcements_published - q.engine.keep_alives_unpublished <= 3
        # The new node reconciled (both roles count); the old one never did.
        assert n.counters.reconciliations >= 1 and o.counters.reconciliations == 0
        # (A sync may fail while another with the same peer runs: a peer gets one answer at a
        # time and the second stream is reset during negotiation; that is sync/2.0.0's rule too.)
        # The quiet node signs a keep-alive every 2 s and the new node gets each one only by a
        # session, paced like the pulls above: the views are equal just after a session, which
        # can be SYNC_PACE[1] s away.
        await eventually(lambda: n.engine.view.digest() == q.engine.view.digest(),
                         SYNC_PACE[1] + 8, "the new node's view equals the quiet node's")
        nursery.cancel_scope.cancel()


async def test_a_periodic_sync_waits_for_a_lull_in_gossip_and_keeps_its_cadence(
        tmp_path: Path) -> None:
    # A provider changes its capacity about every 1.1 s (each change gossips at once); two nodes
    # sync every 1 s: one waits for 2.5 s without news, which never come while the changes go
    # on (so each of its due syncs runs one period late, at its deadline); the other (0) never
    # waits.
    async with trio.open_nursery() as nursery:
        provider, entry = await start_provider(nursery, tmp_path)
        waits = await start_node(nursery, test_settings(
            tmp_path / "w", bootstrap=entry, sync_interval_s=1.0, sync_gossip_quiet_s=2.5),
            make_key(2))
        never = await start_node(nursery, test_settings(
            tmp_path / "n", bootstrap=entry, sync_interval_s=1.0, sync_gossip_quiet_s=0.0),
            make_key(3))
        p, w, n = provider.node, waits.node, never.node
        await eventually(lambda: newest_ms(w, p) > 0 and newest_ms(n, p) > 0, 20,
                         "both nodes hold the provider's first announcement")
        deferred = w.counters.syncs_deferred
        for k in range(1, 9):
            await change_capacity(p, (w, n), 100 + 10 * k, f"change {k} reached both nodes")
            await trio.sleep(1.0)  # the producer's pace (the signer's gossip budget is 1/s)
        # ~9 s of gossip news at most ~1.1 s apart: every due sync of the waiting node waited
        # (one count per due sync, whatever its wait), none of the other's.
        assert w.counters.syncs_deferred - deferred >= 5
        assert n.counters.syncs_deferred == 0
        nursery.cancel_scope.cancel()


async def test_a_session_a_peer_opens_during_our_gossip_waits_for_our_lull_briefly(
        tmp_path: Path) -> None:
    # A provider changes its capacity about every 1.1 s; two listeners hear it and count 2.5 s
    # without news as a lull, which never comes while the changes go on. One holds a session a
    # peer opens meanwhile up to its sync_serve_wait_s (1.2 s), the other answers at once (0). A
    # dialer that never waits itself asks each in turn, during the changes and after them.
    async with trio.open_nursery() as nursery:
        provider, entry = await start_provider(nursery, tmp_path)
        listeners = [await start_node(nursery, test_settings(
            tmp_path / f"l{wait}", bootstrap=entry, reconcile=True, sync_interval_s=3600.0,
            sync_gossip_quiet_s=2.5, sync_serve_wait_s=wait), make_key(2 + i))
            for i, wait in enumerate((1.2, 0.0))]
        holds, answers = (running.node for running in listeners)
        dialer = (await start_node(nursery, test_settings(
            tmp_path / "d", bootstrap=(holds.addrs[0], answers.addrs[0]), reconcile=True,
            sync_interval_s=3600.0, sync_gossip_quiet_s=0.0), make_key(4))).node
        p = provider.node
        await eventually(lambda: all(newest_ms(n, p) > 0 for n in (holds, answers, dialer))
                         and {holds.host.get_id(), answers.host.get_id()}
                         <= set(dialer.host.get_connected_peers()), 20,
                         "every node holds the provider's first announcement, the dialer is "
                         "connected to both listeners")

        async def session(listener: Node) -> float:
            before = listener.counters.syncs_served
            start = trio.current_time()
            counts = await dialer.sync_with(listener.host.get_id())
            assert counts.fault is None
            await eventually(lambda: listener.counters.syncs_served == before + 1, 5,
                             "the listener counts the session it served")
            return trio.current_time() - start

        for k in range(1, 4):
            await change_capacity(p, (holds, answers), 100 + 10 * k,
                                  f"change {k} reached both listeners")
            await trio.sleep(1.0)  # the producer's pace (the signer's gossip budget is 1/s)
        held_before = holds.counters.syncs_served_deferred
        # Fresh news at both listeners: neither is in a lull for 2.5 s.
        await change_capacity(p, (holds, answers), 200, "the last change reached both listeners")
        held = await session(holds)
        answered = await session(answers)
        # The listener that holds did, for its whole wait (the dialer's time includes it); the
        # other never holds.
        assert holds.counters.syncs_served_deferred == held_before + 1
        assert answers.counters.syncs_served_deferred == 0
        assert held >= 1.2 - 0.05 and held > answered + 0.5, (held, answered)
        # Once the provider is gone (killed: no withdrawal to gossip) and 2.5 s have passed
        # without news, the listener is in its lull and answers at once. (The dialer's own pace
        # lets it ask the same peer again after up to SYNC_PACE[1] s.)
        await provider.kill()
        quiet_from = trio.current_time() + 2.6
        asked = holds.host.get_id()
        await eventually(lambda: trio.current_time() >= quiet_from
                         and dialer._sync_pace.tokens(asked, dialer.now()) >= 1.0,
                         SYNC_PACE[1] + 5, "the listener is quiet and the dialer may ask it again")
        await session(holds)
        assert holds.counters.syncs_served_deferred == held_before + 1
        nursery.cancel_scope.cancel()
