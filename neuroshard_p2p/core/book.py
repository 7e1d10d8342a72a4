"""The order book: capacity offers, inference requests, matching and the request lifecycle.

Sans-IO: every operation takes `now` (seconds since the Unix epoch) and returns what happened;
the book never reads a clock. Timers are the caller's job, as in aioquic: `next_deadline()` says
when to call `advance(now)`, which applies every timeout that fell due and returns the events.

Lifecycle of a request — the whole of it is the table `TRANSITIONS`:

    pending  --claim-------->  claimed  --complete-->  completed --prune (after retention)--> gone
    pending  --expire------->  expired  --prune----------------------------------------------> gone
    claimed  --release------>  pending      (the provider declined or died)
    claimed  --claim_timeout->  pending     (not completed within claim_timeout_s)
    pending | claimed --fail-> failed   --prune----------------------------------------------> gone

Matching (`match`) is O(n log n + m log m) for n pending requests and m offers: requests are kept
sorted by priority (tier, then locked price higher first, then age), offers are sorted by price
once per call, and a max-segment-tree over the offers' free room finds, in O(log m), the cheapest
offer that can still take a request. An offer takes requests while its tokens in flight stay
<= tokens_per_second × target_response_s, so it is never over-allocated.
"""

from __future__ import annotations

import gc
import heapq
import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Iterable, Mapping, NamedTuple

from sortedcontainers import SortedKeyList  # type: ignore[import-untyped]

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.errors import MarketError, format_price, format_prices
from neuroshard_p2p.money import Settlement, settle_amounts

# A Job carries its tier as an index into this tuple (protocols/market-v1.md §5.3): never reorder.
TIERS = ("economy", "standard", "premium")
# Lower rank is matched first.
_TIER_RANK = {"premium": 0, "standard": 1, "economy": 2}

# Request sizes stay exact as floats (the price curve sees demand as a float).
MAX_REQUEST_TOKENS = 2**53
# Ids and user names are held in memory until pruned; an unbounded id would be unbounded memory.
MAX_ID_LENGTH = 256


class State(StrEnum):
    """Where a request is in its lifecycle."""

    PENDING = "pending"
    CLAIMED = "claimed"
    COMPLETED = "completed"
    EXPIRED = "expired"
    FAILED = "failed"


TERMINAL = frozenset({State.COMPLETED, State.EXPIRED, State.FAILED})

# The lifecycle, as data. (state, action) -> next state; None means the record is removed.
TRANSITIONS: Mapping[tuple[State, str], State | None] = {
    (State.PENDING, "claim"): State.CLAIMED,
    (State.PENDING, "expire"): State.EXPIRED,
    (State.PENDING, "fail"): State.FAILED,
    (State.CLAIMED, "complete"): State.COMPLETED,
    (State.CLAIMED, "release"): State.PENDING,
    (State.CLAIMED, "claim_timeout"): State.PENDING,
    (State.CLAIMED, "fail"): State.FAILED,
    (State.COMPLETED, "prune"): None,
    (State.EXPIRED, "prune"): None,
    (State.FAILED, "prune"): None,
}

# What a state's deadline means when it passes.
TIMEOUT_ACTION: Mapping[State, str] = {
    State.PENDING: "expire",
    State.CLAIMED: "claim_timeout",
    State.COMPLETED: "prune",
    State.EXPIRED: "prune",
    State.FAILED: "prune",
}


@dataclass(frozen=True)
class RestingOffer:
    """A node's offer of capacity resting in the book: `tokens_per_second` at no less than
    `min_price_nano` per 1M tokens, as announced at `announced_at`. It counts until announced_at +
    capacity_timeout_s. (The merged view's `view.CountedOffer` is the same offer as the view
    counts it, keyed by signer and in ms; a node's own is `node.engine.OwnOffer`.)"""

    node_id: str
    tokens_per_second: int
    min_price_nano: int
    announced_at: float
    #: Among offers at the same min price, lower ranks are matched first (a gateway's preference
    #: for providers with a good record; the price order is never changed by it).
    rank: int = 0
    #: > 0: the offer is on probation — it takes one request at a time, of at most this many
    #: tokens (a gateway tries a provider it has no settled history with on small jobs first).
    probation_tokens: int = 0

    def capacity_tokens(self, target_response_s: float) -> int:
        """How many tokens this offer may have in flight: what it serves in target_response_s."""
        return math.floor(self.tokens_per_second * target_response_s)


