"""The simulator's one cost model (simnet/costs.py) is the least-squares fit of the real-node runs
shipped with it, and `measure-real` judges its model by the same costs.

Real runs are too slow for the suite (minutes each, docs/scaling.md); their counts are shipped
(simnet/data/cost-fit.json, from `neuroshard-simnet measure-real ... --fit-out`), so what is
checked here is that the shipped costs are exactly that fit and within the stated error of every
run, and that the fit recovers known costs exactly.
"""

from __future__ import annotations

import pytest

from simnet.costs import (
    CALIBRATION_OP_US,
    COSTS,
    STATED_ERROR,
    Costs,
    fit_costs,
    refit,
    shipped_runs,
)
from simnet.measure_real import model_error


def test_the_shipped_costs_are_the_fit_of_the_shipped_runs() -> None:
    data = shipped_runs()
    costs, rows = refit(data["runs"], data["calibration_op_us"])
    assert costs == COSTS
    # Every run carries its own speed (the mean calibration op over it), and the costs are at
    # their mean: each run is judged with the costs scaled to its own speed.
    ops = [r["calibration_op_us"] for r in data["runs"]]
    assert data["calibration_op_us"] == CALIBRATION_OP_US == round(sum(ops) / len(ops), 3)
    assert [r["speed_scale"] for r in rows] == [round(op / CALIBRATION_OP_US, 4) for op in ops]
    # Sizes and both protocols: with one protocol every run has about the same streams/s and
    # the base and the stream cost cannot be told apart.
    assert {r["peers"] for r in rows} >= {25, 50, 100}
    assert {r["protocol"] for r in rows} == {"gossip", "quiet"}
    assert {r["scenario"] for r in rows} == {"steady", "shock"}
    assert max(abs(r["error"]) for r in rows) <= STATED_ERROR
    assert 0 < COSTS.base < 0.05 and 0 < COSTS.rpc_s < 5e-3 and 0 < COSTS.stream_s < 0.05


def _run(costs: Costs, rpcs: float, streams: float, copies: float, node_seconds: float = 600.0
         ) -> dict:
    cpu = costs.node_cpu(rpcs / node_seconds, streams / node_seconds) * node_seconds
    return {"_raw": {"cpu_s": cpu, "copies": copies, "rpcs": rpcs, "validated": copies / 5,
                     "streams": streams, "node_seconds": node_seconds}}


def test_the_fit_recovers_known_costs_exactly() -> None:
    known = Costs(base=0.006, rpc_s=0.4e-3, stream_s=7e-3)
    rows = [_run(known, rpcs, streams, copies=2 * rpcs)
            for rpcs, streams in ((600, 40), (3_000, 40), (1_800, 500), (9_000, 520))]
    fit = fit_costs(rows)
    assert (fit["base_pct"], fit["ms_per_rpc"], fit["ms_per_stream"]) == (0.6, 0.4, 7.0)
    assert fit["fit_error_max"] == 0.0 and fit["runs"] == 4
    pinned = fit_costs(rows, stream_ms=7.0)
    assert (pinned["base_pct"], pinned["ms_per_rpc"]) == (0.6, 0.4)
    assert pinned["stream_cost"] == "pinned (micro-benchmark)"
    # Per copy received (for reference): every RPC carried two copies here, so a copy costs half.
    assert fit_costs(rows, per="copies")["ms_per_copy"] == 0.2
    assert fit_costs(rows[:2]) == {"runs": 2, "note": "too few runs: no fit"}


@pytest.mark.parametrize("rpcs,streams", [(0, 0), (3_000, 40), (120, 510)])
def test_measure_real_judges_the_model_by_the_shipped_costs(rpcs: int, streams: int) -> None:
    # Judged on the RPCs read, not the copies (three per RPC here).
    row = _run(Costs(base=0.01, rpc_s=1e-3, stream_s=1e-2), rpcs, streams, copies=3 * rpcs)
    m = model_error(row)
    assert m["speed_scale"] == 1.0  # the run has no speed of its own
    assert m["model_pct"] == round(100 * COSTS.node_cpu(rpcs / 600, streams / 600), 3)
    measured = row["_raw"]["cpu_s"] / 600
    assert m["measured_pct"] == round(100 * measured, 3)
    assert m["error"] == round((COSTS.node_cpu(rpcs / 600, streams / 600) - measured)
                               / measured, 4)


