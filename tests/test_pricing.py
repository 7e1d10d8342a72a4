"""The price curve, its smoothing and the market configuration."""

from __future__ import annotations

import math
from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from neuroshard_p2p.config import ConfigError, MarketConfig
from neuroshard_p2p.core.pricing import (curve_price, smooth_step, smoothed_price,
                                         target_price_nano, tick_of, tick_start, utilization)
from neuroshard_p2p.money import to_nano

SEED = MarketConfig()
NORMALIZED = MarketConfig(curve="normalized")


def sigma(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-3.0 * x))


def seed_formula(u: float) -> int:
    """P_min + (P_max − P_min)·σ(u − 1), written out independently of the module."""
    return round((0.01 + 0.99 * sigma(u - 1.0)) * 1e9)


def normalized_formula(u: float) -> int:
    s0 = sigma(-1.0)
    return round((0.01 + 0.99 * (sigma(u - 1.0) - s0) / (1.0 - s0)) * 1e9)


# u, seed price, normalized price (nano-NEURO per 1M tokens)
CURVE_VALUES = [
    (0.0, 56_951_614, 10_000_000),
    (0.1667, 85_106_539, 39_556_675),
    (0.85, 395_467_158, 365_369_240),
    (1.0, 505_000_000, 480_355_401),
    (8.5, 1_000_000_000, 1_000_000_000),
]

# The seed doc's states: (supply tokens/s, demand tokens waiting) -> u = d / 60 / s.
STATE_VALUES = [
    ((1000, 0), 0.0, 56_951_614, 10_000_000),
    ((1000, 10_000), 1 / 6, 85_099_598, 39_549_389),          # seed example: u = 0.1667
    ((10_000, 510_000), 0.85, 395_467_158, 365_369_240),      # design note, test 3
    ((1000, 60_000), 1.0, 505_000_000, 480_355_401),
    ((1000, 510_000), 8.5, 1_000_000_000, 1_000_000_000),     # design note, test 2
]


@pytest.mark.parametrize("u, seed_nano, normalized_nano", CURVE_VALUES)
def test_curve_exact_values(u: float, seed_nano: int, normalized_nano: int) -> None:
    assert seed_formula(u) == seed_nano
    assert normalized_formula(u) == normalized_nano
    assert to_nano(curve_price(u, SEED)) == seed_nano
    assert to_nano(curve_price(u, NORMALIZED)) == normalized_nano


@pytest.mark.parametrize("state, u, seed_nano, normalized_nano", STATE_VALUES)
def test_target_price_of_states(state: tuple[int, int], u: float, seed_nano: int,
                                normalized_nano: int) -> None:
    supply, demand = state
    assert utilization(supply, demand, 60.0) == pytest.approx(u, abs=1e-15)
    assert seed_formula(u) == seed_nano
    assert target_price_nano(supply, demand, SEED) == seed_nano
    assert target_price_nano(supply, demand, NORMALIZED) == normalized_nano


def test_seed_curve_at_zero_is_not_min_price() -> None:
    # Why the normalized curve exists: the seed's formula never reaches P_min (0.0570 at u = 0).
    assert target_price_nano(500, 0, SEED) == 56_951_614
    assert target_price_nano(500, 0, NORMALIZED) == to_nano(0.01)


def test_supply_zero_edge_cases() -> None:
    assert utilization(0, 5, 60.0) == math.inf
    assert utilization(0, 0, 60.0) == 0.0
    for config in (SEED, NORMALIZED):
        assert target_price_nano(0, 1, config) == 1_000_000_000
        assert target_price_nano(0, 0, config) == target_price_nano(1000, 0, config)


@pytest.mark.parametrize("supply, demand", [(-1, 0), (0, -1), (math.nan, 0), (0, math.nan),
                                            (math.inf, 0), (10, math.inf)])
def test_utilization_rejects_nonsense(supply: float, demand: float) -> None:
    with pytest.raises(ValueError, match="finite and >= 0"):
        utilization(supply, demand, 60.0)


configs = st.builds(
    MarketConfig,
    min_price=st.sampled_from([0.0, 0.001, 0.01, 0.2]),
    max_price=st.sampled_from([0.5, 1.0, 3.0]),
    steepness=st.floats(0.1, 20.0),
    curve=st.sampled_from(["seed", "normalized"]),
    fixed_price=st.just(0.3),
)
amounts = st.integers(0, 10**12)


