"""What gossips at once and how often a node reconciles (protocols/market-v2.md §1.3, revision
2.1: reconciliation). Local policy: peers need not agree on it, only on the capacity timeout.
"""

from __future__ import annotations

import math

#: A demand change gossips at once when it moves the demand to another step of this log scale:
#: steps are [1.125^k, 1.125^(k+1)), so what peers count is within 12.5 % of the true demand
#: until the next keep-alive carries the exact figure. Capacity changes always gossip.
DEMAND_STEP = 0.125


def demand_step(quantity: int) -> int:
    """The step of a demand quantity on the 12.5 % log scale (0 for 0)."""
    if quantity <= 0:
        return 0
    return 1 + math.floor(math.log(quantity) / math.log1p(DEMAND_STEP) + 1e-9)


def material_change(old: tuple[int, int, int, int], new: tuple[int, int, int, int]) -> bool:
    """(tokens_per_second, min_price_nano, pending_tokens, pending_requests): gossip at once?"""
    if old[:2] != new[:2]:
        return True
    return (demand_step(old[2]) != demand_step(new[2])
            or demand_step(old[3]) != demand_step(new[3]))


def rounds_to_reach(peers_seen: int) -> int:
    """Push-pull rounds after which a message has reached ≥ 99.9 % of `peers_seen` with room to
    spare: log3(N) + ln ln N (Karp et al. 2000) + 3 (checked by simnet/recon_model.py)."""
    n = max(peers_seen, 3)
    return math.ceil(math.log(n, 3) + math.log(max(math.log(n), 1.0))) + 3


def periods(capacity_timeout_s: float, peers_seen: int) -> tuple[float, float]:
    """(keep-alive period, reconciliation period) for a node that sees `peers_seen` peers.
    Keep-alive: a third of the capacity timeout (three chances before a live node expires, as
    §1.3). Reconciliation: the slack until the previous keep-alive expires, halved ("well
    before"), divided into `rounds_to_reach` rounds; at least 1 s, at most 30 s (sync/2.0.0's)."""
    keep_alive = capacity_timeout_s / 3
    slack = capacity_timeout_s - keep_alive
    reconcile = slack / 2 / rounds_to_reach(peers_seen)
    return keep_alive, min(30.0, max(1.0, reconcile))


def recent_window_s(capacity_timeout_s: float) -> float:
    """How far back a dialer's opening lists items by id (§8.4, the "since" opening): the time
    `periods` gives a keep-alive to reach ≥ 99.9 % of the peers, (T − T/3) / 2 = T/3 (20 s).
    Two views differ mostly in what is still spreading, i.e. in this window; what differs
    before it is found by the fingerprint ranges as before."""
    return capacity_timeout_s / 3


__all__ = ["recent_window_s", "DEMAND_STEP", "demand_step", "material_change", "rounds_to_reach", "periods"]
