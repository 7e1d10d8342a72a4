"""Wire protocol v1: round trips, fuzzing, and every validation outcome with its reason and action.

Fuzz budget (hypothesis examples per run): arbitrary bytes 3000, mutated valid messages 4000,
tampered signed bodies 2000, stream frames 1500, frame reader 1000: 11,500 in all.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import coincurve
import msgpack
import pytest
from coincurve.ecdsa import der_to_cdata, serialize_compact
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import make_key
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.wire import (
    IGNORE,
    MAX_SYNC_ANNOUNCEMENTS,
    REJECT,
    Announcement,
    Job,
    JobDeclined,
    Receipt,
    SyncRequest,
    SyncResponse,
    Validator,
    WireError,
    decode,
    decode_frame,
    decode_sync,
    decode_unchecked_time,
    encode,
    encode_frame,
    encode_sync,
    public_key_of,
    sign,
    split_sync_response,
)
from neuroshard_p2p.wire.codec import MAX_PROMPT, MAX_U63, body_of
from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE
from neuroshard_p2p.wire.framing import MAX_STREAM_FRAME, FrameReader, length_prefixed
from neuroshard_p2p.wire.messages import KIND_SYNC_RESPONSE
from neuroshard_p2p.wire.validate import decode_stateless

PROVIDER, GATEWAY, OTHER = make_key(1), make_key(2), make_key(3)
P, G, O = (public_key_of(k) for k in (PROVIDER, GATEWAY, OTHER))
T = 1_767_225_600.0          # receiver's clock in the tests (s)
T_MS = int(T * 1000)
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


def announcement(seq: int = 1, issued_at_ms: int = T_MS, key: coincurve.PrivateKey = PROVIDER,
                 **changes: Any) -> Announcement:
    fields = dict(seq=seq, tokens_per_second=1000, min_price_nano=100_000_000,
                  pending_tokens=5000, pending_requests=3)
    fields.update(changes)
    return Announcement(signer=public_key_of(key), issued_at_ms=issued_at_ms, **fields)


def job(**changes: Any) -> Job:
    fields = dict(signer=G, issued_at_ms=T_MS, request_id="req-1", user="alice", provider=P,
                  tokens=500, max_price_nano=500_000_000, locked_price_nano=120_000_000, tier=1,
                  prompt="Write a haiku about gossip.")
    fields.update(changes)
    return Job(**fields)


def receipt(tokens_served: int = 480, request_id: str = "req-1", started_ms: int = T_MS - 2000,
            ended_ms: int = T_MS - 500, issued_at_ms: int = T_MS) -> Receipt:
    return Receipt(signer=P, issued_at_ms=issued_at_ms, request_id=request_id, gateway=G,
                   user="alice", tokens_served=tokens_served, locked_price_nano=120_000_000,
                   started_at_ms=started_ms, ended_at_ms=ended_ms)


def reason_of(call: Any) -> tuple[str, str]:
    with pytest.raises(WireError) as caught:
        call()
    return caught.value.reason, caught.value.action


# ---------------------------------------------------------------------------------------------
# Round trips

u63 = st.integers(min_value=0, max_value=MAX_U63)
text = st.text(min_size=1, max_size=40).filter(lambda s: len(s.encode("utf-8")) <= 128)


@FUZZ
@given(seq=u63, issued=u63, tps=u63, price=u63, pending=u63, requests=u63)
def test_announcement_round_trip(seq: int, issued: int, tps: int, price: int, pending: int,
                                 requests: int) -> None:
    message = Announcement(P, issued, seq, tps, price, pending, requests)
    data = encode(message, PROVIDER)
    decoded = decode_unchecked_time(data)
    assert decoded == message
    assert decoded.wire == data and decoded.msg_id == hashlib.sha256(data).digest()
    assert encode(decoded, PROVIDER) == data  # deterministic signatures: one message, one id


@FUZZ
@given(request_id=text, user=text, tokens=st.integers(1, MAX_U63), prices=st.lists(u63, min_size=2,
       max_size=2), tier=st.integers(0, 2), prompt=st.text(max_size=300))
def test_job_round_trip(request_id: str, user: str, tokens: int, prices: list[int], tier: int,
                        prompt: str) -> None:
    locked, maximum = sorted(prices)
    message = job(request_id=request_id, user=user, tokens=tokens, max_price_nano=maximum,
                  locked_price_nano=locked, tier=tier, prompt=prompt)
    decoded = decode(encode(message, GATEWAY), T)
    assert decoded == message and isinstance(decoded, Job)


@FUZZ
@given(request_id=text, tokens=u63, times=st.lists(st.integers(0, T_MS), min_size=3, max_size=3))
def test_receipt_round_trip(request_id: str, tokens: int, times: list[int]) -> None:
    started, ended, issued = sorted(times)
    message = receipt(tokens, request_id, started, ended, issued)
    decoded = decode_unchecked_time(encode(message, PROVIDER))
    assert decoded == message and isinstance(decoded, Receipt)


def test_sign_fills_signature_wire_and_id() -> None:
    signed = sign(announcement(), PROVIDER)
    assert len(signed.signature) == 64
    assert signed.msg_id == hashlib.sha256(signed.wire).digest()
    assert signed.wire.endswith(b"\xc4\x40" + signed.signature)
    assert signed.wire[3:3 + len(body_of(signed))] == body_of(signed)


def test_announcement_is_small() -> None:
    # the keep-alive every peer receives from every peer: one message of ~130 bytes
    assert 120 <= len(encode(announcement(), PROVIDER)) <= 160


digest = st.binary(min_size=32, max_size=32)


@FUZZ
@given(view=digest, buckets=st.lists(digest, min_size=16, max_size=16))
def test_sync_request_round_trip(view: bytes, buckets: list[bytes]) -> None:
    frame = SyncRequest(view, tuple(buckets))
    assert decode_sync(encode_sync(frame)) == frame


@FUZZ
@given(count=st.integers(0, 40), reason=text, detail=st.text(max_size=100))
def test_sync_response_and_decline_round_trip(count: int, reason: str, detail: str) -> None:
    wires = tuple(encode(announcement(seq=i), PROVIDER) for i in range(count))
    assert decode_frame(encode_frame(SyncResponse(wires))) == SyncResponse(wires)
    declined = JobDeclined("req-1", reason, detail)
    assert decode_frame(encode_frame(declined)) == declined


def test_split_sync_response_respects_both_limits() -> None:
    one = encode(announcement(), PROVIDER)
    many = [one] * (MAX_SYNC_ANNOUNCEMENTS * 2 + 7)
    frames = split_sync_response(many)
    assert [len(f.announcements) for f in frames] == [4096, 4096, 7]
    big = [b"\x01" * 1024] * 2500  # 2500 KiB cannot fit one 1 MiB frame
    frames = split_sync_response(big)
    assert sum(len(f.announcements) for f in frames) == 2500
    for frame in frames:
        assert len(encode_frame(frame)) <= MAX_FRAME_SIZE[KIND_SYNC_RESPONSE]
    assert split_sync_response([]) == []


def test_decode_sync_refuses_other_frames() -> None:
    data = encode_frame(JobDeclined("req-1", "full"))
    assert reason_of(lambda: decode_sync(data)) == ("kind", REJECT)


# ---------------------------------------------------------------------------------------------
# Encoding refuses what decoding would refuse

@pytest.mark.parametrize("message, reason", [
    (announcement(seq=-1), "bad_field"),
    (announcement(seq=2**63), "bad_field"),
    (announcement(tokens_per_second=1.5), "bad_field"),
    (announcement(pending_tokens=True), "bad_field"),
    (job(user="\udc80"), "bad_field"),                    # lone surrogate: not UTF-8
    (job(request_id=""), "bad_field"),
    (job(tier=3), "bad_field"),
    (job(tokens=0), "bad_field"),
    (job(locked_price_nano=600_000_000), "bad_field"),
    (job(provider=b"\x02" * 32), "bad_field"),
    (job(provider=b"\x02" + b"\x00" * 31 + b"\x05"), "bad_field"),  # not on the curve
    (job(provider=G), "bad_field"),
    (job(prompt="x" * (MAX_PROMPT + 1)), "bad_field"),
    (receipt(started_ms=T_MS, ended_ms=T_MS - 1), "bad_field"),
    (receipt(ended_ms=T_MS + 1, issued_at_ms=T_MS), "bad_field"),
], ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_encode_refuses_invalid_fields(message: Any, reason: str) -> None:
    key = GATEWAY if isinstance(message, Job) else PROVIDER
    assert reason_of(lambda: encode(message, key)) == (reason, REJECT)


def test_encode_refuses_a_key_that_is_not_the_signer() -> None:
    assert reason_of(lambda: encode(announcement(), OTHER)) == ("signer_mismatch", REJECT)


def test_encode_refuses_a_frame_and_encode_frame_a_message() -> None:
    assert reason_of(lambda: encode(JobDeclined("r", "full"), PROVIDER)) == ("kind", REJECT)  # type: ignore[arg-type]
    assert reason_of(lambda: encode_frame(announcement())) == ("kind", REJECT)  # type: ignore[arg-type]


def test_job_tiers_are_the_books_in_the_spec_order() -> None:
    """A Job carries its tier as an index (spec §5.3: 0 economy, 1 standard, 2 premium); the
    wire and the order book must name the same tiers in that order."""
    from neuroshard_p2p.core.book import TIERS as BOOK_TIERS
    from neuroshard_p2p.wire import TIERS
    assert TIERS is BOOK_TIERS
    assert TIERS == ("economy", "standard", "premium")


def test_largest_prompt_fits_a_job() -> None:
    big = job(prompt="é" * (MAX_PROMPT // 2))  # 64 KiB of UTF-8
    assert decode(encode(big, GATEWAY), T) == big


# ---------------------------------------------------------------------------------------------
# Fuzz: whatever the bytes, the only exception is WireError

VALID = [encode(announcement(), PROVIDER), encode(job(), GATEWAY), encode(receipt(), PROVIDER),
         encode(job(prompt="x" * MAX_PROMPT), GATEWAY)]  # body > 64 KiB: bin32


def only_wire_errors(data: bytes) -> None:
    """decode and a fresh validator either return a message or raise WireError, nothing else."""
    for call in (lambda: decode(data, T), lambda: Validator(MarketConfig()).check(data, T)):
        try:
            call()
        except WireError as error:
            assert error.action in (REJECT, IGNORE) and error.reason and str(error)


@settings(FUZZ, max_examples=3000)
@given(data=st.binary(max_size=600))
def test_fuzz_arbitrary_bytes(data: bytes) -> None:
    only_wire_errors(data)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(VALID)))
    how = draw(st.sampled_from(["flip", "truncate", "extend", "replace", "insert", "delete"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        data = data[:draw(st.integers(0, len(data) - 1))]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "replace":
        i = draw(st.integers(0, len(data) - 1))
        new = draw(st.integers(0, 255).filter(lambda b: b != data[i]))
        data[i] = new
    elif how == "insert":
        i = draw(st.integers(0, len(data)))
        data[i:i] = draw(st.binary(min_size=1, max_size=8))
    else:
        i = draw(st.integers(0, len(data) - 1))
        del data[i:i + draw(st.integers(1, 8))]
    return bytes(data)


@settings(FUZZ, max_examples=4000)
@given(data=mutated())
def test_fuzz_mutated_valid_messages_are_always_refused(data: bytes) -> None:
    """Any change to a signed message breaks its encoding or its signature: never accepted."""
    assume(data not in VALID)  # two flips of the same bit give the original back
    with pytest.raises(WireError):
        decode(data, T)
    only_wire_errors(data)


msgpack_scalars = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=20) | st.binary(max_size=40) | st.sampled_from([P, G, 1, 2, 3, T_MS]))
# One level of nesting is enough to put a wrong type in every slot; deeper trees only cost time.
msgpack_values = (msgpack_scalars | st.lists(msgpack_scalars, max_size=4)
                  | st.dictionaries(st.text(max_size=3), msgpack_scalars, max_size=2))


VALID_BODIES = [msgpack.unpackb(msgpack.unpackb(w)[0]) for w in VALID[:3]]
KEY_OF = {P: PROVIDER, G: GATEWAY}


@st.composite
def tampered_bodies(draw: st.DrawFn) -> bytes:
    """A valid body with one to three items replaced by random values, correctly signed when the
    signer is still a known key: reaches every field check, not only the first item."""
    items = list(draw(st.sampled_from(VALID_BODIES)))
    for _ in range(draw(st.integers(1, 3))):
        items[draw(st.integers(0, len(items) - 1))] = draw(msgpack_values)
    if draw(st.booleans()):
        items = items[:draw(st.integers(0, len(items)))] + draw(st.lists(msgpack_values, max_size=2))
    try:
        body = msgpack.packb(items, use_bin_type=True)
    except (OverflowError, ValueError, TypeError):
        body = b"\x90"
    key = KEY_OF.get(items[2] if len(items) > 2 and isinstance(items[2], bytes) else b"", OTHER)
    signature = serialize_compact(der_to_cdata(key.sign(body)))
    return msgpack.packb([body, signature], use_bin_type=True)


@settings(FUZZ, max_examples=2000)
@given(data=tampered_bodies())
def test_fuzz_structured_bodies(data: bytes) -> None:
    """Signed bodies with wrong types, ranges and lengths in any slot never crash."""
    only_wire_errors(data)


frame_items = st.lists(msgpack_values, max_size=6).map(
    lambda xs: msgpack.packb(xs, use_bin_type=True))


@settings(FUZZ, max_examples=1500)
@given(data=st.one_of(st.binary(max_size=300), frame_items,
                      st.lists(msgpack_values, max_size=4).map(
                          lambda xs: msgpack.packb([1, 16, *xs], use_bin_type=True)),
                      st.lists(msgpack_values, max_size=4).map(
                          lambda xs: msgpack.packb([1, 17, *xs], use_bin_type=True))))
def test_fuzz_stream_frames(data: bytes) -> None:
    try:
        frame = decode_frame(data)
    except WireError as error:
        assert error.action == REJECT and str(error)
    else:
        assert encode_frame(frame) == data  # anything accepted is canonical


@settings(FUZZ, max_examples=1000)
@given(chunks=st.lists(st.binary(max_size=40), max_size=10))
def test_fuzz_frame_reader(chunks: list[bytes]) -> None:
    reader = FrameReader(max_frame=1000)
    try:
        for chunk in chunks:
            for frame in reader.feed(chunk):
                assert len(frame) <= 1000
    except WireError as error:
        assert error.reason in ("oversize", "non_canonical")
    assert reader.buffered <= 1000 + 4 + 40


def test_frame_reader_reassembles_split_frames() -> None:
    payloads = [b"", b"a", b"b" * 300, encode(announcement(), PROVIDER)]
    stream = b"".join(length_prefixed(p) for p in payloads)
    reader = FrameReader()
    got: list[bytes] = []
    for i in range(len(stream)):  # one byte at a time: the worst split there is
        got += reader.feed(stream[i:i + 1])
    assert got == payloads and reader.buffered == 0


def test_frame_reader_refuses_oversize_and_non_minimal_prefixes() -> None:
    assert reason_of(lambda: FrameReader(max_frame=100).feed(b"\x65")) == ("oversize", REJECT)
    assert reason_of(lambda: FrameReader().feed(b"\x80\x00")) == ("non_canonical", REJECT)
    assert reason_of(lambda: FrameReader().feed(b"\xff\xff\xff\xff")) == ("oversize", REJECT)
    assert reason_of(lambda: length_prefixed(b"\x00" * (MAX_STREAM_FRAME + 1))) == ("oversize", REJECT)


# ---------------------------------------------------------------------------------------------
# Each attack: the right reason and action, counted

@pytest.fixture
def validator() -> Validator:
    return Validator(MarketConfig())


def test_forged_signature(validator: Validator) -> None:
    data = bytearray(encode(announcement(), PROVIDER))
    data[-1] ^= 0x01
    assert reason_of(lambda: validator.check(bytes(data), T)) == ("bad_signature", REJECT)
    assert validator.counts["bad_signature"] == 1 and validator.counts["accepted"] == 0


def test_wrong_signer_in_the_body(validator: Validator) -> None:
    honest = sign(announcement(), PROVIDER)
    claims_other = body_of(announcement(key=OTHER))
    forged = msgpack.packb([claims_other, honest.signature], use_bin_type=True)
    assert reason_of(lambda: validator.check(forged, T)) == ("bad_signature", REJECT)


def test_wrong_signer_for_the_publishing_peer(validator: Validator) -> None:
    data = encode(announcement(), PROVIDER)
    assert reason_of(lambda: validator.check(data, T, from_peer=peer_id_of(O))) == \
        ("wrong_signer", REJECT)
    raw_peer_id = bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21]) + O
    assert reason_of(lambda: validator.check(data, T, from_peer=raw_peer_id)) == \
        ("wrong_signer", REJECT)
    assert reason_of(lambda: validator.check(data, T, from_peer="not-a-peer-id")) == \
        ("wrong_signer", REJECT)
    assert validator.check(data, T, from_peer=bytes([0, 0x25, 8, 2, 0x12, 0x21]) + P).seq == 1
    assert validator.counts["wrong_signer"] == 3 and validator.counts["accepted"] == 1


def test_replay_is_a_duplicate(validator: Validator) -> None:
    data = encode(announcement(), PROVIDER)
    validator.check(data, T)
    for i in range(3):
        assert reason_of(lambda: validator.check(data, T + i)) == ("duplicate", IGNORE)
    assert validator.counts["duplicate"] == 3 and validator.counts["accepted"] == 1


def test_stale_and_future(validator: Validator) -> None:
    data = encode(announcement(), PROVIDER)
    assert reason_of(lambda: validator.check(data, T + 300.001)) == ("stale", IGNORE)
    assert reason_of(lambda: validator.check(data, T - 30.001)) == ("future", REJECT)
    with pytest.raises(WireError, match=r"timestamp 412 s in the past \(limit 300 s\)"):
        decode(data, T + 412)
    assert validator.check(data, T + 300.0).seq == 1  # the boundary itself is fresh


def test_oversize(validator: Validator) -> None:
    assert reason_of(lambda: validator.check(b"\x00" * 90_000, T)) == ("oversize", REJECT)
    body = msgpack.packb([2, 1, P, T_MS, 1, 1, 1, 1, 1, 0, b"", "x" * 2000], use_bin_type=True)
    data = msgpack.packb([body, b"\x00" * 64], use_bin_type=True)
    assert reason_of(lambda: validator.check(data, T)) == ("oversize", REJECT)


def test_seq_regression_and_same_seq(validator: Validator) -> None:
    validator.check(encode(announcement(seq=5), PROVIDER), T)
    assert reason_of(lambda: validator.check(encode(announcement(seq=4), PROVIDER), T)) == \
        ("seq_regression", IGNORE)
    assert validator.last_seq(P) == 5
    validator.check(encode(announcement(seq=6), PROVIDER), T + 1)
    assert validator.last_seq(P) == 6 and validator.last_seq(G) is None


def test_equivocation_is_passed_on_once(validator: Validator) -> None:
    first = encode(announcement(seq=3, pending_tokens=1), PROVIDER)
    second = encode(announcement(seq=3, pending_tokens=2), PROVIDER)
    third = encode(announcement(seq=3, pending_tokens=3), PROVIDER)
    validator.check(first, T)
    assert validator.check(second, T).pending_tokens == 2  # the evidence reaches the view
    assert validator.counts["equivocation"] == 1
    assert reason_of(lambda: validator.check(third, T)) == ("equivocation", IGNORE)
    assert validator.last_seq(P) == 3
    assert validator.check(encode(announcement(seq=4), PROVIDER), T + 1).seq == 4


def test_flood_above_the_rate_limit(validator: Validator) -> None:
    """Burst 5, then one per tick (1 s): 100 messages in one instant → 5 accepted, 95 rejected."""
    results = []
    for seq in range(1, 101):
        try:
            validator.check(encode(announcement(seq=seq), PROVIDER), T)
            results.append("accepted")
        except WireError as error:
            results.append(f"{error.reason}/{error.action}")
    assert results == ["accepted"] * 5 + ["rate_limited/reject"] * 95
    assert validator.counts["rate_limited"] == 95
    # one token back per second, capped at the burst
    assert validator.check(encode(announcement(seq=101), PROVIDER), T + 1.0).seq == 101
    assert reason_of(lambda: validator.check(encode(announcement(seq=102), PROVIDER), T + 1.5)) == \
        ("rate_limited", REJECT)
    accepted = 0
    for seq in range(103, 120):
        try:
            validator.check(encode(announcement(seq=seq), PROVIDER), T + 100)
            accepted += 1
        except WireError:
            pass
    assert accepted == 5


def test_honest_node_at_one_per_tick_with_jitter_is_never_limited(validator: Validator) -> None:
    jitter = random.Random(7)
    for seq in range(1, 201):
        sent = T + seq * 1.0  # one per tick, the most an honest announcer sends
        validator.check(encode(announcement(seq=seq, issued_at_ms=int(sent * 1000)), PROVIDER),
                        sent + jitter.uniform(0.0, 0.8))
    assert validator.counts["accepted"] == 200 and validator.counts["rate_limited"] == 0


def test_rate_limit_is_per_signer(validator: Validator) -> None:
    for seq in range(1, 6):
        validator.check(encode(announcement(seq=seq), PROVIDER), T)
    assert validator.check(encode(announcement(seq=1, key=GATEWAY), GATEWAY), T).seq == 1


def test_implausible_capacity(validator: Validator) -> None:
    data = encode(announcement(tokens_per_second=50_001), PROVIDER)
    assert reason_of(lambda: validator.check(data, T)) == ("implausible", REJECT)
    assert validator.check(encode(announcement(tokens_per_second=50_000), PROVIDER), T).seq == 1


def test_only_announcements_are_validated() -> None:
    """Jobs and receipts travel on the job stream, where the provider's admission and the
    gateway's ledger check them (spec §9): given to a Validator, they are the wrong kind."""
    validator = Validator(MarketConfig())
    assert reason_of(lambda: validator.check(encode(job(), GATEWAY), T)) == ("kind", REJECT)
    assert reason_of(lambda: validator.check(encode(receipt(), PROVIDER), T)) == ("kind", REJECT)
    assert validator.counts["kind"] == 2 and validator.counts["accepted"] == 0
    assert "wrong_recipient" not in validator.counts and "tokens_per_minute" not in validator.counts


