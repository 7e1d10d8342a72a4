"""The simulator's cost model: a node's market CPU from the traffic the simulator counts.

One model, used everywhere the simulator turns counts into CPU: `simnet/recon_model.py`'s
figures at 10,000 peers, `neuroshard-simnet scaling`'s model column and `measure-real`'s "model
error" (the model applied to the counts a run of real nodes measured, against the CPU it
measured). A node's CPU, as a share of one core, is

    BASE + RPC × gossip RPCs read per second + STREAM × sync stream ends per second

- BASE: a node with no market traffic (its loops, gossipsub's heartbeat, the announcer's tick,
  the reconciliation pacing).
- RPC: one gossip RPC read, whatever it carries: the read (Noise, yamux, protobuf), and for each
  message copy in it the seen-cache drop of a duplicate or the validation, merge and forwarding
  of a first copy. Per RPC, not per copy (tenth pass, docs/scaling.md): since libp2p_compat's
  entries 16 and 20 an RPC carries 1.0-4.7 copies on average in the fitted runs, and fitted per
  copy the model errs by up to 17 % where it errs by 7.5 % per RPC.
- STREAM: one end of one sync/2.1.0 session (open, reconcile, close), including the
  announcements it carries at the rates measured.

The simulator counts copies, not RPCs (how many share an RPC depends on scheduling it does not
model), so it prices **every copy as its own RPC**: an upper bound, since an RPC carries at least
one copy, and close where copies come apart in time (1.0-1.2 per RPC in `steady`).

All three are CPU time, so they scale with the machine's speed: the costs are fitted at one
speed (CALIBRATION_OP_US, the mean calibration op over the fitted runs, simnet/calibrate.py's
`SpeedSampler`), every run's CPU brought to that speed first, and `Costs.scaled` gives them at
another. The runs' counts and speeds are shipped (`simnet/data/cost-fit.json`, written by
`measure-real`'s `--fit-out`), and

    python -m simnet.costs

fits them again and prints each run's CPU against the model's (docs/scaling.md, "Tenth pass").
tests/test_costs.py holds COSTS to that fit: change them only with a new one.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from typing import Any


@dataclass(frozen=True)
class Costs:
    base: float          # share of a core
    rpc_s: float         # seconds of CPU per gossip RPC read (the simulator: per copy received)
    stream_s: float      # seconds of CPU per sync stream end

    def node_cpu(self, rpcs_per_s: float, streams_per_s: float) -> float:
        """Share of one core a node spends on the market at these rates (the simulator passes
        the copies it counts as RPCs: an upper bound)."""
        return self.base + self.rpc_s * rpcs_per_s + self.stream_s * streams_per_s

    def judge(self, counts: dict[str, float]) -> dict[str, float | None]:
        """The model on a run's counts (RPCs read, streams, cpu_s over node_seconds) against the
        CPU the run measured: both as % of a core, and the model's relative error."""
        ns = counts["node_seconds"]
        model = self.node_cpu(counts["rpcs"] / ns, counts["streams"] / ns)
        measured = counts["cpu_s"] / ns
        return {"model_pct": round(100 * model, 3), "measured_pct": round(100 * measured, 3),
                "error": round((model - measured) / measured, 4) if measured else None}

    def scaled(self, k: float) -> "Costs":
        """The same work on a machine k times slower: every part is CPU time."""
        return Costs(self.base * k, self.rpc_s * k, self.stream_s * k) if k != 1.0 else self

    def as_dict(self) -> dict[str, float]:
        return {"base_pct": round(100 * self.base, 3), "ms_per_rpc": round(1000 * self.rpc_s, 3),
                "ms_per_stream": round(1000 * self.stream_s, 3)}


#: Fitted on real nodes with libp2p_compat's entries 13-20 (docs/scaling.md, "Tenth pass"): 12
#: runs, 25 / 50 / 100 nodes, `steady` and `shock`, keep-alives by gossip and quiet, each run's
#: CPU brought to one speed by its own mean calibration op.
COSTS = Costs(base=0.177 / 100, rpc_s=0.871 / 1000, stream_s=6.023 / 1000)
#: The speed they are at: the mean calibration op over the fitted runs (simnet/calibrate.py's
#: `SpeedSampler`, microseconds). Where it takes k times as long, the costs are about k times.
CALIBRATION_OP_US = 3.01

