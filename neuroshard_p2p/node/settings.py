"""Node settings: one frozen object, defaults in code, `<data-dir>/config.toml` over them, flags
over that.

`config.toml` has two tables: `[node]` (this module's `NodeSettings` fields, except `data_dir`
and `market`) and `[market]` (`config.MarketConfig`). Unknown keys and wrong types are errors with
the key named, never silently ignored: a typo in a config file must not run a node on defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from neuroshard_p2p.config import ConfigError, MarketConfig, coerce_setting

#: Where a node keeps its key, API token and config when no --data-dir is given.
DEFAULT_DATA_DIR = "~/.neuroshard"
#: The libp2p port a node listens on by default (kubo uses 4001; we stay off it so both can run).
DEFAULT_PORT = 4011
DEFAULT_LISTEN = (f"/ip4/0.0.0.0/tcp/{DEFAULT_PORT}",)
DEFAULT_API = "127.0.0.1:8000"
#: The network a node joins when none is configured.
DEFAULT_NETWORK = "testnet"
MUXERS = ("yamux", "mplex")
#: Inference backends a node can serve jobs with (node/backends.py).
BACKEND_KINDS = ("synthetic", "openai")
#: Gossipsub protocol versions a node may offer. Only those in the libp2p specs; py-libp2p 0.8.1
#: also offers /meshsub/1.3.0, 1.4.0 and 2.0.0, which other stacks do not speak.
MESHSUB_VERSIONS = ("1.0.0", "1.1.0", "1.2.0")

CONFIG_FILE = "config.toml"
KEY_FILE = "identity.key"
TOKEN_FILE = "api_token"
API_FILE = "api"  # written by a running node: the URL of its HTTP API (like kubo's $IPFS_PATH/api)


@dataclass(frozen=True)
class NodeSettings:
    """Everything a node needs to run. Times are seconds; prices NEURO per 1M tokens (converted to
    integer nano-NEURO where they enter the market)."""

    data_dir: Path = Path(DEFAULT_DATA_DIR).expanduser()
    #: libp2p listen multiaddrs (TCP only).
    listen: tuple[str, ...] = DEFAULT_LISTEN
    #: Multiaddrs with /p2p/<peer id> to join the network through.
    bootstrap: tuple[str, ...] = ()
    #: Network id: part of every topic, so testnet and other networks never mix.
    network: str = DEFAULT_NETWORK
    #: HTTP API "host:port"; port 0 picks a free port; "" or "off" runs no API.
    api: str = DEFAULT_API
    #: Capacity this node offers, tokens per second (0 = none), and its floor price.
    capacity: int = 0
    min_price: float = 0.0
    #: Inference backend serving this node's jobs (node/backends.py): "synthetic" (tokens at the
    #: offered rate) or "openai" (an OpenAI-compatible server at backend_url, model backend_model).
    backend: str = "synthetic"
    backend_url: str = ""
    backend_model: str = ""
    backend_timeout_s: float = 60.0
    #: Re-announce period (keep-alive) and anti-entropy period.
    announce_interval_s: float = 20.0
    sync_interval_s: float = 30.0
    #: Peers: a node asks a peer for more peers until it has `target_peers` connections, checks
    #: every `peer_exchange_interval_s`, and accepts at most `max_peers` before refusing dials.
    target_peers: int = 8
    max_peers: int = 32
    peer_exchange_interval_s: float = 10.0
    #: Bootstrap dials: timeout per attempt, back-off from initial doubling up to max.
    dial_timeout_s: float = 10.0
    bootstrap_retry_initial_s: float = 1.0
    bootstrap_retry_max_s: float = 60.0
    #: Timeout of one sync or peer-exchange exchange on a stream.
    stream_timeout_s: float = 10.0
    #: Gossipsub tuning (see docs/readme-node.md for the measurements behind the defaults).
    heartbeat_interval_s: float = 1.0
    mesh_degree: int = 6
    mesh_degree_low: int = 4
    mesh_degree_high: int = 12
    muxer: str = "yamux"
    meshsub: tuple[str, ...] = ("1.1.0",)
    #: How long a clean shutdown waits for the withdrawal to leave before closing connections.
    shutdown_grace_s: float = 1.0
    #: Jobs, local to this node (node/jobs.py, node/reputation.py). A provider must accept or
    #: decline a job within job_accept_timeout_s (dial included, never more than
    #: stream_timeout_s), and deliver its result within job_progress_grace_s + 2 × tokens /
    #: its tokens per second of accepting. A provider that faults is set aside job_backoff_s,
    #: doubling with each fault in a row, and banned job_ban_s (doubling) at job_ban_after.
    job_accept_timeout_s: float = 5.0
    job_progress_grace_s: float = 5.0
    job_backoff_s: float = 5.0
    job_ban_after: int = 3
    job_ban_s: float = 600.0
    market: MarketConfig = field(default_factory=MarketConfig)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"[node] {message}")

        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"[node] {f.name} must be finite, got {value!r}")
        need(bool(self.listen), "listen needs at least one multiaddr")
        for addr in self.listen:
            need(isinstance(addr, str) and addr.startswith("/ip"),
                 f"listen address {addr!r} is not an /ip4 or /ip6 multiaddr")
        for addr in self.bootstrap:
            need(isinstance(addr, str) and "/p2p/" in addr,
                 f"bootstrap address {addr!r} must end in /p2p/<peer id>")
        need(bool(self.network) and all(c.isalnum() or c in "-_." for c in self.network),
             f"network must be letters, digits, '-', '_' or '.', got {self.network!r}")
        if self.api_enabled:
            self.api_host_port  # parses, raising ConfigError when malformed
        need(0 <= self.capacity, "capacity must be >= 0 tokens per second")
        need(self.capacity <= self.market.max_node_tokens_per_s,
             f"capacity {self.capacity} is above the market's max_node_tokens_per_s "
             f"({self.market.max_node_tokens_per_s})")
        need(0 <= self.min_price <= self.market.max_price,
             f"min_price must be in [0, max_price={self.market.max_price}]")
        for name in ("announce_interval_s", "sync_interval_s", "peer_exchange_interval_s",
                     "dial_timeout_s", "bootstrap_retry_initial_s", "bootstrap_retry_max_s",
                     "stream_timeout_s", "heartbeat_interval_s", "backend_timeout_s",
                     "job_accept_timeout_s", "job_progress_grace_s", "job_ban_s"):
            need(getattr(self, name) > 0, f"{name} must be > 0")
        need(self.job_backoff_s >= 0, "job_backoff_s must be >= 0")
        need(self.job_ban_after >= 1, "job_ban_after must be >= 1")
        need(self.shutdown_grace_s >= 0, "shutdown_grace_s must be >= 0")
        need(self.backend in BACKEND_KINDS,
             f"backend must be 'synthetic' or 'openai', got {self.backend!r}")
        need(self.backend != "openai" or (self.backend_url.startswith(("http://", "https://"))
                                          and bool(self.backend_model)),
             "the openai backend needs backend_url (http://host:port) and backend_model")
        need(self.announce_interval_s < self.market.capacity_timeout_s,
             "announce_interval_s must be shorter than the market's capacity_timeout_s, or a "
             "live node would expire between its own announcements")
        need(self.bootstrap_retry_initial_s <= self.bootstrap_retry_max_s,
             "bootstrap_retry_initial_s must be <= bootstrap_retry_max_s")
        need(1 <= self.target_peers <= self.max_peers, "need 1 <= target_peers <= max_peers")
        need(1 <= self.mesh_degree_low <= self.mesh_degree <= self.mesh_degree_high,
             "need 1 <= mesh_degree_low <= mesh_degree <= mesh_degree_high")
        need(self.muxer in MUXERS, f"muxer must be one of {MUXERS}, got {self.muxer!r}")
        need(bool(self.meshsub) and all(v in MESHSUB_VERSIONS for v in self.meshsub),
             f"meshsub versions must be among {MESHSUB_VERSIONS}, got {self.meshsub!r}")

    # -- derived values ---------------------------------------------------------------------

    @property
    def topic(self) -> str:
        """The gossip topic of this network's market."""
        return market_topic(self.network)

    @property
    def api_enabled(self) -> bool:
        return self.api.strip().lower() not in ("", "off", "none")

    @property
    def api_host_port(self) -> tuple[str, int]:
        """(host, port) of the HTTP API."""
        return parse_host_port(self.api)

    @property
    def config_path(self) -> Path:
        return self.data_dir / CONFIG_FILE

    def replace(self, **changes: Any) -> "NodeSettings":
        return dataclasses.replace(self, **changes)

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str] | None = None,
             overrides: Mapping[str, Any] | None = None,
             market_overrides: Mapping[str, Any] | None = None) -> "NodeSettings":
        """Defaults, then `<data_dir>/config.toml` if it exists, then `overrides` (e.g. flags;
        None values are skipped so an absent flag keeps the file's value)."""
        directory = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
        node_table, market_table = read_config_tables(directory)
        node_table.update({k: v for k, v in (overrides or {}).items() if v is not None})
        market_table.update({k: v for k, v in (market_overrides or {}).items() if v is not None})
        market = MarketConfig.from_mapping(market_table)
        return cls.from_mapping(node_table, data_dir=directory, market=market)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, data_dir: Path,
                     market: MarketConfig) -> "NodeSettings":
        """Build from the `[node]` table; every key is checked against the field's type."""
        known = {f.name: f for f in fields(cls) if f.name not in ("data_dir", "market")}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"[node] unknown setting {key!r}; known: "
                                  f"{', '.join(sorted(known))}")
            kwargs[key] = coerce_setting("node", key, value, getattr(cls, key))
        return cls(data_dir=data_dir, market=market, **kwargs)


