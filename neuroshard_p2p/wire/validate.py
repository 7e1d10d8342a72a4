"""Stateful validation of received announcements, sans-IO: bytes and `now` in, an announcement
or a `WireError` out, and a counter per outcome.

`codec.decode` answers "is this a well-formed, correctly signed, fresh message?". A `Validator`
also remembers what it has accepted, so it can answer the questions that need history (the rules
of protocols/market-v2.md §6.2, checked in this order):

- V1 duplicate: the same wire bytes (message id) accepted before → ignore `duplicate`;
- V2 the stateless rules W1…W13 (size, encoding, fields, signature, freshness);
- V3 only announcements travel where a validator is used (the gossip topic, sync responses):
  any other kind → reject `kind`; V4 the author is the peer it came from (`wrong_signer`);
- V6 announcement capacity ≤ `max_node_tokens_per_s` → reject `implausible`;
- V6c (revision 2.1) an announcement carries its bid histogram `demand_by_limit` exactly when
  the network's charter says curve = "clearing" → else reject `bad_field`;
- V6m membership (members networks): a credential of one of the charter's authorities naming
  the signer, in the roles it acts in → reject `not_member`; an open network's announcements
  carry no credential (`bad_field`). A members network's RevocationList (kind 5) passes V1–V3,
  comes from an authority (`not_member`) and must be newer than the one held from that authority
  (`seq_regression` / `duplicate`, ignore);
- V7 announcement seq must grow per signer → ignore `seq_regression` / `duplicate`; a second,
  different message with the same (signer, seq) is equivocation: the first such one is accepted
  (the merged view needs it to resolve the conflict the same way everywhere) and counted, any
  further one is ignored `equivocation`;
- V8 announcements and revocation lists per signer: token bucket, burst 5, one token per tick
  (1 s) → reject `rate_limited` (an authority that also announces has one bucket for both);
  (V7 and V8 are for live gossip: an announcement received through anti-entropy sync is history
  a peer retained, checked with `history=True`, which skips them).

Jobs and receipts never come through here: they travel on the job stream, where the provider
admits a job (`wire.decode`, then `node.jobs.ProviderDesk.admit`) and the gateway accepts a receipt
against the job it sent (`ledger.checks.check_receipt`, with the provider's history in the ledger:
plausibility, the per-minute limit; spec §9).

Only accepted messages change state, so a rejected or ignored message costs nothing but the
check. All memory is bounded: the seen-cache by `max_seen` ids, the per-signer state by
`max_signers` (the least recently accepted signer is forgotten first).
"""

from __future__ import annotations

import math
from collections import deque
from hashlib import sha256 as _sha256
from typing import Any, Callable

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import public_key_from_peer_id
from neuroshard_p2p.wire.codec import (
    _MAX_AGE_MS,
    _MAX_FUTURE_MS,
    MAX_ANY_SIZE,
    MAX_AGE_S,
    MAX_FUTURE_S,
    MAX_SIZE,
    Buffer,
    _decode,
    _now_ms,
    check_freshness,
)
from neuroshard_p2p.wire.errors import IGNORE, REJECT, WireError
from neuroshard_p2p.wire.membership import Admission, check_announcement, check_revocations
from neuroshard_p2p.wire.messages import (
    KIND_ANNOUNCEMENT,
    KIND_RECEIPT,
    Announcement,
    Message,
    RevocationList,
)

#: How a Validator applies the stateless rules W1…W12: (the input, its SHA-256 if already
#: computed, else None) → the message, or WireError. A pure function of the bytes, so a caller
#: that validates the same bytes many times (the simulator: every peer) may pass a memoising one.
Decoder = Callable[[Any, "bytes | None"], Message]
#: The codec's decoder, every Validator's default.
decode_stateless: Decoder = _decode

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
#: Signers whose seq and token bucket are remembered (~150 bytes each).
MAX_SIGNERS = 50_000

ACCEPTED = "accepted"
EQUIVOCATION = "equivocation"

#: Every counter a Validator keeps: "accepted", the extra "equivocation" evidence counter, and
#: every reason a check can fail with (all start at 0, so metrics show zeros, not gaps).
REASONS = (
    ACCEPTED, EQUIVOCATION, "duplicate", "malformed", "non_canonical", "oversize", "version",
    "kind", "bad_field", "bad_signature", "stale", "future", "wrong_signer", "implausible",
    "seq_regression", "rate_limited", "not_member",
)

