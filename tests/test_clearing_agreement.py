"""Issue 18's agreement goal: on a clearing network (curve = "clearing") real libp2p peers and
simulated peers agree on the clearing price after every event, as they do on the curve's
(<= 3 s real, <= 5 s simulated). The scenario is the shipped `clearing` one: providers ask
0.1-0.6, demand halves (the price falls to a cheaper ask), half the providers leave (it rises to
a dearer ask), demand triples past all supply (P_max)."""

from __future__ import annotations

import os
from typing import Any

from simnet.metrics import figures
from simnet.real import RealNetwork
from simnet.scenario import load
from simnet.sim import SimNetwork

P_MAX_NANO = 1_000_000_000
#: The issue asks for 20 real peers; on the shared 2-core CI machine 20 libp2p hosts in one
#: process can miss the harness's 60 s setup deadline while other jobs run, so the test runs 10
#: unless CLEARING_REAL_PEERS says otherwise. `neuroshard-simnet run --peers 20 --scenario
#: clearing` is the 20-peer run (README, "Measured").
REAL_PEERS = int(os.environ.get("CLEARING_REAL_PEERS", "10"))
#: As tests/test_simnet_libp2p.py: a short price window for a 30 s run. Unlike there, the
#: capacity timeout stays the scenario's: at 8 s, 10 hosts in one process on the 2-core machine
#: let keep-alives lapse (views lost 1-4 of 5 providers between events, so peers never agreed),
#: while the scenario's own timing agrees 0 s after every event at 10 peers
#: (`neuroshard-simnet run --peers 10 --scenario clearing --duration 60`). Keep-alives every
#: 10 s (three per 60 s timeout; every change is still gossiped at once): at 2.5 s the ten hosts'
#: keep-alive gossip alone took ~2/3 of a core (35 s of CPU per run, 17 s at 10 s), so with two
#: busy processes beside the test the hosts fell behind and agreed 3.7-6.2 s after events (the
#: CI failure); at 10 s they agreed 0 s after every event under the same load.
FAST = {"market": {"window_ticks": 4},
        "node": {"announce_interval_s": 10.0, "sync_interval_s": 5.0}}


def assert_the_clearing_price_moves_as_the_asks_say(figs: dict[str, Any], limit_s: float) -> None:
    falls, rises, spike = figs["events"]
    for event in (falls, rises, spike):
        assert event["agree_s"] is not None and event["agree_s"] <= limit_s, event
    assert falls["price_after_nano"] < falls["price_before_nano"]
    assert rises["price_after_nano"] > rises["price_before_nano"]
    assert spike["price_after_nano"] == P_MAX_NANO


def test_a_thousand_simulated_peers_agree_on_the_clearing_price_after_every_event() -> None:
    scenario = load("clearing").scaled(45.0)
    # 50 observers compute prices (every peer announces, validates and forwards), as the
    # README's 1,000-peer figures; one process keeps the machine's other core free.
    rec = SimNetwork(scenario, 1000, seed=1, observers=50, workers=1).run()
    figs = figures(rec)
    assert_the_clearing_price_moves_as_the_asks_say(figs, 5.0)
    assert figs["agreement"]["identical_share"] >= 0.95


async def test_real_peers_agree_on_the_clearing_price_after_every_event() -> None:
    # 30 s of scenario time, events 7.5 s apart. Under a load average of 3-4 on 2 cores some
    # hosts miss gossip and catch up only by sync (5 s): then this fails, and so does the curve's
    # `shock` at 16 s on the same harness (measured: never agreed in its window, both events).
    scenario = load("clearing").scaled(30.0).with_overrides(**FAST)
    rec = await RealNetwork(scenario, REAL_PEERS, seed=1, sample_s=0.5).run()
    figs = figures(rec)
    assert_the_clearing_price_moves_as_the_asks_say(figs, 3.0)
    assert figs["agreement"]["identical_share"] >= 0.9