def read_config_tables(data_dir: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The `[node]` and `[market]` tables of `<data_dir>/config.toml` as written (not yet checked;
    both empty when there is no file). Raises ConfigError for a file that is not TOML or has an
    unknown table."""
    path = Path(data_dir).expanduser() / CONFIG_FILE
    if not path.exists():
        return {}, {}
    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    unknown = sorted(set(data) - {"node", "market"})
    if unknown:
        raise ConfigError(f"{path}: unknown table(s) {unknown}; known: [node], [market]")
    node, market = data.get("node", {}), data.get("market", {})
    for name, table in (("node", node), ("market", market)):
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{name}] must be a table, got {table!r}")
    return dict(node), dict(market)


def market_topic(network: str) -> str:
    """`/neuroshard/<network>/market/1`: the topic of a network's market announcements."""
    return f"/neuroshard/{network}/market/1"


def parse_host_port(text: str) -> tuple[str, int]:
    """"127.0.0.1:8000" → ("127.0.0.1", 8000); raises ConfigError with the reason."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"API address must be host:port (port 0..65535), got {text!r}")
    return host, int(port_text)


__all__ = [
    "NodeSettings", "ConfigError", "market_topic", "parse_host_port", "read_config_tables", "DEFAULT_DATA_DIR",
    "DEFAULT_LISTEN", "DEFAULT_API", "DEFAULT_PORT", "DEFAULT_NETWORK", "CONFIG_FILE", "KEY_FILE", "TOKEN_FILE",
    "API_FILE", "MUXERS", "MESHSUB_VERSIONS", "BACKEND_KINDS",
]
