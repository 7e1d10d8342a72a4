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
    reconciliations: int = 0     # syncs (either side) that ran sync/2.1.0 (§8.4), in syncs_*
    syncs_refused_busy: int = 0  # a peer asked again before its last answer was done, or too many at once
    syncs_over_budget: int = 0   # a peer asked beyond its sync budget (reset, fault)
    syncs_stopped: int = 0       # our sync stopped at a rejected item or a bad frame (reset, fault)
    syncs_paced: int = 0         # our sync skipped: it would exceed the peer's sync budget
    syncs_deferred: int = 0      # our periodic sync waited for a lull in gossip (policy.session_start)
    syncs_served_deferred: int = 0  # a session a peer opened waited for our lull (sync_serve_wait_s)
    sync_announcements_received: int = 0
    #: A banned peer's connections closed as they arrived, and its streams reset.
    connections_refused: int = 0
    streams_refused: int = 0
    peer_exchanges: int = 0
    dials: int = 0
    dial_failures: int = 0
    validator_errors: int = 0
    #: Connected peers pubsub had given up on, asked to register again (libp2p_compat 13).
    pubsub_repairs: int = 0
    #: The relay (relay networks only, protocol v2 §8.5; node/relay.py): frames and items
    #: written, writes that failed (the link is dropped), items dropped for a slow peer, items
    #: not sent to a peer that had sent them to us while they waited; frames and items read, and
    #: frames that ended a stream with a fault: not a valid frame, over the peer's budget, or an
    #: item rejected for its bytes; fresh changes a sync brought that the relay passed on; relay
    #: streams this node opened (to a new mesh peer, or again after a failure).
    relay_frames_sent: int = 0
    relay_items_sent: int = 0
    relay_send_errors: int = 0
    relay_items_dropped: int = 0
    relay_items_spared: int = 0
    relay_frames_received: int = 0
    relay_items_received: int = 0
    relay_frames_refused: int = 0
    relay_over_budget: int = 0
    relay_stopped: int = 0
    relay_synced_passed_on: int = 0
    relay_streams_opened: int = 0


__all__ = ["NodeCounters"]