def test_decoder_is_a_parameter() -> None:
    """A Validator runs the stateless rules through the decoder it is given (the simulator
    passes a memoised one): each accepted input goes through it once."""
    calls: list[bytes] = []

    def counting(data: Any, msg_id: bytes | None) -> Any:
        calls.append(bytes(data))
        return decode_stateless(data, msg_id)

    validator = Validator(MarketConfig(), decode=counting)
    data = encode(announcement(), PROVIDER)
    assert validator.check(data, T).seq == 1
    assert reason_of(lambda: validator.check(data, T)) == ("duplicate", IGNORE)  # not decoded
    assert calls == [data]


def test_high_s_signature_is_refused() -> None:
    """The mirror image (r, n − s) is also a valid ECDSA signature; refusing it keeps one wire
    form, hence one message id, per message."""
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    signed = sign(announcement(), PROVIDER)
    s = int.from_bytes(signed.signature[32:], "big")
    mirrored = signed.signature[:32] + (n - s).to_bytes(32, "big")
    data = msgpack.packb([body_of(signed), mirrored], use_bin_type=True)
    assert reason_of(lambda: decode(data, T)) == ("bad_signature", REJECT)


def test_public_api_fallback_verifies_like_the_fast_path() -> None:
    """The codec checks compact signatures through coincurve's raw binding and keeps a fallback
    on coincurve's public API for a coincurve that moves its internals: both must agree, on
    good, forged, high-s and out-of-range signatures alike."""
    import coincurve as cc

    from neuroshard_p2p.wire import codec

    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    signed = sign(announcement(), PROVIDER)
    body, good = body_of(signed), signed.signature
    s = int.from_bytes(good[32:], "big")
    cases = {
        "good": (good, True),
        "forged": (good[:-1] + bytes([good[-1] ^ 1]), False),
        "high-s": (good[:32] + (n - s).to_bytes(32, "big"), False),
        "r >= n": (b"\xff" * 32 + good[32:], False),
        "r = 0": (b"\x00" * 32 + good[32:], False),
    }
    key = cc.PublicKey(P)
    for name, (signature, valid) in cases.items():
        assert codec._verify(key, signature, body) is valid, name
        assert codec._verify_public_api(key, signature, body) is valid, name


