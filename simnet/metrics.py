"""What a run records, and the figures computed from it.

Both transports fill one `Recorder`: at every sample time, each live observed peer's price,
supply, demand and (when asked) view digest; the true market the driver set (ground truth); the
timeline of events that happened; and traffic counted per second of network time. `figures()`
turns that into the numbers of the report:

- share of samples on which all live peers quoted the identical price, and the largest spread;
- per event: how long after it live peers still disagreed (0 when they never did), p50 / p99 of
  the same per peer, and when the network's price first moved;
- messages published and received per peer per second, CPU per message;
- churn: when dead peers stopped counting on every live peer, against the bound the signed
  timeline sets (last announcement + capacity_timeout_s);
- partition: time from healing until every live peer's view digest was identical;
- hostile: how far the price moved while invalid messages flowed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from neuroshard_p2p.config import MarketConfig

from simnet.scenario import Event


@dataclass(frozen=True)
class PeerSample:
    """One live peer at one sample time. `digest` only when the run records digests."""

    peer: int
    price_nano: int
    supply: int          # tokens/s in this peer's view
    demand: int          # tokens waiting in this peer's view
    nodes: int           # providers counted in this peer's view
    digest: bytes | None = None


@dataclass
class EventRecord:
    """An event as it happened: when, what, and details the figures need (the peers it touched,
    killed peers' last announcement times, ...)."""

    t: float
    event: Event
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class Traffic:
    """Messages counted in one second of network time (network-wide)."""

    published: int = 0        # honest announcements published
    hostile: int = 0          # invalid messages injected by hostile peers
    delivered: int = 0        # copies handed to a peer's validation (first copies)
    duplicates: int = 0       # further copies a peer's gossip layer dropped as already seen
    accepted: int = 0
    rejected: int = 0
    ignored: int = 0
    sync_exchanges: int = 0
    syncs_deferred: int = 0       # periodic syncs that waited for a lull in gossip
    syncs_served_deferred: int = 0  # sessions a listener held for a lull in its gossip
    sync_announcements: int = 0   # announcements carried by sync responses


class Recorder:
    """Everything a run records. Times are seconds of network time since the run started."""

    def __init__(self, scenario_name: str, transport: str, market: MarketConfig,
                 sample_s: float) -> None:
        self.scenario_name = scenario_name
        self.transport = transport
        self.market = market
        self.sample_s = sample_s
        self.times: list[float] = []
        self.samples: list[list[PeerSample]] = []
        self.truth: list[tuple[int, int, int]] = []   # (supply tokens/s, demand tokens, live peers)
        self.events: list[EventRecord] = []
        self.traffic: list[Traffic] = []
        self.peer_names: list[str] = []               # index → name (peer id or "sim-17")
        self.peer_started: list[float] = []
        self.peer_stopped: list[float | None] = []
        self.peer_published: list[int] = []
        self.peer_received: list[int] = []
        self.peer_hostile: list[bool] = []
        self.reasons: Counter[str] = Counter()        # validation outcomes, summed over peers
        self.attack_counts: Counter[str] = Counter()  # what attacks cost the honest peers (sim)
        self.cpu_s = 0.0                              # CPU spent by the run (process time)
        self.engine_cpu_s = 0.0                       # of which inside the node engines (sim)
        self.engine_messages = 0                      # gossip messages the engines validated (sim)
        # A run in several processes (sim): the time they spent blocked waiting for each other,
        # and the engine messages a waiting process handed its peers meanwhile.
        self.workers = 1
        self.parallel_wait_s = 0.0
        self.engine_messages_ahead = 0
        self.wall_s = 0.0
        self.calibration_op_s = 0.0                   # one `simnet.calibrate` op, same process
        # (the median of its timings before, during — every progress step — and after the run)
        self.calibration_op_range_s = (0.0, 0.0)      # fastest and slowest of those timings
        self.calibration_samples = 0
        # At the end of a sim run: engine views, and the signers and announcements they hold.
        self.views = 0
        # kill event index → [live peer × killed signer pairs, pairs that stop counting it
        # exactly at its last announcement + capacity_timeout] (sim)
        self.crash_timeouts: dict[int, list[int]] = {}
        # Each honest gossip flood (sim, exact flood model): when it was published and when the
        # last peer it reached held it (with network.cpu_per_copy_ms: its first copy processed).
        self.flood_reach: list[tuple[float, float]] = []
        self.view_signers = 0
        self.view_announcements = 0
        self.network_s = 0.0
        self.observers: list[int] | None = None       # None: every peer is observed
        self.notes: list[str] = []

    # -- filling ----------------------------------------------------------------------------

    def add_peer(self, name: str, t: float, hostile: bool = False) -> int:
        """Register a peer (hostile peers too, so indices match the driver's; they are left out
        of the per-peer figures)."""
        self.peer_hostile.append(hostile)
        self.peer_names.append(name)
        self.peer_started.append(t)
        self.peer_stopped.append(None)
        self.peer_published.append(0)
        self.peer_received.append(0)
        return len(self.peer_names) - 1

    def stop_peer(self, peer: int, t: float) -> None:
        self.peer_stopped[peer] = t

    def sample(self, t: float, rows: list[PeerSample], truth: tuple[int, int, int]) -> None:
        self.times.append(t)
        self.samples.append(rows)
        self.truth.append(truth)

    def record_event(self, t: float, event: Event, **info: Any) -> None:
        self.events.append(EventRecord(t, event, info))

    def second(self, t: float) -> Traffic:
        """The traffic bucket of the second containing `t` (created on demand)."""
        index = max(0, int(t))
        while len(self.traffic) <= index:
            self.traffic.append(Traffic())
        return self.traffic[index]


# ---------------------------------------------------------------------------------------------
# Figures


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 1]); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def modal_price(rows: Iterable[PeerSample]) -> int | None:
    """The price most peers quote (ties: the lower price, so the choice is deterministic)."""
    counts = Counter(r.price_nano for r in rows)
    if not counts:
        return None
    best = max(counts.values())
    return min(p for p, c in counts.items() if c == best)


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def figures(rec: Recorder) -> dict[str, Any]:
    """Every figure of the report, as plain data (JSON-ready)."""
    out: dict[str, Any] = {}
    out["agreement"] = _agreement(rec)
    out["events"] = _events(rec)
    # Events inside a partition (after the split, before the heal) are left out: there the
    # halves disagree by construction; the heal is what is measured.
    counted = [e for e in out["events"] if not e["during_partition"]]
    per_event = [e["agree_s"] for e in counted if e["agree_s"] is not None]
    per_peer: list[float] = []
    for e in out["events"]:
        peer_times = e.pop("_peer_agree_s", [])
        if not e["during_partition"]:
            per_peer.extend(peer_times)
    out["agreement"]["after_event_s"] = {
        "events": len(counted),
        "events_during_partition": len(out["events"]) - len(counted),
        "all_peers_p50": _round(percentile(per_event, 0.5)),
        "all_peers_p99": _round(percentile(per_event, 0.99)),
        "all_peers_max": _round(max(per_event) if per_event else None),
        "per_peer_p50": _round(percentile(per_peer, 0.5)),
        "per_peer_p99": _round(percentile(per_peer, 0.99)),
        "never_agreed": sum(1 for e in counted if e["agree_s"] is None),
        "resolution_s": rec.sample_s,
    }
    out["agreement"]["lapses"] = _lapses(rec)
    out["traffic"] = _traffic(rec)
    out["churn"] = _churn(rec)
    out["partition"] = _partition(rec)
    out["hostile"] = _hostile(rec)
    out["late_join"] = _late_join(rec)
    return out


