"""The libp2p transport: N real `Node`s (py-libp2p hosts on loopback) in one trio process.

Every peer is the product: `neuroshard_p2p.node.host.Node`, with its gossipsub, anti-entropy,
peer exchange and engine, on a TCP port of its own; synthetic market state (capacity offered,
demand queued) is set through the node's own operations. The scenario's timeline runs in real
time, and every `sample_s` the driver reads every live node's price, supply, demand and view
digest at one shared instant.

How the scenario's actions map onto real nodes:

- kill: the node's task is cancelled — a hard stop, no withdrawal (like SIGKILL);
- stop: the node leaves its `async with` normally and publishes its withdrawal;
- add: new nodes start and bootstrap from live peers (they sync on connecting);
- partition: each node gets its own loopback address (127.0.1.x) and libp2p's connection gate
  denies dialing the other group's addresses; cross-group connections are closed. heal lifts the
  denial and every node dials one peer of another group (as its peer exchange would, later);
- hostile: an extra `Node` that offers nothing (so it never announces) publishes invalid bytes on
  the market topic through its pubsub; honest nodes' validators must refuse them.
- attack: an extra `Node` (offering nothing) is the attacker. Its identities' announcements go
  out as gossipsub messages each authored and signed by that identity's own libp2p key (what a
  hostile client can do: gossipsub relays any correctly signed message), pushed through the
  attacker's pubsub; through sync, the attacker's neighbours pull them from it (its engine answers
  every sync request with them); sync_abuse pulls its first neighbour's whole view over the real
  sync protocol.

Admission and identity work (protocols/market-v2.md): in a members network (`[admission] policy
= "members"`) the driver is the authority and gives every honest node a credential; with the work
ramp on, announcing nodes use worked keys (simnet.identities). Each node runs the run's charter
and finds its credential and its identity work in its data dir, put there before it starts, as an
operator would (`member issue` writes the first; a node keeps the second itself).

t = 0 is when every initial node is connected, has a gossip mesh, holds every other node's
first announcement and the price has settled (settle delay + W ticks later); the setup before is not part
of the run.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import coincurve
import trio

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.timeline import seconds_of
from neuroshard_p2p.node.datadir import CREDENTIAL_FILE, StoredWork, save_hex_file, save_work
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.view import MarketView
from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE, encode_sync, split_sync_response
from neuroshard_p2p.wire.framing import length_prefixed
from neuroshard_p2p.wire.messages import KIND_SYNC_RESPONSE, SyncRequest
from neuroshard_p2p.wire.work import work_bits

from simnet.attacks import Attacker, attack_identities, keep_alive_s
from simnet.hostile import HostileCrafter
from simnet.identities import Identity, MembersNetwork, WorkedPool
from simnet.metrics import PeerSample, Recorder
from simnet.scenario import Event, Scenario
from simnet.sim import TOKENS_PER_REQUEST, peer_key, simnet_charter

#: How long the setup may take before the run gives up (connections and gossip meshes).
SETUP_TIMEOUT_S = 60.0


@dataclass
class RealPeer:
    """One real node of the run and the synthetic market state the driver gives it."""

    index: int
    key: coincurve.PrivateKey
    role: str
    ip: str
    capacity: int = 0
    demand: int = 0
    node: Any = None
    scope: trio.CancelScope | None = None
    stop: trio.Event = field(default_factory=trio.Event)
    ended: trio.Event = field(default_factory=trio.Event)
    alive: bool = False
    group: int = 0
    crafter: HostileCrafter | None = None
    error: BaseException | None = None
    work_nonce: int = 0


def read_market(node: Any, now: float) -> tuple[int, int, int, int]:
    """(price_nano, supply tokens/s, demand tokens, available nodes) of a node at `now`."""
    stats = node.engine.stats(now)
    price = getattr(stats, "price_nano", 0)
    price = int(getattr(price, "price_nano", price))
    supply = getattr(stats, "supply_tokens_per_sec", 0)
    return (price, int(supply), int(getattr(stats, "demand_tokens_waiting", 0)),
            int(getattr(stats, "available_nodes", 0)))


def gossip_totals(node: Any) -> tuple[int, int, int]:
    """(accepted, rejected, ignored) gossip messages a node's engine has seen."""
    accepted = rejected = ignored = 0
    for (outcome, _reason), count in node.engine.gossip_counts.items():
        if outcome == "accepted":
            accepted += count
        elif outcome == "rejected":
            rejected += count
        else:
            ignored += count
    return accepted, rejected, ignored


