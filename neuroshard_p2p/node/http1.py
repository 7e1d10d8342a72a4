"""A small keep-alive HTTP/1.1 client on h11 and trio: how a provider talks to its inference
backend (`backends.OpenAIBackend`).

Why not httpx, which the CLI and the benchmarks use: this call sits on the first token's path
of every job, and httpx spends about 1.3 ms more per request than the same exchange framed by
h11 (the protocol machine httpx itself runs on underneath), and about three times the CPU
(measured against one hypercorn server on 127.0.0.1: first byte 2.35–2.6 ms with httpx,
1.25 ms with h11; CPU per request 1.9–2.6 ms against 0.7–0.9 ms; docs/readme-jobs.md). h11 does
the HTTP: framing, chunked bodies, keep-alive state. This module adds only what a backend call
needs: one origin, a pool of idle connections, TLS for https URLs, and a stale-connection check.

What it does not do, on purpose: proxies from the environment, redirects, compression (it asks
for none), HTTP/2. A backend is a server the provider runs or names itself.

Errors: every failure to connect, to send or to read a well-formed response raises
`TransportError` (with the underlying cause's text); the caller decides what it means. A
response that is only partly read (the job was cancelled) closes its connection, so the server
sees the client leave and can stop generating.

This is a driver, not core: it opens sockets.
"""

from __future__ import annotations

import os
import socket
import ssl
from contextlib import asynccontextmanager
from typing import AsyncIterator
from urllib.parse import urlsplit

import h11
import trio

from neuroshard_p2p.node.streams import failure_reason

#: Idle connections kept per origin (more concurrent jobs open more; the extra ones are closed
#: when they finish).
MAX_IDLE = 32
#: Bytes asked of the socket per read.
READ_SIZE = 65536


class TransportError(Exception):
    """The request could not be sent or its response could not be read: unreachable server, a
    reset or closed connection, a TLS failure, or an answer that is not HTTP/1.1."""


