#!/usr/bin/env python3
"""Generate the test vectors of protocols/market-v1.md, deterministically.

    python protocols/vectors/generate.py          # rewrite the JSON files next to this script
    python protocols/vectors/generate.py --check  # exit 1 if the files differ from a fresh run

Needs `msgpack`, `coincurve` and `base58` (for peer ids), and this repository on the path for the
final cross-check against the project's codec.

The bytes are built here straight from the spec with `msgpack` and `coincurve` (a second encoder,
not the project's codec), so the vectors are an independent statement of the format. Signatures are
deterministic (RFC 6979, as libsecp256k1 makes them), keys are derived from fixed labels and times
are fixed: every run writes the same files. At the end the project's codec must agree with every
valid vector, or the script stops without writing anything.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import coincurve
import msgpack
from coincurve.ecdsa import der_to_cdata, serialize_compact

HERE = Path(__file__).resolve().parent
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141  # secp256k1 group order
T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms: the issued_at of most vectors
BIG = 2**63 - 1


def key(label: str) -> coincurve.PrivateKey:
    """A fixed private key: SHA-256 of a label."""
    return coincurve.PrivateKey(hashlib.sha256(label.encode()).digest())


PROVIDER = key("neuroshard vector key: provider")
GATEWAY = key("neuroshard vector key: gateway")
OTHER = key("neuroshard vector key: other")


def pub(k: coincurve.PrivateKey) -> bytes:
    return k.public_key.format(compressed=True)


def peer_id(public_key: bytes) -> str:
    import base58
    return base58.b58encode(bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21]) + public_key).decode()


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def sign_body(body: bytes, k: coincurve.PrivateKey) -> bytes:
    """Compact r‖s (64 bytes) of ECDSA over SHA-256(body); libsecp256k1 makes it low-s."""
    return serialize_compact(der_to_cdata(k.sign(body)))


def envelope(body: bytes, signature: bytes) -> bytes:
    return pack([body, signature])


# Field order per kind (spec §5.3).
FIELDS = {
    1: ["seq", "tokens_per_second", "min_price_nano", "pending_tokens", "pending_requests"],
    2: ["request_id", "user", "provider", "tokens", "max_price_nano", "locked_price_nano", "tier",
        "prompt"],
    3: ["request_id", "gateway", "user", "tokens_served", "locked_price_nano", "started_at_ms",
        "ended_at_ms"],
}
KIND_NAMES = {1: "announcement", 2: "job", 3: "receipt"}


def body_items(kind: int, signer: bytes, issued_at_ms: int, fields: dict[str, Any]) -> list[Any]:
    return [1, kind, signer, issued_at_ms, *(fields[name] for name in FIELDS[kind])]


def json_value(value: Any) -> Any:
    """JSON form of a field: bytes as hex, integers above 2^53 as decimal strings."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        return str(value)
    return value


def valid_vector(name: str, kind: int, k: coincurve.PrivateKey, issued_at_ms: int,
                 fields: dict[str, Any], note: str) -> dict[str, Any]:
    signer = pub(k)
    body = pack(body_items(kind, signer, issued_at_ms, fields))
    signature = sign_body(body, k)
    wire = envelope(body, signature)
    return {
        "name": name,
        "note": note,
        "kind": KIND_NAMES[kind],
        "private_key": k.secret.hex(),
        "signer": signer.hex(),
        "peer_id": peer_id(signer),
        "fields": {"issued_at_ms": issued_at_ms, **{n: json_value(v) for n, v in fields.items()}},
        "body": body.hex(),
        "signature": signature.hex(),
        "wire": wire.hex(),
        "id": hashlib.sha256(wire).hexdigest(),
        "size": len(wire),
        "now_ms": issued_at_ms + 1000,
    }


ANNOUNCE = {"seq": 1, "tokens_per_second": 1000, "min_price_nano": 100_000_000,
            "pending_tokens": 5000, "pending_requests": 3}
JOB = {"request_id": "req-0001", "user": "alice", "provider": pub(PROVIDER), "tokens": 500,
       "max_price_nano": 500_000_000, "locked_price_nano": 120_000_000, "tier": 1,
       "prompt": "Write a haiku about gossip protocols."}
RECEIPT = {"request_id": "req-0001", "gateway": pub(GATEWAY), "user": "alice", "tokens_served": 480,
           "locked_price_nano": 120_000_000, "started_at_ms": T0 + 200, "ended_at_ms": T0 + 1700}


def valid_vectors() -> list[dict[str, Any]]:
    return [
        valid_vector("announcement", 1, PROVIDER, T0, ANNOUNCE,
                     "a provider offering 1000 tokens/s at >= 0.1 NEURO per 1M tokens, 5000 tokens "
                     "in 3 requests queued at it"),
        valid_vector("announcement-withdrawal", 1, PROVIDER, T0 + 5000,
                     {**ANNOUNCE, "seq": 2, "tokens_per_second": 0, "pending_tokens": 0,
                      "pending_requests": 0},
                     "a withdrawal: zero capacity with a higher seq"),
        valid_vector("announcement-int-widths", 1, GATEWAY, T0,
                     {"seq": 2**32, "tokens_per_second": 50_000, "min_price_nano": BIG,
                      "pending_tokens": 200, "pending_requests": 65_536},
                     "integers in every msgpack width: uint64, uint16, uint64 (2^63-1), uint8, "
                     "uint32; each must use the shortest form"),
        valid_vector("announcement-zero", 1, OTHER, 0,
                     {"seq": 0, "tokens_per_second": 0, "min_price_nano": 0, "pending_tokens": 0,
                      "pending_requests": 0},
                     "all-zero fields are valid (positive fixint 0); now_ms only 1 s later"),
        valid_vector("job", 2, GATEWAY, T0, JOB, "a gateway hands a matched request to a provider"),
        valid_vector("job-unicode", 2, GATEWAY, T0 + 1,
                     {**JOB, "request_id": "req-0002", "user": "zoë", "tier": 2,
                      "prompt": "Übersetze: 漢字 → kanji 🦉 " + "x" * 300},
                     "text is UTF-8 (str8/str16 by length); a prompt over 255 bytes uses str16"),
        valid_vector("receipt", 3, PROVIDER, T0 + 2000, RECEIPT,
                     "the provider's signed statement of what it served"),
    ]


# --- invalid messages --------------------------------------------------------------------------

def signed(items: list[Any], k: coincurve.PrivateKey = PROVIDER, body: bytes | None = None) -> bytes:
    body = pack(items) if body is None else body
    return envelope(body, sign_body(body, k))


def announce_items(**changes: Any) -> list[Any]:
    return body_items(1, pub(PROVIDER), T0, {**ANNOUNCE, **changes})


def _with_seq_bytes(item: bytes) -> bytes:
    """The `announcement` body with the raw msgpack `item` in place of seq (the one byte 01 after
    the array header, version, kind, the 35-byte signer and the 9-byte issued_at)."""
    body = pack(announce_items())
    at = 1 + 1 + 1 + 35 + 9
    assert body[at] == 0x01
    return body[:at] + item + body[at + 1:]


def invalid(name: str, wire: bytes, reason: str, action: str, rule: str, note: str,
            now_ms: int = T0 + 1000) -> dict[str, Any]:
    return {"name": name, "note": note, "rule": rule, "wire": wire.hex(), "now_ms": now_ms,
            "reason": reason, "action": action}


