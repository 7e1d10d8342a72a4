"""Market configuration: one frozen object, defaults from the design, overridable from TOML.

The defaults are NeuroShard's dynamic-pricing constants. Every value is validated when the object
is built, so an engine never runs with a configuration that makes no sense.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from typing import Any, Mapping

CURVES = ("seed", "normalized")


class ConfigError(ValueError):
    """A configuration value is missing, of the wrong type or out of range."""


@dataclass(frozen=True)
class MarketConfig:
    """Parameters of the market engine. Prices are NEURO per 1M tokens (floats only here and in
    the price curve; everything that is money on the wire or in the ledger is nano-NEURO)."""

    dynamic_pricing: bool = True
    fixed_price: float = 0.1
    min_price: float = 0.01
    max_price: float = 1.0
    steepness: float = 3.0
    target_response_s: float = 60.0
    curve: str = "seed"
    smoothing: float = 0.7
    max_step: float | None = None
    window_ticks: int = 32
    tick_s: float = 1.0
    settle_delay_s: float = 2.0
    capacity_timeout_s: float = 60.0
    claim_timeout_s: float = 60.0
    request_expiry_s: float = 600.0
    retention_s: float = 3600.0
    burn_rate: float = 0.05
    max_tokens_per_minute: int = 1_000_000
    max_node_tokens_per_s: int = 50_000

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{f.name} must be finite, got {value!r}")
        need(0 <= self.min_price < self.max_price, "need 0 <= min_price < max_price")
        need(self.min_price <= self.fixed_price <= self.max_price,
             "fixed_price must lie within [min_price, max_price]")
        need(self.steepness > 0, "steepness must be > 0")
        need(self.target_response_s > 0, "target_response_s must be > 0")
        need(self.curve in CURVES, f"curve must be one of {CURVES}, got {self.curve!r}")
        need(0 <= self.smoothing < 1, "smoothing must be in [0, 1)")
        need(self.max_step is None or self.max_step > 0, "max_step must be > 0 or unset")
        need(1 <= self.window_ticks <= 4096, "window_ticks must be in 1..4096")
        need(self.tick_s > 0, "tick_s must be > 0")
        need(self.settle_delay_s >= 0, "settle_delay_s must be >= 0")
        need(self.capacity_timeout_s > 0, "capacity_timeout_s must be > 0")
        need(self.claim_timeout_s > 0, "claim_timeout_s must be > 0")
        need(self.request_expiry_s > 0, "request_expiry_s must be > 0")
        need(self.retention_s >= 0, "retention_s must be >= 0")
        need(0 <= self.burn_rate < 1, "burn_rate must be in [0, 1)")
        need(self.max_tokens_per_minute > 0, "max_tokens_per_minute must be > 0")
        need(self.max_node_tokens_per_s > 0, "max_node_tokens_per_s must be > 0")

    @property
    def mode(self) -> str:
        return "dynamic" if self.dynamic_pricing else "fixed"

    def replace(self, **changes: Any) -> "MarketConfig":
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "MarketConfig":
        """Build from a mapping (e.g. the `[market]` table of a TOML file); unknown keys and
        values of the wrong type are errors, not silently ignored."""
        return _build(cls, values, "market")

    @classmethod
    def from_toml(cls, path: str) -> "MarketConfig":
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
        return cls.from_mapping(data.get("market", {}))


def _build(cls: Any, values: Mapping[str, Any], section: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown setting {key!r}; known: {', '.join(sorted(known))}")
        default = known[key].default
        kwargs[key] = _coerce(section, key, value, default)
    return cls(**kwargs)


def _coerce(section: str, key: str, value: Any, default: Any) -> Any:
    """Accept an int where a float is expected (TOML writes `60` for 60.0); reject the rest."""
    if default is None:
        if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool)):
            return None if value is None else float(value)
    elif isinstance(default, bool):
        if isinstance(value, bool):
            return value
    elif isinstance(default, int):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(default, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif isinstance(default, str):
        if isinstance(value, str):
            return value
    elif isinstance(default, (list, tuple)):
        if isinstance(value, (list, tuple)):
            return tuple(value)
    raise ConfigError(f"[{section}] {key} has the wrong type: {value!r}")


__all__ = ["MarketConfig", "ConfigError", "CURVES"]
