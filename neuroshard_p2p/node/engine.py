"""The peer engine: everything a node decides, with no sockets and no clock (sans-IO).

A `PeerEngine` owns this node's wire `Validator`, its merged `MarketView` and its own market
state (the capacity it offers and the demand queued at it). Its drivers — the libp2p `Node` and
the simulator — hand it bytes and the time, and take bytes to send:

    on_gossip(data, now, from_peer)   a gossiped announcement arrived   → Verdict
    poll_announcements(now)           what to publish now               → [bytes]
    withdraw(now)                     the last announcement at shutdown → bytes | None
    sync_request(now)                 open anti-entropy with a peer     → bytes (one frame)
    on_sync_request(data, now)        answer a peer's sync request      → [bytes] (frames)
    on_sync_response(data, now)       merge what a peer sent, stopping at
                                      the first rejected item           → SyncCounts
    next_deadline()                   when poll_announcements has work next (None: only on change)
    expire(now)                       drop what no peer would accept any more (every tick)

Announcing. A node publishes one `Announcement` carrying its capacity and its queued demand: when
that state changes (at most once per tick: changes within a tick coalesce), and again every
`announce_interval_s` as a keep-alive while it has anything to say (non-zero capacity or demand).
A node that never offered or queued anything publishes nothing; one that goes idle announces the
all-zero state once and then stays silent, so idle nodes cost the network no traffic. The seq of
each announcement is `max(last seq + 1, issued_at_ms)`: it grows across restarts without any
stored state, and if a previous run of this key announced a higher seq (heard back through gossip
or sync), the engine continues above it and re-announces its true state.

Validation paths. Gossip goes through the `Validator` with every rule (V1–V8: duplicate,
signature, freshness, kind, author, capacity limit, seq, rate); `decode` (default: the codec's)
is the stateless part it runs, which the simulator replaces by one memoised across its peers. Announcements received through sync are
history a peer retained (a signer's few newest), which the per-signer seq and rate rules of live
gossip would wrongly refuse when they arrive out of order or in a batch, so they are checked with
`history=True` (protocol §8: V1–V3, V6, V7's history form; not V4 or V8): one pass, one
signature check, and the view's merge, a join, orders them. `sync_counts` says which accepted
ones were the signer's newest ("accepted") and which were older than what we held ("history").
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections import Counter
from dataclasses import astuple, dataclass
from operator import itemgetter
from typing import TYPE_CHECKING, Iterable, Sequence, TypeVar

import coincurve

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.core.pricing import DEMAND_BUCKETS, demand_bucket, demand_histogram
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.node.clockwatch import ClockWatch
from neuroshard_p2p.node.policy import material_change, recent_window_s
from neuroshard_p2p.timeline import ms_of, seconds_of
from neuroshard_p2p.view import MarketView, TickPrice
from neuroshard_p2p.wire import MAX_AGE_S, Announcement, WireError, encode
from neuroshard_p2p.wire.errors import REJECT
from neuroshard_p2p.wire.frames import decode_sync, encode_sync, split_sync_response
from neuroshard_p2p.wire.membership import Admission
from neuroshard_p2p.wire.messages import RevocationList, SyncRequest, SyncResponse
from neuroshard_p2p.wire.validate import Decoder, Validator, decode_stateless
from neuroshard_p2p.wire.work import work_bits, work_weight

ACCEPTED = "accepted"
REJECTED = "rejected"
IGNORED = "ignored"
OUTCOMES = (ACCEPTED, REJECTED, IGNORED)

#: Reason of an announcement accepted through sync that is older than the newest one we hold from
#: its signer (it fills the signer's history in the view; the price of past ticks needs it).
HISTORY = "history"


class Verdict(tuple[str, str, "Announcement | None", str]):
    """What became of one received message: `outcome` is accepted / rejected / ignored, `reason`
    the validator's stable code ("accepted" when accepted), `detail` the words for a log line.

    Immutable and compared by value like a frozen dataclass, but a tuple underneath: one is made
    for every gossip message a peer receives, and a tuple costs a fifth of a dataclass to make."""

    __slots__ = ()

    def __new__(cls, outcome: str, reason: str, message: Announcement | None = None,
                detail: str = "") -> Verdict:
        return tuple.__new__(cls, (outcome, reason, message, detail))

    if TYPE_CHECKING:  # what the C-level itemgetter properties below return
        @property
        def outcome(self) -> str: ...
        @property
        def reason(self) -> str: ...
        @property
        def message(self) -> Announcement | None: ...
        @property
        def detail(self) -> str: ...
    else:
        outcome = property(itemgetter(0), doc="accepted / rejected / ignored")
        reason = property(itemgetter(1), doc="the validator's code, or accepted / history")
        message = property(itemgetter(2), doc="the Announcement, when accepted")
        detail = property(itemgetter(3), doc="the words for a log line")

    @property
    def accepted(self) -> bool:
        return self[0] == ACCEPTED

    def __eq__(self, other: object) -> bool:  # a Verdict equals only a Verdict
        if type(other) is Verdict:
            return tuple.__eq__(self, other)
        return False if isinstance(other, tuple) else NotImplemented

    def __ne__(self, other: object) -> bool:
        if type(other) is Verdict:
            return tuple.__ne__(self, other)
        return True if isinstance(other, tuple) else NotImplemented

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return (f"Verdict(outcome={self[0]!r}, reason={self[1]!r}, message={self[2]!r}, "
                f"detail={self[3]!r})")

    def __getnewargs__(self) -> tuple[str, str, Announcement | None, str]:
        return (self[0], self[1], self[2], self[3])


#: The counter key of an accepted gossip message.
_ACCEPTED_KEY = (ACCEPTED, ACCEPTED)


@dataclass(frozen=True)
class SyncCounts:
    """What one sync response brought: items received and their outcomes. `fault` is the reason
    of the rejected item the dialer stopped at (protocol v2 §8.3: the rest of the frame and of
    the stream go unchecked, `unchecked` of them in this frame), None when no item was rejected;
    the driver resets the stream and charges the peer."""

    received: int
    accepted: int
    ignored: int
    rejected: int
    fault: str | None = None
    unchecked: int = 0
    #: With `pass_on` (a relay network, protocol v2 §8.5's MAY): the accepted items to relay,
    #: fresh changes of what we held (`synced_change`), in the order they were accepted.
    forward: tuple[bytes, ...] = ()


_Frame = TypeVar("_Frame", SyncRequest, SyncResponse)

#: Rejects that depend on when and where an item arrives (the receiver's clock, the order copies of
#: a signer's messages came in): a relay passed the item on in good faith, so on a relay stream
#: they are skipped, not faults (protocol v2 §8.5; node/guard.py's ARRIVAL_DEPENDENT).
RELAY_SKIPPED = frozenset({"future", "rate_limited"})


@dataclass(frozen=True)
class RelayCounts:
    """What one relay frame brought (protocol v2 §8.5): each checked item's outcome in order
    (`accepted` or the reason), the accepted items' wire bytes to pass on (`forward`), and
    `fault`, the reason of the rejected item the receiver stopped at (None when it checked them
    all; `unchecked` items of the frame were left). The driver resets the stream and charges the
    peer when `fault` is set."""

    outcomes: tuple[str, ...]
    forward: tuple[bytes, ...]
    accepted: int
    ignored: int
    skipped: int
    fault: str | None = None
    unchecked: int = 0


def _decode_frame(data: bytes, kind: type[_Frame], errors: Counter[str], expected: str) -> _Frame:
    """A sync-stream frame of the one `kind` its side expects; any other frame, or one that breaks
    F1–F8, raises WireError, counted in `errors` by reason (the driver resets the stream)."""
    try:
        frame = decode_sync(data)
        if not isinstance(frame, kind):
            raise WireError("kind", REJECT, expected)
    except WireError as error:
        errors[error.reason] += 1
        raise
    return frame


@dataclass(frozen=True)
class OwnOffer:
    """The capacity this node itself offers: tokens per second (0 = none) at no less than a
    price. It goes out in this node's announcements; others count it as a `CountedOffer`."""

    tokens_per_second: int
    min_price_nano: int


