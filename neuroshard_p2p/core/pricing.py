"""The price curve and its smoothing, as pure functions.

price per 1M tokens = P_min + (P_max − P_min) · σ(u − 1),  σ(x) = 1 / (1 + e^(−steepness·x)),
u = (demand tokens waiting / target_response_s) / supply tokens per second.

Floats live only inside the curve. Its output is rounded (half-even) to integer nano-NEURO per 1M
tokens, and the EMA and the step cap work on those integers with one correctly rounded float
expression each, so two machines that agree on supply and demand agree on the price bit for bit.
The smoothed price at tick k is a fold over the target prices of ticks k−W+1 … k, starting from the
oldest target: no hidden state, nothing for a late joiner to inherit.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from typing import Iterable, Sequence

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.timeline import whole_ms

#: Lower edges (nano-NEURO per 1M tokens) of the bid histogram an announcement carries on a
#: clearing network (protocol v2 §5.3, revision 2.1): bucket b holds the waiting tokens of the
#: requests whose max price m has EDGES[b] <= m < EDGES[b+1] (the last bucket has no upper
#: edge). A 1-2-5 series from 0.001 to 50 NEURO, plus 0: 16 buckets, fixed for every network so
#: that the wire format does not depend on the charter.
DEMAND_BUCKET_EDGES_NANO: tuple[int, ...] = (
    0, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 20_000_000, 50_000_000, 100_000_000,
    200_000_000, 500_000_000, 1_000_000_000, 2_000_000_000, 5_000_000_000, 10_000_000_000,
    20_000_000_000, 50_000_000_000)
DEMAND_BUCKETS = len(DEMAND_BUCKET_EDGES_NANO)


def sigmoid(x: float, steepness: float = 3.0) -> float:
    """σ(x) = 1 / (1 + e^(−steepness·x)), without overflow for large |x|."""
    z = -steepness * x
    if z > 700:  # e^z overflows a double; σ is 0 to double precision long before that
        return 0.0
    return 1.0 / (1.0 + math.exp(z))


def utilization(supply_tokens_per_sec: float, demand_tokens_waiting: float,
                target_response_s: float = 60.0) -> float:
    """u = (demand / target_response_s) / supply. Supply 0 with demand > 0 is u = ∞ (P_max);
    supply 0 and demand 0 is u = 0 (an empty market is not a congested one)."""
    if not (0 <= supply_tokens_per_sec < math.inf and 0 <= demand_tokens_waiting < math.inf):
        # NaN fails both comparisons: it would otherwise slip through the curve as P_min.
        raise ValueError(f"supply and demand must be finite and >= 0, got "
                         f"{supply_tokens_per_sec!r}, {demand_tokens_waiting!r}")
    if supply_tokens_per_sec == 0:
        return math.inf if demand_tokens_waiting > 0 else 0.0
    return (demand_tokens_waiting / target_response_s) / supply_tokens_per_sec


def curve_price(u: float, config: MarketConfig) -> float:
    """The dynamic target price in NEURO per 1M tokens at utilization u (never leaves bounds)."""
    p_min, p_max = config.min_price, config.max_price
    if math.isinf(u):
        return p_max
    s = sigmoid(u - 1.0, config.steepness)
    if config.curve == "normalized":
        # Rescale σ(u−1) on [σ(−1), 1) to [0, 1): u = 0 gives exactly P_min.
        s0 = sigmoid(-1.0, config.steepness)
        s = (s - s0) / (1.0 - s0)
    price = p_min + (p_max - p_min) * s
    return min(p_max, max(p_min, price))


def price_bounds_nano(config: MarketConfig) -> tuple[int, int]:
    """[P_min, P_max] in nano-NEURO per 1M tokens."""
    return to_nano(config.min_price), to_nano(config.max_price)


def target_price_nano(supply_tokens_per_sec: float, demand_tokens_waiting: float,
                      config: MarketConfig) -> int:
    """The unsmoothed price of a market state, nano-NEURO per 1M tokens. Fixed mode ignores
    supply and demand."""
    if not config.dynamic_pricing:
        return to_nano(config.fixed_price)
    if config.clearing:
        raise ValueError("a clearing network's price needs the asks and bids, not totals: "
                         "use clearing_price_nano")
    u = utilization(supply_tokens_per_sec, demand_tokens_waiting, config.target_response_s)
    lo, hi = price_bounds_nano(config)
    return min(hi, max(lo, to_nano(curve_price(u, config))))


def smooth_step(previous_nano: int, target_nano: int, config: MarketConfig) -> int:
    """One tick of the EMA, p_k = s·p_(k−1) + (1−s)·target_k, then the optional step cap
    |p_k − p_(k−1)| ≤ max(1, ⌊max_step · p_(k−1)⌋). Integers in, integer out."""
    lo, hi = price_bounds_nano(config)
    return _step(previous_nano, target_nano, config.smoothing, config.max_step, lo, hi)


def _step(previous_nano: int, target_nano: int, s: float, max_step: float | None,
          lo: int, hi: int) -> int:
    price = round(s * previous_nano + (1.0 - s) * target_nano)
    if max_step is not None:
        # At least 1 nano, or a price at 0 (min_price = 0) could never move again (EIP-1559
        # has the same floor on increases).
        cap = max(1, int(max_step * previous_nano))
        price = min(previous_nano + cap, max(previous_nano - cap, price))
    return min(hi, max(lo, price))


def smoothed_price(targets: Sequence[int] | Iterable[int], config: MarketConfig) -> int:
    """The smoothed price after a run of ticks, given their target prices oldest first: the fold
    starts from the oldest tick's target. In fixed mode it is the fixed price."""
    if not config.dynamic_pricing:
        return to_nano(config.fixed_price)
    lo, hi = price_bounds_nano(config)
    it = iter(targets)
    try:
        price = min(hi, max(lo, next(it)))
    except StopIteration:
        raise ValueError("smoothed_price needs at least one target") from None
    s, max_step = config.smoothing, config.max_step
    for target in it:
        price = _step(price, target, s, max_step, lo, hi)
    return price


