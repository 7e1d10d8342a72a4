"""The network node: a thin trio + py-libp2p driver around the sans-IO `PeerEngine`.

    async with Node(settings) as node:      # host, pubsub, announcer, sync, peers, HTTP API
        ...                                 # leaving it stops all of them

One `Node` owns everything it starts, in one nursery: the libp2p host (TCP, noise, Yamux or
Mplex), gossipsub on the topic `/neuroshard/<network>/market/1`, the announcer, the anti-entropy
protocol, peer exchange, bootstrap dialers and the HTTP API. Leaving the `async with` normally is
a clean stop: the node publishes a withdrawal (peers stop counting it at once) and gives it
`shutdown_grace_s` to leave. Leaving by cancellation or an error is a hard stop: no withdrawal,
peers stop counting the node when its last announcement expires (issued_at + capacity_timeout).

Protocols (besides gossipsub and libp2p's own identify/ping):

- `/neuroshard/<network>/sync/1.0.0` — anti-entropy. The dialer sends one SyncRequest frame (its view's
  digest and per-bucket digests); the listener answers with SyncResponse frames carrying every
  announcement of the buckets that differ, then closes. Frames are uvarint length-prefixed
  (wire/framing.py). Both sides of every new connection pull, and every `sync_interval_s` a node
  pulls from one random peer, so a late joiner holds the same view within a round trip.
- `/neuroshard/<network>/peers/1.0.0` — peer exchange. The dialer sends nothing; the listener answers one
  frame, msgpack `[1, [[peer_id, [multiaddr, ...]], ...]]` with up to 32 of its connected peers
  and their listen addresses, then closes. A node below `target_peers` connections asks a random
  peer every `peer_exchange_interval_s` (and right after reaching a bootstrap peer) and dials
  peers it does not know yet. Addresses are hints: dialing checks the peer id (noise handshake).
- `/neuroshard/<network>/job/1.0.0` — a job from a gateway to the provider it matched, and the
  provider's signed receipt (`node/job_service.py`, protocol §9).

Gossip validation runs in a synchronous topic validator that calls the engine and never raises
(an exception in a synchronous validator would stop py-libp2p's pubsub service). The node keeps
reading its own subscription (py-libp2p drops messages silently when a subscription's 32-slot
channel is full, and a publisher receives its own messages).
"""

from __future__ import annotations

import logging
import math
import random
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Callable, Sequence

import coincurve
import msgpack
import multiaddr
import trio

from libp2p import new_host
from libp2p.abc import INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.custom_types import TMuxerOptions, TProtocol
from libp2p.network.config import ConnectionConfig
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo, info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.stream_muxer.mplex.mplex import MPLEX_PROTOCOL_ID, Mplex
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.utils.address_validation import expand_wildcard_address

from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.node.datadir import load_api_token, load_private_key, remove_api_url, write_api_url
from neuroshard_p2p.node.engine import LocalRequest, MarketSnapshot, PeerEngine, SyncCounts
from neuroshard_p2p.node.job_service import JobService
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.node.streams import FrameStream, failure_reason, reset_quietly
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.wire.codec import MAX_FRAME_SIZE
from neuroshard_p2p.wire.framing import length_prefixed
from neuroshard_p2p.wire.messages import KIND_SYNC_REQUEST, KIND_SYNC_RESPONSE

log = logging.getLogger("neuroshard.node")

#: How long a node that has bootstrap peers holds its first announcement for a gossip mesh peer.
FIRST_ANNOUNCE_HOLD_S = 10.0


def sync_protocol(network: str) -> TProtocol:
    """The anti-entropy protocol of a network (nodes of other networks do not speak it)."""
    return TProtocol(f"/neuroshard/{network}/sync/1.0.0")


def peers_protocol(network: str) -> TProtocol:
    """The peer-exchange protocol of a network."""
    return TProtocol(f"/neuroshard/{network}/peers/1.0.0")


