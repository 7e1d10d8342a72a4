"""Hostile providers and gateways on the job stream, as real libp2p peers (issue 19).

A **liar** is a real `Node` — it joins the network, announces the cheapest capacity there is
(price 0) and keeps it fresh like any provider — whose job-stream handler is replaced by one that
misbehaves in one of these ways (`LIES`):

- `silent`: reads the Job and never answers (holds the stream open);
- `hold`: accepts the job (JobAccepted) and then never sends a result;
- `decline`: accepts, then declines as if its backend had failed (`backend_timeout`);
- `forge`: accepts, then returns a receipt signed by another key (the gateway refuses it:
  `mismatch`);
- `inflate`: accepts, then returns its own signed receipt for more tokens than requested
  (`implausible`);
- `wrong`: accepts, then returns a correctly signed result for another request id.

Every byte a liar sends is built with the wire's own encoders, so what it does is a valid
protocol exchange, not garbage: only a gateway's deadlines and checks stand between it and the
users' requests. A liar counts the jobs it draws (`Liar.drawn`, per gateway).

`send_job_bytes` is the other side: a hostile **gateway** that sends the exact bytes it is given
(a replayed Job) on a job stream and reads what comes back, optionally never settling.

`run_liars` (the `neuroshard-simnet liars` command) runs the hostile-provider scenario: N real
nodes on loopback, a few of them liars among honest providers, gateways submitting real requests
for a while, and the buyer-side figures: requests completed, failed and expired, who served them,
the time to completion against the honest providers' own, and how many jobs each liar drew at
each gateway before every gateway set it aside.
"""

from __future__ import annotations

import math
import random
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import coincurve
import trio

from neuroshard_p2p import wire
from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.streams import FrameStream, close_quietly, reset_quietly
from neuroshard_p2p.wire import (
    Job,
    JobAccepted,
    JobDeclined,
    JobResult,
    JobSettled,
    Receipt,
    decode_job_frame,
    encode_job_frame,
)
from neuroshard_p2p.wire.codec import MAX_SIZE
from neuroshard_p2p.wire.framing import MAX_STREAM_FRAME, length_prefixed
from neuroshard_p2p.wire.messages import KIND_JOB

#: The ways a liar misbehaves (see the module docstring).
LIES = ("silent", "hold", "decline", "forge", "inflate", "wrong")


class Liar:
    """Replaces a running node's job-stream handler with one that lies in the way `lie`."""

    def __init__(self, node: Any, lie: str) -> None:
        if lie not in LIES:
            raise ValueError(f"lie must be one of {LIES}, got {lie!r}")
        self.node = node
        self.lie = lie
        self.key: coincurve.PrivateKey = node.private_key
        self.signer: bytes = node.engine.signer
        self._forger = coincurve.PrivateKey()
        #: Jobs received, per gateway peer id.
        self.drawn: Counter[str] = Counter()
        self._held: list[Any] = []

    def install(self) -> None:
        self.node.host.set_stream_handler(self.node.jobs.settings.protocol, self._handle)

    async def _handle(self, stream: Any) -> None:
        gateway = str(stream.muxed_conn.peer_id)
        try:
            with trio.move_on_after(10):
                data = await FrameStream(stream, MAX_SIZE[KIND_JOB]).next()
            if data is None:
                return
            job = wire.decode_unchecked_time(data)
            if not isinstance(job, Job):
                return
            self.drawn[gateway] += 1
            if self.lie == "silent":
                await self._hold(stream)
                return
            await self._send(stream, JobAccepted(job.request_id))
            if self.lie == "hold":
                await self._hold(stream)
                return
            if self.lie == "decline":
                await self._send(stream, JobDeclined(job.request_id, "backend_timeout",
                                                     "the model did not answer"))
            elif self.lie in ("forge", "inflate", "wrong"):
                await self._send(stream, self._result(job))
            # Whatever the gateway says next (it may settle nothing), the liar does not care.
            await close_quietly(stream)
        except Exception:  # noqa: BLE001 - the gateway reset: the lie is told
            await reset_quietly(stream)

    async def _send(self, stream: Any, frame: Any) -> None:
        await stream.write(length_prefixed(encode_job_frame(frame)))

    async def _hold(self, stream: Any) -> None:
        """Keep the stream open, saying nothing, until the gateway gives up on it."""
        try:
            while await stream.read(65536):
                pass
        except Exception:  # noqa: BLE001 - reset by the gateway
            pass

    def _result(self, job: Job) -> JobResult:
        now_ms = int(time.time() * 1000)
        tokens = job.tokens + (job.tokens if self.lie == "inflate" else 0)
        signer, key = (self._forger.public_key.format(compressed=True), self._forger) \
            if self.lie == "forge" else (self.signer, self.key)
        receipt = Receipt(signer=signer, issued_at_ms=now_ms,
                          request_id=job.request_id if self.lie != "wrong" else "not-yours",
                          gateway=job.signer, user=job.user, tokens_served=tokens,
                          locked_price_nano=job.locked_price_nano, started_at_ms=now_ms,
                          ended_at_ms=now_ms)
        request_id = job.request_id if self.lie != "wrong" else "not-yours"
        return JobResult(request_id, wire.encode(receipt, key), "lies " * 10)


