"""The data directory: the node's key, its API token and its config file.

    <data-dir>/identity.key   hex of the 32-byte secp256k1 secret (mode 0600): the libp2p host key
                              and the market signing key, so the node has one peer id
    <data-dir>/api_token      the bearer token the HTTP API asks for on every POST (mode 0600)
    <data-dir>/config.toml    [node] and [market] settings, written once with the defaults
    <data-dir>/api            written by a running node: the URL of its HTTP API
    <data-dir>/lock           held (flock) by the node running on this directory, which wrote its
                              pid there: one node per data dir, as kubo's repo.lock
    <data-dir>/work.json      the best identity-work nonce found for the key (node/work.py), so a
                              restart does not grind again
    <data-dir>/credential     members networks: hex of this node's Credential, signed by an
                              authority of the charter (`neuroshard-node member issue`)
    <data-dir>/revocations-<network id>   an authority's own newest revocation list (hex), so the
                              next `member revoke` lists everyone still revoked

`ensure_data_dir` makes what is missing and never overwrites what exists, so `run` on a fresh
machine needs nothing before it and `init` twice is harmless.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import coincurve

from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.node.errors import NodeError
from neuroshard_p2p.wire import WireError
from neuroshard_p2p.wire.membership import Admission, credential_of
from neuroshard_p2p.wire.messages import Credential
from neuroshard_p2p.wire.work import MAX_NONCE, work_bits
from neuroshard_p2p.node.settings import (
    API_FILE,
    CONFIG_FILE,
    DEFAULT_API,
    DEFAULT_LISTEN,
    KEY_FILE,
    TOKEN_FILE,
)

CONFIG_TEMPLATE = f"""\
# neuroshard-node settings. Flags given to `neuroshard-node run` override these.
# Every key is optional; the values shown are the defaults.

[node]
# listen = {list(DEFAULT_LISTEN)!r}
# bootstrap = []                      # e.g. ["/ip4/203.0.113.7/tcp/4011/p2p/16Uiu2..."]
# network = "testnet"                 # a built-in network: "testnet" or "simnet"
# charter = "mynet.toml"              # or a charter file (`neuroshard-node charter new`),
#                                     # relative to this directory; give network or charter
# api = "{DEFAULT_API}"              # "off" runs no HTTP API
# capacity = 0                        # tokens per second this node offers
# min_price = 0.0                     # NEURO per 1M tokens
# backend = "synthetic"               # or "openai": an OpenAI-compatible server serves the jobs
# backend_url = ""                    # e.g. "http://127.0.0.1:8080" (Ollama: ".../11434/v1")
# backend_model = ""                  # e.g. "qwen2.5-0.5b-instruct"
# backend_timeout_s = 60.0
# openai_max_price = 0.0              # /v1 requests naming no price cap pay at most this (0: the
#                                     # market's max_price), NEURO per 1M tokens
# openai_default_max_tokens = 1024    # /v1 requests without max_tokens buy this many
# api_cors_origins = []               # web origins whose pages may call /v1 from a browser,
#                                     # e.g. ["http://localhost:3000"]; "*" for any
# announce_interval_s = 20.0
# sync_interval_s = 30.0
# target_peers = 8
# max_peers = 32
# muxer = "yamux"                     # or "mplex"
# shutdown_drain_s = 30.0             # a clean stop lets the jobs under way end for this long