def invalid_vectors() -> list[dict[str, Any]]:
    good_body = pack(announce_items())
    good_sig = sign_body(good_body, PROVIDER)
    good = envelope(good_body, good_sig)
    r, s = int.from_bytes(good_sig[:32], "big"), int.from_bytes(good_sig[32:], "big")
    flipped = bytearray(good_sig)
    flipped[10] ^= 0x01
    wrong_signer_body = pack(body_items(1, pub(OTHER), T0, ANNOUNCE))
    off_curve = b"\x02" + b"\x00" * 31 + b"\x05"  # x = 5 is not the x of a point on secp256k1
    out = [
        invalid("empty", b"", "malformed", "reject", "W2", "zero bytes"),
        invalid("not-msgpack", b"\xc1", "malformed", "reject", "W2", "0xc1 is never used in msgpack"),
        invalid("trailing-bytes", good + b"\x00", "malformed", "reject", "W2",
                "a valid message followed by one more byte"),
        invalid("envelope-three-items", pack([good_body, good_sig, b""]), "malformed", "reject", "W2",
                "the envelope must have exactly two items"),
        invalid("envelope-map", pack({"body": good_body}), "malformed", "reject", "W2",
                "maps never appear in v1"),
        invalid("envelope-str-body", pack([good_body.hex(), good_sig]), "malformed", "reject", "W2",
                "body must be bin, not str"),
        invalid("signature-63-bytes", envelope(good_body, good_sig[:63]), "bad_signature", "reject",
                "W3", "the signature must be exactly 64 bytes"),
        invalid("envelope-bin16", b"\x92\xc5" + len(good_body).to_bytes(2, "big") + good_body
                + b"\xc4\x40" + good_sig, "non_canonical", "reject", "W4",
                "a short body announced with a bin16 header instead of bin8"),
        invalid("body-not-array", envelope(pack(7), good_sig), "malformed", "reject", "W5",
                "the body must be an array"),
        invalid("body-invalid-utf8",
                envelope(b"\x95\x01\x02\xc4\x21" + pub(GATEWAY) + b"\xcf" + T0.to_bytes(8, "big")
                         + b"\xa2\xff\xfe", good_sig),
                "malformed", "reject", "W5", "a str item that is not valid UTF-8"),
        invalid("body-trailing-byte", signed([], body=good_body + b"\x00"), "malformed", "reject",
                "W5", "a valid body followed by one more byte, correctly signed: the body is "
                      "exactly one msgpack value"),
        invalid("body-empty-map", signed([], body=_with_seq_bytes(b"\x80")), "malformed", "reject",
                "W5", "an empty map (80) where seq belongs; correctly signed: maps never appear, "
                      "not even empty ones"),
        invalid("body-empty-ext", signed([], body=_with_seq_bytes(b"\xc7\x00\x05")), "malformed",
                "reject", "W5", "an ext8 of type 5 and length 0 (c7 00 05) where seq belongs; "
                                "correctly signed: ext types never appear"),
        invalid("version-2", signed([2, *announce_items()[1:]]), "version", "reject", "W6",
                "version 2 is not this protocol"),
        invalid("kind-9", signed([1, 9, *announce_items()[2:]]), "kind", "reject", "W7",
                "no message kind 9"),
        invalid("oversize-total", b"\x00" * (80 * 1024 + 1), "oversize", "reject", "W1",
                "one byte above the largest limit of any kind (81920)"),
        invalid("oversize-announcement", signed([1, 1, b"\x02" * 1000, *announce_items()[3:]]),
                "oversize", "reject", "W8", "an announcement above 1024 bytes"),
        invalid("announcement-8-items", signed(announce_items()[:-1]), "malformed", "reject", "W9",
                "an announcement has 9 body items"),
        invalid("seq-negative", signed(announce_items(seq=-1)), "bad_field", "reject", "W10",
                "integers are 0 ≤ n ≤ 2^63-1"),
        invalid("seq-2^63", signed(announce_items(seq=2**63)), "bad_field", "reject", "W10",
                "2^63 is one above the largest integer"),
        invalid("seq-float", signed(announce_items(seq=1.0)), "bad_field", "reject", "W10",
                "a float where an integer belongs"),
        invalid("seq-bool", signed(announce_items(seq=True)), "bad_field", "reject", "W10",
                "true is not an integer"),
        invalid("seq-nil", signed(announce_items(seq=None)), "bad_field", "reject", "W10",
                "nil is not an integer"),
        invalid("signer-32-bytes", signed([1, 1, pub(PROVIDER)[1:], *announce_items()[3:]]),
                "bad_field", "reject", "W10", "the signer must be a 33-byte compressed key"),
        invalid("signer-off-curve", signed([1, 1, off_curve, *announce_items()[3:]]),
                "bad_field", "reject", "W10", "0x02 ‖ x with no point on the curve"),
        invalid("job-tier-3", signed(body_items(2, pub(GATEWAY), T0, {**JOB, "tier": 3}), GATEWAY),
                "bad_field", "reject", "W10", "tiers are 0, 1, 2"),
        invalid("job-zero-tokens", signed(body_items(2, pub(GATEWAY), T0, {**JOB, "tokens": 0}),
                                          GATEWAY),
                "bad_field", "reject", "W10", "a job asks for at least one token"),
        invalid("job-locked-above-max",
                signed(body_items(2, pub(GATEWAY), T0, {**JOB, "locked_price_nano": 500_000_001}),
                       GATEWAY),
                "bad_field", "reject", "W10", "the locked price may not exceed the user's max"),
        invalid("job-empty-request-id",
                signed(body_items(2, pub(GATEWAY), T0, {**JOB, "request_id": ""}), GATEWAY),
                "bad_field", "reject", "W10", "request ids are 1..128 bytes"),
        invalid("job-user-129-bytes",
                signed(body_items(2, pub(GATEWAY), T0, {**JOB, "user": "u" * 129}), GATEWAY),
                "bad_field", "reject", "W10", "user names are at most 128 bytes"),
        invalid("job-to-itself",
                signed(body_items(2, pub(GATEWAY), T0, {**JOB, "provider": pub(GATEWAY)}), GATEWAY),
                "bad_field", "reject", "W10", "provider equals the signing gateway"),
        invalid("receipt-ends-before-start",
                signed(body_items(3, pub(PROVIDER), T0 + 2000,
                                  {**RECEIPT, "ended_at_ms": T0 + 100})),
                "bad_field", "reject", "W10", "ended_at_ms < started_at_ms"),
        invalid("receipt-ends-after-issue",
                signed(body_items(3, pub(PROVIDER), T0 + 2000,
                                  {**RECEIPT, "ended_at_ms": T0 + 2001})),
                "bad_field", "reject", "W10", "ended_at_ms > issued_at_ms"),
        invalid("body-version-uint8",
                signed([], body=b"\x99\xcc\x01" + pack(announce_items())[2:]),
                "non_canonical", "reject", "W11",
                "version 1 written as uint8 (cc 01) instead of positive fixint; correctly signed"),
        invalid("body-seq-uint16",
                signed([], body=pack(announce_items())[:3 + 35 + 9] + b"\xcd\x00\x01"
                       + pack(announce_items())[3 + 35 + 9 + 1:]),
                "non_canonical", "reject", "W11", "seq 1 written as uint16; correctly signed"),
        invalid("forged-signature", envelope(good_body, bytes(flipped)), "bad_signature", "reject",
                "W12", "one bit of the signature flipped"),
        invalid("wrong-signer", envelope(wrong_signer_body, good_sig), "bad_signature", "reject",
                "W12", "the body names another signer than the key that signed it"),
        invalid("high-s", envelope(good_body, r.to_bytes(32, "big") + (N - s).to_bytes(32, "big")),
                "bad_signature", "reject", "W12",
                "the same signature with s replaced by n - s: valid ECDSA, but not low-s"),
        invalid("r-zero", envelope(good_body, b"\x00" * 32 + good_sig[32:]), "bad_signature",
                "reject", "W12", "r = 0"),
        invalid("r-above-n", envelope(good_body, b"\xff" * 32 + good_sig[32:]), "bad_signature",
                "reject", "W12", "r ≥ n"),
        invalid("stale", good, "stale", "ignore", "W13", "received 300.001 s after issued_at",
                now_ms=T0 + 300_001),
        invalid("future", good, "future", "reject", "W13", "received 30.001 s before issued_at",
                now_ms=T0 - 30_001),
    ]
    return out


# --- stateful validation -------------------------------------------------------------------------

def announcement(k: coincurve.PrivateKey, seq: int, issued_at_ms: int, **changes: Any) -> bytes:
    return signed(body_items(1, pub(k), issued_at_ms, {**ANNOUNCE, "seq": seq, **changes}), k)


def step(wire: bytes, now_ms: int, expect: str | tuple[str, str], **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"wire": wire.hex(), "now_ms": now_ms}
    out.update(extra)
    out["expect"] = expect if isinstance(expect, str) else {"reason": expect[0], "action": expect[1]}
    return out


