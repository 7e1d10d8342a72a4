"""The charter: canonical bytes, hash and network id, TOML round trip, and refusals."""

import hashlib

import msgpack
import pytest

from neuroshard_p2p.charter import OPTIONAL_PARAMS, PARAM_KEYS, Charter, CharterError, builtin


def test_testnet_round_trips_through_toml_with_the_same_hash():
    charter = builtin("testnet")
    again = Charter.from_toml(charter.to_toml())
    assert again == charter
    assert again.hash == charter.hash == hashlib.sha256(charter.canonical_bytes).digest()
    assert charter.network_id == "testnet-" + charter.hash[:8].hex()


def test_canonical_bytes_are_the_documented_array_with_float64_and_bools():
    charter = builtin("simnet")
    decoded = msgpack.unpackb(charter.canonical_bytes, raw=False)
    assert decoded[0] == "neuroshard/charter/2"
    assert decoded[1:4] == ["simnet", "neuroshard/synthetic-1", ["open", []]]
    # every key but an optional one at its default (transport = "gossip" is not hashed)
    assert [k for k, _ in decoded[4]] == sorted(set(PARAM_KEYS) - set(OPTIONAL_PARAMS))
    params = dict(decoded[4])
    assert params["max_step"] == 0.0 and params["dynamic_pricing"] is True
    # smoothing 0.7 is written as the 9-byte float64, never as float32
    assert bytes.fromhex("a9736d6f6f7468696e67cb3fe6666666666666") in charter.canonical_bytes


def test_transport_relay_is_hashed_and_gossip_is_the_charter_without_it():
    """Revision 2.1 (market-v2 §4.1): every charter written before keeps its id."""
    base = builtin("testnet")
    assert base.network_id == "testnet-3094f19bc2e8b045" and not base.relay
    relay = base.with_params(transport="relay")
    assert relay.relay and relay.network_id != base.network_id
    pairs = msgpack.unpackb(relay.canonical_bytes, raw=False)[4]
    keys = [k for k, _ in pairs]
    assert keys == sorted(PARAM_KEYS) and ["transport", "relay"] in pairs
    assert keys.index("transport") == keys.index("tick_s") + 1
    text = base.to_toml()
    cut = text.rindex("[params]\n") + len("[params]\n")
    stated = Charter.from_toml(text[:cut] + 'transport = "gossip"\n' + text[cut:])
    assert stated.hash == base.hash
    assert Charter.from_toml(relay.to_toml()) == relay
    for value, reason in (('"pigeon"', "bad_value"), ("1", "wrong_type")):
        with pytest.raises(CharterError) as refused:
            Charter.from_toml(text[:cut] + f"transport = {value}\n" + text[cut:])
        assert (refused.value.reason, refused.value.key) == (reason, "transport")


def test_every_param_names_another_network_but_bootstrap_and_description_do_not():
    base = builtin("simnet")
    assert base.with_params(window_ticks=16).network_id != base.network_id
    assert base.with_params(identity_work_bits=1).hash != base.hash
    moved = base.replace(bootstrap=("/ip4/127.0.0.1/tcp/1/p2p/x",), description="other")
    assert moved.hash == base.hash


def test_a_node_config_that_changes_a_charter_value_is_refused_by_name():
    charter = builtin("testnet")
    charter.check_local({"window_ticks": 32, "claim_timeout_s": 5.0, "retention_s": 10})
    with pytest.raises(CharterError, match=r"\[market\] window_ticks = 16 changes the charter .* "
                                           r"\(window_ticks = 32\)"):
        charter.check_local({"window_ticks": 16})


def test_a_charter_missing_a_param_or_with_a_wrong_type_is_refused():
    text = builtin("simnet").to_toml()
    with pytest.raises(CharterError, match="misses tick_s"):
        Charter.from_toml(text.replace("tick_s = 1.0\n", ""))
    with pytest.raises(CharterError, match="window_ticks has the wrong type"):
        Charter.from_toml(text.replace("window_ticks = 32", 'window_ticks = "32"'))
    with pytest.raises(CharterError, match="name must be 1-32"):
        Charter.from_toml(text.replace('name = "simnet"', 'name = "sim net"'))
    with pytest.raises(CharterError, match="needs at least one authority"):
        Charter.from_toml(text.replace('policy = "open"', 'policy = "members"'))


