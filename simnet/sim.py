"""The simulated transport: a deterministic, discrete-event gossip network around real engines.

Every simulated peer holds a `neuroshard_p2p.node.engine.PeerEngine` — the validator, merged view,
announcer and sync of a real node, not a re-implementation — and the simulator only moves bytes
between them and tells them the time. Time is simulated: an engine is handed
`now = EPOCH + t + its clock offset`, never the machine's clock, so a run of 120 s of network time
takes whatever wall time the engines need, and the same seed gives the same run.

The network model:

- **Mesh.** A random graph in which every peer has about `degree` neighbours (gossipsub's mesh);
  it is repaired within `remesh_s` when peers die (neighbours below D−2 graft new ones), a
  joining peer grafts `degree` live peers, a partition rebuilds a mesh inside each group and
  healing rebuilds one over everybody.
- **Gossip.** A published announcement floods the mesh: each transmission takes a lognormal
  latency (`latency_median_ms`, `latency_sigma`) plus a per-hop processing delay and is lost with
  probability `loss`; a peer receives it at the earliest arrival over all paths (a shortest-path
  relaxation per message, vectorised with numpy). Every further copy a peer's mesh neighbours
  forward counts as a duplicate its gossip layer drops before validation, as gossipsub's seen-cache
  does. Honest announcements are assumed forwarded by every peer that receives them (they are
  valid); messages from hostile peers travel hop by hop and go on only from peers whose engine
  accepted them.
- **A peer's CPU** (`network.cpu_per_copy_ms`, `cpu_per_message_ms`; off by default). Each peer
  is one server taking its work in the order it arrives: every gossip copy costs it a copy's
  CPU, a first copy a message's too, and a message is held and forwarded once its first copy is
  done (no HOP_DELAY_S); honest floods go copy by copy (`_cpu_arrive`), so a burst of many
  announcements queues up (docs/scaling.md, "Nineteenth pass").
- **The bundled relay** (`network.relay_batch_ms` > 0, with the CPU model): honest changes go
  not by gossip but the way a network whose charter says so carries them, the relay of
  `simnet/burst_model.py` rule for rule (`_relay_publish`; the two agree to the float on one
  mesh, tests/test_sim_relay.py). A peer keeps one stream per mesh peer; what it newly holds
  (its own change, or items a frame brought) joins its out-list, sent to every live mesh peer
  of its group in one frame at max(now, last send + batch), once its CPU is free, one frame
  after the other (frame_out + item_out per item each); a frame is lost with `loss` (a stream
  would resend: pessimistic) and otherwise arrives one link latency later; the receiver reads
  it in arrival order (frame_in, item per new item, dup per held one) and hands the new items
  to its engine through the inbox as first gossip copies, author the origin (relay items are
  validated by gossip's rules but the author check, so honest verdicts are the same). Costs:
  `network.relay_*_ms`, by default burst_model's `RelayCosts` at the speed the gossip costs
  are fitted at, all multiplied by `relay_cost_scale` (×10 for 1,000 peers standing in for
  10,000, which overstates the relay's per-frame costs: a peer's frames do not shrink with the
  burst; ×50 for 1/50 of a core). Traffic: each announcement in a frame counts as a copy
  received (a held one as a duplicate); frames read per peer are `_relay_frames`; an item's
  `flood_reach` ends when the last frame or out-list holding it is done. Lazy gossip does not
  apply to relayed changes (a mesh change is healed by sync).
- **Lazy gossip.** When the mesh changes (repair after deaths, a partition, healing), the
  messages of the last `GOSSIP_WINDOW_S` reach the peers that missed them over the new mesh,
  one IHAVE/IWANT round trip later (gossipsub's mcache gossip; see `_regossip`).
- **Sync.** Every peer runs anti-entropy with a random mesh neighbour every `sync_interval_s`
  (NodeSettings), and with a neighbour when it joins or when a partition heals: request and
  response frames are the engines' own, each leg delayed by one link latency. With
  `reconcile` or `quiet_keep_alives` set, a sync is a sync/2.1.0 session instead: the node's own
  `ReconSession` on both sides, leg after leg (see `_recon_leg`), at the period the node
  derives from its view (`node.policy.periods`). A periodic sync due within
  `sync_gossip_quiet_s` of gossip the peer accepted waits for a lull, as a node's does
  (`node.policy.session_start`, `_sync_timer`).
- **Clocks.** Each peer's clock is off by a normal offset (`clock_skew_ms`).

Large networks: with `observers=K`, only K peers (chosen at random, and joiners at the same rate,
at least one per event) receive gossip and compute prices; all peers still announce and the mesh
still floods through all of them, so traffic figures stay whole. Reports say so. With
`flood="paths"` (observer samples only) a flood's arrivals at the observers are looked up in
`PATH_DRAWS` latency draws of the mesh precomputed backwards from them (`_spread_paths`).

Verifying the same signed bytes once per peer would cost 1,000× the CPU at 1,000 peers without
changing any outcome (decoding is a pure function of the bytes), so within a run the stateless
decode is memoised across peers: every engine's validator is given one `SharedDecoder`. Freshness, the
seen-cache, seq, rate and plausibility rules still run at every peer.

What the simulator itself costs, around the engine calls:

- **Inboxes, not one event per delivery.** Events (polls, sync legs, hostile messages, scenario
  actions, samples) sit in one time-ordered queue. An honest gossip delivery is not queued: it
  changes only the receiving engine and creates no event, so it waits in that peer's inbox and
  is handed over, in (arrival time, counter) order, just before anything else touches the peer
  (see `_flush`) and at the end of the run. That is the order one queue event per delivery gave,
  and no random draw depends on it, so a seed gives the same report as it did with one queue
  event per delivery (checked on every shipped scenario, with and without observers, when the
  inboxes came in). At 1,000 peers a 30 s shock makes 2.15 M deliveries; with the collector off
  in both, the queue version spent 14 s of a 91 s run outside the engines, the inboxes 4 s
  (all timings here with the engine of commit 1061cc2).
- **No cyclic GC during a run.** The engines' views are a large heap that lives as long as the
  run (~1.8 GB at 1,000 peers) and holds no reference cycles (dropping a network frees it all by
  reference counting), yet the collector kept walking it. The 1,000-peer 30 s shock took 69.5 s
  with the collector on, 69.6 s with `gc.freeze()` after building (the heap grows during the
  run), 55.3 s with young collections only (gen-2 threshold 10⁹) and 47–50 s with it off, at the
  same peak memory. So `run()` turns it off, and before turning it back on moves everything the
  run allocated to the oldest generation (`gc.freeze()` then `gc.unfreeze()`, O(1)): otherwise
  the first young collection after the run walks all of it (~5 s at 1,000 peers).
- **Several processes** (`workers`, the CLI's `--workers`, by default one per CPU from 200 peers
  on). Peers' engines are independent between events, so after building, the network forks:
  every process runs the same event loop with the same random draws, and peer v's engine work
  (its deliveries, polls, sync legs and samples) runs only in process v mod W. The few engine
  outputs the loop itself needs — the announcements a poll publishes and its next deadline, a
  sync request and its answer, a withdrawal, whether a hostile message got through — are
  computed by the owner and sent to the others through pipes in event order (`_shared`), so
  every process takes the same decisions. What the engines did (deliveries and outcomes per
  second, reasons, CPU, each peer's samples) is tallied per process and added up at the end
  (`_gather`). The report is the same for any W (`tests/test_simnet.py` checks W = 1, 2, 3
  field by field). What does not shrink with W is the network itself (the flood's shortest
  paths, the queue), which every process computes; and the views of all peers in one process
  still cost what they cost, spread over W heaps. With the CPU model the copy-by-copy (or
  frame-by-frame) network is most of a run and every process runs it, so W gains little
  (the CLI runs such a run in one process unless `--workers` says otherwise).
"""

from __future__ import annotations

import bisect
import collections
import gc
import hashlib
import heapq
import itertools
import math
import operator
import os
import pickle
import random
import select
import statistics
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import coincurve
import numpy as np

from neuroshard_p2p.charter import Charter, builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.money import to_nano
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.node.policy import periods, session_start
from neuroshard_p2p.node.reconcile import ReconSession
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.view import MarketView, SharedFacts
from neuroshard_p2p.wire import Message, WireError
from neuroshard_p2p.wire.frames import encode_sync, split_sync_response
from neuroshard_p2p.wire.messages import SyncRequest
from neuroshard_p2p.wire.validate import Decoder, decode_stateless

from simnet.attacks import (Attacker, SyncBudget, attack_identities, keep_alive_s,
                            reference_verdict)
from simnet.calibrate import time_calibration_op
from simnet.hostile import HostileCrafter
from simnet.identities import Identity, MembersNetwork, WorkedPool
from simnet.metrics import PeerSample, Recorder
from simnet.scenario import Event, Scenario

#: The simulated epoch: t = 0 of every run is this instant (2027-01-15), so runs are reproducible.
EPOCH = 1_800_000_000.0
#: Processing delay added to every gossip hop (py-libp2p spends 2–6 ms of CPU per hop).
HOP_DELAY_S = 0.003
#: Gossipsub's lazy-gossip window: message ids of the last 3 heartbeats of 1 s are offered
#: (IHAVE) to other peers (py-libp2p's gossip_history default).
GOSSIP_WINDOW_S = 3.0
#: Flood models (`SimNetwork(flood=...)`, `run --flood`), and the latency draws of "paths".
FLOOD_MODELS = ("exact", "paths")
PATH_DRAWS = 8
#: Calibration ops timed at each progress step (best of 3 rounds of this many: ~0.04 s).
CALIBRATION_STEP_OPS = 2_000
#: Tokens per pending request a demand peer announces (the view caps demand per request).
TOKENS_PER_REQUEST = 100_000

# Event kinds, ordered so that at equal times deliveries precede timers (deterministic anyway).
(_DELIVER, _POLL, _SYNC_TIMER, _SYNC_CONNECT, _SYNC_REQ, _SYNC_RESP, _HOSTILE, _SCENARIO, _REMESH,
 _SAMPLE, _ATTACK, _RECON, _SYNC_LULL, _RECON_OPEN) = range(14)

#: In the CPU model's heap, in place of a flood's number: a relay frame arrives, a send is due.
_RELAY_FRAME, _RELAY_SEND = -1, -2

_OUTCOME = operator.attrgetter("outcome")
_REASON = operator.attrgetter("reason")


def _relax(s: np.ndarray, d: np.ndarray, lat: np.ndarray, arrival: np.ndarray,
           sources: np.ndarray) -> np.ndarray:
    """Earliest arrivals over edges s[i] -> d[i] taking lat[i], from `arrival` (finite at
    `sources`): Bellman-Ford, relaxing only the edges out of peers whose arrival improved in
    the last round (numpy's unbuffered minimum.at keeps the per-destination minimum)."""
    changed = np.zeros(len(arrival), dtype=bool)
    changed[sources] = True
    for _ in range(64):
        e = np.flatnonzero(changed[s])
        if len(e) == 0:
            break
        improved = arrival.copy()
        np.minimum.at(improved, d[e], arrival[s[e]] + lat[e])
        changed = improved < arrival
        arrival = improved
    return arrival


@dataclass
class _EngineTally:
    """What the engines of one process did, recorded apart from the network's own figures so
    that the processes of a parallel run (see `SimNetwork` `workers`) can be added up."""

    cpu_s: float = 0.0                 # inside engine calls
    messages: int = 0                  # gossip messages handed to engines
    reasons: Counter[str] = field(default_factory=Counter)
    # second → [delivered, accepted, rejected, ignored, sync announcements]
    traffic: dict[int, list[int]] = field(default_factory=dict)
    samples: list[list[PeerSample]] = field(default_factory=list)  # per sample: our peers' rows
    process_cpu_s: float = 0.0         # the whole process, for a worker's share of the run
    wait_s: float = 0.0                # blocked, waiting for another process's value
    ahead: int = 0                     # of `messages`, handed over while waiting (`_work_ahead`)
    attack: Counter[str] = field(default_factory=Counter)  # what attacks cost our engines
    # At the end: our live observed peers' views, the signers and announcements they hold.
    views: int = 0
    view_signers: int = 0
    view_announcements: int = 0
    # Per kill event (its index in the recorder's events): [live peer × dead signer pairs
    # checked, pairs whose view stops counting the dead signer exactly at its last signed
    # announcement's issued_at + capacity_timeout] (see `_check_crash_timeouts`).
    crash_timeouts: dict[int, list[int]] = field(default_factory=dict)

    def second(self, t: float) -> list[int]:
        index = max(0, int(t))   # the bucket rule of Recorder.second
        row = self.traffic.get(index)
        if row is None:
            row = self.traffic[index] = [0, 0, 0, 0, 0]
        return row


