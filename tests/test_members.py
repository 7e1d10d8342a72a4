"""A members network end to end: an authority writes the charter and issues credentials with the
CLI, three real nodes run it, a job is served between members, an outsider counts for nothing,
and a revocation published through one node's API ends a member everywhere."""

from __future__ import annotations

import json
from pathlib import Path

import coincurve
import pytest
import trio

from neuroshard_p2p.charter import Charter
from neuroshard_p2p.cli import main as cli_main
from neuroshard_p2p.config import ConfigError, MarketConfig
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.node.datadir import ensure_data_dir, load_private_key
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.wire import Announcement, encode
from neuroshard_p2p.wire.membership import Admission, issue_credential
from tests.node_harness import start_node, test_settings
from tests.test_jobs import finished
from tests.waiting import eventually

MARKET = MarketConfig(dynamic_pricing=False, target_response_s=2.0, claim_timeout_s=10.0,
                      request_expiry_s=60.0, capacity_timeout_s=5.0, settle_delay_s=1.0,
                      window_ticks=8)
PRICE = 100_000_000  # fixed_price 0.1 NEURO per 1M tokens


def cli(*args: str) -> int:
    return cli_main(list(args))


def members_charter(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                    ) -> tuple[Charter, dict[str, Path]]:
    """The authority's data dir and three members' (a gateway, a provider, one more), the charter
    written by `charter new --members`, each member's credential installed by `member issue`."""
    dirs = {name: tmp_path / name for name in ("authority", "gateway", "provider", "third")}
    for d in dirs.values():
        ensure_data_dir(d)
    authority = load_private_key(dirs["authority"]).public_key.format(compressed=True)
    charter_file = tmp_path / "guild.toml"
    sets = [f"--set={k}={v}" for k, v in (("dynamic_pricing", "false"),
                                          ("target_response_s", "2.0"),
                                          ("capacity_timeout_s", "5.0"),
                                          ("settle_delay_s", "1.0"), ("window_ticks", "8"),
                                          ("identity_work_bits", "0"))]
    assert cli("charter", "new", "--name", "guild", "--members", "--authority", authority.hex(),
               *sets, "-o", str(charter_file)) == 0
    charter = Charter.from_toml_file(str(charter_file))
    assert charter.members and charter.authorities == (authority,)
    for name in ("gateway", "provider", "third"):
        member = peer_id_of(load_private_key(dirs[name]).public_key.format(compressed=True))
        assert cli("member", "issue", member, "--charter", str(charter_file), "--data-dir",
                   str(dirs["authority"]), "--max-capacity", "800", "--install",
                   str(dirs[name])) == 0
    capsys.readouterr()
    assert cli("member", "show", "--data-dir", str(dirs["provider"]), "--json") == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["roles"], shown["max_tokens_per_second"], shown["authority"]) == (
        ["provider", "gateway"], 800, authority.hex())
    dirs["charter"] = charter_file
    return charter, dirs


