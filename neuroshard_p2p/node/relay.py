"""The relay, on networks whose charter says `transport = "relay"` (protocol v2 §8.5, revision
2.1: relay): announcements travel between gossip mesh neighbours in bundles on
`/neuroshard/<network id>/relay/2.1.0` streams instead of one gossip message each.

Why: py-libp2p spends ~0.8 ms of a peer's CPU on every gossip message it first receives, so a
burst of B changes costs every peer B × ~1.07 ms before it holds them all (5.3 s for 5,000 at
10,000 peers). A frame of 64 costs ~0.8 ms plus ~126 µs per new item (docs/scaling.md, "Twenty-first
pass"): bundling is what saves it, a stream alone does not.

- **Sending.** Whatever the node would publish (its own announcements, a list), whatever it
  accepts from a relay frame, and the fresh changes a sync brought it (`pass_on_synced`: a change
  that missed the relay, picked by `PeerEngine.synced_change`) go into the `RelayOutbox`. At most once per `batch_s` (the first
  batch after a quiet spell at once) the outbox's items go to every peer of the topic's gossip
  mesh and to every peer that relays to us (the mesh is not always symmetric), each peer's share
  leaving out what that peer sent us (the copy we accepted, and copies it sent while the item
  waited). Each such peer has a `_Link`: one
  stream, opened when the peer joins the mesh (checked every `LINK_REFRESH_S`, so a burst finds
  it open), and a task that writes whatever is pending for it, so a slow peer delays only its own
  frames; its pending items are bounded (`MAX_PENDING`, the oldest dropped and counted: sync
  repairs what a peer misses).
- **Receiving** (`serve`): frames are read in order; each is decoded (rule 1), charged to the
  peer's budget (rule 2, `PeerGuard.take_relay`) and its items checked by live gossip's rules
  without V4 (rule 3, `PeerEngine.on_relay_items`). A bad frame, a frame over budget or an item
  rejected for its bytes resets the stream and charges the peer a fault (node/guard.py); gossipsub's
  scores never see these streams, so the guard is the only account of them.

The outbox is sans-IO (it is told the time); `Relay` is its trio driver.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from typing import Any, Callable, Hashable, Iterable

import trio
from libp2p.custom_types import TProtocol
from libp2p.peer.id import ID

from neuroshard_p2p.node.engine import ACCEPTED, PeerEngine
from neuroshard_p2p.node.guard import (RELAY_FRAME, RELAY_ITEM, RELAY_OVER_BUDGET, PeerGuard,
                                       is_peer_fault)
from neuroshard_p2p.node.streams import FrameStream, close_quietly, failure_reason, reset_quietly
from neuroshard_p2p.wire import WireError
from neuroshard_p2p.wire.errors import REJECT
from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE, encode_sync, split_sync_response
from neuroshard_p2p.wire.framing import length_prefixed
from neuroshard_p2p.wire.messages import KIND_SYNC_RESPONSE

log = logging.getLogger("neuroshard.relay")

#: How long opening a relay stream or writing one peer's frames may take before the link is
#: dropped (what was pending for it is then left to sync).
SEND_TIMEOUT_S = 5.0
#: Attempts at one peer's frames (each on a fresh stream after a failure) before its link is
#: dropped with what was pending for it.
SEND_ATTEMPTS = 2
#: How often the relay opens a stream to each new mesh peer and closes those of peers that left
#: (§8.5: a sender keeps one stream per mesh peer open). A burst then finds its streams open: on
#: 100 real nodes of one machine, opens left for the burst timed out at `SEND_TIMEOUT_S` when
#: every process was busiest (docs/scaling.md, 24th pass).
LINK_REFRESH_S = 1.0
#: After an open with nothing to send failed, the peer is not opened eagerly again for this long
#: (a batch still opens it when it has something for it).
LINK_RETRY_S = 10.0
#: Items waiting for one peer at most (a peer that reads slower than the network changes loses the
#: oldest; two 10,000-peer bursts fit).
MAX_PENDING = 16_384


def relay_protocol(network: str) -> TProtocol:
    """relay/2.1.0 (§8.5, revision 2.1: relay): only on networks with `transport = "relay"`."""
    return TProtocol(f"/neuroshard/{network}/relay/2.1.0")


class RelayOutbox:
    """What a node has to relay and when the next batch may leave (sans-IO). Each waiting item
    keeps the peers known to hold it: the one it came from and every peer that sent it to us as a
    duplicate before the batch left (§8.5: a sender may leave those out). In a burst two
    neighbours often accept the same item within one batch interval; without this each would then
    send it to the other."""

    def __init__(self, batch_s: float) -> None:
        self.batch_s = batch_s
        self._items: dict[bytes, set[Hashable]] = {}
        self._last = -math.inf

    def __len__(self) -> int:
        return len(self._items)

    def add(self, wire: bytes, source: Hashable | None = None) -> None:
        holders = self._items.setdefault(wire, set())
        if source is not None:
            holders.add(source)

    def held_by(self, wire: bytes, peer: Hashable) -> bool:
        """`peer` sent us `wire` (a copy we already held): if it is still waiting, `peer` is not
        sent it. True when it was waiting."""
        holders = self._items.get(wire)
        if holders is None:
            return False
        holders.add(peer)
        return True

    def due(self) -> float:
        """When the next batch may leave: one batch interval after the last (at once after a
        quiet spell)."""
        return self._last + self.batch_s

    def take(self, now: float) -> list[tuple[bytes, set[Hashable]]]:
        """The batch leaving at `now` (everything held, with who holds each item), and the
        interval starts again."""
        items, self._items = list(self._items.items()), {}
        if items:
            self._last = now
        return items

    @staticmethod
    def share(items: Iterable[tuple[bytes, set[Hashable]]], peer: Hashable) -> list[bytes]:
        """The items of a batch that go to `peer`: all but those it is known to hold."""
        return [wire for wire, holders in items if peer not in holders]


def encode_frames(items: list[bytes]) -> tuple[bytes, int]:
    """Items as length-prefixed SyncResponse frames, as few as §8.2's limits allow, and how many."""
    frames = split_sync_response(items)
    return b"".join(length_prefixed(encode_sync(f)) for f in frames), len(frames)


