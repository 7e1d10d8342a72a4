"""`neuroshard-simnet measure-real`: real libp2p nodes in several processes, measured.

Issue 15 item 4: the simulator's cost model (simnet/costs.py) prices a node's market work as a
base + gossip RPCs read × a per-RPC cost + sync stream ends × a per-stream cost, at one speed of
the machine. This command measures the real thing, and the machine's speed while it runs
(simnet/calibrate.py's `SpeedSampler`, in this process): W worker processes, each hosting n real
`Node`s (simnet/real.py's peers: py-libp2p hosts on 127.0.0.1, gossipsub, sync, peer exchange,
the engine) joined into one network, run a scenario in real time, and each worker counts, for
its own nodes:

- process CPU seconds (`time.process_time`, not wall: the machine is shared), minus what the
  measurement itself spends reading prices (timed around every sample and taken off);
- gossip RPC frames received (every length-prefixed RPC py-libp2p's pubsub reads off a stream:
  message copies, IHAVE/IWANT/GRAFT/PRUNE and subscriptions alike) and, of those, the message
  copies handed to pubsub's `push_msg` (first copies and duplicates);
- messages validated (first copies the engine judged), sync/2.x streams (started + served);
- the trio loop's lag (a 50 ms sleep's overshoot): a process whose nodes cannot keep up shows it
  here first.

Counting RPC frames and copies wraps two py-libp2p functions in the worker processes only (the
measured nodes are otherwise the product, untouched); the wrappers add two integer increments.

The coordinator (this process) starts the workers, gives each the others' addresses to
bootstrap from, waits until every node has a gossip mesh and every first announcement (as
`RealNetwork` does), starts the run at one instant t0 after the price's warm-up, tells every
worker the scenario's events as per-node actions (chosen here, with the same rules as
simnet/real.py), and merges what the workers sampled at shared instants into one `Recorder`:
the agreement and churn figures are simnet/metrics.py's, the same as for `run`. Instants are
the wall's, or with `--dilation K` the network's, whose clocks (every node's and every worker's
trio loop) run K times slower than the wall (simnet/dilation.py).

Workers talk to the coordinator in JSON lines over stdin/stdout; their logs go to
`<out>/worker-<k>.log`.
"""

from __future__ import annotations

import json
import math
import os
import random
import resource
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

from simnet.calibrate import SpeedSampler, summary
from simnet.costs import CALIBRATION_OP_US, COSTS
from simnet.dilation import DilatedClock, NetClock
from simnet.metrics import PeerSample, Recorder, figures
from simnet.scenario import Event, Scenario, ScenarioError, load

#: Node settings of every measured node: market traffic only. On loopback mDNS and UPnP are off
#: already (node/reach.py); AutoNAT probes and relay reservations are the reach layer's traffic,
#: not the market's, and would only add noise to the per-node figures.
MEASURE_NODE = {"autonat": False, "relay_service": "off", "relay_client": False,
                "hole_punching": False}
PROTOCOLS = {"gossip": False, "quiet": True}  # name -> quiet_keep_alives
#: How often (in samples) workers report every node's view of every announcer (lag check).
LAG_EVERY = 10


# ------------------------------------------------------------------------------------------
# The plan: who is who, and what each event does to which node (the coordinator decides).


@dataclass
class PlannedPeer:
    """A node of the measured network as the coordinator plans it (mirrors real.RealPeer)."""

    index: int
    role: str
    capacity: int
    demand: int
    alive: bool = True


