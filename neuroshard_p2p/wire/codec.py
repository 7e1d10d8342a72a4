"""Canonical encoding, signing and stateless validation of signed wire messages.

`encode` signs a message; `decode` returns a valid message or raises `WireError` with a reason a
person can act on and whether the sender misbehaved (reject) or the message is merely stale
(ignore). Decoding never raises anything else, whatever the input bytes. Stateful checks of
announcements (replay, seq, rate limits) live in `validate.Validator`, of receipts in the
gateway's `ledger.checks`; unsigned stream frames in `frames`, which shares this module's msgpack
reader (`_unpack`) and text check.

The rules, their order and their reason codes are those of protocols/market-v2.md §6.1; the rule
numbers (W1…W13) appear in comments below so the two can be read side by side.

Speed: a received announcement costs one signature check plus a few microseconds. The envelope of
a canonical message is split by hand (its layout is fixed), parsed public keys are cached, and the
signature goes to libsecp256k1 in its compact form without a DER round trip. Anything the fast path
does not recognise falls through to the general path, which finds the exact reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import coincurve
import msgpack  # type: ignore[import-untyped]
from coincurve.ecdsa import cdata_to_der, der_to_cdata, serialize_compact

from neuroshard_p2p.timeline import ms_of, seconds_of, whole_ms
from neuroshard_p2p.wire.errors import IGNORE, REJECT, WireError
from neuroshard_p2p.wire.messages import (
    DEMAND_BUCKETS,
    KIND_ANNOUNCEMENT,
    KIND_JOB,
    KIND_CREDENTIAL,
    KIND_RECEIPT,
    KIND_REVOCATIONS,
    MESSAGE_TYPES,
    TIERS,
    VERSION,
    Message,
)

try:  # the raw libsecp256k1 binding coincurve ships: lets us verify a compact signature directly
    from coincurve._libsecp256k1 import ffi as _ffi  # type: ignore[import-not-found]
    from coincurve._libsecp256k1 import lib as _lib
    from coincurve.context import GLOBAL_CONTEXT as _CONTEXT
except ImportError:  # pragma: no cover - a coincurve that moved its internals: use the public API
    _lib = None

PUBKEY_LEN = 33
SIGNATURE_LEN = 64
MAX_U63 = 2**63 - 1
MAX_STR = 128            # bytes of UTF-8 in request ids, user names (and in frames' request ids)
MAX_PROMPT = 64 * 1024   # bytes of UTF-8 in a job's prompt

MAX_CREDENTIAL = 1024    # bytes of a Credential's wire, inside an Announcement or a Job
MAX_REVOKED = 1000       # entries of a RevocationList
HASH_LEN = 32

#: Largest accepted wire size per kind (bytes). Announcements are about 140 bytes in open
#: networks and about 330 with a credential.
MAX_SIZE = {KIND_ANNOUNCEMENT: 2048, KIND_JOB: 82 * 1024, KIND_RECEIPT: 1024,
            KIND_CREDENTIAL: MAX_CREDENTIAL, KIND_REVOCATIONS: 64 * 1024}
MAX_ANY_SIZE = max(MAX_SIZE.values())

#: Freshness window around the receiver's clock (issued_at may be at most this old / this early).
MAX_AGE_S = 300.0
MAX_FUTURE_S = 30.0
_MAX_AGE_MS = whole_ms(MAX_AGE_S, "MAX_AGE_S")
_MAX_FUTURE_MS = whole_ms(MAX_FUTURE_S, "MAX_FUTURE_S")

# Per kind: the body fields after the common header, with their type and range.
_INT, _PUBKEY, _STR, _PROMPT = "int", "pubkey", "str", "prompt"
_CRED, _HASH, _REVOKED, _BIDS = "credential", "hash", "revoked", "bids"
SCHEMA: dict[int, tuple[tuple[str, str], ...]] = {
    KIND_ANNOUNCEMENT: (
        ("seq", _INT), ("tokens_per_second", _INT), ("min_price_nano", _INT),
        ("pending_tokens", _INT), ("pending_requests", _INT), ("work_nonce", _INT),
        ("credential", _CRED), ("demand_by_limit", _BIDS),
    ),
    KIND_JOB: (
        ("request_id", _STR), ("user", _STR), ("provider", _PUBKEY), ("tokens", _INT),
        ("max_price_nano", _INT), ("locked_price_nano", _INT), ("tier", _INT), ("prompt", _PROMPT),
        ("credential", _CRED),
    ),
    KIND_CREDENTIAL: (
        ("network", _HASH), ("member", _PUBKEY), ("roles", _INT), ("max_tokens_per_second", _INT),
        ("max_pending_tokens", _INT), ("max_pending_requests", _INT), ("expires_at_ms", _INT),
    ),
    KIND_REVOCATIONS: (
        ("seq", _INT), ("network", _HASH), ("revoked", _REVOKED),
    ),
    KIND_RECEIPT: (
        ("request_id", _STR), ("gateway", _PUBKEY), ("user", _STR), ("tokens_served", _INT),
        ("locked_price_nano", _INT), ("started_at_ms", _INT), ("ended_at_ms", _INT),
    ),
}
_FIELD_NAMES = {kind: tuple(name for name, _ in schema) for kind, schema in SCHEMA.items()}
_BODY_LEN = {kind: 4 + len(schema) for kind, schema in SCHEMA.items()}
#: An announcement's last item, the bid histogram, exists only on clearing networks (revision
#: 2.1): its body has 11 items without it, 12 with it. Which one a network wants is the
#: validator's rule (V6c), not the codec's.
_ANNOUNCEMENT_LENS = (_BODY_LEN[KIND_ANNOUNCEMENT] - 1, _BODY_LEN[KIND_ANNOUNCEMENT])
# Decoding builds messages positionally: the dataclass fields must follow the schema's order.
for _kind, _names in _FIELD_NAMES.items():
    _declared = [f.name for f in dataclasses.fields(MESSAGE_TYPES[_kind])]
    assert _declared[:2 + len(_names)] == ["signer", "issued_at_ms", *_names], _declared

# Parsed public keys, by their 33 bytes. Parsing costs a tenth of a verify and the same few
# thousand signers sign everything we receive. Bounded: cleared when full (cheap, and an attacker
# cycling keys only costs itself re-parses).
_PUBKEY_CACHE: dict[bytes, coincurve.PublicKey] = {}
_PUBKEY_CACHE_MAX = 16_384

_sha256 = hashlib.sha256

#: What the decoders accept as input (anything else is refused as `malformed`).
Buffer = bytes | bytearray | memoryview


def _pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def public_key_of(private_key: coincurve.PrivateKey) -> bytes:
    """The 33-byte compressed public key of a signing key: its signer id on the wire."""
    return private_key.public_key.format(compressed=True)


def body_of(message: Message) -> bytes:
    """The canonical unsigned bytes of a message: what the signature covers."""
    fields = [getattr(message, name) for name in _FIELD_NAMES[message.KIND]]
    if message.KIND == KIND_REVOCATIONS:
        fields[-1] = [list(entry) for entry in fields[-1]]
    elif message.KIND == KIND_ANNOUNCEMENT:
        if fields[-1] is None:
            fields.pop()
        else:
            fields[-1] = list(fields[-1])
    return _pack([VERSION, message.KIND, message.signer, message.issued_at_ms, *fields])


def message_id(wire: bytes) -> bytes:
    """De-duplication id: SHA-256 of the signed wire bytes."""
    return _sha256(wire).digest()


def encode(message: Message, private_key: coincurve.PrivateKey) -> bytes:
    """Sign `message` with `private_key` (whose public key must be the message's signer) and
    return its wire bytes. Invalid field values raise WireError before anything is signed."""
    kind = getattr(message, "KIND", None)
    if kind not in SCHEMA:
        raise WireError("kind", REJECT, f"cannot encode a {type(message).__name__} as a signed message")
    if message.signer != public_key_of(private_key):
        raise WireError("signer_mismatch", REJECT, "signer is not the public key of the signing key")
    values = [getattr(message, n) for n in _FIELD_NAMES[kind]]
    if kind == KIND_ANNOUNCEMENT and values[-1] is None:
        values.pop()
    _check_fields(kind, values, message.signer, message.issued_at_ms)
    body = body_of(message)
    # libsecp256k1 signs deterministically (RFC 6979) and always produces low-s signatures.
    signature = serialize_compact(der_to_cdata(private_key.sign(body)))
    wire = _pack([body, signature])
    if len(wire) > MAX_SIZE[kind]:
        raise WireError("oversize", REJECT, f"message is {len(wire)} bytes (limit {MAX_SIZE[kind]})")
    return wire


def sign(message: Message, private_key: coincurve.PrivateKey) -> Message:
    """Return `message` with its signature, wire bytes and id filled in."""
    return decode_unchecked_time(encode(message, private_key))


def decode(data: Buffer, now: float) -> Message:
    """Decode and validate wire bytes received at `now` (seconds since the Unix epoch): W1–W13.
    W13 (freshness) is for announcements, jobs and receipts only: a credential or a revocation
    list stays valid however old it is (spec §6.1)."""
    message = _decode(data, None)
    if message.KIND <= KIND_RECEIPT:
        check_freshness(message.issued_at_ms, now)
    return message


def decode_unchecked_time(data: Buffer) -> Message:
    """Everything `decode` checks except freshness (for vectors, stored receipts, sync replays
    that are checked against their own time rules)."""
    return _decode(data, None)


def check_freshness(issued_at_ms: int, now: float) -> None:
    """W13: ignore a message issued more than 300 s before `now`; reject one issued more than
    30 s after it (the signer's clock is wrong or it is pre-signing)."""
    now_ms = _now_ms(now)
    age_ms = now_ms - issued_at_ms
    if age_ms > _MAX_AGE_MS:
        raise WireError("stale", IGNORE,
                        f"timestamp {seconds_of(age_ms):.0f} s in the past (limit {MAX_AGE_S:.0f} s)")
    if -age_ms > _MAX_FUTURE_MS:
        raise WireError("future", REJECT,
                        f"timestamp {seconds_of(-age_ms):.0f} s in the future (limit {MAX_FUTURE_S:.0f} s)")


def _now_ms(now: float) -> int:
    """The receiver's clock in integer milliseconds, the unit every time rule works in
    (`timeline.ms_of`: the nearest millisecond; a non-finite `now` is a ValueError)."""
    return ms_of(now)


def _decode(data: Any, msg_id: bytes | None) -> Message:
    """Decode and check everything but freshness. `msg_id` is SHA-256(data) if the caller has
    already computed it (the validator hashes first to drop duplicates before verifying)."""
    if type(data) is not bytes:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise WireError("malformed", REJECT, f"input is {type(data).__name__}, not bytes")
        data = bytes(data)
    size = len(data)
    if size > MAX_ANY_SIZE:  # W1
        raise WireError("oversize", REJECT, f"message is {size} bytes (limit {MAX_ANY_SIZE})")
    split = _split_envelope(data)
    if split is None:
        split = _split_envelope_slowly(data)  # raises the exact reason (W2, W3, W4)
    body, signature = split
    fields = _unpack(body, "body")
    if type(fields) is not list or len(fields) < 4:  # W5
        raise WireError("malformed", REJECT, "body must be an array of at least 4 items")
    version, kind, signer, issued_at_ms = fields[0], fields[1], fields[2], fields[3]
    if type(version) is not int or version != VERSION:  # W6
        raise WireError("version", REJECT, f"unsupported version {version!r} (this is {VERSION})")
    if type(kind) is not int or kind not in SCHEMA:  # W7
        raise WireError("kind", REJECT, f"unknown message kind {kind!r}")
    if size > MAX_SIZE[kind]:  # W8
        raise WireError("oversize", REJECT, f"message is {size} bytes (limit {MAX_SIZE[kind]})")
    if len(fields) != _BODY_LEN[kind] and not (kind == KIND_ANNOUNCEMENT
                                               and len(fields) in _ANNOUNCEMENT_LENS):  # W9
        expected = ("11 or 12" if kind == KIND_ANNOUNCEMENT else str(_BODY_LEN[kind]))
        raise WireError("malformed", REJECT,
                        f"kind {kind} body has {len(fields)} items, expected {expected}")
    values = fields[4:]
    key = _check_fields(kind, values, signer, issued_at_ms)  # W10
    if kind == KIND_REVOCATIONS:
        values[-1] = tuple((member, from_ms) for member, from_ms in values[-1])
    elif kind == KIND_ANNOUNCEMENT and len(values) == len(SCHEMA[kind]):
        values[-1] = tuple(values[-1])
    if _pack(fields) != body:  # W11
        raise WireError("non_canonical", REJECT, "body is not canonically encoded")
    if not _verify(key, signature, body):  # W12
        raise WireError("bad_signature", REJECT, "signature does not verify for the signer's key")
    if msg_id is None:
        msg_id = _sha256(data).digest()
    message: Message = MESSAGE_TYPES[kind](signer, issued_at_ms, *values,
                                           signature=signature, wire=data, msg_id=msg_id)
    return message


def _split_envelope(data: bytes) -> tuple[bytes, bytes] | None:
    """[body, signature] of a canonically encoded envelope, or None if `data` is anything else.

    The canonical envelope is fixarray(2), the body as bin in its shortest form, then bin8(64)
    and the signature; reading those bytes directly saves a msgpack round trip per message."""
    size = len(data)
    if size < 3 + 2 + SIGNATURE_LEN or data[0] != 0x92:
        return None
    tag = data[1]
    if tag == 0xC4:
        start, body_len = 3, data[2]
    elif tag == 0xC5:
        start, body_len = 5, int.from_bytes(data[2:4], "big")
        if body_len < 0x100:
            return None
    elif tag == 0xC6:
        start, body_len = 7, int.from_bytes(data[2:6], "big")
        if body_len < 0x10000:
            return None
    else:
        return None
    end = start + body_len
    if end + 2 + SIGNATURE_LEN != size or data[end] != 0xC4 or data[end + 1] != SIGNATURE_LEN:
        return None
    return data[start:end], data[end + 2:]


def _split_envelope_slowly(data: bytes) -> tuple[bytes, bytes]:
    """The general path for an envelope the fast path did not recognise: find what is wrong."""
    envelope = _unpack(data, "envelope")
    if not (type(envelope) is list and len(envelope) == 2
            and type(envelope[0]) is bytes and type(envelope[1]) is bytes):  # W2
        raise WireError("malformed", REJECT, "envelope must be [body: bin, signature: bin]")
    body, signature = envelope
    if len(signature) != SIGNATURE_LEN:  # W3
        raise WireError("bad_signature", REJECT,
                        f"signature is {len(signature)} bytes, expected {SIGNATURE_LEN}")
    if _pack(envelope) != data:  # W4
        raise WireError("non_canonical", REJECT, "envelope is not canonically encoded")
    return body, signature  # pragma: no cover - a canonical envelope takes the fast path


def _no_maps(pairs: Any) -> Any:
    raise ValueError("maps never appear on the wire")


def _no_ext(code: int, data: bytes) -> Any:
    raise ValueError("ext types never appear on the wire")


def _unpack(data: bytes, what: str) -> Any:
    # Maps and ext types never appear on the wire (W5). A limit of 0 refuses every non-empty one; the
    # hooks, called only when one is met, refuse the empty ones the limits let through. Arrays
    # and strings cannot be longer than the input, which W1/F1 already bounded.
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=len(data), max_str_len=len(data),
                               max_array_len=len(data), max_map_len=0, max_ext_len=0,
                               object_pairs_hook=_no_maps, ext_hook=_no_ext)
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        raise WireError("malformed", REJECT, f"{what} is not valid msgpack: {exc}") from None


def _check_fields(kind: int, values: list[Any], signer: Any,
                  issued_at_ms: Any) -> coincurve.PublicKey:
    """W10: types and ranges of every field, and the rules that tie fields of one message.
    Returns the signer's parsed public key."""
    _check_pubkey("signer", signer)
    key = _parsed_pubkey("signer", signer)
    _check_int("issued_at_ms", issued_at_ms)
    if kind == KIND_ANNOUNCEMENT:  # the hot path: six integers and a (usually empty) bin
        for name, value in zip(_FIELD_NAMES[kind], values[:6]):
            if type(value) is not int or not 0 <= value <= MAX_U63:
                _check_int(name, value)
        _check_credential(values[6])
        if len(values) == 8:
            _check_bids(values[7], values[3])
        return key
    for (name, typ), value in zip(SCHEMA[kind], values):
        if typ == _INT:
            _check_int(name, value)
        elif typ == _PUBKEY:
            _check_pubkey(name, value)
            _parsed_pubkey(name, value)
        elif typ == _CRED:
            _check_credential(value)
        elif typ == _HASH:
            if type(value) is not bytes or len(value) != HASH_LEN:
                raise WireError("bad_field", REJECT, f"{name} must be {HASH_LEN} bytes")
        elif typ == _REVOKED:
            _check_revoked(value)
        else:
            check_text(name, value, MAX_PROMPT if typ == _PROMPT else MAX_STR, typ == _STR)
    named = dict(zip(_FIELD_NAMES[kind], values))
    if kind == KIND_JOB:
        if not 0 <= named["tier"] < len(TIERS):
            raise WireError("bad_field", REJECT, f"tier must be 0..{len(TIERS) - 1}, got {named['tier']}")
        if named["tokens"] == 0:
            raise WireError("bad_field", REJECT, "tokens must be > 0")
        if named["locked_price_nano"] > named["max_price_nano"]:
            raise WireError("bad_field", REJECT, "locked price is above the user's max price")
        if named["provider"] == signer:
            raise WireError("bad_field", REJECT, "a gateway cannot send a job to itself")
    elif kind == KIND_CREDENTIAL:
        if not 1 <= named["roles"] <= 3:
            raise WireError("bad_field", REJECT, f"roles must be 1..3, got {named['roles']}")
        if named["expires_at_ms"] <= issued_at_ms:
            raise WireError("bad_field", REJECT, "a credential must expire after it is issued")
    elif kind == KIND_RECEIPT:
        if named["ended_at_ms"] < named["started_at_ms"]:
            raise WireError("bad_field", REJECT, "ended_at_ms is before started_at_ms")
        if named["ended_at_ms"] > issued_at_ms:
            raise WireError("bad_field", REJECT,
                            "ended_at_ms is after issued_at_ms (a receipt is signed after serving)")
    return key


def _check_credential(value: Any) -> None:
    if type(value) is not bytes or len(value) > MAX_CREDENTIAL:
        raise WireError("bad_field", REJECT,
                        f"credential must be bytes of at most {MAX_CREDENTIAL} (empty: none)")


def _check_bids(value: Any, pending_tokens: int) -> None:
    """W10 for an announcement's bid histogram (revision 2.1): exactly DEMAND_BUCKETS integers
    0..2^63-1 that add up to pending_tokens."""
    if type(value) not in (list, tuple) or len(value) != DEMAND_BUCKETS:
        raise WireError("bad_field", REJECT,
                        f"demand_by_limit must be an array of {DEMAND_BUCKETS} integers")
    for tokens in value:
        _check_int("demand_by_limit item", tokens)
    if sum(value) != pending_tokens:
        raise WireError("bad_field", REJECT,
                        f"demand_by_limit adds up to {sum(value)}, not pending_tokens "
                        f"{pending_tokens}")


def _check_revoked(value: Any) -> None:
    if type(value) not in (list, tuple) or len(value) > MAX_REVOKED:
        raise WireError("bad_field", REJECT, f"revoked must be an array of at most {MAX_REVOKED}")
    previous = b""
    for entry in value:
        if type(entry) not in (list, tuple) or len(entry) != 2:
            raise WireError("bad_field", REJECT, "a revoked entry is [member, from_ms]")
        member, from_ms = entry
        _check_pubkey("revoked member", member)
        _check_int("revoked from_ms", from_ms)
        if member <= previous:
            raise WireError("bad_field", REJECT,
                            "revoked entries must be sorted by member key, without repeats")
        previous = member


def _check_int(name: str, value: Any) -> None:
    if type(value) is not int:
        raise WireError("bad_field", REJECT, f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_U63:
        raise WireError("bad_field", REJECT, f"{name} out of range 0..2^63-1: {value}")


def check_text(name: str, value: Any, limit: int, non_empty: bool) -> None:
    """W10/F7 for a text field: a str of at most `limit` bytes of UTF-8 (non-empty if asked),
    else WireError `bad_field` (reject). The stream frames (`frames`) use it too."""
    if type(value) is not str:
        raise WireError("bad_field", REJECT, f"{name} must be a string, got {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:  # lone surrogates: not representable in UTF-8, so not on the wire
        raise WireError("bad_field", REJECT, f"{name} is not valid Unicode text") from None
    if size > limit:
        raise WireError("bad_field", REJECT, f"{name} is {size} bytes of UTF-8 (limit {limit})")
    if non_empty and not size:
        raise WireError("bad_field", REJECT, f"{name} must not be empty")


def _check_pubkey(name: str, value: Any) -> None:
    if type(value) is not bytes or len(value) != PUBKEY_LEN or value[0] not in (2, 3):
        raise WireError("bad_field", REJECT, f"{name} must be a 33-byte compressed public key")


def _parsed_pubkey(name: str, value: bytes) -> coincurve.PublicKey:
    key = _PUBKEY_CACHE.get(value)
    if key is None:
        try:
            key = coincurve.PublicKey(value)
        except Exception:  # the x coordinate is not on the curve
            raise WireError("bad_field", REJECT, f"{name} is not a point on secp256k1") from None
        if len(_PUBKEY_CACHE) >= _PUBKEY_CACHE_MAX:
            _PUBKEY_CACHE.clear()
        _PUBKEY_CACHE[value] = key
    return key


def _verify(key: coincurve.PublicKey, signature: bytes, body: bytes) -> bool:
    """ECDSA over SHA-256(body); compact r‖s. libsecp256k1 refuses high-s signatures, so each
    message has exactly one valid signature and one id."""
    if _lib is None:  # pragma: no cover
        return _verify_public_api(key, signature, body)
    sig = _ffi.new("secp256k1_ecdsa_signature *")
    if not _lib.secp256k1_ecdsa_signature_parse_compact(_CONTEXT.ctx, sig, signature):
        return False  # r or s not below the group order
    return bool(_lib.secp256k1_ecdsa_verify(_CONTEXT.ctx, sig, _sha256(body).digest(),
                                            key.public_key) == 1)


def _verify_public_api(key: coincurve.PublicKey, signature: bytes, body: bytes) -> bool:
    """`_verify` through coincurve's public API (DER round trip): the fallback, and tested
    against it."""
    from coincurve.ecdsa import deserialize_compact
    try:
        return bool(key.verify(cdata_to_der(deserialize_compact(signature)), body))
    except Exception:
        return False


def with_fields(message: Message, **changes: Any) -> Message:
    """A copy of an (unsigned) message with some fields changed and the signature cleared."""
    return dataclasses.replace(message, **changes, signature=b"", wire=b"", msg_id=b"")


__all__ = [
    "encode", "decode", "decode_unchecked_time", "sign", "body_of", "message_id",
    "check_freshness", "public_key_of", "with_fields", "MAX_SIZE", "MAX_STR", "MAX_PROMPT",
    "MAX_AGE_S", "MAX_FUTURE_S", "SCHEMA", "check_text", "MAX_CREDENTIAL", "MAX_REVOKED",
]
