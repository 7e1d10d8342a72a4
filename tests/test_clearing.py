"""The clearing mode (issue 18, protocol v2 revision 2.1): the uniform clearing price of asks and
bids as a pure integer function, its laws, and the economics figures it was built to reach."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import ConfigError, MarketConfig
from neuroshard_p2p.core.pricing import (DEMAND_BUCKET_EDGES_NANO, DEMAND_BUCKETS,
                                         clearing_price_nano, demand_bucket, demand_histogram,
                                         target_price_nano, window_price)
from simnet import economics as econ
from simnet.scenario import load

CLEARING = MarketConfig(curve="clearing")
LO, HI = 10_000_000, 1_000_000_000        # P_min 0.01, P_max 1.0 in nano per 1M tokens
T_MS = 60_000


def bids(**tokens_at_edge: int) -> list[int]:
    """A bid histogram from {edge in nano as 'e<nano>': tokens}."""
    out = [0] * DEMAND_BUCKETS
    for key, tokens in tokens_at_edge.items():
        out[DEMAND_BUCKET_EDGES_NANO.index(int(key[1:]))] += tokens
    return out


def covered(offers: list[tuple[int, int]], demand: list[int], p: int) -> bool:
    """The definition, written out: S(p)·T >= D(p)·1000."""
    supply = sum(c for ask, c in offers if ask <= p and c > 0)
    waiting = sum(t for edge, t in zip(DEMAND_BUCKET_EDGES_NANO, demand) if edge >= p)
    return supply * T_MS >= waiting * 1000


def test_bucket_edges_are_a_fixed_1_2_5_series() -> None:
    assert DEMAND_BUCKETS == 16
    assert DEMAND_BUCKET_EDGES_NANO[:4] == (0, 1_000_000, 2_000_000, 5_000_000)
    assert DEMAND_BUCKET_EDGES_NANO[-1] == 50_000_000_000
    assert list(DEMAND_BUCKET_EDGES_NANO) == sorted(set(DEMAND_BUCKET_EDGES_NANO))
    assert demand_bucket(0) == 0 and demand_bucket(999_999) == 0 and demand_bucket(1_000_000) == 1
    assert demand_bucket(HI) == 10 and demand_bucket(HI - 1) == 9
    assert demand_bucket(2**63 - 1) == 15
    assert demand_histogram([(HI, 500), (300_000_000, 7), (HI + 5, 1)]) == tuple(
        bids(e1000000000=501, e200000000=7))


def test_empty_sides_ties_and_bounds() -> None:
    none = [0] * DEMAND_BUCKETS
    # No demand: P_min, whatever is offered.
    assert clearing_price_nano([], none, CLEARING) == LO
    assert clearing_price_nano([(400_000_000, 1000)], none, CLEARING) == LO
    # Demand the cheapest offer covers: its ask (P_min when it asks less).
    d = bids(e1000000000=60_000)                       # 60,000 tokens bid up to 1.0
    assert clearing_price_nano([(352_000_000, 1000)], d, CLEARING) == 352_000_000
    assert clearing_price_nano([(1, 1000)], d, CLEARING) == LO
    # Exactly covered (1000 tokens/s × 60 s = 60,000 tokens) is covered: ties go to the lower price.
    assert clearing_price_nano([(300_000_000, 999), (400_000_000, 1)], d, CLEARING) == 400_000_000
    assert clearing_price_nano([(300_000_000, 1000), (400_000_000, 1)], d, CLEARING) == 300_000_000
    # Two offers at one ask add up.
    assert clearing_price_nano([(300_000_000, 500), (300_000_000, 500)], d, CLEARING) == 300_000_000
    # Not enough supply at any price up to P_max: P_max.
    assert clearing_price_nano([(300_000_000, 999)], d, CLEARING) == HI
    # Demand but no supply, bids below P_max: just above the highest bid (nothing trades).
    assert clearing_price_nano([], bids(e200000000=60_000), CLEARING) == 200_000_001
    # An ask above P_max never counts; bids under P_min never count.
    assert clearing_price_nano([(HI + 1, 10**9)], d, CLEARING) == HI
    assert clearing_price_nano([], bids(e5000000=10**9), CLEARING) == LO
    # The highest bids leave first: supply covers the bids at 0.5 and up from 0.2 + 1 nano on.
    d2 = bids(e200000000=60_000, e500000000=60_000)
    assert clearing_price_nano([(100_000_000, 1000)], d2, CLEARING) == 200_000_001
    # Fixed mode ignores asks and bids.
    assert clearing_price_nano([], d, CLEARING.replace(dynamic_pricing=False)) == 100_000_000


def test_the_clearing_value_is_a_charter_value_that_leaves_the_testnet_alone() -> None:
    testnet = builtin("testnet")
    assert testnet.network_id == "testnet-3094f19bc2e8b045"
    clearing = testnet.with_params(curve="clearing")
    assert clearing.market.clearing and clearing.network_id != testnet.network_id
    assert not MarketConfig(curve="clearing", dynamic_pricing=False).clearing
    with pytest.raises(ConfigError, match="target_response_s"):
        MarketConfig(curve="clearing", target_response_s=60.0004)
    with pytest.raises(ValueError, match="asks and bids"):
        target_price_nano(1000, 1000, CLEARING)
    # No smoothing: a tick's price is its own clearing price.
    assert window_price([5, 7, 30_000_000], CLEARING) == 30_000_000


offers_st = st.lists(st.tuples(st.integers(0, 2 * HI), st.integers(0, 100_000)), max_size=12)
demand_st = st.lists(st.integers(0, 10**8), min_size=DEMAND_BUCKETS, max_size=DEMAND_BUCKETS)


@settings(max_examples=300, deadline=None)
@given(offers_st, demand_st)
def test_the_price_is_the_lowest_covered_price(offers: list[tuple[int, int]],
                                               demand: list[int]) -> None:
    p = clearing_price_nano(offers, demand, CLEARING)
    assert LO <= p <= HI
    if covered(offers, demand, p):
        assert p == LO or not covered(offers, demand, p - 1)
    else:
        assert p == HI  # nothing is covered up to P_max
        assert not any(covered(offers, demand, q)
                       for q in {LO, HI, *(a for a, _ in offers if LO <= a <= HI)})


@settings(max_examples=200, deadline=None)
@given(offers_st, demand_st, st.tuples(st.integers(0, 2 * HI), st.integers(1, 100_000)),
       st.integers(0, DEMAND_BUCKETS - 1), st.integers(1, 10**8), st.randoms())
def test_more_supply_never_raises_it_more_demand_never_lowers_it_order_is_irrelevant(
        offers: list[tuple[int, int]], demand: list[int], extra: tuple[int, int], bucket: int,
        tokens: int, rnd: object) -> None:
    p = clearing_price_nano(offers, demand, CLEARING)
    assert clearing_price_nano([*offers, extra], demand, CLEARING) <= p
    more = list(demand)
    more[bucket] += tokens
    assert clearing_price_nano(offers, more, CLEARING) >= p
    shuffled = list(offers)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert clearing_price_nano(shuffled, demand, CLEARING) == p


# ---------------------------------------------------------------------------------------------
# Economics: the done-when figures of issue 18, from the shipped `phases` scenario, seed 1


def test_economics_clearing_mode_reaches_the_issue_figures_and_the_curve_is_unchanged() -> None:
    scenario = load("phases")
    params = econ.EconomicsParams.from_mapping(dict(scenario.economics))
    base = scenario.market_config()
    clearing = econ.run(base.replace(curve="clearing"), params)
    lowest_ask = min(econ.node_ask_nano(params, clearing.market, c) for c in _capacities(params))
    by_name = {f.name: f for f in clearing.phases}
    # Bootstrap rests at the lowest ask instead of swinging to P_max.
    boot = by_name["bootstrap"]
    assert boot.price_p10 == boot.price_p90 == boot.price_max == lowest_ask / 1e9
    for name in ("growth", "mature"):
        f = by_name[name]
        assert f.price_median * 0.9 <= f.price_p10 <= f.price_p90 <= f.price_median * 1.1
        assert f.swings_per_hour <= 2
        assert f.overshoot <= 0.10
    for f in clearing.phases:
        assert f.unmet_share == 0.0  # no demand unmet that an idle node would serve at its ask
    # The seed curve's figures are today's (the issue's numbers), not re-tuned.
    seed = econ.run(base.replace(curve="seed", max_step=None), params)
    boot, growth = seed.phases[0], seed.phases[1]
    assert (round(boot.price_p10, 3), round(boot.price_p90, 3)) == (0.058, 0.889)
    assert round(boot.swings_per_hour, 1) == 25.5 and round(boot.overshoot * 100) == 1507
    assert (round(growth.price_p10, 3), round(growth.price_p90, 3)) == (0.156, 0.504)
    assert round(growth.overshoot * 100) == 217


def _capacities(params: econ.EconomicsParams) -> list[float]:
    import random
    rng = random.Random(params.seed)
    spread = params.capacity_spread
    return [params.capacity * (1 - spread + 2 * spread * rng.random())
            for _ in range(params.nodes)]
