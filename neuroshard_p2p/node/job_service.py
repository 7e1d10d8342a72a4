"""The jobs driver: trio + py-libp2p around the sans-IO desks of `jobs`.

A node owns one `JobService` (`Node.jobs`, two lines in `Node`):

    self.jobs = JobService.for_node(self, backend=backend, ledger=ledger)   # in Node.__init__
    await nursery.start(self.jobs.run, self.host)  # in Node._start

As a **gateway** it takes requests (`submit`, or whatever was queued through the engine's
`submit_request`), locks the market price, matches them against the merged view's offers with the
core book, and sends each matched job to its provider on a `/neuroshard/<network id>/job/2.0.0`
stream; it verifies the provider's signed receipt (ledger checks) and settles it in the ledger,
and tells the engine its queued demand so the node announces it; it then tells the provider what
became of its receipt (JobSettled). As a **provider** it answers job streams: it refuses a
replayed Job and the jobs of a gateway that does not settle, admits a job by its own capacity,
serves it through its inference backend and returns a signed receipt, records its earning, and
reads the gateway's JobSettled.

Deadlines: opening a stream, sending the job and reading accept/decline must take at most
`accept_timeout_s` (the accept deadline); after JobAccepted the result must arrive within the
progress deadline (`jobs.progress_deadline_s`: 5 s + 2 × tokens / tokens_per_second by default),
and never after the book's claim timeout (claimed_at + claim_timeout_s) minus a margin, so a
request is never requeued while its receipt is being settled. Anything else a provider does to
hold a request without serving it is a fault: the request is pending again at once and the
provider's record at this gateway pays (node/reputation.py). The provider serves with the claim
deadline (the job's issued_at + claim_timeout_s − margin), and stops serving — freeing its
backend time at once — if the gateway's stream goes away. Prompts travel only on the job stream.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections import OrderedDict, deque
from contextlib import AsyncExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

import coincurve
import trio

from neuroshard_p2p import wire
from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.identity import public_key_from_peer_id
from neuroshard_p2p.timeline import seconds_of
from neuroshard_p2p.ledger import STORAGE, AsyncLedger, LedgerError, MatchedJob, check_receipt
from neuroshard_p2p.node.backends import (
    UNREACHABLE,
    BackendError,
    InferenceBackend,
    SamplingError,
    SyntheticBackend,
    check_sampling,
    make_backend,
    plain_prompt,
    sampling_prompt,
    serve_stream,
    split_sampling,
)
from neuroshard_p2p.node.job_records import NO_SETTLEMENT, Payers, PayerSettings
from neuroshard_p2p.node.guard import JOB_FRAME, is_peer_fault
from neuroshard_p2p.node.jobs import (
    BAD_JOB,
    GATEWAY_MISMATCH,
    PROGRESS_GRACE_S,
    Dispatch,
    GatewayDesk,
    GatewaySettings,
    JobStatus,
    ProviderDesk,
    ViewOffers,
    declined,
    job_protocol,
    job_sampling_protocol,
    job_stream_protocol,
    short_peer,
)
from neuroshard_p2p.node.reputation import (
    BROKEN_FRAME,
    DROPPED,
    NO_ANSWER,
    NO_RESULT,
    RECEIPT_REFUSED,
    UNREACHABLE,
    WRONG_REQUEST,
    ReputationSettings,
)
from neuroshard_p2p.node.settings import DEFAULT_NETWORK
from neuroshard_p2p.node.streams import (
    FrameStream,
    close_quietly,
    failure_reason,
    reset_quietly,
)
from neuroshard_p2p.view import CountedOffer, TickPrice
from neuroshard_p2p.wire import (
    MAX_CHUNK_TEXT,
    MAX_OUTPUT_BYTES,
    Job,
    JobAccepted,
    JobCancel,
    JobChunk,
    JobDeclined,
    JobResult,
    JobSettled,
    Receipt,
    WireError,
    clip_utf8,
    decode_job_frame,
    decode_job_gateway_frame,
    decode_job_settled,
    encode_job_frame,
)
from neuroshard_p2p.wire.codec import MAX_SIZE
from neuroshard_p2p.wire.framing import MAX_STREAM_FRAME, length_prefixed
from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE
from neuroshard_p2p.wire.messages import KIND_JOB, KIND_JOB_CANCEL, KIND_JOB_SETTLED, SETTLED

if TYPE_CHECKING:  # trio's own TaskStatus is hidden by the trio-typing stubs
    from trio_typing import TaskStatus

log = logging.getLogger("neuroshard.jobs")
E = TypeVar("E", bound=BaseException)

#: Requests refused when they were taken from the engine's queue (their status stays readable).
MAX_REFUSED_KEPT = 1024
#: Requests whose sampling settings were sent, remembered for their answers (`sampling_sent`).
MAX_SAMPLING_SENT = 10_000

#: How often the gateway looks again at which connected providers speak a job protocol but not
#: job/2.2.0 (identify's list; `_old_providers`), rather than decoding every offer's peer id on
#: every routing pass (11 µs each: 10,000 offers would be a tenth of a second a pass).
OLD_PROVIDERS_REFRESH_S = 5.0

#: Pieces of a streamed job the gateway holds for a user who reads slower than the provider
#: sends (each at most 16 KiB of text). A user this far behind is treated as gone: the job is
#: cancelled and settles what was served, rather than holding the provider's stream (and its
#: progress deadline) hostage.
STREAM_BUFFER = 256
#: How long a stream opened ahead for a provider's next streamed job waits for one (below the
#: provider's accept deadline, 5 s by reference), and at most how many wait at once.
WARM_STREAM_S = 3.0
#: How long after a provider's last streamed job the gateway keeps a stream open ahead to it.
WARM_KEEP_S = 60.0
MAX_WARM = 64
#: Job streams a gateway opens at once (the rest wait their turn before their accept deadline).
OPENING_AT_ONCE = 16
#: Text a provider holds while a chunk is being written before its backend has to wait.
STREAM_BUFFER_BYTES = 64 * 1024
#: A provider paces its chunk frames: after writing one for a job it waits this long times the
#: number of jobs it is streaming before the next (what arrived meanwhile goes in one frame). A
#: lone stream sends a frame every 2 ms at most, so tokens leave as they come; 100 streams share
#: about 500 frames/s, which py-libp2p (noise + yamux, a few ms of CPU per frame) keeps up with.
#: Tokens per second are the backend's either way; the first piece is never held.
STREAM_FRAME_BUDGET_S = 0.002


@dataclass(frozen=True)
class Piece:
    """A piece of a streamed job's output as the provider sent it (JobChunk), or the whole
    output in one piece from a provider without job/2.1.0."""

    text: str
    tokens: int
    #: A marker, not output: a provider accepted the request (streamed, job/2.1.0), so its
    #: answer can begin before the first token (text "" and tokens 0; sent once per request).
    accepted: bool = False


class _Sink:
    """Where the pieces of one streamed request go (the API reads the other end), and how its
    user cancels it."""

    def __init__(self, send: "trio.MemorySendChannel[Piece]",
                 sampling: dict[str, Any] | None = None) -> None:
        self.send = send
        #: The buyer's sampling settings (job/2.2.0 carries them to the provider's backend).
        self.sampling: dict[str, Any] = sampling or {}
        self.cancelled = trio.Event()
        self.why = ""
        #: Tokens and text the provider streamed for the current attempt (JobChunk sums).
        self.tokens = 0
        self.parts: list[str] = []
        self.text_bytes = 0
        #: Pieces handed to the user, over all attempts: once any is, the request cannot start
        #: over at another provider.
        self.delivered = 0
        #: Whether the reader was told a provider accepted the request (`accept`).
        self.announced = False
        self.reader_stays = False

    def cancel(self, why: str, *, reader_stays: bool = False) -> None:
        """Stop the job (JobCancel). `reader_stays`: the cancel is not the reader's (this node
        is stopping), so what is served until the provider stops still reaches it, as paid."""
        if not self.cancelled.is_set():
            self.why = why
            self.reader_stays = reader_stays
            self.cancelled.set()

    def accept(self) -> None:
        """A provider accepted the request: tell the reader once (not output; it does not count
        as delivered, so a failure before the first piece may still go to another provider)."""
        if self.announced or self.cancelled.is_set():
            return
        self.announced = True
        try:
            self.send.send_nowait(Piece("", 0, accepted=True))
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # a reader that is gone or full learns of the output instead

    def deliver(self, piece: Piece) -> None:
        size = len(piece.text.encode("utf-8", "replace"))
        if self.text_bytes + size <= MAX_OUTPUT_BYTES:
            self.parts.append(piece.text)
            self.text_bytes += size
        if self.cancelled.is_set() and not self.reader_stays:
            return
        try:
            self.send.send_nowait(piece)
            self.delivered += 1
        except trio.WouldBlock:
            self.cancel(f"the client fell {STREAM_BUFFER} pieces behind the stream")
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.cancel("the client went away")


#: How long a stopping provider tries once more to record its kept earnings.
CLOSE_RECORD_S = 5.0
#: Why a stopping node refuses a request, and fails or cancels the ones it holds.
STOPPING = "this node is stopping; submit at another node"
#: How long a stopping gateway waits for the streamed jobs it cancelled to settle what was served.
CANCEL_SETTLE_S = 3.0


@dataclass(frozen=True)
class JobSettings:
    """How a node serves and routes jobs (seconds)."""

    #: Inference backend: "synthetic" (tokens at the offered rate) or "openai" (URL + model).
    backend: str = "synthetic"
    backend_url: str = ""
    backend_model: str = ""
    backend_timeout_s: float = 60.0
    #: Dial + send the job + read the provider's accept/decline (the accept deadline); also how
    #: long a provider waits for the Job.
    accept_timeout_s: float = 5.0
    #: How long a provider waits for the gateway's JobSettled after its JobResult (the node's
    #: stream timeout: a busy gateway checks and stores the receipt first), and how long a
    #: gateway tries to send it.
    settle_timeout_s: float = 10.0
    #: How often pending requests are matched again against the view's offers.
    route_interval_s: float = 0.25
    #: Providers set aside after a decline for being full / for other declines.
    full_backoff_s: float = 1.0
    lost_backoff_s: float = 10.0
    #: After JobAccepted, the result is due within progress_grace_s + 2 × tokens / tps.
    progress_grace_s: float = PROGRESS_GRACE_S
    #: Provider faults: back-off, bans, probation (node/reputation.py).
    reputation: ReputationSettings = field(default_factory=ReputationSettings)
    #: Gateways that do not settle (node/job_records.py).
    payers: PayerSettings = field(default_factory=PayerSettings)
    #: The ledger file (None: receipts are checked but not recorded; tests of routing only).
    ledger_path: Path | None = None
    #: Network id (the charter's): part of the job stream's protocol id (`job_protocol`).
    network: str = builtin(DEFAULT_NETWORK).network_id
    #: Speak job/2.1.0 (revision 2.1: streamed output, cancellation) besides job/2.0.0. False
    #: behaves as a node from before it (tests of the fallback).
    streaming: bool = True
    #: Speak job/2.2.0 (revision 2.1: sampling; needs `streaming`): the buyer's sampling
    #: settings reach the provider's backend. False behaves as a node from before it.
    sampling: bool = True
    #: A provider's earnings its ledger could not take (disk full): tried again this often, and
    #: at most this many kept (~250 bytes each); past it, the oldest is logged and let go.
    unrecorded_retry_s: float = 10.0
    unrecorded_max: int = 10_000

    def __post_init__(self) -> None:
        for name in ("backend_timeout_s", "accept_timeout_s", "route_interval_s",
                     "progress_grace_s", "settle_timeout_s", "unrecorded_retry_s"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be > 0, got {value!r}")
        self.gateway_settings()

    def gateway_settings(self) -> GatewaySettings:
        """The gateway desk's settings from these."""
        return GatewaySettings(self.full_backoff_s, self.lost_backoff_s,
                               progress_grace_s=self.progress_grace_s,
                               reputation=self.reputation)

    @property
    def protocol(self) -> str:
        """The job stream's protocol id on this network."""
        return job_protocol(self.network)

    @property
    def stream_protocol(self) -> str:
        """The streaming job stream's protocol id on this network (job/2.1.0)."""
        return job_stream_protocol(self.network)

    @property
    def sampling_protocol(self) -> str:
        """The job stream with sampling settings on this network (job/2.2.0)."""
        return job_sampling_protocol(self.network)

    def streamed_protocols(self) -> list[str]:
        """What a gateway offers for a streamed request, best first."""
        ids = [self.stream_protocol, self.protocol] if self.streaming else [self.protocol]
        if self.streaming and self.sampling:
            ids.insert(0, self.sampling_protocol)
        return ids