class RealNetwork:
    """One run of a scenario on real libp2p nodes. `await run()` inside trio."""

    def __init__(self, scenario: Scenario, peers: int, *, seed: int = 1, sample_s: float = 0.5,
                 progress: Callable[[str], None] | None = None, progress_every_s: float = 5.0,
                 data_dir: str | Path | None = None, network: str | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        if peers < 2:
            raise ValueError("a network needs at least 2 peers")
        self.scenario = scenario
        #: Every node's clock, and this driver's (`measure-real --dilation` slows it down).
        self.clock = clock
        self.market: MarketConfig = scenario.market_config()
        # A network of its own for every run (other runs on the machine never mix with it): the
        # simnet charter around the scenario's market, under a name of its own.
        name = network or f"simnet-{seed}-{random.randrange(1 << 30):x}"
        #: A members network: this driver is its authority (credentials for honest nodes), and
        #: the nodes run its charter (policy "members", the driver's key as the authority).
        self.members = (MembersNetwork(self.market, seed, epoch=clock(),
                                       lifetime_s=scenario.duration_s + 3600.0, name=name)
                        if scenario.admission == "members" else None)
        self.charter = (self.members.charter if self.members is not None
                        else simnet_charter(self.market, name))
        self.base_settings = NodeSettings.from_mapping(dict(scenario.node), data_dir=Path("."),
                                                       charter=self.charter)
        self.n_initial = peers
        self.seed = seed
        self.rng = random.Random(seed)
        self.sample_s = sample_s
        self.progress = progress
        self.progress_every_s = progress_every_s
        self.recorder = Recorder(scenario.name, "libp2p", self.market, sample_s)
        self.recorder.notes.append(
            "messages received are the first copies each node validated; duplicates dropped by "
            "py-libp2p's seen-cache are not counted; CPU is the whole process (all nodes)")
        self.peers: list[RealPeer] = []
        self._own_ips = any(e.action == "partition" for e in scenario.events)
        self._tmp = tempfile.TemporaryDirectory(prefix="simnet-") if data_dir is None else None
        self.data_dir = Path(self._tmp.name if self._tmp else data_dir)  # type: ignore[arg-type]
        self.network = self.charter.network_id
        self._nursery: trio.Nursery | None = None
        self._t0 = 0.0
        self._epoch0 = 0.0
        self._killed_last: list[RealPeer] = []
        self._last_totals = (0, 0, 0, 0)
        self._hostile_sent: dict[int, int] = {}
        self._reasons_at_t0: Counter[str] = Counter()
        self._syncs_last = 0
        self.worked = WorkedPool(self.market.identity_work_bits)
        self._attacks = 0

    # ------------------------------------------------------------------ peers

    def _ip(self, index: int) -> str:
        if not self._own_ips:
            return "127.0.0.1"
        return str(ipaddress.ip_address("127.0.1.1") + index)

    def _settings(self, peer: RealPeer, bootstrap: list[str]) -> NodeSettings:
        return self.base_settings.replace(
            data_dir=self.data_dir / f"peer-{peer.index}",
            listen=(f"/ip4/{peer.ip}/tcp/0",),
            bootstrap=tuple(bootstrap),
            api="off",
            capacity=peer.capacity,
            min_price=self.scenario.peers.ask_of(peer.index) if peer.capacity else 0.0,
        )

    def _new_peer(self, role: str, capacity: int = 0, demand: int = 0) -> RealPeer:
        index = len(self.peers)
        salt = b"hostile" if role == "hostile" else b"peer"
        key, nonce = peer_key(self.seed, index, salt), 0
        if self.market.identity_work_bits > 0:
            # Every node did its identity work before the run, the attacker's carrier too: a
            # node still grinding runs its grinder thread in this one process, and a few of them
            # starve every node's trio loop of the GIL (streams then time out after 10 s).
            identity = self.worked.honest()
            key, nonce = identity.key, identity.work_nonce
        peer = RealPeer(index, key, role, self._ip(index), capacity=capacity, demand=demand,
                        work_nonce=nonce)
        self.peers.append(peer)
        self.recorder.add_peer(peer_id_of(peer.key.public_key.format(compressed=True)),
                               self._now_rel(), hostile=role == "hostile")
        return peer

    def _now_rel(self) -> float:
        return 0.0 if self._t0 == 0.0 else trio.current_time() - self._t0

    async def _start(self, peer: RealPeer, bootstrap: list[str]) -> None:
        """Start a node in its own task and wait until it listens."""
        assert self._nursery is not None
        await self._nursery.start(self._peer_task, peer, bootstrap)

    async def _peer_task(self, peer: RealPeer, bootstrap: list[str],
                         task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from neuroshard_p2p.node.host import Node

        settings = self._settings(peer, bootstrap)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        started = False
        try:
            with trio.CancelScope() as scope:
                peer.scope = scope
                self._provision(settings.data_dir, peer)
                node = Node(settings, private_key=peer.key, clock=self.clock)
                async with node:
                    peer.node = node
                    peer.alive = True
                    if peer.demand:
                        self._push_demand(peer)
                    started = True
                    task_status.started()
                    await peer.stop.wait()
        except Exception as exc:  # noqa: BLE001 - one node failing must not end the run
            peer.error = exc
            if not started:
                raise
        finally:
            peer.alive = False
            peer.ended.set()
            if not started:
                task_status.started()

    def _provision(self, data_dir: Path, peer: RealPeer) -> None:
        """What an operator gives a node before it starts, in its data dir, for the node to read
        as in production: its credential (every node of a members network, the attacker's
        carrier too: the worst case is a member relaying what non-members sign) and the identity
        work it did (`work.json`), so its own grinder starts from there instead of below it."""
        signer = peer.key.public_key.format(compressed=True)
        if self.members is not None:
            save_hex_file(data_dir / CREDENTIAL_FILE, self.members.credential(signer))
        if peer.work_nonce:
            save_work(data_dir, signer, StoredWork(peer.work_nonce,
                                                   work_bits(signer, peer.work_nonce),
                                                   peer.work_nonce + 1))

    def _push_demand(self, peer: RealPeer) -> None:
        node = peer.node
        requests = max(1, math.ceil(peer.demand / TOKENS_PER_REQUEST)) if peer.demand else 0
        node.set_demand(peer.demand, requests)

    def _addrs_of(self, peers: list[RealPeer], k: int) -> list[str]:
        chosen = peers[:k]
        return [a for p in chosen for a in p.node.addrs[:1]] if chosen else []

    def _live(self) -> list[RealPeer]:
        return [p for p in self.peers if p.alive and p.role != "hostile"]

    # ------------------------------------------------------------------ setup

    async def _setup(self) -> None:
        n = self.n_initial
        setup = self.scenario.peers
        providers, demand = setup.assign(n, self.rng)
        total_supply = len(providers) * setup.capacity
        total_demand = setup.utilization * self.market.target_response_s * total_supply
        for i in range(n):
            role = "provider" if i in providers else ("demand" if i in demand else "idle")
            self._new_peer(role, setup.capacity if i in providers else 0,
                           round(total_demand / max(1, len(demand))) if i in demand else 0)
        first = self.peers[0]
        await self._start(first, [])
        boot = first.node.addrs[:1]
        for peer in self.peers[1:]:
            await self._start(peer, boot)
        # Ready: every node connected and holding a gossip mesh on the market topic, and every
        # view holding every first announcement. A first announcement published before its node
        # had mesh peers reaches nobody by gossip; a round of syncs (the node's own protocol)
        # brings it, instead of waiting for a keep-alive.
        deadline = trio.current_time() + SETUP_TIMEOUT_S
        while not all(self._meshed(p) for p in self.peers):
            if trio.current_time() > deadline:
                raise RuntimeError(
                    f"setup: {sum(not self._meshed(p) for p in self.peers)} of {len(self.peers)} "
                    f"nodes have no gossip mesh after {SETUP_TIMEOUT_S:g} s")
            await trio.sleep(0.05)
        next_sync = trio.current_time() + 1.0
        while (missing := self._missing_first_announcements()):
            if trio.current_time() > deadline:
                raise RuntimeError(f"setup: {missing} (node, announcer) pairs still missing after "
                                   f"{SETUP_TIMEOUT_S:g} s")
            if trio.current_time() >= next_sync:
                await self._sync_round()
                next_sync = trio.current_time() + 1.0
            await trio.sleep(0.05)
        # Warm-up: the price is a fold over the last W ticks, each evaluated settle_delay ago;
        # once that window lies after the first announcements, the starting market is settled.
        m = self.market
        warmup = m.settle_delay_s + (m.window_ticks + 1) * m.tick_s
        if self.progress is not None:
            self.progress(f"[libp2p] {len(self.peers)} nodes meshed; letting the price settle "
                          f"for {warmup:g} s (settle delay + W ticks) …")
        await trio.sleep(warmup)

    async def _sync_round(self) -> None:
        """Every live node pulls from one connected peer, concurrently (setup only)."""
        async def pull(p: RealPeer) -> None:
            peers = p.node.host.get_connected_peers()
            if peers:
                with trio.move_on_after(5.0):
                    try:
                        await p.node.sync_with(self.rng.choice(sorted(peers, key=str)))
                    except Exception:  # noqa: BLE001 - the next round retries
                        pass

        async with trio.open_nursery() as nursery:
            for p in self._live():
                nursery.start_soon(pull, p)

    @staticmethod
    def _meshed(peer: RealPeer) -> bool:
        node = peer.node
        if node is None or node.peer_count == 0:
            return False
        mesh = getattr(node.gossipsub, "mesh", {}) or {}
        return bool(mesh.get(node.topic))

    def _missing_first_announcements(self) -> int:
        """How many (node, announcing node) pairs there are where the node's view holds nothing
        from the announcer yet (keep-alives in flight do not count: views need not be equal)."""
        live = self._live()
        announcers = [p.node.engine.signer for p in live if p.capacity or p.demand]
        return sum(1 for p in live for signer in announcers
                   if p.node.engine.view.current(signer) is None)

    # ------------------------------------------------------------------ events

    def _choose(self, event: Event, pool: list[RealPeer]) -> list[RealPeer]:
        return event.choose(pool, self.rng, spare_first=True)

    async def _apply(self, event: Event, t: float) -> None:
        rec = self.recorder
        action = event.action
        if action == "capacity":
            chosen = self._choose(event, self._live())
            for p in chosen:
                p.capacity = event.new_capacity(p.capacity, self.market.max_node_tokens_per_s)
                price = to_nano(self.scenario.peers.ask_of(p.index)) if p.capacity else 0
                p.node.set_offer(p.capacity, price)
            rec.record_event(t, event, peers=[p.index for p in chosen])
        elif action == "demand":
            live = [p for p in self._live() if p.demand > 0] or \
                   [p for p in self._live() if p.role == "demand"]
            supply = sum(p.capacity for p in self._live())
            demands = event.new_demands([p.demand for p in live], supply,
                                        self.market.target_response_s)
            for p, demand in zip(live, demands):
                p.demand = demand
                self._push_demand(p)
            rec.record_event(t, event, peers=[p.index for p in live])
        elif action in ("kill", "stop"):
            chosen = self._choose(event, self._live())
            last = []
            for p in chosen:
                own = p.node.engine.view.current(p.node.engine.signer)
                if own is not None and (own.tokens_per_second > 0 or own.pending_tokens > 0):
                    last.append(seconds_of(own.issued_at_ms) - self._epoch0)
            info = {"peers": [p.index for p in chosen],
                    "capacity_removed": sum(p.capacity for p in chosen),
                    "demand_removed": sum(p.demand for p in chosen),
                    "last_announced": last}
            for p in chosen:
                # Gone from this instant: no longer sampled nor counted in the truth, though its
                # teardown (closing connections) takes a moment longer.
                p.alive = False
                rec.stop_peer(p.index, t)
                if action == "kill":
                    assert p.scope is not None
                    p.scope.cancel()
                else:
                    p.stop.set()
            for p in chosen:
                await p.ended.wait()
            self._killed_last = chosen
            rec.record_event(t, event, **info)
        elif action == "add":
            joined = await self._add(event)
            rec.record_event(t, event, peers=[p.index for p in joined])
        elif action == "partition":
            live = self._live()
            order = list(live)
            self.rng.shuffle(order)
            groups = max(2, event.groups)
            for rank, p in enumerate(order):
                p.group = 1 + rank * groups // len(order)
            await self._apply_partition()
            rec.record_event(t, event, groups=groups)
        elif action == "heal":
            await self._heal()
            rec.record_event(t, event)
        elif action == "hostile":
            hostiles = []
            for _ in range(event.count or 1):
                h = self._new_peer("hostile")
                h.crafter = HostileCrafter(h.key, self.market, event.kinds)
                live = self._live()
                await self._start(h, self._addrs_of(self.rng.sample(live, min(3, len(live))), 3))
                hostiles.append(h)
                assert self._nursery is not None
                self._nursery.start_soon(self._flood_hostile, h,
                                         event.duration_s or self.scenario.duration_s, event.rate)
            rec.record_event(t, event, peers=[h.index for h in hostiles], sent=0)
        elif action == "attack":
            await self._start_attack(event, t)

    # ------------------------------------------------------------------ attacks

    async def _start_attack(self, event: Event, t: float) -> None:
        number = self._attacks
        self._attacks += 1
        h = self._new_peer("hostile")
        live = self._live()
        entries = self.rng.sample(live, min(3, len(live)))
        await self._start(h, self._addrs_of(entries, 3))
        identities = attack_identities(event, self.market, self.seed, number, self.worked)
        interval = keep_alive_s(self.base_settings.announce_interval_s, self.market)
        attacker = Attacker(event, identities, t, interval, self.scenario.duration_s)
        info: dict[str, Any] = {"attack": event.attack, "identities": len(identities),
                                "entries": [p.index for p in entries],
                                "policy": self.scenario.admission,
                                "work_bits": self.market.identity_work_bits, "sent": 0,
                                "_attacker": attacker}
        self.recorder.record_event(t, event, **info)
        assert self._nursery is not None
        if event.attack == "sync_abuse":
            self._nursery.start_soon(self._sync_abuse, h, entries[0], attacker, info)
        elif event.route == "sync":
            self._nursery.start_soon(self._attack_by_sync, h, entries, attacker)
        else:
            self._nursery.start_soon(self._attack_by_gossip, h, attacker)

    async def _attack_by_gossip(self, h: RealPeer, attacker: Attacker) -> None:
        """Publish each due announcement as a gossipsub message of its own identity. The
        attacker paces itself by its outbound queues (py-libp2p drops what does not fit in a
        peer's queue of 32 RPCs): what it sends is what it means to send."""
        seqno = 0
        pubsub = h.node.pubsub
        # A message published before the carrier has a gossip mesh reaches nobody (py-libp2p
        # has no fanout peers yet either), and the attacker would then wait a whole re-announce
        # period: like an honest node, it starts once it has mesh peers on the topic.
        with trio.move_on_after(SETUP_TIMEOUT_S):
            while h.alive and not self._meshed(h):
                await trio.sleep(0.05)
        while h.alive and (at := attacker.next_at()) is not None:
            await trio.sleep_until(self._t0 + at)
            for who, wire in attacker.due(self._now_rel(), self.clock()):
                seqno += 1
                while any(len(q) >= q._queue.max_size // 2 for q in pubsub.peer_queues.values()):
                    await trio.sleep(0.005)
                try:
                    await h.node.pubsub.push_msg(h.node.pubsub.my_id,
                                                 authored_message(who, wire, h.node.topic, seqno))
                except Exception:  # noqa: BLE001 - e.g. no peers right now
                    pass

    async def _attack_by_sync(self, h: RealPeer, entries: list[RealPeer],
                              attacker: Attacker) -> None:
        """Serve the identities' announcements to every sync request, and have the attacker's
        neighbours pull from it at each round (as they do on connecting)."""
        current: list[bytes] = []
        h.node.engine.on_sync_request = lambda data, now: [
            encode_sync(r) for r in split_sync_response(current)]
        attacker_id = h.node.host.get_id()
        while h.alive and (at := attacker.next_at()) is not None:
            await trio.sleep_until(self._t0 + at)
            current[:] = [wire for _, wire in attacker.due(self._now_rel(), self.clock())]

            async def pull(p: RealPeer) -> None:
                with trio.move_on_after(10.0):
                    try:
                        await p.node.sync_with(attacker_id)
                    except Exception:  # noqa: BLE001 - counted by the node
                        pass

            async with trio.open_nursery() as nursery:
                for p in entries:
                    if p.alive:
                        nursery.start_soon(pull, p)

    async def _sync_abuse(self, h: RealPeer, target: RealPeer, attacker: Attacker,
                          info: dict[str, Any]) -> None:
        """Pull the target's whole view (the digests of an empty view) `rate` times a second
        over the real sync protocol, one request after another."""
        from neuroshard_p2p.node.host import sync_protocol
        from neuroshard_p2p.node.streams import FrameStream, reset_quietly

        view = MarketView(self.market)
        request = length_prefixed(encode_sync(SyncRequest(
            view.digest(), tuple(view.bucket_digests()), view.revocations_digest())))
        protocol = sync_protocol(self.network)
        counts = Counter[str]()
        info["sync"] = counts
        interval = 1.0 / attacker.event.rate
        next_at = trio.current_time()
        while h.alive and target.alive and self._now_rel() < attacker.end_t:
            counts["requests"] += 1
            counts["bytes_in"] += len(request)
            stream = None
            try:
                with trio.fail_after(5.0):
                    stream = await h.node.host.new_stream(target.node.host.get_id(), [protocol])
                    await stream.write(request)
                    frames = FrameStream(stream, MAX_FRAME_SIZE[KIND_SYNC_RESPONSE])
                    got = 0
                    while (frame := await frames.next()) is not None:
                        got += len(frame)
                    await stream.close()
                counts["answered"] += 1
                counts["bytes_out"] += got
            except Exception:  # noqa: BLE001 - refused (reset) or timed out
                counts["refused"] += 1
                if stream is not None:
                    await reset_quietly(stream)
            next_at += interval
            await trio.sleep_until(max(next_at, trio.current_time()))

    async def _add(self, event: Event) -> list[RealPeer]:
        live = self._live()
        if event.role == "replace":
            specs = [(p.role, p.capacity, p.demand) for p in self._killed_last]
            if event.count is not None:
                specs = specs[: event.count]
        else:
            n = event.count if event.count is not None else \
                max(1, round((event.fraction or 0.0) * len(live)))
            demands = [p.demand for p in live if p.demand]
            avg = sum(demands) // len(demands) if demands else 0
            specs = [(event.role, self.scenario.peers.capacity if event.role == "provider" else 0,
                      avg if event.role == "demand" else 0)] * n
        joined = []
        for role, capacity, demand in specs:
            peer = self._new_peer(role if role in ("provider", "demand", "idle") else "idle",
                                  capacity, demand)
            boot = self._addrs_of(self.rng.sample(live, min(2, len(live))), 2)
            await self._start(peer, boot)
            joined.append(peer)
        return joined

    async def _apply_partition(self) -> None:
        """Deny each node the other groups' addresses, close cross-group connections, and make
        sure each group is connected inside (a node whose only peers were across the split
        finds its own side, as peer exchange would)."""
        by_id = {p.node.peer_id: p for p in self.peers if p.alive and p.node is not None}
        for p in self._live():
            gate = p.node.host.get_network().connection_gate
            gate.deny_list[:] = [ipaddress.ip_network(f"{q.ip}/32") for q in self._live()
                                 if q.group != p.group]
        async def cut(p: RealPeer, other: Any) -> None:
            with trio.move_on_after(2.0):
                try:
                    await p.node.host.disconnect(other)
                except Exception:  # noqa: BLE001 - already gone
                    pass

        async def dial(p: RealPeer, q: RealPeer) -> None:
            with trio.move_on_after(5.0):
                try:
                    await p.node.connect(q.node.addrs[0])
                except Exception:  # noqa: BLE001 - peer exchange retries later
                    pass

        # All at once, as a real split happens everywhere at the same moment.
        async with trio.open_nursery() as nursery:
            for p in self._live():
                for other in list(p.node.host.get_connected_peers()):
                    q = by_id.get(str(other))
                    if q is not None and q.group != p.group:
                        nursery.start_soon(cut, p, other)
        async with trio.open_nursery() as nursery:
            for p in self._live():
                mates = [q for q in self._live() if q.group == p.group and q is not p]
                if mates and not any(str(other) in {q.node.peer_id for q in mates}
                                     for other in p.node.host.get_connected_peers()):
                    nursery.start_soon(dial, p, self.rng.choice(mates))

    async def _heal(self) -> None:
        live = self._live()
        for p in live:
            p.node.host.get_network().connection_gate.deny_list[:] = []
        groups = {p.group for p in live}

        async def dial(p: RealPeer, q: RealPeer) -> None:
            with trio.move_on_after(5.0):
                try:
                    await p.node.connect(q.node.addrs[0])
                except Exception:  # noqa: BLE001 - the periodic peer exchange retries
                    pass

        # Every node dials one node across the former split, all at once (each new connection
        # starts the node's sync on connect).
        if len(groups) > 1:
            async with trio.open_nursery() as nursery:
                for p in live:
                    others = [q for q in live if q.group != p.group]
                    if others:
                        nursery.start_soon(dial, p, self.rng.choice(others))
        for p in live:
            p.group = 0

    async def _flood_hostile(self, h: RealPeer, duration: float, rate: float) -> None:
        crafter = h.crafter
        assert crafter is not None
        end = trio.current_time() + duration
        interval = 1.0 / rate
        next_at = trio.current_time()
        honest = [p for p in self._live()]
        signers = [p.node.engine.signer for p in honest]
        while trio.current_time() < end and h.alive:
            captured = [m.wire for p in honest[:3] if p.alive
                        for m in p.node.engine.view.all_messages()[:64]]
            data = crafter.craft(crafter.next_kind(), self.clock(), captured, signers)
            try:
                await h.node.pubsub.publish(h.node.topic, data)
            except Exception:  # noqa: BLE001 - e.g. no peers right now
                pass
            self.recorder.second(self._now_rel()).hostile += 1
            self._hostile_sent[h.index] = crafter.sent
            next_at += interval
            await trio.sleep_until(next_at)

    # ------------------------------------------------------------------ sampling

    def _sample(self, t: float) -> None:
        now = self.clock()
        rows = []
        record_digests = True
        for p in self.peers:
            if not p.alive or p.role == "hostile" or p.node is None:
                continue
            price, supply, demand, nodes = read_market(p.node, now)
            rows.append(PeerSample(p.index, price, supply, demand, nodes,
                                   p.node.engine.view.digest() if record_digests else None))
        live = self._live()
        self.recorder.sample(t, rows, (sum(p.capacity for p in live),
                                       sum(p.demand for p in live), len(live)))
        # Traffic since the last sample, network-wide.
        published = sum(getattr(p.node.counters, "published", 0) for p in self.peers
                        if p.node is not None and p.role != "hostile")
        acc = rej = ign = 0
        for p in self.peers:
            if p.node is not None and p.role != "hostile":
                a, r, i = gossip_totals(p.node)
                acc, rej, ign = acc + a, rej + r, ign + i
        last = self._last_totals
        bucket = self.recorder.second(t)
        bucket.published += published - last[0]
        bucket.accepted += acc - last[1]
        bucket.rejected += rej - last[2]
        bucket.ignored += ign - last[3]
        bucket.delivered += (acc + rej + ign) - sum(last[1:])
        self._last_totals = (published, acc, rej, ign)
        # Syncs started by nodes alive now (a stopped node's count leaves with it).
        syncs = sum(getattr(p.node.counters, "syncs_started", 0) for p in self.peers
                    if p.alive and p.node is not None and p.role != "hostile")
        bucket.sync_exchanges += max(0, syncs - self._syncs_last)
        self._syncs_last = syncs

    async def _sampler(self, done: trio.Event) -> None:
        duration = self.scenario.duration_s
        k = 0
        next_progress = trio.current_time() + self.progress_every_s
        while (k + 0.5) * self.sample_s < duration:
            await trio.sleep_until(self._t0 + (k + 0.5) * self.sample_s)
            self._sample((k + 0.5) * self.sample_s)
            k += 1
            if self.progress is not None and trio.current_time() >= next_progress:
                next_progress = trio.current_time() + self.progress_every_s
                self._report_progress()
        done.set()

    def _report_progress(self) -> None:
        assert self.progress is not None
        rows = self.recorder.samples[-1] if self.recorder.samples else []
        prices = {r.price_nano for r in rows}
        price = (f"price {min(prices) / 1e9:.4f}" + ("" if len(prices) == 1 else
                 f"…{max(prices) / 1e9:.4f} ({len(prices)} distinct)")) if prices else "no price"
        self.progress(f"[libp2p] t={self._now_rel():6.1f}/{self.scenario.duration_s:g} s  "
                      f"live {len(self._live())}  {price}")

    # ------------------------------------------------------------------ run

    async def run(self) -> Recorder:
        rec = self.recorder
        wall0 = time.perf_counter()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                if self.progress is not None:
                    self.progress(f"[libp2p] starting {self.n_initial} nodes on loopback …")
                await self._setup()
                self._t0 = trio.current_time()
                self._epoch0 = self.clock()
                for peer in self.peers:
                    rec.peer_started[peer.index] = 0.0
                cpu0 = time.process_time()
                # Counters start at t = 0: traffic of the setup is not part of the run.
                self._sample_totals_baseline()
                done = trio.Event()
                nursery.start_soon(self._sampler, done)
                for i, event in enumerate(self.scenario.events):
                    await trio.sleep_until(self._t0 + event.at_s)
                    await self._apply(event, trio.current_time() - self._t0)
                await done.wait()
                rec.cpu_s = time.process_time() - cpu0
                rec.network_s = self.scenario.duration_s
                rec.wall_s = time.perf_counter() - wall0
                for record in rec.events:
                    if record.event.action == "hostile":
                        record.info["sent"] = sum(self._hostile_sent.get(i, 0)
                                                  for i in record.info.get("peers", []))
                    attacker = record.info.pop("_attacker", None)
                    if attacker is not None:
                        record.info["sent"] = attacker.sent
                        for key, value in dict(record.info.pop("sync", {})).items():
                            rec.attack_counts[f"sync_{key}"] += value
                for peer in self.peers:
                    if peer.node is not None and peer.role != "hostile":
                        for (_outcome, reason), count in peer.node.engine.gossip_counts.items():
                            rec.reasons[reason] += count
                    peer.stop.set()
                rec.reasons.subtract(self._reasons_at_t0)
                for reason in [r for r, c in rec.reasons.items() if c == 0]:
                    del rec.reasons[reason]
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
        if self.progress is not None:
            self.progress(f"[libp2p] done in {rec.wall_s:.1f} s wall")
        return rec

    def _sample_totals_baseline(self) -> None:
        for p in self.peers:
            if p.node is not None and p.role != "hostile":
                for (_outcome, reason), count in p.node.engine.gossip_counts.items():
                    self._reasons_at_t0[reason] += count
                self._syncs_last += getattr(p.node.counters, "syncs_started", 0)
        published = sum(getattr(p.node.counters, "published", 0) for p in self.peers
                        if p.node is not None and p.role != "hostile")
        acc = rej = ign = 0
        for p in self.peers:
            if p.node is not None and p.role != "hostile":
                a, r, i = gossip_totals(p.node)
                acc, rej, ign = acc + a, rej + r, ign + i
        self._last_totals = (published, acc, rej, ign)


def authored_message(who: Identity, wire: bytes, topic: str, seqno: int) -> Any:
    """A gossipsub message whose author (`from`) is `who`'s own libp2p peer id, signed by its
    key as strict signing requires: what a hostile client sends so that each identity's
    announcement passes the author rule (V4) everywhere."""
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

    keys = create_new_key_pair(who.key.secret)
    msg = rpc_pb2.Message(data=wire, topicIDs=[topic], from_id=who.peer_bytes,
                          seqno=seqno.to_bytes(8, "big"))
    msg.signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = keys.public_key.serialize()
    return msg


async def run_real(scenario: Scenario, peers: int, *, seed: int = 1, sample_s: float = 0.5,
                   progress: Callable[[str], None] | None = None) -> Recorder:
    """Run `scenario` on `peers` real nodes in this trio process."""
    return await RealNetwork(scenario, peers, seed=seed, sample_s=sample_s,
                             progress=progress).run()


__all__ = ["RealNetwork", "RealPeer", "run_real", "read_market", "gossip_totals",
           "authored_message"]
