"""The node driver's counters, shared by the node (gossip, sync) and its peering (dials, peer
exchange); the engine counts message outcomes itself."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class NodeCounters:
    """Driver-level counters (the engine counts message outcomes)."""

    published: int = 0
    publish_errors: int = 0
    syncs_started: int = 0
    syncs_failed: int = 0
    syncs_served: int = 0
    syncs_refused_busy: int = 0  # a peer asked again before its last answer was done, or too many at once
    sync_announcements_received: int = 0
    peer_exchanges: int = 0
    dials: int = 0
    dial_failures: int = 0
    validator_errors: int = 0


__all__ = ["NodeCounters"]