class Match(NamedTuple):
    """A request handed to a provider at its locked price. (A NamedTuple rather than a frozen
    dataclass: one match call can make 100k of them, and these build 2x faster; equally
    immutable.)"""

    request_id: str
    node_id: str
    locked_price_nano: int
    tokens: int


@dataclass(frozen=True)
class RequestStatus:
    """A snapshot of one request, for callers (the live record stays inside the book)."""

    request_id: str
    user: str
    tokens: int
    max_price_nano: int
    tier: str
    submitted_at: float
    locked_price_nano: int
    expires_at: float
    state: State
    reason: str
    provider: str | None
    claimed_at: float | None
    finished_at: float | None
    tokens_served: int | None
    settlement: Settlement | None


@dataclass(frozen=True)
class OfferExpired:
    """An offer was not re-announced within capacity_timeout_s and stopped counting."""

    node_id: str


@dataclass(frozen=True)
class OfferRejected:
    """An offer in a bulk `set_offers` was not taken, and why."""

    node_id: str
    reason: str


@dataclass(frozen=True)
class RequestRequeued:
    """A claimed request went back to pending because its provider did not complete in time."""

    request_id: str
    node_id: str
    reason: str


@dataclass(frozen=True)
class RequestExpired:
    """A pending request found no provider before its expiry."""

    request_id: str
    reason: str


BookEvent = OfferExpired | RequestRequeued | RequestExpired


class _Request:
    """The live, mutable record of a request. Only the book changes it."""

    __slots__ = ("request_id", "user", "tokens", "max_price_nano", "tier", "submitted_at",
                 "locked_price_nano", "expires_at", "state", "reason", "provider", "claimed_at",
                 "finished_at", "tokens_served", "settlement", "priority")

    def __init__(self, request_id: str, user: str, tokens: int, max_price_nano: int, tier: str,
                 submitted_at: float, locked_price_nano: int, expires_at: float) -> None:
        self.request_id = request_id
        self.user = user
        self.tokens = tokens
        self.max_price_nano = max_price_nano
        self.tier = tier
        self.submitted_at = submitted_at
        self.locked_price_nano = locked_price_nano
        self.expires_at = expires_at
        self.state = State.PENDING
        self.reason = "waiting for a match"
        self.provider: str | None = None
        self.claimed_at: float | None = None
        self.finished_at: float | None = None
        self.tokens_served: int | None = None
        self.settlement: Settlement | None = None
        # The matching order; the id breaks ties so the order never depends on arrival.
        self.priority = (_TIER_RANK[tier], -locked_price_nano, submitted_at, request_id)

    def status(self) -> RequestStatus:
        # A claimed request's reason is always who has it (`match` does not write one each).
        reason = f"claimed by {self.provider}" if self.state is State.CLAIMED else self.reason
        return RequestStatus(
            request_id=self.request_id, user=self.user, tokens=self.tokens,
            max_price_nano=self.max_price_nano, tier=self.tier, submitted_at=self.submitted_at,
            locked_price_nano=self.locked_price_nano, expires_at=self.expires_at,
            state=self.state, reason=reason, provider=self.provider, claimed_at=self.claimed_at,
            finished_at=self.finished_at, tokens_served=self.tokens_served,
            settlement=self.settlement)


def _priority(request: _Request) -> tuple[int, int, float, str]:
    return request.priority


