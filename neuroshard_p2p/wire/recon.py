"""Frame 25, Reconcile, of `sync/2.1.0` (protocols/market-v2.md §8.4, revision 2.1: reconciliation).

    [2, 25, ranges: array (0..4,096) of [ts: uint, prefix: bin (0..32), mode: 0|1|2, payload],
            want: array (0..4,096) of bin(32)]

A range is named by its upper bound (ts, prefix); its lower bound is the previous range's upper
bound, or (0, b"") for the first. The last range of a non-empty list ends at the infinite bound
(ts = 2^63 − 1, empty prefix). Payload by mode: 0 Skip → bin(0); 1 Fingerprint → bin(16); 2 IdList
→ array (0..32) of bin(32), strictly ascending. `want` lists message ids the sender lacks and asks
the peer to send (as SyncResponse frames, kind 17).

Only the codec lives here (rules R1–R8 of §8.4); the algorithm that fills the ranges is
`view.recon`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from neuroshard_p2p.wire.codec import Buffer, _pack, _unpack
from neuroshard_p2p.wire.errors import REJECT, WireError

KIND_RECONCILE = 25
RECON_VERSION = 2
MAX_RECONCILE_FRAME = 1024 * 1024
MAX_RANGES = 4096
MAX_WANT = 4096
ID_LEN = 32
FINGERPRINT_LEN = 16
#: A range of at most this many items is sent as its ids (mode IdList), not split.
IDLIST_MAX = 32
INFINITE_TS = 2**63 - 1

MODE_SKIP = 0
MODE_FINGERPRINT = 1
MODE_IDLIST = 2


@dataclass(frozen=True, slots=True)
class ReconRange:
    """One range of a Reconcile frame: its exclusive upper bound (ts, prefix) and what the sender
    says about the items it holds below that bound and at or above the previous range's bound."""
    ts: int
    prefix: bytes
    mode: int
    fingerprint: bytes = b""
    ids: tuple[bytes, ...] = ()

    @property
    def bound(self) -> tuple[int, bytes]:
        return (self.ts, self.prefix)


@dataclass(frozen=True, slots=True)
class Reconcile:
    """Frame 25: the ranges of one reconciliation turn and the ids the sender wants."""
    ranges: tuple[ReconRange, ...]
    want: tuple[bytes, ...] = ()

    @property
    def finished(self) -> bool:
        """True when no range asks the peer for anything more (all Skip, or none)."""
        return all(r.mode == MODE_SKIP for r in self.ranges)


def _bad(message: str) -> WireError:
    return WireError("bad_field", REJECT, message)


def _is_bin(value: Any, low: int, high: int) -> bool:
    return type(value) is bytes and low <= len(value) <= high


def _check(ranges: Any, want: Any) -> tuple[ReconRange, ...]:
    if type(ranges) not in (list, tuple) or len(ranges) > MAX_RANGES:
        raise _bad(f"ranges must be an array of at most {MAX_RANGES} ranges")
    out: list[ReconRange] = []
    previous: tuple[int, bytes] = (0, b"")
    for item in ranges:
        if type(item) not in (list, tuple) or len(item) != 4:
            raise _bad("each range must be an array [ts, prefix, mode, payload]")
        ts, prefix, mode, payload = item
        if type(ts) is not int or not 0 <= ts <= INFINITE_TS:
            raise _bad(f"range ts {ts!r} is not an integer in 0..2^63-1")
        if not _is_bin(prefix, 0, ID_LEN):
            raise _bad("range prefix must be bytes of length 0..32")
        if (ts, prefix) <= previous:
            raise _bad("range bounds must be strictly ascending")
        previous = (ts, prefix)
        if mode == MODE_SKIP and type(mode) is int:
            if not _is_bin(payload, 0, 0):
                raise _bad("a Skip range carries an empty bin")
            out.append(ReconRange(ts, prefix, MODE_SKIP))
        elif mode == MODE_FINGERPRINT and type(mode) is int:
            if not _is_bin(payload, FINGERPRINT_LEN, FINGERPRINT_LEN):
                raise _bad(f"a Fingerprint range carries bin({FINGERPRINT_LEN})")
            out.append(ReconRange(ts, prefix, MODE_FINGERPRINT, fingerprint=payload))
        elif mode == MODE_IDLIST and type(mode) is int:
            if type(payload) not in (list, tuple) or len(payload) > IDLIST_MAX:
                raise _bad(f"an IdList range carries an array of at most {IDLIST_MAX} ids")
            for msg_id in payload:
                if not _is_bin(msg_id, ID_LEN, ID_LEN):
                    raise _bad("an id must be bin(32)")
            if any(a >= b for a, b in zip(payload, payload[1:])):
                raise _bad("the ids of an IdList must be strictly ascending")
            out.append(ReconRange(ts, prefix, MODE_IDLIST, ids=tuple(payload)))
        else:
            raise _bad(f"range mode {mode!r} is not 0, 1 or 2")
    if out and previous != (INFINITE_TS, b""):
        raise _bad("the last range must end at the infinite bound (2^63-1, empty prefix)")
    if type(want) not in (list, tuple) or len(want) > MAX_WANT:
        raise _bad(f"want must be an array of at most {MAX_WANT} ids")
    for msg_id in want:
        if not _is_bin(msg_id, ID_LEN, ID_LEN):
            raise _bad("a wanted id must be bin(32)")
    return tuple(out)