PEERS_VERSION = 1
#: At most this many peers, addresses per peer and bytes per address in a peer-exchange answer.
PEERS_MAX_ENTRIES = 32
PEERS_MAX_ADDRS = 8
PEERS_MAX_ADDR_LEN = 256
PEERS_MAX_FRAME = 32 * 1024
#: Concurrent outgoing syncs (a burst of new connections must not start a burst of streams).
MAX_CONCURRENT_SYNCS = 4
#: Sync requests answered at once (over all peers; each peer gets one at a time).
MAX_CONCURRENT_SYNC_ANSWERS = 8
#: Longest wait for py-libp2p to close the host, its connections and pubsub when a node stops.
TEARDOWN_BOUND_S = 5.0

_MESHSUB = {v: TProtocol(f"/meshsub/{v}") for v in ("1.0.0", "1.1.0", "1.2.0")}


class NodeError(Exception):
    """The node cannot start or do what was asked; str(error) says why."""


@dataclass(frozen=True)
class PeerSummary:
    """A connected peer: its id and the addresses we know for it."""

    peer_id: str
    addrs: tuple[str, ...]


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


class Node:
    """A running market node (see the module docstring). Construct, then `async with`."""

    def __init__(self, settings: NodeSettings, *, private_key: coincurve.PrivateKey | None = None,
                 api_token: str | None = None, clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.private_key = private_key if private_key is not None else load_private_key(settings.data_dir)
        self._api_token = api_token
        self.clock = clock
        self.engine = PeerEngine(settings.market, self.private_key,
                                 tokens_per_second=settings.capacity,
                                 min_price_nano=to_nano(settings.min_price),
                                 announce_interval_s=settings.announce_interval_s)
        self.counters = NodeCounters()
        #: Jobs: routes this node's requests to providers and serves jobs sent to it.
        self.jobs = JobService.for_node(self)
        self.topic = settings.topic
        self._sync_protocol = sync_protocol(settings.network)
        self._peers_protocol = peers_protocol(settings.network)
        self._bootstrap_infos = [_parse_peer_addr(a, "bootstrap") for a in settings.bootstrap]
        self._listen = [_parse_listen_addr(a) for a in settings.listen]
        self._key_pair = create_new_key_pair(self.private_key.secret)
        self._stack: AsyncExitStack | None = None
        self._tasks: Any = None
        self._subscription: Any = None
        self._logged: dict[tuple[bytes, str], float] = {}
        self._nursery: trio.Nursery | None = None
        self._poke = trio.Event()
        self._mesh_ready = trio.Event()
        self._sync_limiter = trio.CapacityLimiter(MAX_CONCURRENT_SYNCS)
        self._serve_limiter = trio.CapacityLimiter(MAX_CONCURRENT_SYNC_ANSWERS)
        self._serving_sync: set[ID] = set()
        self._new_peers_send, self._new_peers_recv = trio.open_memory_channel[ID](256)
        self._synced_once = trio.Event()
        self._closing = False
        self.api_url: str | None = None
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
        return [str(a) for a in self.host.get_addrs()]

    @property
    def api_token(self) -> str:
        """The bearer token POSTs to the HTTP API must carry (read from the data dir each time,
        so `neuroshard-node token --rotate` takes effect without a restart)."""
        if self._api_token is not None:
            return self._api_token
        return load_api_token(self.settings.data_dir)

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
            await _unwind(libp2p.__aexit__(type(exc), exc, exc.__traceback__), exc)
            raise
        self._stack, self._tasks = libp2p, tasks
        try:
            await self._start_tasks(self._nursery)
        except BaseException as exc:
            await _unwind(self.__aexit__(type(exc), exc, exc.__traceback__), exc)
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        libp2p, self._stack = self._stack, None
        tasks, self._tasks = self._tasks, None
        assert libp2p is not None and tasks is not None and self._nursery is not None
        self._closing = True
        try:
            try:
                if exc_type is None:
                    await self._withdraw_and_flush()
            finally:
                self._nursery.cancel_scope.cancel()
                # Our own tasks first: an error in one of them surfaces here.
                suppressed = await tasks.__aexit__(exc_type, exc, tb)
        finally:
            if self.api_url is not None:
                remove_api_url(self.settings.data_dir, self.api_url)
            await self._close_sockets()
            try:
                await libp2p.__aexit__(None, None, None)
            except Exception as teardown:  # noqa: BLE001 - see below
                # py-libp2p 0.8.1 can raise from its own service teardown when a connection
                # races the shutdown (LifecycleError and friends). The node has stopped either
                # way; say so instead of turning a clean stop into a crash.
                log.warning("libp2p teardown: %s", failure_reason(teardown))
        return bool(suppressed)

    async def _close_sockets(self) -> None:
        """Close the listener and every connection before py-libp2p's services stop.

        py-libp2p 0.8.1 closes them in its swarm service's stop path, which runs cancelled, so its
        first await ends it: after leaving `async with Node` the port kept listening (a clean
        stop too), and after a hard stop (cancellation) peers stayed connected to a node that no
        longer read. Shielded, so a hard stop closes them as well, and bounded, so a stuck close
        never holds the caller."""
        network = self.host.get_network()
        with trio.CancelScope(shield=True), trio.move_on_after(TEARDOWN_BOUND_S):
            # A connection whose own tasks were cancelled first is marked closed without its
            # muxer having closed the socket; close the muxers themselves (idempotent).
            for conns in list(network.connections.values()):
                for conn in list(conns):
                    try:
                        await conn.muxed_conn.close()
                    except Exception:  # noqa: BLE001 - already gone
                        pass
            try:
                await network.close()
            except Exception as error:  # noqa: BLE001 - the node is stopping either way
                log.warning("closing libp2p connections: %s", failure_reason(error))

    async def _start_libp2p(self, stack: AsyncExitStack) -> None:
        s = self.settings
        # Both muxers are offered; the configured one first (docs/readme-node.md: Yamux is what
        # other libp2p stacks speak, Mplex costs less CPU in py-libp2p).
        muxers: TMuxerOptions = {TProtocol(YAMUX_PROTOCOL_ID): Yamux,
                                 TProtocol(MPLEX_PROTOCOL_ID): Mplex}
        if s.muxer == "mplex":
            muxers = {TProtocol(MPLEX_PROTOCOL_ID): Mplex, TProtocol(YAMUX_PROTOCOL_ID): Yamux}
        # Above max_peers connections libp2p prunes idle ones down to target_peers. Its
        # auto-connector (dial everything in the peerstore up to the watermarks' midpoint) is
        # stopped once the host runs: peers are our job (bootstrap + peer exchange).
        connections = ConnectionConfig(min_connections=0, low_watermark=s.target_peers,
                                       high_watermark=s.max_peers, max_connections=2 * s.max_peers,
                                       dial_timeout=s.dial_timeout_s)
        self.host = new_host(key_pair=self._key_pair, muxer_opt=muxers,
                             listen_addrs=self._listen, connection_config=connections,
                             addrs_factory=_expand_wildcards)
        self.gossipsub = GossipSub(
            protocols=[_MESHSUB[v] for v in s.meshsub],
            degree=s.mesh_degree, degree_low=s.mesh_degree_low, degree_high=s.mesh_degree_high,
            heartbeat_interval=s.heartbeat_interval_s,  # type: ignore[arg-type]  # float works
            heartbeat_initial_delay=min(0.1, s.heartbeat_interval_s),
            adaptive_gossip_enabled=False, spam_protection_enabled=False,
            # Eclipse protection grafts extra peers when they share an IP, which on one machine
            # or behind one NAT fights the D_hi prune every heartbeat; its score weights are 0.
            eclipse_protection_enabled=False,
        )
        self.pubsub = Pubsub(self.host, self.gossipsub, strict_signing=True)
        # py-libp2p binds its listeners with SO_REUSEPORT: a port another node listens on would
        # not fail but be shared, the kernel handing each incoming connection to either node.
        for addr in self._listen:
            if addr.value_for_protocol("tcp") != "0" and (problem := _bind_problem(addr)):
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
            reasons = "; ".join(_bind_problem(a) or "unknown reason (see the log)"
                                for a in self._listen)
            raise NodeError(f"cannot listen on {', '.join(s.listen)}: {reasons}")
        await self.host.get_network().auto_connector.stop()
        await stack.enter_async_context(background_trio_service(self.pubsub))
        await stack.enter_async_context(background_trio_service(self.gossipsub))
        await self.pubsub.wait_until_ready()
        self.host.set_stream_handler(self._sync_protocol, self._serve_sync)
        self.host.set_stream_handler(self._peers_protocol, self._serve_peers)
        self.host.get_network().register_notifee(_ConnectionWatcher(self._new_peers_send))
        self.pubsub.set_topic_validator(self.topic, self._validate_gossip, False)
        self._subscription = await self.pubsub.subscribe(self.topic)

    async def _start_tasks(self, nursery: trio.Nursery) -> None:
        s = self.settings
        nursery.start_soon(self._drain, self._subscription)
        nursery.start_soon(self._announce_loop)
        nursery.start_soon(self._mesh_watch)
        nursery.start_soon(self._sync_new_peers)
        nursery.start_soon(self._sync_loop)
        nursery.start_soon(self._peer_exchange_loop)
        await nursery.start(self.jobs.run, self.host)
        for info, text in zip(self._bootstrap_infos, s.bootstrap):
            nursery.start_soon(self._bootstrap_loop, info, text)
        if s.api_enabled:
            await self._start_api(nursery)
        log.info("node %s listening on %s (topic %s)", self.peer_id, ", ".join(self.addrs),
                 self.topic)

    async def _start_api(self, nursery: trio.Nursery) -> None:
        from hypercorn.config import Config
        from hypercorn.trio import serve

        from neuroshard_p2p.api.app import create_app

        host, port = self.settings.api_host_port
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("neuroshard.api")
        config.graceful_timeout = 1.0
        app = create_app(self)

        async def run_api(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await serve(app, config, task_status=task_status)  # type: ignore[arg-type]

        try:
            binds = await nursery.start(run_api)
        except Exception as exc:  # noqa: BLE001 - an OSError, wrapped in exception groups
            raise NodeError(f"cannot serve the HTTP API on {host}:{port}: {failure_reason(exc)}") from None
        self.api_url = binds[0] if binds else f"http://{host}:{port}"
        write_api_url(self.settings.data_dir, self.api_url)

    async def _withdraw_and_flush(self) -> None:
        """Publish the withdrawal and wait (at most shutdown_grace_s) until it has left."""
        data = self.engine.withdraw(self.now())
        if data is None or self.pubsub is None:
            return
        await self._publish(data)
        # Until every peer's sender has written it: closing the connections while a write is
        # under way loses the withdrawal (a loaded machine took longer than a fixed pause), and
        # peers would count this node until its timeout.
        with trio.move_on_after(self.settings.shutdown_grace_s):
            while not senders_idle(self.pubsub):
                await trio.sleep(0.005)

    # -- market operations (the API and the CLI call these) ---------------------------------

    def set_offer(self, tokens_per_second: int, min_price_nano: int) -> None:
        """Offer capacity (announced within a tick); raises core.errors.MarketError."""
        self.engine.set_offer(tokens_per_second, min_price_nano)
        self._poke.set()

    def withdraw_offer(self) -> None:
        self.engine.withdraw_offer()
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
        info = _parse_peer_addr(addr, "peer")
        await self._dial(info)
        return str(info.peer_id)

    # -- gossip -------------------------------------------------------------------------------

    def _validate_gossip(self, forwarder: ID, message: Any) -> bool:
        """py-libp2p's synchronous topic validator. Must never raise (see module docstring)."""
        try:
            if forwarder == self.host.get_id():
                return True  # our own publish: the engine made and merged it
            now = self.now()
            verdict = self.engine.on_gossip(message.data, now, from_peer=message.from_id)
            if verdict.outcome == "rejected" and self._worth_logging(message.from_id, verdict.reason, now):
                log.info("rejected gossip from %s via %s: %s (%s)", _short(message.from_id),
                         _short(forwarder), verdict.reason, verdict.detail)
            return verdict.accepted
        except Exception:  # noqa: BLE001 - never let an exception reach py-libp2p here
            self.counters.validator_errors += 1
            log.exception("gossip validator failed; message dropped")
            return False

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
        try:
            await self.pubsub.publish(self.topic, data)
            self.counters.published += 1
        except Exception as exc:  # noqa: BLE001 - e.g. py-libp2p #887 before identify completes
            # The announcement is in our view; sync hands it to peers that missed it, and the
            # next keep-alive gossips it again.
            self.counters.publish_errors += 1
            log.warning("publish failed (%s); peers will get it by sync", failure_reason(exc))

    async def _announce_loop(self) -> None:
        if self.settings.bootstrap:
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
        """Pull from `peer` what our view lacks. Raises NodeError with the reason on failure."""
        async with self._sync_limiter:
            self.counters.syncs_started += 1
            received = accepted = ignored = rejected = 0
            stream: INetStream | None = None
            try:
                with trio.fail_after(self.settings.stream_timeout_s):
                    stream = await self.host.new_stream(peer, [self._sync_protocol])
                    await stream.write(length_prefixed(self.engine.sync_request(self.now())))
                    frames = FrameStream(stream, MAX_FRAME_SIZE[KIND_SYNC_RESPONSE])
                    while (frame := await frames.next()) is not None:
                        counts = self.engine.on_sync_response(frame, self.now())
                        received += counts.received
                        accepted += counts.accepted
                        ignored += counts.ignored
                        rejected += counts.rejected
                    await stream.close()
            except Exception as exc:  # noqa: BLE001 - any failure of a peer is its failure
                self.counters.syncs_failed += 1
                if stream is not None:
                    await reset_quietly(stream)
                raise NodeError(f"sync with {_short(peer)} failed: {failure_reason(exc)}") from None
            self.counters.sync_announcements_received += received
            self._synced_once.set()
            if accepted:
                log.info("sync with %s: %d announcements, %d new", _short(peer), received, accepted)
            return SyncCounts(received, accepted, ignored, rejected)

    async def _serve_sync(self, stream: INetStream) -> None:
        peer = stream.muxed_conn.peer_id
        # An answer can carry the whole view: one at a time per peer and a few at once overall,
        # so a connected peer cannot make us serve (and buffer) the view many times over.
        if peer in self._serving_sync or self._serve_limiter.available_tokens == 0:
            self.counters.syncs_refused_busy += 1
            await reset_quietly(stream)
            return
        self._serving_sync.add(peer)
        try:
            async with self._serve_limiter:
                await self._answer_sync(stream, peer)
        finally:
            self._serving_sync.discard(peer)

    async def _answer_sync(self, stream: INetStream, peer: ID) -> None:
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
            log.info("sync request from %s refused: %s", _short(peer), failure_reason(exc))
            await reset_quietly(stream)

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
        while True:
            await trio.sleep(self.settings.sync_interval_s)
            peers = self.host.get_connected_peers()
            if peers:
                await self._sync_quietly(random.choice(peers))

    # -- peers --------------------------------------------------------------------------------

    async def _dial(self, info: PeerInfo) -> None:
        self.counters.dials += 1
        try:
            with trio.fail_after(self.settings.dial_timeout_s):
                await self.host.connect(info)
        except trio.TooSlowError:
            self.counters.dial_failures += 1
            raise NodeError(f"no answer within {self.settings.dial_timeout_s:g} s") from None
        except Exception as exc:  # noqa: BLE001 - libp2p raises many types for one failure
            self.counters.dial_failures += 1
            reason = failure_reason(exc)
            if reason == "connection refused":
                reason += " (is a node listening there?)"
            raise NodeError(reason) from None

    async def _bootstrap_loop(self, info: PeerInfo, text: str) -> None:
        """Stay connected to a bootstrap peer while we have fewer than target_peers: dial with
        exponential back-off, saying why each attempt failed."""
        s = self.settings
        delay = s.bootstrap_retry_initial_s
        while True:
            connected = info.peer_id in self.host.get_network().connections
            if not connected and self.peer_count < s.target_peers:
                # libp2p refuses to redial a peer for 60 s after a failure ("negative cache");
                # our back-off decides when to retry a bootstrap peer.
                self.host.get_network().unblock_peer(info.peer_id)
                try:
                    await self._dial(info)
                except NodeError as exc:
                    log.warning("bootstrap %s unreachable: %s; retrying in %g s", text, exc, delay)
                    await trio.sleep(delay)
                    delay = min(delay * 2, s.bootstrap_retry_max_s)
                    continue
                log.info("connected to bootstrap peer %s", text)
                delay = s.bootstrap_retry_initial_s
                await self._exchange_peers_quietly(info.peer_id)
            await trio.sleep(s.peer_exchange_interval_s)

    async def _peer_exchange_loop(self) -> None:
        """Below target_peers, ask a random peer for more. In a network smaller than the target
        the answers bring nothing new, so the period doubles (up to 32×) until one does or a
        peer is lost."""
        base = self.settings.peer_exchange_interval_s
        interval = base
        while True:
            before = self.peer_count
            await trio.sleep(interval)
            peers = self.host.get_connected_peers()
            if len(peers) < before:
                interval = base
            if peers and len(peers) < self.settings.target_peers:
                dialed = await self._exchange_peers_quietly(random.choice(peers))
                interval = base if dialed else min(interval * 2, base * 32)

    async def _exchange_peers_quietly(self, peer: ID) -> int:
        try:
            return await self.exchange_peers(peer)
        except NodeError as exc:
            log.debug("%s", exc)
            return 0

    async def exchange_peers(self, peer: ID) -> int:
        """Ask `peer` for peers and dial new ones until target_peers; returns how many we dialed
        successfully. Raises NodeError when the exchange itself fails."""
        stream: INetStream | None = None
        try:
            with trio.fail_after(self.settings.stream_timeout_s):
                stream = await self.host.new_stream(peer, [self._peers_protocol])
                frame = await FrameStream(stream, PEERS_MAX_FRAME).next()
                await stream.close()
            entries = decode_peers(frame) if frame is not None else []
        except Exception as exc:  # noqa: BLE001
            if stream is not None:
                await reset_quietly(stream)
            raise NodeError(f"peer exchange with {_short(peer)} failed: {failure_reason(exc)}") from None
        self.counters.peer_exchanges += 1
        me = self.host.get_id()
        random.shuffle(entries)
        dialed = 0
        for peer_id, addrs in entries:
            if self.peer_count >= self.settings.target_peers:
                break
            if peer_id == me or peer_id in self.host.get_network().connections:
                continue
            try:
                await self._dial(PeerInfo(peer_id, addrs))
                dialed += 1
            except NodeError as exc:
                log.debug("peer %s from exchange unreachable: %s", _short(peer_id), exc)
        return dialed

    async def _serve_peers(self, stream: INetStream) -> None:
        asker = stream.muxed_conn.peer_id
        try:
            store = self.host.get_peerstore()
            entries: list[tuple[ID, list[multiaddr.Multiaddr]]] = []
            for peer in self.host.get_connected_peers():
                if peer == asker:
                    continue
                try:
                    addrs = [a for a in store.addrs(peer) if _dialable(a)]
                except Exception:  # noqa: BLE001
                    continue
                if addrs:
                    entries.append((peer, addrs))
            random.shuffle(entries)
            with trio.fail_after(self.settings.stream_timeout_s):
                await stream.write(length_prefixed(encode_peers(entries[:PEERS_MAX_ENTRIES])))
                await stream.close()
        except Exception as exc:  # noqa: BLE001
            log.debug("peer exchange with %s failed: %s", _short(asker), failure_reason(exc))
            await reset_quietly(stream)

    # -- waiting (for tests and the CLI) -------------------------------------------------------

    async def wait_synced(self) -> None:
        """Until one sync with some peer has completed."""
        await self._synced_once.wait()


# ---------------------------------------------------------------------------------------------
# Peer exchange frames


def encode_peers(entries: Sequence[tuple[ID, Sequence[multiaddr.Multiaddr]]]) -> bytes:
    """`[1, [[peer_id, [addr, ...]], ...]]` as msgpack, within the frame limits."""
    items = []
    for peer, addrs in entries[:PEERS_MAX_ENTRIES]:
        texts = [str(a) for a in addrs if len(str(a)) <= PEERS_MAX_ADDR_LEN][:PEERS_MAX_ADDRS]
        if texts:
            items.append([str(peer), texts])
    return bytes(msgpack.packb([PEERS_VERSION, items], use_bin_type=True))


def decode_peers(data: bytes) -> list[tuple[ID, list[multiaddr.Multiaddr]]]:
    """Parse a peer-exchange answer; entries that do not parse are skipped, a frame that is not
    one raises ValueError."""
    try:
        value = msgpack.unpackb(data, raw=False, max_array_len=PEERS_MAX_ENTRIES + 2,
                                max_str_len=PEERS_MAX_ADDR_LEN, max_bin_len=0, max_map_len=0,
                                max_ext_len=0)
    except Exception as exc:  # noqa: BLE001 - msgpack raises many types
        raise ValueError(f"peer list is not msgpack: {exc}") from None
    if not (isinstance(value, list) and len(value) == 2 and value[0] == PEERS_VERSION
            and isinstance(value[1], list)):
        raise ValueError("peer list must be [1, [[peer_id, [addr, ...]], ...]]")
    result = []
    for item in value[1][:PEERS_MAX_ENTRIES]:
        try:
            peer_text, addr_texts = item
            peer = ID.from_base58(peer_text)
            addrs = [multiaddr.Multiaddr(a) for a in addr_texts[:PEERS_MAX_ADDRS]]
            addrs = [a for a in addrs if _dialable(a)]
        except Exception:  # noqa: BLE001 - skip what does not parse
            continue
        if addrs:
            result.append((peer, addrs))
    return result


# ---------------------------------------------------------------------------------------------
# helpers


def senders_idle(pubsub: Any) -> bool:
    """Whether py-libp2p has written every RPC queued for its peers: each peer's outbound queue
    is empty and its sender task is back waiting for the next RPC (so its last write returned).
    An empty queue alone is not enough: the RPC popped last may still be being written. The
    waiting is read from py-libp2p 0.8.1's RpcQueue (its `_notify` event); a version without it
    falls back to empty queues."""
    for queue in list(pubsub.peer_queues.values()):
        if len(queue):
            return False
        if getattr(queue, "closed", False):
            continue  # the peer is gone: its sender has stopped
        notify = getattr(queue, "_notify", None)
        if isinstance(notify, trio.Event) and notify.statistics().tasks_waiting == 0:
            return False  # the sender is writing (or has not yet come back to wait)
    return True


class _ConnectionWatcher(INotifee):
    """Tells the node about every new connection (inbound and outbound), without blocking."""

    def __init__(self, channel: trio.MemorySendChannel[ID]) -> None:
        self._channel = channel

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        try:
            self._channel.send_nowait(conn.muxed_conn.peer_id)
        except (trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # a burst of connections: the periodic sync catches up

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        return None


def _expand_wildcards(addrs: list[multiaddr.Multiaddr]) -> list[multiaddr.Multiaddr]:
    """Advertise concrete interface addresses instead of 0.0.0.0 (which nobody can dial)."""
    result: list[multiaddr.Multiaddr] = []
    for addr in addrs:
        expanded = expand_wildcard_address(addr) if "/0.0.0.0/" in str(addr) or "/::/" in str(addr) else [addr]
        for a in expanded:
            if str(a) not in {str(r) for r in result}:
                result.append(a)
    return result


def _dialable(addr: multiaddr.Multiaddr) -> bool:
    text = str(addr)
    return (text.startswith(("/ip4/", "/ip6/")) and "/tcp/" in text
            and "/0.0.0.0/" not in text and "/ip6/::/" not in text)


def _parse_listen_addr(text: str) -> multiaddr.Multiaddr:
    try:
        addr = multiaddr.Multiaddr(text)
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"listen address {text!r} is not a multiaddr: {exc}") from None
    if "/tcp/" not in str(addr):
        raise ConfigError(f"listen address {text!r} must be TCP, e.g. /ip4/0.0.0.0/tcp/4011")
    return addr


def _parse_peer_addr(text: str, what: str) -> PeerInfo:
    try:
        info = info_from_p2p_addr(multiaddr.Multiaddr(text))
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"{what} address {text!r} is not a multiaddr ending in /p2p/<peer id>: "
                          f"{exc}") from None
    return info


def _bind_problem(addr: multiaddr.Multiaddr) -> str | None:
    """Why `addr` cannot be listened on, asked of the OS directly (py-libp2p only logs a failed
    listen), or None if it can. SO_REUSEADDR and no SO_REUSEPORT: a port another socket listens
    on is refused, one whose old connections wait in TIME_WAIT (a restart) is not."""
    import socket

    text = str(addr)
    family = socket.AF_INET6 if text.startswith("/ip6/") else socket.AF_INET
    try:
        host = addr.value_for_protocol("ip6" if family == socket.AF_INET6 else "ip4")
        port = int(addr.value_for_protocol("tcp"))
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(1)
    except OSError as exc:
        return (exc.strerror or str(exc)).lower()
    except Exception as exc:  # noqa: BLE001 - not an address we can probe
        return str(exc)
    return None


async def _unwind(exiting: Any, error: BaseException) -> None:
    """Run an exit that was handed `error`. trio's nurseries re-raise it wrapped in exception
    groups; the caller re-raises `error` itself (e.g. NodeError "cannot listen on ...")."""
    try:
        await exiting
    except BaseException as during_exit:
        if not _only(during_exit, error):
            raise


def _only(error: BaseException, original: BaseException) -> bool:
    """Whether `error` is `original`, or a (nested) exception group holding only it and
    cancellations."""
    if error is original or isinstance(error, trio.Cancelled):
        return True
    if isinstance(error, BaseExceptionGroup):
        return all(_only(e, original) for e in error.exceptions)
    return False


def _short(peer: Any) -> str:
    try:
        text = peer.to_base58() if isinstance(peer, ID) else (
            ID(peer).to_base58() if isinstance(peer, bytes) else str(peer))
    except Exception:  # noqa: BLE001
        text = repr(peer)
    return text[:8] + "…" + text[-6:] if len(text) > 16 else text


__all__ = ["Node", "NodeError", "PeerSummary", "NodeCounters", "sync_protocol", "peers_protocol",
           "encode_peers", "decode_peers", "senders_idle"]
