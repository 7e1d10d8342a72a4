"""simnet's scenarios on real libp2p: 5 real `Node`s (py-libp2p hosts on loopback, gossipsub,
sync, peer exchange) in one trio process, each scenario squeezed into 20 s of real time with short
timeouts, and the report's figures asserted. Plus the testnet command: node processes started,
agreeing, and stopped cleanly by Ctrl-C.

Each run takes about 30 s (setup, a warm-up of settle delay + W ticks, then 20 s)."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from simnet.metrics import figures
from simnet.real import RealNetwork
from simnet.scenario import Scenario, load
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
PEERS = 5
DURATION_S = 20.0
SAMPLE_S = 0.5
#: Timeouts short enough for 20 s: a dead peer expires 8 s after its last announcement, live
#: ones re-announce every 2.5 s, the price window is 4 ticks.
FAST = {"market": {"capacity_timeout_s": 8.0, "window_ticks": 4},
        "node": {"announce_interval_s": 2.5, "sync_interval_s": 5.0}}


def ci_version(name: str) -> Scenario:
    return load(name).scaled(DURATION_S).with_overrides(**FAST)


async def run(scenario: Scenario, seed: int = 1) -> dict[str, Any]:
    rec = await RealNetwork(scenario, PEERS, seed=seed, sample_s=SAMPLE_S).run()
    return figures(rec)


def settled_identical(figs: dict[str, Any]) -> None:
    """Every event outside a partition ended with every live peer quoting one price."""
    for event in figs["events"]:
        if not event["during_partition"]:
            assert event["agree_s"] is not None, event
            assert event["agree_s"] <= 3.0, event


async def test_shock_five_real_peers_follow_the_price_together() -> None:
    figs = await run(ci_version("shock"))
    settled_identical(figs)
    supply_halves, spike = figs["events"]
    assert supply_halves["price_after_nano"] > supply_halves["price_before_nano"]
    assert spike["price_after_nano"] > spike["price_before_nano"]
    assert figs["agreement"]["identical_share"] >= 0.95
    assert figs["traffic"]["published_total"] > 0


async def test_churn_dead_peers_are_pruned_at_their_last_announcement_plus_timeout() -> None:
    scenario = ci_version("churn")
    kill, replace = scenario.events
    scenario = dataclasses.replace(scenario, events=(dataclasses.replace(kill, who="providers"),
                                                     replace))
    figs = await run(scenario, seed=2)
    (churn,) = figs["churn"]
    assert churn["killed"] == 1 and churn["capacity_removed"] == 1000
    bound = churn["bound_after_s"]
    assert bound is not None and 0 < bound <= 8.0
    # Pruned on the signed timeline: not before the bound, and by the next sample after it.
    assert bound - 0.05 <= churn["stopped_counting_after_s"] <= bound + SAMPLE_S + 0.25
    settled_identical(figs)
    (joined,) = figs["late_join"]
    assert joined["joined"] == 1 and joined["agree_max_s"] <= 3.0


async def test_partition_digests_are_equal_soon_after_healing() -> None:
    figs = await run(ci_version("partition"), seed=3)
    (healed,) = figs["partition"]
    assert healed["largest_spread_during_split_nano"] > 0  # the halves really diverged
    assert healed["identical_digests_after_s"] is not None
    assert healed["identical_digests_after_s"] <= 5.0
    assert healed["identical_prices_after_s"] <= 5.0
    settled_identical(figs)


async def test_late_joiners_agree_within_three_seconds() -> None:
    figs = await run(ci_version("late-join"), seed=4)
    observers, providers = figs["late_join"]
    assert observers["joined"] == 1 and providers["joined"] == 1
    assert observers["agree_max_s"] <= 3.0 and providers["agree_max_s"] <= 3.0
    settled_identical(figs)


async def test_hostile_peer_moves_no_price_and_crashes_nobody() -> None:
    scenario = ci_version("hostile")
    (flood,) = scenario.events
    scenario = dataclasses.replace(scenario, events=(dataclasses.replace(flood, rate=20.0),))
    figs = await run(scenario, seed=5)
    (hostile,) = figs["hostile"]
    assert hostile["sent"] >= 100  # 20 messages/s for 6.7 s
    assert hostile["largest_move_nano"] == 0
    reasons = figs["traffic"]["reasons"]
    for reason in ("bad_signature", "stale", "oversize", "future", "implausible"):
        assert reasons.get(reason, 0) > 0, reason
    assert figs["agreement"]["identical_share"] == 1.0
    # Nobody crashed: every honest peer was sampled to the end.
    assert figs["traffic"]["rejected_total"] > 0


# ---------------------------------------------------------------------------------------------
# testnet: separate node processes, Ctrl-C stops them all


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=2) as response:
        return json.loads(response.read())


def test_testnet_nodes_agree_and_ctrl_c_stops_them_all(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    api = 18_700 + os.getpid() % 500
    port = 24_700 + os.getpid() % 500
    proc = subprocess.Popen(
        [sys.executable, "-m", "simnet.cli", "testnet", "--peers", "3", "--data-dir",
         str(tmp_path), "--port", str(port), "--api-port", str(api), "--network", "simnet-ci"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 60
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        text = "".join(lines)
        assert "bootstrap multiaddr:" in text, text
        bootstrap = lines[lines.index("bootstrap multiaddr:\n") + 1].strip()
        assert bootstrap.startswith(f"/ip4/127.0.0.1/tcp/{port}/p2p/16Uiu2")
        pids = [int(line.split("pid ")[1].rstrip(")\n")) for line in lines
                if line.startswith("started node")]
        assert len(pids) == 3

        def markets() -> list[dict[str, Any]]:
            return [_get_json(f"http://127.0.0.1:{api + i}/api/market") for i in range(3)]

        wait_for(lambda: all(v["available_nodes"] == 3 and v["supply_tokens_per_sec"] == 3000
                             for v in markets()), 30,
                 "every node counts the three nodes and their 3000 tokens/s", interval=0.2,
                 show=markets)

        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "all nodes stopped" in rest
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
