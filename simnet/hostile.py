"""Invalid traffic a hostile peer sends, crafted with the real wire codec.

Each kind aims at a rule of the protocol and, if that rule failed, would move the price (huge
capacity or huge demand):

- `forged`: an announcement in an honest signer's name with a signature that does not verify;
- `replayed`: an honest announcement's exact bytes, published again by the hostile peer;
- `backdated`: signed by the hostile key, issued 400 s ago (beyond the 300 s freshness window);
- `oversize`: a validly signed announcement padded past the 2 KiB size limit of an announcement;
- `future`: signed by the hostile key, issued 120 s ahead (beyond the 30 s future limit);
- `implausible`: signed by the hostile key, capacity above max_node_tokens_per_s.

The hostile key never sends a valid announcement: a valid one would be legitimate market
content, not an attack on validation (the valid attacks on the price are `simnet.attacks`).
Bodies are wire v2 (protocols/market-v2.md §2): an announcement's 11 items end with the work
nonce and the credential (empty: an open network), so each kind is refused for the rule it aims
at and not for its version or its length.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import coincurve
import msgpack

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.wire import Announcement, encode
from neuroshard_p2p.wire.codec import MAX_SIZE
from neuroshard_p2p.wire.messages import KIND_ANNOUNCEMENT, VERSION

from simnet.scenario import HOSTILE_KINDS

BIG_DEMAND = 10**12


class HostileCrafter:
    """Builds the next invalid message of a hostile peer. Deterministic given its key, the
    honest messages it has captured and the time."""

    def __init__(self, key: coincurve.PrivateKey, config: MarketConfig,
                 kinds: Sequence[str] = HOSTILE_KINDS) -> None:
        unknown = [k for k in kinds if k not in HOSTILE_KINDS]
        if unknown or not kinds:
            raise ValueError(f"hostile kinds must be drawn from {HOSTILE_KINDS}, got {kinds!r}")
        self.key = key
        self.signer = key.public_key.format(compressed=True)
        self.config = config
        self.kinds = tuple(kinds)
        self.sent = 0
        self._seq = 1
        self._next = 0

    def next_kind(self) -> str:
        kind = self.kinds[self._next % len(self.kinds)]
        self._next += 1
        return kind

    def craft(self, kind: str, now: float, captured: Sequence[bytes],
              honest_signers: Sequence[bytes]) -> bytes:
        """One message of `kind` at `now`. `captured` are honest wire messages seen so far (for
        replays), `honest_signers` public keys to impersonate (for forgeries)."""
        now_ms = ms_of(now)
        self._seq += 1
        self.sent += 1
        if kind == "replayed" and captured:
            return captured[(self.sent * 7919) % len(captured)]
        if kind == "forged" and honest_signers:
            victim = honest_signers[(self.sent * 104729) % len(honest_signers)]
            body = msgpack.packb([VERSION, KIND_ANNOUNCEMENT, victim, now_ms, now_ms, 50_000, 0,
                                  BIG_DEMAND, 1000, 0, b""], use_bin_type=True)
            signature = hashlib.sha512(body).digest()[:64]  # 64 bytes that are not a signature
            return msgpack.packb([body, signature], use_bin_type=True)
        if kind == "backdated":
            return self._signed(now_ms - 400_000, 50_000, BIG_DEMAND)
        if kind == "future":
            return self._signed(now_ms + 120_000, 50_000, BIG_DEMAND)
        if kind == "implausible":
            return self._signed_raw(now_ms, self.config.max_node_tokens_per_s * 10, 0)
        # oversize (also the fallback of replayed/forged before anything was captured): a body
        # signed by the hostile key whose credential field carries more bytes than a whole
        # announcement may have (W8 refuses the size before W10 would look at the field).
        body = msgpack.packb([VERSION, KIND_ANNOUNCEMENT, self.signer, now_ms,
                              self._seq + now_ms, 50_000, 0, BIG_DEMAND, 1000, 0,
                              bytes(MAX_SIZE[KIND_ANNOUNCEMENT])], use_bin_type=True)
        signature = _compact_signature(self.key, body)
        return msgpack.packb([body, signature], use_bin_type=True)

    def _signed(self, issued_at_ms: int, capacity: int, demand: int) -> bytes:
        message = Announcement(signer=self.signer, issued_at_ms=max(0, issued_at_ms),
                               seq=self._seq + max(0, issued_at_ms), tokens_per_second=capacity,
                               min_price_nano=0, pending_tokens=demand, pending_requests=1_000_000)
        return encode(message, self.key)

    def _signed_raw(self, issued_at_ms: int, capacity: int, demand: int) -> bytes:
        """A correctly signed announcement whose capacity only the validator's plausibility rule
        refuses (it is not a wire-format error, so the encoder signs it)."""
        return self._signed(issued_at_ms, capacity, demand)


def _compact_signature(key: coincurve.PrivateKey, body: bytes) -> bytes:
    """ECDSA over SHA-256(body), compact r||s (what the wire's signature field holds)."""
    from coincurve.ecdsa import der_to_cdata, serialize_compact

    return serialize_compact(der_to_cdata(key.sign(body)))


__all__ = ["HostileCrafter", "BIG_DEMAND"]