def _agreement(rec: Recorder) -> dict[str, Any]:
    identical = 0
    counted = 0
    spread_max = 0
    spread_at = None
    spread_rel = 0.0
    for t, rows in zip(rec.times, rec.samples):
        if len(rows) < 2:
            continue
        counted += 1
        prices = [r.price_nano for r in rows]
        lo, hi = min(prices), max(prices)
        if lo == hi:
            identical += 1
        elif hi - lo > spread_max:
            spread_max = hi - lo
            spread_at = t
            spread_rel = (hi - lo) / lo if lo > 0 else math.inf
    return {
        "samples": counted,
        "identical_share": _round(identical / counted if counted else None, 4),
        "largest_spread_nano": spread_max,
        "largest_spread_relative": _round(spread_rel, 4),
        "largest_spread_at_s": _round(spread_at),
    }


def _window(rec: Recorder, start: float, end: float) -> list[int]:
    return [i for i, t in enumerate(rec.times) if start <= t < end]


def _events(rec: Recorder) -> list[dict[str, Any]]:
    """Per event: time until live peers last disagreed within the event's window (until the next
    event), per peer the same against the network's modal price, and when the price moved."""
    out = []
    split = False
    for n, record in enumerate(rec.events):
        if record.event.action == "partition":
            split = True
        elif record.event.action == "heal":
            split = False
        end = rec.events[n + 1].t if n + 1 < len(rec.events) else rec.network_s
        window = _window(rec, record.t, end)
        entry: dict[str, Any] = {"t": _round(record.t), "event": record.event.title,
                                 "action": record.event.action, "during_partition": split}
        if not window:
            entry.update(agree_s=None, _peer_agree_s=[], moved_after_s=None)
            out.append(entry)
            continue
        modal = [modal_price(rec.samples[i]) for i in window]
        last_disagree = None
        peer_last: dict[int, float] = {}
        peers_seen: set[int] = set()
        for i, m in zip(window, modal):
            rows = rec.samples[i]
            prices = {r.price_nano for r in rows}
            if len(prices) > 1:
                last_disagree = rec.times[i]
            for r in rows:
                peers_seen.add(r.peer)
                if r.price_nano != m:
                    peer_last[r.peer] = rec.times[i]
        final_disagree = len({r.price_nano for r in rec.samples[window[-1]]}) > 1
        if final_disagree:
            agree = None  # still disagreeing when the next event came (or the run ended)
        elif last_disagree is None:
            agree = 0.0
        else:
            agree = last_disagree + rec.sample_s - record.t
        peer_agree = [(peer_last[p] + rec.sample_s - record.t) if p in peer_last else 0.0
                      for p in sorted(peers_seen)]
        before = modal[0]
        moved = next((rec.times[i] - record.t for i, m in zip(window, modal) if m != before), None)
        # The announcements the event made (sim): published in its first second, and when the
        # last of them reached the last peer.
        reach = [(t0, t1) for t0, t1 in rec.flood_reach if record.t <= t0 < record.t + 1.0]
        if reach:
            entry.update(gossiped=len(reach),
                         held_by_all_s=_round(max(t1 for _, t1 in reach) - record.t))
        entry.update(agree_s=_round(agree), _peer_agree_s=peer_agree,
                     per_peer_p50_s=_round(percentile(peer_agree, 0.5)),
                     per_peer_p99_s=_round(percentile(peer_agree, 0.99)),
                     price_before_nano=before, price_after_nano=modal[-1],
                     moved_after_s=_round(moved), window_s=_round(end - record.t))
        out.append(entry)
    return out