def build_scenario(name: str, *, duration_s: float | None, protocol: str,
                   kill_at_s: float | None = None, kill_count: int = 1,
                   overrides: dict[str, dict[str, Any]] | None = None) -> Scenario:
    """The scenario a measurement runs: shipped or a file, scaled to `duration_s`, `overrides`
    ({table: {key: value}}, as `--set`), the measured nodes' settings, and (for the crash check)
    a kill of `kill_count` providers at `kill_at_s`."""
    if protocol not in PROTOCOLS:
        raise ScenarioError(f"protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    scenario = load(name)
    if duration_s is not None:
        scenario = scenario.scaled(duration_s)
    tables = {k: dict(v) for k, v in (overrides or {}).items()}
    tables["node"] = {**MEASURE_NODE, **tables.get("node", {}),
                      "quiet_keep_alives": PROTOCOLS[protocol]}
    scenario = scenario.with_overrides(**tables)
    scenario.market_config()  # checks the merged values
    for event in scenario.events:
        if event.action not in ("capacity", "demand", "kill", "stop"):
            raise ScenarioError(f"measure-real runs capacity, demand, kill and stop events; "
                                f"{scenario.name} has {event.action!r}")
    if kill_at_s is not None:
        if not 0 <= kill_at_s < scenario.duration_s:
            raise ScenarioError(f"--kill-at {kill_at_s:g}: must be inside the run "
                                f"(0..{scenario.duration_s:g} s)")
        kill = Event(at_s=kill_at_s, action="kill", who="providers", count=kill_count,
                     label=f"crash {kill_count} provider(s)")
        events = tuple(sorted((*scenario.events, kill), key=lambda e: e.at_s))
        scenario = replace(scenario, events=events)
    return scenario


def plan_peers(scenario: Scenario, n: int, seed: int) -> list[PlannedPeer]:
    """Roles, capacities and demands of `n` nodes: RealNetwork._setup's rule and random draws
    (the same seed gives the same assignment in every process)."""
    rng = random.Random(seed)
    setup = scenario.peers
    market = scenario.market_config()
    providers, demand = setup.assign(n, rng)
    total_supply = len(providers) * setup.capacity
    total_demand = setup.utilization * market.target_response_s * total_supply
    out = []
    for i in range(n):
        role = "provider" if i in providers else ("demand" if i in demand else "idle")
        out.append(PlannedPeer(i, role, setup.capacity if i in providers else 0,
                               round(total_demand / max(1, len(demand))) if i in demand else 0))
    return out


def plan_events(scenario: Scenario, peers: list[PlannedPeer], seed: int
                ) -> tuple[list[dict[str, Any]], list[tuple[float, tuple[int, int, int]]]]:
    """Every event as per-node actions ({"at", "offer": {i: [tokens/s, min price nano]},
    "demand": {i: tokens}, "kill": [i], "stop": [i]}) and the true market after each
    (time, (supply, demand, live nodes)), with simnet/real.py's choices."""
    from neuroshard_p2p.money import to_nano

    market = scenario.market_config()
    rng = random.Random(seed + 7919)
    peers = [replace(p) for p in peers]
    actions: list[dict[str, Any]] = []
    truth = [(0.0, _truth(peers))]
    for event in scenario.events:
        live = [p for p in peers if p.alive]
        act: dict[str, Any] = {"at": event.at_s, "offer": {}, "demand": {}, "kill": [],
                               "stop": [], "title": event.title, "action": event.action}
        if event.action == "capacity":
            for p in event.choose(live, rng, spare_first=True):
                p.capacity = event.new_capacity(p.capacity, market.max_node_tokens_per_s)
                price = to_nano(scenario.peers.ask_of(p.index)) if p.capacity else 0
                act["offer"][p.index] = [p.capacity, price]
        elif event.action == "demand":
            chosen = [p for p in live if p.demand > 0] or [p for p in live if p.role == "demand"]
            supply = sum(p.capacity for p in live)
            for p, d in zip(chosen, event.new_demands([p.demand for p in chosen], supply,
                                                      market.target_response_s)):
                p.demand = d
                act["demand"][p.index] = d
        else:  # kill / stop
            chosen = event.choose(live, rng, spare_first=True)
            for p in chosen:
                p.alive = False
            act[event.action] = [p.index for p in chosen]
            act["capacity_removed"] = sum(p.capacity for p in chosen)
            act["demand_removed"] = sum(p.demand for p in chosen)
        actions.append(act)
        truth.append((event.at_s, _truth(peers)))
    return actions, truth


def _truth(peers: list[PlannedPeer]) -> tuple[int, int, int]:
    live = [p for p in peers if p.alive]
    return (sum(p.capacity for p in live), sum(p.demand for p in live), len(live))


# ------------------------------------------------------------------------------------------
# Worker process: hosts its share of the nodes.


class _Counts:
    """Process-wide counters of the two wrapped py-libp2p functions."""

    rpcs = 0
    control = 0   # RPCs read that carry control (IHAVE, IWANT, GRAFT, PRUNE), with messages or not
    ihave = 0     # IHAVE entries among them (gossipsub's heartbeat gossip)
    copies: dict[int, int] = {}


def install_counters() -> None:
    """Count every pubsub RPC frame read and every received message copy (by pubsub instance)."""
    import libp2p.pubsub.pubsub as pubsub_module

    read = pubsub_module.read_varint_prefixed_bytes_limited

    async def counted_read(stream: Any, limit: int) -> bytes:
        data = await read(stream, limit)
        _Counts.rpcs += 1
        return data

    pubsub_module.read_varint_prefixed_bytes_limited = counted_read  # type: ignore[assignment]
    # The reading loop asks this of every message of every RPC read, before anything else
    # (libp2p_compat 18 drops a copy already seen there, so push_msg no longer sees every copy).
    subscribed = pubsub_module.Pubsub._is_subscribed_to_msg

    def counted_copy(self: Any, msg: Any) -> bool:
        _Counts.copies[id(self)] = _Counts.copies.get(id(self), 0) + 1
        return subscribed(self, msg)

    pubsub_module.Pubsub._is_subscribed_to_msg = counted_copy  # type: ignore[method-assign]
    # The reading loop hands the router every RPC that carries control, once.
    from libp2p.pubsub.gossipsub import GossipSub

    handle_rpc = GossipSub.handle_rpc

    async def counted_control(self: Any, rpc: Any, sender: Any) -> None:
        _Counts.control += 1
        _Counts.ihave += len(rpc.control.ihave)
        await handle_rpc(self, rpc, sender)

    GossipSub.handle_rpc = counted_control  # type: ignore[method-assign]


class Worker:
    """One worker process: starts its nodes, answers the coordinator's commands."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.own: list[int] = list(config["own"])
        self.scenario = build_scenario(config["scenario"], duration_s=config["duration_s"],
                                       protocol=config["protocol"],
                                       kill_at_s=config.get("kill_at_s"),
                                       kill_count=config.get("kill_count", 1),
                                       overrides=config.get("overrides"))
        #: The network's clock (simnet/dilation.py): the wall's, or K times slower.
        self.clock = NetClock(config.get("dilation", 1.0), config.get("origin"))
        self.net: Any = None
        self.signers: list[bytes] = []
        self.announcers: list[int] = []
        self._sampling_cpu = 0.0
        self._loop_lag = 0.0
        # The longest cyclic garbage collection since the last sample (a stop-the-world pause
        # the loop lag includes); see `_watch_gc`.
        self._gc_pause = 0.0
        self._gc_started = 0.0
        # All collections' time and the full (generation 2) ones' count since the start: how
        # much of a node's CPU the cyclic collector takes (`gc_cpu_share` of a window). In
        # process time: a pause's wall time also holds the time the OS gave the core to other
        # processes, which on 100 nodes sharing two cores is most of it in a burst (the same
        # window measured 4.0 % of the CPU in process time and 28.6 % in wall time).
        self._gc_cpu_started = 0.0
        self._gc_total = 0.0
        self._gc_full = 0

    @staticmethod
    def reply(data: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(data, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    @staticmethod
    async def command() -> dict[str, Any]:
        import trio

        line = await trio.to_thread.run_sync(sys.stdin.readline)
        if not line:
            return {"cmd": "stop"}
        return json.loads(line)

    async def main(self) -> None:
        import trio

        from simnet.real import RealNetwork

        cfg = self.config
        n = cfg["peers"]
        self.net = net = RealNetwork(self.scenario, n, seed=cfg["seed"], network=cfg["network"],
                                     sample_s=cfg["sample_s"], clock=self.clock)
        planned = plan_peers(self.scenario, n, cfg["seed"])
        async with trio.open_nursery() as nursery:
            net._nursery = nursery
            for p in planned:
                net._new_peer(p.role, p.capacity, p.demand)
            self.signers = [p.key.public_key.format(compressed=True) for p in net.peers]
            self.announcers = [p.index for p in planned if p.capacity or p.demand]
            mine: list[str] = []
            rng = random.Random(cfg["seed"] * 1009 + cfg["worker"])
            # The first `start_first` nodes now, the rest when asked ("grow"; see
            # `bootstrap_plan`'s "spread").
            first = int(cfg.get("start_first", len(self.own)))
            self.reply({"addrs": await self._start_own(self.own[:first], cfg["bootstrap"], mine,
                                                       rng)})
            nursery.start_soon(self._watch_loop)
            import gc
            gc.callbacks.append(self._watch_gc)
            while True:
                cmd = await self.command()
                if cmd["cmd"] == "status":
                    self.reply(self.status())
                elif cmd["cmd"] == "sync":
                    await net._sync_round()
                    self.reply({"ok": True})
                elif cmd["cmd"] == "run":
                    self.reply(await self.run(cmd["t0"], cmd["actions"]))
                elif cmd["cmd"] == "grow":
                    self.reply({"addrs": await self._start_own(self.own[first:], cmd["bootstrap"],
                                                               mine, rng)})
                else:
                    break
            nursery.cancel_scope.cancel()

    async def _start_own(self, nodes: list[int], bootstrap: list[str], mine: list[str],
                         rng: random.Random) -> dict[int, str]:
        """Start `nodes` one at a time, each bootstrapping from four random earlier nodes, two
        of them (once there are) our own (`mine`, which grows) and the rest from `bootstrap`.
        Returns their addresses."""
        import trio

        others = [a for a in bootstrap if a not in mine]
        addrs: dict[int, str] = {}
        for i in nodes:
            # Four random earlier nodes, two of them our own: every worker knows only a few
            # processes' addresses, and when every node dialled those, their nodes filled up
            # (max_peers) and the same two nodes of 100 (seed 1) stayed with no connection at
            # all through 400 s of setup, twice.
            boot = rng.sample(mine, min(2, len(mine)))
            boot += rng.sample(others, min(4 - len(boot), len(others)))
            await self.net._start(self.net.peers[i], boot)
            node = self.net.peers[i].node
            if boot:
                # One node at a time into the network: started all at once on a loaded
                # machine, a process's handshakes timed out (dials "no answer within
                # 10 s") and nodes sat with connections but no pubsub peer for minutes.
                with trio.move_on_after(5.0):
                    while not node.pubsub.peer_topics.get(node.topic):
                        await trio.sleep(0.05)
            addr = node.addrs[0]
            mine.append(addr)
            addrs[i] = addr
        return addrs

    def status(self) -> dict[str, Any]:
        net = self.net
        own = [net.peers[i] for i in self.own]
        meshed = sum(1 for p in own if net._meshed(p))
        missing = sum(1 for p in own if p.alive for a in self.announcers
                      if p.node.engine.view.current(self.signers[a]) is None)
        # Connected peers pubsub holds no stream with. py-libp2p 0.8.1 retries opening the
        # pubsub stream only on SwarmException/StreamClosed; any other failure (a negotiation
        # timing out on a loaded machine) ends its registration for good, and a node whose
        # every connection went that way sits connected with no pubsub peer (seen for 9 of 50
        # nodes at load 12). The node repairs this itself now, after 10 s (libp2p_compat 13,
        # PubsubRepair); the setup asks at once so a measured run starts meshed.
        repaired = 0
        for p in own:
            if p.alive and p.node is not None and p.node.pubsub is not None:
                pubsub = p.node.pubsub
                for peer in p.node.host.get_connected_peers():
                    if peer not in pubsub.peers:
                        pubsub._schedule_peer_stream_retry(peer)
                        repaired += 1
        unmeshed: list[dict[str, int]] = []
        for p in own:
            if not net._meshed(p) and p.node is not None and len(unmeshed) < 3:
                gs = p.node.gossipsub
                unmeshed.append({"node": p.index, "connected": p.node.peer_count,
                                 "topic_peers": len(p.node.pubsub.peer_topics.get(p.node.topic, ())),
                                 "mesh": len(gs.mesh.get(p.node.topic, ()))})
        return {"meshed": meshed, "n": len(own), "missing": missing, "unmeshed": unmeshed,
                "pubsub_retries": repaired}

    def _watch_gc(self, phase: str, info: dict[str, Any]) -> None:
        """gc.callbacks hook: time every collection."""
        if phase == "start":
            self._gc_started = time.perf_counter()
            self._gc_cpu_started = time.process_time()
        else:
            self._gc_pause = max(self._gc_pause, time.perf_counter() - self._gc_started)
            self._gc_total += time.process_time() - self._gc_cpu_started
            self._gc_full += info.get("generation") == 2

    async def _watch_loop(self) -> None:
        """The trio loop's lag: how late a 50 ms sleep wakes (the largest since the last read)."""
        import trio

        while True:
            start = trio.current_time()
            await trio.sleep(0.05)
            self._loop_lag = max(self._loop_lag, trio.current_time() - start - 0.05)

    def _totals(self) -> dict[str, float]:
        from simnet.real import gossip_totals

        delivered = streams = published = copies = deferred = served_deferred = 0
        relay_frames = relay_items = relay_errors = relay_dropped = relay_spared = 0
        relay_synced = relay_opened = 0
        for i in self.own:
            node = self.net.peers[i].node
            if node is None:
                continue
            # On a relay network (protocol §8.5) announcements arrive in relay frames instead;
            # there every peer sends a new item on, so its first copies are the accepted ones.
            delivered += sum(gossip_totals(node)) + sum(
                n for (outcome, _), n in node.engine.relay_counts.items() if outcome == "accepted")
            relay_frames += node.counters.relay_frames_received
            relay_items += node.counters.relay_items_received
            relay_errors += node.counters.relay_send_errors
            relay_dropped += node.counters.relay_items_dropped
            relay_spared += node.counters.relay_items_spared
            relay_synced += node.counters.relay_synced_passed_on
            relay_opened += node.counters.relay_streams_opened
            streams += node.counters.syncs_started + node.counters.syncs_served
            published += node.counters.published
            deferred += node.counters.syncs_deferred
            served_deferred += node.counters.syncs_served_deferred
            copies += _Counts.copies.get(id(node.pubsub), 0)
        return {"cpu": time.process_time() - self._sampling_cpu, "rpcs": _Counts.rpcs,
                "control": _Counts.control, "ihave": _Counts.ihave,
                "copies": copies, "delivered": delivered, "streams": streams,
                "published": published, "deferred": deferred,
                "relay_frames": relay_frames, "relay_items": relay_items,
                "relay_errors": relay_errors, "relay_dropped": relay_dropped,
                "relay_spared": relay_spared, "relay_synced": relay_synced,
                "relay_opened": relay_opened,
                "served_deferred": served_deferred,
                "gc_s": self._gc_total, "gc_full": self._gc_full,
                "sampling": self._sampling_cpu}

    async def run(self, t0: float, actions: list[dict[str, Any]]) -> dict[str, Any]:
        import trio

        from neuroshard_p2p.timeline import seconds_of
        from simnet.real import read_market

        net = self.net
        duration, sample_s = self.scenario.duration_s, self.config["sample_s"]
        views_every = max(1, int(self.config.get("views_every", LAG_EVERY)))
        trio_t0 = trio.current_time() + (t0 - self.clock())
        await trio.sleep_until(trio_t0)
        base = self._totals()
        self._loop_lag = self._gc_pause = 0.0
        own = set(self.own)
        kills: dict[str, list[float]] = {}
        held_last: dict[str, dict[str, int]] = {}

        async def apply(act: dict[str, Any]) -> None:
            await trio.sleep_until(trio_t0 + act["at"])
            for key, (tokens, price) in act["offer"].items():
                p = net.peers[int(key)]
                if int(key) in own and p.alive:
                    p.capacity = tokens
                    p.node.set_offer(tokens, price)
            for key, demand in act["demand"].items():
                p = net.peers[int(key)]
                if int(key) in own and p.alive:
                    p.demand = demand
                    net._push_demand(p)
            for how in ("kill", "stop"):
                for i in act[how]:
                    p = net.peers[i]
                    if i not in own or not p.alive:
                        continue
                    mine = p.node.engine.view.current(p.node.engine.signer)
                    if mine is not None:
                        kills[str(i)] = [seconds_of(mine.issued_at_ms) - t0, mine.issued_at_ms]
                    p.alive = False
                    if how == "kill":
                        assert p.scope is not None
                        p.scope.cancel()  # a hard stop: no withdrawal
                    else:
                        p.stop.set()

        # Prices alone, every FINE_CHECK_S over each market event's first FINE_WINDOW_S (up to
        # the next event or the end): when all agreed, 5× finer than the samples.
        fine: list[dict[str, Any]] = []

        async def fine_checks(at: float, until: float) -> None:
            checks: list[list[list[int]]] = []
            fine.append({"at": at, "every_s": FINE_CHECK_S, "checks": checks})
            j = 0
            while at + (j + 1) * FINE_CHECK_S <= until + 1e-9:
                await trio.sleep_until(trio_t0 + at + (j + 0.5) * FINE_CHECK_S)
                c0 = time.process_time()
                now = t0 + at + (j + 0.5) * FINE_CHECK_S
                checks.append([[i, p.node.engine.price(now)] for i in self.own
                               if (p := net.peers[i]).alive and p.node is not None])
                self._sampling_cpu += time.process_time() - c0
                j += 1

        samples = []
        async with trio.open_nursery() as nursery:
            for act in actions:
                nursery.start_soon(apply, act)
            for at, until in fine_windows(actions, duration, sample_s):
                nursery.start_soon(fine_checks, at, until)
            k = 0
            while (k + 0.5) * sample_s < duration:
                await trio.sleep_until(trio_t0 + (k + 0.5) * sample_s)
                c0 = time.process_time()
                now = t0 + (k + 0.5) * sample_s
                rows = []
                for i in self.own:
                    p = net.peers[i]
                    if p.alive and p.node is not None:
                        rows.append([i, *read_market(p.node, now)])
                sample: dict[str, Any] = {"k": k, "rows": rows, "lag": self._loop_lag,
                                          "gc": self._gc_pause,
                                          "counting": self._counting(actions, now - t0, now)}
                self._loop_lag = self._gc_pause = 0.0
                if k % views_every == views_every - 1:
                    sample["views"] = self._views()
                self._sampling_cpu += time.process_time() - c0
                totals = self._totals()
                sample.update({key: totals[key] - base[key] for key in totals})
                samples.append(sample)
                k += 1
            nursery.cancel_scope.cancel()
        # Which last announcement of each killed node every live node of ours holds.
        for act in actions:
            for i in act["kill"]:
                held_last[str(i)] = {}
                for j in self.own:
                    p = net.peers[j]
                    if p.alive and p.node is not None:
                        held = p.node.engine.view.current(self.signers[i])
                        held_last[str(i)][str(j)] = 0 if held is None else held.issued_at_ms
        # The network's shape at the end: each live node's connections and gossip mesh.
        shape = [[i, p.node.peer_count, len(p.node.gossipsub.mesh.get(p.node.topic, ()))]
                 for i in self.own if (p := net.peers[i]).alive and p.node is not None
                 and p.node.gossipsub is not None]
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {"worker": self.config["worker"], "n": len(self.own), "samples": samples,
                "kills": kills, "held_last": held_last, "fine": fine, "shape": shape,
                "maxrss_mb": round(usage.ru_maxrss / 1024, 1),
                "sampling_cpu_s": round(self._sampling_cpu, 3)}

    def _counting(self, actions: list[dict[str, Any]], t: float, now: float) -> dict[str, int]:
        """For every node killed by `t`: how many of our live nodes count it at `now` (the
        view's own rule, `counted_at_ms`)."""
        from neuroshard_p2p.timeline import ms_of

        out: dict[str, int] = {}
        for act in actions:
            if act["at"] > t:
                continue
            for i in act["kill"]:
                out[str(i)] = sum(
                    1 for j in self.own
                    if (p := self.net.peers[j]).alive and p.node is not None and
                    p.node.engine.view.counted_at_ms(self.signers[i], ms_of(now)) is not None)
        return out

    def _views(self) -> dict[str, Any]:
        """Every live own node's held issued_at_ms per announcer, and each own announcer's own."""
        held, mine, quiet = {}, {}, {}
        for i in self.own:
            p = self.net.peers[i]
            if not (p.alive and p.node is not None):
                continue
            view = p.node.engine.view
            quiet[str(i)] = p.node.engine.keep_alives_unpublished
            held[str(i)] = [getattr(view.current(self.signers[a]), "issued_at_ms", 0)
                            for a in self.announcers]
            own = view.current(self.signers[i])
            if own is not None:
                mine[str(i)] = own.issued_at_ms
        return {"held": held, "own": mine, "quiet": quiet, "announcers": self.announcers}


def worker_entry(argv: Sequence[str]) -> int:
    import logging

    import trio

    import libp2p  # noqa: F401 - configures (and resets) its logger first

    config = json.loads(argv[0])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    logging.getLogger("multiaddr").setLevel(logging.WARNING)
    # NEUROSHARD_SIMNET_LOG="neuroshard.relay=DEBUG,…": a logger's level in every worker (e.g. to
    # see which step of a relay write failed, and after how long); a bad entry is ignored.
    for entry in os.environ.get("NEUROSHARD_SIMNET_LOG", "").split(","):
        name, _, level = entry.partition("=")
        if name.strip() and level.strip().upper() in logging.getLevelNamesMapping():
            logging.getLogger(name.strip()).setLevel(level.strip().upper())
    install_counters()
    k = float(config.get("dilation", 1.0))
    trio.run(Worker(config).main, clock=DilatedClock(k) if k != 1.0 else None)
    return 0


# ------------------------------------------------------------------------------------------
# Coordinator


class WorkerProc:
    """A worker process and its JSON-lines pipe."""

    def __init__(self, config: dict[str, Any], log_path: Path) -> None:
        self.config = config
        self.log = open(log_path, "w")
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        self.stopping = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "simnet.measure_real", json.dumps(config)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)

    def send(self, data: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(data) + "\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.config['worker']} ended (exit code "
                               f"{self.proc.poll()}); see {self.log.name}")
        return json.loads(line)

    def ask(self, data: dict[str, Any]) -> dict[str, Any]:
        self.send(data)
        return self.receive()

    def stop(self) -> None:
        """Ask the worker to stop its nodes and exit; `close` waits for it."""
        try:
            if self.proc.poll() is None and not self.stopping:
                self.stopping = True
                self.send({"cmd": "stop"})
        except Exception:  # noqa: BLE001 - a broken pipe: `close` ends it
            pass

    def close(self) -> None:
        try:
            self.stop()
            if self.proc.poll() is None:
                self.proc.wait(timeout=20)
        except Exception:  # noqa: BLE001 - a stuck worker is ended below
            pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@dataclass
