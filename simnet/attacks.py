"""Valid attacks on the price (issue 14 §6), and how far each moves it from the honest run.

Every message an attacker sends here is well formed, correctly signed and fresh: what limits its
weight is the network's defence of protocol v2, not validation. The attacks (scenario action
`attack`, defaults in `simnet.scenario.ATTACKS`):

- `demand_pump`: one identity announces pending_tokens = pending_requests = 2^63 − 1. It carries
  full identity work (the worst one paid-for identity can do). Bound: the per-signer caps.
- `sybil_capacity`: 200 fresh keys × 50,000 tok/s at min price 0. Bound: the work ramp.
- `sybil_demand`: 2,000 fresh keys, each one plausible 1,000-token request, all within a minute.
- `key_flood`: 4,096 fresh keys handed to the attacker's neighbours in sync answers.
- `sync_abuse`: one peer pulls a neighbour's whole view `rate` times a second.

Each identity re-announces while the attack lasts, as rarely as keeps it counting (`keep_alive_s`:
3/4 of the capacity timeout). In a members network the attackers hold no credential.

`Attacker` is sans-IO: the driver (simulated or real network) asks it which announcements are
due at a time and sends them. The measure (`Deviation`) compares an attacked run with the honest
run of the same scenario and seed (`Scenario.without_attacks`), sample by sample and peer by
peer: the largest |Δ price|, relative to the honest price, and the attackers' counted share of
supply and demand ((attacked − honest) / attacked, which is exact when the honest part of both
runs is the same: the simulator draws the attack's randomness from its own generators).
"""

from __future__ import annotations

import dataclasses
import heapq
import math
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import target_price_nano
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.wire import Announcement, WireError, encode
from neuroshard_p2p.wire.membership import Admission, check_announcement
from neuroshard_p2p.wire.validate import Decoder, decode_stateless
from neuroshard_p2p.wire.work import weight_shift, work_bits

from simnet.identities import Identity, WorkedPool, fresh_key, identity_of
from simnet.metrics import Recorder
from simnet.scenario import Event, Scenario

#: v2.md §5: the listener's sync budget per remote peer (token bucket).
SYNC_BURST = 3
SYNC_REFILL_S = 10.0


def attack_identities(event: Event, market: MarketConfig, seed: int, number: int,
                      pool: WorkedPool) -> list[Identity]:
    """The identities of attack event number `number`: worked keys from the back of the pool
    (`work = true`) or fresh keys with nonce 0."""
    assert event.keys is not None
    if event.work and market.identity_work_bits > 0:
        return [pool.attacker() for _ in range(event.keys)]
    return [identity_of(fresh_key(seed, number, j)) for j in range(event.keys)]


