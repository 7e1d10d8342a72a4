"""The simulator's "paths" flood model (`SimNetwork(flood="paths")`, `run --flood paths`): the
observers' arrivals looked up in latency draws of the mesh precomputed towards them, so that an
observer sample of 100,000 peers runs in minutes (docs/scaling.md, "Ninth pass")."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from simnet.metrics import figures
from simnet.scenario import load
from simnet.sim import HOP_DELAY_S, PATH_DRAWS, SimNetwork, _relax

ROOT = Path(__file__).resolve().parent.parent


def _network(peers: int, observers: int, flood: str, seed: int = 3) -> SimNetwork:
    net = SimNetwork(load("shock"), peers, seed=seed, observers=observers, flood=flood)
    net._build()
    return net


def test_each_draw_holds_the_arrivals_a_forward_flood_over_that_draw_gives() -> None:
    """The table is computed backwards from each observer; a flood forwards from its origin
    over the same draw must arrive at every observer at exactly the tabled time."""
    net = _network(300, 12, "paths")
    _, dist, copies, total, live, everybody, lats = net._path_tables()
    src, dst = net._edges()
    obs = net._observer_index
    assert dist.shape == (PATH_DRAWS, 12, 300) and len(lats) == PATH_DRAWS
    assert live == 300 and everybody.all() and total == int(copies.sum())
    assert (copies == np.bincount(dst, minlength=300) - 1).all()
    checked = 0
    for r in (0, PATH_DRAWS - 1):
        for origin in (0, 17, 123, 299, int(obs[0])):
            start = np.full(300, np.inf)
            start[origin] = 0.0
            forward = _relax(src, dst, lats[r], start, np.array([origin]))
            assert np.allclose(forward[obs], dist[r, :, origin], rtol=1e-6, atol=0)
            assert dist[r, 0, int(obs[0])] == 0.0   # the first observer to itself
            checked += 1
    assert checked == 10
    # Every arrival is at least one hop's processing delay unless it is the origin itself.
    assert (dist[dist > 0] >= HOP_DELAY_S).all()


def test_the_observers_arrival_times_are_distributed_as_the_exact_floods() -> None:
    """Over many messages from random origins the observers' arrival times have the exact
    model's median and tail: the draws are the same lognormal links, shared between messages
    instead of drawn per message."""
    net = _network(600, 30, "paths", seed=5)
    _, dist, *_ = net._path_tables()
    src, dst = net._edges()
    obs = net._observer_index
    rng = np.random.default_rng(11)
    exact, looked_up = [], []
    for _ in range(300):
        origin = int(rng.integers(600))
        lat = rng.lognormal(net._lat_mu, net.net.latency_sigma, len(src)) + HOP_DELAY_S
        start = np.full(600, np.inf)
        start[origin] = 0.0
        exact.append(_relax(src, dst, lat, start, np.array([origin]))[obs])
        looked_up.append(dist[int(rng.integers(PATH_DRAWS)), :, origin])
    a, b = np.concatenate(exact), np.concatenate(looked_up).astype(np.float64)
    a, b = a[a > 0], b[b > 0]
    for q in (50, 90, 99):
        ea, eb = np.percentile(a, q), np.percentile(b, q)
        assert abs(eb - ea) <= 0.06 * ea, (q, ea, eb)


def test_a_paths_run_agrees_and_counts_the_copies_an_exact_run_counts() -> None:
    rows = {}
    for flood in ("exact", "paths"):
        rec = SimNetwork(load("shock").scaled(6.0), 400, seed=2, observers=25,
                         flood=flood).run()
        f = figures(rec)
        rows[flood] = f
        after = f["agreement"]["after_event_s"]
        assert after["events"] == 2 and after["never_agreed"] == 0
        assert after["all_peers_max"] == 0.0
        assert any("flood model: paths" in n for n in rec.notes) == (flood == "paths")
    exact, paths = rows["exact"]["traffic"], rows["paths"]["traffic"]
    assert paths["published_total"] == exact["published_total"]
    assert paths["delivered_total"] == exact["delivered_total"]
    assert abs(paths["received_per_peer_s"] / exact["received_per_peer_s"] - 1) <= 0.03
    assert abs(paths["duplicates_total"] / exact["duplicates_total"] - 1) <= 0.03


def test_the_paths_model_needs_observers() -> None:
    with pytest.raises(ValueError, match="needs observers"):
        SimNetwork(load("shock"), 50, flood="paths")
    with pytest.raises(ValueError, match="needs observers"):
        SimNetwork(load("shock"), 50, observers=50, flood="paths")
    with pytest.raises(ValueError, match="flood must be one of exact, paths"):
        SimNetwork(load("shock"), 50, observers=5, flood="fast")


def _cli(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "simnet.cli", *argv], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)


def test_run_flood_paths_from_the_command_line(tmp_path: Path) -> None:
    base = ["run", "--transport", "sim", "--peers", "60", "--scenario", "shock", "--duration",
            "10", "--no-plots", "--quiet", "--flood", "paths"]
    done = _cli([*base, "--out", str(tmp_path / "no")])
    assert done.returncode == 1
    assert "--flood paths needs --observers K with K < --peers" in done.stderr
    assert not (tmp_path / "no").exists()
    done = _cli([*base, "--observers", "6", "--out", str(tmp_path / "ok")])
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "ok" / "report.json").read_text())
    assert report["figures"]["agreement"]["after_event_s"]["all_peers_max"] == 0.0
    assert "flood model: paths" in (tmp_path / "ok" / "report.md").read_text()
    done = _cli(["run", "--peers", "4", "--scenario", "shock", "--flood", "paths",
                 "--out", str(tmp_path / "real")])
    assert done.returncode == 1 and "--flood is for --transport sim" in done.stderr


def test_a_paths_run_is_the_same_in_one_process_and_in_two() -> None:
    """Every process computes the same tables and draws the same draw per message, so the
    report does not depend on how the engines are spread (as for the exact model)."""
    from simnet import report as report_mod
    runs = [SimNetwork(load("shock").scaled(20.0), 120, seed=4, observers=10, flood="paths",
                       workers=w).run() for w in (1, 2)]
    one, two = runs
    assert one.engine_messages > 0
    assert report_mod.deterministic_view({"figures": figures(two)}) == \
        report_mod.deterministic_view({"figures": figures(one)})
    assert two.samples == one.samples
    assert (two.peer_received, two.peer_published) == (one.peer_received, one.peer_published)
