"""The simulator's bundled relay (`network.relay_batch_ms`): changes travel in frames over one
stream per mesh peer instead of by gossip, through the same model of each peer's CPU, by the rules
of `simnet/burst_model.py`'s relay (docs/scaling.md, "Twenty-first pass")."""

from __future__ import annotations

import random

import pytest

from simnet import report as report_mod
from simnet.burst_model import RelayCosts, relay_burst
from simnet.cli import main as simnet_main
from simnet.metrics import figures
from simnet.scenario import NetworkModel, ScenarioError, load
from simnet.sim import SimNetwork

#: Round costs (ms) so that every instant below can be added up by hand.
ROUND = {"relay_frame_in_ms": 10.0, "relay_frame_out_ms": 5.0, "relay_item_ms": 2.0,
         "relay_dup_ms": 1.0, "relay_item_out_ms": 0.5}


def _network(peers: int, mesh: list[set[int]] | None = None, **network: float) -> SimNetwork:
    """A built network, nothing run: links of exactly 40 ms, no loss, the relay at 100 ms."""
    settings = {"latency_sigma": 0.0, "loss": 0.0, "cpu_per_copy_ms": 0.1,
                "relay_batch_ms": 100.0, **ROUND, **network}
    net = SimNetwork(load("steady").with_overrides(network=settings), peers, seed=4)
    net._build()
    if mesh is not None:
        net.neighbours = mesh
    return net


def _held_at(net: SimNetwork, v: int) -> list[float]:
    return sorted(at for at, _, _, _ in net._inbox[v])


def test_two_changes_meet_in_one_frame_and_wait_for_the_cpu() -> None:
    """A line 0 - 1 - 2; 0 and 2 change at 1.0 s. Both frames (5 + 0.5 ms to write) reach 1 at
    1.0455; 1 reads 0's (10 + 2 ms, done 1.0575), then 2's (done 1.0695), and only then sends
    both items in one frame (6 ms each, to 0 then 2), arriving at 1.1155 and 1.1215. Each end
    takes one new item and one it holds (13 ms) and sends the new one back to 1, which reads
    both as duplicates (11 ms each)."""
    net = _network(3, [{1}, {0, 2}, {1}])
    net._relay_publish(0, 1.0, b"A")
    net._relay_publish(2, 1.0, b"C")
    net._cpu_advance(5.0)
    assert [wire for _, _, wire, _ in net._inbox[1]] == [b"A", b"C"]
    assert _held_at(net, 1) == pytest.approx([1.0575, 1.0695], abs=1e-12)
    assert [wire for _, _, wire, _ in net._inbox[0] + net._inbox[2]] == [b"C", b"A"]
    assert _held_at(net, 0) + _held_at(net, 2) == pytest.approx([1.1285, 1.1345], abs=1e-12)
    # The engines are told who wrote each item, as gossip's author.
    assert net._inbox[1][0][3] == net.peers[0].peer_bytes
    assert net._inbox[1][1][3] == net.peers[2].peer_bytes
    assert net._cpu_busy == pytest.approx({0: 1.134, 1: 1.196, 2: 1.14}, abs=1e-12)
    assert net._relay_frames[:3].tolist() == [1, 4, 1]
    assert net._received[:3].tolist() == [2, 4, 2]          # announcements read
    assert net.recorder.second(1.0).duplicates == 4          # of them already held
    # Each item's reach: published at 1.0, held by its last peer when that frame was done.
    assert [t0 for t0, _ in net.recorder.flood_reach] == [1.0, 1.0]
    assert sorted(t1 for _, t1 in net.recorder.flood_reach) == pytest.approx([1.1285, 1.1345],
                                                                             abs=1e-12)
    assert net._cpu_copies == [] and net._relay_out == {}
    assert net._relay_items == [None, None] and net._relay_refs[:2].tolist() == [0, 0]


def test_a_peer_sends_at_most_once_per_batch_interval() -> None:
    """Two peers; 0 changes at 1.0 (sent at once) and again at 1.03: the second waits for
    1.0 + 100 ms, though 0's CPU is free from 1.0055, and 1 holds it at 1.1 + 5.5 + 40 + 12 ms."""
    net = _network(2, [{1}, {0}])
    net._relay_publish(0, 1.0, b"a")
    net._cpu_advance(1.03)
    net._relay_publish(0, 1.03, b"b")
    net._cpu_advance(5.0)
    assert _held_at(net, 1) == pytest.approx([1.0575, 1.1575], abs=1e-12)
    # 1 sent "a" back at 1.0575 (read by 0 as a duplicate at 1.103, done 1.114) and "b" at
    # max(1.1575, 1.0575 + 0.1); 0 read that at 1.203.
    assert net._cpu_busy == pytest.approx({0: 1.214, 1: 1.163}, abs=1e-12)


