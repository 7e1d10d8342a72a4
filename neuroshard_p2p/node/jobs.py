"""Jobs, sans-IO: the job stream's frames, the provider's admission desk and the gateway's desk.

A request submitted at a node (its **gateway**) is matched against the merged view's offers by the
core `OrderBook`; the gateway then hands it to the chosen provider on a direct libp2p stream
(`job_protocol(network)`, protocols/market-v1.md "Job stream"). This module holds every decision
of that exchange and no I/O — the trio driver (`job_service.JobService`) moves the bytes and
reads the clocks, as in aioquic:

- `declined`: a JobDeclined with its fields cut to the wire's limits. The frames themselves
  (JobDeclined, JobAccepted, JobResult) and their bytes are the wire's: `wire.encode_job_frame` /
  `wire.decode_job_frame`.
- `ProviderDesk`: the provider's own accounting of tokens in flight. Several gateways may pick the
  same cheap provider at once, each believing it has room; the provider's desk is the truth, and
  admits a job only while its tokens in flight stay <= tokens_per_second × target_response_s.
- `GatewayDesk`: the request lifecycle at the gateway, on the core book. Offers come from the
  merged view; a provider that declines, times out or dies is set aside for a while (so the next
  match goes to the next offer); the book's timers put a claim that ran past claim_timeout back
  to pending and expire requests past their expiry. Every state carries a reason a person can read.

Policy on failures (what the user sees in the status):
- provider declined (full, below its min price, …)  → pending again, the next offer is tried;
- provider unreachable, timed out or died mid-job   → pending again, nothing charged;
- the provider's backend failed on the prompt       → failed, with the backend's reason;
- the provider's receipt was refused by the checks  → failed, nothing charged;
- no provider before the request's expiry           → expired, with the last reason.
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.book import (
    MAX_REQUEST_TOKENS,
    TERMINAL,
    Match,
    OrderBook,
    RequestExpired,
    RequestRequeued,
    RequestStatus,
    RestingOffer,
    State,
)
from neuroshard_p2p.core.errors import MarketError, format_price
from neuroshard_p2p.core.pricing import demand_histogram
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.node.job_records import Payers, SeenJobs
from neuroshard_p2p.node.reputation import (
    BACKING_OFF,
    BANNED,
    CLAIM_TIMEOUT,
    DECLINED_AFTER_ACCEPT,
    DROPPED,
    RANK_STEP,
    Reputation,
    ReputationSettings,
)
from neuroshard_p2p.timeline import ms_of, seconds_of
from neuroshard_p2p.view import CountedOffer, MarketView
from neuroshard_p2p.wire import MAX_DETAIL, TIERS, Job, JobDeclined, Receipt, clip_utf8
from neuroshard_p2p.wire.codec import MAX_PROMPT, MAX_STR
from neuroshard_p2p.wire.errors import WireError
from neuroshard_p2p.wire.membership import Admission as Members
from neuroshard_p2p.wire.membership import check_job


def job_sampling_protocol(network: str) -> str:
    """`/neuroshard/<network id>/job/2.2.0` (revision 2.1: sampling): job/2.1.0 with every Job's
    prompt opening with the buyer's sampling settings (spec §9.2). A gateway offers it first,
    then job/2.1.0 and job/2.0.0."""
    return f"/neuroshard/{network}/job/2.2.0"


def job_stream_protocol(network: str) -> str:
    """`/neuroshard/<network id>/job/2.1.0` (revision 2.1: streaming): job/2.0.0's exchange plus
    JobChunk frames while serving and the gateway's JobCancel. A gateway offers it first and
    job/2.0.0 second, so a provider without it serves the job in one piece."""
    return f"/neuroshard/{network}/job/2.1.0"


def job_protocol(network: str) -> str:
    """`/neuroshard/<network id>/job/2.0.0`: the libp2p protocol id of a network's job stream.
    It carries the network id, as sync and peer exchange do, so a gateway never hands a job to a
    node of another network (whose offers it should not even know)."""
    return f"/neuroshard/{network}/job/2.0.0"


# Decline reason codes (provider → gateway). Stable: they are counted and shown.
FULL = "full"
NOT_OFFERING = "not_offering"
BELOW_MIN_PRICE = "below_min_price"
TOO_LARGE = "too_large"
WRONG_PROVIDER = "wrong_provider"
GATEWAY_MISMATCH = "gateway_mismatch"
DUPLICATE = "duplicate"
BAD_JOB = "bad_job"
UNPAID = "unpaid"
NOT_MEMBER = "not_member"
DECLINE_REASONS = (FULL, NOT_OFFERING, BELOW_MIN_PRICE, TOO_LARGE, WRONG_PROVIDER,
                   GATEWAY_MISMATCH, NOT_MEMBER, UNPAID, DUPLICATE, BAD_JOB)

#: The progress deadline (reference numbers; local settings, the same for both sides by default):
#: after JobAccepted a gateway waits for the result at most
#:     PROGRESS_GRACE_S + PROGRESS_RATE_FACTOR × tokens / tokens_per_second of the offer,
#: never past the job's total deadline (the claim timeout). A provider admits a job only while
#: the work queued ahead of it is at most QUEUE_LIMIT_S at its offered rate, so an honest
#: provider always answers well inside that deadline, and holding a job without serving it is
#: detected in seconds, not at the claim timeout.
PROGRESS_GRACE_S = 5.0
PROGRESS_RATE_FACTOR = 2.0
QUEUE_LIMIT_S = PROGRESS_GRACE_S / 2


def progress_deadline_s(tokens: int, tokens_per_second: int,
                        grace_s: float = PROGRESS_GRACE_S,
                        factor: float = PROGRESS_RATE_FACTOR) -> float:
    """Seconds from JobAccepted within which a provider offering `tokens_per_second` must
    deliver the result of a `tokens`-token job."""
    return grace_s + factor * tokens / max(1, tokens_per_second)


# ---------------------------------------------------------------------------------------------
# Frames: the job stream's frames and their bytes are the wire's (`wire.frames`, spec §9).

def declined(request_id: str, reason: str, detail: str) -> JobDeclined:
    """A JobDeclined frame with its fields cut to the wire's limits (a request id that does not
    fit — from a job that failed to decode — is replaced by "?")."""
    rid = request_id if 0 < len(request_id.encode("utf-8", "replace")) <= MAX_STR else "?"
    return JobDeclined(clip_utf8(rid, MAX_STR) or "?", clip_utf8(reason, MAX_STR) or "error",
                       clip_utf8(detail, MAX_DETAIL))


# ---------------------------------------------------------------------------------------------
# Provider side

@dataclass(frozen=True)
class Admission:
    """The provider's answer to one job: accepted, or declined with a reason code and words."""

    accepted: bool
    reason: str = ""
    detail: str = ""