def validator_vectors() -> list[dict[str, Any]]:
    ok = "accepted"
    a1, a2, a3 = (announcement(PROVIDER, n, T0 + n) for n in (1, 2, 3))
    eq_a = announcement(PROVIDER, 4, T0 + 4, pending_tokens=1)
    eq_b = announcement(PROVIDER, 4, T0 + 4, pending_tokens=2)
    eq_c = announcement(PROVIDER, 4, T0 + 4, pending_tokens=3)
    flood = [announcement(GATEWAY, n, T0 + n) for n in range(1, 8)]

    return [
        {"name": "duplicate", "config": {},
         "note": "the same bytes twice: the second is ignored without penalty",
         "steps": [step(a1, T0 + 1000, ok), step(a1, T0 + 1100, ("duplicate", "ignore"))]},
        {"name": "seq-regression", "config": {},
         "note": "an older seq after a newer one is ignored",
         "steps": [step(a2, T0 + 1000, ok), step(a1, T0 + 1100, ("seq_regression", "ignore")),
                   step(a3, T0 + 1200, ok)]},
        {"name": "equivocation", "config": {},
         "note": "two different messages with the same (signer, seq): the second is passed on once "
                 "as evidence (counted as equivocation), a third is ignored",
         "steps": [step(eq_a, T0 + 1000, ok), step(eq_b, T0 + 1100, ok, counts={"equivocation": 1}),
                   step(eq_c, T0 + 1200, ("equivocation", "ignore"))]},
        {"name": "rate-limit", "config": {"tick_s": 1.0},
         "note": "burst 5, one more token per tick (1 s): the 6th announcement at the same instant "
                 "is rejected, one a second later is accepted",
         "steps": [*(step(flood[i], T0 + 1000, ok) for i in range(5)),
                   step(flood[5], T0 + 1000, ("rate_limited", "reject")),
                   step(flood[6], T0 + 2000, ok)]},
        {"name": "implausible-capacity", "config": {"max_node_tokens_per_s": 50_000},
         "note": "capacity above max_node_tokens_per_s",
         "steps": [step(announcement(PROVIDER, 1, T0, tokens_per_second=50_001), T0 + 1000,
                        ("implausible", "reject")),
                   step(announcement(PROVIDER, 2, T0, tokens_per_second=50_000), T0 + 1000, ok)]},
        {"name": "freshness-boundaries", "config": {},
         "note": "exactly 300 s old and exactly 30 s early are still accepted",
         "steps": [step(announcement(PROVIDER, 1, T0), T0 + 300_000, ok),
                   step(announcement(PROVIDER, 2, T0 + 330_000), T0 + 300_000, ok)]},
        {"name": "author", "config": {},
         "note": "on gossip the message's signer must be the publishing peer (`from`)",
         "steps": [step(a1, T0 + 1000, ("wrong_signer", "reject"), from_peer=peer_id(pub(OTHER))),
                   step(a1, T0 + 1000, ok, from_peer=peer_id(pub(PROVIDER)))]},
        {"name": "kind-on-gossip", "config": {},
         "note": "only announcements travel on the market topic and in sync responses (a job "
                 "or a receipt travels on the job stream, §9)",
         "steps": [step(signed(body_items(2, pub(GATEWAY), T0, JOB), GATEWAY), T0 + 1000,
                        ("kind", "reject")),
                   step(signed(body_items(3, pub(PROVIDER), T0 + 2000, RECEIPT)), T0 + 3000,
                        ("kind", "reject"))]},
    ]


# --- receipt checks at the gateway (spec §9 step 4, R1–R8) -------------------------------------

RECEIPT_DEFAULTS = {"max_node_tokens_per_s": 50_000, "max_tokens_per_minute": 1_000_000,
                    "burn_rate_percent": 5, "receipt_min_elapsed_ms": 1000,
                    "max_settlement_tokens": 10**12, "max_settlement_nano": 10**15,
                    "rate_window_ms": 60_000, "max_age_ms": 300_000, "max_future_ms": 30_000}


def receipt_vectors() -> list[dict[str, Any]]:
    """Each vector: the Job the gateway sent (fields, wire, its clock `sent_at_ms` when it sent it),
    the gateway's `now_ms` when the JobResult arrived, the capacity of the matched offer, the
    provider's tokens settled at this gateway in the last 60 s, whether these receipt bytes settled
    before, the receipt bytes, and the outcome: accept with the settlement, or the first of R1–R8
    that fails (its reason). Every vector passes the rules before the one it names; vectors named
    `order-*` also fail a later rule, so they pin which of the two is checked first."""

    def job(sent_at_ms: int = T0, **changes: Any) -> dict[str, Any]:
        fields = {**JOB, **changes}
        data = signed(body_items(2, pub(GATEWAY), sent_at_ms, fields), GATEWAY)
        return {"fields": {"signer": pub(GATEWAY).hex(), "issued_at_ms": sent_at_ms,
                           **{n: json_value(v) for n, v in fields.items()}},
                "wire": data.hex(), "sent_at_ms": sent_at_ms}

    def receipt(k: coincurve.PrivateKey = PROVIDER, issued: int = T0 + 2000,
                **changes: Any) -> bytes:
        fields = {**RECEIPT, "started_at_ms": issued - 1800, "ended_at_ms": issued - 300, **changes}
        return signed(body_items(3, pub(k), issued, fields), k)

    def vector(name: str, rule: str, note: str, data: bytes, expect: str, *,
               the_job: dict[str, Any] | None = None, now_ms: int = T0 + 2500,
               capacity: int = 1000, recent: int = 0,
               settled_before: bool = False) -> dict[str, Any]:
        j = the_job or job()
        out: dict[str, Any] = {
            "name": name, "rule": rule, "note": note, "job": j, "now_ms": now_ms,
            "capacity_tokens_per_s": capacity, "recent_provider_tokens": recent,
            "settled_before": settled_before, "receipt": data.hex()}
        if expect == "accept":
            items = msgpack.unpackb(msgpack.unpackb(data)[0])
            tokens, price = items[7], items[8]
            payment = tokens * price // 10**6
            burn = payment * 5 // 100
            out["expect"] = "accept"
            out["settlement"] = {"payment_nano": payment, "burn_nano": burn,
                                 "earned_nano": payment - burn}
        else:
            out["expect"] = {"reason": expect}
        return out

    good = receipt()
    forged = bytearray(good)
    forged[-1] ^= 0x01
    stale_forged = bytearray(receipt(issued=T0 - 300_000))
    stale_forged[-1] ^= 0x01
    big_price = 2 * 10**18            # 500 tokens × 2·10^18 / 10^6 = 10^15 nano exactly
    long_ms = 10**10 + 1000   # 2 × 50,000 tokens/s × (10^10 + 1000) ms ≥ (10^12 + 1) × 1000
    huge_job = job(T0 + 2500 - long_ms, tokens=10**12 + 1, locked_price_nano=1000,
                   max_price_nano=1000)
    return [
        vector("accept", "-", "480 tokens at 0.12 NEURO/1M: 57,600 nano paid, 2,880 burned",
               good, "accept"),
        # R1: the bytes as a message (§6.1 W1–W13 at now)
        vector("r1-bad-signature", "R1", "one bit of the signature flipped (W12)", bytes(forged),
               "bad_signature"),
        vector("r1-not-a-message", "R1", "bytes that are no wire message (W2)", b"\x92\xc4\x00",
               "malformed"),
        vector("r1-bad-field", "R1",
               "started_at_ms after ended_at_ms (W10 bad_field → malformed)",
               receipt(started_at_ms=T0 + 1800, ended_at_ms=T0 + 1700), "malformed"),
        vector("r1-stale", "R1", "received 300.001 s after its issued_at (W13)", good, "stale",
               now_ms=T0 + 2000 + 300_001),
        vector("r1-stale-boundary", "R1", "received exactly 300 s after its issued_at: fresh",
               good, "accept", now_ms=T0 + 2000 + 300_000),
        vector("r1-future", "R1", "issued 30.001 s after the gateway's now (W13 future → stale)",
               receipt(issued=T0 + 32_501), "stale"),
        vector("r1-future-boundary", "R1", "issued exactly 30 s after the gateway's now: fresh",
               receipt(issued=T0 + 32_500), "accept"),
        vector("order-r1-signature-before-age", "R1",
               "bad signature and 302.5 s old: W12 comes before W13",
               bytes(stale_forged), "bad_signature"),
        # R2: a Receipt
        vector("r2-a-job", "R2", "the Job itself, validly signed by the gateway, not a Receipt",
               bytes.fromhex(job()["wire"]), "malformed"),
        vector("r2-an-announcement", "R2", "a valid announcement of the provider, not a Receipt",
               announcement(PROVIDER, 1, T0 + 2000), "malformed"),
        # R3: not dated before the job (sent_at − 30 s)
        vector("r3-at-bound", "R3", "issued exactly 30 s before the job was sent",
               receipt(issued=T0 + 2000), "accept", the_job=job(T0 + 32_000), now_ms=T0 + 32_500),
        vector("r3-before-bound", "R3", "issued 30.001 s before the job was sent",
               receipt(issued=T0 + 1999), "stale", the_job=job(T0 + 32_000), now_ms=T0 + 32_500),
        vector("order-r3-before-r4", "R3", "dated before the job and names another user: stale",
               receipt(issued=T0 + 1999, user="bob"), "stale", the_job=job(T0 + 32_000),
               now_ms=T0 + 32_500),
        # R4: names the job sent
        vector("r4-signer", "R4", "signed by another key than the job's provider", receipt(OTHER),
               "mismatch"),
        vector("r4-request-id", "R4", "another request id", receipt(request_id="req-0002"),
               "mismatch"),
        vector("r4-gateway", "R4", "names another gateway", receipt(gateway=pub(OTHER)),
               "mismatch"),
        vector("r4-user", "R4", "names another user", receipt(user="bob"), "mismatch"),
        vector("r4-locked-price", "R4", "another locked price (fixed mode: the fixed price)",
               receipt(locked_price_nano=120_000_001), "mismatch"),
        vector("order-r4-before-r5", "R4", "another user, and these bytes settled before: mismatch",
               receipt(user="bob"), "mismatch", settled_before=True),
        # R5: not settled before
        vector("r5-replay", "R5", "these receipt bytes settled before", good, "replay",
               settled_before=True),
        vector("order-r5-before-r6", "R5",
               "settled before, and implausible at 1 token/s: replay", good, "replay",
               settled_before=True, capacity=1),
        # R6: plausible
        vector("r6-more-than-requested", "R6", "501 tokens for a job of 500",
               receipt(tokens_served=501), "implausible"),
        vector("r6-at-capacity", "R6",
               "480 tokens in 2.5 s at 96 tokens/s: 480 × 1000 = 2 × 96 × 2500",
               good, "accept", capacity=96),
        vector("r6-above-capacity", "R6", "481 tokens in 2.5 s at 96 tokens/s: one above",
               receipt(tokens_served=481), "implausible", capacity=96),
        vector("r6-floor", "R6",
               "answered 100 ms after sending counts as 1 s: 480 × 1000 = 2 × 240 × 1000",
               good, "accept", capacity=240, the_job=job(T0 + 2400)),
        vector("r6-floor-above", "R6", "the same with 481 tokens: one above 2 × 240 × 1 s",
               receipt(tokens_served=481), "implausible", capacity=240, the_job=job(T0 + 2400)),
        vector("r6-capacity-capped", "R6",
               "10^9 tokens/s announced counts as max_node_tokens_per_s = 50,000: 250,000 tokens "
               "in 2.5 s", receipt(tokens_served=250_000), "accept", capacity=10**9,
               the_job=job(tokens=300_000)),
        vector("r6-capacity-capped-above", "R6",
               "the same with 250,001 tokens: above 2 × 50,000 × 2.5 s",
               receipt(tokens_served=250_001), "implausible", capacity=10**9,
               the_job=job(tokens=300_000)),
        vector("order-r6-before-r8", "R6",
               "implausible at 95 tokens/s and over the per-minute limit: implausible", good,
               "implausible", capacity=95, recent=999_999),
        # R7: one settlement within the ceiling
        vector("r7-payment-at-ceiling", "R7", "500 tokens at 2·10^18 nano/1M: exactly 10^15 nano",
               receipt(tokens_served=500, locked_price_nano=big_price), "accept",
               the_job=job(locked_price_nano=big_price, max_price_nano=big_price)),
        vector("r7-payment-above-ceiling", "R7", "500 tokens at 2·10^18 + 2000 nano/1M: 10^15 + 1",
               receipt(tokens_served=500, locked_price_nano=big_price + 2000), "implausible",
               the_job=job(locked_price_nano=big_price + 2000, max_price_nano=big_price + 2000)),
        vector("r7-tokens-at-ceiling", "R7",
               "exactly 10^12 tokens (plausible: the job went out 10^10 + 1000 ms before, at "
               "50,000 tokens/s) pass R7, then fail R8",
               receipt(issued=T0 + 2000, tokens_served=10**12, locked_price_nano=1000), "over_rate",
               the_job=huge_job, capacity=50_000),
        vector("r7-tokens-above-ceiling", "R7",
               "10^12 + 1 tokens: implausible (R7, before R8's over_rate)",
               receipt(issued=T0 + 2000, tokens_served=10**12 + 1, locked_price_nano=1000),
               "implausible", the_job=huge_job, capacity=50_000),
        # R8: tokens per minute
        vector("r8-at-limit", "R8", "999,520 settled in the last 60 s + 480 = 1,000,000", good,
               "accept", recent=999_520),
        vector("r8-above-limit", "R8", "999,521 settled in the last 60 s + 480 = 1,000,001", good,
               "over_rate", recent=999_521),
    ]


