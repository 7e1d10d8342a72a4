"""Scenario files: a market's starting state and a timeline of events, as TOML.

A scenario is data, checked when it is loaded: unknown keys, wrong types, out-of-range values and
parameters an action does not take are errors with a message that names the key, never silently
ignored. The same scenario runs on either transport (real libp2p nodes or the simulated network).

Layout (every table optional except `name`; see `simnet/scenarios/*.toml` for shipped examples):

    name = "shock"
    description = "supply drops by half, then demand spikes"
    duration_s = 120          # network time the scenario is written for

    [peers]                   # the starting market, independent of the number of peers
    providers = 0.5           # fraction of peers that offer capacity (at least one peer)
    capacity = 1000           # tokens per second each provider offers
    min_price = 0.0           # NEURO per 1M tokens each provider asks at least
    demand_peers = 0.25       # fraction of peers at which demand is queued (at least one peer)
    utilization = 0.8         # total demand = utilization x target_response_s x total supply

    [market]                  # overrides of neuroshard_p2p.config.MarketConfig
    [node]                    # overrides of the node's timing settings (re-announce, sync, ...)
    [economics]               # parameters of `neuroshard-simnet economics` (simnet.economics)
    [admission]               # who may take part (the charter's admission, market-v2 §1)
    policy = "open"           # "open" | "members": the simulator is the network's authority and
                              # gives every honest peer a credential; attackers get none
    [network]                 # the simulated network (ignored by the libp2p transport)
    degree = 6                # gossip mesh degree D
    latency_median_ms = 40.0  # per-hop latency: lognormal with this median ...
    latency_sigma = 0.5       # ... and this shape
    loss = 0.01               # probability that one transmission is lost
    clock_skew_ms = 20.0      # standard deviation of the peers' clock offsets
    cpu_per_copy_ms = 0.0     # CPU per gossip copy received, and in addition per message
    cpu_per_message_ms = 0.0  # (its first copy); both 0: unlimited CPU (see NetworkModel)
    relay_batch_ms = 0.0      # > 0 (needs the CPU model): changes go by relay, not gossip
    relay_cost_scale = 1.0    # the relay's costs (relay_*_ms) multiplied by this

    [[event]]
    at = 40                   # seconds of network time since the start
    action = "capacity"       # see ACTIONS below
    who = "providers"
    factor = 0.5

`at` times are written for `duration_s`; running with another duration scales them in proportion
(`Scenario.scaled`), so one file serves a 20 s CI run and a 10-minute study.
"""

from __future__ import annotations

import dataclasses
import math
import random
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence, TypeVar

from neuroshard_p2p.config import ConfigError, MarketConfig

from simnet.costs import RelayCosts

#: The relay's costs at the speed the gossip costs are fitted at (bench stream_cost; simnet/costs.py).
_RELAY = RelayCosts()


class _Peer(Protocol):
    """What an event needs to know of a peer (simulated or real) to choose it."""

    index: int
    capacity: int
    demand: int


P = TypeVar("P", bound=_Peer)


class ScenarioError(ValueError):
    """A scenario file that cannot be run, with the key and the reason."""


#: Which peers an event applies to.
WHO = ("all", "providers", "demand", "idle", "live")

#: Kinds of invalid traffic a hostile peer can send.
HOSTILE_KINDS = ("forged", "replayed", "backdated", "oversize", "future", "implausible")

#: Admission policies of a scenario's network (the charter's `[admission] policy`).
POLICIES = ("open", "members")

