"""The price vectors against core/pricing.py and the merged view.

- `protocols/vectors/price.json` (v1) → `curve`, `ema`: the target price (§7.2) and the smoothed
  price (§7.3) do not depend on the wire and did not change in v2 (market-v2.md §7.2, §7.3 point
  to them), so v1's vectors stay the vectors of both versions.
- `protocols/vectors/v2/price.json` → `view`: the same announcements, expected ticks and clock as
  v1's `view`, in v2 bytes, on a charter (simnet with a window of 4 ticks and small caps:
  identity_work_bits 0, the per-signer caps of v2 not reached, so the view counts what v1 did).

The vectors are data (the generators compute them from the text of the specs with their own
code); this test reads the JSON only and asks the project for the same integers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from neuroshard_p2p import wire
from neuroshard_p2p.charter import Charter
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import smooth_step, smoothed_price, target_price_nano
from neuroshard_p2p.view import MarketView

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors"
PRICE = json.loads((VECTORS / "price.json").read_text("utf-8"))        # v1: curve, ema
VIEW = json.loads((VECTORS / "v2" / "price.json").read_text("utf-8"))["view"]
VIEW_CHARTER = Charter.from_toml(VIEW["charter"]["toml"])


def config(overrides: dict[str, Any]) -> MarketConfig:
    return MarketConfig(**{k: v for k, v in overrides.items() if k in PRICE["defaults"]})


def test_defaults_are_the_configs_defaults() -> None:
    default = MarketConfig()
    assert {name: getattr(default, name) for name in PRICE["defaults"]} == PRICE["defaults"]


@pytest.mark.parametrize("vector", PRICE["curve"]["vectors"], ids=lambda v: v["note"][:40])
def test_curve(vector: dict[str, Any]) -> None:
    c = config(PRICE["curve"]["configs"][vector["config"]])
    assert target_price_nano(vector["supply"], int(vector["demand"]), c) == vector["target_nano"]


@pytest.mark.parametrize("vector", PRICE["ema"]["vectors"], ids=lambda v: v["note"][:40])
def test_ema_fold(vector: dict[str, Any]) -> None:
    c = config(PRICE["ema"]["configs"][vector["config"]])
    targets, prices = vector["targets"], vector["prices"]
    assert [smoothed_price(targets[:n], c) for n in range(1, len(targets) + 1)] == prices
    if c.dynamic_pricing:  # the fold is the first target, then one smooth_step per tick
        assert [smooth_step(p, t, c) for p, t in zip(prices, targets[1:])] == prices[1:]


def test_view_charter_is_the_published_one() -> None:
    """The charter the view vectors count under: its hash and params as published, open, no
    work ramp."""
    charter = VIEW["charter"]
    assert (VIEW_CHARTER.hash.hex(), VIEW_CHARTER.network_id) == (charter["hash"],
                                                                 charter["network_id"])
    assert VIEW_CHARTER.params == charter["params"]
    assert not VIEW_CHARTER.members and VIEW_CHARTER.market.identity_work_bits == 0


def view_with_vector_announcements() -> MarketView:
    view = MarketView(VIEW_CHARTER.market)
    for m in VIEW["announcements"]:
        view.merge_message(wire.decode(bytes.fromhex(m["wire"]), m["issued_at_ms"] / 1000))
    return view


def test_view_derived_bounds() -> None:
    view = MarketView(VIEW_CHARTER.market)
    assert (view.max_per_signer, view.horizon_ms) == (VIEW["keep"], VIEW["horizon_ms"])


@pytest.mark.parametrize("row", VIEW["ticks"], ids=lambda r: str(r["tick"]))
def test_view_tick(row: dict[str, Any]) -> None:
    view = view_with_vector_announcements()
    tick = view.price_at_tick(row["tick"])
    instant = view.evaluation_ms(row["tick"])
    stats = view.stats_at_ms(instant)
    assert (instant, tick.supply, tick.demand, stats.available_nodes, tick.target_nano,
            tick.price_nano) == (row["evaluated_at_ms"], row["supply"], row["demand"],
                                 row["available_nodes"], row["target_nano"], row["price_nano"])
    assert (stats.supply_tokens_per_sec, stats.demand_tokens_waiting) == (row["supply"],
                                                                          row["demand"])


def test_view_any_arrival_order() -> None:
    """The view is a function of the set: reversed arrival gives the same ticks."""
    view = MarketView(VIEW_CHARTER.market)
    for m in reversed(VIEW["announcements"]):
        view.merge_message(wire.decode(bytes.fromhex(m["wire"]), m["issued_at_ms"] / 1000))
    assert [view.price_at_tick(r["tick"]).price_nano for r in VIEW["ticks"]] == [
        r["price_nano"] for r in VIEW["ticks"]]


@pytest.mark.parametrize("entry", VIEW["clock"], ids=lambda e: str(e["now_s"]))
def test_clock_to_tick(entry: dict[str, Any]) -> None:
    view = view_with_vector_announcements()
    assert view.price_at(entry["now_s"]).tick == entry["tick"]
    assert entry["now_ms"] // view.tick_ms == entry["tick"]


def test_keep_is_computed_on_integer_ms() -> None:
    """§7.1: keep = W + ⌈settle / tick⌉ + 8 on integer ms. In float seconds 1.1 / 0.1 is
    11.000000000000002, and its ceiling (12) would retain one announcement more than peers."""
    c = MarketConfig(settle_delay_s=1.1, tick_s=0.1)
    assert MarketView(c).max_per_signer == c.window_ticks + 11 + 8 == 51
    assert MarketView(MarketConfig()).max_per_signer == 42


def test_every_rounding_and_rule_is_pinned_by_some_vector() -> None:
    """Each rounding of §7.2–§7.4 and each counting rule of §7.1 is told apart from its plausible
    mistake by at least one vector (the generator computes `pins` by running the mistake), so a
    regeneration cannot silently lose the vector that catches it."""
    rows = [*PRICE["curve"]["vectors"], *PRICE["ema"]["vectors"], *VIEW["ticks"], *VIEW["clock"]]
    pinned = {pin for row in rows for pin in row["pins"]}
    assert pinned == {
        "N(x) rounds half-even, not truncation",
        "N(x) rounds ties to even, not half up",
        "the EMA rounds ties to even, not half up",
        "the EMA rounds to the nearest integer, not truncation",
        "the EMA is the float64 expression s·prev + (1.0 − s)·target, not exact decimal "
        "arithmetic",
        "the step cap truncates max_step·prev, not rounds",
        "the step cap is at least 1 nano",
        "tick k is evaluated at k·tick − settle_delay, not at k·tick",
        "an announcement stops counting at exactly issued_at + capacity_timeout",
        "an equivocating signer counts nothing",
        "retention drops what was issued more than horizon before the signer's newest",
        "retention keeps only the keep newest of a signer",
        "a signer counts at most max_node_tokens_per_s and pending_requests × "
        "max_tokens_per_minute",
        "a withdrawal (all-zero, higher seq) replaces the signer's previous announcement",
        "the clock rounds to the nearest ms, not truncation",
    }