def _traffic(rec: Recorder) -> dict[str, Any]:
    seconds = max(rec.network_s, 1e-9)
    alive = 0.0
    for start, stop, hostile in zip(rec.peer_started, rec.peer_stopped, rec.peer_hostile):
        if not hostile:
            alive += (rec.network_s if stop is None else stop) - start
    alive = max(alive, 1e-9)
    total = Traffic()
    for bucket in rec.traffic:
        for name in vars(total):
            setattr(total, name, getattr(total, name) + getattr(bucket, name))
    # Steady state: seconds with no event within [event, event + capacity_timeout) and after the
    # first capacity_timeout (start-up announcements), so only keep-alives are counted.
    quiet = _quiet_seconds(rec)
    quiet_published = sum(rec.traffic[s].published for s in quiet if s < len(rec.traffic))
    quiet_delivered = sum(rec.traffic[s].delivered for s in quiet if s < len(rec.traffic))
    quiet_copies = quiet_delivered + sum(rec.traffic[s].duplicates for s in quiet
                                         if s < len(rec.traffic))
    peers_quiet = _mean_live(rec, quiet)
    quiet_peer_s = len(quiet) * peers_quiet
    hops = total.delivered + total.duplicates
    return {
        "network_seconds": _round(seconds),
        "peer_seconds": _round(alive),
        "published_total": total.published,
        "hostile_total": total.hostile,
        "delivered_total": total.delivered,
        "duplicates_total": total.duplicates,
        "accepted_total": total.accepted,
        "rejected_total": total.rejected,
        "ignored_total": total.ignored,
        "sync_exchanges_total": total.sync_exchanges,
        "syncs_deferred_total": total.syncs_deferred,
        "syncs_served_deferred_total": total.syncs_served_deferred,
        "published_per_peer_s": _round(total.published / alive, 4),
        "received_per_peer_s": _round(hops / alive, 3),
        "delivered_per_peer_s": _round(total.delivered / alive, 3),
        "steady_published_per_peer_s": _round(
            quiet_published / quiet_peer_s if quiet_peer_s else None, 4),
        "steady_received_per_peer_s": _round(quiet_copies / quiet_peer_s if quiet_peer_s else None, 3),
        "steady_delivered_per_peer_s": _round(
            quiet_delivered / quiet_peer_s if quiet_peer_s else None, 3),
        "steady_seconds": len(quiet),
        "cpu_s": _round(rec.cpu_s),
        "engine_cpu_s": _round(rec.engine_cpu_s),
        "wall_s": _round(rec.wall_s),
        # Ratios that travel between machines: time per engine message in calibration ops.
        "calibration_op_us": _round(1e6 * rec.calibration_op_s, 3) if rec.calibration_op_s else None,
        "calibration_op_range_us": [_round(1e6 * x, 3) for x in rec.calibration_op_range_s]
        if rec.calibration_op_s else None,
        "calibration_samples": rec.calibration_samples or None,
        "wall_per_engine_message_ops": _round(
            rec.wall_s / rec.engine_messages / rec.calibration_op_s
            if rec.engine_messages and rec.calibration_op_s else None, 3),
        "engine_cpu_per_message_ops": _round(
            rec.engine_cpu_s / rec.engine_messages / rec.calibration_op_s
            if rec.engine_messages and rec.calibration_op_s and rec.engine_cpu_s else None, 3),
        "cpu_per_message_ms": _round(1000 * rec.cpu_s / hops if hops else None, 4),
        # In several processes: the share of their time they were blocked waiting for each
        # other, and the share of engine messages a waiting process handed over meanwhile.
        "processes": rec.workers,
        "parallel_wait_share": _round(rec.parallel_wait_s / (rec.wall_s * rec.workers)
                                      if rec.workers > 1 and rec.wall_s else None, 4),
        "engine_messages_ahead_share": _round(rec.engine_messages_ahead / rec.engine_messages
                                              if rec.workers > 1 and rec.engine_messages
                                              else None, 4),
        "engine_cpu_per_message_us": _round(1e6 * rec.engine_cpu_s / rec.engine_messages
                                            if rec.engine_messages and rec.engine_cpu_s else None, 2),
        "sync_announcements_total": total.sync_announcements,
        "sync_announcements_per_exchange": _round(total.sync_announcements / total.sync_exchanges
                                                  if total.sync_exchanges else None, 1),
        "reasons": dict(sorted(rec.reasons.items())),
    }