#: Valid attacks on the price (simnet.attacks): what each identity announces by default. Every
#: message is well formed and correctly signed; what limits its weight is the network's
#: admission, the per-signer caps and the identity-work ramp.
ATTACKS: dict[str, dict[str, Any]] = {
    # One identity announcing the most demand the wire can carry (issue 14: +86 % in 8 s on v1).
    # It carries full identity work: the worst case one identity that paid can do.
    "demand_pump": dict(keys=1, tokens_per_second=0, min_price=0.0, pending_tokens=2**63 - 1,
                        pending_requests=2**63 - 1, work=True, route="gossip", rate=1.0),
    # 200 fresh keys, each the largest plausible provider at price 0.
    "sybil_capacity": dict(keys=200, tokens_per_second=50_000, min_price=0.0, pending_tokens=0,
                           pending_requests=0, work=False, route="gossip", rate=200.0),
    # 2,000 fresh keys, each one plausible 1,000-token request, all announced within a minute.
    "sybil_demand": dict(keys=2_000, tokens_per_second=0, min_price=0.0, pending_tokens=1_000,
                         pending_requests=1, work=False, route="gossip", rate=2_000 / 60),
    # 4,096 fresh keys (a full sync answer) handed to the attacker's neighbours in sync answers.
    "key_flood": dict(keys=4_096, tokens_per_second=50_000, min_price=0.0, pending_tokens=0,
                      pending_requests=0, work=False, route="sync", rate=1.0),
    # One peer pulling a neighbour's whole view in a loop (issue 14: 428 pulls in 5 s).
    "sync_abuse": dict(keys=1, tokens_per_second=0, min_price=0.0, pending_tokens=0,
                       pending_requests=0, work=False, route="sync", rate=428 / 5),
}
ROUTES = ("gossip", "sync")

#: Per action: the parameters it takes (besides `at`, `action`, `label`) and what it does.
ACTIONS: dict[str, tuple[frozenset[str], str]] = {
    "capacity": (frozenset({"who", "fraction", "count", "factor", "tokens_per_second"}),
                 "scale (factor) or set (tokens_per_second) the capacity of the chosen peers"),
    "demand": (frozenset({"factor", "utilization"}),
               "scale (factor) the queued demand, or set it to a utilization of today's supply"),
    "kill": (frozenset({"who", "fraction", "count"}),
             "stop the chosen peers hard: no withdrawal, they simply go silent"),
    "stop": (frozenset({"who", "fraction", "count"}),
             "stop the chosen peers cleanly: each publishes a withdrawal first"),
    "add": (frozenset({"count", "fraction", "role"}),
            "start new peers that join late and sync (role: provider, demand, idle or replace)"),
    "partition": (frozenset({"groups"}),
                  "split the live peers into `groups` groups that cannot reach each other"),
    "heal": (frozenset(), "end the partition"),
    "hostile": (frozenset({"count", "rate", "duration_s", "kinds"}),
                "start `count` extra peers that publish `rate` invalid messages per second"),
    "attack": (frozenset({"attack", "keys", "tokens_per_second", "min_price", "pending_tokens",
                          "pending_requests", "work", "route", "rate", "duration_s"}),
               "an attacker with `keys` identities sends VALID announcements (`attack`: "
               f"{', '.join(ATTACKS)}), by gossip `rate` identities per second or by sync "
               "(`route`) all in one round of answers, each re-announced as rarely as keeps "
               "it counted until `duration_s` is over; sync_abuse pulls a neighbour's view "
               "`rate` times per second"),
}

ROLES = ("provider", "demand", "idle", "replace")


@dataclass(frozen=True)
class PeerSetup:
    """The starting market, written independently of the number of peers."""

    providers: float = 0.5
    capacity: int = 1000
    min_price: float = 0.0
    demand_peers: float = 0.25
    utilization: float = 0.8
    # Providers' asks spread over [min_price, min_price + min_price_spread] (NEURO per 1M
    # tokens), by peer index: a clearing market (curve = "clearing") needs asks that differ.
    min_price_spread: float = 0.0

    def __post_init__(self) -> None:
        _need(self.min_price_spread >= 0, "peers.min_price_spread must be >= 0")
        _need(0 <= self.providers <= 1, "peers.providers must be a fraction in [0, 1]")
        _need(0 < self.capacity <= 50_000, "peers.capacity must be in 1..50000 tokens/s")
        _need(self.min_price >= 0, "peers.min_price must be >= 0")
        _need(0 <= self.demand_peers <= 1, "peers.demand_peers must be a fraction in [0, 1]")
        _need(0 <= self.utilization <= 1000, "peers.utilization must be in [0, 1000]")

    def ask_of(self, index: int, price: float | None = None) -> float:
        """The ask (NEURO per 1M tokens) of the provider numbered `index`: `price` (default
        min_price) plus its share of the spread, a golden-ratio sequence of the index, so asks
        differ without drawing on the scenario's random numbers (runs without a spread are
        what they were)."""
        base = self.min_price if price is None else price
        if not self.min_price_spread:
            return base
        return base + self.min_price_spread * ((index * 0.6180339887498949) % 1.0)

    def assign(self, n: int, rng: random.Random) -> tuple[set[int], set[int]]:
        """Which of `n` peers offer capacity and which queue demand, drawn with `rng`. Demand is
        queued at peers other than the providers (gateways) while there are enough peers, then
        at providers too."""
        order = list(range(n))
        rng.shuffle(order)
        n_prov = min(n, max(1 if self.providers > 0 else 0, round(self.providers * n)))
        n_dem = min(n, max(1 if self.demand_peers > 0 else 0, round(self.demand_peers * n)))
        return set(order[:n_prov]), set((order[n_prov:] + order[:n_prov])[:n_dem])