def cross_check_receipts(doc: dict[str, Any]) -> None:
    """The project's ledger checks must give every receipt vector its expected outcome."""
    from neuroshard_p2p import wire  # noqa: E402
    from neuroshard_p2p.config import MarketConfig  # noqa: E402
    from neuroshard_p2p.ledger.checks import (LedgerError, MatchedJob, amounts_of,  # noqa: E402
                                              check_receipt)
    config = MarketConfig()
    d = doc["defaults"]
    assert (config.max_node_tokens_per_s, config.max_tokens_per_minute, config.burn_rate) == (
        d["max_node_tokens_per_s"], d["max_tokens_per_minute"], d["burn_rate_percent"] / 100)
    for v in doc["vectors"]:
        sent = wire.decode_unchecked_time(bytes.fromhex(v["job"]["wire"]))
        assert isinstance(sent, wire.Job), v["name"]
        job = MatchedJob.from_job(sent, v["job"]["sent_at_ms"] / 1000)
        data = bytes.fromhex(v["receipt"])
        seen = {hashlib.sha256(data).digest()} if v["settled_before"] else set()
        try:
            receipt = check_receipt(data, job, capacity_tokens_per_s=v["capacity_tokens_per_s"],
                                    now=v["now_ms"] / 1000,
                                    recent_provider_tokens=v["recent_provider_tokens"],
                                    config=config, seen=seen)
        except LedgerError as error:
            assert v["expect"] != "accept" and error.reason == v["expect"]["reason"], \
                (v["name"], error)
        else:
            assert v["expect"] == "accept", f"the ledger accepts receipt vector {v['name']}"
            amounts = amounts_of(receipt, config.burn_rate)
            assert {"payment_nano": amounts.payment, "burn_nano": amounts.burned,
                    "earned_nano": amounts.earned} == v["settlement"], v["name"]


# --- stream frames -----------------------------------------------------------------------------

def frame_vectors() -> dict[str, Any]:
    empty = hashlib.sha256(b"").digest()
    buckets = [hashlib.sha256(bytes([i])).digest() for i in range(16)]
    a = bytes.fromhex(valid_vectors()[0]["wire"])
    w = bytes.fromhex(valid_vectors()[1]["wire"])
    valid = [
        {"name": "sync-request", "frame": "sync_request",
         "fields": {"digest": empty.hex(), "bucket_digests": [b.hex() for b in buckets]},
         "bytes": pack([1, 16, empty, buckets]).hex()},
        {"name": "sync-response", "frame": "sync_response",
         "fields": {"announcements": [a.hex(), w.hex()]},
         "bytes": pack([1, 17, [a, w]]).hex()},
        {"name": "sync-response-empty", "frame": "sync_response", "fields": {"announcements": []},
         "bytes": pack([1, 17, []]).hex()},
        {"name": "job-declined", "frame": "job_declined",
         "fields": {"request_id": "req-0001", "reason": "full",
                    "detail": "480 tokens in flight, room for 120"},
         "bytes": pack([1, 18, "req-0001", "full", "480 tokens in flight, room for 120"]).hex()},
    ]
    bad = [
        ("sync-request-15-buckets", pack([1, 16, empty, buckets[:15]]), "bad_field", "F7"),
        ("sync-request-short-digest", pack([1, 16, empty[:31], buckets]), "bad_field", "F7"),
        ("sync-response-not-bin", pack([1, 17, [a.hex()]]), "bad_field", "F7"),
        ("frame-kind-99", pack([1, 99, empty]), "kind", "F4"),
        ("frame-version-2", pack([2, 16, empty, buckets]), "version", "F3"),
        ("frame-too-few-items", pack([1, 18, "req-0001", "full"]), "malformed", "F6"),
        ("frame-not-array", pack("hello"), "malformed", "F2"),
        ("sync-response-empty-map", b"\x93\x01\x11\x91\x80", "malformed", "F2"),
        ("frame-kind-uint8", b"\x94\x01\xcc\x10" + pack([1, 16, empty, buckets])[3:],
         "non_canonical", "F8"),
        ("declined-empty-reason", pack([1, 18, "req-0001", "", ""]), "bad_field", "F7"),
    ]
    more_valid, more_invalid = job_and_peer_frame_vectors()
    lengths = [{"length": n, "prefix": _uvarint(n).hex()} for n in (0, 1, 127, 128, 300, 16_384,
                                                                   1_048_576)]
    return {
        "valid": valid + more_valid,
        "invalid": [{"name": n, "bytes": b.hex(), "reason": r, "action": "reject", "rule": rule}
                    for n, b, r, rule in bad] + more_invalid,
        "length_prefix": lengths,
        "view_digests": view_digest_vectors(),
    }