[market]
# Only this node's own queue and ledger: every other market value is the network's charter's
# (`neuroshard-node charter show`), and a node whose config changes one refuses to start.
# claim_timeout_s = 60.0
# request_expiry_s = 600.0
# retention_s = 3600.0
"""

WORK_FILE = "work.json"


@dataclass(frozen=True)
class DataDirReport:
    """What `ensure_data_dir` did: which files it created (empty when all existed)."""

    path: Path
    created: tuple[str, ...]
    peer_id: str


def ensure_data_dir(path: str | os.PathLike[str]) -> DataDirReport:
    """Create the data dir and any missing key, token and config file; keep existing ones.
    ConfigError says what could not be created and why."""
    directory = Path(path).expanduser()
    try:
        return _ensure_data_dir(directory)
    except OSError as exc:
        where = exc.filename or directory
        raise ConfigError(f"cannot create the data dir {directory}: {where}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None


def _ensure_data_dir(directory: Path) -> DataDirReport:
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    created: list[str] = []
    key_path = directory / KEY_FILE
    if not key_path.exists():
        _write_secret(key_path, coincurve.PrivateKey().secret.hex() + "\n")
        created.append(KEY_FILE)
    token_path = directory / TOKEN_FILE
    if not token_path.exists():
        _write_secret(token_path, secrets.token_urlsafe(32) + "\n")
        created.append(TOKEN_FILE)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        config_path.write_text(CONFIG_TEMPLATE, encoding="utf-8")
        created.append(CONFIG_FILE)
    key = load_private_key(directory)
    return DataDirReport(directory, tuple(created),
                         peer_id_of(key.public_key.format(compressed=True)))


def load_private_key(path: str | os.PathLike[str]) -> coincurve.PrivateKey:
    """The node's key from `<path>/identity.key`; ConfigError says what is wrong with the file."""
    key_path = Path(path).expanduser() / KEY_FILE
    try:
        text = key_path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        raise ConfigError(f"no key at {key_path}: run `neuroshard-node init` first") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {key_path}: {exc}") from None
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise ConfigError(f"{key_path} is readable by others (mode {mode:o}); "
                          f"run `chmod 600 {key_path}`")
    try:
        secret = bytes.fromhex(text)
        if len(secret) != 32:
            raise ValueError("not 32 bytes")
        return coincurve.PrivateKey(secret)
    except ValueError as exc:
        raise ConfigError(f"{key_path} does not hold a 32-byte hex secp256k1 secret ({exc})") from None


def load_api_token(path: str | os.PathLike[str]) -> str:
    """The API bearer token from `<path>/api_token`; ConfigError says what is wrong with the file
    (missing, unreadable, empty) and how to make a new one."""
    directory = Path(path).expanduser()
    token_path = directory / TOKEN_FILE
    rotate = f"`neuroshard-node token --rotate --data-dir {directory}` writes a new one"
    try:
        token = token_path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        if not directory.is_dir():
            raise ConfigError(f"no API token at {token_path}: run `neuroshard-node init` "
                              f"first") from None
        raise ConfigError(f"no API token at {token_path}: {rotate}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the API token {token_path}: {exc}; {rotate}") from None
    if not token:
        raise ConfigError(f"the API token file {token_path} is empty: {rotate}")
    return token


def rotate_api_token(path: str | os.PathLike[str]) -> str:
    """Replace the API token with a new random one (a running node reads it on each request);
    ConfigError when the data dir is missing or the file cannot be written."""
    token = secrets.token_urlsafe(32)
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ConfigError(f"no data dir at {directory}: run `neuroshard-node init` first")
    token_path = directory / TOKEN_FILE
    tmp = token_path.with_suffix(".tmp")
    try:
        tmp.unlink(missing_ok=True)  # left over from an interrupted rotation
        _write_secret(tmp, token + "\n")
        os.replace(tmp, token_path)
    except OSError as exc:
        raise ConfigError(f"cannot write a new API token to {token_path}: "
                          f"{(exc.strerror or str(exc)).lower()}") from None
    return token


def write_api_url(path: str | os.PathLike[str], url: str) -> None:
    """Tell client commands where the running node's API is."""
    (Path(path).expanduser() / API_FILE).write_text(url + "\n", encoding="utf-8")