@dataclass(frozen=True)
class NetworkModel:
    """The simulated network: a gossip mesh of degree D, lognormal per-hop latency, loss."""

    degree: int = 6
    latency_median_ms: float = 40.0
    latency_sigma: float = 0.5
    loss: float = 0.01
    clock_skew_ms: float = 20.0
    remesh_s: float = 1.0  # how long the mesh takes to repair (one gossipsub heartbeat)
    #: CPU a peer spends on each gossip copy it receives (reading the RPC, decoding, the seen
    #: check), and in addition on the first copy of each message (validation, its engine,
    #: forwarding), in ms. Both 0 (the default): unlimited CPU, every hop takes HOP_DELAY_S.
    #: Otherwise each peer is one server taking copies in the order they arrive: a copy waits
    #: while the peer is busy, and a message is held and forwarded once its first copy is done
    #: (the exact flood model in one process; docs/scaling.md, "Nineteenth pass").
    cpu_per_copy_ms: float = 0.0
    cpu_per_message_ms: float = 0.0
    #: With the CPU model: honest changes travel by a bundled relay instead of gossip (one
    #: stream per mesh peer; what a peer newly holds goes to all of them in one frame, at most
    #: once per this many ms; simnet/sim.py, `_relay_publish`). 0: gossip. The relay's costs
    #: are those of simnet/burst_model.py's `RelayCosts` (bench stream_cost, at the fitted
    #: speed), in ms: a frame read, a frame written, a new announcement read, a held one, an
    #: announcement written; `relay_cost_scale` multiplies all five, as the gossip costs are
    #: multiplied by hand (×10 for 1,000 peers standing in for 10,000, ×50 for 1/50 of a core).
    relay_batch_ms: float = 0.0
    relay_frame_in_ms: float = _RELAY.frame_in_s * 1000
    relay_frame_out_ms: float = _RELAY.frame_out_s * 1000
    relay_item_ms: float = _RELAY.item_s * 1000
    relay_dup_ms: float = _RELAY.dup_s * 1000
    relay_item_out_ms: float = _RELAY.item_out_s * 1000
    relay_cost_scale: float = 1.0

    def __post_init__(self) -> None:
        _need(2 <= self.degree <= 64, "network.degree must be in 2..64")
        _need(0 < self.latency_median_ms <= 10_000, "network.latency_median_ms must be in (0, 10000]")
        _need(0 <= self.latency_sigma <= 3, "network.latency_sigma must be in [0, 3]")
        _need(0 <= self.loss < 1, "network.loss must be in [0, 1)")
        _need(0 <= self.clock_skew_ms <= 10_000, "network.clock_skew_ms must be in [0, 10000]")
        _need(0 <= self.remesh_s <= 60, "network.remesh_s must be in [0, 60]")
        _need(0 <= self.cpu_per_copy_ms <= 10_000, "network.cpu_per_copy_ms must be in [0, 10000]")
        _need(0 <= self.cpu_per_message_ms <= 10_000,
              "network.cpu_per_message_ms must be in [0, 10000]")
        _need(0 <= self.relay_batch_ms <= 60_000, "network.relay_batch_ms must be in [0, 60000]")
        for name in ("relay_frame_in_ms", "relay_frame_out_ms", "relay_item_ms", "relay_dup_ms",
                     "relay_item_out_ms", "relay_cost_scale"):
            _need(0 <= getattr(self, name) <= 10_000, f"network.{name} must be in [0, 10000]")
        _need(self.relay_batch_ms == 0 or self.cpu_modelled,
              "network.relay_batch_ms needs the CPU model (network.cpu_per_copy_ms or "
              "cpu_per_message_ms > 0): the relay is a model of the peers' CPU")

    @property
    def cpu_modelled(self) -> bool:
        """Whether peers' CPU is modelled (either cost above 0)."""
        return self.cpu_per_copy_ms > 0 or self.cpu_per_message_ms > 0

    @property
    def relay(self) -> RelayCosts | None:
        """The relay's costs in seconds (scaled), or None when changes go by gossip."""
        if self.relay_batch_ms <= 0:
            return None
        ms = (self.relay_frame_in_ms, self.relay_frame_out_ms, self.relay_item_ms,
              self.relay_dup_ms, self.relay_item_out_ms)
        return RelayCosts(*(x / 1000 for x in ms)).scaled(self.relay_cost_scale)


