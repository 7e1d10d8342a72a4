"""Length-prefixed frames on a byte stream (protocols/market-v1.md §4.3), sans-IO.

Each frame on a sync or job stream is `uvarint(length) ‖ payload`: the unsigned LEB128 varint
libp2p uses everywhere (multistream, identify), at most 3 bytes for our largest frame. The reader
is fed whatever bytes the stream delivered and hands back complete frames; it never reads a
socket, so the node, the simulator and the tests drive it the same way.
"""

from __future__ import annotations

from neuroshard_p2p.wire.codec import MAX_ANY_SIZE
from neuroshard_p2p.wire.frames import MAX_ANY_FRAME_SIZE
from neuroshard_p2p.wire.errors import REJECT, WireError

#: Largest payload any stream frame may carry (a sync response), bytes.
MAX_STREAM_FRAME = max(MAX_ANY_FRAME_SIZE, MAX_ANY_SIZE)
#: A length prefix longer than this cannot encode an allowed size: the peer is not speaking v1.
_MAX_PREFIX_BYTES = 4


def length_prefixed(payload: bytes) -> bytes:
    """`uvarint(len(payload)) ‖ payload`."""
    if len(payload) > MAX_STREAM_FRAME:
        raise WireError("oversize", REJECT, f"frame is {len(payload)} bytes (limit {MAX_STREAM_FRAME})")
    n = len(payload)
    prefix = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            prefix.append(byte | 0x80)
        else:
            prefix.append(byte)
            return bytes(prefix) + payload


class FrameReader:
    """Reassemble length-prefixed frames from stream chunks.

    `feed(chunk)` returns the frames completed by `chunk` (possibly none). A length above
    `max_frame`, or a prefix that is not a minimal varint, raises WireError (reject): the stream
    should then be reset. Memory is bounded by `max_frame` plus one prefix."""

    def __init__(self, max_frame: int = MAX_STREAM_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a complete frame."""
        return len(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """Add `chunk` and return every frame it completes, in order."""
        self._buffer += chunk
        frames: list[bytes] = []
        while True:
            header = self._header()
            if header is None:
                return frames
            prefix_len, size = header
            end = prefix_len + size
            if len(self._buffer) < end:
                return frames
            frames.append(bytes(self._buffer[prefix_len:end]))
            del self._buffer[:end]

    def _header(self) -> tuple[int, int] | None:
        size = 0
        for i, byte in enumerate(self._buffer[:_MAX_PREFIX_BYTES]):
            size |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if i and byte == 0:
                    raise WireError("non_canonical", REJECT, "frame length is not a minimal varint")
                if size > self.max_frame:
                    raise WireError("oversize", REJECT,
                                    f"frame announces {size} bytes (limit {self.max_frame})")
                return i + 1, size
        if len(self._buffer) >= _MAX_PREFIX_BYTES:
            raise WireError("oversize", REJECT, "frame length prefix is too long")
        return None


__all__ = ["length_prefixed", "FrameReader", "MAX_STREAM_FRAME"]