class Response:
    """A response whose body is read as it arrives: `status`, `headers`, then `aiter_bytes()`
    or `aiter_lines()` (each at most once)."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], conn: "_Connection") -> None:
        self.status = status
        self.headers = headers
        self._conn = conn

    async def aiter_bytes(self) -> AsyncIterator[bytes]:
        """The body, piece by piece as it arrives, until its end."""
        conn = self._conn
        while True:
            event = await conn.next_event()
            if isinstance(event, h11.Data):
                if event.data:
                    yield bytes(event.data)
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                return

    async def aiter_lines(self) -> AsyncIterator[str]:
        """The body as text lines (UTF-8; "\\n" or "\\r\\n" ends a line; the ending is dropped),
        each as soon as its end arrives. A last line without an ending comes at the end."""
        pending = b""
        async for data in self.aiter_bytes():
            pending += data
            if b"\n" not in data:
                continue
            *lines, pending = pending.split(b"\n")
            for line in lines:
                yield line.rstrip(b"\r").decode("utf-8", "replace")
        if pending:
            yield pending.rstrip(b"\r").decode("utf-8", "replace")


class _Connection:
    """One TCP (or TLS) connection and its h11 state."""

    def __init__(self, stream: trio.abc.Stream, sock: trio.socket.SocketType) -> None:
        self.stream = stream
        # A second handle on the socket, for the synchronous look at an idle connection (trio's
        # socket methods are async); same file, closed with the connection.
        self.peek = socket.socket(sock.family, sock.type, sock.proto, fileno=os.dup(sock.fileno()))
        self.h11 = h11.Connection(h11.CLIENT)
        self.reused = False
        self.received = False  # any byte of a response on this cycle

    async def send(self, *events: h11.Event) -> None:
        data = b"".join(self.h11.send(event) or b"" for event in events)
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise TransportError(failure_reason(exc)) from None

    async def next_event(self) -> h11.Event:
        while True:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise TransportError(f"the answer is not HTTP/1.1 ({exc})") from None
            if event is not h11.NEED_DATA:
                return event  # type: ignore[return-value]
            try:
                data = await self.stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise TransportError(failure_reason(exc)) from None
            if data:
                self.received = True
            elif not self.received:
                raise TransportError("the server closed the connection without an answer")
            try:
                self.h11.receive_data(data)
            except h11.RemoteProtocolError as exc:  # pragma: no cover - h11 raises on next_event
                raise TransportError(f"the answer is not HTTP/1.1 ({exc})") from None

    def idle_and_alive(self) -> bool:
        """True when nothing has arrived on the idle connection: no EOF (the server closed it
        after its keep-alive timeout) and no stray bytes. Reusing one the server has closed
        would fail the request."""
        try:
            self.peek.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True  # nothing to read: still open
        except OSError:
            return False
        return False  # EOF, or bytes nobody asked for

    async def aclose(self) -> None:
        self.peek.close()
        await trio.aclose_forcefully(self.stream)


class Http1Client:
    """Requests to one origin (`http://host:port` or `https://…`) over kept-alive connections."""

    def __init__(self, origin: str, headers: dict[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) origin: {origin!r}")
        self.tls = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.tls else 80)
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"
        self.headers = [(k.encode("latin-1"), v.encode("latin-1"))
                        for k, v in (headers or {}).items()]
        self.ssl_context = ssl_context
        self._idle: list[_Connection] = []
        self._closed = False

    async def _connect(self) -> _Connection:
        try:
            tcp = await trio.open_tcp_stream(self.host, self.port)
        except OSError as exc:
            raise TransportError(failure_reason(exc)) from None
        sock = tcp.socket  # trio's SocketStream sets TCP_NODELAY
        if not self.tls:
            return _Connection(tcp, sock)  # type: ignore[arg-type]
        context = self.ssl_context or ssl.create_default_context()
        stream = trio.SSLStream(tcp, context, server_hostname=self.host, https_compatible=True)
        try:
            await stream.do_handshake()
        except (trio.BrokenResourceError, OSError) as exc:
            await trio.aclose_forcefully(tcp)
            cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
            raise TransportError(failure_reason(cause or exc)) from None
        return _Connection(stream, sock)  # type: ignore[arg-type]

    async def _take_idle(self) -> _Connection | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.idle_and_alive():
                conn.reused = True
                return conn
            await conn.aclose()
        return None

    @asynccontextmanager
    async def request(self, method: str, target: str, body: bytes,
                      headers: dict[str, str] | None = None) -> AsyncIterator[Response]:
        """Send one request (`target` is the path, e.g. "/v1/chat/completions") and yield its
        response once its status and headers are in. Leaving the block returns the connection
        to the pool if the response was read to its end, and closes it otherwise.

        A kept-alive connection the server closed just as it was reused (no byte of an answer
        came back) is retried once on a new connection: the server did not take the request."""
        if self._closed:
            raise TransportError("the client is closed")
        all_headers = [(b"host", self.host_header.encode("latin-1")), *self.headers,
                       *((k.encode("latin-1"), v.encode("latin-1"))
                         for k, v in (headers or {}).items()),
                       (b"content-length", str(len(body)).encode())]
        conn = await self._take_idle() or await self._connect()
        try:
            while True:
                try:
                    await conn.send(h11.Request(method=method, target=target,
                                                headers=all_headers),
                                    h11.Data(data=body), h11.EndOfMessage())
                    event = await conn.next_event()
                    while isinstance(event, h11.InformationalResponse):
                        event = await conn.next_event()
                except TransportError:
                    if conn.reused and not conn.received:
                        await conn.aclose()
                        conn = await self._connect()
                        continue
                    raise
                break
            if not isinstance(event, h11.Response):
                raise TransportError("the server closed the connection without an answer")
            yield Response(event.status_code, list(event.headers), conn)
        except BaseException:
            await conn.aclose()
            raise
        if (conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE
                and not self._closed and len(self._idle) < MAX_IDLE):
            conn.h11.start_next_cycle()
            conn.received = False
            self._idle.append(conn)
        else:
            await conn.aclose()

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.aclose()


__all__ = ["Http1Client", "Response", "TransportError", "MAX_IDLE"]