def read_api_url(path: str | os.PathLike[str]) -> str | None:
    """The URL a running node wrote, or None when no node has written one."""
    try:
        return (Path(path).expanduser() / API_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


def remove_api_url(path: str | os.PathLike[str], url: str) -> None:
    """Remove the API file if it still names `url` (another node may have replaced it)."""
    if read_api_url(path) == url:
        try:
            (Path(path).expanduser() / API_FILE).unlink()
        except FileNotFoundError:
            pass


LOCK_FILE = "lock"


def lock_data_dir(path: str | os.PathLike[str]) -> Callable[[], None]:
    """Take the data dir for this process: an exclusive flock on `<data-dir>/lock`, holding this
    process's pid. Two nodes on one directory would sign as one identity with two sequence
    counters and share one ledger and one API file. The kernel drops the lock when the process
    ends, however it ends, so a crashed node leaves none behind. Returns the function that
    releases it; raises NodeError naming the holder when another process has it."""
    lock_path = Path(path).expanduser() / LOCK_FILE
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        written = os.read(fd, 32).decode("ascii", "replace").strip()
        holder = written if written.isdigit() else "unknown"
        os.close(fd)
        raise NodeError(f"{Path(path).expanduser()} is in use by another running node (pid "
                        f"{holder}): stop it, or give this one another --data-dir") from None
    except BaseException:
        os.close(fd)
        raise
    try:  # only for the message above: a full disk does not stop the node here
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    except OSError:
        pass
    return lambda: os.close(fd)


@dataclass(frozen=True)
class StoredWork:
    """The identity work kept for a key: the best nonce, its bits (recomputed on load: the file
    is a cache, never trusted) and where grinding goes on."""

    nonce: int
    bits: int
    next_nonce: int


def load_work(path: str | os.PathLike[str], signer: bytes) -> StoredWork | None:
    """The work kept in `<path>/work.json` for `signer`; None when there is none or it is another
    key's. ConfigError says what is wrong with a damaged file."""
    work_path = Path(path).expanduser() / WORK_FILE
    try:
        data = json.loads(work_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ConfigError(f"cannot read {work_path}: {exc}") from None
    if not isinstance(data, dict) or data.get("signer") != signer.hex():
        return None
    nonce, next_nonce = data.get("nonce"), data.get("next_nonce", 0)
    for name, value in (("nonce", nonce), ("next_nonce", next_nonce)):
        if type(value) is not int or not 0 <= value <= MAX_NONCE + 1:
            raise ConfigError(f"{work_path}: {name} must be an integer 0..2^63, got {value!r}")
    assert isinstance(nonce, int) and isinstance(next_nonce, int)
    return StoredWork(nonce, work_bits(signer, nonce), next_nonce)


def save_work(path: str | os.PathLike[str], signer: bytes, work: StoredWork) -> None:
    """Keep the work for `signer` in `<path>/work.json` (replaced atomically)."""
    directory = Path(path).expanduser()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    text = json.dumps({"signer": signer.hex(), "nonce": work.nonce, "bits": work.bits,
                       "next_nonce": work.next_nonce}) + "\n"
    tmp = directory / (WORK_FILE + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, directory / WORK_FILE)


def _write_secret(path: Path, text: str) -> None:
    """Write a file that only its owner may read, created with that mode (no window where it is
    world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)


CREDENTIAL_FILE = "credential"


def revocations_file(network_id: str) -> str:
    return f"revocations-{network_id}"


def load_hex_file(path: Path, what: str) -> bytes | None:
    """The bytes of a file holding one line of hex; None when it does not exist."""
    try:
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc}") from None
    try:
        return bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path} does not hold the hex of a {what}") from None


def save_hex_file(path: Path, data: bytes) -> None:
    """Write one line of hex, replacing the file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(data.hex() + "\n", encoding="ascii")
    os.replace(tmp, path)


def member_credential(path: str | os.PathLike[str], admission: Admission, signer: bytes,
                      now_ms: int) -> Credential:
    """This node's credential for a members network, from `<path>/credential`, checked: an
    authority of the charter signed it, for this network, naming this key, not expired.
    ConfigError says what is missing and how to get it."""
    cred_path = Path(path).expanduser() / CREDENTIAL_FILE
    wire = load_hex_file(cred_path, "credential")
    if wire is None:
        raise ConfigError(
            f"this network admits members only, and {cred_path} holds no credential: give an "
            f"authority of the charter this node's peer id ({peer_id_of(signer)}) and ask for "
            f"`neuroshard-node member issue {peer_id_of(signer)} --charter CHARTER "
            f"--install DATA_DIR` (or put the file it writes at {cred_path})")
    try:
        credential = credential_of(wire, admission)
    except WireError as exc:
        raise ConfigError(f"{cred_path}: {exc}") from None
    if credential.member != signer:
        raise ConfigError(f"{cred_path} admits another key ({peer_id_of(credential.member)}), "
                          f"not this node ({peer_id_of(signer)})")
    if credential.expires_at_ms <= now_ms:
        raise ConfigError(f"{cred_path}: the credential expired at {credential.expires_at_ms} ms; "
                          f"ask an authority for a new one")
    return credential


__all__ = [
    "CREDENTIAL_FILE", "revocations_file", "load_hex_file", "save_hex_file", "member_credential",
    "DataDirReport", "ensure_data_dir", "load_private_key", "load_api_token", "rotate_api_token",
    "write_api_url", "read_api_url", "remove_api_url", "CONFIG_TEMPLATE", "StoredWork",
    "load_work", "save_work", "WORK_FILE", "LOCK_FILE", "lock_data_dir",
]
