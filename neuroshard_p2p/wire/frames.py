"""Unsigned stream frames of protocol v2: one writer and one reader for every kind.

    frame = msgpack array [version = 2, kind, *items of the kind], canonical (§5.2), unsigned
    (the peer-exchange frame 21 is unchanged since v1 and keeps version 1)

| kind | frame        | stream (protocols/market-v2.md)          | largest   |
|------|--------------|------------------------------------------|-----------|
| 16   | SyncRequest  | sync, dialer → listener (§8)             | 1,024 B   |
| 17   | SyncResponse | sync, listener → dialer (§8)             | 1 MiB     |
| 18   | JobDeclined  | job, provider → gateway (§9)             | 1,024 B   |
| 19   | JobAccepted  | job, provider → gateway (§9)             | 1,024 B   |
| 20   | JobResult    | job, provider → gateway (§9)             | 1 MiB     |
| 21   | PeerExchange | peers/1.1.0, listener → dialer (§10)     | 32 KiB    |
| 22   | JobSettled   | job, gateway → provider (§9)             | 1,024 B   |

`decode_frame` applies the rules F1–F8 of §8.2 to every kind, in order, and either returns the
frame or raises `WireError` (always reject) with the rule's reason; nothing else escapes it,
whatever the bytes. `encode_frame` checks the same fields, so an invalid frame is never sent. The
per-stream helpers (`encode_sync`/`decode_sync`, `encode_job_frame`/`decode_job_frame`,
`decode_job_settled`, `encode_peer_exchange`/`decode_peer_exchange`) only restrict the kinds.

One layout predates the kind item: the peer list of `/peers/1.0.0`, `[1, peers]`, which nodes
still serve for old peers (§10, §11). Its functions use the same msgpack reader, the same checks
of the peer list and the same canonical rule; only the outer array differs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from neuroshard_p2p.wire.codec import MAX_SIZE, MAX_STR, Buffer, _pack, _unpack, check_text
from neuroshard_p2p.wire.errors import REJECT, WireError
from neuroshard_p2p.wire.messages import (
    FRAME_TYPES,
    KIND_ANNOUNCEMENT,
    KIND_JOB_ACCEPTED,
    KIND_JOB_CANCEL,
    KIND_JOB_CHUNK,
    KIND_JOB_DECLINED,
    KIND_JOB_RESULT,
    KIND_JOB_SETTLED,
    KIND_PEER_EXCHANGE,
    KIND_SYNC_REQUEST,
    KIND_REVOCATIONS,
    KIND_SYNC_RESPONSE,
    PEERS_VERSION,
    SETTLED,
    SYNC_BUCKETS,
    VERSION,
    Frame,
    JobAccepted,
    JobCancel,
    JobChunk,
    JobDeclined,
    JobFrame,
    JobResult,
    JobSettled,
    PeerExchange,
    SyncRequest,
    SyncResponse,
)

DIGEST_LEN = 32
MAX_SYNC_ANNOUNCEMENTS = 4096   # signed messages in one SyncResponse
#: Largest signed message in a SyncResponse: a revocation list (announcements are at most 2 KiB).
MAX_SYNC_ITEM = max(MAX_SIZE[KIND_ANNOUNCEMENT], MAX_SIZE[KIND_REVOCATIONS])
MAX_DETAIL = 512                # bytes of UTF-8 in a decline's detail
#: Largest completion text in a JobResult (bytes of UTF-8); a provider cuts longer output at a
#: character boundary (`clip_utf8`), which keeps the frame within its 1 MiB.
MAX_OUTPUT_BYTES = 1_000_000
#: Revision 2.1: text in one JobChunk (bytes of UTF-8), and the largest token count one may carry.
MAX_CHUNK_TEXT = 16_384
MAX_CHUNK_TOKENS = 2**32 - 1
#: Peer exchange: peers per answer, addresses per peer, bytes of a peer id and of an address
#: (UTF-8 text), bytes of the whole frame. The same for frame 21 and the 1.0.0 peer list.
PEERS_MAX_ENTRIES = 32
PEERS_MAX_ADDRS = 8
PEERS_MAX_PEER_ID = 128
PEERS_MAX_ADDR_LEN = 256
PEERS_MAX_FRAME = 32 * 1024

#: Largest frame per kind (bytes).
MAX_FRAME_SIZE = {
    KIND_SYNC_REQUEST: 1024, KIND_SYNC_RESPONSE: 1024 * 1024, KIND_JOB_DECLINED: 1024,
    KIND_JOB_ACCEPTED: 1024, KIND_JOB_RESULT: 1024 * 1024, KIND_PEER_EXCHANGE: PEERS_MAX_FRAME,
    KIND_JOB_SETTLED: 1024, KIND_JOB_CHUNK: 17_408, KIND_JOB_CANCEL: 1024,
}
MAX_ANY_FRAME_SIZE = max(MAX_FRAME_SIZE.values())

#: The kinds each stream carries (rule F4: any other kind is `kind` there).
SYNC_KINDS = (KIND_SYNC_REQUEST, KIND_SYNC_RESPONSE)
JOB_KINDS = (KIND_JOB_DECLINED, KIND_JOB_ACCEPTED, KIND_JOB_RESULT, KIND_JOB_SETTLED)
#: job/2.1.0 (revision 2.1: streaming) carries these two more.
JOB_STREAM_KINDS = JOB_KINDS + (KIND_JOB_CHUNK, KIND_JOB_CANCEL)
PEER_KINDS = (KIND_PEER_EXCHANGE,)

#: Every reason a frame decoder can give (all with action reject).
FRAME_REASONS = ("oversize", "malformed", "version", "kind", "bad_field", "non_canonical")


# --- field checks (F7) ----------------------------------------------------------------------

def _bad(message: str) -> WireError:
    return WireError("bad_field", REJECT, message)


def _check_bin(name: str, value: Any, low: int, high: int) -> None:
    if type(value) is not bytes:
        raise _bad(f"{name} must be bytes, got {type(value).__name__}")
    if not low <= len(value) <= high:
        raise _bad(f"{name} is {len(value)} bytes (must be {low}..{high})")


def _check_array(name: str, value: Any, high: int) -> None:
    if type(value) not in (list, tuple):
        raise _bad(f"{name} must be an array, got {type(value).__name__}")
    if len(value) > high:
        raise _bad(f"{name} has {len(value)} items (limit {high})")


def _check_sync_request(digest: Any, buckets: Any, revocations: Any) -> None:
    _check_bin("digest", digest, DIGEST_LEN, DIGEST_LEN)
    _check_bin("revocations_digest", revocations, DIGEST_LEN, DIGEST_LEN)
    _check_array("bucket_digests", buckets, SYNC_BUCKETS)
    if len(buckets) != SYNC_BUCKETS:
        raise _bad(f"bucket_digests has {len(buckets)} items, expected {SYNC_BUCKETS}")
    for item in buckets:
        _check_bin("a bucket digest", item, DIGEST_LEN, DIGEST_LEN)


def _check_sync_response(announcements: Any) -> None:
    _check_array("messages", announcements, MAX_SYNC_ANNOUNCEMENTS)
    for item in announcements:
        _check_bin("a message", item, 1, MAX_SYNC_ITEM)


def _check_job_declined(request_id: Any, reason: Any, detail: Any) -> None:
    check_text("request_id", request_id, MAX_STR, True)
    check_text("reason", reason, MAX_STR, True)
    check_text("detail", detail, MAX_DETAIL, False)


def _check_job_accepted(request_id: Any) -> None:
    check_text("request_id", request_id, MAX_STR, True)


def _check_job_result(request_id: Any, receipt: Any, output: Any) -> None:
    check_text("request_id", request_id, MAX_STR, True)
    # No limit of its own: the frame bounds it, and the gateway then decodes it as a Receipt (§6).
    _check_bin("receipt", receipt, 1, MAX_FRAME_SIZE[KIND_JOB_RESULT])
    check_text("output", output, MAX_OUTPUT_BYTES, False)


def _check_job_settled(request_id: Any, receipt_id: Any, outcome: Any) -> None:
    check_text("request_id", request_id, MAX_STR, True)
    check_text("outcome", outcome, MAX_STR, True)
    # The id names a receipt that settled; a refused receipt is not identified (§8.2 F7).
    if outcome == SETTLED:
        _check_bin("receipt_id", receipt_id, DIGEST_LEN, DIGEST_LEN)
    else:
        _check_bin("receipt_id", receipt_id, 0, 0)


def _check_job_chunk(request_id: Any, tokens: Any, text: Any) -> None:
    check_text("request_id", request_id, MAX_STR, True)
    if type(tokens) is not int or not 0 <= tokens <= MAX_CHUNK_TOKENS:
        raise _bad(f"tokens must be an integer 0..{MAX_CHUNK_TOKENS}, got {tokens!r}")
    check_text("text", text, MAX_CHUNK_TEXT, False)


def _check_job_cancel(request_id: Any) -> None:
    check_text("request_id", request_id, MAX_STR, True)


def _check_peers(peers: Any) -> None:
    """The peer list of frame 21 and of the 1.0.0 layout: [[peer_id, [addr, ...]], ...]."""
    _check_array("peers", peers, PEERS_MAX_ENTRIES)
    for entry in peers:
        if type(entry) not in (list, tuple) or len(entry) != 2:
            raise _bad("each peer must be an array [peer_id, addrs]")
        peer_id, addrs = entry
        check_text("peer_id", peer_id, PEERS_MAX_PEER_ID, True)
        _check_array("addrs", addrs, PEERS_MAX_ADDRS)
        for addr in addrs:
            check_text("addr", addr, PEERS_MAX_ADDR_LEN, True)


# --- the layout of each kind: items after [version, kind], F7, and the frame's items ----------

_Layout = tuple[int, Callable[..., None], Callable[..., Frame], Callable[[Any], list[Any]]]

_LAYOUTS: dict[int, _Layout] = {
    KIND_SYNC_REQUEST: (
        3, _check_sync_request,
        lambda digest, buckets, revocations: SyncRequest(digest, tuple(buckets), revocations),
        lambda f: [f.digest, list(f.bucket_digests), f.revocations_digest]),
    KIND_SYNC_RESPONSE: (
        1, _check_sync_response, lambda announcements: SyncResponse(tuple(announcements)),
        lambda f: [list(f.announcements)]),
    KIND_JOB_DECLINED: (
        3, _check_job_declined, JobDeclined, lambda f: [f.request_id, f.reason, f.detail]),
    KIND_JOB_ACCEPTED: (1, _check_job_accepted, JobAccepted, lambda f: [f.request_id]),
    KIND_JOB_RESULT: (
        3, _check_job_result, JobResult, lambda f: [f.request_id, f.receipt, f.output]),
    KIND_JOB_SETTLED: (
        3, _check_job_settled, JobSettled, lambda f: [f.request_id, f.receipt_id, f.outcome]),
    KIND_JOB_CHUNK: (
        3, _check_job_chunk, JobChunk, lambda f: [f.request_id, f.tokens, f.text]),
    KIND_JOB_CANCEL: (1, _check_job_cancel, JobCancel, lambda f: [f.request_id]),
    KIND_PEER_EXCHANGE: (
        1, _check_peers,
        lambda peers: PeerExchange(tuple((peer_id, tuple(addrs)) for peer_id, addrs in peers)),
        lambda f: [[[peer_id, list(addrs)] for peer_id, addrs in f.peers]]),
}
assert set(_LAYOUTS) == set(FRAME_TYPES)


# --- the generic writer and reader ------------------------------------------------------------

def encode_frame(frame: Frame) -> bytes:
    """The canonical bytes of a stream frame (before the length prefix, §4.3). Invalid fields
    raise WireError, as they would on the receiving side."""
    kind = getattr(frame, "KIND", None)
    if kind not in _LAYOUTS or type(frame) is not FRAME_TYPES[kind]:
        raise WireError("kind", REJECT, f"cannot encode a {type(frame).__name__} as a stream frame")
    _, check, _, items_of = _LAYOUTS[kind]
    try:
        values = items_of(frame)
    except TypeError:  # e.g. a sequence field holding None: refuse it like any bad field
        raise _bad(f"a field of this {type(frame).__name__} is not of its type") from None
    check(*values)
    data = _pack([_version_of(kind), kind, *values])
    if len(data) > MAX_FRAME_SIZE[kind]:
        raise WireError("oversize", REJECT, f"frame is {len(data)} bytes (limit {MAX_FRAME_SIZE[kind]})")
    return data


def decode_frame(data: Buffer, kinds: tuple[int, ...] | None = None) -> Frame:
    """Decode a stream frame, optionally only of the given kinds (those of the stream it came
    on); raise WireError otherwise. Bytes inside (announcements, a receipt) are returned as they
    came, still to be validated as signed messages."""
    data = _as_bytes(data)
    if len(data) > MAX_ANY_FRAME_SIZE:  # F1
        raise WireError("oversize", REJECT, f"frame is {len(data)} bytes (limit {MAX_ANY_FRAME_SIZE})")
    items = _unpack(data, "frame")
    if type(items) is not list or len(items) < 2:  # F2
        raise WireError("malformed", REJECT, "frame must be an array [version, kind, ...]")
    version, kind = items[0], items[1]
    expected = _version_of(kinds[0] if kinds else kind)
    if type(version) is not int or version != expected:  # F3
        raise WireError("version", REJECT, f"unsupported version {version!r} (this is {expected})")
    if type(kind) is not int or kind not in _LAYOUTS or (kinds is not None and kind not in kinds):  # F4
        raise WireError("kind", REJECT, f"unexpected frame kind {kind!r}")
    if len(data) > MAX_FRAME_SIZE[kind]:  # F5
        raise WireError("oversize", REJECT, f"frame is {len(data)} bytes (limit {MAX_FRAME_SIZE[kind]})")
    count, check, build, _ = _LAYOUTS[kind]
    if len(items) != 2 + count:  # F6
        raise WireError("malformed", REJECT,
                        f"frame kind {kind} has {len(items)} items, expected {2 + count}")
    values = items[2:]
    check(*values)  # F7
    if _pack(items) != data:  # F8
        raise WireError("non_canonical", REJECT, "frame is not canonically encoded")
    return build(*values)


def _version_of(kind: Any) -> int:
    """The version item a frame of this kind carries: 2, but 1 for peer exchange (frame 21 on
    /peers/1.1.0 is unchanged since v1)."""
    return PEERS_VERSION if kind == KIND_PEER_EXCHANGE else VERSION


def _as_bytes(data: Any) -> bytes:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("malformed", REJECT, f"input is {type(data).__name__}, not bytes")
    return bytes(data)


# --- sync stream (§8) -------------------------------------------------------------------------

def encode_sync(frame: SyncRequest | SyncResponse) -> bytes:
    """Bytes of a sync frame (same as `encode_frame`, limited to the two sync kinds)."""
    if not isinstance(frame, (SyncRequest, SyncResponse)):
        raise WireError("kind", REJECT, f"not a sync frame: {type(frame).__name__}")
    return encode_frame(frame)


def decode_sync(data: Buffer) -> SyncRequest | SyncResponse:
    """Decode a sync request or response frame, or raise WireError."""
    frame = decode_frame(data, SYNC_KINDS)
    assert isinstance(frame, (SyncRequest, SyncResponse))
    return frame


def split_sync_response(announcements: list[bytes]) -> list[SyncResponse]:
    """Pack announcements into as few SyncResponse frames as the size limits allow, in order."""
    frames: list[SyncResponse] = []
    batch: list[bytes] = []
    size = 8  # array headers of [2, 17, [...]] with room for the largest array header
    for item in announcements:
        item_size = len(item) + 5
        if batch and (len(batch) >= MAX_SYNC_ANNOUNCEMENTS
                      or size + item_size > MAX_FRAME_SIZE[KIND_SYNC_RESPONSE]):
            frames.append(SyncResponse(tuple(batch)))
            batch, size = [], 8
        batch.append(item)
        size += item_size
    if batch:
        frames.append(SyncResponse(tuple(batch)))
    return frames


# --- job stream (§9) --------------------------------------------------------------------------

def encode_job_frame(frame: JobFrame) -> bytes:
    """Bytes of a job-stream frame: declined, accepted or result (provider → gateway), settled
    (gateway → provider)."""
    if not isinstance(frame, (JobDeclined, JobAccepted, JobResult, JobSettled, JobChunk,
                              JobCancel)):
        raise WireError("kind", REJECT, f"not a job-stream frame: {type(frame).__name__}")
    return encode_frame(frame)


def decode_job_frame(data: Buffer, streaming: bool = False) -> JobFrame:
    """Decode a job-stream frame, or raise WireError (reject) saying why. Whether the kind is
    the one expected at this step of §9 (a gateway never expects a JobSettled) is the reader's
    check. The receipt inside a JobResult is returned as bytes, still to be checked
    (ledger.checks)."""
    frame = decode_frame(data, JOB_STREAM_KINDS if streaming else JOB_KINDS)
    assert isinstance(frame, (JobDeclined, JobAccepted, JobResult, JobSettled, JobChunk,
                              JobCancel))
    return frame


def decode_job_gateway_frame(data: Buffer) -> JobSettled | JobCancel:
    """Revision 2.1: what a provider may read from the gateway on job/2.1.0 after JobAccepted:
    a JobCancel (while serving) or a JobSettled (after its JobResult); else WireError."""
    frame = decode_frame(data, (KIND_JOB_SETTLED, KIND_JOB_CANCEL))
    assert isinstance(frame, (JobSettled, JobCancel))
    return frame


def decode_job_settled(data: Buffer) -> JobSettled:
    """Decode the gateway's JobSettled (what a provider reads after its JobResult), or raise
    WireError: any other job-stream kind here is `kind`."""
    frame = decode_frame(data, (KIND_JOB_SETTLED,))
    assert isinstance(frame, JobSettled)
    return frame


def clip_utf8(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-8 bytes at a character boundary (lone surrogates, which
    UTF-8 cannot carry, become "?"): how a sender fits free text into a frame's limit."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data.decode("utf-8")
    return data[:limit].decode("utf-8", "ignore")


# --- peer exchange (§10) ----------------------------------------------------------------------

PeerEntries = Sequence[tuple[str, Sequence[str]]]


def encode_peer_exchange(entries: PeerEntries) -> bytes:
    """Frame 21 `[1, 21, [[peer_id, [addr, ...]], ...]]`, served on `/peers/1.1.0`. Entries out
    of the limits raise WireError; `fit_peer_exchange` picks entries that fit."""
    return encode_frame(PeerExchange(_peer_tuples(entries)))


def decode_peer_exchange(data: Buffer) -> list[tuple[str, list[str]]]:
    """The (peer id, addresses) of a frame 21, or WireError. Ids and addresses are checked as
    text only: whether they parse as a libp2p peer id and multiaddrs is the dialer's business."""
    frame = decode_frame(data, PEER_KINDS)
    assert isinstance(frame, PeerExchange)
    return [(peer_id, list(addrs)) for peer_id, addrs in frame.peers]


