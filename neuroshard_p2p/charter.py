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

import msgpack  # type: ignore[import-untyped]

from neuroshard_p2p.config import ConfigError, MarketConfig, coerce_setting

FORMAT = 2
CANONICAL_TAG = "neuroshard/charter/2"
POLICIES = ("open", "members")
#: Keys of `[params]`, each required: every MarketConfig value that enters price, view or validity.
PARAM_KEYS: tuple[str, ...] = (
    "burn_rate", "capacity_timeout_s", "curve", "dynamic_pricing", "fixed_price",
    "identity_work_bits", "max_node_tokens_per_s", "max_price", "max_signer_pending_requests",
    "max_signer_pending_tokens", "max_step", "max_tokens_per_minute", "min_price",
    "settle_delay_s", "smoothing", "steepness", "target_response_s", "tick_s", "window_ticks",
)
#: `[market]` keys a node may set for itself: they shape its own queue and ledger only.
LOCAL_KEYS: tuple[str, ...] = ("claim_timeout_s", "request_expiry_s", "retention_s")
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.")
_KEY_LEN = 33


class CharterError(ConfigError):
    """A charter that is missing a value, has one of the wrong type, or does not name a network."""


def _param_value(config: MarketConfig, key: str) -> Any:
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
                f"charter name must be 1-32 of letters, digits, '-', '_' or '.', got {self.name!r}")
        if not 1 <= len(self.model.encode()) <= 128:
            raise CharterError("charter model must be 1-128 bytes of text")
        if self.policy not in POLICIES:
            raise CharterError(f"admission policy must be one of {POLICIES}, got {self.policy!r}")
        keys = tuple(sorted(set(self.authorities)))
        if len(keys) != len(self.authorities):
            raise CharterError("admission authorities must not repeat a key")
        for key in keys:
            if not (isinstance(key, bytes) and len(key) == _KEY_LEN and key[0] in (2, 3)):
                raise CharterError(f"authority {key!r} is not a 33-byte compressed public key")
        if self.policy == "members" and not keys:
            raise CharterError("a members network needs at least one authority key")
        if self.policy == "open" and keys:
            raise CharterError("an open network has no authorities (policy = \"members\" uses them)")
        object.__setattr__(self, "authorities", keys)
        object.__setattr__(self, "bootstrap", tuple(self.bootstrap))
        object.__setattr__(self, "_hash", hashlib.sha256(self.canonical_bytes).digest())

    # -- identity of the network ------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        """The hashed `[params]` values, by key."""
        return {key: _param_value(self.market, key) for key in PARAM_KEYS}

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
                    f"local: {', '.join(LOCAL_KEYS)})")
            ours = _param_value(self.market, key)
            default = ours if key != "max_step" else None
            try:
                given = coerce_setting("market", key, value, default)
            except ConfigError as exc:
                raise CharterError(str(exc)) from None
            if key == "max_step":
                given = 0.0 if given is None else given
            if given != ours:
                raise CharterError(
                    f"[market] {key} = {given!r} changes the charter of network "
                    f"{self.network_id} ({key} = {ours!r}); a charter value is the network's, not "
                    f"the node's: remove it from the config, or run another network with "
                    f"`neuroshard-node charter new`")

    # -- text ---------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], source: str = "charter") -> "Charter":
        def fail(message: str) -> CharterError:
            return CharterError(f"{source}: {message}")

        known = {"format", "name", "model", "description", "bootstrap", "admission", "params"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise fail(f"unknown key(s) {', '.join(unknown)}")
        if data.get("format") != FORMAT:
            raise fail(f"format must be {FORMAT}, got {data.get('format')!r}")
        for key in ("name", "model"):
            if not isinstance(data.get(key), str):
                raise fail(f"{key} must be text")
        description = data.get("description", "")
        bootstrap = data.get("bootstrap", [])
        if not isinstance(description, str):
            raise fail("description must be text")
        if not (isinstance(bootstrap, list) and all(isinstance(a, str) for a in bootstrap)):
            raise fail("bootstrap must be a list of multiaddrs")
        admission = data.get("admission", {})
        if not isinstance(admission, Mapping) or set(admission) - {"policy", "authorities"}:
            raise fail("[admission] has policy and authorities only")
        policy = admission.get("policy", "open")
        hex_keys = admission.get("authorities", [])
        if not (isinstance(hex_keys, list) and all(isinstance(k, str) for k in hex_keys)):
            raise fail("[admission] authorities must be a list of hex keys")
        try:
            authorities = tuple(bytes.fromhex(k) for k in hex_keys)
        except ValueError:
            raise fail("[admission] authorities must be hex") from None
        params = data.get("params")
        if not isinstance(params, Mapping):
            raise fail("[params] table is missing")
        missing = [k for k in PARAM_KEYS if k not in params]
        extra = sorted(set(params) - set(PARAM_KEYS))
        if missing:
            raise fail(f"[params] misses {', '.join(missing)} (a charter states every value)")
        if extra:
            raise fail(f"[params] has unknown key(s) {', '.join(extra)}")
        defaults = MarketConfig()
        values: dict[str, Any] = {}
        try:
            for key in PARAM_KEYS:
                raw = params[key]
                if key == "max_step":
                    value = coerce_setting("params", key, raw, 0.0)
                    values[key] = None if value == 0.0 else value
                else:
                    values[key] = coerce_setting("params", key, raw, getattr(defaults, key))
        except CharterError:
            raise
        except ConfigError as exc:
            raise fail(str(exc)) from None
        if values["window_ticks"] < 1:
            raise fail("[params] window_ticks must be stated explicitly (>= 1)")
        try:
            market = MarketConfig(**values)
        except ConfigError as exc:
            raise fail(f"[params] {exc}") from None
        try:
            return cls(name=data["name"], model=data["model"], market=market, policy=policy,
                       authorities=authorities, description=description,
                       bootstrap=tuple(bootstrap))
        except CharterError as exc:
            raise fail(str(exc)) from None

    @classmethod
    def from_toml(cls, text: str, source: str = "charter") -> "Charter":
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise CharterError(f"{source}: not valid TOML: {exc}") from None
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
            f"# NeuroShard network charter. Network id: {self.network_id}",
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


__all__ = ["Charter", "CharterError", "PARAM_KEYS", "LOCAL_KEYS", "POLICIES", "FORMAT",
           "builtin", "BUILTIN", "charter_for", "DEFAULT_MODEL", "TESTNET_WORK_BITS"]
