"""Prometheus metrics of a node, read at scrape time.

Nothing is counted twice: instead of updating gauges from the node's code paths, a collector reads
one `NodeReadout` when Prometheus scrapes, the same readout `/api/market` renders, so the two
always agree. Each node gets its own `CollectorRegistry` (not the process-global default), so
several nodes in one process — as in the tests and the simulator — never mix their numbers.

Names (all prefixed `neuroshard_`; money in nano-NEURO, prices per 1M tokens):

    market_price_nano, market_target_price_nano, market_min_price_nano, market_max_price_nano,
    market_utilization (+Inf when demand waits and no supply exists),
    market_supply_tokens_per_second, market_demand_tokens_waiting, market_pending_requests,
    market_available_nodes, market_tick, peers,
    identity_work_bits, identity_work_required_bits, identity_weight (2^(bits − required), ≤ 1),
    messages_total{outcome="accepted|rejected|ignored", reason},
    requests{state}, settled_nano_total, burned_nano_total, node_info{network, mode},
    provider_faults_total{kind}, provider_bans_total, providers{routing},
    provider_faults_not_held_total (failures not held while this node's clock is wrong)
                                                                         (as a gateway)
    jobs_refused_total{reason}, job_settlements_total{outcome}            (as a provider)
    job_streams_total{event}                                   (streamed jobs, both roles)
    ledger_write_failures_total (settlements the ledger file could not take: disk full, I/O),
    unrecorded_earnings (a provider's earnings kept in memory until its ledger can take them),
    backend_reachable (0 while the offer waits for a backend that refuses connections)
    clock{state="agrees|ahead|behind|differs|unknown"} (1 for this node's clock against its peers'
    signed times), clock_offset_seconds (median of peers' clock − ours; absent while unknown),
    clock_signers (signers it was measured against)
    peer_faults_total{kind} (faults charged to remote peers: gossip_reject, sync_item, sync_frame,
    sync_over_budget, job_frame), peer_bans_total, peers_graylisted (peers banned now)
"""

from __future__ import annotations

from typing import Callable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from neuroshard_p2p.api.readout import NodeReadout
from neuroshard_p2p.node.clockwatch import STATES as CLOCK_STATES

PREFIX = "neuroshard_"
MESSAGE_OUTCOMES = ("accepted", "rejected", "ignored")


