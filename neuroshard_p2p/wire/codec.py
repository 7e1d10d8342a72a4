"""Canonical encoding, signing and stateless validation of wire messages.

`encode` signs a message; `decode` returns a valid message or raises `WireError` with a reason a
person can act on and whether the sender misbehaved (reject) or the message is merely stale
(ignore). Decoding never raises anything else, whatever the input bytes. Stateful checks (replay,
seq, rate limits, plausibility over time) live in `validate.Validator`.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import coincurve
import msgpack
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact

from neuroshard_p2p.wire.errors import IGNORE, REJECT, WireError
from neuroshard_p2p.wire.messages import (
    KIND_ANNOUNCEMENT,
    KIND_JOB,
    KIND_RECEIPT,
    MESSAGE_TYPES,
    TIERS,
    VERSION,
    Announcement,
    Job,
    Message,
    Receipt,
)

PUBKEY_LEN = 33
SIGNATURE_LEN = 64
MAX_U63 = 2**63 - 1
MAX_STR = 128            # bytes of UTF-8 in request ids and user names
MAX_PROMPT = 64 * 1024   # bytes of UTF-8 in a job's prompt

#: Largest accepted wire size per kind (bytes). Announcements are ~180 bytes.
MAX_SIZE = {KIND_ANNOUNCEMENT: 1024, KIND_JOB: 80 * 1024, KIND_RECEIPT: 1024}
MAX_ANY_SIZE = max(MAX_SIZE.values())

#: Freshness window around the receiver's clock (issued_at may be at most this old / this early).
MAX_AGE_S = 300.0
MAX_FUTURE_S = 30.0

# Per kind: the body fields after the common header, with their type and range.
_INT, _BYTES33, _STR, _PROMPT = "int", "pubkey", "str", "prompt"
SCHEMA: dict[int, tuple[tuple[str, str], ...]] = {
    KIND_ANNOUNCEMENT: (
        ("seq", _INT), ("tokens_per_second", _INT), ("min_price_nano", _INT),
        ("pending_tokens", _INT), ("pending_requests", _INT),
    ),
    KIND_JOB: (
        ("request_id", _STR), ("user", _STR), ("provider", _BYTES33), ("tokens", _INT),
        ("max_price_nano", _INT), ("locked_price_nano", _INT), ("tier", _INT), ("prompt", _PROMPT),
    ),
    KIND_RECEIPT: (
        ("request_id", _STR), ("gateway", _BYTES33), ("user", _STR), ("tokens_served", _INT),
        ("locked_price_nano", _INT), ("started_at_ms", _INT), ("ended_at_ms", _INT),
    ),
}


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def public_key_of(private_key: coincurve.PrivateKey) -> bytes:
    return private_key.public_key.format(compressed=True)


def body_of(message: Message) -> bytes:
    """The canonical unsigned bytes of a message: what the signature covers."""
    fields = [getattr(message, name) for name, _ in SCHEMA[message.KIND]]
    return _pack([VERSION, message.KIND, message.signer, message.issued_at_ms, *fields])


def message_id(wire: bytes) -> bytes:
    """De-duplication id: SHA-256 of the signed wire bytes."""
    return hashlib.sha256(wire).digest()


def encode(message: Message, private_key: coincurve.PrivateKey) -> bytes:
    """Sign `message` with `private_key` (whose public key must be the message's signer) and
    return its wire bytes. Invalid field values raise WireError before anything is signed."""
    if message.signer != public_key_of(private_key):
        raise WireError("signer_mismatch", REJECT, "signer is not the public key of the signing key")
    _check_fields(message.KIND, [getattr(message, n) for n, _ in SCHEMA[message.KIND]],
                  message.signer, message.issued_at_ms)
    body = body_of(message)
    signature = serialize_compact(der_to_cdata(private_key.sign(body)))
    wire = _pack([body, signature])
    if len(wire) > MAX_SIZE[message.KIND]:
        raise WireError("oversize", REJECT,
                        f"message is {len(wire)} bytes (limit {MAX_SIZE[message.KIND]})")
    return wire


def sign(message: Message, private_key: coincurve.PrivateKey) -> Message:
    """Return `message` with its signature, wire bytes and id filled in."""
    return decode_unchecked_time(encode(message, private_key))


def decode(data: bytes, now: float) -> Message:
    """Decode and validate wire bytes received at `now` (seconds since the Unix epoch)."""
    message = decode_unchecked_time(data)
    check_freshness(message.issued_at_ms, now)
    return message


def check_freshness(issued_at_ms: int, now: float) -> None:
    now_ms = int(now * 1000)
    age_s = (now_ms - issued_at_ms) / 1000
    if age_s > MAX_AGE_S:
        raise WireError("stale", IGNORE,
                        f"timestamp {age_s:.0f} s in the past (limit {MAX_AGE_S:.0f} s)")
    if -age_s > MAX_FUTURE_S:
        raise WireError("future", REJECT,
                        f"timestamp {-age_s:.0f} s in the future (limit {MAX_FUTURE_S:.0f} s)")


def decode_unchecked_time(data: bytes) -> Message:
    """Everything `decode` checks except freshness (for vectors, stored receipts, sync replays
    that are checked against their own time rules)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise WireError("malformed", REJECT, "input is not bytes")
    data = bytes(data)
    if len(data) > MAX_ANY_SIZE:
        raise WireError("oversize", REJECT, f"message is {len(data)} bytes (limit {MAX_ANY_SIZE})")
    envelope = _unpack(data, "envelope")
    if not (isinstance(envelope, list) and len(envelope) == 2
            and isinstance(envelope[0], bytes) and isinstance(envelope[1], bytes)):
        raise WireError("malformed", REJECT, "envelope must be [body: bin, signature: bin]")
    body, signature = envelope
    if _pack(envelope) != data:
        raise WireError("non_canonical", REJECT, "envelope is not canonically encoded")
    fields = _unpack(body, "body")
    if not isinstance(fields, list) or len(fields) < 4:
        raise WireError("malformed", REJECT, "body must be an array of at least 4 items")
    version, kind, signer, issued_at_ms = fields[:4]
    if version != VERSION or type(version) is not int:
        raise WireError("version", REJECT, f"unsupported version {version!r} (this is {VERSION})")
    if type(kind) is not int or kind not in SCHEMA:
        raise WireError("kind", REJECT, f"unknown message kind {kind!r}")
    if len(data) > MAX_SIZE[kind]:
        raise WireError("oversize", REJECT, f"message is {len(data)} bytes (limit {MAX_SIZE[kind]})")
    schema = SCHEMA[kind]
    if len(fields) != 4 + len(schema):
        raise WireError("malformed", REJECT,
                        f"kind {kind} body has {len(fields)} items, expected {4 + len(schema)}")
    values = fields[4:]
    _check_fields(kind, values, signer, issued_at_ms)
    if _pack(fields) != body:
        raise WireError("non_canonical", REJECT, "body is not canonically encoded")
    if len(signature) != SIGNATURE_LEN:
        raise WireError("bad_signature", REJECT,
                        f"signature is {len(signature)} bytes, expected {SIGNATURE_LEN}")
    if not _verify(signer, signature, body):
        raise WireError("bad_signature", REJECT, "signature does not verify for the signer's key")
    cls = MESSAGE_TYPES[kind]
    kwargs = {name: value for (name, _), value in zip(schema, values)}
    return cls(signer=signer, issued_at_ms=issued_at_ms, **kwargs,
               signature=signature, wire=data, msg_id=message_id(data))


def _unpack(data: bytes, what: str) -> Any:
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=True, use_list=True,
                               max_bin_len=MAX_ANY_SIZE, max_str_len=MAX_ANY_SIZE,
                               max_array_len=64, max_map_len=0, max_ext_len=0)
    except Exception as exc:  # msgpack raises many types; all mean "not our format"
        raise WireError("malformed", REJECT, f"{what} is not valid msgpack: {exc}") from None