#: The largest error of the model against any run it was fitted on, each judged at its own
#: speed, as stated in docs/scaling.md (tests/test_costs.py checks it on the shipped runs).
STATED_ERROR = 0.08

#: The bundled relay's costs (simnet/burst_model.py, the simulator's network.relay_*_ms):
#: `python -m simnet.burst_model --measure` (bench stream_cost --rounds 2, 7 December 15:10 UTC,
#: calibration op 4.844 µs, the mean of 157 rounds sampled during it): receiver 0.796 ms per
#: frame + 126.2 µs per new announcement, 9.9 µs per held one; sender 0.582 ms per frame +
#: 3.53 µs per announcement. Used at the fitted speed (× 3.01 / 4.844).
STREAM_SPEED = CALIBRATION_OP_US / 4.844


@dataclass(frozen=True)
class RelayCosts:
    """What the bundled relay costs a peer, in seconds: a frame read, one written, an
    announcement new to the reader, one it holds, one written."""

    frame_in_s: float = 0.796e-3 * STREAM_SPEED
    frame_out_s: float = 0.582e-3 * STREAM_SPEED
    item_s: float = 126.2e-6 * STREAM_SPEED
    dup_s: float = 9.9e-6 * STREAM_SPEED
    item_out_s: float = 3.53e-6 * STREAM_SPEED

    def scaled(self, k: float) -> "RelayCosts":
        return RelayCosts(*(getattr(self, f) * k for f in
                            ("frame_in_s", "frame_out_s", "item_s", "dup_s", "item_out_s")))


def shipped_runs() -> dict[str, Any]:
    """The runs COSTS was fitted on (simnet/data/cost-fit.json)."""
    return json.loads(resources.files("simnet").joinpath("data/cost-fit.json").read_text())


def fit_costs(rows: list[dict[str, Any]], stream_ms: float | None = None,
              per: str = "rpcs", reference_op_us: float | None = None) -> dict[str, Any]:
    """Least squares over runs: CPU per node-second = base + a × X/s + b × streams/s (per node),
    X the gossip RPCs read (`per="rpcs"`: the model above) or the copies received
    (`per="copies"`, for reference). `base` is what a node spends with no traffic (its loops,
    gossipsub's heartbeat, the announcer's tick); validated messages are not a term of their own:
    they move with the copies and their engine cost (~45 µs, `bench wire`) is inside a.

    Runs of one protocol all have about the same streams/s (the period is fixed), so with one
    protocol base and b are nearly collinear: fit runs of both, or pin b with `stream_ms` (one
    stream end's CPU from the micro-benchmark) and fit base and a only. Needs 3 runs or more (2
    with `stream_ms`).

    When every run carries the machine's speed during it (`row["calibration"]["mean_us"]`, the
    mean calibration op: simnet/calibrate.py `SpeedSampler`), each run's CPU is first brought to
    one speed, `reference_op_us` (default: the runs' mean), by op_ref / op_run: the same work on
    a slower moment of the machine costs more CPU seconds, and is counted as at the reference."""
    import numpy as np

    used = [r for r in rows if r.get("_raw") and r["_raw"]["node_seconds"] > 0]
    raw = [r["_raw"] for r in used]
    if len(raw) < (2 if stream_ms is not None else 3):
        return {"runs": len(raw), "note": "too few runs: no fit"}
    ops = [r.get("calibration", {}).get("mean_us") for r in used]
    ref = None
    if all(ops):
        ref = reference_op_us if reference_op_us is not None else sum(ops) / len(ops)
    speed = [ref / op if ref else 1.0 for op in ops]
    per_run = [(w[per] / w["node_seconds"], w["streams"] / w["node_seconds"],
                k * w["cpu_s"] / w["node_seconds"]) for w, k in zip(raw, speed)]
    if stream_ms is None:
        x = np.array([[1.0, r, st] for r, st, _ in per_run])
        y = np.array([c for _, _, c in per_run])
        coef, *_ = np.linalg.lstsq(x, y, rcond=None)
        base, a, b = coef
    else:
        x = np.array([[1.0, r] for r, _, _ in per_run])
        y = np.array([c - st * stream_ms / 1e3 for _, st, c in per_run])
        (base, a), *_ = np.linalg.lstsq(x, y, rcond=None)
        b = stream_ms / 1e3
    pred = [base + a * r + b * st for r, st, _ in per_run]
    rel = [(p - c) / c for p, (_, _, c) in zip(pred, per_run) if c > 0]
    unit = "copy" if per == "copies" else "rpc"
    return {"runs": len(raw), "base_pct": round(100 * base, 3), f"ms_per_{unit}": round(1000 * a, 3),
            "ms_per_stream": round(1000 * b, 3),
            "stream_cost": "pinned (micro-benchmark)" if stream_ms is not None else "fitted",
            "fit_error_max": round(max(abs(e) for e in rel), 4) if rel else None,
            "fit_error_mean": round(sum(abs(e) for e in rel) / len(rel), 4) if rel else None,
            "at_calibration_op_us": round(ref, 3) if ref else None}