class Measurement:
    """One measured run: the figures of the table and the report's figures."""

    scenario: str
    protocol: str
    peers: int
    workers: int
    duration_s: float
    row: dict[str, Any]
    windows: dict[str, dict[str, Any]]
    figures: dict[str, Any]
    crash: list[dict[str, Any]] = field(default_factory=list)
    lag: dict[str, Any] = field(default_factory=dict)
    arrivals: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def measure(scenario_name: str, peers: int, protocol: str, *, workers: int = 4,
            duration_s: float | None = 60.0, seed: int = 1, sample_s: float = 0.5,
            kill_at_s: float | None = None, kill_count: int = 1,
            overrides: dict[str, dict[str, Any]] | None = None, out: Path | None = None,
            setup_timeout_s: float | None = None, min_ready: float = 1.0,
            views_every: int = LAG_EVERY, bootstrap: str = "first", dilation: float = 1.0,
            progress: Callable[[str], None] | None = None) -> Measurement:
    """Run one scenario on `peers` real nodes spread over `workers` processes; see the module
    docstring. With `dilation` K > 1 every clock of the run (the workers' trio loops, the nodes'
    clocks, the timeline) runs K times slower than the wall (simnet/dilation.py): times and rates
    are in network seconds, and the setup timeout too. Every wait is bounded: the whole run is
    abandoned (workers killed) past K × (setup + warm-up + duration) + 120 s of wall time."""
    if peers < 2 or workers < 1:
        raise ScenarioError("measure-real needs at least 2 peers and 1 worker")
    net_clock = NetClock(dilation)  # ValueError below 1
    if bootstrap not in BOOTSTRAP:
        raise ScenarioError(f"bootstrap must be one of {', '.join(BOOTSTRAP)}, not {bootstrap!r}")
    workers = min(workers, peers)
    scenario = build_scenario(scenario_name, duration_s=duration_s, protocol=protocol,
                              kill_at_s=kill_at_s, kill_count=kill_count, overrides=overrides)
    market = scenario.market_config()
    planned = plan_peers(scenario, peers, seed)
    actions, truth = plan_events(scenario, planned, seed)
    say = progress or (lambda _line: None)
    out = Path(out or f"out/measure-real/{scenario.name}-{protocol}-{peers}")
    out.mkdir(parents=True, exist_ok=True)
    network = f"measure-{seed}-{random.randrange(1 << 30):x}"
    setup_timeout = setup_timeout_s if setup_timeout_s is not None else 60.0 + 2.0 * peers
    warmup = market.settle_delay_s + (market.window_ticks + 1) * market.tick_s
    base = {"scenario": scenario_name, "duration_s": duration_s, "protocol": protocol,
            "kill_at_s": kill_at_s, "kill_count": kill_count, "overrides": overrides or {},
            "peers": peers, "seed": seed,
            "network": network, "sample_s": sample_s, "views_every": views_every,
            "dilation": net_clock.k, "origin": net_clock.origin}
    shares = [list(range(w, peers, workers)) for w in range(workers)]
    procs: list[WorkerProc] = []
    deadline = time.monotonic() + dilation * (setup_timeout + warmup + scenario.duration_s) + 120.0
    def kill_all() -> None:
        for proc in procs:
            proc.proc.kill()

    watchdog = threading.Timer(deadline - time.monotonic(), kill_all)
    watchdog.daemon = True
    watchdog.start()
    load_before = os.getloadavg()
    wall0 = time.perf_counter()
    speed = SpeedSampler()
    try:
        say(f"[measure-real] {scenario.name} {protocol}: {peers} nodes in {workers} processes"
            + (f", every clock {dilation:g}x slower than the wall" if dilation != 1.0 else ""))
        # Who bootstraps from whom (`BOOTSTRAP`).
        known: list[str] = []

        def spawn(w: int, **extra: Any) -> WorkerProc:
            return WorkerProc({**base, "worker": w, "own": shares[w], "bootstrap": list(known),
                               **extra}, out / f"worker-{w}.log")

        if bootstrap == "spread":
            # The hubs first, one node in each of the first HUB_PROCESSES processes (the first
            # alone, the others from it); then those processes' other nodes and every other
            # process's, all from the hubs.
            hubs = min(HUB_PROCESSES, workers)
            for w in range(hubs):
                procs.append(spawn(w, start_first=1))
                known.extend(procs[-1].receive()["addrs"].values())
            for proc in procs:
                proc.send({"cmd": "grow", "bootstrap": known})
            rest = [spawn(w) for w in range(hubs, workers)]
            for proc in procs + rest:
                proc.receive()
            procs.extend(rest)
        else:
            for wave in bootstrap_plan(workers, bootstrap):
                started_now = [spawn(w) for w in wave]
                procs.extend(started_now)
                for p in started_now:
                    known.extend(p.receive()["addrs"].values())
        started = time.monotonic()
        say(f"[measure-real] {peers} nodes started in {time.perf_counter() - wall0:.1f} s; "
            f"waiting for meshes and first announcements …")
        next_sync = started + 2.0
        next_say = started + 10.0
        while True:
            states = [p.ask({"cmd": "status"}) for p in procs]
            meshed = sum(s["meshed"] for s in states)
            missing = sum(s["missing"] for s in states)
            announcers = sum(1 for p in planned if p.capacity or p.demand)
            if meshed >= min_ready * peers and missing <= (1 - min_ready) * peers * announcers:
                break
            if (time.monotonic() - started) / dilation > setup_timeout:
                raise RuntimeError(f"setup: {peers - meshed} of {peers} nodes without a gossip "
                                   f"mesh and {missing} (node, announcer) pairs missing after "
                                   f"{setup_timeout:g} s")
            if time.monotonic() >= next_say:
                say(f"[measure-real] setup {time.monotonic() - started:.0f} s: {meshed}/{peers} "
                    f"meshed, {missing} (node, announcer) pairs missing; pubsub streams "
                    f"retried {sum(st.get('pubsub_retries', 0) for st in states)}; without a mesh: "
                    f"{[u for st in states for u in st.get('unmeshed', [])][:4]}")
                next_say = time.monotonic() + 10.0
            if meshed >= min_ready * peers and time.monotonic() >= next_sync:
                for p in procs:
                    p.ask({"cmd": "sync"})
                next_sync = time.monotonic() + 2.0
            time.sleep(0.5)
        setup_s = time.perf_counter() - wall0
        ready = {"meshed": meshed, "missing_pairs": missing}
        say(f"[measure-real] ready after {setup_s:.1f} s; warm-up {warmup:g} s, then "
            f"{scenario.duration_s:g} s measured")
        t0 = net_clock() + warmup
        # The machine's speed during the run (simnet/calibrate.py), timed in this process,
        # which only waits meanwhile: the model's costs scale with it (`model_error`).
        speed.start()
        for p in procs:
            p.send({"cmd": "run", "t0": t0, "actions": actions})
        results = [p.receive() for p in procs]
    finally:
        speed.stop()
        watchdog.cancel()
        for p in procs:  # all stop at once, then each is waited for (at most 20 s)
            p.stop()
        for p in procs:
            p.close()
    # The speed samples' instants in network time (the wall's unless dilated).
    samples = [(net_clock.of(at), s) for at, s in speed.samples]
    ops = [s for at, s in samples if t0 <= at <= t0 + scenario.duration_s]
    load_after = os.getloadavg()
    m = _merge(scenario, peers, protocol, workers, sample_s, results, actions, truth, market)
    m.arrivals = _arrivals(results, t0, sample_s, market, m.figures["events"])
    m.row.update(_shape(results))
    m.row.update(bootstrap=bootstrap, setup_s=round(setup_s, 1), ready_meshed=ready["meshed"],
                 ready_missing_pairs=ready["missing_pairs"], wall_s=round(time.perf_counter() - wall0, 1),
                 load_before=[round(x, 2) for x in load_before],
                 load_after=[round(x, 2) for x in load_after],
                 maxrss_mb=max(r["maxrss_mb"] for r in results), dilation=net_clock.k,
                 cpus=os.cpu_count() or 1, transport=market.transport)
    m.row["calibration"] = summary(ops)
    # And over each event's burst (the window its CPU is counted over, `_event_cpu`).
    for e in m.arrivals.get("events", []):
        start = t0 + e["t"]
        e["calibration"] = summary([s for at, s in samples
                                    if start <= at <= start + EVENT_CPU_WINDOW_S])
    (out / "measure.json").write_text(json.dumps(_as_dict(m), indent=2, default=str) + "\n")
    say(f"[measure-real] done in {m.row['wall_s']} s wall: {format_row(m.row)}")
    return m