@dataclass(frozen=True)
class Event:
    """One step of the timeline. Only the parameters listed for its action in ACTIONS are set."""

    at_s: float
    action: str
    label: str = ""
    who: str = "all"
    fraction: float | None = None
    count: int | None = None
    factor: float | None = None
    tokens_per_second: int | None = None
    utilization: float | None = None
    role: str = "replace"
    groups: int = 2
    rate: float = 20.0
    duration_s: float | None = None
    kinds: tuple[str, ...] = ("forged", "replayed", "backdated", "oversize")
    # attack (resolved from ATTACKS[attack] when the file leaves them out)
    attack: str = ""
    keys: int | None = None
    min_price: float | None = None
    pending_tokens: int | None = None
    pending_requests: int | None = None
    work: bool | None = None
    route: str | None = None

    @property
    def title(self) -> str:
        """A short human name for reports: the label, or the action and its main parameter."""
        if self.label:
            return self.label
        if self.action == "attack":
            return f"{self.attack} {self.keys}"
        detail = ""
        if self.factor is not None:
            detail = f" x{self.factor:g}"
        elif self.tokens_per_second is not None:
            detail = f" ={self.tokens_per_second}"
        elif self.utilization is not None:
            detail = f" u={self.utilization:g}"
        elif self.count is not None:
            detail = f" {self.count}"
        elif self.fraction is not None:
            detail = f" {self.fraction:.0%}"
        return f"{self.action}{detail}"

    def choose(self, pool: Sequence[P], rng: random.Random, *, spare_first: bool = False) -> list[P]:
        """The peers of `pool` this event acts on: those of its `who` (providers, demand, idle,
        or all), as many as `pick_count` says, drawn with `rng`, in index order. With
        `spare_first`, a kill or stop spares peer 0 (the bootstrap peer newcomers dial, as a
        real network keeps its bootstrap nodes) unless nothing else is left."""
        if self.who == "providers":
            pool = [p for p in pool if p.capacity > 0]
        elif self.who == "demand":
            pool = [p for p in pool if p.demand > 0]
        elif self.who == "idle":
            pool = [p for p in pool if p.capacity == 0 and p.demand == 0]
        if spare_first and self.action in ("kill", "stop"):
            pool = [p for p in pool if p.index != 0] or list(pool)
        k = self.pick_count(len(pool))
        return sorted(rng.sample(list(pool), k), key=lambda p: p.index)

    def new_capacity(self, current: int, limit: int) -> int:
        """A chosen peer's capacity after a `capacity` event: scaled (capped at `limit`, the
        plausibility bound) or set."""
        if self.factor is not None:
            return min(limit, round(current * self.factor))
        return int(self.tokens_per_second or 0)

    def new_demands(self, demands: Sequence[int], supply: int,
                    target_response_s: float) -> list[int]:
        """The demand of each peer in a `demand` event: each scaled, or the total that makes
        utilization `utilization` of today's `supply`, shared evenly."""
        if self.factor is not None:
            return [round(d * self.factor) for d in demands]
        total = (self.utilization or 0.0) * target_response_s * supply
        return [round(total / max(1, len(demands)))] * len(demands)

    def pick_count(self, available: int) -> int:
        """How many of `available` peers this event chooses (count, or fraction rounded, >= 1
        when a fraction > 0 is asked of a non-empty set)."""
        if self.count is not None:
            return min(self.count, available)
        fraction = 1.0 if self.fraction is None else self.fraction
        if fraction <= 0 or available == 0:
            return 0
        return min(available, max(1, round(fraction * available)))