def test_the_10000_peer_projection_uses_the_one_model() -> None:
    from neuroshard_p2p.node.policy import periods
    from simnet.recon_model import CAPACITY_TIMEOUT_S, cpu_at, item_cost

    # A keep-alive received over a stream, through the engine's real sync path: every one of
    # 300 signers' next keep-alive is accepted (item_cost asserts it) at a plausible cost.
    per_item = item_cost(300, repeat=1)
    assert 5e-6 < per_item < 5e-3
    timed = {"upkeep": 0.001, "exchange": 0.002, "item_s": per_item}
    parts = cpu_at(1_000, [], True, recon=timed)
    _, period = periods(CAPACITY_TIMEOUT_S, 1_000)
    assert parts["base"] == COSTS.base
    assert parts["streams"] == pytest.approx(2 / period * COSTS.stream_s)
    assert parts["gossip"] == pytest.approx(parts["gossip_copies_per_s"] * COSTS.rpc_s)
    assert parts["items"] == pytest.approx(750 / 18.0 * per_item)
    assert parts["total"] == pytest.approx(sum(parts[k] for k in (
        "base", "streams", "gossip", "items", "upkeep", "exchange")))


def test_the_break_even_size_counts_the_base() -> None:
    from simnet.scaling import ScalingRow, break_even_peers

    rows = [ScalingRow(peers=n, observers=50, announce_interval_s=20.0, capacity_timeout_s=60.0,
                       degree=6, published_per_peer_s=0.04, received_per_peer_s=0.2 * n,
                       validated_per_peer_s=0.04 * n, engine_us_per_message=None,
                       engine_core_share=None, libp2p_core_share_low=0.0,
                       libp2p_core_share_high=0.0, wall_s=0.0) for n in (100, 1_000)]
    # 0.2 copies per peer per second for each peer in the network, 0.5 ms each.
    assert break_even_peers(rows, 0.5) == pytest.approx(0.10 / 0.0005 / 0.2)         # 1,000
    assert break_even_peers(rows, 0.5, base=0.0036) == pytest.approx(0.0964 / 0.0001)  # 964
    assert break_even_peers(rows, 0.5, base=0.10) is None


def test_costs_scale_with_the_machine() -> None:
    costs = Costs(base=0.004, rpc_s=0.5e-3, stream_s=3e-3)
    assert costs.scaled(1.0) is costs
    assert costs.scaled(2.0) == Costs(base=0.008, rpc_s=1e-3, stream_s=6e-3)
    assert costs.scaled(2.0).node_cpu(10, 1) == 2 * costs.node_cpu(10, 1)


def test_the_fit_brings_runs_on_a_faster_or_slower_machine_to_one_speed() -> None:
    # The same known costs at the reference speed (3 us a calibration op); each run took place
    # on a moment of the machine k times slower, so its CPU is k times the model's.
    known = Costs(base=0.006, rpc_s=0.4e-3, stream_s=7e-3)
    rows = []
    for (rpcs, streams), k in zip(((600, 40), (3_000, 40), (1_800, 500), (9_000, 520)),
                                  (1.0, 1.5, 0.8, 1.25)):
        row = _run(known.scaled(k), rpcs, streams, copies=2 * rpcs)
        row["calibration"] = {"mean_us": 3.0 * k}
        rows.append(row)
    fit = fit_costs(rows, reference_op_us=3.0)
    assert (fit["base_pct"], fit["ms_per_rpc"], fit["ms_per_stream"]) == (0.6, 0.4, 7.0)
    assert fit["fit_error_max"] == 0.0 and fit["at_calibration_op_us"] == 3.0
    # Without the speeds the same runs do not fit one model.
    blind = fit_costs([{"_raw": r["_raw"]} for r in rows])
    assert blind["fit_error_max"] > 0.05 and blind["at_calibration_op_us"] is None
    # refit (the shipped file's form) judges each run at its own speed: no error left.
    runs = [{"peers": 10, "scenario": "steady", "protocol": "quiet", "counts": r["_raw"],
             "calibration_op_us": r["calibration"]["mean_us"]} for r in rows]
    costs, judged = refit(runs, reference_op_us=3.0)
    assert costs == known
    assert [j["speed_scale"] for j in judged] == [1.0, 1.5, 0.8, 1.25]
    assert all(j["error"] == 0.0 for j in judged)


def test_measure_real_scales_the_model_by_the_runs_speed() -> None:
    row = _run(Costs(base=0.01, rpc_s=1e-3, stream_s=1e-2), 3_000, 40, copies=3_000)
    row["calibration"] = {"mean_us": 2 * CALIBRATION_OP_US, "samples": 10}
    m = model_error(row)
    assert m["speed_scale"] == 2.0
    assert m["model_pct"] == round(100 * 2 * COSTS.node_cpu(3_000 / 600, 40 / 600), 3)