class ProviderDesk:
    """A provider's own accounting of the jobs it is serving (sans-IO).

    `admit` accepts a job only while the tokens in flight, this job's included, stay within
    tokens_per_second × target_response_s — what it can serve within the market's target
    response time — and while the work queued ahead of it is at most `queue_limit_s` at that
    rate (so it meets every gateway's progress deadline). The offer (capacity and min price) is
    passed in at each call, so a node that changes or withdraws its offer admits by the new one
    at once. It also refuses a replayed Job (`seen`, before anything is spent on it) and the jobs
    of a gateway that does not settle what it is served (`payers`)."""

    def __init__(self, provider_key: bytes, config: MarketConfig,
                 admission: Members | None = None, *, queue_limit_s: float = QUEUE_LIMIT_S,
                 seen: SeenJobs | None = None, payers: Payers | None = None) -> None:
        self.provider_key = provider_key
        self.config = config
        #: A members network's admission (None: open): a job's gateway must be a member (V6m).
        self.admission = admission
        self.queue_limit_s = queue_limit_s
        self.seen = seen if seen is not None else SeenJobs()
        self.payers = payers if payers is not None else Payers()
        self._in_flight: dict[tuple[bytes, str], int] = {}
        self.in_flight_tokens = 0
        #: The most tokens ever in flight at once (tests and metrics check it against capacity).
        self.peak_in_flight_tokens = 0
        self.counts: dict[str, int] = dict.fromkeys(("accepted", "finished", *DECLINE_REASONS), 0)

    def capacity_tokens(self, tokens_per_second: int) -> int:
        """Tokens this provider may have in flight at `tokens_per_second`."""
        return math.floor(tokens_per_second * self.config.target_response_s)

    @property
    def jobs_in_flight(self) -> int:
        return len(self._in_flight)

    def admit(self, job: Job, gateway_key: bytes, tokens_per_second: int, min_price_nano: int,
              now: float) -> Admission:
        """Decide on a decoded, correctly signed `job` that arrived on a stream from the peer whose
        key is `gateway_key`. An accepted job holds its tokens until `finish(job)`."""
        if job.provider != self.provider_key:
            return self._decline(WRONG_PROVIDER, "this job names another provider")
        if job.signer != gateway_key:
            return self._decline(GATEWAY_MISMATCH,
                                 "the job is signed by another node than the one that sent it")
        try:
            check_job(job, self.admission)  # V6m for jobs (spec Appendix J.2)
        except WireError as error:
            return self._decline(NOT_MEMBER if error.reason == NOT_MEMBER else BAD_JOB, str(error))
        unpaid = self.payers.refusal(gateway_key, now)
        if unpaid is not None:
            return self._decline(UNPAID, unpaid)
        # Every Job of its gateway past this point is remembered, so its replay is refused
        # before the backend is involved, whatever became of the first.
        replay = self.seen.check(job, now)
        if replay is not None:
            return self._decline(*replay)
        if tokens_per_second <= 0:
            return self._decline(NOT_OFFERING, "this node offers no capacity now")
        if job.locked_price_nano < min_price_nano:
            return self._decline(
                BELOW_MIN_PRICE, f"locked price {format_price(job.locked_price_nano)} is below "
                                 f"this node's min price {format_price(min_price_nano)}")
        capacity = self.capacity_tokens(tokens_per_second)
        if job.tokens > capacity:
            return self._decline(TOO_LARGE, f"{job.tokens} tokens exceed this node's whole "
                                            f"capacity of {capacity} tokens in flight")
        key = (job.signer, job.request_id)
        if key in self._in_flight:
            return self._decline(DUPLICATE, f"request {job.request_id!r} is already being served")
        if self.in_flight_tokens + job.tokens > capacity:
            return self._decline(FULL, f"{self.in_flight_tokens} of {capacity} tokens in flight; "
                                       f"no room for {job.tokens} more")
        queued_s = self.in_flight_tokens / tokens_per_second
        if queued_s > self.queue_limit_s:
            return self._decline(FULL, f"{queued_s:.1f} s of work queued (limit "
                                       f"{self.queue_limit_s:g} s at {tokens_per_second} tokens/s)")
        self._in_flight[key] = job.tokens
        self.in_flight_tokens += job.tokens
        self.peak_in_flight_tokens = max(self.peak_in_flight_tokens, self.in_flight_tokens)
        self.counts["accepted"] += 1
        return Admission(True)

    def finish(self, job: Job) -> None:
        """The job ended (served, failed or abandoned): its tokens leave the in-flight count."""
        tokens = self._in_flight.pop((job.signer, job.request_id), None)
        if tokens is not None:
            self.in_flight_tokens -= tokens
            self.counts["finished"] += 1

    def _decline(self, reason: str, detail: str) -> Admission:
        self.counts[reason] += 1
        return Admission(False, reason, detail)

    def receipt_for(self, job: Job, tokens_served: int, started_at: float, ended_at: float,
                    now: float) -> Receipt:
        """The (unsigned) receipt for what this provider served of `job`: tokens never above the
        tokens requested, times in ms, issued at `now` (not before it ended)."""
        started_ms = ms_of(started_at)
        ended_ms = max(started_ms, ms_of(ended_at))
        issued_ms = max(ended_ms, ms_of(now))
        return Receipt(signer=self.provider_key, issued_at_ms=issued_ms,
                       request_id=job.request_id, gateway=job.signer, user=job.user,
                       tokens_served=max(0, min(tokens_served, job.tokens)),
                       locked_price_nano=job.locked_price_nano, started_at_ms=started_ms,
                       ended_at_ms=ended_ms)