@dataclass
class JobCounters:
    """Driver-level counts (the desks count decisions)."""

    jobs_sent: int = 0
    jobs_served: int = 0
    #: Jobs this gateway sent on job/2.2.0 with the buyer's sampling settings / streamed
    #: requests with settings whose provider speaks no job/2.2.0 (its backend's own settings).
    sampling_sent: int = 0
    sampling_not_sent: int = 0
    #: Jobs this provider stopped serving because their gateway went away mid-job.
    jobs_abandoned: int = 0
    #: Streamed jobs (job/2.1.0) this provider served / stopped at its gateway's JobCancel.
    jobs_streamed: int = 0
    jobs_cancelled: int = 0
    #: Streamed jobs this provider ended itself, paid for what it served, when its stop's wait
    #: for the jobs under way ran out (`drain`).
    jobs_ended_at_stop: int = 0
    #: Streamed requests at this gateway / JobCancel frames sent / attempts that fell back to
    #: job/2.0.0 (the provider does not stream).
    streams_opened: int = 0
    cancels_sent: int = 0
    stream_fallbacks: int = 0
    #: Streams opened ahead that a streamed job used / found closed (then opened anew).
    warm_streams_used: int = 0
    warm_streams_stale: int = 0
    backend_errors: int = 0
    streams_refused: int = 0
    receipts_settled: int = 0
    receipts_refused: int = 0
    #: JobSettled frames this gateway sent / could not send (the provider had gone).
    settlements_sent: int = 0
    settlements_unsent: int = 0
    earnings_recorded: int = 0
    #: Settlements this node could not write to its ledger (disk full, I/O error): a gateway's
    #: request then fails, nothing charged; a provider's earning is kept and tried again.
    ledger_write_failures: int = 0
    late_settlements: int = 0
    #: Time spent per phase by the jobs this gateway completed (sums, seconds; divide by
    #: `timed_jobs`): opening the stream and getting the provider's answer, waiting for the
    #: result after acceptance, checking and settling the receipt.
    timed_jobs: int = 0
    answer_wait_s: float = 0.0
    result_wait_s: float = 0.0
    settle_s: float = 0.0