def encode_peer_exchange_legacy(entries: PeerEntries) -> bytes:
    """The version-1.0 peer list `[1, [[peer_id, [addr, ...]], ...]]` (no kind item), served on
    `/peers/1.0.0` to nodes that do not speak 1.1.0. Same limits as frame 21."""
    peers = _peer_tuples(entries)
    _check_peers(peers)
    data = _pack([PEERS_VERSION, peers])
    if len(data) > PEERS_MAX_FRAME:
        raise WireError("oversize", REJECT, f"peer list is {len(data)} bytes (limit {PEERS_MAX_FRAME})")
    return data


def decode_peer_exchange_legacy(data: Buffer) -> list[tuple[str, list[str]]]:
    """Decode a `/peers/1.0.0` answer (rules L1–L5 of §10), or raise WireError."""
    data = _as_bytes(data)
    if len(data) > PEERS_MAX_FRAME:  # L1
        raise WireError("oversize", REJECT, f"peer list is {len(data)} bytes (limit {PEERS_MAX_FRAME})")
    items = _unpack(data, "peer list")
    if type(items) is not list or len(items) != 2:  # L2
        raise WireError("malformed", REJECT, "peer list must be an array [version, peers]")
    if type(items[0]) is not int or items[0] != PEERS_VERSION:  # L3
        raise WireError("version", REJECT,
                        f"unsupported version {items[0]!r} (this is {PEERS_VERSION})")
    _check_peers(items[1])  # L4
    if _pack(items) != data:  # L5
        raise WireError("non_canonical", REJECT, "peer list is not canonically encoded")
    return [(peer_id, list(addrs)) for peer_id, addrs in items[1]]