# --- job-stream and peer-exchange frames (spec §9, §10) --------------------------------------

# Invalid frames below name the stream whose decoder they are fed to ("stream"): the kinds it
# expects (F4) and, for "peers/1.0.0", the legacy layout's rules L1-L5. Without it: any kind.
PEERS = [
    [peer_id(pub(PROVIDER)), ["/ip4/192.0.2.10/tcp/4001", "/ip6/2001:db8::10/tcp/4001"]],
    [peer_id(pub(GATEWAY)), ["/dns4/gateway.example/tcp/4001"]],
    [peer_id(pub(OTHER)), []],
]


def _receipt_wire() -> bytes:
    return next(bytes.fromhex(v["wire"]) for v in valid_vectors() if v["name"] == "receipt")


def _peers_of_size(size: int, head: list[Any]) -> list[Any]:
    """32 peers with 5 addresses each whose frame `head + [peers]` is exactly `size` bytes:
    addresses grown one byte at a time up to 255 bytes (str8 throughout)."""
    peers = [[f"peer-{i:02}", ["/" + "a" * 199] * 5] for i in range(32)]
    deficit = size - len(pack([*head, peers]))
    for entry in peers:
        for j, addr in enumerate(entry[1]):
            grow = min(deficit, 255 - len(addr))
            entry[1][j] = addr + "a" * grow
            deficit -= grow
    assert deficit == 0 and len(pack([*head, peers])) == size
    return peers


def job_and_peer_frame_vectors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    receipt = _receipt_wire()
    output = "Gossip spreads the word / every peer hears it in time / the price is the same"
    valid = [
        {"name": "job-accepted", "frame": "job_accepted", "fields": {"request_id": "req-0001"},
         "bytes": pack([1, 19, "req-0001"]).hex()},
        {"name": "job-result", "frame": "job_result",
         "fields": {"request_id": "req-0001", "receipt": receipt.hex(), "output": output},
         "bytes": pack([1, 20, "req-0001", receipt, output]).hex()},
        {"name": "job-result-empty-output", "frame": "job_result",
         "fields": {"request_id": "req-0001", "receipt": receipt.hex(), "output": ""},
         "bytes": pack([1, 20, "req-0001", receipt, ""]).hex()},
        {"name": "peer-exchange", "frame": "peer_exchange", "fields": {"peers": PEERS},
         "bytes": pack([1, 21, PEERS]).hex()},
        {"name": "peer-exchange-empty", "frame": "peer_exchange", "fields": {"peers": []},
         "bytes": pack([1, 21, []]).hex()},
        {"name": "peer-exchange-legacy", "frame": "peer_exchange_legacy", "fields": {"peers": PEERS},
         "bytes": pack([1, PEERS]).hex()},
        {"name": "peer-exchange-legacy-empty", "frame": "peer_exchange_legacy",
         "fields": {"peers": []}, "bytes": pack([1, []]).hex()},
    ]
    one = PEERS[:1]
    peers_array16 = b"\xdc\x00\x01" + pack(one)[1:]  # [1, 21, <one peer, array16 header>]
    bad = [
        ("job-accepted-empty-request-id", "job", pack([1, 19, ""]), "bad_field", "F7"),
        ("job-accepted-request-id-129-bytes", "job", pack([1, 19, "é" * 64 + "x"]), "bad_field",
         "F7"),
        ("job-accepted-extra-item", "job", pack([1, 19, "req-0001", ""]), "malformed", "F6"),
        ("job-accepted-oversize", "job", pack([1, 19, "x" * 1100]), "oversize", "F5"),
        ("job-accepted-str8", "job", b"\x93\x01\x13\xd9\x08req-0001", "non_canonical", "F8"),
        ("job-declined-detail-513-bytes", "job", pack([1, 18, "req-0001", "full", "x" * 513]),
         "bad_field", "F7"),
        ("job-result-receipt-as-text", "job", pack([1, 20, "req-0001", receipt.hex(), "ok"]),
         "bad_field", "F7"),
        ("job-result-empty-receipt", "job", pack([1, 20, "req-0001", b"", "ok"]), "bad_field", "F7"),
        ("job-result-output-as-bin", "job", pack([1, 20, "req-0001", receipt, b"ok"]), "bad_field",
         "F7"),
        ("job-result-4-items", "job", pack([1, 20, "req-0001", receipt]), "malformed", "F6"),
        ("sync-request-on-job-stream", "job", pack([1, 16, bytes(32), [bytes(32)] * 16]), "kind",
         "F4"),
        ("job-accepted-on-sync-stream", "sync", pack([1, 19, "req-0001"]), "kind", "F4"),
        ("peer-exchange-33-peers", "peers/1.1.0", pack([1, 21, one * 33]), "bad_field", "F7"),
        ("peer-exchange-9-addrs", "peers/1.1.0", pack([1, 21, [["p", ["/a"] * 9]]]), "bad_field",
         "F7"),
        ("peer-exchange-empty-peer-id", "peers/1.1.0", pack([1, 21, [["", ["/a"]]]]), "bad_field",
         "F7"),
        ("peer-exchange-peer-id-129-bytes", "peers/1.1.0", pack([1, 21, [["p" * 129, []]]]),
         "bad_field", "F7"),
        ("peer-exchange-addr-257-bytes", "peers/1.1.0", pack([1, 21, [["p", ["/" + "a" * 256]]]]),
         "bad_field", "F7"),
        ("peer-exchange-empty-addr", "peers/1.1.0", pack([1, 21, [["p", [""]]]]), "bad_field", "F7"),
        ("peer-exchange-entry-3-items", "peers/1.1.0", pack([1, 21, [["p", ["/a"], 0]]]),
         "bad_field", "F7"),
        ("peer-exchange-addr-as-bin", "peers/1.1.0", pack([1, 21, [["p", [b"/a"]]]]), "bad_field",
         "F7"),
        ("peer-exchange-4-items", "peers/1.1.0", pack([1, 21, one, []]), "malformed", "F6"),
        ("peer-exchange-array16", "peers/1.1.0", b"\x93\x01\x15" + peers_array16,
         "non_canonical", "F8"),
        ("peer-exchange-oversize", "peers/1.1.0", pack([1, 21, _peers_of_size(32_769, [1, 21])]),
         "oversize", "F5"),
        ("peer-exchange-legacy-on-1.1.0", "peers/1.1.0", pack([1, one]), "kind", "F4"),
        ("peer-list-version-2", "peers/1.0.0", pack([2, one]), "version", "L3"),
        ("peer-list-version-uint8", "peers/1.0.0", b"\x92\xcc\x01" + pack(one), "non_canonical",
         "L5"),
        ("peer-list-frame-21-on-1.0.0", "peers/1.0.0", pack([1, 21, one]), "malformed", "L2"),
        ("peer-list-map", "peers/1.0.0", pack({"1": one}), "malformed", "L2"),
        ("peer-list-33-peers", "peers/1.0.0", pack([1, one * 33]), "bad_field", "L4"),
        ("peer-list-addr-as-bin", "peers/1.0.0", pack([1, [["p", [b"/a"]]]]), "bad_field", "L4"),
        ("peer-list-oversize", "peers/1.0.0", pack([1, _peers_of_size(32_769, [1])]), "oversize",
         "L1"),
    ]
    invalid = [{"name": n, "stream": stream, "bytes": b.hex(), "reason": r, "action": "reject",
                "rule": rule} for n, stream, b, r, rule in bad]
    return valid, invalid


def cross_check_frames(doc: dict[str, Any]) -> None:
    """The project's frame codec must produce and accept exactly the valid frames and refuse
    the invalid ones with their reason."""
    from neuroshard_p2p import wire  # noqa: E402

    decoders = {None: wire.decode_frame, "sync": wire.decode_sync, "job": wire.decode_job_frame,
                "peers/1.1.0": wire.decode_peer_exchange,
                "peers/1.0.0": wire.decode_peer_exchange_legacy}
    for v in doc["valid"]:
        data = bytes.fromhex(v["bytes"])
        if v["frame"] == "peer_exchange_legacy":
            again = wire.encode_peer_exchange_legacy(wire.decode_peer_exchange_legacy(data))
        elif v["frame"] == "peer_exchange":
            again = wire.encode_peer_exchange(wire.decode_peer_exchange(data))
        else:
            again = wire.encode_frame(wire.decode_frame(data))
        assert again == data, f"codec disagrees on frame {v['name']}"
    for v in doc["invalid"]:
        try:
            decoders[v.get("stream")](bytes.fromhex(v["bytes"]))
        except wire.WireError as error:
            assert (error.reason, error.action) == (v["reason"], v["action"]), (v["name"], error)
        else:
            raise AssertionError(f"codec accepts invalid frame {v['name']}")


