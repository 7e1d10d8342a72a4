"""Benchmark `jobs`: how many jobs per second one gateway routes, and what routing adds to a call.

    python -m neuroshard_p2p.bench jobs [--jobs 300] [--calls 40] [--tokens 10]

Two real nodes in this one process on 127.0.0.1 (libp2p, TCP + noise + yamux): a gateway and a
provider offering 50,000 tokens/s at a fixed price. Both share one trio loop, so each figure is
the CPU of *both* sides of the exchange on one core.

- throughput: `--jobs` requests submitted at once at the gateway; jobs per second from the first
  submit to the last completion. Three rows: receipts settled in SQLite ledgers on both sides
  with synchronous=FULL (the default: an fsync per settlement, each side), with
  synchronous=NORMAL, and with receipts checked but not stored (routing alone).
- latency: `--calls` requests one after another, each submit → completed, against calling the
  same backend directly. Two backends: the synthetic one (`--tokens` at 50,000 tokens/s, i.e.
  0.2 ms of serving, so what is measured is routing) and an OpenAI-compatible echo server on
  127.0.0.1 (hypercorn), i.e. a real HTTP round trip per call. Routing overhead = routed − direct
  (median of per-pair differences: direct and routed calls alternate), and routed / direct;
  py-libp2p's floor for such an exchange (open a stream, a few bytes each way, close); and
  where the routed time goes at the gateway (`JobService.counters`: stream open + the
  provider's answer, the wait for the result after acceptance, receipt check + ledger).
- held (`--held-only` runs just this): the gateway desk's `advance`, which the route loop calls
  every 0.1 s, with 1,000 and 100,000 finished requests held: its longest and median call over
  30 s of its clock, and the ratio of the longest calls (it walked every record every 10 s:
  ~9 us a record, a 0.9 s stall of the event loop with 100,000 held).
- offers (`--offers-only` runs just this): the gateway's cache of the view's offer list
  (`jobs.ViewOffers`) against reading `view.offers_at` each time, on views of 10, 100 and 1,000
  signers (three announcements each): a miss (read + the view's next boundary) and a hit, as
  ratios to the plain read, best of 200.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import coincurve
import trio

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.ledger import AsyncLedger
from neuroshard_p2p.ledger.store import ledger_path
from neuroshard_p2p.node.backends import InferenceBackend, OpenAIBackend, SyntheticBackend
from neuroshard_p2p.node.job_service import JobService
from neuroshard_p2p.node.settings import NodeSettings

CONFIG = MarketConfig(dynamic_pricing=False, max_tokens_per_minute=10**9)
PRICE_NANO = 100_000_000
PROVIDER_TPS = 50_000


def _key(i: int) -> coincurve.PrivateKey:
    return coincurve.PrivateKey((1000 + i).to_bytes(32, "big"))


@asynccontextmanager
async def _pair(base: Path, *, ledger: str, backend: InferenceBackend | None = None
                ) -> AsyncIterator[tuple[Any, JobService, Any, JobService]]:
    """A gateway and a provider, connected, the provider's offer in the gateway's view.
    `ledger`: "FULL" (what a node runs), "NORMAL" or "none"."""
    from neuroshard_p2p.node.host import Node

    async def start(name: str, index: int, capacity: int, node_backend: InferenceBackend | None,
                    stack: AsyncExitStack) -> tuple[Any, JobService]:
        settings = NodeSettings(data_dir=base / name, listen=("/ip4/127.0.0.1/tcp/0",), api="off",
                                capacity=capacity, min_price=0.01, announce_interval_s=5.0,
                                charter=builtin("simnet").replace(market=CONFIG))
        # The ledger a daemon opens for its node ("FULL"), or one in the mode under test.
        store = None
        if ledger != "none":
            store = await AsyncLedger.open(ledger_path(base / name), synchronous=ledger)
            stack.push_async_callback(store.aclose)
        if node_backend is not None:
            stack.push_async_callback(node_backend.aclose)
        node = Node(settings, private_key=_key(index), backend=node_backend, ledger=store)
        await stack.enter_async_context(node)
        return node, node.jobs

    async with AsyncExitStack() as stack:
        gateway_node, gateway = await start("gateway", 1, 0, None, stack)
        provider_node, provider = await start("provider", 2, PROVIDER_TPS, backend, stack)
        await gateway_node.connect(provider_node.addrs[0])
        with trio.fail_after(10):
            while not gateway_node.engine.view.offers_at(gateway_node.now()):
                await trio.sleep(0.01)
        yield gateway_node, gateway, provider_node, provider


async def _throughput(base: Path, jobs: int, tokens: int, ledger: str) -> tuple[float, float]:
    """(jobs per second, CPU milliseconds per job of this process: both sides and the ledger
    threads). CPU time depends much less than wall time on what else the machine runs."""
    async with _pair(base / f"throughput-{ledger}", ledger=ledger) as (_, gateway, _, _):
        cpu = time.process_time()
        start = time.perf_counter()
        ids = [gateway.submit(tokens, 2 * PRICE_NANO).request_id for _ in range(jobs)]
        with trio.fail_after(120):
            for rid in ids:
                status = await gateway.wait_finished(rid)
                if status.state != "completed":
                    raise RuntimeError(f"request {rid} ended {status.state}: {status.reason}")
        return (jobs / (time.perf_counter() - start),
                (time.process_time() - cpu) * 1000 / jobs)


def _median_p90(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[int(0.9 * (len(ordered) - 1))]


async def _latency(base: Path, calls: int, tokens: int, name: str,
                   make_backend: Callable[[], InferenceBackend]) -> dict[str, float]:
    """Direct and routed calls alternate, so a load that comes and goes on a shared machine
    weighs on both alike; the overhead is the median of the per-pair differences."""
    prompt = "one two three four five six seven eight nine ten"
    direct = make_backend()
    async with _pair(base / f"latency-{name}", ledger="FULL",
                     backend=make_backend()) as (_, gateway, _, _):
        async def call_direct() -> None:
            await direct.serve(prompt, tokens, trio.current_time() + 10)

        async def call_routed() -> None:
            status = gateway.submit(tokens, 2 * PRICE_NANO, prompt=prompt)
            with trio.fail_after(30):
                done = await gateway.wait_finished(status.request_id)
            if done.state != "completed":
                raise RuntimeError(f"routed request ended {done.state}: {done.reason}")

        await call_direct()  # warm up: connections, first stream
        await call_routed()
        directs: list[float] = []
        routeds: list[float] = []
        for _ in range(calls):
            for fn, times in ((call_direct, directs), (call_routed, routeds)):
                start = time.perf_counter()
                await fn()
                times.append((time.perf_counter() - start) * 1000)
        c = gateway.counters
        phases = {f"{name}_{key}_ms": 1000 * getattr(c, key) / max(1, c.timed_jobs)
                  for key in ("answer_wait_s", "result_wait_s", "settle_s")}
    await direct.aclose()
    direct_median, direct_p90 = _median_p90(directs)
    routed_median, routed_p90 = _median_p90(routeds)
    overhead = statistics.median(r - d for r, d in zip(routeds, directs))
    return {f"{name}_direct_ms": direct_median, f"{name}_direct_p90_ms": direct_p90,
            f"{name}_routed_ms": routed_median, f"{name}_routed_p90_ms": routed_p90,
            f"{name}_overhead_ms": overhead,
            f"{name}_routed_over_direct": routed_median / direct_median, **phases}


async def _stream_floor(base: Path, calls: int) -> tuple[float, float]:
    """py-libp2p's floor for one job-like exchange between the same two nodes: open a stream,
    send a few bytes, read the answer, close (median, p90 ms)."""
    from libp2p.peer.id import ID

    async def echo(stream: Any) -> None:
        await stream.write(await stream.read(64))
        await stream.close()

    async with _pair(base / "floor", ledger="none") as (gateway_node, _, provider_node, _):
        provider_node.host.set_stream_handler("/neuroshard-bench/echo/1.0.0", echo)
        peer = ID.from_base58(provider_node.peer_id)
        times = []
        for i in range(calls + 1):
            start = time.perf_counter()
            stream = await gateway_node.host.new_stream(peer, ["/neuroshard-bench/echo/1.0.0"])
            await stream.write(b"job")
            await stream.read(64)
            await stream.close()
            if i:  # the first one warms up
                times.append((time.perf_counter() - start) * 1000)
    return _median_p90(times)


async def _echo_server(nursery: trio.Nursery) -> str:
    """An OpenAI-compatible echo server on 127.0.0.1 (chat completions; usage = words echoed)."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
                await send({"type": f"lifespan.{kind}.complete"})
                if kind == "shutdown":
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        request = json.loads(body)
        words = request["messages"][-1]["content"].split()[: request["max_tokens"]]
        answer = json.dumps({"model": request["model"], "choices": [{
            "index": 0, "finish_reason": "stop",
            "message": {"role": "assistant", "content": " ".join(words)}}],
            "usage": {"prompt_tokens": len(words), "completion_tokens": len(words),
                      "total_tokens": 2 * len(words)}}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(answer)).encode())]})
        await send({"type": "http.response.body", "body": answer})

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    binds = await nursery.start(serve, app, config)
    return str(binds[0])


