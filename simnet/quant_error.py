"""Price error of revision 2.1's quiet keep-alives and network-relative demand steps, on the
shipped scenarios.

    PYTHONPATH=. python -m simnet.quant_error [--peers 100] [scenario ...]

Runs each scenario twice on the simulator with the same seed: as shipped (every change gossips,
keep-alives gossip) and with `quiet_keep_alives` (keep-alives and sub-step demand changes ride
sync/2.1.0 reconciliation instead, at the period `node.policy.periods` derives from the peer's
view, as a node does). Compared: the modal price at every sample, relative error
|quiet − shipped| / shipped; and, of the quiet run, the peer samples on which a live announcer's
capacity was not counted (a keep-alive that did not arrive before the previous one expired).
"""

from __future__ import annotations

import sys
from typing import Any

from simnet.metrics import figures, modal_price
from simnet.scenario import load
from simnet.sim import SimNetwork, default_workers


def run(name: str, peers: int, quiet: bool) -> tuple[list[int | None], dict[str, Any]]:
    scenario = load(name)
    if quiet:
        scenario = scenario.with_overrides(node={"quiet_keep_alives": True})
    rec = SimNetwork(scenario, peers, seed=1, workers=default_workers(peers)).run()
    return [modal_price(rows) for rows in rec.samples], figures(rec)


def main(argv: list[str]) -> int:
    peers = 100
    if argv[:1] == ["--peers"]:
        peers, argv = int(argv[1]), argv[2:]
    names = argv or ["steady", "shock", "phases", "churn"]
    for name in names:
        (exact, _), (quiet, figs) = run(name, peers, False), run(name, peers, True)
        errors = sorted(abs(q - e) / e for e, q in zip(exact, quiet) if e and q is not None)
        if not errors:
            print(f"{name}: no comparable samples")
            continue
        p99 = errors[min(len(errors) - 1, int(0.99 * len(errors)))]
        mean = sum(errors) / len(errors)
        lapses = figs["agreement"]["lapses"]
        traffic = figs["traffic"]
        after = figs["agreement"]["after_event_s"]
        print(f"{name:>8} ({peers} peers, {len(errors)} samples): price error max {errors[-1]:.2%}, "
              f"p99 {p99:.2%}, mean {mean:.3%}; quiet run: live capacity not counted on "
              f"{lapses['lapsed_rows']} of {lapses['rows']} peer samples, all peers agree "
              f"after an event max {after['all_peers_max']} s, published "
              f"{traffic['published_per_peer_s']} per peer per s, "
              f"{traffic['sync_exchanges_total']} sessions carrying "
              f"{traffic['sync_announcements_total']} announcements", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