def refit(runs: list[dict[str, Any]], reference_op_us: float | None = None
          ) -> tuple[Costs, list[dict[str, Any]]]:
    """Least squares over runs (CPU per node-second = base + a × copies/s + b × streams/s), and
    each run with the fitted model's CPU (scaled to the run's own speed when it has one) and its
    error against the measured CPU."""
    fit = fit_costs([_as_row(r) for r in runs], reference_op_us=reference_op_us)
    costs = Costs(base=fit["base_pct"] / 100, rpc_s=fit["ms_per_rpc"] / 1000,
                  stream_s=fit["ms_per_stream"] / 1000)
    out = []
    for r in runs:
        c = r["counts"]
        op = r.get("calibration_op_us")
        scale = op / fit["at_calibration_op_us"] if op and fit["at_calibration_op_us"] else 1.0
        out.append({**{k: r[k] for k in ("peers", "scenario", "protocol")},
                    "rpcs_per_node_s": round(c["rpcs"] / c["node_seconds"], 3),
                    "copies_per_node_s": round(c["copies"] / c["node_seconds"], 3),
                    "streams_per_node_s": round(c["streams"] / c["node_seconds"], 4),
                    "calibration_op_us": op, "speed_scale": round(scale, 4),
                    **costs.scaled(scale).judge(c)})
    return costs, out


def _as_row(run: dict[str, Any]) -> dict[str, Any]:
    """A shipped run as `fit_costs` reads a row (its counts, and its speed when it has one)."""
    row: dict[str, Any] = {"_raw": run["counts"]}
    if run.get("calibration_op_us"):
        row["calibration"] = {"mean_us": run["calibration_op_us"]}
    return row


def main(argv: list[str]) -> int:
    data = shipped_runs()
    costs, rows = refit(data["runs"], data["calibration_op_us"])
    print(f"runs: {data['source']}")
    print("| N | scenario | protocol | RPCs /node/s | copies /node/s | streams /node/s | "
          "calibration op | costs × | measured CPU % | model CPU % | error |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['peers']} | {r['scenario']} | {r['protocol']} | {r['rpcs_per_node_s']} | "
              f"{r['copies_per_node_s']} | {r['streams_per_node_s']} | "
              f"{r['calibration_op_us']} us | {r['speed_scale']} | {r['measured_pct']} | "
              f"{r['model_pct']} | {r['error']:+.1%} |")
    print(f"fit: {json.dumps(costs.as_dict())}; shipped COSTS: {json.dumps(COSTS.as_dict())}")
    print(f"largest error {max(abs(r['error']) for r in rows):.1%} (stated: {STATED_ERROR:.0%}); "
          f"costs at one calibration op = {data['calibration_op_us']} us (the runs' mean)")
    return 0


__all__ = ["CALIBRATION_OP_US", "COSTS", "Costs", "STATED_ERROR", "fit_costs", "refit", "shipped_runs"]


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
