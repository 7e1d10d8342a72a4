#!/usr/bin/env python3
"""Vectors of the clearing mode (protocols/market-v2.md revision 2.1: clearing) → clearing.json.

Called by generate.py (one line in its `documents()`; `generate.py --check` covers it). Like
generate.py it imports nothing of the project: the bucket edges, the 12-item announcement, V6c,
the counted bids (§7.1) and the clearing price (§7.7) are re-read from the text here. The price is
computed by a different method from the project's: the text defines it as the smallest integer p
in [lo, hi] with covered(p); since covered is monotone this file bisects over every integer of
the band instead of walking the ask and edge points.
"""

from __future__ import annotations

import hashlib
from typing import Any

import coincurve
import msgpack
from coincurve.ecdsa import der_to_cdata, serialize_compact

T0 = 1_767_225_600_000  # 2026-01-01T00:00:00Z in ms, as generate.py
HEADER = {"protocol": "neuroshard market v2, revision 2.1: clearing",
          "spec": "protocols/market-v2.md §5.3, §6, §7.1, §7.7",
          "generator": "protocols/vectors/v2/gen_clearing.py"}

#: §5.3: the 16 lower edges, nano-NEURO per 1M tokens (a 1-2-5 series, 0.001 … 50 NEURO, and 0).
EDGES = [0] + [m * 10**e for e in range(6, 11) for m in (1, 2, 5)]
assert len(EDGES) == 16 and EDGES[-1] == 50_000_000_000
WORK_TAG = b"neuroshard/work/v2"


def key(label: str) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(hashlib.sha256(f"neuroshard vector key: {label}".encode()).digest())


def pub(k: coincurve.PrivateKey) -> bytes:
    return k.public_key.format(compressed=True)


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, use_single_float=False)


def signed(items: list[Any], k: coincurve.PrivateKey) -> bytes:
    body = pack(items)
    return pack([body, serialize_compact(der_to_cdata(k.sign(body)))])


def bucket(max_price_nano: int) -> int:
    """§5.3: the bucket b with E_b <= m < E_(b+1)."""
    return max(b for b, edge in enumerate(EDGES) if edge <= max_price_nano)


def work_bits(signer: bytes, nonce: int) -> int:
    digest = hashlib.sha256(WORK_TAG + signer + nonce.to_bytes(8, "big")).digest()
    value = int.from_bytes(digest, "big")
    return 256 - value.bit_length()


# --- §5.3 / §6: the announcement and who accepts it ------------------------------------------

def announcement_vectors() -> list[dict[str, Any]]:
    k = key("clearing gateway")
    signer = pub(k)
    bids = [0] * 16
    bids[10], bids[8] = 700, 300
    out = []

    def item(name: str, items: list[Any], clearing: str, curve: str, note: str) -> None:
        wire = signed(items, k)
        out.append({"name": name, "note": note, "items": [x.hex() if isinstance(x, bytes) else x
                                                          for x in items],
                    "wire": wire.hex(), "id": hashlib.sha256(wire).hexdigest(),
                    "on_clearing_network": clearing, "on_curve_network": curve})

    base = [2, 1, signer, T0, T0, 1000, 300_000_000, 1000, 2, 0, b""]
    item("with-bids", [*base, bids], "accepted", "bad_field",
         "12 items: 700 tokens bid at 1.0 and up (bucket 10), 300 at 0.2-0.5 (bucket 8); V6c "
         "refuses it on a curve network")
    item("without-bids", list(base), "bad_field", "accepted",
         "11 items: the curve networks' layout; V6c refuses it on a clearing network")
    zeros = [0] * 16
    item("withdrawal", [2, 1, signer, T0, T0 + 1, 0, 0, 0, 0, 0, b"", zeros], "accepted",
         "bad_field", "nothing offered, nothing waiting: 16 zeros")
    item("bids-not-adding-up", [*base, [*bids[:15], 1]], "bad_field", "bad_field",
         "W10: the buckets add up to 1001, pending_tokens is 1000")
    item("fifteen-buckets", [*base, bids[:15]], "bad_field", "bad_field",
         "W10: demand_by_limit must have exactly 16 items")
    item("negative-bucket", [*base, [-1, *bids[1:15], bids[15] + 1]], "bad_field", "bad_field",
         "W10: every item is an int in 0..2^63-1")
    item("thirteen-items", [*base, bids, 0], "malformed", "malformed",
         "W9: an announcement has 11 or 12 items")
    return out