# ---------------------------------------------------------------------------------------------
# Gateway side

@dataclass(frozen=True)
class JobStatus:
    """What a user (API, CLI) sees of one request submitted at this gateway."""

    request_id: str
    user: str
    state: str                      # pending, claimed, completed, expired, failed
    tokens: int
    max_price_nano: int
    locked_price_nano: int
    tier: str
    provider: str | None            # peer id of the provider serving / that served it
    tokens_served: int | None
    cost_nano: int | None           # what the user paid (completed only)
    reason: str                     # why it is in this state, in words
    attempts: int                   # providers the job was sent to
    submitted_at: float
    finished_at: float | None
    output: str | None = None       # the completion text, once completed

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (prices also in NEURO for people)."""
        return {
            "request_id": self.request_id, "user": self.user, "state": self.state,
            "tokens": self.tokens, "max_price_nano": self.max_price_nano,
            "locked_price_nano": self.locked_price_nano,
            "locked_price": self.locked_price_nano / 1e9, "tier": self.tier,
            "provider": self.provider, "tokens_served": self.tokens_served,
            "cost_nano": self.cost_nano, "reason": self.reason, "attempts": self.attempts,
            "submitted_at": self.submitted_at, "finished_at": self.finished_at,
            "output": self.output,
        }


@dataclass(frozen=True)
class Dispatch:
    """A job to send: the driver signs `job`, opens a stream to `peer_id` and reports back with
    the same `attempt` number (a late report about an older attempt is ignored)."""

    request_id: str
    attempt: int
    peer_id: str
    job: Job                         # unsigned; the driver signs it
    provider_tokens_per_s: int       # the offer's capacity when matched (for receipt plausibility)
    claim_deadline: float            # seconds since the epoch: give up and release by then
    #: After JobAccepted, the result is due within this many seconds (`progress_deadline_s`);
    #: never later than claim_deadline.
    progress_s: float = PROGRESS_GRACE_S
    #: The provider was on probation at this gateway when matched.
    probation: bool = False


class ViewOffers:
    """The merged view's offers at an instant, computed again only when they can differ.

    `view.offers_at(now)` walks every signer (O(signers)); a gateway with requests waiting asks
    for it every route interval and after every job stream ends. The answer is a function of the
    view's content (`view.version`) and of the instant, and it is the same for every instant up
    to the view's next segment boundary (`view.offers_change_after_ms`), so it is kept for
    [t, that boundary) of one version: `at(view, now)` equals `view.offers_at(now)` always.
    The tuple returned is shared: callers must not change it (they cannot: it is a tuple).
    """

    def __init__(self) -> None:
        self._view: MarketView | None = None
        self._version = -1
        self._from_ms = 0
        self._until_ms: int | None = None
        self._offers: tuple[CountedOffer, ...] = ()
        #: Answers served from the kept list / computed from the view.
        self.hits = 0
        self.misses = 0

    def at(self, view: MarketView, now: float) -> tuple[CountedOffer, ...]:
        """`tuple(view.offers_at(now))`, without walking the view when nothing can have changed."""
        t_ms = ms_of(now)
        if (view is self._view and view.version == self._version and self._from_ms <= t_ms
                and (self._until_ms is None or t_ms < self._until_ms)):
            self.hits += 1
            return self._offers
        self.misses += 1
        self._offers = tuple(view.offers_at_ms(t_ms))
        self._until_ms = view.offers_change_after_ms(t_ms)
        self._view, self._version, self._from_ms = view, view.version, t_ms
        return self._offers


@dataclass
class _Extra:
    """What the gateway keeps beside the book's record of a request."""

    prompt: str
    attempts: int = 0
    attempt: int = 0                 # number of the current attempt (0: none in flight)
    provider_key: bytes = b""
    problem: str = ""                # last thing that went wrong, for the status
    #: Declines after acceptance (backend failures): by providers with a settled record, and
    #: per provider. Two from trusted providers, or two from one provider, fail the request —
    #: its input, not a provider, is then the likely cause.
    trusted_declines: int = 0
    declines_by: dict[str, int] = field(default_factory=dict)
    output: str | None = None
    output_dropped: bool = False     # completed, but its output was let go (memory budget)


