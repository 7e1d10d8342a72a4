"""The simulator's model of a peer's CPU (`network.cpu_per_copy_ms`, `cpu_per_message_ms`):
every gossip copy occupies its receiver, copies wait in the order they arrive, and a message is
held and forwarded only once its first copy is done (docs/scaling.md, "Nineteenth pass").
Without it every hop took a fixed 3 ms, so a burst of announcements cost a peer no time at all."""

from __future__ import annotations

import pytest

from simnet.cli import main as simnet_main
from simnet.metrics import figures
from simnet.scenario import ScenarioError, load
from simnet.sim import SimNetwork

#: One link's latency with latency_sigma 0: exactly the median, 40 ms.
LINK_S = 0.040
COPY_S, MESSAGE_S = 0.010, 0.020


def _network(peers: int, copy_ms: float = 10.0, message_ms: float = 20.0) -> SimNetwork:
    scenario = load("steady").with_overrides(network={
        "latency_sigma": 0.0, "loss": 0.0, "cpu_per_copy_ms": copy_ms,
        "cpu_per_message_ms": message_ms})
    net = SimNetwork(scenario, peers, seed=4)
    net._build()
    return net


def test_copies_that_reach_a_busy_peer_wait_in_the_order_they_arrived() -> None:
    """Three announcements from peer 0 at once reach peer 1 together, 40 ms later; peer 1
    takes them one after the other (10 ms per copy + 20 ms per message each), so it holds them
    at 70, 100 and 130 ms, not all at 70 ms."""
    net = _network(2)
    assert net.neighbours == [{1}, {0}]
    for k in range(3):
        net._cpu_publish(0, 1.0, b"announcement %d" % k)
    net._cpu_advance(2.0)
    held = sorted(at for at, _, _, _ in net._inbox[1])
    step = COPY_S + MESSAGE_S
    assert held == pytest.approx([1.0 + LINK_S + step, 1.0 + LINK_S + 2 * step,
                                  1.0 + LINK_S + 3 * step], abs=1e-12)
    assert sorted(wire for _, _, wire, _ in net._inbox[1]) == [b"announcement 0",
                                                              b"announcement 1",
                                                              b"announcement 2"]
    assert int(net._received[1]) == 3 and int(net._received[0]) == 0
    assert net._cpu_busy == pytest.approx({1: 1.0 + LINK_S + 3 * step}, abs=1e-12)
    assert net._inbox[0] == [] and net._cpu_floods == {} and net._cpu_copies == []
    # Each flood's reach: published at 1.0 s, held by its last peer (here the only one) when done.
    assert [t0 for t0, _ in net.recorder.flood_reach] == [1.0, 1.0, 1.0]
    assert [t1 for _, t1 in net.recorder.flood_reach] == pytest.approx(
        [1.0 + LINK_S + k * step for k in (1, 2, 3)], abs=1e-12)


def test_a_duplicate_costs_its_copy_only_and_is_neither_held_again_nor_forwarded() -> None:
    """Peers 1 and 2 get peer 0's message at 40 ms and hold it at 70 ms; each forwards it to the
    other (never back to its origin), so each takes a duplicate at 110 ms for 10 ms."""
    net = _network(3)
    assert net.neighbours == [{1, 2}, {0, 2}, {0, 1}]
    net._cpu_publish(0, 0.0, b"m")
    net._cpu_advance(1.0)
    first = LINK_S + COPY_S + MESSAGE_S
    for v in (1, 2):
        assert [at for at, _, _, _ in net._inbox[v]] == pytest.approx([first], abs=1e-12)
        assert int(net._received[v]) == 2
        assert net._cpu_busy[v] == pytest.approx(first + LINK_S + COPY_S, abs=1e-12)
    assert int(net._received[0]) == 0 and 0 not in net._cpu_busy
    assert net.recorder.second(0.11).duplicates == 2
    assert net._cpu_copies == [] and net._cpu_floods == {}


def test_a_copy_that_comes_while_the_peer_is_idle_does_not_wait() -> None:
    """Two announcements 1 s apart: the peer is free again long before the second, which is
    held one link and one copy's and message's work after it was sent."""
    net = _network(2)
    net._cpu_publish(0, 1.0, b"a")
    net._cpu_advance(1.5)
    net._cpu_publish(0, 2.0, b"b")
    net._cpu_advance(3.0)
    assert sorted(at for at, _, _, _ in net._inbox[1]) == pytest.approx(
        [1.0 + LINK_S + COPY_S + MESSAGE_S, 2.0 + LINK_S + COPY_S + MESSAGE_S], abs=1e-12)


