"""Serve or train? An economic model of the price curve, run tick by tick.

Each node can either serve inference (its capacity counts as supply, it earns what users pay at
the market price minus the burn) or train (it earns a fixed reward: by default NeuroShard's 60
batches per minute x 0.0005 NEURO per batch = 0.03 NEURO per minute). Every node reconsiders once
per decision period, at its own offset in the period, and picks whichever pays more by its
estimate at the current price; a small hysteresis band keeps a node from flapping on noise.

Demand arrives as new tokens per second and waits in a queue until served. The market is the
project's own: the target price of each tick is `core.pricing.target_price_nano(supply, queue)`
and the quoted price is the windowed fold `smoothed_price` over the last W targets, exactly what
every peer computes from its view. Money here is float NEURO (an aggregate model, not a ledger).

What the model shows (`neuroshard-simnet economics` prints and writes it with numbers): once the
market needs servers at all, free entry pins the price near the break-even price
P* = training reward per second / (capacity x (1 - burn)) -- independent of the phase -- and
the inference profit of a serving node near 100 % of the training profit, not 50 %.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import (DEMAND_BUCKETS, clearing_price_nano, curve_price,
                                         demand_bucket, smoothed_price,
                                         target_price_nano, window_price)
from neuroshard_p2p.money import NANO_PER_NEURO, TOKENS_PER_PRICE_UNIT, to_nano


class EconomicsError(ValueError):
    """Parameters of the economics model that make no sense."""


@dataclass(frozen=True)
class Phase:
    """A stretch of time with one level of demand (a fraction of what all nodes could serve)."""

    name: str
    minutes: float
    demand: float

    def __post_init__(self) -> None:
        if not self.name:
            raise EconomicsError("a phase needs a name")
        if not 0 < self.minutes <= 100_000:
            raise EconomicsError(f"phase {self.name}: minutes must be in (0, 100000]")
        if not 0 <= self.demand <= 100:
            raise EconomicsError(f"phase {self.name}: demand must be in [0, 100]")


DEFAULT_PHASES = (
    Phase("bootstrap", 240, 0.005),
    Phase("growth", 480, 0.10),
    Phase("mature", 480, 0.40),
)


@dataclass(frozen=True)
class EconomicsParams:
    """Everything the model assumes, with NeuroShard's constants as defaults."""

    nodes: int = 100
    capacity: float = 1000.0          # tokens/s a node serves at full speed (the design's example)
    capacity_spread: float = 0.5      # capacities uniform in capacity x [1 - spread, 1 + spread]
    batches_per_minute: float = 60.0  # NeuroShard training rate ...
    reward_per_batch: float = 0.0005  # ... and reward (NEURO per batch)
    decision_period_s: float = 60.0   # each node reconsiders once per period
    hysteresis: float = 0.05          # switch only when the other choice pays 5 % more
    ramp_minutes: float = 30.0        # demand moves linearly to a new phase's level over this
    serving_at_start: float = 0.0     # fraction of nodes serving at t = 0
    seed: int = 1
    phases: tuple[Phase, ...] = DEFAULT_PHASES

    def __post_init__(self) -> None:
        if not 1 <= self.nodes <= 100_000:
            raise EconomicsError("nodes must be in 1..100000")
        if not self.capacity > 0:
            raise EconomicsError("capacity must be > 0")
        if not 0 <= self.capacity_spread < 1:
            raise EconomicsError("capacity_spread must be in [0, 1)")
        if self.batches_per_minute < 0 or self.reward_per_batch < 0:
            raise EconomicsError("training rate and reward must be >= 0")
        if not self.decision_period_s > 0:
            raise EconomicsError("decision_period_s must be > 0")
        if not 0 <= self.hysteresis < 1:
            raise EconomicsError("hysteresis must be in [0, 1)")
        if self.ramp_minutes < 0:
            raise EconomicsError("ramp_minutes must be >= 0")
        if not 0 <= self.serving_at_start <= 1:
            raise EconomicsError("serving_at_start must be in [0, 1]")
        if not self.phases:
            raise EconomicsError("at least one phase is needed")

    @property
    def training_reward_per_s(self) -> float:
        """NEURO per second a training node earns."""
        return self.batches_per_minute * self.reward_per_batch / 60.0

    @property
    def total_minutes(self) -> float:
        return sum(p.minutes for p in self.phases)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "EconomicsParams":
        """From the [economics] table of a scenario (phases as a list of tables)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise EconomicsError(f"[economics] unknown key {key!r}; known: {sorted(known)}")
            if key == "phases":
                if not isinstance(value, list):
                    raise EconomicsError("[economics] phases must be a list of tables")
                phases = []
                for raw in value:
                    if not isinstance(raw, dict) or set(raw) - {"name", "minutes", "demand"}:
                        raise EconomicsError("[economics] each phase is {name, minutes, demand}")
                    try:
                        phases.append(Phase(str(raw["name"]), float(raw["minutes"]),
                                            float(raw["demand"])))
                    except (KeyError, TypeError, ValueError) as exc:
                        raise EconomicsError(f"[economics] bad phase {raw!r}: {exc}") from None
                kwargs["phases"] = tuple(phases)
            elif isinstance(known[key].default, int) and not isinstance(known[key].default, bool):
                if type(value) is not int:
                    raise EconomicsError(f"[economics] {key} must be an integer")
                kwargs[key] = value
            else:
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise EconomicsError(f"[economics] {key} must be a number")
                kwargs[key] = float(value)
        return cls(**kwargs)


@dataclass
class Series:
    """One sample per minute of model time (the last tick of the minute, or the minute's mean
    where it says so)."""

    minute: list[float] = field(default_factory=list)
    price: list[float] = field(default_factory=list)         # quoted (smoothed) price, NEURO/1M
    price_min: list[float] = field(default_factory=list)     # lowest quoted price in the minute
    price_max: list[float] = field(default_factory=list)     # highest quoted price in the minute
    target: list[float] = field(default_factory=list)        # unsmoothed target price
    serving: list[int] = field(default_factory=list)         # nodes serving
    supply: list[float] = field(default_factory=list)        # tokens/s offered
    arrivals: list[float] = field(default_factory=list)      # tokens/s arriving
    queue: list[float] = field(default_factory=list)         # tokens waiting
    earning_per_server: list[float] = field(default_factory=list)  # NEURO/s, mean of the minute
    phase: list[str] = field(default_factory=list)
    # Demand (tokens/s) the serving nodes left uncovered while an idle node asked no more than
    # the users pay, mean of the minute (see `unmet_rate`).
    unmet: list[float] = field(default_factory=list)


@dataclass
class PhaseFigures:
    """What one phase settled to (measured over the second half of the phase)."""

    name: str
    demand: float
    price_mean: float
    price_median: float
    price_p10: float
    price_p90: float
    price_min: float
    price_max: float
    serving_mean: float
    profit_ratio: float | None     # inference profit of a serving node / training profit
    overshoot: float               # highest price in the phase above the settled median, relative
    oscillation_amplitude: float   # (p90 - p10) / 2 of the settled price
    swings_per_hour: float         # crossings of the settled median per hour
    utilization_mean: float
    # Added with the clearing mode (issue 18); the columns above are computed as before.
    unmet_share: float = 0.0       # unmet demand / arrivals over the settled half
    settle_minutes: float | None = None  # phase start → the price stays within ±10 % of the
    #                                      settled median to the phase's end (None: never)


@dataclass
class EconomicsResult:
    """One run of the model: its parameters, per-minute series and per-phase figures."""

    label: str
    market: MarketConfig
    params: EconomicsParams
    series: Series
    phases: list[PhaseFigures]
    break_even_price: float        # price at which a fully busy average node earns the training rate
    floor_price: float             # the curve's price at u = 0


def break_even_price(params: EconomicsParams, market: MarketConfig) -> float:
    """P* = training reward per second / (capacity x (1 - burn)) x 1M tokens: the price at which
    serving at full speed pays exactly what training pays."""
    per_token = params.training_reward_per_s / (params.capacity * (1.0 - market.burn_rate))
    return per_token * TOKENS_PER_PRICE_UNIT


def demand_level(params: EconomicsParams, minute: float) -> tuple[float, str]:
    """Demand (fraction of total capacity) and the phase name at `minute`, with a linear ramp
    from the previous phase's level over ramp_minutes."""
    start = 0.0
    previous = params.phases[0].demand
    for phase in params.phases:
        end = start + phase.minutes
        if minute < end or phase is params.phases[-1]:
            into = minute - start
            if params.ramp_minutes > 0 and into < params.ramp_minutes:
                level = previous + (phase.demand - previous) * (into / params.ramp_minutes)
            else:
                level = phase.demand
            return level, phase.name
        previous = phase.demand
        start = end
    raise AssertionError("unreachable")


