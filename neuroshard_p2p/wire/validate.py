"""Stateful validation of received wire messages, sans-IO: bytes and `now` in, a message or a
`WireError` out, and a counter per outcome.

`codec.decode` answers "is this a well-formed, correctly signed, fresh message?". A `Validator`
also remembers what it has accepted, so it can answer the questions that need history (the rules
V1…V9 of protocols/market-v1.md §6.2, checked in that order):

- V1 duplicate: the same wire bytes (message id) accepted before → ignore `duplicate`;
- V2 the stateless rules W1…W13 (size, encoding, fields, signature, freshness);
- V3 the message kind expected on this path (`kind`), V4 the author is the peer it came from
  (`wrong_signer`), V5 a job or receipt is addressed to us (`wrong_recipient`);
- V6 announcement capacity ≤ `max_node_tokens_per_s` → reject `implausible`;
- V7 announcement seq must grow per signer → ignore `seq_regression` / `duplicate`; a second,
  different message with the same (signer, seq) is equivocation: the first such one is accepted
  (the merged view needs it to resolve the conflict the same way everywhere) and counted, any
  further one is ignored `equivocation`;
- V8 announcements per signer: token bucket, burst 5, one token per tick (1 s) → reject
  `rate_limited`;
  (V7 and V8 are for live gossip: an announcement received through anti-entropy sync is history
  a peer retained, checked with `history=True`, which skips them);
- V9 receipts: tokens_served ≤ 2 × capacity × elapsed (elapsed counted as at least 1 s) → reject
  `implausible`; tokens per provider in the last 60 s ≤ `max_tokens_per_minute` → reject
  `tokens_per_minute`.

Only accepted messages change state, so a rejected or ignored message costs nothing but the
check. All memory is bounded: the seen-cache by `max_seen` ids, the per-signer state by
`max_signers` (the least recently accepted signer is forgotten first).
"""

from __future__ import annotations

import hashlib
from collections import deque
from typing import Callable

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import public_key_from_peer_id
from neuroshard_p2p.wire.codec import (
    MAX_AGE_S,
    MAX_ANY_SIZE,
    MAX_FUTURE_S,
    Buffer,
    _decode,
    _now_ms,
    check_freshness,
)
from neuroshard_p2p.wire.errors import IGNORE, REJECT, WireError
from neuroshard_p2p.wire.messages import Announcement, Job, Message, Receipt

#: Token bucket per announcement signer. An honest node announces at most once per tick (when its
#: state changed) plus a keep-alive every 20 s and a withdrawal at shutdown, so one token per tick
#: never starves it, and a burst of 5 absorbs gossip delivering a few of its messages at once.
RATE_BURST = 5.0
#: Seen-cache lifetime (s): as long as a message can stay fresh at the receiver (issued up to 30 s
#: ahead, accepted until 300 s old), so an exact replay is a `duplicate` for its whole useful life.
SEEN_TTL_S = MAX_AGE_S + MAX_FUTURE_S
#: Seen-cache capacity (ids). At 10,000 nodes re-announcing every 20 s (500 msg/s) it covers the
#: last ~65 s; an older replay of an announcement is still caught by the seq rule (V7).
MAX_SEEN = 32_768
#: Signers whose seq, bucket and recent receipt tokens are remembered (~200 bytes each).
MAX_SIGNERS = 50_000
#: Window of the per-provider token limit (max_tokens_per_minute).
TOKEN_WINDOW_S = 60
#: A receipt's elapsed time counts as at least this long in the capacity rule, so clock
#: granularity and tiny jobs served in a few milliseconds never look implausible.
RECEIPT_MIN_ELAPSED_MS = 1000

ACCEPTED = "accepted"
EQUIVOCATION = "equivocation"

