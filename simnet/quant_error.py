"""Price error of revision 2.1's quiet keep-alives and 12.5 % demand steps, on the shipped scenarios.

    PYTHONPATH=. python -m simnet.quant_error [--peers 100] [scenario ...]

Runs each scenario twice on the simulator with the same seed: as shipped (every change gossips,
keep-alives gossip) and with `quiet_keep_alives` (keep-alives and sub-step demand changes ride
sync instead). The simulator's sync is sync/2.0.0's pull; the quiet run pulls every 1 s
(`sync_interval_s = 1`) so keep-alives spread well within their 40 s slack, as reconciliation
would. Compared: the modal price at every sample, relative error |quiet − shipped| / shipped.
"""

from __future__ import annotations

import dataclasses
import sys

from simnet.metrics import modal_price
from simnet.scenario import load
from simnet.sim import SimNetwork


def prices(name: str, peers: int, quiet: bool) -> list[int | None]:
    scenario = load(name)
    if quiet:
        scenario = dataclasses.replace(scenario, node={**scenario.node, "quiet_keep_alives": True,
                                                       "sync_interval_s": 1.0})
    rec = SimNetwork(scenario, peers, seed=1).run()
    return [modal_price(rows) for rows in rec.samples]


def main(argv: list[str]) -> int:
    peers = 100
    if argv[:1] == ["--peers"]:
        peers, argv = int(argv[1]), argv[2:]
    names = argv or ["steady", "shock", "phases", "churn"]
    for name in names:
        exact, quiet = prices(name, peers, False), prices(name, peers, True)
        errors = sorted(abs(q - e) / e for e, q in zip(exact, quiet) if e and q is not None)
        if not errors:
            print(f"{name}: no comparable samples")
            continue
        p99 = errors[min(len(errors) - 1, int(0.99 * len(errors)))]
        mean = sum(errors) / len(errors)
        print(f"{name:>8} ({peers} peers, {len(errors)} samples): price error max {errors[-1]:.2%}, "
              f"p99 {p99:.2%}, mean {mean:.3%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
