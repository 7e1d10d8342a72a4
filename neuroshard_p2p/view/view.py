"""The merged market view: a CRDT of signed announcements, and the price every peer agrees on.

A `MarketView` is the set of announcements a peer has heard, minus what the retention rule lets it
forget (see `register`). Everything else — who counts, supply, demand, the price at a tick — is a
pure function of that set and the `MarketConfig`, so two peers holding the same announcements
compute the same price, bit for bit, and a late joiner needs nothing but the announcements.

Registers. One announcement carries a node's capacity *and* its queued demand, so the issue's
"one last-writer-wins register per signer and kind" is one register per signer, ordered by seq.

Time. The view reads no clock. Instants are integer milliseconds of the signed timeline
(`*_ms` methods); the methods taking `now` take seconds since the epoch (float) and round to the
millisecond. `tick_s`, `settle_delay_s` and `capacity_timeout_s` must be whole milliseconds.

Price. Tick j is evaluated on the view as of instant j·tick − settle_delay (settle_delay lets a
message reach everyone before it counts); the price at tick k is the core's smoothed price over
the targets of ticks k−W+1 … k (`core.pricing.smoothed_price`). Network totals are kept as step
functions of time (`steps.StepSum`), so a price costs O(W log n), not O(signers × W).

Join. `merge_message` and `merge` are commutative, associative and idempotent as long as the view
holds fewer than `max_signers` signers. Past that bound (the only way memory could grow without
limit), the signer silent longest — smallest newest issued_at, then smallest public key — is
evicted; which signers a full view holds can then depend on arrival order. Merge stays commutative
and idempotent, and two views that exchange their state still agree.

Bounded influence (protocol v2 §7.1). A signer moves the totals only through its own register:
its capacity counts at most `max_node_tokens_per_s`, its pending requests at most
`max_signer_pending_requests`, its pending tokens at most `max_tokens_per_minute` per counted
request and `max_signer_pending_tokens` in all; a member's credential caps each further. A key
with fewer than `identity_work_bits` bits of work counts with weight 2^(bits − F): its quantities
are shifted right by the difference (`wire.work`). A member counts until its credential expires or
a held revocation list revokes it. The validator bounds the rest (rates, seq, timestamps, who is a
member).

Expiry (v2 §7.1). `expire_before(t)` drops every announcement issued before t; a node calls it
every tick with its clock minus the 300 s maximum age, so its view never keeps what another peer's
freshness rule would refuse, and two honest views converge again after any hostile input.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import heapq
from bisect import bisect_right
from dataclasses import dataclass
from typing import Iterable

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import (DEMAND_BUCKETS, clearing_price_nano, smoothed_price,
                                         target_price_nano, utilization)
from neuroshard_p2p.timeline import ms_of, whole_ms
from neuroshard_p2p.view.recon import ReconSet
from neuroshard_p2p.view.register import Register, Segment, order_key
from neuroshard_p2p.view.steps import LANE_BITS, StepSum, pack, unpack
from neuroshard_p2p.wire import MAX_FUTURE_S, SYNC_BUCKETS, Announcement
from neuroshard_p2p.wire.codec import MAX_U63
from neuroshard_p2p.wire.messages import RevocationList
from neuroshard_p2p.wire.work import weight_shift, work_bits

#: Anti-entropy buckets: a signer falls in bucket SHA-256(signer)[0] >> 4 (the sync frames' layout).
BUCKETS = SYNC_BUCKETS
#: Default limit on signers held. Memory is about 0.86 KB per retained announcement, so at most
#: max_signers × max_per_signer × 0.86 KB (3.6 GB with the defaults, for a flood of keys each
#: filling its register; an honest node re-announcing every 20 s keeps about 7).
DEFAULT_MAX_SIGNERS = 100_000
#: Announcements kept per signer beyond one per tick of the price window (see
#: `default_max_per_signer`): the validator's burst of 5, the one before the window, and slack.
EXTRA_PER_SIGNER = 8


def default_max_per_signer(config: MarketConfig) -> int:
    """How many announcements a register keeps by default: the validator lets a signer announce
    at most once per tick after a burst, so W + settle-delay ticks + `EXTRA_PER_SIGNER` covers
    every announcement an honest node can make over a price window (42 with the defaults).
    The ceiling is taken on integer ms (protocol §7.1): in float seconds 1.1 / 0.1 is
    11.000000000000002, whose ceiling would keep one announcement more than peers expect."""
    settle_ms = whole_ms(config.settle_delay_s, "settle_delay_s")
    tick_ms = whole_ms(config.tick_s, "tick_s")
    return config.window_ticks + -(-settle_ms // tick_ms) + EXTRA_PER_SIGNER

_DIGEST_TAG = b"neuroshard/view/v2"
_BUCKET_TAG = b"neuroshard/view-bucket/v2"
_REVOCATIONS_TAG = b"neuroshard/revocations/v2"
_NEVER = 1 << 63
_LANE_MASK = (1 << LANE_BITS) - 1
_MISSING = object()
_SUM_MOD = 1 << 256
_PUBKEY_LEN = 33
_ID_LEN = 32


class MergeOutcome(enum.Enum):
    """What merging one announcement did to the view."""

    NEW = "new"                    # first announcement of a signer the view did not hold
    NEWER = "newer"                # retained; now the signer's newest
    OLDER = "older"                # retained; fills the signer's history behind its newest
    EQUIVOCATION = "equivocation"  # retained; same seq as another held message: signer marked
    DUPLICATE = "duplicate"        # already held: nothing changed
    STALE = "stale"                # older than what the register keeps: nothing changed
    EVICTED = "evicted"            # view full and this signer is the longest silent: not held
    INVALID = "invalid"            # not a well-formed announcement: nothing changed

    @property
    def changed(self) -> bool:
        """Whether the view (its digest) changed."""
        return self in (MergeOutcome.NEW, MergeOutcome.NEWER, MergeOutcome.OLDER,
                        MergeOutcome.EQUIVOCATION)


@dataclass(frozen=True)
class TickPrice:
    """The price at tick `tick` (nano-NEURO per 1M tokens) and the market state it came from:
    `target_nano`, `supply` (tokens/s) and `demand` (tokens waiting) of that tick alone."""

    tick: int
    price_nano: int
    target_nano: int
    supply: int
    demand: int


@dataclass(frozen=True)
class MarketStats:
    """Network totals at one instant, over the announcements that count then."""

    at_ms: int
    available_nodes: int          # counted signers offering capacity > 0
    counted_nodes: int            # counted signers (capacity or not)
    supply_tokens_per_sec: int
    demand_tokens_waiting: int
    pending_requests: int
    utilization: float            # inf when demand waits on no supply


@dataclass(frozen=True)
class CountedOffer:
    """Capacity one signer offers at an instant, as the view counts it from the signer's counted
    announcement (capacity capped at `max_node_tokens_per_s` and a member's credential, not
    shifted by the work ramp: routing is each gateway's own): what a gateway matches against,
    turned into the book's `RestingOffer` by the jobs layer."""

    signer: bytes
    tokens_per_second: int
    min_price_nano: int
    issued_at_ms: int


@functools.lru_cache(maxsize=1 << 17)  # more than DEFAULT_MAX_SIGNERS: ~20 MB when full
def bucket_of(signer: bytes) -> int:
    """The anti-entropy bucket of a signer: the first byte of SHA-256(signer) scaled to BUCKETS
    (its top 4 bits for 16 buckets, as the sync frames specify)."""
    return hashlib.sha256(signer).digest()[0] * BUCKETS // 256


class SharedFacts:
    """What a view derives from one announcement alone — that it is well formed, its packed
    weight (`MarketView._weigh`), its id as an integer, its `order_key`, its segments and steps
    (`AnnouncementFacts`) — and the smoothed price of a window of targets, memoised for the views
    of one config.

    A node has one view and gains nothing from this. A simulator holds thousands of views that
    all merge the same announcement objects (its decoder is shared too): it gives every view one
    `SharedFacts`, and each view then holds the same objects instead of its own copies (a third
    less memory per simulated peer, a fifth less CPU per run; docs/scaling.md). An entry is used
    only for the very object it was computed from, with the same member credential attached (the
    validator attaches it before the merge), so a different object with the same id is always
    checked afresh. At most `max_entries` are kept (all are dropped when full: the next merges
    recompute them)."""

    __slots__ = ("config", "max_entries", "entries", "prices")

    def __init__(self, config: MarketConfig, max_entries: int = 200_000) -> None:
        self.config = config
        self.max_entries = max_entries
        #: msg_id → what every view derives from that announcement (see `AnnouncementFacts`)
        self.entries: dict[bytes, AnnouncementFacts] = {}
        #: The smoothed price of a window of targets (`MarketView.price_at_tick`): views that
        #: agree compute the same 32-step fold, once here.
        self.prices: dict[tuple[int, ...], int] = {}

    def learn(self, message: Announcement, weight: int, timeout_ms: int) -> "AnnouncementFacts":
        """Remember the facts of a well-formed `message` whose weight is `weight`."""
        entries = self.entries
        if len(entries) >= self.max_entries:
            entries.clear()
        facts = entries[message.msg_id] = AnnouncementFacts(message, weight, timeout_ms)
        return facts


class AnnouncementFacts:
    """One announcement's share of a `SharedFacts`: objects every view would otherwise build
    for itself (same values, one copy). `cut` and `cut_delta` are filled by the first view
    that merges this announcement after its signer's previous one: that one's segment cut where
    this one starts, and the step at this one's start (this weight minus the previous one)."""

    __slots__ = ("message", "member", "weight", "neg_weight", "id_int", "key", "segment", "cut",
                 "cut_delta")

    def __init__(self, message: Announcement, weight: int, timeout_ms: int) -> None:
        start = message.issued_at_ms
        self.message = message
        self.member = message.member
        self.weight = weight
        self.neg_weight = -weight
        self.id_int = int.from_bytes(message.msg_id, "big")
        self.key = (start, message.seq, message.msg_id)
        self.segment = Segment(start, start + timeout_ms, weight, message)
        self.cut: Segment | None = None
        self.cut_delta = 0


class MarketView:
    """The merged view of the market's announcements (sans-IO: time is always an argument).

    Messages given to the view must already be validated (signature checked); the view trusts
    their content and ids, but a malformed object is refused (`MergeOutcome.INVALID`), never
    raised on.
    """

    def __init__(self, config: MarketConfig, max_signers: int = DEFAULT_MAX_SIGNERS,
                 max_per_signer: int | None = None, facts: SharedFacts | None = None) -> None:
        if max_per_signer is None:
            max_per_signer = default_max_per_signer(config)
        if max_signers < 1:
            raise ValueError("max_signers must be >= 1")
        if max_per_signer < 2:
            raise ValueError("max_per_signer must be >= 2 (an equivocation needs two messages)")
        if facts is not None and facts.config != config:
            raise ValueError("shared facts belong to views of one config")
        self.config = config
        #: Per-announcement facts shared with other views of this config (see `SharedFacts`).
        self._facts = facts
        self.max_signers = max_signers
        self.max_per_signer = max_per_signer
        self.tick_ms = whole_ms(config.tick_s, "tick_s")
        if self.tick_ms < 1:
            raise ValueError("tick_s must be at least 1 ms")
        self.settle_ms = whole_ms(config.settle_delay_s, "settle_delay_s")
        self.timeout_ms = whole_ms(config.capacity_timeout_s, "capacity_timeout_s")
        #: How far behind a signer's newest announcement its history is kept: enough to answer
        #: every instant of the last W ticks before the settle delay, for announcements up to
        #: capacity_timeout old, with the signer's clock up to MAX_FUTURE_S ahead of ours.
        self.horizon_ms = (config.window_ticks * self.tick_ms + self.settle_ms + self.timeout_ms
                           + ms_of(MAX_FUTURE_S))
        self._capacity_cap = config.max_node_tokens_per_s
        self._tokens_per_request_cap = config.max_tokens_per_minute
        self._requests_cap = config.max_signer_pending_requests
        self._signer_tokens_cap = config.max_signer_pending_tokens
        self._work_bits = config.identity_work_bits
        #: Revision 2.1: the price is the clearing price of asks and bids (§7.7).
        self._clearing = config.clearing
        self._bids_cache: dict[bytes, tuple[tuple[int, int], ...] | None] = {}
        # Revocation lists: the newest of each authority, and per member the earliest instant
        # any of them revokes it from.
        self._lists: dict[bytes, RevocationList] = {}
        self._revoked_from: dict[bytes, int] = {}
        self._revocations_digest: bytes | None = None
        # (oldest issued_at_ms, signer) of every register, lazily (see `expire_before`).
        self._oldest: list[tuple[int, bytes]] = []

        self._registers: dict[bytes, Register] = {}
        self._held: set[bytes] = set()                       # msg ids retained
        # (newest_ms, signer) of every register, as a heap with stale entries skipped lazily
        # (see `_silent_first`): pushing is O(log n), and no entry is ever searched for.
        self._silence: list[tuple[int, bytes]] = []
        self._bucket_signers: list[set[bytes]] = [set() for _ in range(BUCKETS)]
        self._bucket_count = [0] * BUCKETS
        self._bucket_sum = [0] * BUCKETS
        self._bucket_digest: list[bytes | None] = [None] * BUCKETS
        # Block j of the step sums starts exactly at tick j's evaluation instant.
        self._steps = StepSum(self.tick_ms, self.settle_ms)
        self._tick_cache: dict[int, tuple[int, int, int]] = {}  # tick → (supply, demand, target)
        #: Revision 2.1 (§8.4): the (ts, id) items of the retained announcements and held
        #: revocation lists, kept alongside merges and expiries once `recon_set` is first
        #: asked for (a view that never reconciles pays nothing), with each item's wire bytes.
        self._recon: ReconSet | None = None
        self._recon_wires: dict[bytes, bytes] = {}
        #: Signers evicted to respect max_signers (for metrics).
        self.evictions = 0
        #: Grows by one whenever the retained set changes, so a caller can cache what it derives
        #: from the view (e.g. the offer list, which costs O(signers)) per (version, instant).
        self.version = 0

    # ------------------------------------------------------------------ merging

    def merge_message(self, message: Announcement) -> MergeOutcome:
        """Merge one validated announcement and say what it did."""
        touched: dict[bytes, Register] = {}
        outcome = self._merge_one(message, touched)
        for register in touched.values():
            self._refresh_segments(register)
        return outcome

    def merge_messages(self, messages: Iterable[Announcement]) -> list[MergeOutcome]:
        """Merge announcements in order. A message newer than all its signer holds is applied
        at once (`_append`); the others change their signer's register, whose contribution is
        then recomputed once per call."""
        touched: dict[bytes, Register] = {}
        outcomes = [self._merge_one(message, touched) for message in messages]
        for register in touched.values():
            self._refresh_segments(register)
        return outcomes

    def merge(self, other: "MarketView") -> int:
        """Join another view into this one: merge every announcement `other` holds in the buckets
        where the two differ. Returns the number of announcements that changed this view."""
        if other is self:
            return 0
        mine, theirs = self.bucket_digests(), other.bucket_digests()
        differing = [i for i in range(BUCKETS) if mine[i] != theirs[i]]
        if not differing:
            return 0
        outcomes = self.merge_messages(other.messages_in_buckets(differing))
        return sum(1 for outcome in outcomes if outcome.changed)

    def _merge_one(self, message: Announcement, touched: dict[bytes, Register]) -> MergeOutcome:
        facts = self._facts
        entry: AnnouncementFacts | None
        if facts is not None and type(message) is Announcement:
            entry = facts.entries.get(message.msg_id)
            if entry is None or entry.message is not message or entry.member is not message.member:
                if not _well_formed(message):
                    return MergeOutcome.INVALID
                entry = facts.learn(message, self._weigh(message), self.timeout_ms)
        elif not _well_formed(message):
            return MergeOutcome.INVALID
        else:
            entry = None
        if message.msg_id in self._held:
            return MergeOutcome.DUPLICATE
        signer = message.signer
        register = self._registers.get(signer)
        if register is None:
            if len(self._registers) >= self.max_signers:
                silent = self._silent_first()
                assert silent is not None  # the view is full, so some signer is the most silent
                silent_ms, silent_signer = silent
                if (message.issued_at_ms, signer) < (silent_ms, silent_signer):
                    return MergeOutcome.EVICTED
                self._drop_register(silent_signer, touched)
                self.evictions += 1
            register = Register(signer, bucket_of(signer))
            self._registers[signer] = register
            self._bucket_signers[register.bucket].add(signer)
            if ((message.member is None and not self._revoked_from)
                    or self._member_end(message) > message.issued_at_ms):
                # An empty register is simple: its first message is the newest.
                self._append(register, message, entry)
                return MergeOutcome.NEW
            old_newest: int | None = None
        else:
            if register.simple and ((message.member is None and not self._revoked_from)
                                    or self._member_end(message) > message.issued_at_ms):
                last = register.messages[-1]
                if message.issued_at_ms > last.issued_at_ms and message.seq > last.seq:
                    return self._append(register, message, entry)
            old_newest = register.newest_ms
        retained, dropped = register.insert(message, self.max_per_signer, self.horizon_ms)
        if not retained:
            return MergeOutcome.STALE
        # Its segments are stale until `_refresh_segments` (at the end of a batch): until then
        # no later message of this batch may take `_append`'s shortcut, which reads them.
        register.simple = False
        bucket = register.bucket
        for gone in dropped:
            self._held.discard(gone.msg_id)
            self._account(bucket, gone, -1)
        self._held.add(message.msg_id)
        self._account(bucket, message, +1)
        if register.newest_ms != old_newest:
            self._note_silence(register)
        self._note_oldest(register)
        touched[signer] = register
        if old_newest is None:
            return MergeOutcome.NEW
        if register.equivocating and sum(1 for m in register.messages if m.seq == message.seq) > 1:
            return MergeOutcome.EQUIVOCATION
        if register.messages[-1] is message:
            return MergeOutcome.NEWER
        return MergeOutcome.OLDER

    def _append(self, register: Register, message: Announcement,
                facts: AnnouncementFacts | None = None) -> MergeOutcome:
        """The common case, in O(changes): `message` is newer, in both issued_at and seq, than
        everything a simple register holds (see `Register.simple`; an empty one is), so its
        segments stay one per message. The retention rule drops the oldest, the previous
        newest's segment is cut where `message` starts to count, and `message`'s own segment is
        added. Gives exactly what the general path (`Register.insert` + `_refresh_segments`)
        gives. With `facts` (see `SharedFacts`) the view holds the objects every view of the
        config shares (weight, order key, segments, steps) instead of copies."""
        messages, keys = register.messages, register.keys
        start = message.issued_at_ms
        messages.append(message)
        keys.append((start, message.seq, message.msg_id) if facts is None else facts.key)
        count = len(keys)
        first = count - self.max_per_signer if count > self.max_per_signer else 0
        oldest_kept = start - self.horizon_ms
        while keys[first][0] < oldest_kept:  # stops at `message` itself at the latest
            first += 1
        bucket = register.bucket
        held = self._held
        steps = self._steps
        segments = register.segments
        if first:
            for gone in messages[:first]:
                held.discard(gone.msg_id)
                self._account(bucket, gone, -1)
            del messages[:first]
            del keys[:first]
            for dropped in segments[:first]:
                steps.add_many(dropped.start_ms, -dropped.weight, dropped.end_ms, dropped.weight)
            segments = segments[first:]
        end = start + self.timeout_ms
        if message.member is not None or self._revoked_from:
            member_end = self._member_end(message)
            if member_end < end:
                end = member_end
        if facts is None:
            weight = self._weigh(message)
            neg_weight = -weight
            segment = Segment(start, end, weight, message)
        else:
            weight, neg_weight, segment = facts.weight, facts.neg_weight, facts.segment
            if segment.end_ms != end:
                segment = Segment(start, end, weight, message)
        if segments and segments[-1].end_ms > start:
            # The previous newest now counts until `message` is issued.
            previous = segments[-1]
            cut = None if facts is None else facts.cut
            if (cut is not None and cut.message is previous.message
                    and cut.start_ms == previous.start_ms and cut.weight == previous.weight):
                delta = facts.cut_delta  # type: ignore[union-attr]
            else:
                cut = Segment(previous.start_ms, start, previous.weight, previous.message)
                delta = weight - previous.weight
                if facts is not None:
                    facts.cut, facts.cut_delta = cut, delta
            steps.add_many(previous.end_ms, previous.weight, start, delta, end, neg_weight)
            register.segments = segments[:-1] + (cut, segment)
        else:
            steps.add_many(start, weight, end, neg_weight)
            register.segments = segments + (segment,)
        id_int = None if facts is None else facts.id_int
        held.add(message.msg_id)
        # _account(bucket, message, +1), inlined
        self.version += 1
        if self._recon is not None:
            self._recon.add((message.issued_at_ms, message.msg_id))
            self._recon_wires[message.msg_id] = message.wire
        self._bucket_count[bucket] += 1
        self._bucket_sum[bucket] = (self._bucket_sum[bucket]
                                    + (int.from_bytes(message.msg_id, "big") if id_int is None
                                       else id_int)) % _SUM_MOD
        self._bucket_digest[bucket] = None
        # _note_silence(register), inlined
        heap = self._silence
        heapq.heappush(heap, (start, register.signer))
        if len(heap) > 2 * len(self._registers) + 64:
            heap[:] = [(r.newest_ms, who) for who, r in self._registers.items() if r.messages]
            heapq.heapify(heap)
        if first or len(messages) == 1:
            self._note_oldest(register)
        return MergeOutcome.NEWER

    def _note_silence(self, register: Register) -> None:
        """Record a register's new newest instant in the silence heap."""
        heap = self._silence
        heapq.heappush(heap, (register.newest_ms, register.signer))
        if len(heap) > 2 * len(self._registers) + 64:
            # Mostly stale entries: rebuild from the registers (amortised O(1) per push).
            heap[:] = [(r.newest_ms, who) for who, r in self._registers.items() if r.messages]
            heapq.heapify(heap)

    def _note_oldest(self, register: Register) -> None:
        """Record a register's oldest retained instant for `expire_before`."""
        heap = self._oldest
        heapq.heappush(heap, (register.messages[0].issued_at_ms, register.signer))
        if len(heap) > 2 * len(self._registers) + 64:
            heap[:] = [(r.messages[0].issued_at_ms, who) for who, r in self._registers.items()
                       if r.messages]
            heapq.heapify(heap)

    def expire_before(self, t_ms: int) -> int:
        """Drop every retained announcement issued before t_ms (a node passes its clock minus
        the 300 s maximum age, every tick); returns how many were dropped. Depends on the caller's
        clock, like `forget_silent_before`, but drops single old messages too: what stays is what
        every peer's freshness rule (W13) would still accept, so views that differ only in what
        one peer was fed long ago become identical again."""
        dropped_total = 0
        heap = self._oldest
        registers = self._registers
        while heap and heap[0][0] < t_ms:
            oldest_ms, signer = heapq.heappop(heap)
            register = registers.get(signer)
            if register is None or not register.messages:
                continue
            if register.messages[0].issued_at_ms != oldest_ms:
                if register.messages[0].issued_at_ms < t_ms:
                    heapq.heappush(heap, (register.messages[0].issued_at_ms, signer))
                continue  # a stale entry; the current one is (or was just put) in the heap
            count = 0
            for message in register.messages:
                if message.issued_at_ms >= t_ms:
                    break
                count += 1
            if count == len(register.messages):
                self._drop_register(signer, {})
                dropped_total += count
                continue
            for gone in register.messages[:count]:
                self._held.discard(gone.msg_id)
                self._account(register.bucket, gone, -1)
            del register.messages[:count]
            del register.keys[:count]
            register.equivocating = len({m.seq for m in register.messages}) < len(register.messages)
            self._refresh_segments(register)
            self._note_oldest(register)
            dropped_total += count
        return dropped_total

    def _silent_first(self) -> tuple[int, bytes] | None:
        """(newest issued_at_ms, signer) of the signer silent longest (smallest newest instant,
        then smallest key), or None for an empty view. Drops stale heap entries on the way."""
        heap = self._silence
        registers = self._registers
        while heap:
            newest_ms, signer = entry = heap[0]
            register = registers.get(signer)
            if register is not None and register.messages and register.newest_ms == newest_ms:
                return entry
            heapq.heappop(heap)
        return None

    def _account(self, bucket: int, message: Announcement, sign: int,
                 id_int: int | None = None) -> None:
        self.version += 1
        msg_id = message.msg_id
        if self._recon is not None:
            item = (message.issued_at_ms, msg_id)
            if sign > 0:
                self._recon.add(item)
                self._recon_wires[msg_id] = message.wire
            else:
                self._recon.discard(item)
                self._recon_wires.pop(msg_id, None)
        self._bucket_count[bucket] += sign
        if id_int is None:
            id_int = int.from_bytes(msg_id, "big")
        self._bucket_sum[bucket] = (self._bucket_sum[bucket] + sign * id_int) % _SUM_MOD
        self._bucket_digest[bucket] = None

    def _drop_register(self, signer: bytes, touched: dict[bytes, Register]) -> None:
        register = self._registers.pop(signer)
        self._bucket_signers[register.bucket].discard(signer)
        for message in register.messages:
            self._held.discard(message.msg_id)
            self._account(register.bucket, message, -1)
        register.messages.clear()
        register.keys.clear()
        register.equivocating = False
        self._refresh_segments(register)
        touched.pop(signer, None)

    def forget_silent_before(self, t_ms: int) -> int:
        """Drop every signer whose newest announcement was issued before t_ms; returns how many.

        Not part of the join: it depends on the caller's clock. A node calls it with
        now − wire.MAX_AGE_S: such announcements would be refused as stale by every peer's
        validator anyway, so views of peers with roughly synchronised clocks keep agreeing, and
        a long-dead signer stops costing memory before the view is full."""
        forgotten = 0
        while True:
            first = self._silent_first()
            if first is None or first[0] >= t_ms:
                break
            self._drop_register(first[1], {})
            forgotten += 1
        return forgotten

    def _weigh(self, message: Announcement) -> int:
        """What one announcement adds to the totals (protocol v2 §7.1): capped capacity,
        requests and tokens, a member's caps, then the work shift."""
        capacity = min(message.tokens_per_second, self._capacity_cap)
        requests = min(message.pending_requests, self._requests_cap)
        tokens_cap = self._signer_tokens_cap
        member = message.member
        if member is not None:
            capacity = min(capacity, member.max_tokens_per_second)
            requests = min(requests, member.max_pending_requests)
            tokens_cap = min(tokens_cap, member.max_pending_tokens)
        demand = min(message.pending_tokens, requests * self._tokens_per_request_cap, tokens_cap)
        if self._work_bits:
            shift = weight_shift(work_bits(message.signer, message.work_nonce), self._work_bits)
            if shift:
                capacity >>= shift
                demand >>= shift
                requests >>= shift
        marker = int.from_bytes(message.msg_id[:8], "big") if self._clearing else 0
        return pack(1 if capacity > 0 else 0, capacity, demand, requests, 1, marker)

    def _member_end(self, message: Announcement) -> int:
        """The instant a member stops counting (credential expiry, or the earliest revocation
        naming it); far in the future for everyone else."""
        end = _NEVER
        member = message.member
        if member is not None:
            end = member.expires_at_ms
        revoked = self._revoked_from.get(message.signer)
        if revoked is not None and revoked < end:
            end = revoked
        return end

    # ------------------------------------------------------------------ revocations

    def merge_revocations(self, revocations: RevocationList) -> bool:
        """Hold an authority's revocation list if it is newer (by seq, then id) than the one
        held from that authority; members it revokes stop counting from their instant. Returns
        whether the view changed. (The validator checked the signature and the authority.)"""
        held = self._lists.get(revocations.signer)
        if held is not None and (held.seq, held.msg_id) >= (revocations.seq, revocations.msg_id):
            return False
        self._lists[revocations.signer] = revocations
        if self._recon is not None:
            if held is not None:
                self._recon.discard((0, held.msg_id))
                self._recon_wires.pop(held.msg_id, None)
            self._recon.add((0, revocations.msg_id))
            self._recon_wires[revocations.msg_id] = revocations.wire
        before = self._revoked_from
        after: dict[bytes, int] = {}
        for revocation_list in self._lists.values():
            for member, from_ms in revocation_list.revoked:
                if from_ms < after.get(member, _NEVER):
                    after[member] = from_ms
        self._revoked_from = after
        self._revocations_digest = None
        self.version += 1
        for signer in set(before) | set(after):
            if before.get(signer) != after.get(signer):
                register = self._registers.get(signer)
                if register is not None and register.messages:
                    self._refresh_segments(register)
        return True

    def recon_set(self) -> ReconSet:
        """The view as §8.4 items — announcements at issued_at_ms, revocation lists at 0 —
        maintained incrementally from the first call on (built once then, O(n log n)). Callers
        must not change it; a session reads a `snapshot()` of it."""
        if self._recon is None:
            items = [(m.issued_at_ms, m.msg_id) for r in self._registers.values()
                     for m in r.messages]
            items += [(0, r.msg_id) for r in self._lists.values()]
            self._recon = ReconSet(items)
            self._recon_wires = {m.msg_id: m.wire for r in self._registers.values()
                                 for m in r.messages}
            self._recon_wires.update((r.msg_id, r.wire) for r in self._lists.values())
        return self._recon

    def wire_of(self, msg_id: bytes) -> bytes | None:
        """The wire bytes of a held announcement or revocation list by message id, once
        `recon_set` has been asked for (None before, or if not held)."""
        return self._recon_wires.get(msg_id)

    def revocation_lists(self) -> list[RevocationList]:
        """The newest list of each authority, by authority key."""
        return [self._lists[k] for k in sorted(self._lists)]

    def revocations_digest(self) -> bytes:
        """SHA-256 of the tag and the ids of the held lists, ascending (protocol v2 §8.1)."""
        if self._revocations_digest is None:
            ids = sorted(r.msg_id for r in self._lists.values())
            self._revocations_digest = hashlib.sha256(_REVOCATIONS_TAG + b"".join(ids)).digest()
        return self._revocations_digest

    def revoked_from(self, member: bytes) -> int | None:
        return self._revoked_from.get(member)

    def _refresh_segments(self, register: Register) -> None:
        """Bring the step sums in line with the register: apply only the segments that changed
        (usually one truncated, one added)."""
        messages = register.messages
        new = (register.segments_for(self.timeout_ms, self._weigh, self._member_end)
               if messages else ())
        register.simple = (bool(messages) and not register.equivocating
                           and len(new) == len(messages)
                           and all(s.message is m for s, m in zip(new, messages)))
        old = register.segments
        if new == old:
            return
        old_set, new_set = set(old), set(new)
        steps = self._steps
        for segment in old:
            if segment not in new_set:
                steps.add(segment.start_ms, -segment.weight)
                steps.add(segment.end_ms, segment.weight)
        for segment in new:
            if segment not in old_set:
                steps.add(segment.start_ms, segment.weight)
                steps.add(segment.end_ms, -segment.weight)
        register.segments = new

    # ------------------------------------------------------------------ digests and sync

    def bucket_digests(self) -> list[bytes]:
        """One 32-byte digest per bucket of the retained announcements (O(buckets) to read):
        SHA-256 of the count and the sum mod 2^256 of the message ids, both kept incrementally."""
        digests = self._bucket_digest
        for i in range(BUCKETS):
            if digests[i] is None:
                digests[i] = _bucket_digest(self._bucket_count[i], self._bucket_sum[i])
        return list(digests)  # type: ignore[arg-type]

    def digest(self) -> bytes:
        """A 32-byte digest of the whole view: equal views ⇔ equal digests."""
        return _view_digest(self.bucket_digests(), self.revocations_digest())

    def digest_without(self, leave_out: Iterable[tuple[bytes, bytes]]) -> bytes:
        """The digest this view would have without the given announcements, as (signer, msg_id)
        pairs; those it does not hold change nothing. Lets an observer compare views apart from
        messages still in flight. O(buckets + pairs)."""
        counts: dict[int, int] = {}
        sums: dict[int, int] = {}
        seen: set[bytes] = set()
        for signer, msg_id in leave_out:
            if msg_id in self._held and msg_id not in seen:
                seen.add(msg_id)
                bucket = bucket_of(signer)
                counts[bucket] = counts.get(bucket, self._bucket_count[bucket]) - 1
                sums[bucket] = (sums.get(bucket, self._bucket_sum[bucket])
                                - int.from_bytes(msg_id, "big")) % _SUM_MOD
        digests = self.bucket_digests()
        for bucket in counts:
            digests[bucket] = _bucket_digest(counts[bucket], sums[bucket])
        return _view_digest(digests, self.revocations_digest())

    def messages_in_buckets(self, buckets: Iterable[int]) -> list[Announcement]:
        """The retained announcements of the signers in the given buckets (what to send a peer
        whose digest differs there), in a deterministic order. Unknown bucket numbers are
        ignored."""
        out: list[Announcement] = []
        for bucket in sorted(set(buckets)):
            if not (isinstance(bucket, int) and 0 <= bucket < BUCKETS):
                continue
            for signer in sorted(self._bucket_signers[bucket]):
                out.extend(self._registers[signer].messages)
        return out

    def all_messages(self) -> list[Announcement]:
        """Every retained announcement, ordered by signer then oldest first."""
        out: list[Announcement] = []
        for signer in sorted(self._registers):
            out.extend(self._registers[signer].messages)
        return out

    # ------------------------------------------------------------------ registers

    def __len__(self) -> int:
        """Number of signers held."""
        return len(self._registers)

    def __contains__(self, signer: object) -> bool:
        return signer in self._registers

    @property
    def message_count(self) -> int:
        return len(self._held)

    def signers(self) -> list[bytes]:
        return sorted(self._registers)

    def messages_of(self, signer: bytes) -> tuple[Announcement, ...]:
        """A signer's retained announcements, oldest first (empty if not held)."""
        register = self._registers.get(signer)
        return tuple(register.messages) if register else ()

    def current(self, signer: bytes) -> Announcement | None:
        """A signer's register value: its highest-seq retained announcement (lower message id
        first among equivocating ones)."""
        register = self._registers.get(signer)
        if not register:
            return None
        best = None
        for message in register.messages:  # highest seq, then lowest id (ids are all 32 bytes)
            if (best is None or message.seq > best.seq
                    or (message.seq == best.seq and message.msg_id < best.msg_id)):
                best = message
        return best

    def is_equivocating(self, signer: bytes) -> bool:
        register = self._registers.get(signer)
        return bool(register and register.equivocating)

    def equivocators(self) -> list[bytes]:
        return sorted(s for s, r in self._registers.items() if r.equivocating)

    def counted_at_ms(self, signer: bytes, t_ms: int) -> Announcement | None:
        """The announcement of `signer` that counts at instant t_ms, if any."""
        register = self._registers.get(signer)
        if register is None:
            return None
        segment = register.counted_at(t_ms)
        return segment.message if segment else None

    # ------------------------------------------------------------------ totals and offers

    def stats_at_ms(self, t_ms: int) -> MarketStats:
        """Network totals at instant t_ms (ms of the signed timeline)."""
        available, supply, demand, requests, counted = unpack(self._steps.value_at(t_ms))
        return MarketStats(at_ms=t_ms, available_nodes=available, counted_nodes=counted,
                           supply_tokens_per_sec=supply, demand_tokens_waiting=demand,
                           pending_requests=requests,
                           utilization=utilization(supply, demand, self.config.target_response_s))

    def stats_at(self, now: float) -> MarketStats:
        """Network totals at `now` (seconds since the epoch)."""
        return self.stats_at_ms(ms_of(now))

    def supply_at_ms(self, t_ms: int) -> int:
        return unpack(self._steps.value_at(t_ms))[1]

    def demand_at_ms(self, t_ms: int) -> int:
        return unpack(self._steps.value_at(t_ms))[2]

    def supply_at(self, now: float) -> int:
        """Tokens per second offered by the announcements counting at `now`."""
        return self.supply_at_ms(ms_of(now))

    def demand_at(self, now: float) -> int:
        """Tokens waiting, per the announcements counting at `now`."""
        return self.demand_at_ms(ms_of(now))

    def offers_at_ms(self, t_ms: int) -> list[CountedOffer]:
        """Capacity on offer at t_ms, cheapest first (then most capacity, then signer).
        O(signers): ask once per tick or per `version`, not once per request."""
        offers: list[CountedOffer] = []
        for register in self._registers.values():
            segment = register.counted_at(t_ms)
            if segment is None:
                continue
            message = segment.message
            capacity = min(message.tokens_per_second, self._capacity_cap)
            if message.member is not None:
                capacity = min(capacity, message.member.max_tokens_per_second)
            if capacity > 0:
                offers.append(CountedOffer(register.signer, capacity, message.min_price_nano,
                                           message.issued_at_ms))
        offers.sort(key=lambda o: (o.min_price_nano, -o.tokens_per_second, o.signer))
        return offers

    def contribution_at_ms(self, signer: bytes, t_ms: int) -> tuple[int, int, int] | None:
        """What `signer` adds to the totals at t_ms — (capacity, demand tokens, requests) after
        the caps and the work shift — or None when it counts nothing then."""
        register = self._registers.get(signer)
        segment = register.counted_at(t_ms) if register is not None else None
        if segment is None:
            return None
        _, capacity, demand, requests, _ = unpack(segment.weight)
        return capacity, demand, requests

    def offers_at(self, now: float) -> list[CountedOffer]:
        return self.offers_at_ms(ms_of(now))

    def offers_change_after_ms(self, t_ms: int) -> int | None:
        """The first instant after t_ms at which `offers_at_ms` can answer differently with no
        merge in between (a counted announcement expiring or giving way to a later one of its
        signer, or one issued after t_ms starting to count); None if never. Together with
        `version` it says how long an offer list stays exact: the same for every t in
        [t_ms, this instant). O(signers), about a tenth of `offers_at_ms`."""
        soonest: int | None = None
        for register in self._registers.values():
            segments = register.segments
            if not segments:
                continue
            last = segments[-1]
            if last.end_ms <= t_ms:
                continue  # counts at no instant after t_ms
            if last.start_ms <= t_ms:  # the usual case: t_ms in the newest segment
                change = last.end_ms
            else:  # segments are disjoint and ascending: the first one ending after t_ms
                segment = segments[bisect_right(segments, t_ms, key=_segment_end)]
                change = segment.start_ms if segment.start_ms > t_ms else segment.end_ms
            if soonest is None or change < soonest:
                soonest = change
        return soonest

    # ------------------------------------------------------------------ price

    def evaluation_ms(self, tick: int) -> int:
        """The instant tick `tick` is evaluated at: its start minus the settle delay."""
        return tick * self.tick_ms - self.settle_ms

    def _tick_state(self, tick: int) -> tuple[int, int, int]:
        cached = self._tick_cache.get(tick)
        if cached is None:
            lanes = unpack(self._steps.value_at_block_start(tick))
            supply, demand = lanes[1], lanes[2]
            if self._clearing:
                target = self.clearing_price_at_ms(self.evaluation_ms(tick))
            else:
                target = target_price_nano(supply, demand, self.config)
            cached = (supply, demand, target)
            self._tick_cache[tick] = cached
        return cached

    def asks_and_bids_at_ms(self, t_ms: int) -> tuple[list[tuple[int, int]], list[int]]:
        """What the clearing price of instant t_ms is computed from (protocol v2 §7.7, revision
        2.1): each counted signer's (ask, counted capacity) — capacity after the caps and the
        work shift, as in the supply total — and the sum of the counted bid histograms.
        O(signers)."""
        offers: list[tuple[int, int]] = []
        bids = [0] * DEMAND_BUCKETS
        for register in self._registers.values():
            segment = register.counted_at(t_ms)
            if segment is None:
                continue
            message = segment.message
            capacity = (segment.weight >> LANE_BITS) & _LANE_MASK
            if capacity:
                offers.append((message.min_price_nano, capacity))
            counted = self._counted_bids(message)
            if counted is not None:
                for b, tokens in counted:
                    bids[b] += tokens
        return offers, bids

    def clearing_price_at_ms(self, t_ms: int) -> int:
        """The clearing price (nano per 1M tokens) of the announcements counting at t_ms."""
        offers, bids = self.asks_and_bids_at_ms(t_ms)
        return clearing_price_nano(offers, bids, self.config)

    def _counted_bids(self, message: Announcement) -> tuple[tuple[int, int], ...] | None:
        """(bucket, tokens) of a message's bid histogram as it counts (§7.1, revision 2.1): trimmed to the
        signer's counted demand before the work shift (the d of §7.1 without the shift), taking
        the highest buckets first, then each bucket shifted right by the work shift."""
        cache = self._bids_cache
        found = cache.get(message.msg_id, _MISSING)
        if found is not _MISSING:
            return found  # type: ignore[return-value]
        histogram = message.demand_by_limit
        result: tuple[tuple[int, int], ...] | None = None
        if histogram is not None and message.pending_tokens:
            requests = min(message.pending_requests, self._requests_cap)
            tokens_cap = self._signer_tokens_cap
            member = message.member
            if member is not None:
                requests = min(requests, member.max_pending_requests)
                tokens_cap = min(tokens_cap, member.max_pending_tokens)
            left = min(message.pending_tokens, requests * self._tokens_per_request_cap,
                       tokens_cap)
            shift = (weight_shift(work_bits(message.signer, message.work_nonce), self._work_bits)
                     if self._work_bits else 0)
            taken: list[tuple[int, int]] = []
            for b in range(DEMAND_BUCKETS - 1, -1, -1):
                if left <= 0:
                    break
                tokens = min(histogram[b], left)
                left -= tokens
                if tokens >> shift:
                    taken.append((b, tokens >> shift))
            result = tuple(taken)
        if len(cache) > 2 * len(self._held) + 1024:
            cache.clear()
        cache[message.msg_id] = result
        return result

    def _validate_tick_cache(self) -> None:
        changed = self._steps.changed_from
        if changed is not None:
            # A change in block b moves the totals of ticks >= b only.
            cache = self._tick_cache
            for tick in [t for t in cache if t >= changed]:
                del cache[tick]
            self._steps.changed_from = None
        if len(self._tick_cache) > 16 * self.config.window_ticks:
            self._tick_cache.clear()

    def targets(self, first_tick: int, last_tick: int) -> list[int]:
        """Target prices (nano per 1M tokens) of ticks first_tick … last_tick, oldest first."""
        self._validate_tick_cache()
        return [self._tick_state(j)[2] for j in range(first_tick, last_tick + 1)]

    def price_at_tick(self, tick: int) -> TickPrice:
        """The price at tick k: the smoothed price over the targets of ticks k−W+1 … k, each tick
        evaluated on this view as of its start minus the settle delay. A pure function of the
        retained announcements, the config and k."""
        if self._clearing:
            # Revision 2.1: a clearing network's price is its tick's own clearing price.
            self._validate_tick_cache()
            supply, demand, target = self._tick_state(tick)
            return TickPrice(tick=tick, price_nano=target, target_nano=target, supply=supply,
                             demand=demand)
        window = self.config.window_ticks
        targets = self.targets(tick - window + 1, tick)
        supply, demand, target = self._tick_state(tick)
        facts = self._facts
        if facts is None:
            price = smoothed_price(targets, self.config)
        else:
            key = tuple(targets)
            price = facts.prices.get(key, -1)
            if price < 0:
                if len(facts.prices) >= 4096:
                    facts.prices.clear()
                price = facts.prices[key] = smoothed_price(targets, self.config)
        return TickPrice(tick=tick, price_nano=price, target_nano=target, supply=supply,
                         demand=demand)

    def price_at(self, now: float) -> TickPrice:
        """The price of the tick holding `now` (seconds since the epoch)."""
        return self.price_at_tick(ms_of(now) // self.tick_ms)


def _bucket_digest(count: int, id_sum: int) -> bytes:
    """A bucket's digest: SHA-256 of its message count and the sum mod 2^256 of its ids."""
    return hashlib.sha256(_BUCKET_TAG + count.to_bytes(8, "big")
                          + id_sum.to_bytes(32, "big")).digest()


def _view_digest(bucket_digests: list[bytes], revocations_digest: bytes) -> bytes:
    return hashlib.sha256(_DIGEST_TAG + b"".join(bucket_digests) + revocations_digest).digest()


def _segment_end(segment: Segment) -> int:
    return segment.end_ms


def _well_formed(message: object) -> bool:
    if type(message) is not Announcement:
        return False
    signer, msg_id = message.signer, message.msg_id
    if type(signer) is not bytes or len(signer) != _PUBKEY_LEN:
        return False
    if type(msg_id) is not bytes or len(msg_id) != _ID_LEN:
        return False
    for value in (message.issued_at_ms, message.seq, message.tokens_per_second,
                  message.min_price_nano, message.pending_tokens, message.pending_requests,
                  message.work_nonce):
        # The wire's range: a larger value would overflow its 128-bit lane of the step sums
        # into the next quantity instead of counting.
        if type(value) is not int or not 0 <= value <= MAX_U63:
            return False
    return True


__all__ = ["MarketView", "SharedFacts", "AnnouncementFacts", "MergeOutcome", "TickPrice",
           "MarketStats", "CountedOffer", "bucket_of", "BUCKETS", "DEFAULT_MAX_SIGNERS",
           "default_max_per_signer", "order_key", "Segment"]