#: Every counter a Validator keeps: "accepted", the extra "equivocation" evidence counter, and
#: every reason a check can fail with (all start at 0, so metrics show zeros, not gaps).
REASONS = (
    ACCEPTED, EQUIVOCATION, "duplicate", "malformed", "non_canonical", "oversize", "version",
    "kind", "bad_field", "bad_signature", "stale", "future", "wrong_signer", "wrong_recipient",
    "implausible", "seq_regression", "rate_limited", "tokens_per_minute",
)

_PEER_ID_PREFIX = bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21])


class _SignerState:
    """What a validator remembers about one signer."""

    __slots__ = ("seq", "msg_id", "equivocated_seq", "tokens", "refilled_at", "capacity",
                 "served")

    def __init__(self, now: float, burst: float) -> None:
        self.seq = -1                   # highest accepted announcement seq
        self.msg_id = b""               # id of the accepted announcement at that seq
        self.equivocated_seq = -1       # seq at which equivocation evidence was let through
        self.tokens = burst             # token bucket for announcements
        self.refilled_at = now
        self.capacity = 0               # last non-zero announced tokens_per_second
        self.served: deque[list[int]] | None = None  # [second, tokens] of recent receipts


class Validator:
    """Decode and validate received messages against what was accepted before.

    `capacity_of(signer)` (optional) gives a provider's announced tokens per second, e.g. from
    the merged view; `local_key` (optional) is this node's public key, to refuse jobs and
    receipts addressed to someone else. `rate_refill_s` defaults to the config's tick.
    """

    def __init__(self, config: MarketConfig, *,
                 capacity_of: Callable[[bytes], int | None] | None = None,
                 local_key: bytes | None = None,
                 rate_burst: float = RATE_BURST,
                 rate_refill_s: float | None = None,
                 seen_ttl_s: float = SEEN_TTL_S,
                 max_seen: int = MAX_SEEN,
                 max_signers: int = MAX_SIGNERS) -> None:
        if rate_burst < 1 or max_seen < 1 or max_signers < 1 or seen_ttl_s <= 0:
            raise ValueError("rate_burst, max_seen and max_signers must be >= 1, seen_ttl_s > 0")
        self.config = config
        self.capacity_of = capacity_of
        self.local_key = local_key
        self.rate_burst = float(rate_burst)
        self.rate_refill_s = float(config.tick_s if rate_refill_s is None else rate_refill_s)
        if self.rate_refill_s <= 0:
            raise ValueError("rate_refill_s must be > 0")
        self.seen_ttl_s = seen_ttl_s
        self.max_seen = max_seen
        self.max_signers = max_signers
        #: Outcome counters: "accepted", "equivocation" and one per WireError reason.
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        # id → expiry (receiver clock). Insertion order is expiry order while `now` grows.
        self._seen: dict[bytes, float] = {}
        # signer → state, least recently accepted first.
        self._signers: dict[bytes, _SignerState] = {}

    # -- public ---------------------------------------------------------------------------------

    def check(self, data: Buffer, now: float, *, kind: type | tuple[type, ...] | None = None,
              from_peer: bytes | str | None = None,
              provider_capacity: int | None = None, history: bool = False) -> Message:
        """Validate `data` received at `now` and return the message, or raise WireError.

        `kind`: the message class(es) expected on this path (gossip carries only Announcement);
        `from_peer`: the libp2p peer id (bytes or base58 text) that authored the message, i.e.
        the gossipsub `from` field or the remote peer of a direct stream, which must be the
        signer's; `provider_capacity`: for a receipt, the capacity the provider announced when
        the job was matched (otherwise `capacity_of`, then this validator's own memory, then
        `max_node_tokens_per_s`); `history`: the announcement came through anti-entropy sync,
        as part of the history a peer retained, so it may be older than what we hold and arrive
        in a batch: the seq and rate rules (V7, V8) do not refuse it, the rest applies."""
        try:
            message = self._check(data, now, kind, from_peer, provider_capacity, history)
        except WireError as error:
            self.counts[error.reason] = self.counts.get(error.reason, 0) + 1
            raise
        self.counts[ACCEPTED] += 1
        return message

    def last_seq(self, signer: bytes) -> int | None:
        """Highest announcement seq accepted from `signer`, if it is remembered."""
        state = self._signers.get(signer)
        return None if state is None or state.seq < 0 else state.seq

    @property
    def seen_size(self) -> int:
        """Ids in the seen-cache now (bounded by `max_seen`)."""
        return len(self._seen)

    @property
    def signers_tracked(self) -> int:
        """Signers remembered now (bounded by `max_signers`)."""
        return len(self._signers)

    # -- the rules ------------------------------------------------------------------------------

    def _check(self, data: Buffer, now: float, kind: type | tuple[type, ...] | None,
               from_peer: bytes | str | None, provider_capacity: int | None,
               history: bool) -> Message:
        if type(data) is not bytes and isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        if type(data) is bytes:
            if len(data) > MAX_ANY_SIZE:  # W1 before hashing: never hash a huge input
                raise WireError("oversize", REJECT, f"message is {len(data)} bytes (limit {MAX_ANY_SIZE})")
            msg_id: bytes | None = hashlib.sha256(data).digest()
            self._expire_seen(now)
            if msg_id in self._seen:  # V1
                raise WireError("duplicate", IGNORE, f"message {msg_id.hex()[:16]}… already seen")
        else:
            msg_id = None
        message = _decode(data, msg_id)  # V2: W1…W12
        check_freshness(message.issued_at_ms, now)  # V2: W13
        if kind is not None and not isinstance(message, kind):  # V3
            raise WireError("kind", REJECT, f"a {type(message).__name__} is not expected here")
        if from_peer is not None:  # V4
            self._check_author(message.signer, from_peer)
        if isinstance(message, Announcement):
            self._check_announcement(message, now, history)
        elif isinstance(message, Receipt):
            self._check_receipt(message, now, provider_capacity)
        else:
            self._check_job(message)
        self._remember(message.msg_id, now)
        return message

    def _check_author(self, signer: bytes, from_peer: bytes | str) -> None:
        try:
            if isinstance(from_peer, str):
                author = public_key_from_peer_id(from_peer)
            elif len(from_peer) == 39 and from_peer[:6] == _PEER_ID_PREFIX:
                author = bytes(from_peer[6:])
            else:
                author = b""
        except ValueError:
            author = b""
        if author != signer:
            raise WireError("wrong_signer", REJECT,
                            "the message's signer is not the peer it came from")

    def _check_job(self, job: Job) -> None:
        if self.local_key is not None and job.provider != self.local_key:  # V5
            raise WireError("wrong_recipient", REJECT, "job is addressed to another provider")

    def _check_announcement(self, announcement: Announcement, now: float, history: bool) -> None:
        limit = self.config.max_node_tokens_per_s
        if announcement.tokens_per_second > limit:  # V6
            raise WireError("implausible", REJECT,
                            f"capacity {announcement.tokens_per_second} tokens/s is above "
                            f"max_node_tokens_per_s = {limit}")
        state = self._signers.get(announcement.signer)
        equivocation = False
        if state is not None:  # V7
            if announcement.seq < state.seq and not history:
                raise WireError("seq_regression", IGNORE,
                                f"seq {announcement.seq} is below the signer's {state.seq}")
            if announcement.seq == state.seq:
                if announcement.msg_id == state.msg_id:
                    raise WireError("duplicate", IGNORE, f"seq {announcement.seq} already seen")
                if state.equivocated_seq == announcement.seq and not history:
                    raise WireError("equivocation", IGNORE,
                                    f"signer already equivocated at seq {announcement.seq}")
                equivocation = True
            if not history:
                self._take_token(state, now)  # V8
        else:
            state = self._new_signer(announcement.signer, now)
            if not history:
                state.tokens -= 1.0
        if equivocation:
            state.equivocated_seq = announcement.seq
            self.counts[EQUIVOCATION] += 1
        elif announcement.seq > state.seq:
            state.seq = announcement.seq
            state.msg_id = announcement.msg_id
        if announcement.tokens_per_second and announcement.seq == state.seq:  # not old history
            state.capacity = announcement.tokens_per_second
        self._touch(announcement.signer, state)

    def _take_token(self, state: _SignerState, now: float) -> None:
        elapsed = now - state.refilled_at
        if elapsed > 0:
            state.tokens = min(self.rate_burst, state.tokens + elapsed / self.rate_refill_s)
            state.refilled_at = now
        if state.tokens < 1.0:
            raise WireError("rate_limited", REJECT,
                            f"signer sends more than {self.rate_burst:.0f} announcements at once "
                            f"or one per {self.rate_refill_s:g} s")
        state.tokens -= 1.0

    def _check_receipt(self, receipt: Receipt, now: float, provider_capacity: int | None) -> None:
        if self.local_key is not None and receipt.gateway != self.local_key:  # V5
            raise WireError("wrong_recipient", REJECT, "receipt is for a job of another gateway")
        config = self.config
        state = self._signers.get(receipt.signer)
        capacity = provider_capacity
        if capacity is None and self.capacity_of is not None:
            capacity = self.capacity_of(receipt.signer)
        if capacity is None and state is not None and state.capacity:
            capacity = state.capacity
        if capacity is None:
            capacity = config.max_node_tokens_per_s
        capacity = max(0, min(int(capacity), config.max_node_tokens_per_s))
        elapsed_ms = max(receipt.ended_at_ms - receipt.started_at_ms, RECEIPT_MIN_ELAPSED_MS)
        if receipt.tokens_served * 1000 > 2 * capacity * elapsed_ms:  # V9
            raise WireError("implausible", REJECT,
                            f"{receipt.tokens_served} tokens in {elapsed_ms} ms is more than "
                            f"2 × {capacity} tokens/s allows")
        second = _now_ms(now) // 1000
        served = state.served if state is not None else None
        recent = 0
        if served is not None:
            while served and served[0][0] <= second - TOKEN_WINDOW_S:
                served.popleft()
            recent = sum(tokens for _, tokens in served)
        if recent + receipt.tokens_served > config.max_tokens_per_minute:  # V9
            raise WireError("tokens_per_minute", REJECT,
                            f"provider would reach {recent + receipt.tokens_served} tokens in "
                            f"{TOKEN_WINDOW_S} s (max_tokens_per_minute = "
                            f"{config.max_tokens_per_minute})")
        if state is None:
            state = self._new_signer(receipt.signer, now)
        if state.served is None:
            state.served = deque()
        if state.served and state.served[-1][0] == second:
            state.served[-1][1] += receipt.tokens_served  # one entry per second: ≤ 61 entries
        else:
            state.served.append([second, receipt.tokens_served])
        self._touch(receipt.signer, state)

    # -- bounded memory -------------------------------------------------------------------------

    def _new_signer(self, signer: bytes, now: float) -> _SignerState:
        state = _SignerState(now, self.rate_burst)
        self._signers[signer] = state
        while len(self._signers) > self.max_signers:
            del self._signers[next(iter(self._signers))]
        return state

    def _touch(self, signer: bytes, state: _SignerState) -> None:
        """Move `signer` to the most recently accepted end (eviction takes the other end)."""
        signers = self._signers
        signers.pop(signer, None)
        signers[signer] = state

    def _remember(self, msg_id: bytes, now: float) -> None:
        seen = self._seen
        seen[msg_id] = now + self.seen_ttl_s
        while len(seen) > self.max_seen:
            del seen[next(iter(seen))]

    def _expire_seen(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > now:
                return
            del seen[oldest]


__all__ = ["Validator", "REASONS", "RATE_BURST", "SEEN_TTL_S", "MAX_SEEN", "MAX_SIGNERS",
           "TOKEN_WINDOW_S", "RECEIPT_MIN_ELAPSED_MS", "ACCEPTED", "EQUIVOCATION"]
