"""Identity work (protocols/market-v2.md §7.1): the cost of a key, checked the same by everyone.

`work_bits(signer, nonce)` is the number of leading zero bits of
SHA-256("neuroshard/work/v2" ‖ signer ‖ u64be(nonce)). A signer whose best nonce has fewer than
the charter's `identity_work_bits` (F) counts with weight 2^(bits − F): its counted capacity and
demand are shifted right by F − bits. Work cannot be backdated or borrowed, and the weight bought
per hash is 2^−F however many keys share the hashes, so splitting one budget over many keys gains
nothing. `grind` is pure (a range of nonces in, the best found out): a driver runs it in the
background and persists the result.
"""

from __future__ import annotations

from hashlib import sha256
from typing import NamedTuple

WORK_TAG = b"neuroshard/work/v2"
MAX_NONCE = (1 << 63) - 1


def work_bits(signer: bytes, nonce: int) -> int:
    """Leading zero bits of the work hash of (signer, nonce): 0..256."""
    digest = sha256(WORK_TAG + signer + nonce.to_bytes(8, "big")).digest()
    value = int.from_bytes(digest, "big")
    return 256 - value.bit_length()


def weight_shift(bits: int, required: int) -> int:
    """How far right a signer's counted capacity and demand are shifted: F − bits, at least 0."""
    return required - bits if bits < required else 0


def work_weight(bits: int, required: int) -> float:
    """What a key with `bits` of work weighs where `required` are asked: 2^(bits − F), at most 1."""
    return 2.0 ** -weight_shift(bits, required)


class Found(NamedTuple):
    nonce: int
    bits: int


def grind(signer: bytes, start: int, count: int, best: Found | None = None,
          stop_at: int = 256) -> Found:
    """Try nonces start … start + count − 1 and return the best (most bits; the first found on a
    tie), starting from `best`; stops early once `stop_at` bits are reached."""
    prefix = sha256(WORK_TAG + signer)
    found = best if best is not None else Found(start, work_bits(signer, start))
    end = min(start + count, MAX_NONCE + 1)
    for nonce in range(start, end):
        h = prefix.copy()
        h.update(nonce.to_bytes(8, "big"))
        bits = 256 - int.from_bytes(h.digest(), "big").bit_length()
        if bits > found.bits:
            found = Found(nonce, bits)
            if bits >= stop_at:
                break
    return found


__all__ = ["work_bits", "weight_shift", "work_weight", "grind", "Found", "WORK_TAG", "MAX_NONCE"]