def test_only_an_authority_issues_and_a_node_without_a_credential_refuses_to_start(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    charter, dirs = members_charter(tmp_path, capsys)
    outsider = tmp_path / "outsider"
    ensure_data_dir(outsider)
    # The gateway's key is not an authority: it cannot admit anyone.
    assert cli("member", "issue", peer_id_of(load_private_key(outsider).public_key.format()),
               "--charter", str(dirs["charter"]), "--data-dir", str(dirs["gateway"]),
               "--install", str(outsider)) == 1
    assert "is not an authority of network " + charter.network_id in capsys.readouterr().err
    settings = test_settings(outsider, charter=charter, market=charter.market)
    with pytest.raises(ConfigError, match="admits members only, and .* holds no credential"):
        Node(settings)
    # A member's credential copied into another node's data dir names another key.
    (outsider / "credential").write_text((dirs["third"] / "credential").read_text())
    with pytest.raises(ConfigError, match="admits another key"):
        Node(settings)


async def test_three_members_trade_an_outsider_counts_nothing_and_a_revocation_ends_a_member(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    charter, dirs = members_charter(tmp_path, capsys)
    admission = Admission.of(charter)
    assert admission is not None

    def settings(name: str, **changes: object) -> NodeSettings:
        return test_settings(dirs[name], charter=charter, market=charter.market, **changes)

    async with trio.open_nursery() as nursery:
        third = await start_node(nursery, settings("third"), load_private_key(dirs["third"]))
        boot = (third.node.addrs[0],)
        gateway = await start_node(nursery, settings("gateway", bootstrap=boot),
                                   load_private_key(dirs["gateway"]))
        provider = await start_node(nursery, settings("provider", bootstrap=boot, capacity=1000,
                                                      min_price=0.01),
                                    load_private_key(dirs["provider"]))
        nodes = (third, gateway, provider)
        provider_key = provider.node.engine.signer

        def supply(n: object) -> int:
            return n.node.stats().supply_tokens_per_sec  # type: ignore[attr-defined]

        # The provider announces 1,000 tok/s; its credential counts 800 of them, everywhere.
        await eventually(lambda: all(supply(n) == 800 for n in nodes), 15,
                         "every member counts the provider's 800 tok/s",
                         show=lambda: [supply(n) for n in nodes])
        # A job between members: the Job carries the gateway's credential, the provider admits it.
        status = gateway.node.jobs.submit(300, 2 * PRICE, prompt="members only", user="alice")
        done = await finished(gateway.node.jobs, status.request_id)
        assert (done.state, done.provider, done.tokens_served) == (
            "completed", provider.node.peer_id, 300)
        assert provider.node.jobs.provider.counts["not_member"] == 0
        # An outsider that forges itself a credential (signed by its own key) counts nothing:
        # every member refuses it `not_member`.
        outsider = coincurve.PrivateKey(b"\x07" * 32)
        forged = issue_credential(outsider, charter.hash, outsider.public_key.format(), roles=3,
                                  max_tokens_per_second=50_000, max_pending_tokens=10**6,
                                  max_pending_requests=1000, issued_at_ms=0,
                                  expires_at_ms=2**62)
        now = third.node.now()
        data = encode(Announcement(outsider.public_key.format(), int(now * 1000), 1, 50_000, 0,
                                   10**6, 1000, 0, forged), outsider)
        verdicts = [n.node.engine.on_gossip(data, now) for n in nodes]
        assert [v.reason for v in verdicts] == ["not_member"] * 3
        assert all(supply(n) == 800 for n in nodes)
        # The authority revokes the provider from now; the third node publishes the list (what
        # its API's POST /api/revocations does, tests/test_api.py).
        revoke_at = int(third.node.now() * 1000)
        assert cli("member", "revoke", provider.node.peer_id, "--charter", str(dirs["charter"]),
                   "--data-dir", str(dirs["authority"]), "--from-ms", str(revoke_at)) == 0
        wire = bytes.fromhex((dirs["authority"] / f"revocations-{charter.network_id}")
                             .read_text().strip())
        verdict = await third.node.publish_revocations(wire)
        assert verdict.accepted, verdict.detail
        await eventually(lambda: all(n.node.engine.view.revoked_from(provider_key) == revoke_at
                                     for n in nodes), 10, "every member holds the revocation")
        await eventually(lambda: all(supply(n) == 0 for n in nodes), 10,
                         "nobody counts the revoked provider",
                         show=lambda: [supply(n) for n in nodes])
        digests = {n.node.engine.view.revocations_digest() for n in nodes}
        assert len(digests) == 1
        nursery.cancel_scope.cancel()


async def test_the_api_publishes_an_authoritys_list_and_refuses_anyone_elses(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuroshard_p2p.node.datadir import CREDENTIAL_FILE, save_hex_file
    from neuroshard_p2p.wire.membership import revoke
    from tests.api_harness import api_node
    from tests.conftest import make_key

    charter, dirs = members_charter(tmp_path, capsys)
    member = make_key(41)
    # The authority runs a node of its own (its data dir, its API token); the node's libp2p key
    # is a member's, the authority key stays in identity.key for the CLI to sign with.
    node_dir = dirs["authority"]
    authority = load_private_key(dirs["authority"])
    save_hex_file(node_dir / CREDENTIAL_FILE, issue_credential(
        authority, charter.hash, member.public_key.format(), roles=3, max_tokens_per_second=100,
        max_pending_tokens=1000, max_pending_requests=10, issued_at_ms=0, expires_at_ms=2**62))
    async with api_node(node_dir, 41, charter=charter, market=charter.market) as api:
        now_ms = int(api.node.now() * 1000)
        forged = revoke(member, charter.hash, {member.public_key.format(): 0}, seq=now_ms,
                        issued_at_ms=now_ms)
        refused = await api.post("/api/revocations", json={"list": forged.hex()},
                                 headers=api.auth)
        assert refused.status_code == 422 and "not_member" in refused.json()["error"]
        assert (await api.post("/api/revocations", json={"list": "zz"},
                               headers=api.auth)).status_code == 400
        assert (await api.post("/api/revocations", json={"list": forged.hex()})).status_code == 401
        # The CLI signs with the authority's key and publishes through this node's API.
        target = peer_id_of(load_private_key(dirs["gateway"]).public_key.format())
        # (in a thread: the CLI's HTTP call is blocking, and this trio loop runs the node)
        assert await trio.to_thread.run_sync(
            cli, "member", "revoke", target, "--charter", str(dirs["charter"]), "--data-dir",
            str(dirs["authority"]), "--from-ms", "5", "--publish", "--api", api.url) == 0
        assert "published through the running node" in capsys.readouterr().out
        gateway_key = load_private_key(dirs["gateway"]).public_key.format()
        assert api.node.engine.view.revoked_from(gateway_key) == 5


def test_a_provider_of_a_members_network_declines_a_non_members_job(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from neuroshard_p2p import wire
    from neuroshard_p2p.node.jobs import ProviderDesk
    from neuroshard_p2p.wire import Job

    charter, dirs = members_charter(tmp_path, capsys)
    provider = load_private_key(dirs["provider"]).public_key.format()
    gateway = load_private_key(dirs["gateway"])
    credential = bytes.fromhex((dirs["gateway"] / "credential").read_text().strip())
    desk = ProviderDesk(provider, charter.market, Admission.of(charter))
    now = 1_767_225_600.0

    def job(request_id: str, credential: bytes) -> Job:
        signed = wire.sign(Job(gateway.public_key.format(), int(now * 1000), request_id, "alice",
                               provider, 100, 2 * PRICE, PRICE, 1, "hi", credential), gateway)
        assert isinstance(signed, Job)
        return signed

    refused = desk.admit(job("r1", b""), gateway.public_key.format(), 1000, 0, now)
    assert (refused.accepted, refused.reason) == (False, "not_member")
    admitted = desk.admit(job("r2", credential), gateway.public_key.format(), 1000, 0, now)
    assert admitted.accepted
    assert desk.counts["not_member"] == 1
