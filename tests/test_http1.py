"""The provider's HTTP/1.1 client (node/http1.py) against real servers on 127.0.0.1: a raw trio
TCP server written here (so each test controls exactly what the server does with a connection),
and a TLS server with a certificate from a test CA (trustme)."""

from __future__ import annotations

import ssl
from functools import partial
from typing import Any, Awaitable, Callable

import pytest
import trio
import trustme

from neuroshard_p2p.node.http1 import Http1Client, TransportError
from tests.waiting import eventually

Handler = Callable[[trio.abc.Stream, int], Awaitable[None]]


async def read_request(stream: trio.abc.Stream, pending: bytearray) -> bytes | None:
    """One request's body (head and Content-Length body), or None at EOF."""
    while b"\r\n\r\n" not in pending:
        data = await stream.receive_some(65536)
        if not data:
            return None
        pending += data
    head, _, rest = bytes(pending).partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        rest += await stream.receive_some(65536)
    pending[:] = rest[length:]
    return rest[:length]


def answer(body: bytes, *, close: bool = False) -> bytes:
    return (b"HTTP/1.1 200 OK\r\ncontent-length: " + str(len(body)).encode()
            + (b"\r\nconnection: close" if close else b"") + b"\r\n\r\n" + body)


class Server:
    """A TCP server on 127.0.0.1 running `handler(stream, connection_number)` per connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.connections = 0
        self.closed_by_client = 0
        self.port = 0

    async def start(self, nursery: trio.Nursery) -> None:
        async def serve(stream: trio.abc.Stream) -> None:
            self.connections += 1
            if self.ssl_context is not None:
                stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
            try:
                await self.handler(stream, self.connections)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.closed_by_client += 1
            finally:
                await trio.aclose_forcefully(stream)

        listeners = await nursery.start(partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
        self.port = listeners[0].socket.getsockname()[1]


async def echo_forever(stream: trio.abc.Stream, _: int) -> None:
    pending = bytearray()
    while (body := await read_request(stream, pending)) is not None:
        await stream.send_all(answer(b"echo:" + body))


async def fetch(client: Http1Client, body: bytes) -> tuple[int, bytes]:
    async with client.request("POST", "/v1/x", body) as response:
        data = b"".join([chunk async for chunk in response.aiter_bytes()])
        return response.status, data


async def test_requests_reuse_one_kept_alive_connection(nursery: trio.Nursery) -> None:
    server = Server(echo_forever)
    await server.start(nursery)
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    answers = [await fetch(client, f"r{i}".encode()) for i in range(5)]
    assert answers == [(200, f"echo:r{i}".encode()) for i in range(5)]
    assert server.connections == 1
    await client.aclose()


async def test_a_connection_the_server_closed_while_idle_is_not_reused(nursery: trio.Nursery) -> None:
    async def one_then_close(stream: trio.abc.Stream, _: int) -> None:
        body = await read_request(stream, bytearray())
        await stream.send_all(answer(b"once:" + (body or b"")))  # keep-alive, then gone

    server = Server(one_then_close)
    await server.start(nursery)
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    assert await fetch(client, b"a") == (200, b"once:a")
    await eventually(lambda: not client._idle[0].idle_and_alive(), 5,
                     "the client sees the server's close on its idle connection")
    assert await fetch(client, b"b") == (200, b"once:b")
    assert server.connections == 2


async def test_a_reused_connection_closed_before_any_answer_is_retried_once(nursery: trio.Nursery) -> None:
    # The race the idle check cannot see: the server closes just as the request goes out.
    # Connection 1 answers once and then reads the next request and closes without a byte.
    async def flaky(stream: trio.abc.Stream, number: int) -> None:
        pending = bytearray()
        body = await read_request(stream, pending)
        if number == 1:
            await stream.send_all(answer(b"first:" + (body or b"")))
            await read_request(stream, pending)
            return  # closed without answering
        await stream.send_all(answer(b"again:" + (body or b"")))

    server = Server(flaky)
    await server.start(nursery)
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    assert await fetch(client, b"a") == (200, b"first:a")
    assert await fetch(client, b"b") == (200, b"again:b")
    assert server.connections == 2


async def test_a_fresh_connection_closed_without_an_answer_is_an_error_not_a_retry(
        nursery: trio.Nursery) -> None:
    async def mute(stream: trio.abc.Stream, _: int) -> None:
        await read_request(stream, bytearray())

    server = Server(mute)
    await server.start(nursery)
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    with pytest.raises(TransportError, match="closed the connection without an answer"):
        await fetch(client, b"a")
    assert server.connections == 1


async def test_an_answer_that_is_not_http_is_a_transport_error(nursery: trio.Nursery) -> None:
    async def garbage(stream: trio.abc.Stream, _: int) -> None:
        await read_request(stream, bytearray())
        await stream.send_all(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")

    server = Server(garbage)
    await server.start(nursery)
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    with pytest.raises(TransportError, match="not HTTP/1.1"):
        await fetch(client, b"a")


async def test_nobody_listening_is_a_transport_error() -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        client = Http1Client(f"http://127.0.0.1:{port}")
        with pytest.raises(TransportError, match="^connection refused$"):
            await fetch(client, b"a")


async def test_a_response_left_half_read_closes_its_connection(nursery: trio.Nursery) -> None:
    # A cancelled job stops reading mid-stream: the server must see the client leave (so an
    # engine stops generating), and the next request must not read the rest of the old one.
    left = trio.Event()

    async def streaming(stream: trio.abc.Stream, _: int) -> None:
        pending = bytearray()
        while (body := await read_request(stream, pending)) is not None:
            await stream.send_all(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
            try:
                for i in range(1000):
                    piece = f"data: {body.decode()}{i}\n\n".encode()
                    await stream.send_all(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
                    await trio.sleep(0.005)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                left.set()
                return
            await stream.send_all(b"0\r\n\r\n")

    server = Server(streaming)
    await server.start(nursery)
    client = Http1Client(f"http://127.0.0.1:{server.port}")
    lines: list[str] = []
    async with client.request("POST", "/v1/x", b"a") as response:
        async for line in response.aiter_lines():
            if line:
                lines.append(line)
            if len(lines) == 3:
                break
    assert lines == ["data: a0", "data: a1", "data: a2"]
    with trio.fail_after(5):
        await left.wait()
    assert client._idle == []


async def test_https_with_the_servers_ca_and_a_refusal_without_it(nursery: trio.Nursery) -> None:
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server_context)
    server = Server(echo_forever, ssl_context=server_context)
    await server.start(nursery)
    trusting = ssl.create_default_context()
    ca.configure_trust(trusting)
    client = Http1Client(f"https://127.0.0.1:{server.port}", ssl_context=trusting)
    assert await fetch(client, b"a") == (200, b"echo:a")
    assert await fetch(client, b"b") == (200, b"echo:b")
    assert server.connections == 1
    stranger = Http1Client(f"https://127.0.0.1:{server.port}")  # the system's CAs only
    with pytest.raises(TransportError,
                       match=r"^\[ssl: certificate_verify_failed\] certificate verify failed"):
        await fetch(stranger, b"c")


def test_only_http_origins() -> None:
    for bad in ("ftp://x", "127.0.0.1:80", "http://"):
        with pytest.raises(ValueError, match="not an http"):
            Http1Client(bad)
    client: Any = Http1Client("http://[::1]:8080")
    assert client.host_header == "[::1]:8080"
    assert Http1Client("https://example.org").host_header == "example.org"