def test_accepts_bytearray_and_memoryview(validator: Validator) -> None:
    data = encode(announcement(), PROVIDER)
    assert decode(bytearray(data), T).seq == 1
    assert validator.check(memoryview(data), T).wire == data
    assert reason_of(lambda: decode("text", T)) == ("malformed", REJECT)  # type: ignore[arg-type]
    assert reason_of(lambda: validator.check(None, T)) == ("malformed", REJECT)  # type: ignore[arg-type]


@pytest.mark.parametrize("item", [b"\x80", b"\xc7\x00\x05", b"\x91\x80"],
                         ids=["empty-map", "empty-ext", "array-of-empty-map"])
def test_maps_and_ext_are_malformed_even_when_empty(item: bytes) -> None:
    """Spec W5: a body holding a map or an ext value is `malformed`, whatever its size (msgpack's
    max_map_len=0 still lets an empty map through), so every implementation gives one reason."""
    good = msgpack.packb([1, 1, P, T_MS, 1, 1000, 100_000_000, 5000, 3], use_bin_type=True)
    seq_at = good.index(b"\x01\xcd\x03\xe8")       # seq 1, then tokens_per_second 1000
    body = good[:seq_at] + item + good[seq_at + 1:]
    data = msgpack.packb([body, serialize_compact(der_to_cdata(PROVIDER.sign(body)))],
                         use_bin_type=True)
    assert reason_of(lambda: decode(data, T)) == ("malformed", REJECT)
    frame = b"\x93\x01\x11\x91" + item                 # [1, 17, [<item>]]: a sync response
    assert reason_of(lambda: decode_frame(frame)) == ("malformed", REJECT)