def _merge(scenario: Scenario, peers: int, protocol: str, workers: int, sample_s: float,
           results: list[dict[str, Any]], actions: list[dict[str, Any]],
           truth: list[tuple[float, tuple[int, int, int]]], market: Any) -> Measurement:
    duration = scenario.duration_s
    rec = Recorder(scenario.name, "libp2p", market, sample_s)
    for i in range(peers):
        rec.add_peer(f"peer-{i}", 0.0)
    kills = {int(k): v[0] for r in results for k, v in r["kills"].items()}
    for event, act in zip(scenario.events, actions):
        info: dict[str, Any] = {"peers": act["kill"] + act["stop"] +
                                [int(k) for k in act["offer"]] + [int(k) for k in act["demand"]]}
        if act["action"] in ("kill", "stop"):
            for i in act["kill"] + act["stop"]:
                rec.stop_peer(i, act["at"])
            info.update(capacity_removed=act["capacity_removed"],
                        demand_removed=act["demand_removed"],
                        last_announced=[kills[i] for i in act["kill"] + act["stop"] if i in kills])
        rec.record_event(act["at"], event, **info)
    n_samples = min(len(r["samples"]) for r in results)
    for k in range(n_samples):
        t = (k + 0.5) * sample_s
        rows = [PeerSample(row[0], row[1], row[2], row[3], row[4])
                for r in results for row in r["samples"][k]["rows"]]
        rows.sort(key=lambda s: s.peer)
        current = [tr for at, tr in truth if at <= t][-1]
        rec.sample(t, rows, current)
    rec.network_s = duration
    rec.cpu_s = sum(r["samples"][n_samples - 1]["cpu"] for r in results)
    figs = figures(rec)
    windows = {"run": _window(results, 0, n_samples - 1, peers, sample_s)}
    if scenario.events and scenario.events[0].at_s > 4 * sample_s:
        last = max(0, int(scenario.events[0].at_s / sample_s - 0.5) - 1)
        windows["before_first_event"] = _window(results, 0, last, peers, sample_s)
    row = {"scenario": scenario.name, "protocol": protocol, "peers": peers, "workers": workers,
           "duration_s": duration, **windows["run"]}
    events = [e for e in figs["events"] if e["action"] in ("capacity", "demand")]
    _event_cpu(results, events, windows, n_samples, peers, sample_s)
    _fine_agreement(results, events)
    row["agree_after_event_max_s"] = max((e["agree_s"] for e in events if e["agree_s"] is not None),
                                         default=None)
    row["events_never_agreed"] = sum(1 for e in events if e["agree_s"] is None)
    fine = [e.get("agree_fine_s") for e in events if "fine_check_s" in e]
    row["agree_after_event_fine_max_s"] = (None if not fine or None in fine else max(fine))
    row["identical_share"] = figs["agreement"]["identical_share"]
    # The harness's CPU for reading prices and views (kept out of every node figure).
    row["sampling_cpu_s"] = round(sum(r.get("sampling_cpu_s", 0.0) for r in results), 3)
    m = Measurement(scenario.name, protocol, peers, workers, duration, row, windows, figs)
    m.crash = _crash(results, actions, figs, market, sample_s)
    m.lag = _lag(results, market)
    row["view_lag_p99_s"] = m.lag.get("p99_s")
    row["view_lag_max_s"] = m.lag.get("max_s")
    row["expired_pairs"] = m.lag.get("expired_pairs")
    return m