def offer_cache(sizes: tuple[int, ...] = (10, 100, 1000), repeat: int = 200
                ) -> list[tuple[int, float, float, float]]:
    """(signers, read, miss, hit) in seconds, best of `repeat`: `view.offers_at(now)`, and
    `ViewOffers.at` computing (a new view version) and answering from what it kept."""
    from neuroshard_p2p.node.jobs import ViewOffers
    from neuroshard_p2p.view import MarketView
    from neuroshard_p2p.wire import Announcement, decode_unchecked_time, encode

    def best(call: Callable[[], object]) -> float:
        fastest = float("inf")
        for _ in range(repeat):
            started = time.perf_counter()
            call()
            fastest = min(fastest, time.perf_counter() - started)
        return fastest

    rows = []
    t0_ms = 1_700_000_000_000
    for size in sizes:
        view = MarketView(MarketConfig())
        messages = []
        for i in range(1, size + 1):
            key = _key(i)
            signer = key.public_key.format(compressed=True)
            for k in range(3):  # keep-alives 20 s apart
                at = t0_ms + 20_000 * k + i
                messages.append(decode_unchecked_time(encode(Announcement(
                    signer, at, at, 100 + i, 1_000 * (i % 50), 0, 0), key)))
        view.merge_messages(messages)  # type: ignore[arg-type]  # all announcements
        now = (t0_ms + 45_000) / 1000
        cache = ViewOffers()

        def miss() -> None:
            view.version += 1  # what a merge does to the cache
            cache.at(view, now)

        read = best(lambda: view.offers_at(now))
        missed = best(miss)
        hit = best(lambda: cache.at(view, now + 0.25))
        rows.append((size, read, missed, hit))
    return rows