def node_ask_nano(params: EconomicsParams, market: MarketConfig, capacity: float) -> int:
    """A node's break-even ask against training (nano-NEURO per 1M tokens): the price at which
    serving at full speed pays exactly its training reward. What a rational node posts as its
    `min_price` on a clearing network."""
    per_token = params.training_reward_per_s / (capacity * (1.0 - market.burn_rate))
    return to_nano(per_token * TOKENS_PER_PRICE_UNIT)


def unmet_rate(queue: float, supply: float, idle_capacity: float, market: MarketConfig) -> float:
    """Demand (tokens/s) left unmet that some idle node would have served at its ask: what the
    waiting tokens need to be served within target_response_s beyond the serving supply, up to
    the capacity of the idle nodes whose ask is within what users pay (P_max)."""
    return min(max(0.0, queue / market.target_response_s - supply), idle_capacity)


def run(market: MarketConfig, params: EconomicsParams, label: str = "") -> EconomicsResult:
    """Run the model for the phases' total time, one market tick at a time. On a clearing
    market (curve "clearing") every node posts its break-even ask and serves whenever the price
    clears it (`_run_clearing`); otherwise nodes choose between serving and training."""
    if market.clearing:
        return _run_clearing(market, params, label)
    rng = random.Random(params.seed)
    tick_s = market.tick_s
    spread = params.capacity_spread
    capacity = [params.capacity * (1 - spread + 2 * spread * rng.random())
                for _ in range(params.nodes)]
    total_capacity = sum(capacity)
    serving = [rng.random() < params.serving_at_start for _ in range(params.nodes)]
    # Each node decides at its own offset in the decision period (ticks), so decisions spread out.
    period_ticks = max(1, round(params.decision_period_s / tick_s))
    due: dict[int, list[int]] = {}
    for node in range(params.nodes):
        due.setdefault(rng.randrange(period_ticks), []).append(node)

    train_rate = params.training_reward_per_s
    keep = 1.0 - market.burn_rate
    targets: deque[int] = deque(maxlen=market.window_ticks)
    queue = 0.0
    supply = sum(c for c, s in zip(capacity, serving) if s)
    series = Series()
    ticks_per_minute = max(1, round(60.0 / tick_s))
    total_ticks = round(params.total_minutes * 60.0 / tick_s)
    minute_earning = 0.0
    minute_prices: list[float] = []
    price_nano = 0
    recent_arrivals = 0.0  # arrival rate estimate (EMA over ~ a decision period)
    alpha = min(1.0, tick_s / params.decision_period_s)
    # Only for the unmet-demand figure: the same asks the clearing mode's nodes post. Computed
    # without touching `rng`, so the run itself is exactly what it was before that figure.
    asks = [node_ask_nano(params, market, c) for c in capacity]
    limit = to_nano(market.max_price)
    minute_unmet = 0.0

    for k in range(total_ticks):
        minute = k * tick_s / 60.0
        level, phase_name = demand_level(params, minute)
        arrival_rate = level * total_capacity
        queue += arrival_rate * tick_s
        recent_arrivals += alpha * (arrival_rate - recent_arrivals)

        targets.append(target_price_nano(supply, queue, market))
        price_nano = smoothed_price(targets, market)
        price = price_nano / NANO_PER_NEURO

        # Before the queue drains: what the waiting tokens needed beyond the serving supply,
        # up to what the idle nodes asking no more than users pay (P_max) could have served.
        minute_unmet += unmet_rate(queue, supply, sum(
            c for c, s_, a in zip(capacity, serving, asks) if not s_ and a <= limit), market)
        served = min(supply * tick_s, queue)
        queue -= served
        earned = served * price / TOKENS_PER_PRICE_UNIT * keep  # NEURO this tick, all servers
        n_serving = sum(serving)
        if n_serving:
            minute_earning += earned / tick_s / n_serving
        minute_prices.append(price)

        # Decisions: a node estimates what serving would pay per second at today's price, with
        # the work it could expect: arrivals plus draining the queue over target_response_s,
        # shared by capacity among the servers (itself included).
        for node in due.get(k % period_ticks, ()):
            c = capacity[node]
            pool = supply if serving[node] else supply + c
            work = recent_arrivals + queue / market.target_response_s
            busy = min(1.0, work / pool) if pool > 0 else 0.0
            serve_rate = price * c * busy / TOKENS_PER_PRICE_UNIT * keep
            if serving[node]:
                if serve_rate < train_rate * (1 - params.hysteresis):
                    serving[node] = False
                    supply -= c
            elif serve_rate > train_rate * (1 + params.hysteresis):
                serving[node] = True
                supply += c
        if supply < 1e-9:
            supply = 0.0  # float drift after many switches: an empty market is exactly empty

        if (k + 1) % ticks_per_minute == 0:
            series.minute.append((k + 1) * tick_s / 60.0)
            series.price.append(price)
            series.price_min.append(min(minute_prices))
            series.price_max.append(max(minute_prices))
            series.target.append(targets[-1] / NANO_PER_NEURO)
            series.serving.append(sum(serving))
            series.supply.append(supply)
            series.arrivals.append(arrival_rate)
            series.queue.append(queue)
            series.earning_per_server.append(minute_earning / ticks_per_minute)
            series.phase.append(phase_name)
            series.unmet.append(minute_unmet / ticks_per_minute)
            minute_earning = 0.0
            minute_unmet = 0.0
            minute_prices = []

    figures = [_phase_figures(series, p, params, market) for p in params.phases]
    return EconomicsResult(
        label=label or describe(market), market=market, params=params, series=series,
        phases=figures, break_even_price=break_even_price(params, market),
        floor_price=curve_price(0.0, market) if market.dynamic_pricing else market.fixed_price)


