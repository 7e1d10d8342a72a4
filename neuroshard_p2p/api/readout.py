"""One read of a node's state, shared by the JSON API, the dashboard and the Prometheus metrics.

The API and the metrics both render a `NodeReadout`, so `/api/market` and `/metrics` cannot
disagree about the price: they print the same numbers from the same read. Building a readout only
reads the node (no state changes); the driver passes the wall-clock time in, as the core expects.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from neuroshard_p2p.api.history import COARSE_WINDOW_S, PriceHistory
from neuroshard_p2p.money import from_nano, to_nano
from neuroshard_p2p.wire.work import work_weight

if TYPE_CHECKING:  # types only: the readout reads the node it is handed
    from neuroshard_p2p.ledger import LedgerTotals
    from neuroshard_p2p.node.host import Node

#: Colour levels of the price on the dashboard, by where it sits in [min_price, max_price]:
#: "low" below 1/3 of the range, "medium" below 2/3, "high" from 2/3 up (boundaries go up).
PRICE_LEVELS = ("low", "medium", "high")
LEVEL_THRESHOLDS = (1 / 3, 2 / 3)


def price_level(price_nano: int, min_price_nano: int, max_price_nano: int) -> str:
    """The dashboard's colour level of a price: "low" (green), "medium" (blue) or "high"
    (orange), by the position of the price in the market's range. Exact integer arithmetic, so
    the boundary cases (exactly a third) are the same on every machine: 3·(p − min) < span."""
    span = max_price_nano - min_price_nano
    offset = min(max(price_nano - min_price_nano, 0), span)
    if 3 * offset < span:
        return "low"
    if 3 * offset < 2 * span:
        return "medium"
    return "high"


@dataclass(frozen=True)
class NodeReadout:
    """What a node knows at one moment, in the units the core uses (nano-NEURO, tokens)."""

    now: float
    network: str
    enabled: bool
    mode: str
    tick: int
    #: The instant (ms of the signed timeline) the market fields are read at: the evaluation
    #: instant of `tick`, tick·tick_ms − settle_delay (protocol §7.4). Supply, demand, pending
    #: requests, available nodes, utilization, target and price all describe this one instant.
    evaluated_at_ms: int
    price_nano: int
    target_price_nano: int
    min_price_nano: int
    max_price_nano: int
    avg_price_24h_nano: int | None
    supply_tokens_per_sec: int
    demand_tokens_waiting: int
    utilization: float                  # may be math.inf: demand waiting and no supply at all
    pending_requests: int
    available_nodes: int
    peers: int
    #: This key's identity work: its bits and the bits the charter asks for (weight 2^(bits − F)).
    work_bits: int = 0
    work_required_bits: int = 0
    #: (outcome, reason) → count of gossip messages; outcome is accepted / rejected / ignored.
    messages: dict[tuple[str, str], int] = field(default_factory=dict)
    #: request state (pending, claimed, completed, ...) → number of requests this node holds.
    requests_by_state: dict[str, int] = field(default_factory=dict)
    #: Ledger totals, None when the node runs without a ledger.
    settled_nano: int | None = None
    burned_nano: int | None = None
    #: As a gateway: provider faults by kind, bans given, and the providers in view by how this
    #: gateway routes to them (trusted, probation, set_aside, backing_off, banned).
    provider_faults: dict[str, int] = field(default_factory=dict)
    provider_bans: int = 0
    #: Provider failures not held against the provider because this node's clock was wrong.
    provider_faults_not_held: int = 0
    providers_by_routing: dict[str, int] = field(default_factory=dict)
    #: As a provider: jobs declined as replays (duplicate) and for not paying (unpaid), and what
    #: became of the jobs it served (settled, a refusal reason, no_settlement).
    jobs_refused: dict[str, int] = field(default_factory=dict)
    job_settlements: dict[str, int] = field(default_factory=dict)
    #: Streamed jobs (job/2.1.0) by event: as a gateway `opened`, `cancelled` (JobCancel sent),
    #: `fallback` (the provider spoke only job/2.0.0), `ahead` (sent on a stream opened ahead),
    #: `sampling_sent` / `sampling_not_sent` (the buyer's sampling settings went to the provider
    #: on job/2.2.0 / the provider spoke no job/2.2.0); as a provider `served`, `stopped` (at a
    #: JobCancel).
    job_streams: dict[str, int] = field(default_factory=dict)
    #: Settlements this node could not write to its ledger (disk full, I/O error), both roles,
    #: and a provider's earnings kept in memory until its ledger can take them.
    ledger_write_failures: int = 0
    unrecorded_earnings: int = 0
    #: False while this node offers nothing because its backend refuses connections.
    backend_reachable: bool = True
    #: Accountability (node/guard.py): faults charged to remote peers by kind, bans imposed
    #: since start, peers banned now.
    peer_faults: dict[str, int] = field(default_factory=dict)
    peer_bans: int = 0
    peers_graylisted: int = 0
    #: Reach (node/reach.py): the AutoNAT verdict (public / private / unknown), relay
    #: reservations held, whether this node relays for others, peers reached directly/relayed.
    reachability: str = "unknown"
    relay_reservations: int = 0
    relay_service: bool = False
    connections_by_kind: dict[str, int] = field(default_factory=dict)
    #: This node's clock against its peers' signed times (node/clockwatch.py): agrees, ahead,
    #: behind or unknown; the median (peers' clock − ours) in seconds; signers heard from.
    clock_state: str = "unknown"
    clock_offset_s: float | None = None
    clock_signers: int = 0

    @property
    def work_weight(self) -> float:
        """What this key counts for in every peer's price: 2^(bits − F), at most 1."""
        return work_weight(self.work_bits, self.work_required_bits)

    @property
    def price_level(self) -> str:
        return price_level(self.price_nano, self.min_price_nano, self.max_price_nano)

    def market_json(self) -> dict[str, Any]:
        """`GET /api/market`: the seed's fields first, in NEURO per 1M tokens as the seed had
        them, then the exact nano-NEURO values and what the dashboard needs. The market fields
        are read at `evaluated_at_ms`; `now` is the time of the request."""
        return {
            "enabled": self.enabled,
            "mode": self.mode,
            "current_price": from_nano(self.price_nano),
            "supply_tokens_per_sec": self.supply_tokens_per_sec,
            "demand_tokens_waiting": self.demand_tokens_waiting,
            # JSON has no infinity: null means "demand waiting and no supply at all".
            "utilization": None if math.isinf(self.utilization) else self.utilization,
            "pending_requests": self.pending_requests,
            "available_nodes": self.available_nodes,
            "avg_price_24h": (None if self.avg_price_24h_nano is None
                              else from_nano(self.avg_price_24h_nano)),
            "target_price": from_nano(self.target_price_nano),
            "tick": self.tick,
            "evaluated_at_ms": self.evaluated_at_ms,
            "network": self.network,
            "current_price_nano": self.price_nano,
            "target_price_nano": self.target_price_nano,
            "avg_price_24h_nano": self.avg_price_24h_nano,
            "min_price": from_nano(self.min_price_nano),
            "max_price": from_nano(self.max_price_nano),
            "min_price_nano": self.min_price_nano,
            "max_price_nano": self.max_price_nano,
            "price_level": self.price_level,
            "peers": self.peers,
            "now": self.now,
        }