def _held_rows(sizes: tuple[int, ...] = (1_000, 100_000), seconds: float = 30.0
               ) -> list[tuple[int, float, float]]:
    """The gateway desk's `advance` (called every 0.1 s of its clock by the route loop) with
    `size` finished requests held: (size, its longest call over `seconds` of simulated time, the
    median call), in ms. Each call blocks the node's event loop for as long as it takes."""
    from neuroshard_p2p.view.view import CountedOffer
    from neuroshard_p2p.node.jobs import GatewayDesk, GatewaySettings, ProviderDesk
    from neuroshard_p2p.wire import sign

    gateway, provider_key = _key(1), _key(2)
    provider_pub = provider_key.public_key.format(compressed=True)
    config = MarketConfig(dynamic_pricing=False, target_response_s=2.0, retention_s=3600.0)
    rows = []
    for size in sizes:
        desk = GatewayDesk(config, gateway.public_key.format(compressed=True), GatewaySettings(
            max_open_requests=size + 10, max_finished_requests=size + 10))
        t0 = 1_700_000_000.0
        desk.set_view_offers([CountedOffer(provider_pub, 50_000, 10, int(t0 * 1000))], t0)
        provider = ProviderDesk(provider_pub, config)
        for i in range(size):
            rid = f"r{i}"
            desk.submit(rid, "alice", 10, 2 * PRICE_NANO, price_nano=PRICE_NANO, now=t0)
            [dispatch] = desk.dispatch(t0)
            job = sign(dispatch.job, gateway)
            receipt = sign(provider.receipt_for(job, 10, t0, t0, t0), provider_key)
            desk.on_completed(rid, dispatch.attempt, receipt, "out", t0)
        calls = []
        for k in range(int(seconds * 10)):
            started = time.perf_counter()
            desk.advance(t0 + 1 + k / 10)
            calls.append((time.perf_counter() - started) * 1000)
        rows.append((size, max(calls), statistics.median(calls)))
    return rows


def _print_held() -> None:
    rows = _held_rows()
    print("gateway desk's advance with finished requests held (every 0.1 s for 30 s of its "
          "clock; ms)")
    for size, longest, median in rows:
        print(f"  {size:>9,} held   longest {longest:8.3f}   median {median:8.4f}")
    print(f"  longest call, {rows[-1][0]:,} held / {rows[0][0]:,} held: "
          f"{rows[-1][1] / rows[0][1]:.1f} (flat: no call walks what is held)")


