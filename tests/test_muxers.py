"""Both muxers carry full-duplex streams between real libp2p hosts on 127.0.0.1: while one task
waits to read a stream, another writes on it (what a job/2.x provider does: it watches for the
gateway's JobCancel while it writes the output). py-libp2p 0.8.1's own Mplex cannot
(libp2p_compat entry 12); the test shows that too, so it fails once upstream is fixed and the
workaround can go."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any, AsyncIterator

import multiaddr
import pytest
import trio
from libp2p import new_host
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex

from neuroshard_p2p.node.libp2p_compat import muxer_options

PROTOCOL = TProtocol("/neuroshard-test/duplex/1")
WRITES = 5


@asynccontextmanager
async def host(index: int, muxers: Any) -> AsyncIterator[Any]:
    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    h = new_host(key_pair=create_new_key_pair((700_000 + index).to_bytes(32, "big")),
                 muxer_opt=muxers, listen_addrs=listen)
    async with h.run(listen):
        yield h


async def writes_while_reading(muxers: Any) -> int:
    """How many of WRITES writes reach the dialer while the listener's other task is blocked
    reading the same stream (within 3 s)."""
    received: list[bytes] = []
    async with host(1, muxers) as server, host(2, muxers) as client:
        async def handler(stream: Any) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream.read, 100)  # waits: the dialer sends nothing yet
                await trio.testing.wait_all_tasks_blocked()
                for i in range(WRITES):
                    await stream.write(f"piece {i};".encode())
                nursery.cancel_scope.cancel()

        server.set_stream_handler(PROTOCOL, handler)
        addr = f"{server.get_addrs()[0]}"
        if "/p2p/" not in addr:
            addr += f"/p2p/{server.get_id()}"
        await client.connect(info_from_p2p_addr(multiaddr.Multiaddr(addr)))
        stream = await client.new_stream(server.get_id(), [PROTOCOL])
        with trio.move_on_after(3):
            data = b""
            while data.count(b";") < WRITES:
                chunk = await stream.read(1024)
                if not chunk:
                    break
                data += chunk
        received = [p for p in data.split(b";") if p]
        await stream.reset()
    return len(received)


@pytest.mark.parametrize("muxer", ["yamux", "mplex"])
async def test_our_muxers_write_while_another_task_reads(muxer: str) -> None:
    assert await writes_while_reading(muxer_options(muxer)) == WRITES


async def test_py_libp2p_mplex_cannot_write_while_reading() -> None:
    # The defect entry 12 works around: not one write gets through while a read waits.
    assert await writes_while_reading({TProtocol(MPLEX_PROTOCOL_ID): Mplex}) == 0
