"""Accountability per remote peer, sans-IO: faults, a decaying score, bans, the sync budget.

A `PeerGuard` is told each fault a remote peer commits and the time (`fault(peer, kind, now)`);
it keeps one decaying score per peer and says when a peer has earned a ban. The node driver
(`node/host.py`) acts on it: it blacklists the peer in pubsub, closes its connections and refuses
it (`should_refuse(peer, now)`) until the ban ends (`expire(now)` names the peers to let back in).
The guard reads no clock and touches no socket, so its numbers are exact in tests.

Faults (protocol v2 §14.1; the weights are this node's local policy, not the protocol's):

    kind               weight  what the peer did
    gossip_reject        1     sent a gossip message our validator rejected (a reject, never an ignore)
    sync_item           10     answered our sync with an item we rejected (we stopped there)
    sync_frame          10     sent a sync frame that is not a valid frame of its side (F1–F8, kind)
    sync_over_budget     5     asked for a sync beyond its budget (3 at once, one per 10 s)
    job_frame           10     sent a job-stream frame that does not decode (or is not the kind due)
    relay_item          10     relayed an item we rejected for its bytes (we stopped there; §8.5)
    relay_frame         10     sent a relay frame that is not a valid SyncResponse (F1–F8, kind)
    relay_over_budget    5     sent a relay frame beyond its budget (`RelayBudget`)

Score: 0 for a peer with no faults; each fault subtracts its weight; the score decays back
towards 0 with a half-life of 60 s (`score(t) = score(t0) · 2^-(t - t0)/60`). At or below the
graylist threshold, -19.5, the peer is banned and its score starts again from 0. The threshold
is 20 points less half a point, so that faults that come in a burst count whole: 20 gossip
rejects within about 2 s (decay takes less than half a point off them), two forged sync answers
within 4 s, or four over-budget sync requests within 2 s earn a ban, exactly; spread over minutes
it takes more. An honest peer whose occasional message we reject never gets near it.

Bans last 300 s; a peer banned again within a day of its last ban's end gets twice the previous
period (300, 600, 1,200, ... capped at one day), as Hivemind/Petals double theirs.

Which rejects count against the peer that forwarded a gossip message: a message's bytes decide
most rejects the same way at every peer (a forged signature, a malformed body, an implausible
capacity), so an honest forwarder, which validated the message before relaying it, never relays
one. Two depend on when and where the message arrives: `future` (the receiver's clock) and
`rate_limited` (the order and spacing in which copies of the signer's messages arrived). An
honest forwarder can relay such a message in good faith, so these count only against the peer
that authored the message itself (`is_peer_fault`). `internal_error` is our own bug and never
counts.

The sync budget (protocol v2 §8.3): per remote peer, a token bucket of 3 refilled continuously at
one token per 10 s, created full at the peer's first request; a request that finds less than one
token is refused and takes none (`take_sync`). Honest dialers pace themselves below it with their
own bucket of 2 refilled one per 12 s per remote peer (`SYNC_PACE`), so network jitter between
their clock and the listener's cannot push an honest request over budget.

Memory is bounded: at most `max_peers_tracked` peers are remembered, the least recently seen
forgotten first (a ban still running is kept over a peer that is merely scored).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Hashable, Mapping

from neuroshard_p2p.node.bounded import forget_beyond

GOSSIP_REJECT = "gossip_reject"
SYNC_ITEM = "sync_item"
SYNC_FRAME = "sync_frame"
SYNC_OVER_BUDGET = "sync_over_budget"
JOB_FRAME = "job_frame"
RELAY_ITEM = "relay_item"
RELAY_FRAME = "relay_frame"
RELAY_OVER_BUDGET = "relay_over_budget"
FAULT_KINDS = (GOSSIP_REJECT, SYNC_ITEM, SYNC_FRAME, SYNC_OVER_BUDGET, JOB_FRAME, RELAY_ITEM,
               RELAY_FRAME, RELAY_OVER_BUDGET)

#: What each fault subtracts from the peer's score (see the module docstring).
FAULT_WEIGHTS: Mapping[str, float] = {
    GOSSIP_REJECT: 1.0, SYNC_ITEM: 10.0, SYNC_FRAME: 10.0, SYNC_OVER_BUDGET: 5.0, JOB_FRAME: 10.0,
    RELAY_ITEM: 10.0, RELAY_FRAME: 10.0, RELAY_OVER_BUDGET: 5.0,
}

#: Reject reasons that depend on the receiver's clock or on arrival order, not on the message's
#: bytes: they count only against the peer that authored the message (see the module docstring).
ARRIVAL_DEPENDENT = frozenset({"future", "rate_limited"})
#: Reasons that are never the peer's fault.
NOT_A_FAULT = frozenset({"internal_error"})


def is_peer_fault(reason: str, *, authored: bool) -> bool:
    """Whether a rejected message with this reason counts against the peer it came from;
    `authored`: that peer is the message's author (gossip `from`), not a relay."""
    if reason in NOT_A_FAULT:
        return False
    return authored or reason not in ARRIVAL_DEPENDENT


