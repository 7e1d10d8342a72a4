"""Reach without namespaces: the AutoNAT verdict rule, where a dial-back goes, and a node's
reach report over its real HTTP API (tests/test_reach_netns.py has the real NATs)."""

from __future__ import annotations

from pathlib import Path

import multiaddr
import trio

from neuroshard_p2p.node.libp2p_compat import mdns_service_type, observed_dialback_targets
from neuroshard_p2p.node.reach import beyond_loopback, reachability_verdict
from tests.conftest import make_key
from tests.node_harness import start_node, test_settings
from tests.waiting import eventually


def test_one_dial_back_is_public_every_failed_one_is_private_refusals_do_not_count() -> None:
    assert reachability_verdict({}, "unknown") == "unknown"
    assert reachability_verdict({"a": None, "b": None}, "public") == "public"
    assert reachability_verdict({"a": False, "b": None}, "unknown") == "private"
    assert reachability_verdict({"a": False, "b": True}, "private") == "public"
    assert reachability_verdict({"a": False, "b": False}, "public") == "private"


def test_a_dial_back_goes_to_the_observed_ip_on_the_advertised_tcp_ports_only() -> None:
    addrs = [multiaddr.Multiaddr(a).to_bytes() for a in (
        "/ip4/10.0.1.2/tcp/4001", "/ip4/127.0.0.1/tcp/4001", "/ip4/10.0.1.2/tcp/4002",
        "/ip4/203.0.113.10/tcp/4001/p2p/16Uiu2HAmKQgCdD4gNLmJvLhYM8pMtpNHbfWGtSh4ae2czvK4W1TC"
        "/p2p-circuit")]
    assert observed_dialback_targets(addrs + [b"\xff junk"], "203.0.113.1") == [
        ("203.0.113.1", 4001), ("203.0.113.1", 4002)]
    assert observed_dialback_targets(addrs, None) == []  # no observed IP: nothing to dial


def test_the_mdns_service_type_names_the_network_within_dns_sd_limits() -> None:
    kind = mdns_service_type("testnet-3094f19bc2e8b045")
    assert kind == mdns_service_type("testnet-3094f19bc2e8b045") != mdns_service_type("simnet-x")
    assert kind.startswith("_p2p-") and kind.endswith("._udp.local.")
    assert len(kind.split(".")[0].lstrip("_")) <= 15  # RFC 6763 §7.2


def test_only_a_node_listening_beyond_loopback_is_on_a_lan() -> None:
    assert not beyond_loopback(("/ip4/127.0.0.1/tcp/0",))
    assert not beyond_loopback(("/ip4/127.0.1.7/tcp/4011", "/ip6/::1/tcp/4011"))
    assert beyond_loopback(("/ip4/127.0.0.1/tcp/0", "/ip4/0.0.0.0/tcp/4011"))
    assert beyond_loopback(("/ip4/10.0.0.2/tcp/4011",))
    assert beyond_loopback(("/ip6/::/tcp/4011",))
    assert beyond_loopback(("/dns4/node.example/tcp/4011",))


async def test_a_node_on_loopback_sends_nothing_to_the_lan(tmp_path: Path) -> None:
    """mDNS and UPnP on (the defaults), listening on 127.0.0.1: neither starts."""
    settings = test_settings(tmp_path / "a").replace(mdns=True, upnp=True)
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, settings, make_key(1))
        snap = a.node.reach.snapshot()
        assert (snap["mdns"], snap["upnp"]) == (False, "off (listening on loopback only)")
        await a.stop()


async def test_two_nodes_on_loopback_judge_each_other_public_and_serve_relays(
        tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        a = await start_node(nursery, test_settings(tmp_path / "a"), make_key(1))
        b = await start_node(nursery, test_settings(tmp_path / "b", bootstrap=(a.node.addrs[0],)),
                             make_key(2))
        await _judged_public(a, b)
        for n in (a, b):
            await n.stop()


async def _judged_public(a, b) -> None:  # type: ignore[no-untyped-def]

    def judged() -> bool:
        return all(n.node.reach.state.reachability == "public" for n in (a, b))

    await eventually(judged, 20, "both nodes are judged public (each dials the other back)")
    for n in (a, b):
        snap = n.node.reach.snapshot()
        assert snap["relay_service"] is True  # relay_service "auto" and public
        assert snap["relays"] == {} and snap["connections"] == {"direct": 1, "relayed": 0}
        assert set(snap["autonat_answers"].values()) == {True}