class JobService:
    """Gateway and provider sides of the job protocol for one node (see module docstring)."""

    def __init__(self, engine: Any, *, settings: JobSettings | None = None,
                 backend: InferenceBackend | None = None, ledger: AsyncLedger | None = None,
                 clock: Callable[[], float] = time.time,
                 on_demand_change: Callable[[], None] | None = None,
                 refuse: Callable[[Any], bool] | None = None,
                 on_fault: Callable[[Any, str], object] | None = None,
                 on_backend_unreachable: Callable[[], None] | None = None) -> None:
        """`refuse(peer id)`: the peer is banned, reset its job streams; `on_fault(peer id,
        reason)`: a peer broke the job stream's frames (the node's guard charges it)."""
        self.engine = engine
        self._refuse = refuse
        self._on_fault = on_fault
        self._on_backend_unreachable = on_backend_unreachable
        self.settings = settings or JobSettings()
        self.config: MarketConfig = engine.config
        self.private_key: coincurve.PrivateKey = engine.private_key
        self.signer: bytes = engine.signer
        self.clock = clock
        self._on_demand_change = on_demand_change
        s = self.settings
        #: A backend handed in is its owner's to close; one made here is closed by `run`.
        self._owns_backend = backend is None
        if backend is None:
            backend = make_backend(s.backend, tokens_per_second=max(1, engine.offer.tokens_per_second),
                                   url=s.backend_url, model=s.backend_model,
                                   timeout_s=s.backend_timeout_s)
        self.backend = backend
        self.ledger = ledger
        self.gateway = GatewayDesk(self.config, self.signer, s.gateway_settings())
        self.provider = ProviderDesk(self.signer, self.config,
                                     getattr(engine.validator, "admission", None),
                                     payers=Payers(s.payers))
        self.gateway.credential = getattr(engine, "credential", b"")
        #: The view's offers, walked again only when they can have changed (hits / misses).
        self.view_offers = ViewOffers()
        self._offers_given: tuple[CountedOffer, ...] | None = None
        #: Connected providers known not to take sampling settings, and when that was read.
        self._old_providers: frozenset[str] = frozenset()
        self._old_read_at = -math.inf
        self.counters = JobCounters()
        self.host: Any = None
        #: How a stream to a provider is opened: the node's (`Reach.open_stream`: directly, or
        #: through a circuit relay); by default the host's own dial.
        self.open_stream: Any = None
        self._nursery: trio.Nursery | None = None
        self._wake = trio.Event()
        self._changed: dict[str, trio.Event] = {}
        self._refused: OrderedDict[str, JobStatus] = OrderedDict()
        self._demand: tuple[int, int, tuple[int, ...] | None] | None = None
        self._seen_receipts: set[bytes] = set()  # without a ledger only
        self._sinks: dict[str, _Sink] = {}
        #: Streams opened ahead to providers of streamed jobs: peer id → (stream, opened at).
        self._warm: dict[str, tuple[Any, float]] = {}
        self._warming: set[str] = set()
        self._warm_taken: dict[str, trio.Event] = {}
        self._warm_job_done: dict[str, trio.Event] = {}
        self._warm_until: dict[str, float] = {}
        #: Job streams this gateway may be opening at once (`_send_job`).
        self._opening = trio.Semaphore(OPENING_AT_ONCE)
        #: Jobs this provider is streaming now (paces their chunk frames).
        self._streaming_jobs = 0
        #: Earnings the ledger could not take (STORAGE): (request id, receipt bytes, served at),
        #: oldest first; `_record_kept` tries them again.
        self._unrecorded: deque[tuple[str, bytes, float]] = deque()
        #: Requests whose sampling settings went to their provider on job/2.2.0 (the latest
        #: attempt's), for the buyer's answer; the oldest let go past MAX_SAMPLING_SENT.
        self._sampling_sent: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        #: A clean stop has begun (`drain`): no request is taken or dispatched, no job admitted.
        self.stopping = False
        #: Jobs under way here: attempts this gateway sent that have not ended, and jobs this
        #: provider admitted, until their settlement is read. `drain` waits for them.
        self.under_way = 0
        self._quiet = trio.Event()
        #: Set when a stopping provider's wait is up: its streamed jobs end where they are.
        self._stop_serving = trio.Event()

    @classmethod
    def for_node(cls, node: Any, *, backend: InferenceBackend | None = None,
                 ledger: AsyncLedger | None = None) -> "JobService":
        """The service of a `Node`: timeouts (and the backend, when none is given) from its
        settings, demand changes poke its announcer. `backend` and `ledger` are the caller's,
        open for the node's lifetime (the daemon opens the ledger in the data dir)."""
        s = node.settings
        settings = JobSettings(
            network=s.network, backend=s.backend, backend_url=s.backend_url,
            backend_model=s.backend_model, backend_timeout_s=s.backend_timeout_s,
            accept_timeout_s=min(s.job_accept_timeout_s, s.stream_timeout_s),
            settle_timeout_s=s.stream_timeout_s,
            progress_grace_s=s.job_progress_grace_s, streaming=s.job_streaming,
            sampling=s.job_sampling,
            reputation=ReputationSettings(backoff_s=s.job_backoff_s, ban_after=s.job_ban_after,
                                          ban_s=s.job_ban_s))
        # The announcer waits on node._poke; look it up at call time (it is replaced each round).
        service = cls(node.engine, settings=settings, backend=backend, ledger=ledger,
                      clock=node.clock, on_demand_change=lambda: node._poke.set(),
                      refuse=node.refuses,
                      on_fault=lambda peer, reason: node.fault(peer, JOB_FRAME, reason),
                      on_backend_unreachable=node.backend_unreachable)
        service.open_stream = lambda peer, protocols: node.reach.open_stream(peer, protocols)
        return service

    # -- lifetime ------------------------------------------------------------------------------

    async def run(self, host: Any, *,
                  task_status: "TaskStatus[None]" = trio.TASK_STATUS_IGNORED) -> None:
        """Serve job streams on `host` and route this node's requests until cancelled."""
        self.host = host
        async with AsyncExitStack() as stack:
            # This task always ends by cancellation (its node stopping), so the closes are
            # shielded: unshielded, their first await was cancelled and the ledger's SQLite
            # connection and the backend's HTTP connections were never closed.
            if self._owns_backend:
                stack.push_async_callback(_close_shielded, self.backend.aclose)
            if self.ledger is None and self.settings.ledger_path is not None:
                self.ledger = await AsyncLedger.open(self.settings.ledger_path)
                stack.push_async_callback(_close_shielded, self.ledger.aclose)
            try:
                async with trio.open_nursery() as nursery:
                    self._nursery = nursery
                    host.set_stream_handler(self.settings.protocol, self._serve_job)
                    if self.settings.streaming:
                        host.set_stream_handler(self.settings.stream_protocol,
                                                self._serve_job_streamed)
                        if self.settings.sampling:
                            host.set_stream_handler(self.settings.sampling_protocol,
                                                    self._serve_job_sampled)
                    nursery.start_soon(self._record_kept_loop)
                    task_status.started()
                    await self._route_loop()
            finally:
                self._closed = True
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_RECORD_S):
                    await self._record_kept()
                for request_id, wire_bytes, _ in self._unrecorded:
                    log.error("earning for %s not recorded (the ledger cannot write); its signed "
                              "receipt: %s", request_id, wire_bytes.hex())

    async def drain(self, timeout_s: float, cut_short: trio.Event | None = None) -> int:
        """A clean stop's first step: take no new work, and give the jobs under way up to
        `timeout_s` (or until `cut_short` is set) to end well, so that nobody is left unpaid
        or charged a fault by this node's leaving. Requests waiting here for a provider fail
        at once (nothing charged); new requests are refused `STOPPING`. Jobs this provider
        serves run to their end and read their settlement (its offer is withdrawn by the
        node, so no new one is admitted). When the time is up, streamed requests this gateway
        still has with a provider are cancelled, and streamed jobs this provider still serves
        end where they are: either way the receipt charges what was served, and the job
        settles (up to CANCEL_SETTLE_S more). Returns how many jobs were still under way (0:
        all ended)."""
        self.stopping = True
        self._fail_pending(self.clock())
        self._wake.set()
        if self.under_way:
            log.info("stopping: %d job(s) under way; waiting up to %g s for them to end "
                     "(signal again to stop now)", self.under_way, timeout_s)
        if not await self._wait_quiet(timeout_s, cut_short) and not (
                cut_short is not None and cut_short.is_set()):
            streamed = [sink for sink in self._sinks.values() if not sink.cancelled.is_set()]
            for sink in streamed:
                sink.cancel(STOPPING, reader_stays=True)
            serving = self._streaming_jobs
            self._stop_serving.set()
            if streamed or serving:
                await self._wait_quiet(CANCEL_SETTLE_S, cut_short)
        if self.under_way:
            log.warning("stopping with %d job(s) still under way: their peers see them cut "
                        "off", self.under_way)
        return self.under_way

    async def _wait_quiet(self, timeout_s: float, cut_short: trio.Event | None) -> bool:
        """Wait until no job is under way: True if none is, False at the timeout or the cut."""
        async def watch_cut(scope: trio.CancelScope) -> None:
            assert cut_short is not None
            await cut_short.wait()
            scope.cancel()

        with trio.move_on_after(timeout_s):
            async with trio.open_nursery() as nursery:
                if cut_short is not None:
                    nursery.start_soon(watch_cut, nursery.cancel_scope)
                while self.under_way:
                    self._quiet = trio.Event()
                    await self._quiet.wait()
                nursery.cancel_scope.cancel()
        return self.under_way == 0

    def _fail_pending(self, now: float) -> None:
        for status in self.gateway.book.pending():
            if self.gateway.cancel(status.request_id, STOPPING, now):
                self._notify(status.request_id)

    def _job_started(self) -> None:
        self.under_way += 1

    def _job_ended(self) -> None:
        self.under_way -= 1
        if self.under_way == 0:
            self._quiet.set()

    # -- gateway: requests ---------------------------------------------------------------------

    def price_nano(self, now: float | None = None) -> int:
        """The market price now (what a request submitted now locks)."""
        price = self.engine.price(self.clock() if now is None else now)
        return price.price_nano if isinstance(price, TickPrice) else int(price)

    def submit(self, tokens: int, max_price_nano: int, *, prompt: str = "", tier: str = "standard",
               user: str | None = None, request_id: str | None = None) -> JobStatus:
        """Take a request at this gateway: it locks the current price and is routed to a provider.
        Raises MarketError with the reason (bad fields, max price below the price, …)."""
        if self.stopping:
            raise MarketError(STOPPING)
        now = self.clock()
        rid = request_id or f"req-{secrets.token_hex(8)}"
        status = self.gateway.submit(rid, user or self.engine.peer_id, tokens, max_price_nano,
                                     price_nano=self.price_nano(now), now=now, tier=tier,
                                     prompt=prompt)
        self._refused.pop(rid, None)
        self._wake.set()
        return status

    def submit_streamed(self, tokens: int, max_price_nano: int, *, prompt: str = "",
                        tier: str = "standard", user: str | None = None,
                        request_id: str | None = None, sampling: dict[str, Any] | None = None,
                        ) -> tuple[JobStatus, "trio.MemoryReceiveChannel[Piece]"]:
        """`submit`, with the output streamed: the channel gives the pieces as the provider
        sends them (job/2.1.0; one piece from a provider without it) and closes when the request
        ends (`status` then says how). Close the channel, or call `cancel`, to give up: a request
        being served stops and settles the tokens served so far. `sampling` (checked by
        `check_sampling`) goes to a provider that speaks job/2.2.0 (`sampling_sent`)."""
        if sampling:
            check_sampling(sampling)
        send, receive = trio.open_memory_channel[Piece](STREAM_BUFFER)
        status = self.submit(tokens, max_price_nano, prompt=prompt, tier=tier, user=user,
                             request_id=request_id)
        self._sinks[status.request_id] = _Sink(send, sampling)
        self.counters.streams_opened += 1
        if self._nursery is not None and not self._closed:
            # Routed in this task, now: a streamed request's first token does not wait for the
            # route loop's turn (the loop would only find it already claimed).
            self._route()
        return status, receive

    def sampling_sent(self, request_id: str) -> bool:
        """Whether the request's sampling settings went to the provider that served it last
        (job/2.2.0); False for a request without settings."""
        return request_id in self._sampling_sent

    def _note_sampling(self, request_id: str, sink: _Sink, protocol: str) -> None:
        if not sink.sampling:
            return
        if protocol == self.settings.sampling_protocol:
            self.counters.sampling_sent += 1
            self._sampling_sent[request_id] = None
            self._sampling_sent.move_to_end(request_id)
            while len(self._sampling_sent) > MAX_SAMPLING_SENT:
                self._sampling_sent.popitem(last=False)
        else:
            self.counters.sampling_not_sent += 1
            self._sampling_sent.pop(request_id, None)

    def cancel(self, request_id: str, why: str = "cancelled by its user") -> bool:
        """The user gives up: a pending request fails at once (nothing charged); a streamed one
        being served is cancelled on its job stream and settles what was served. False when
        there was nothing to cancel (finished, unknown, or cancelled already)."""
        if self.gateway.cancel(request_id, why, self.clock()):
            self._notify(request_id)
            self._wake.set()
            return True
        sink = self._sinks.get(request_id)
        if sink is None or sink.cancelled.is_set():
            return False
        sink.cancel(why)
        return True

    def status(self, request_id: str) -> JobStatus | None:
        """A request's status (state, provider, tokens served, cost, why), or None if unknown."""
        return (self.gateway.status(request_id) or self._refused.get(request_id)
                or self._queued_status(request_id))

    def _queued_status(self, request_id: str) -> JobStatus | None:
        """A request still in the engine's queue (submitted a moment ago through the engine)."""
        queued = getattr(self.engine, "queued_requests", None)
        for request in (queued(self.clock()) if queued is not None else ()):
            if request.request_id == request_id:
                return JobStatus(
                    request_id=request.request_id, user=request.user, state="pending",
                    tokens=request.tokens, max_price_nano=request.max_price_nano,
                    locked_price_nano=0, tier=request.tier, provider=None, tokens_served=None,
                    cost_nano=None, reason="queued; the price is locked when it is matched",
                    attempts=0, submitted_at=request.submitted_at, finished_at=None)
        return None

    def statuses(self) -> list[JobStatus]:
        """Every request this gateway holds, newest first (walks them all: see count_by_state)."""
        return self.gateway.statuses() + list(reversed(self._refused.values()))

    def count_by_state(self) -> dict[str, int]:
        """Requests by state, as counting `statuses()` would give, in constant time (the API
        and the metrics read it on every call; a busy gateway holds many thousands)."""
        counts = self.gateway.count_by_state()
        if self._refused:
            counts["failed"] = counts.get("failed", 0) + len(self._refused)
        return counts

    async def wait_finished(self, request_id: str) -> JobStatus:
        """Until the request is completed, failed or expired (use inside a deadline)."""
        while True:
            status = self.status(request_id)
            if status is None:
                raise MarketError(f"unknown request {request_id!r}")
            if status.state in ("completed", "failed", "expired"):
                return status
            event = self._changed.setdefault(request_id, trio.Event())
            await event.wait()

    def _notify(self, request_id: str) -> None:
        event = self._changed.pop(request_id, None)
        if event is not None:
            event.set()
        sink = self._sinks.get(request_id)
        if sink is not None:
            status = self.status(request_id)
            if status is None or status.state in ("completed", "failed", "expired"):
                del self._sinks[request_id]
                sink.send.close()

    def _take_engine_queue(self, now: float) -> None:
        """Requests queued through the engine (`Node.submit_request`) move into the book."""
        queued = getattr(self.engine, "queued_requests", None)
        if queued is None:
            return
        for request in queued(now):
            self.engine.take_request(request.request_id)
            try:
                self.gateway.submit(request.request_id, request.user, request.tokens,
                                    request.max_price_nano, price_nano=self.price_nano(now),
                                    now=now, tier=request.tier, prompt=request.prompt)
            except MarketError as exc:
                self._refused[request.request_id] = JobStatus(
                    request_id=request.request_id, user=request.user, state="failed",
                    tokens=request.tokens, max_price_nano=request.max_price_nano,
                    locked_price_nano=0, tier=request.tier, provider=None, tokens_served=None,
                    cost_nano=None, reason=str(exc), attempts=0,
                    submitted_at=request.submitted_at, finished_at=now)
                while len(self._refused) > MAX_REFUSED_KEPT:
                    self._refused.popitem(last=False)
                self._notify(request.request_id)

    # -- gateway: routing ----------------------------------------------------------------------

    def _route(self) -> None:
        """One routing pass: expire, match pending requests to offers, start their jobs,
        announce the demand left. Synchronous, so any task may run it between two awaits."""
        assert self._nursery is not None
        now = self.clock()
        # Requests queued through the engine (Node.submit_request) do not wake the loop: it
        # looks for them every route_interval_s.
        self._take_engine_queue(now)
        for event in self.gateway.advance(now):
            log.info("request %s: %s", event.request_id, event.reason)
            self._notify(event.request_id)
        if self.stopping and self.gateway.pending_requests:
            self._fail_pending(now)
        if self.gateway.pending_requests:
            offers = self.view_offers.at(self.engine.view, now)
            if offers is not self._offers_given:  # the desk holds these already otherwise
                self.gateway.set_view_offers(offers, now)
                self._offers_given = offers
            clearing = self.price_nano(now) if self.engine.config.clearing else None
            lacks = None
            if self.settings.sampling and self.host is not None:
                self._read_old_providers(now)
                lacks = self._old_providers.__contains__
            for dispatch in self.gateway.dispatch(now, clearing, lacks):
                self.counters.jobs_sent += 1
                self._nursery.start_soon(self._send_job, dispatch)
        self._announce_demand()

    def _read_old_providers(self, now: float) -> None:
        """At most every OLD_PROVIDERS_REFRESH_S: which connected peers `_lacks_sampling`."""
        if self._old_read_at <= now < self._old_read_at + OLD_PROVIDERS_REFRESH_S:
            return
        self._old_read_at = now
        peers = [str(p) for p in self.host.get_connected_peers()]
        self._old_providers = frozenset(p for p in peers if self._lacks_sampling(p))

    def _lacks_sampling(self, peer_id: str) -> bool:
        """What identify told us: the provider speaks a job protocol but not job/2.2.0 (a node
        from before it), so a buyer's sampling settings would not reach its backend. False when
        we know nothing of it (not connected yet): the desk's preference is for what is known."""
        from libp2p.peer.id import ID

        try:
            protocols = {str(p) for p in self.host.get_peerstore().get_protocols(
                ID.from_base58(peer_id))}
        except Exception:  # noqa: BLE001 - an unknown peer, or an id the peerstore refuses
            return False
        s = self.settings
        return s.sampling_protocol not in protocols and bool(
            protocols & {s.protocol, s.stream_protocol})

    async def _route_loop(self) -> None:
        while True:
            self._route()
            wait = self.settings.route_interval_s
            deadline = self.gateway.next_deadline()
            if deadline is not None:
                wait = min(wait, max(deadline - self.clock(), 0.001))
            with trio.move_on_after(wait):
                await self._wake.wait()
            self._wake = trio.Event()

    def wake(self) -> None:
        """Route now (e.g. right after a request was queued through the engine)."""
        self._wake.set()

    def _announce_demand(self) -> None:
        demand = (self.gateway.pending_tokens, self.gateway.pending_requests,
                  self.gateway.pending_by_limit() if self.engine.config.curve == "clearing"
                  else None)
        if demand != self._demand:
            self._demand = demand
            self.engine.set_demand(*demand)
            if self._on_demand_change is not None:
                self._on_demand_change()

    async def _send_job(self, dispatch: Dispatch) -> None:
        self._job_started()
        try:
            await self._attempt(dispatch)
        finally:
            self._job_ended()

    async def _attempt(self, dispatch: Dispatch) -> None:
        """One attempt: stream the job to its provider and report what happened to the desk.

        Deadlines: the accept deadline (dial, send, first answer: `accept_timeout_s`), then the
        progress deadline after JobAccepted (`dispatch.progress_s`), never past the job's total
        deadline (the claim timeout minus a margin). Every way a provider can hold a request
        without serving it is a fault (`GatewayDesk.on_fault`): the request is pending again at
        once and the provider's record pays for it."""
        from libp2p.peer.id import ID

        gateway = self.gateway
        rid, attempt, peer_id = dispatch.request_id, dispatch.attempt, dispatch.peer_id
        margin = min(2.0, 0.05 * self.config.claim_timeout_s)
        accept_s = self.settings.accept_timeout_s
        stream: Any = None
        accepted = False

        def fault(kind: str, why: str) -> None:
            gateway.on_fault(rid, attempt, peer_id, kind, why, self.clock())

        sink = self._sinks.get(rid)
        protocols = [self.settings.protocol]
        if sink is not None:
            protocols = self.settings.streamed_protocols()
            sink.tokens, sink.parts, sink.text_bytes = 0, [], 0
        streamed = False
        opening = False
        try:
            job = dispatch.job
            # A burst of jobs opens its streams a few at a time: py-libp2p takes seconds to open
            # a hundred at once, and waiting for our own turn is no fault of the provider's (the
            # accept deadline starts when the turn comes).
            await self._opening.acquire()
            opening = True
            sent_at = self.clock()
            started = time.perf_counter()
            total_by = trio.current_time() + (dispatch.claim_deadline - margin - sent_at)
            try:
                with trio.fail_after(accept_s):
                    first = None
                    # A stream this gateway opened ahead for this provider (job/2.1.0) saves
                    # the open, about 10 ms of py-libp2p, on the way to the first token. One
                    # that fails before any answer is no news of the provider: open a new one.
                    warm = self._take_warm(peer_id) if sink is not None else None
                    if warm is not None:
                        assert sink is not None
                        signed = wire.sign(self._job_on(warm, job, sink), self.private_key)
                        assert isinstance(signed, Job)
                        try:
                            await warm.write(length_prefixed(signed.wire))
                            frames = FrameStream(warm, MAX_STREAM_FRAME)
                            first = await frames.next()
                        except trio.TooSlowError:
                            stream = warm
                            raise
                        except Exception:  # noqa: BLE001 - a stale warm stream
                            first = None
                        if first is None:
                            self.counters.warm_streams_stale += 1
                            await reset_quietly(warm)
                        else:
                            stream, job, streamed = warm, signed, True
                            self.counters.warm_streams_used += 1
                    if first is None:
                        try:
                            opener = self.open_stream or self.host.new_stream
                            stream = await opener(ID.from_base58(peer_id), protocols)
                        except trio.TooSlowError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - whatever dialing does
                            fault(UNREACHABLE, f"was unreachable ({failure_reason(exc)})")
                            return
                        streamed = (sink is not None and str(stream.get_protocol()) in (
                            self.settings.stream_protocol, self.settings.sampling_protocol))
                        if sink is not None and not streamed:
                            # A provider without job/2.1.0 reads the prompt as text.
                            self.counters.stream_fallbacks += 1
                            job = replace(job, prompt=plain_prompt(job.prompt))
                        if sink is not None:
                            job = self._job_on(stream, job, sink)
                        signed = wire.sign(job, self.private_key)
                        assert isinstance(signed, Job)
                        job = signed
                        await stream.write(length_prefixed(job.wire))
                        frames = FrameStream(stream, MAX_STREAM_FRAME)
                        first = await frames.next()
            except trio.TooSlowError:
                fault(NO_ANSWER, f"did not accept or decline within {accept_s:g} s (the accept "
                                 f"deadline)")
                if stream is not None:
                    await reset_quietly(stream)
                return
            finally:
                if opening:
                    opening = False
                    self._opening.release()
            if sink is not None:
                self._note_sampling(rid, sink, str(stream.get_protocol()))
            if first is None:
                fault(DROPPED, "closed the stream without an answer")
                return
            frame = decode_job_frame(first)
            if isinstance(frame, JobDeclined):
                gateway.on_declined(rid, attempt, peer_id, frame.reason, frame.detail, self.clock())
                await close_quietly(stream)
                return
            if not isinstance(frame, JobAccepted):
                raise _Fault(BROKEN_FRAME, f"sent a {type(frame).__name__} where JobAccepted or "
                                           f"JobDeclined was due")
            if frame.request_id != rid:
                raise _Fault(WRONG_REQUEST, f"accepted request {frame.request_id!r}, not {rid!r}")
            accepted = True
            answered = time.perf_counter()
            gateway.on_accepted(rid, attempt, self.clock())
            progress_by = min(total_by, trio.current_time() + dispatch.progress_s)
            try:
                if streamed:
                    assert sink is not None
                    sink.accept()
                    second = await self._read_chunks(stream, frames, rid, sink, progress_by)
                else:
                    with trio.fail_at(progress_by):
                        second = await frames.next()
            except trio.TooSlowError:
                cancelled = (f" (cancelled: {sink.why})"
                             if sink is not None and sink.cancelled.is_set() else "")
                fault(NO_RESULT, f"accepted, then sent no result within {dispatch.progress_s:.1f} "
                                 f"s (the progress deadline for {dispatch.job.tokens} tokens at "
                                 f"{dispatch.provider_tokens_per_s} tokens/s){cancelled}")
                await reset_quietly(stream)
                return
            if second is None:
                fault(DROPPED, "closed the stream mid-job")
                return
            frame = decode_job_frame(second, streaming=streamed)
            if isinstance(frame, JobChunk):
                raise _Fault(BROKEN_FRAME, "sent a JobChunk on job/2.0.0")
            if isinstance(frame, (JobDeclined, JobResult)) and frame.request_id != rid:
                raise _Fault(WRONG_REQUEST, f"answered for request {frame.request_id!r}, not "
                                            f"{rid!r}")
            if isinstance(frame, JobDeclined):
                gateway.on_declined_after_accept(rid, attempt, peer_id, frame.reason,
                                                 frame.detail, self.clock())
            elif isinstance(frame, JobResult):
                if sink is not None and not streamed:
                    # One piece: the whole output of a provider that does not stream.
                    try:
                        charged = getattr(wire.decode_unchecked_time(frame.receipt),
                                          "tokens_served", 0)
                    except WireError:  # the receipt checks refuse it below
                        charged = 0
                    sink.deliver(Piece(frame.output, charged))
                await self._settle(dispatch, job, sent_at, frame, stream,
                                   (started, answered, time.perf_counter()),
                                   sink.tokens if streamed and sink is not None else None,
                                   "".join(sink.parts) if streamed and sink is not None
                                   else None)
            else:
                raise _Fault(BROKEN_FRAME, f"sent a {type(frame).__name__} where the result was "
                                           f"due")
            # After settling (not on the user's critical path): until the provider closes its
            # side, which it does once it has read the JobSettled (§J.2; a provider of this
            # code before 7 December closed right after its JobResult, and this returns at
            # once). A node that stops right after this attempt would otherwise close the
            # connection with the frame unread, and py-libp2p's yamux drops a stream's unread
            # data when its connection goes (the provider saw StreamReset, and the job unpaid).
            # Then close ours.
            await _await_close(stream, self.settings.settle_timeout_s)
            await close_quietly(stream)
        except _Fault as exc:
            fault(exc.kind, f"broke the job protocol: {exc.why}")
            self._fault(ID.from_base58(peer_id), WireError("unexpected", "reject", exc.why))
            if stream is not None:
                await reset_quietly(stream)
        except Exception as exc:  # noqa: BLE001 - whatever a peer or the network does
            if isinstance(exc, WireError):
                fault(BROKEN_FRAME, f"broke the job protocol ({exc})")
                self._fault(ID.from_base58(peer_id), exc)
            elif accepted:
                fault(DROPPED, f"disconnected mid-job ({failure_reason(exc)})")
            else:
                fault(UNREACHABLE, f"was unreachable ({failure_reason(exc)})")
            if stream is not None:
                await reset_quietly(stream)
        except trio.Cancelled:
            # This node is stopping: tell the provider at once, so it stops serving.
            if stream is not None:
                await _abandon(stream)
            raise
        finally:
            if opening:
                self._opening.release()
            if streamed and accepted:
                # The next stream ahead is opened after this job, not during it: an open takes
                # the event loop ~10 ms, which would sit between its chunks and its user.
                done = self._warm_job_done.pop(peer_id, None)
                if done is not None:
                    done.set()
                self._nursery_soon(self._prewarm, peer_id)
            if sink is not None and (sink.delivered or sink.cancelled.is_set()):
                # Its user has seen part of the output (or gave up): the request cannot start
                # over at another provider. Nothing is charged for an attempt that did not
                # settle.
                status = self.gateway.status(rid)
                if status is not None and status.state == "pending":
                    why = (f"cancelled: {sink.why}" if sink.cancelled.is_set() else
                           f"the provider failed after streaming part of the output "
                           f"({status.reason}); a stream cannot start over")
                    self.gateway.cancel(rid, why, self.clock())
            self._notify(rid)
            self._wake.set()

    def _nursery_soon(self, fn: Callable[..., Awaitable[None]], *args: Any) -> None:
        if self._nursery is not None and not self._closed:
            self._nursery.start_soon(fn, *args)

    def _take_warm(self, peer_id: str) -> Any:
        """The stream opened ahead to `peer_id`, if one is waiting and still fresh."""
        warm = self._warm.pop(peer_id, None)
        if warm is None:
            return None
        taken = self._warm_taken.get(peer_id)
        if taken is not None:
            taken.set()  # the keeper opens the next one
        stream, opened_at = warm
        if trio.current_time() - opened_at > WARM_STREAM_S:
            self._nursery_soon(close_quietly, stream)
            return None
        return stream

    def _job_on(self, stream: Any, job: Job, sink: _Sink) -> Job:
        """The job as sent on `stream`: on job/2.2.0 its prompt opens with the buyer's sampling
        settings (always, `{}` when there are none: spec §9.2)."""
        if str(stream.get_protocol()) == self.settings.sampling_protocol:
            return replace(job, prompt=sampling_prompt(sink.sampling, job.prompt))
        return job

    async def _prewarm(self, peer_id: str) -> None:
        """Keep a job/2.1.0 stream open ahead to a provider that took a streamed job, for
        WARM_KEEP_S after its last one, so the next request to it starts without the open. Each
        stream waits at most WARM_STREAM_S (under the provider's accept deadline) and is then
        closed and replaced: a stream closed before its Job is nothing to the provider (spec
        §9.1). One task per provider; it ends when the provider has been idle WARM_KEEP_S."""
        from libp2p.peer.id import ID

        self._warm_until[peer_id] = trio.current_time() + WARM_KEEP_S
        if peer_id in self._warming:
            return
        if len(self._warming) >= MAX_WARM:
            return
        self._warming.add(peer_id)
        try:
            while trio.current_time() < self._warm_until.get(peer_id, 0.0):
                stream = None
                with trio.move_on_after(self.settings.accept_timeout_s):
                    try:
                        opener = self.open_stream or self.host.new_stream
                        stream = await opener(ID.from_base58(peer_id), [
                            p for p in self.settings.streamed_protocols()
                            if p != self.settings.protocol])
                    except Exception:  # noqa: BLE001 - no warm stream, then
                        return
                if stream is None:
                    return
                self._warm[peer_id] = (stream, trio.current_time())
                taken = trio.Event()
                self._warm_taken[peer_id] = taken
                with trio.move_on_after(WARM_STREAM_S):
                    await taken.wait()
                current = self._warm.get(peer_id)
                if current is not None and current[0] is stream:
                    del self._warm[peer_id]
                    await close_quietly(stream)
                else:
                    # Taken: open the next one once that job is over, not among its tokens.
                    done = trio.Event()
                    self._warm_job_done[peer_id] = done
                    with trio.move_on_after(WARM_STREAM_S):
                        await done.wait()
        finally:
            self._warming.discard(peer_id)
            self._warm_taken.pop(peer_id, None)
            self._warm_job_done.pop(peer_id, None)
            if trio.current_time() >= self._warm_until.get(peer_id, 0.0):
                self._warm_until.pop(peer_id, None)

    async def _read_chunks(self, stream: Any, frames: FrameStream, rid: str, sink: _Sink,
                           progress_by: float) -> bytes | None:
        """job/2.1.0 after JobAccepted: hand each JobChunk to the user until the frame that
        ends the job (returned; None at EOF), by the progress deadline (trio.TooSlowError).
        When the user cancels, send JobCancel: the provider then has the accept deadline to
        answer with its JobResult."""
        accept_s = self.settings.accept_timeout_s

        async def send_cancel(reading: trio.CancelScope) -> None:
            await sink.cancelled.wait()
            with trio.CancelScope(shield=True), trio.move_on_after(accept_s):
                await stream.write(length_prefixed(encode_job_frame(JobCancel(rid))))
                self.counters.cancels_sent += 1
            reading.deadline = min(reading.deadline, trio.current_time() + accept_s)

        async with trio.open_nursery() as nursery:
            with trio.CancelScope(deadline=progress_by) as reading:
                nursery.start_soon(send_cancel, reading)
                while True:
                    data = await frames.next()
                    if data is None:
                        break
                    frame = decode_job_frame(data, streaming=True)
                    if not isinstance(frame, JobChunk):
                        break
                    if frame.request_id != rid:
                        raise _Fault(WRONG_REQUEST, f"streamed request {frame.request_id!r}, "
                                                    f"not {rid!r}")
                    sink.tokens += frame.tokens
                    sink.deliver(Piece(frame.text, frame.tokens))
            nursery.cancel_scope.cancel()
        if reading.cancelled_caught:
            raise trio.TooSlowError
        return data

    async def _settle(self, dispatch: Dispatch, job: Job, sent_at: float, result: JobResult,
                      stream: Any, timing: tuple[float, float, float],
                      chunk_tokens: int | None = None, streamed_output: str | None = None,
                      ) -> bool:
        """Check the receipt against the job we sent, settle it, complete the request, then tell
        the provider (JobSettled). A refused receipt is a provider fault: the request goes back
        to pending, nothing charged. True if the request completed. `timing`: perf_counter at
        sending, at the provider's answer and at the result (`JobCounters`)."""
        rid, attempt, peer_id = dispatch.request_id, dispatch.attempt, dispatch.peer_id
        now = self.clock()
        matched = MatchedJob.from_job(job, sent_at)
        if chunk_tokens is not None:
            # Revision 2.1: a streamed job's receipt charges at most what its chunks counted
            # (R6 refuses more as `implausible`).
            matched = replace(matched, tokens_requested=min(job.tokens, chunk_tokens))
        try:
            if self.ledger is not None:
                await self.ledger.accept(result.receipt, matched,
                                         capacity_tokens_per_s=dispatch.provider_tokens_per_s,
                                         now=now, config=self.config)
            else:
                receipt = check_receipt(result.receipt, matched,
                                        capacity_tokens_per_s=dispatch.provider_tokens_per_s,
                                        now=now, recent_provider_tokens=0, config=self.config,
                                        seen=self._seen_receipts)
                if len(self._seen_receipts) > 100_000:
                    self._seen_receipts.clear()
                self._seen_receipts.add(receipt.msg_id)
        except LedgerError as exc:
            if exc.reason == STORAGE:
                # This node's disk, not the provider's receipt: no fault of the provider's, and
                # the request is not sent again (the provider has served it). It fails, nothing
                # charged; no JobSettled, so the provider counts it unpaid, as it was.
                self.counters.ledger_write_failures += 1
                log.error("could not record the settlement of %s (served by %s): %s; the request "
                          "fails, nothing charged", rid, short_peer(peer_id), exc)
                self.gateway.on_failed(rid, attempt, peer_id,
                                       f"this node could not record its payment ({exc}); nothing "
                                       f"charged", self.clock())
                self._notify(rid)
                await reset_quietly(stream)
                return False
            self.counters.receipts_refused += 1
            log.warning("receipt for %s from %s refused: %s", rid, short_peer(peer_id), exc)
            self.gateway.counts["receipt_refused"] += 1
            self.gateway.on_fault(rid, attempt, peer_id, RECEIPT_REFUSED,
                                  f"sent a receipt that was refused ({exc.reason}): {exc}",
                                  self.clock())
            self._notify(rid)
            await self._send_settled(stream, JobSettled(rid, b"", exc.reason))
            return False
        self.counters.receipts_settled += 1
        settled = wire.decode_unchecked_time(result.receipt)
        assert isinstance(settled, Receipt)
        ended = self.clock()
        latency = (ended - sent_at) - job.tokens / max(1, dispatch.provider_tokens_per_s)
        output = result.output if streamed_output is None else streamed_output
        completed = self.gateway.on_completed(rid, attempt, settled, output, ended,
                                              latency_s=latency)
        if completed is not None:
            started, answered, result_at = timing
            c = self.counters
            c.timed_jobs += 1
            c.answer_wait_s += answered - started
            c.result_wait_s += result_at - answered
            c.settle_s += time.perf_counter() - result_at
        self._notify(rid)
        await self._send_settled(stream, JobSettled(rid, settled.msg_id, SETTLED))
        if completed is None:
            # Settled, but the book had already given the request up (a disk stall longer than
            # the claim-timeout margin). The user paid for what was served; say so loudly.
            self.counters.late_settlements += 1
            log.warning("request %s settled after its claim timed out", rid)
            return False
        return True

    async def _send_settled(self, stream: Any, frame: JobSettled) -> None:
        """Tell the provider what became of its receipt (§9 step 5), briefly: a provider that
        has gone costs nothing here."""
        try:
            with trio.move_on_after(self.settings.settle_timeout_s) as scope:
                await stream.write(length_prefixed(encode_job_frame(frame)))
            if scope.cancelled_caught:
                raise TimeoutError("the provider did not take the frame")
            self.counters.settlements_sent += 1
        except Exception:  # noqa: BLE001 - the provider reset or left; nothing is owed here
            self.counters.settlements_unsent += 1

    # -- provider ------------------------------------------------------------------------------

    def _fault(self, peer: Any, error: WireError) -> None:
        """Charge `peer` for a broken job-stream frame: a reject whose reason does not depend on
        our clock (node/guard.is_peer_fault); a frame cut short is an ignore, not charged."""
        if (self._on_fault is not None and error.action == "reject"
                and is_peer_fault(error.reason, authored=False)):
            self._on_fault(peer, error.reason)

    async def _serve_job_streamed(self, stream: Any) -> None:
        """job/2.1.0: as job/2.0.0, with the output streamed and the gateway able to cancel."""
        await self._serve_job(stream, streaming=True)

    async def _serve_job_sampled(self, stream: Any) -> None:
        """job/2.2.0: as job/2.1.0, the prompt opening with the buyer's sampling settings."""
        await self._serve_job(stream, streaming=True, sampled=True)

    async def _serve_job(self, stream: Any, streaming: bool = False,
                         sampled: bool = False) -> None:
        """A gateway sent a job: admit it by our own capacity, serve it, return a receipt."""
        peer = stream.muxed_conn.peer_id
        job: Job | None = None
        admitted = counted = False
        if self._refuse is not None and self._refuse(peer):
            self.counters.streams_refused += 1
            await reset_quietly(stream)
            return
        try:
            with trio.fail_after(self.settings.accept_timeout_s):
                data = await FrameStream(stream, MAX_SIZE[KIND_JOB]).next()
            if data is None:
                await close_quietly(stream)
                return
            now = self.clock()
            try:
                message = wire.decode(data, now)
                if not isinstance(message, Job):
                    raise WireError("kind", "reject", f"expected a job, got a "
                                                      f"{type(message).__name__}")
            except WireError as exc:
                self.counters.streams_refused += 1
                self._fault(peer, exc)
                await self._answer(stream, declined("?", BAD_JOB, str(exc)))
                return
            job = message
            sampling: dict[str, Any] | None = None
            if sampled:
                try:
                    sampling, prompt = split_sampling(job.prompt)
                except SamplingError as exc:
                    # Not a fault: a gateway's bug, signed; nothing was served (spec §9.2).
                    self.counters.streams_refused += 1
                    await self._answer(stream, declined(job.request_id, BAD_JOB,
                                                        f"sampling header: {exc.rule}: {exc}"))
                    return
                job = replace(job, prompt=prompt)
            try:
                gateway_key = public_key_from_peer_id(peer.to_base58())
            except ValueError:
                await self._answer(stream, declined(job.request_id, GATEWAY_MISMATCH,
                                                    "the sending peer has no secp256k1 key"))
                return
            offer = self.engine.offer
            admission = self.provider.admit(job, gateway_key, offer.tokens_per_second,
                                            offer.min_price_nano, now)
            if not admission.accepted:
                await self._answer(stream, declined(job.request_id, admission.reason,
                                                    admission.detail))
                return
            admitted = counted = True
            self._job_started()
            accepted = length_prefixed(encode_job_frame(JobAccepted(job.request_id)))
            gateway_frames = None
            if streaming:
                # The backend call starts before JobAccepted is written (the write goes out
                # while the backend works on its first token); the chunks follow it.
                gateway_frames = FrameStream(stream, max(MAX_FRAME_SIZE[KIND_JOB_SETTLED],
                                                         MAX_FRAME_SIZE[KIND_JOB_CANCEL]))
                receipt = await self._serve_streamed(stream, job, offer.tokens_per_second,
                                                     gateway_frames, accepted, sampling)
            else:
                await stream.write(accepted)
                receipt = await self._serve_admitted(stream, job, offer.tokens_per_second)
            admitted = False
            self.provider.finish(job)  # its capacity is free before we wait for the gateway
            if receipt is not None:
                await self._await_settlement(stream, job, receipt, gateway_frames)
        except Exception as exc:  # noqa: BLE001 - a peer's stream must never crash the node
            log.info("job stream from %s ended: %s", short_peer(str(peer)), failure_reason(exc))
            await reset_quietly(stream)
            if isinstance(exc, WireError):  # a frame too large (one cut short is not charged)
                self._fault(peer, exc)
        except trio.Cancelled:
            await _abandon(stream)  # this node is stopping: the gateway tries the next offer
            raise
        finally:
            if admitted and job is not None:
                self.provider.finish(job)
            if counted:
                self._job_ended()

    async def _await_settlement(self, stream: Any, job: Job, receipt: Receipt,
                                frames: FrameStream | None = None) -> None:
        """After JobResult: read the gateway's JobSettled (§9 step 5) within settle_timeout_s and
        record what this gateway does with what it is served (`Payers`). No frame in time, EOF,
        or a frame that is not this job's JobSettled: not settled. Then close."""
        outcome = NO_SETTLEMENT
        try:
            with trio.move_on_after(self.settings.settle_timeout_s):
                if frames is None:
                    data = await FrameStream(stream, MAX_FRAME_SIZE[KIND_JOB_SETTLED]).next()
                else:
                    # job/2.1.0: a JobCancel that crossed our JobResult comes first; skip it.
                    while (data := await frames.next()) is not None and isinstance(
                            decode_job_gateway_frame(data), JobCancel):
                        pass
                if data is not None:
                    settled = decode_job_settled(data)
                    if settled.request_id != job.request_id or (
                            settled.outcome == SETTLED and settled.receipt_id != receipt.msg_id):
                        raise WireError("bad_field", "reject", "JobSettled names another job")
                    outcome = settled.outcome
        except Exception as exc:  # noqa: BLE001 - a broken or missing answer: not settled
            log.info("no settlement from %s for %s: %s", short_peer(str(stream.muxed_conn.peer_id)),
                     job.request_id, failure_reason(exc))
            await reset_quietly(stream)
        refused = self.provider.payers.on_outcome(job.signer, outcome, receipt.tokens_served,
                                                  self.clock())
        if outcome != SETTLED:
            log.info("gateway %s did not settle %s: %s%s",
                     short_peer(str(stream.muxed_conn.peer_id)), job.request_id, outcome,
                     "; its jobs are declined `unpaid` for a while" if refused else "")
        await close_quietly(stream)

    def _start_serving(self, job: Job, tokens_per_second: int) -> tuple[float, float]:
        """The trio instant by which an admitted job must be served (its claim timeout, less a
        margin for the receipt), with the synthetic backend set to the job's rate, and the clock
        reading at which serving starts (the receipt's start)."""
        margin = min(2.0, 0.05 * self.config.claim_timeout_s)
        now = self.clock()
        serve_by = trio.current_time() + (seconds_of(job.issued_at_ms)
                                          + self.config.claim_timeout_s - margin - now)
        if isinstance(self.backend, SyntheticBackend):
            self.backend.set_rate(tokens_per_second)
        return serve_by, self.clock()

    async def _serve_admitted(self, stream: Any, job: Job,
                              tokens_per_second: int) -> Receipt | None:
        """Serve an admitted job and send its JobResult (the receipt, returned) or a backend
        JobDeclined (None). None too when the gateway went away mid-job (serving stopped)."""
        serve_by, started = self._start_serving(job, tokens_per_second)
        outcome: list[Any] = []

        async def serve(cancel: trio.CancelScope) -> None:
            try:
                outcome.append(await self.backend.serve(job.prompt, job.tokens, serve_by))
            except BackendError as exc:
                outcome.append(exc)
            cancel.cancel()

        async def watch_gateway(cancel: trio.CancelScope) -> None:
            # The gateway sends nothing more: any end of its side means it gave up.
            try:
                await stream.read(1)
            except Exception:  # noqa: BLE001 - reset / EOF: the same news
                pass
            cancel.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, nursery.cancel_scope)
            nursery.start_soon(watch_gateway, nursery.cancel_scope)
        if not outcome:
            self.counters.jobs_abandoned += 1
            log.info("gateway %s gave up on %s; stopped serving", short_peer(
                str(stream.muxed_conn.peer_id)), job.request_id)
            await reset_quietly(stream)
            return None
        result = outcome[0]
        if isinstance(result, BackendError):
            await self._decline_failed(stream, job, result)
            return None
        ended = self.clock()  # one reading: the receipt is issued when serving ended
        unsigned = self.provider.receipt_for(job, result.tokens_served, started, ended, ended)
        receipt = wire.sign(unsigned, self.private_key)
        frame = JobResult(job.request_id, receipt.wire, clip_utf8(result.text, MAX_OUTPUT_BYTES))
        return await self._deliver(stream, job, receipt, frame)

    async def _deliver(self, stream: Any, job: Job, receipt: Receipt, frame: JobResult) -> Receipt:
        """Send the signed receipt in the job's last frame and record the earning. The stream
        stays open until the JobSettled is read (§J.2; `_await_settlement` closes it): the
        gateway takes this side's close as word that its JobSettled arrived."""
        await stream.write(length_prefixed(encode_job_frame(frame)))
        self.counters.jobs_served += 1
        if self.ledger is not None and not self._closed:
            served_at = self.clock()
            try:
                await self.ledger.settle(receipt.wire, "provider", served_at,
                                         self.config.burn_rate)
                self.counters.earnings_recorded += 1
            except LedgerError as exc:
                if exc.reason == STORAGE:
                    self.counters.ledger_write_failures += 1
                    self._keep_unrecorded(job.request_id, receipt.wire, served_at, exc)
                else:
                    log.warning("could not record earning for %s: %s", job.request_id, exc)
        return receipt

    @property
    def unrecorded_earnings(self) -> int:
        """Earnings kept in memory because the ledger could not take them (yet)."""
        return len(self._unrecorded)

    def _keep_unrecorded(self, request_id: str, wire_bytes: bytes, served_at: float,
                         exc: LedgerError) -> None:
        if len(self._unrecorded) >= self.settings.unrecorded_max:
            dropped, dropped_wire, _ = self._unrecorded.popleft()
            log.error("earning for %s not recorded and no longer kept (%d kept); its signed "
                      "receipt: %s", dropped, len(self._unrecorded), dropped_wire.hex())
        self._unrecorded.append((request_id, wire_bytes, served_at))
        log.warning("could not record earning for %s: %s; kept with %d other(s), tried again "
                    "every %.0f s", request_id, exc, len(self._unrecorded) - 1,
                    self.settings.unrecorded_retry_s)

    async def _record_kept_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.unrecorded_retry_s)
            await self._record_kept()

    async def _record_kept(self) -> None:
        """Record the kept earnings, oldest first, until the ledger still cannot write."""
        if self.ledger is None or not self._unrecorded:
            return
        recorded = 0
        while self._unrecorded:
            request_id, wire_bytes, served_at = self._unrecorded[0]
            try:
                await self.ledger.settle(wire_bytes, "provider", served_at,
                                         self.config.burn_rate)
                self.counters.earnings_recorded += 1
                recorded += 1
            except LedgerError as exc:
                if exc.reason == STORAGE:
                    break
                log.warning("kept earning for %s refused by the ledger: %s", request_id, exc)
            self._unrecorded.popleft()
        if recorded:
            log.warning("recorded %d kept earning(s); %d still kept", recorded,
                        len(self._unrecorded))

    async def _serve_streamed(self, stream: Any, job: Job, tokens_per_second: int,
                              gateway_frames: FrameStream, accepted: bytes,
                              sampling: dict[str, Any] | None = None) -> Receipt | None:
        """job/2.1.0: serve an admitted job, sending each piece of output as a JobChunk as the
        backend produces it (writes wait for the gateway: back-pressure reaches the backend).
        `accepted` (the JobAccepted frame's bytes) is written once the backend call has gone
        out, and before any chunk.
        A JobCancel stops the backend and the receipt charges the tokens the chunks counted;
        EOF or a reset means the gateway gave up (serving stops, no receipt). Sends the
        JobResult (receipt, empty output: the text went in the chunks) and returns its receipt,
        or None after a backend JobDeclined or when abandoned."""
        serve_by, started = self._start_serving(job, tokens_per_second)
        outcome: list[Any] = []
        stopped: list[str] = []
        served = 0
        write_s = self.settings.accept_timeout_s

        # Pieces wait here while a chunk is being written, and go out together as the next
        # chunk: a slow backend's tokens leave one by one, a fast one's in batches (one frame
        # per token would cost py-libp2p a few ms each). The buffer is bounded: past it, the
        # backend waits for the stream (back-pressure).
        buffered: list[str] = []
        buffer = {"tokens": 0, "bytes": 0, "finished": False}
        wake = [trio.Event()]
        drained = [trio.Event()]
        flushed = trio.Event()
        finished = trio.Event()

        async def write_pieces(text: str, tokens: int) -> None:
            nonlocal served
            for i, piece in enumerate(_split_utf8(text, MAX_CHUNK_TEXT)):
                frame = JobChunk(job.request_id, tokens if i == 0 else 0, piece)
                await write(length_prefixed(encode_job_frame(frame)))
                if i == 0:
                    served += tokens

        async def emit(text: str, tokens: int) -> None:
            if not first_out:
                # The first piece leaves at once, from the backend's own task: nothing the
                # backend sends next is parsed ahead of it (the writer task takes the rest).
                first_out.append(True)
                await accept_written.wait()
                await write_pieces(text, tokens)
                return
            while buffer["bytes"] >= STREAM_BUFFER_BYTES:
                await drained[0].wait()
            buffered.append(text)
            buffer["tokens"] += tokens
            buffer["bytes"] += len(text.encode("utf-8", "replace"))
            wake[0].set()

        accept_written = trio.Event()
        first_out: list[bool] = []

        async def write(data: bytes) -> None:
            # A frame is written whole or the stream is given up: a cancellation must not cut
            # one in half (the JobResult follows it on the same stream).
            with trio.CancelScope(shield=True), trio.move_on_after(write_s) as scope:
                await stream.write(data)
            if scope.cancelled_caught:
                raise _GatewayGone(f"the gateway took no data for {write_s:g} s")

        async def write_accepted() -> None:
            await write(accepted)
            accept_written.set()

        async def write_chunks() -> None:
            await accept_written.wait()
            while True:
                if not buffered and not buffer["tokens"]:
                    if buffer["finished"]:
                        flushed.set()
                        return
                    await wake[0].wait()
                    wake[0] = trio.Event()
                    continue
                text, tokens = "".join(buffered), buffer["tokens"]
                buffered.clear()
                buffer["tokens"] = buffer["bytes"] = 0
                await write_pieces(text, tokens)
                drained[0].set()
                drained[0] = trio.Event()
                if not buffer["finished"]:
                    with trio.move_on_after(STREAM_FRAME_BUDGET_S * self._streaming_jobs):
                        await finished.wait()

        async def serve(cancel: trio.CancelScope) -> None:
            try:
                async with trio.open_nursery() as writing:
                    writing.start_soon(write_accepted)
                    writing.start_soon(write_chunks)
                    result = await serve_stream(self.backend, job.prompt, job.tokens, serve_by,
                                                emit, sampling)
                    buffer["finished"] = True
                    finished.set()
                    wake[0].set()
                    await flushed.wait()
                outcome.append(result)
            except BaseExceptionGroup as group:  # trio's nurseries wrap what they raise
                gone, failed = _leaf(group, _GatewayGone), _leaf(group, BackendError)
                if gone is not None:
                    stopped.append(str(gone))
                elif failed is not None:
                    outcome.append(failed)
                else:
                    raise
            cancel.cancel()

        async def watch_stop(cancel: trio.CancelScope) -> None:
            # This node is stopping and its wait for the jobs under way is up: end here, and
            # send the receipt for what was served, as at a JobCancel.
            await self._stop_serving.wait()
            stopped.append("stop")
            cancel.cancel()

        async def watch_gateway(cancel: trio.CancelScope) -> None:
            # The gateway sends nothing before JobResult but a JobCancel; EOF, a reset or any
            # other frame means it gave up (or broke the protocol).
            try:
                data = await gateway_frames.next()
                frame = decode_job_gateway_frame(data) if data is not None else None
                if isinstance(frame, JobCancel) and frame.request_id == job.request_id:
                    stopped.append("cancel")
                else:
                    stopped.append("gone")
            except Exception:  # noqa: BLE001 - reset / broken frame: the same news
                stopped.append("gone")
            cancel.cancel()

        self._streaming_jobs += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve, nursery.cancel_scope)
                nursery.start_soon(watch_gateway, nursery.cancel_scope)
                nursery.start_soon(watch_stop, nursery.cancel_scope)
        finally:
            self._streaming_jobs -= 1
        result = outcome[0] if outcome else None
        if isinstance(result, BackendError):
            await self._decline_failed(stream, job, result)
            return None
        if result is None and stopped[:1] not in (["cancel"], ["stop"]):
            self.counters.jobs_abandoned += 1
            log.info("gateway %s gave up on %s; stopped serving", short_peer(
                str(stream.muxed_conn.peer_id)), job.request_id)
            await reset_quietly(stream)
            return None
        if result is None:
            if stopped[:1] == ["stop"]:
                self.counters.jobs_ended_at_stop += 1
            else:
                self.counters.jobs_cancelled += 1
            tokens = served
        else:
            tokens = min(result.tokens_served, served)
        ended = self.clock()
        unsigned = self.provider.receipt_for(job, tokens, started, ended, ended)
        receipt = wire.sign(unsigned, self.private_key)
        delivered = await self._deliver(stream, job, receipt,
                                        JobResult(job.request_id, receipt.wire, ""))
        self.counters.jobs_streamed += 1
        return delivered

    async def _decline_failed(self, stream: Any, job: Job, error: BackendError) -> None:
        """The backend failed on an accepted job: count it and decline with its reason."""
        self.counters.backend_errors += 1
        log.info("backend failed on %s (%s): %s", job.request_id, error.reason, error.message)
        if error.reason == UNREACHABLE and self._on_backend_unreachable is not None:
            self._on_backend_unreachable()
        await self._answer(stream, declined(job.request_id, f"backend_{error.reason}",
                                            error.message))

    async def _answer(self, stream: Any, frame: JobDeclined) -> None:
        await stream.write(length_prefixed(encode_job_frame(frame)))
        await close_quietly(stream)