def view_digests(wires: list[bytes]) -> tuple[list[bytes], bytes]:
    """Spec §8.1: per bucket, SHA-256(tag ‖ u64 count ‖ u256 sum of ids mod 2^256); the view
    digest is SHA-256(tag ‖ the 16 bucket digests). `wires` must all be retained (§7)."""
    count, total = [0] * 16, [0] * 16
    for data in wires:
        signer = msgpack.unpackb(msgpack.unpackb(data)[0])[2]
        bucket = hashlib.sha256(signer).digest()[0] >> 4
        count[bucket] += 1
        total[bucket] = (total[bucket] + int.from_bytes(hashlib.sha256(data).digest(), "big")) % 2**256
    buckets = [hashlib.sha256(b"neuroshard/view-bucket/v1" + count[i].to_bytes(8, "big")
                              + total[i].to_bytes(32, "big")).digest() for i in range(16)]
    return buckets, hashlib.sha256(b"neuroshard/view/v1" + b"".join(buckets)).digest()


def view_digest_vectors() -> list[dict[str, Any]]:
    messages = {v["name"]: bytes.fromhex(v["wire"]) for v in valid_vectors() if v["kind"] == "announcement"}
    out = []
    for name, names in (("empty-view", []), ("four-announcements", list(messages))):
        buckets, digest = view_digests([messages[n] for n in names])
        out.append({"name": name, "announcements": names,
                    "buckets": {n: hashlib.sha256(msgpack.unpackb(msgpack.unpackb(messages[n])[0])[2])
                                .digest()[0] >> 4 for n in names},
                    "bucket_digests": [b.hex() for b in buckets], "digest": digest.hex()})
    return out


# --- price (§7) ----------------------------------------------------------------------------------
# Written from the text of §7.2-§7.4 alone: nothing here imports the project's pricing or view.

#: §7.5: the constants that enter the price, with their defaults (MarketConfig's field names).
PRICE_DEFAULTS: dict[str, Any] = {
    "dynamic_pricing": True, "fixed_price": 0.1, "min_price": 0.01, "max_price": 1.0,
    "steepness": 3.0, "target_response_s": 60.0, "curve": "seed", "smoothing": 0.7,
    "max_step": None, "window_ticks": 32, "tick_s": 1.0, "settle_delay_s": 2.0,
    "capacity_timeout_s": 60.0, "max_node_tokens_per_s": 50_000,
    "max_tokens_per_minute": 1_000_000,
}


def g_to_nano(neuro: float) -> int:
    """§7.2 N(x): x·10^9 as a double product, rounded to the nearest integer, ties to even."""
    return round(neuro * 1e9)  # Python's round of a float: exact value, half-even


def g_sigma(x: float, steepness: float, exp: Any = None) -> float:
    z = -steepness * x
    if z > 700:
        return 0.0
    return 1.0 / (1.0 + (exp or _math_exp)(z))


def _math_exp(z: float) -> float:
    import math
    return math.exp(z)


def g_target(supply: int, demand: int, c: dict[str, Any], *, alt: str | None = None) -> int:
    """§7.2 step by step; `alt` swaps in one plausible mistake, to find what a vector pins."""
    import math
    if alt == "truncate":
        to_nano: Any = lambda x: int(x * 1e9)
    elif alt == "n_half_up":
        to_nano = lambda x: math.floor(x * 1e9 + 0.5)
    else:
        to_nano = g_to_nano
    lo, hi = to_nano(c["min_price"]), to_nano(c["max_price"])
    if not c["dynamic_pricing"]:
        return to_nano(c["fixed_price"])
    if supply == 0:
        u = math.inf if demand > 0 else 0.0
    else:
        u = (float(demand) / c["target_response_s"]) / float(supply)
    if math.isinf(u):
        price = c["max_price"]
    else:
        s = g_sigma(u - 1.0, c["steepness"])
        if c["curve"] == "normalized":
            s0 = g_sigma(-1.0, c["steepness"])
            s = (s - s0) / (1.0 - s0)
        price = c["min_price"] + (c["max_price"] - c["min_price"]) * s
        price = min(c["max_price"], max(c["min_price"], price))
    return min(hi, max(lo, to_nano(price)))


def g_step(previous: int, target: int, c: dict[str, Any], *, alt: str | None = None) -> int:
    """§7.3: one EMA step, the step cap, the band."""
    import math
    from fractions import Fraction
    s = c["smoothing"]
    x = s * float(previous) + (1.0 - s) * float(target)
    if alt == "half_up":
        price = math.floor(x + 0.5)
    elif alt == "ema_truncate":
        price = int(x)
    elif alt == "exact_decimal":
        exact = Fraction(str(s)) * previous + (1 - Fraction(str(s))) * target
        price = round(exact)
    else:
        price = round(x)
    if c["max_step"] is not None:
        if alt == "cap_rounded":
            cap = max(1, round(c["max_step"] * float(previous)))
        elif alt == "cap_no_floor":
            cap = int(c["max_step"] * float(previous))
        else:
            cap = max(1, int(c["max_step"] * float(previous)))
        price = min(previous + cap, max(previous - cap, price))
    return min(g_to_nano(c["max_price"]), max(g_to_nano(c["min_price"]), price))


def g_fold(targets: list[int], c: dict[str, Any], *, alt: str | None = None) -> list[int]:
    """§7.3: the price after each target of the sequence, the fold starting from the first."""
    if not c["dynamic_pricing"]:
        return [g_to_nano(c["fixed_price"])] * len(targets)
    price = min(g_to_nano(c["max_price"]), max(g_to_nano(c["min_price"]), targets[0]))
    out = [price]
    for target in targets[1:]:
        price = g_step(price, target, c, alt=alt)
        out.append(price)
    return out


def price_config(**overrides: Any) -> dict[str, Any]:
    return {**PRICE_DEFAULTS, **overrides}


CURVE_ALTS = ("truncate", "n_half_up")
EMA_ALTS = ("half_up", "ema_truncate", "exact_decimal", "cap_rounded", "cap_no_floor")
PIN_TEXT = {
    "truncate": "N(x) rounds half-even, not truncation",
    "n_half_up": "N(x) rounds ties to even, not half up",
    "half_up": "the EMA rounds ties to even, not half up",
    "ema_truncate": "the EMA rounds to the nearest integer, not truncation",
    "exact_decimal": "the EMA is the float64 expression s·prev + (1.0 − s)·target, not exact "
                     "decimal arithmetic",
    "cap_rounded": "the step cap truncates max_step·prev, not rounds",
    "cap_no_floor": "the step cap is at least 1 nano",
}


def curve_vectors() -> dict[str, Any]:
    variants = {
        "default": {},
        "normalized": {"curve": "normalized"},
        "fixed": {"dynamic_pricing": False, "fixed_price": 0.123456789},
        "fixed-tie": {"dynamic_pricing": False, "fixed_price": 0.1000000025},
        "steep": {"steepness": 800.0, "min_price": 0.05, "max_price": 2.0,
                  "target_response_s": 30.0},
    }
    cases: list[tuple[str, str, int, int]] = [
        ("default", "empty market: supply 0, demand 0 is u = 0 (not P_min on the seed curve)", 0, 0),
        ("default", "demand on no supply: u = ∞ is P_max", 0, 1),
        ("default", "no demand: u = 0", 1000, 0),
        ("default", "u exactly 1: σ(0) = 0.5", 1000, 60_000),
        ("default", "huge u: exp underflows to 0, σ = 1", 1, BIG),
        ("default", "u = 0.5", 2000, 60_000),
        ("default", "u = 2", 1000, 120_000),
        ("default", "price·10^9 = …079.56: truncation would give one nano less", 1101, 33086),
        ("normalized", "u = 0 is exactly P_min on the normalized curve", 1000, 0),
        ("normalized", "supply 0, demand 0", 0, 0),
        ("normalized", "u exactly 1", 1000, 60_000),
        ("normalized", "u = ∞", 0, 5),
        ("normalized", "price·10^9 = …874.5x: truncation would give one nano less", 4059, 797926),
        ("fixed", "fixed mode ignores supply and demand", 1000, 60_000),
        ("fixed", "fixed mode, empty market", 0, 0),
        ("fixed-tie", "0.1000000025 × 1e9 is the double 100000002.5 exactly: ties to even give "
                      "…002, half up …003", 0, 0),
        ("steep", "steepness 800: z = 800 > 700, σ = 0 without calling exp, P_min", 1000, 0),
        ("steep", "steepness 800, u = 1: σ(0) = 0.5", 1000, 30_000),
        ("steep", "steepness 800, u slightly above 1", 1000, 30_001),
    ]
    out = []
    for variant, note, supply, demand in cases:
        c = price_config(**variants[variant])
        nano = g_target(supply, demand, c)
        pins = [PIN_TEXT[a] for a in CURVE_ALTS if g_target(supply, demand, c, alt=a) != nano]
        out.append({"note": note, "config": variant, "supply": supply,
                    "demand": json_value(demand), "target_nano": nano, "pins": pins})
    return {"configs": variants, "vectors": out}