#: Seconds after the start, and after each event, left out of the steady-state rate: peers
#: start and announce in the first seconds, and announce a change within a tick or two of an event.
STARTUP_S = 6.0
AFTER_EVENT_S = 3.0


def _busy_windows(rec: Recorder, slack_s: float = 0.0) -> list[tuple[float, float]]:
    """The start-up and AFTER_EVENT_S after each event, each `slack_s` longer: when peers
    announce changes (and, with the settle delay as slack, when views follow them)."""
    busy: list[tuple[float, float]] = [(0.0, STARTUP_S + slack_s)]
    for record in rec.events:
        busy.append((record.t, record.t + AFTER_EVENT_S + slack_s))
    return busy


def _quiet_seconds(rec: Recorder) -> list[int]:
    """Whole seconds of network time with only keep-alives expected: not in the start-up and not
    within AFTER_EVENT_S of an event (announcements of changes)."""
    busy = _busy_windows(rec)
    return [s for s in range(int(rec.network_s))
            if not any(a < s + 1 and s < b for a, b in busy)]


def _mean_live(rec: Recorder, seconds: list[int]) -> float:
    if not seconds:
        return 0.0
    total = 0
    for s in seconds:
        mid = s + 0.5
        total += sum(1 for start, stop, hostile in zip(rec.peer_started, rec.peer_stopped,
                                                       rec.peer_hostile)
                     if not hostile and start <= mid and (stop is None or stop > mid))
    return total / len(seconds)


