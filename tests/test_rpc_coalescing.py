"""libp2p_compat entry 16 with real hosts on 127.0.0.1: py-libp2p 0.8.1's pubsub writes every
queued RPC as a frame of its own, so 20 messages published at once reach a peer as 20 RPCs, each
paying the whole per-RPC cost; with `install_rpc_coalescing` the messages waiting in a peer's
queue go as one RPC, and a py-libp2p peer as shipped (its own process: the workaround is
process-wide) takes them all."""

from __future__ import annotations

import subprocess
import sys
from contextlib import asynccontextmanager
from typing import Any, AsyncIterator, Callable

import multiaddr
import trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from neuroshard_p2p.node.libp2p_compat import install_rpc_coalescing, make_gossipsub
from neuroshard_p2p.node.settings import NodeSettings
from tests.test_accountability import raw_host
from tests.waiting import eventually

TOPIC = "/neuroshard-test/coalescing"

BURST = 20


@asynccontextmanager
async def pubsub_on(host: Any) -> AsyncIterator[Any]:
    """Pubsub and gossipsub as a node configures them (`make_gossipsub`: py-libp2p's own spam
    protection off, which would rate-limit a burst from one peer)."""
    router = make_gossipsub(NodeSettings())
    pubsub = Pubsub(host, router, strict_signing=True)
    async with background_trio_service(pubsub), background_trio_service(router):
        await pubsub.wait_until_ready()
        yield pubsub


def count_publish_frames() -> tuple[list[int], Callable[[], None]]:
    """Count the RPC frames this process's pubsub reads that carry messages ([frames,
    messages]); the second value undoes it."""
    import libp2p.pubsub.pubsub as pubsub_module

    counts = [0, 0]
    read = pubsub_module.read_varint_prefixed_bytes_limited

    async def counted(*args: Any, **kwargs: Any) -> bytes:
        data = await read(*args, **kwargs)
        publish = len(rpc_pb2.RPC.FromString(data).publish)
        if publish:
            counts[0] += 1
            counts[1] += publish
        return data
    pubsub_module.read_varint_prefixed_bytes_limited = counted  # type: ignore[assignment]

    def undo() -> None:
        pubsub_module.read_varint_prefixed_bytes_limited = read  # type: ignore[assignment]
    return counts, undo


SHIPPED_PEER = """
import sys, trio
from tests.test_accountability import raw_host
from tests.test_rpc_coalescing import BURST, TOPIC, count_publish_frames, pubsub_on

async def main():
    counts, _ = count_publish_frames()
    async with raw_host(12) as host, pubsub_on(host) as pubsub:
        sub = await pubsub.subscribe(TOPIC)
        print(host.get_addrs()[0], flush=True)
        got = []
        async def drain():
            while True:
                data = (await sub.get()).data
                if data.startswith(b"from-us"):  # not its own, which pubsub delivers too
                    got.append(data)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(drain)
            while True:
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if line.strip() == "publish":
                    for k in range(BURST):
                        await pubsub.publish(TOPIC, b"from-shipped-%d" % k)
                    print("published", flush=True)
                elif line.strip() == "count":
                    print(len(got), counts[0], counts[1], flush=True)
                else:
                    nursery.cancel_scope.cancel()
trio.run(main)
"""


async def test_messages_published_at_once_go_as_one_rpc_and_a_shipped_peer_takes_them() -> None:
    install_rpc_coalescing()
    counts, undo = count_publish_frames()
    peer = subprocess.Popen([sys.executable, "-c", SHIPPED_PEER], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)

    async def ask(command: str) -> str:
        assert peer.stdin is not None and peer.stdout is not None
        peer.stdin.write(command + "\n")
        peer.stdin.flush()
        return (await trio.to_thread.run_sync(peer.stdout.readline)).strip()
    try:
        assert peer.stdout is not None
        addr = (await trio.to_thread.run_sync(peer.stdout.readline)).strip()
        info = info_from_p2p_addr(multiaddr.Multiaddr(addr))
        async with raw_host(13) as host, pubsub_on(host) as pubsub:
            sub = await pubsub.subscribe(TOPIC)
            await host.connect(info)
            router = pubsub.router
            with trio.fail_after(60):
                await eventually(lambda: info.peer_id in router.mesh.get(TOPIC, set()), 20,
                                 "the shipped peer in our mesh")
                # As shipped: BURST messages published at once arrive as BURST RPCs.
                assert await ask("publish") == "published"
                got = [(await sub.get()).data for _ in range(BURST)]
                assert sorted(got) == sorted(b"from-shipped-%d" % k for k in range(BURST))
                assert counts == [BURST, BURST]
                # Coalesced: the same burst from us arrives whole in one RPC.
                for k in range(BURST):
                    await pubsub.publish(TOPIC, b"from-us-%d" % k)

                async def shipped_counts() -> tuple[int, ...] | None:
                    numbers = tuple(map(int, (await ask("count")).split()))
                    return numbers if numbers[0] >= BURST else None
                received, frames, messages = await eventually(
                    shipped_counts, 20, "the shipped peer received the burst", interval=0.1)
                assert (received, frames, messages) == (BURST, 1, BURST)
    finally:
        undo()
        if peer.stdin is not None:
            try:
                peer.stdin.write("stop\n")
                peer.stdin.close()
            except BrokenPipeError:
                pass
        peer.kill()
        peer.wait()