def _check_fields(kind: int, values: list[Any], signer: Any, issued_at_ms: Any) -> None:
    _check_pubkey("signer", signer)
    _check_int("issued_at_ms", issued_at_ms)
    for (name, typ), value in zip(SCHEMA[kind], values):
        if typ == _INT:
            _check_int(name, value)
        elif typ == _BYTES33:
            _check_pubkey(name, value)
        else:
            limit = MAX_PROMPT if typ == _PROMPT else MAX_STR
            if type(value) is not str:
                raise WireError("bad_field", REJECT, f"{name} must be a string, got {type(value).__name__}")
            if len(value.encode("utf-8", "surrogatepass")) > limit:
                raise WireError("bad_field", REJECT, f"{name} is longer than {limit} bytes")
            if typ == _STR and not value:
                raise WireError("bad_field", REJECT, f"{name} must not be empty")
    named = {name: value for (name, _), value in zip(SCHEMA[kind], values)}
    if kind == KIND_JOB:
        if not 0 <= named["tier"] < len(TIERS):
            raise WireError("bad_field", REJECT, f"tier must be 0..{len(TIERS) - 1}")
        if named["tokens"] == 0:
            raise WireError("bad_field", REJECT, "tokens must be > 0")
        if named["locked_price_nano"] > named["max_price_nano"]:
            raise WireError("bad_field", REJECT, "locked price is above the user's max price")
    if kind == KIND_RECEIPT and named["ended_at_ms"] < named["started_at_ms"]:
        raise WireError("bad_field", REJECT, "ended_at_ms is before started_at_ms")


def _check_int(name: str, value: Any) -> None:
    if type(value) is not int:
        raise WireError("bad_field", REJECT, f"{name} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= MAX_U63:
        raise WireError("bad_field", REJECT, f"{name} out of range: {value}")


def _check_pubkey(name: str, value: Any) -> None:
    if type(value) is not bytes or len(value) != PUBKEY_LEN or value[0] not in (2, 3):
        raise WireError("bad_field", REJECT, f"{name} must be a 33-byte compressed public key")


def _verify(signer: bytes, signature: bytes, body: bytes) -> bool:
    try:
        der = cdata_to_der(deserialize_compact(signature))
        return bool(coincurve.PublicKey(signer).verify(der, body))
    except Exception:  # invalid point or r/s out of range: a bad signature, not a crash
        return False


def with_fields(message: Message, **changes: Any) -> Message:
    """A copy of an (unsigned) message with some fields changed and the signature cleared."""
    return dataclasses.replace(message, **changes, signature=b"", wire=b"", msg_id=b"")


__all__ = [
    "encode", "decode", "decode_unchecked_time", "sign", "body_of", "message_id",
    "check_freshness", "public_key_of", "with_fields", "MAX_SIZE", "MAX_AGE_S", "MAX_FUTURE_S",
    "Announcement", "Job", "Receipt",
]
