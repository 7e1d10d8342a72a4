"""Report writer: `report.json` (every figure), `report.md` (a readable summary) and PNG plots.

Plots use matplotlib's Agg backend (files only, no display). matplotlib is imported lazily so the
simulator and its tests run without it; a missing matplotlib costs the plots, not the report.
"""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any, Sequence

from neuroshard_p2p.money import NANO_PER_NEURO

from simnet import economics as econ
from simnet.metrics import Recorder, figures

NEURO = float(NANO_PER_NEURO)


def write_run_report(rec: Recorder, out_dir: str | Path, meta: dict[str, Any],
                     plots: bool = True) -> dict[str, Any]:
    """Write report.json, report.md and the plots of a network run; return the report data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"meta": meta, "figures": figures(rec)}
    data["goals"] = goals(data["figures"], rec.transport, len(rec.peer_names))
    written = []
    if plots:
        written = plot_run(rec, out)
    data["plots"] = written
    (out / "report.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    (out / "report.md").write_text(run_markdown(data, rec))
    return data


def deterministic_view(data: dict[str, Any]) -> dict[str, Any]:
    """The part of a report that must not depend on the machine: everything but wall/CPU times."""
    figs = json.loads(json.dumps(data["figures"], default=str))
    for key in ("cpu_s", "engine_cpu_s", "wall_s", "cpu_per_message_ms", "engine_cpu_per_message_us",
                "calibration_op_us", "wall_per_engine_message_ops", "engine_cpu_per_message_ops",
                "calibration_op_range_us", "calibration_samples", "processes",
                "parallel_wait_share", "engine_messages_ahead_share"):
        figs["traffic"].pop(key, None)
    return figs


def goals(figs: dict[str, Any], transport: str, peers: int) -> list[dict[str, Any]]:
    """The issue's goals that this run can speak to, each with the measured number."""
    rows = []
    after = figs["agreement"]["after_event_s"]
    p99 = after["all_peers_p99"]
    limit = 3.0 if transport == "libp2p" else 5.0
    rows.append({
        "goal": f"all peers agree within {limit:g} s ({'p99' if transport == 'libp2p' else 'max'}) "
                "after each event",
        "measured": p99 if transport == "libp2p" else after["all_peers_max"],
        "met": (after["never_agreed"] == 0 and (after["all_peers_max"] or 0) <= limit)
        if transport != "libp2p" else (after["never_agreed"] == 0 and (p99 or 0) <= limit),
    })
    steady = figs["traffic"]["steady_published_per_peer_s"]
    rows.append({"goal": "steady state <= 0.2 messages published per peer per second",
                 "measured": steady, "met": steady is not None and steady <= 0.2})
    return rows


# ---------------------------------------------------------------------------------------------
# Markdown


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, float):
        if math.isinf(x):
            return "∞"
        return f"{x:.3g}{unit}" if abs(x) < 1000 else f"{x:,.0f}{unit}"
    return f"{x}{unit}"


def _price(nano: int | None) -> str:
    return "—" if nano is None else f"{nano / NEURO:.6f}"


