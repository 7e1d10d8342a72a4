"""libp2p_compat entry 14 (the signed peer record in every pubsub RPC), with real hosts: a record
already verified from a peer is taken as it is only when the same bytes come from the same peer;
anything else is verified as py-libp2p does; and a node with the caches gossips with a py-libp2p
peer without them (separate processes: the caches are process-wide)."""

from __future__ import annotations

import argparse
from typing import Any

from libp2p.peer.peerstore import env_to_send_in_RPC
from libp2p.pubsub.pb import rpc_pb2

from neuroshard_p2p.bench import gossip_cost
from neuroshard_p2p.node.libp2p_compat import install_record_caches
from tests.test_accountability import raw_host


def rpc(record: bytes) -> Any:
    message = rpc_pb2.RPC()
    message.senderRecord = record
    return message


async def test_only_the_same_record_from_the_same_peer_skips_the_check() -> None:
    install_record_caches()
    import libp2p.pubsub.pubsub as pubsub_module
    consume = pubsub_module.maybe_consume_signed_record
    async with raw_host(1) as a, raw_host(2) as b, raw_host(3) as c:
        record_a = pubsub_module.env_to_send_in_RPC(a)[0]
        assert record_a == env_to_send_in_RPC(a)[0]  # the same bytes as py-libp2p sends
        record_c = env_to_send_in_RPC(c)[0]
        assert consume(rpc(record_a), b, a.get_id()) is True
        assert consume(rpc(record_a), b, a.get_id()) is True  # cached
        assert consume(rpc(record_c), b, a.get_id()) is False  # C's record said to be A's
        tampered = bytearray(record_a)
        tampered[-1] ^= 1  # the signature's last byte
        assert consume(rpc(bytes(tampered)), b, a.get_id()) is False
        assert consume(rpc(record_a), b, c.get_id()) is False  # A's record from C
        assert consume(rpc_pb2.RPC(), b, a.get_id()) is True  # no record: nothing to check


def test_a_node_with_the_caches_gossips_with_py_libp2p_as_shipped() -> None:
    # The benchmark's two sides: a receiver as shipped (its own process) fed by senders with the
    # caches (another process), then a receiver with them too.
    options = argparse.Namespace(seconds=3.0, senders=2, rate=5.0, burst=1)
    for side in ("shipped", "caches"):
        cpu, frames, delivered, copies = gossip_cost._side(side, options)
        # 2 senders x 5 messages/s x 3 s, counted over the receiver's 3 s window.
        assert delivered >= 24, (side, delivered)
        assert frames >= delivered and copies >= delivered and cpu > 0


def test_the_duplicates_bench_reads_each_message_once_from_a_star_and_again_from_a_mesh() -> None:
    # `gossip_cost --duplicates` divides a CPU difference by a difference in copies read: the
    # copies it counts must be what the two topologies make. Bursts of 5 from 2 senders (~60
    # messages in the 3 s window): from a star each message is read once, give or take one
    # burst per sender at the window's edges; from a mesh also from the other sender, so twice.
    options = argparse.Namespace(seconds=3.0, senders=2, rate=10.0, burst=5)
    cpu, frames, delivered, copies = gossip_cost._side("+early drop", options, meshed=False)
    assert delivered >= 30, delivered
    assert abs(copies - delivered) <= 10 and frames < delivered and cpu > 0, (copies, delivered)
    cpu, frames, delivered, copies = gossip_cost._side("+early drop", options, meshed=True)
    assert delivered >= 30, delivered
    assert copies >= 1.7 * delivered, (copies, delivered)