def _run_clearing(market: MarketConfig, params: EconomicsParams, label: str) -> EconomicsResult:
    """The clearing mode on the same demand path and the same nodes (capacities drawn from the
    same seed): each node's offer is its break-even ask, posted all the time; users' requests
    bid up to P_max. Each tick's price is `clearing_price_nano` of those asks and the waiting
    tokens (no smoothing: `window_price`), and the nodes whose ask is at or below it serve (the book matches them at that price); the others train."""
    rng = random.Random(params.seed)
    tick_s = market.tick_s
    spread = params.capacity_spread
    capacity = [params.capacity * (1 - spread + 2 * spread * rng.random())
                for _ in range(params.nodes)]
    total_capacity = sum(capacity)
    asks = [node_ask_nano(params, market, c) for c in capacity]
    # Integer offers, as announcements carry them (tokens/s floored, never below 1).
    offers = [(ask, max(1, int(c))) for ask, c in zip(asks, capacity)]
    by_ask = sorted(range(params.nodes), key=lambda i: (asks[i], -capacity[i], i))
    limit = to_nano(market.max_price)
    bid_bucket = demand_bucket(limit)
    keep = 1.0 - market.burn_rate
    targets: deque[int] = deque(maxlen=market.window_ticks)
    queue = 0.0
    series = Series()
    ticks_per_minute = max(1, round(60.0 / tick_s))
    total_ticks = round(params.total_minutes * 60.0 / tick_s)
    minute_earning = minute_unmet = 0.0
    minute_prices: list[float] = []
    demand = [0] * DEMAND_BUCKETS
    serving_count = 0
    supply = 0.0
    arrival_rate = 0.0
    for k in range(total_ticks):
        minute = k * tick_s / 60.0
        level, phase_name = demand_level(params, minute)
        arrival_rate = level * total_capacity
        queue += arrival_rate * tick_s
        demand[bid_bucket] = int(queue)
        targets.append(clearing_price_nano(offers, demand, market))
        price_nano = window_price(list(targets)[-1:], market)
        price = price_nano / NANO_PER_NEURO
        # Every offer asking at most the price is matched at it; the others train.
        serving_count = 0
        supply = 0.0
        for i in by_ask:
            if asks[i] > price_nano:
                break
            serving_count += 1
            supply += capacity[i]
        idle = sum(capacity[i] for i in by_ask[serving_count:] if asks[i] <= limit)
        minute_unmet += unmet_rate(queue, supply, idle, market)
        served = min(supply * tick_s, queue)
        queue -= served
        earned = served * price / TOKENS_PER_PRICE_UNIT * keep
        if serving_count:
            minute_earning += earned / tick_s / serving_count
        minute_prices.append(price)
        if (k + 1) % ticks_per_minute == 0:
            series.minute.append((k + 1) * tick_s / 60.0)
            series.price.append(price)
            series.price_min.append(min(minute_prices))
            series.price_max.append(max(minute_prices))
            series.target.append(targets[-1] / NANO_PER_NEURO)
            series.serving.append(serving_count)
            series.supply.append(supply)
            series.arrivals.append(arrival_rate)
            series.queue.append(queue)
            series.earning_per_server.append(minute_earning / ticks_per_minute)
            series.phase.append(phase_name)
            series.unmet.append(minute_unmet / ticks_per_minute)
            minute_earning = minute_unmet = 0.0
            minute_prices = []
    figures = [_phase_figures(series, p, params, market) for p in params.phases]
    return EconomicsResult(
        label=label or describe(market), market=market, params=params, series=series,
        phases=figures, break_even_price=break_even_price(params, market),
        floor_price=market.min_price)