def fit_peer_exchange(entries: Iterable[tuple[str, Iterable[str]]]) -> list[tuple[str, list[str]]]:
    """What a listener can send of `entries`, in order: addresses outside 1..256 bytes dropped,
    at most 8 per peer, peers without an address or with an id outside 1..128 bytes dropped, at
    most 32 peers, and no more than fit 32 KiB in either layout."""
    budget = PEERS_MAX_FRAME - 6  # [1, 21, array16 header]: the larger of the two layouts' heads
    out: list[tuple[str, list[str]]] = []
    for peer_id, addrs in entries:
        if len(out) == PEERS_MAX_ENTRIES:
            break
        if not _fits(peer_id, PEERS_MAX_PEER_ID):
            continue
        texts = [a for a in addrs if _fits(a, PEERS_MAX_ADDR_LEN)][:PEERS_MAX_ADDRS]
        size = len(_pack([peer_id, texts]))
        if texts and size <= budget:
            out.append((peer_id, texts))
            budget -= size
    return out


def _fits(text: Any, limit: int) -> bool:
    try:
        check_text("", text, limit, True)
    except WireError:
        return False
    return True


def _peer_tuples(entries: PeerEntries) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """`entries` as the frame's tuples; anything that is not (id, addresses) pairs is bad_field
    (the texts themselves are checked with the frame)."""
    try:
        pairs = [(peer_id, addrs) for peer_id, addrs in entries]
    except (TypeError, ValueError):
        raise _bad("peers must be (peer_id, addresses) pairs") from None
    for _, addrs in pairs:
        if isinstance(addrs, (str, bytes)) or not isinstance(addrs, Iterable):
            raise _bad("addresses must be a sequence of texts")
    return tuple((peer_id, tuple(addrs)) for peer_id, addrs in pairs)


__all__ = [
    "encode_frame", "decode_frame", "encode_sync", "decode_sync", "split_sync_response",
    "encode_job_frame", "decode_job_frame", "decode_job_settled", "clip_utf8", "encode_peer_exchange",
    "decode_peer_exchange", "encode_peer_exchange_legacy", "decode_peer_exchange_legacy",
    "fit_peer_exchange", "MAX_FRAME_SIZE", "MAX_ANY_FRAME_SIZE", "MAX_SYNC_ANNOUNCEMENTS",
    "MAX_DETAIL", "MAX_OUTPUT_BYTES", "DIGEST_LEN", "PEERS_MAX_ENTRIES", "PEERS_MAX_ADDRS",
    "PEERS_MAX_PEER_ID", "PEERS_MAX_ADDR_LEN", "PEERS_MAX_FRAME", "SYNC_KINDS", "JOB_KINDS",
    "PEER_KINDS", "FRAME_REASONS",
]
