#!/usr/bin/env python3
"""Vectors of §8.4 (revision 2.1: reconciliation): `recon.json`.

An independent reading of market-v2.md §8.4 with plain msgpack and hashlib (no import of
neuroshard_p2p): fingerprints, separating bounds, valid and invalid Reconcile frames, and whole
sessions (every frame of both sides, in order, and the ids each side learns it lacks).
Called by generate.py (`documents()`), or alone: `python gen_recon.py` prints the document.
"""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

import msgpack

TAG = b"neuroshard/recon/v2.1"
INF = (2**63 - 1, b"")
SMALL = 32
SPLIT = 16
RECENT_MAX = 8192


def item_of(n: int, spread: int) -> tuple[int, bytes]:
    """Vector item n: id = SHA-256("neuroshard recon vector item" ‖ u32be(n)), ts = u32be(id[0..4]) mod spread."""
    msg_id = hashlib.sha256(b"neuroshard recon vector item" + n.to_bytes(4, "big")).digest()
    return (int.from_bytes(msg_id[:4], "big") % spread, msg_id)


def fp(ids: list[bytes]) -> bytes:
    total = sum(int.from_bytes(i, "big") for i in ids) % 2**256
    return hashlib.sha256(TAG + len(ids).to_bytes(8, "big") + total.to_bytes(32, "big")).digest()[:16]


def separator(a: tuple[int, bytes], b: tuple[int, bytes]) -> tuple[int, bytes]:
    if a[0] < b[0]:
        return (b[0], b"")
    for k in range(32):
        if a[1][k] != b[1][k]:
            return (b[0], b[1][:k + 1])
    raise ValueError("equal items")


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def frame(ranges: list[list[Any]], want: list[bytes]) -> bytes:
    return pack([2, 25, ranges, want])


def within(items: list[tuple[int, bytes]], lower: tuple[int, bytes], upper: tuple[int, bytes]) -> list[tuple[int, bytes]]:
    return [x for x in items if lower <= x < upper]


def answer(items: list[tuple[int, bytes]], ranges: list[list[Any]], lacks: set[bytes], peer_lacks: set[bytes]) -> list[list[Any]]:
    """One turn of §8.4 by the side holding `items` (sorted). Frames here stay far below the limits."""
    out: list[list[Any]] = []
    lower = (0, b"")
    for ts, prefix, mode, payload in ranges:
        upper = (ts, prefix)
        mine = within(items, lower, upper)
        if mode == 0:
            out.append([ts, prefix, 0, b""])
        elif mode == 1:
            if fp([i for _, i in mine]) == payload:
                out.append([ts, prefix, 0, b""])
            elif len(mine) <= SMALL:
                out.append([ts, prefix, 2, sorted(i for _, i in mine)])
            else:
                c = len(mine)
                start = 0
                for k in range(1, SPLIT + 1):
                    end = c * k // SPLIT
                    b = upper if k == SPLIT else separator(mine[end - 1], mine[end])
                    out.append([b[0], b[1], 1, fp([i for _, i in mine[start:end]])])
                    start = end
        else:
            ours = {i for _, i in mine}
            peer_lacks |= ours - set(payload)
            lacks |= set(payload) - ours
            out.append([ts, prefix, 0, b""])
        lower = upper
    merged: list[list[Any]] = []
    for r in out:
        if r[2] == 0 and merged and merged[-1][2] == 0:
            merged[-1] = r
        else:
            merged.append(r)
    return [] if all(r[2] == 0 for r in merged) else merged


def opening(a: list[tuple[int, bytes]], since: int | None) -> list[list[Any]]:
    """The dialer's first ranges: all ids if at most 32; else without `since` one fingerprint;
    with it, the items below (since, empty) as one range and the rest by id, 32 per range, the
    last RECENT_MAX of them at most."""
    if len(a) <= SMALL:
        return [[INF[0], INF[1], 2, sorted(i for _, i in a)]]
    recent = [x for x in a if since is not None and x >= (since, b"")]
    if not recent:
        return [[INF[0], INF[1], 1, fp([i for _, i in a])]]
    lower = (since, b"")
    if len(recent) > RECENT_MAX:
        recent = recent[-RECENT_MAX:]
        lower = separator(a[len(a) - RECENT_MAX - 1], recent[0])
    head = a[:len(a) - len(recent)]
    ranges: list[list[Any]] = []
    if lower > (0, b""):
        ids = [i for _, i in head]
        ranges.append([lower[0], lower[1], 2, sorted(ids)] if len(ids) <= SMALL
                      else [lower[0], lower[1], 1, fp(ids)])
    for k in range(0, len(recent), SMALL):
        chunk = recent[k:k + SMALL]
        upper = INF if k + SMALL >= len(recent) else separator(chunk[-1], recent[k + SMALL])
        ranges.append([upper[0], upper[1], 2, sorted(i for _, i in chunk)])
    return ranges


def session(a_items: list[tuple[int, bytes]], b_items: list[tuple[int, bytes]],
            since: int | None = None) -> dict[str, Any]:
    a, b = sorted(a_items), sorted(b_items)
    ranges = opening(a, since)
    a_lacks: set[bytes] = set()
    b_lacks: set[bytes] = set()
    frames: list[str] = []
    turn = 0
    while ranges:
        frames.append(frame(ranges, []).hex())
        if turn % 2 == 0:
            ranges = answer(b, ranges, b_lacks, a_lacks)
        else:
            ranges = answer(a, ranges, a_lacks, b_lacks)
        turn += 1
    # Hand-checkable statement: each side lacks exactly the other's surplus.
    assert a_lacks == {i for _, i in b} - {i for _, i in a}
    assert b_lacks == {i for _, i in a} - {i for _, i in b}
    return {"frames": frames, "a_lacks": sorted(x.hex() for x in a_lacks),
            "b_lacks": sorted(x.hex() for x in b_lacks)}


