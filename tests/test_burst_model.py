"""simnet/burst_model.py: a correlated burst carried by gossip, copy by copy, or by a bundled
relay (a design sketch, not the protocol), each peer one server taking its work in the order it
arrives. The arithmetic is checked exactly on small graphs, and both modes on a random mesh
deliver every change to every peer."""

from __future__ import annotations

import random

import pytest

from simnet.burst_model import GossipCosts, RelayCosts, gossip_burst, mesh, relay_burst

L = 0.010                                   # every link's latency here
G = GossipCosts(copy_s=0.001, message_s=0.004)
R = RelayCosts(frame_in_s=0.002, frame_out_s=0.003, item_s=0.0005, dup_s=0.0001,
               item_out_s=0.00002)
LINE = [[1], [0, 2], [1]]                   # 0 - 1 - 2


def test_gossip_on_a_line_forwards_once_per_hop_never_back_to_the_sender() -> None:
    b = gossip_burst(LINE, [0], G, latency_s=L)
    hop = G.copy_s + G.message_s
    assert b.done_at == pytest.approx([0.0, L + hop, 2 * L + 2 * hop])
    assert b.frames_in == [0, 1, 1]         # peer 1 does not send it back to 0
    assert b.cpu_s == pytest.approx([0.0, hop, hop])


def test_gossip_copies_wait_for_a_busy_peer_and_duplicates_cost_only_the_copy() -> None:
    """A triangle, both 0 and 1 publish: 2 gets each message from both. Its first two copies
    arrive together at L and are taken one after the other; the copies 0 and 1 forward
    to it after their own work are duplicates."""
    tri = [[1, 2], [0, 2], [0, 1]]
    b = gossip_burst(tri, [0, 1], G, latency_s=L)
    hop = G.copy_s + G.message_s
    assert b.done_at[2] == pytest.approx(L + 2 * hop)
    assert b.frames_in[2] == 4              # two firsts, two duplicates
    assert b.cpu_s[2] == pytest.approx(2 * hop + 2 * G.copy_s)
    # 0 gets 1's message at L (first), then 2's forward of it (a duplicate); its own message
    # comes back from nobody (1 and 2 each forward it only to the other).
    assert b.done_at[0] == pytest.approx(L + hop)
    assert b.frames_in[0] == 2
    assert b.cpu_s[0] == pytest.approx(hop + G.copy_s)


def test_relay_on_a_line_sends_each_mesh_peer_a_frame_in_turn() -> None:
    b = relay_burst(LINE, [0], R, batch_s=0.1, latency_s=L)
    send1 = R.frame_out_s + R.item_out_s
    at1 = send1 + L
    done1 = at1 + R.frame_in_s + R.item_s
    # Peer 1 sends at once (it never sent before): first to 0, then to 2.
    to0 = done1 + send1
    to2 = to0 + send1
    assert b.done_at == pytest.approx([0.0, done1, to2 + L + R.frame_in_s + R.item_s])
    # A peer sends what it newly holds to every mesh peer, its sender too: 0 and 1 each get
    # the change back once, a duplicate.
    assert b.frames_in == [1, 2, 1]
    assert b.cpu_s[0] == pytest.approx(send1 + R.frame_in_s + R.dup_s)
    assert b.cpu_s[1] == pytest.approx(R.frame_in_s + R.item_s + 2 * send1
                                       + R.frame_in_s + R.dup_s)
    assert b.cpu_s[2] == pytest.approx(R.frame_in_s + R.item_s + send1)


def test_relay_sends_again_only_a_batch_interval_after_its_last_send() -> None:
    """Hub 0 with leaves 1 and 3, and 2 behind 4: 1's change reaches the hub a hop before 2's.
    The hub sends 1's at once; 2's arrives 15.5 ms later and waits for the batch interval (0.5 s
    after the hub's first send began) to go out in the hub's second frame to each peer."""
    graph = [[1, 3, 4], [0], [4], [0], [0, 2]]
    batch = 0.5
    b = relay_burst(graph, [1, 2], R, batch_s=batch, latency_s=L)
    send1 = R.frame_out_s + R.item_out_s
    take = R.frame_in_s + R.item_s
    h1 = send1 + L + take                     # the hub holds 1's change, and sends it at once
    h2 = h1 + send1 + L + take                # 2's change, through 4 (which also sent at h1)
    assert b.done_at[0] == pytest.approx(h2)
    # Leaf 3 is the hub's second peer in each send: 1's change at h1, 2's at h1 + batch.
    assert b.frames_in[3] == 2
    assert b.done_at[3] == pytest.approx(h1 + batch + 2 * send1 + L + take)
    # Without a batch interval 2's change leaves as soon as the hub holds it.
    quick = relay_burst(graph, [1, 2], R, batch_s=0.0, latency_s=L)
    assert quick.done_at[3] == pytest.approx(h2 + 2 * send1 + L + take)


def test_both_modes_deliver_every_change_to_every_peer_on_a_random_mesh() -> None:
    rng = random.Random(3)
    adj = mesh(200, 6, rng)
    assert all(adj[v] and v not in adj[v] for v in range(200))
    assert all(v in adj[u] for v in range(200) for u in adj[v])
    origins = sorted(rng.sample(range(200), 40))
    g = gossip_burst(adj, origins, G, seed=5)
    r = relay_burst(adj, origins, R, batch_s=0.05, seed=5)
    for b in (g, r):
        assert all(t < 10.0 for t in b.done_at)
    # Gossip: the origin sends each message to all its mesh peers, every other peer to all
    # but the one it first came from: sum of degrees - 199 copies per message, no loss.
    assert sum(g.frames_in) == 40 * (sum(map(len, adj)) - 199)
    # The relay reads far fewer frames than gossip reads copies, and spends less CPU.
    assert sum(r.frames_in) < sum(g.frames_in) / 4
    assert sum(r.cpu_s) < sum(g.cpu_s)