@given(configs, amounts, amounts, amounts)
def test_price_monotone_in_demand_antitone_in_supply_and_bounded(
        config: MarketConfig, supply: int, demand: int, more: int) -> None:
    lo, hi = to_nano(config.min_price), to_nano(config.max_price)
    price = target_price_nano(supply, demand, config)
    assert lo <= price <= hi
    assert target_price_nano(supply, demand + more, config) >= price
    assert target_price_nano(supply + more, demand, config) <= price


@given(st.floats(0, 1e6, allow_nan=False), st.sampled_from([SEED, NORMALIZED]))
def test_curve_within_bounds(u: float, config: MarketConfig) -> None:
    assert config.min_price <= curve_price(u, config) <= config.max_price


# ------------------------------------------------------------------ smoothing


def test_smooth_step_exact() -> None:
    # 0.7 · 100_000_000 + 0.3 · 500_000_000 = 220_000_000
    assert smooth_step(100_000_000, 500_000_000, SEED) == 220_000_000
    assert smoothed_price([100_000_000, 500_000_000], SEED) == 220_000_000
    # Fold from the oldest: 220M, then 0.7·220M + 0.3·500M = 304M.
    assert smoothed_price([100_000_000, 500_000_000, 500_000_000], SEED) == 304_000_000


def test_smoothed_price_of_one_target_is_the_target() -> None:
    assert smoothed_price([123_456_789], SEED) == 123_456_789
    with pytest.raises(ValueError, match="at least one target"):
        smoothed_price([], SEED)


@given(st.integers(10_000_000, 1_000_000_000), st.integers(10_000_000, 1_000_000_000),
       st.integers(0, 80))
def test_ema_converges_to_the_target(start: int, target: int, ticks: int) -> None:
    price = smoothed_price([start] + [target] * ticks, SEED)
    # Each tick keeps 70 % of the distance; rounding to integers adds at most one nano per tick.
    assert abs(price - target) <= 0.7 ** ticks * abs(start - target) + 1 / 0.3
    if ticks >= 80:
        assert abs(price - target) <= 2


def test_a_full_window_of_one_target_is_that_target() -> None:
    for target in (10_000_000, 56_951_614, 999_999_999, 1_000_000_000):
        assert smoothed_price([target] * SEED.window_ticks, SEED) == target


@given(st.lists(st.integers(0, 2_000_000_000), min_size=1, max_size=60),
       st.sampled_from([0.01, 0.05, 0.125, 0.5]), st.sampled_from([0.0, 0.01]))
def test_max_step_bounds_every_tick_of_the_fold(targets: list[int], cap: float,
                                                min_price: float) -> None:
    config = MarketConfig(max_step=cap, min_price=min_price)
    lo, hi = to_nano(min_price), to_nano(1.0)
    price = smoothed_price(targets[:1], config)
    assert lo <= price <= hi
    for target in targets[1:]:
        following = smooth_step(price, target, config)
        assert abs(following - price) <= max(1, int(cap * price))
        assert lo <= following <= hi
        price = following
    assert price == smoothed_price(targets, config)


def test_max_step_can_leave_a_price_of_zero() -> None:
    # With min_price 0 a 12.5 % cap of 0 would freeze the price for ever; the cap is >= 1 nano.
    config = MarketConfig(min_price=0.0, max_step=0.125)
    assert smooth_step(0, 1_000_000_000, config) == 1
    assert smooth_step(8, 1_000_000_000, config) == 9
    assert smooth_step(800, 1_000_000_000, config) == 900


def test_short_window_with_max_step_would_jump() -> None:
    """Why window_ticks must be long enough for max_step: with a 32-tick window and a 5 % cap, a
    price falling from P_max has only reached 0.95^31 ≈ 0.2 when the P_max tick leaves the
    window, and the next fold starts at P_min: a 95 % drop in one tick."""
    unchecked = MarketConfig(max_step=0.05)   # window derived: long enough
    targets: deque[int] = deque([1_000_000_000], maxlen=32)
    prices = []
    for _ in range(40):
        targets.append(10_000_000)
        prices.append(smoothed_price(targets, unchecked))
    worst = max(abs(b - a) / a for a, b in zip(prices, prices[1:]))
    assert worst > 0.9
    # The derived window keeps the same fall within the cap on every tick.
    assert unchecked.window_ticks == 117
    targets = deque([1_000_000_000], maxlen=unchecked.window_ticks)
    previous = smoothed_price(targets, unchecked)
    for _ in range(3 * unchecked.window_ticks):
        targets.append(10_000_000)
        price = smoothed_price(targets, unchecked)
        assert abs(price - previous) <= max(1, int(0.05 * previous))
        previous = price
    assert previous == 10_000_000