class _Exchange:
    """One-way pipes between every two processes of a parallel run. Every process runs the same
    event loop; a value only one of them can compute (its own peer's engine output) is sent by
    that process to all the others, in event order, so each reads it at the same event.

    Reads are buffered here, not by a file object, so that `ready` can tell without blocking
    whether a sender's next value has arrived: a process waiting for one does other work first
    (`SimNetwork._shared`)."""

    _HEADER = 8
    _CHUNK = 1 << 20

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.rank = 0
        self._fds = {(a, b): os.pipe() for a in range(workers) for b in range(workers) if a != b}
        for read_fd, write_fd in self._fds.values():
            try:  # a larger pipe lets the sender run further ahead (Linux; best effort)
                import fcntl
                fcntl.fcntl(write_fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
            except (ImportError, OSError):
                pass
        self._out: dict[int, Any] = {}
        self._in: dict[int, int] = {}
        self._buf: dict[int, bytearray] = {}
        self._pos: dict[int, int] = {}

    def attach(self, rank: int) -> None:
        """Keep this process's ends (rank `rank`), close the rest."""
        self.rank = rank
        for (a, b), (read_fd, write_fd) in self._fds.items():
            if a == rank:
                os.close(read_fd)
                self._out[b] = os.fdopen(write_fd, "wb", buffering=1 << 16)
            elif b == rank:
                os.close(write_fd)
                self._in[a] = read_fd
                self._buf[a] = bytearray()
                self._pos[a] = 0
            else:
                os.close(read_fd)
                os.close(write_fd)
        self._fds = {}

    def send(self, value: Any, to: int | None = None) -> None:
        data = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
        frame = len(data).to_bytes(self._HEADER, "big") + data
        for rank, out in self._out.items():
            if to is None or rank == to:
                out.write(frame)
                out.flush()

    def _complete(self, sender: int) -> int:
        """The size of the sender's next value if all of it is buffered, else -1."""
        buf, pos = self._buf[sender], self._pos[sender]
        if len(buf) - pos < self._HEADER:
            return -1
        size = int.from_bytes(buf[pos:pos + self._HEADER], "big")
        return size if len(buf) - pos - self._HEADER >= size else -1

    def _read(self, sender: int, block: bool) -> bool:
        """Buffer what the sender's pipe holds (waiting for some if `block`); False if nothing
        was there to read without waiting."""
        fd = self._in[sender]
        if not block and not select.select([fd], [], [], 0)[0]:
            return False
        chunk = os.read(fd, self._CHUNK)
        if not chunk:
            raise RuntimeError(f"simulation worker {sender} stopped before the run ended "
                               "(its error is on stderr)")
        buf, pos = self._buf[sender], self._pos[sender]
        if pos and pos * 2 >= len(buf):
            del buf[:pos]
            self._pos[sender] = 0
        buf += chunk
        return True

    def ready(self, sender: int) -> bool:
        """Whether `receive(sender)` would return without waiting."""
        return self._complete(sender) >= 0 or (self._read(sender, block=False)
                                               and self._complete(sender) >= 0)

    def receive(self, sender: int) -> Any:
        size = self._complete(sender)
        while size < 0:
            self._read(sender, block=True)
            size = self._complete(sender)
        buf = self._buf[sender]
        start = self._pos[sender] + self._HEADER
        with memoryview(buf) as whole, whole[start:start + size] as data:
            value = pickle.loads(data)
        self._pos[sender] = start + size
        return value

    def close(self) -> None:
        for f in self._out.values():
            try:
                f.close()
            except OSError:
                pass
        for fd in self._in.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self._out, self._in, self._buf, self._pos = {}, {}, {}, {}


@dataclass
class SimPeer:
    """One simulated peer: its engine, its place in the network and what it announces."""

    index: int
    engine: PeerEngine
    peer_bytes: bytes             # the raw libp2p peer id (gossip `from`)
    skew: float                   # clock offset, seconds
    role: str                     # provider | demand | idle | hostile
    capacity: int = 0
    demand: int = 0
    alive: bool = True
    observed: bool = True
    group: int = 0
    last_announced: float | None = None   # network time of its newest announcement
    last_gossip: float | None = None      # network time of the last gossip its engine accepted
    poll_at: float | None = None          # when the next poll is scheduled
    poll_version: int = 0                 # polls scheduled before a sooner one are void
    hostile: HostileCrafter | None = None

    def now(self, t: float) -> float:
        return EPOCH + t + self.skew


@dataclass
class _SimAttack:
    """A running attack (scenario action `attack`): the attacker, the honest peers it is
    connected to, and random generators of its own, so that the honest part of an attacked run
    draws exactly what the honest run draws (the deviation is then the attack's alone)."""

    number: int
    event: Event
    attacker: Attacker
    entries: list[int]
    rng: random.Random
    np_rng: np.random.Generator
    verdicts: Counter[str] = field(default_factory=Counter)   # reference verdicts of what it sent
    budgets: dict[int, SyncBudget] = field(default_factory=dict)
    pulls: int = 0


class SharedDecoder:
    """The wire's stateless decode (envelope, fields, signature), memoised across all engines of
    this network: every engine's `Validator` is given this as its `decode`. The same bytes always
    decode to the same message, so this changes no outcome; every stateful and time rule still
    runs at every peer. Failures are not memoised (they are rare and each is counted at every
    peer anyway). At most `max_entries` messages are kept (the oldest quarter goes when full)."""

    def __init__(self, decode: Decoder = decode_stateless, max_entries: int = 200_000) -> None:
        self._decode = decode
        self.max_entries = max_entries
        self.cache: dict[bytes, Message] = {}

    def __call__(self, data: Any, msg_id: bytes | None) -> Message:
        cache = self.cache
        if type(data) is bytes:
            hit = cache.get(data)
            if hit is not None:
                return hit
        message = self._decode(data, msg_id)
        if type(data) is bytes:
            if len(cache) >= self.max_entries:
                for old in list(cache)[: self.max_entries // 4]:
                    del cache[old]
            cache[data] = message
        return message


def peer_key(seed: int, index: int, salt: bytes = b"peer") -> coincurve.PrivateKey:
    """The deterministic key of simulated peer `index` under `seed`."""
    secret = hashlib.sha256(b"neuroshard-simnet/" + salt + b"/%d/%d" % (seed, index)).digest()
    return coincurve.PrivateKey(secret)


def simnet_charter(market: MarketConfig, name: str = "simnet") -> Charter:
    """The built-in simnet charter (no identity work) around a scenario's market values."""
    return builtin("simnet").replace(market=market, name=name)


def node_settings(scenario: Scenario, market: MarketConfig) -> NodeSettings:
    """The scenario's [node] table checked by the node's own settings rules, on the simnet
    charter around the scenario's market."""
    return NodeSettings.from_mapping(dict(scenario.node), data_dir=Path("."),
                                     charter=simnet_charter(market))


class SimNetwork:
    """One simulated run of a scenario. Build it, call `run()`, read `recorder`."""

    def __init__(self, scenario: Scenario, peers: int, *, seed: int = 1,
                 sample_s: float | None = None, observers: int | None = None,
                 record_digests: bool | None = None,
                 progress: Callable[[str], None] | None = None,
                 progress_every_s: float = 5.0, start_spread_s: float | None = None,
                 workers: int = 1, flood: str = "exact") -> None:
        if peers < 2:
            raise ValueError("a network needs at least 2 peers")
        if workers < 1:
            raise ValueError("workers must be >= 1")
        if flood not in FLOOD_MODELS:
            raise ValueError(f"flood must be one of {', '.join(FLOOD_MODELS)}")
        if flood == "paths" and (observers is None or observers >= peers):
            raise ValueError("the paths flood model needs observers (fewer than the peers)")
        if scenario.network.cpu_modelled and flood != "exact":
            raise ValueError("network.cpu_per_copy_ms and cpu_per_message_ms need the exact "
                             "flood model")
        self.scenario = scenario
        self.market = scenario.market_config()
        self.settings = node_settings(scenario, self.market)
        self.net = scenario.network
        self.n_initial = peers
        self.seed = seed
        self.rng = random.Random(seed)
        #: Which peers an event picks (kill, stop, capacity, partition groups) is drawn from its
        #: own stream, so that runs of one seed that differ in their traffic (e.g. keep-alives
        #: by gossip or by reconciliation, which draw link latencies differently) still kill,
        #: stop and split the same peers, and their prices can be compared sample by sample.
        self.event_rng = random.Random(f"{seed}/events")
        self.np_rng = np.random.default_rng(seed)
        self.sample_s = sample_s or self.market.tick_s
        self.observers_wanted = observers if observers is not None and observers < peers else None
        if record_digests is None:
            record_digests = any(e.action == "heal" for e in scenario.events)
        self.record_digests = record_digests
        self.progress = progress
        self.progress_every_s = progress_every_s
        #: Peers start (and first announce) uniformly over this many seconds; keep-alives keep
        #: that phase. Default: min(announce interval, 5 s, a tenth of the run).
        self.start_spread_s = start_spread_s
        self.recorder = Recorder(scenario.name, "sim", self.market, self.sample_s)
        self.peers: list[SimPeer] = []
        #: Every engine's validator decodes through this one memo (see `SharedDecoder`).
        self.decoder = SharedDecoder()
        #: … and every view memoises what it derives from one announcement alone in this one
        #: (its weight, its id as an integer; see `SharedFacts`).
        self.facts = SharedFacts(self.market)
        self.neighbours: list[set[int]] = []
        self._queue: list[tuple[float, int, int, Any]] = []
        self._counter = 0
        # Per peer: honest gossip deliveries not yet handed to its engine, as
        # (arrival time, counter, wire, author) — see `_flush`.
        self._inbox: list[list[tuple[float, int, bytes, bytes]]] = []
        self._edges_dirty = True
        self._src = np.zeros(0, dtype=np.int64)
        self._dst = np.zeros(0, dtype=np.int64)
        self._captured: list[bytes] = []
        # Honest announcements published in the last settle delay, as (t, signer, msg_id): still
        # in flight, so left out of the digests samples record (see `_sample`).
        self._in_flight: collections.deque[tuple[float, bytes, bytes]] = collections.deque()
        # Floods of the last GOSSIP_WINDOW_S: (t, wire, author, who has it) — see `_regossip`.
        self._recent_floods: collections.deque[tuple[float, bytes, bytes,
                                                      np.ndarray | set[int]]] = \
            collections.deque()
        self._received = np.zeros(1024, dtype=np.int64)   # copies received, per peer
        self._spread_last = 0.0   # the last `_spread`'s latest arrival after its start (s)
        #: With network.cpu_per_copy_ms / cpu_per_message_ms: every honest flood travels copy by
        #: copy through each peer's CPU (see `_cpu_arrive`). Copies in flight as (arrival, seq,
        #: peer, flood, sender), floods in flight by number as [wire, author, origin, held
        #: (the set of peers), copies in flight, published at, last held at], and when each
        #: peer's CPU is next free.
        self._cpu = self.net.cpu_modelled
        self._cpu_copy_s = self.net.cpu_per_copy_ms / 1000.0
        self._cpu_message_s = self.net.cpu_per_message_ms / 1000.0
        self._cpu_copies: list[tuple[float, int, int, int, int]] = []
        self._cpu_floods: dict[int, list[Any]] = {}
        self._cpu_busy: dict[int, float] = {}
        self._cpu_seq = 0
        self._cpu_rng = random.Random(f"{seed}/cpu")
        #: With network.relay_batch_ms as well: honest changes travel by the bundled relay (see
        #: `_relay_publish`). Items (one per relayed announcement) by number: (wire, author)
        #: while in flight, [published at, last held at], references (out-lists and frames in
        #: flight that hold it); who holds what, as [peer, item]; each peer's out-list and when
        #: it last sent; frames each peer read. Frames share the one event heap with gossip
        #: copies (kind _RELAY_FRAME or _RELAY_SEND in place of a flood's number).
        self._relay = self.net.relay if self._cpu else None
        self._relay_batch_s = self.net.relay_batch_ms / 1000.0
        self._relay_items: list[tuple[bytes, bytes] | None] = []
        self._relay_reach = np.zeros((0, 2))
        self._relay_refs = np.zeros(0, dtype=np.int64)
        self._relay_held = np.zeros((0, 0), dtype=bool)
        self._relay_out: dict[int, list[np.ndarray]] = {}
        self._relay_last_send: dict[int, float] = {}
        self._relay_frames = np.zeros(0, dtype=np.int64)
        # Peers whose engines receive gossip (None: all of them).
        self._observer_index: np.ndarray | None = None
        #: How an honest flood's arrivals are computed (see `_spread_paths`): "exact" relaxes
        #: every edge with fresh latencies per message; "paths" looks the observers' arrivals
        #: up in PATH_DRAWS precomputed latency draws of the whole mesh.
        self.flood = flood
        self._edges_version = 0
        self._paths: tuple[Any, ...] | None = None
        self._killed_last: list[SimPeer] = []
        self._partitioned = False
        self._groups_before_heal: dict[int, int] = {}
        self.t = 0.0
        self._ahead_next = 0   # where `_work_ahead` goes on
        self._lat_mu = math.log(self.net.latency_median_ms / 1000.0)
        self._sync_s = self.settings.sync_interval_s
        #: sync/2.1.0 (range-based reconciliation, protocol §8.4) instead of 2.0.0's pull, as a
        #: node with `reconcile` or `quiet_keep_alives` speaks it to a peer that does too (every
        #: simulated peer has the same settings). Sessions by (session number, peer): a side
        #: lives in the process that runs its peer's engine, as [session, it closed, the other
        #: side closed]; see `_recon_leg`.
        self._reconciles = self.settings.reconcile or self.settings.quiet_keep_alives
        self._recon_sessions: dict[tuple[int, int], list[Any]] = {}
        self._recon_next = 0
        #: Processes the run is spread over (see `_fork`); peer v's engine runs in process
        #: v % workers, every process runs the whole network.
        self.workers = workers
        self.rank = 0
        self._exchange: _Exchange | None = None
        self._children: list[int] = []
        self._tally = _EngineTally()
        self._sample_points: list[tuple[float, tuple[int, int, int]]] = []
        #: A members network: the simulator is its authority; honest peers hold credentials.
        self.members = (MembersNetwork(self.market, seed, epoch=EPOCH,
                                       lifetime_s=scenario.duration_s)
                        if scenario.admission == "members" else None)
        self.admission = self.members.admission if self.members is not None else None
        #: The work ramp: peers that announce use worked keys (simnet.identities).
        self.worked = WorkedPool(self.market.identity_work_bits)
        self._attacks: list[_SimAttack] = []
        #: Each peer's newest published announcement (for `_check_crash_timeouts`).
        self._last_wire: dict[int, bytes] = {}
        #: Seconds per calibration op, timed before the run, at every progress step and after.
        self._calibrations: list[float] = []

    # ------------------------------------------------------------------ building

    def _new_peer(self, role: str, t: float, *, observed: bool = True,
                  group: int = 0) -> SimPeer:
        index = len(self.peers)
        identity: Identity | None = None
        if role in ("provider", "demand") and self.market.identity_work_bits > 0:
            identity = self.worked.honest()  # an honest node that did its identity work
            key = identity.key
        else:
            key = peer_key(self.seed, index, b"hostile" if role == "hostile" else b"peer")
        setup = self.scenario.peers
        capacity = setup.capacity if role == "provider" else 0
        engine = PeerEngine(self.market, key, tokens_per_second=capacity,
                            view=MarketView(self.market, facts=self.facts),
                            min_price_nano=to_nano(setup.ask_of(index)) if capacity else 0,
                            announce_interval_s=self.settings.announce_interval_s,
                            decode=self.decoder, admission=self.admission,
                            quiet_keep_alives=self.settings.quiet_keep_alives)
        if identity is not None:
            engine.set_work_nonce(identity.work_nonce)
        if self.members is not None and role != "hostile":
            engine.set_credential(self.members.credential(engine.signer))
        skew = self.rng.gauss(0.0, self.net.clock_skew_ms / 1000.0)
        peer = SimPeer(index, engine, bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21]) + engine.signer,
                       skew, role, capacity=capacity, observed=observed, group=group)
        self.peers.append(peer)
        self.neighbours.append(set())
        self._inbox.append([])
        if len(self._received) < len(self.peers):
            self._received = np.concatenate([self._received, np.zeros(1024, dtype=np.int64)])
        if observed and self._observer_index is not None and role != "hostile":
            self._observer_index = np.append(self._observer_index, index)
        recorded = self.recorder.add_peer(engine.peer_id, t, hostile=role == "hostile")
        assert recorded == index, "recorder and simulator number peers alike"
        return peer

    def _set_demand(self, peer: SimPeer, tokens: int) -> None:
        peer.demand = max(0, int(tokens))
        requests = max(1, math.ceil(peer.demand / TOKENS_PER_REQUEST)) if peer.demand else 0
        peer.engine.set_demand(peer.demand, requests)

    def _build(self) -> None:
        n = self.n_initial
        setup = self.scenario.peers
        providers, demand = setup.assign(n, self.rng)
        observed: set[int] | None = None
        if self.observers_wanted is not None:
            observed = set(self.rng.sample(range(n), self.observers_wanted))
            self.recorder.observers = sorted(observed)
            self._observer_index = np.zeros(0, dtype=np.int64)
        for i in range(n):
            role = "provider" if i in providers else ("demand" if i in demand else "idle")
            self._new_peer(role, 0.0, observed=observed is None or i in observed)
        total_supply = sum(p.capacity for p in self.peers)
        total_demand = setup.utilization * self.market.target_response_s * total_supply
        demand_peers = [p for p in self.peers if p.index in demand]
        for p in demand_peers:
            self._set_demand(p, round(total_demand / len(demand_peers)))
            if p.role == "idle":
                p.role = "demand"
        self._mesh_all(list(range(n)))
        # Peers start over the first seconds (not all in the same millisecond), each announcing
        # as it starts.
        spread = self.start_spread_s
        if spread is None:
            spread = min(self.settings.announce_interval_s, 5.0, self.scenario.duration_s / 10)
        for p in self.peers:
            self._schedule_poll(p, self.rng.uniform(0.0, spread))
            self._schedule(self.rng.uniform(0.0, self._sync_s), _SYNC_TIMER, p.index)

    # ------------------------------------------------------------------ mesh

    def _mesh_all(self, members: list[int]) -> None:
        """A random graph of degree about D over `members` (configuration model, no loops or
        double edges)."""
        d = self.net.degree
        for v in members:
            for u in self.neighbours[v]:
                self.neighbours[u].discard(v)
            self.neighbours[v] = set()
        if len(members) < 2:
            return
        stubs = [v for v in members for _ in range(min(d, len(members) - 1))]
        self.rng.shuffle(stubs)
        for a, b in zip(stubs[::2], stubs[1::2]):
            if a != b:
                self.neighbours[a].add(b)
                self.neighbours[b].add(a)
        # Top up peers the pairing left short (self-pairs, repeats).
        for v in members:
            self._graft(v, members)
        self._edges_dirty = True

    def _graft(self, v: int, members: list[int], want: int | None = None) -> list[int]:
        want = self.net.degree if want is None else want
        added = []
        tries = 0
        while len(self.neighbours[v]) < min(want, len(members) - 1) and tries < 20 * want:
            tries += 1
            u = members[self.rng.randrange(len(members))]
            if u != v and u not in self.neighbours[v]:
                self.neighbours[v].add(u)
                self.neighbours[u].add(v)
                added.append(u)
        self._edges_dirty = True
        return added

    def _live_members(self, group: int | None = None) -> list[int]:
        return [p.index for p in self.peers
                if p.alive and p.role != "hostile" and (group is None or p.group == group)]

    def _edges(self) -> tuple[np.ndarray, np.ndarray]:
        if self._edges_dirty:
            src, dst = [], []
            for v, ns in enumerate(self.neighbours):
                if not self.peers[v].alive:
                    continue
                for u in sorted(ns):
                    if self.peers[u].alive and self.peers[u].group == self.peers[v].group:
                        src.append(v)
                        dst.append(u)
            # Edges in (destination, source) order: each flood draws one latency per edge in
            # this order, so the order is part of what a seed reproduces.
            order = sorted(range(len(src)), key=lambda i: (dst[i], src[i]))
            self._src = np.array([src[i] for i in order], dtype=np.int64)
            self._dst = np.array([dst[i] for i in order], dtype=np.int64)
            self._edges_dirty = False
            self._edges_version += 1
        return self._src, self._dst

    # ------------------------------------------------------------------ processes

    def _mine(self, v: int) -> bool:
        """Whether peer v's engine runs in this process."""
        return v % self.workers == self.rank

    def _shared(self, v: int, compute: Callable[[], Any]) -> Any:
        """The value `compute` (a call on peer v's engine) gives, in every process: computed
        where v's engine runs and sent to the others, which read it at this same event."""
        exchange = self._exchange
        if exchange is None:
            return compute()
        owner = v % self.workers
        if owner == self.rank:
            value = compute()
            exchange.send(value)
            return value
        if not exchange.ready(owner):
            self._work_ahead(exchange, owner)
            started = time.perf_counter()
            value = exchange.receive(owner)
            self._tally.wait_s += time.perf_counter() - started
            return value
        return exchange.receive(owner)

    def _work_ahead(self, exchange: _Exchange, owner: int) -> None:
        """While this process waits for a value from `owner`: hand this process's peers the
        deliveries they will be handed anyway (those that arrived before now) until the value
        is there or none is left. A delivery before the current event's time precedes every
        event still to come, so handing it over now leaves every engine where the event order
        puts it (`_flush`); only when, not what, changes."""
        inbox = self._inbox
        n = len(inbox)
        workers = self.workers
        bound = (self.t,)
        v = self._ahead_next
        if v >= n:
            v = self.rank
        idle = 0
        mine = (n - self.rank + workers - 1) // workers
        while idle < mine:
            box = inbox[v]
            handed = self._flush(v, bound) if box else 0
            if handed:
                self._tally.ahead += handed
                idle = 0
                if exchange.ready(owner):
                    break
            else:
                idle += 1
                if idle % 32 == 0 and exchange.ready(owner):
                    break
            v += workers
            if v >= n:
                v = self.rank
        self._ahead_next = v

    # ------------------------------------------------------------------ queue

    def _schedule(self, t: float, kind: int, *payload: Any) -> None:
        self._counter += 1
        heapq.heappush(self._queue, (t, kind, self._counter, payload))

    def _schedule_poll(self, peer: SimPeer, t: float) -> None:
        if peer.poll_at is not None and peer.poll_at <= t:
            return
        peer.poll_at = t
        peer.poll_version += 1
        self._schedule(t, _POLL, peer.index, peer.poll_version)

    def _latency(self) -> float:
        return math.exp(self._lat_mu + self.net.latency_sigma * self.rng.gauss(0.0, 1.0)) \
            + HOP_DELAY_S

    # ------------------------------------------------------------------ gossip

    def _flood(self, origin: int, t: float, wire: bytes) -> None:
        """Deliver an honest announcement published by `origin` at t over the mesh."""
        traffic = self.recorder.second(t)
        traffic.published += 1
        self.recorder.peer_published[origin] += 1
        if self.record_digests:
            self._in_flight.append((t, self.peers[origin].engine.signer,
                                    hashlib.sha256(wire).digest()))
        have: np.ndarray | set[int]
        if self.flood == "paths":
            have = self._spread_paths(t, wire, self.peers[origin].peer_bytes, origin)
        elif self._relay is not None:
            # A relayed change is in no gossip mcache: mesh changes do not regossip it (see
            # `_regossip`); the peers a changed mesh left without it get it by sync.
            self._relay_publish(origin, t, wire)
            return
        elif self._cpu:
            have = self._cpu_publish(origin, t, wire)
        else:
            have = self._spread(t, wire, self.peers[origin].peer_bytes, np.array([origin]),
                                None, 0.0)
            self.recorder.flood_reach.append((t, t + self._spread_last))
        recent = self._recent_floods
        recent.append((t, wire, self.peers[origin].peer_bytes, have))
        while recent and recent[0][0] <= t - GOSSIP_WINDOW_S:
            recent.popleft()

    def _cpu_publish(self, origin: int, t: float, wire: bytes) -> set[int]:
        """An honest flood with the peers' CPU modelled: the origin sends to its mesh at t.
        Returns who holds it, the flood's own set (it fills as the copies are processed; peers
        that join meanwhile can get it too)."""
        held = {origin}
        number = self._cpu_seq
        self._cpu_seq += 1
        flood = [wire, self.peers[origin].peer_bytes, origin, held, 0, t, t]
        self._cpu_floods[number] = flood
        self._cpu_forward(number, flood, origin, -1, t)
        return held

    def _cpu_forward(self, number: int, flood: list[Any], v: int, parent: int,
                     t: float) -> None:
        """Peer v sends flood `number` at t to every live mesh neighbour in its group but the
        one it came from and its origin; each copy is lost with network.loss and otherwise
        arrives one link latency later (no HOP_DELAY_S: the receiver's CPU is modelled)."""
        peers, rng, loss = self.peers, self._cpu_rng, self.net.loss
        group, origin = peers[v].group, flood[2]
        mu, sigma = self._lat_mu, self.net.latency_sigma
        for w in sorted(self.neighbours[v]):
            if w == parent or w == origin or not peers[w].alive or peers[w].group != group:
                continue
            if loss > 0 and rng.random() < loss:
                continue
            self._counter += 1
            heapq.heappush(self._cpu_copies, (t + math.exp(mu + sigma * rng.gauss(0.0, 1.0)),
                                              self._counter, w, number, v))
            flood[4] += 1

    def _cpu_advance(self, until: float) -> None:
        """Process every copy that arrives by `until`, in arrival order."""
        copies = self._cpu_copies
        while copies and copies[0][0] <= until:
            at, _, v, number, payload = heapq.heappop(copies)
            if number >= 0:
                self._cpu_arrive(at, v, number, payload)
            elif number == _RELAY_FRAME:
                self._relay_frame(at, v, payload)
            else:
                self._relay_send(at, v)

    def _cpu_arrive(self, at: float, v: int, number: int, sender: int) -> None:
        """A copy of flood `number` reaches peer v at `at`: v takes it once its CPU is free
        (copies in the order they arrive), for cpu_per_copy_ms, plus cpu_per_message_ms if it
        is the first. A first copy is handed to v's engine and forwarded when done; the others
        are duplicates."""
        flood = self._cpu_floods[number]
        flood[4] -= 1
        if self.peers[v].alive:
            self._received[v] += 1
            held = flood[3]
            first = v not in held
            done = max(at, self._cpu_busy.get(v, 0.0)) + self._cpu_copy_s \
                + (self._cpu_message_s if first else 0.0)
            self._cpu_busy[v] = done
            if first:
                held.add(v)
                flood[6] = max(flood[6], done)
                obs = self._observer_index
                if obs is not None and not self.peers[v].observed:
                    self.recorder.second(at).delivered += 1
                elif self._mine(v):
                    self._counter += 1
                    self._inbox[v].append((done, self._counter, flood[0], flood[1]))
                self._cpu_forward(number, flood, v, sender, done)
            else:
                self.recorder.second(at).duplicates += 1
        if flood[4] == 0:
            del self._cpu_floods[number]
            self.recorder.flood_reach.append((flood[5], flood[6]))

    def _relay_publish(self, origin: int, t: float, wire: bytes) -> None:
        """An honest change carried by the bundled relay (network.relay_batch_ms; the relay of
        simnet/burst_model.py, rule for rule): every peer keeps one stream per mesh peer, and
        what it newly holds — its own change, or an item a frame brought it — joins its
        out-list, sent to every live mesh peer of its group in one frame, at the earliest one
        batch interval after its last send (at once if that is past)."""
        item = len(self._relay_items)
        self._relay_grow(len(self.peers), item + 1)
        self._relay_items.append((wire, self.peers[origin].peer_bytes))
        self._relay_held[origin, item] = True
        self._relay_reach[item] = t
        self._relay_queue(origin, np.array([item], dtype=np.int64), t)

    def _relay_grow(self, peers: int, items: int) -> None:
        """Room in the relay's tables for this many peers and items (doubling)."""
        rows, cols = self._relay_held.shape
        if peers <= rows and items <= cols:
            return
        if peers > rows:
            rows = (peers + 1023) // 1024 * 1024
        if items > cols:
            cols = max(items, 2 * cols, 1024)
        held = np.zeros((rows, cols), dtype=bool)
        held[: self._relay_held.shape[0], : self._relay_held.shape[1]] = self._relay_held
        self._relay_held = held
        self._relay_reach = np.concatenate([self._relay_reach,
                                            np.zeros((cols - len(self._relay_reach), 2))])
        self._relay_refs = np.concatenate([self._relay_refs,
                                           np.zeros(cols - len(self._relay_refs), np.int64)])
        self._relay_frames = np.concatenate([self._relay_frames,
                                             np.zeros(rows - len(self._relay_frames), np.int64)])

    def _relay_queue(self, v: int, items: np.ndarray, t: float) -> None:
        """`items` join v's out-list at t; a send is due at max(t, last send + batch)."""
        self._relay_refs[items] += 1
        out = self._relay_out.get(v)
        if out is not None:
            out.append(items)
            return
        self._relay_out[v] = [items]
        due = max(t, self._relay_last_send.get(v, -math.inf) + self._relay_batch_s)
        self._counter += 1
        heapq.heappush(self._cpu_copies, (due, self._counter, v, _RELAY_SEND, None))

    def _relay_send(self, at: float, v: int) -> None:
        """v's send is due at `at`: once its CPU is free it writes its out-list to each live
        mesh peer of its group in turn (frame_out + item_out per item, each frame leaving when
        written); each frame is lost with network.loss and otherwise arrives one link latency
        later (the draws of `_cpu_forward`). A dead peer's out-list is dropped."""
        items = np.concatenate(self._relay_out.pop(v))
        peers = self.peers
        sent = 0
        if peers[v].alive:
            costs, rng, loss = self._relay, self._cpu_rng, self.net.loss
            assert costs is not None
            mu, sigma, group = self._lat_mu, self.net.latency_sigma, peers[v].group
            start = max(at, self._cpu_busy.get(v, 0.0))
            self._relay_last_send[v] = start
            per_frame = costs.frame_out_s + len(items) * costs.item_out_s
            t = start
            for w in sorted(self.neighbours[v]):
                if not peers[w].alive or peers[w].group != group:
                    continue
                t += per_frame
                if loss > 0 and rng.random() < loss:
                    continue
                self._counter += 1
                heapq.heappush(self._cpu_copies, (t + math.exp(mu + sigma * rng.gauss(0.0, 1.0)),
                                                  self._counter, w, _RELAY_FRAME, items))
                sent += 1
            self._cpu_busy[v] = t
        self._relay_refs[items] += sent
        self._relay_drop(items)

    def _relay_frame(self, at: float, v: int, frame: np.ndarray) -> None:
        """A frame reaches v at `at`: v reads it once its CPU is free (frame_in, plus item per
        announcement new to it and dup per held one). Its new items are handed to v's engine
        when the frame is done, as first gossip copies are (`_cpu_arrive`), and join v's
        out-list. Each announcement read counts as a copy received, a held one as a
        duplicate."""
        peer = self.peers[v]
        if peer.alive:
            if v >= self._relay_held.shape[0]:
                self._relay_grow(len(self.peers), 0)
            costs = self._relay
            assert costs is not None
            row = self._relay_held[v]
            new = frame[~row[frame]]
            row[new] = True
            fresh, held = len(new), len(frame) - len(new)
            done = max(at, self._cpu_busy.get(v, 0.0)) \
                + (costs.frame_in_s + fresh * costs.item_s + held * costs.dup_s)
            self._cpu_busy[v] = done
            self._received[v] += len(frame)
            self._relay_frames[v] += 1
            if held:
                self.recorder.second(at).duplicates += held
            if fresh:
                reach = self._relay_reach
                reach[new, 1] = np.maximum(reach[new, 1], done)
                if self._observer_index is not None and not peer.observed:
                    self.recorder.second(at).delivered += fresh
                else:
                    counter = self._counter
                    self._counter += fresh
                    if self._mine(v):
                        box, items = self._inbox[v], self._relay_items
                        for k, i in enumerate(new.tolist(), counter + 1):
                            box.append((done, k, *items[i]))  # type: ignore[misc]
                self._relay_queue(v, new, done)
        self._relay_drop(frame)

    def _relay_drop(self, items: np.ndarray) -> None:
        """One reference to each of `items` is gone; an item with none left has reached all
        it will: its reach is recorded and its bytes let go."""
        refs = self._relay_refs
        refs[items] -= 1
        gone = items[refs[items] == 0]
        if len(gone):
            self.recorder.flood_reach += map(tuple, self._relay_reach[gone].tolist())
            for i in gone.tolist():
                self._relay_items[i] = None

    def _regossip(self, t: float) -> None:
        """After the mesh changed: gossipsub's lazy gossip. At each heartbeat a peer offers the
        ids of the messages of its last GOSSIP_WINDOW_S (IHAVE) to peers it is newly meshed
        with, which ask for those they lack (IWANT) and forward them. Modelled as a flood of
        every message of that window from all peers that have it, over the new mesh, to the
        peers that never got it, one IHAVE/IWANT round trip (two median link latencies) later."""
        n = len(self.peers)
        delay = 2 * math.exp(self._lat_mu)
        for t0, wire, author, have_then in list(self._recent_floods):
            if t0 <= t - GOSSIP_WINDOW_S:
                continue
            have = np.zeros(n, dtype=bool)
            if isinstance(have_then, set):   # a flood with the peers' CPU modelled, as it stands
                have[list(have_then)] = True
            else:
                have[: len(have_then)] = have_then
            sources = np.flatnonzero(have)
            if len(sources) and not have.all():
                self._spread(t, wire, author, sources, have, delay)

    def _spread(self, t: float, wire: bytes, author: bytes, sources: np.ndarray,
                have: np.ndarray | None, delay: float, *, rng: np.random.Generator | None = None,
                entry: np.ndarray | None = None) -> np.ndarray:
        """Flood `wire` over the mesh from `sources` starting at t + delay; every peer reached
        that is not in `have` gets a delivery at its earliest arrival. Returns who has the
        message afterwards (sources included). With `entry` (an attacker's message), `sources`
        are the peers it was handed to and `entry` their arrival offsets: they receive it too.
        `rng` draws the links' latency and loss (default: the network's own generator)."""
        src, dst = self._edges()
        n = len(self.peers)
        if len(src) == 0 and entry is None:
            held = np.zeros(n, dtype=bool)
            held[sources] = True
            return held
        rng = self.np_rng if rng is None else rng
        lat = rng.lognormal(self._lat_mu, self.net.latency_sigma, len(src))
        lat += HOP_DELAY_S
        if self.net.loss > 0:
            ok = rng.random(len(src)) >= self.net.loss
            lat[~ok] = np.inf  # a lost transmission never arrives
        else:
            ok = np.ones(len(src), dtype=bool)
        s, d = src, dst
        arrival = np.full(n, np.inf)
        arrival[sources] = 0.0 if entry is None else entry
        arrival = _relax(s, d, lat, arrival, sources)
        # Copies: every peer that has the message forwards it to its mesh neighbours except the
        # one it came from (its parent on the earliest path); extra copies are duplicates.
        reached_src = np.isfinite(arrival[s])
        cand = arrival[s] + lat
        parent = np.full(n, -1, dtype=np.int64)
        is_parent = reached_src & (cand == arrival[d])
        parent[d[is_parent]] = s[is_parent]
        sends = reached_src & ok & (parent[s] != d)
        copies = np.bincount(d[sends], minlength=n)
        if entry is None:
            copies[sources] = 0
        held = np.isfinite(arrival)
        # When the last peer reached got it (the origin's own flood: when every peer held it).
        self._spread_last = delay + (float(arrival[held].max()) if held.any() else 0.0)
        reached = held.copy()
        if entry is None:
            reached[sources] = False
        if have is not None:
            reached &= ~have
        reached_count = int(np.count_nonzero(reached))
        hops = int(copies.sum())
        self._received[: len(copies)] += copies
        if self._observer_index is None:
            targets = np.flatnonzero(reached)
        else:
            # Only observers run their engines on gossip; the others are counted in bulk.
            obs = self._observer_index
            targets = obs[reached[obs]]
            self.recorder.second(t).delivered += reached_count - len(targets)
        self._to_inboxes(t + delay, targets, arrival[targets], wire, author)
        self.recorder.second(t).duplicates += max(0, hops - reached_count)
        return held

    def _to_inboxes(self, t: float, targets: np.ndarray, arrival: np.ndarray, wire: bytes,
                    author: bytes) -> None:
        """Deliver `wire` to `targets` at t + their `arrival` offsets. Each delivery waits in its
        peer's inbox (see `_flush`), numbered from the same counter as queued events, in the
        order they used to be queued."""
        inbox = self._inbox
        counter = self._counter
        count = len(targets)
        if self.workers == 1:
            numbers: Any = range(counter + 1, counter + 1 + count)
        else:
            # Only this process's peers get an inbox entry; the numbers stay those of the
            # whole list, so every process orders deliveries as one process would.
            numbers = np.arange(counter + 1, counter + 1 + count, dtype=np.int64)
            mine = targets % self.workers == self.rank
            targets, arrival, numbers = targets[mine], arrival[mine], numbers[mine].tolist()
        entries = zip((t + arrival).tolist(), numbers, itertools.repeat(wire),
                      itertools.repeat(author))
        for v, entry in zip(targets.tolist(), entries):
            inbox[v].append(entry)
        self._counter = counter + count

    def _path_tables(self) -> tuple[Any, ...]:
        """For the paths flood model: PATH_DRAWS draws of every mesh link's latency (and loss),
        and in each the earliest arrival at every observer from every peer (a shortest-path
        relaxation from each observer over the reversed mesh); recomputed when the mesh or
        the observers change. Also each peer's copies per flood (its in-degree less the one
        that brought the message first), the live peers a flood reaches, and the draws."""
        src, dst = self._edges()
        obs = self._observer_index
        assert obs is not None
        key = (self._edges_version, len(obs), len(self.peers))
        if self._paths is not None and self._paths[0] == key:
            return self._paths
        n = len(self.peers)
        rng = np.random.default_rng([self.seed, 0x9A745, self._edges_version])
        dist = np.full((PATH_DRAWS, len(obs), n), np.inf, dtype=np.float32)
        lats = []
        for r in range(PATH_DRAWS):
            lat = rng.lognormal(self._lat_mu, self.net.latency_sigma, len(src)) + HOP_DELAY_S
            if self.net.loss > 0:
                lat[rng.random(len(src)) < self.net.loss] = np.inf
            lats.append(lat)
            for j, o in enumerate(obs.tolist()):
                if not self.peers[o].alive:
                    continue
                start = np.full(n, np.inf)
                start[o] = 0.0
                # Reversed edges: the time from peer v to observer o is the time from o to v
                # along the links taken backwards.
                dist[r, j] = _relax(dst, src, lat, start, np.array([o]))
        indeg = np.bincount(dst, minlength=n) if len(dst) else np.zeros(n, dtype=np.int64)
        copies = np.maximum(indeg - 1, 0)
        live = sum(1 for p in self.peers if p.alive)
        self._paths = (key, dist, copies, int(copies.sum()), live, np.ones(n, dtype=bool), lats)
        return self._paths

    def _spread_paths(self, t: float, wire: bytes, author: bytes, origin: int) -> np.ndarray:
        """The paths flood model (`flood="paths"`, observer samples only): the observers'
        arrivals are those of one of PATH_DRAWS latency draws of the whole mesh, chosen at
        random per message, instead of fresh draws on every link per message; copies are
        counted as each peer's in-degree less one (exact in total to within the origin's
        degree when the message reaches everybody, per peer on average). The mesh is assumed
        connected within the origin's group: partitions and loss leave the observers' arrivals
        right and the bulk counts approximate. Returns who has the message (everybody)."""
        _, dist, copies, copies_total, live, everybody, _ = self._path_tables()
        obs = self._observer_index
        assert obs is not None
        arrival = dist[int(self.np_rng.integers(PATH_DRAWS)), :, origin].astype(np.float64)
        reach = np.isfinite(arrival) & (obs != origin)
        targets = obs[reach]
        n = len(copies)
        self._received[:n] += copies
        self._received[origin] -= copies[origin]
        hops = copies_total - int(copies[origin])
        reached_count = live - 1
        self.recorder.second(t).delivered += reached_count - len(targets)
        self._to_inboxes(t, targets, arrival[reach], wire, author)
        self.recorder.second(t).duplicates += max(0, hops - reached_count)
        return everybody

    def _flush(self, v: int, bound: tuple[float, ...]) -> int:
        """Hand peer `v`'s engine the honest deliveries of its inbox that come before `bound`
        in the event order (time, then counter).

        An honest delivery is not a queued event: it only changes the receiving peer's engine
        and creates no event (honest announcements are forwarded by the flood model, not by the
        receiver), so it may wait until something else is about to touch that peer: a poll, a
        sync leg, a hostile delivery, a scenario action, a sample, the end of the run. Each
        event that touches a peer flushes it first, up to the event's own place in the order,
        which is exactly the order the event queue would have used. Nothing drawn from the RNGs
        depends on when a delivery runs, so the same seed gives the same run as queuing each
        delivery. (For the same reason a process waiting for another may hand over what
        arrived before the current event's time sooner: `_work_ahead`.) A dead peer's pending deliveries are dropped, as deliveries to the dead are.
        `bound` is (t, counter) for a queued delivery at t (strictly before it), (t, inf) for
        any other event at t (deliveries precede other kinds at equal times) and (t,) for the
        end of the run (strictly before t)."""
        box = self._inbox[v]
        if not box:
            return 0
        peer = self.peers[v]
        if not peer.alive:
            box.clear()
            return 0
        box.sort()
        k = bisect.bisect_left(box, bound)
        if k == 0:
            return 0
        due = box[:k]
        del box[:k]
        tally = self._tally
        skew = peer.skew
        # EPOCH + at + skew, in this order: floats do not add associatively, and `now` must be
        # what `SimPeer.now` gives.
        deliveries = [(wire, EPOCH + at + skew, author) for at, _, wire, author in due]
        started = time.perf_counter()
        verdicts = peer.engine.on_gossip_many(deliveries)
        tally.cpu_s += time.perf_counter() - started
        tally.messages += k
        tally.reasons.update(map(_REASON, verdicts))
        outcomes = list(map(_OUTCOME, verdicts))
        for i in range(k - 1, -1, -1):  # `Node._last_gossip`: when an announcement last came
            if outcomes[i] == "accepted":
                peer.last_gossip = due[i][0]
                break
        # Traffic is counted in the second each message arrived in (`due` is in time order).
        i = 0
        while i < k:
            at = due[i][0]
            j = k if int(at) == int(due[-1][0]) else bisect.bisect_left(due, (int(at) + 1,), i)
            part = outcomes[i:j] if i or j < k else outcomes
            accepted = part.count("accepted")
            rejected = part.count("rejected") if accepted < j - i else 0
            row = tally.second(at)
            row[0] += j - i
            row[1] += accepted
            row[2] += rejected
            row[3] += j - i - accepted - rejected
            i = j
        return k

    def _flush_all(self, bound: tuple[float, ...]) -> None:
        inbox = self._inbox
        for v in range(len(inbox)):
            if inbox[v]:
                self._flush(v, bound)

    def _deliver(self, v: int, wire: bytes, author: bytes, t: float, counter: int) -> None:
        """A hostile message (a queued event: one that gets through travels on)."""
        peer = self.peers[v]
        if not peer.alive:
            return
        self._received[v] += 1
        if self._shared(v, lambda: self._hostile_verdict(peer, wire, author, t, counter)):
            # A hostile message that got through travels on from this peer.
            for u in sorted(self.neighbours[v]):
                if self.peers[u].alive and self.peers[u].group == peer.group:
                    self._schedule(t + self._latency(), _DELIVER, u, wire, author)

    def _hostile_verdict(self, peer: SimPeer, wire: bytes, author: bytes, t: float,
                         counter: int) -> bool:
        """Peer's engine on a hostile message (in the process that runs it): accepted?"""
        self._flush(peer.index, (t, counter))
        tally = self._tally
        started = time.perf_counter()
        verdict = peer.engine.on_gossip(wire, peer.now(t), author)
        tally.cpu_s += time.perf_counter() - started
        tally.messages += 1
        row = tally.second(t)
        row[0] += 1
        outcome = verdict.outcome
        row[1 if outcome == "accepted" else 2 if outcome == "rejected" else 3] += 1
        tally.reasons[verdict.reason] += 1
        if verdict.accepted:
            peer.last_gossip = t
        return verdict.accepted

    def _poll_engine(self, peer: SimPeer, t: float) -> tuple[list[bytes], float | None]:
        self._flush(peer.index, (t, math.inf))
        engine = peer.engine
        return engine.poll_announcements(peer.now(t)), engine.next_deadline()

    def _poll(self, peer: SimPeer, t: float) -> None:
        peer.poll_at = None
        if not peer.alive:
            return
        wires, deadline = self._shared(peer.index, lambda: self._poll_engine(peer, t))
        for wire in wires:
            peer.last_announced = t
            if len(self._captured) < 256:
                self._captured.append(wire)
            self._last_wire[peer.index] = wire
            self._flood(peer.index, t, wire)
        if deadline is not None:
            at = max(t, deadline - EPOCH - peer.skew)
            if at < self.scenario.duration_s:
                self._schedule_poll(peer, at)

    # ------------------------------------------------------------------ sync

    def _start_sync(self, peer: SimPeer, partner: int, t: float) -> None:
        if not (peer.alive and peer.observed):
            return
        other = self.peers[partner]
        if not (other.alive and other.observed) or other.group != peer.group:
            return
        if self._reconciles:
            number = self._recon_next
            self._recon_next += 1
            frames = self._shared(peer.index, lambda: self._recon_open(peer, number, t))
            self.recorder.second(t).sync_exchanges += 1
            if self.settings.serve_wait_s > 0:
                self._schedule(t + self._latency(), _RECON_OPEN, number, peer.index, partner,
                               frames, None)
            else:
                self._schedule(t + self._latency(), _RECON, number, peer.index, partner, frames,
                               False)
            return
        data = self._shared(peer.index, lambda: self._sync_request_engine(peer, t))
        self.recorder.second(t).sync_exchanges += 1
        self._schedule(t + self._latency(), _SYNC_REQ, peer.index, partner, data)

    def _sync_request_engine(self, peer: SimPeer, t: float) -> bytes:
        self._flush(peer.index, (t, math.inf))
        return peer.engine.sync_request(peer.now(t))

    def _sync_answer_engine(self, peer: SimPeer, data: bytes, t: float) -> list[bytes]:
        self._flush(peer.index, (t, math.inf))
        started = time.perf_counter()
        try:
            frames = peer.engine.on_sync_request(data, peer.now(t))
        except WireError:
            frames = []
        self._tally.cpu_s += time.perf_counter() - started
        return frames

    def _sync_timer(self, peer: SimPeer, t: float) -> None:
        """A periodic sync falls due (`Node._sync_loop`): it starts now or, within
        `sync_gossip_quiet_s` of gossip the peer accepted, at the next lull (`_SYNC_LULL`), at
        most a period late; the next one is due a period after this one either way."""
        if not peer.alive:
            return
        if self.settings.sync_gossip_quiet_s > 0 and peer.observed:
            period, start = self._shared(peer.index, lambda: self._sync_due_engine(peer, t))
        else:
            period, start = None, t
        if start > t:
            self.recorder.second(t).syncs_deferred += 1
            self._schedule(start, _SYNC_LULL, peer.index, t + period)
        else:
            self._sync_now(peer, t)
        if period is None:
            period = self._sync_s
            if self.settings.quiet_keep_alives and peer.observed:
                period = self._shared(peer.index, lambda: self._sync_period_engine(peer, t))
        self._schedule(t + period, _SYNC_TIMER, peer.index)

    def _sync_due_engine(self, peer: SimPeer, t: float) -> tuple[float, float]:
        """(period, start) of the sync due at t: `Node._sync_period`, and when
        `Node._gossip_lull` lets it start (node/policy.py `session_start`, deadline one period
        on), given what gossip brought the peer until t."""
        period = self._sync_s
        if self.settings.quiet_keep_alives:  # it follows the view as of now (flushed there)
            period = self._sync_period_engine(peer, t)
        return period, self._sync_lull_engine(peer, t, t + period)

    def _sync_lull(self, peer: SimPeer, t: float, deadline: float) -> None:
        """A deferred sync, at the lull it waited for: asked again (more may have come)."""
        if not peer.alive:
            return
        start = self._shared(peer.index, lambda: self._sync_lull_engine(peer, t, deadline))
        if start > t:
            self._schedule(start, _SYNC_LULL, peer.index, deadline)
        else:
            self._sync_now(peer, t)

    def _sync_lull_engine(self, peer: SimPeer, t: float, deadline: float) -> float:
        """When the sync waiting for `deadline` may start, given what gossip brought until t."""
        self._flush(peer.index, (t, math.inf))
        return session_start(t, peer.last_gossip, deadline, self.settings.sync_gossip_quiet_s)

    def _sync_now(self, peer: SimPeer, t: float) -> None:
        if self._observer_index is None:
            candidates = sorted(u for u in self.neighbours[peer.index] if self.peers[u].alive)
        else:
            # Only observers hold views: an observer syncs with another observer (any, as a node
            # may sync with any connected peer, not only its mesh neighbours).
            candidates = [int(u) for u in self._observer_index
                          if u != peer.index and self.peers[u].alive
                          and self.peers[u].group == peer.group]
        if candidates:
            self._start_sync(peer, candidates[self.rng.randrange(len(candidates))], t)

    def _sync_period_engine(self, peer: SimPeer, t: float) -> float:
        """`Node._sync_period`: with quiet keep-alives, the reconciliation period derived from
        the capacity timeout and the signers the peer's view holds at t, if shorter than
        `sync_interval_s`."""
        self._flush(peer.index, (t, math.inf))
        _, reconcile = periods(self.market.capacity_timeout_s, len(peer.engine.view))
        return min(self._sync_s, reconcile)

    # sync/2.1.0: a session is a sequence of legs, each one side's frames (and whether that side
    # has closed its writing side) arriving at the other one link latency later, as the node's
    # `_reconcile` writes and reads them on one stream.

    def _recon_open(self, peer: SimPeer, number: int, t: float) -> list[bytes]:
        """The dialer's side: a new session and its opening frames."""
        self._flush(peer.index, (t, math.inf))
        started = time.perf_counter()
        session = ReconSession(peer.engine, dialer=True)
        frames = session.start(peer.now(t))
        self._tally.cpu_s += time.perf_counter() - started
        self._recon_sessions[(number, peer.index)] = [session, False, False]
        return frames

    def _recon_opening(self, number: int, dialer: int, listener: int, frames: list[bytes],
                       deadline: float | None, t: float) -> None:
        """The dialer's opening reaches the listener (`Node._serve_sync`). A listener that
        gossip brought an announcement within `sync_gossip_quiet_s` holds the session until
        its own lull, at most `sync_serve_wait_s` (asked again at each lull it waited for:
        more may have come), then answers it as any leg."""
        peer = self.peers[listener]
        if peer.alive and peer.observed and peer.group == self.peers[dialer].group:
            first = deadline is None
            until = t + self.settings.serve_wait_s if deadline is None else deadline
            start = self._shared(listener, lambda: self._sync_lull_engine(peer, t, until))
            if start > t:
                if first:
                    self.recorder.second(t).syncs_served_deferred += 1
                self._schedule(start, _RECON_OPEN, number, dialer, listener, frames, until)
                return
        self._recon_leg(number, dialer, listener, frames, False, t)

    def _recon_leg(self, number: int, sender: int, receiver: int, frames: list[bytes],
                   closed: bool, t: float) -> None:
        """One side's frames arrive at the other side, which answers (if it has anything to
        say or has just finished) one latency later. A side closes once, when its session is
        done; the session ends when both have closed. A dead or partitioned receiver ends it
        (the stream breaks), as does a broken frame or a rejected item (the node resets)."""
        peer = self.peers[receiver]
        if not peer.alive or peer.group != self.peers[sender].group:
            self._recon_sessions.pop((number, sender), None)
            self._recon_sessions.pop((number, receiver), None)
            return
        reply, close = self._shared(
            receiver, lambda: self._recon_step(peer, number, frames, closed, t))
        if close is None:  # reset
            self._recon_sessions.pop((number, sender), None)
            return
        if reply or close:
            self._schedule(t + self._latency(), _RECON, number, receiver, sender, reply, close)

    def _recon_step(self, peer: SimPeer, number: int, frames: list[bytes], peer_closed: bool,
                    t: float) -> tuple[list[bytes], bool | None]:
        """In the receiver's process: its session takes the frames; returns (frames to send,
        whether it closes now), or ([], None) when it resets the session."""
        self._flush(peer.index, (t, math.inf))
        key = (number, peer.index)
        state = self._recon_sessions.get(key)
        if state is None:
            state = self._recon_sessions[key] = [ReconSession(peer.engine, dialer=False), False,
                                                  False]
        session: ReconSession = state[0]
        now = peer.now(t)
        before = session.counts.received
        out: list[bytes] = []
        started = time.perf_counter()
        try:
            for frame in frames:
                out += session.receive(frame, now)
                if session.fault is not None:
                    break
        except WireError:
            session.fault = session.fault or "frame"
        self._tally.cpu_s += time.perf_counter() - started
        self._tally.second(t)[4] += session.counts.received - before
        if session.fault is not None:
            del self._recon_sessions[key]
            return [], None
        if peer_closed:
            session.on_peer_closed()
            state[2] = True
        close = session.done and not state[1]
        if close:
            state[1] = True
        if state[1] and state[2]:  # both sides closed: the session is over
            del self._recon_sessions[key]
        return out, close

    def _sync_request(self, requester: int, responder: int, data: bytes, t: float) -> None:
        peer = self.peers[responder]
        if not peer.alive or peer.group != self.peers[requester].group:
            return
        frames = self._shared(responder, lambda: self._sync_answer_engine(peer, data, t))
        if frames:
            self._schedule(t + self._latency(), _SYNC_RESP, requester, responder, frames)

    def _sync_response(self, requester: int, responder: int, frames: list[bytes],
                       t: float) -> None:
        peer = self.peers[requester]
        if not peer.alive or peer.group != self.peers[responder].group:
            return
        if not self._mine(requester):
            return
        self._flush(requester, (t, math.inf))
        started = time.perf_counter()
        carried = 0
        for frame in frames:
            try:
                counts = peer.engine.on_sync_response(frame, peer.now(t))
            except WireError:
                break
            carried += counts.received
            if counts.fault is not None:
                break  # the requester stops at the first rejected item (protocol v2 §8.3)
        self._tally.cpu_s += time.perf_counter() - started
        self._tally.second(t)[4] += carried

    # ------------------------------------------------------------------ scenario events

    def _choose(self, event: Event, pool: list[SimPeer]) -> list[SimPeer]:
        return event.choose(pool, self.event_rng)

    def _honest_live(self) -> list[SimPeer]:
        return [p for p in self.peers if p.alive and p.role != "hostile"]

    def _apply(self, event: Event, t: float) -> None:
        # Scenario events are few: every peer catches up first, whichever it touches.
        self._flush_all((t, math.inf))
        rec = self.recorder
        action = event.action
        if action == "capacity":
            chosen = self._choose(event, self._honest_live())
            for p in chosen:
                p.capacity = event.new_capacity(p.capacity, self.market.max_node_tokens_per_s)
                price = to_nano(self.scenario.peers.ask_of(p.index)) if p.capacity else 0
                p.engine.set_offer(p.capacity, price)
                self._schedule_poll(p, t)
            rec.record_event(t, event, peers=[p.index for p in chosen])
        elif action == "demand":
            live = [p for p in self._honest_live() if p.demand > 0] or \
                   [p for p in self._honest_live() if p.role == "demand"]
            supply = sum(p.capacity for p in self._honest_live())
            demands = event.new_demands([p.demand for p in live], supply,
                                        self.market.target_response_s)
            for p, demand in zip(live, demands):
                self._set_demand(p, demand)
                self._schedule_poll(p, t)
            rec.record_event(t, event, peers=[p.index for p in live])
        elif action in ("kill", "stop"):
            chosen = self._choose(event, self._honest_live())
            for p in chosen:
                if action == "stop":
                    wire = self._shared(p.index, lambda: p.engine.withdraw(p.now(t)))
                    if wire is not None:
                        self._flood(p.index, t, wire)
                        p.last_announced = t
            info = {"peers": [p.index for p in chosen],
                    "capacity_removed": sum(p.capacity for p in chosen),
                    "demand_removed": sum(p.demand for p in chosen),
                    "last_announced": [p.last_announced for p in chosen
                                       if p.last_announced is not None
                                       and (p.capacity > 0 or p.demand > 0)]}
            for p in chosen:
                p.alive = False
                self._inbox[p.index].clear()   # the dead receive nothing more
                rec.stop_peer(p.index, t)
            self._killed_last = chosen
            self._edges_dirty = True
            self._schedule(t + self.net.remesh_s, _REMESH, "repair")
            rec.record_event(t, event, **info)
        elif action == "add":
            joined = self._add_peers(event, t)
            rec.record_event(t, event, peers=[p.index for p in joined])
        elif action == "partition":
            live = self._honest_live()
            order = [p.index for p in live]
            self.event_rng.shuffle(order)
            groups = max(2, event.groups)
            for rank, index in enumerate(order):
                self.peers[index].group = 1 + rank * groups // len(order)
            self._partitioned = True
            self._edges_dirty = True
            self._schedule(t + self.net.remesh_s, _REMESH, "groups")
            rec.record_event(t, event, groups=groups)
        elif action == "heal":
            self._groups_before_heal = {p.index: p.group for p in self.peers}
            for p in self.peers:
                p.group = 0
            self._partitioned = False
            self._edges_dirty = True
            self._schedule(t + self.net.remesh_s, _REMESH, "heal")
            rec.record_event(t, event)
        elif action == "hostile":
            sent_before = 0
            count = event.count or 1
            hostiles = []
            for _ in range(count):
                h = self._new_peer("hostile", t, observed=False)
                h.hostile = HostileCrafter(peer_key(self.seed, h.index, b"hostile"), self.market,
                                           event.kinds)
                hostiles.append(h)
                self._graft(h.index, self._live_members())
                self._schedule(t, _HOSTILE, h.index, t + (event.duration_s or self.scenario.duration_s),
                               event.rate)
            rec.record_event(t, event, peers=[h.index for h in hostiles], sent=sent_before,
                             _hostiles=hostiles)
        elif action == "attack":
            self._start_attack(event, t)

    # ------------------------------------------------------------------ attacks

    def _start_attack(self, event: Event, t: float) -> None:
        """An attacker connects to `degree` honest peers (observers, in an observer sample, as
        only they hold views) and starts sending. It is no peer of the mesh: its randomness and
        its messages leave every honest draw of the run as in the honest run."""
        number = len(self._attacks)
        rng = random.Random(f"neuroshard-simnet/attack/{self.seed}/{number}")
        np_rng = np.random.default_rng([self.seed, 0xA77AC, number])
        pool = [p.index for p in self._honest_live()
                if self._observer_index is None or p.observed]
        entries = sorted(rng.sample(pool, min(self.net.degree, len(pool))))
        identities = attack_identities(event, self.market, self.seed, number, self.worked)
        attacker = Attacker(event, identities, t,
                            keep_alive_s(self.settings.announce_interval_s, self.market),
                            self.scenario.duration_s)
        attack = _SimAttack(number, event, attacker, entries, rng, np_rng)
        self._attacks.append(attack)
        self._schedule(t, _ATTACK, number)
        self.recorder.record_event(t, event, attack=event.attack, identities=len(identities),
                                   entries=entries, policy=self.scenario.admission,
                                   work_bits=self.market.identity_work_bits, sent=0,
                                   _attack=attack)

    def _attack_event(self, payload: tuple[Any, ...], t: float) -> None:
        attack = self._attacks[payload[0]]
        if len(payload) == 3:  # a sync answer of the attacker arrives at a neighbour
            self._attack_sync_arrival(attack, payload[1], payload[2], t)
            return
        event = attack.event
        if event.attack == "sync_abuse":
            self._sync_abuse_pull(attack, t)
            return
        due = attack.attacker.due(t, EPOCH + t)
        if event.route == "sync":
            wires = [wire for _, wire in due]
            for wire in wires:
                attack.verdicts[reference_verdict(wire, self.market, self.admission, self.decoder)] += 1
            frames = [encode_sync(r) for r in split_sync_response(wires)]
            for v in attack.entries:
                if self.peers[v].alive:
                    at = t + float(attack.np_rng.lognormal(self._lat_mu, self.net.latency_sigma))
                    self._schedule(at + HOP_DELAY_S, _ATTACK, attack.number, v, frames)
        else:
            for who, wire in due:
                self._attack_gossip(attack, who, wire, t)
        following = attack.attacker.next_at()
        if following is not None and following < self.scenario.duration_s:
            self._schedule(following, _ATTACK, attack.number)

    def _attack_gossip(self, attack: _SimAttack, who: Identity, wire: bytes, t: float) -> None:
        """One attacker announcement published to its neighbours: what every validator accepts
        floods the mesh from them; anything else stops there (gossipsub relays only what its
        validator accepted)."""
        verdict = reference_verdict(wire, self.market, self.admission, self.decoder)
        attack.verdicts[verdict] += 1
        live = np.array([v for v in attack.entries if self.peers[v].alive], dtype=np.int64)
        if len(live) == 0:
            return
        first = attack.np_rng.lognormal(self._lat_mu, self.net.latency_sigma, len(live))
        first += HOP_DELAY_S
        if verdict == "accepted":
            self._spread(t, wire, who.peer_bytes, live, None, 0.0, rng=attack.np_rng,
                         entry=first)
            return
        self._received[live] += 1
        for v, offset in zip(live.tolist(), first.tolist()):
            self._counter += 1
            if self._mine(v):
                self._inbox[v].append((t + offset, self._counter, wire, who.peer_bytes))

    def _attack_sync_arrival(self, attack: _SimAttack, v: int, frames: list[bytes],
                             t: float) -> None:
        """Neighbour v merges an attacker's sync answer (as on connecting to it)."""
        peer = self.peers[v]
        if not peer.alive or not self._mine(v):
            return
        self._flush(v, (t, math.inf))
        started = time.perf_counter()
        carried = accepted = 0
        for frame in frames:
            try:
                counts = peer.engine.on_sync_response(frame, peer.now(t))
            except WireError:
                break
            carried += counts.received
            accepted += counts.accepted
        elapsed = time.perf_counter() - started
        tally = self._tally
        tally.cpu_s += elapsed
        tally.second(t)[4] += carried
        tally.attack["sync_items_received"] += carried
        tally.attack["sync_items_accepted"] += accepted
        tally.attack["sync_merge_cpu_s"] += elapsed

    def _sync_abuse_pull(self, attack: _SimAttack, t: float) -> None:
        """The abuser asks its first neighbour for the whole view (the digests of an empty
        view). v2.md §5: the listener answers at most its budget per remote peer (burst 3, one
        per 10 s) and refuses the rest; the node does not enforce that yet, so the simulator
        applies the rule here. Every request's answer is computed and timed, answered or not,
        to state what the budget saves."""
        event = attack.event
        end = min(self.scenario.duration_s, attack.attacker.end_t)
        if t >= end:
            return
        target = attack.entries[0]
        peer = self.peers[target]
        if peer.alive:
            attack.pulls += 1
            budget = attack.budgets.setdefault(target, SyncBudget(t))
            allowed = budget.allow(t)
            if self._mine(target):
                self._flush(target, (t, math.inf))
                request = self._empty_sync_request()
                started = time.perf_counter()
                try:
                    frames = peer.engine.on_sync_request(request, peer.now(t))
                except WireError:
                    frames = []
                elapsed = time.perf_counter() - started
                tally = self._tally.attack
                tally["sync_requests"] += 1
                tally["sync_bytes_in"] += len(request)
                tally["sync_cpu_s_unbudgeted"] += elapsed
                tally["sync_bytes_out_unbudgeted"] += sum(map(len, frames))
                if allowed:
                    tally["sync_answered"] += 1
                    tally["sync_cpu_s"] += elapsed
                    tally["sync_bytes_out"] += sum(map(len, frames))
                else:
                    tally["sync_refused"] += 1
        self._schedule(t + 1.0 / event.rate, _ATTACK, attack.number)

    def _empty_sync_request(self) -> bytes:
        request = getattr(self, "_empty_request", None)
        if request is None:
            view = MarketView(self.market)
            request = encode_sync(SyncRequest(view.digest(), tuple(view.bucket_digests()),
                                              view.revocations_digest()))
            self._empty_request = request
        return request

    def _add_peers(self, event: Event, t: float) -> list[SimPeer]:
        live = self._honest_live()
        if event.role == "replace":
            roles = [(p.role, p.capacity, p.demand) for p in self._killed_last]
            if event.count is not None:
                roles = roles[: event.count]
        else:
            n = event.count if event.count is not None else \
                max(1, round((event.fraction or 0.0) * len(live)))
            cap = self.scenario.peers.capacity
            avg_demand = (sum(p.demand for p in live if p.demand) //
                          max(1, sum(1 for p in live if p.demand)))
            roles = [(event.role, cap if event.role == "provider" else 0,
                      avg_demand if event.role == "demand" else 0)] * n
        established = [p.index for p in live]
        # With an observer sample, joiners are sampled at the same rate (at least one per event).
        watch = len(roles)
        if self.observers_wanted is not None:
            watch = max(1, math.ceil(len(roles) * self.observers_wanted / self.n_initial))
        joined = []
        for k, (role, capacity, demand) in enumerate(roles):
            p = self._new_peer("provider" if capacity else ("demand" if demand else "idle"), t,
                               observed=k < watch)
            if capacity != p.capacity:
                p.capacity = capacity
                p.engine.set_offer(capacity, to_nano(self.scenario.peers.ask_of(p.index))
                                   if capacity else 0)
            if demand:
                self._set_demand(p, demand)
            joined.append(p)
        for p in joined:
            # A newcomer dials peers that were already there (bootstrap, then peer exchange) and
            # syncs on connecting: it catches up with the view it missed from the first of them.
            members = [i for i in established if self.peers[i].group == p.group] or established
            added = self._graft(p.index, members + [p.index])
            if self._observer_index is not None and p.observed:
                added = [u for u in members if self.peers[u].observed][:1] or added
            if added:
                self._schedule(t + self._latency(), _SYNC_CONNECT, p.index, added[0])
            self._schedule_poll(p, t)
            self._schedule(t + self._sync_s, _SYNC_TIMER, p.index)
        return joined

    def _remesh(self, why: str, t: float) -> None:
        if why == "repair":
            live = self._live_members()
            d_lo = max(1, self.net.degree - 2)
            for v in live:
                self.neighbours[v] = {u for u in self.neighbours[v] if self.peers[u].alive}
            for v in live:
                if len(self.neighbours[v]) < d_lo:
                    self._graft(v, self._live_members(self.peers[v].group))
            self._edges_dirty = True
        elif why == "groups":
            groups = sorted({self.peers[v].group for v in self._live_members()})
            for g in groups:
                self._mesh_all(self._live_members(g))
        elif why == "heal":
            groups = self._groups_before_heal
            self._mesh_all(self._live_members())
            # Healing opens connections across the former split, and a node syncs on every new
            # connection. One sync per peer with a peer of another former group is modelled: it
            # brings everything that side has; further ones would find equal digests.
            live = self._live_members()
            for v in live:
                if not self.peers[v].observed:
                    continue
                across = sorted(u for u in self.neighbours[v] if groups.get(u) != groups.get(v)
                                and self.peers[u].observed)
                if not across:
                    others = [u for u in live if groups.get(u) != groups.get(v)
                              and self.peers[u].observed]
                    if not others:
                        continue
                    u = others[self.rng.randrange(len(others))]
                    self.neighbours[v].add(u)
                    self.neighbours[u].add(v)
                    self._edges_dirty = True
                    across = [u]
                self._start_sync(self.peers[v], across[self.rng.randrange(len(across))], t)
        # New mesh links: what was published in the gossip window reaches whom it missed.
        self._regossip(t)

    def _hostile_tick(self, h: SimPeer, until: float, rate: float, t: float) -> None:
        if t >= until or not h.alive:
            return
        crafter = h.hostile
        assert crafter is not None
        kind = crafter.next_kind()
        signers = [p.engine.signer for p in self.peers[:64] if p.role != "hostile"]
        wire = crafter.craft(kind, h.now(t), self._captured, signers)
        self.recorder.second(t).hostile += 1
        for u in sorted(self.neighbours[h.index]):
            if self.peers[u].alive:
                self._schedule(t + self._latency(), _DELIVER, u, wire, h.peer_bytes)
        self._schedule(t + 1.0 / rate, _HOSTILE, h.index, until, rate)

    # ------------------------------------------------------------------ sampling

    def _sample(self, t: float) -> None:
        self._flush_all((t, math.inf))
        # Views are compared apart from what was published within the settle delay: at a few
        # hundred peers some announcement is in flight at nearly every instant, and a digest
        # that counted it would only say so.
        in_flight = self._in_flight
        while in_flight and in_flight[0][0] <= t - self.market.settle_delay_s:
            in_flight.popleft()
        leave_out = [(signer, msg_id) for _, signer, msg_id in in_flight]
        rows = []
        for p in self.peers:
            if not (p.alive and p.observed) or p.role == "hostile" or not self._mine(p.index):
                continue
            now = p.now(t)
            stats = p.engine.stats(now)
            price = stats.price_nano
            price_nano = int(getattr(price, "price_nano", price))
            rows.append(PeerSample(p.index, price_nano, int(stats.supply_tokens_per_sec),
                                   int(stats.demand_tokens_waiting), int(stats.available_nodes),
                                   p.engine.view.digest_without(leave_out)
                                   if self.record_digests else None))
        live = self._honest_live()
        truth = (sum(p.capacity for p in live), sum(p.demand for p in live), len(live))
        self._tally.samples.append(rows)
        self._sample_points.append((t, truth))

    # ------------------------------------------------------------------ run

    def _simulate(self, duration: float, wall0: float) -> None:
        self._build()
        for i, event in enumerate(self.scenario.events):
            self._schedule(event.at_s, _SCENARIO, i)
        k = 0
        while (k + 0.5) * self.sample_s < duration:
            self._schedule((k + 0.5) * self.sample_s, _SAMPLE)
            k += 1
        if self.workers > 1:
            self._fork()
        self._simulate_loop(wall0)

    def _simulate_loop(self, wall0: float | None = None) -> None:
        duration = self.scenario.duration_s
        next_progress = (time.perf_counter() if wall0 is None else wall0) + self.progress_every_s
        queue = self._queue
        peers = self.peers
        cpu = self._cpu
        while queue:
            t, kind, counter, payload = heapq.heappop(queue)
            if t >= duration:
                break
            self.t = t
            if cpu:
                self._cpu_advance(t)
            if kind == _DELIVER:
                self._deliver(payload[0], payload[1], payload[2], t, counter)
            elif kind == _POLL:
                peer = peers[payload[0]]
                if payload[1] == peer.poll_version:
                    self._poll(peer, t)
            elif kind == _SAMPLE:
                self._sample(t)
                if self.rank == 0 and time.perf_counter() >= next_progress:
                    # The calibration op is timed at every progress step, so the run's speed
                    # can be stated against the op as the machine ran during the run (the
                    # median), not only at its ends, when other load may differ.
                    self._calibrations.append(time_calibration_op(CALIBRATION_STEP_OPS))
                    next_progress = time.perf_counter() + self.progress_every_s
                    if self.progress is not None:
                        self._report_progress(t, wall0 or 0.0)
            elif kind == _SYNC_TIMER:
                self._sync_timer(peers[payload[0]], t)
            elif kind == _SYNC_LULL:
                self._sync_lull(peers[payload[0]], t, payload[1])
            elif kind == _SYNC_CONNECT:
                self._start_sync(peers[payload[0]], payload[1], t)
            elif kind == _SYNC_REQ:
                self._sync_request(payload[0], payload[1], payload[2], t)
            elif kind == _SYNC_RESP:
                self._sync_response(payload[0], payload[1], payload[2], t)
            elif kind == _RECON:
                self._recon_leg(*payload, t)
            elif kind == _RECON_OPEN:
                self._recon_opening(*payload, t)
            elif kind == _SCENARIO:
                self._apply(self.scenario.events[payload[0]], t)
            elif kind == _REMESH:
                self._remesh(payload[0], t)
            elif kind == _HOSTILE:
                self._hostile_tick(peers[payload[0]], payload[1], payload[2], t)
            elif kind == _ATTACK:
                self._attack_event(payload, t)
        if cpu:
            self._cpu_advance(duration)
            # Floods with copies still in flight at the end: as far as they got.
            self.recorder.flood_reach += [(f[5], f[6]) for f in self._cpu_floods.values()]
            live = np.flatnonzero(self._relay_refs > 0)
            self.recorder.flood_reach += map(tuple, self._relay_reach[live].tolist())
        # Deliveries still waiting arrived before the end if they arrived before `duration`.
        self._flush_all((duration,))
        tally = self._tally
        self._check_crash_timeouts()
        for p in peers:
            if p.alive and p.observed and p.role != "hostile" and self._mine(p.index):
                tally.views += 1
                tally.view_signers += len(p.engine.view)
                tally.view_announcements += p.engine.view.message_count

    def _check_crash_timeouts(self) -> None:
        """For every kill: does every live peer (of this process) stop counting each killed
        signer exactly where the signed timeline says — the killed peer's last announcement
        counts at issued_at + capacity_timeout − 1 ms and nothing of it counts from
        issued_at + capacity_timeout on? Read off each peer's own view at the end of the run."""
        timeout_ms = round(self.market.capacity_timeout_s * 1000)
        for number, record in enumerate(self.recorder.events):
            if record.event.action != "kill":
                continue
            last = []
            for index in record.info.get("peers", []):
                wire = self._last_wire.get(index)
                if wire is not None:
                    message = self.decoder(wire, None)
                    last.append((self.peers[index].engine.signer, message))
            if not last:
                continue
            row = self._tally.crash_timeouts.setdefault(number, [0, 0])
            for p in self.peers:
                if not (p.alive and p.observed and p.role != "hostile" and self._mine(p.index)):
                    continue
                view = p.engine.view
                for signer, message in last:
                    row[0] += 1
                    expires = message.issued_at_ms + timeout_ms
                    counted = view.counted_at_ms(signer, expires - 1)
                    if (counted is not None and counted.msg_id == message.msg_id
                            and view.contribution_at_ms(signer, expires) is None):
                        row[1] += 1

    def _fork(self) -> None:
        """Spread the run over `workers` processes: fork the built network, so every process
        holds the same state and runs the same event loop with the same random draws. Peer v's
        engine work (deliveries, polls, sync, samples) is done only in process v % workers;
        what the loop needs from it (announcements to flood, sync frames, whether a hostile
        message got through) is sent to the other processes (`_shared`). Rank 0 is this
        process; the others send their engine tallies at the end and exit."""
        exchange = _Exchange(self.workers)
        sys.stdout.flush()
        sys.stderr.flush()
        for rank in range(1, self.workers):
            pid = os.fork()
            if pid == 0:
                self._worker(exchange, rank)   # never returns
            self._children.append(pid)
        exchange.attach(0)
        self._exchange = exchange

    def _worker(self, exchange: _Exchange, rank: int) -> None:
        """The body of a forked worker process: run the loop, send the tally, exit."""
        status = 1
        try:
            exchange.attach(rank)
            self.rank = rank
            self._exchange = exchange
            self.progress = None
            cpu0 = time.process_time()
            self._simulate_loop()
            self._tally.process_cpu_s = time.process_time() - cpu0
            exchange.send(self._tally, to=0)
            exchange.close()
            status = 0
        except BaseException:  # noqa: BLE001 - report, then leave without running the parent's code
            traceback.print_exc()
        finally:
            sys.stderr.flush()
            os._exit(status)

    def _stop_workers(self) -> None:
        """After a failure in rank 0: end the workers (they would wait for it forever)."""
        if self._exchange is None:
            return
        self._exchange.close()
        self._exchange = None
        for pid in self._children:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)

    def _gather(self) -> None:
        """Fold every process's engine tally into the recorder (in rank 0, after the loop)."""
        tallies = [self._tally]
        if self._exchange is not None:
            try:
                tallies += [self._exchange.receive(rank) for rank in range(1, self.workers)]
            finally:
                self._exchange.close()
                self._exchange = None
                for pid in self._children:
                    os.waitpid(pid, 0)
        rec = self.recorder
        for tally in tallies:
            rec.engine_cpu_s += tally.cpu_s
            rec.engine_messages += tally.messages
            rec.reasons.update(tally.reasons)
            rec.attack_counts.update(tally.attack)
            rec.cpu_s += tally.process_cpu_s
            rec.parallel_wait_s += tally.wait_s
            rec.engine_messages_ahead += tally.ahead
            rec.views += tally.views
            for number, (pairs, exact) in tally.crash_timeouts.items():
                row = rec.crash_timeouts.setdefault(number, [0, 0])
                row[0] += pairs
                row[1] += exact
            rec.view_signers += tally.view_signers
            rec.view_announcements += tally.view_announcements
            for second, (delivered, accepted, rejected, ignored, carried) in sorted(
                    tally.traffic.items()):
                traffic = rec.second(second)
                traffic.delivered += delivered
                traffic.accepted += accepted
                traffic.rejected += rejected
                traffic.ignored += ignored
                traffic.sync_announcements += carried
        for i, (t, truth) in enumerate(self._sample_points):
            rows = [row for tally in tallies for row in tally.samples[i]]
            rows.sort(key=lambda row: row.peer)
            rec.sample(t, rows, truth)

    def run(self) -> Recorder:
        rec = self.recorder
        # Timed before and after the run (the faster counts): the run's wall time is stated
        # against it too, so the figure travels between machines and loads.
        self._calibrations = [time_calibration_op()]
        wall0 = time.perf_counter()
        cpu0 = time.process_time()
        duration = self.scenario.duration_s
        # The engines' views are a large heap that lives as long as the run, and the run makes
        # next to no reference cycles: the cyclic collector would walk all of it again and again
        # for nothing (see the module docstring), so it is off while the network runs.
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            self._simulate(duration, wall0)
            rec.cpu_s = time.process_time() - cpu0
            self._gather()
        finally:
            self._stop_workers()
            self.decoder.cache.clear()  # the run is over: no engine decodes these bytes again
            self.facts.entries.clear()
            if gc_was_enabled:
                if gc.get_freeze_count() == 0:
                    # Everything the run allocated is still in the youngest generation; its first
                    # collection would walk all of it (seconds at 1,000 peers). Freezing and
                    # unfreezing moves it to the oldest generation in O(1) instead.
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()
        rec.network_s = duration
        rec.peer_received = [int(x) for x in self._received[: len(self.peers)]]
        rec.wall_s = time.perf_counter() - wall0
        self._calibrations.append(time_calibration_op())
        rec.calibration_op_s = statistics.median(self._calibrations)
        rec.calibration_op_range_s = (min(self._calibrations), max(self._calibrations))
        rec.calibration_samples = len(self._calibrations)
        for record in rec.events:
            hostiles = record.info.pop("_hostiles", None)
            if hostiles:
                record.info["sent"] = sum(h.hostile.sent for h in hostiles if h.hostile)
            attack = record.info.pop("_attack", None)
            if attack is not None:
                record.info["sent"] = attack.attacker.sent
                record.info["pulls"] = attack.pulls
                record.info["verdicts"] = dict(attack.verdicts)
        if self.observers_wanted is not None:
            rec.notes.append(f"observer sample: {self.observers_wanted} of {self.n_initial} "
                             "initial peers (and joiners at the same rate) receive gossip and "
                             "compute prices; all peers announce and forward")
        if self.flood == "paths":
            rec.notes.append(f"flood model: paths (the observers' arrivals looked up in "
                             f"{PATH_DRAWS} latency draws of the mesh, one chosen per message; "
                             "copies per peer = its mesh in-degree less one)")
        rec.notes.append("signature checks of identical bytes are shared between simulated peers "
                         "(decode is memoised); every other validation rule runs at every peer")
        rec.workers = self.workers
        if self.workers > 1:
            rec.notes.append(f"run in {self.workers} processes (peer v's engine in process "
                             f"v mod {self.workers}); cpu_s is their sum")
        if self.progress is not None:
            self._report_progress(duration, wall0)
        return rec

    def _report_progress(self, t: float, wall0: float) -> None:
        live = sum(1 for p in self.peers if p.alive and p.role != "hostile")
        published = sum(b.published for b in self.recorder.traffic)
        delivered = sum(b.delivered for b in self.recorder.traffic)
        if self._tally.traffic:  # engine deliveries not folded into the recorder yet
            delivered += sum(row[0] for row in self._tally.traffic.values())
        share = f" (process 0 of {self.workers})" if self._exchange is not None else ""
        assert self.progress is not None
        self.progress(f"[sim] t={t:6.1f}/{self.scenario.duration_s:g} s  wall {time.perf_counter() - wall0:6.1f} s  "
                      f"live {live}  published {published}  delivered {delivered}{share}")