@dataclass(frozen=True)
class LocalRequest:
    """A request submitted at this node and waiting for capacity. Its tokens count in this node's
    demand announcement until it is taken (by the jobs layer) or expires."""

    request_id: str
    tokens: int
    max_price_nano: int
    tier: str
    prompt: str
    user: str
    submitted_at: float
    expires_at: float


@dataclass(frozen=True)
class OwnState:
    """The content of this node's announcement: what it offers and what is queued at it."""

    tokens_per_second: int
    min_price_nano: int
    pending_tokens: int
    pending_requests: int
    #: Clearing networks (revision 2.1): pending_tokens by bid bucket; None elsewhere.
    demand_by_limit: tuple[int, ...] | None = None

    @classmethod
    def of(cls, message: Announcement) -> "OwnState":
        """The state an announcement says."""
        return cls(message.tokens_per_second, message.min_price_nano, message.pending_tokens,
                   message.pending_requests, message.demand_by_limit)

    @property
    def silent(self) -> bool:
        """Nothing to announce: no capacity, no demand."""
        return not (self.tokens_per_second or self.pending_tokens or self.pending_requests)


@dataclass(frozen=True)
class MarketSnapshot:
    """The network's market as this node sees it at one instant (`now`): the totals counting at
    that instant, and the price of the tick it falls in."""

    now: float
    tick: int
    price_nano: int
    target_price_nano: int
    available_nodes: int
    supply_tokens_per_sec: int
    demand_tokens_waiting: int
    pending_requests: int
    utilization: float


#: Keep-alives come after (1 − up to 20 %) of announce_interval_s, so nodes whose state changed
#: at the same moment (any shared event) do not re-announce in lockstep bursts every period
#: forever. Only earlier, never later: a keep-alive never comes later than configured.
KEEP_ALIVE_JITTER = 0.2