@dataclass
class GatewayExchange:
    """What a provider answered to one Job sent by `send_job_bytes`."""

    frames: list[Any] = field(default_factory=list)
    ended: str = ""          # "eof", "reset", "timeout"

    @property
    def kinds(self) -> list[str]:
        return [type(f).__name__ for f in self.frames]


async def send_job_bytes(node: Any, provider_peer_id: str, job_bytes: bytes, *,
                         settle: JobSettled | None = None, timeout: float = 10.0,
                         protocol: str | None = None) -> GatewayExchange:
    """As a (possibly hostile) gateway: open a job stream from `node` to the provider (job/2.0.0,
    or the streamed `protocol` given), send the exact `job_bytes`, read every frame until the
    provider ends the stream; after a JobResult, send `settle` if given (an honest gateway
    always does), else say nothing and close."""
    from libp2p.peer.id import ID

    exchange = GatewayExchange()
    stream = await node.host.new_stream(ID.from_base58(provider_peer_id),
                                        [protocol or node.jobs.settings.protocol])
    try:
        with trio.move_on_after(timeout) as scope:
            await stream.write(length_prefixed(job_bytes))
            frames = FrameStream(stream, MAX_STREAM_FRAME)
            while True:
                data = await frames.next()
                if data is None:
                    exchange.ended = "eof"
                    break
                frame = decode_job_frame(data, streaming=protocol is not None)
                exchange.frames.append(frame)
                if isinstance(frame, JobResult):
                    if settle is not None:
                        await stream.write(length_prefixed(encode_job_frame(settle)))
                    await close_quietly(stream)
                    exchange.ended = "eof"
                    break
        if scope.cancelled_caught:
            exchange.ended = "timeout"
    except Exception:  # noqa: BLE001 - the provider reset the stream
        exchange.ended = "reset"
    if exchange.ended != "eof":
        await reset_quietly(stream)
    return exchange


# =================================================================================================
# The hostile-provider scenario (`neuroshard-simnet liars`)