def _payload(r: ReconRange) -> Any:
    if r.mode == MODE_FINGERPRINT:
        return r.fingerprint
    if r.mode == MODE_IDLIST:
        return list(r.ids)
    return b""


def reconcile_items(frame: Reconcile) -> list[Any]:
    """The msgpack items of a Reconcile frame (before packing)."""
    return [RECON_VERSION, KIND_RECONCILE,
            [[r.ts, r.prefix, r.mode, _payload(r)] for r in frame.ranges], list(frame.want)]


def encode_reconcile(frame: Reconcile) -> bytes:
    """Canonical bytes of a Reconcile frame; an invalid one raises WireError as a reader would."""
    items = reconcile_items(frame)
    _check(items[2], items[3])
    data = _pack(items)
    if len(data) > MAX_RECONCILE_FRAME:
        raise WireError("oversize", REJECT, f"frame is {len(data)} bytes (limit {MAX_RECONCILE_FRAME})")
    return data


def decode_reconcile(data: Buffer) -> Reconcile:
    """Decode a Reconcile frame under rules R1–R8 (§8.4), or raise WireError (reject)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("malformed", REJECT, f"input is {type(data).__name__}, not bytes")
    data = bytes(data)
    if len(data) > MAX_RECONCILE_FRAME:  # R1
        raise WireError("oversize", REJECT, f"frame is {len(data)} bytes (limit {MAX_RECONCILE_FRAME})")
    items = _unpack(data, "frame")  # R2
    if type(items) is not list or len(items) < 2:
        raise WireError("malformed", REJECT, "frame must be an array [version, kind, ...]")
    if type(items[0]) is not int or items[0] != RECON_VERSION:  # R3
        raise WireError("version", REJECT, f"unsupported version {items[0]!r} (this is 2)")
    if type(items[1]) is not int or items[1] != KIND_RECONCILE:  # R4
        raise WireError("kind", REJECT, f"unexpected frame kind {items[1]!r}")
    if len(items) != 4:  # R5
        raise WireError("malformed", REJECT, f"frame kind 25 has {len(items)} items, expected 4")
    ranges = _check(items[2], items[3])  # R6
    if _pack(items) != data:  # R7
        raise WireError("non_canonical", REJECT, "frame is not canonically encoded")
    return Reconcile(ranges, tuple(items[3]))


__all__ = [
    "KIND_RECONCILE", "MAX_RECONCILE_FRAME", "MAX_RANGES", "MAX_WANT", "ID_LEN", "FINGERPRINT_LEN",
    "IDLIST_MAX", "INFINITE_TS", "MODE_SKIP", "MODE_FINGERPRINT", "MODE_IDLIST", "ReconRange",
    "Reconcile", "encode_reconcile", "decode_reconcile", "reconcile_items",
]
