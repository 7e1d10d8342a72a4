"""Helpers for libp2p streams shared by the node's protocols (sync, peer exchange, jobs)."""

from __future__ import annotations

from typing import Any

import trio

from neuroshard_p2p.wire import WireError
from neuroshard_p2p.wire.framing import FrameReader


class FrameStream:
    """Length-prefixed frames read from a libp2p stream (no async generators: breaking out of
    one leaves it unfinalized under trio)."""

    def __init__(self, stream: Any, max_frame: int) -> None:
        self._stream = stream
        self._reader = FrameReader(max_frame)
        self._ready: list[bytes] = []

    async def next(self) -> bytes | None:
        """The next frame, or None when the stream ended cleanly between frames."""
        while not self._ready:
            try:
                chunk = await self._stream.read(65536)
            except EOFError:  # libp2p's StreamEOF
                chunk = b""
            if not chunk:
                if self._reader.buffered:
                    # "ignore": a connection lost mid-frame looks the same, so it is not
                    # charged to the peer as a broken frame (node/guard.py)
                    raise WireError("truncated", "ignore", "stream ended inside a frame")
                return None
            self._ready.extend(self._reader.feed(chunk))
        return self._ready.pop(0)


async def close_quietly(stream: Any) -> None:
    """Close a stream whose peer may already be gone."""
    try:
        await stream.close()
    except Exception:  # noqa: BLE001 - already gone
        pass


async def reset_quietly(stream: Any) -> None:
    """Reset a stream whose peer may already be gone."""
    try:
        await stream.reset()
    except Exception:  # noqa: BLE001 - already gone
        pass


def failure_reason(exc: BaseException) -> str:
    """The most specific readable cause of a network failure, searched through the exception's
    chain, its exception groups and py-libp2p's MultiError: "connection refused", "timed out",
    "protocol not supported …" (the peer does not speak it: another network or version), the
    OS's words for an OSError, a message naming a peer id, else the exception itself."""
    seen: set[int] = set()
    best = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, trio.TooSlowError):
            return "timed out"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        if isinstance(current, BaseExceptionGroup):
            stack.extend(current.exceptions)
        if current.args and isinstance(current.args[0], list):  # libp2p's MultiError
            stack.extend(e for e in current.args[0] if isinstance(e, BaseException))
        for nxt in (current.__cause__, current.__context__):
            if nxt is not None:
                stack.append(nxt)
        text = str(current)
        if text.startswith(("protocols not supported: tried ", "protocol not supported: ")):
            # py-libp2p's multistream-select refusal ("na"): name what the peer would not speak
            tried = text.split(", timeout=")[0].split(", response=")[0]
            return "protocol not supported by the peer (" + tried.split(": ", 1)[1] + ")"
        if text and "peer id" in text.lower():
            best = text
    return best


__all__ = ["FrameStream", "close_quietly", "reset_quietly", "failure_reason"]
