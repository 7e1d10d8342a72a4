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
from typing import Iterable, Sequence

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.money import to_nano


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


def tick_of(t: float, config: MarketConfig) -> int:
    """Tick k = floor(t / tick_s)."""
    return math.floor(t / config.tick_s)


def tick_start(k: int, config: MarketConfig) -> float:
    """The time tick k starts at."""
    return k * config.tick_s
