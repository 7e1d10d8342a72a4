"""libp2p_compat entry 15 with real hosts on 127.0.0.1: with `install_window_hysteresis`, a yamux
stream returns receive credit only once half its window has been read (go-yamux's rule), not
after every read as py-libp2p 0.8.1 does; and bulk transfers still flow both ways, also with a
py-libp2p peer as shipped (its own process: the workaround is process-wide)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import multiaddr
import trio
from libp2p.custom_types import TProtocol
from libp2p.io.utils import read_exactly
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE

from neuroshard_p2p.node.libp2p_compat import install_window_hysteresis
from tests.test_accountability import raw_host

PROTOCOL = TProtocol("/neuroshard-test/window/1")
HALF = DEFAULT_WINDOW_SIZE // 2


async def test_credit_returns_after_half_a_window_not_after_every_read() -> None:
    install_window_hysteresis()
    async with raw_host(5) as a, raw_host(6) as b:
        send, receive = trio.open_memory_channel[Any](1)
        done = trio.Event()

        async def handler(stream: Any) -> None:
            await send.send(stream)
            await done.wait()
        b.set_stream_handler(PROTOCOL, handler)
        await a.connect(info_from_p2p_addr(multiaddr.Multiaddr(f"{b.get_addrs()[0]}")))
        with trio.fail_after(20):
            dialer = await a.new_stream(b.get_id(), [PROTOCOL])
            await dialer.write(b"hello")
            listener = await receive.receive()
            sent = len(await read_exactly(listener, 5))
            window = dialer.muxed_stream

            async def round_trip() -> None:
                # Frames on one connection arrive in order: any window update B sent before
                # its "ok" has reached A when A reads it.
                await listener.write(b"ok")
                assert await read_exactly(dialer, 2) == b"ok"

            await round_trip()
            # What A may still send: the window less what it sent, the protocol negotiation's
            # 47 bytes included, none of it read back yet.
            before = window.send_window
            assert DEFAULT_WINDOW_SIZE - 100 < before <= DEFAULT_WINDOW_SIZE - sent
            for _ in range(10):  # ten small messages, each read as it arrives
                await dialer.write(b"x" * 100)
                sent += len(await read_exactly(listener, 100))
            await round_trip()
            assert window.send_window == before - 1000  # no credit came back
            # Past half the window, read in 1,000-byte reads: the credit comes back.
            while sent < HALF + 10_000:
                await dialer.write(b"y" * 1000)
                sent += len(await read_exactly(listener, 1000))
            await round_trip()
            assert window.send_window >= DEFAULT_WINDOW_SIZE - (sent - HALF)
            done.set()


SHIPPED_ECHO = """
import sys, trio
import multiaddr
from tests.test_accountability import raw_host
from tests.test_window_hysteresis import PROTOCOL

async def main():
    async with raw_host(7) as host:
        async def echo(stream):
            while True:
                data = await stream.read(4096)
                if not data:
                    break
                await stream.write(data)
            await stream.close()
        host.set_stream_handler(PROTOCOL, echo)
        print(host.get_addrs()[0], flush=True)
        await trio.to_thread.run_sync(sys.stdin.readline)
trio.run(main)
"""


async def test_bulk_transfers_flow_both_ways_with_py_libp2p_as_shipped() -> None:
    install_window_hysteresis()
    peer = subprocess.Popen([sys.executable, "-c", SHIPPED_ECHO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert peer.stdout is not None
        addr = await trio.to_thread.run_sync(peer.stdout.readline)
        async with raw_host(8) as a:
            info = info_from_p2p_addr(multiaddr.Multiaddr(addr.strip()))
            total = 12 * DEFAULT_WINDOW_SIZE  # twelve windows each way
            payload = bytes(range(256)) * (total // 256)
            with trio.fail_after(60):
                await a.connect(info)
                stream = await a.new_stream(info.peer_id, [PROTOCOL])
                echoed = b""

                async def write_all() -> None:
                    for i in range(0, total, 16_384):
                        await stream.write(payload[i:i + 16_384])
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(write_all)
                    while len(echoed) < total:  # in reads of 3,000 bytes at most
                        echoed += await read_exactly(stream, min(3000, total - len(echoed)))
            assert echoed == payload
    finally:
        if peer.stdin is not None:
            peer.stdin.close()
        peer.kill()
        peer.wait()
