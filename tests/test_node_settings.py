"""Node settings and the data dir: defaults, config.toml, flags over the file, clear errors."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.node.datadir import (
    ensure_data_dir,
    load_api_token,
    load_private_key,
    read_api_url,
    remove_api_url,
    rotate_api_token,
    write_api_url,
)
from neuroshard_p2p import wire
from neuroshard_p2p.node.peering import dialable_entries
from neuroshard_p2p.node.settings import NodeSettings, market_topic


def test_defaults_and_the_topic_carry_the_network() -> None:
    settings = NodeSettings()
    testnet = builtin("testnet")
    assert settings.charter == testnet and settings.market == testnet.market
    assert settings.network == testnet.network_id
    assert settings.topic == f"/neuroshard/{testnet.network_id}/market/2" == \
        market_topic(testnet.network_id)
    assert settings.api_host_port == ("127.0.0.1", 8000)
    assert settings.announce_interval_s == 20.0 and settings.sync_interval_s == 30.0
    assert settings.meshsub == ("1.1.0",) and settings.muxer == "yamux"
    assert (settings.mesh_degree, settings.mesh_degree_low, settings.mesh_degree_high) == (6, 4, 12)


def test_config_file_then_flags(tmp_path: Path) -> None:
    ensure_data_dir(tmp_path)
    (tmp_path / "config.toml").write_text(
        '[node]\nnetwork = "simnet"\ncapacity = 500\nbootstrap = "/ip4/1.2.3.4/tcp/1/p2p/X"\n'
        'announce_interval_s = 10\n[market]\nclaim_timeout_s = 30\n')
    settings = NodeSettings.load(tmp_path, {"capacity": 700, "network": None})
    assert settings.network == builtin("simnet").network_id  # None: the flag was not given
    assert settings.capacity == 700
    assert settings.bootstrap == ("/ip4/1.2.3.4/tcp/1/p2p/X",)
    assert settings.announce_interval_s == 10.0
    assert settings.market == builtin("simnet").market.replace(claim_timeout_s=30.0)
    assert settings.data_dir == tmp_path
    # a --network flag names the network over the file's
    assert NodeSettings.load(tmp_path, {"network": "testnet"}).charter == builtin("testnet")


@pytest.mark.parametrize(("toml", "message"), [
    ("[node]\ncapacity = 'lots'\n", "capacity has the wrong type"),
    ("[node]\ncapasity = 5\n", "unknown setting 'capasity'"),
    ("[nodes]\n", "unknown table"),
    ("[node]\nmuxer = 'quic'\n", "muxer must be one of"),
    ("[node]\nmeshsub = ['2.0.0']\n", "meshsub versions"),
    ("[node]\nsend_linger_s = 2\n", "send_linger_s must be in [0, 1] seconds"),
    ("[node]\nsync_serve_wait_s = 3\n", "sync_serve_wait_s must be in [0, 2.5] seconds"),
    ("[node]\nannounce_interval_s = 90\n", "shorter than the market's capacity_timeout_s"),
    ("[node]\nnetwork = 'devnet'\n", "network 'devnet' is not a built-in network"),
    ("[node]\nnetwork = 'simnet'\ncharter = 'x.toml'\n", "network and charter both name"),
    ("[node]\ncharter = 'missing.toml'\n", "missing.toml: cannot read"),
    ("[market]\nwindow_ticks = 16\n", "[market] window_ticks = 16 changes the charter of network "
                                      "testnet-"),
    ("[market]\nclaim_timeout_s = 0\n", "claim_timeout_s must be > 0"),
    ("[node]\nbootstrap = ['/ip4/1.2.3.4/tcp/1']\n", "must end in /p2p/<peer id>"),
    ("[node]\napi = 'localhost'\n", "host:port"),
    ("[market]\ntick_s = -1\n", "tick_s"),
    ("[node\n", "not valid TOML"),
])
def test_bad_settings_are_errors_that_name_the_setting(tmp_path: Path, toml: str, message: str) -> None:
    (tmp_path / "config.toml").write_text(toml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        NodeSettings.load(tmp_path)


def test_the_data_dir_is_created_once_with_secret_files_only_the_owner_reads(tmp_path: Path) -> None:
    path = tmp_path / "d"
    report = ensure_data_dir(path)
    assert set(report.created) == {"identity.key", "api_token", "config.toml"}
    for name in ("identity.key", "api_token"):
        assert stat.S_IMODE((path / name).stat().st_mode) == 0o600
    key = load_private_key(path)
    assert report.peer_id == peer_id_of(key.public_key.format(compressed=True))
    token = load_api_token(path)
    again = ensure_data_dir(path)
    assert again.created == () and again.peer_id == report.peer_id
    assert load_api_token(path) == token
    rotated = rotate_api_token(path)
    assert rotated != token and load_api_token(path) == rotated
    assert NodeSettings.load(path) == NodeSettings(data_dir=path)  # the template is all comments


def test_a_key_others_can_read_or_a_broken_key_is_refused(tmp_path: Path) -> None:
    ensure_data_dir(tmp_path)
    (tmp_path / "identity.key").chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        load_private_key(tmp_path)
    (tmp_path / "identity.key").chmod(0o600)
    (tmp_path / "identity.key").write_text("not hex\n")
    with pytest.raises(ConfigError, match="32-byte hex"):
        load_private_key(tmp_path)
    with pytest.raises(ConfigError, match="neuroshard-node init"):
        load_private_key(tmp_path / "missing")


def test_the_api_file_names_the_running_node(tmp_path: Path) -> None:
    assert read_api_url(tmp_path) is None
    write_api_url(tmp_path, "http://127.0.0.1:1234")
    assert read_api_url(tmp_path) == "http://127.0.0.1:1234"
    remove_api_url(tmp_path, "http://127.0.0.1:9999")  # another node's: kept
    assert read_api_url(tmp_path) == "http://127.0.0.1:1234"
    remove_api_url(tmp_path, "http://127.0.0.1:1234")
    assert read_api_url(tmp_path) is None


def test_peer_exchange_answers_keep_only_what_can_be_dialled() -> None:
    import multiaddr
    from libp2p.peer.id import ID

    peer = ID.from_base58(peer_id_of(b"\x02" + b"\x11" * 32))
    addr = multiaddr.Multiaddr("/ip4/10.0.0.1/tcp/4011")
    data = wire.encode_peer_exchange([(str(peer), [str(addr), "/ip4/0.0.0.0/tcp/1"])])
    # a wildcard address is never dialable
    assert dialable_entries(wire.decode_peer_exchange(data)) == [(peer, [addr])]
    junk = [("not a peer id", ["/ip4/1.2.3.4/tcp/1"]), (str(peer), ["bogus"]),
            (str(peer), ["/ip6/::/tcp/3"]), (str(peer), ["/ip4/10.0.0.2/tcp/2"])]
    legacy = wire.decode_peer_exchange_legacy(wire.encode_peer_exchange_legacy(junk))
    assert dialable_entries(legacy) == [(peer, [multiaddr.Multiaddr("/ip4/10.0.0.2/tcp/2")])]


def test_a_network_failure_is_described_by_its_most_specific_cause() -> None:
    import trio

    from neuroshard_p2p.node.streams import failure_reason

    def chained(outer: Exception, inner: BaseException) -> Exception:
        outer.__cause__ = inner
        return outer

    refused = ConnectionRefusedError(111, "Connection refused")
    assert failure_reason(chained(RuntimeError("dial failed"), refused)) == "connection refused"
    assert failure_reason(ExceptionGroup("x", [ValueError("a"), refused])) == "connection refused"
    assert failure_reason(RuntimeError([OSError(113, "No route to host")])) == "no route to host"
    assert failure_reason(chained(RuntimeError("stream"), trio.TooSlowError())) == "timed out"
    assert failure_reason(chained(RuntimeError("x"), ValueError("peer id mismatch: 16Uiu2…"))) == \
        "peer id mismatch: 16Uiu2…"
    assert failure_reason(ValueError("bad frame")) == "ValueError: bad frame"
    assert failure_reason(EOFError()) == "EOFError"
    refused = RuntimeError("failed to open a stream to peer 16Uiu2…")
    refused.__cause__ = RuntimeError("protocols not supported: tried ['/neuroshard/x/sync/2.0.0'], "
                                     "timeout=10s. Last error: protocol not supported: "
                                     "/neuroshard/x/sync/2.0.0, response='na'")
    assert failure_reason(refused) == \
        "protocol not supported by the peer (tried ['/neuroshard/x/sync/2.0.0'])"


def test_a_data_dir_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    from neuroshard_p2p.cli import EXIT_ERROR, main

    a_file = tmp_path / "not-a-dir"
    a_file.write_text("x")
    with pytest.raises(ConfigError, match=f"cannot create the data dir {a_file}: {a_file}: "
                                          f"file exists"):
        ensure_data_dir(a_file)
    with pytest.raises(ConfigError, match="not a directory"):
        ensure_data_dir(a_file / "sub")
    assert main(["init", "--data-dir", str(a_file / "sub")]) == EXIT_ERROR


def test_another_charter_brings_its_market_and_keeps_the_local_values() -> None:
    simnet = builtin("simnet")
    mine = NodeSettings(charter=simnet, market=simnet.market.replace(claim_timeout_s=7.0))
    other = simnet.with_params(window_ticks=12)
    moved = mine.replace(charter=other)
    assert moved.network == other.network_id
    assert moved.market == other.market.replace(claim_timeout_s=7.0)
