"""`neuroshard-simnet measure-real` end to end on a small network: 2 worker processes × 3 real
nodes (py-libp2p hosts on 127.0.0.1), `shock` squeezed into 14 s with short timeouts, a
provider crashed (killed, no withdrawal) 1 s in. The command's own figures are asserted: every
node's CPU and traffic counted, every node agrees on the price after each event, and every node
holds the crashed node's last announcement and stops counting it by its signed timeout.

About 35 s: setup, a warm-up of settle delay + W ticks (7 s), 14 s measured, teardown."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from simnet.cli import main
from simnet.costs import CALIBRATION_OP_US

#: A dead node expires 8 s after its last announcement (a keep-alive comes every 2.5 s, by
#: gossip); the price window is 4 ticks.
FAST = ["market.capacity_timeout_s=8.0", "market.window_ticks=4", "node.announce_interval_s=2.5",
        "node.sync_interval_s=5.0"]


def test_measure_real_two_processes_three_nodes_each(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "mr"
    args = ["measure-real", "--peers", "6", "--workers", "2", "--scenario", "shock",
            "--protocol", "gossip", "--duration", "14", "--kill-at", "1", "--quiet",
            "--views-every", "1", "--out", str(out), "--fit-out", str(tmp_path / "fit.json")]
    for item in FAST:
        args += ["--set", item]
    assert main(args) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "measure-real.json").read_text())
    (run,) = report["runs"]
    row = run["row"]
    assert (row["peers"], row["workers"], row["scenario"], row["protocol"]) == (6, 2, "shock",
                                                                                "gossip")
    assert len(row["cpu_process_pct"]) == 2  # one CPU figure per worker process
    assert row["cpu_core_per_node_pct"] > 0
    # An RPC may carry several copies (libp2p_compat 16 packs what waits for a peer, at most
    # the 33 its queue holds), so copies are at most 33 per RPC read.
    assert 0 < row["copies_per_node_s"] <= 33 * row["rpcs_per_node_s"]
    assert row["validated_per_node_s"] > 0
    assert row["streams_per_node_s"] > 0
    # RPCs that carry control (GRAFT, PRUNE, IHAVE, IWANT) are among those read; six nodes of
    # mesh degree 6 mesh with every peer, so no heartbeat gossip (IHAVE goes to non-mesh peers).
    assert 0 <= row["control_rpcs_per_node_s"] <= row["rpcs_per_node_s"]
    assert row["ihave_per_node_s"] == 0
    # The cyclic collector's share of the nodes' CPU is measured (gc.callbacks, process time):
    # some collection runs in 14 s of six nodes, and it is a small part of what they spend.
    assert 0 < row["gc_cpu_share"] < 0.5
    assert row["gc_full_per_process_min"] >= 0
    # The harness's own sampling CPU is reported apart from the nodes' (views read every sample).
    assert 0 < row["sampling_cpu_s"] < row["_raw"]["cpu_s"]
    # Its share of the workers' CPU over the run's window: the run's sampling total over all
    # (the window's first sample and the ms rounding of the total move it by a little).
    total = row["sampling_cpu_s"] / (row["sampling_cpu_s"] + row["_raw"]["cpu_s"])
    assert 0 < row["harness_cpu_share"] < 0.5
    assert abs(row["harness_cpu_share"] - total) < 0.002
    # Deliveries in the run against every gossiped announcement × the other nodes alive when it
    # left: in flight at the end counts as missing, published in the warm-up but delivered in
    # the run counts as delivered; on a loaded machine both move it (0.90 and 1.15 at load 14).
    assert row["delivery_ratio"] > 0.5
    # Both shock events: every node quotes one price within 3 s.
    assert row["events_never_agreed"] == 0
    assert row["agree_after_event_max_s"] <= 3.0
    # The crash: each live node (5) stops counting the dead node at the signed timeout of the
    # last announcement of it that it holds — the dead node's own last one, or (a node that
    # missed that keep-alive, seen at load 14) an earlier one, which expires earlier. So no node
    # counts it after its own last announcement + timeout, and those holding it count it until
    # then.
    (crash,) = run["crash"]
    assert crash["live_nodes"] == 5
    assert 1 <= crash["distinct_last_held"] <= 2
    # No node counts it after its signed timeout (1 sample of resolution), and nodes counted it
    # until shortly before (it did not drop out early either).
    timeout_at = crash["signed_timeout_at_s"]
    assert crash["no_node_counts_from_s"] is not None
    assert timeout_at <= crash["no_node_counts_from_s"] <= timeout_at + 0.5
    # The supply totals cannot show it here: "supply halves" (at 14 / 3 s) changes them before
    # the bound (the last announcement + 8 s); the line says so instead of printing "None s".
    assert crash["stopped_counting_after_s"] is None
    (line,) = [x for x in printed.splitlines() if x.startswith(f"   crash of node {crash['node']}")]
    assert line.endswith(f"the supply totals cannot show when it stopped counting (bound "
                         f"{crash['bound_after_s']} s after the kill): another event changed "
                         "them first; the view checks above do")
    assert timeout_at - 0.5 <= crash["last_counted_at_s"] < timeout_at
    # When each announcement reached each node (views read at every sample): with keep-alives
    # by gossip nothing is left to reconciliation, and the median arrival is within the settle
    # delay (2 s), which is what lets every node move at the same tick.
    arrivals = run["arrivals"]
    assert arrivals["check_every_s"] == 0.5
    assert "reconciled" not in arrivals
    gossiped = arrivals["gossiped"]
    assert gossiped["arrivals"] >= 5 * 4  # at least the 4 providers' first changes, at 5 nodes
    assert gossiped["p50_s"] <= arrivals["settle_delay_s"]
    # What each event cost the nodes: a window from the sample before it, up to 10 s or the
    # end of the run, with its CPU above the rate before the first event, per node.
    events = json.loads((out / "shock-gossip-6" / "measure.json").read_text())["events"]
    titled = [e for e in events if e["action"] in ("capacity", "demand")]
    assert len(titled) == 2
    for e in titled:
        window = run["windows"][f"after {e['event']}"]
        assert 0 < window["seconds"] <= 10.0
        assert window["cpu_ms_per_node"] == e["cpu_ms_per_node"]
        # And its first 4 s, the burst on a loaded machine: what else ran meanwhile.
        burst = run["windows"][f"first 4 s after {e['event']}"]
        assert burst["seconds"] == 4.0
        assert burst["streams_per_node_s"] >= 0
    # Periodic syncs that waited for a lull in gossip (node.sync_gossip_quiet_s, 1 s): keep-alives
    # by gossip every 2.5 s from every announcer leave ~2 per s network-wide, so most syncs (due
    # every 5 s at each of the 6 nodes, at most 6 × (14 / 5 + 1)) fall within 1 s of one.
    deferred = row["syncs_deferred_per_node_s"] * row["seconds"] * 6
    assert abs(deferred - round(deferred)) < 0.01
    assert 1 <= round(deferred) <= 6 * (14 / 5 + 1)
    # The gossiped announcements each event caused, and when they reached the 5 live nodes (the
    # announcer's own view among them): every one reached every live node.
    caused = arrivals["events"]
    assert [c["event"] for c in caused] == [e["event"] for e in titled]
    for c in caused:
        assert c["announcements"] >= 1
        assert c["arrivals"] == 5 * c["announcements"]
        assert 0 <= c["p50_s"] <= c["max_s"]
        # Where its late arrival was: when the announcements first reached another node (they
        # left their publisher by then), the one whose last arrival is the event's, and the 5
        # nodes in the order they came to hold all of them, each on its worker (2 processes).
        assert 0 <= c["first_p50_s"] <= c["first_max_s"] <= c["max_s"]
        last = c["last"]
        assert last["last_s"] == c["max_s"] and last["first_s"] <= last["last_s"]
        assert last["announcer"] != last["node"]
        assert c["spread_max_s"] >= last["last_s"] - last["first_s"]
        assert [n[1] in (0, 1) for n in c["last_nodes"]] == [True] * 5
        assert c["last_nodes"][0][2] == c["max_s"]
        assert sorted({n[0] for n in c["last_nodes"]}) == sorted(n[0] for n in c["last_nodes"])
    # And by prices read every 0.1 s over each event's first 6 s, cut 0.5 s before the end of
    # the run and at the next event (at 14 / 3 and 28 / 3 s): 46 checks after the first, 41
    # after the second. All six agreed within 3 s by them too, and the table says so.
    assert [(e["fine_check_s"], e["fine_window_s"]) for e in titled] == [(0.1, 4.6), (0.1, 4.1)]
    assert all(e["agree_fine_s"] is not None and 0 <= e["agree_fine_s"] <= 3.0 for e in titled)
    assert row["agree_after_event_fine_max_s"] == max(e["agree_fine_s"] for e in titled)
    # The network's shape at the end, over the 5 live nodes (each has at most 4 live peers; a
    # node's mesh is among its connections), and the bootstrap plan it was built by.
    assert 1 <= row["connections_mean"] <= row["connections_max"] <= 5
    assert 1 <= row["mesh_mean"] <= row["mesh_max"] <= row["connections_max"]
    assert row["bootstrap"] == "first"
    md = (out / "measure-real.md").read_text()
    assert f"({row['agree_after_event_fine_max_s']} s by 0.1 s checks) |" in md
    assert "| 6 | shock | gossip |" in md
    # The counts the simulator's cost model is fitted on (simnet/costs.py), as the shipped runs.
    fit_runs = json.loads((tmp_path / "fit.json").read_text())
    assert fit_runs["source"].startswith("neuroshard-simnet measure-real --peers 6 ")
    (counted,) = fit_runs["runs"]
    assert (counted["peers"], counted["scenario"], counted["protocol"]) == (6, "shock", "gossip")
    assert counted["counts"] == {k: round(v, 4) for k, v in row["_raw"].items()}
    assert "model error" in md and run["model"]["measured_pct"] == round(
        100 * row["_raw"]["cpu_s"] / row["_raw"]["node_seconds"], 3)
    # The machine's speed over the measured 14 s: a round every 0.5 s in the coordinator (27-28
    # on an idle machine; a loaded one delays the thread's wake-ups), the model's costs scaled by its
    # mean against the speed they were fitted at, and the run's speed written for the fit.
    speed = row["calibration"]
    assert 10 <= speed["samples"] <= 28
    assert speed["range_us"][0] <= speed["median_us"] <= speed["range_us"][1]
    assert speed["range_us"][0] <= speed["mean_us"] <= speed["range_us"][1]
    assert run["model"]["speed_scale"] == round(speed["mean_us"] / CALIBRATION_OP_US, 4)
    assert counted["calibration_op_us"] == speed["mean_us"] == fit_runs["calibration_op_us"]
    assert row["cpus"] == os.cpu_count()
    assert row["transport"] == "gossip"  # the report says "gossiped" (`_sent`)
    for c in caused:  # and over each event's 10 s (or what is left of the run)
        assert 1 <= c["calibration"]["samples"] <= 21
    # Read back (`--from`), a run prints per event what decides it on a shared machine: when
    # all agreed, when the last node got the event's announcements, and the speed meanwhile.
    capsys.readouterr()
    assert main(["measure-real", "--from", str(out), "--out", str(tmp_path / "again")]) == 0
    printed = capsys.readouterr().out.splitlines()
    agree = {e["event"]: (e["agree_s"], e["agree_fine_s"]) for e in titled}
    for c in caused:
        coarse, fine = agree[c["event"]]
        line = (f"{out / 'shock-gossip-6'}: {c['event']}: all agree after {coarse} s ({fine} s by "
                f"prices checked every 0.1 s); "
                f"{c['announcements']} gossiped announcements, the last reached every node "
                f"{c['max_s']} s after issue; calibration op {c['calibration']['mean_us']} us "
                f"during it, a node's share "
                f"{round(os.cpu_count() / 6 / (c['calibration']['mean_us'] * 1e-6) / 1000, 2)} "
                f"thousand ops per s; first arrival at another node p50 {c['first_p50_s']} s, latest "
                f"{c['first_max_s']} s; the last arrival, of node {c['last']['announcer']}'s "
                f"(worker {c['last']['announcer_worker']}), first reached another node at "
                f"{c['last']['first_s']} s and node {c['last']['node']} (worker "
                f"{c['last']['node_worker']}) at {c['last']['last_s']} s; last to hold all: "
                + ", ".join(f"{n} (worker {w}) {d} s" for n, w, d in c["last_nodes"]))
        assert line in printed, (line, printed[:6])


def test_fine_agreement_is_the_check_after_the_last_split_over_every_worker() -> None:
    """`_fine_agreement` on hand-made checks of two workers (node, price) at 0.1 s: nodes 0 and
    1 quote different prices at checks 0–3, so all agree from check 4, at (4 + 0.5) × 0.1 s
    after the event; a window whose last check still splits never agreed; one without a split
    agreed at once; an event without checks gets no fine figure."""
    from simnet.measure_real import _fine_agreement, fine_windows

    def worker(at: float, prices: list[int], node: int) -> dict[str, object]:
        return {"at": at, "every_s": 0.1, "checks": [[[node, p]] for p in prices]}

    results = [{"fine": [worker(40.0, [7, 7, 9, 9, 8, 8], 0), worker(80.0, [5, 5, 5], 0),
                         worker(100.0, [1, 2], 0)]},
               {"fine": [worker(40.0, [8, 8, 8, 8, 8, 8, 8], 1), worker(80.0, [5, 5, 5], 1),
                         worker(100.0, [1, 1], 1)]}]
    events = [{"t": 40.0}, {"t": 80.0}, {"t": 100.0}, {"t": 110.0}]
    _fine_agreement(results, events)  # type: ignore[arg-type]
    assert events == [{"t": 40.0, "agree_fine_s": 0.45, "fine_check_s": 0.1, "fine_window_s": 0.6},
                      {"t": 80.0, "agree_fine_s": 0.0, "fine_check_s": 0.1, "fine_window_s": 0.3},
                      {"t": 100.0, "agree_fine_s": None, "fine_check_s": 0.1,
                       "fine_window_s": 0.2},
                      {"t": 110.0}]
    # The windows: 6 s after each market event, cut at the next one and a sample before the end.
    actions = [{"at": 5.0, "action": "kill"}, {"at": 40.0, "action": "capacity"},
               {"at": 43.0, "action": "demand"}, {"at": 118.0, "action": "demand"}]
    assert fine_windows(actions, 120.0) == [(40.0, 43.0), (43.0, 49.0), (118.0, 119.5)]


def test_bootstrap_waves_double_and_first_puts_everyone_on_worker_zero() -> None:
    """measure-real's processes join in waves, each as large as all before it, so the network's
    first peers are spread over processes; "first" is the old plan (everyone from worker 0)."""
    from simnet.measure_real import bootstrap_plan

    assert bootstrap_plan(20, "waves") == [[0], [1], [2, 3], [4, 5, 6, 7], list(range(8, 16)),
                                           [16, 17, 18, 19]]
    assert bootstrap_plan(2, "waves") == [[0], [1]]
    assert bootstrap_plan(1, "waves") == [[0]]
    assert bootstrap_plan(20) == bootstrap_plan(20, "first")
    assert bootstrap_plan(20, "first") == [[0], list(range(1, 20))]
    assert bootstrap_plan(1, "first") == [[0]]


def test_measure_real_spread_starts_a_hub_in_each_process_then_the_rest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`--bootstrap spread`: each of the first processes (here both) starts one node, the first
    alone and the other from it; then the processes' other nodes start from those ("grow").
    Four nodes end fully connected and meshed, and all four are measured."""
    out = tmp_path / "sp"
    args = ["measure-real", "--peers", "4", "--workers", "2", "--scenario", "steady",
            "--protocol", "quiet", "--duration", "6", "--quiet", "--bootstrap", "spread",
            "--out", str(out)]
    for item in FAST:
        args += ["--set", item]
    assert main(args) == 0
    (run,) = json.loads((out / "measure-real.json").read_text())["runs"]
    row = run["row"]
    assert row["bootstrap"] == "spread"
    assert (row["connections_mean"], row["connections_max"]) == (3.0, 3)
    assert (row["mesh_mean"], row["mesh_max"]) == (3.0, 3)
    assert len(row["cpu_process_pct"]) == 2
    measured = json.loads((out / "steady-quiet-4" / "measure.json").read_text())
    assert measured["agreement"]["samples"] == 12  # at 0.25, 0.75, … 5.75 s
    assert "at the end: 3.0 connections per node (max 3), gossip mesh 3.0 (max 3); nodes joined " \
           "by bootstrap plan 'spread'" in capsys.readouterr().out