@given(st.sampled_from([0.01, 0.05, 0.125, 0.5, 1.0]), st.sampled_from([0.0, 0.3, 0.7, 0.9]),
       st.sampled_from([0.001, 0.01, 0.1]), st.integers(0, 2), st.integers(0, 2))
@settings(max_examples=60, deadline=None)
def test_derived_window_keeps_the_cap_across_a_move(cap: float, smoothing: float,
                                                    min_price: float, start: int,
                                                    end: int) -> None:
    config = MarketConfig(max_step=cap, smoothing=smoothing, min_price=min_price)
    levels = [to_nano(min_price), 300_000_000, 1_000_000_000]
    targets: deque[int] = deque([levels[start]] * config.window_ticks,
                                maxlen=config.window_ticks)
    previous = smoothed_price(targets, config)
    for _ in range(2 * config.window_ticks):
        targets.append(levels[end])
        price = smoothed_price(targets, config)
        assert abs(price - previous) <= max(1, int(cap * previous))
        previous = price


def test_fixed_mode_ignores_supply_and_demand() -> None:
    config = MarketConfig(dynamic_pricing=False, fixed_price=0.25)
    for supply, demand in [(0, 0), (0, 10**9), (10**6, 0), (1000, 510_000)]:
        assert target_price_nano(supply, demand, config) == 250_000_000
    assert smoothed_price([10_000_000, 1_000_000_000], config) == 250_000_000
    assert config.mode == "fixed" and SEED.mode == "dynamic"


def test_ticks() -> None:
    assert tick_of(0.0, SEED) == 0
    assert tick_of(12.999, SEED) == 12
    assert tick_of(13.0, SEED) == 13
    assert tick_of(-0.5, SEED) == -1
    half = MarketConfig(tick_s=0.5)
    assert tick_of(1.74, half) == 3
    assert tick_start(3, half) == 1.5


# ------------------------------------------------------------------ configuration


def test_defaults_are_the_design() -> None:
    c = MarketConfig()
    assert (c.dynamic_pricing, c.fixed_price, c.min_price, c.max_price) == (True, 0.1, 0.01, 1.0)
    assert (c.steepness, c.target_response_s, c.curve, c.smoothing) == (3.0, 60.0, "seed", 0.7)
    assert (c.max_step, c.window_ticks, c.tick_s) == (None, 32, 1.0)
    assert (c.capacity_timeout_s, c.claim_timeout_s, c.burn_rate) == (60.0, 60.0, 0.05)
    assert (c.max_tokens_per_minute, c.max_node_tokens_per_s) == (1_000_000, 50_000)


def test_config_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text("""
[node]
listen = "whatever: not the market's business"

[market]
curve = "normalized"
min_price = 0.02
max_price = 2
steepness = 4
target_response_s = 30
smoothing = 0.5
max_step = 0.125
tick_s = 2
burn_rate = 0.1
dynamic_pricing = true
""")
    c = MarketConfig.from_toml(str(path))
    assert c.curve == "normalized"
    assert (c.min_price, c.max_price, c.steepness) == (0.02, 2.0, 4.0)
    assert isinstance(c.max_price, float) and isinstance(c.target_response_s, float)
    assert (c.target_response_s, c.smoothing, c.max_step, c.tick_s) == (30.0, 0.5, 0.125, 2.0)
    assert c.burn_rate == 0.1
    # Crossing 0.02 -> 2.0 at 12.5 % a tick: ceil(ln 100 / ln 1.125) = 40 ticks; then the EMA at
    # 0.5 needs ceil(ln(0.125 · 0.02 / 1.98) / ln 0.5) = 10 ticks to settle within one step.
    assert c.window_ticks == c.min_window_ticks() == 50
    assert c.claim_timeout_s == 60.0   # not in the file: the default