@dataclass(frozen=True)
class Scenario:
    """A whole scenario: starting market, settings overrides and a timeline sorted by time."""

    name: str
    description: str = ""
    duration_s: float = 120.0
    peers: PeerSetup = field(default_factory=PeerSetup)
    market: Mapping[str, Any] = field(default_factory=dict)
    node: Mapping[str, Any] = field(default_factory=dict)
    network: NetworkModel = field(default_factory=NetworkModel)
    events: tuple[Event, ...] = ()
    economics: Mapping[str, Any] = field(default_factory=dict)
    admission: str = "open"

    def __post_init__(self) -> None:
        _need(bool(self.name), "name must not be empty")
        _need(self.admission in POLICIES,
              f"admission.policy must be one of {POLICIES}, got {self.admission!r}")
        _need(0 < self.duration_s <= 86_400, "duration_s must be in (0, 86400]")
        for event in self.events:
            _need(0 <= event.at_s <= self.duration_s,
                  f"event {event.title!r} at {event.at_s} s lies outside 0..duration_s "
                  f"({self.duration_s} s)")
        try:
            self.market_config()
        except ConfigError as exc:
            raise ScenarioError(str(exc)) from None

    def market_config(self, base: MarketConfig | None = None) -> MarketConfig:
        """The market configuration: defaults (or `base`) with this scenario's [market] table."""
        base = base or MarketConfig()
        if not self.market:
            return base
        checked = MarketConfig.from_mapping(self.market)  # names and types
        return base.replace(**{key: getattr(checked, key) for key in self.market})

    def scaled(self, duration_s: float) -> "Scenario":
        """The same timeline stretched or squeezed to `duration_s` of network time."""
        if duration_s <= 0:
            raise ScenarioError("duration must be > 0")
        ratio = duration_s / self.duration_s
        events = tuple(
            dataclasses.replace(e, at_s=e.at_s * ratio,
                                duration_s=None if e.duration_s is None else e.duration_s * ratio)
            for e in self.events)
        return dataclasses.replace(self, duration_s=duration_s, events=events)

    def with_overrides(self, *, market: Mapping[str, Any] | None = None,
                       node: Mapping[str, Any] | None = None,
                       network: Mapping[str, Any] | None = None,
                       peers: Mapping[str, Any] | None = None,
                       admission: Mapping[str, Any] | None = None) -> "Scenario":
        """A copy with some [market], [node], [network], [peers] or [admission] settings
        replaced (e.g. short timeouts for a 20 s test run, a members network)."""
        changes: dict[str, Any] = {}
        if peers:
            changes["peers"] = _build(PeerSetup, {**dataclasses.asdict(self.peers), **peers},
                                      "peers")
        if admission:
            changes["admission"] = _admission({"policy": self.admission, **admission})
        if market:
            changes["market"] = {**self.market, **market}
        if node:
            changes["node"] = {**self.node, **node}
        if network:
            changes["network"] = _build(NetworkModel, {**dataclasses.asdict(self.network),
                                                       **network}, "network")
        return dataclasses.replace(self, **changes)

    def with_attack(self, **changes: Any) -> "Scenario":
        """A copy whose attack events take these parameters (e.g. keys=2000, rate=200.0),
        checked as the file's would be."""
        allowed, _ = ACTIONS["attack"]
        unknown = sorted(set(changes) - allowed)
        _need(not unknown, f"attack: unknown parameter(s) {unknown}; it takes {sorted(allowed)}")
        events = []
        for i, event in enumerate(self.events):
            if event.action == "attack":
                raw: dict[str, Any] = {"at": event.at_s, "action": "attack"}
                if event.label:
                    raw["label"] = event.label
                for key in allowed:
                    value = getattr(event, key)
                    if value is not None:
                        raw[key] = value
                raw.update(changes)
                event = _event(i, raw)
            events.append(event)
        return dataclasses.replace(self, events=tuple(events))

    def without_attacks(self) -> "Scenario":
        """The honest run of this scenario: the same network and timeline without its attack
        events (what an attack's effect is measured against)."""
        return dataclasses.replace(self, events=tuple(e for e in self.events
                                                      if e.action != "attack"))

    def to_dict(self) -> dict[str, Any]:
        """A plain mapping for report.json."""
        data = dataclasses.asdict(self)
        data["market"] = dict(self.market)
        data["node"] = dict(self.node)
        data["economics"] = dict(self.economics)
        return data


