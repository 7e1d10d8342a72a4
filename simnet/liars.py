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
                         settle: JobSettled | None = None, timeout: float = 10.0) -> GatewayExchange:
    """As a (possibly hostile) gateway: open a job stream from `node` to the provider, send the
    exact `job_bytes`, read every frame until the provider ends the stream; after a JobResult,
    send `settle` if given (an honest gateway always does), else say nothing and close."""
    from libp2p.peer.id import ID

    exchange = GatewayExchange()
    stream = await node.host.new_stream(ID.from_base58(provider_peer_id),
                                        [node.jobs.settings.protocol])
    try:
        with trio.move_on_after(timeout) as scope:
            await stream.write(length_prefixed(job_bytes))
            frames = FrameStream(stream, MAX_STREAM_FRAME)
            while True:
                data = await frames.next()
                if data is None:
                    exchange.ended = "eof"
                    break
                frame = decode_job_frame(data)
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


__all__ = ["Liar", "LIES", "send_job_bytes", "GatewayExchange"]