def test_duplicates_as_bytes_bytearray_or_memoryview_and_an_id_sent_as_bytes() -> None:
    """The seen-cache knows an accepted announcement by its bytes, whatever buffer type they
    arrive in; a replay is a duplicate, with the id's first 16 hex digits in the detail; 32
    bytes equal to an accepted id are not that message, and a large input (a job with a long
    prompt) is never a duplicate, only the wrong kind, since only announcements are accepted."""
    validator = Validator(MarketConfig())
    small = encode(announcement(), PROVIDER)
    big = encode(job(prompt="x" * 5000), GATEWAY)
    assert len(small) <= 1024 < len(big)
    validator.check(small, T)
    for data in (small, bytearray(small), memoryview(small)):
        with pytest.raises(WireError) as raised:
            validator.check(data, T + 1)
        assert (raised.value.reason, raised.value.action) == ("duplicate", IGNORE)
        assert str(raised.value) == f"message {hashlib.sha256(data).hexdigest()[:16]}… already seen"
    for _ in range(2):
        assert reason_of(lambda: validator.check(memoryview(big), T)) == ("kind", REJECT)
    assert reason_of(lambda: validator.check(hashlib.sha256(small).digest(), T)) == \
        ("malformed", REJECT)
    assert validator.seen_size == 1
    assert validator.counts["duplicate"] == 3 and validator.counts["kind"] == 2
    assert validator.counts["malformed"] == 1