def run(jobs: int = 300, calls: int = 40, tokens: int = 10) -> dict[str, Any]:
    """Measure and return the figures described in the module docstring."""
    results: dict[str, Any] = {"jobs": jobs, "calls": calls, "tokens": tokens}

    async def main() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            for ledger in ("FULL", "NORMAL", "none"):
                rate, cpu_ms = await _throughput(base, jobs, tokens, ledger)
                results[f"jobs_per_s_{ledger.lower()}"] = rate
                results[f"cpu_ms_per_job_{ledger.lower()}"] = cpu_ms
            results["stream_floor_ms"], results["stream_floor_p90_ms"] = await _stream_floor(
                base, calls)
            results.update(await _latency(base, calls, tokens, "synthetic",
                                          lambda: SyntheticBackend(PROVIDER_TPS)))
            async with trio.open_nursery() as nursery:
                url = await _echo_server(nursery)
                results.update(await _latency(base, calls, tokens, "openai",
                                              lambda: OpenAIBackend(url, "echo", timeout_s=10)))
                nursery.cancel_scope.cancel()

    trio.run(main)
    # CPU per job is the steadier figure on a shared machine: the ledgers' share of the work.
    results["cpu_full_over_none"] = results["cpu_ms_per_job_full"] / results["cpu_ms_per_job_none"]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench jobs",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=300, help="requests in the throughput rows")
    parser.add_argument("--calls", type=int, default=40, help="sequential requests per latency row")
    parser.add_argument("--tokens", type=int, default=10, help="tokens per request")
    parser.add_argument("--offers-only", action="store_true",
                        help="only the view-offer cache rows (no nodes, about a second)")
    parser.add_argument("--held-only", action="store_true",
                        help="only the desk's advance with 1,000 and 100,000 finished requests "
                             "held (no nodes, about 20 s)")
    args = parser.parse_args(argv)
    if args.offers_only:
        _print_offer_cache()
        return
    if args.held_only:
        _print_held()
        return
    r = run(args.jobs, args.calls, args.tokens)
    print(f"jobs benchmark: gateway + provider in one process on 127.0.0.1, "
          f"{r['tokens']} tokens per request")
    print(f"  throughput ({r['jobs']} requests submitted at once)")
    for label, key in (("ledgers synchronous=FULL", "full"),
                       ("ledgers synchronous=NORMAL", "normal"),
                       ("no ledger (receipts checked only)", "none")):
        print(f"    {label:36s} {r['jobs_per_s_' + key]:>8,.0f} jobs/s"
              f"   {r['cpu_ms_per_job_' + key]:6.2f} ms CPU per job")
    print(f"    CPU per job, FULL ledgers / none     {r['cpu_full_over_none']:.2f}")
    print(f"  latency ({r['calls']} sequential requests, median / p90 ms)")
    for name in ("synthetic", "openai"):
        print(f"    {name:9s} direct {r[f'{name}_direct_ms']:7.2f} / {r[f'{name}_direct_p90_ms']:7.2f}"
              f"   routed {r[f'{name}_routed_ms']:7.2f} / {r[f'{name}_routed_p90_ms']:7.2f}"
              f"   overhead {r[f'{name}_overhead_ms']:6.2f} ms"
              f"   routed/direct {r[f'{name}_routed_over_direct']:.1f}")
    print(f"    libp2p floor: stream open + one exchange + close  {r['stream_floor_ms']:.2f} / "
          f"{r['stream_floor_p90_ms']:.2f}")
    print("  where a routed job's time goes at the gateway (means, ms): stream open + answer /"
          " result after accept / receipt check + ledger")
    for name in ("synthetic", "openai"):
        print(f"    {name:9s} {r[f'{name}_answer_wait_s_ms']:6.2f} / "
              f"{r[f'{name}_result_wait_s_ms']:6.2f} / {r[f'{name}_settle_s_ms']:6.2f}")
    _print_offer_cache()


def _print_offer_cache() -> None:
    print("  the gateway's view-offer cache (best of 200; ratios to reading the view)")
    for size, read, missed, hit in offer_cache():
        print(f"    {size:5,d} signers  offers_at {read * 1e6:8.1f} µs   miss {missed * 1e6:8.1f} µs"
              f" ({missed / read:.2f})   hit {hit * 1e6:5.2f} µs ({hit / read:.4f})")


if __name__ == "__main__":
    main()