def _lapses(rec: Recorder) -> dict[str, Any]:
    """Did a live announcer's capacity ever stop counting at some peer? Every (sample, live
    peer) row outside the start-up and the AFTER_EVENT_S + settle window after each event (when
    views follow a change) whose supply is below the true supply: a keep-alive that did not reach
    that peer before the one before it lapsed (keep-alives by reconciliation, issue 15 item 3),
    or a change still missing. Kills leave dead capacity counted (supply above the truth) until
    its signed timeout, which is the churn figure's, not a lapse. A partition lapses by design:
    each side stops counting the other's capacity at its timeout."""
    busy = _busy_windows(rec, rec.market.settle_delay_s)
    rows = lapsed = samples_lapsed = 0
    worst = 0
    for i, t in enumerate(rec.times):
        if any(a <= t < b for a, b in busy):
            continue
        truth_supply = rec.truth[i][0]
        short = sum(1 for r in rec.samples[i] if r.supply < truth_supply)
        rows += len(rec.samples[i])
        lapsed += short
        samples_lapsed += 1 if short else 0
        worst = max(worst, short)
    return {"rows": rows, "lapsed_rows": lapsed, "samples_with_a_lapse": samples_lapsed,
            "most_peers_lapsed_at_once": worst}


def _churn(rec: Recorder) -> list[dict[str, Any]]:
    """For every kill: when every live peer's supply and demand no longer counted the dead
    peers, against the bound of the signed timeline (their last announcement +
    capacity_timeout_s)."""
    out = []
    timeout = rec.market.capacity_timeout_s
    for n, record in enumerate(rec.events):
        if record.event.action != "kill":
            continue
        dead_capacity = record.info.get("capacity_removed", 0)
        last_issued = record.info.get("last_announced", [])
        expected = (max(last_issued) + timeout - record.t) if last_issued else None
        end = rec.events[n + 1].t if n + 1 < len(rec.events) else rec.network_s
        window = _window(rec, record.t, end)
        pruned_at = None
        first_pruned_at = None
        dead = set(record.info.get("peers", []))
        for i in window:
            truth_supply, truth_demand, _ = rec.truth[i]
            rows = rec.samples[i]
            if any(r.peer in dead for r in rows):
                continue  # the kill has not taken effect at this sample yet
            done = [r.supply == truth_supply and r.demand == truth_demand for r in rows]
            if rows and any(done) and first_pruned_at is None:
                first_pruned_at = rec.times[i]
            if rows and all(done):
                pruned_at = rec.times[i]
                break
        out.append({
            "t": _round(record.t),
            "killed": len(record.info.get("peers", [])),
            "capacity_removed": dead_capacity,
            "demand_removed": record.info.get("demand_removed", 0),
            "stopped_counting_after_s": _round(None if pruned_at is None else pruned_at - record.t),
            "first_peer_after_s": _round(None if first_pruned_at is None
                                         else first_pruned_at - record.t),
            "bound_after_s": _round(expected),
            "bound_rule": "last announcement + capacity_timeout_s + settle/tick granularity",
            "resolution_s": rec.sample_s,
        })
        if n in rec.crash_timeouts:
            # Read off every live peer's view at the end of a sim run: each killed signer's last
            # announcement counts until, and not from, its issued_at + capacity_timeout.
            pairs, exact = rec.crash_timeouts[n]
            out[-1]["signed_timeout_pairs"] = pairs
            out[-1]["signed_timeout_exact"] = exact
    return out