class Attacker:
    """One attack's identities and when each announces: identity j first at
    start + j / rate (through sync: all at the start), then every `interval_s` until the attack
    ends. Sans-IO: `due(t, clock)`
    returns the signed announcements due by network time t, issued at `clock` (seconds since
    the Unix epoch, the attacker's own clock)."""

    def __init__(self, event: Event, identities: Sequence[Identity], start_t: float,
                 interval_s: float, end_t: float) -> None:
        assert event.attack and event.rate > 0
        self.event = event
        self.identities = list(identities)
        self.interval_s = interval_s
        self.end_t = min(end_t, start_t + event.duration_s) if event.duration_s else end_t
        self.sent = 0
        self._last_seq = [0] * len(self.identities)
        self._min_price_nano = to_nano(event.min_price or 0.0)
        self._queue: list[tuple[float, int]] = []
        if event.attack != "sync_abuse":
            # Through gossip, `rate` identities a second; through sync, all of them in the
            # answers of one round (a sync answer carries up to 4,096 announcements at once).
            spread = 1.0 / event.rate if event.route == "gossip" else 0.0
            self._queue = [(start_t + j * spread, j) for j in range(len(self.identities))]
            heapq.heapify(self._queue)

    def next_at(self) -> float | None:
        """Network time of the next due announcement, None when the attack has ended."""
        if self._queue and self._queue[0][0] < self.end_t:
            return self._queue[0][0]
        return None

    def due(self, t: float, clock: float) -> list[tuple[Identity, bytes]]:
        """Every announcement due by t (each identity's next one), signed, in identity order."""
        out = []
        queue = self._queue
        while queue and queue[0][0] <= t and queue[0][0] < self.end_t:
            at, j = heapq.heappop(queue)
            out.append((self.identities[j], self.announce(j, clock)))
            heapq.heappush(queue, (at + self.interval_s, j))
        return out

    def announce(self, j: int, clock: float) -> bytes:
        """Identity j's announcement issued at `clock`."""
        e = self.event
        who = self.identities[j]
        issued_ms = ms_of(clock)
        seq = max(self._last_seq[j] + 1, issued_ms)
        self._last_seq[j] = seq
        self.sent += 1
        return encode(Announcement(who.signer, issued_ms, seq, e.tokens_per_second or 0,
                                   self._min_price_nano if e.tokens_per_second else 0,
                                   e.pending_tokens or 0, e.pending_requests or 0,
                                   who.work_nonce, b""), who.key)


def keep_alive_s(announce_interval_s: float, market: MarketConfig) -> float:
    """How often an attacker's identity re-announces: as rarely as keeps it counted, at 3/4 of
    the capacity timeout (or the node's announce interval, if that is longer)."""
    return max(announce_interval_s, 0.75 * market.capacity_timeout_s)


def reference_verdict(wire: bytes, market: MarketConfig, admission: Admission | None,
                      decode: Decoder = decode_stateless) -> str:
    """What every honest validator says of an attacker's fresh announcement, by the stateless
    rules, the plausibility rule and admission (V2, V6, V6m): "accepted" or the reason. The
    simulator lets a message travel past the attacker's neighbours only when accepted, as
    gossipsub relays only what its validator accepted. `decode` is the stateless decode (the
    simulator passes its memo shared with every engine)."""
    try:
        message = decode(wire, None)
        if not isinstance(message, Announcement):
            return "kind"
        if message.tokens_per_second > market.max_node_tokens_per_s:
            return "implausible"
        check_announcement(message, admission)
    except WireError as error:
        return error.reason
    return "accepted"


def counted(signer: bytes, nonce: int, tokens_per_second: int, pending_tokens: int,
            pending_requests: int, market: MarketConfig) -> tuple[int, int, int]:
    """(capacity, demand tokens, requests) one open-network announcement counts for
    (protocol v2 §4): the caps, then the work shift F − bits."""
    capacity = min(tokens_per_second, market.max_node_tokens_per_s)
    requests = min(pending_requests, market.max_signer_pending_requests)
    demand = min(pending_tokens, market.max_tokens_per_minute * requests,
                 market.max_signer_pending_tokens)
    shift = weight_shift(work_bits(signer, nonce), market.identity_work_bits)
    return capacity >> shift, demand >> shift, requests >> shift


def ramp_allows(identities: Sequence[Identity], event: Event,
                market: MarketConfig) -> tuple[int, int]:
    """(supply, demand) the identities of an attack count for in an open network: the sum over
    them of what `counted` gives each, e.g. Σ 1,000 >> (24 − bits) for sybil demand."""
    supply = demand = 0
    for who in identities:
        c, d, _ = counted(who.signer, who.work_nonce, event.tokens_per_second or 0,
                          event.pending_tokens or 0, event.pending_requests or 0, market)
        supply += c
        demand += d
    return supply, demand


def one_identity_bound_nano(supply: int, demand: int, market: MarketConfig) -> int:
    """The most one identity's demand can move the price of a market with `supply` tok/s and
    `demand` waiting tokens: target((D + max_signer_pending_tokens) / (60 S)) − target(D / (60 S)).
    The smoothed price is a fold of targets between the two, so it never moves further."""
    return (target_price_nano(supply, demand + market.max_signer_pending_tokens, market)
            - target_price_nano(supply, demand, market))


