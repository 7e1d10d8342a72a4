"""`python -m neuroshard_p2p.bench openai`: streamed completions through the market vs straight
from the backend, in one run.

Four processes on 127.0.0.1: the backend (tests/openai_compat_server.py, an OpenAI-compatible
server streaming SSE at a paced rate), the provider node whose backend is that server, the
gateway node with its HTTP API (each node its own process, as on two machines), and this one,
the client (httpx on trio). On a machine shared with other work, run it at real-time priority
(`chrt -r 1 python -m neuroshard_p2p.bench openai`): every hop of the market's path is a process
waking up, and a busy scheduler delays each (the report says which way it ran). Measured in the same run, alternating:
- time to first token (TTFT) and streamed tokens/s, direct to the backend vs through the
  gateway's /v1/chat/completions (median of `--rounds` sequential streams each);
- `--concurrent` streams at once through the one gateway, each with its own words, checked for
  loss and mix-ups, and every one settled exactly in both ledgers (read from their SQLite files).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import trio

SERVER = Path(__file__).resolve().parents[2] / "tests" / "openai_compat_server.py"
PROVIDER_TPS = 50_000


async def _run_node(role: str, arg: str, base: Path, capacity: int) -> None:
    """One market process, until stdin closes: the provider (whose backend is the server at
    `arg`) or the gateway with its API (bootstrapping from the provider's address `arg`)."""
    from neuroshard_p2p.charter import builtin
    from neuroshard_p2p.daemon import Daemon
    from neuroshard_p2p.node.datadir import ensure_data_dir, load_api_token
    from neuroshard_p2p.node.settings import NodeSettings

    charter = builtin("simnet")
    common = dict(listen=("/ip4/127.0.0.1/tcp/0",), charter=charter, announce_interval_s=5.0)
    ensure_data_dir(base / role)
    if role == "provider":
        settings = NodeSettings(data_dir=base / role, api="off", capacity=capacity,
                                min_price=0.01, backend="openai", backend_url=arg,
                                backend_model="bench", **common)  # type: ignore[arg-type]
    else:
        settings = NodeSettings(data_dir=base / role, api="127.0.0.1:0", bootstrap=(arg,),
                                **common)  # type: ignore[arg-type]
    async with Daemon(settings) as daemon:
        assert daemon.node is not None
        if role == "provider":
            print("ready", daemon.node.addrs[0], flush=True)
        else:
            with trio.fail_after(20):
                while not daemon.node.engine.view.offers_at(daemon.node.now()):
                    await trio.sleep(0.05)
            print("ready", daemon.api_url, load_api_token(base / role), flush=True)
        await trio.to_thread.run_sync(sys.stdin.read, abandon_on_cancel=True)


async def _stream(client: httpx.AsyncClient, url: str, token: str | None, prompt: str,
                  tokens: int, chat: bool = True) -> dict[str, Any]:
    """One streamed completion: TTFT, tokens/s after the first, the text, the market fields."""
    body: dict[str, Any] = {"model": "neuroshard/synthetic-1", "max_tokens": tokens,
                            "stream": True, "messages": [{"role": "user", "content": prompt}]}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    started = time.perf_counter()
    first = last = None
    texts: list[str] = []
    first_words = 0
    market: dict[str, Any] = {}
    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                             headers=headers) as response:
        assert response.status_code == 200, (response.status_code, await response.aread())
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            event = json.loads(data)
            assert "error" not in event, event
            market = event.get("neuroshard", market)
            for choice in event.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        first_words = len(text.split())
                    last = now
                    texts.append(text)
    assert first is not None and last is not None
    # Tokens are words here (the backend sends one per event; the market may carry several in
    # one piece), counted after the first piece over the time after it.
    words = len("".join(texts).split())
    return {"ttft": first - started, "tps": (words - first_words) / max(last - first, 1e-9),
            "text": "".join(texts), "pieces": len(texts), "market": market}


def _median(values: list[float]) -> float:
    return statistics.median(values)


