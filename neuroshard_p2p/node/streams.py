"""Helpers for libp2p streams shared by the node's protocols (sync, peer exchange, jobs)."""

from __future__ import annotations

from typing import Any

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
                    raise WireError("malformed", "reject", "stream ended inside a frame")
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