class SyncBudget:
    """v2.md §5's listener budget for one remote peer: a token bucket of burst 3, refilled one
    per 10 s. A request over budget is refused (the node resets the stream and counts a fault)."""

    def __init__(self, now: float, burst: int = SYNC_BURST, refill_s: float = SYNC_REFILL_S) -> None:
        self.burst = burst
        self.refill_s = refill_s
        self.tokens = float(burst)
        self.at = now

    def allow(self, now: float) -> bool:
        self.tokens = min(float(self.burst), self.tokens + (now - self.at) / self.refill_s)
        self.at = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


# ---------------------------------------------------------------------------------------------
# The measure


@dataclass
class Deviation:
    """How far an attacked run's prices went from the honest run's, over every sample and
    every peer sampled in both, and what the attackers counted for."""

    samples: int = 0
    max_abs_nano: int = 0
    max_relative: float = 0.0
    at_s: float | None = None               # when the largest |Δ| was seen
    honest_price_nano: int | None = None     # the honest price there
    attacked_price_nano: int | None = None
    honest_supply: int = 0                   # honest totals there (tok/s, tokens)
    honest_demand: int = 0
    max_extra_supply: int = 0                # attackers' counted supply and demand (largest)
    max_extra_demand: int = 0
    supply_share: float = 0.0                # largest (attacked − honest) / attacked
    demand_share: float = 0.0
    unmatched: int = 0                       # samples of one run without a partner (real runs)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deviation(honest: Recorder, attacked: Recorder, *, after_s: float = 0.0) -> Deviation:
    """Compare two runs of one scenario and seed, sample i with sample i, peer with peer (from
    network time `after_s` on: a real network's first samples may differ by tick phase)."""
    out = Deviation()
    n = min(len(honest.samples), len(attacked.samples))
    out.unmatched = abs(len(honest.samples) - len(attacked.samples))
    for i in range(n):
        if attacked.times[i] < after_s:
            continue
        by_peer = {row.peer: row for row in honest.samples[i]}
        for row in attacked.samples[i]:
            base = by_peer.get(row.peer)
            if base is None:
                continue
            out.samples += 1
            delta = abs(row.price_nano - base.price_nano)
            relative = delta / base.price_nano if base.price_nano else (math.inf if delta else 0.0)
            if out.at_s is None or delta > out.max_abs_nano:
                out.max_abs_nano = delta
                out.at_s = attacked.times[i]
                out.honest_price_nano = base.price_nano
                out.attacked_price_nano = row.price_nano
                out.honest_supply, out.honest_demand = base.supply, base.demand
            out.max_relative = max(out.max_relative, relative)
            extra_supply = row.supply - base.supply
            extra_demand = row.demand - base.demand
            out.max_extra_supply = max(out.max_extra_supply, extra_supply)
            out.max_extra_demand = max(out.max_extra_demand, extra_demand)
            if row.supply > 0:
                out.supply_share = max(out.supply_share, extra_supply / row.supply)
            if row.demand > 0:
                out.demand_share = max(out.demand_share, extra_demand / row.demand)
    return out


@dataclass
class AttackOutcome:
    """One attack under one admission policy: the deviation and what the run counted."""

    attack: str
    scenario: str
    policy: str
    work_bits: int
    identities: int
    deviation: Deviation
    sent: int = 0
    reasons: dict[str, int] = field(default_factory=dict)   # attacked run's validation outcomes
    attack_counts: dict[str, float] = field(default_factory=dict)
    expected: dict[str, Any] = field(default_factory=dict)  # bounds the spec states
    wall_s: float = 0.0
    honest_wall_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["deviation"] = self.deviation.to_dict()
        return data


# ---------------------------------------------------------------------------------------------
# Running an attack against its honest run