async def _bench(args: argparse.Namespace) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="neuroshard-bench-openai-"))
    # The test server (its prompts "!rate R" pace it), or a real engine at --backend-url (then
    # one phase with --prompt, and no concurrent phase: its text cannot be checked).
    backend = None if args.backend_url else subprocess.Popen(
        [sys.executable, str(SERVER), "--port", "0"], stdout=subprocess.PIPE, text=True)
    phases = ([("engine", args.prompt)] if args.backend_url else
              [("paced", f"!rate {args.rate:g}"), ("unpaced", "!rate 0")])
    warm = args.prompt if args.backend_url else "!rate 0"
    nodes: list[subprocess.Popen[str]] = []

    async def start(role: str, arg: str) -> list[str]:
        node = subprocess.Popen([sys.executable, "-m", "neuroshard_p2p.bench.openai", "--node",
                                 role, arg, str(base), "--capacity", str(args.capacity)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        nodes.append(node)
        assert node.stdout is not None
        line = await trio.to_thread.run_sync(node.stdout.readline)
        if not line.startswith("ready"):
            raise RuntimeError(f"the {role} process did not start")
        return line.split()[1:]

    try:
        if backend is None:
            backend_url = args.backend_url.rstrip("/")
        else:
            assert backend.stdout is not None
            backend_url = backend.stdout.readline().split()[-1]
        (provider_addr,) = await start("provider", backend_url)
        gateway_url, token = await start("gateway", provider_addr)
        results: dict[str, Any] = {"rounds": args.rounds, "tokens": args.tokens,
                                   "rate": args.rate, "phases": [label for label, _ in phases],
                                   "concurrent": 0 if args.backend_url else args.concurrent}
        limits = httpx.Limits(max_connections=args.concurrent + 10,
                              max_keepalive_connections=args.concurrent + 10)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            # Warm-up: connections, and three settled jobs so the provider is off probation.
            for _ in range(4):
                await _stream(client, gateway_url, token, warm, 5)
                await _stream(client, backend_url, None, warm, 5)
            procs = {"gateway": nodes[1].pid, "provider": nodes[0].pid,
                     **({"backend": backend.pid} if backend is not None else {})}
            waits_before = {name: _schedstat(pid) for name, pid in procs.items()}
            for label, prompt in phases:
                direct: list[dict[str, Any]] = []
                routed: list[dict[str, Any]] = []
                for _ in range(args.rounds):
                    direct.append(await _stream(client, backend_url, None, prompt, args.tokens))
                    routed.append(await _stream(client, gateway_url, token, prompt, args.tokens))
                for name, runs in (("direct", direct), ("market", routed)):
                    results[f"{label}_{name}_ttft_ms"] = _median([r["ttft"] for r in runs]) * 1e3
                    results[f"{label}_{name}_tps"] = _median([r["tps"] for r in runs])
                results[f"{label}_ttft_extra_ms"] = (results[f"{label}_market_ttft_ms"]
                                                     - results[f"{label}_direct_ttft_ms"])
                results[f"{label}_tps_ratio"] = (results[f"{label}_market_tps"]
                                                 / results[f"{label}_direct_tps"])
            results["run_queue_wait_us"] = _waits(waits_before, procs)
            if not results["concurrent"]:
                return results
            # Concurrent streams through the one gateway, each with its own words.
            outcomes: dict[int, dict[str, Any]] = {}

            async def one(i: int) -> None:
                outcomes[i] = await _stream(client, gateway_url, token,
                                            f"!rate {args.rate:g} s{i}x", args.tokens)

            started = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for i in range(args.concurrent):
                    nursery.start_soon(one, i)
            results["concurrent_wall_s"] = time.perf_counter() - started
            expected = {i: " ".join(f"s{i}x{k}" for k in range(args.tokens))
                        for i in range(args.concurrent)}
            results["concurrent_complete"] = sum(
                1 for i, o in outcomes.items() if o["text"] == expected[i])
            results["concurrent_mixed"] = sum(
                1 for i, o in outcomes.items() if o["text"] != expected[i])
            results["concurrent_ttft_median_ms"] = _median(
                [o["ttft"] for o in outcomes.values()]) * 1e3
            results["concurrent_tps_median"] = _median([o["tps"] for o in outcomes.values()])
            rids = {o["market"]["request_id"]: o["market"] for o in outcomes.values()}
        results["concurrent_settled_exactly"] = _check_ledgers(base, rids)
        return results
    finally:
        for node in reversed(nodes):
            if node.stdin is not None:
                node.stdin.close()
            try:
                node.wait(timeout=15)
            except subprocess.TimeoutExpired:
                node.kill()
        if backend is not None:
            backend.terminate()
            backend.wait()


def _check_ledgers(base: Path, markets: dict[str, dict[str, Any]]) -> int:
    """How many of the requests have one gateway row and one provider row with the same receipt,
    the tokens served and exactly tokens × price // 10^6 paid, 5 % of it burned (rounded down)."""
    from neuroshard_p2p.ledger.store import ledger_path
    from neuroshard_p2p.money import settle_amounts

    def rows(name: str) -> dict[str, list[tuple[Any, ...]]]:
        uri = f"file:{ledger_path(base / name)}?mode=ro"
        with sqlite3.connect(uri, uri=True) as db:
            out: dict[str, list[tuple[Any, ...]]] = {}
            for row in db.execute("SELECT request_id, receipt_id, tokens, price_nano, payment, "
                                  "burned, earned FROM settlements"):
                out.setdefault(row[0], []).append(row[1:])
            return out

    gateway, provider = rows("gateway"), rows("provider")
    exact = 0
    for rid, fields in markets.items():
        paid = settle_amounts(fields["tokens_served"], fields["locked_price_nano"], 0.05)
        want = (fields["tokens_served"], fields["locked_price_nano"], paid.payment, paid.burned,
                paid.earned)
        g, p = gateway.get(rid, []), provider.get(rid, [])
        if (len(g) == 1 and len(p) == 1 and g[0][1:] == want and p[0] == g[0]
                and fields["cost_nano"] == paid.payment):
            exact += 1
    return exact


def _schedstat(pid: int) -> tuple[int, int, int] | None:
    """(ns on a CPU, ns waiting on a run queue, time slices) of a process (Linux), or None."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            cpu, wait, slices = (int(x) for x in f.read().split()[:3])
    except (OSError, ValueError):
        return None
    return cpu, wait, slices


def _waits(before: dict[str, Any], procs: dict[str, int]) -> dict[str, float]:
    """Microseconds each process waited on a run queue per time slice since `before`: how long
    a process that woke (a chunk arrived) waited for a CPU."""
    out = {}
    for name, pid in procs.items():
        after = _schedstat(pid)
        if after is not None and before.get(name) is not None:
            slices = after[2] - before[name][2]
            out[name] = (after[1] - before[name][1]) / 1e3 / max(slices, 1)
    return out


def _policy() -> str:
    """How this process is scheduled (the children inherit it)."""
    policy = os.sched_getscheduler(0)
    if policy in (os.SCHED_FIFO, os.SCHED_RR):
        return f"real-time priority {os.sched_getparam(0).sched_priority}"
    return f"normal (nice {os.nice(0)})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench openai",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="sequential streams per side")
    parser.add_argument("--tokens", type=int, default=50, help="tokens per stream")
    parser.add_argument("--rate", type=float, default=100.0,
                        help="the backend's pace, tokens per second per stream")
    parser.add_argument("--concurrent", type=int, default=100, help="streams at once")
    parser.add_argument("--backend-url", default="",
                        help="a running OpenAI-compatible engine (e.g. llama.cpp's server) "
                             "instead of the test server")
    parser.add_argument("--capacity", type=int, default=PROVIDER_TPS,
                        help="tokens/s the provider offers (its jobs' deadlines follow from it: "
                             "give a real engine its real rate)")
    parser.add_argument("--prompt", default="Tell me about the sea.",
                        help="the prompt sent to --backend-url")
    parser.add_argument("--node", nargs=3, metavar=("ROLE", "ARG", "DIR"),
                        help=argparse.SUPPRESS)  # a market process
    args = parser.parse_args(argv)
    if args.node:
        trio.run(_run_node, args.node[0], args.node[1], Path(args.node[2]), args.capacity)
        return
    r = trio.run(_bench, args)
    print(f"openai benchmark: {'engine at ' + args.backend_url if args.backend_url else 'backend process'} (SSE) -> provider node process -> gateway node "
          f"process -> client, scheduling {_policy()}, "
          f"127.0.0.1; {r['tokens']} tokens per stream; medians of {r['rounds']} sequential "
          f"streams each, alternating")
    what = {"paced": f"backend paced at {r['rate']:g} tokens/s",
            "unpaced": "backend as fast as it can", "engine": f"the engine, prompt {args.prompt!r}"}
    for label in r["phases"]:
        print(f"  {what[label]}")
        print(f"    TTFT        direct {r[label + '_direct_ttft_ms']:7.2f} ms   market "
              f"{r[label + '_market_ttft_ms']:7.2f} ms   market - direct "
              f"{r[label + '_ttft_extra_ms']:6.2f} ms")
        print(f"    tokens/s    direct {r[label + '_direct_tps']:9.1f}   market "
              f"{r[label + '_market_tps']:9.1f}   market / direct {r[label + '_tps_ratio']:.3f}")
    if r.get("run_queue_wait_us"):
        print("  run-queue wait per time slice (/proc/PID/schedstat, sequential phases): "
              + ", ".join(f"{name} {us:.0f} us" for name, us in r["run_queue_wait_us"].items()))
    n = r["concurrent"]
    if not n:
        return
    print(f"  {n} concurrent streams through one gateway (backend {r['rate']:g} tokens/s each): "
          f"{r['concurrent_complete']}/{n} complete and in order, {r['concurrent_mixed']} "
          f"lost or mixed up, {r['concurrent_settled_exactly']}/{n} settled exactly in both "
          f"ledgers; wall {r['concurrent_wall_s']:.2f} s, TTFT median "
          f"{r['concurrent_ttft_median_ms']:.1f} ms, tokens/s median "
          f"{r['concurrent_tps_median']:.1f}")


if __name__ == "__main__":
    main()