# =================================================================================================
# The node runs one charter: names, settings, the CLI, identity work, two networks side by side.

import json  # noqa: E402
import re  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import trio  # noqa: E402

from neuroshard_p2p.config import ConfigError  # noqa: E402
from neuroshard_p2p.node.datadir import WORK_FILE, ensure_data_dir, load_work  # noqa: E402
from neuroshard_p2p.node.errors import NodeError  # noqa: E402
from neuroshard_p2p.node.host import sync_protocol  # noqa: E402
from neuroshard_p2p.node.jobs import job_protocol  # noqa: E402
from neuroshard_p2p.node.peering import peers_protocols  # noqa: E402
from neuroshard_p2p.node.settings import NodeSettings, market_topic  # noqa: E402
from neuroshard_p2p.node.work import IdentityWork  # noqa: E402
from neuroshard_p2p.wire.work import work_bits  # noqa: E402
from tests.api_harness import api_node  # noqa: E402
from tests.conftest import make_key  # noqa: E402
from tests.node_harness import (  # noqa: E402
    TEST_MARKET, RunningNode, simnet_charter, start_node, test_settings)
from tests.waiting import eventually  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`neuroshard-node ARGS` in a child process."""
    return subprocess.run([sys.executable, "-m", "neuroshard_p2p.cli", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=60)


def test_every_name_on_the_network_carries_the_network_id() -> None:
    testnet = builtin("testnet")
    settings = NodeSettings()
    nid = testnet.network_id
    assert settings.network == nid and len(nid) == len("testnet-") + 16
    assert (settings.topic, sync_protocol(nid), job_protocol(nid), peers_protocols(nid)) == (
        f"/neuroshard/{nid}/market/2", f"/neuroshard/{nid}/sync/2.0.0",
        f"/neuroshard/{nid}/job/2.0.0",
        (f"/neuroshard/{nid}/peers/1.1.0", f"/neuroshard/{nid}/peers/1.0.0"))
    assert market_topic(nid) == settings.topic


def test_the_market_is_the_charter_s_plus_the_local_keys_only() -> None:
    charter = builtin("simnet")
    local = charter.market.replace(claim_timeout_s=5.0, request_expiry_s=30.0, retention_s=0.0)
    assert NodeSettings(charter=charter, market=local).market == local
    with pytest.raises(ConfigError, match=r"\[market\] window_ticks = 16 changes the charter of "
                                          rf"network {charter.network_id} \(window_ticks = 32\)"):
        NodeSettings(charter=charter, market=charter.market.replace(window_ticks=16))


def test_bootstrap_addresses_come_from_the_charter_when_none_are_configured() -> None:
    boot = "/ip4/10.0.0.1/tcp/4011/p2p/16Uiu2HAmBoot"
    charter = builtin("simnet").replace(bootstrap=(boot,))
    assert charter.network_id == builtin("simnet").network_id  # bootnodes are not hashed
    assert NodeSettings(charter=charter).bootstrap_peers == (boot,)
    own = "/ip4/10.0.0.2/tcp/4011/p2p/16Uiu2HAmOwn"
    assert NodeSettings(charter=charter, bootstrap=(own,)).bootstrap_peers == (own,)
    with pytest.raises(ConfigError, match="bootstrap address '/ip4/1.2.3.4/tcp/1' must end in"):
        NodeSettings(charter=charter.replace(bootstrap=("/ip4/1.2.3.4/tcp/1",)))


def test_charter_new_show_verify_round_trip_through_the_cli(tmp_path: Path) -> None:
    path = tmp_path / "labnet.toml"
    made = cli("charter", "new", "--name", "labnet", "--model", "acme/llm-7b",
               "--set", "window_ticks=16", "--set", "identity_work_bits=0", "--set", "curve=normalized",
               "--bootstrap", "/ip4/10.0.0.1/tcp/4011/p2p/16Uiu2HAmBoot", "-o", str(path))
    assert made.returncode == 0, made.stderr
    charter = Charter.from_toml_file(str(path))
    assert made.stdout == f"wrote {path}: network {charter.network_id}\n"
    assert (charter.name, charter.model, charter.policy) == ("labnet", "acme/llm-7b", "open")
    assert charter.market == builtin("testnet").market.replace(
        window_ticks=16, identity_work_bits=0, curve="normalized")
    assert charter.bootstrap == ("/ip4/10.0.0.1/tcp/4011/p2p/16Uiu2HAmBoot",)

    shown = cli("charter", "show", str(path))
    assert shown.returncode == 0 and shown.stdout == path.read_text() == charter.to_toml()
    assert shown.stdout.splitlines()[0] == f"# NeuroShard network charter. Network id: " \
                                           f"{charter.network_id}"
    as_json = json.loads(cli("charter", "show", str(path), "--json").stdout)
    assert as_json == {**charter.describe(), "params": json.loads(json.dumps(charter.params))}
    assert as_json["hash"] == charter.hash.hex()
    assert cli("charter", "show", "testnet").stdout == builtin("testnet").to_toml()

    ok = cli("charter", "verify", str(path), "--id", charter.network_id)
    assert (ok.returncode, ok.stdout) == (0, f"{path}: network {charter.network_id} (hash "
                                             f"{charter.hash.hex()}): ok\n")
    wrong = cli("charter", "verify", str(path), "--id", "labnet-0000000000000000")
    assert wrong.returncode == 1
    assert wrong.stderr.startswith(f"error: {path} is network {charter.network_id}, not "
                                   f"labnet-0000000000000000 as --id says"), wrong.stderr
    # A hashed value edited by hand: the file's own first line no longer names it.
    path.write_text(path.read_text().replace("window_ticks = 16", "window_ticks = 17"))
    edited = Charter.from_toml_file(str(path))
    tampered = cli("charter", "verify", str(path))
    assert tampered.returncode == 1
    assert tampered.stderr == (f"error: {path} is network {edited.network_id}, not "
                               f"{charter.network_id} as its first line says: its hashed content "
                               f"(name, model, admission or a [params] value) differs from that "
                               f"network's charter\n")
    broken = tmp_path / "broken.toml"
    broken.write_text(charter.to_toml().replace("tick_s = 1.0\n", ""))
    missing = cli("charter", "verify", str(broken))
    assert (missing.returncode, missing.stderr) == (
        1, f"error: {broken}: [params] misses tick_s (a charter states every value)\n")


def test_charter_new_flags_that_cannot_work(tmp_path: Path) -> None:
    from neuroshard_p2p.cli import EXIT_ERROR, EXIT_USAGE, main

    authority = make_key(7).public_key.format(compressed=True).hex()
    members = tmp_path / "members.toml"
    assert main(["charter", "new", "--name", "club", "--members", "--authority", authority,
                 "-o", str(members)]) == 0
    charter = Charter.from_toml_file(str(members))
    assert charter.members and charter.authorities == (bytes.fromhex(authority),)
    assert main(["charter", "new", "--name", "club", "-o", str(members)]) == EXIT_ERROR  # exists
    assert main(["charter", "new", "--authority", authority]) == EXIT_USAGE  # without --members
    assert main(["charter", "new", "--members"]) == EXIT_USAGE  # without an authority
    assert main(["charter", "new", "--set", "windw_ticks=3"]) == EXIT_USAGE
    assert main(["charter", "new", "--set", "window_ticks=many"]) == EXIT_ERROR
    assert main(["charter", "new", "--name", "a b"]) == EXIT_ERROR


def test_help_of_every_charter_action_describes_every_flag() -> None:
    import argparse

    from neuroshard_p2p.cli import build_parser

    [commands] = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    charter = commands.choices["charter"]
    [actions] = [a for a in charter._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(actions.choices) == {"new", "show", "verify"}
    for name, parser in actions.choices.items():
        text = parser.format_help()
        for action in parser._actions:
            assert action.help, f"charter {name} {action.option_strings or action.dest}"
            for flag in action.option_strings:
                assert flag in text


def test_a_node_whose_config_changes_a_charter_value_refuses_to_start(tmp_path: Path) -> None:
    data_dir = tmp_path / "node"
    ensure_data_dir(data_dir)
    (data_dir / "config.toml").write_text("[market]\nwindow_ticks = 16\nclaim_timeout_s = 5\n")
    testnet = builtin("testnet")
    refused = cli("run", "--data-dir", str(data_dir), "--listen", "/ip4/127.0.0.1/tcp/0",
                  "--api", "off")
    assert refused.returncode == 1
    assert refused.stderr.splitlines()[-1] == (
        f"error: [market] window_ticks = 16 changes the charter of network {testnet.network_id} "
        f"(window_ticks = 32); a charter value is the network's, not the node's: remove it from "
        f"the config, or run another network with `neuroshard-node charter new`")
    assert "ready" not in refused.stdout and not (data_dir / "api").exists()
    # The same config on a charter whose window is 16 is fine: the value is the network's.
    charter = tmp_path / "w16.toml"
    charter.write_text(builtin("simnet").with_params(window_ticks=16).to_toml())
    from neuroshard_p2p.cli import build_parser, run_settings

    args = build_parser().parse_args(["run", "--data-dir", str(data_dir), "--charter", str(charter)])
    settings = run_settings(args)
    assert settings.network == builtin("simnet").with_params(window_ticks=16).network_id
    assert settings.market.claim_timeout_s == 5.0 and settings.market.window_ticks == 16
    both = cli("run", "--data-dir", str(data_dir), "--charter", str(charter), "--network", "simnet")
    assert both.returncode == 2 and "--network NAME (a built-in network) or --charter FILE" in \
        both.stderr


async def test_two_nodes_of_different_charters_never_exchange_a_market_message(
        tmp_path: Path) -> None:
    """a and a2 run one charter, b another (one param apart). b dials a; a2 bootstraps from a.
    a2 and a hear each other (the control); b and a never do, by gossip or by sync."""
    ours = simnet_charter(TEST_MARKET)
    theirs = simnet_charter(TEST_MARKET.replace(window_ticks=9))
    assert ours.name == theirs.name and ours.network_id != theirs.network_id
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, test_settings(tmp_path / "a", charter=ours, capacity=100),
                             make_key(1))
        b = await start_node(nursery, test_settings(tmp_path / "b", charter=theirs, capacity=200),
                             make_key(2))
        await b.node.connect(a.node.addrs[0])
        a2 = await start_node(nursery, test_settings(tmp_path / "a2", charter=ours, capacity=300,
                                                     bootstrap=(a.node.addrs[0],)), make_key(3))
        assert a.node.topic != b.node.topic
        signer = {id(n): n.node.engine.signer for n in (a, b, a2)}
        a_s, b_s, a2_s = signer[id(a)], signer[id(b)], signer[id(a2)]

        def held(n: RunningNode) -> set[bytes]:
            return {o.signer for o in n.node.engine.view.offers_at(n.node.now())}

        await eventually(lambda: held(a) == {a_s, a2_s} == held(a2), 15,
                         "a and a2 (one charter) hold each other's offers",
                         show=lambda: (held(a), held(a2)))
        await eventually(lambda: b.node.engine.announcements_published >= 1 and
                         held(b) == {b_s}, 5, "b announced")
        b_id = b.node.host.get_id()
        assert b_id in a.node.host.get_connected_peers()  # connected at the libp2p level
        # gossip: neither side counts the other as a peer of its topic, nor holds its offer
        assert b_id not in a.node.pubsub.peer_topics.get(a.node.topic, set())
        assert a.node.host.get_id() not in b.node.pubsub.peer_topics.get(b.node.topic, set())
        assert held(a) == {a_s, a2_s} and held(b) == {b_s}
        assert b.node.stats().supply_tokens_per_sec == 200
        assert a.node.stats().supply_tokens_per_sec == a2.node.stats().supply_tokens_per_sec == 400
        # sync: a does not speak b's sync protocol, nor b a's
        for asking, asked in ((b, a), (a, b)):
            refused = (f"failed: protocol not supported by the peer (tried "
                       f"['{sync_protocol(asking.node.settings.network)}'])")
            with pytest.raises(NodeError, match=re.escape(refused)):
                await asking.node.sync_with(asked.node.host.get_id())
        assert held(a) == {a_s, a2_s} and held(b) == {b_s}
        nursery.cancel_scope.cancel()


async def test_identity_work_is_ground_kept_in_the_data_dir_and_reused(tmp_path: Path) -> None:
    """A node on a charter asking 12 bits grinds them, says so on /api/node and /metrics, and
    keeps the nonce in <data-dir>/work.json; started again, it grinds nothing."""
    charter = simnet_charter(TEST_MARKET.replace(identity_work_bits=12), name="worknet")
    data_dir = tmp_path / "node"
    signer = make_key(5).public_key.format(compressed=True)
    async with api_node(data_dir, 5, charter=charter) as api:
        progress = api.node.work.progress
        await eventually(lambda: progress.done, 30, "12 bits of identity work")
        assert not progress.loaded and progress.hashes > 0
        assert progress.bits == work_bits(signer, progress.nonce) >= 12
        assert api.node.engine.work_nonce == progress.nonce
        info = (await api.get("/api/node")).json()
        assert info["work"] == {"bits": progress.bits, "required_bits": 12, "weight": 1.0,
                                "nonce": progress.nonce, "done": True,
                                "hashes": progress.hashes, "kept": False}
        assert info["charter"]["network_id"] == charter.network_id
        metrics = (await api.get("/metrics")).text
        assert f"neuroshard_identity_work_bits {float(progress.bits)}" in metrics
        assert "neuroshard_identity_work_required_bits 12.0" in metrics
        assert "neuroshard_identity_weight 1.0" in metrics
        nonce, bits = progress.nonce, progress.bits
    stored = load_work(data_dir, signer)
    assert stored is not None and (stored.nonce, stored.bits) == (nonce, bits)
    assert json.loads((data_dir / WORK_FILE).read_text())["signer"] == signer.hex()

    async with api_node(data_dir, 5, charter=charter) as again:
        progress = again.node.work.progress
        assert (progress.loaded, progress.hashes, progress.nonce, progress.bits) == (
            True, 0, nonce, bits)
        assert again.node.engine.work_nonce == nonce  # before any announcement
        info = (await again.get("/api/node")).json()
        assert (info["work"]["kept"], info["work"]["hashes"]) == (True, 0)


async def test_unfinished_work_resumes_where_it_stopped_and_counts_with_its_weight(
        tmp_path: Path) -> None:
    signer = make_key(6).public_key.format(compressed=True)
    better: list[int] = []
    work = IdentityWork(signer, 40, tmp_path, on_better=better.append, chunk=2_000)
    work.load()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(work.run)
        await eventually(lambda: work.progress.hashes >= 6_000, 30, "three chunks ground")
        nursery.cancel_scope.cancel()
    p = work.progress
    assert p.next_nonce == p.hashes and 0 < p.bits < 40 and better[-1] == p.nonce
    assert p.weight == 2.0 ** (p.bits - 40)
    stored = load_work(tmp_path, signer)
    assert stored is not None and (stored.nonce, stored.bits, stored.next_nonce) == (
        p.nonce, p.bits, p.next_nonce)
    resumed = IdentityWork(signer, 40, tmp_path, on_better=better.append)
    resumed.load()
    assert (resumed.progress.nonce, resumed.progress.next_nonce, resumed.progress.loaded) == (
        p.nonce, p.next_nonce, True)
    # another key's work is not ours; a damaged file is ground over, never fatal
    other = IdentityWork(make_key(7).public_key.format(compressed=True), 40, tmp_path,
                         on_better=better.append)
    other.load()
    assert (other.progress.loaded, other.progress.bits) == (False, 0)
    (tmp_path / WORK_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="cannot read"):
        load_work(tmp_path, signer)
    damaged = IdentityWork(signer, 40, tmp_path, on_better=better.append)
    damaged.load()
    assert damaged.progress.loaded is False
    # no work asked (simnet): nothing is read, nothing is ground
    idle = IdentityWork(signer, 0, tmp_path / "none", on_better=better.append)
    idle.load()
    await idle.run()
    assert idle.progress.done and idle.progress.weight == 1.0 and not (tmp_path / "none").exists()