def _offer_order(offer: RestingOffer) -> tuple[int, int, str]:
    return (offer.min_price_nano, offer.rank, offer.node_id)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_time(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


_OFFER_TIMER = 0
_REQUEST_TIMER = 1
_TimerKey = str | list[_Request]   # a node id, or request records


class OrderBook:
    """Offers (one per node) and requests, with matching and the request lifecycle.

    Supply (`supply_tokens_per_sec`) and demand (`demand_tokens_waiting`) are kept as running
    totals, so reading them is O(1) whatever the size of the book. Offers that were not
    re-announced are still counted until `advance(now)` removes them; `match` never uses them.
    """

    def __init__(self, config: MarketConfig | None = None) -> None:
        self._config = config if config is not None else MarketConfig()
        self._offers: dict[str, RestingOffer] = {}
        self._supply = 0
        self._requests: dict[str, _Request] = {}
        self._pending: SortedKeyList = SortedKeyList(key=_priority)
        self._pending_tokens = 0
        self._claimed = 0
        self._in_flight: dict[str, int] = {}
        # A lazy heap of (deadline, seq, kind, key): an entry whose deadline no longer matches its
        # offer or request is stale and skipped when popped. A request entry carries a batch of
        # records (all requests claimed by one `match` call share a deadline).
        self._timers: list[tuple[float, int, int, _TimerKey]] = []
        self._timer_seq = 0
        self.counters: dict[str, int] = dict.fromkeys(
            ("submitted", "matched", "completed", "released", "requeued", "expired", "failed",
             "pruned", "offers_expired", "payment_nano", "burned_nano", "earned_nano"), 0)

    # ---------------------------------------------------------------- reading the book

    @property
    def config(self) -> MarketConfig:
        """The configuration the book runs with (timeouts, room per offer, burn rate)."""
        return self._config

    @property
    def supply_tokens_per_sec(self) -> int:
        """Tokens per second offered by the offers held."""
        return self._supply

    @property
    def demand_tokens_waiting(self) -> int:
        """Tokens of the pending (not yet claimed) requests."""
        return self._pending_tokens

    @property
    def pending_count(self) -> int:
        """Requests waiting for a match."""
        return len(self._pending)

    @property
    def claimed_count(self) -> int:
        """Requests claimed by a provider and not yet completed, released or failed."""
        return self._claimed

    @property
    def offer_count(self) -> int:
        """Offers held (stale ones too, until `advance` removes them)."""
        return len(self._offers)

    def __len__(self) -> int:
        """Request records held, in any state (terminal ones until they are pruned)."""
        return len(self._requests)

    def timer_count(self) -> int:
        """Timer entries held, stale ones included (bounded: see `_compact_timers`)."""
        return len(self._timers)

    def offers(self) -> list[RestingOffer]:
        """The offers held, cheapest first."""
        return sorted(self._offers.values(), key=_offer_order)

    def offer(self, node_id: str) -> RestingOffer | None:
        """`node_id`'s offer, or None."""
        return self._offers.get(node_id) if isinstance(node_id, str) else None

    def in_flight(self, node_id: str) -> int:
        """Tokens of the requests `node_id` has claimed and not yet completed."""
        return self._in_flight.get(node_id, 0) if isinstance(node_id, str) else 0

    def get(self, request_id: str) -> RequestStatus | None:
        """A snapshot of the request, or None if unknown or already pruned."""
        request = self._requests.get(request_id) if isinstance(request_id, str) else None
        return None if request is None else request.status()

    def pending(self) -> list[RequestStatus]:
        """Pending requests in matching order."""
        return [request.status() for request in self._pending]

    def requests(self) -> list[RequestStatus]:
        """Every request record held, in no particular order."""
        return [request.status() for request in self._requests.values()]

    def next_deadline(self) -> float | None:
        """A time at or before the next timeout; call `advance` then. (It may be early when a
        deadline was superseded; advancing early is harmless.)"""
        return self._timers[0][0] if self._timers else None

    # ---------------------------------------------------------------- offers

    def set_offer(self, node_id: str, tokens_per_second: int, min_price_nano: int, now: float,
                  announced_at: float | None = None) -> RestingOffer | None:
        """Add or replace `node_id`'s offer. Zero tokens per second withdraws it (and returns None).
        Raises MarketError for an implausible offer."""
        offer = RestingOffer(node_id, tokens_per_second, min_price_nano,
                      now if announced_at is None else announced_at)
        problem = self._offer_problem(offer)
        if problem:
            raise MarketError(problem)
        if tokens_per_second == 0:
            self.withdraw(node_id)
            return None
        self._put_offer(offer)
        self._compact_timers()
        return offer

    def set_offers(self, offers: Iterable[RestingOffer], now: float) -> list[OfferRejected]:
        """Replace every offer at once (e.g. from the merged network view). Offers with zero
        capacity are withdrawals and are skipped; implausible, duplicate or already stale ones
        are returned as rejects with a reason. Tokens in flight are kept: they are owed work."""
        rejects: list[OfferRejected] = []
        accepted: dict[str, RestingOffer] = {}
        timeout = self._config.capacity_timeout_s
        for offer in offers:
            if not isinstance(offer, RestingOffer):
                rejects.append(OfferRejected(str(getattr(offer, "node_id", "?")),
                                             f"not a RestingOffer: {type(offer).__name__}"))
                continue
            problem = self._offer_problem(offer)
            if problem:
                rejects.append(OfferRejected(str(offer.node_id), problem))
            elif offer.node_id in accepted:
                rejects.append(OfferRejected(offer.node_id, "duplicate offer for this node"))
            elif offer.tokens_per_second == 0:
                continue
            elif offer.announced_at + timeout <= now:
                rejects.append(OfferRejected(
                    offer.node_id, f"stale: announced {now - offer.announced_at:.0f} s ago "
                                   f"(capacity timeout {timeout:g} s)"))
            else:
                accepted[offer.node_id] = offer
        self._offers = {}
        self._supply = 0
        for offer in accepted.values():
            self._put_offer(offer)
        self._compact_timers()
        return rejects

    def withdraw(self, node_id: str) -> bool:
        """Remove `node_id`'s offer; True if there was one. Its claimed requests stay claimed
        (it may still finish them; if not, the claim timeout returns them to pending)."""
        if not isinstance(node_id, str):
            return False
        offer = self._offers.pop(node_id, None)
        if offer is None:
            return False
        self._supply -= offer.tokens_per_second
        return True

    def _offer_problem(self, offer: RestingOffer) -> str:
        limit = self._config.max_node_tokens_per_s
        if not isinstance(offer.node_id, str) or not 0 < len(offer.node_id) <= MAX_ID_LENGTH:
            return f"node id must be a non-empty string of at most {MAX_ID_LENGTH} characters"
        if not _is_int(offer.tokens_per_second) or offer.tokens_per_second < 0:
            return f"tokens_per_second must be an integer >= 0, got {offer.tokens_per_second!r}"
        if offer.tokens_per_second > limit:
            return (f"tokens_per_second {offer.tokens_per_second} is implausible for one node "
                    f"(limit {limit})")
        if not _is_int(offer.min_price_nano) or offer.min_price_nano < 0:
            return f"min_price must be >= 0, got {offer.min_price_nano!r} nano"
        if not _is_time(offer.announced_at):
            return f"announced_at must be a finite time, got {offer.announced_at!r}"
        if not _is_int(offer.rank) or not _is_int(offer.probation_tokens) \
                or offer.probation_tokens < 0:
            return (f"rank must be an integer and probation_tokens an integer >= 0, got "
                    f"{offer.rank!r} and {offer.probation_tokens!r}")
        return ""

    def _put_offer(self, offer: RestingOffer) -> None:
        old = self._offers.get(offer.node_id)
        if old is not None:
            self._supply -= old.tokens_per_second
        self._offers[offer.node_id] = offer
        self._supply += offer.tokens_per_second
        self._push_timer(offer.announced_at + self._config.capacity_timeout_s, _OFFER_TIMER,
                         offer.node_id)

    def _fresh(self, offer: RestingOffer, now: float) -> bool:
        return now < offer.announced_at + self._config.capacity_timeout_s

    # ---------------------------------------------------------------- requests

    def submit(self, request_id: str, user: str, tokens: int, max_price_nano: int,
               price_nano: int, now: float, tier: str = "standard") -> RequestStatus:
        """Take a request at the current price `price_nano`, which it locks. Raises MarketError if
        the request is malformed, its id is taken, or `max_price_nano` is below the price."""
        if not isinstance(request_id, str) or not 0 < len(request_id) <= MAX_ID_LENGTH:
            raise MarketError(
                f"request id must be a non-empty string of at most {MAX_ID_LENGTH} characters")
        if not isinstance(user, str) or len(user) > MAX_ID_LENGTH:
            raise MarketError(f"user must be a string of at most {MAX_ID_LENGTH} characters")
        if not _is_int(tokens) or tokens <= 0:
            raise MarketError(f"tokens must be a whole number > 0, got {tokens!r}")
        if tokens > MAX_REQUEST_TOKENS:
            raise MarketError(f"tokens {tokens} exceeds the limit of {MAX_REQUEST_TOKENS}")
        if not _is_int(max_price_nano) or max_price_nano < 0:
            shown = format_price(max_price_nano) if _is_int(max_price_nano) else repr(max_price_nano)
            raise MarketError(f"max_price must be >= 0, got {shown}")
        if not isinstance(tier, str) or tier not in _TIER_RANK:
            raise MarketError(f"tier must be one of {', '.join(TIERS)}, got {tier!r}")
        if not _is_int(price_nano) or price_nano < 0:
            raise MarketError(f"the current price must be an integer >= 0, got {price_nano!r}")
        if not _is_time(now):
            raise MarketError(f"now must be a finite time, got {now!r}")
        existing = self._requests.get(request_id)
        if existing is not None:
            raise MarketError(f"request id {request_id!r} is already taken ({existing.state})")
        if self._config.clearing:
            # Revision 2.1: on a clearing market a request is a bid. It waits, whatever the
            # price now, and locks the clearing price when it is matched (`match`); until then
            # its locked price reads as its max price, which also ranks it among its tier (the
            # higher bid first, as the higher locked price is first on a curve market).
            price_nano = max_price_nano
        elif price_nano > max_price_nano:
            current, limit = format_prices(price_nano, max_price_nano)
            raise MarketError(f"current price {current} > max_price {limit}")
        request = _Request(request_id, user, tokens, max_price_nano, tier, now, price_nano,
                           now + self._config.request_expiry_s)
        self._requests[request_id] = request
        self._pending.add(request)
        self._pending_tokens += tokens
        self._push_timer(request.expires_at, _REQUEST_TIMER, [request])
        self.counters["submitted"] += 1
        self._compact_timers()
        return request.status()

    def match(self, now: float, clearing_price_nano: int | None = None) -> list[Match]:
        """Match pending requests to offers: requests by tier, then locked price (higher first),
        then age; each to the cheapest fresh offer whose min_price <= its locked price and whose
        tokens in flight stay <= capacity with it. Matched requests are claimed. Requests left
        pending get a reason saying why. Timeouts due by `now` are applied only by `advance`:
        call it first with the same `now` (the embedded market and the node's desk do).

        On a clearing market (revision 2.1) pass the clearing price p of the tick: only requests
        whose max price is >= p are matched, only to offers asking <= p, and each locks p (the
        same priority rules; a request's locked price before that is its bid)."""
        if self._config.clearing and clearing_price_nano is None:
            raise MarketError("a clearing market matches at the clearing price: pass it")
        # One call can make 100k Match records; each batch of 700 would trigger a collection,
        # and the older generations walk the whole book. Matching makes no reference cycles, so
        # the collector waits until it is done (measured: 2.3x faster at 100k requests).
        enabled = gc.isenabled()
        gc.disable()
        try:
            return self._match(now, clearing_price_nano if self._config.clearing else None)
        finally:
            if enabled:
                gc.enable()

    def _match(self, now: float, clearing: int | None) -> list[Match]:
        pending = self._pending
        if not pending:
            return []
        offers = sorted((o for o in self._offers.values() if self._fresh(o, now)),
                        key=_offer_order)
        if not offers:
            for request in pending:
                request.reason = "no capacity offered"
            return []
        target_response_s = self._config.target_response_s
        in_flight = self._in_flight
        # Max-segment-tree over the offers' free room, leaves in price order.
        size = 1 << (len(offers) - 1).bit_length()
        tree = [-1] * (2 * size)
        probation = False
        for i, offer in enumerate(offers):
            tree[size + i] = (offer.capacity_tokens(target_response_s)
                              - in_flight.get(offer.node_id, 0))
            if offer.probation_tokens > 0:
                probation = True
                tree[size + i] = self._room(offer)
        for node in range(size - 1, 0, -1):
            left, right = tree[2 * node], tree[2 * node + 1]
            tree[node] = left if left > right else right
        prices = [offer.min_price_nano for offer in offers]
        node_ids = [offer.node_id for offer in offers]
        room_before = tree[size:size + len(offers)]
        claimed_state = TRANSITIONS[(State.PENDING, "claim")]

        matches: list[Match] = []
        claimed: list[_Request] = []
        unmatched: list[_Request] = []
        claimed_tokens = 0
        probation_used: dict[int, int] = {}  # offer index → tokens claimed (one request each)
        # The last offer found by a full search, and the largest room of the offers cheaper than
        # it: while a request needs more than that, the same offer is still the cheapest with
        # room, and the O(log m) search can be skipped.
        last = -1
        room_left_of_last = 0
        for request in pending:
            tokens = request.tokens
            if clearing is not None and request.max_price_nano < clearing:
                unmatched.append(request)
                continue
            if last >= 0 and tokens > room_left_of_last and tree[size + last] >= tokens:
                node = size + last
            else:
                if tree[1] < tokens:
                    unmatched.append(request)
                    continue
                # Descend to the leftmost (cheapest) leaf with room >= tokens, noting the largest
                # room of the subtrees passed on the left.
                node = 1
                room_left_of_last = -1
                while node < size:
                    node <<= 1
                    room = tree[node]
                    if room < tokens:
                        if room > room_left_of_last:
                            room_left_of_last = room
                        node += 1
                last = node - size
            index = node - size
            locked = request.locked_price_nano if clearing is None else clearing
            # The cheapest offer with room: if even it asks more than the locked price, so does
            # every offer with room.
            if prices[index] > locked:
                unmatched.append(request)
                continue
            value = tree[node] - tokens
            if probation and offers[index].probation_tokens > 0:
                value = 0  # one request at a time
                probation_used[index] = tokens
            tree[node] = value
            while node > 1:
                sibling = tree[node ^ 1]
                if sibling > value:
                    value = sibling
                node >>= 1
                if tree[node] == value:
                    break
                tree[node] = value
            node_id = node_ids[index]
            request.state = claimed_state
            request.locked_price_nano = locked
            request.provider = node_id
            request.claimed_at = now
            claimed.append(request)
            claimed_tokens += tokens
            matches.append(Match(request.request_id, node_id, locked, tokens))

        if claimed:
            for index, before in enumerate(room_before):
                used = probation_used.get(index, before - tree[size + index])
                if used:
                    in_flight[node_ids[index]] = in_flight.get(node_ids[index], 0) + used
            self._finish_claims(claimed, unmatched, claimed_tokens, now)
        cheapest = prices[0]
        for request in unmatched:
            if clearing is not None and request.max_price_nano < clearing:
                request.reason = (f"your max price {format_price(request.max_price_nano)} is "
                                  f"below the clearing price {format_price(clearing)}")
            elif clearing is not None and cheapest > clearing:
                request.reason = (f"no offer at or below the clearing price "
                                  f"{format_price(clearing)}")
            elif clearing is not None:
                request.reason = (f"no offer at or below the clearing price "
                                  f"{format_price(clearing)} with room for {request.tokens} "
                                  f"tokens")
            elif cheapest > request.locked_price_nano:
                request.reason = (f"no offer at or below your locked price "
                                  f"{format_price(request.locked_price_nano)}")
            else:
                request.reason = (f"no offer at or below your locked price with room for "
                                  f"{request.tokens} tokens")
        return matches

    def _finish_claims(self, claimed: list[_Request], unmatched: list[_Request],
                       claimed_tokens: int, now: float) -> None:
        """The rest of the pending -> claimed transition for the requests one `match` claimed (it
        set their state, provider, claimed_at and tokens in flight): what `_transition` does for
        one, done once for the batch — one pass over the pending index and one timer."""
        if len(claimed) * 8 > len(self._pending):
            # Rebuilding from the (already ordered) rest is O(n); removing one by one is O(k log n).
            self._pending = SortedKeyList(unmatched, key=_priority)
        else:
            for request in claimed:
                self._pending.remove(request)
        self._pending_tokens -= claimed_tokens
        self._claimed += len(claimed)
        self.counters["matched"] += len(claimed)
        self._push_timer(now + self._config.claim_timeout_s, _REQUEST_TIMER, claimed)
        self._compact_timers()

    def claim(self, request_id: str, node_id: str, now: float) -> Match:
        """`node_id` claims one given pending request. Raises MarketError if it may not: the
        request is not pending, the node has no fresh offer, asks more than the locked price,
        or has no room for it."""
        request = self._get(request_id)
        self._check(request, "claim")
        offer = self.offer(node_id)
        if offer is None or not self._fresh(offer, now):
            raise MarketError(f"node {node_id!r} has no capacity offered")
        if offer.min_price_nano > request.locked_price_nano:
            asked, locked = format_prices(offer.min_price_nano, request.locked_price_nano)
            raise MarketError(f"node {node_id!r} asks at least {asked} > locked price {locked} "
                              f"of request {request_id!r}")
        room = self._room(offer)
        if request.tokens > room:
            raise MarketError(f"node {node_id!r} has room for {max(room, 0)} more tokens; "
                              f"request {request_id!r} needs {request.tokens}")
        self._transition(request, "claim", now, node_id=node_id)
        self.counters["matched"] += 1
        return Match(request.request_id, node_id, request.locked_price_nano, request.tokens)

    def claim_next(self, node_id: str, now: float) -> Match | None:
        """`node_id` claims the first pending request, in matching order, that it can take (its
        min_price <= the locked price, and room for the tokens); None if there is none. O(n)."""
        offer = self.offer(node_id)
        if offer is None or not self._fresh(offer, now):
            raise MarketError(f"node {node_id!r} has no capacity offered")
        room = self._room(offer)
        for request in self._pending:
            if request.locked_price_nano >= offer.min_price_nano and request.tokens <= room:
                return self.claim(request.request_id, node_id, now)
        return None

    def complete(self, request_id: str, tokens_served: int, now: float,
                 node_id: str | None = None) -> Settlement:
        """A claimed request was served: settle `tokens_served` (at most the tokens requested) at
        its locked price. If `node_id` is given it must be the provider that claimed it.
        Returns the Settlement; payment == earned + burned."""
        request = self._get(request_id)
        if not _is_int(tokens_served) or not 0 <= tokens_served <= request.tokens:
            raise MarketError(f"tokens_served must be a whole number in 0..{request.tokens} for "
                              f"request {request_id!r}, got {tokens_served!r}")
        if node_id is not None and request.state is State.CLAIMED and request.provider != node_id:
            raise MarketError(f"request {request_id!r} is claimed by {request.provider!r}, "
                              f"not {node_id!r}")
        self._check(request, "complete")
        settlement = settle_amounts(tokens_served, request.locked_price_nano,
                                    self._config.burn_rate)
        request.tokens_served = tokens_served
        request.settlement = settlement
        self._transition(request, "complete", now,
                         reason=f"served {tokens_served} of {request.tokens} tokens")
        self.counters["completed"] += 1
        self.counters["payment_nano"] += settlement.payment
        self.counters["burned_nano"] += settlement.burned
        self.counters["earned_nano"] += settlement.earned
        return settlement

    def release(self, request_id: str, now: float,
                reason: str = "released by its provider") -> RequestStatus:
        """A claimed request goes back to pending (the provider declined, or died), keeping its
        place in the queue (its age and locked price)."""
        request = self._get(request_id)
        self._transition(request, "release", now, reason=reason)
        self.counters["released"] += 1
        return request.status()

    def forget(self, request_id: str, now: float) -> None:
        """Prune a finished request before its retention_s is up (its holder keeps fewer
        records than retention_s would). Raises MarketError unless it is finished."""
        request = self._get(request_id)
        self._transition(request, "prune", now)
        self.counters["pruned"] += 1

    def fail(self, request_id: str, now: float, reason: str) -> RequestStatus:
        """A pending or claimed request ends unserved, e.g. the backend cannot run it. Nothing is
        paid."""
        request = self._get(request_id)
        self._transition(request, "fail", now, reason=reason)
        self.counters["failed"] += 1
        return request.status()

    # ---------------------------------------------------------------- time

    def advance(self, now: float) -> list[BookEvent]:
        """Apply every timeout with a deadline <= now, each at its own deadline (so the result
        does not depend on how often this is called): stale offers stop counting, claimed
        requests past claim_timeout_s go back to pending, pending ones past expiry expire, and
        terminal ones past retention_s are pruned."""
        events: list[BookEvent] = []
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, _, kind, key = heapq.heappop(timers)
            if kind == _OFFER_TIMER:
                assert isinstance(key, str)
                offer = self._offers.get(key)
                if offer is not None and (offer.announced_at + self._config.capacity_timeout_s
                                          == deadline):
                    self.withdraw(key)
                    self.counters["offers_expired"] += 1
                    events.append(OfferExpired(key))
                continue
            assert isinstance(key, list)
            for request in key:
                if (self._requests.get(request.request_id) is not request
                        or self._deadline(request) != deadline):
                    continue  # superseded
                event = self._time_out(request, deadline)
                if event is not None:
                    events.append(event)
        return events

    def _time_out(self, request: _Request, deadline: float) -> BookEvent | None:
        action = TIMEOUT_ACTION[request.state]
        if action == "claim_timeout":
            provider = request.provider or "?"
            reason = (f"provider {provider} did not complete within "
                      f"{self._config.claim_timeout_s:g} s; waiting for another")
            self._transition(request, action, deadline, reason=reason)
            self.counters["requeued"] += 1
            return RequestRequeued(request.request_id, provider, reason)
        if action == "expire":
            reason = (f"expired after {self._config.request_expiry_s:g} s without a provider "
                      f"(last: {request.reason})")
            self._transition(request, action, deadline, reason=reason)
            self.counters["expired"] += 1
            return RequestExpired(request.request_id, reason)
        self._transition(request, action, deadline)
        self.counters["pruned"] += 1
        return None

    # ---------------------------------------------------------------- the state machine

    def _get(self, request_id: str) -> _Request:
        request = self._requests.get(request_id) if isinstance(request_id, str) else None
        if request is None:
            raise MarketError(f"unknown request {request_id!r} (never submitted, or pruned "
                              f"{self._config.retention_s:g} s after it finished)")
        return request

    @staticmethod
    def _check(request: _Request, action: str) -> State | None:
        try:
            return TRANSITIONS[(request.state, action)]
        except KeyError:
            raise MarketError(f"request {request.request_id!r} is {request.state}; "
                              f"cannot {action.replace('_', ' ')} it") from None

    def _deadline(self, request: _Request) -> float:
        """When the request's current state times out (see TIMEOUT_ACTION). Derived from the
        record, so a timer entry is current exactly when its deadline equals this."""
        if request.state is State.PENDING:
            return request.expires_at
        if request.state is State.CLAIMED:
            assert request.claimed_at is not None
            return request.claimed_at + self._config.claim_timeout_s
        assert request.finished_at is not None
        return request.finished_at + self._config.retention_s

    def _room(self, offer: RestingOffer) -> int:
        in_flight = self._in_flight.get(offer.node_id, 0)
        room = offer.capacity_tokens(self._config.target_response_s) - in_flight
        if offer.probation_tokens > 0:
            return 0 if in_flight else min(room, offer.probation_tokens)
        return room

    def _transition(self, request: _Request, action: str, now: float, *, reason: str = "",
                    node_id: str | None = None) -> None:
        """Move `request` along TRANSITIONS, keeping every running total and index in step:
        what leaving the old state undoes, then what entering the new one does."""
        new = self._check(request, action)
        old = request.state
        if old is State.PENDING:
            self._pending.remove(request)
            self._pending_tokens -= request.tokens
        elif old is State.CLAIMED:
            assert request.provider is not None
            left = self._in_flight[request.provider] - request.tokens
            if left:
                self._in_flight[request.provider] = left
            else:
                del self._in_flight[request.provider]  # keeps the map bounded by live claims
            self._claimed -= 1
        if new is None:
            del self._requests[request.request_id]
            return
        request.state = new
        request.reason = reason
        if new is State.PENDING:
            request.provider = None
            request.claimed_at = None
            self._pending.add(request)
            self._pending_tokens += request.tokens
        elif new is State.CLAIMED:
            assert node_id is not None
            request.provider = node_id
            request.claimed_at = now
            self._in_flight[node_id] = self._in_flight.get(node_id, 0) + request.tokens
            self._claimed += 1
        else:
            request.finished_at = now
        self._push_timer(self._deadline(request), _REQUEST_TIMER, [request])
        self._compact_timers()

    # ---------------------------------------------------------------- timers

    def _push_timer(self, deadline: float, kind: int, key: _TimerKey) -> None:
        self._timer_seq += 1
        heapq.heappush(self._timers, (deadline, self._timer_seq, kind, key))

    def _compact_timers(self) -> None:
        """Drop superseded timer entries once they outnumber the live ones, so memory stays
        bounded by the offers and requests held (not by how often they changed)."""
        live = len(self._offers) + len(self._requests)
        if len(self._timers) <= 2 * live + 1024:
            return
        timeout = self._config.capacity_timeout_s
        entries: list[tuple[float, int, int, _TimerKey]] = []
        for offer in self._offers.values():
            self._timer_seq += 1
            entries.append((offer.announced_at + timeout, self._timer_seq, _OFFER_TIMER,
                            offer.node_id))
        for request in self._requests.values():
            self._timer_seq += 1
            entries.append((self._deadline(request), self._timer_seq, _REQUEST_TIMER,
                            [request]))
        heapq.heapify(entries)
        self._timers = entries


__all__ = [
    "TIERS", "State", "TERMINAL", "TRANSITIONS", "TIMEOUT_ACTION", "RestingOffer", "Match",
    "RequestStatus", "OfferExpired", "OfferRejected", "RequestRequeued", "RequestExpired",
    "BookEvent", "OrderBook", "MAX_REQUEST_TOKENS", "MAX_ID_LENGTH",
]
