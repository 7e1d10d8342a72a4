#!/usr/bin/env python3
"""Measure the figures of market-v2.md §13.2: the cost of identity work, and the thin-spread attack.

    python protocols/vectors/v2/measure_work.py [--hashes 1048576] [--seconds 2]

1. The hash rate of the grinder's loop (hashlib, one core): SHA-256("neuroshard/work/v2" ‖ signer
   ‖ u64be(nonce)) with the prefix hashed once per key, as a node grinds. It prints what one
   core-minute buys on the testnet charter (F = 24).
2. The attack that spreads H hashes over H/h fresh keys, h nonces each: it grinds them for real
   and counts what §7.1 would count for them (capacity 50,000 >> max(0, F − best bits) per key),
   then prints the total against the nominal H · 50,000 / 2^F and against the expected gain the
   generator computes exactly (counting.json → bounds.lottery). Keys are 33-byte strings derived
   from a counter (the work hash does not care whether they are points; a real attacker pays an
   EC multiplication per key on top).

Standard library only; it imports nothing of the project. Runs for about 25 s with the defaults
(the attack runs are noisy: a key's weight is a lottery, and rare lucky keys dominate the total).
"""

from __future__ import annotations

import argparse
import json
import time
from hashlib import sha256
from pathlib import Path

TAG = b"neuroshard/work/v2"
F = 24
C1 = 50_000


def best_bits(signer: bytes, tries: int) -> int:
    prefix = sha256(TAG + signer)
    best = 0
    for nonce in range(tries):
        h = prefix.copy()
        h.update(nonce.to_bytes(8, "big"))
        bits = 256 - int.from_bytes(h.digest(), "big").bit_length()
        if bits > best:
            best = bits
    return best


def hash_rate(seconds: float) -> float:
    prefix = sha256(TAG + b"\x02" * 33)
    n, start = 0, time.perf_counter()
    while True:
        for nonce in range(n, n + 100_000):
            h = prefix.copy()
            h.update(nonce.to_bytes(8, "big"))
            h.digest()
        n += 100_000
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return n / elapsed


def spread_attack(total_hashes: int, per_key: int, seed: int) -> float:
    """Counted capacity of total_hashes / per_key keys, per_key nonces each, over the nominal."""
    counted = 0
    for i in range(total_hashes // per_key):
        signer = b"\x02" + sha256(f"thin spread {seed} {per_key} {i}".encode()).digest()
        counted += C1 >> max(0, F - best_bits(signer, per_key))
    return counted / (total_hashes * C1 / 2**F)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hashes", type=int, default=2**20, help="hashes per attack run")
    parser.add_argument("--seconds", type=float, default=2.0, help="hash-rate measurement time")
    args = parser.parse_args()
    rate = hash_rate(args.seconds)
    print(f"hash rate: {rate:,.0f} hashes/s on one core; one core-minute = {rate * 60 / 2**F:.2f} "
          f"full identities at F = {F} (2^{F} = {2**F:,} hashes each)")
    expected = {row["hashes_per_key"]: row["capacity_gain"] for row in json.loads(
        (Path(__file__).resolve().parent / "counting.json").read_text())["bounds"]["lottery"]}
    for per_key in (1, 256, 65_536):
        gains = [spread_attack(args.hashes, per_key, seed) for seed in (1, 2)]
        print(f"{args.hashes:,} hashes over {args.hashes // per_key:,} keys ({per_key:,} each): "
              f"counted capacity {', '.join(f'{g:.2f}' for g in gains)} × nominal "
              f"(expected {expected[per_key]:.2f})")


if __name__ == "__main__":
    main()