@dataclass(frozen=True)
class GatewaySettings:
    """Timing of the gateway's routing (seconds)."""

    #: A provider that declined as full is not tried again for this long.
    full_backoff_s: float = 1.0
    #: A provider that declined (before accepting) for a reason that will not change soon (not
    #: offering, price, wrong provider) is set aside this long; `unpaid` for `unpaid_backoff_s`.
    #: (Faults — anything that held a request without serving it — are the reputation's.)
    lost_backoff_s: float = 10.0
    unpaid_backoff_s: float = 60.0
    #: The progress deadline after JobAccepted: grace + factor × tokens / tokens_per_second.
    progress_grace_s: float = PROGRESS_GRACE_S
    progress_factor: float = PROGRESS_RATE_FACTOR
    #: Declines after acceptance (backend failures) from providers with a settled record after
    #: which a request fails with the provider's reason instead of trying another provider.
    user_fault_after: int = 2
    #: Back-off, bans, probation and preference (`node.reputation`).
    reputation: ReputationSettings = field(default_factory=ReputationSettings)
    #: Memory bounds. Requests waiting or being served at once, and the bytes of their prompts
    #: (each up to 64 KiB): past either, a new request is refused until some finish.
    max_open_requests: int = 10_000
    max_prompt_bytes: int = 64 * 1024 * 1024
    #: Bytes of completed requests' outputs kept for their status (each up to 1 MB, kept for
    #: the book's retention_s): past it, the oldest outputs are let go.
    max_output_bytes: int = 64 * 1024 * 1024
    #: Finished requests whose status is kept (each for the book's retention_s, an hour): past
    #: it, the oldest are let go early. About 2 KB each, so a busy gateway's memory is bounded
    #: by this, not only by its rate times an hour (measured: 65 requests/s held 2.07 KB each).
    max_finished_requests: int = 100_000

    def __post_init__(self) -> None:
        for name in ("full_backoff_s", "lost_backoff_s", "unpaid_backoff_s", "progress_grace_s",
                     "progress_factor"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value!r}")
        for name in ("max_open_requests", "max_prompt_bytes", "max_output_bytes",
                     "max_finished_requests", "user_fault_after"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


_SHORT_BACKOFF = frozenset({FULL, DUPLICATE})


def short_peer(peer_id: str) -> str:
    """A peer id shortened for messages: `16Uiu2…` plus its last 6 characters."""
    return peer_id if len(peer_id) <= 14 else f"{peer_id[:6]}…{peer_id[-6:]}"


class GatewayDesk:
    """The gateway's request lifecycle (sans-IO) on the core `OrderBook`.

    The driver calls, with the time:
        submit(...)                     a user's request; locks the current price
        set_view_offers(offers, now)    the merged view's offers (any time they may have changed)
        dispatch(now, clearing, lacks_sampling)   match and return the jobs to send → [Dispatch]
        on_accepted / on_declined / on_lost / on_failed / on_completed   what a stream reported
        advance(now)                    timers (claim timeout, expiry, pruning)
        next_deadline()                 when advance has work next
    """

    def __init__(self, config: MarketConfig, gateway_key: bytes,
                 settings: GatewaySettings | None = None) -> None:
        self.config = config
        self.gateway_key = gateway_key
        self.gateway_peer_id = peer_id_of(gateway_key)
        #: A members network: our credential, which every Job we sign carries.
        self.credential = b""
        self.settings = settings or GatewaySettings()
        self.book = OrderBook(config)
        #: This gateway's record of providers: faults, back-off, bans, probation, preference.
        self.reputation = Reputation(self.settings.reputation)
        self._next_route: float | None = None
        self._extra: dict[str, _Extra] = {}
        self._view_offers: list[CountedOffer] = []
        self._keys: dict[str, bytes] = {}           # peer id → public key, for offers seen
        self._peer_ids: dict[bytes, str] = {}       # and back
        self._set_aside: dict[str, float] = {}      # peer id → until when it is not tried
        #: Bytes of the prompts held (open requests); request id → bytes of its kept output,
        #: oldest completion first.
        self.prompt_bytes = 0
        self.output_bytes = 0
        self._outputs: OrderedDict[str, int] = OrderedDict()
        #: Finished requests the book still holds, by state, and when the book lets each go:
        #: (prune at, request id, state), a heap. Counting requests by state then costs nothing
        #: per read (walking every record cost ~7 ms per 1,000 held).
        self._finished: Counter[str] = Counter()
        self._prunes: list[tuple[float, str, str]] = []
        #: "lost" counts every attempt that ended in a provider fault (its kind: fault_counts).
        self.counts: dict[str, int] = dict.fromkeys(
            ("dispatched", "accepted", "declined", "lost", "failed", "completed",
             "receipt_refused", "expired", "requeued"), 0)
        self.decline_counts: dict[str, int] = {}
        self.fault_counts: Counter[str] = Counter()
        #: Why a provider's failure cannot be held against it now, or None: the node's driver
        #: sets it while this node's own clock disagrees with its peers' (node/clockwatch.py),
        #: when jobs fail for this node's time (a deadline already past at the provider, a
        #: receipt from its "future"), not the provider's doing.
        self.not_holding: str | None = None
        #: Provider failures not held against the provider for that reason.
        self.faults_not_held = 0

    # -- requests -----------------------------------------------------------------------------

    def submit(self, request_id: str, user: str, tokens: int, max_price_nano: int, *,
               price_nano: int, now: float, tier: str = "standard", prompt: str = "") -> JobStatus:
        """Take a user's request at the current market price `price_nano`, which it locks.
        Raises MarketError with the reason (bad fields, id taken, max price below the price)."""
        for name, value, limit in (("request id", request_id, MAX_STR), ("user", user, MAX_STR)):
            if not isinstance(value, str) or not value:
                raise MarketError(f"{name} must be a non-empty string")
            if len(value.encode("utf-8", "replace")) > limit:
                raise MarketError(f"{name} must be at most {limit} bytes of UTF-8")
        if not isinstance(prompt, str):
            raise MarketError("prompt must be a string")
        try:
            size = len(prompt.encode("utf-8"))
        except UnicodeEncodeError:
            raise MarketError("prompt is not valid UTF-8") from None
        if size > MAX_PROMPT:
            raise MarketError(f"prompt is {size} bytes (limit {MAX_PROMPT})")
        limits = self.settings
        if self.book.pending_count + self.book.claimed_count >= limits.max_open_requests:
            raise MarketError(f"this gateway holds {limits.max_open_requests} open requests (its "
                              f"limit); submit again when some have finished")
        if self.prompt_bytes + size > limits.max_prompt_bytes:
            raise MarketError(f"this gateway holds {self.prompt_bytes} bytes of prompts waiting "
                              f"(limit {limits.max_prompt_bytes}); submit again when some have "
                              f"finished")
        if isinstance(tokens, int) and tokens > self.config.max_tokens_per_minute:
            raise MarketError(f"tokens {tokens} is above max_tokens_per_minute "
                              f"({self.config.max_tokens_per_minute}): no provider may serve it")
        self.book.submit(request_id, user, tokens, max_price_nano, price_nano, now, tier)
        self._extra[request_id] = _Extra(prompt=prompt)
        self.prompt_bytes += size
        status = self.status(request_id)
        assert status is not None
        return status

    def status(self, request_id: str) -> JobStatus | None:
        """The status of a request submitted here; None if unknown (or pruned)."""
        record = self.book.get(request_id)
        if record is None:
            return None
        return self._status(record, self._extra.get(request_id))

    def count_by_state(self) -> dict[str, int]:
        """How many requests this desk holds in each state (states with none left out); the
        same as counting `statuses()`, without walking them."""
        counts = {"pending": self.book.pending_count, "claimed": self.book.claimed_count,
                  **self._finished}
        return {state: n for state, n in counts.items() if n}

    def _finished_now(self, request_id: str) -> None:
        """A request reached a terminal state: count it until the book prunes it."""
        record = self.book.get(request_id)
        if record is None:  # it ended and was pruned within one `advance`: nothing to count
            self._let_go(request_id)
            return
        if record.state not in TERMINAL or record.finished_at is None:
            return
        state = str(record.state)
        self._finished[state] += 1
        heapq.heappush(self._prunes, (record.finished_at + self.config.retention_s, request_id,
                                      state))
        while sum(self._finished.values()) > self.settings.max_finished_requests:
            _, oldest, oldest_state = heapq.heappop(self._prunes)
            if self.book.get(oldest) is not None:  # the book may have just let it go itself
                self.book.forget(oldest, record.finished_at)
            self._let_go(oldest, oldest_state)

    def statuses(self) -> list[JobStatus]:
        """Every request held, newest first."""
        records = sorted(self.book.requests(), key=lambda r: (-r.submitted_at, r.request_id))
        return [self._status(r, self._extra.get(r.request_id)) for r in records]

    def _status(self, record: RequestStatus, extra: _Extra | None) -> JobStatus:
        reason = record.reason
        if record.state is State.PENDING and extra is not None and extra.problem:
            reason = f"{extra.problem}; {reason}" if reason else extra.problem
        elif record.state is State.CLAIMED:
            reason = f"sent to provider {short_peer(record.provider or '?')}"
        elif extra is not None and extra.output_dropped:
            reason = f"{reason}; its output is no longer kept (this gateway keeps the newest " \
                     f"{self.settings.max_output_bytes} bytes of outputs)"
        cost = record.settlement.payment if record.settlement is not None else None
        return JobStatus(
            request_id=record.request_id, user=record.user, state=str(record.state),
            tokens=record.tokens, max_price_nano=record.max_price_nano,
            locked_price_nano=record.locked_price_nano, tier=record.tier,
            provider=record.provider, tokens_served=record.tokens_served, cost_nano=cost,
            reason=reason, attempts=extra.attempts if extra else 0,
            submitted_at=record.submitted_at, finished_at=record.finished_at,
            output=extra.output if extra else None)

    @property
    def pending_tokens(self) -> int:
        """Tokens of the requests waiting for a provider: this gateway's announced demand."""
        return self.book.demand_tokens_waiting

    @property
    def pending_requests(self) -> int:
        return self.book.pending_count

    def pending_by_limit(self) -> tuple[int, ...]:
        """The waiting tokens by bid bucket (a clearing network's announced demand, revision
        2.1). O(pending requests)."""
        return demand_histogram((r.max_price_nano, r.tokens) for r in self.book.pending())

    # -- offers and matching -----------------------------------------------------------------

    def set_view_offers(self, offers: Iterable[CountedOffer], now: float) -> None:
        """The merged view's offers at `now` (this gateway's own offer is left out: the wire
        forbids a job to oneself)."""
        kept: list[CountedOffer] = []
        for offer in offers:
            if offer.signer == self.gateway_key:
                continue
            kept.append(offer)
        self._view_offers = kept

    def set_aside(self, peer_id: str, until: float) -> None:
        """Do not send jobs to `peer_id` before `until`."""
        self._set_aside[peer_id] = max(until, self._set_aside.get(peer_id, -math.inf))

    def dispatch(self, now: float, clearing_price_nano: int | None = None,
                 lacks_sampling: Callable[[str], bool] | None = None) -> list[Dispatch]:
        """Match pending requests to the offers (minus providers set aside, backing off or
        banned; those on probation one request at a time, small ones first) and return the jobs
        to send, each request now claimed by its provider in the book.

        `lacks_sampling(peer_id)`: the driver knows the provider speaks a job protocol but not
        job/2.2.0, so a buyer's sampling settings would not reach its backend. Among offers at
        the same min price and trust, such providers come after the others (then latency)."""
        self._next_route = None
        if not self.book.pending_count:
            return []
        if len(self._peer_ids) > 4 * max(64, len(self._view_offers)):
            # Bounded: ids of offers no longer in view are dropped (rebuilt on demand below).
            self._peer_ids.clear()
            self._keys.clear()
        reputation = self.reputation
        small = reputation.settings.probation_tokens
        offers: list[RestingOffer] = []
        for offer in self._view_offers:
            peer_id = self._peer_id(offer.signer)
            if self._set_aside.get(peer_id, -math.inf) > now or not reputation.available(peer_id,
                                                                                        now):
                continue
            offers.append(RestingOffer(
                peer_id, offer.tokens_per_second, offer.min_price_nano,
                seconds_of(offer.issued_at_ms),
                rank=reputation.rank(peer_id) + (
                    RANK_STEP if lacks_sampling is not None and lacks_sampling(peer_id) else 0),
                probation_tokens=small if reputation.on_probation(peer_id) else 0))
        for peer_id in [p for p, until in self._set_aside.items() if until <= now]:
            del self._set_aside[peer_id]
        self.book.set_offers(offers, now)
        capacity = {o.node_id: o.tokens_per_second for o in offers}
        probation = {o.node_id for o in offers if o.probation_tokens}
        matches = self.book.match(now, clearing_price_nano)
        if probation and self.book.pending_count:
            # Small jobs first, but never only: a request no trusted provider could take may go
            # to an idle provider on probation whatever its size (still one at a time).
            self.book.set_offers([replace(o, probation_tokens=MAX_REQUEST_TOKENS)
                                  if o.probation_tokens else o for o in offers], now)
            matches += self.book.match(now, clearing_price_nano)
        if self.book.pending_count:
            comebacks = [t for t in (min(self._set_aside.values(), default=None),
                                     reputation.next_change(now)) if t is not None]
            self._next_route = min(comebacks) if comebacks else None
        return [self._dispatch(match, capacity[match.node_id], match.node_id in probation, now)
                for match in matches]

    def _peer_id(self, signer: bytes) -> str:
        peer_id = self._peer_ids.get(signer)
        if peer_id is None:
            peer_id = peer_id_of(signer)
            self._peer_ids[signer] = peer_id
            self._keys[peer_id] = signer
        return peer_id

    def _dispatch(self, match: Match, provider_tps: int, probation: bool,
                  now: float) -> Dispatch:
        record = self.book.get(match.request_id)
        extra = self._extra[match.request_id]
        assert record is not None
        extra.attempts += 1
        extra.attempt = extra.attempts
        extra.provider_key = self._keys[match.node_id]
        job = Job(signer=self.gateway_key, issued_at_ms=ms_of(now),
                  request_id=match.request_id, user=record.user, provider=extra.provider_key,
                  tokens=match.tokens, max_price_nano=record.max_price_nano,
                  locked_price_nano=match.locked_price_nano, tier=TIERS.index(record.tier),
                  prompt=extra.prompt, credential=self.credential)
        self.counts["dispatched"] += 1
        self.reputation.on_sent(match.node_id)
        assert record.claimed_at is not None
        s = self.settings
        return Dispatch(match.request_id, extra.attempt, match.node_id, job, provider_tps,
                        record.claimed_at + self.config.claim_timeout_s,
                        progress_s=progress_deadline_s(match.tokens, provider_tps,
                                                       s.progress_grace_s, s.progress_factor),
                        probation=probation)

    # -- what the streams report ---------------------------------------------------------------

    def _current(self, request_id: str, attempt: int) -> _Extra | None:
        """The request's extra record if `attempt` is still its live attempt (claimed)."""
        extra = self._extra.get(request_id)
        record = self.book.get(request_id)
        if (extra is None or record is None or extra.attempt != attempt
                or record.state is not State.CLAIMED):
            return None
        return extra

    def cancel(self, request_id: str, reason: str, now: float) -> bool:
        """The user gave up on a request that is not being served (pending): it fails with
        `reason`, nothing charged. False if it is not pending (a claimed request is cancelled on
        its job stream, and settles what was served)."""
        record = self.book.get(request_id)
        extra = self._extra.get(request_id)
        if record is None or record.state is not State.PENDING:
            return False
        self.counts["cancelled"] = self.counts.get("cancelled", 0) + 1
        if extra is not None:
            extra.attempt = 0
            self._drop_prompt(extra)
        self.book.fail(request_id, now, reason=reason)
        self._finished_now(request_id)
        return True

    def on_accepted(self, request_id: str, attempt: int, now: float) -> None:
        """The provider admitted the job."""
        if self._current(request_id, attempt) is not None:
            self.counts["accepted"] += 1

    def on_declined(self, request_id: str, attempt: int, peer_id: str, reason: str, detail: str,
                    now: float) -> bool:
        """The provider declined before serving: back to pending, the provider set aside (briefly
        when full), so the next match tries the next offer. Not a fault: it answered at once.
        False if the report was stale."""
        extra = self._current(request_id, attempt)
        if extra is None:
            return False
        self.counts["declined"] += 1
        self.decline_counts[reason] = self.decline_counts.get(reason, 0) + 1
        s = self.settings
        backoff = (s.full_backoff_s if reason in _SHORT_BACKOFF
                   else s.unpaid_backoff_s if reason == UNPAID else s.lost_backoff_s)
        self.set_aside(peer_id, now + backoff)
        extra.attempt = 0
        extra.problem = f"provider {short_peer(peer_id)} declined: {reason}" + (
            f" ({detail})" if detail else "")
        self.book.release(request_id, now, reason="waiting for another offer")
        return True

    def on_fault(self, request_id: str, attempt: int, peer_id: str, kind: str, why: str,
                 now: float) -> bool:
        """A provider fault (`node.reputation.FAULT_KINDS`): the request goes back to pending at
        once with nothing charged, and the fault counts against the provider (back-off, then a
        ban). False if the report was stale (the request moved on)."""
        extra = self._current(request_id, attempt)
        if extra is None:
            return False
        self.counts["lost"] += 1
        if self.not_holding is not None:  # our clock's doing, likely: set aside, not blamed
            self.faults_not_held += 1
            self.set_aside(peer_id, now + self.settings.lost_backoff_s)
            extra.problem = (f"provider {short_peer(peer_id)} {why}; not held against it "
                             f"({self.not_holding}); nothing charged")
        else:
            self.fault_counts[kind] += 1
            self.reputation.on_fault(peer_id, kind, why, now)
            extra.problem = f"provider {short_peer(peer_id)} {why}; nothing charged"
        extra.attempt = 0
        self.book.release(request_id, now, reason="waiting for another offer")
        return True

    def on_lost(self, request_id: str, attempt: int, peer_id: str, why: str, now: float,
                kind: str = DROPPED) -> bool:
        """The stream failed before a result (unreachable, timed out, provider died): a fault of
        `kind` (`on_fault`). False if stale."""
        return self.on_fault(request_id, attempt, peer_id, kind, why, now)

    def on_declined_after_accept(self, request_id: str, attempt: int, peer_id: str, reason: str,
                                 detail: str, now: float) -> bool:
        """The provider accepted, then declined (its backend failed): a provider fault, the
        request back to pending — unless providers with a settled record, or this same provider,
        have now failed on it `user_fault_after` times: then its input is the likely cause and it
        fails with their reason. (A liar on probation cannot make a user's request fail this way
        while any other provider can serve it: the liar is set aside after its first decline.)"""
        extra = self._current(request_id, attempt)
        if extra is None:
            return False
        why = f"could not serve it: {reason}" + (f": {detail}" if detail else "")
        limit = self.settings.user_fault_after
        if not self.reputation.on_probation(peer_id):
            extra.trusted_declines += 1
        extra.declines_by[peer_id] = extra.declines_by.get(peer_id, 0) + 1
        if extra.trusted_declines >= limit or extra.declines_by[peer_id] >= limit:
            # The provider was right about this input: no fault of its own.
            return self.on_failed(request_id, attempt, peer_id,
                                  f"provider {short_peer(peer_id)} {why}", now)
        return self.on_fault(request_id, attempt, peer_id, DECLINED_AFTER_ACCEPT,
                             f"accepted, then {why}", now)

    def on_failed(self, request_id: str, attempt: int, peer_id: str, why: str,
                  now: float) -> bool:
        """The request cannot be served for its own reasons (its input failed at providers with
        a settled record): failed, nothing charged. False if stale."""
        extra = self._current(request_id, attempt)
        if extra is None:
            return False
        self.counts["failed"] += 1
        extra.attempt = 0
        self._drop_prompt(extra)
        self.book.fail(request_id, now, reason=why)
        self._finished_now(request_id)
        return True

    def on_completed(self, request_id: str, attempt: int, receipt: Receipt, output: str,
                     now: float, latency_s: float = 0.0) -> JobStatus | None:
        """A receipt the checks accepted (ledger) completes the request at its locked price:
        cost = tokens_served × locked_price // 1e6. `latency_s`: how much longer than the
        offer's rate the job took (the provider's record). None if stale."""
        extra = self._current(request_id, attempt)
        if extra is None:
            return None
        self.counts["completed"] += 1
        peer_id = peer_id_of(receipt.signer)
        self.reputation.on_settled(peer_id, latency_s, now)
        extra.attempt = 0
        extra.output = output
        extra.problem = ""
        self._drop_prompt(extra)  # served: the prompt is no longer needed here
        self._keep_output(request_id, len(output.encode("utf-8", "replace")))
        self.book.complete(request_id, receipt.tokens_served, now, node_id=peer_id)
        self._finished_now(request_id)
        return self.status(request_id)

    # -- what routing shows ----------------------------------------------------------------------

    def routing(self, signer: bytes, now: float) -> dict[str, Any]:
        """How this gateway routes to the provider `signer` now: its state (own, trusted,
        probation, set_aside, backing_off, banned), whether it is skipped, why, and its record."""
        if signer == self.gateway_key:
            return {"state": "own", "skipped": True,
                    "why": "this node's own offer (a gateway never sends a job to itself)"}
        peer_id = self._peer_id(signer)
        record = self.reputation.get(peer_id)
        state = self.reputation.state(peer_id, now)
        why = self.reputation.why(peer_id, now)
        until = self._set_aside.get(peer_id, -math.inf)
        skipped = state in (BACKING_OFF, BANNED)
        if until > now and not skipped:
            state, skipped = "set_aside", True
            why = f"declined a job; not tried for {until - now:.1f} s more"
        out: dict[str, Any] = {"state": state, "skipped": skipped, "why": why}
        if record is not None:
            out["record"] = record.to_dict()
        return out

    # -- time ----------------------------------------------------------------------------------

    def advance(self, now: float) -> list[RequestRequeued | RequestExpired]:
        """Apply the book's timers: claims past claim_timeout go back to pending (their provider
        set aside), pending requests past their expiry expire; terminal ones are pruned after
        retention_s, with what this desk kept about them."""
        events: list[RequestRequeued | RequestExpired] = []
        for event in self.book.advance(now):
            if isinstance(event, RequestRequeued):
                self.counts["requeued"] += 1
                self.fault_counts[CLAIM_TIMEOUT] += 1
                self.reputation.on_fault(event.node_id, CLAIM_TIMEOUT, event.reason, now)
                extra = self._extra.get(event.request_id)
                if extra is not None:
                    extra.attempt = 0
                    extra.problem = event.reason
                events.append(event)
            elif isinstance(event, RequestExpired):
                self.counts["expired"] += 1
                self._finished_now(event.request_id)
                extra = self._extra.get(event.request_id)
                if extra is not None:
                    self._drop_prompt(extra)
                events.append(event)
        # The book prunes a finished request at the same instant (finished_at + retention_s),
        # in its advance just above: what this desk kept about it goes with it. (A walk over
        # every record every 10 s did this: 9 us a record, a 0.9 s stall of the event loop
        # every 10 s with 100,000 held.)
        while self._prunes and self._prunes[0][0] <= now:
            _, request_id, state = heapq.heappop(self._prunes)
            self._let_go(request_id, state)
        return events

    def _let_go(self, request_id: str, counted_as: str | None = None) -> None:
        """A finished request left the book: forget what this desk kept about it (and stop
        counting it in the state it was `counted_as`, if it was counted)."""
        if counted_as is not None:
            self._finished[counted_as] -= 1
        extra = self._extra.pop(request_id, None)
        if extra is not None:
            self._drop_prompt(extra)
        self.output_bytes -= self._outputs.pop(request_id, 0)

    def _drop_prompt(self, extra: _Extra) -> None:
        if extra.prompt:
            self.prompt_bytes -= len(extra.prompt.encode("utf-8"))
            extra.prompt = ""

    def _keep_output(self, request_id: str, size: int) -> None:
        """Keep a completed request's output, letting go of the oldest kept outputs past the
        byte budget (their status then says so)."""
        self._outputs[request_id] = size
        self.output_bytes += size
        while self.output_bytes > self.settings.max_output_bytes and self._outputs:
            oldest, freed = self._outputs.popitem(last=False)
            self.output_bytes -= freed
            extra = self._extra.get(oldest)
            if extra is not None:
                extra.output = None
                extra.output_dropped = True

    def next_deadline(self) -> float | None:
        """When `advance` (or `dispatch`, for a provider coming back from being set aside) next
        has work; None if only new input can give it work."""
        deadlines = [d for d in (self.book.next_deadline(),) if d is not None]
        if self.book.pending_count and self._next_route is not None:
            deadlines.append(self._next_route)
        return min(deadlines) if deadlines else None


__all__ = [
    "job_protocol", "job_stream_protocol", "job_sampling_protocol", "declined", "Admission", "ProviderDesk", "JobStatus", "Dispatch",
    "GatewaySettings", "GatewayDesk", "DECLINE_REASONS", "FULL", "NOT_OFFERING",
    "BELOW_MIN_PRICE", "TOO_LARGE", "WRONG_PROVIDER", "GATEWAY_MISMATCH", "DUPLICATE", "BAD_JOB",
    "UNPAID", "NOT_MEMBER", "short_peer", "ViewOffers", "progress_deadline_s", "PROGRESS_GRACE_S",
    "PROGRESS_RATE_FACTOR", "QUEUE_LIMIT_S",
]