def run_markdown(data: dict[str, Any], rec: Recorder) -> str:
    meta, figs = data["meta"], data["figures"]
    agree, traffic = figs["agreement"], figs["traffic"]
    after = agree["after_event_s"]
    lines = [
        f"# simnet report: `{meta['scenario']}` on {meta['transport']}, {meta['peers']} peers",
        "",
        meta.get("description", ""),
        "",
        f"- network time {_fmt(traffic['network_seconds'], ' s')}, wall time "
        f"{_fmt(traffic['wall_s'], ' s')}, seed {meta.get('seed')}",
        f"- peers started {len(rec.peer_names)}" +
        (f"; prices computed at {len(rec.observers)} observer peers (a sample), every peer runs "
         "its engine and announces" if rec.observers is not None else
         "; every peer keeps its own view and computes its own price (full fidelity)"),
        f"- sample every {rec.sample_s:g} s (the resolution of the times below)",
    ]
    for note in rec.notes:
        lines.append(f"- {note}")
    lines += [
        "",
        "## Agreement",
        "",
        "| figure | value |",
        "|---|---|",
        f"| samples on which all live peers quoted the identical price | "
        f"{_fmt(None if agree['identical_share'] is None else 100 * agree['identical_share'], ' %')} "
        f"of {agree['samples']} |",
        f"| largest spread | {_price(agree['largest_spread_nano'])} NEURO/1M "
        f"({_fmt(None if agree['largest_spread_relative'] is None else 100 * agree['largest_spread_relative'], ' %')}) "
        f"at {_fmt(agree['largest_spread_at_s'], ' s')} |",
        f"| all peers agree after an event: p50 / p99 / max | {_fmt(after['all_peers_p50'], ' s')} / "
        f"{_fmt(after['all_peers_p99'], ' s')} / {_fmt(after['all_peers_max'], ' s')} "
        f"({after['events']} events, {after['never_agreed']} never settled in their window"
        + (f"; {after['events_during_partition']} during a partition not counted"
           if after.get("events_during_partition") else "") + ") |",
        f"| one peer agrees after an event: p50 / p99 | {_fmt(after['per_peer_p50'], ' s')} / "
        f"{_fmt(after['per_peer_p99'], ' s')} |",
        *([f"| peer samples on which live capacity was not counted (outside start-up and event "
           f"windows) | {agree['lapses']['lapsed_rows']} of {agree['lapses']['rows']} |"]
          if agree.get("lapses", {}).get("rows") else []),
        "",
        "\"Agree after an event\" is the time from the event until the last sample, before the next "
        "event, on which some live peer quoted a different price (0 when none ever did). A price "
        "counts announcements only once they are settle_delay_s old, so a message that reaches "
        "everyone within that delay never causes a disagreement at all.",
        "",
        "## Events",
        "",
        "| at | event | all agree after | per peer p99 | price moved after | price before → after (NEURO/1M) | its announcements: held by every peer after |",
        "|---|---|---|---|---|---|---|",
    ]
    for e in figs["events"]:
        split = " (during the partition)" if e.get("during_partition") else ""
        held = (f"{e['gossiped']}: {_fmt(e['held_by_all_s'], ' s')}" if e.get("gossiped")
                else "—")
        lines.append(f"| {_fmt(e['t'], ' s')} | {e['event']}{split} | {_fmt(e['agree_s'], ' s')} | "
                     f"{_fmt(e.get('per_peer_p99_s'), ' s')} | {_fmt(e.get('moved_after_s'), ' s')} | "
                     f"{_price(e.get('price_before_nano'))} → {_price(e.get('price_after_nano'))} | "
                     f"{held} |")
    lines += [
        "",
        "## Traffic",
        "",
        "| figure | value |",
        "|---|---|",
        f"| messages published per peer per second (whole run) | {_fmt(traffic['published_per_peer_s'])} |",
        f"| steady state (keep-alives only: no start-up, no change announced) | "
        f"{_fmt(traffic['steady_published_per_peer_s'])} over {traffic['steady_seconds']} s |",
        f"| messages received per peer per second (every copy) | {_fmt(traffic['received_per_peer_s'])} |",
        f"| of which first copies validated | {_fmt(traffic['delivered_per_peer_s'])} |",
        f"| CPU per received message (whole process) | {_fmt(traffic['cpu_per_message_ms'], ' ms')} |",
        f"| CPU per validated message inside the node engine | "
        f"{_fmt(traffic['engine_cpu_per_message_us'], ' µs')} |",
        f"| published / hostile / delivered / duplicates | {traffic['published_total']} / "
        f"{traffic['hostile_total']} / {traffic['delivered_total']} / {traffic['duplicates_total']} |",
        f"| accepted / rejected / ignored | {traffic['accepted_total']} / "
        f"{traffic['rejected_total']} / {traffic['ignored_total']} |",
        f"| sync exchanges / announcements they carried | {traffic['sync_exchanges_total']} / "
        f"{traffic.get('sync_announcements_total', 0)} |",
        "",
    ]
    if traffic["reasons"]:
        lines.append("Validation outcomes summed over peers: " + ", ".join(
            f"{k} {v}" for k, v in traffic["reasons"].items() if v) + ".")
        lines.append("")
    if figs["churn"]:
        lines += ["## Churn", "", "| killed at | peers | capacity / demand removed | every peer "
                  "stopped counting them after | first peer | bound (last announcement + timeout) |",
                  "|---|---|---|---|---|---|"]
        for c in figs["churn"]:
            lines.append(f"| {_fmt(c['t'], ' s')} | {c['killed']} | {c['capacity_removed']} tokens/s"
                         f" / {c.get('demand_removed', 0)} tokens | "
                         f"{_fmt(c['stopped_counting_after_s'], ' s')} | "
                         f"{_fmt(c['first_peer_after_s'], ' s')} | {_fmt(c['bound_after_s'], ' s')} |")
        lines.append("")
    if figs["partition"]:
        lines += ["## Partition", "", "| healed at | identical digests after | identical prices "
                  "after | largest spread during the split |", "|---|---|---|---|"]
        for p in figs["partition"]:
            lines.append(f"| {_fmt(p['t'], ' s')} | {_fmt(p['identical_digests_after_s'], ' s')} | "
                         f"{_fmt(p['identical_prices_after_s'], ' s')} | "
                         f"{_price(p['largest_spread_during_split_nano'])} |")
        lines.append("")
    if figs["hostile"]:
        lines += ["## Hostile", "", "| from | for | invalid messages sent | price before | "
                  "largest move of any peer's price |", "|---|---|---|---|---|"]
        for h in figs["hostile"]:
            lines.append(f"| {_fmt(h['t'], ' s')} | {_fmt(h['duration_s'], ' s')} | {h['sent']} "
                         f"({', '.join(h['kinds'])}) | {_price(h['baseline_price_nano'])} | "
                         f"{_price(h['largest_move_nano'])} |")
        lines.append("")
    if figs["late_join"]:
        lines += ["## Late joiners", "", "| joined at | peers | agree p50 | agree max |",
                  "|---|---|---|---|"]
        for j in figs["late_join"]:
            lines.append(f"| {_fmt(j['t'], ' s')} | {j['joined']} | {_fmt(j['agree_p50_s'], ' s')} | "
                         f"{_fmt(j['agree_max_s'], ' s')} |")
        lines.append("")
    lines += ["## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for g in data["goals"]:
        lines.append(f"| {g['goal']} | {_fmt(g['measured'])} | {'yes' if g['met'] else 'no'} |")
    lines.append("")
    if data.get("plots"):
        lines += ["## Plots", ""] + [f"![{p}]({p})" for p in data["plots"]] + [""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Plots


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _mark_events(ax: Any, rec: Recorder) -> None:
    for record in rec.events:
        ax.axvline(record.t, color="0.5", linestyle=":", linewidth=0.8)
        ax.annotate(record.event.title, (record.t, 1.0), xycoords=("data", "axes fraction"),
                    rotation=90, va="top", ha="right", fontsize=6, color="0.35")


def plot_run(rec: Recorder, out: Path, max_lines: int = 200) -> list[str]:
    """price.png, supply_demand.png, messages.png; returns the file names written."""
    try:
        plt = _pyplot()
    except ImportError:
        rec.notes.append("matplotlib is not installed: no plots (pip install 'neuroshard-p2p[simnet]')")
        return []
    written = []
    times = rec.times
    peers = sorted({r.peer for rows in rec.samples for r in rows})
    step = max(1, len(peers) // max_lines)
    shown = peers[::step]

    # Price of every (shown) peer, and the spread.
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    series: dict[int, tuple[list[float], list[float]]] = {p: ([], []) for p in shown}
    shown_set = set(shown)
    spread = []
    for t, rows in zip(times, rec.samples):
        prices = [r.price_nano for r in rows]
        spread.append((max(prices) - min(prices)) / NEURO if prices else math.nan)
        for r in rows:
            if r.peer in shown_set:
                xs, ys = series[r.peer]
                xs.append(t)
                ys.append(r.price_nano / NEURO)
    for p in shown:
        xs, ys = series[p]
        ax.plot(xs, ys, linewidth=0.7, alpha=0.6)
    _mark_events(ax, rec)
    who = f"{len(shown)} of {len(peers)} observed peers" if step > 1 else f"all {len(peers)} peers"
    ax.set_title(f"{rec.scenario_name} ({rec.transport}): price quoted by {who}")
    ax.set_ylabel("NEURO per 1M tokens")
    ax2.plot(times, spread, color="tab:red", linewidth=0.9)
    ax2.set_ylabel("spread\n(max − min)")
    ax2.set_xlabel("network time (s)")
    fig.tight_layout()
    fig.savefig(out / "price.png", dpi=110)
    plt.close(fig)
    written.append("price.png")

    # Supply and demand: the truth the driver set, and the peers' views (median, min-max band).
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    for axis, col, label in ((ax, 0, "supply (tokens/s)"), (ax2, 1, "demand (tokens waiting)")):
        med, lo, hi = [], [], []
        for rows in rec.samples:
            vals = [r.supply if col == 0 else r.demand for r in rows]
            med.append(statistics.median(vals) if vals else math.nan)
            lo.append(min(vals) if vals else math.nan)
            hi.append(max(vals) if vals else math.nan)
        axis.fill_between(times, lo, hi, color="tab:blue", alpha=0.25, label="peers' views: min–max")
        axis.plot(times, med, color="tab:blue", linewidth=1.0, label="peers' views: median")
        axis.plot(times, [tr[col] for tr in rec.truth], color="black", linestyle="--",
                  linewidth=0.9, label="truth (what the peers announce)")
        axis.set_ylabel(label)
        _mark_events(axis, rec)
    ax.legend(fontsize=7, loc="lower left")
    ax.set_title(f"{rec.scenario_name} ({rec.transport}): supply and demand")
    ax2.set_xlabel("network time (s)")
    fig.tight_layout()
    fig.savefig(out / "supply_demand.png", dpi=110)
    plt.close(fig)
    written.append("supply_demand.png")

    # Messages per second.
    fig, ax = plt.subplots(figsize=(10, 4))
    secs = list(range(len(rec.traffic)))
    for name, color in (("published", "tab:green"), ("delivered", "tab:blue"),
                        ("duplicates", "tab:gray"), ("hostile", "tab:red"),
                        ("rejected", "tab:orange")):
        ys = [getattr(b, name) for b in rec.traffic]
        if any(ys):
            ax.plot(secs, ys, label=name, color=color, linewidth=0.9)
    ax.set_yscale("symlog")
    ax.set_ylabel("messages per second (network-wide)")
    ax.set_xlabel("network time (s)")
    ax.set_title(f"{rec.scenario_name} ({rec.transport}): gossip traffic")
    _mark_events(ax, rec)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "messages.png", dpi=110)
    plt.close(fig)
    written.append("messages.png")
    return written


# ---------------------------------------------------------------------------------------------
# Economics


def write_attack_report(outcomes: Sequence[Any], out_dir: str | Path,
                        meta: dict[str, Any]) -> dict[str, Any]:
    """Write attack.json and attack.md of `neuroshard-simnet attack`; return the data."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {"meta": meta, "attacks": [o.to_dict() for o in outcomes]}
    (out / "attack.json").write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    (out / "attack.md").write_text(attack_markdown(data))
    return data


def attack_markdown(data: dict[str, Any]) -> str:
    meta = data["meta"]
    lines = [
        "# Attacks on the price: deviation from the honest run", "",
        f"{meta['peers']} peers on {meta['transport']}, seed {meta['seed']}"
        + (f", prices computed at {meta['observers']} observers" if meta.get("observers") else "")
        + ". Each attack ran against the honest run of the same scenario and seed; the "
          "deviation is the largest |attacked − honest| price over every sample and peer.", "",
        "| attack | policy | F | identities | sent | max \\|Δ\\| (nano) | max \\|Δ\\| | "
        "+supply (share) | +demand (share) | stated bound (nano) | rule |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for a in data["attacks"]:
        d, e = a["deviation"], a["expected"]
        lines.append(
            f"| {a['attack']} | {a['policy']} | {a['work_bits']} | {a['identities']} | "
            f"{a['sent']} | {d['max_abs_nano']} | {100 * d['max_relative']:.4f} % | "
            f"{d['max_extra_supply']} tok/s ({100 * d['supply_share']:.2f} %) | "
            f"{d['max_extra_demand']} ({100 * d['demand_share']:.2f} %) | "
            f"{e.get('bound_nano')} | {e.get('rule')} |")
    lines += ["", "Counted share: (attacked − honest) / attacked supply or demand, the largest "
              "over samples and peers. The stated bound is |target(S + s, D + d) − target(S, D)| "
              "for the honest market (S, D) and what the attackers may count (s, d): nothing in a "
              "members network, the per-signer caps for one identity with full work, "
              "Σ claim >> (F − bits) for fresh keys.", ""]
    for a in data["attacks"]:
        counts = a.get("attack_counts") or {}
        if counts:
            lines.append(f"- {a['attack']} ({a['policy']}): " + ", ".join(
                f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                for k, v in sorted(counts.items())))
        rejected = {k: v for k, v in a["reasons"].items() if k != "accepted"}
        if rejected:
            lines.append(f"- {a['attack']} ({a['policy']}): refused by honest validators: "
                         + ", ".join(f"{k} {v}" for k, v in sorted(rejected.items())))
    lines.append("")
    return "\n".join(lines)


def write_economics_report(results: Sequence[econ.EconomicsResult], out_dir: str | Path,
                           plots: bool = True) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = {
        "params": _params_dict(results[0].params),
        "training_reward_per_s": results[0].params.training_reward_per_s,
        "variants": [econ.result_to_dict(r) for r in results],
    }
    data["plots"] = plot_economics(results, out) if plots else []
    (out / "report.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (out / "report.md").write_text(economics_markdown(data, results))
    return data


def _params_dict(params: econ.EconomicsParams) -> dict[str, Any]:
    import dataclasses

    d = dataclasses.asdict(params)
    d["phases"] = [dataclasses.asdict(p) for p in params.phases]
    return d


def economics_markdown(data: dict[str, Any], results: Sequence[econ.EconomicsResult]) -> str:
    p = results[0].params
    market = results[0].market
    train_min = p.training_reward_per_s * 60
    lines = [
        "# Serve or train: the price curve under node choice, and the clearing mode",
        "",
        f"{p.nodes} nodes of {p.capacity:g} tokens/s (± {p.capacity_spread:.0%}, uniform); "
        f"training pays {p.batches_per_minute:g} batches/min × {p.reward_per_batch:g} NEURO = "
        f"{train_min:g} NEURO/min; serving pays the quoted price × tokens served × "
        f"(1 − burn {market.burn_rate:g}). Every node reconsiders once per "
        f"{p.decision_period_s:g} s (its own offset) and switches when the other choice pays "
        f"{p.hysteresis:.0%} more by its estimate (today's price × the work it could expect: "
        f"arrivals plus draining the queue over target_response_s, shared by capacity). Demand "
        f"arrives as tokens/s, a fraction of what all nodes together could serve, ramping over "
        f"{p.ramp_minutes:g} min into each phase; waiting tokens are the curve's demand. Prices "
        f"are the project's `core.pricing` (tick {market.tick_s:g} s, W = {market.window_ticks}, "
        f"smoothing {market.smoothing:g}). Phase figures are over the second half of each phase.",
        "",
        f"Break-even price P* (a fully busy average node earns the training rate): "
        f"**{results[0].break_even_price:.3f} NEURO/1M** = training reward per second / "
        f"(capacity × (1 − burn)) × 1M.",
        "",
        "| phase | demand | minutes |", "|---|---|---|",
    ]
    for ph in p.phases:
        lines.append(f"| {ph.name} | {ph.demand:g} of capacity | {ph.minutes:g} |")
    lines.append("")
    for r in results:
        floor = ("clearing: P_min " if r.market.clearing else "floor price at u = 0: ") + \
            f"{r.floor_price:.4f}"
        lines += [f"## {r.label} ({floor})", "",
                  "| phase | price median | mean | p10–p90 | min–max | nodes serving | "
                  "inference / training profit | overshoot | swings/h | mean u | unmet demand | "
                  "settles after |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for f in r.phases:
            lines.append(_phase_row(f))
        lines += ["", "| the design claims | model | reproduced? |", "|---|---|---|"]
        for c in econ.check_claims(r):
            value = "—" if c["model"] is None else f"{c['model']:.3f}"
            why = f" ({c['note']})" if c["note"] else ""
            lines.append(f"| {c['claim']} ({c['range'][0]:g}–{c['range'][1]:g}) | {value}{why} | "
                         f"{'yes' if c['reproduced'] else '**no**'} |")
        lines.append("")
    lines += side_by_side(results)
    lines += ["## What this says", ""] + verdict(results) + [""]
    if data.get("plots"):
        lines += ["## Plots", ""] + [f"![{x}]({x})" for x in data["plots"]] + [""]
    return "\n".join(lines)


def _phase_row(f: econ.PhaseFigures, label: str = "") -> str:
    ratio = "— (no server)" if f.profit_ratio is None else f"{f.profit_ratio:.2f}"
    settle = "never" if f.settle_minutes is None else f"{f.settle_minutes:.0f} min"
    return (f"| {label or f.name} | {f.price_median:.3f} | {f.price_mean:.3f} | "
            f"{f.price_p10:.3f}–{f.price_p90:.3f} | {f.price_min:.3f}–{f.price_max:.3f} | "
            f"{f.serving_mean:.1f} | {ratio} | {f.overshoot:.0%} | {f.swings_per_hour:.1f} | "
            f"{_fmt(f.utilization_mean)} | {f.unmet_share:.2%} | {settle} |")


def side_by_side(results: Sequence[econ.EconomicsResult]) -> list[str]:
    """The seed curve and the clearing mode, phase by phase, in the same columns (issue 18)."""
    curve = next((r for r in results if r.market.curve == "seed" and r.market.max_step is None),
                 None)
    clearing = next((r for r in results if r.market.clearing), None)
    if curve is None or clearing is None:
        return []
    lines = ["## Curve vs clearing, same demand path and nodes", "",
             "Unmet demand: tokens/s the serving nodes left short of draining the queue within "
             "target_response_s while an idle node asked no more than users pay (P_max), as a "
             "share of arrivals. Settles after: minutes from the phase's start until every later "
             "minute's price stays within ±10 % of the settled median.", "",
             "| phase, mode | price median | mean | p10–p90 | min–max | nodes serving | "
             "inference / training profit | overshoot | swings/h | mean u | unmet demand | "
             "settles after |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for a, b in zip(curve.phases, clearing.phases):
        lines.append(_phase_row(a, f"{a.name}, seed curve"))
        lines.append(_phase_row(b, f"{b.name}, **clearing**"))
    lines.append("")
    return lines


def verdict(results: Sequence[econ.EconomicsResult]) -> list[str]:
    """Plain sentences on the claims, with the numbers, across all variants."""
    out = []
    clearing = [r for r in results if r.market.clearing]
    results = [r for r in results if not r.market.clearing]
    seed = results[0]
    pstar = seed.break_even_price
    floors = ", ".join(f"{r.label}: {r.floor_price:.4f}" for r in results
                       if r.market.max_step is None)
    out.append(f"- **Bootstrap ~0.01.** With an empty queue the curve itself gives {floors}: only "
               "the normalized curve reaches 0.01. Under node choice it is worse: when demand is too "
               "small to keep even one node busy, serving never pays, no one serves, waiting "
               "demand with zero supply quotes P_max, a node joins, drains the queue and leaves — "
               "the price swings between the floor and the top (see p10–p90 above) instead of "
               "resting at 0.01.")
    mature = [next(f for f in r.phases if f.name == r.phases[-1].name) for r in results]
    out.append(f"- **Growth ~0.3, mature 0.6–0.8.** Once demand needs servers, free entry pins the "
               f"price near the break-even price of the nodes that serve (P* = {pstar:.3f} for an "
               f"average node; lower for the larger nodes that serve first), whatever the demand: "
               f"the last phase settles at " + ", ".join(
                   f"{m.price_median:.3f} ({r.label})" for m, r in zip(mature, results)) +
               ". The price level is set by the training reward and the node's speed, not by the "
               "phase; a growth price near 0.3 appears only as the average of an oscillation.")
    ratios = [m.profit_ratio for m in mature if m.profit_ratio is not None]
    if ratios:
        out.append(f"- **Inference profit ≈ 50 % of training.** Not reproduced: serving nodes end "
                   f"at {min(ratios):.2f}–{max(ratios):.2f} × the training profit — a node that "
                   "can choose serves until serving pays about what training pays (100 %, within "
                   "the hysteresis band). A 50 % equilibrium would need nodes to serve at a loss.")
    for capped in (r for r in results if r.market.max_step is not None):
        free = next((r for r in results if r.market.max_step is None
                     and r.market.curve == capped.market.curve), None)
        if free is None:
            continue
        parts = []
        for a, b in zip(free.phases, capped.phases):
            parts.append(f"{a.name} p10–p90 {a.price_p10:.3f}–{a.price_p90:.3f} → "
                         f"{b.price_p10:.3f}–{b.price_p90:.3f}, swings/h {a.swings_per_hour:.1f} → "
                         f"{b.swings_per_hour:.1f}, overshoot {a.overshoot:.0%} → {b.overshoot:.0%}")
        out.append(f"- **max_step {capped.market.max_step:g} on the {capped.market.curve} curve.** "
                   + "; ".join(parts) + ". A step cap makes the price lag the supply it causes; "
                   "it does not remove the swing of nodes flipping between serving and training, "
                   "and it leaves the settled mature price where it was.")
    for r in clearing:
        parts = [f"{f.name} {f.price_median:.3f} (p10–p90 {f.price_p10:.3f}–{f.price_p90:.3f}, "
                 f"{f.swings_per_hour:.1f} swings/h, overshoot {f.overshoot:.0%}, unmet "
                 f"{f.unmet_share:.2%})" for f in r.phases]
        out.append("- **Clearing.** Every node posts its break-even ask and the price is the "
                   "lowest at which the offers asking no more cover the waiting demand: "
                   + "; ".join(parts) + ". The price rests on the marginal node's ask, so no node "
                   "flips between serving and training and there is no swing to chase; bootstrap "
                   "rests at the cheapest node's ask instead of swinging to P_max.")
    return out


def plot_economics(results: Sequence[econ.EconomicsResult], out: Path) -> list[str]:
    try:
        plt = _pyplot()
    except ImportError:
        return []
    written = []
    # All variants' price on one figure.
    fig, axes = plt.subplots(len(results), 1, figsize=(11, 2.4 * len(results)), sharex=True,
                             squeeze=False)
    for ax, r in zip(axes[:, 0], results):
        s = r.series
        ax.fill_between(s.minute, s.price_min, s.price_max, color="tab:blue", alpha=0.25,
                        linewidth=0)
        ax.plot(s.minute, s.price, color="tab:blue", linewidth=0.7, label="price (minute end)")
        ax.axhline(r.break_even_price, color="tab:green", linestyle="--", linewidth=0.8,
                   label=f"break-even P* {r.break_even_price:.3f}")
        _shade_phases(ax, r)
        ax.set_ylabel("NEURO/1M")
        ax.set_title(r.label, fontsize=9, loc="left")
        ax.set_ylim(0, r.market.max_price * 1.05)
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("minutes")
    fig.tight_layout()
    fig.savefig(out / "economics_price.png", dpi=110)
    plt.close(fig)
    written.append("economics_price.png")

    # Nodes serving, demand and the profit ratio, for the first (seed) variant and the normalized.
    fig, axes = plt.subplots(2, 1, figsize=(11, 5.5), sharex=True)
    for r in [*results[:2], *(r for r in results if r.market.clearing)]:
        s = r.series
        axes[0].plot(s.minute, s.serving, linewidth=0.8, label=f"nodes serving ({r.label})")
        ratio = [e / r.params.training_reward_per_s if n else math.nan
                 for e, n in zip(s.earning_per_server, s.serving)]
        axes[1].plot(s.minute, ratio, linewidth=0.7, label=r.label)
    r0 = results[0]
    needed = [a / r0.params.capacity for a in r0.series.arrivals]
    axes[0].plot(r0.series.minute, needed, color="black", linestyle="--", linewidth=0.8,
                 label="nodes needed for the arrivals")
    axes[0].set_ylabel("nodes")
    axes[0].legend(fontsize=7)
    axes[1].axhline(1.0, color="tab:green", linestyle="--", linewidth=0.8, label="= training")
    axes[1].axhline(0.5, color="tab:red", linestyle=":", linewidth=0.8, label="design: 50 %")
    axes[1].set_ylabel("inference / training\nprofit per node")
    axes[1].set_ylim(0, 3)
    axes[1].legend(fontsize=7)
    axes[1].set_xlabel("minutes")
    for ax in axes:
        _shade_phases(ax, r0)
    fig.tight_layout()
    fig.savefig(out / "economics_choice.png", dpi=110)
    plt.close(fig)
    written.append("economics_choice.png")
    return written


def _shade_phases(ax: Any, r: econ.EconomicsResult) -> None:
    start = 0.0
    for i, ph in enumerate(r.params.phases):
        if i % 2:
            ax.axvspan(start, start + ph.minutes, color="0.92", zorder=0)
        ax.annotate(ph.name, (start + 2, 0.97), xycoords=("data", "axes fraction"), fontsize=7,
                    va="top", color="0.3")
        start += ph.minutes


__all__ = ["write_run_report", "write_economics_report", "run_markdown", "economics_markdown",
           "plot_run", "plot_economics", "goals", "verdict", "deterministic_view"]
