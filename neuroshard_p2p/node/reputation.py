"""A gateway's record of the providers it routes to (sans-IO): back-off, bans, probation, rank.

Routing is local to each gateway, so this record needs no agreement with anyone: it is what this
gateway has seen each provider do with the jobs it sent (issue 19). It takes the time as an
argument and never reads a clock.

**Faults.** A provider fault is anything that makes a user's request wait on a provider that
did not serve it: unreachable, no answer within the accept deadline, no result within the
progress deadline, a stream closed or reset mid-job, a broken or unexpected frame, a result for
another request, a decline after accepting, a receipt the gateway refused, a claim that timed
out. The request goes back to pending at once (the desk); the provider is set aside:

    back-off after the k-th strike in a row = min(backoff_s × 2^(k−1), max_backoff_s)
                                             (reference: 5 s, 10 s, then banned)
    ban when strikes in a row reach ban_after (3): ban_s × 2^(bans so far), up to max_ban_s
                                             (reference: 600 s, 1,200 s, … 1 day)

A settled job ends the run of strikes. Faults reported while the provider is already set aside
for an earlier fault (several jobs in flight failing together, e.g. a provider that restarted)
are counted but make one strike: the run counts episodes, not jobs, so an honest provider with
many jobs in flight is not banned by one outage.

**Probation.** A provider with fewer than `trusted_after` (3) settled jobs since its last fault —
every provider at first — is on probation: it is offered one request at a time, and small ones
first (at most `probation_tokens`, 1,000; the desk lifts that size limit for a request no
trusted provider can take, so probation never makes a request wait for ever). A liar therefore
holds at most one of this gateway's requests at a time, each for at most its deadline, and draws
at most `ban_after` jobs before it is banned.

**Preference.** Among offers at the same min price, trusted providers come first (the desk
then ranks providers known not to take sampling settings after the others, node/jobs.py), then by
measured latency (an exponential average of how much longer than its announced rate a provider
took, result time − sent time − tokens / tokens_per_second). Prices are never reordered: the
market's price order stays the book's first rule.

Bounded: at most `max_providers` records, the least recently used let go first; a provider
whose ban still runs (at the latest time this record was told) only when every one's does, so
providers passing through cannot lift a ban (node/bounded.py).
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from neuroshard_p2p.node.bounded import forget_beyond

#: Kinds of provider fault (stable names: counted, shown in the API and the metrics).
UNREACHABLE = "unreachable"          # dial or stream open failed
NO_ANSWER = "no_answer"              # no accept/decline within the accept deadline
NO_RESULT = "no_result"              # accepted, no result within the progress deadline
DROPPED = "dropped"                  # closed or reset the stream mid-job, or said nothing
BROKEN_FRAME = "broken_frame"        # a frame that breaks §8.2, or a kind out of order
WRONG_REQUEST = "wrong_request"      # a frame for another request
DECLINED_AFTER_ACCEPT = "declined_after_accept"
RECEIPT_REFUSED = "receipt_refused"  # the receipt failed the checks R1–R8
CLAIM_TIMEOUT = "claim_timeout"      # the book's claim timeout passed (a backstop)
FAULT_KINDS = (UNREACHABLE, NO_ANSWER, NO_RESULT, DROPPED, BROKEN_FRAME, WRONG_REQUEST,
               DECLINED_AFTER_ACCEPT, RECEIPT_REFUSED, CLAIM_TIMEOUT)

#: A step of a provider's rank above every latency (ms) it can have (`Reputation.rank`).
RANK_STEP = 1_000_000

#: Routing states of a provider at this gateway (what /api/market/offers shows).
TRUSTED = "trusted"
PROBATION = "probation"
BACKING_OFF = "backing_off"
BANNED = "banned"


@dataclass(frozen=True)
class ReputationSettings:
    """The numbers of a gateway's provider record (seconds, counts)."""

    backoff_s: float = 5.0
    max_backoff_s: float = 300.0
    ban_after: int = 3
    ban_s: float = 600.0
    max_ban_s: float = 86_400.0
    trusted_after: int = 3
    probation_tokens: int = 1_000
    #: Weight of a new latency sample in the average.
    latency_weight: float = 0.3
    max_providers: int = 10_000

    def __post_init__(self) -> None:
        for name in ("backoff_s", "max_backoff_s", "ban_s", "max_ban_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("ban_after", "trusted_after", "probation_tokens", "max_providers"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not 0 < self.latency_weight <= 1:
            raise ValueError(f"latency_weight must be in (0, 1], got {self.latency_weight!r}")


@dataclass
class ProviderRecord:
    """What one gateway has seen one provider do."""

    sent: int = 0
    settled: int = 0
    faults: int = 0
    strikes: int = 0                 # fault episodes since the last settled job
    streak: int = 0                  # settled jobs since the last fault
    bans: int = 0
    set_aside_until: float = -math.inf
    banned_until: float = -math.inf
    last_fault: str = ""
    last_fault_at: float | None = None
    latency_s: float | None = None
    fault_kinds: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {"sent": self.sent, "settled": self.settled, "faults": self.faults,
                "strikes": self.strikes, "bans": self.bans, "last_fault": self.last_fault,
                "latency_ms": None if self.latency_s is None else round(self.latency_s * 1000, 1),
                "fault_kinds": dict(self.fault_kinds)}


class Reputation:
    """Per-provider records of one gateway (see the module docstring for the rules)."""

    def __init__(self, settings: ReputationSettings | None = None) -> None:
        self.settings = settings or ReputationSettings()
        self._records: OrderedDict[str, ProviderRecord] = OrderedDict()
        #: Faults by kind, bans and settled jobs over every provider (for the metrics).
        self.faults: Counter[str] = Counter()
        self.bans = 0
        self.settled = 0
        #: The latest time any call told this record (on_sent takes none).
        self._latest = -math.inf

    def __len__(self) -> int:
        return len(self._records)

    def get(self, peer_id: str) -> ProviderRecord | None:
        return self._records.get(peer_id)

    def _record(self, peer_id: str) -> ProviderRecord:
        record = self._records.pop(peer_id, None)
        if record is None:
            latest = self._latest
            forget_beyond(self._records, self.settings.max_providers - 1,
                          lambda r: r.banned_until > latest)
            record = ProviderRecord()
        self._records[peer_id] = record  # most recently used last
        return record

    # -- what happened -------------------------------------------------------------------------

    def on_sent(self, peer_id: str) -> None:
        self._record(peer_id).sent += 1

    def on_settled(self, peer_id: str, latency_s: float, now: float) -> None:
        """A job sent to `peer_id` settled (its receipt passed the checks); `latency_s` is how
        much longer than its announced rate it took."""
        self._latest = max(self._latest, now)
        record = self._record(peer_id)
        record.settled += 1
        record.strikes = 0
        record.streak += 1
        self.settled += 1
        sample = max(0.0, latency_s)
        w = self.settings.latency_weight
        record.latency_s = sample if record.latency_s is None else (
            (1 - w) * record.latency_s + w * sample)

    def on_fault(self, peer_id: str, kind: str, detail: str, now: float) -> float:
        """A provider fault: count it, set the provider aside (back-off, or a ban after
        `ban_after` strikes in a row). Returns until when it is not matched."""
        s = self.settings
        self._latest = max(self._latest, now)
        record = self._record(peer_id)
        record.faults += 1
        record.fault_kinds[kind] += 1
        record.last_fault = f"{kind}: {detail}" if detail else kind
        record.last_fault_at = now
        record.streak = 0
        self.faults[kind] += 1
        if record.set_aside_until > now or record.banned_until > now:
            return max(record.set_aside_until, record.banned_until)  # same episode
        record.strikes += 1
        if record.strikes >= s.ban_after:
            record.banned_until = now + min(s.max_ban_s, s.ban_s * 2 ** min(record.bans, 32))
            record.bans += 1
            self.bans += 1
            return record.banned_until
        record.set_aside_until = now + min(s.max_backoff_s,
                                           s.backoff_s * 2 ** min(record.strikes - 1, 32))
        return record.set_aside_until

    # -- what routing reads --------------------------------------------------------------------

    def available(self, peer_id: str, now: float) -> bool:
        record = self._records.get(peer_id)
        return record is None or (record.set_aside_until <= now and record.banned_until <= now)

    def on_probation(self, peer_id: str) -> bool:
        record = self._records.get(peer_id)
        return record is None or record.streak < self.settings.trusted_after

    def rank(self, peer_id: str) -> int:
        """Order among offers at the same min price: trusted first, then by latency (ms, under
        1,000,000; the gateway desk ranks between the two with `RANK_STEP`)."""
        record = self._records.get(peer_id)
        latency_ms = 0 if record is None or record.latency_s is None else \
            min(RANK_STEP - 1, round(record.latency_s * 1000))
        return (2 * RANK_STEP if self.on_probation(peer_id) else 0) + latency_ms

    def state(self, peer_id: str, now: float) -> str:
        record = self._records.get(peer_id)
        if record is not None and record.banned_until > now:
            return BANNED
        if record is not None and record.set_aside_until > now:
            return BACKING_OFF
        return PROBATION if self.on_probation(peer_id) else TRUSTED

    def why(self, peer_id: str, now: float) -> str:
        """Words for the routing state of `peer_id` at this gateway."""
        record = self._records.get(peer_id)
        state = self.state(peer_id, now)
        if record is None:
            return "no history here: on probation (one job at a time, small jobs first)"
        if state == BANNED:
            return (f"banned for {record.banned_until - now:.0f} s more after {record.strikes} "
                    f"faults in a row (last: {record.last_fault})")
        if state == BACKING_OFF:
            return (f"backing off for {record.set_aside_until - now:.1f} s more after fault "
                    f"{record.strikes} in a row (last: {record.last_fault})")
        if state == PROBATION:
            return (f"on probation: {record.streak} of {self.settings.trusted_after} settled jobs "
                    f"since {'its last fault' if record.faults else 'it was first seen'} (one job "
                    f"at a time, small jobs first)")
        return f"trusted: {record.settled} settled, {record.faults} faults"

    def next_change(self, now: float) -> float | None:
        """The earliest instant after `now` at which a provider comes back (None: none away).
        Walks the records: the desk asks only when requests are waiting."""
        times = [t for r in self._records.values()
                 for t in (r.set_aside_until, r.banned_until) if t > now]
        return min(times) if times else None

    def counts_by_state(self, now: float) -> Counter[str]:
        return Counter(self.state(peer_id, now) for peer_id in self._records)


__all__ = ["Reputation", "ReputationSettings", "ProviderRecord", "FAULT_KINDS", "UNREACHABLE",
           "NO_ANSWER", "NO_RESULT", "DROPPED", "BROKEN_FRAME", "WRONG_REQUEST",
           "DECLINED_AFTER_ACCEPT", "RECEIPT_REFUSED", "CLAIM_TIMEOUT", "TRUSTED", "PROBATION",
           "BACKING_OFF", "BANNED"]