def attack_events(scenario: Scenario) -> list[Event]:
    return [e for e in scenario.events if e.action == "attack"]


def stated_bound(event: Event, number: int, scenario: Scenario, seed: int, supply: int,
                 demand: int) -> dict[str, Any]:
    """What the spec says attack event number `number` can do to a market of honest `supply`
    and `demand`: nothing in a members network (its identities hold no credential); in an open
    network the counted (supply, demand) of `ramp_allows` — for one identity with full work the
    per-signer caps, for fresh keys Σ claim >> (F − bits) — and the target price they give:
    |target(S + s, D + d) − target(S, D)|, which bounds the smoothed price too (a fold of
    targets that all lie between the two)."""
    market = scenario.market_config()
    if scenario.admission == "members":
        return {"rule": "members: non-members count for nothing", "counted_supply": 0,
                "counted_demand": 0, "bound_nano": 0}
    identities = attack_identities(event, market, seed, number,
                                   WorkedPool(market.identity_work_bits))
    if event.attack == "sync_abuse":
        return {"rule": "a sync pull announces nothing", "counted_supply": 0,
                "counted_demand": 0, "bound_nano": 0}
    extra_supply, extra_demand = ramp_allows(identities, event, market)
    rule = ("per-signer caps (one identity with full work)" if len(identities) == 1
            and event.work else f"work ramp: claim >> ({market.identity_work_bits} - bits)")
    bound = abs(target_price_nano(supply + extra_supply, demand + extra_demand, market)
                - target_price_nano(supply, demand, market))
    counting = sum(1 for who in identities
                   if any(counted(who.signer, who.work_nonce, event.tokens_per_second or 0,
                                  event.pending_tokens or 0, event.pending_requests or 0,
                                  market)[:2]))
    return {"rule": rule, "counted_supply": extra_supply, "counted_demand": extra_demand,
            "honest_supply": supply, "honest_demand": demand, "bound_nano": bound,
            "identities_counting": counting,
            "most_work_bits": max(who.bits for who in identities)}


def steady_totals(rec: Recorder) -> tuple[int, int]:
    """The honest market's (supply, demand) at the last sample (the modal row)."""
    rows = rec.samples[-1] if rec.samples else []
    counts = Counter((r.supply, r.demand) for r in rows)
    return counts.most_common(1)[0][0] if counts else (0, 0)


def _timed_real_run(scenario: Scenario, peers: int, seed: int, sample_s: float,
                    progress: bool) -> tuple[Recorder, float]:
    started = time.perf_counter()
    rec = _real_run(scenario, peers, seed, sample_s, progress)
    return rec, time.perf_counter() - started


def _real_run(scenario: Scenario, peers: int, seed: int, sample_s: float,
              progress: bool) -> Recorder:
    """One run on real libp2p nodes (in a process of its own). A setup that fails (a node
    without a gossip mesh after the setup timeout: before t = 0, not part of the run) is tried
    once more."""
    import logging

    import trio

    from simnet.real import RealNetwork
    from simnet.sim import stderr_progress

    import libp2p  # noqa: F401 - configures the "libp2p" logger, which is then quietened

    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    for attempt in (1, 2):
        network = RealNetwork(scenario, peers, seed=seed, sample_s=sample_s,
                              progress=stderr_progress if progress else None)
        try:
            return trio.run(network.run)
        except BaseException as error:  # noqa: BLE001 - an ExceptionGroup from the nursery
            if attempt == 2 or "setup:" not in repr(error):
                raise
            if progress:
                stderr_progress(f"[libp2p] setup failed ({error!r}); once more")
    raise AssertionError("unreachable")