# --- §7.1: a signer's counted bids -------------------------------------------------------------

def counted_bids(hist: list[int], pending_tokens: int, pending_requests: int,
                 caps: dict[str, int], shift: int) -> list[int]:
    rq = min(pending_requests, caps["max_signer_pending_requests"])
    d0 = min(pending_tokens, caps["max_tokens_per_minute"] * rq, caps["max_signer_pending_tokens"])
    out = [0] * 16
    left = d0
    for b in range(15, -1, -1):
        take = min(hist[b], left)
        left -= take
        out[b] = take >> shift
    return out


def counted_vectors() -> list[dict[str, Any]]:
    caps = {"max_signer_pending_requests": 1000, "max_tokens_per_minute": 1_000_000,
            "max_signer_pending_tokens": 1_000_000}
    cases = []

    def case(label: str, note: str, hist: dict[int, int], requests: int, f: int = 0,
             **cap_changes: int) -> None:
        h = [hist.get(b, 0) for b in range(16)]
        k = key(label)
        signer = pub(k)
        bits = work_bits(signer, 0)
        shift = max(0, f - bits)
        c = {**caps, **cap_changes}
        cases.append({"label": label, "note": note, "signer": signer.hex(),
                      "signer_key": k.secret.hex(), "work_nonce": 0, "work_bits": bits,
                      "identity_work_bits": f, "shift": shift, "caps": c,
                      "demand_by_limit": h, "pending_tokens": sum(h),
                      "pending_requests": requests,
                      "counted": counted_bids(h, sum(h), requests, c, shift)})

    case("bids whole", "under every cap: counted as announced", {10: 40_000, 8: 40_000}, 10)
    case("bids over the token cap", "max_signer_pending_tokens 50,000: the highest buckets first",
         {10: 40_000, 8: 40_000, 2: 5}, 10, max_signer_pending_tokens=50_000)
    case("bids over the per-request cap", "2 requests × max_tokens_per_minute 30,000 = 60,000",
         {15: 10_000, 9: 100_000}, 2, max_tokens_per_minute=30_000)
    case("bids in no request", "tokens in 0 requests count nothing (d0 = 0)", {10: 500}, 0)
    case("bids of a light key", "identity_work_bits 12: each bucket shifted by 12 − its bits",
         {10: 500_000, 9: 333_333, 0: 4097}, 10, f=12)
    return cases


# --- §7.7: the clearing price -------------------------------------------------------------------

def clearing(offers: list[list[int]], bids: list[int], lo: int, hi: int, t_ms: int) -> int:
    def covered(p: int) -> bool:
        supply = sum(c for a, c in offers if a <= p)
        demand = sum(t for edge, t in zip(EDGES, bids) if edge >= p)
        return supply * t_ms >= demand * 1000

    if not covered(hi):
        return hi
    low, high = lo, hi          # covered(high) holds; find the smallest such integer
    while low < high:
        mid = (low + high) // 2
        if covered(mid):
            high = mid
        else:
            low = mid + 1
    return low