def test_the_simulators_relay_is_burst_models_relay() -> None:
    """On one random mesh of 80 peers, half of them changing at once, with the default costs
    ×10 (`relay_cost_scale`), every peer holds the burst exactly when `relay_burst` says, and
    reads as many frames."""
    defaults = {k: getattr(NetworkModel(), k) for k in ROUND}
    net = _network(80, degree=5, relay_cost_scale=10.0, **defaults)
    costs = net.net.relay
    assert costs is not None
    assert list(vars(costs).values()) == pytest.approx(
        list(vars(RelayCosts().scaled(10.0)).values()), rel=1e-12)
    mesh = [sorted(s) for s in net.neighbours]
    origins = sorted(random.Random(1).sample(range(80), 40))
    for o in origins:
        net._relay_publish(o, 0.0, b"change of %d" % o)
    net._cpu_advance(60.0)
    burst = relay_burst(mesh, origins, costs, 0.1, latency_s=0.04)
    for v in range(80):
        held = _held_at(net, v)
        assert len(held) == 40 - (v in origins)
        assert max(held) == pytest.approx(burst.done_at[v], abs=1e-9)
    assert net._relay_frames[:80].tolist() == burst.frames_in
    assert max(t1 for _, t1 in net.recorder.flood_reach) == pytest.approx(
        burst.held_by_all_s(), abs=1e-9)


def test_the_relay_needs_the_cpu_model(tmp_path, capsys) -> None:
    with pytest.raises(ScenarioError, match="network.relay_batch_ms needs the CPU model"):
        load("shock").with_overrides(network={"relay_batch_ms": 100.0})
    with pytest.raises(ScenarioError, match=r"network.relay_dup_ms must be in \[0, 10000\]"):
        load("shock").with_overrides(network={"cpu_per_copy_ms": 0.1, "relay_dup_ms": -1.0})
    code = simnet_main(["run", "--peers", "12", "--scenario", "shock", "--transport", "sim",
                        "--duration", "12", "--set", "network.relay_batch_ms=100",
                        "--out", str(tmp_path / "x"), "--no-plots", "--quiet"])
    assert code != 0
    assert "network.relay_batch_ms needs the CPU model" in capsys.readouterr().err


def _shock(relay_ms: float, workers: int = 1) -> SimNetwork:
    scenario = load("shock").scaled(20.0).with_overrides(
        node={"quiet_keep_alives": True},
        network={"clock_skew_ms": 0.0, "cpu_per_copy_ms": 3.8, "cpu_per_message_ms": 33.95,
                 "relay_batch_ms": relay_ms, "relay_cost_scale": 50.0})
    net = SimNetwork(scenario, 40, seed=3, sample_s=0.1, workers=workers)
    net.run()
    return net


def test_every_peer_holds_every_change_and_processes_do_not_change_the_report() -> None:
    """`shock` on 40 peers at 1/50 of a core: by relay, every peer's engine is handed every
    change of every other peer once (and nothing is left to lazy gossip); the report of two
    processes is the one process's, sample by sample."""
    one, two = _shock(100.0), _shock(100.0, workers=2)
    items = len(one._relay_items)
    assert items > 40 and not one._recent_floods
    assert one._relay_held[:40, :items].all()
    rec = one.recorder
    # Each change to every peer but its origin.
    assert sum(rec.peer_published) == items and rec.engine_messages == items * 39
    assert all(i is None for i in one._relay_items) and not one._relay_refs.any()
    figs = figures(rec)
    assert figs["traffic"]["delivered_total"] == items * 39
    assert all(e["held_by_all_s"] is not None for e in figs["events"])
    other = two.recorder
    assert report_mod.deterministic_view({"figures": figures(other)}) == \
        report_mod.deterministic_view({"figures": figs})
    assert other.samples == rec.samples
    assert [vars(b) for b in other.traffic] == [vars(b) for b in rec.traffic]
    assert (other.reasons, other.engine_messages, other.peer_received) == \
        (rec.reasons, rec.engine_messages, rec.peer_received)
    # Gossip on the same run carries the same changes, copy by copy: more copies read.
    gossip = figures(_shock(0.0).recorder)
    assert [e["gossiped"] for e in gossip["events"]] == [e["gossiped"] for e in figs["events"]]
    assert gossip["traffic"]["delivered_total"] == figs["traffic"]["delivered_total"]