def _keep_alive_factor(wire_bytes: bytes) -> float:
    """A factor in (1 − jitter, 1] derived from the announcement's own bytes: spread like a
    random draw, yet deterministic (a simulation with the same seed repeats exactly)."""
    fraction = int.from_bytes(hashlib.sha256(wire_bytes).digest()[:4], "big") / 2**32
    return 1.0 - KEEP_ALIVE_JITTER * fraction


class PeerEngine:
    """Sans-IO peer logic of one node (see the module docstring)."""

    def __init__(self, config: MarketConfig, private_key: coincurve.PrivateKey, *,
                 tokens_per_second: int = 0, min_price_nano: int = 0,
                 announce_interval_s: float = 20.0,
                 view: MarketView | None = None, validator: Validator | None = None,
                 decode: Decoder = decode_stateless,
                 admission: Admission | None = None,
                 quiet_keep_alives: bool = False) -> None:
        if not 0 < announce_interval_s < config.capacity_timeout_s:
            raise ValueError("announce_interval_s must be in (0, capacity_timeout_s)")
        self.config = config
        self.private_key = private_key
        self.signer = private_key.public_key.format(compressed=True)
        self.peer_id = peer_id_of(self.signer)
        self.announce_interval_s = announce_interval_s
        self.view = view if view is not None else MarketView(config)
        self.validator = (validator if validator is not None
                          else Validator(config, decode=decode, admission=admission))
        #: Our identity work nonce (wire.work) and, in a members network, our credential's wire
        #: bytes: both ride in every announcement we sign.
        self.work_nonce = 0
        self.credential = b""
        self._credential_expires_ms: int | None = None
        #: (outcome, reason) → count, for gossip and for announcements received through sync.
        self.gossip_counts: Counter[tuple[str, str]] = Counter()
        self.sync_counts: Counter[tuple[str, str]] = Counter()
        #: Sync frames refused (malformed, wrong kind, oversize): reason → count.
        self.sync_frame_errors: Counter[str] = Counter()
        #: Relay items by (outcome, reason), and relay frames refused by reason (§8.5).
        self.relay_counts: Counter[tuple[str, str]] = Counter()
        self.relay_frame_errors: Counter[str] = Counter()
        self._offer = OwnOffer(0, 0)
        self.set_offer(tokens_per_second, min_price_nano)
        self._requests: dict[str, LocalRequest] = {}
        self._demand_override: tuple[int, int, tuple[int, ...] | None] | None = None
        #: Revision 2.1: announcements on a clearing network carry the bid histogram.
        self._bids = config.curve == "clearing"
        self._top_bucket = demand_bucket(to_nano(config.max_price))
        self._last_seq = 0
        self._published: OwnState | None = None  # content of our newest announcement
        self._published_at: float | None = None
        self._keep_alive_after = announce_interval_s
        self._repeat = False  # publish our unchanged state again at the next tick
        self._dirty = False
        self.announcements_published = 0
        #: Revision 2.1 (§1.3): keep-alives are signed into our own view but not gossiped (peers
        #: get them by sync/2.1.0 reconciliation), and only a material change (capacity, or
        #: demand moving by its step: 12.5 %, wider on a large network, `node.policy`)
        #: gossips at once; a smaller change rides the next keep-alive.
        self.quiet_keep_alives = quiet_keep_alives
        self.keep_alives_unpublished = 0
        #: Told the signed time of every peer's announcement that arrives (accepted, or refused
        #: as `future` or `stale`), so the node learns when its own clock is wrong. A node's
        #: driver sets one; the simulator, whose peers share one clock, does not.
        self.clock_watch: ClockWatch | None = None

    # -- own state --------------------------------------------------------------------------

    @property
    def offer(self) -> OwnOffer:
        return self._offer

    def set_offer(self, tokens_per_second: int, min_price_nano: int) -> None:
        """Offer `tokens_per_second` of capacity at no less than `min_price_nano` per 1M tokens
        (0 tokens withdraws the offer). Announced at the next poll."""
        limit = self.config.max_node_tokens_per_s
        if type(tokens_per_second) is not int or not 0 <= tokens_per_second <= limit:
            raise MarketError(f"capacity must be an integer 0..{limit} tokens per second "
                              f"(max_node_tokens_per_s), got {tokens_per_second!r}")
        if type(min_price_nano) is not int or min_price_nano < 0:
            raise MarketError(f"min price must be an integer >= 0 nano-NEURO, got {min_price_nano!r}")
        offer = OwnOffer(tokens_per_second, min_price_nano if tokens_per_second else 0)
        if offer != self._offer:
            self._offer = offer
            self._dirty = True

    def set_work_nonce(self, nonce: int) -> None:
        """A better identity-work nonce (the driver grinds it): it rides in our next
        announcement, which goes out at the next tick if we announce anything."""
        if nonce != self.work_nonce:
            self.work_nonce = nonce
            self._refresh_published()

    def set_credential(self, credential: bytes, expires_at_ms: int | None = None) -> None:
        """Our credential in a members network (wire bytes of a Credential naming our key). From
        `expires_at_ms` on we announce nothing: peers would refuse it (`not_member`) and charge
        whoever relays it."""
        self._credential_expires_ms = expires_at_ms
        if credential != self.credential:
            self.credential = credential
            self._refresh_published()

    def credential_expired(self, now: float) -> bool:
        return (self._credential_expires_ms is not None
                and ms_of(now) >= self._credential_expires_ms)

    def _refresh_published(self) -> None:
        if self._published is not None and not self._published.silent:
            self._repeat = True
            self._dirty = True

    def withdraw_offer(self) -> None:
        """Stop offering capacity (the node keeps running; its demand is still announced)."""
        self.set_offer(0, 0)

    def submit_request(self, tokens: int, max_price_nano: int, now: float, *,
                       tier: str = "standard", prompt: str = "", user: str | None = None,
                       request_id: str | None = None) -> LocalRequest:
        """Queue a request at this node: its tokens join this node's announced demand until it is
        taken or expires (`request_expiry_s`)."""
        if type(tokens) is not int or tokens < 1:
            raise MarketError(f"tokens must be an integer >= 1, got {tokens!r}")
        if tokens > self.config.max_tokens_per_minute:
            raise MarketError(f"tokens {tokens} is above max_tokens_per_minute "
                              f"({self.config.max_tokens_per_minute})")
        if type(max_price_nano) is not int or max_price_nano <= 0:
            raise MarketError(f"max price must be an integer > 0 nano-NEURO, got {max_price_nano!r}")
        rid = request_id or f"req-{secrets.token_hex(8)}"
        if rid in self._requests:
            raise MarketError(f"request id {rid!r} is already queued")
        request = LocalRequest(rid, tokens, max_price_nano, tier, prompt, user or self.peer_id,
                               now, now + self.config.request_expiry_s)
        self._requests[rid] = request
        self._dirty = True
        return request

    def take_request(self, request_id: str) -> LocalRequest | None:
        """Remove a queued request (the jobs layer matched it); None if it is not queued."""
        request = self._requests.pop(request_id, None)
        if request is not None:
            self._dirty = True
        return request

    def queued_requests(self, now: float) -> list[LocalRequest]:
        """Requests queued here and not expired at `now`, oldest first."""
        self._expire_requests(now)
        return sorted(self._requests.values(), key=lambda r: (r.submitted_at, r.request_id))

    def set_demand(self, pending_tokens: int, pending_requests: int,
                   demand_by_limit: Sequence[int] | None = None) -> None:
        """Announce this demand instead of the local queue's (for a jobs layer that keeps its own
        order book); `clear_demand_override` goes back to the queue. On a clearing network
        `demand_by_limit` splits the tokens by bid bucket (it must add up to pending_tokens);
        without it every token bids up to the charter's max_price."""
        if pending_tokens < 0 or pending_requests < 0:
            raise MarketError("pending tokens and requests must be >= 0")
        bids: tuple[int, ...] | None = None
        if demand_by_limit is not None:
            bids = tuple(int(t) for t in demand_by_limit)
            if len(bids) != DEMAND_BUCKETS or min(bids) < 0 or sum(bids) != pending_tokens:
                raise MarketError(f"demand_by_limit must be {DEMAND_BUCKETS} counts >= 0 adding "
                                  f"up to pending_tokens {pending_tokens}")
        self._demand_override = (int(pending_tokens), int(pending_requests), bids)
        self._dirty = True

    def clear_demand_override(self) -> None:
        self._demand_override = None
        self._dirty = True

    def own_state(self, now: float) -> OwnState:
        """What this node's announcement says at `now`."""
        bids: tuple[int, ...] | None = None
        if self._demand_override is not None:
            pending_tokens, pending_requests, bids = self._demand_override
            if self._bids and bids is None:
                top = [0] * DEMAND_BUCKETS
                top[self._top_bucket] = pending_tokens
                bids = tuple(top)
        else:
            self._expire_requests(now)
            pending_tokens = sum(r.tokens for r in self._requests.values())
            pending_requests = len(self._requests)
            if self._bids:
                bids = demand_histogram((r.max_price_nano, r.tokens)
                                        for r in self._requests.values())
        if not self._bids:
            bids = None
        return OwnState(self._offer.tokens_per_second, self._offer.min_price_nano,
                        pending_tokens, pending_requests, bids)

    def _expire_requests(self, now: float) -> None:
        expired = [rid for rid, r in self._requests.items() if r.expires_at <= now]
        for rid in expired:
            del self._requests[rid]
        if expired:
            self._dirty = True

    # -- announcing ----------------------------------------------------------------------------

    def poll_announcements(self, now: float) -> list[bytes]:
        """The announcements to publish at `now` (zero or one): our state if it changed since the
        last one and no announcement went out in this tick yet, or a keep-alive when
        `announce_interval_s` has passed and we have anything to say."""
        self.expire(now)
        if self.credential_expired(now):
            return []
        state = self.own_state(now)
        if self._published_at is None:
            due = not state.silent
        else:
            changed = state != self._published
            if changed and self.quiet_keep_alives and self._published is not None:
                changed = material_change(astuple(self._published), astuple(state),
                                          self._network_demand(now))
            same_tick = self.tick_of(now) == self.tick_of(self._published_at)
            # A clock set back by more than a tick (NTP correcting a clock that ran ahead; or a
            # previous run of this key, `_continue_above`, that signed with one) would hold our
            # keep-alive back by the whole step, and peers that refused or expired what we
            # signed then would count nothing of ours until it passed: say it again now.
            keep_alive = (not state.silent
                          and (now >= self._published_at + self._keep_alive_after
                               or now < self._published_at - self.config.tick_s))
            due = ((changed or self._repeat) and not same_tick) or keep_alive
        self._dirty = False
        if not due:
            if self._repeat or (self._published is not None and state != self._published):
                self._dirty = True  # changed within this tick: due at the next one
            return []
        published = self._published
        gossip = (not self.quiet_keep_alives or self._published_at is None or published is None
                  or state != published and material_change(
                      astuple(published), astuple(state), self._network_demand(now))
                  or self._repeat or state.silent)
        data = self._announce(state, now)
        if not gossip:
            self.keep_alives_unpublished += 1
            return []
        return [data]

    def _network_demand(self, now: float) -> tuple[int, int, int]:
        """(counted pending tokens, counted pending requests, counted signers) of our view at
        `now`: what the network-relative demand step of `node.policy` widens with."""
        stats = self.view.stats_at(now)
        return stats.demand_tokens_waiting, stats.pending_requests, stats.counted_nodes

    def reannounce(self) -> None:
        """Publish our current state again at the next tick, changed or not. The driver calls
        this when gossip can first carry it (the node's first mesh peer for the topic): a node's
        first announcement goes out before it has mesh peers, and the peers that pull it by sync
        do not gossip it on, so without a repeat most of the network would learn of a newcomer
        only from its keep-alive, 20 s later."""
        if self._published is not None and not self._published.silent:
            self._repeat = True
            self._dirty = True

    def withdraw(self, now: float) -> bytes | None:
        """The announcement a node publishes when it stops: zero capacity, zero demand, a higher
        seq, so peers stop counting it at once. None if it never announced anything (nobody
        counts it). Ignores the once-per-tick limit: it is the last word."""
        self._offer = OwnOffer(0, 0)
        self._requests.clear()
        self._demand_override = None
        if self._published is None or self._published.silent or self.credential_expired(now):
            return None
        return self._announce(OwnState(0, 0, 0, 0, (0,) * DEMAND_BUCKETS if self._bids else None),
                              now)

    def next_deadline(self) -> float | None:
        """When `poll_announcements` next has work if nothing else changes (a keep-alive, a
        change held back to the next tick, or a queued request expiring); None when only a
        change can make it act. Calling it early is harmless."""
        deadlines: list[float] = []
        if self._published_at is not None:
            if self._dirty:
                next_tick = seconds_of((self.tick_of(self._published_at) + 1) * self.view.tick_ms)
                deadlines.append(next_tick)
            if self._published is not None and not self._published.silent:
                deadlines.append(self._published_at + self._keep_alive_after)
        elif self._dirty:
            deadlines.append(-math.inf)  # never announced: now
        if self._requests and self._demand_override is None:
            deadlines.append(min(r.expires_at for r in self._requests.values()))
        return min(deadlines) if deadlines else None

    def expire(self, now: float) -> int:
        """Drop every announcement older than the 300 s any peer accepts (protocol v2 §7.1): the
        driver calls this every tick, whether or not this node announces. Returns how many."""
        return self.view.expire_before(ms_of(now - MAX_AGE_S))

    @property
    def wants_poll(self) -> bool:
        """Own state changed since the last poll (the driver should poll soon)."""
        return self._dirty

    def _announce(self, state: OwnState, now: float) -> bytes:
        now_ms = ms_of(now)
        seq = max(self._last_seq + 1, now_ms)
        announcement = Announcement(
            signer=self.signer, issued_at_ms=now_ms, seq=seq,
            tokens_per_second=state.tokens_per_second, min_price_nano=state.min_price_nano,
            pending_tokens=state.pending_tokens, pending_requests=state.pending_requests,
            work_nonce=self.work_nonce, credential=self.credential,
            demand_by_limit=state.demand_by_limit)
        data = encode(announcement, self.private_key)
        self._last_seq = seq
        self._published = state
        self._published_at = now
        self._repeat = False
        self._keep_alive_after = self.announce_interval_s * _keep_alive_factor(data)
        self.announcements_published += 1
        # Our own announcement joins our view through the same door as everyone's, so the
        # validator knows our seq and a sync digest includes it.
        verdict = self._accept(data, now, None, None)
        if not verdict.accepted:  # a bug, not a peer's fault: say so loudly
            raise AssertionError(f"own announcement refused by own validator: {verdict.detail}")
        return data

    # -- receiving -----------------------------------------------------------------------------

    def on_gossip(self, data: bytes, now: float, from_peer: bytes | str | None = None) -> Verdict:
        """A gossiped announcement arrived at `now`; `from_peer` is the gossip message's author
        (its signed `from` peer id), which must be the announcement's signer. Never raises."""
        # `_accept(data, now, from_peer, self.gossip_counts)` written out: every gossip message
        # of every peer comes through here.
        try:
            try:
                message = self.validator.check(data, now, from_peer=from_peer)
            except WireError as error:
                verdict = Verdict(REJECTED if error.action == REJECT else IGNORED, error.reason,
                                  None, str(error))
                self.gossip_counts[(verdict[0], verdict[1])] += 1
                if error.signed_time is not None and self.clock_watch is not None:
                    self._heard(error.signed_time, now)
                return verdict
            if not isinstance(message, Announcement):  # a members network's revocation list
                self.view.merge_revocations(message)
                self.gossip_counts[_ACCEPTED_KEY] += 1
                return Verdict(ACCEPTED, ACCEPTED, None, "revocation list")
            self.view.merge_message(message)
            if self.clock_watch is not None:
                self._heard((message.signer, message.issued_at_ms, message.work_nonce), now)
            if message.signer == self.signer and message.seq > self._last_seq:
                self._continue_above(message)
            self.gossip_counts[_ACCEPTED_KEY] += 1
            return tuple.__new__(Verdict, (ACCEPTED, ACCEPTED, message, ""))
        except Exception as exc:  # noqa: BLE001 - a peer's bytes must never crash the node
            verdict = Verdict(REJECTED, "internal_error", None, f"{type(exc).__name__}: {exc}")
            self.gossip_counts[(verdict.outcome, verdict.reason)] += 1
            return verdict

    def on_gossip_many(self, deliveries: Iterable[tuple[bytes, float, bytes | str | None]]
                       ) -> list[Verdict]:
        """`on_gossip(data, now, from_peer)` for each delivery in order: the same verdicts, counts
        and state, with the lookups of a call done once per batch (the simulator hands each
        peer its deliveries in batches; every gossip message of every simulated peer comes
        through here). Never raises."""
        check = self.validator.check
        merge = self.view.merge_message
        counts = self.gossip_counts
        own = self.signer
        watch = self.clock_watch
        verdicts: list[Verdict] = []
        append = verdicts.append
        make = tuple.__new__
        for data, now, from_peer in deliveries:
            try:
                try:
                    message = check(data, now, from_peer=from_peer)
                except WireError as error:
                    verdict = Verdict(REJECTED if error.action == REJECT else IGNORED,
                                      error.reason, None, str(error))
                    counts[(verdict[0], verdict[1])] += 1
                    if error.signed_time is not None and watch is not None:
                        self._heard(error.signed_time, now)
                    append(verdict)
                    continue
                if not isinstance(message, Announcement):  # a members network's revocation list
                    self.view.merge_revocations(message)
                    counts[_ACCEPTED_KEY] += 1
                    append(Verdict(ACCEPTED, ACCEPTED, None, "revocation list"))
                    continue
                merge(message)
                if watch is not None:
                    self._heard((message.signer, message.issued_at_ms, message.work_nonce), now)
                if message.signer == own and message.seq > self._last_seq:
                    self._continue_above(message)
                counts[_ACCEPTED_KEY] += 1
                append(make(Verdict, (ACCEPTED, ACCEPTED, message, "")))
            except Exception as exc:  # noqa: BLE001 - a peer's bytes must never crash the node
                verdict = Verdict(REJECTED, "internal_error", None, f"{type(exc).__name__}: {exc}")
                counts[(verdict.outcome, verdict.reason)] += 1
                append(verdict)
        return verdicts

    def _accept(self, data: bytes, now: float, from_peer: bytes | str | None,
                counts: Counter[tuple[str, str]] | None, history: bool = False) -> Verdict:
        try:
            message = self.validator.check(data, now, from_peer=from_peer, history=history)
        except WireError as error:
            verdict = Verdict(REJECTED if error.action == REJECT else IGNORED, error.reason,
                              None, str(error))
            key = (verdict[0], verdict[1])
            if error.signed_time is not None and self.clock_watch is not None:
                self._heard(error.signed_time, now)
        else:
            verdict, key = self._merge_accepted(message, history)
            if self.clock_watch is not None and type(message) is Announcement:
                self._heard((message.signer, message.issued_at_ms, message.work_nonce), now)
        if counts is not None:
            counts[key] += 1
        return verdict

    def _merge_accepted(self, message: "Announcement | RevocationList",
                        history: bool) -> tuple[Verdict, tuple[str, str]]:
        if type(message) is RevocationList:
            self.view.merge_revocations(message)
            return Verdict(ACCEPTED, ACCEPTED, None, "revocation list"), _ACCEPTED_KEY
        assert type(message) is Announcement
        self.view.merge_message(message)
        if message.signer == self.signer and message.seq > self._last_seq:
            self._continue_above(message)
        if history:
            newest = self.validator.last_seq(message.signer)
            reason = HISTORY if newest is not None and message.seq < newest else ACCEPTED
            return Verdict(ACCEPTED, reason, message), (ACCEPTED, reason)
        return tuple.__new__(Verdict, (ACCEPTED, ACCEPTED, message, "")), _ACCEPTED_KEY

    def _heard(self, signed_time: tuple[bytes, int, int], now: float) -> None:
        """Tell the clock watch a peer's signed time and what its key weighs in the price
        (never our own: it is our clock)."""
        signer, issued_at_ms, work_nonce = signed_time
        if signer != self.signer and self.clock_watch is not None:
            required = self.config.identity_work_bits
            weight = work_weight(work_bits(signer, work_nonce), required) if required else 1.0
            self.clock_watch.observe(signer, issued_at_ms, now, weight)

    def _continue_above(self, message: Announcement) -> None:
        """A previous run of this key announced a higher seq (`message`, just merged): continue
        above it and say again what is true now."""
        self._last_seq = message.seq
        self._published = OwnState.of(message)
        self._published_at = seconds_of(message.issued_at_ms)
        self._dirty = True

    # -- anti-entropy --------------------------------------------------------------------------

    def sync_request(self, now: float) -> bytes:
        """The first frame of a sync exchange: our view's digest and per-bucket digests."""
        view = self.view
        return encode_sync(SyncRequest(view.digest(), tuple(view.bucket_digests()),
                                       view.revocations_digest()))

    def on_sync_request(self, data: bytes, now: float) -> list[bytes]:
        """Answer a peer's sync request with the announcements of every bucket whose digest
        differs from ours (no frames when the views are equal). Raises WireError for a frame that
        is not a valid sync request (the driver resets the stream)."""
        frame = _decode_frame(data, SyncRequest, self.sync_frame_errors, "expected a sync request")
        if frame.digest == self.view.digest():
            return []
        ours = self.view.bucket_digests()
        differing = [i for i, (a, b) in enumerate(zip(frame.bucket_digests, ours)) if a != b]
        wires = [m.wire for m in self.view.messages_in_buckets(differing)]
        if frame.revocations_digest != self.view.revocations_digest():
            wires = [r.wire for r in self.view.revocation_lists()] + wires
        return [encode_sync(r) for r in split_sync_response(wires)]

    def on_sync_response(self, data: bytes, now: float, pass_on: bool = False) -> SyncCounts:
        """Validate and merge the items of one sync response frame, in order, stopping at the
        first rejected one (protocol v2 §8.3: a peer that sends one bad item among many cannot
        make us check the rest; the result's `fault` names it, and the driver drops the rest of
        the stream and charges the peer). Ignored items are skipped. With `pass_on`, the result's
        `forward` lists the accepted items a relay passes on (`synced_change`). Raises WireError
        for a frame that is not a sync response."""
        frame = _decode_frame(data, SyncResponse, self.sync_frame_errors,
                              "expected a sync response")
        items = frame.announcements
        tally: Counter[str] = Counter()
        forward: list[bytes] = []
        for index, item in enumerate(items):
            verdict = self._accept_synced(item, now)
            tally[verdict.outcome] += 1
            if verdict.outcome == REJECTED:
                return SyncCounts(len(items), tally[ACCEPTED], tally[IGNORED], 1,
                                  fault=verdict.reason, unchecked=len(items) - index - 1,
                                  forward=tuple(forward))
            if pass_on and verdict.reason == ACCEPTED and self.synced_change(verdict.message, now):
                forward.append(item)
        return SyncCounts(len(items), tally[ACCEPTED], tally[IGNORED], 0, forward=tuple(forward))

    def synced_change(self, message: "Announcement | RevocationList | None", now: float) -> bool:
        """Whether an announcement just accepted by sync as its signer's newest is one a relay
        passes on (protocol v2 §8.5's MAY): issued within the recent window (T/3, what is still
        spreading) and a change its signer would have published at once (§1.3's material change,
        by our view's totals, or a turn to silence) from the signer's announcement we held before
        it. A change that missed the relay (its first hop failed, or it was quiet) then reaches
        the mesh one sync later instead of spreading by sync alone; a keep-alive, and the whole
        view a joining node pulls (no announcement held before), are not passed on."""
        if type(message) is not Announcement:
            return False
        if message.issued_at_ms < ms_of(now - recent_window_s(self.config.capacity_timeout_s)):
            return False
        previous = None
        for held in self.view.messages_of(message.signer):
            if held.seq < message.seq and (previous is None or held.seq > previous.seq):
                previous = held
        if previous is None:
            return False
        old, new = OwnState.of(previous), OwnState.of(message)
        if old == new:
            return False
        if old.silent or new.silent:
            return True  # to or from silence
        return material_change(astuple(old), astuple(new), self._network_demand(now))

    def on_relay_frame(self, data: bytes, now: float) -> RelayCounts:
        """One relay frame, rules 1 and 3 of protocol v2 §8.5 (the driver applies the budget,
        rule 2, between `decode_relay_frame` and `on_relay_items`). Raises WireError for a frame
        that is not a valid SyncResponse."""
        return self.on_relay_items(self.decode_relay_frame(data), now)

    def decode_relay_frame(self, data: bytes) -> tuple[bytes, ...]:
        """The items of a relay frame (§8.5 rule 1: F1–F8 of §8.2, kind 17 only). Raises
        WireError for any other frame: the driver resets the stream and charges the peer."""
        return _decode_frame(data, SyncResponse, self.relay_frame_errors,
                             "a relay stream carries only sync responses").announcements

    def on_relay_items(self, items: Sequence[bytes], now: float) -> RelayCounts:
        """Check and merge a relay frame's items in order (§8.5 rule 3): live gossip's rules
        without V4 (the relaying peer is not the author; the signature is). Accepted items are
        returned to be passed on; ignored ones and the arrival-dependent rejects
        (`RELAY_SKIPPED`) are skipped; at any other reject it stops, and the result's `fault`
        names it (the driver resets the stream and charges the peer). Never raises."""
        outcomes: list[str] = []
        forward: list[bytes] = []
        ignored = skipped = 0
        for index, item in enumerate(items):
            try:
                verdict = self._accept(item, now, None, self.relay_counts)
            except Exception as exc:  # noqa: BLE001 - a peer's bytes must never crash the node
                verdict = Verdict(REJECTED, "internal_error", None, f"{type(exc).__name__}: {exc}")
                self.relay_counts[(REJECTED, "internal_error")] += 1
            outcome, reason = verdict[0], verdict[1]
            outcomes.append(reason)
            if outcome == ACCEPTED:
                forward.append(item)
            elif outcome == IGNORED:
                ignored += 1
            elif reason in RELAY_SKIPPED:
                skipped += 1
            else:
                return RelayCounts(tuple(outcomes), tuple(forward), len(forward), ignored,
                                   skipped, fault=reason, unchecked=len(items) - index - 1)
        return RelayCounts(tuple(outcomes), tuple(forward), len(forward), ignored, skipped)

    def _accept_synced(self, data: bytes, now: float) -> Verdict:
        # History rules (protocol §8: no V4, V7's history form, no V8): a retained announcement
        # older than one we hold, or several of one signer in a batch, is what sync is for, not a
        # seq regression or a flood.
        try:
            verdict = self._accept(data, now, None, None, True)
        except Exception as exc:  # noqa: BLE001 - a peer's bytes must never crash the node
            verdict = Verdict(REJECTED, "internal_error", None, f"{type(exc).__name__}: {exc}")
        self.sync_counts[(verdict.outcome, verdict.reason)] += 1
        return verdict

    # -- reading the market --------------------------------------------------------------------

    def stats(self, now: float) -> MarketSnapshot:
        """Supply, demand and the price at `now`, from the merged view."""
        totals = self.view.stats_at(now)
        price = self.view.price_at(now)
        return MarketSnapshot(
            now=now, tick=price.tick, price_nano=price.price_nano,
            target_price_nano=price.target_nano, available_nodes=totals.available_nodes,
            supply_tokens_per_sec=totals.supply_tokens_per_sec,
            demand_tokens_waiting=totals.demand_tokens_waiting,
            pending_requests=totals.pending_requests, utilization=totals.utilization)

    def price(self, now: float) -> int:
        """The market price (nano-NEURO per 1M tokens) of the tick `now` falls in."""
        return self.view.price_at(now).price_nano

    def tick_price(self, tick: int) -> TickPrice:
        """Price, target, supply and demand of one tick (the same on every peer holding the same
        announcements)."""
        return self.view.price_at_tick(tick)

    def tick_of(self, now: float) -> int:
        """The tick `now` falls in (the view's integer-ms rule)."""
        return ms_of(now) // self.view.tick_ms

    def counts(self) -> dict[tuple[str, str], int]:
        """Gossip and sync outcomes together: (outcome, reason) → count."""
        total: Counter[tuple[str, str]] = Counter(self.gossip_counts)
        total.update(self.sync_counts)
        return dict(total)


__all__ = [
    "PeerEngine", "Verdict", "SyncCounts", "RelayCounts", "RELAY_SKIPPED", "OwnOffer",
    "LocalRequest", "OwnState",
    "MarketSnapshot",
    "ACCEPTED", "REJECTED", "IGNORED", "OUTCOMES", "HISTORY",
]