#: From this many peers on, `default_workers` spreads a run over the machine's CPUs (below it,
#: forking and the exchange cost more than they save).
PARALLEL_FROM_PEERS = 200


def default_workers(peers: int, observers: int | None = None) -> int:
    """Processes for a run of `peers` simulated peers: one per CPU this process may use (at most
    8) when at least PARALLEL_FROM_PEERS peers run engines on gossip, else 1. With fewer
    observers the floods are the work, and every process computes every flood, so more
    processes only add CPU (10,000 peers, 100 observers: the start took ~2× the CPU in two).
    Any number gives the same report."""
    engines = peers if observers is None else min(peers, observers)
    if engines < PARALLEL_FROM_PEERS or not hasattr(os, "fork"):
        return 1
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:
        cpus = os.cpu_count() or 1
    return max(1, min(8, cpus))


def run_sim(scenario: Scenario, peers: int, *, seed: int = 1, sample_s: float | None = None,
            observers: int | None = None, progress: Callable[[str], None] | None = None) -> Recorder:
    """Run `scenario` on `peers` simulated peers and return what was recorded."""
    return SimNetwork(scenario, peers, seed=seed, sample_s=sample_s, observers=observers,
                      progress=progress).run()


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


__all__ = ["SimNetwork", "SimPeer", "run_sim", "default_workers", "PARALLEL_FROM_PEERS", "SharedDecoder", "peer_key", "EPOCH",
           "node_settings", "stderr_progress"]