def test_seen_cache_expiry_stops_at_the_first_fresh_id_when_the_clock_steps_back() -> None:
    """Ids leave in the order they were accepted, each at its own expiry (accepted at + 330 s)."""
    validator = Validator(MarketConfig(), rate_burst=1000)
    first = encode(announcement(seq=1), PROVIDER)
    validator.check(first, T)
    validator.check(encode(announcement(seq=2), PROVIDER), T - 10)  # expires at T + 320
    validator.check(encode(announcement(seq=3), PROVIDER), T + 5)
    # at T + 325 the second has expired but sits behind the first (expires at T + 330)
    validator.check(encode(announcement(seq=4, issued_at_ms=T_MS + 325_000), PROVIDER), T + 325)
    assert validator.seen_size == 4
    validator.check(encode(announcement(seq=5, issued_at_ms=T_MS + 330_000), PROVIDER), T + 330)
    assert validator.seen_size == 3  # the first and second left, the third stays until T + 335


def test_counts_cover_every_outcome(validator: Validator) -> None:
    data = encode(announcement(), PROVIDER)
    validator.check(data, T)
    for call in (lambda: validator.check(data, T), lambda: validator.check(b"", T),
                 lambda: validator.check(data[:-1] + b"\x00", T)):
        with pytest.raises(WireError):
            call()
    counts = {k: v for k, v in validator.counts.items() if v}
    assert counts == {"accepted": 1, "duplicate": 1, "malformed": 1, "bad_signature": 1}


