"""What a provider remembers about the jobs it was sent and the gateways that sent them (sans-IO).

Two local records, each bounded, each taking the time as an argument:

- `SeenJobs`: the message ids of the Jobs this provider has looked at, each kept until the Job
  could no longer pass the freshness rule W13 (issued_at + 300 s on this provider's clock, at most
  330 s after it arrived, since a Job may be dated up to 30 s ahead). A byte-exact replay — the
  same signed Job sent again, by its gateway, since a Job is only accepted from its signer — is
  declined `duplicate` before anything else is spent on it, and never reaches the backend
  (issue 19: a replayed Job was served again, every time).
- `Payers`: which gateways settle the jobs this provider serves. After each JobResult the gateway
  owes one JobSettled (§9 step 5). A job it refused, or never answered, is unpaid. When, within
  `unpaid_window_s`, at least `unpaid_strikes` jobs served to a gateway went unpaid and they carry
  more than `unpaid_share` of the tokens served to it in that window, the provider declines that
  gateway's jobs `unpaid` for `unpaid_refusal_s` (doubling with each repeat). Nothing here is
  shared: each provider keeps its own record, as each gateway keeps its own of providers
  (`reputation`).

  Why a share and not only a count: a provider cannot tell a gateway that read its result and
  then reset the stream (a free-rider) from an honest gateway whose deadline fired a moment
  before the result reached it. Measured on loaded test machines, about one job in ten of an
  honest, busy gateway ends that way; a bare count of 3 made honest nodes refuse each other for
  600 s. A free-rider can take at most `unpaid_share` of what it is served without paying.

The numbers (reference defaults, `PayerSettings`): at least 3 unpaid jobs carrying more than
25 % of the tokens served, within 600 s → 600 s refused, then 1,200 s, … up to a day. The seen-cache holds at most 262,144 ids (65,536 per gateway; about
200 B each, ~50 MB at the worst); a gateway over its share, or any Job when the cache is full of
ids that are still fresh, is declined `full` rather than served without replay protection.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass

from neuroshard_p2p.node.bounded import forget_beyond
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.wire import Job
from neuroshard_p2p.wire.codec import MAX_AGE_S
from neuroshard_p2p.wire.messages import SETTLED

#: How long after its issued_at a Job can still pass W13 (ms), so how long its id is kept.
JOB_FRESH_MS = int(MAX_AGE_S * 1000)


class SeenJobs:
    """Message ids of the Jobs a provider has seen, until each could no longer be fresh."""

    def __init__(self, max_ids: int = 262_144, max_per_gateway: int = 65_536) -> None:
        if not 1 <= max_per_gateway <= max_ids:
            raise ValueError("need 1 <= max_per_gateway <= max_ids")
        self.max_ids = max_ids
        self.max_per_gateway = max_per_gateway
        self._expiry: dict[bytes, tuple[int, bytes]] = {}   # id → (expires at ms, gateway key)
        self._heap: list[tuple[int, bytes]] = []             # (expires at ms, id)
        self._per_gateway: Counter[bytes] = Counter()
        #: Replays refused, and Jobs refused because the cache could not take their id.
        self.replays = 0
        self.overflows = 0

    def __len__(self) -> int:
        return len(self._expiry)

    def check(self, job: Job, now: float) -> tuple[str, str] | None:
        """Record `job`'s id; None if it is new, else (reason, words): ("duplicate", …) for a
        replay, ("full", …) when the id cannot be kept (so the Job is not served unprotected)."""
        now_ms = ms_of(now)
        self._expire(now_ms)
        if job.msg_id in self._expiry:
            self.replays += 1
            return ("duplicate", "this exact job (same message id) was already received; a "
                                 "replayed job is never served again")
        gateway = job.signer
        if self._per_gateway[gateway] >= self.max_per_gateway or len(self._expiry) >= self.max_ids:
            self.overflows += 1
            return ("full", f"this provider remembers at most {self.max_per_gateway} jobs per "
                            f"gateway ({self.max_ids} in all) for {MAX_AGE_S:g} s; try later")
        expires = job.issued_at_ms + JOB_FRESH_MS
        self._expiry[job.msg_id] = (expires, gateway)
        heapq.heappush(self._heap, (expires, job.msg_id))
        self._per_gateway[gateway] += 1
        return None

    def _expire(self, now_ms: int) -> None:
        # W13 still accepts a Job exactly 300,000 ms old, so its id stays until the ms after.
        heap = self._heap
        while heap and heap[0][0] < now_ms:
            _, msg_id = heapq.heappop(heap)
            entry = self._expiry.pop(msg_id, None)
            if entry is None:
                continue
            gateway = entry[1]
            left = self._per_gateway[gateway] - 1
            if left:
                self._per_gateway[gateway] = left
            else:
                del self._per_gateway[gateway]


@dataclass(frozen=True)
class PayerSettings:
    """When a provider stops serving a gateway that does not settle (seconds)."""

    #: Unpaid jobs (refused receipt, or no JobSettled) within the window that trigger a refusal,
    #: when they also carry more than `unpaid_share` of the tokens served in the window.
    unpaid_strikes: int = 3
    unpaid_share: float = 0.25
    unpaid_window_s: float = 600.0
    #: The first refusal; each further one doubles, up to `max_refusal_s`.
    unpaid_refusal_s: float = 600.0
    max_refusal_s: float = 86_400.0
    #: Gateways remembered (the least recently seen are let go first; one refused now only when
    #: every one is).
    max_gateways: int = 10_000

    def __post_init__(self) -> None:
        if type(self.unpaid_strikes) is not int or self.unpaid_strikes < 1:
            raise ValueError(f"unpaid_strikes must be an integer >= 1, got {self.unpaid_strikes!r}")
        for name in ("unpaid_window_s", "unpaid_refusal_s", "max_refusal_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if not 0 <= self.unpaid_share < 1:
            raise ValueError(f"unpaid_share must be in [0, 1), got {self.unpaid_share!r}")
        if type(self.max_gateways) is not int or self.max_gateways < 1:
            raise ValueError(f"max_gateways must be an integer >= 1, got {self.max_gateways!r}")


@dataclass
class PayerRecord:
    """One gateway, as this provider has seen it pay."""

    served: int = 0
    settled: int = 0
    refused: int = 0       # JobSettled with a refusal reason
    silent: int = 0        # no JobSettled after a JobResult
    refusals: int = 0      # times this gateway was refused for not paying
    refused_until: float = -math.inf
    last_outcome: str = ""

    def __post_init__(self) -> None:
        #: Jobs served within the window: (when, tokens, paid).
        self.recent: deque[tuple[float, int, bool]] = deque()


#: What the provider learned after a JobResult: the gateway's JobSettled said "settled", gave a
#: refusal reason, or never came.
NO_SETTLEMENT = "no_settlement"


class Payers:
    """A provider's record of which gateways settle the jobs it serves (see module docstring)."""

    def __init__(self, settings: PayerSettings | None = None) -> None:
        self.settings = settings or PayerSettings()
        self._records: OrderedDict[bytes, PayerRecord] = OrderedDict()
        #: Outcomes of served jobs: "settled", each refusal reason, "no_settlement".
        self.outcomes: Counter[str] = Counter()
        #: Jobs declined `unpaid`.
        self.declined = 0

    def __len__(self) -> int:
        """Gateways remembered (at most `max_gateways`)."""
        return len(self._records)

    def record(self, gateway: bytes) -> PayerRecord | None:
        return self._records.get(gateway)

    def refusal(self, gateway: bytes, now: float) -> str | None:
        """Words for an `unpaid` decline if `gateway` is refused now, else None."""
        record = self._records.get(gateway)
        if record is None or record.refused_until <= now:
            return None
        self.declined += 1
        return (f"{record.refused + record.silent} of the {record.served} jobs this provider "
                f"served for your gateway were not settled (last: {record.last_outcome}); no "
                f"jobs from it for {record.refused_until - now:.0f} s more")

    def on_outcome(self, gateway: bytes, outcome: str, tokens: int, now: float) -> bool:
        """A `tokens`-token job served for `gateway` ended with `outcome` ("settled", a refusal
        reason, or NO_SETTLEMENT). True if the gateway is now refused."""
        record = self._records.pop(gateway, None)
        if record is None:
            # a gateway refused now is forgotten last: gateways passing through (identities are
            # cheap) must not lift its refusal (node/bounded.py)
            forget_beyond(self._records, self.settings.max_gateways - 1,
                          lambda r: r.refused_until > now)
            record = PayerRecord()
        self._records[gateway] = record  # most recently seen last
        s = self.settings
        record.served += 1
        record.last_outcome = outcome
        self.outcomes[outcome] += 1
        paid = outcome == SETTLED
        record.recent.append((now, max(1, tokens), paid))
        while record.recent and record.recent[0][0] <= now - s.unpaid_window_s:
            record.recent.popleft()
        if paid:
            record.settled += 1
            return False
        if outcome == NO_SETTLEMENT:
            record.silent += 1
        else:
            record.refused += 1
        unpaid = [t for _, t, ok in record.recent if not ok]
        total = sum(t for _, t, _ in record.recent)
        if len(unpaid) < s.unpaid_strikes or sum(unpaid) <= s.unpaid_share * total:
            return False
        record.recent.clear()
        record.refused_until = now + min(s.max_refusal_s,
                                         s.unpaid_refusal_s * 2 ** min(record.refusals, 32))
        record.refusals += 1
        return True

    def refused_now(self, now: float) -> int:
        """Gateways refused at `now` (walks the records: for readouts, not per job)."""
        return sum(1 for r in self._records.values() if r.refused_until > now)


__all__ = ["SeenJobs", "Payers", "PayerSettings", "PayerRecord", "NO_SETTLEMENT", "JOB_FRESH_MS"]
