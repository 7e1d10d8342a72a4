"""Time dilation (simnet/dilation.py, `measure-real --dilation K`): every clock of a run K times
slower than the wall. The clocks alone, then a dilated run of real nodes end to end: it takes K
times the wall time, and its nodes sign, expire and agree in network time."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import pytest
import trio

from simnet.cli import main
from simnet.dilation import DilatedClock, NetClock


def test_the_network_clock_runs_k_times_slower_from_a_shared_origin() -> None:
    clock = NetClock(2.0, origin=1_000.0)
    assert clock.of(1_000.0) == 1_000.0
    assert clock.of(1_010.0) == 1_005.0
    assert clock.of(1_007.0) == 1_003.5
    assert NetClock(1.0, origin=1_000.0).of(1_234.5) == 1_234.5
    for bad in (0.5, 0.0, -2.0, math.nan):
        with pytest.raises(ValueError, match="dilation must be at least 1"):
            NetClock(bad)
        with pytest.raises(ValueError, match="dilation must be at least 1"):
            DilatedClock(bad)


def test_a_dilated_trio_loop_sleeps_k_times_longer_in_wall_time() -> None:
    seen: dict[str, float] = {}

    async def body() -> None:
        wall0, trio0 = time.perf_counter(), trio.current_time()
        await trio.sleep(0.1)
        seen["wall"] = time.perf_counter() - wall0
        seen["trio"] = trio.current_time() - trio0
        with trio.move_on_after(0.05) as scope:  # a timeout is dilated as well
            await trio.sleep_forever()
        seen["cancelled"] = scope.cancelled_caught

    trio.run(body, clock=DilatedClock(3.0))
    assert seen["wall"] >= 0.3  # 0.1 s of the loop's time is 0.3 s of the wall
    assert 0.1 <= seen["trio"] < 0.1 + 0.5 / 3
    assert seen["wall"] < 0.3 + 0.5  # and not much more, on a loaded machine too
    assert seen["cancelled"]


def test_measure_real_dilated_runs_in_network_time(tmp_path: Path) -> None:
    """Four real nodes in two processes, `steady` for 12 s of network time with a provider
    crashed at 1 s, every clock 2× slower: the run takes at least twice its warm-up and duration
    in wall time, and the nodes' signed times are the network's, so the crashed node stops
    counting at its signed timeout as the harness (in network time) sees it. About 50 s."""
    out = tmp_path / "dil"
    args = ["measure-real", "--peers", "4", "--workers", "2", "--scenario", "steady",
            "--protocol", "gossip", "--duration", "12", "--kill-at", "1", "--quiet",
            "--dilation", "2", "--out", str(out)]
    for item in ["market.capacity_timeout_s=8.0", "market.window_ticks=4",
                 "node.announce_interval_s=2.5", "node.sync_interval_s=5.0"]:
        args += ["--set", item]
    assert main(args) == 0
    (run,) = json.loads((out / "measure-real.json").read_text())["runs"]
    row = run["row"]
    assert row["dilation"] == 2.0
    # Warm-up: settle delay 2 s + (4 + 1) ticks; then 12 s measured; both at half speed.
    assert row["wall_s"] >= row["setup_s"] + 2 * (7 + 12)
    measured = json.loads((out / "steady-gossip-4" / "measure.json").read_text())
    assert measured["agreement"]["samples"] == 24  # at 0.25, 0.75, … 11.75 s of network time
    (crash,) = run["crash"]
    assert crash["live_nodes"] == 3
    # Its last announcement was signed in the run's network time (a keep-alive every 2.5 s, so
    # within 2.5 s before the kill); signed at the wall's pace it would be ~20 s off.
    assert 1.0 - 2.5 - 0.5 <= crash["last_announced_s"] <= 1.0
    timeout_at = crash["signed_timeout_at_s"]
    assert timeout_at == pytest.approx(crash["last_announced_s"] + 8.0, abs=0.002)
    assert timeout_at - 0.5 <= crash["last_counted_at_s"] < timeout_at
    assert timeout_at <= crash["no_node_counts_from_s"] <= timeout_at + 0.5
    md = (out / "measure-real.md").read_text()
    assert "| 4 | steady (clocks 2x slower) | gossip |" in md
    assert " --dilation 2 " in md


def test_measure_real_refuses_a_dilation_below_one(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["measure-real", "--peers", "4", "--workers", "2", "--scenario", "steady",
                 "--protocol", "gossip", "--quiet", "--dilation", "0.5",
                 "--out", str(tmp_path / "no")]) != 0
    assert "error: dilation must be at least 1, not 0.5" in capsys.readouterr().err
    assert not (tmp_path / "no" / "steady-gossip-4").exists()  # refused before any node ran