def _shock(copy_ms: float, message_ms: float) -> dict:
    scenario = load("shock").scaled(30.0).with_overrides(
        node={"quiet_keep_alives": True},
        network={"clock_skew_ms": 0.0, "cpu_per_copy_ms": copy_ms,
                 "cpu_per_message_ms": message_ms})
    return figures(SimNetwork(scenario, 30, seed=2, sample_s=0.1).run())


def test_a_burst_the_peers_cannot_take_in_time_delays_agreement() -> None:
    """`shock` on 30 peers: with unlimited CPU every peer quotes one price at every 0.1 s sample
    after both events. With each copy at 60 ms and each message at 120 ms, the 15 providers'
    announcements of "supply halves" take a peer about 15 × (120 + ~5 × 60) ms ≈ 6 s, far past
    the tick they start counting at: some peer quotes another price for seconds (5.75 s here)."""
    free = _shock(0.0, 0.0)
    assert [e["agree_s"] for e in free["events"]] == [0.0, 0.0]
    busy = _shock(60.0, 120.0)
    agree = [e["agree_s"] for e in busy["events"]]
    assert agree[0] is not None and agree[0] >= 3.0, agree
    # What the event gossiped, and when its last announcement reached its last peer: a few
    # hops of ~40 ms with unlimited CPU, seconds with the peers' CPU modelled.
    assert [e["gossiped"] for e in free["events"]] == [e["gossiped"] for e in busy["events"]] \
        == [15, 8]
    assert free["events"][0]["held_by_all_s"] < 0.5
    assert busy["events"][0]["held_by_all_s"] > 4.0
    assert busy["agreement"]["identical_share"] < free["agreement"]["identical_share"]
    # The model delays messages, it does not lose any: every peer is handed every one either
    # way (1,334 deliveries), and about as many copies come (the forwarding paths differ).
    assert busy["traffic"]["delivered_total"] == free["traffic"]["delivered_total"] == 1334
    assert busy["traffic"]["received_per_peer_s"] == pytest.approx(
        free["traffic"]["received_per_peer_s"], rel=0.05)


def test_the_cpu_model_is_refused_where_it_does_not_run() -> None:
    scenario = load("shock").with_overrides(network={"cpu_per_copy_ms": 0.2})
    with pytest.raises(ValueError, match="exact flood model"):
        SimNetwork(scenario, 20, observers=5, flood="paths")
    with pytest.raises(ScenarioError, match=r"network.cpu_per_message_ms must be in \[0, 10000\]"):
        load("shock").with_overrides(network={"cpu_per_message_ms": -1.0})


def test_the_cli_runs_the_model_and_refuses_the_paths_flood(tmp_path, capsys) -> None:
    code = simnet_main(["run", "--peers", "300", "--observers", "10", "--scenario", "shock",
                        "--transport", "sim", "--flood", "paths",
                        "--set", "network.cpu_per_copy_ms=0.15",
                        "--out", str(tmp_path / "x"), "--no-plots", "--quiet"])
    assert code != 0
    assert ("network.cpu_per_copy_ms and cpu_per_message_ms run with the exact flood model "
            "(--flood exact)") in capsys.readouterr().err
    code = simnet_main(["run", "--peers", "12", "--scenario", "shock", "--transport", "sim",
                        "--duration", "12", "--set", "network.cpu_per_copy_ms=0.15",
                        "--set", "network.cpu_per_message_ms=0.3",
                        "--out", str(tmp_path / "y"), "--no-plots", "--quiet"])
    assert code == 0
    assert (tmp_path / "y" / "report.json").exists()


def test_peers_that_join_while_floods_are_in_flight_get_them_too() -> None:
    """With copies at 100 ms and messages at 200 ms the start-up floods are still travelling
    when `late-join` adds its peers: the joiners take copies of floods published before they
    existed (an IndexError before a flood's holders became a set) and end up quoting the
    network's price."""
    scenario = load("late-join").scaled(30.0).with_overrides(
        network={"cpu_per_copy_ms": 100.0, "cpu_per_message_ms": 200.0})
    figs = figures(SimNetwork(scenario, 40, seed=3).run())
    assert [row["joined"] for row in figs["late_join"]] == [8, 10]
    assert all(row["agree_max_s"] is not None for row in figs["late_join"])
    assert figs["traffic"]["delivered_total"] == 2474