def ema_vectors() -> dict[str, Any]:
    variants = {
        "default": {},
        "half": {"smoothing": 0.5},
        "capped": {"max_step": 0.1, "min_price": 0.0},
        "none": {"smoothing": 0.0},
        "fixed": {"dynamic_pricing": False},
    }
    cases: list[tuple[str, str, list[int]]] = [
        ("default", "a steady target: the price stays", [505_000_000] * 4),
        ("default", "a step up and back, from P_min", [10_000_000, 505_000_000, 505_000_000,
                                                       505_000_000, 10_000_000]),
        ("default", "the fold starts from the oldest target, clamped to [P_min, P_max]",
         [5, 2_000_000_000, 1_000_000_000]),
        ("default", "float64 gives …876.50000006 → 877; exact decimal 0.7 gives a tie → 876",
         [53_888_741, 793_212_526]),
        ("default", "float64 gives …598.5 exactly: half-even 598, half up 599",
         [709_817_616, 478_610_891]),
        ("default", "float64 gives …837.5: half-even 838, truncation 837",
         [360_283_198, 180_708_663]),
        ("half", "smoothing 0.5: 10,000,002.5 → …002 and 10,000,004.5 → …004 (ties to even)",
         [10_000_000, 10_000_005, 10_000_002, 10_000_007]),
        ("capped", "max_step 0.1 from 15 nano: 1.5 truncates to a cap of 1",
         [15, 1_000_000_000, 1_000_000_000]),
        ("capped", "from 0 nano the cap is max(1, 0) = 1: the price can leave 0",
         [0, 1_000_000_000, 1_000_000_000, 1_000_000_000]),
        ("capped", "from 5 nano: cap max(1, ⌊0.5⌋) = 1", [5, 0, 0]),
        ("capped", "large steps: cap ⌊0.1·p⌋ each tick, up then down",
         [100_000_000, 1_000_000_000, 1_000_000_000, 1_000_000_000, 0, 0]),
        ("capped", "cap ⌊0.1·123,456,789⌋ = 12,345,678 (rounding gives 12,345,679)",
         [123_456_789, 1_000_000_000]),
        ("none", "smoothing 0: the price is the target", [10_000_000, 700_000_000, 20_000_000]),
        ("fixed", "fixed mode: the fixed price whatever the targets", [10_000_000, 900_000_000]),
    ]
    out = []
    for variant, note, targets in cases:
        c = price_config(**variants[variant])
        prices = g_fold(targets, c)
        pins = [PIN_TEXT[a] for a in EMA_ALTS if g_fold(targets, c, alt=a) != prices]
        out.append({"note": note, "config": variant, "targets": targets, "prices": prices,
                    "pins": pins})
    return {"configs": variants, "vectors": out}


PRICE_KEY_D = key("neuroshard vector key: price d")
PRICE_KEY_E = key("neuroshard vector key: price e")
PRICE_KEY_F = key("neuroshard vector key: price f")
PRICE_KEY_G = key("neuroshard vector key: price g")
PRICE_KEY_H = key("neuroshard vector key: price h")


def g_view_totals(messages: list[dict[str, Any]], t: int, c: dict[str, Any],
                  alt: str | None = None) -> tuple[int, int, int]:
    """§7.1: supply, demand and available nodes counted at instant t (ms)."""
    import math
    tick_ms = round(c["tick_s"] * 1000)
    settle_ms = round(c["settle_delay_s"] * 1000)
    timeout_ms = round(c["capacity_timeout_s"] * 1000)
    keep = c["window_ticks"] + math.ceil(settle_ms / tick_ms) + 8
    horizon = c["window_ticks"] * tick_ms + settle_ms + timeout_ms + 30_000
    by_signer: dict[str, list[dict[str, Any]]] = {}
    for m in messages:
        by_signer.setdefault(m["signer"], []).append(m)
    supply = demand = nodes = 0
    for held in by_signer.values():
        held.sort(key=lambda m: (m["issued_at_ms"], m["seq"], bytes.fromhex(m["id"])))
        retained = held if alt == "no_keep" else held[-keep:]
        newest = max(m["issued_at_ms"] for m in retained)
        if alt != "no_horizon":
            retained = [m for m in retained if m["issued_at_ms"] >= newest - horizon]
        if len({m["seq"] for m in retained}) < len(retained) and alt != "equivocation_ignored":
            continue  # equivocation: counts nothing
        issued = [m for m in retained if m["issued_at_ms"] <= t and not (
            alt == "withdrawal_ignored" and not (m["tokens_per_second"] or m["pending_tokens"]
                                                 or m["pending_requests"]))]
        if not issued:
            continue
        best = max(issued, key=lambda m: (m["seq"], bytes(255 - b for b in bytes.fromhex(m["id"]))))
        if not t < best["issued_at_ms"] + timeout_ms + (1 if alt == "expiry_inclusive" else 0):
            continue
        if alt == "no_caps":
            capacity, waiting = best["tokens_per_second"], best["pending_tokens"]
        else:
            capacity = min(best["tokens_per_second"], c["max_node_tokens_per_s"])
            waiting = min(best["pending_tokens"],
                          best["pending_requests"] * c["max_tokens_per_minute"])
        supply += capacity
        demand += waiting
        nodes += 1 if capacity > 0 else 0
    return supply, demand, nodes