def describe(market: MarketConfig) -> str:
    """A short name of a market variant, e.g. 'seed' or 'normalized, max_step 0.05'."""
    name = market.curve
    if market.clearing:
        return "clearing"
    if market.max_step is not None:
        name += f", max_step {market.max_step:g}"
    return name


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def _phase_figures(series: Series, phase: Phase, params: EconomicsParams,
                   market: MarketConfig) -> PhaseFigures:
    idx = [i for i, name in enumerate(series.phase) if name == phase.name]
    settled = idx[len(idx) // 2:]
    prices = [series.price[i] for i in settled]
    median = _percentile(prices, 0.5)
    whole_max = max(series.price_max[i] for i in idx)
    servers = [series.serving[i] for i in settled]
    earnings = [series.earning_per_server[i] for i in settled if series.serving[i] > 0]
    train = params.training_reward_per_s
    ratio = (sum(earnings) / len(earnings) / train) if earnings and train > 0 else None
    crossings = sum(1 for a, b in zip(prices, prices[1:]) if (a - median) * (b - median) < 0)
    hours = len(settled) / 60.0
    utils = []
    for i in settled:
        s, q = series.supply[i], series.queue[i]
        utils.append((q / market.target_response_s) / s if s > 0 else (math.inf if q > 0 else 0.0))
    finite = [u for u in utils if math.isfinite(u)]
    arrived = sum(series.arrivals[i] for i in settled)
    unmet = sum(series.unmet[i] for i in settled) if series.unmet else 0.0
    return PhaseFigures(
        name=phase.name, demand=phase.demand,
        price_mean=sum(prices) / len(prices), price_median=median,
        price_p10=_percentile(prices, 0.1), price_p90=_percentile(prices, 0.9),
        price_min=min(series.price_min[i] for i in settled),
        price_max=max(series.price_max[i] for i in settled),
        serving_mean=sum(servers) / len(servers), profit_ratio=ratio,
        overshoot=(whole_max - median) / median if median > 0 else 0.0,
        oscillation_amplitude=(_percentile(prices, 0.9) - _percentile(prices, 0.1)) / 2,
        swings_per_hour=crossings / hours if hours > 0 else 0.0,
        utilization_mean=(sum(finite) / len(finite)) if finite else math.inf,
        unmet_share=unmet / arrived if arrived > 0 else 0.0,
        settle_minutes=_settle_minutes(series, idx, median),
    )


def _settle_minutes(series: Series, idx: Sequence[int], median: float,
                    band: float = 0.10) -> float | None:
    """Minutes from the phase's start until every later minute of the phase keeps its lowest and
    highest price within ±band of the settled median; None if the last minute is still outside."""
    if not idx or median <= 0:
        return None
    lo, hi = median * (1 - band), median * (1 + band)
    first_ok = None
    for i in idx:
        inside = lo <= series.price_min[i] and series.price_max[i] <= hi
        if inside and first_ok is None:
            first_ok = i
        elif not inside:
            first_ok = None
    if first_ok is None:
        return None
    # Samples are one per minute: the index difference is the minutes spent outside the band.
    return float(first_ok - idx[0])


# ---------------------------------------------------------------------------------------------
# The design's claims, checked


@dataclass(frozen=True)
class Claim:
    """One claim of the design note and the range that counts as reproducing it."""

    key: str
    text: str
    low: float
    high: float


CLAIMS = (
    Claim("bootstrap", "price ~0.01 at bootstrap", 0.005, 0.02),
    Claim("growth", "price ~0.3 in growth", 0.2, 0.4),
    Claim("mature", "price 0.6-0.8 when mature", 0.6, 0.8),
    Claim("ratio", "equilibrium inference profit ~50 % of training profit", 0.4, 0.6),
)


def check_claims(result: EconomicsResult) -> list[dict[str, Any]]:
    """Each claim with the model's number and whether the model reproduces it. A phase price is
    reproduced when the settled median and mean both lie in the claim's range and the price holds
    still (p10-p90 narrower than half the range's centre): the design claims a price level, not
    the average of a swing. The ratio is the mature phase's mean over serving nodes."""
    by_name = {f.name: f for f in result.phases}
    rows = []
    for claim in CLAIMS:
        note = ""
        if claim.key == "ratio":
            phase = by_name.get("mature") or result.phases[-1]
            value = phase.profit_ratio
            ok = value is not None and claim.low <= value <= claim.high
        else:
            phase = by_name.get(claim.key)
            value = phase.price_median if phase else None
            ok = False
            if phase is not None:
                centre = (claim.low + claim.high) / 2
                steady = phase.price_p90 - phase.price_p10 <= 0.5 * centre
                level = (claim.low <= phase.price_median <= claim.high
                         and claim.low <= phase.price_mean <= claim.high)
                ok = level and steady
                if not steady:
                    note = f"swings {phase.price_p10:.3f}-{phase.price_p90:.3f} (p10-p90)"
                elif not level and claim.low <= phase.price_median <= claim.high:
                    note = f"but mean {phase.price_mean:.3f}"
        rows.append({"claim": claim.text, "range": [claim.low, claim.high],
                     "model": value, "reproduced": ok, "note": note})
    return rows


def variants(base: MarketConfig, max_step: float = 0.05) -> list[MarketConfig]:
    """The market variants the report compares: seed and normalized curves, without and with a
    step cap."""
    return [
        base.replace(curve="seed", max_step=None),
        base.replace(curve="normalized", max_step=None),
        base.replace(curve="seed", max_step=max_step),
        base.replace(curve="normalized", max_step=max_step),
        base.replace(curve="clearing", max_step=None),
    ]


def result_to_dict(result: EconomicsResult) -> dict[str, Any]:
    """Figures (not the whole series) for report.json."""
    return {
        "label": result.label,
        "curve": result.market.curve,
        "max_step": result.market.max_step,
        "break_even_price": result.break_even_price,
        "floor_price": result.floor_price,
        "phases": [dataclasses.asdict(f) for f in result.phases],
        "claims": check_claims(result),
    }


__all__ = ["EconomicsParams", "EconomicsResult", "Phase", "PhaseFigures", "Series", "Claim",
           "CLAIMS", "DEFAULT_PHASES", "EconomicsError", "run", "check_claims", "variants",
           "break_even_price", "demand_level", "describe", "result_to_dict", "node_ask_nano",
           "unmet_rate"]