# ---------------------------------------------------------------------------------------------
# Bounded memory

def test_seen_cache_is_bounded_and_replays_still_fall_to_seq() -> None:
    validator = Validator(MarketConfig(), max_seen=10, rate_burst=1000)
    wires = [encode(announcement(seq=i), PROVIDER) for i in range(1, 31)]
    for data in wires:
        validator.check(data, T)
    assert validator.seen_size == 10
    # evicted from the seen-cache, the oldest replay is still refused: by the seq rule
    assert reason_of(lambda: validator.check(wires[0], T)) == ("seq_regression", IGNORE)
    assert reason_of(lambda: validator.check(wires[-1], T)) == ("duplicate", IGNORE)


def test_seen_cache_entries_expire_after_the_freshness_window() -> None:
    validator = Validator(MarketConfig())
    data = encode(announcement(), PROVIDER)
    validator.check(data, T)
    validator.check(encode(announcement(seq=2, issued_at_ms=T_MS + 329_000), PROVIDER), T + 329)
    assert validator.seen_size == 2
    validator.check(encode(announcement(seq=3, issued_at_ms=T_MS + 331_000), PROVIDER), T + 331)
    assert validator.seen_size == 2  # the first id expired at T + 330
    assert reason_of(lambda: validator.check(data, T + 331)) == ("stale", IGNORE)


