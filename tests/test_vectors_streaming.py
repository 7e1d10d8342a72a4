"""Our codec against the revision 2.1 (streaming) vectors, generated without it
(protocols/vectors/v2/gen_streaming.py → streaming.json)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from neuroshard_p2p import wire
from neuroshard_p2p.node.jobs import job_protocol, job_stream_protocol
from neuroshard_p2p.wire.frames import MAX_CHUNK_TEXT, MAX_CHUNK_TOKENS, MAX_FRAME_SIZE
from neuroshard_p2p.wire.messages import KIND_JOB_CANCEL, KIND_JOB_CHUNK

DOC = json.loads((Path(__file__).parents[1] / "protocols/vectors/v2/streaming.json")
                 .read_text("utf-8"))


def test_limits_and_protocol_ids() -> None:
    limits = DOC["limits"]
    assert (limits["chunk_text_bytes"], limits["chunk_tokens_max"], limits["chunk_frame_bytes"],
            limits["cancel_frame_bytes"]) == (MAX_CHUNK_TEXT, MAX_CHUNK_TOKENS,
                                              MAX_FRAME_SIZE[KIND_JOB_CHUNK],
                                              MAX_FRAME_SIZE[KIND_JOB_CANCEL])
    ids = DOC["protocol_ids"]
    assert job_stream_protocol(ids["network_id"]) == ids["streaming"]
    assert job_protocol(ids["network_id"]) == ids["fallback"]


@pytest.mark.parametrize("vector", DOC["valid"], ids=lambda v: v["name"])
def test_valid_frames_decode_and_encode_to_the_same_bytes(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    frame = wire.decode_job_frame(data, streaming=True)
    assert frame.KIND == vector["kind"]
    assert {k: getattr(frame, k) for k in vector["fields"]} == vector["fields"]
    assert wire.encode_job_frame(frame) == data
    if isinstance(frame, wire.JobCancel):
        assert wire.decode_job_gateway_frame(data) == frame


@pytest.mark.parametrize("vector", DOC["invalid"], ids=lambda v: v["name"])
def test_invalid_frames_are_refused_with_their_reason(vector: dict) -> None:
    data = bytes.fromhex(vector["hex"])
    with pytest.raises(wire.WireError) as caught:
        wire.decode_job_frame(data, streaming=vector["stream"] == "job/2.1.0")
    assert (caught.value.reason, caught.value.action) == (vector["reason"], "reject")