# ---------------------------------------------------------------------------------------------
# Loading


def shipped_scenarios() -> list[str]:
    """Names of the scenarios that ship with simnet."""
    folder = resources.files("simnet") / "scenarios"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def load(name_or_path: str) -> Scenario:
    """Load a shipped scenario by name (`shock`) or any scenario file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise ScenarioError(f"scenario file {name_or_path!r} does not exist")
        text = path.read_text(encoding="utf-8")
        where = str(path)
    else:
        resource = resources.files("simnet") / "scenarios" / f"{name_or_path}.toml"
        if not resource.is_file():
            raise ScenarioError(f"unknown scenario {name_or_path!r}; shipped: "
                                f"{', '.join(shipped_scenarios())} (or give a path to a .toml file)")
        text = resource.read_text(encoding="utf-8")
        where = f"{name_or_path}.toml"
    return loads(text, where)


def loads(text: str, where: str = "<scenario>") -> Scenario:
    """Parse scenario TOML text; errors name the file and the key."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from None
    try:
        return from_mapping(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{where}: {exc}") from None


def from_mapping(data: Mapping[str, Any]) -> Scenario:
    known = {"name", "description", "duration_s", "peers", "market", "node", "network", "event",
             "economics", "admission"}
    unknown = sorted(set(data) - known)
    _need(not unknown, f"unknown top-level key(s) {unknown}; known: {sorted(known)}")
    _need(isinstance(data.get("name"), str), "name (a string) is required")
    for table in ("peers", "market", "node", "network", "economics", "admission"):
        _need(isinstance(data.get(table, {}), dict), f"[{table}] must be a table")
    raw_events = data.get("event", [])
    _need(isinstance(raw_events, list), "[[event]] must be an array of tables")
    events = tuple(sorted((_event(i, e) for i, e in enumerate(raw_events)),
                          key=lambda e: e.at_s))
    description = data.get("description", "")
    _need(isinstance(description, str), "description must be a string")
    return Scenario(
        name=data["name"],
        description=description,
        duration_s=_number("duration_s", data.get("duration_s", 120.0)),
        peers=_build(PeerSetup, data.get("peers", {}), "peers"),
        market=dict(data.get("market", {})),
        node=dict(data.get("node", {})),
        network=_build(NetworkModel, data.get("network", {}), "network"),
        events=events,
        economics=dict(data.get("economics", {})),
        admission=_admission(data.get("admission", {})),
    )


def _admission(table: Mapping[str, Any]) -> str:
    unknown = sorted(set(table) - {"policy"})
    _need(not unknown, f"[admission] unknown key(s) {unknown}; known: ['policy']")
    policy = table.get("policy", "open")
    _need(policy in POLICIES, f"[admission] policy must be one of {POLICIES}, got {policy!r}")
    return str(policy)


def _event(index: int, raw: Any) -> Event:
    where = f"event #{index + 1}"
    _need(isinstance(raw, dict), f"{where} must be a table")
    action = raw.get("action")
    _need(action in ACTIONS, f"{where}: action must be one of {sorted(ACTIONS)}, got {action!r}")
    allowed, _ = ACTIONS[action]
    extra = sorted(set(raw) - allowed - {"at", "action", "label"})
    _need(not extra, f"{where} ({action}): unknown parameter(s) {extra}; "
                     f"{action} takes {sorted(allowed) or 'none'}")
    _need("at" in raw, f"{where}: `at` (seconds) is required")
    kwargs: dict[str, Any] = {"at_s": _number(f"{where}.at", raw["at"]), "action": action}
    if "label" in raw:
        _need(isinstance(raw["label"], str), f"{where}.label must be a string")
        kwargs["label"] = raw["label"]
    for key, value in raw.items():
        name = f"{where}.{key}"
        if key in ("at", "action", "label"):
            continue
        if key == "who":
            _need(value in WHO, f"{name} must be one of {WHO}, got {value!r}")
            kwargs["who"] = value
        elif key == "role":
            _need(value in ROLES, f"{name} must be one of {ROLES}, got {value!r}")
            kwargs["role"] = value
        elif key == "kinds":
            _need(isinstance(value, list) and value and all(k in HOSTILE_KINDS for k in value),
                  f"{name} must be a non-empty list drawn from {HOSTILE_KINDS}")
            kwargs["kinds"] = tuple(value)
        elif key in ("count", "groups", "tokens_per_second"):
            _need(type(value) is int and value >= 0, f"{name} must be an integer >= 0")
            kwargs[key] = value
        elif key == "attack":
            _need(value in ATTACKS, f"{name} must be one of {tuple(ATTACKS)}, got {value!r}")
            kwargs[key] = value
        elif key in ("keys", "pending_tokens", "pending_requests"):
            _need(type(value) is int and 0 <= value <= 2**63 - 1,
                  f"{name} must be an integer in 0..2^63-1")
            kwargs[key] = value
        elif key == "work":
            _need(isinstance(value, bool), f"{name} must be true or false")
            kwargs[key] = value
        elif key == "route":
            _need(value in ROUTES, f"{name} must be one of {ROUTES}, got {value!r}")
            kwargs[key] = value
        else:  # fraction, factor, utilization, rate, duration_s, min_price
            kwargs[key] = _number(name, value)
    event = Event(**kwargs)
    if event.fraction is not None:
        _need(0 <= event.fraction <= 1, f"{where}.fraction must be in [0, 1]")
    if event.factor is not None:
        _need(event.factor >= 0, f"{where}.factor must be >= 0")
    if action == "capacity":
        _need((event.factor is None) != (event.tokens_per_second is None),
              f"{where}: capacity takes exactly one of factor, tokens_per_second")
    if action == "demand":
        _need((event.factor is None) != (event.utilization is None),
              f"{where}: demand takes exactly one of factor, utilization")
    if action == "partition":
        _need(event.groups >= 2, f"{where}.groups must be >= 2")
    if action == "hostile":
        _need(0 < event.rate <= 10_000, f"{where}.rate must be in (0, 10000] messages/s")
        _need(event.duration_s is None or event.duration_s > 0, f"{where}.duration_s must be > 0")
    if action == "attack":
        _need("attack" in raw, f"{where}: attack needs `attack` (one of {tuple(ATTACKS)})")
        defaults = ATTACKS[event.attack]
        event = dataclasses.replace(event, **{k: v for k, v in defaults.items()
                                              if k not in raw})
        _need(event.keys is not None and 1 <= event.keys <= 100_000,
              f"{where}.keys must be in 1..100000")
        _need(event.tokens_per_second is not None and event.tokens_per_second <= 2**63 - 1,
              f"{where}.tokens_per_second must be in 0..2^63-1")
        _need(event.min_price is not None and event.min_price >= 0,
              f"{where}.min_price must be >= 0")
        _need(0 < event.rate <= 1_000_000, f"{where}.rate must be in (0, 1000000] per second")
        _need(event.duration_s is None or event.duration_s > 0, f"{where}.duration_s must be > 0")
    if action == "add":
        _need(event.role == "replace" or event.count is not None or event.fraction is not None,
              f"{where}: add needs count or fraction (or role = \"replace\" to restart the "
              "peers the last kill or stop took away)")
    return event


def _number(name: str, value: Any) -> float:
    _need(isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value), f"{name} must be a finite number, got {value!r}")
    return float(value)


def _build(cls: Any, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        _need(key in known, f"[{section}] unknown key {key!r}; known: {sorted(known)}")
        default = known[key].default
        if isinstance(default, bool):
            _need(isinstance(value, bool), f"[{section}] {key} must be true or false")
        elif isinstance(default, int):
            _need(type(value) is int, f"[{section}] {key} must be an integer")
        elif isinstance(default, float):
            value = _number(f"[{section}] {key}", value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ScenarioError as exc:
        raise ScenarioError(str(exc)) from None


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ScenarioError(message)


__all__ = ["Scenario", "Event", "PeerSetup", "NetworkModel", "ScenarioError", "ACTIONS", "WHO",
           "HOSTILE_KINDS", "ROLES", "ATTACKS", "ROUTES", "POLICIES", "load", "loads",
           "from_mapping", "shipped_scenarios"]