def test_signers_tracked_are_bounded_least_recent_first() -> None:
    validator = Validator(MarketConfig(), max_signers=3)
    keys = [make_key(i) for i in range(10, 15)]
    for key in keys:
        validator.check(encode(announcement(key=key), key), T)
    assert validator.signers_tracked == 3
    assert [validator.last_seq(public_key_of(k)) for k in keys] == [None, None, 1, 1, 1]


def test_validator_settings_are_checked() -> None:
    for bad in (dict(rate_burst=0), dict(max_seen=0), dict(max_signers=0), dict(seen_ttl_s=0),
                dict(rate_refill_s=0)):
        with pytest.raises(ValueError):
            Validator(MarketConfig(), **bad)


def test_non_finite_clock_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        decode(encode(announcement(), PROVIDER), float("nan"))


def test_history_from_sync_skips_the_seq_and_rate_rules(validator: Validator) -> None:
    """A peer's retained history arrives in a batch and out of order: still validated (signature,
    freshness, duplicates), but neither the seq rule nor the rate limit refuses it."""
    wires = [encode(announcement(seq=s), PROVIDER) for s in range(1, 21)]
    validator.check(wires[-1], T)
    for data in reversed(wires[:-1]):  # 19 older ones at the same instant
        assert validator.check(data, T, history=True).seq < 20
    assert validator.last_seq(P) == 20
    assert reason_of(lambda: validator.check(wires[0], T, history=True)) == ("duplicate", IGNORE)
    forged = wires[0][:-1] + bytes([wires[0][-1] ^ 1])
    assert reason_of(lambda: validator.check(forged, T, history=True)) == ("bad_signature", REJECT)
    # live gossip still gets the rules
    assert reason_of(lambda: validator.check(encode(announcement(seq=19, pending_tokens=9),
                                                    PROVIDER), T)) == ("seq_regression", IGNORE)


def test_bench_wire_runs_from_the_dispatcher() -> None:
    """`python -m neuroshard_p2p.bench wire` (tiny sizes) prints the rates and the ratio the
    README quotes, decode / bare verify, against the 0.8 goal."""
    import re
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "neuroshard_p2p.bench", "wire", "--n", "40",
                           "--rounds", "1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wire: 40 announcements per round, 1 rounds")
    ratio = re.search(r"decode / bare verify \(parse key\)\s+(\d+\.\d\d)  \((meets|MISSES) the ≥ 0\.8 goal\)",
                      done.stdout)
    assert ratio is not None, done.stdout
    assert float(ratio.group(1)) > 0
    usage = subprocess.run([sys.executable, "-m", "neuroshard_p2p.bench", "wire", "--help"],
                           capture_output=True, text=True, timeout=60)
    assert usage.stdout.startswith("usage: python -m neuroshard_p2p.bench wire")