class PairRunner:
    """Runs scenarios with attacks and their honest runs (one honest run per distinct honest
    scenario, shared by every attack on the same market) and measures each attack."""

    def __init__(self, peers: int, *, seed: int = 1, transport: str = "sim",
                 observers: int | None = None, workers: int = 1, sample_s: float | None = None,
                 progress: Callable[[str], None] | None = None) -> None:
        self.peers = peers
        self.seed = seed
        self.transport = transport
        self.observers = observers
        self.workers = workers
        self.sample_s = sample_s
        self.progress = progress
        self._honest: dict[str, tuple[Recorder, float]] = {}

    def _run(self, scenario: Scenario) -> Recorder:
        if self.transport == "sim":
            from simnet.sim import SimNetwork

            return SimNetwork(scenario, self.peers, seed=self.seed, sample_s=self.sample_s,
                              observers=self.observers, workers=self.workers,
                              progress=self.progress).run()
        ((rec, _),) = self._real_runs([scenario])
        return rec

    def _real_runs(self, scenarios: Sequence[Scenario]) -> list[tuple[Recorder, float]]:
        """Real networks, each in a fresh interpreter (nothing of one run's py-libp2p hosts —
        tasks, sockets, caches — is left in the next, and the memory goes with the process),
        all at the same time: they share nothing but the machine. (recorder, wall s) each."""
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=len(scenarios), mp_context=context) as pool:
            jobs = [pool.submit(_timed_real_run, s, self.peers, self.seed, self.sample_s or 0.5,
                                self.progress is not None) for s in scenarios]
            return [job.result() for job in jobs]

    @staticmethod
    def _honest_of(scenario: Scenario) -> tuple[str, Scenario]:
        """The honest run of `scenario`, and the key it is shared under."""
        honest = scenario.without_attacks()
        key = repr(dataclasses.replace(honest, name="honest", description=""))
        return key, dataclasses.replace(honest, name=f"{scenario.name} (honest)")

    def honest(self, scenario: Scenario) -> tuple[Recorder, float]:
        key, honest = self._honest_of(scenario)
        if key not in self._honest:
            started = time.perf_counter()
            rec = self._run(honest)
            self._honest[key] = (rec, time.perf_counter() - started)
        return self._honest[key]

    def measure(self, scenario: Scenario) -> list[AttackOutcome]:
        """Run `scenario` and its honest run; one outcome per attack event. On real libp2p
        nodes the two networks run at the same time when the honest one is not known yet, and
        together take about the time of one."""
        key, honest_scenario = self._honest_of(scenario)
        if self.transport != "sim" and key not in self._honest:
            (honest, honest_wall), (attacked, wall) = self._real_runs([honest_scenario, scenario])
            self._honest[key] = (honest, honest_wall)
        else:
            honest, honest_wall = self.honest(scenario)
            started = time.perf_counter()
            attacked = self._run(scenario)
            wall = time.perf_counter() - started
        market = scenario.market_config()
        supply, demand = steady_totals(honest)
        outcomes = []
        records = [r for r in attacked.events if r.event.action == "attack"]
        for number, record in enumerate(records):
            event = record.event
            after = record.t  # before it, the runs are the same network
            dev = deviation(honest, attacked, after_s=after if self.transport != "sim" else 0.0)
            outcomes.append(AttackOutcome(
                attack=event.attack, scenario=scenario.name, policy=scenario.admission,
                work_bits=market.identity_work_bits, identities=event.keys or 0,
                deviation=dev, sent=int(record.info.get("sent", 0)),
                reasons=dict(attacked.reasons), attack_counts=dict(attacked.attack_counts),
                expected=stated_bound(event, number, scenario, self.seed, supply, demand),
                wall_s=round(wall, 1), honest_wall_s=round(honest_wall, 1)))
        return outcomes


__all__ = ["Attacker", "attack_identities", "keep_alive_s", "reference_verdict", "counted", "ramp_allows",
           "one_identity_bound_nano", "SyncBudget", "Deviation", "deviation", "AttackOutcome",
           "SYNC_BURST", "SYNC_REFILL_S", "attack_events", "stated_bound", "steady_totals",
           "PairRunner"]
