"""Market configuration: one frozen object, defaults from the design, overridable from TOML.

The defaults are NeuroShard's dynamic-pricing constants. Every value is validated when the object
is built, so an engine never runs with a configuration that makes no sense.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

from neuroshard_p2p.timeline import whole_ms

#: "clearing" (revision 2.1, issue 18) is not a curve but the uniform clearing price of asks and
#: bids (core.pricing.clearing_price_nano); it lives in the same charter key so that the canonical
#: bytes of every existing charter stay what they were.
CURVES = ("seed", "normalized", "clearing")
#: How announcements travel between neighbours (protocol v2 §4.1, revision 2.1: relay).
TRANSPORTS = ("gossip", "relay")
DEFAULT_WINDOW_TICKS = 32   # 0.7^32 ≈ 1e-5: the EMA has forgotten where the window started
MAX_WINDOW_TICKS = 4096
#: More bits of identity work than anyone could grind is a configuration error.
MAX_WORK_BITS = 48


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
    # 0 = automatic: DEFAULT_WINDOW_TICKS, or longer when max_step needs it (min_window_ticks).
    window_ticks: int = 0
    tick_s: float = 1.0
    settle_delay_s: float = 2.0
    capacity_timeout_s: float = 60.0
    claim_timeout_s: float = 60.0
    request_expiry_s: float = 600.0
    retention_s: float = 3600.0
    burn_rate: float = 0.05
    max_tokens_per_minute: int = 1_000_000
    max_node_tokens_per_s: int = 50_000
    # Bounds on one signer's counted demand (protocol v2 §7.1): whatever it announces, one
    # identity counts at most this many waiting requests and tokens.
    max_signer_pending_requests: int = 1_000
    max_signer_pending_tokens: int = 1_000_000
    # The work ramp (v2 §7.1): a signer whose key carries fewer than this many bits of work counts
    # with weight 2^(bits - F). 0 = off (every signer weighs 1).
    identity_work_bits: int = 0
    # "gossip": announcements travel on the gossipsub topic; "relay" (revision 2.1): in bundles on
    # relay/2.1.0 streams to the topic's mesh peers (protocol v2 §8.5). The engine is the same.
    transport: str = "gossip"
    # True when window_ticks was derived (given as 0); `replace` then derives it again.
    window_auto: bool = field(default=False, init=False, repr=False, compare=False)

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
        need(self.transport in TRANSPORTS,
             f"transport must be one of {TRANSPORTS}, got {self.transport!r}")
        if self.curve == "clearing":
            # The clearing rule compares supply × T with demand × 1000 in integers.
            try:
                whole_ms(self.target_response_s, "target_response_s")
            except ValueError as exc:
                raise ConfigError(f"{exc} (the clearing rule uses it in integer ms)") from None
        need(self.max_step is None or self.max_step > 0, "max_step must be > 0 or unset")
        need(self.window_ticks == 0 or 1 <= self.window_ticks <= MAX_WINDOW_TICKS,
             f"window_ticks must be in 1..{MAX_WINDOW_TICKS}, or 0 for automatic")
        need(self.tick_s > 0, "tick_s must be > 0")
        need(self.settle_delay_s >= 0, "settle_delay_s must be >= 0")
        need(self.capacity_timeout_s > 0, "capacity_timeout_s must be > 0")
        # The merged view works on the signed timeline's integer milliseconds.
        for name in ("tick_s", "settle_delay_s", "capacity_timeout_s"):
            try:
                whole_ms(getattr(self, name), name)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        need(self.tick_s >= 0.001, "tick_s must be at least 1 ms")
        need(self.claim_timeout_s > 0, "claim_timeout_s must be > 0")
        need(self.request_expiry_s > 0, "request_expiry_s must be > 0")
        need(self.retention_s >= 0, "retention_s must be >= 0")
        need(0 <= self.burn_rate < 1, "burn_rate must be in [0, 1)")
        need(self.max_tokens_per_minute > 0, "max_tokens_per_minute must be > 0")
        need(self.max_node_tokens_per_s > 0, "max_node_tokens_per_s must be > 0")
        need(self.max_signer_pending_requests > 0, "max_signer_pending_requests must be > 0")
        need(self.max_signer_pending_tokens > 0, "max_signer_pending_tokens must be > 0")
        need(0 <= self.identity_work_bits <= MAX_WORK_BITS,
             f"identity_work_bits must be in 0..{MAX_WORK_BITS}")

        needed = self.min_window_ticks()
        if needed > MAX_WINDOW_TICKS:
            raise ConfigError(
                f"max_step {self.max_step:g} is too small for the price band: the price would "
                f"need {needed} ticks to cross it, more than the {MAX_WINDOW_TICKS}-tick window "
                f"limit")
        if self.window_ticks == 0:
            object.__setattr__(self, "window_ticks", max(DEFAULT_WINDOW_TICKS, needed))
            object.__setattr__(self, "window_auto", True)
        elif self.window_ticks < needed:
            raise ConfigError(
                f"window_ticks {self.window_ticks} is too short for max_step {self.max_step:g}: "
                f"the price needs {needed} ticks to cross from min_price to max_price and "
                f"settle, and a shorter window lets it jump when the tick it started from "
                f"leaves the window; use window_ticks >= {needed}, or 0 (automatic)")

    def min_window_ticks(self) -> int:
        """The shortest price window that keeps max_step a real cap.

        The price of a tick is a fold over the targets of the last W ticks, starting from the
        oldest. When the oldest tick leaves the window, the fold starts from the next one; that
        changes nothing only if the fold had already forgotten its start. With max_step the
        price crosses the band [min_price, max_price] in at most `travel` capped ticks, after
        which the EMA needs `settle` ticks to bring the difference below one capped step. So a
        window of travel + settle ticks keeps every move of the target from min to max or back
        within the cap, tick after tick. (A target reversing direction several times inside one
        window can still show a jump when its start leaves; the cap bounds each fold step, not
        such a window edge.) Without max_step any window works: 1.
        """
        if self.max_step is None or not self.dynamic_pricing:
            return 1
        lo = max(1, round(self.min_price * 1e9))   # nano-NEURO, as money.to_nano
        hi = round(self.max_price * 1e9)
        span = math.log(hi / lo)
        up = math.ceil(span / math.log1p(self.max_step))
        down = 1 if self.max_step >= 1 else math.ceil(span / -math.log1p(-self.max_step))
        if self.smoothing == 0:
            settle = 1
        else:
            gap = max(1.0, self.max_step * lo) / (hi - lo)
            settle = max(1, math.ceil(math.log(gap) / math.log(self.smoothing)))
        return max(up, down) + settle

    @property
    def clearing(self) -> bool:
        """True when the price is the uniform clearing price of asks and bids (curve
        "clearing", revision 2.1) rather than the utilisation curve."""
        return self.curve == "clearing" and self.dynamic_pricing

    @property
    def mode(self) -> str:
        """"dynamic" (price follows supply and demand) or "fixed" (always fixed_price)."""
        return "dynamic" if self.dynamic_pricing else "fixed"

    def replace(self, **changes: Any) -> "MarketConfig":
        """A copy with some values changed. A derived window_ticks is derived again (so
        `replace(max_step=0.05)` gets the longer window that cap needs)."""
        if self.window_auto and "window_ticks" not in changes:
            changes["window_ticks"] = 0
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "MarketConfig":
        """Build from a mapping (e.g. the `[market]` table of a TOML file); unknown keys and
        values of the wrong type are errors, not silently ignored."""
        config: MarketConfig = _build(cls, values, "market")
        return config

    @classmethod
    def from_toml(cls, path: str) -> "MarketConfig":
        """Read the `[market]` table of a TOML file (other tables are left to their owners)."""
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        table = data.get("market", {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [market] must be a table, got {table!r}")
        return cls.from_mapping(table)


def _build(cls: Any, values: Mapping[str, Any], section: str) -> Any:
    if not isinstance(values, Mapping):
        raise ConfigError(f"[{section}] must be a table of settings, got {values!r}")
    known = {f.name: f for f in fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in known:
            raise ConfigError(f"[{section}] unknown setting {key!r}; known: {', '.join(sorted(known))}")
        kwargs[key] = coerce_setting(section, key, value, known[key].default)
    return cls(**kwargs)


def coerce_setting(section: str, key: str, value: Any, default: Any) -> Any:
    """A value from a TOML table as the type of the setting's `default`: an int where a float is
    expected (TOML writes `60` for 60.0), one string or a list of strings where a tuple of
    strings is, a number or nothing where the default is None (an optional number). Anything
    else is a ConfigError naming `[section] key` and the type expected."""
    if default is None:
        expected = "float or none"
        ok = value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))
        value = float(value) if ok and value is not None else value
    elif isinstance(default, bool):
        expected, ok = "bool", isinstance(value, bool)
    elif isinstance(default, int):
        expected, ok = "int", isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        expected = "float"
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, str):
        expected, ok = "str", isinstance(value, str)
    elif isinstance(default, tuple):
        expected = "tuple"
        if isinstance(value, str):
            value = (value,)
        ok = isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value)
        value = tuple(value) if ok else value
    else:
        raise TypeError(f"setting {key!r} has a default of unsupported type {type(default)}")
    if not ok:
        raise ConfigError(f"[{section}] {key} has the wrong type: {value!r} (expected {expected})")
    return value


__all__ = ["MarketConfig", "ConfigError", "CURVES", "coerce_setting"]