def test_a_nodes_share_of_the_machine_is_counted_in_calibration_ops() -> None:
    """K × cores / N of a core over the op: 100 nodes on 2 cores at a 3.33 µs op have ~6,000
    ops a second each; every clock 1.5× slower gives 1.5× that per network second; a run that
    did not record its core count (before the 24th pass) has none."""
    from simnet.measure_real import node_share_kops

    row = {"peers": 100, "cpus": 2, "dilation": 1.0}
    assert node_share_kops(row, 3.33) == 6.01
    assert node_share_kops({**row, "dilation": 1.5}, 4.04) == 7.43
    assert node_share_kops({**row, "peers": 50}, 4.0) == 10.0
    assert node_share_kops({"peers": 100, "dilation": 1.0}, 3.33) is None
    assert node_share_kops(row, None) is None


def test_a_relay_networks_announcements_are_said_to_be_relayed() -> None:
    """The report named every announcement sent at once "gossiped", also on relay networks; the
    row now carries the charter's transport, and rows recorded before it are told by their relay
    frames."""
    from simnet.measure_report import _sent

    assert _sent({"transport": "relay", "relay_frames_per_node_s": 0.0}) == "relayed"
    assert _sent({"transport": "gossip", "relay_frames_per_node_s": 0.0}) == "gossiped"
    assert _sent({"relay_frames_per_node_s": 1.366}) == "relayed"
    assert _sent({"relay_frames_per_node_s": 0.0}) == "gossiped"
    assert _sent({}) == "gossiped"
