"""What gossips at once and how often a node reconciles (protocols/market-v2.md §1.3, revision
2.1: reconciliation). Local policy: peers need not agree on it, only on the capacity timeout.
"""

from __future__ import annotations

import math

#: A demand change gossips at once when it moves the demand to another step of this log scale:
#: steps are [1.125^k, 1.125^(k+1)) (`demand_step`, kept for reference and tests). The rule in
#: force (`material_change`) is by distance instead: a move of at least 12.5 % of the published
#: value, or of the network-relative step below when that is wider. Capacity changes always
#: gossip.
DEMAND_STEP = 0.125
#: ε of the network-relative step (revision 2.1, §1.3): a node's demand step is at least
#: ε × (network total) / √(counted signers). Independent moves add in quadrature, so the counted
#: total's error has a standard deviation of at most ε of the total (√(Σ step²) ≤ ε × total),
#: while each node's step widens with √N and the network-wide gossip rate stays flat in N.
NETWORK_NOISE = 0.04


def demand_step(quantity: int) -> int:
    """The step of a demand quantity on the 12.5 % log scale (0 for 0)."""
    if quantity <= 0:
        return 0
    return 1 + math.floor(math.log(quantity) / math.log1p(DEMAND_STEP) + 1e-9)


def demand_threshold(published: int, network_total: int = 0, counted_nodes: int = 0) -> float:
    """The smallest move of a demand quantity (pending tokens or pending requests) from its
    published value that gossips at once: max(12.5 % of the published value, ε × the network's
    counted total of that quantity / √(counted signers)). Without network figures, 12.5 %."""
    relative = DEMAND_STEP * published
    if counted_nodes <= 0 or network_total <= 0:
        return relative
    return max(relative, NETWORK_NOISE * network_total / math.sqrt(counted_nodes))


def material_change(old: tuple[int, ...], new: tuple[int, ...],
                    network: tuple[int, int, int] | None = None) -> bool:
    """(tokens_per_second, min_price_nano, pending_tokens, pending_requests, ...): gossip at once?
    `network` is (counted pending tokens, counted pending requests, counted signers) of the
    node's view; None gives the plain 12.5 % rule. New demand (0 → x) always gossips; x → 0
    when it crosses the step, or when the whole state turns silent (the caller gossips that)."""
    if old[:2] != new[:2]:
        return True
    tokens_total, requests_total, nodes = network if network is not None else (0, 0, 0)
    for published, now, total in ((old[2], new[2], tokens_total), (old[3], new[3], requests_total)):
        if published == 0 and now != 0:
            return True  # new demand counts at once, however small
        if published != now and abs(now - published) >= demand_threshold(published, total, nodes):
            return True
    return False


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


def session_start(now: float, last_gossip: float | None, deadline: float, quiet_s: float) -> float:
    """When a reconciliation session that is due now starts: now, unless an announcement came
    by gossip less than `quiet_s` ago; then when gossip has been quiet for `quiet_s` (asked again
    then: more may have come), and never after `deadline`. A session during a gossip burst
    competes with it for the CPU and ships what gossip is delivering anyway (docs/scaling.md,
    "Tenth pass"). The caller keeps its cadence (the next session is due a period after this
    one was due, not after it ran), so a network where gossip never pauses loses no sessions,
    it only runs each one later by at most the deadline."""
    if quiet_s <= 0 or last_gossip is None:
        return now
    return max(now, min(deadline, last_gossip + quiet_s))


def recent_window_s(capacity_timeout_s: float) -> float:
    """How far back a dialer's opening lists items by id (§8.4, the "since" opening): the time
    `periods` gives a keep-alive to reach ≥ 99.9 % of the peers, (T − T/3) / 2 = T/3 (20 s).
    Two views differ mostly in what is still spreading, i.e. in this window; what differs
    before it is found by the fingerprint ranges as before."""
    return capacity_timeout_s / 3


__all__ = ["recent_window_s", "session_start", "NETWORK_NOISE", "demand_threshold", "DEMAND_STEP", "demand_step", "material_change", "rounds_to_reach", "periods"]
