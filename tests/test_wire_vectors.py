"""The v2 vectors of protocols/vectors/v2/ that tests/test_vectors_v2.py does not read: the
validator's stateful sequences (validator.json), and what the message, invalid and frame files pin
beyond it (signatures with plain coincurve, `wire.decode` at the receive time, the validator's
counters, the frame files' coverage, length prefixes).

The vectors are data: this test reads the JSON only (it never imports the generator), so it fails
if the code drifts from the published bytes, and anyone can run the same checks on another
implementation. (The v1 files in protocols/vectors/ are the history of the v1 spec; v1's
messages, invalid, validator and frame vectors live on in v2 bytes in protocols/vectors/v2/.)
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
from neuroshard_p2p.charter import Charter
from neuroshard_p2p.wire.framing import FrameReader, length_prefixed
from neuroshard_p2p.wire.membership import Admission

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "v2"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((VECTORS / name).read_text("utf-8"))
    return data


CHARTERS = {v["name"]: Charter.from_toml(v["toml"]) for v in load("charter.json")["valid"]}
MESSAGES = load("messages.json")["vectors"]
INVALID = load("invalid.json")["vectors"]
STATEFUL = load("validator.json")["vectors"]
FRAMES = load("frames.json")


def validator_for(charter_name: str) -> wire.Validator:
    charter = CHARTERS[charter_name]
    return wire.Validator(charter.market, admission=Admission.of(charter))


def test_vector_files_are_not_empty() -> None:
    assert len(MESSAGES) >= 13 and len(INVALID) >= 60 and len(STATEFUL) >= 13
    assert {v["kind"] for v in MESSAGES} == {"announcement", "job", "receipt", "credential",
                                             "revocation_list"}
    assert {v["charter"] for v in STATEFUL} == {"testnet", "guild"}
    assert {s["path"] for v in STATEFUL for s in v["steps"]} == {"gossip", "sync"}


# --- messages.json, invalid.json ------------------------------------------------------------------

@pytest.mark.parametrize("vector", MESSAGES, ids=lambda v: v["name"])
def test_valid_vector_signature_checks_with_plain_coincurve(vector: dict[str, Any]) -> None:
    """The published signature verifies with nothing but coincurve: ECDSA over SHA-256(body), and
    the codec writes exactly the published body."""
    signature = bytes.fromhex(vector["signature"])
    der = cdata_to_der(deserialize_compact(signature))
    public_key = coincurve.PublicKey(bytes.fromhex(vector["signer"]))
    assert public_key.verify(der, bytes.fromhex(vector["body"]))
    data = bytes.fromhex(vector["wire"])
    assert data.endswith(b"\xc4\x40" + signature)
    assert wire.body_of(wire.decode_unchecked_time(data)).hex() == vector["body"]


@pytest.mark.parametrize("vector", MESSAGES, ids=lambda v: v["name"])
def test_valid_vector_decodes_at_its_receive_time(vector: dict[str, Any]) -> None:
    """`wire.decode` at the vector's `now_ms` (W1–W13): a credential or a revocation list issued
    long before is still valid (W13 is for kinds 1–3)."""
    data = bytes.fromhex(vector["wire"])
    decoded = wire.decode(data, vector["now_ms"] / 1000)
    assert decoded == wire.decode_unchecked_time(data)
    assert decoded.signature.hex() == vector["signature"]
    assert decoded.msg_id.hex() == vector["id"] == hashlib.sha256(data).hexdigest()
    assert decoded.wire == data


#: Invalid vectors whose refusal a validator on the topic gives as it is: everything on the gossip
#: path, and the stateless refusals (W1–W13) of announcements and of the kinds that fail before
#: V3. A Job whose only fault is a credential in an open network is for the provider's admission
#: (check_job, §9 J.2): on the topic it is refused for its kind.
THROUGH_A_VALIDATOR = [v for v in INVALID if v["path"] == "gossip" or (
    v["path"] == "decode" and v["name"] != "job-credential-in-open-network")]


@pytest.mark.parametrize("vector", THROUGH_A_VALIDATOR, ids=lambda v: v["name"])
def test_invalid_vector_through_the_validator(vector: dict[str, Any]) -> None:
    validator = validator_for(vector["charter"])
    with pytest.raises(wire.WireError) as caught:
        validator.check(bytes.fromhex(vector["wire"]), vector["now_ms"] / 1000,
                        from_peer=vector.get("from_peer"))
    assert (caught.value.reason, caught.value.action) == (vector["reason"], vector["action"])
    assert str(caught.value)  # a message a person can read
    assert validator.counts[vector["reason"]] == 1
    assert validator.counts["accepted"] == 0


# --- validator.json (§6.2, §6.3, §8) --------------------------------------------------------------

@pytest.mark.parametrize("vector", STATEFUL, ids=lambda v: v["name"])
def test_validator_vector(vector: dict[str, Any]) -> None:
    validator = validator_for(vector["charter"])
    for number, step in enumerate(vector["steps"]):
        data = bytes.fromhex(step["wire"])
        kwargs: dict[str, Any] = {"history": step["path"] == "sync"}
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


# --- frames.json ----------------------------------------------------------------------------------

def test_frame_vectors_cover_every_kind_and_stream() -> None:
    kinds = {bytes.fromhex(v["bytes"])[2] for v in FRAMES["valid"] if v["stream"] != "peers/1.0.0"}
    assert kinds == {16, 17, 18, 19, 20, 21, 22}
    assert {v["stream"] for v in FRAMES["valid"]} == {"sync", "job", "peers/1.1.0", "peers/1.0.0"}
    assert {v["stream"] for v in FRAMES["invalid"]} == {"sync", "job", "peers/1.1.0",
                                                        "peers/1.0.0"}
    rules = {v["rule"] for v in FRAMES["invalid"]}
    assert rules >= {f"F{n}" for n in range(2, 9)} | {f"L{n}" for n in range(1, 6)}


@pytest.mark.parametrize("vector", FRAMES["length_prefix"], ids=lambda v: str(v["length"]))
def test_length_prefix_vector(vector: dict[str, Any]) -> None:
    payload = b"\x07" * vector["length"]
    framed = length_prefixed(payload)
    assert framed[: len(framed) - len(payload)].hex() == vector["prefix"]
    assert FrameReader().feed(framed) == [payload]
