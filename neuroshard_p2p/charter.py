"""A network charter: one canonical file per network, whose hash names the network.

Like a blockchain's genesis file or a Substrate chain spec, a charter holds every value that
enters validity, expiry or price (the `[params]` table), the model the network serves, and who may
take part (`[admission]`: an open network, or a members network with its authority keys). Its hash
is part of the network id in every topic and protocol name, so nodes of different charters never
exchange a market message. The description and the bootstrap addresses travel in the same file but
are not hashed: adding a bootnode does not split a network (protocols/market-v2.md §4.1).

This module is pure: it parses and formats bytes and text; reading and writing files is the
caller's (`from_toml_file` is a thin convenience for drivers).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import tomllib
from dataclasses import dataclass, field
from typing import Any, Mapping

import coincurve
import msgpack  # type: ignore[import-untyped]

from neuroshard_p2p.config import MAX_WINDOW_TICKS, ConfigError, MarketConfig, coerce_setting

FORMAT = 2
CANONICAL_TAG = "neuroshard/charter/2"
POLICIES = ("open", "members")
#: Keys of `[params]`, each required: every MarketConfig value that enters price, view or validity.
PARAM_KEYS: tuple[str, ...] = (
    "burn_rate", "capacity_timeout_s", "curve", "dynamic_pricing", "fixed_price",
    "identity_work_bits", "max_node_tokens_per_s", "max_price", "max_signer_pending_requests",
    "max_signer_pending_tokens", "max_step", "max_tokens_per_minute", "min_price",
    "settle_delay_s", "smoothing", "steepness", "target_response_s", "tick_s", "transport",
    "window_ticks",
)
#: `[params]` keys a charter may leave out, with the value their absence means. Such a key is
#: hashed only when it differs from that value, so charters written before it keep their ids
#: (revision 2.1: relay, market-v2 §4.1).
OPTIONAL_PARAMS: Mapping[str, Any] = {"transport": "gossip"}
#: `[market]` keys a node may set for itself: they shape its own queue and ledger only.
LOCAL_KEYS: tuple[str, ...] = ("claim_timeout_s", "request_expiry_s", "retention_s")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_KEY_LEN = 33


class CharterError(ConfigError):
    """A charter that breaks a rule of market-v2 §4.1 (C1–C8), or a node config that changes a
    charter value: `reason` is the rule's code, `key` the key at fault (None when there is none)."""

    def __init__(self, message: str, reason: str = "bad_value", key: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason
        self.key = key


def _check_admission(policy: Any, authorities: Any) -> None:
    """C7: the admission policy and its authority keys."""
    def bad(message: str) -> CharterError:
        return CharterError(f"[admission] {message}", "bad_admission", "admission")

    if policy not in POLICIES:
        raise bad(f"policy must be one of {POLICIES}, got {policy!r}")
    if len(set(authorities)) != len(authorities):
        raise bad("authorities must not repeat a key")
    for key in authorities:
        if not (isinstance(key, bytes) and len(key) == _KEY_LEN and key[0] in (2, 3)):
            raise bad(f"authority {key!r} is not a 33-byte compressed public key")
        try:
            coincurve.PublicKey(key)
        except Exception:  # not a point on the curve
            raise bad(f"authority {key.hex()} is not a point of secp256k1") from None
    if policy == "members" and not authorities:
        raise bad("a members network needs at least one authority key")
    if policy == "open" and authorities:
        raise bad("an open network names no authorities (policy = \"members\" uses them)")


def param_value(config: MarketConfig, key: str) -> Any:
    """A `[params]` value of a market configuration as the charter writes it (max_step unset is
    0.0)."""
    value = getattr(config, key)
    if key == "max_step":
        return 0.0 if value is None else float(value)
    return value


@dataclass(frozen=True)
class Charter:
    name: str
    model: str
    market: MarketConfig
    policy: str = "open"
    authorities: tuple[bytes, ...] = ()
    description: str = ""
    bootstrap: tuple[str, ...] = ()
    _hash: bytes = field(default=b"", init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (1 <= len(self.name) <= 32 and set(self.name) <= _NAME_CHARS):
            raise CharterError(
                f"charter name must be 1-32 of letters, digits, '-', '_' or '.', got {self.name!r}",
                "bad_name", "name")
        if not 1 <= len(self.model.encode("utf-8", "replace")) <= 128:
            raise CharterError("charter model must be 1-128 bytes of text", "bad_model", "model")
        _check_admission(self.policy, self.authorities)
        keys = tuple(sorted(self.authorities))
        object.__setattr__(self, "authorities", keys)
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        object.__setattr__(self, "_hash", hashlib.sha256(self.canonical_bytes).digest())

    # -- identity of the network ------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """The hashed `[params]` values, by key (an optional key only when it is not its
        default)."""
        params = {key: param_value(self.market, key) for key in PARAM_KEYS}
        for key, absent in OPTIONAL_PARAMS.items():
            if params[key] == absent:
                del params[key]
        return params

    @property
    def relay(self) -> bool:
        """Announcements travel by relay streams, not on the topic (market-v2 §8.5)."""
        return self.market.transport == "relay"

    @property
    def canonical_bytes(self) -> bytes:
        """The bytes whose SHA-256 names the network (market-v2 §4.1)."""
        params = [[key, value] for key, value in sorted(self.params.items())]
        body = [CANONICAL_TAG, self.name, self.model, [self.policy, list(self.authorities)], params]
        packed: bytes = msgpack.packb(body, use_bin_type=True, use_single_float=False)
        return packed

    @property
    def hash(self) -> bytes:
        return self._hash

    @property
    def network_id(self) -> str:
        """`<name>-<first 8 bytes of the hash, hex>`: the network's part of every topic and
        protocol id."""
        return f"{self.name}-{self._hash[:8].hex()}"

    @property
    def members(self) -> bool:
        return self.policy == "members"

    def describe(self) -> dict[str, Any]:
        """The charter for people and JSON (`/api/node`, `charter show --json`)."""
        return {"name": self.name, "network_id": self.network_id, "hash": self._hash.hex(),
                "model": self.model, "policy": self.policy,
                "authorities": [key.hex() for key in self.authorities],
                "params": self.params, "description": self.description,
                "bootstrap": list(self.bootstrap)}

    # -- derived charters ---------------------------------------------------------------------

    def with_params(self, **changes: Any) -> "Charter":
        """A charter of another network: the same one with some `[params]` values changed."""
        unknown = sorted(set(changes) - set(PARAM_KEYS))
        if unknown:
            raise CharterError(f"not charter params: {', '.join(unknown)}")
        if changes.get("max_step") == 0.0:
            changes["max_step"] = None
        return dataclasses.replace(self, market=self.market.replace(**changes))

    def replace(self, **changes: Any) -> "Charter":
        return dataclasses.replace(self, **changes)

    def check_local(self, market: Mapping[str, Any]) -> None:
        """Refuse a node's `[market]` table that changes a charter value (a node with other
        values would silently compute other prices): name the key and both values."""
        for key, value in market.items():
            if key in LOCAL_KEYS:
                continue
            if key not in PARAM_KEYS:
                raise CharterError(
                    f"[market] {key} is not a setting (charter params: {', '.join(PARAM_KEYS)}; "
                    f"local: {', '.join(LOCAL_KEYS)})", "unknown_key", key)
            ours = param_value(self.market, key)
            default = ours if key != "max_step" else None
            try:
                given = coerce_setting("market", key, value, default)
            except ConfigError as exc:
                raise CharterError(str(exc), "charter_value", key) from None
            if key == "max_step":
                given = 0.0 if given is None else given
            if given != ours or type(given) is not type(ours):
                error = CharterError(
                    f"[market] {key} = {given!r} changes the charter of network "
                    f"{self.network_id} ({key} = {ours!r}); a charter value is the network's, not "
                    f"the node's: remove it from the config, or run another network with "
                    f"`neuroshard-node charter new`", "charter_value", key)
                error.charter_value, error.configured = ours, given
                raise error

    # -- text ---------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "charter") -> "Charter":
        """Apply the charter rules C2–C8 (market-v2 §4.1) in order; the first that fails is a
        CharterError with its reason code and key."""
        def fail(message: str, reason: str, key: str | None) -> CharterError:
            return CharterError(f"{source}: {message}", reason, key)

        known = ("admission", "bootstrap", "description", "format", "model", "name", "params")
        unknown = sorted(set(data) - set(known))
        if unknown:  # C2
            raise fail(f"unknown key {unknown[0]!r}", "unknown_key", unknown[0])
        if type(data.get("format")) is not int or data.get("format") != FORMAT:  # C3
            raise fail(f"format must be {FORMAT}, got {data.get('format')!r}", "format", "format")
        name, model = data.get("name"), data.get("model")
        if not (isinstance(name, str) and 1 <= len(name) <= 32 and set(name) <= _NAME_CHARS):
            raise fail(f"name must be 1-32 of letters, digits, '-', '_' or '.', got {name!r}",
                       "bad_name", "name")  # C4
        if not (isinstance(model, str) and 1 <= len(model.encode("utf-8", "replace")) <= 128):
            raise fail("model must be 1-128 bytes of text", "bad_model", "model")  # C5
        description = data.get("description", "")
        bootstrap = data.get("bootstrap", [])
        if not isinstance(description, str):  # C6
            raise fail("description must be text", "wrong_type", "description")
        if not (isinstance(bootstrap, list) and all(isinstance(a, str) for a in bootstrap)):
            raise fail("bootstrap must be a list of multiaddrs", "wrong_type", "bootstrap")
        admission = data.get("admission", {})  # C7
        if not isinstance(admission, Mapping) or set(admission) - {"policy", "authorities"}:
            raise fail("[admission] has policy and authorities only", "bad_admission",
                       "admission")
        policy = admission.get("policy", "open")
        hex_keys = admission.get("authorities", [])
        if not (isinstance(hex_keys, list) and all(isinstance(k, str) for k in hex_keys)):
            raise fail("[admission] authorities must be a list of hex keys", "bad_admission",
                       "admission")
        try:
            authorities = tuple(bytes.fromhex(k) for k in hex_keys)
        except ValueError:
            raise fail("[admission] authorities must be hex", "bad_admission",
                       "admission") from None
        try:
            _check_admission(policy, authorities)
        except CharterError as exc:
            raise fail(str(exc), exc.reason, exc.key) from None
        params = data.get("params")
        if not isinstance(params, Mapping):  # C8a
            raise fail("[params] table is missing", "missing", "params")
        missing = sorted(k for k in PARAM_KEYS if k not in params and k not in OPTIONAL_PARAMS)
        if missing:
            raise fail(f"[params] misses {missing[0]} (a charter states every value)",
                       "missing", missing[0])
        extra = sorted(set(params) - set(PARAM_KEYS))
        if extra:  # C8b
            raise fail(f"[params] has unknown key {extra[0]!r}", "unknown_key", extra[0])
        defaults = MarketConfig()
        values: dict[str, Any] = {}
        for key in sorted(PARAM_KEYS):  # C8c
            default = 0.0 if key == "max_step" else getattr(defaults, key)
            try:
                value = coerce_setting("params", key, params.get(key, OPTIONAL_PARAMS.get(key)),
                                       default)
            except ConfigError as exc:
                raise fail(str(exc), "wrong_type", key) from None
            values[key] = None if key == "max_step" and value == 0.0 else value
        for key in sorted(PARAM_KEYS):  # C8d, one key at a time in sorted order
            try:
                error = _param_problem(key, values)
            except TypeError:  # a cross-key rule met a value of another type: its own C8c
                error = f"{key} cannot be checked"
            if error:
                raise fail(f"[params] {error}", "bad_value", key)
        try:
            market = MarketConfig(**values)
        except ConfigError as exc:
            raise fail(f"[params] {exc}", "bad_value", None) from None
        return cls(name=name, model=model, market=market, policy=policy, authorities=authorities,
                   description=description, bootstrap=tuple(bootstrap))

    @classmethod
    def from_toml(cls, text: str, source: str = "charter") -> "Charter":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CharterError(f"{source}: not valid TOML: {exc}", "toml", None) from None
        return cls.from_mapping(data, source)

    @classmethod
    def from_toml_file(cls, path: str) -> "Charter":
        try:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
        except OSError as exc:
            raise CharterError(f"{path}: cannot read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise CharterError(f"{path}: not UTF-8 text") from None
        return cls.from_toml(text, path)

    def to_toml(self) -> str:
        def value(v: Any) -> str:
            if isinstance(v, bool):
                return "true" if v else "false"
            if isinstance(v, float):
                return repr(v) if math.isfinite(v) else "nan"
            if isinstance(v, int):
                return str(v)
            return _toml_str(str(v))

        lines = [
            f"{ID_COMMENT}{self.network_id}",
            "# Every [params] value and the admission policy are hashed into the network id;",
            "# description and bootstrap are not.",
            f"format = {FORMAT}",
            f"name = {_toml_str(self.name)}",
            f"model = {_toml_str(self.model)}",
            f"description = {_toml_str(self.description)}",
            "bootstrap = [" + ", ".join(_toml_str(a) for a in self.bootstrap) + "]",
            "",
            "[admission]",
            f"policy = {_toml_str(self.policy)}",
            "authorities = [" + ", ".join(_toml_str(k.hex()) for k in self.authorities) + "]",
            "",
            "[params]",
        ]
        lines += [f"{key} = {value(v)}" for key, v in sorted(self.params.items())]
        return "\n".join(lines) + "\n"


_U63 = (1 << 63) - 1
#: C8d: each key's own allowed values (market-v2 §4.1's table); the rules between keys are
#: checked at the key the table names (fixed_price, max_price, window_ticks).
_ALLOWED: dict[str, tuple[Any, str]] = {
    "burn_rate": (lambda x: 0 <= x < 1, "burn_rate must be in [0, 1)"),
    "capacity_timeout_s": (lambda x: x > 0 and _whole_ms(x),
                           "capacity_timeout_s must be > 0 and a whole number of ms"),
    "curve": (lambda x: x in ("seed", "normalized", "clearing"),
              "curve must be \"seed\", \"normalized\" or \"clearing\""),
    "dynamic_pricing": (lambda x: True, ""),
    "identity_work_bits": (lambda x: 0 <= x <= 48, "identity_work_bits must be in 0..48"),
    "max_node_tokens_per_s": (lambda x: 1 <= x <= _U63, "max_node_tokens_per_s must be >= 1"),
    "max_signer_pending_requests": (lambda x: 1 <= x <= _U63,
                                    "max_signer_pending_requests must be >= 1"),
    "max_signer_pending_tokens": (lambda x: 1 <= x <= _U63,
                                  "max_signer_pending_tokens must be >= 1"),
    "max_step": (lambda x: x is None or x > 0, "max_step must be 0.0 (unset) or > 0"),
    "max_tokens_per_minute": (lambda x: 1 <= x <= _U63, "max_tokens_per_minute must be >= 1"),
    "min_price": (lambda x: x >= 0, "min_price must be >= 0"),
    "settle_delay_s": (lambda x: x >= 0 and _whole_ms(x),
                       "settle_delay_s must be >= 0 and a whole number of ms"),
    "smoothing": (lambda x: 0 <= x < 1, "smoothing must be in [0, 1)"),
    "steepness": (lambda x: x > 0, "steepness must be > 0"),
    "target_response_s": (lambda x: x > 0, "target_response_s must be > 0"),
    "tick_s": (lambda x: x >= 0.001 and _whole_ms(x),
               "tick_s must be >= 0.001 and a whole number of ms"),
    "transport": (lambda x: x in ("gossip", "relay"), "transport must be \"gossip\" or \"relay\""),
}


def _whole_ms(x: float) -> bool:
    ms = x * 1000
    return abs(ms - round(ms)) <= 1e-6 * max(1.0, abs(ms))


def _param_problem(key: str, values: Mapping[str, Any]) -> str:
    """C8d for one key: what is wrong with its value, or "" when it is allowed."""
    value = values[key]
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key} must be finite"
    if key == "fixed_price":
        if not values["min_price"] <= value <= values["max_price"]:
            return "fixed_price must lie within [min_price, max_price]"
        return ""
    if key == "max_price":
        return "" if value > values["min_price"] else "max_price must be above min_price"
    if key == "target_response_s" and values.get("curve") == "clearing" and value > 0 \
            and not _whole_ms(value):
        # Revision 2.1: the clearing rule compares supply × T with demand × 1000 in integer ms.
        return "target_response_s must be a whole number of ms when curve is \"clearing\""
    if key == "window_ticks":
        if not 1 <= value <= MAX_WINDOW_TICKS:
            return f"window_ticks must be stated explicitly, 1..{MAX_WINDOW_TICKS}"
        try:
            needed = MarketConfig(**{**values, "window_ticks": MAX_WINDOW_TICKS}).min_window_ticks()
        except ConfigError as exc:
            return str(exc)
        return "" if value >= needed else f"window_ticks {value} is below min_window_ticks {needed}"
    ok, message = _ALLOWED[key]
    return "" if ok(value) else message


#: The first line of a charter file `to_toml` writes: the network id, for people and for
#: `charter verify` (a comment: the id is computed from the file, never read from it).
ID_COMMENT = "# NeuroShard network charter. Network id: "


def stated_network_id(text: str) -> str | None:
    """The network id a charter file's comment states (None when it has no such line)."""
    for line in text.splitlines():
        if line.startswith(ID_COMMENT):
            return line[len(ID_COMMENT):].strip()
    return None