_PEER_ID_PREFIX = bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21])
_PEER_ID_SIZE = len(_PEER_ID_PREFIX) + 33

#: Seen-cache keys: an accepted announcement's bytes are its own key: the same bytes are the same
#: message id (SHA-256 of the bytes) without hashing them, a bytes object caches its dict hash,
#: and in the simulator every peer's cache refers to the one shared wire object instead of holding
#: its own digest. Only announcements are accepted, so an input of another size was never seen
#: and skips the lookup (it fails V2 or V3).
_RAW_KEY_MIN = 33
_RAW_KEY_MAX = MAX_SIZE[KIND_ANNOUNCEMENT]
_isfinite = math.isfinite


class _SignerState:
    """What a validator remembers about one signer."""

    __slots__ = ("seq", "msg_id", "equivocated_seq", "tokens", "refilled_at")

    def __init__(self, now: float, burst: float) -> None:
        self.seq = -1                   # highest accepted announcement seq
        self.msg_id = b""               # id of the accepted announcement at that seq
        self.equivocated_seq = -1       # seq at which equivocation evidence was let through
        self.tokens = burst             # token bucket for announcements
        self.refilled_at = now


class Validator:
    """Decode and validate received announcements against what was accepted before.

    `rate_refill_s` defaults to the config's tick. `decode` applies the stateless rules (see
    `Decoder`); the default is the codec's.
    """

    def __init__(self, config: MarketConfig, *,
                 decode: Decoder = decode_stateless,
                 rate_burst: float = RATE_BURST,
                 rate_refill_s: float | None = None,
                 seen_ttl_s: float = SEEN_TTL_S,
                 max_seen: int = MAX_SEEN,
                 max_signers: int = MAX_SIGNERS,
                 admission: Admission | None = None) -> None:
        if rate_burst < 1 or max_seen < 1 or max_signers < 1 or seen_ttl_s <= 0:
            raise ValueError("rate_burst, max_seen and max_signers must be >= 1, seen_ttl_s > 0")
        self.config = config
        #: Revision 2.1: on a clearing network (charter curve "clearing") every announcement
        #: carries the bid histogram, on any other none (V6c).
        self._bids_wanted = config.curve == "clearing"
        self._decode = decode
        #: None: an open network. Otherwise the members network's charter hash and authorities.
        self.admission = admission
        # authority → (seq, id) of the newest revocation list accepted from it
        self._lists: dict[bytes, tuple[int, bytes]] = {}
        self.rate_burst = float(rate_burst)
        self.rate_refill_s = float(config.tick_s if rate_refill_s is None else rate_refill_s)
        if self.rate_refill_s <= 0:
            raise ValueError("rate_refill_s must be > 0")
        self.seen_ttl_s = seen_ttl_s
        self.max_seen = max_seen
        self.max_signers = max_signers
        #: Outcome counters: "accepted", "equivocation" and one per WireError reason.
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        # id → expiry (receiver clock); see _RAW_KEY_MIN for what an id is. `_seen_ids` holds
        # the same ids in the order they were accepted, which is expiry order while `now` grows:
        # expiry and the `max_seen` bound both take the oldest, from its left end, in O(1) (the
        # dict's own first key costs a scan over the slots its deletions left).
        self._seen: dict[bytes, float] = {}
        self._seen_ids: deque[bytes] = deque()
        # signer → state, least recently accepted first.
        self._signers: dict[bytes, _SignerState] = {}

    # -- public ---------------------------------------------------------------------------------

    def check(self, data: Buffer, now: float, *, from_peer: bytes | str | None = None,
              history: bool = False) -> "Announcement | RevocationList":
        """Validate `data` received at `now` and return the announcement, or raise WireError.

        `from_peer`: the libp2p peer id (bytes or base58 text) that authored the message, i.e.
        the gossipsub `from` field, which must be the signer's; `history`: the announcement came
        through anti-entropy sync, as part of the history a peer retained, so it may be older than
        what we hold and arrive in a batch: the seq and rate rules (V7, V8) do not refuse it, the
        rest applies."""
        # The hot path of every peer (each gossip message): the rules run in the order of the
        # module docstring, inlined where a call would cost more than the rule.
        try:
            if type(data) is not bytes and isinstance(data, (bytearray, memoryview)):
                data = bytes(data)
            if type(data) is bytes:
                size = len(data)
                if size > MAX_ANY_SIZE:  # W1 before hashing: never hash a huge input
                    raise WireError("oversize", REJECT,
                                    f"message is {size} bytes (limit {MAX_ANY_SIZE})")
                seen = self._seen
                seen_ids = self._seen_ids
                if _RAW_KEY_MIN <= size <= _RAW_KEY_MAX:
                    key: bytes | None = data
                    if seen_ids and not seen[seen_ids[0]] > now:
                        self._expire_seen(now)
                    if data in seen:  # V1
                        raise WireError("duplicate", IGNORE,
                                        f"message {_sha256(data).hexdigest()[:16]}… already seen")
                else:
                    key = None
            else:
                key = None
            message = self._decode(data, None)  # V2: W1…W12 (it hashes accepted bytes once)
            # V2: W13 (check_freshness, computed here; it raises the exact error when one is due)
            issued_at_ms = message.issued_at_ms
            # timeline.ms_of, inlined on the hot path (it raises for a non-finite now)
            age_ms = (round(now * 1000) if _isfinite(now) else _now_ms(now)) - issued_at_ms
            if ((age_ms > _MAX_AGE_MS or -age_ms > _MAX_FUTURE_MS)
                    and message.KIND <= KIND_RECEIPT):  # W13 is for kinds 1–3 (§6.1)
                try:
                    check_freshness(issued_at_ms, now)
                except WireError as error:  # signed, so evidence of the signer's clock
                    error.signed_time = (message.signer, issued_at_ms,
                                         getattr(message, "work_nonce", 0))
                    raise
            if type(message) is not Announcement:  # V3
                if type(message) is RevocationList and self.admission is not None:
                    self._check_revocations(message, now, history)
                    self._remember_slowly(message.msg_id, now)
                    self.counts[ACCEPTED] += 1
                    return message
                raise WireError("kind", REJECT, f"a {type(message).__name__} is not expected here "
                                                "(only announcements and revocation lists)")
            if from_peer is not None:  # V4: the peer id of the signer's key is prefix ‖ key
                if (type(from_peer) is not bytes or len(from_peer) != _PEER_ID_SIZE
                        or from_peer != _PEER_ID_PREFIX + message.signer):
                    self._check_author(message.signer, from_peer)  # raises unless it matches
            self._check_announcement(message, now, history)
        except WireError as error:
            counts = self.counts
            counts[error.reason] = counts.get(error.reason, 0) + 1
            raise
        # accepted: remember its id (V1)
        if key is not None:  # always, for an announcement of at most 2,048 bytes
            seen[key] = now + self.seen_ttl_s
            seen_ids.append(key)
            if len(seen_ids) > self.max_seen:
                self._forget_oldest_seen()
        else:  # not reached: _decode refuses what is not bytes
            self._remember_slowly(message.msg_id, now)
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

    def _check_announcement(self, announcement: Announcement, now: float, history: bool) -> None:
        tokens_per_second = announcement.tokens_per_second
        limit = self.config.max_node_tokens_per_s
        if tokens_per_second > limit:  # V6
            raise WireError("implausible", REJECT,
                            f"capacity {tokens_per_second} tokens/s is above "
                            f"max_node_tokens_per_s = {limit}")
        if (announcement.demand_by_limit is not None) != self._bids_wanted:  # V6c
            raise WireError("bad_field", REJECT,
                            "a clearing network's announcements carry demand_by_limit (12 items)"
                            if self._bids_wanted else
                            "demand_by_limit exists only on clearing networks (11 items here)")
        if self.admission is not None or announcement.credential:  # V6m
            member = check_announcement(announcement, self.admission)
            if member is not None and announcement.member is not member:
                # The decoded credential rides along to the view (its caps and expiry count
                # there); the message is fresh from the decoder and holds nothing else yet.
                object.__setattr__(announcement, "member", member)
        signer = announcement.signer
        seq = announcement.seq
        signers = self._signers
        state = signers.get(signer)
        equivocation = False
        if state is not None:
            if seq <= state.seq:  # V7
                if seq < state.seq and not history:
                    raise WireError("seq_regression", IGNORE,
                                    f"seq {seq} is below the signer's {state.seq}")
                if seq == state.seq:
                    if announcement.msg_id == state.msg_id:
                        raise WireError("duplicate", IGNORE, f"seq {seq} already seen")
                    if state.equivocated_seq == seq and not history:
                        raise WireError("equivocation", IGNORE,
                                        f"signer already equivocated at seq {seq}")
                    equivocation = True
            if not history:  # V8: token bucket
                elapsed = now - state.refilled_at
                if elapsed > 0:
                    tokens = state.tokens + elapsed / self.rate_refill_s
                    state.tokens = tokens if tokens < self.rate_burst else self.rate_burst
                    state.refilled_at = now
                elif elapsed < 0:  # our clock was set back: refill from here, not from then
                    state.refilled_at = now
                if state.tokens < 1.0:
                    raise WireError("rate_limited", REJECT,
                                    f"signer sends more than {self.rate_burst:.0f} announcements "
                                    f"at once or one per {self.rate_refill_s:g} s")
                state.tokens -= 1.0
            # accepted: the most recently accepted signer moves to the end (eviction takes the
            # other end)
            del signers[signer]
            signers[signer] = state
        else:
            state = self._new_signer(signer, now)  # at the most recent end already
            if not history:
                state.tokens -= 1.0
        if equivocation:
            state.equivocated_seq = seq
            self.counts[EQUIVOCATION] += 1
        elif seq > state.seq:
            state.seq = seq
            state.msg_id = announcement.msg_id

    def _check_revocations(self, revocations: RevocationList, now: float, history: bool) -> None:
        check_revocations(revocations, self.admission)
        held = self._lists.get(revocations.signer)
        if held is not None:
            seq, msg_id = held
            if revocations.msg_id == msg_id:
                raise WireError("duplicate", IGNORE, "revocation list already held")
            if (revocations.seq, revocations.msg_id) < (seq, msg_id):
                raise WireError("seq_regression", IGNORE,
                                f"revocation list seq {revocations.seq} is not above the held {seq}")
        self._take_token(revocations.signer, now, history)
        self._lists[revocations.signer] = (revocations.seq, revocations.msg_id)

    def _take_token(self, signer: bytes, now: float, history: bool) -> None:
        """V8 for a revocation list (§6.3): the authority's token bucket, the same one its
        announcements use, so lists cannot flood where announcements may not. (Announcements
        inline the same rule on their hot path, in `_check_announcement`.)"""
        state = self._signers.get(signer)
        if state is None:
            state = self._new_signer(signer, now)
            if not history:
                state.tokens -= 1.0
            return
        if not history:
            elapsed = now - state.refilled_at
            if elapsed > 0:
                state.tokens = min(self.rate_burst, state.tokens + elapsed / self.rate_refill_s)
                state.refilled_at = now
            elif elapsed < 0:  # our clock was set back: refill from here, not from then
                state.refilled_at = now
            if state.tokens < 1.0:
                raise WireError("rate_limited", REJECT,
                                f"authority sends more than {self.rate_burst:.0f} messages at once "
                                f"or one per {self.rate_refill_s:g} s")
            state.tokens -= 1.0
        del self._signers[signer]
        self._signers[signer] = state

    # -- bounded memory -------------------------------------------------------------------------

    def _new_signer(self, signer: bytes, now: float) -> _SignerState:
        state = _SignerState(now, self.rate_burst)
        self._signers[signer] = state
        while len(self._signers) > self.max_signers:
            del self._signers[next(iter(self._signers))]
        return state

    def _forget_oldest_seen(self) -> None:
        seen, ids = self._seen, self._seen_ids
        while len(ids) > self.max_seen:
            del seen[ids.popleft()]

    def _expire_seen(self, now: float) -> None:
        seen, ids = self._seen, self._seen_ids
        while ids and not seen[ids[0]] > now:
            del seen[ids.popleft()]

    def _remember_slowly(self, key: bytes, now: float) -> None:
        """Remember `key` whether or not it is in the cache already (then only its expiry
        changes, its place does not)."""
        if key not in self._seen:
            self._seen_ids.append(key)
        self._seen[key] = now + self.seen_ttl_s
        self._forget_oldest_seen()


__all__ = ["Validator", "Decoder", "decode_stateless", "REASONS", "RATE_BURST", "SEEN_TTL_S",
           "MAX_SEEN", "MAX_SIGNERS", "ACCEPTED", "EQUIVOCATION"]
