"""The network node: a thin trio + py-libp2p driver around the sans-IO `PeerEngine`.

    async with Node(settings) as node:      # host, pubsub, announcer, sync, peers, jobs
        ...                                 # leaving it stops all of them

One `Node` owns everything it starts, in one nursery: the libp2p host (TCP, noise, Yamux or
Mplex), gossipsub on the topic `/neuroshard/<network id>/market/2`, the announcer, the anti-entropy
protocol, its peering (bootstrap dialers and peer exchange, `node/peering.py`) and its job
service. It knows nothing of the HTTP API or where the ledger lives: `neuroshard_p2p.daemon`
builds those and hands the node an open ledger and a backend. Leaving the `async with` normally is
a clean stop: the node publishes a withdrawal (peers stop counting it at once) and gives it
`shutdown_grace_s` to leave. Leaving by cancellation or an error is a hard stop: no withdrawal,
peers stop counting the node when its last announcement expires (issued_at + capacity_timeout).

Protocols (besides gossipsub and libp2p's own identify/ping):

The network id is the charter's (`<name>-<hash16>`, `charter.py`), so nodes of different charters
share no topic and no protocol: they never exchange a market message.

- `/neuroshard/<network id>/sync/2.0.0` — anti-entropy. The dialer sends one SyncRequest frame (its view's
  digest and per-bucket digests); the listener answers with SyncResponse frames carrying every
  announcement of the buckets that differ, then closes. Frames are uvarint length-prefixed
  (wire/framing.py). Both sides of every new connection pull, and every `sync_interval_s` a node
  pulls from one random peer, so a late joiner holds the same view within a round trip.
- `/neuroshard/<network id>/sync/2.1.0` — the same exchange by range-based reconciliation
  (protocol §8.4, `node/reconcile.py`), offered first when `reconcile` (or `quiet_keep_alives`) is on; a
  peer without it answers on 2.0.0. With `quiet_keep_alives`, keep-alives travel only this way
  and the loop's period comes from the capacity timeout and the signers seen (`node/policy.py`).
- `/neuroshard/<network id>/peers/1.1.0` and `/peers/1.0.0` — peer exchange (`node/peering.py`).
- `/neuroshard/<network id>/job/2.0.0` — a job from a gateway to the provider it matched, and the
  provider's signed receipt (`node/job_service.py`, protocol §9).
- `/neuroshard/<network id>/relay/2.1.0` — only on a network whose charter says
  `transport = "relay"` (protocol §8.5, `node/relay.py`): what the node would publish on the
  topic, what it accepts from a peer's relay stream, and the fresh changes a sync brings it (a
  change that missed the relay), go to its gossip mesh peers in bundles,
  at most one batch per `relay_batch_s`; nothing is published on the topic, whose mesh is the
  relay's graph.

Gossip validation runs in a synchronous topic validator that calls the engine and never raises
(an exception in a synchronous validator would stop py-libp2p's pubsub service). The node keeps
reading its own subscription (py-libp2p drops messages silently when a subscription's 32-slot
channel is full, and a publisher receives its own messages). Every other py-libp2p workaround is
in `node/libp2p_compat.py`.

Accountability (protocol v2 §14.1): every fault a remote peer commits goes to the node's
`PeerGuard` (`node/guard.py`): a gossip message the validator rejects (charged to the peer that
forwarded it, and to gossipsub's P4 counter), a sync answer the dialer stopped at a rejected item
or a broken frame, a sync request over the listener's budget, a broken job-stream frame, and on
relay networks a relay frame that is broken, over the peer's budget or carries an item rejected for
its bytes (gossipsub's scores never see those streams). When a
peer's score reaches the guard's threshold the node bans it: pubsub blacklists it (nothing it
sends or relays is validated or forwarded any more), its connections are closed, and until the
ban ends its new connections are closed as they arrive and its streams reset. `/api/peers` and
`/metrics` show each peer's standing and the fault counters.
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable

import coincurve
import trio

from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service

from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.ledger import AsyncLedger
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.node.backends import InferenceBackend
from neuroshard_p2p.node.clockwatch import BEHIND, DIFFERS, UNKNOWN, ClockReading, ClockWatch
from neuroshard_p2p.node.counters import NodeCounters
from neuroshard_p2p.node.relay import Relay, relay_protocol
from neuroshard_p2p.node.datadir import load_private_key, member_credential
from neuroshard_p2p.node.engine import (
    LocalRequest,
    MarketSnapshot,
    OwnOffer,
    PeerEngine,
    SyncCounts,
    Verdict,
)
from neuroshard_p2p.node.errors import NodeError
from neuroshard_p2p.node.guard import (
    GOSSIP_REJECT,
    SYNC_FRAME,
    SYNC_ITEM,
    SYNC_OVER_BUDGET,
    SYNC_PACE,
    Ban,
    PeerGuard,
    PeerStanding,
    TokenBuckets,
    is_peer_fault,
)
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.node.job_service import STOPPING, JobService
from neuroshard_p2p.node.reach import Reach
from neuroshard_p2p.node.libp2p_compat import (
    PubsubRepair,
    VerdictScorer,
    bind_problem,
    blacklist,
    close_connections,
    disconnect,
    expand_wildcards,
    install_node_workarounds,
    make_gossipsub,
    muxer_options,
    senders_idle,
    stop_auto_connector,
    stop_libp2p,
    unwind,
)
from neuroshard_p2p.node.policy import periods, session_start
from neuroshard_p2p.node.reconcile import ReconSession
from neuroshard_p2p.node.peering import ConnectionWatcher, Peering, parse_listen_addr, short_id
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.node.streams import FrameStream, failure_reason, reset_quietly
from neuroshard_p2p.node.work import IdentityWork
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.wire import MAX_AGE_S, MAX_FUTURE_S, WireError
from neuroshard_p2p.wire.errors import REJECT
from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE
from neuroshard_p2p.wire.framing import length_prefixed
from neuroshard_p2p.wire.membership import Admission
from neuroshard_p2p.wire.messages import KIND_SYNC_REQUEST, KIND_SYNC_RESPONSE, Credential
from neuroshard_p2p.wire.recon import MAX_RECONCILE_FRAME

log = logging.getLogger("neuroshard.node")

#: How long a node that has bootstrap peers holds its first announcement for a gossip mesh peer.
FIRST_ANNOUNCE_HOLD_S = 10.0
#: How often the node looks for connected peers pubsub gave up on (libp2p_compat 13).
PUBSUB_REPAIR_S = 2.0
#: How often a node whose backend refused connections checks whether it takes one again.
BACKEND_CHECK_S = 5.0
#: How often the node reads its clock watch; a reading that stays wrong is logged again after
#: CLOCK_REMIND_S; a step of the clock larger than CLOCK_STEP_S starts the watch again.
CLOCK_CHECK_S = 2.0
CLOCK_REMIND_S = 600.0
CLOCK_STEP_S = 1.0


def sync_protocol(network: str) -> TProtocol:
    """The anti-entropy protocol of a network id (nodes of other networks do not speak it)."""
    return TProtocol(f"/neuroshard/{network}/sync/2.0.0")


def recon_protocol(network: str) -> TProtocol:
    """sync/2.1.0: range-based reconciliation (§8.4, revision 2.1), offered before 2.0.0."""
    return TProtocol(f"/neuroshard/{network}/sync/2.1.0")


#: Concurrent outgoing syncs (a burst of new connections must not start a burst of streams).
MAX_CONCURRENT_SYNCS = 4
#: Sync requests answered at once (over all peers; each peer gets one at a time).
MAX_CONCURRENT_SYNC_ANSWERS = 8


@dataclass(frozen=True)
class PeerSummary:
    """A connected peer: its id and the addresses we know for it."""

    peer_id: str
    addrs: tuple[str, ...]


class Node:
    """A running market node (see the module docstring). Construct, then `async with`."""

    def __init__(self, settings: NodeSettings, *, private_key: coincurve.PrivateKey | None = None,
                 clock: Callable[[], float] = time.time, backend: InferenceBackend | None = None,
                 ledger: AsyncLedger | None = None) -> None:
        """`backend` and `ledger` are the caller's, open for the node's lifetime (the daemon's);
        without them the job service makes a backend from the settings and records no receipts
        (checks them only)."""
        self.settings = settings
        self.private_key = private_key if private_key is not None else load_private_key(settings.data_dir)
        self.clock = clock
        self.engine = PeerEngine(settings.market, self.private_key,
                                 tokens_per_second=settings.capacity,
                                 min_price_nano=to_nano(settings.min_price),
                                 announce_interval_s=settings.announce_interval_s,
                                 admission=Admission.of(settings.charter),
                                 quiet_keep_alives=settings.quiet_keep_alives)
        #: Whether this node's clock agrees with its peers' signed times (node/clockwatch.py).
        self.engine.clock_watch = ClockWatch(keep_alive_s=settings.announce_interval_s)
        self.clock_reading = self.engine.clock_watch.reading(clock())
        #: Members networks: this node's credential (from the data dir, checked), which rides in
        #: every announcement and job it signs.
        self.credential: Credential | None = None
        admission = Admission.of(settings.charter)
        if admission is not None:
            self.credential = member_credential(settings.data_dir, admission, self.engine.signer,
                                                ms_of(clock()))
            self.engine.set_credential(self.credential.wire, self.credential.expires_at_ms)
        #: This key's identity work: ground in the background, kept in the data dir.
        self.work = IdentityWork(self.engine.signer, settings.market.identity_work_bits,
                                 settings.data_dir, on_better=self._better_work)
        self.counters = NodeCounters()
        #: Faults, scores and bans of remote peers (node/guard.py); the listener's sync budget.
        self.guard = PeerGuard()
        #: Our own pace per remote peer when we pull (inside its listener's budget).
        self._sync_pace = TokenBuckets(*SYNC_PACE)
        #: When gossip last brought an announcement we accepted (`_sync_loop` waits for a lull).
        self._last_gossip: float | None = None
        #: Jobs: routes this node's requests to providers and serves jobs sent to it.
        self.jobs = JobService.for_node(self, backend=backend, ledger=ledger)
        #: Bootstrap dialers and peer exchange.
        self.peering = Peering(settings, self.counters, refuse=self.refuses)
        #: mDNS, AutoNAT reachability, circuit relay, UPnP (node/reach.py).
        self.reach = Reach(settings, now=self.now)
        self.topic = settings.topic
        self._sync_protocol = sync_protocol(settings.network)
        #: The relay (networks with transport = "relay", protocol v2 §8.5): what the node would
        #: publish goes to its mesh peers in bundles on streams instead; None on gossip networks.
        self.relay: Relay | None = None
        if settings.charter.relay:
            self.relay = Relay(
                engine=self.engine, guard=self.guard, counters=self.counters,
                protocol=relay_protocol(settings.network), batch_s=settings.relay_batch_s,
                now=self.now, mesh=self._mesh_peers, fault=self.fault, refuses=self.refuses,
                on_accepted=self._relay_accepted)
        self._recon_protocol = recon_protocol(settings.network)
        self._listen = [parse_listen_addr(a) for a in settings.listen]
        self._key_pair = create_new_key_pair(self.private_key.secret)
        self._stack: AsyncExitStack | None = None
        self._tasks: Any = None
        self._subscription: Any = None
        self._logged: dict[tuple[bytes, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self._poke = trio.Event()
        #: The offer set aside while the backend refuses connections (`backend_unreachable`);
        #: None while it answers.
        self._held_offer: OwnOffer | None = None
        self._mesh_ready = trio.Event()
        self._sync_limiter = trio.CapacityLimiter(MAX_CONCURRENT_SYNCS)
        self._serve_limiter = trio.CapacityLimiter(MAX_CONCURRENT_SYNC_ANSWERS)
        self._serving_sync: set[ID] = set()
        self._new_peers_send, self._new_peers_recv = trio.open_memory_channel[ID](256)
        self.host: Any = None
        self.pubsub: Pubsub | None = None
        self.gossipsub: GossipSub | None = None

    # -- identity and addresses ------------------------------------------------------------

    @property
    def peer_id(self) -> str:
        return self.engine.peer_id

    @property
    def addrs(self) -> list[str]:
        """Full multiaddrs (with /p2p/<peer id>) others can bootstrap from."""
        if self.host is None:
            return []
        # Relayed addresses are added here, not through the host's addrs_factory: py-libp2p cuts
        # an advertised address at its first /p2p/ and appends ours, which turned
        # <relay addr>/p2p/<relay>/p2p-circuit into the relay's own address (libp2p_compat 11g).
        return [str(a) for a in self.host.get_addrs()] + [str(a) for a in self.reach.relayed_addrs()]

    def now(self) -> float:
        return self.clock()

    # -- lifetime --------------------------------------------------------------------------

    async def __aenter__(self) -> "Node":
        libp2p = AsyncExitStack()
        await libp2p.__aenter__()
        try:
            await self._start_libp2p(libp2p)
            tasks = trio.open_nursery()
            self._nursery = await tasks.__aenter__()
        except BaseException as exc:
            await unwind(libp2p.__aexit__(type(exc), exc, exc.__traceback__), exc)
            raise
        self._stack, self._tasks = libp2p, tasks
        try:
            await self._start_tasks(self._nursery)
        except BaseException as exc:
            await unwind(self.__aexit__(type(exc), exc, exc.__traceback__), exc)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        libp2p, self._stack = self._stack, None
        tasks, self._tasks = self._tasks, None
        assert libp2p is not None and tasks is not None and self._nursery is not None
        try:
            try:
                if exc_type is None:
                    await self._withdraw_and_flush()
            finally:
                self._nursery.cancel_scope.cancel()
                # Our own tasks first: an error in one of them surfaces here.
                suppressed = await tasks.__aexit__(exc_type, exc, tb)
        finally:
            await close_connections(self.host)
            await stop_libp2p(libp2p)
        return bool(suppressed)

    async def _start_libp2p(self, stack: AsyncExitStack) -> None:
        s = self.settings
        # At most 2 × max_peers connections; above max_peers libp2p prunes idle ones down to
        # target_peers, which gossip connections never are (see stop_auto_connector, which
        # also stops its auto-connector once the host runs).
        connections = ConnectionConfig(min_connections=0, low_watermark=s.target_peers,
                                       high_watermark=s.max_peers, max_connections=2 * s.max_peers,
                                       dial_timeout=s.dial_timeout_s)
        self.host = new_host(key_pair=self._key_pair, muxer_opt=muxer_options(s.muxer),
                             listen_addrs=self._listen, connection_config=connections,
                             addrs_factory=expand_wildcards)
        install_node_workarounds(s.send_linger_s)
        self.gossipsub = make_gossipsub(s)
        self.pubsub = Pubsub(self.host, self.gossipsub, strict_signing=True)
        # py-libp2p binds its listeners with SO_REUSEPORT: a port another node listens on would
        # not fail but be shared, the kernel handing each incoming connection to either node.
        for addr in self._listen:
            if addr.value_for_protocol("tcp") != "0" and (problem := bind_problem(addr)):
                raise NodeError(f"cannot listen on {addr}: {problem}")
        try:
            await stack.enter_async_context(self.host.run(self._listen))
        except OSError as exc:
            raise NodeError(f"cannot listen on {', '.join(s.listen)}: {exc.strerror or exc}") from None
        except Exception as exc:
            reason = failure_reason(exc)
            raise NodeError(f"cannot listen on {', '.join(s.listen)}: {reason}") from None
        if not self.host.get_transport_addrs():
            # py-libp2p logs a failed listen and carries on; a node nobody can reach is no node.
            reasons = "; ".join(bind_problem(a) or "unknown reason (see the log)"
                                for a in self._listen)
            raise NodeError(f"cannot listen on {', '.join(s.listen)}: {reasons}")
        await stop_auto_connector(self.host)
        await stack.enter_async_context(background_trio_service(self.pubsub))
        await stack.enter_async_context(background_trio_service(self.gossipsub))
        await self.pubsub.wait_until_ready()
        self.host.set_stream_handler(self._sync_protocol, self._serve_sync)
        if self.relay is not None:
            self.host.set_stream_handler(self.relay.protocol, self.relay.serve)
        if self._reconciles:
            self.host.set_stream_handler(self._recon_protocol, self._serve_sync)
        self.peering.attach(self.host)
        await self.reach.attach(self.host, stack)
        self.host.get_network().register_notifee(
            ConnectionWatcher(self._new_peers_send, refuse=self._refuse_connection))
        self.pubsub.set_topic_validator(self.topic, self._validate_gossip, False)
        self._subscription = await self.pubsub.subscribe(self.topic)

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        self.work.load()  # before the first announcement, which then carries the kept nonce
        nursery.start_soon(self.work.run)
        nursery.start_soon(self._drain, self._subscription)
        nursery.start_soon(self._announce_loop)
        nursery.start_soon(self._mesh_watch)
        nursery.start_soon(self._sync_new_peers)
        nursery.start_soon(self._sync_loop)
        nursery.start_soon(self._guard_loop)
        nursery.start_soon(self._clock_loop)
        nursery.start_soon(self._pubsub_repair_loop)
        await nursery.start(self.jobs.run, self.host)
        if self.relay is not None:
            await nursery.start(self.relay.run, self.host)
        nursery.start_soon(self._check_backend)
        self.peering.start(nursery)
        self.reach.start(nursery)
        log.info("node %s listening on %s (topic %s)", self.peer_id, ", ".join(self.addrs),
                 self.topic)

    async def drain(self, timeout_s: float, cut_short: trio.Event | None = None) -> int:
        """Before a clean stop: publish the withdrawal now (peers stop counting this node and
        matching requests to it at once; an offer held while the backend is down is not
        restored), then give the jobs under way up to `timeout_s` to end well
        (`JobService.drain`). Returns how many were still under way."""
        self._held_offer = None
        await self._withdraw_and_flush()
        return await self.jobs.drain(timeout_s, cut_short)

    async def _withdraw_and_flush(self) -> None:
        """Publish the withdrawal and wait (at most shutdown_grace_s) until it has left. Called
        by `drain` and again when the node leaves: the second time there is nothing left to
        withdraw, and it only waits for whatever is still being written."""
        if self.pubsub is None:
            return
        data = self.engine.withdraw(self.now())
        if data is not None:
            await self._publish(data)
        if self.relay is not None:
            await self.relay.flush(self.settings.shutdown_grace_s)
            return
        # Until every peer's sender has written it: closing the connections while a write is
        # under way loses the withdrawal (a loaded machine took longer than a fixed pause), and
        # peers would count this node until its timeout.
        with trio.move_on_after(self.settings.shutdown_grace_s):
            while not senders_idle(self.pubsub):
                await trio.sleep(0.005)

    # -- market operations (the API and the CLI call these) ---------------------------------

    def set_offer(self, tokens_per_second: int, min_price_nano: int) -> None:
        """Offer capacity (announced within a tick); raises core.errors.MarketError. While the
        backend refuses connections the offer waits, and is announced once it answers."""
        if self.jobs.stopping:
            raise MarketError(STOPPING)
        self.engine.set_offer(tokens_per_second, min_price_nano)
        if self._held_offer is not None:
            self._held_offer = self.engine.offer
            self.engine.withdraw_offer()
        self._poke.set()

    def withdraw_offer(self) -> None:
        self.engine.withdraw_offer()
        if self._held_offer is not None:
            self._held_offer = self.engine.offer
        self._poke.set()

    @property
    def backend_reachable(self) -> bool:
        """False while the node offers nothing because its backend refuses connections."""
        return self._held_offer is None

    def backend_unreachable(self) -> None:
        """The backend refused a connection (a job failed `unreachable`, or the check at start):
        offer nothing, so no peer counts capacity this node cannot serve, until the backend
        takes a connection again (`_wait_for_backend`). Nothing to do without an offer."""
        if self._held_offer is not None or not self.engine.offer.tokens_per_second:
            return
        self._held_offer = self.engine.offer
        self.engine.withdraw_offer()
        self._poke.set()
        log.warning("backend unreachable: offering no capacity until it takes a connection "
                    "(checked every %.0f s)", BACKEND_CHECK_S)
        self._spawn(self._wait_for_backend)

    async def _check_backend(self) -> None:
        """At start: a backend that refuses connections gets no capacity announced for it."""
        reachable = getattr(self.jobs.backend, "reachable", None)
        if reachable is not None and self.engine.offer.tokens_per_second:
            if not await reachable():
                self.backend_unreachable()

    async def _wait_for_backend(self) -> None:
        reachable = getattr(self.jobs.backend, "reachable", None)
        while True:
            await trio.sleep(BACKEND_CHECK_S)
            if reachable is None or await reachable():
                break
        held, self._held_offer = self._held_offer, None
        if held is not None and held.tokens_per_second:
            self.engine.set_offer(held.tokens_per_second, held.min_price_nano)
            self._poke.set()
        log.warning("backend reachable again: offering %d tokens/s",
                    self.engine.offer.tokens_per_second)

    async def publish_revocations(self, data: bytes) -> Verdict:
        """Publish an authority's signed revocation list (members networks; any node may carry
        one: its authority's signature is what counts, spec §6.3). Checked and merged as gossip
        would be, then gossiped; a refused list is not sent."""
        verdict = self.engine.on_gossip(data, self.now())
        if verdict.accepted:
            await self._publish(data)
        return verdict

    def _better_work(self, nonce: int) -> None:
        """A better identity-work nonce: our next announcement carries it."""
        self.engine.set_work_nonce(nonce)
        self._poke.set()

    def set_demand(self, pending_tokens: int, pending_requests: int) -> None:
        """Announce this demand (e.g. a simulated gateway's queue) instead of the local queue's;
        the jobs layer sets it the same way from its own book."""
        self.engine.set_demand(pending_tokens, pending_requests)
        self._poke.set()

    def submit_request(self, tokens: int, max_price_nano: int, *, tier: str = "standard",
                       prompt: str = "", user: str | None = None) -> LocalRequest:
        """Queue a request here; it raises this node's demand announcement."""
        request = self.engine.submit_request(tokens, max_price_nano, self.now(), tier=tier,
                                             prompt=prompt, user=user)
        self._poke.set()
        self.jobs.wake()
        return request

    def stats(self, now: float | None = None) -> MarketSnapshot:
        return self.engine.stats(self.now() if now is None else now)

    def connected_peers(self) -> list[PeerSummary]:
        if self.host is None:
            return []
        store = self.host.get_peerstore()
        result = []
        for peer in self.host.get_connected_peers():
            try:
                addrs = tuple(str(a) for a in store.addrs(peer))
            except Exception:  # noqa: BLE001 - a peer without a peerstore entry yet
                addrs = ()
            result.append(PeerSummary(str(peer), addrs))
        return sorted(result, key=lambda p: p.peer_id)

    @property
    def peer_count(self) -> int:
        return 0 if self.host is None else len(self.host.get_connected_peers())

    async def connect(self, addr: str) -> str:
        """Dial a peer by full multiaddr; returns its peer id, raises NodeError with the reason."""
        return await self.peering.connect(addr)

    # -- gossip -------------------------------------------------------------------------------

    def _validate_gossip(self, forwarder: ID, message: Any) -> bool:
        """py-libp2p's synchronous topic validator. Must never raise (see module docstring)."""
        try:
            if forwarder == self.host.get_id():
                return True  # our own publish: the engine made and merged it
            now = self.now()
            if self.guard.should_refuse(forwarder, now):
                return False  # pubsub's blacklist drops these first; this is belt and braces
            verdict = self.engine.on_gossip(message.data, now, from_peer=message.from_id)
            if verdict.accepted:
                self._last_gossip = now
            if verdict.outcome == "rejected":
                if self._worth_logging(message.from_id, verdict.reason, now):
                    log.info("rejected gossip from %s via %s: %s (%s)", short_id(message.from_id),
                             short_id(forwarder), verdict.reason, verdict.detail)
                authored = forwarder.to_bytes() == bytes(message.from_id)
                if is_peer_fault(verdict.reason, authored=authored) and not (
                        verdict.reason == "future" and self._clock_behind()):
                    self._charge_invalid(forwarder)
                    self.fault(forwarder, GOSSIP_REJECT, verdict.reason)
            return verdict.accepted
        except Exception:  # noqa: BLE001 - never let an exception reach py-libp2p here
            self.counters.validator_errors += 1
            log.exception("gossip validator failed; message dropped")
            return False

    def _clock_behind(self) -> bool:
        """Whether this node's own clock is behind its peers' (the clock watch's reading, or
        the only peer's): then a `future` refusal is this node's fault, and charging its author
        would ban honest peers, a busy one within 20 s (tests/test_clock_skew.py)."""
        reading = self.clock_reading
        return reading.state == BEHIND or (reading.state == DIFFERS and
                                           reading.offset_s is not None and reading.offset_s > 0)

    def _charge_invalid(self, forwarder: ID) -> None:
        """Gossipsub's P4 counter for a reject (py-libp2p counts none itself: libp2p_compat 8)."""
        scorer = None if self.gossipsub is None else self.gossipsub.scorer
        if isinstance(scorer, VerdictScorer):
            scorer.charge_invalid(forwarder, self.topic)

    # -- accountability -----------------------------------------------------------------------

    def fault(self, peer: ID, kind: str, reason: str = "") -> Ban | None:
        """Charge `peer` a fault of `kind` (node/guard.py); ban it if that reaches the threshold."""
        ban = self.guard.fault(peer, kind, self.now())
        if ban is not None:
            self._ban(ban, reason)
        return ban

    def refuses(self, peer: ID) -> bool:
        """Whether `peer` is banned now (its connections and streams are refused)."""
        return self.guard.should_refuse(peer, self.now())

    def _ban(self, ban: Ban, reason: str) -> None:
        peer = ban.peer
        assert isinstance(peer, ID)
        log.warning("banned peer %s for %g s (%s%s; ban %d in a row): blacklisted and disconnected",
                    short_id(peer), ban.period_s, ban.kind, f": {reason}" if reason else "",
                    ban.repeat + 1)
        if self.pubsub is not None:
            blacklist(self.pubsub, peer)  # drops what it sends or relays from now on
        if self.host is not None:
            self._spawn(disconnect, self.host, peer)

    def _spawn(self, fn: Any, *args: Any) -> None:
        """Start a background task in the node's nursery; nothing when the node is stopping
        (its nursery then takes no new task, and the connection goes with the node anyway)."""
        if self._nursery is None:
            return
        try:
            self._nursery.start_soon(fn, *args)
        except RuntimeError:  # "Nursery is closed to new arrivals": the node is stopping
            pass

    def _refuse_connection(self, peer: ID) -> bool:
        """A connection arrived (ConnectionWatcher): close it if its peer is banned."""
        if not self.refuses(peer):
            return False
        self.counters.connections_refused += 1
        self._spawn(disconnect, self.host, peer)
        return True

    async def _refuse_stream(self, stream: INetStream) -> bool:
        """Reset a stream a banned peer opened (True), else False."""
        if not self.refuses(stream.muxed_conn.peer_id):
            return False
        self.counters.streams_refused += 1
        await reset_quietly(stream)
        return True

    async def _guard_loop(self) -> None:
        """Let banned peers back in when their bans end."""
        while True:
            for peer in self.guard.expire(self.now()):
                assert isinstance(peer, ID)
                if self.pubsub is not None:
                    self.pubsub.remove_from_blacklist(peer)
                log.info("ban of peer %s ended", short_id(peer))
            await trio.sleep(1.0)

    async def _clock_loop(self) -> None:
        """Read the clock watch: warn when this node's clock disagrees with its peers' (or with
        its only peer's), again when the verdict changes or every CLOCK_REMIND_S while it
        stands, and once when it agrees again; start the watch again when the clock is stepped
        (NTP setting it right must not leave a stale warning)."""
        watch = self.engine.clock_watch
        assert watch is not None
        # Against trio's clock, not time.monotonic(): the two run together in a node, and also
        # in the simulator's time-dilated workers, whose trio loop runs as slow as the node's.
        step = self.clock() - trio.current_time()
        warned_at: float | None = None
        warned = UNKNOWN
        while True:
            await trio.sleep(CLOCK_CHECK_S)
            now = self.clock()
            new_step = now - trio.current_time()
            if abs(new_step - step) > CLOCK_STEP_S:
                log.warning("this node's clock was set by %+.1f s: measuring it against its "
                            "peers' again", new_step - step)
                watch.reset()
            step = new_step
            reading = self.clock_reading = watch.reading(now)
            # While this node's clock is wrong, jobs fail for its time: no provider is blamed.
            self.jobs.gateway.not_holding = (
                f"this node's clock is wrong: {reading.state}, {reading.offset_s:+.0f} s"
                if reading.warns and reading.offset_s is not None else None)
            if reading.warns:
                if (warned_at is None or reading.state != warned
                        or not 0 <= now - warned_at < CLOCK_REMIND_S):
                    log.warning("clock: %s", self._describe_clock(reading))
                    warned_at, warned = now, reading.state
            elif warned_at is not None and reading.state != UNKNOWN:
                log.warning("clock: %s", self._describe_clock(reading))
                warned_at, warned = None, UNKNOWN

    @staticmethod
    def _describe_clock(reading: ClockReading) -> str:
        return reading.describe(MAX_FUTURE_S, MAX_AGE_S)

    def clock_json(self) -> dict[str, Any]:
        """The clock watch's reading, for the API (`/api/node`, the dashboard, `id`)."""
        reading = self.clock_reading
        return {"state": reading.state, "offset_s": reading.offset_s, "signers": reading.signers,
                "off": reading.off, "warn_s": reading.warn_s,
                "text": self._describe_clock(reading)}

    async def _pubsub_repair_loop(self) -> None:
        """Connected peers pubsub gave up on get another registration (libp2p_compat 13)."""
        repair = PubsubRepair()
        while True:
            await trio.sleep(PUBSUB_REPAIR_S)
            if self.pubsub is not None and self.host is not None:
                self.counters.pubsub_repairs += repair.check(
                    self.pubsub, self.host.get_connected_peers(), trio.current_time())

    def peer_standings(self) -> list[dict[str, Any]]:
        """Every peer that is connected or that the guard remembers: its guard score, its
        gossipsub score, its ban, and its clock against ours when it signed something we heard
        (the API's `peers` section)."""
        now = self.now()
        watch = self.engine.clock_watch
        clocks = ({} if watch is None else
                  {peer_id_of(signer): offset for signer, offset in watch.offsets(now).items()})
        connected = set(self.host.get_connected_peers()) if self.host is not None else set()
        known: dict[Any, PeerStanding] = {s.peer: s for s in self.guard.standings(now)}
        for peer in connected:
            known.setdefault(peer, self.guard.standing(peer, now))
        scorer = None if self.gossipsub is None else self.gossipsub.scorer
        rows = []
        for peer, standing in known.items():
            rows.append({
                "peer_id": str(peer),
                "connected": peer in connected,
                "score": round(standing.score, 6),
                # Connected peers only: py-libp2p's scorer would start a record for any other.
                "gossipsub_score": (round(scorer.score(peer, [self.topic]), 6)
                                    if scorer is not None and peer in connected else None),
                "faults": standing.faults,
                "bans": standing.bans,
                "banned_until": standing.banned_until,
                "banned_for_s": (None if standing.banned_until is None
                                 else round(standing.banned_until - now, 3)),
                # its signed clock − ours (node/clockwatch.py), None if it signed nothing heard
                "clock_offset_s": clocks.get(str(peer)),
            })
        return sorted(rows, key=lambda r: (r["banned_until"] is None, r["score"], r["peer_id"]))

    def _worth_logging(self, origin: bytes, reason: str, now: float) -> bool:
        """One log line per (origin, reason) per minute: a flood must not flood the log too (the
        counters count every message)."""
        key = (bytes(origin), reason)
        if now - self._logged.get(key, -math.inf) < 60.0:
            return False
        if len(self._logged) > 1024:
            self._logged.clear()
        self._logged[key] = now
        return True

    async def _drain(self, subscription: Any) -> None:
        """Keep reading our subscription: validated messages were merged by the validator."""
        while True:
            await subscription.get()

    async def _publish(self, data: bytes) -> None:
        assert self.pubsub is not None
        if self.relay is not None:  # a relay network publishes nothing on the topic (§8.5)
            self.relay.publish(data)
            self.counters.published += 1
            return
        try:
            await self.pubsub.publish(self.topic, data)
            self.counters.published += 1
        except Exception as exc:  # noqa: BLE001 - e.g. py-libp2p #887 before identify completes
            # The announcement is in our view; sync hands it to peers that missed it, and the
            # next keep-alive gossips it again.
            self.counters.publish_errors += 1
            log.warning("publish failed (%s); peers will get it by sync", failure_reason(exc))

    def _mesh_peers(self) -> list[ID]:
        """Our gossip mesh for the topic: the relay's graph (§8.5)."""
        return list(self.gossipsub.mesh.get(self.topic, ())) if self.gossipsub is not None else []

    def _pass_on_synced(self, peer: ID, wires: tuple[bytes, ...]) -> None:
        """A relay network: relay the fresh changes a sync with `peer` brought (§8.5's MAY,
        `PeerEngine.synced_change`), so a change that missed the relay is relayed from here."""
        if self.relay is not None and wires:
            self.relay.pass_on_synced(peer, wires)

    def _relay_accepted(self) -> None:
        """A relay frame brought announcements we accepted: for the sync lull, that is gossip
        (a session in the middle of a relayed burst competes with it for the CPU)."""
        self._last_gossip = self.now()

    async def _announce_loop(self) -> None:
        if self.settings.bootstrap_peers:
            # Our first announcement waits (bounded) for a gossip mesh peer. Published before
            # gossipsub grafts anyone, it would reach only the peers that pull it by sync, which
            # do not forward what they pull: the rest would get our next announcement instead,
            # and their price windows would differ from the others' for W ticks (simnet measured
            # 22-30 s of disagreement after peers joined a 20-node network).
            with trio.move_on_after(FIRST_ANNOUNCE_HOLD_S):
                await self._mesh_ready.wait()
        while True:
            now = self.now()
            for data in self.engine.poll_announcements(now):
                await self._publish(data)
            deadline = self.engine.next_deadline()
            wait = math.inf if deadline is None else max(deadline - self.now(), 0.005)
            # At least once a tick, announcing or not: poll_announcements also expires what no
            # peer would accept any more (engine.expire), so the view converges with the others'.
            wait = min(wait, self.settings.market.tick_s)
            with trio.move_on_after(wait):
                await self._poke.wait()
            self._poke = trio.Event()

    async def _mesh_watch(self) -> None:
        """Note when our gossip mesh for the topic goes from empty to non-empty: the first time,
        the held first announcement may go (see `_announce_loop`); every time, our state is
        announced again, since what we published while we had no mesh peer reached only the
        peers that pulled it by sync, and they do not forward it."""
        assert self.gossipsub is not None
        had_mesh = False
        while True:
            has_mesh = bool(self.gossipsub.mesh.get(self.topic))
            if has_mesh and not had_mesh:
                self._mesh_ready.set()
                self.engine.reannounce()
                self._poke.set()
            had_mesh = has_mesh
            await trio.sleep(self.settings.heartbeat_interval_s / 2)

    # -- anti-entropy -------------------------------------------------------------------------

    async def sync_with(self, peer: ID) -> SyncCounts:
        """Pull from `peer` what our view lacks. Stops at the first item we reject (v2 §8.3):
        resets the stream, charges the peer and returns the counts with `fault` set. Raises
        NodeError with the reason on failure, and without asking when `peer` is banned or
        when asking now would exceed our pace for it (SYNC_PACE, inside its listener's budget)."""
        if self.refuses(peer):
            raise NodeError(f"sync with {short_id(peer)}: the peer is banned")
        if not self._sync_pace.take(peer, self.now()):
            self.counters.syncs_paced += 1
            raise NodeError(f"sync with {short_id(peer)}: asked too recently (sync budget)")
        async with self._sync_limiter:
            self.counters.syncs_started += 1
            received = accepted = ignored = rejected = unchecked = 0
            fault: str | None = None
            stream: INetStream | None = None
            try:
                with trio.fail_after(self.settings.stream_timeout_s):
                    offered = ([self._recon_protocol] if self._reconciles else []) + [self._sync_protocol]
                    stream = await self.host.new_stream(peer, offered)
                    if stream.get_protocol() == self._recon_protocol:
                        counts = await self._reconcile(stream, ReconSession(
                            self.engine, dialer=True, pass_on=self.relay is not None))
                        received, accepted, ignored, rejected = (
                            counts.received, counts.accepted, counts.ignored, counts.rejected)
                        fault, unchecked = counts.fault, counts.unchecked
                        self._pass_on_synced(peer, counts.forward)
                        frames = None
                    else:
                        await stream.write(length_prefixed(self.engine.sync_request(self.now())))
                        frames = FrameStream(stream, MAX_FRAME_SIZE[KIND_SYNC_RESPONSE])
                    while frames is not None and (frame := await frames.next()) is not None:
                        counts = self.engine.on_sync_response(frame, self.now(),
                                                              self.relay is not None)
                        self._pass_on_synced(peer, counts.forward)
                        received += counts.received
                        accepted += counts.accepted
                        ignored += counts.ignored
                        rejected += counts.rejected
                        if counts.fault is not None:
                            fault, unchecked = counts.fault, counts.unchecked
                            break  # the rest of the frame and of the stream go unread
                    if fault is None:
                        await stream.close()
            except Exception as exc:  # noqa: BLE001 - any failure of a peer is its failure
                self.counters.syncs_failed += 1
                if stream is not None:
                    await reset_quietly(stream)
                if isinstance(exc, WireError) and exc.action == REJECT:
                    self.counters.syncs_stopped += 1  # a broken frame: the peer's fault (§8.3)
                    self.fault(peer, SYNC_FRAME, exc.reason)
                raise NodeError(f"sync with {short_id(peer)} failed: {failure_reason(exc)}") from None
            self.counters.sync_announcements_received += received
            if fault is not None:
                assert stream is not None
                await reset_quietly(stream)
                self.counters.syncs_stopped += 1
                log.info("sync with %s stopped at a rejected item (%s) after %d accepted",
                         short_id(peer), fault, accepted)
                if is_peer_fault(fault, authored=False):
                    self.fault(peer, SYNC_ITEM, fault)
            elif accepted:
                log.info("sync with %s: %d announcements, %d new", short_id(peer), received, accepted)
            return SyncCounts(received, accepted, ignored, rejected, fault=fault,
                              unchecked=unchecked)

    async def _serve_sync(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        if await self._refuse_stream(stream):
            return
        # An answer can carry the whole view: one at a time per peer and a few at once overall,
        # so a connected peer cannot make us serve (and buffer) the view many times over.
        if peer in self._serving_sync or self._serve_limiter.available_tokens == 0:
            self.counters.syncs_refused_busy += 1
            await reset_quietly(stream)
            return
        # And a few answers per peer in a while (v2 §8.3: 3 at once, then one per 10 s).
        if not self.guard.take_sync(peer, self.now()):
            self.counters.syncs_over_budget += 1
            await reset_quietly(stream)
            self.fault(peer, SYNC_OVER_BUDGET)
            return
        self._serving_sync.add(peer)
        try:
            # The listener's side of the sync wait: a session opened while gossip is bringing us
            # news competes with it for the CPU and mostly ships what gossip is delivering, so it
            # waits for our own lull, briefly (sync_serve_wait_s, well inside the dialer's stream
            # timeout), and without holding one of the few answer slots meanwhile.
            wait = self.settings.serve_wait_s
            if wait > 0 and stream.get_protocol() == self._recon_protocol:
                await self._gossip_lull(deadline=self.now() + wait, count="syncs_served_deferred")
            async with self._serve_limiter:
                await self._answer_sync(stream, peer)
        finally:
            self._serving_sync.discard(peer)

    @property
    def _reconciles(self) -> bool:
        """Whether this node serves and offers sync/2.1.0 (quiet keep-alives need it)."""
        return self.settings.reconcile or self.settings.quiet_keep_alives

    async def _reconcile(self, stream: INetStream, session: ReconSession) -> SyncCounts:
        """Run one sync/2.1.0 session on an open stream (both roles): write what the session
        says, close our writing side when it is done, read until the peer closes. Returns what
        we received; a rejected item ends it with `fault` set (the caller resets and charges)."""
        self.counters.reconciliations += 1
        for frame in session.start(self.now()):
            await stream.write(length_prefixed(frame))
        frames = FrameStream(stream, MAX_RECONCILE_FRAME)
        closed = False
        while (data := await frames.next()) is not None:
            for frame in session.receive(data, self.now()):
                await stream.write(length_prefixed(frame))
            if session.fault is not None:
                return session.counts
            if session.done and not closed:
                await stream.close()
                closed = True
        session.on_peer_closed()
        if not closed:
            await stream.close()
        return session.counts

    async def _answer_sync(self, stream: INetStream, peer: ID) -> None:
        if stream.get_protocol() == self._recon_protocol:
            try:
                with trio.fail_after(self.settings.stream_timeout_s):
                    counts = await self._reconcile(stream, ReconSession(
                        self.engine, dialer=False, pass_on=self.relay is not None))
                self._pass_on_synced(peer, counts.forward)
                self.counters.syncs_served += 1
                self.counters.sync_announcements_received += counts.received
                if counts.fault is not None:
                    await reset_quietly(stream)
                    if is_peer_fault(counts.fault, authored=False):
                        self.fault(peer, SYNC_ITEM, counts.fault)
            except Exception as exc:  # noqa: BLE001 - a peer's stream must never crash the node
                log.info("reconciliation with %s refused: %s", short_id(peer), failure_reason(exc))
                await reset_quietly(stream)
                if isinstance(exc, WireError) and exc.action == REJECT:
                    self.fault(peer, SYNC_FRAME, exc.reason)
            return
        try:
            with trio.fail_after(self.settings.stream_timeout_s):
                request = await FrameStream(stream, MAX_FRAME_SIZE[KIND_SYNC_REQUEST]).next()
                if request is None:
                    raise NodeError("stream closed before a sync request")
                for frame in self.engine.on_sync_request(request, self.now()):
                    await stream.write(length_prefixed(frame))
                await stream.close()
            self.counters.syncs_served += 1
        except Exception as exc:  # noqa: BLE001 - a peer's stream must never crash the node
            log.info("sync request from %s refused: %s", short_id(peer), failure_reason(exc))
            await reset_quietly(stream)
            if isinstance(exc, WireError) and exc.action == REJECT:  # not a sync request frame
                self.fault(peer, SYNC_FRAME, exc.reason)

    def _sync_period(self) -> float:
        """`sync_interval_s`; with quiet keep-alives (revision 2.1, §1.3) the reconciliation
        period derived from the capacity timeout and the signers our view holds, if shorter."""
        if not self.settings.quiet_keep_alives:
            return self.settings.sync_interval_s
        _, reconcile = periods(self.settings.market.capacity_timeout_s, len(self.engine.view))
        return min(self.settings.sync_interval_s, reconcile)

    async def _gossip_lull(self, deadline: float, count: str) -> None:
        """Wait until gossip has brought nothing new for `sync_gossip_quiet_s`, or `deadline`
        (node/policy.py `session_start`); a wait adds one to the counter named `count` as it
        begins. Bounded: every wait ends by the deadline."""
        quiet = self.settings.sync_gossip_quiet_s
        waited = False
        for _ in range(1000):  # each wait ends at a lull or at the deadline; a cap all the same
            now = self.now()
            start = session_start(now, self._last_gossip, deadline, quiet)
            if start <= now:
                return
            if not waited:
                setattr(self.counters, count, getattr(self.counters, count) + 1)
                waited = True
            await trio.sleep(start - now)

    async def _sync_new_peers(self) -> None:
        """Pull from every newly connected peer (both sides of a connection do)."""
        async with trio.open_nursery() as nursery:
            async for peer in self._new_peers_recv:
                nursery.start_soon(self._sync_quietly, peer)

    async def _sync_quietly(self, peer: ID) -> None:
        try:
            await self.sync_with(peer)
        except NodeError as exc:
            log.debug("%s", exc)

    async def _sync_loop(self) -> None:
        due = self.now()
        while True:
            period = self._sync_period()
            # The cadence is kept from one due time to the next (a late session does not push
            # the next one back); a node that fell behind (a stopped process) starts afresh.
            due = max(due + period, self.now())
            await trio.sleep(max(0.0, due - self.now()))
            await self._gossip_lull(deadline=due + period, count="syncs_deferred")
            now = self.now()
            # Among the peers our pace lets us ask now (a small network with a short interval
            # would otherwise ask the same peer beyond its budget).
            peers = [p for p in self.host.get_connected_peers()
                     if self._sync_pace.tokens(p, now) >= 1.0]
            if peers:
                await self._sync_quietly(random.choice(peers))


__all__ = ["Node", "NodeError", "PeerSummary", "NodeCounters", "sync_protocol", "recon_protocol"]