class NodeCollector(Collector):
    """Turns one `NodeReadout`, taken at scrape time by `read`, into metric families."""

    def __init__(self, read: Callable[[], NodeReadout]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        r = self._read()

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            return GaugeMetricFamily(PREFIX + name, doc, value=value)

        yield gauge("market_price_nano", "Smoothed market price, nano-NEURO per 1M tokens.",
                    r.price_nano)
        yield gauge("market_target_price_nano",
                    "Unsmoothed price of the supply and demand at the tick's evaluation instant, "
                    "nano-NEURO per 1M tokens.",
                    r.target_price_nano)
        yield gauge("market_min_price_nano", "Lowest price of the curve, nano-NEURO per 1M tokens.",
                    r.min_price_nano)
        yield gauge("market_max_price_nano", "Highest price of the curve, nano-NEURO per 1M tokens.",
                    r.max_price_nano)
        yield gauge("market_utilization",
                    "Demand per target response time over supply; +Inf with demand and no supply.",
                    r.utilization)
        yield gauge("market_supply_tokens_per_second",
                    "Capacity offered by available nodes, tokens per second.",
                    r.supply_tokens_per_sec)
        yield gauge("market_demand_tokens_waiting", "Tokens of requests waiting to be served.",
                    r.demand_tokens_waiting)
        yield gauge("market_pending_requests", "Requests waiting to be served.", r.pending_requests)
        yield gauge("market_available_nodes", "Nodes offering capacity right now.",
                    r.available_nodes)
        yield gauge("market_tick", "Current price tick (floor(now / tick_s)).", r.tick)
        yield gauge("peers", "Connected libp2p peers.", r.peers)
        yield gauge("identity_work_bits", "Bits of identity work of this node's key.",
                    r.work_bits)
        yield gauge("identity_work_required_bits",
                    "Bits of identity work the network's charter asks of a key.",
                    r.work_required_bits)
        yield gauge("identity_weight",
                    "What this key counts for in every peer's price: 2^(bits - required), at "
                    "most 1.", r.work_weight)

        reach = GaugeMetricFamily(PREFIX + "reachability",
                                  "AutoNAT verdict: 1 for the current one (public, private, "
                                  "unknown).", labels=["verdict"])
        for verdict in ("public", "private", "unknown"):
            reach.add_metric([verdict], 1 if r.reachability == verdict else 0)
        yield reach
        yield gauge("relay_reservations", "Circuit relay reservations this node holds.",
                    r.relay_reservations)
        yield gauge("relay_service", "1 when this node relays for others.", int(r.relay_service))
        kinds = GaugeMetricFamily(PREFIX + "peer_connections",
                                  "Connected peers by how they are connected.", labels=["kind"])
        for kind in ("direct", "relayed"):
            kinds.add_metric([kind], r.connections_by_kind.get(kind, 0))
        yield kinds

        info = GaugeMetricFamily(PREFIX + "node_info", "This node's network and pricing mode.",
                                 labels=["network", "mode"])
        info.add_metric([r.network, r.mode], 1)
        yield info

        messages = CounterMetricFamily(PREFIX + "messages",
                                       "Gossip messages by outcome and reason.",
                                       labels=["outcome", "reason"])
        for (outcome, reason), count in sorted(r.messages.items()):
            messages.add_metric([outcome, reason], count)
        yield messages

        faults = CounterMetricFamily(PREFIX + "peer_faults",
                                     "Faults charged to remote peers, by kind (node/guard.py).",
                                     labels=["kind"])
        for kind, count in sorted(r.peer_faults.items()):
            faults.add_metric([kind], count)
        yield faults
        yield CounterMetricFamily(PREFIX + "peer_bans", "Bans this node imposed on remote peers.",
                                  value=r.peer_bans)
        yield gauge("peers_graylisted", "Remote peers banned now (blacklisted, refused).",
                    r.peers_graylisted)

        requests = GaugeMetricFamily(PREFIX + "requests", "Requests this node holds, by state.",
                                     labels=["state"])
        for state, count in sorted(r.requests_by_state.items()):
            requests.add_metric([state], count)
        yield requests

        faults = CounterMetricFamily(PREFIX + "provider_faults",
                                     "Provider faults seen by this gateway, by kind (each put a "
                                     "request back to pending at once).", labels=["kind"])
        for kind, count in sorted(r.provider_faults.items()):
            faults.add_metric([kind], count)
        yield faults
        yield CounterMetricFamily(PREFIX + "provider_bans",
                                  "Providers this gateway banned after repeated faults.",
                                  value=r.provider_bans)
        yield CounterMetricFamily(PREFIX + "provider_faults_not_held",
                                  "Provider failures this gateway did not hold against the "
                                  "provider because its own clock was wrong (set aside "
                                  "instead).", value=r.provider_faults_not_held)
        routing = GaugeMetricFamily(PREFIX + "providers",
                                    "Providers in view by how this gateway routes to them.",
                                    labels=["routing"])
        for state, count in sorted(r.providers_by_routing.items()):
            routing.add_metric([state], count)
        yield routing
        refused = CounterMetricFamily(PREFIX + "jobs_refused",
                                      "Jobs this provider declined before serving: replays "
                                      "(duplicate) and gateways that do not pay (unpaid).",
                                      labels=["reason"])
        for reason, count in sorted(r.jobs_refused.items()):
            refused.add_metric([reason], count)
        yield refused
        settlements = CounterMetricFamily(PREFIX + "job_settlements",
                                          "Jobs this provider served, by what the gateway said "
                                          "of the receipt (settled, a refusal reason, or "
                                          "no_settlement).", labels=["outcome"])
        for outcome, count in sorted(r.job_settlements.items()):
            settlements.add_metric([outcome], count)
        yield settlements
        streams = CounterMetricFamily(PREFIX + "job_streams",
                                      "Streamed jobs (job/2.1.0, the /v1 endpoints) by event: "
                                      "opened, cancelled, fallback (job/2.0.0), ahead (on a "
                                      "stream opened ahead), sampling_sent (the buyer's "
                                      "settings went on job/2.2.0), sampling_not_sent (the "
                                      "provider spoke no job/2.2.0) as a gateway; served, "
                                      "stopped (at a JobCancel) as a provider.",
                                      labels=["event"])
        for event, count in sorted(r.job_streams.items()):
            streams.add_metric([event], count)
        yield streams
        yield CounterMetricFamily(PREFIX + "ledger_write_failures",
                                  "Settlements this node could not write to its ledger (disk "
                                  "full, I/O error): as a gateway the request failed, nothing "
                                  "charged; as a provider the earning is kept and tried again.",
                                  value=r.ledger_write_failures)
        yield GaugeMetricFamily(PREFIX + "unrecorded_earnings",
                                "Earnings this provider served but its ledger could not take "
                                "yet, kept in memory and tried again.",
                                value=r.unrecorded_earnings)
        yield GaugeMetricFamily(PREFIX + "backend_reachable",
                                "1, or 0 while this node offers no capacity because its "
                                "inference backend refuses connections.",
                                value=int(r.backend_reachable))
        clock = GaugeMetricFamily(PREFIX + "clock",
                                  "This node's clock against its peers' signed times: 1 for the "
                                  "current state (agrees, ahead, behind, differs, unknown).",
                                  labels=["state"])
        for state in CLOCK_STATES:
            clock.add_metric([state], 1 if r.clock_state == state else 0)
        yield clock
        if r.clock_offset_s is not None:
            yield gauge("clock_offset_seconds",
                        "Median of (peers' signed clock - this node's clock), seconds; negative "
                        "when this node's clock is ahead.", r.clock_offset_s)
        yield gauge("clock_signers", "Peers' signers the clock was measured against.",
                    r.clock_signers)

        if r.settled_nano is not None:
            yield CounterMetricFamily(PREFIX + "settled_nano",
                                      "Money settled in this node's ledger, nano-NEURO.",
                                      value=r.settled_nano)
        if r.burned_nano is not None:
            yield CounterMetricFamily(PREFIX + "burned_nano",
                                      "Money burned in this node's ledger, nano-NEURO.",
                                      value=r.burned_nano)


def node_registry(read: Callable[[], NodeReadout]) -> CollectorRegistry:
    """A registry of its own for one node, whose only collector reads `read()` at scrape time."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(read))
    return registry


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """The Prometheus text exposition of `registry`, and its content type."""
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = ["NodeCollector", "node_registry", "render", "PREFIX", "MESSAGE_OUTCOMES"]