def price_vectors() -> list[dict[str, Any]]:
    lo, hi, t_ms = 10_000_000, 1_000_000_000, 60_000   # testnet min_price, max_price, 60 s
    out = []

    def case(name: str, note: str, offers: list[list[int]], bid_at: dict[int, int],
             **bounds: int) -> None:
        bids = [0] * 16
        for edge, tokens in bid_at.items():
            bids[EDGES.index(edge)] += tokens
        b_lo, b_hi, b_t = bounds.get("lo", lo), bounds.get("hi", hi), bounds.get("t_ms", t_ms)
        out.append({"name": name, "note": note, "offers": offers, "bids": bids, "lo": b_lo,
                    "hi": b_hi, "target_response_ms": b_t,
                    "price": clearing(offers, bids, b_lo, b_hi, b_t)})

    g = 10**9
    case("empty", "no offers, no bids: P_min", [], {})
    case("no-bids", "offers but no bids: P_min", [[400_000_000, 1000]], {})
    case("cheapest-covers", "the cheapest offer covers 60,000 tokens: its ask",
         [[352_000_000, 1000], [500_000_000, 1000]], {g: 60_000})
    case("ask-below-floor", "an ask below P_min clears at P_min", [[1, 1000]], {g: 60_000})
    case("tie", "1,000 tokens/s × 60 s = 60,000 waiting exactly: covered, the lower ask",
         [[300_000_000, 1000], [400_000_000, 1]], {g: 60_000})
    case("one-short", "999 tokens/s at 0.3 do not cover 60,000 tokens: the next ask",
         [[300_000_000, 999], [400_000_000, 1]], {g: 60_000})
    case("equal-asks-add", "two offers at one ask add up", [[300_000_000, 500],
                                                           [300_000_000, 500]], {g: 60_000})
    case("merit-order", "five asks; 150,000 tokens need 2,500 tokens/s: the fourth ask",
         [[250_000_000, 500], [300_000_000, 600], [350_000_000, 700], [400_000_000, 800],
          [450_000_000, 900]], {g: 150_000})
    case("short-everywhere", "not enough supply up to P_max: P_max", [[300_000_000, 999]],
         {g: 60_000})
    case("no-offer-bids-below-top", "bids up to 0.2 and no offer: just above the highest bid",
         [], {200_000_000: 60_000})
    case("no-offer-bids-at-top", "bids at P_max and no offer: P_max", [], {g: 60_000})
    case("ask-above-top", "an ask above P_max never counts", [[g + 1, 10**9]], {g: 60_000})
    case("bids-below-floor", "bids under P_min never count", [], {5_000_000: 10**9})
    case("bids-leave-first", "supply covers the 0.5 bids but not the 0.2 ones as well",
         [[100_000_000, 1000]], {200_000_000: 60_000, 500_000_000: 60_000})
    case("demand-edge-inside", "a price between asks: the bids at 0.2 drop out above 0.2",
         [[100_000_000, 500], [300_000_000, 1000]], {200_000_000: 30_000, 500_000_000: 30_000})
    case("other-band", "P_min 0, P_max 2.0, target_response 30 s",
         [[0, 100], [1_500_000_000, 100]], {2 * g: 6_000}, lo=0, hi=2 * g, t_ms=30_000)
    return out


def charter_vectors() -> list[dict[str, Any]]:
    """§4.1 / §11: the built-in charters with `curve = "clearing"` are networks of their own; the
    built-in ones keep their ids. Canonical bytes by generate.py's reading of §4.1 (its Charter
    class; no project import)."""
    import generate  # this directory: generate.py puts itself on sys.path before calling us
    out = []
    for name in ("testnet", "simnet"):
        base = generate.CHARTERS[name]
        clearing = generate.Charter(base.name, {**base.params, "curve": "clearing"},
                                    description=base.description)
        out.append({"name": name, "network_id": base.network_id,
                    "clearing_network_id": clearing.network_id,
                    "clearing_canonical": clearing.canonical.hex()})
    return out


def documents() -> dict[str, Any]:
    buckets = [{"max_price_nano": m, "bucket": bucket(m)}
               for m in (0, 999_999, 1_000_000, 1_999_999, 10_000_000, 350_000_000,
                         999_999_999, 1_000_000_000, 1_000_000_001, 49_999_999_999,
                         50_000_000_000, 2**63 - 1)]
    return {"clearing.json": {**HEADER, "edges": EDGES, "buckets": buckets,
                              "announcements": announcement_vectors(),
                              "counted_bids": counted_vectors(), "prices": price_vectors(),
                              "charters": charter_vectors()}}
