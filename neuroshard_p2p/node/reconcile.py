"""One `sync/2.1.0` session of a node, sans-IO (protocols/market-v2.md §8.4, revision 2.1).

    session = ReconSession(engine, dialer=True)
    out = session.start(now)               # dialer: [Reconcile]; listener: []
    out = session.receive(frame, now)      # each frame from the peer → frames to send back
    session.done                           # True: close the writing side, read to the end

A session reads a snapshot of the (ts, id) items the view keeps incrementally
(`MarketView.recon_set`), taken when it starts in O(blocks) (what arrives meanwhile is for the next
session), answers each Reconcile with `view.recon.ReconSet.process`, sends the
messages the peer lacks and the ones it asks for as SyncResponse frames (kind 17), asks in `want`
for the ones it lacks, and checks what it receives with the engine's sync rules (§8, §8.3: the
first rejected item ends the session with a fault).

Also here: the periods of revision 2.1 and the material-change rule (which changes gossip at once).
"""

from __future__ import annotations

from collections.abc import Iterable

from neuroshard_p2p.node.engine import PeerEngine, SyncCounts
from neuroshard_p2p.node.policy import (
    DEMAND_STEP, demand_step, material_change, periods, recent_window_s, rounds_to_reach,
)
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.view.recon import Learnt, ReconSet
from neuroshard_p2p.wire import WireError
from neuroshard_p2p.wire.errors import REJECT
from neuroshard_p2p.wire.frames import encode_sync, split_sync_response
from neuroshard_p2p.wire.messages import KIND_SYNC_RESPONSE
from neuroshard_p2p.wire.recon import (
    KIND_RECONCILE, MAX_WANT, Reconcile, decode_reconcile, encode_reconcile,
)

#: Turns after which a session stops whatever happens (§8.4).
MAX_TURNS = 64
def recon_items(engine: PeerEngine) -> ReconSet:
    """The engine's view as §8.4 items (announcements by issued_at_ms, revocation lists at 0):
    a snapshot of the set the view keeps incrementally (O(blocks), not O(view))."""
    return engine.view.recon_set().snapshot()


class ReconSession:
    """One side of a sync/2.1.0 exchange (see the module docstring)."""

    def __init__(self, engine: PeerEngine, dialer: bool, pass_on: bool = False) -> None:
        self.engine = engine
        self.dialer = dialer
        #: A relay network: collect in `counts.forward` what a relay passes on (§8.5's MAY).
        self.pass_on = pass_on
        self.done = False
        self.turns = 0
        self.counts = SyncCounts(0, 0, 0, 0)
        self.fault: str | None = None
        self.sent_messages = 0
        self._set: ReconSet | None = None

    def _snapshot(self) -> ReconSet:
        if self._set is None:
            self._set = recon_items(self.engine)
        return self._set

    def start(self, now: float) -> list[bytes]:
        """The dialer's opening Reconcile (the listener waits for it)."""
        if not self.dialer:
            return []
        self.turns = 1
        since_ms = ms_of(now - recent_window_s(self.engine.config.capacity_timeout_s))
        return [encode_reconcile(self._snapshot().initiate(since_ms))]

    def on_peer_closed(self) -> None:
        """The peer closed its writing side: it has nothing more to say (a turn of Skips only
        is not sent, §8.4), so this side is done too."""
        self.done = True

    def _messages(self, ids: Iterable[bytes]) -> list[bytes]:
        # Looked up in the live view: what expired since the snapshot is no longer sent.
        view = self.engine.view
        wires = [w for w in map(view.wire_of, ids) if w is not None]
        self.sent_messages += len(wires)
        return [encode_sync(r) for r in split_sync_response(wires)]

    def receive(self, data: bytes, now: float) -> list[bytes]:
        """Handle one frame from the peer; return the frames to send. Raises WireError for a
        broken frame, a Reconcile after this side ended, or one past the turn limit (the driver
        resets the stream and charges a fault); a rejected item sets `fault` and `done`."""
        kind = data[2] if len(data) > 2 and data[0] in (0x93, 0x94) and data[1] == 2 else None
        if kind == KIND_SYNC_RESPONSE:
            counts = self.engine.on_sync_response(data, now, self.pass_on)
            self.counts = SyncCounts(self.counts.received + counts.received,
                                     self.counts.accepted + counts.accepted,
                                     self.counts.ignored + counts.ignored,
                                     self.counts.rejected + counts.rejected,
                                     fault=counts.fault, unchecked=counts.unchecked,
                                     forward=self.counts.forward + counts.forward)
            if counts.fault:
                self.fault, self.done = counts.fault, True
            return []
        frame = decode_reconcile(data)
        if self.done:
            raise WireError("kind", REJECT, "a Reconcile after this side ended the session")
        self.turns += 1
        if self.turns > MAX_TURNS:
            raise WireError("bad_field", REJECT, f"more than {MAX_TURNS} reconciliation turns")
        out = self._messages(frame.want)
        learnt = Learnt()
        reply = self._snapshot().process(frame, learnt)
        out += self._messages(learnt.have)
        want = tuple(sorted(set(learnt.need)))[:MAX_WANT]
        if reply.ranges or want:
            self.turns += 1
            out.append(encode_reconcile(Reconcile(reply.ranges, want)))
        # No range left: nothing more to say. The driver closes its writing side and reads
        # until the peer closes (the messages it asked for in `want` may still come).
        self.done = not reply.ranges
        return out


__all__ = ["ReconSession", "DEMAND_STEP", "demand_step", "material_change", "periods",
           "rounds_to_reach", "recon_items", "MAX_TURNS"]
