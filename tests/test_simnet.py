"""simnet without real sockets: scenario files, the simulated network (which drives the real
PeerEngine), the figures, the report writer, the economics model and the CLI.

Simulated runs are small (a dozen or two peers) and take well under a second of CPU each."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import threading
from pathlib import Path

import pytest

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.wire import WireError
from neuroshard_p2p.wire.validate import Validator
from simnet import economics as econ
from simnet import report as report_mod
from simnet.cli import main as simnet_main
from simnet.hostile import HOSTILE_KINDS, HostileCrafter
from simnet.metrics import STARTUP_S, PeerSample, Recorder, figures
from simnet.scenario import Event, Scenario, ScenarioError, load, loads, shipped_scenarios
from simnet.sim import EPOCH, SimNetwork, peer_key
from tests.conftest import make_key
from tests.waiting import wait_for


def sim_figures(scenario: Scenario, peers: int, seed: int = 1, **kwargs: object) -> dict:
    rec = SimNetwork(scenario, peers, seed=seed, **kwargs).run()  # type: ignore[arg-type]
    return figures(rec)


# ---------------------------------------------------------------------------------------------
# Scenario files


def test_every_shipped_scenario_loads_with_its_timeline_inside_its_duration() -> None:
    assert shipped_scenarios() == ["churn", "clearing", "demand-pump", "hostile", "key-flood",
                                   "late-join", "local-moves",
                                   "partition", "phases", "shock", "steady", "sybil-capacity",
                                   "sybil-demand", "sync-abuse"]
    for name in shipped_scenarios():
        scenario = load(name)
        assert scenario.name == name
        assert bool(scenario.events) == (name != "steady"), name
        assert all(0 <= e.at_s <= scenario.duration_s for e in scenario.events)
        assert [e.at_s for e in scenario.events] == sorted(e.at_s for e in scenario.events)
    shock = load("shock")
    assert [(e.action, e.factor) for e in shock.events] == [("capacity", 0.5), ("demand", 3.0)]
    assert load("phases").economics["phases"][0] == {"name": "bootstrap", "minutes": 240,
                                                     "demand": 0.005}


@pytest.mark.parametrize("text, words", [
    ('name = "x"\nbogus = 1', "unknown top-level key(s) ['bogus']"),
    ('name = "x"\n[[event]]\nat = 1\naction = "explode"', "action must be one of"),
    ('name = "x"\n[[event]]\nat = 1\naction = "kill"\nfactor = 2.0',
     "kill): unknown parameter(s) ['factor']"),
    ('name = "x"\n[[event]]\naction = "heal"', "`at` (seconds) is required"),
    ('name = "x"\n[[event]]\nat = 1\naction = "kill"\nfraction = 1.5', "fraction must be in [0, 1]"),
    ('name = "x"\nduration_s = 10\n[[event]]\nat = 11\naction = "heal"', "outside 0..duration_s"),
    ('name = "x"\n[[event]]\nat = 1\naction = "capacity"\nfactor = 0.5\ntokens_per_second = 3',
     "exactly one of factor, tokens_per_second"),
    ('name = "x"\n[peers]\nproviders = 2.0', "peers.providers must be a fraction"),
    ('name = "x"\n[network]\ndegree = "six"', "[network] degree must be an integer"),
    ('name = "x"\n[market]\ncapacity_timeout_s = "soon"', "capacity_timeout_s has the wrong type"),
    ('name = "x"\n[[event]]\nat = 1\naction = "hostile"\nkinds = ["polite"]',
     "kinds must be a non-empty list drawn from"),
    ('name = [', "not valid TOML"),
])
def test_a_bad_scenario_is_refused_with_the_key_and_the_reason(text: str, words: str) -> None:
    with pytest.raises(ScenarioError) as info:
        loads(text, "mine.toml")
    assert words in str(info.value)
    assert str(info.value).startswith("mine.toml: ")


def test_scaling_stretches_the_timeline_and_overrides_replace_settings() -> None:
    churn = load("churn").scaled(18.0)
    assert churn.duration_s == 18.0
    assert [round(e.at_s, 9) for e in churn.events] == [4.0, 13.0]
    hostile = load("hostile").scaled(30.0)
    assert hostile.events[0].at_s == 15.0 and hostile.events[0].duration_s == 10.0
    fast = churn.with_overrides(market={"capacity_timeout_s": 8, "window_ticks": 4},
                                node={"announce_interval_s": 2.5}, network={"loss": 0.0})
    market = fast.market_config()
    assert (market.capacity_timeout_s, market.window_ticks) == (8.0, 4)
    assert fast.network.loss == 0.0 and fast.network.degree == 6
    assert fast.node == {"announce_interval_s": 2.5}
    with pytest.raises(ScenarioError, match="unknown setting 'timeout'"):
        churn.with_overrides(market={"timeout": 1})


# ---------------------------------------------------------------------------------------------
# The simulated network


@pytest.mark.parametrize("name", ["shock", "churn", "partition", "hostile", "late-join"])
def test_the_simulated_network_is_deterministic_same_seed_same_report(name: str) -> None:
    scenario = load(name).scaled(45.0)
    runs = [SimNetwork(scenario, 16, seed=seed).run() for seed in (7, 7, 8)]
    views = [report_mod.deterministic_view({"figures": figures(r)}) for r in runs]
    assert views[0] == views[1]
    assert [r.samples for r in runs[:2]] == [runs[1].samples] * 2
    assert [vars(b) for b in runs[0].traffic] == [vars(b) for b in runs[1].traffic]
    # Another seed: another mesh, other latencies and losses, other duplicate counts.
    assert [vars(b) for b in runs[2].traffic] != [vars(b) for b in runs[0].traffic]



def test_a_run_states_its_speed_in_calibration_ops_and_keeps_them_out_of_the_deterministic_view(
) -> None:
    rec = SimNetwork(load("shock").scaled(20.0), 8, seed=3).run()
    traffic = figures(rec)["traffic"]
    # The calibration op is timed in the same process; the ratios follow from the recorded times.
    assert rec.calibration_op_s > 0 and rec.engine_messages > 0
    assert traffic["calibration_op_us"] == round(1e6 * rec.calibration_op_s, 3)
    assert traffic["wall_per_engine_message_ops"] == round(
        rec.wall_s / rec.engine_messages / rec.calibration_op_s, 3)
    view = report_mod.deterministic_view({"figures": figures(rec)})["traffic"]
    for key in ("calibration_op_us", "wall_per_engine_message_ops", "engine_cpu_per_message_ops"):
        assert key in traffic and key not in view

@pytest.mark.parametrize("name, peers, observers", [
    ("hostile", 12, None),      # a hostile message goes on only where an engine accepted it
    ("churn", 16, None),        # kills, replacements syncing on joining
    ("partition", 16, None),    # group meshes, heal syncs, view digests
    ("stop-late-join", 24, 8),  # withdrawals, joiners, an observer sample
    ("churn-quiet", 16, None),  # sync/2.1.0 sessions whose sides run in different processes
])
def test_a_run_spread_over_processes_gives_the_report_of_one_process(
        name: str, peers: int, observers: int | None) -> None:
    if name == "stop-late-join":
        scenario = loads('''name = "stop-late-join"
duration_s = 40
[[event]]
at = 10
action = "stop"
fraction = 0.25
[[event]]
at = 20
action = "add"
role = "provider"
fraction = 0.25
[[event]]
at = 30
action = "capacity"
who = "providers"
factor = 0.5
''')
    elif name == "churn-quiet":
        scenario = load("churn").scaled(40.0).with_overrides(node={"quiet_keep_alives": True})
    else:
        scenario = load(name).scaled(40.0)
    runs = [SimNetwork(scenario, peers, seed=11, workers=w, observers=observers).run()
            for w in (1, 2, 3)]
    one = runs[0]
    assert one.engine_messages > 0 and len(one.samples) == 40
    for rec in runs[1:]:
        assert report_mod.deterministic_view({"figures": figures(rec)}) == \
            report_mod.deterministic_view({"figures": figures(one)})
        assert rec.samples == one.samples           # every peer's price, supply, demand, digest
        assert [vars(b) for b in rec.traffic] == [vars(b) for b in one.traffic]
        assert (rec.reasons, rec.engine_messages, rec.peer_received, rec.peer_published) == \
            (one.reasons, one.engine_messages, one.peer_received, one.peer_published)
    assert runs[2].notes[-1].startswith("run in 3 processes")
    if name == "churn-quiet":  # the sessions ran and carried keep-alives
        assert sum(b.sync_exchanges for b in one.traffic) > 0
        assert sum(b.sync_announcements for b in one.traffic) > 0
    if name == "hostile":
        assert one.reasons["accepted"] < one.engine_messages  # the flood was refused somewhere


def test_a_process_waiting_for_another_hands_its_peers_their_past_deliveries_report_unchanged(
) -> None:
    # 240 peers in 2 processes: each waits for the other's poll and sync values thousands of
    # times and hands its own peers deliveries meanwhile (`SimNetwork._work_ahead`); the
    # report must be the one process's, and the report says how much was handed over.
    scenario = load("shock").scaled(20.0)
    one, two = (SimNetwork(scenario, 240, seed=5, workers=w).run() for w in (1, 2))
    assert report_mod.deterministic_view({"figures": figures(two)}) == \
        report_mod.deterministic_view({"figures": figures(one)})
    assert two.samples == one.samples
    assert [vars(b) for b in two.traffic] == [vars(b) for b in one.traffic]
    assert two.engine_messages == one.engine_messages == 86_040
    assert 0 < two.engine_messages_ahead < two.engine_messages
    assert 0 < two.parallel_wait_s < two.wall_s
    traffic = figures(two)["traffic"]
    assert traffic["processes"] == 2
    assert traffic["engine_messages_ahead_share"] == round(
        two.engine_messages_ahead / two.engine_messages, 4)
    assert traffic["parallel_wait_share"] == round(two.parallel_wait_s / (2 * two.wall_s), 4)
    alone = figures(one)["traffic"]
    assert (one.engine_messages_ahead, alone["processes"], alone["parallel_wait_share"],
            alone["engine_messages_ahead_share"]) == (0, 1, None, None)



def test_a_worker_process_that_dies_mid_run_ends_the_run_with_a_clear_error() -> None:
    # The exchange reads its pipes itself; a worker killed mid-run (here SIGKILL, as the OOM
    # killer would) must end rank 0's run with an error naming it, not a hang, and leave no
    # process behind. The run goes in a thread so that a hang fails the test instead of
    # stopping the suite.
    net = SimNetwork(load("shock").scaled(120.0), 400, seed=2, workers=2)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            net.run()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            errors.append(error)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    (pid,) = wait_for(lambda: net._children, 30.0, "the worker process forked", 0.001)
    os.kill(pid, signal.SIGKILL)
    runner.join(timeout=60.0)
    assert not runner.is_alive(), "the run hung after its worker died"
    assert len(errors) == 1 and isinstance(errors[0], RuntimeError)
    assert "simulation worker 1 stopped before the run ended" in str(errors[0])
    with pytest.raises(ChildProcessError):  # reaped: nothing is left of it
        os.waitpid(pid, os.WNOHANG)


@pytest.mark.parametrize("peers, seed", [(40, 3), (30, 1)])
def test_after_healing_lazy_gossip_brings_what_was_published_as_the_mesh_changed(
        peers: int, seed: int) -> None:
    """Announcements published between the heal and the mesh rebuild flood only the old
    half-meshes; gossipsub's IHAVE/IWANT (`_regossip`) must bring them across, or views differ
    until the next anti-entropy round (with 40 peers and seed 3, past the end of the run)."""
    scenario = load("partition").scaled(60.0).with_overrides(node={"announce_interval_s": 2.5})
    rec = SimNetwork(scenario, peers, seed=seed).run()
    (heal,) = figures(rec)["partition"]
    assert heal["identical_prices_after_s"] is not None
    assert heal["identical_digests_after_s"] == 2.0


def test_simulated_peers_run_the_real_engine() -> None:
    net = SimNetwork(load("shock").scaled(12.0), 6, seed=3)
    rec = net.run()
    assert all(type(p.engine) is PeerEngine for p in net.peers)
    # Every provider's own announcement is in every peer's view: the engines really merged.
    providers = [p.engine.signer for p in net.peers if p.capacity > 0]
    for p in net.peers:
        assert all(p.engine.view.current(s) is not None for s in providers)
    assert rec.reasons["accepted"] == sum(b.accepted for b in rec.traffic) > 0


class _CallLogNetwork(SimNetwork):
    """A simulated network that logs, per peer, every engine call and the time it was given
    (the calls go through to the real engine unchanged)."""

    NOW_ARG = {"on_gossip": 1, "poll_announcements": 0, "stats": 0, "sync_request": 0,
               "on_sync_request": 1, "on_sync_response": 1, "withdraw": 0,
               "set_offer": None, "set_demand": None}   # None: at the network's current time

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.calls: list[list[tuple[str, float]]] = []
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def _new_peer(self, role: str, t: float, **kwargs: object):  # type: ignore[no-untyped-def]
        peer = super()._new_peer(role, t, **kwargs)  # type: ignore[arg-type]
        log: list[tuple[str, float]] = []
        self.calls.append(log)
        for name, at in self.NOW_ARG.items():
            method = getattr(peer.engine, name)

            def logged(*args: object, _m=method, _name=name, _at=at, _peer=peer):  # type: ignore[no-untyped-def]
                now = _peer.now(self.t) if _at is None else float(args[_at])  # type: ignore[arg-type]
                log.append((_name, now))
                return _m(*args)

            setattr(peer.engine, name, logged)
        many = peer.engine.on_gossip_many

        def logged_many(deliveries, _m=many):  # type: ignore[no-untyped-def]
            deliveries = list(deliveries)
            log.extend(("on_gossip", float(now)) for _, now, _ in deliveries)
            return _m(deliveries)

        peer.engine.on_gossip_many = logged_many  # a batch logs one on_gossip per delivery
        return peer


def test_every_engine_is_handed_its_messages_in_time_order_and_none_after_its_death() -> None:
    # Honest deliveries wait in the receiving peer's inbox until something else touches that
    # peer; they must still reach each engine in network-time order, between its other calls,
    # and all of them before the end, and none after the peer was killed. Hostile messages (queued
    # one by one) interleave with them.
    scenario = loads("""
        name = "order"
        duration_s = 40
        [node]
        announce_interval_s = 2
        sync_interval_s = 2
        [peers]
        providers = 0.5
        capacity = 1000
        demand_peers = 0.25
        [[event]]
        at = 10
        action = "hostile"
        rate = 30.0
        duration_s = 15
        kinds = ["forged", "replayed", "backdated", "future"]
        [[event]]
        at = 14
        action = "capacity"
        who = "providers"
        factor = 0.5
        [[event]]
        at = 16
        action = "demand"
        factor = 2.0
        [[event]]
        at = 18
        action = "kill"
        fraction = 0.25
        [[event]]
        at = 39.5
        action = "stop"
        who = "providers"
        count = 1
    """)
    net = _CallLogNetwork(scenario, 20, seed=11)
    rec = net.run()
    gossip = [[now - EPOCH - p.skew for name, now in log if name == "on_gossip"]
              for p, log in zip(net.peers, net.calls)]
    assert sum(map(len, gossip)) == rec.engine_messages == sum(b.delivered for b in rec.traffic)
    for index, (peer, log) in enumerate(zip(net.peers, net.calls)):
        # Network times back from the engines' clocks (EPOCH + t + skew: 1e-6 covers rounding).
        times = [now - EPOCH - peer.skew for _, now in log]
        assert all(a <= b + 1e-6 for a, b in zip(times, times[1:])), f"peer {index} out of order"
        assert times[-1] < scenario.duration_s
        stopped = rec.peer_stopped[index]
        if stopped is not None:
            assert all(t <= stopped + 1e-6 for t in times), f"peer {index} heard after death"
        elif peer.role != "hostile":
            # The withdrawal published with the last sample, 0.5 s before the end, reached every
            # live peer before the end.
            assert any(t > 39.5 for t in gossip[index]), f"peer {index} missed the withdrawal"
    assert sum(1 for s in rec.peer_stopped if s is not None) == 5 + 1
    assert rec.reasons["accepted"] > 0 and rec.reasons["bad_signature"] > 0


def test_shock_all_simulated_peers_follow_the_price_together() -> None:
    figs = sim_figures(load("shock"), 20, seed=2)
    assert figs["agreement"]["identical_share"] == 1.0
    supply_halves, spike = figs["events"]
    # A change counts once settle_delay (2 s) has passed: the price moves 2-3 s after the event.
    assert 2.0 <= supply_halves["moved_after_s"] <= 3.0
    assert supply_halves["price_after_nano"] > supply_halves["price_before_nano"]
    assert spike["price_after_nano"] > spike["price_before_nano"]
    after = figs["agreement"]["after_event_s"]
    assert after["never_agreed"] == 0 and after["all_peers_max"] <= 5.0
    # Keep-alives every 20 s from 3 in 4 peers (providers and demand peers; idle peers are quiet).
    assert 0.02 <= figs["traffic"]["steady_published_per_peer_s"] <= 0.2


def test_churn_dead_peers_stop_counting_at_last_announcement_plus_timeout() -> None:
    scenario = load("churn")
    kill, replace = scenario.events
    scenario = dataclasses.replace(scenario, events=(dataclasses.replace(kill, who="providers"),
                                                     replace))
    figs = sim_figures(scenario, 16, seed=4)
    (churn,) = figs["churn"]
    assert churn["killed"] == 2 and churn["capacity_removed"] == 2000
    # Clocks differ by ~20 ms and samples are 1 s apart.
    assert churn["bound_after_s"] - 0.1 <= churn["stopped_counting_after_s"] \
        <= churn["bound_after_s"] + 1.0
    assert churn["bound_after_s"] <= 60.0  # timeout, counted from an announcement before the kill
    (joined,) = figs["late_join"]
    assert joined["joined"] == 2 and joined["agree_max_s"] <= 2.0


def test_partition_views_and_prices_are_identical_soon_after_healing() -> None:
    figs = sim_figures(load("partition"), 20, seed=5)
    (healed,) = figs["partition"]
    assert healed["largest_spread_during_split_nano"] > 0  # the halves really went apart
    assert healed["identical_digests_after_s"] is not None
    assert healed["identical_digests_after_s"] <= 5.0
    assert healed["identical_prices_after_s"] <= 5.0
    assert figs["agreement"]["after_event_s"]["events_during_partition"] == 3  # split + 2 inside


def test_hostile_flood_is_refused_for_every_reason_and_moves_no_price() -> None:
    figs = sim_figures(load("hostile"), 14, seed=6)
    (flood,) = figs["hostile"]
    assert flood["sent"] == 1500  # 50 messages/s for 30 s
    assert flood["largest_move_nano"] == 0
    reasons = figs["traffic"]["reasons"]
    for reason in ("bad_signature", "stale", "oversize", "future", "implausible", "duplicate"):
        assert reasons.get(reason, 0) > 0, reason
    assert figs["agreement"]["identical_share"] == 1.0


def test_late_joiners_quote_the_network_price_within_a_sample() -> None:
    figs = sim_figures(load("late-join"), 20, seed=8)
    observers, providers = figs["late_join"]
    assert observers["joined"] == 4 and providers["joined"] == 5
    assert observers["agree_max_s"] <= 1.0 and providers["agree_max_s"] <= 1.0


def test_observer_sample_prices_at_k_peers_but_every_peer_announces() -> None:
    net = SimNetwork(load("shock").scaled(20.0), 40, seed=9, observers=6)
    rec = net.run()
    assert rec.observers is not None and len(rec.observers) == 6
    assert all(len(rows) == 6 for rows in rec.samples)
    announcing = sum(1 for p in net.peers if p.capacity or p.demand)
    assert sum(rec.peer_published) >= announcing
    assert any("observer sample" in note for note in rec.notes)


def test_observers_sync_with_observers_so_a_partition_heals_in_the_sample_too() -> None:
    net = SimNetwork(load("partition"), 60, seed=10, observers=12)
    figs = figures(net.run())
    (healed,) = figs["partition"]
    assert healed["identical_digests_after_s"] is not None
    assert healed["identical_digests_after_s"] <= 5.0
    assert sum(1 for p in net.peers if p.observed) == 12
    assert net.recorder.traffic and sum(b.sync_exchanges for b in net.recorder.traffic) > 12


# ---------------------------------------------------------------------------------------------
# Hostile messages are the invalid kinds they claim to be


def test_each_hostile_kind_is_refused_by_a_real_validator_with_its_reason() -> None:
    config = MarketConfig()
    now = EPOCH + 500.0
    honest = PeerEngine(config, make_key(1), tokens_per_second=1000)
    captured = honest.poll_announcements(now - 1)
    crafter = HostileCrafter(peer_key(1, 99, b"hostile"), config, HOSTILE_KINDS)
    expected = {"forged": "bad_signature", "replayed": "duplicate", "backdated": "stale",
                "oversize": "oversize", "future": "future", "implausible": "implausible"}
    validator = Validator(config)
    validator.check(captured[0], now)  # the honest original, seen before its replay
    for kind in HOSTILE_KINDS:
        data = crafter.craft(kind, now, captured, [honest.signer])
        with pytest.raises(WireError) as info:
            validator.check(data, now)
        assert info.value.reason == expected[kind], kind


# ---------------------------------------------------------------------------------------------
# Figures on a hand-made record


def _recorder(prices_by_sample: list[list[int]], times: list[float]) -> Recorder:
    rec = Recorder("hand", "sim", MarketConfig(), 1.0)
    for i in range(len(prices_by_sample[0])):
        rec.add_peer(f"p{i}", 0.0)
    for t, prices in zip(times, prices_by_sample):
        rec.sample(t, [PeerSample(i, p, 10, 0, 1) for i, p in enumerate(prices)], (10, 0, 3))
    rec.network_s = times[-1] + 0.5
    return rec


def test_agreement_after_an_event_is_the_end_of_the_last_disagreement() -> None:
    rec = _recorder([[5, 5, 5], [5, 5, 5], [5, 6, 5], [6, 6, 5], [6, 6, 6], [6, 6, 6]],
                    [0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    rec.record_event(1.0, Event(at_s=1.0, action="demand", factor=2.0))
    figs = figures(rec)
    (event,) = figs["events"]
    assert event["agree_s"] == 3.5          # last disagreement at 3.5 → agreed from 4.5
    assert event["moved_after_s"] == 2.5    # modal price 5 → 6 first at 3.5
    assert figs["agreement"]["identical_share"] == 0.6667  # 4 of 6, to 4 digits
    assert figs["agreement"]["largest_spread_nano"] == 1
    # Per peer: p1 differs from the modal price at 2.5 (modal 5), p2 at 3.5 (modal 6).
    assert (event["per_peer_p50_s"], event["per_peer_p99_s"]) == (2.5, pytest.approx(3.48))


# ---------------------------------------------------------------------------------------------
# Reports


def test_run_report_writes_json_markdown_and_three_plots(tmp_path: Path) -> None:
    rec = SimNetwork(load("hostile").scaled(30.0), 8, seed=1).run()
    data = report_mod.write_run_report(rec, tmp_path, {"scenario": "hostile", "transport": "sim",
                                                        "peers": 8, "seed": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "messages.png", "price.png", "report.json", "report.md", "supply_demand.png"]
    assert json.loads((tmp_path / "report.json").read_text())["figures"] == \
        json.loads(json.dumps(data["figures"], default=str))
    text = (tmp_path / "report.md").read_text()
    assert "## Hostile" in text and "samples on which all live peers quoted the identical price" in text
    assert (tmp_path / "price.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Economics


SHORT = econ.EconomicsParams(nodes=40, phases=(econ.Phase("bootstrap", 40, 0.005),
                                               econ.Phase("growth", 60, 0.10),
                                               econ.Phase("mature", 60, 0.40)))


def test_break_even_and_floor_prices_follow_from_the_formula() -> None:
    seed = econ.run(MarketConfig(), SHORT)
    normalized = econ.run(MarketConfig(curve="normalized"), SHORT)
    # 60 batches/min × 0.0005 NEURO = 0.0005 NEURO/s = 1000 tokens/s × P × 0.95 / 1M
    assert seed.break_even_price == pytest.approx(0.0005 / (1000 * 0.95) * 1e6, rel=1e-12)
    assert seed.floor_price == pytest.approx(0.01 + 0.99 / (1 + math.exp(3)), rel=1e-12)
    assert round(seed.floor_price, 4) == 0.0570
    assert normalized.floor_price == pytest.approx(0.01, abs=1e-12)


def test_economics_is_deterministic_and_checks_every_claim() -> None:
    a = econ.run(MarketConfig(), SHORT)
    b = econ.run(MarketConfig(), SHORT)
    assert a.series.price == b.series.price and a.phases == b.phases
    claims = econ.check_claims(a)
    assert [c["claim"] for c in claims] == [c.text for c in econ.CLAIMS]
    # Free entry: in the mature phase a serving node earns about what training pays, not half.
    mature = a.phases[-1]
    assert mature.profit_ratio is not None and 0.9 <= mature.profit_ratio <= 1.3
    assert claims[3]["reproduced"] is False
    # The mature price settles below the break-even price of an average node (the largest nodes
    # serve first) and never reaches the claimed 0.6-0.8.
    assert mature.price_median < a.break_even_price and claims[2]["reproduced"] is False


def test_economics_report_says_which_claims_hold(tmp_path: Path) -> None:
    results = [econ.run(m, SHORT) for m in econ.variants(MarketConfig())]
    assert [r.label for r in results] == ["seed", "normalized", "seed, max_step 0.05",
                                          "normalized, max_step 0.05", "clearing"]
    report_mod.write_economics_report(results, tmp_path, plots=False)
    text = (tmp_path / "report.md").read_text()
    assert text.count("| the design claims | model | reproduced? |") == 5
    assert "## Curve vs clearing, same demand path and nodes" in text
    assert "Break-even price P*" in text and "Inference profit ≈ 50 % of training" in text


# ---------------------------------------------------------------------------------------------
# CLI


def test_cli_run_on_the_simulated_network_writes_the_report(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code = simnet_main(["run", "--transport", "sim", "--peers", "8", "--scenario", "shock",
                        "--duration", "30", "--seed", "3", "--out", str(tmp_path), "--no-plots",
                        "--quiet", "--set", "network.loss=0.0"])
    assert code == 0
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["meta"]["settings"]["network"]["loss"] == 0.0
    assert data["meta"]["peers"] == 8
    assert "report:" in capsys.readouterr().out


def test_cli_refuses_a_bad_override_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    assert simnet_main(["run", "--transport", "sim", "--peers", "4", "--scenario", "shock",
                        "--set", "market.capacity_timeout_s"]) == 1
    assert "expected market.KEY=VALUE" in capsys.readouterr().err
    assert simnet_main(["run", "--peers", "4", "--scenario", "nope"]) == 1
    assert "unknown scenario 'nope'" in capsys.readouterr().err


def test_quiet_keep_alives_ride_sync_2_1_sessions_and_no_live_capacity_ever_lapses() -> None:
    """With quiet keep-alives the simulator runs sync/2.1.0 (range-based reconciliation, the
    node's own ReconSession on both sides) at the period `node.policy.periods` derives: after
    the first announcements nothing is gossiped, yet every peer counts every live provider and
    every queue at every sample of 150 s (keep-alives every 20 s, capacity timeout 60 s), so
    each keep-alive reached every peer before the one before it lapsed."""
    scenario = load("steady").scaled(150.0).with_overrides(node={"quiet_keep_alives": True})
    net = SimNetwork(scenario, 30, seed=2)
    rec = net.run()
    providers = [p for p in net.peers if p.capacity > 0]
    queued = [p for p in net.peers if p.demand > 0]
    assert (len(providers), len(queued)) == (15, 8)
    published = sum(b.published for b in rec.traffic)
    assert published == len(providers) + len(queued)  # the first announcements, then silence
    supply = sum(p.capacity for p in providers)
    demand = sum(p.demand for p in queued)
    assert len(rec.samples) == 150
    for row in rec.samples[10:]:  # every peer has started and announced by 5 s
        assert {(s.supply, s.demand, s.nodes) for s in row} == {(supply, demand, 15)}
    lapses = figures(rec)["agreement"]["lapses"]
    assert (lapses["rows"], lapses["lapsed_rows"]) == ((150 - 8) * 30, 0)
    # Every keep-alive after the first came by sync: 7 per announcer in 150 s at 20 s (at
    # least 6 of them arrived everywhere; the last may still be spreading), to each of the 29
    # other peers.
    carried = sum(b.sync_announcements for b in rec.traffic)
    assert carried >= 23 * 29 * 6
    assert len(net._recon_sessions) <= 10  # only sessions still in flight at the end


def test_syncs_due_during_gossip_wait_for_a_lull_and_keep_their_cadence() -> None:
    """The simulator drives `Node._sync_loop`'s rule (node/policy.py `session_start`): a
    periodic sync due within `sync_gossip_quiet_s` (1 s) of gossip the peer accepted waits for a
    lull, at most one period. With quiet keep-alives gossip only carries the first announcements
    and the two `shock` events, so syncs wait only then; none is lost (the cadence is kept),
    and the market is the same: every peer agrees after both events, no live capacity lapses."""
    base = load("shock").scaled(90.0).with_overrides(node={"quiet_keep_alives": True})
    events = [e.at_s for e in base.events if e.action in ("capacity", "demand")]
    assert events == [30.0, 60.0]
    runs = {}
    for quiet in (1.0, 0.0):
        scenario = base.with_overrides(node={"quiet_keep_alives": True,
                                             "sync_gossip_quiet_s": quiet})
        net = SimNetwork(scenario, 30, seed=3)
        rec = net.run()
        runs[quiet] = (rec, figures(rec))
    (waiting, figs), (eager, eager_figs) = runs[1.0], runs[0.0]
    assert eager_figs["traffic"]["syncs_deferred_total"] == 0
    assert figs["traffic"]["syncs_deferred_total"] >= 10
    # Only around gossip: the start (every peer's first announcements over the first 5 s) and
    # each event's burst, within a period (≤ 2 s at 30 peers) of its last copy.
    late = [s for s, b in enumerate(waiting.traffic) if b.syncs_deferred
            and not (s < 8 or any(e <= s < e + 5 for e in events))]
    assert late == []
    assert sum(b.syncs_deferred for s, b in enumerate(waiting.traffic) if 30 <= s < 35) >= 1
    # The listener's side (`Node._serve_sync`, sync_serve_wait_s 2 s): a session opened within
    # 1 s of gossip the listener accepted waits for its lull; only around gossip too.
    assert eager_figs["traffic"]["syncs_served_deferred_total"] == 0
    assert figs["traffic"]["syncs_served_deferred_total"] >= 3
    held = [s for s, b in enumerate(waiting.traffic) if b.syncs_served_deferred]
    assert [s for s in held if not (s < 8 or any(e <= s < e + 5 for e in events))] == []
    assert any(e <= s < e + 5 for e in events for s in held), held  # (at 30 peers: [2, 4, 5, 60])
    # No sync is lost: both runs start the same number, less at most one per peer still
    # waiting at the end.
    total = figs["traffic"]["sync_exchanges_total"]
    assert 0 <= eager_figs["traffic"]["sync_exchanges_total"] - total <= 30
    for f in (figs, eager_figs):
        assert [e["agree_s"] for e in f["events"] if e["action"] in ("capacity", "demand")] \
            == [0.0, 0.0]
        assert f["agreement"]["lapses"]["lapsed_rows"] == 0


def test_quant_error_compares_the_quiet_run_with_the_shipped_one(capsys: Any) -> None:
    """`python -m simnet.quant_error`: in `shock` at 20 peers the quiet run (sync/2.1.0) quotes
    the shipped run's price at every sample (the events' changes gossip at once in both) and
    never loses a live announcer's capacity."""
    from simnet import quant_error

    assert quant_error.main(["--peers", "20", "shock"]) == 0
    line = capsys.readouterr().out.strip()
    # 120 samples less 8 of start-up and 5 after each of the 2 events, × 20 peers: 2,040 rows.
    assert line.startswith("shock (20 peers, 120 samples): price error max 0.00%, p99 0.00%, "
                           "mean 0.000%; quiet run: live capacity not counted on 0 of 2040 peer "
                           "samples, all peers agree after an event max 0.0 s"), line


def test_lapses_count_the_peer_samples_that_lost_a_live_announcers_capacity() -> None:
    """The lapse figure is not vacuous: with 90 % of gossip transmissions lost, an 8 s capacity
    timeout and 2.5 s keep-alives, peers miss keep-alives for longer than the timeout and stop
    counting live providers; the figure counts exactly the rows whose supply is below the
    truth outside the start-up and event windows."""
    scenario = load("steady").scaled(40.0).with_overrides(
        market={"capacity_timeout_s": 8.0}, node={"announce_interval_s": 2.5},
        network={"loss": 0.9})
    rec = SimNetwork(scenario, 30, seed=4).run()
    lapses = figures(rec)["agreement"]["lapses"]
    after = STARTUP_S + rec.market.settle_delay_s  # steady has no events: only the start-up
    rows = [(i, r) for i, t in enumerate(rec.times) if t >= after for r in rec.samples[i]]
    short = sum(1 for i, r in rows if r.supply < rec.truth[i][0])
    assert lapses["rows"] == len(rows) == 30 * len([t for t in rec.times if t >= after])
    assert lapses["lapsed_rows"] == short > 0