def _partition(rec: Recorder) -> list[dict[str, Any]]:
    """For every heal: time until every live peer held the identical view digest, and the
    identical price."""
    out = []
    for n, record in enumerate(rec.events):
        if record.event.action != "heal":
            continue
        end = rec.events[n + 1].t if n + 1 < len(rec.events) else rec.network_s
        window = _window(rec, record.t, end)
        digests_at = None
        prices_at = None
        for i in window:
            rows = rec.samples[i]
            if not rows:
                continue
            if digests_at is None and rows[0].digest is not None and \
                    len({r.digest for r in rows}) == 1:
                digests_at = rec.times[i]
            if prices_at is None and len({r.price_nano for r in rows}) == 1:
                prices_at = rec.times[i]
        # Disagreement during the split, for contrast.
        split = next((r for r in reversed(rec.events[:n]) if r.event.action == "partition"), None)
        split_spread = None
        if split is not None:
            spreads = []
            for i in _window(rec, split.t, record.t):
                prices = [r.price_nano for r in rec.samples[i]]
                if prices:
                    spreads.append(max(prices) - min(prices))
            split_spread = max(spreads) if spreads else None
        out.append({
            "t": _round(record.t),
            "identical_digests_after_s": _round(None if digests_at is None
                                                else digests_at - record.t),
            "identical_prices_after_s": _round(None if prices_at is None else prices_at - record.t),
            "largest_spread_during_split_nano": split_spread,
            "resolution_s": rec.sample_s,
        })
    return out


def _hostile(rec: Recorder) -> list[dict[str, Any]]:
    """For every hostile flood: the largest distance of any live peer's price from the price the
    network quoted just before the flood, over the flood and a capacity timeout after it."""
    out = []
    for record in rec.events:
        if record.event.action != "hostile":
            continue
        duration = record.event.duration_s or (rec.network_s - record.t)
        before = [i for i, t in enumerate(rec.times) if t < record.t]
        baseline = modal_price(rec.samples[before[-1]]) if before else None
        end = record.t + duration + rec.market.settle_delay_s + rec.market.tick_s
        moved = 0
        for i in _window(rec, record.t, end):
            for r in rec.samples[i]:
                if baseline is not None:
                    moved = max(moved, abs(r.price_nano - baseline))
        out.append({
            "t": _round(record.t),
            "duration_s": _round(duration),
            "sent": record.info.get("sent", 0),
            "kinds": list(record.event.kinds),
            "baseline_price_nano": baseline,
            "largest_move_nano": moved,
            "largest_move_relative": _round(moved / baseline if baseline else None, 6),
        })
    return out


def _late_join(rec: Recorder) -> list[dict[str, Any]]:
    """For every add: how long each new peer took to quote the network's price for good."""
    out = []
    for n, record in enumerate(rec.events):
        if record.event.action != "add":
            continue
        joined = set(record.info.get("peers", []))
        end = rec.events[n + 1].t if n + 1 < len(rec.events) else rec.network_s
        window = _window(rec, record.t, end)
        last_off: dict[int, float] = {}
        first_on: dict[int, float] = {}
        for i in window:
            rows = rec.samples[i]
            m = modal_price(r for r in rows if r.peer not in joined) or modal_price(rows)
            for r in rows:
                if r.peer in joined:
                    if r.price_nano != m:
                        last_off[r.peer] = rec.times[i]
                    else:
                        first_on.setdefault(r.peer, rec.times[i])
        times = [(last_off[p] + rec.sample_s - record.t) if p in last_off else
                 (first_on.get(p, record.t) - record.t) for p in sorted(joined)]
        out.append({
            "t": _round(record.t),
            "joined": len(joined),
            "agree_p50_s": _round(percentile(times, 0.5)),
            "agree_max_s": _round(max(times) if times else None),
            "resolution_s": rec.sample_s,
        })
    return out


__all__ = ["Recorder", "PeerSample", "EventRecord", "Traffic", "figures", "percentile",
           "modal_price"]