def view_price_vectors() -> dict[str, Any]:
    c = price_config(window_ticks=4, max_node_tokens_per_s=2000, max_tokens_per_minute=1000)
    labels = {"provider": PROVIDER, "gateway": GATEWAY, "other": OTHER, "price d": PRICE_KEY_D,
              "price e": PRICE_KEY_E, "price f": PRICE_KEY_F, "price g": PRICE_KEY_G,
              "price h": PRICE_KEY_H}
    zero = {"tokens_per_second": 0, "pending_tokens": 0, "pending_requests": 0}
    spec = [
        ("provider", 1, T0 - 5000, {"tokens_per_second": 1000, **{k: 0 for k in ("pending_tokens", "pending_requests")}},
         "capacity 1000 from before the window"),
        ("provider", 2, T0 + 3500, {"tokens_per_second": 1500, "pending_tokens": 0, "pending_requests": 0},
         "issued inside tick k0+5's settle delay (after its instant T0+3000, before it starts): counts from tick k0+6"),
        ("gateway", 1, T0 - 5000, {**zero, "pending_tokens": 90_000, "pending_requests": 100},
         "demand 90,000 tokens in 100 requests"),
        ("other", 1, T0 - 60_000, {**zero, "tokens_per_second": 700},
         "expires at exactly T0 = issued_at + capacity_timeout: counts at k0+1 (instant T0−1000), not at k0+2 (instant T0)"),
        ("price d", 1, T0 - 4000, {**zero, "tokens_per_second": 500}, "capacity 500 …"),
        ("price d", 2, T0 + 1000, dict(zero), "… withdrawn at T0+1000 = the instant of tick k0+3"),
        ("price e", 7, T0 - 10_000, {**zero, "tokens_per_second": 800},
         "equivocation, first of two with seq 7 …"),
        ("price e", 7, T0 + 2000, {**zero, "tokens_per_second": 900},
         "… second: the signer counts nothing at any instant, also before this one was issued"),
        ("price f", 1, T0 - 3000, {"tokens_per_second": 3000, "pending_tokens": 5000, "pending_requests": 2},
         "plausibility caps: capacity 3000 counts max_node_tokens_per_s = 2000, pending 5000 tokens counts 2 × max_tokens_per_minute = 2000"),
        ("price g", 1, T0 - 50_000, {**zero, "tokens_per_second": 600},
         "retention by horizon: issued 100,000 ms before its signer's newest (next), more than "
         "horizon_ms = 96,000, so not retained; if it were, it would count 600 at every tick here"),
        ("price g", 2, T0 + 50_000, {**zero, "tokens_per_second": 600},
         "… its signer's newest, issued after every evaluated instant"),
        ("price h", 1, T0 - 8000, {**zero, "tokens_per_second": 100},
         "retention by keep: its signer has 15 announcements (this and the next 14), keep = 14, "
         "so this oldest is not retained; if it were, it would count 100 at every tick here"),
        *(("price h", n, T0 + 20_000 + n, {**zero, "tokens_per_second": 100},
           f"… {n - 1} of 14 newer ones, issued after every evaluated instant")
          for n in range(2, 16)),
    ]
    messages = []
    for label, seq, issued, fields, note in spec:
        k = labels[label]
        data = signed(body_items(1, pub(k), issued, {**ANNOUNCE, "seq": seq, **fields}), k)
        messages.append({"note": note, "signer": pub(k).hex(), "issued_at_ms": issued, "seq": seq,
                         "tokens_per_second": fields["tokens_per_second"],
                         "min_price_nano": ANNOUNCE["min_price_nano"],
                         "pending_tokens": fields["pending_tokens"],
                         "pending_requests": fields["pending_requests"],
                         "wire": data.hex(), "id": hashlib.sha256(data).hexdigest()})
    tick_ms = round(c["tick_s"] * 1000)
    settle_ms = round(c["settle_delay_s"] * 1000)
    k0 = T0 // tick_ms
    alts = {"no_settle": "tick k is evaluated at k·tick − settle_delay, not at k·tick",
            "expiry_inclusive": "an announcement stops counting at exactly issued_at + "
                                "capacity_timeout",
            "equivocation_ignored": "an equivocating signer counts nothing",
            "no_horizon": "retention drops what was issued more than horizon before the "
                          "signer's newest",
            "no_keep": "retention keeps only the keep newest of a signer",
            "no_caps": "a signer counts at most max_node_tokens_per_s and pending_requests × "
                       "max_tokens_per_minute",
            "withdrawal_ignored": "a withdrawal (all-zero, higher seq) replaces the signer's "
                                  "previous announcement"}

    def tick_row(k: int, alt: str | None = None) -> dict[str, Any]:
        shift = 0 if alt == "no_settle" else settle_ms
        window = range(k - c["window_ticks"] + 1, k + 1)
        targets = [g_target(*g_view_totals(messages, j * tick_ms - shift, c, alt)[:2], c)
                   for j in window]
        instant = k * tick_ms - shift
        supply, demand, nodes = g_view_totals(messages, instant, c, alt)
        return {"tick": k, "evaluated_at_ms": k * tick_ms - settle_ms, "supply": supply,
                "demand": demand, "available_nodes": nodes, "target_nano": targets[-1],
                "price_nano": g_fold(targets, c)[-1]}

    ticks = []
    for k in range(k0 - 2, k0 + 9):
        row = tick_row(k)
        row["pins"] = [text for alt, text in alts.items() if tick_row(k, alt) != row]
        ticks.append(row)
    # A receiver's clock → tick: k = floor(round(now_s·1000) / tick_ms).
    clock = [{"now_s": s, "now_ms": round(s * 1000), "tick": round(s * 1000) // tick_ms,
              "pins": (["the clock rounds to the nearest ms, not truncation"]
                       if int(s * 1000) // tick_ms != round(s * 1000) // tick_ms else [])}
             for s in (T0 / 1000 + 2.9994, T0 / 1000 + 2.9995, T0 / 1000 + 2.9996, T0 / 1000 - 0.0004)]
    return {"config": c, "keep": c["window_ticks"] + -(-settle_ms // tick_ms) + 8,
            "horizon_ms": c["window_ticks"] * tick_ms + settle_ms
            + round(c["capacity_timeout_s"] * 1000) + 30_000,
            "announcements": messages, "ticks": ticks, "clock": clock}


def price_documents() -> dict[str, Any]:
    return {"defaults": PRICE_DEFAULTS, "curve": curve_vectors(), "ema": ema_vectors(),
            "view": view_price_vectors()}


def cross_check_price(doc: dict[str, Any]) -> None:
    """The project's pricing and view must give exactly these integers."""
    from neuroshard_p2p import wire
    from neuroshard_p2p.config import MarketConfig
    from neuroshard_p2p.core.pricing import smoothed_price, target_price_nano
    from neuroshard_p2p.view import MarketView

    def config(overrides: dict[str, Any]) -> MarketConfig:
        return MarketConfig(**{k: v for k, v in overrides.items()})

    for v in doc["curve"]["vectors"]:
        c = config(doc["curve"]["configs"][v["config"]])
        got = target_price_nano(v["supply"], int(v["demand"]), c)
        assert got == v["target_nano"], (v["note"], got)
    for v in doc["ema"]["vectors"]:
        c = config(doc["ema"]["configs"][v["config"]])
        for n in range(1, len(v["targets"]) + 1):
            got = smoothed_price(v["targets"][:n], c)
            assert got == v["prices"][n - 1], (v["note"], n, got)
    view_doc = doc["view"]
    c = config({k: val for k, val in view_doc["config"].items() if k in PRICE_DEFAULTS})
    view = MarketView(c)
    assert (view.max_per_signer, view.horizon_ms) == (view_doc["keep"], view_doc["horizon_ms"])
    for m in view_doc["announcements"]:
        view.merge_message(wire.decode(bytes.fromhex(m["wire"]), m["issued_at_ms"] / 1000))
    for t in view_doc["ticks"]:
        tp = view.price_at_tick(t["tick"])
        stats = view.stats_at_ms(view.evaluation_ms(t["tick"]))
        got = {"tick": tp.tick, "evaluated_at_ms": view.evaluation_ms(t["tick"]),
               "supply": tp.supply, "demand": tp.demand,
               "available_nodes": stats.available_nodes, "target_nano": tp.target_nano,
               "price_nano": tp.price_nano}
        assert got == {k: v for k, v in t.items() if k != "pins"}, (t, got)
    for entry in view_doc["clock"]:
        entry = {k: v for k, v in entry.items() if k != "pins"}
        assert view.price_at(entry["now_s"]).tick == entry["tick"], entry


def _uvarint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


# --- write -------------------------------------------------------------------------------------

def documents() -> dict[str, Any]:
    header = {"protocol": "neuroshard market v1", "spec": "protocols/market-v1.md",
              "generator": "protocols/vectors/generate.py"}
    return {
        "messages.json": {**header, "vectors": valid_vectors()},
        "invalid.json": {**header, "vectors": invalid_vectors()},
        "validator.json": {**header, "defaults": {
            "rate_burst": 5, "rate_refill_s": "config tick_s (1.0)", "max_node_tokens_per_s": 50_000},
            "vectors": validator_vectors()},
        "frames.json": {**header, **frame_vectors()},
        "price.json": {**header, **price_documents()},
        "receipts.json": {**header, "defaults": RECEIPT_DEFAULTS, "vectors": receipt_vectors()},
    }


def render(doc: Any) -> str:
    return json.dumps(doc, indent=1, ensure_ascii=False) + "\n"


def cross_check(docs: dict[str, Any]) -> None:
    """The project's codec must produce and accept exactly these bytes."""
    sys.path.insert(0, str(HERE.parent.parent))
    from neuroshard_p2p import wire  # noqa: E402

    for v in docs["messages.json"]["vectors"]:
        data = bytes.fromhex(v["wire"])
        message = wire.decode(data, v["now_ms"] / 1000)
        again = wire.encode(message, coincurve.PrivateKey(bytes.fromhex(v["private_key"])))
        assert again == data, f"codec disagrees on {v['name']}"
    for v in docs["invalid.json"]["vectors"]:
        try:
            wire.decode(bytes.fromhex(v["wire"]), v["now_ms"] / 1000)
        except wire.WireError as error:
            assert (error.reason, error.action) == (v["reason"], v["action"]), (v["name"], error)
        else:
            raise AssertionError(f"codec accepts invalid vector {v['name']}")
    cross_check_frames(docs["frames.json"])
    cross_check_price(docs["price.json"])
    cross_check_receipts(docs["receipts.json"])


def main(argv: list[str]) -> int:
    docs = documents()
    cross_check(docs)
    stale = [name for name, doc in docs.items()
             if not (HERE / name).exists() or (HERE / name).read_text("utf-8") != render(doc)]
    if "--check" in argv:
        for name in stale:
            print(f"{name} differs from a fresh generation", file=sys.stderr)
        return 1 if stale else 0
    for name, doc in docs.items():
        (HERE / name).write_text(render(doc), "utf-8")
    print(f"wrote {', '.join(docs)} ({len(stale)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
