"""Node settings: one frozen object, defaults in code, `<data-dir>/config.toml` over them, flags
over that.

A node runs one network, named by its charter (`charter.py`): the built-in `testnet` unless
`[node] network` names another built-in (`simnet`) or `[node] charter` a charter file. The
charter's network id is in every topic and protocol name, and its `[params]` are the market's: the
node's market configuration IS the charter's, plus the few `[market]` keys that shape only this
node's own queue and ledger (`charter.LOCAL_KEYS`). A `[market]` key that would change a charter
value is refused by name, since a node computing with other values would silently disagree with
the network about every price.

`config.toml` has two tables: `[node]` (this module's `NodeSettings` fields, except `data_dir`,
`charter` and `market`, plus `network` and `charter` naming the network) and `[market]` (local keys
only). Unknown keys and wrong types are errors with the key named, never silently ignored: a typo
in a config file must not run a node on defaults.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

from neuroshard_p2p.charter import (
    BUILTIN,
    LOCAL_KEYS,
    PARAM_KEYS,
    Charter,
    CharterError,
    builtin,
    param_value,
)
from neuroshard_p2p.config import ConfigError, MarketConfig, coerce_setting

#: Where a node keeps its key, API token and config when no --data-dir is given.
DEFAULT_DATA_DIR = "~/.neuroshard"
#: The libp2p port a node listens on by default (kubo uses 4001; we stay off it so both can run).
DEFAULT_PORT = 4011
DEFAULT_LISTEN = (f"/ip4/0.0.0.0/tcp/{DEFAULT_PORT}",)
DEFAULT_API = "127.0.0.1:8000"
#: The built-in charter a node runs when none is configured.
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
    #: Multiaddrs with /p2p/<peer id> to join the network through (none: the charter's).
    bootstrap: tuple[str, ...] = ()
    #: The network's charter: its hash names the network (`network`), its params are the market's.
    charter: Charter = field(default_factory=lambda: builtin(DEFAULT_NETWORK))
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
    #: Revision 2.1 (protocols/market-v2.md §8.4, §1.3): serve and offer sync/2.1.0 (range-based
    #: reconciliation) before sync/2.0.0, and keep keep-alives off gossip (only for networks
    #: whose nodes all speak sync/2.1.0: §1.3). `quiet_keep_alives` implies `reconcile`. Both
    #: are off by default: without quiet keep-alives reconciliation only replaces the bucket
    #: sync, at more CPU per session (10 real nodes in one process agreed 3.2 s after an event
    #: with it, under 3 s without), and quiet keep-alives have not held on 100 real nodes yet
    #: (docs/scaling.md).
    reconcile: bool = False
    quiet_keep_alives: bool = False
    #: Peers: a node asks a peer for more peers until it has `target_peers` connections, checks
    #: every `peer_exchange_interval_s`. libp2p refuses connections beyond 2 × `max_peers`; above
    #: `max_peers` it prunes only connections with no stream open, and a gossip connection always
    #: has one, so a node holds up to 2 × `max_peers` (docs/readme-node.md, Peers).
    target_peers: int = 8
    max_peers: int = 32
    peer_exchange_interval_s: float = 10.0
    #: Bootstrap dials: timeout per attempt, back-off from initial doubling up to max.
    dial_timeout_s: float = 10.0
    bootstrap_retry_initial_s: float = 1.0
    bootstrap_retry_max_s: float = 60.0
    #: Reach (node/reach.py): mDNS LAN discovery; AutoNAT reachability checks (re-checked every
    #: reachability_interval_s once known); the circuit relay v2 service for others ("auto": on
    #: once this node is public; "on"; "off") within these limits; reservations on relays when
    #: private (relay_client); UPnP port mapping.
    mdns: bool = True
    autonat: bool = True
    reachability_interval_s: float = 60.0
    relay_service: str = "auto"
    relay_max_reservations: int = 16
    relay_max_circuits: int = 32
    relay_max_bytes: int = 64 * 1024 * 1024
    relay_client: bool = True
    #: DCUtR: upgrade relayed connections to direct ones by hole punching where the NATs allow.
    hole_punching: bool = True
    upnp: bool = True
    #: Timeout of one sync or peer-exchange exchange on a stream.
    stream_timeout_s: float = 10.0
    #: Gossipsub tuning (see docs/readme-node.md for the measurements behind the defaults).
    heartbeat_interval_s: float = 1.0
    mesh_degree: int = 6
    mesh_degree_low: int = 4
    mesh_degree_high: int = 12
    muxer: str = "yamux"
    meshsub: tuple[str, ...] = ("1.1.0",)
    #: The longest pubsub waits for the process to be idle before it sends a peer what is queued
    #: for it (libp2p_compat entry 20; docs/scaling.md, "Eighth pass"); 0: send at once.
    send_linger_s: float = 0.25
    #: A reconciliation session due while gossip brings new announcements waits until gossip has
    #: been quiet this long, at most one period (node/policy.py `session_start`); 0: never waits.
    sync_gossip_quiet_s: float = 1.0
    #: A reconciliation session a peer opens while gossip brings us new announcements waits, at
    #: most this long, until our gossip has been quiet sync_gossip_quiet_s (the listener's side of
    #: the same wait; docs/scaling.md, "Fourteenth pass"); 0: answers at once. Never more than a
    #: quarter of stream_timeout_s, so that the dialer's whole session still fits in its timeout.
    sync_serve_wait_s: float = 2.0
    #: On a relay network (charter transport = "relay", protocol v2 §8.5): the least time between
    #: two batches of relayed announcements (the first after a quiet spell leaves at once). Each
    #: hop of a burst waits up to this long; shorter sends more frames, which cost ~0.8 ms each to
    #: read (docs/scaling.md, "Twenty-first pass"). Unused on gossip networks.
    relay_batch_s: float = 0.1
    #: How long a clean shutdown waits for the withdrawal to leave before closing connections.
    shutdown_grace_s: float = 1.0
    #: On a clean stop, how long the jobs under way (served or sent) get to end and settle.
    shutdown_drain_s: float = 30.0
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
    #: Speak job/2.1.0 (streamed output, cancellation) besides job/2.0.0 (revision 2.1).
    job_streaming: bool = True
    #: Speak job/2.2.0 (the buyer's sampling settings reach the backend) besides those.
    job_sampling: bool = True
    #: The OpenAI-compatible API (`/v1/...`, api/openai.py): the price cap of a request that
    #: names none (NEURO per 1M tokens; 0 = the market's max_price), and the token count of one
    #: that gives no max_tokens.
    openai_max_price: float = 0.0
    openai_default_max_tokens: int = 1024
    #: Web origins (`https://app.example`, `http://localhost:3000`; "*" for any) whose pages may
    #: call the /v1 endpoints from a browser (CORS). None by default: a page still needs the
    #: node's token or a user's key, and a node that allows no origin lets no page read an answer.
    api_cors_origins: tuple[str, ...] = ()
    #: The market configuration: the charter's (the default), or the charter's with other values
    #: of the local keys only; one that changes a charter value is refused by name.
    market: MarketConfig = None  # type: ignore[assignment]  # None: the charter's

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(f"[node] {message}")

        if not isinstance(self.charter, Charter):
            raise ConfigError(f"[node] charter must be a Charter, got {self.charter!r}")
        if self.market is None:
            object.__setattr__(self, "market", self.charter.market)
        else:
            self.charter.check_local({k: param_value(self.market, k) for k in PARAM_KEYS})

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
        for addr in self.charter.bootstrap:
            if "/p2p/" not in addr:
                raise ConfigError(f"charter {self.charter.network_id}: bootstrap address "
                                  f"{addr!r} must end in /p2p/<peer id>")
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
        need(0 <= self.openai_max_price <= self.market.max_price,
             f"openai_max_price must be in [0, max_price={self.market.max_price}] (0: max_price)")
        need(1 <= self.openai_default_max_tokens <= self.market.max_tokens_per_minute,
             f"openai_default_max_tokens must be 1..{self.market.max_tokens_per_minute}")
        for origin in self.api_cors_origins:
            need(origin == "*" or _is_origin(origin),
                 f"api_cors_origins: {origin!r} is not a web origin (scheme://host[:port], no "
                 f"path, e.g. 'http://localhost:3000'), nor '*'")
        need(self.shutdown_grace_s >= 0, "shutdown_grace_s must be >= 0")
        need(self.shutdown_drain_s >= 0, "shutdown_drain_s must be >= 0")
        need(0 <= self.send_linger_s <= 1, "send_linger_s must be in [0, 1] seconds")
        need(0.05 <= self.relay_batch_s <= 1.0,
             "relay_batch_s must be in [0.05, 1] seconds (market-v2.md §8.5: a sender batches "
             "at most every 50 ms, and a receiver's budget allows 20 frames a second)")
        need(0 <= self.sync_gossip_quiet_s <= 10, "sync_gossip_quiet_s must be in [0, 10] seconds")
        need(0 <= self.sync_serve_wait_s <= 2.5,
             "sync_serve_wait_s must be in [0, 2.5] seconds (market-v2.md §8.4, Timing)")
        need(self.backend in BACKEND_KINDS,
             f"backend must be 'synthetic' or 'openai', got {self.backend!r}")
        need(self.backend != "openai" or (self.backend_url.startswith(("http://", "https://"))
                                          and bool(self.backend_model)),
             "the openai backend needs backend_url (http://host:port) and backend_model")
        need(self.announce_interval_s < self.market.capacity_timeout_s,
             "announce_interval_s must be shorter than the market's capacity_timeout_s, or a "
             "live node would expire between its own announcements")
        need(self.relay_service in ("auto", "on", "off"),
             f"relay_service must be auto, on or off, got {self.relay_service!r}")
        need(min(self.relay_max_reservations, self.relay_max_circuits, self.relay_max_bytes) >= 0,
             "relay limits must be >= 0")
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
    def network(self) -> str:
        """The network id (`<charter name>-<hash16>`): part of every topic and protocol name, so
        nodes of different charters never exchange a market message."""
        return self.charter.network_id

    @property
    def topic(self) -> str:
        """The gossip topic of this network's market."""
        return market_topic(self.network)

    @property
    def bootstrap_peers(self) -> tuple[str, ...]:
        """The peers to join through: the configured ones, or else the charter's."""
        return self.bootstrap or self.charter.bootstrap

    @property
    def serve_wait_s(self) -> float:
        """The longest a listener holds a session opened during its gossip (`Node._serve_sync`):
        `sync_serve_wait_s`, at most a quarter of `stream_timeout_s`; 0 when lulls are off."""
        if self.sync_gossip_quiet_s <= 0:
            return 0.0
        return min(self.sync_serve_wait_s, self.stream_timeout_s / 4)

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
        """A copy with some values changed. Another charter without a market brings its own
        market, with this node's local values kept."""
        if "charter" in changes and "market" not in changes:
            local = {key: getattr(self.market, key) for key in LOCAL_KEYS}
            changes["market"] = changes["charter"].market.replace(**local)
        return dataclasses.replace(self, **changes)

    # -- loading ----------------------------------------------------------------------------

    @classmethod
    def load(cls, data_dir: str | os.PathLike[str] | None = None,
             overrides: Mapping[str, Any] | None = None) -> "NodeSettings":
        """Defaults, then `<data_dir>/config.toml` if it exists, then `overrides` (e.g. flags;
        None values are skipped so an absent flag keeps the file's value). A `network` or
        `charter` override replaces both of the file's: the flag names the network."""
        directory = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR).expanduser()
        node_table, market_table = read_config_tables(directory)
        given = {k: v for k, v in (overrides or {}).items() if v is not None}
        if given.keys() & {"network", "charter"}:
            node_table.pop("network", None)
            node_table.pop("charter", None)
        node_table.update(given)
        return cls.from_mapping(node_table, data_dir=directory, market_table=market_table)

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], *, data_dir: Path,
                     market_table: Mapping[str, Any] | None = None,
                     charter: Charter | None = None) -> "NodeSettings":
        """Build from the `[node]` table (every key checked against the field's type) and the
        `[market]` table (local keys only: `Charter.check_local`). The network is `charter` if
        given, else the one `[node] charter` (a file, relative to the data dir) or
        `[node] network` (a built-in's name) names, else the default built-in."""
        values = dict(values)
        network = values.pop("network", None)
        charter_file = values.pop("charter", None)
        if charter is None:
            charter = charter_of(network, charter_file, data_dir)
        elif network is not None or charter_file is not None:
            raise ConfigError("[node] network and charter: the network is given already")
        known = {f.name: f for f in fields(cls) if f.name not in ("data_dir", "market", "charter")}
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key not in known:
                raise ConfigError(f"[node] unknown setting {key!r}; known: "
                                  f"{', '.join(sorted([*known, 'network', 'charter']))}")
            kwargs[key] = coerce_setting("node", key, value, getattr(cls, key))
        return cls(data_dir=data_dir, charter=charter,
                   market=local_market(charter, market_table or {}), **kwargs)