def _toml_str(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


#: The model both built-in networks serve (the synthetic backend's name).
DEFAULT_MODEL = "neuroshard/synthetic-1"
#: Identity work on the public testnet: 2^24 hashes (about 30 s of one core in Python) for a new
#: key to count fully; fewer bits count with weight 2^(bits - 24).
TESTNET_WORK_BITS = 24


def builtin(name: str) -> Charter:
    """The charters that ship with the node: `testnet` (open, the work ramp on) and `simnet`
    (open, no work: the simulator's and the tests' network)."""
    market = MarketConfig(window_ticks=32)
    if name == "testnet":
        return Charter(name="testnet", model=DEFAULT_MODEL,
                       market=market.replace(identity_work_bits=TESTNET_WORK_BITS),
                       description="The open NeuroShard test network.")
    if name == "simnet":
        return Charter(name="simnet", model=DEFAULT_MODEL, market=market,
                       description="Simulated and test networks on one machine (no work ramp).")
    raise CharterError(f"no built-in charter {name!r} (built-in: {', '.join(BUILTIN)})")


BUILTIN = ("testnet", "simnet")


def charter_for(market: MarketConfig, name: str = "simnet", model: str = DEFAULT_MODEL,
                **kwargs: Any) -> Charter:
    """A charter around a given market configuration (the simulator's scenarios, tests)."""
    if market.window_auto:
        market = dataclasses.replace(market)  # window_ticks already derived; keep it explicit
    return Charter(name=name, model=model, market=market, **kwargs)


__all__ = ["Charter", "CharterError", "param_value", "PARAM_KEYS", "OPTIONAL_PARAMS", "LOCAL_KEYS", "POLICIES", "FORMAT",
           "builtin", "BUILTIN", "ID_COMMENT", "stated_network_id", "charter_for", "DEFAULT_MODEL", "TESTNET_WORK_BITS"]