class _GatewayGone(Exception):
    """The gateway stopped taking a streamed job's chunks."""


def _split_utf8(text: str, limit: int) -> list[str]:
    """`text` in pieces of at most `limit` UTF-8 bytes, cut at character boundaries (one
    empty piece for empty text)."""
    pieces: list[str] = []
    while len(text.encode("utf-8", "replace")) > limit:
        piece = clip_utf8(text, limit)
        if not piece:
            break
        pieces.append(piece)
        text = text[len(piece):]
    pieces.append(text)
    return pieces


class _Fault(Exception):
    """A provider broke the job protocol in a way that is a fault of `kind` (reputation)."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind
        self.why = why


#: Longest wait for the ledger or the backend to close when the service stops.
CLOSE_BOUND_S = 5.0


def _leaf(group: BaseExceptionGroup, kind: type[E]) -> E | None:
    """The first exception of type `kind` in a (nested) exception group, if any."""
    for exc in group.exceptions:
        if isinstance(exc, kind):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _leaf(exc, kind)
            if found is not None:
                return found
    return None


async def _close_shielded(aclose: Callable[[], Awaitable[None]]) -> None:
    """Run `aclose` even while this task is being cancelled, for at most CLOSE_BOUND_S."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BOUND_S):
        await aclose()


async def _await_close(stream: Any, timeout_s: float) -> None:
    """Until the peer has closed its side of `stream` (EOF, a reset, or `timeout_s`); anything it
    still sends is read and dropped."""
    with trio.move_on_after(timeout_s):
        try:
            while await stream.read(MAX_FRAME_SIZE[KIND_JOB_SETTLED]):
                pass
        except Exception:  # noqa: BLE001 - reset or gone: closed either way
            pass


async def _abandon(stream: Any) -> None:
    """Reset a stream from a task being cancelled (shielded, and bounded so a stop never hangs)."""
    with trio.CancelScope(shield=True):
        with trio.move_on_after(0.5):
            await reset_quietly(stream)


__all__ = ["JobService", "JobSettings", "JobCounters"]