#: Seconds after a market event over which its CPU is counted (`_event_cpu`).
EVENT_CPU_WINDOW_S = 10.0
#: Seconds after a market event that its gossip burst takes on 100 nodes of a 2-core machine
#: (docs/scaling.md, "Tenth pass"): the window `first 4 s after <event>` shows what else the
#: nodes did meanwhile (reconciliation sessions, and how many of them waited for a lull).
BURST_WINDOW_S = 4.0


def _shape(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The network's shape at the end of the run, over the live nodes: connections and gossip
    mesh sizes (mean, max). Copies per message follow the mesh (docs/scaling.md)."""
    shape = [s for r in results for s in r.get("shape", [])]
    if not shape:
        return {}
    links, mesh = [s[1] for s in shape], [s[2] for s in shape]
    return {"connections_mean": round(sum(links) / len(links), 2), "connections_max": max(links),
            "mesh_mean": round(sum(mesh) / len(mesh), 2), "mesh_max": max(mesh)}


#: How the worker processes' nodes find the network: "first" and "waves" as `bootstrap_plan`
#: says; "spread" keeps "first"'s shape (everyone bootstraps from five hubs) but puts the hubs in
#: HUB_PROCESSES different processes: one node of each starts first, then the rest of the
#: network from those.
BOOTSTRAP = ("first", "spread", "waves")
HUB_PROCESSES = 5


def bootstrap_plan(workers: int, how: str = "first") -> list[list[int]]:
    """The worker processes in the order they start, in waves; each wave's nodes bootstrap from
    every node of the waves before it (a node dials four of them, two of its own process's once
    there are). "first" (the default): worker 0, then all the others from it, so worker 0's
    nodes are everyone's first peers, the network's hubs, in one process (it spends ~2× the CPU
    of the median one). "waves": 0, then 1, then 2–3, 4–7, … (each wave as large as all before
    it), which spreads the first peers over processes but leaves every node more connections
    and a denser gossip mesh, so more copies per message and more CPU in all (docs/scaling.md,
    "Fifteenth pass")."""
    if how == "first":
        return [[0], list(range(1, workers))] if workers > 1 else [[0]]
    waves, start = [[0]], 1
    while start < workers:
        waves.append(list(range(start, min(workers, 2 * start))))
        start *= 2
    return waves


#: Prices are also read every FINE_CHECK_S over the first FINE_WINDOW_S after each market event
#: (`fine_windows`): when all nodes agreed, to a tenth of a second rather than a sample.
FINE_CHECK_S = 0.1
FINE_WINDOW_S = 6.0


def fine_windows(actions: list[dict[str, Any]], duration: float,
                 sample_s: float = 0.5) -> list[tuple[float, float]]:
    """(start, end) of the fine price checks after each capacity or demand event: FINE_WINDOW_S,
    cut at the next such event and a sample before the end of the run."""
    starts = sorted(a["at"] for a in actions if a["action"] in ("capacity", "demand"))
    out = []
    for n, at in enumerate(starts):
        until = min(at + FINE_WINDOW_S, starts[n + 1] if n + 1 < len(starts) else math.inf,
                    duration - sample_s)
        if until - at >= FINE_CHECK_S:
            out.append((at, until))
    return out


def _fine_agreement(results: list[dict[str, Any]], events: list[dict[str, Any]]) -> None:
    """Per market event, from the fine price checks of every worker: `agree_fine_s`, the time
    from the event to the first check after the last one at which live nodes quoted more than
    one price (0.0 if none did; None if they still did at the window's last check), with the
    window checked (`fine_window_s`) and its checks' spacing (`fine_check_s`)."""
    for e in events:
        series = [f for r in results for f in r.get("fine", []) if abs(f["at"] - e["t"]) < 0.01]
        if not series:
            continue
        n = min(len(f["checks"]) for f in series)
        every = series[0]["every_s"]
        last_split = None
        for j in range(n):
            if len({price for f in series for _, price in f["checks"][j]}) > 1:
                last_split = j
        if n == 0:
            agree = None
        elif last_split is None:
            agree = 0.0
        elif last_split == n - 1:
            agree = None
        else:
            agree = round((last_split + 1.5) * every, 3)
        e.update(agree_fine_s=agree, fine_check_s=every, fine_window_s=round(n * every, 3))


def _event_cpu(results: list[dict[str, Any]], events: list[dict[str, Any]],
               windows: dict[str, Any], n_samples: int, peers: int, sample_s: float) -> None:
    """What each capacity or demand event cost: the nodes' CPU over the EVENT_CPU_WINDOW_S after
    it (a window `after <event>`) above the rate before the first event (the whole run's when
    there is no such window), as ms per node (`cpu_ms_per_node` on the event). The harness's
    own sampling is not in it; the machine's share of the event is this times the nodes."""
    base = windows.get("before_first_event", windows["run"])["_raw"]
    rate = base["cpu_s"] / base["node_seconds"] if base["node_seconds"] else 0.0
    span = int(round(EVENT_CPU_WINDOW_S / sample_s))
    for e in events:
        a = max(0, int(e["t"] / sample_s - 0.5))  # the last sample before the event
        b = min(n_samples - 1, a + span)
        if b <= a:
            continue
        w = _window(results, a, b, peers, sample_s)
        excess = w["_raw"]["cpu_s"] - rate * w["_raw"]["node_seconds"]
        e["cpu_ms_per_node"] = w["cpu_ms_per_node"] = round(1000 * excess / peers, 1)
        windows[f"after {e['event']}"] = w
        burst = min(n_samples - 1, a + int(round(BURST_WINDOW_S / sample_s)))
        if burst > a:
            windows[f"first {BURST_WINDOW_S:g} s after {e['event']}"] = _window(
                results, a, burst, peers, sample_s)


def _window(results: list[dict[str, Any]], a: int, b: int, peers: int,
            sample_s: float) -> dict[str, Any]:
    """Per node per second over samples (a, b]: counters are cumulative since t0, so sample a's
    values are the start (a = 0 counts from t0 when `a` is 0: the first half sample is in)."""
    seconds = (b - a) * sample_s if a > 0 else (b + 0.5) * sample_s
    def delta(key: str) -> float:
        # .get: runs kept from before a counter existed read it as 0
        return sum(r["samples"][b].get(key, 0) - (r["samples"][a].get(key, 0) if a > 0 else 0)
                   for r in results)
    per_worker_cpu = [(r["samples"][b]["cpu"] - (r["samples"][a]["cpu"] if a > 0 else 0))
                      / seconds for r in results]
    cpu = delta("cpu")
    rpcs = delta("rpcs")
    sampling = delta("sampling")
    out = {
        "seconds": round(seconds, 2),
        "cpu_core_per_node_pct": round(100 * cpu / seconds / peers, 3),
        "cpu_process_pct": [round(100 * c, 1) for c in per_worker_cpu],
        "rpcs_per_node_s": round(rpcs / seconds / peers, 3),
        "control_rpcs_per_node_s": round(delta("control") / seconds / peers, 3),
        "ihave_per_node_s": round(delta("ihave") / seconds / peers, 3),
        "copies_per_node_s": round(delta("copies") / seconds / peers, 3),
        "validated_per_node_s": round(delta("delivered") / seconds / peers, 3),
        "streams_per_node_s": round(delta("streams") / seconds / peers, 4),
        "syncs_deferred_per_node_s": round(delta("deferred") / seconds / peers, 4),
        "syncs_served_deferred_per_node_s": round(delta("served_deferred") / seconds / peers, 4),
        "published_per_node_s": round(delta("published") / seconds / peers, 4),
        "relay_frames_per_node_s": round(delta("relay_frames") / seconds / peers, 3),
        "relay_items_per_node_s": round(delta("relay_items") / seconds / peers, 3),
        # Items a node did not send a peer because that peer had sent them to it while they
        # waited for the batch (§8.5).
        "relay_spared_per_node_s": round(delta("relay_spared") / seconds / peers, 3),
        # Relay writes that failed (each tried again once on a fresh stream) and items a peer
        # never got from this node because its link failed twice.
        "relay_send_errors": delta("relay_errors"),
        "relay_items_dropped": delta("relay_dropped"),
        # Fresh changes a node got by sync and relayed on (§8.5's MAY: they had missed it).
        "relay_synced_passed_on": delta("relay_synced"),
        # Relay streams opened (a new mesh peer, or again after a failure): in a burst they
        # compete with it.
        "relay_streams_opened": delta("relay_opened"),
        "cpu_ms_per_rpc": round(1000 * cpu / rpcs, 3) if rpcs else None,
        "loop_lag_max_s": round(max(s["lag"] for r in results for s in r["samples"][a:b + 1]), 3),
        "gc_pause_max_s": round(max(s.get("gc", 0.0) for r in results
                                    for s in r["samples"][a:b + 1]), 3),
        # The cyclic collector's share of the nodes' CPU (both in process time) and its full
        # collections per process per minute.
        "gc_cpu_share": round(delta("gc_s") / cpu, 4) if cpu else None,
        "gc_full_per_process_min": round(60 * delta("gc_full") / seconds / len(results), 2),
        # The harness's own sampling (price reads, view reads) as a share of all the workers'
        # CPU in the window: not the nodes' CPU, but it runs on the same cores.
        "harness_cpu_share": round(sampling / (cpu + sampling), 4) if cpu + sampling else None,
    }
    # Deliveries expected: each message published in a sample interval, to every other node
    # alive then. Messages still in flight at the end of the window count as not delivered.
    expected = 0.0
    for k in range(a + 1 if a > 0 else 0, b + 1):
        published = sum(r["samples"][k]["published"] - (r["samples"][k - 1]["published"]
                                                        if k > 0 else 0) for r in results)
        live = sum(len(r["samples"][k]["rows"]) for r in results)
        expected += published * max(0, live - 1)
    out["delivery_ratio"] = round(delta("delivered") / expected, 4) if expected else None
    # Raw sums, for the fit.
    out["_raw"] = {"cpu_s": cpu, "rpcs": rpcs, "copies": delta("copies"),
                   "validated": delta("delivered"), "streams": delta("streams"),
                   "node_seconds": seconds * peers}
    return out


def _crash(results: list[dict[str, Any]], actions: list[dict[str, Any]],
           figs: dict[str, Any], market: Any, sample_s: float) -> list[dict[str, Any]]:
    """Per killed node: its own last announcement, whether every live node holds exactly that
    one (then every node stops counting it at the same signed instant, issued_at + timeout), and
    simnet/metrics.py's churn figure (when every node's supply stopped counting it)."""
    out = []
    churn = iter(figs["churn"])
    kills = {int(k): v for r in results for k, v in r["kills"].items()}
    for act in actions:
        if not act["kill"]:
            continue
        figure: dict[str, Any] = next(churn, {})
        for i in act["kill"]:
            held = {int(j): ms for r in results for j, ms in r["held_last"].get(str(i), {}).items()}
            own_s, own_ms = kills.get(i, (None, None))
            values = sorted(set(held.values()))
            counting = [(s["k"], sum(r["samples"][s["k"]].get("counting", {}).get(str(i), 0)
                                    for r in results))
                        for s in results[0]["samples"] if str(i) in s.get("counting", {})]
            last_counted = max((k for k, c in counting if c > 0), default=None)
            gone = [k for k, c in counting if c == 0 and (last_counted is None or k > last_counted)]
            out.append({"node": i, "killed_at_s": act["at"],
                        "last_announced_s": None if own_s is None else round(own_s, 3),
                        "signed_timeout_at_s": (None if own_s is None
                                                else round(own_s + market.capacity_timeout_s, 3)),
                        "live_nodes": len(held),
                        "distinct_last_held": len(values),
                        "all_hold_its_last": bool(held) and values == [own_ms],
                        "last_counted_at_s": (None if last_counted is None
                                              else (last_counted + 0.5) * sample_s),
                        "no_node_counts_from_s": (None if not gone
                                                  else (gone[0] + 0.5) * sample_s),
                        "stopped_counting_after_s": figure.get("stopped_counting_after_s"),
                        "first_node_after_s": figure.get("first_peer_after_s"),
                        "bound_after_s": figure.get("bound_after_s"),
                        "resolution_s": figure.get("resolution_s")})
    return out


#: An event's own announcements (`_arrivals`' `events`): gossiped ones issued from this long
#: before the event to EVENT_ISSUE_AFTER_S after it.
EVENT_ISSUE_BEFORE_S = 0.5
EVENT_ISSUE_AFTER_S = 2.0


def _arrivals(results: list[dict[str, Any]], t0: float, sample_s: float,
              market: Any, events: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """When each announcement reached each live node, from the view checks (`--views-every 1`
    makes that every sample): for every new announcement an announcer was seen to hold of its
    own, the first check at which each node held it (or a newer one), as seconds after its
    signed issued_at (an upper bound, `views_every` samples coarse). Split by whether it was
    gossiped or left to reconciliation (its announcer's `keep_alives_unpublished` grew). A
    node that gets an announcement later than the settle delay quotes another price meanwhile.
    Per capacity or demand event (`events`), the same for the gossiped announcements it caused
    (issued within EVENT_ISSUE_BEFORE_S before and EVENT_ISSUE_AFTER_S after it): how many,
    and when the median and the last of their arrivals came."""
    n_samples = min(len(r["samples"]) for r in results)
    checks = [k for k in range(n_samples)
              if all(r["samples"][k].get("views") is not None for r in results)]
    if len(checks) < 2:
        return {}
    announcers = results[0]["samples"][checks[0]]["views"]["announcers"]
    # Each announcer's own announcements, first seen at which check, and whether gossiped.
    seen: list[tuple[int, int, int, bool]] = []  # (announcer, issued_at_ms, check, gossiped)
    last: dict[int, tuple[int, int]] = {}
    for c, k in enumerate(checks):
        views = [r["samples"][k]["views"] for r in results]
        own = {int(i): ms for v in views for i, ms in v["own"].items()}
        quiet = {int(i): n for v in views for i, n in v.get("quiet", {}).items()}
        for a, ms in own.items():
            before = last.get(a)
            if before is not None and ms > before[0]:
                seen.append((a, ms, c, quiet.get(a, 0) == before[1]))
            last[a] = (ms, quiet.get(a, 0))
    column = {a: j for j, a in enumerate(announcers)}
    held_at: list[dict[int, list[int]]] = []  # per check: node -> held issued_at per announcer
    worker_of = {int(n): w for w, r in enumerate(results)
                 for n in r["samples"][checks[0]]["views"]["held"]}
    for k in checks:
        held_at.append({int(n): h for r in results
                        for n, h in r["samples"][k]["views"]["held"].items()})
    settle = market.settle_delay_s
    out: dict[str, Any] = {"checks": len(checks), "check_every_s": round(
        (checks[1] - checks[0]) * sample_s, 3), "settle_delay_s": settle}
    worst: list[tuple[float, int, int, float, bool]] = []
    event_delays: dict[int, list[float]] = {}
    # Per event announcement: (first arrival at another node, last arrival, announcer, last node)
    event_spread: dict[int, list[tuple[float, float, int, int]]] = {}
    event_node_last: dict[int, dict[int, float]] = {}  # per event: node -> its last arrival
    event_announcements: dict[int, int] = {}
    marked = [(k, e["t"]) for k, e in enumerate(events) if e.get("action") in ("capacity", "demand")]
    for gossiped in (True, False):
        delays: list[float] = []
        for a, ms, c, g in seen:
            if g is not gossiped or a not in column:
                continue
            j = column[a]
            issued = ms / 1000 - t0
            of_event = None if not gossiped else next(
                (k for k, t in marked
                 if t - EVENT_ISSUE_BEFORE_S <= issued < t + EVENT_ISSUE_AFTER_S), None)
            if of_event is not None:
                event_announcements[of_event] = event_announcements.get(of_event, 0) + 1
            first, latest, latest_node = math.inf, -1.0, -1
            for n in held_at[c]:
                for c2 in range(c, len(checks)):
                    row = held_at[c2].get(n)
                    if row is None:
                        break  # the node died
                    if row[j] >= ms:
                        at = t0 + (checks[c2] + 0.5) * sample_s
                        delay = max(0.0, at - ms / 1000)
                        delays.append(delay)
                        worst.append((delay, a, n, issued, g))
                        if of_event is not None:
                            event_delays.setdefault(of_event, []).append(delay)
                            mine = event_node_last.setdefault(of_event, {})
                            mine[n] = max(mine.get(n, 0.0), delay)
                            if n != a:
                                first = min(first, delay)
                                if delay > latest:
                                    latest, latest_node = delay, n
                        break
            if of_event is not None and latest_node >= 0:
                event_spread.setdefault(of_event, []).append((first, latest, a, latest_node))
        delays.sort()
        name = "gossiped" if gossiped else "reconciled"
        if delays:
            out[name] = {"arrivals": len(delays),
                         "p50_s": round(delays[len(delays) // 2], 3),
                         "p99_s": round(delays[min(len(delays) - 1, int(0.99 * len(delays)))], 3),
                         "max_s": round(delays[-1], 3),
                         "after_settle_delay": sum(1 for d in delays if d > settle + sample_s)}
    out["events"] = []
    for k, t in marked:
        ds = sorted(event_delays.get(k, []))
        entry: dict[str, Any] = {"event": events[k]["event"], "t": t,
                                 "announcements": event_announcements.get(k, 0),
                                 "arrivals": len(ds),
                                 "p50_s": round(ds[len(ds) // 2], 3) if ds else None,
                                 "max_s": round(ds[-1], 3) if ds else None}
        spread = event_spread.get(k)
        if spread:
            # Did the last arrival leave its publisher late, or spread slowly once out? The
            # first arrival at another node bounds when it left (both as coarse as the checks).
            firsts = sorted(f for f, _, _, _ in spread)
            first, latest, a, n = max(spread, key=lambda x: x[1])
            entry["first_p50_s"] = round(firsts[len(firsts) // 2], 3)
            entry["first_max_s"] = round(firsts[-1], 3)
            entry["spread_max_s"] = round(max(last - f for f, last, _, _ in spread), 3)
            entry["last"] = {"announcer": a, "announcer_worker": worker_of.get(a),
                             "node": n, "node_worker": worker_of.get(n),
                             "first_s": round(first, 3), "last_s": round(latest, 3)}
            # The nodes last to hold every one of the event's announcements, and their workers.
            complete = sorted(((d, m) for m, d in event_node_last.get(k, {}).items()),
                              reverse=True)[:5]
            entry["last_nodes"] = [[m, worker_of.get(m), round(d, 3)] for d, m in complete]
        out["events"].append(entry)
    worst.sort(reverse=True)
    out["latest"] = [{"delay_s": round(d, 3), "announcer": a, "node": n, "issued_at_s":
                      round(at, 3), "gossiped": g} for d, a, n, at, g in worst[:20]]
    return out


def _lag(results: list[dict[str, Any]], market: Any) -> dict[str, Any]:
    """How far behind views were at the lag checks: for every (node, announcer) pair, how much
    older the node's copy of the announcer's current announcement was than the announcer's own
    (0 when up to date); pairs whose copy had expired (or was missing) while the announcer lived
    are `expired_pairs`."""
    lags: list[float] = []
    expired = pairs = 0
    timeout_ms = market.capacity_timeout_s * 1000
    n_samples = min(len(r["samples"]) for r in results)
    for k in range(n_samples):
        views = [r["samples"][k].get("views") for r in results]
        if any(v is None for v in views):
            continue
        own = {int(i): ms for v in views for i, ms in v["own"].items()}
        announcers = views[0]["announcers"]
        for v in views:
            for _node, held in v["held"].items():
                for a, ms in zip(announcers, held):
                    if a not in own:
                        continue  # the announcer is dead (or has not announced)
                    pairs += 1
                    lag = max(0, own[a] - ms)
                    if ms == 0 or own[a] - ms >= timeout_ms:
                        expired += 1
                    lags.append(lag / 1000)
    if not lags:
        return {}
    lags.sort()
    return {"pairs": pairs, "p50_s": round(lags[len(lags) // 2], 3),
            "p99_s": round(lags[min(len(lags) - 1, int(0.99 * len(lags)))], 3),
            "max_s": round(lags[-1], 3), "expired_pairs": expired,
            "up_to_date_share": round(sum(1 for x in lags if x == 0) / len(lags), 4)}


def _as_dict(m: Measurement) -> dict[str, Any]:
    return {"scenario": m.scenario, "protocol": m.protocol, "peers": m.peers,
            "workers": m.workers, "duration_s": m.duration_s, "row": m.row,
            "windows": m.windows, "crash": m.crash, "lag": m.lag, "arrivals": m.arrivals,
            "events": m.figures["events"], "agreement": m.figures["agreement"],
            "churn": m.figures["churn"]}


# ------------------------------------------------------------------------------------------
# Output


TABLE_HEAD = ("| N | scenario | protocol | CPU % of a core per node | received RPCs /node/s | "
              "copies /node/s | validated /node/s | streams /node/s | ms CPU per RPC | "
              "loop lag max | delivery | view lag p99 / max | agree after event (max) |\n"
              "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def format_row(row: dict[str, Any]) -> str:
    agree = row.get("agree_after_event_max_s")
    never = row.get("events_never_agreed") or 0
    agree_text = ("—" if agree is None and not never else
                  f"{agree} s" + (f" ({never} never)" if never else ""))
    if row.get("agree_after_event_fine_max_s") is not None:
        agree_text += f" ({row['agree_after_event_fine_max_s']} s by {FINE_CHECK_S:g} s checks)"
    delivery = row.get("delivery_ratio")
    k = row.get("dilation", 1.0)
    scenario = row["scenario"] + (f" (clocks {k:g}x slower)" if k != 1.0 else "")
    return (f"| {row['peers']} | {scenario} | {row['protocol']} | "
            f"{row['cpu_core_per_node_pct']:.2f} | {row['rpcs_per_node_s']:.1f} | "
            f"{row['copies_per_node_s']:.1f} | {row['validated_per_node_s']:.2f} | "
            f"{row['streams_per_node_s']:.3f} | {row['cpu_ms_per_rpc']} | "
            f"{row['loop_lag_max_s']} s | "
            f"{'—' if delivery is None else f'{100 * delivery:.1f} %'} | "
            f"{row.get('view_lag_p99_s')} / {row.get('view_lag_max_s')} s | {agree_text} |")


def model_error(row: dict[str, Any]) -> dict[str, Any]:
    """The simulator's cost model (simnet/costs.py) applied to the counts a run measured
    (gossip RPCs read, stream ends), against the CPU it measured; with the machine's speed
    during the run (`row["calibration"]`, the mean calibration op) the costs are scaled by it
    against the speed they were fitted at (`speed_scale`), so a run on a slower moment of the
    machine is judged by what the same work costs then."""
    op = row.get("calibration", {}).get("mean_us")
    scale = op / CALIBRATION_OP_US if op else 1.0
    return {**COSTS.scaled(scale).judge(row["_raw"]), "speed_scale": round(scale, 4)}


def main(argv: Sequence[str]) -> int:  # the worker's entry (`python -m simnet.measure_real`)
    return worker_entry(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def node_share_kops(row: dict[str, Any], op_us: float | None) -> float | None:
    """A node's CPU per second of network time, in thousands of calibration ops: K × cores / N
    of a core (every clock K times slower gives each node K times the CPU per network second)
    over the op measured meanwhile. What decides whether 100 nodes on one machine agree within
    3 s after an event travels between machines in this unit (docs/scaling.md, 24th pass).
    None without the op or the machine's core count (runs before it was recorded)."""
    cpus = row.get("cpus")
    if not op_us or not cpus:
        return None
    return round(row.get("dilation", 1.0) * cpus / row["peers"] / (op_us * 1e-6) / 1000, 2)