@dataclass(frozen=True)
class GuardPolicy:
    """The numbers a `PeerGuard` applies (defaults: the module docstring)."""

    weights: Mapping[str, float] = field(default_factory=lambda: dict(FAULT_WEIGHTS))
    half_life_s: float = 60.0
    graylist_threshold: float = -19.5
    ban_s: float = 300.0
    max_ban_s: float = 86_400.0
    #: A ban that starts within this long after the peer's previous ban ended doubles its period.
    ban_memory_s: float = 86_400.0
    sync_burst: float = 3.0
    sync_refill_s: float = 10.0
    max_peers_tracked: int = 10_000

    def __post_init__(self) -> None:
        if not self.graylist_threshold < 0:
            raise ValueError("graylist_threshold must be < 0")
        for name in ("half_life_s", "ban_s", "max_ban_s", "sync_burst", "sync_refill_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if any(w <= 0 for w in self.weights.values()):
            raise ValueError("fault weights must be > 0")


@dataclass(frozen=True)
class Ban:
    """A ban the guard just imposed: refuse `peer` until `until` (`period_s` after it began);
    `repeat` is 0 for a first ban, 1 for the second in a row, and so on."""

    peer: Hashable
    until: float
    period_s: float
    repeat: int
    #: The fault that crossed the threshold.
    kind: str


@dataclass(frozen=True)
class PeerStanding:
    """How one remote peer stands at an instant: its score, and its ban if one runs."""

    peer: Hashable
    score: float
    banned_until: float | None
    bans: int
    faults: int


class _Record:
    __slots__ = ("score", "at", "banned_until", "bans", "repeat", "last_ban_end", "faults")

    def __init__(self, now: float) -> None:
        self.score = 0.0
        self.at = now
        self.banned_until: float | None = None
        self.bans = 0               # bans ever (while remembered)
        self.repeat = 0             # bans in a row (each within ban_memory_s of the last's end)
        self.last_ban_end = -math.inf
        self.faults = 0


class TokenBuckets:
    """A token bucket per key: capacity `burst`, one token per `refill_s`, created full at a
    key's first `take`; `take` returns whether a token was there (a refusal takes none)."""

    def __init__(self, burst: float, refill_s: float, max_keys: int = 10_000) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """Keys remembered (at most `max_keys`)."""
        return len(self._buckets)

    def take(self, key: Hashable, now: float) -> bool:
        tokens = self.tokens(key, now)
        allowed = tokens >= 1.0
        self._buckets[key] = (tokens - 1.0 if allowed else tokens, now)
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return allowed

    def tokens(self, key: Hashable, now: float) -> float:
        """Tokens `key` has at `now` (a full bucket for a key never seen)."""
        held = self._buckets.get(key)
        if held is None:
            return self.burst
        tokens, at = held
        return min(self.burst, tokens + max(0.0, now - at) / self.refill_s)

    def forget(self, key: Hashable) -> None:
        self._buckets.pop(key, None)


class RelayBudget:
    """The relay receiver's budget for one remote peer (protocol v2 §8.5): a bucket of frames
    (capacity 32, 20 a second) and one of items (16,384, 4,096 a second), created full at the
    first frame and refilled continuously by V8's rule (a clock set back restarts the refill from
    the new time). A frame takes one frame token and its item count at once, only when both
    buckets hold enough; a refused frame takes nothing (`take` says whether to read it)."""

    __slots__ = ("frame_burst", "frame_rate", "item_burst", "item_rate", "frames", "items", "at")

    def __init__(self, frame_burst: float = 32.0, frame_rate: float = 20.0,
                 item_burst: float = 16_384.0, item_rate: float = 4_096.0) -> None:
        self.frame_burst, self.frame_rate = frame_burst, frame_rate
        self.item_burst, self.item_rate = item_burst, item_rate
        self.frames, self.items = frame_burst, item_burst
        self.at: float | None = None

    def take(self, items: int, now: float) -> bool:
        if self.at is not None and now > self.at:
            elapsed = now - self.at
            self.frames = min(self.frame_burst, self.frames + elapsed * self.frame_rate)
            self.items = min(self.item_burst, self.items + elapsed * self.item_rate)
        self.at = now
        if self.frames < 1.0 or self.items < items:
            return False
        self.frames -= 1.0
        self.items -= items
        return True


#: An honest dialer's own pace per remote peer (burst, refill_s): strictly inside the listener
#: budget (3, 10 s) whatever the jitter between the two clocks (see the module docstring).
SYNC_PACE = (2.0, 12.0)


class PeerGuard:
    """Faults, scores and bans of remote peers (see the module docstring). Peers are any
    hashable key (the driver uses libp2p peer ids)."""

    def __init__(self, policy: GuardPolicy | None = None) -> None:
        self.policy = policy or GuardPolicy()
        self._peers: OrderedDict[Hashable, _Record] = OrderedDict()
        self._banned: dict[Hashable, float] = {}  # peer → until, bans running now
        #: Faults by kind (every kind present, so metrics show zeros, not gaps).
        self.faults: Counter[str] = Counter({kind: 0 for kind in FAULT_KINDS})
        #: Bans imposed since start.
        self.bans = 0
        self.sync_budget = TokenBuckets(self.policy.sync_burst, self.policy.sync_refill_s,
                                        self.policy.max_peers_tracked)
        self._relay_budgets: OrderedDict[Hashable, RelayBudget] = OrderedDict()

    # -- faults --------------------------------------------------------------------------------

    def fault(self, peer: Hashable, kind: str, now: float) -> Ban | None:
        """Record that `peer` committed a fault of `kind` at `now`. Returns the `Ban` when this
        fault takes its score to the graylist threshold (the driver then bans the peer), else
        None. A peer already banned is counted but not scored again."""
        weight = self.policy.weights[kind]
        self.faults[kind] += 1
        record = self._record(peer, now)
        record.faults += 1
        if record.banned_until is not None and now < record.banned_until:
            return None
        record.score = self._decayed(record, now) - weight
        record.at = now
        if record.score > self.policy.graylist_threshold:
            return None
        return self._ban(peer, record, kind, now)

    def _ban(self, peer: Hashable, record: _Record, kind: str, now: float) -> Ban:
        p = self.policy
        if now - record.last_ban_end > p.ban_memory_s:
            record.repeat = 0
        period = min(p.ban_s * 2.0 ** record.repeat, p.max_ban_s)
        ban = Ban(peer, now + period, period, record.repeat, kind)
        record.repeat += 1
        record.bans += 1
        record.banned_until = ban.until
        record.last_ban_end = ban.until
        record.score = 0.0  # the ban is the penalty; a new one needs new faults
        record.at = now
        self._banned[peer] = ban.until
        self.bans += 1
        return ban

    # -- reading -------------------------------------------------------------------------------

    def should_refuse(self, peer: Hashable, now: float) -> bool:
        """Whether `peer` is banned at `now` (refuse its connections, streams and messages)."""
        until = self._banned.get(peer)
        return until is not None and now < until

    def score(self, peer: Hashable, now: float) -> float:
        """`peer`'s score at `now` (0 for a peer never seen or forgotten)."""
        record = self._peers.get(peer)
        return 0.0 if record is None else self._decayed(record, now)

    def graylisted(self, now: float) -> int:
        """Peers banned at `now`."""
        return sum(1 for until in self._banned.values() if now < until)

    def standing(self, peer: Hashable, now: float) -> PeerStanding:
        record = self._peers.get(peer)
        if record is None:
            return PeerStanding(peer, 0.0, None, 0, 0)
        until = record.banned_until if record.banned_until is not None and now < record.banned_until \
            else None
        return PeerStanding(peer, self._decayed(record, now), until, record.bans, record.faults)

    def standings(self, now: float) -> list[PeerStanding]:
        """Every peer the guard remembers, worst score first (banned ones first of all)."""
        rows = [self.standing(peer, now) for peer in self._peers]
        return sorted(rows, key=lambda s: (s.banned_until is None, s.score, str(s.peer)))

    @property
    def tracked(self) -> int:
        return len(self._peers)

    # -- time ----------------------------------------------------------------------------------

    def expire(self, now: float) -> list[Hashable]:
        """End every ban whose period is over at `now`; returns those peers (the driver lets
        them back in). Their ban history stays, so a repeat offender's next ban doubles."""
        ended = [peer for peer, until in self._banned.items() if now >= until]
        for peer in ended:
            del self._banned[peer]
            record = self._peers.get(peer)
            if record is not None:
                record.banned_until = None
        return ended

    def next_deadline(self) -> float | None:
        """When the next ban ends (None: no ban runs)."""
        return min(self._banned.values(), default=None)

    # -- sync budget ---------------------------------------------------------------------------

    def take_sync(self, peer: Hashable, now: float) -> bool:
        """Whether `peer` may have a sync request answered at `now` (takes a token if so). The
        caller charges a `sync_over_budget` fault when not."""
        return self.sync_budget.take(peer, now)

    def take_relay(self, peer: Hashable, items: int, now: float) -> bool:
        """Whether `peer`'s relay frame of `items` items may be read at `now` (§8.5; takes its
        tokens if so). The caller resets the stream and charges `relay_over_budget` when not."""
        budget = self._relay_budgets.get(peer)
        if budget is None:
            budget = self._relay_budgets[peer] = RelayBudget()
            while len(self._relay_budgets) > self.policy.max_peers_tracked:
                self._relay_budgets.popitem(last=False)
        else:
            self._relay_budgets.move_to_end(peer)
        return budget.take(items, now)

    # -- internals -----------------------------------------------------------------------------

    def _decayed(self, record: _Record, now: float) -> float:
        if record.score == 0.0 or now <= record.at:
            return record.score
        return record.score * math.pow(2.0, -(now - record.at) / self.policy.half_life_s)

    def _record(self, peer: Hashable, now: float) -> _Record:
        record = self._peers.get(peer)
        if record is None:
            self._make_room(now)
            record = self._peers[peer] = _Record(now)
        else:
            self._peers.move_to_end(peer)
        return record

    def _make_room(self, now: float) -> None:
        """Room for one more peer: forget the least recently seen beyond the bound, sparing
        running bans while there is anyone else to forget (node/bounded.py)."""
        for peer in forget_beyond(self._peers, self.policy.max_peers_tracked - 1,
                                  lambda r: r.banned_until is not None and now < r.banned_until):
            self._banned.pop(peer, None)


__all__ = ["PeerGuard", "GuardPolicy", "Ban", "PeerStanding", "TokenBuckets", "SYNC_PACE",
           "FAULT_WEIGHTS", "FAULT_KINDS", "GOSSIP_REJECT", "SYNC_ITEM", "SYNC_FRAME",
           "SYNC_OVER_BUDGET", "JOB_FRAME", "RELAY_ITEM", "RELAY_FRAME", "RELAY_OVER_BUDGET",
           "RelayBudget", "ARRIVAL_DEPENDENT", "is_peer_fault"]