def charter_of(network: Any, charter_file: Any, data_dir: Path) -> Charter:
    """The charter `[node] network` (a built-in's name) or `[node] charter` (a file; relative
    paths from the data dir) names; the default built-in when neither is given."""
    if network is not None and charter_file is not None:
        raise ConfigError("[node] network and charter both name the network: give one (network "
                          f"for a built-in: {', '.join(BUILTIN)}; charter for a charter file)")
    if charter_file is not None:
        if not isinstance(charter_file, str) or not charter_file:
            raise ConfigError(f"[node] charter must be the path of a charter file, got "
                              f"{charter_file!r}")
        path = Path(charter_file).expanduser()
        return Charter.from_toml_file(str(path if path.is_absolute() else data_dir / path))
    name = DEFAULT_NETWORK if network is None else network
    if not isinstance(name, str):
        raise ConfigError(f"[node] network has the wrong type: {name!r} (expected str)")
    try:
        return builtin(name)
    except CharterError:
        raise ConfigError(f"[node] network {name!r} is not a built-in network (built-in: "
                          f"{', '.join(BUILTIN)}); run another network with a charter file "
                          f"(`neuroshard-node charter new`, then `run --charter FILE`)") from None


def local_market(charter: Charter, market_table: Mapping[str, Any]) -> MarketConfig:
    """The node's market configuration: the charter's, with this node's values of the local
    keys. Any other key of `[market]` that differs from the charter is refused, naming the key,
    the charter's value and the configured one (`Charter.check_local`)."""
    charter.check_local(market_table)
    local = {key: coerce_setting("market", key, value, getattr(MarketConfig, key))
             for key, value in market_table.items() if key in LOCAL_KEYS}
    if not local:
        return charter.market
    try:
        return charter.market.replace(**local)
    except ConfigError as exc:
        raise ConfigError(f"[market] {exc}") from None


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
    """`/neuroshard/<network id>/market/2`: the topic of a network's market announcements."""
    return f"/neuroshard/{network}/market/2"


def parse_host_port(text: str) -> tuple[str, int]:
    """"127.0.0.1:8000" → ("127.0.0.1", 8000); raises ConfigError with the reason."""
    host, sep, port_text = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"API address must be host:port (port 0..65535), got {text!r}")
    return host, int(port_text)



def _is_origin(text: str) -> bool:
    """`scheme://host[:port]` as a browser sends it in `Origin` (no path, query or slash)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(text)
        port_ok = parts.port is None or 0 < parts.port < 65536
    except ValueError:
        return False
    return (parts.scheme in ("http", "https") and bool(parts.hostname) and port_ok
            and f"{parts.scheme}://{parts.netloc}" == text and text == text.lower())


__all__ = [
    "NodeSettings", "ConfigError", "market_topic", "parse_host_port", "read_config_tables",
    "charter_of", "local_market", "DEFAULT_DATA_DIR",
    "DEFAULT_LISTEN", "DEFAULT_API", "DEFAULT_PORT", "DEFAULT_NETWORK", "CONFIG_FILE", "KEY_FILE", "TOKEN_FILE",
    "API_FILE", "MUXERS", "MESHSUB_VERSIONS", "BACKEND_KINDS",
]