@dataclass(frozen=True)
class LiarsSetup:
    """A network of `peers` real nodes: `liars` liars (lies cycled from `lies`), `honest` honest
    providers, the rest gateways. Users submit `rate` requests per second (of `tokens` tokens,
    spread over the gateways) for `duration_s`; the run then waits up to `drain_s` for them."""

    peers: int = 20
    liars: int = 3
    honest: int = 4
    lies: tuple[str, ...] = ("silent", "hold", "forge")
    honest_capacity: int = 2_000
    honest_min_price: float = 0.01
    liar_capacity: int = 500
    tokens: int = 100
    rate: float = 4.0
    duration_s: float = 60.0
    drain_s: float = 30.0
    seed: int = 1
    #: The nodes' job settings ([node] job_*): the reference's by default.
    accept_timeout_s: float = 5.0
    progress_grace_s: float = 5.0
    backoff_s: float = 5.0
    ban_after: int = 3

    def __post_init__(self) -> None:
        if self.liars < 0 or self.honest < 1 or self.peers - self.liars - self.honest < 1:
            raise ValueError("need at least one honest provider and one gateway besides the "
                             f"liars (peers {self.peers}, liars {self.liars}, honest "
                             f"{self.honest})")
        for lie in self.lies:
            if lie not in LIES:
                raise ValueError(f"unknown lie {lie!r}; known: {', '.join(LIES)}")
        if not self.lies and self.liars:
            raise ValueError("liars need at least one lie")
        if self.rate <= 0 or self.duration_s <= 0 or self.drain_s < 0 or self.tokens < 1:
            raise ValueError("rate, duration_s and tokens must be > 0, drain_s >= 0")

    @property
    def gateways(self) -> int:
        return self.peers - self.liars - self.honest


