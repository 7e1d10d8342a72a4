"""Vectors of revision 2.1 (streaming, issue 16): the job/2.1.0 frames JobChunk (23) and JobCancel
(24), built from the text of protocols/market-v2.md §8.2 and §9 with plain msgpack, without
importing the project. `generate.py` calls `documents()` (main and --check); the project's test
is tests/test_vectors_streaming.py.

    python protocols/vectors/v2/generate.py          # writes streaming.json with the others
"""

from __future__ import annotations

from typing import Any

import msgpack

CHUNK, CANCEL, SETTLED, ACCEPTED = 23, 24, 22, 19
MAX_CHUNK_TEXT = 16_384
MAX_CHUNK_TOKENS = 2**32 - 1
LIMIT = {CHUNK: 17_408, CANCEL: 1024}


def pack(items: list[Any]) -> bytes:
    return msgpack.packb(items, use_bin_type=True)


def valid() -> list[dict[str, Any]]:
    out = []
    for name, items, fields in [
        ("chunk-first-token", [2, CHUNK, "req-0001", 1, "Hello"],
         {"request_id": "req-0001", "tokens": 1, "text": "Hello"}),
        ("chunk-tokens-without-text", [2, CHUNK, "req-0001", 7, ""],
         {"request_id": "req-0001", "tokens": 7, "text": ""}),
        ("chunk-text-without-tokens", [2, CHUNK, "req-0001", 0, " world"],
         {"request_id": "req-0001", "tokens": 0, "text": " world"}),
        ("chunk-largest-count", [2, CHUNK, "r", MAX_CHUNK_TOKENS, "x"],
         {"request_id": "r", "tokens": MAX_CHUNK_TOKENS, "text": "x"}),
        ("chunk-largest-text", [2, CHUNK, "r", 1, "é" * (MAX_CHUNK_TEXT // 2)],
         {"request_id": "r", "tokens": 1, "text": "é" * (MAX_CHUNK_TEXT // 2)}),
        ("cancel", [2, CANCEL, "req-0001"], {"request_id": "req-0001"}),
    ]:
        data = pack(items)
        assert len(data) <= LIMIT[items[1]]
        out.append({"name": name, "stream": "job/2.1.0", "kind": items[1], "hex": data.hex(),
                    "fields": fields})
    return out


def invalid() -> list[dict[str, Any]]:
    """Frames a job/2.1.0 reader refuses, with the reason of the first rule (F1–F8) that fails;
    `stream` says which decoder reads them (job/2.0.0 does not carry kinds 23 and 24)."""
    cases: list[tuple[str, str, bytes, str]] = [
        ("chunk-on-job-2.0.0", "job/2.0.0", pack([2, CHUNK, "r", 1, "x"]), "kind"),
        ("cancel-on-job-2.0.0", "job/2.0.0", pack([2, CANCEL, "r"]), "kind"),
        ("chunk-version-1", "job/2.1.0", pack([1, CHUNK, "r", 1, "x"]), "version"),
        ("chunk-4-items", "job/2.1.0", pack([2, CHUNK, "r", 1]), "malformed"),
        ("cancel-4-items", "job/2.1.0", pack([2, CANCEL, "r", 1]), "malformed"),
        ("chunk-negative-tokens", "job/2.1.0", pack([2, CHUNK, "r", -1, "x"]), "bad_field"),
        ("chunk-tokens-over-2^32-1", "job/2.1.0", pack([2, CHUNK, "r", 2**32, "x"]),
         "bad_field"),
        ("chunk-tokens-bool", "job/2.1.0", pack([2, CHUNK, "r", True, "x"]), "bad_field"),
        ("chunk-empty-request-id", "job/2.1.0", pack([2, CHUNK, "", 1, "x"]), "bad_field"),
        ("chunk-text-bin", "job/2.1.0", pack([2, CHUNK, "r", 1, b"x"]), "bad_field"),
        ("chunk-text-16385-bytes", "job/2.1.0", pack([2, CHUNK, "r", 1, "x" * 16_385]),
         "bad_field"),
        ("chunk-over-frame-limit", "job/2.1.0",
         pack([2, CHUNK, "r" * 128, 1, "x" * 16_384]) + b"", "ok-size-check"),
        ("cancel-empty-request-id", "job/2.1.0", pack([2, CANCEL, ""]), "bad_field"),
        ("chunk-non-canonical-int", "job/2.1.0",
         bytes([0x95, 0x02, 0x17, 0xA1, 0x72, 0xCD, 0x00, 0x01, 0xA1, 0x78]), "non_canonical"),
    ]
    out = []
    for name, stream, data, reason in cases:
        if reason == "ok-size-check":
            # 128-byte id + 16,384-byte text fit the 17,408-byte limit: a valid frame, listed
            # here to pin the limit's headroom (it is not refused).
            assert len(data) <= LIMIT[CHUNK]
            continue
        out.append({"name": name, "stream": stream, "hex": data.hex(), "reason": reason})
    return out


def protocol_ids() -> dict[str, str]:
    network = "simnet-0123456789abcdef"
    return {"network_id": network, "streaming": f"/neuroshard/{network}/job/2.1.0",
            "fallback": f"/neuroshard/{network}/job/2.0.0"}


def documents() -> dict[str, Any]:
    return {"streaming.json": {
        "about": "revision 2.1 (streaming): job/2.1.0 frames JobChunk (23) and JobCancel (24); "
                 "protocols/market-v2.md §8.2 and §9",
        "limits": {"chunk_text_bytes": MAX_CHUNK_TEXT, "chunk_tokens_max": MAX_CHUNK_TOKENS,
                   "chunk_frame_bytes": LIMIT[CHUNK], "cancel_frame_bytes": LIMIT[CANCEL]},
        "protocol_ids": protocol_ids(),
        "valid": valid(), "invalid": invalid()}}