def documents() -> dict[str, Any]:
    fingerprints = [
        {"ids": [], "fingerprint": fp([]).hex()},
        {"ids": [item_of(0, 1)[1].hex()], "fingerprint": fp([item_of(0, 1)[1]]).hex()},
        {"ids": [item_of(n, 1)[1].hex() for n in range(3)],
         "fingerprint": fp([item_of(n, 1)[1] for n in range(3)]).hex()},
        {"ids": ["ff" * 32, "00" * 31 + "01"], "fingerprint": fp([b"\xff" * 32, b"\x00" * 31 + b"\x01"]).hex(),
         "note": "the sum wraps modulo 2^256 to 0"},
    ]
    bounds = [
        {"below": [1, "ff" * 32], "above": [2, "00" * 32], "bound": [2, ""]},
        {"below": [7, "1020" + "00" * 30], "above": [7, "1030" + "00" * 30], "bound": [7, "1030"]},
        {"below": [7, "aa" * 31 + "01"], "above": [7, "aa" * 31 + "02"], "bound": [7, "aa" * 31 + "02"]},
    ]
    inf = INF[0]
    valid = [
        {"note": "empty: the end of an exchange", "hex": frame([], []).hex()},
        {"note": "opening fingerprint", "hex": frame([[inf, b"", 1, b"\x11" * 16]], []).hex()},
        {"note": "skip, idlist, fingerprint, and a want",
         "hex": frame([[5, b"\x80", 0, b""], [9, b"", 2, [b"\x01" * 32, b"\x02" * 32]],
                       [inf, b"", 1, b"\x22" * 16]], [b"\x03" * 32]).hex()},
    ]
    invalid = [
        {"note": "last bound not infinite", "reason": "bad_field", "hex": frame([[5, b"", 1, b"\x11" * 16]], []).hex()},
        {"note": "bounds not ascending", "reason": "bad_field",
         "hex": frame([[9, b"", 0, b""], [9, b"", 0, b""], [inf, b"", 0, b""]], []).hex()},
        {"note": "fingerprint of 15 bytes", "reason": "bad_field", "hex": frame([[inf, b"", 1, b"\x11" * 15]], []).hex()},
        {"note": "ids not ascending", "reason": "bad_field",
         "hex": frame([[inf, b"", 2, [b"\x02" * 32, b"\x01" * 32]]], []).hex()},
        {"note": "33 ids in an IdList", "reason": "bad_field",
         "hex": frame([[inf, b"", 2, [bytes([k]) * 32 for k in range(33)]]], []).hex()},
        {"note": "mode 3", "reason": "bad_field", "hex": frame([[inf, b"", 3, b""]], []).hex()},
        {"note": "prefix of 33 bytes", "reason": "bad_field", "hex": frame([[inf, b"\x00" * 33, 0, b""]], []).hex()},
        {"note": "version 1", "reason": "version", "hex": pack([1, 25, [], []]).hex()},
        {"note": "kind 16", "reason": "kind", "hex": pack([2, 16, [], []]).hex()},
        {"note": "5 items", "reason": "malformed", "hex": pack([2, 25, [], [], 0]).hex()},
        {"note": "non-canonical int", "reason": "non_canonical", "hex": "9402" + "d019" + "9090"},
        {"note": "a map", "reason": "malformed", "hex": "9402199080"},
    ]
    def items(ns: range | list[int], spread: int) -> list[tuple[int, bytes]]:
        return [item_of(n, spread) for n in ns]
    sessions = [
        {"note": "equal views of 100", "spread": 1000, "a": [0, 100], "b": [0, 100]},
        {"note": "small views (IdList at once)", "spread": 1000, "a": [0, 20], "b": [10, 30]},
        {"note": "600 shared, 3 only in a, 2 only in b", "spread": 1000, "a": [0, 603], "b": [3, 605]},
        {"note": "all items at one ts (bounds by id prefix)", "spread": 1, "a": [0, 300], "b": [5, 300]},
        {"note": "a empty", "spread": 1000, "a": [0, 0], "b": [0, 50]},
        {"note": "recent opening: a lists its ids from ts 900 on", "spread": 1000,
         "a": [0, 603], "b": [3, 605], "since": 900},
        {"note": "recent opening: since before every item (all listed by id)", "spread": 1000,
         "a": [0, 200], "b": [10, 210], "since": 0},
        {"note": "recent opening: since after every item (one fingerprint)", "spread": 1000,
         "a": [0, 100], "b": [0, 101], "since": 5000},
    ]
    for s in sessions:
        s.update(session(items(range(*s["a"]), s["spread"]), items(range(*s["b"]), s["spread"]),
                         s.get("since")))
    return {"recon.json": {
        "spec": "protocols/market-v2.md §8.4 (revision 2.1: reconciliation)",
        "item": "item n: id = SHA-256('neuroshard recon vector item' || u32be(n)), ts = u32be(id[0..4]) mod spread; "
                "a session's sides hold items a[0] <= n < a[1] and b[0] <= n < b[1]; a dials, opening with "
                "the recent opening of §8.4 from `since` ms when the session has one",
        "fingerprints": fingerprints, "bounds": bounds, "valid": valid, "invalid": invalid,
        "sessions": sessions}}


if __name__ == "__main__":
    json.dump(documents(), sys.stdout, indent=1)