def demand_bucket(max_price_nano: int) -> int:
    """The bid bucket of a request whose max price is `max_price_nano`: the largest b with
    DEMAND_BUCKET_EDGES_NANO[b] <= max_price_nano."""
    if max_price_nano < 0:
        raise ValueError(f"a max price is >= 0, got {max_price_nano}")
    return bisect_right(DEMAND_BUCKET_EDGES_NANO, max_price_nano) - 1


def demand_histogram(requests: Iterable[tuple[int, int]]) -> tuple[int, ...]:
    """Waiting tokens by bid bucket from (max_price_nano, tokens) pairs: what a gateway puts in
    its announcement on a clearing network."""
    buckets = [0] * DEMAND_BUCKETS
    for max_price_nano, tokens in requests:
        buckets[demand_bucket(max_price_nano)] += tokens
    return tuple(buckets)


def clearing_price_nano(offers: Iterable[tuple[int, int]], demand: Sequence[int],
                        config: MarketConfig) -> int:
    """The uniform clearing price (nano-NEURO per 1M tokens) of asks and bids, protocol v2 §7.7
    (revision 2.1). Integers only, so every peer computes it bit for bit.

    `offers` are (ask = min_price_nano, capacity tokens/s); `demand` the waiting tokens per bid
    bucket (DEMAND_BUCKET_EDGES_NANO), a bucket's tokens counting as willing to pay its lower
    edge. With S(p) = capacity of the offers asking <= p, D(p) = tokens of the buckets whose
    edge is >= p and T = target_response_s in ms, supply covers demand at p when
    S(p)·T >= D(p)·1000 (what the offers serve in target_response_s is at least what waits).
    The price is the lowest p in [P_min, P_max] at which supply covers demand; P_max if there is
    none. Consequences: no demand → P_min; demand but no supply → just above the highest bid
    (or P_max when that bid is at P_max or above); demand within the cheapest offer's reach →
    that offer's ask (or P_min if it asks less). Fixed mode ignores asks and bids."""
    if not config.dynamic_pricing:
        return to_nano(config.fixed_price)
    if len(demand) != DEMAND_BUCKETS:
        raise ValueError(f"demand has {len(demand)} buckets, expected {DEMAND_BUCKETS}")
    lo, hi = price_bounds_nano(config)
    t_ms = whole_ms(config.target_response_s, "target_response_s")
    # Covered(p) only changes at an ask (S steps up at p = ask) or just above an edge (D steps
    # down at p = edge + 1), so the lowest covered p is P_min or one of those points.
    steps: dict[int, int] = {}          # price → capacity that starts counting at it
    for ask, capacity in offers:
        if capacity > 0:
            point = ask if ask > lo else lo
            if point <= hi:
                steps[point] = steps.get(point, 0) + capacity
    drops: dict[int, int] = {}          # price → demand that stops counting at it
    waiting = 0
    for edge, tokens in zip(DEMAND_BUCKET_EDGES_NANO, demand):
        if tokens <= 0:
            continue
        if edge < lo:
            continue                    # below P_min: never counts at any price we may pick
        waiting += tokens
        if edge + 1 <= hi:
            drops[edge + 1] = drops.get(edge + 1, 0) + tokens
    supply = 0
    for point in sorted({lo, *steps, *drops}):
        supply += steps.get(point, 0)
        waiting -= drops.get(point, 0)
        if supply * t_ms >= waiting * 1000:
            return point
    return hi


def window_price(targets: Sequence[int], config: MarketConfig) -> int:
    """The price of a tick from the targets of its window, oldest first: the EMA fold of the
    curve modes; in the clearing mode the tick's own clearing price (the newest target), with
    no smoothing. A clearing price rests on an ask, so there is nothing to damp, and a smoothed
    price would differ from the price at which the book can match supply to demand now
    (measured by `neuroshard-simnet economics`: a median over the window left 0.13 % of the
    growth phase's demand unmet, the tick's own price none). `smoothing`, `max_step` and
    `window_ticks` do not apply."""
    if config.clearing:
        if not targets:
            raise ValueError("window_price needs at least one target")
        return targets[-1]
    return smoothed_price(targets, config)


def tick_of(t: float, config: MarketConfig) -> int:
    """Tick k = floor(t / tick_s)."""
    return math.floor(t / config.tick_s)


def tick_start(k: int, config: MarketConfig) -> float:
    """The time tick k starts at."""
    return k * config.tick_s
