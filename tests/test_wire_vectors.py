"""Every vector in protocols/vectors/ against the codec and the validator.

The vectors are data: this test reads the JSON only (it never imports the generator), so it fails
if the code drifts from the published bytes, and anyone can run the same checks on another
implementation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import coincurve
import pytest
from coincurve.ecdsa import cdata_to_der, deserialize_compact

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.wire import (
    Announcement,
    Job,
    JobAccepted,
    JobDeclined,
    JobResult,
    PeerExchange,
    Receipt,
    SyncRequest,
    SyncResponse,
)
from neuroshard_p2p.wire.framing import FrameReader, length_prefixed

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors"
CLASSES = {"announcement": Announcement, "job": Job, "receipt": Receipt}
BYTES_FIELDS = {"provider", "gateway"}


def load(name: str) -> dict[str, Any]:
    return json.loads((VECTORS / name).read_text("utf-8"))


MESSAGES = load("messages.json")["vectors"]
INVALID = load("invalid.json")["vectors"]
STATEFUL = load("validator.json")["vectors"]
FRAMES = load("frames.json")


def field_value(name: str, value: Any) -> Any:
    if name in BYTES_FIELDS:
        return bytes.fromhex(value)
    if isinstance(value, str) and value.isdigit() and name not in ("request_id", "user", "prompt"):
        return int(value)  # integers above 2^53 are written as decimal strings
    return value


def message_of(vector: dict[str, Any]) -> wire.Message:
    fields = {name: field_value(name, value) for name, value in vector["fields"].items()}
    return CLASSES[vector["kind"]](signer=bytes.fromhex(vector["signer"]), **fields)


def test_vector_files_are_not_empty() -> None:
    assert len(MESSAGES) >= 7 and len(INVALID) >= 30 and len(STATEFUL) >= 8
    assert {v["kind"] for v in MESSAGES} == set(CLASSES)


@pytest.mark.parametrize("vector", MESSAGES, ids=lambda v: v["name"])
def test_valid_vector_encodes_to_the_published_bytes(vector: dict[str, Any]) -> None:
    key = coincurve.PrivateKey(bytes.fromhex(vector["private_key"]))
    assert key.public_key.format() == bytes.fromhex(vector["signer"])
    assert peer_id_of(bytes.fromhex(vector["signer"])) == vector["peer_id"]
    message = message_of(vector)
    data = wire.encode(message, key)
    assert data.hex() == vector["wire"]
    assert wire.body_of(message).hex() == vector["body"]
    assert len(data) == vector["size"]


@pytest.mark.parametrize("vector", MESSAGES, ids=lambda v: v["name"])
def test_valid_vector_decodes_to_its_fields(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["wire"])
    decoded = wire.decode(data, vector["now_ms"] / 1000)
    assert decoded == message_of(vector)
    assert decoded.signature.hex() == vector["signature"]
    assert decoded.msg_id.hex() == vector["id"] == hashlib.sha256(data).hexdigest()
    assert decoded.wire == data


@pytest.mark.parametrize("vector", MESSAGES, ids=lambda v: v["name"])
def test_valid_vector_signature_checks_with_plain_coincurve(vector: dict[str, Any]) -> None:
    """The published signature verifies with nothing but coincurve: ECDSA over SHA-256(body)."""
    signature = bytes.fromhex(vector["signature"])
    der = cdata_to_der(deserialize_compact(signature))
    public_key = coincurve.PublicKey(bytes.fromhex(vector["signer"]))
    assert public_key.verify(der, bytes.fromhex(vector["body"]))
    assert bytes.fromhex(vector["wire"]).endswith(b"\xc4\x40" + signature)


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["name"])
def test_invalid_vector_gives_its_reason_and_action(vector: dict[str, Any]) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.decode(bytes.fromhex(vector["wire"]), vector["now_ms"] / 1000)
    assert (caught.value.reason, caught.value.action) == (vector["reason"], vector["action"])
    assert str(caught.value)  # a message a person can read


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v["name"])
def test_invalid_vector_through_the_validator(vector: dict[str, Any]) -> None:
    validator = wire.Validator(MarketConfig())
    with pytest.raises(wire.WireError) as caught:
        validator.check(bytes.fromhex(vector["wire"]), vector["now_ms"] / 1000)
    assert (caught.value.reason, caught.value.action) == (vector["reason"], vector["action"])
    assert validator.counts[vector["reason"]] == 1
    assert validator.counts["accepted"] == 0


@pytest.mark.parametrize("vector", STATEFUL, ids=lambda v: v["name"])
def test_validator_vector(vector: dict[str, Any]) -> None:
    validator = wire.Validator(MarketConfig().replace(**vector["config"]))
    for number, step in enumerate(vector["steps"]):
        data = bytes.fromhex(step["wire"])
        kwargs: dict[str, Any] = {}
        if "from_peer" in step:
            kwargs["from_peer"] = step["from_peer"]
        expect = step["expect"]
        if expect == "accepted":
            message = validator.check(data, step["now_ms"] / 1000, **kwargs)
            assert message.wire == data, f"step {number}"
        else:
            with pytest.raises(wire.WireError) as caught:
                validator.check(data, step["now_ms"] / 1000, **kwargs)
            assert (caught.value.reason, caught.value.action) == (expect["reason"], expect["action"]), \
                f"step {number}: {caught.value!r}"
        for reason, count in step.get("counts", {}).items():
            assert validator.counts[reason] == count, f"step {number}: counts[{reason}]"
    accepted = sum(1 for s in vector["steps"] if s["expect"] == "accepted")
    assert validator.counts["accepted"] == accepted


def frame_of(vector: dict[str, Any]) -> wire.Frame:
    fields = vector["fields"]
    if vector["frame"] == "sync_request":
        return SyncRequest(bytes.fromhex(fields["digest"]),
                           tuple(bytes.fromhex(b) for b in fields["bucket_digests"]))
    if vector["frame"] == "sync_response":
        return SyncResponse(tuple(bytes.fromhex(a) for a in fields["announcements"]))
    if vector["frame"] == "job_declined":
        return JobDeclined(fields["request_id"], fields["reason"], fields["detail"])
    if vector["frame"] == "job_accepted":
        return JobAccepted(fields["request_id"])
    if vector["frame"] == "job_result":
        return JobResult(fields["request_id"], bytes.fromhex(fields["receipt"]), fields["output"])
    assert vector["frame"] == "peer_exchange"
    return PeerExchange(tuple((peer, tuple(addrs)) for peer, addrs in fields["peers"]))


#: The decoder of each stream named by an invalid frame vector (none: any frame kind).
DECODERS = {None: wire.decode_frame, "sync": wire.decode_sync, "job": wire.decode_job_frame,
            "peers/1.1.0": wire.decode_peer_exchange,
            "peers/1.0.0": wire.decode_peer_exchange_legacy}


def test_frame_vectors_cover_every_kind_and_stream() -> None:
    kinds = {bytes.fromhex(v["bytes"])[2] for v in FRAMES["valid"]
             if v["frame"] != "peer_exchange_legacy"}
    assert kinds == {16, 17, 18, 19, 20, 21}
    assert {v["frame"] for v in FRAMES["valid"]} >= {"peer_exchange", "peer_exchange_legacy"}
    assert {v.get("stream") for v in FRAMES["invalid"]} == set(DECODERS)


@pytest.mark.parametrize("vector", FRAMES["valid"], ids=lambda v: v["name"])
def test_frame_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["bytes"])
    if vector["frame"] == "peer_exchange_legacy":
        entries = [(peer, addrs) for peer, addrs in vector["fields"]["peers"]]
        assert wire.encode_peer_exchange_legacy(entries) == data
        assert wire.decode_peer_exchange_legacy(data) == entries
        return
    frame = frame_of(vector)
    assert wire.encode_frame(frame) == data
    assert wire.decode_frame(data) == frame
    if isinstance(frame, PeerExchange):
        entries = [(peer, addrs) for peer, addrs in vector["fields"]["peers"]]
        assert wire.encode_peer_exchange(entries) == data
        assert wire.decode_peer_exchange(data) == entries


@pytest.mark.parametrize("vector", FRAMES["invalid"], ids=lambda v: v["name"])
def test_invalid_frame_vector(vector: dict[str, Any]) -> None:
    with pytest.raises(wire.WireError) as caught:
        DECODERS[vector.get("stream")](bytes.fromhex(vector["bytes"]))
    assert (caught.value.reason, caught.value.action) == (vector["reason"], vector["action"])


@pytest.mark.parametrize("vector", FRAMES["length_prefix"], ids=lambda v: str(v["length"]))
def test_length_prefix_vector(vector: dict[str, Any]) -> None:
    payload = b"\x07" * vector["length"]
    framed = length_prefixed(payload)
    assert framed[: len(framed) - len(payload)].hex() == vector["prefix"]
    assert FrameReader().feed(framed) == [payload]


@pytest.mark.parametrize("vector", FRAMES["view_digests"], ids=lambda v: v["name"])
def test_view_digest_vector(vector: dict[str, Any]) -> None:
    """The merged view computes the digests of spec §8.1: peers of any implementation can tell
    which buckets differ."""
    from neuroshard_p2p.view import MarketView, bucket_of

    wires = {v["name"]: bytes.fromhex(v["wire"]) for v in MESSAGES}
    view = MarketView(MarketConfig())
    for name in vector["announcements"]:
        message = wire.decode_unchecked_time(wires[name])
        assert bucket_of(message.signer) == vector["buckets"][name]
        view.merge_message(message)
    assert [d.hex() for d in view.bucket_digests()] == vector["bucket_digests"]
    assert view.digest().hex() == vector["digest"]


def test_generator_reproduces_the_published_files() -> None:
    """The generator is deterministic and the JSON files are what it writes (run as a separate
    process, the way a person would)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, str(VECTORS / "generate.py"), "--check"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