class _Link:
    """One mesh peer's sending side: its stream, what waits for it and the task that writes."""

    __slots__ = ("pending", "wake", "stream", "scope", "writing")

    def __init__(self) -> None:
        self.pending: deque[bytes] = deque()
        self.wake = trio.Event()
        self.stream: Any = None
        self.scope: trio.CancelScope | None = None
        self.writing = False


class Relay:
    """The relay's trio driver for one node (see the module docstring)."""

    def __init__(self, *, engine: PeerEngine, guard: PeerGuard, counters: Any, protocol: TProtocol,
                 batch_s: float, now: Callable[[], float], mesh: Callable[[], Iterable[ID]],
                 fault: Callable[[ID, str, str], Any], refuses: Callable[[ID], bool],
                 on_accepted: Callable[[], None]) -> None:
        self.engine = engine
        self.guard = guard
        self.counters = counters
        self.protocol = protocol
        self.outbox = RelayOutbox(batch_s)
        self._now = now
        self._mesh = mesh
        self._fault = fault
        self._refuses = refuses
        self._on_accepted = on_accepted
        self._wake = trio.Event()
        self._links: dict[ID, _Link] = {}
        self._reading: dict[ID, Any] = {}
        self._host: Any = None
        self._nursery: trio.Nursery | None = None
        #: Peers whose stream is not opened eagerly before this time (an idle open failed).
        self._retry_after: dict[ID, float] = {}

    # -- sending -------------------------------------------------------------------------------

    def publish(self, wire: bytes) -> None:
        """Relay what this node signs (or, a list, publishes) to its mesh."""
        self.outbox.add(wire)
        self._wake.set()

    def pass_on_synced(self, peer: Hashable, wires: Iterable[bytes]) -> None:
        """Relay the fresh changes a sync with `peer` brought (§8.5's MAY; the engine's
        `synced_change` picks them): `peer` holds them, so it is not sent them."""
        added = 0
        for wire in wires:
            self.outbox.add(wire, peer)
            added += 1
        if added:
            self.counters.relay_synced_passed_on += added
            self._wake.set()

    async def run(self, host: Any, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Send batches until cancelled."""
        self._host = host
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._refresh_loop)
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                wait = self.outbox.due() - trio.current_time()
                if wait > 0:
                    await trio.sleep(wait)
                self._send_batch(self.outbox.take(trio.current_time()))

    async def _refresh_loop(self) -> None:
        while True:
            now = trio.current_time()
            self._retry_after = {p: t for p, t in self._retry_after.items() if t > now}
            for peer in self._refresh_links():
                if peer not in self._links and self._retry_after.get(peer, now) <= now:
                    self._link(peer).wake.set()  # no items: it opens its stream now
            await trio.sleep(LINK_REFRESH_S)

    def _refresh_links(self) -> set[ID]:
        """The peers we relay to — the mesh, and every peer that relays to us: gossipsub's mesh
        is not always symmetric (a GRAFT one side has not seen yet, a PRUNE in flight), and a
        peer that has us in its mesh while we lack it would otherwise send to us and get nothing
        back. The links of other peers are dropped (their streams close)."""
        mesh = set(self._mesh()) | set(self._reading)
        for peer in [p for p in self._links if p not in mesh]:
            self._drop(peer)
        return mesh

    def _link(self, peer: ID) -> _Link:
        link = self._links.get(peer)
        if link is None:
            assert self._nursery is not None
            link = self._links[peer] = _Link()
            self._nursery.start_soon(self._link_task, peer, link)
        return link

    def _send_batch(self, items: list[tuple[bytes, set[Hashable]]]) -> None:
        if not items:
            return
        for peer in self._refresh_links():
            share = RelayOutbox.share(items, peer)
            if not share:
                continue
            link = self._link(peer)
            link.pending.extend(share)
            overflow = len(link.pending) - MAX_PENDING
            if overflow > 0:
                for _ in range(overflow):
                    link.pending.popleft()
                self.counters.relay_items_dropped += overflow
            link.wake.set()

    async def _link_task(self, peer: ID, link: _Link) -> None:
        with trio.CancelScope() as scope:
            link.scope = scope
            try:
                while True:
                    await link.wake.wait()
                    link.wake = trio.Event()
                    if not link.pending:
                        if link.stream is None:  # a new mesh peer: open before a burst needs it
                            await self._open_idle(peer, link)
                        continue
                    items = list(link.pending)
                    link.pending.clear()
                    data, frames = encode_frames(items)
                    link.writing = True
                    try:
                        await self._write(peer, link, data)
                    except Exception:
                        self.counters.relay_items_dropped += len(items)
                        raise
                    link.writing = False
                    self.counters.relay_frames_sent += frames
                    self.counters.relay_items_sent += len(items)
            except Exception as exc:  # noqa: BLE001 - the peer is gone, slow or refuses
                self.counters.relay_items_dropped += len(link.pending)
                log.debug("relay to %s failed (%s)", peer, failure_reason(exc))
        if self._links.get(peer) is link:
            del self._links[peer]
        if link.stream is not None:
            await reset_quietly(link.stream)

    async def _open_idle(self, peer: ID, link: _Link) -> None:
        """Open `peer`'s stream with nothing to send yet; raises when it fails (the link ends,
        and the peer is not opened eagerly again for `LINK_RETRY_S`)."""
        started = trio.current_time()
        try:
            with trio.fail_after(SEND_TIMEOUT_S):
                link.stream = await self._host.new_stream(peer, [self.protocol])
        except Exception as exc:
            log.debug("relay open (idle) to %s failed after %.2f s: %s", peer,
                      trio.current_time() - started, failure_reason(exc))
            self.counters.relay_send_errors += 1
            self._retry_after[peer] = trio.current_time() + LINK_RETRY_S
            raise
        self.counters.relay_streams_opened += 1
        self._retry_after.pop(peer, None)

    async def _write(self, peer: ID, link: _Link, data: bytes) -> None:
        """Write `data` to `peer`'s relay stream, opening one if needed; after a failure once
        more on a fresh stream (a stream the peer reset, e.g. when it took our newer one, is not
        a reason to lose a batch). Raises when the last attempt fails."""
        for attempt in range(SEND_ATTEMPTS):
            started = trio.current_time()
            stage = "open"
            try:
                with trio.fail_after(SEND_TIMEOUT_S):
                    if link.stream is None:
                        link.stream = await self._host.new_stream(peer, [self.protocol])
                        self.counters.relay_streams_opened += 1
                    stage = "write"
                    await link.stream.write(data)
                return
            except Exception as exc:
                # On 100 real nodes of one 2-core machine nearly every failure was an open that
                # timed out on one of the five bootstrap hubs (docs/scaling.md, 23rd pass).
                log.debug("relay %s to %s failed after %.2f s (attempt %d, %d bytes): %s",
                          stage, peer, trio.current_time() - started, attempt + 1, len(data),
                          failure_reason(exc))
                self.counters.relay_send_errors += 1
                if link.stream is not None:
                    await reset_quietly(link.stream)
                    link.stream = None
                if attempt + 1 == SEND_ATTEMPTS:
                    raise

    def _drop(self, peer: ID) -> None:
        link = self._links.pop(peer)
        if link.scope is not None:
            link.scope.cancel()
        if link.stream is not None and self._nursery is not None:
            self._nursery.start_soon(close_quietly, link.stream)
            link.stream = None

    async def flush(self, timeout_s: float) -> None:
        """Send what waits now, without waiting for the batch interval, and wait (at most
        `timeout_s`) until every link has written it: a clean stop's withdrawal must leave."""
        self._send_batch(self.outbox.take(trio.current_time()))
        with trio.move_on_after(timeout_s):
            while any(link.pending or link.writing for link in self._links.values()):
                await trio.sleep(0.005)

    # -- receiving -----------------------------------------------------------------------------

    async def serve(self, stream: Any) -> None:
        """Read a peer's relay stream until it ends, breaks or earns a reset (§8.5)."""
        peer: ID = stream.muxed_conn.peer_id
        if self._refuses(peer):
            self.counters.streams_refused += 1
            await reset_quietly(stream)
            return
        old = self._reading.get(peer)
        self._reading[peer] = stream
        if old is not None:  # the peer reopened: read the new one (§8.5)
            await reset_quietly(old)
        reader = FrameStream(stream, MAX_FRAME_SIZE[KIND_SYNC_RESPONSE])
        try:
            while (frame := await reader.next()) is not None:
                if not self._frame(peer, frame):
                    break
        except WireError as error:  # a length prefix over the limit, or a frame cut short
            if error.action == REJECT:
                self.counters.relay_frames_refused += 1
                self._fault(peer, RELAY_FRAME, error.reason)
        except Exception:  # noqa: BLE001 - the stream broke: the sender opens another
            pass
        finally:
            if self._reading.get(peer) is stream:
                del self._reading[peer]
        await reset_quietly(stream)

    def _frame(self, peer: ID, frame: bytes) -> bool:
        """One frame of `peer`'s (rules 1–3 of §8.5); False: reset the stream."""
        try:
            items = self.engine.decode_relay_frame(frame)
        except WireError as error:
            self.counters.relay_frames_refused += 1
            self._fault(peer, RELAY_FRAME, error.reason)
            return False
        now = self._now()
        if not self.guard.take_relay(peer, len(items), now):
            self.counters.relay_over_budget += 1
            self._fault(peer, RELAY_OVER_BUDGET, "")
            return False
        counts = self.engine.on_relay_items(items, now)
        self.counters.relay_frames_received += 1
        self.counters.relay_items_received += len(items)
        if len(self.outbox) and counts.accepted < len(counts.outcomes):
            # copies we already held: the peer holds them, so it is not sent them back
            for wire, outcome in zip(items, counts.outcomes):
                if outcome != ACCEPTED and self.outbox.held_by(wire, peer):
                    self.counters.relay_items_spared += 1
        if counts.forward:
            self._on_accepted()
            for wire in counts.forward:
                self.outbox.add(wire, peer)
            self._wake.set()
        if counts.fault is not None:
            self.counters.relay_stopped += 1
            if is_peer_fault(counts.fault, authored=False):
                self._fault(peer, RELAY_ITEM, counts.fault)
            return False
        return True


__all__ = ["Relay", "RelayOutbox", "relay_protocol", "encode_frames", "SEND_TIMEOUT_S",
           "SEND_ATTEMPTS", "MAX_PENDING", "LINK_REFRESH_S", "LINK_RETRY_S"]