def _key(seed: int, index: int) -> coincurve.PrivateKey:
    import hashlib

    return coincurve.PrivateKey(hashlib.sha256(b"neuroshard-simnet/liars/%d/%d" % (seed, index))
                                .digest())


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def run_liars(setup: LiarsSetup, *, progress: Callable[[str], None] | None = None,
                    data_dir: str | Path | None = None) -> dict[str, Any]:
    """Run the hostile-provider scenario on real nodes in this trio process; return the report
    (buyer-side figures, per-liar draws, faults)."""
    from neuroshard_p2p.node.host import Node
    from neuroshard_p2p.node.settings import NodeSettings

    say = progress or (lambda line: None)
    rng = random.Random(setup.seed)
    # A network of its own (the simnet charter: no identity work), under a name of its own.
    charter = builtin("simnet").replace(market=MarketConfig(capacity_timeout_s=30.0),
                                        name=f"liars-{setup.seed}-{rng.randrange(1 << 30):x}")
    tmp = tempfile.TemporaryDirectory(prefix="simnet-liars-") if data_dir is None else None
    root = Path(tmp.name if tmp is not None else data_dir)  # type: ignore[arg-type]
    roles = (["liar"] * setup.liars + ["honest"] * setup.honest + ["gateway"] * setup.gateways)
    nodes: list[Any] = [None] * len(roles)
    liars: list[Liar] = []
    stop = trio.Event()
    report: dict[str, Any] = {}

    def settings(i: int, bootstrap: list[str]) -> NodeSettings:
        role = roles[i]
        capacity = {"liar": setup.liar_capacity, "honest": setup.honest_capacity}.get(role, 0)
        price = setup.honest_min_price if role == "honest" else 0.0
        return NodeSettings(
            data_dir=root / f"{role}-{i}", listen=("/ip4/127.0.0.1/tcp/0",), api="off",
            charter=charter, bootstrap=tuple(bootstrap), capacity=capacity, min_price=price,
            announce_interval_s=10.0, sync_interval_s=15.0, peer_exchange_interval_s=2.0,
            target_peers=8, stream_timeout_s=10.0, shutdown_grace_s=0.2,
            job_accept_timeout_s=setup.accept_timeout_s,
            job_progress_grace_s=setup.progress_grace_s, job_backoff_s=setup.backoff_s,
            job_ban_after=setup.ban_after)

    async def run_node(i: int, bootstrap: list[str],
                       task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        s = settings(i, bootstrap)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        async with Node(s, private_key=_key(setup.seed, i)) as node:
            nodes[i] = node
            task_status.started()
            await stop.wait()

    try:
        async with trio.open_nursery() as nursery:
            say(f"[liars] starting {setup.peers} nodes: {setup.liars} liars "
                f"({', '.join(setup.lies)}), {setup.honest} honest providers, "
                f"{setup.gateways} gateways …")
            await nursery.start(run_node, 0, [])
            boot = nodes[0].addrs[:1]
            for i in range(1, len(roles)):
                await nursery.start(run_node, i, boot)
            for i, role in enumerate(roles):
                if role == "liar":
                    liar = Liar(nodes[i], setup.lies[len(liars) % len(setup.lies)])
                    liar.install()
                    liars.append(liar)
            providers = [n for n, r in zip(nodes, roles) if r != "gateway"]
            gateways = [n for n, r in zip(nodes, roles) if r == "gateway"]
            honest = {n.peer_id for n, r in zip(nodes, roles) if r == "honest"}
            # Every gateway dials every provider (as peer exchange would, in time) and waits
            # until its view holds every provider's offer.
            for gateway in gateways:
                for provider in providers:
                    with trio.move_on_after(10):
                        await gateway.connect(provider.addrs[0])
            wanted = {p.engine.signer for p in providers}
            with trio.fail_after(60):
                while not all(wanted <= {o.signer for o in g.engine.view.offers_at(g.now())}
                              for g in gateways):
                    await trio.sleep(0.2)
            say(f"[liars] every gateway sees all {len(providers)} offers; users submit "
                f"{setup.rate:g} requests/s for {setup.duration_s:g} s")
            cpu0, wall0 = time.process_time(), trio.current_time()
            submitted: list[tuple[Any, str]] = []
            next_at = trio.current_time()
            end = next_at + setup.duration_s
            k = 0
            while trio.current_time() < end:
                gateway = gateways[k % len(gateways)]
                k += 1
                status = gateway.jobs.submit(setup.tokens, max_price_nano=10**9, prompt="hello")
                submitted.append((gateway, status.request_id))
                next_at += rng.expovariate(setup.rate)
                await trio.sleep_until(next_at)
            say(f"[liars] {len(submitted)} requests submitted; waiting up to {setup.drain_s:g} s "
                f"for the last ones")

            def open_count() -> int:
                return sum(1 for g, rid in submitted
                           if g.jobs.status(rid).state in ("pending", "claimed"))

            with trio.move_on_after(setup.drain_s):
                while open_count():
                    await trio.sleep(0.2)
            wall = trio.current_time() - wall0
            report = _report(setup, submitted, gateways, liars, honest, wall,
                             time.process_time() - cpu0)
            stop.set()
    finally:
        if tmp is not None:
            tmp.cleanup()
    return report


def _report(setup: LiarsSetup, submitted: list[tuple[Any, str]], gateways: list[Any],
            liars: list[Liar], honest: set[str], wall_s: float, cpu_s: float) -> dict[str, Any]:
    statuses = [g.jobs.status(rid) for g, rid in submitted]
    states = Counter(s.state for s in statuses)
    done = [s for s in statuses if s.state == "completed"]
    latency = [s.finished_at - s.submitted_at for s in done]
    clean = [s.finished_at - s.submitted_at for s in done if s.attempts == 1]
    met = [s.finished_at - s.submitted_at for s in done if s.attempts > 1]
    base = statistics.median(clean) if clean else 0.0
    faults: Counter[str] = Counter()
    for g in gateways:
        faults.update(g.jobs.gateway.fault_counts)
    per_liar = []
    for liar in liars:
        draws = [liar.drawn.get(g.peer_id, 0) for g in gateways]
        states_at = Counter(g.jobs.gateway.reputation.state(liar.node.peer_id, g.now())
                            for g in gateways)
        per_liar.append({"peer_id": liar.node.peer_id, "lie": liar.lie,
                         "jobs_drawn": sum(draws), "max_per_gateway": max(draws),
                         "gateways_banned": states_at.get("banned", 0),
                         "routing_at_end": dict(states_at)})
    served_by_liar = sum(1 for s in done if s.provider not in honest)

    def secs(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return {
        "setup": {**{k: getattr(setup, k) for k in setup.__dataclass_fields__},
                  "lies": list(setup.lies), "gateways": setup.gateways},
        "requests": {"submitted": len(statuses), **{k: states.get(k, 0) for k in (
            "completed", "failed", "expired", "pending", "claimed")},
            "completed_share": round(len(done) / max(1, len(statuses)), 4),
            "served_by_a_liar": served_by_liar,
            "met_a_liar": len(met),
            "failed_reasons": Counter(s.reason for s in statuses if s.state == "failed")
            .most_common(3)},
        "time_to_complete_s": {
            "honest_only_median": secs(base), "honest_only_p95": secs(_percentile(clean, 0.95)),
            "all_p50": secs(_percentile(latency, 0.5)), "all_p95": secs(_percentile(latency, 0.95)),
            "all_max": secs(max(latency) if latency else None),
            "met_a_liar_median": secs(statistics.median(met) if met else None),
            "met_a_liar_max": secs(max(met) if met else None),
            "worst_extra_over_honest_median": secs((max(latency) - base) if latency else None)},
        "liars": per_liar,
        "faults": dict(faults),
        "attempts": dict(Counter(s.attempts for s in statuses)),
        "wall_s": round(wall_s, 1), "cpu_s": round(cpu_s, 1),
    }


def report_markdown(report: dict[str, Any]) -> str:
    """The report as a short Markdown page."""
    s, r, t = report["setup"], report["requests"], report["time_to_complete_s"]
    lines = [
        "# Hostile providers: what liars do to buyers",
        "",
        f"{s['peers']} real libp2p nodes on 127.0.0.1: {s['liars']} liars ({', '.join(s['lies'])};"
        f" {s['liar_capacity']} tokens/s at price 0, always the cheapest), {s['honest']} honest "
        f"providers ({s['honest_capacity']} tokens/s at {s['honest_min_price']}), "
        f"{s['gateways']} gateways. Users submit {s['rate']} requests/s of {s['tokens']} tokens "
        f"for {s['duration_s']} s. Deadlines: accept {s['accept_timeout_s']} s, result "
        f"{s['progress_grace_s']} s + 2 × tokens / tokens_per_second; back-off {s['backoff_s']} s "
        f"doubling, ban after {s['ban_after']} faults in a row.",
        "",
        "| requests | completed | failed | expired | served by a liar | met a liar |",
        "|---|---|---|---|---|---|",
        f"| {r['submitted']} | {r['completed']} ({r['completed_share']:.2%}) | {r['failed']} | "
        f"{r['expired']} | {r['served_by_a_liar']} | {r['met_a_liar']} |",
        "",
        "| time to complete (s) | median | p95 | max |",
        "|---|---|---|---|",
        f"| requests that met no liar | {t['honest_only_median']} | {t['honest_only_p95']} | — |",
        f"| all requests | {t['all_p50']} | {t['all_p95']} | {t['all_max']} |",
        f"| requests that met a liar | {t['met_a_liar_median']} | — | {t['met_a_liar_max']} |",
        "",
        "| liar | lie | jobs drawn (all gateways) | most at one gateway | gateways that banned it |",
        "|---|---|---|---|---|",
    ]
    for liar in report["liars"]:
        lines.append(f"| {liar['peer_id'][:8]}…{liar['peer_id'][-6:]} | {liar['lie']} | "
                     f"{liar['jobs_drawn']} | {liar['max_per_gateway']} | "
                     f"{liar['gateways_banned']} of {s['gateways']} |")
    lines += ["", f"Faults seen by the gateways: {report['faults']}.",
              f"Attempts per request: {report['attempts']}.",
              f"Wall {report['wall_s']} s, CPU {report['cpu_s']} s (all nodes, one process).", ""]
    return "\n".join(lines)


__all__ = ["Liar", "LIES", "send_job_bytes", "GatewayExchange", "LiarsSetup", "run_liars",
           "report_markdown"]