def read_node(node: "Node", now: float, history: PriceHistory | None = None,
              ledger_totals: "LedgerTotals | None" = None) -> NodeReadout:
    """Read `node` at `now` (only reads). The 24 h average comes from `history` (None when
    nothing was recorded yet), ledger totals from the caller (reading them touches the disk, so
    the async caller fetches them in a worker thread first)."""
    # One instant for every market field: the evaluation instant of the tick `now` falls in,
    # which is what that tick's target and price are computed from. (Totals read at `now` itself
    # would sit beside a target of 2 s earlier: supply 1,500 next to the target of supply 1,000.)
    view = node.engine.view
    tick = node.engine.tick_of(now)
    evaluated_at_ms = view.evaluation_ms(tick)
    totals = view.stats_at_ms(evaluated_at_ms)
    price = view.price_at_tick(tick)
    config = node.settings.market
    requests: Counter[str] = Counter(node.jobs.count_by_state())
    gateway, provider = node.jobs.gateway, node.jobs.provider
    routing: Counter[str] = Counter(
        gateway.routing(offer.signer, now)["state"] for offer in view.offers_at(now)
        if offer.signer != node.engine.signer)
    # Requests still in the engine's queue (not yet taken by the jobs layer) are pending too.
    queued = len(node.engine.queued_requests(now))
    if queued:
        requests["pending"] += queued
    return NodeReadout(
        now=now,
        network=node.settings.network,
        enabled=True,
        mode=config.mode,
        tick=tick,
        evaluated_at_ms=evaluated_at_ms,
        price_nano=price.price_nano,
        target_price_nano=price.target_nano,
        min_price_nano=to_nano(config.min_price),
        max_price_nano=to_nano(config.max_price),
        avg_price_24h_nano=None if history is None else history.average(COARSE_WINDOW_S, now),
        supply_tokens_per_sec=totals.supply_tokens_per_sec,
        demand_tokens_waiting=totals.demand_tokens_waiting,
        utilization=totals.utilization,
        pending_requests=totals.pending_requests,
        available_nodes=totals.available_nodes,
        peers=node.peer_count,
        work_bits=node.work.progress.bits,
        work_required_bits=node.work.progress.required_bits,
        messages=dict(node.engine.counts()),
        requests_by_state=dict(requests),
        settled_nano=None if ledger_totals is None else ledger_totals.paid,
        burned_nano=None if ledger_totals is None else ledger_totals.burned,
        provider_faults=dict(gateway.fault_counts),
        provider_bans=gateway.reputation.bans,
        provider_faults_not_held=gateway.faults_not_held,
        providers_by_routing=dict(routing),
        jobs_refused={"duplicate": provider.seen.replays, "unpaid": provider.payers.declined},
        job_settlements=dict(provider.payers.outcomes),
        job_streams=_job_streams(node.jobs.counters),
        ledger_write_failures=node.jobs.counters.ledger_write_failures,
        unrecorded_earnings=node.jobs.unrecorded_earnings,
        backend_reachable=node.backend_reachable,
        peer_faults=dict(node.guard.faults),
        peer_bans=node.guard.bans,
        peers_graylisted=node.guard.graylisted(now),
        reachability=node.reach.state.reachability,
        relay_reservations=len(node.reach.state.relays),
        relay_service=node.reach.state.relay_service,
        connections_by_kind=node.reach.connections_by_kind(),
        clock_state=node.clock_reading.state,
        clock_offset_s=node.clock_reading.offset_s,
        clock_signers=node.clock_reading.signers,
    )


__all__ = ["NodeReadout", "read_node", "price_level", "PRICE_LEVELS", "LEVEL_THRESHOLDS"]


def _job_streams(c: Any) -> dict[str, int]:
    """`NodeReadout.job_streams` from the job service's counters."""
    return {"opened": c.streams_opened, "cancelled": c.cancels_sent,
            "fallback": c.stream_fallbacks, "ahead": c.warm_streams_used,
            "sampling_sent": c.sampling_sent, "sampling_not_sent": c.sampling_not_sent,
            "served": c.jobs_streamed, "stopped": c.jobs_cancelled}