def test_config_from_toml_without_market_table(tmp_path: Path) -> None:
    path = tmp_path / "empty.toml"
    path.write_text("[node]\nx = 1\n")
    assert MarketConfig.from_toml(str(path)) == MarketConfig()


@pytest.mark.parametrize("text, message", [
    ("[market]\nsmoothness = 0.7\n", "unknown setting 'smoothness'"),
    ("[market]\nsteepness = \"3\"\n", "steepness has the wrong type"),
    ("[market]\ndynamic_pricing = 1\n", "dynamic_pricing has the wrong type"),
    ("[market]\nwindow_ticks = 32.5\n", "window_ticks has the wrong type"),
    ("[market]\nmin_price = 1.0\nmax_price = 0.5\n", "need 0 <= min_price < max_price"),
    ("[market]\ncurve = \"linear\"\n", "curve must be one of"),
    ("[market]\nsteepness = nan\n", "steepness must be finite"),
    ("[market]\nfixed_price = 5.0\n", "fixed_price must lie within"),
    ("[market]\nsmoothing = 1.0\n", "smoothing must be in"),
    ("[market]\nwindow_ticks = 32\nmax_step = 0.05\n",
     "window_ticks 32 is too short for max_step 0.05: the price needs 117 ticks"),
    ("[market]\nmax_step = 0.0001\n", "more than the 4096-tick window limit"),
    ("[market]\nwindow_auto = true\n", "unknown setting 'window_auto'"),
    ("[market]\ntick_s = 0.0005\n", "tick_s must be a whole number of milliseconds"),
    ("[market]\ncapacity_timeout_s = 60.0004\n",
     "capacity_timeout_s must be a whole number of milliseconds"),
    ("[market]\ntick_s = 1e-300\n", "tick_s must be at least 1 ms"),
    ("market = 3\n", "[market] must be a table"),
    ("[market\n", "not valid TOML"),
])
def test_bad_config_is_a_clear_error(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        MarketConfig.from_toml(str(path))
    assert message in str(info.value)


def test_coerce_setting_is_the_one_type_check_of_config_tables() -> None:
    """TOML writes 60 for 60.0 and one string where a list is meant; anything else of the wrong
    type is a ConfigError naming the table, the key and the type expected."""
    from neuroshard_p2p.config import coerce_setting
    assert coerce_setting("market", "tick_s", 2, 1.0) == 2.0
    assert isinstance(coerce_setting("market", "tick_s", 2, 1.0), float)
    assert coerce_setting("market", "window_ticks", 40, 0) == 40
    assert coerce_setting("market", "max_step", 1, None) == 1.0
    assert coerce_setting("market", "curve", "seed", "x") == "seed"
    assert coerce_setting("node", "listen", "/ip4/1", ("/ip4/0",)) == ("/ip4/1",)
    assert coerce_setting("node", "listen", ["/ip4/1", "/ip4/2"], ()) == ("/ip4/1", "/ip4/2")
    for value, default, expected in [(True, 1.0, "float"), ("1", 1, "int"), (1, True, "bool"),
                                     (1, "x", "str"), (["a", 1], (), "tuple"),
                                     ("0.1", None, "float or none")]:
        with pytest.raises(ConfigError) as info:
            coerce_setting("node", "k", value, default)
        assert str(info.value) == f"[node] k has the wrong type: {value!r} (expected {expected})"


def test_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        MarketConfig.from_toml(str(tmp_path / "nope.toml"))


def test_window_is_derived_for_max_step_and_again_on_replace() -> None:
    assert MarketConfig().window_ticks == 32
    capped = MarketConfig().replace(max_step=0.125)
    assert capped.window_ticks == capped.min_window_ticks() == 59
    assert capped.replace(max_step=0.05).window_ticks == 117
    assert capped.replace(max_step=None).window_ticks == 32
    explicit = MarketConfig(window_ticks=40)
    assert explicit.replace(smoothing=0.5).window_ticks == 40
    with pytest.raises(ConfigError, match="use window_ticks >= 59"):
        explicit.replace(max_step=0.125)
    # Fixed prices do not move, so no window is needed for a cap.
    assert MarketConfig(dynamic_pricing=False, max_step=0.0001).window_ticks == 32
