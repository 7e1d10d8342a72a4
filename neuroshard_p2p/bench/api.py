"""How long the HTTP API takes per request, against a real node in its own process.

    python -m neuroshard_p2p.bench api [--requests 300]

Starts `neuroshard-node run` (fresh data dir, loopback only, a free API port), gives the market one
offer and one waiting request, then times sequential keep-alive GETs of each read endpoint from
this process, round-robin. The baseline, measured in the same rounds, is a 404 (`GET /api/nothing`): the server's
and the client's fixed cost per request, so each endpoint's ratio to it is what the endpoint itself
adds, and the ratios hold on a loaded machine where the absolute times do not.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ENDPOINTS = ("/api/nothing", "/api/market", "/metrics", "/api/market/history?window=1h",
             "/api/market/history?window=24h", "/api/market/offers", "/api/node", "/api/peers",
             "/api/ledger", "/")


def _start_node(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    command = [sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir", str(data_dir),
               "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
               "--log-level", "warning"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               text=True)
    assert process.stdout is not None
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("dashboard: "):
            return process, line.split(" ", 1)[1].strip().rstrip("/")
    process.kill()
    raise SystemExit("the node did not start (no 'dashboard:' line within 60 s)")


def _time(client: httpx.Client, paths: tuple[str, ...], requests: int) -> dict[str, list[float]]:
    """Round-robin over the endpoints, so a burst of load elsewhere on the machine falls on all
    of them alike instead of on whichever was being measured."""
    for path in paths:  # warm up: connection, caches
        for _ in range(10):
            client.get(path)
    samples: dict[str, list[float]] = {path: [] for path in paths}
    for _ in range(requests):
        for path in paths:
            started = time.perf_counter()
            client.get(path)
            samples[path].append(time.perf_counter() - started)
    return samples


def _full_history_ms(repeat: int = 50) -> tuple[float, float, float]:
    """A node up for a day (1 s ticks): ms to build the 1 h and the 24 h series, and to encode the
    1 h one as the API does (its points are thinned to MAX_POINTS)."""
    import json

    from neuroshard_p2p.api.history import PriceHistory

    history = PriceHistory(1.0)
    start = 1_800_000_000
    for tick in range(start - 86_400, start):
        history.record(tick, 50_000_000 + tick % 977)
    now = float(start)

    def best(fn: object) -> float:
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            fn()  # type: ignore[operator]
            times.append(time.perf_counter() - t0)
        return min(times) * 1000

    hour = best(lambda: history.series(3600, now))
    day = best(lambda: history.series(86_400, now))
    encode = best(lambda: json.dumps({"points": [[t, p] for t, p in history.series(3600, now)]}))
    return hour, day, encode


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench api",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300, help="timed GETs per endpoint")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="neuroshard-bench-api-") as tmp:
        data_dir = Path(tmp)
        process, base = _start_node(data_dir)
        try:
            token = (data_dir / "api_token").read_text().strip()
            with httpx.Client(base_url=base, timeout=10.0) as client:
                auth = {"Authorization": f"Bearer {token}"}
                client.post("/api/market/register", headers=auth,
                            json={"tokens_per_second": 1000, "min_price": 0.9}).raise_for_status()
                client.post("/api/market/requests", headers=auth,
                            json={"tokens": 5000, "max_price": 1.0}).raise_for_status()
                time.sleep(3)  # a few ticks into the history
                results = _time(client, ENDPOINTS, args.requests)
        finally:
            process.terminate()
            process.wait(timeout=30)
    base_median = statistics.median(results["/api/nothing"])
    print(f"{args.requests} sequential keep-alive GETs per endpoint, node in its own process")
    print(f"{'endpoint':34} {'median ms':>10} {'p99 ms':>8} {'x 404':>6}")
    for path, samples in results.items():
        samples.sort()
        median = statistics.median(samples)
        p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
        print(f"{path:34} {median * 1000:10.2f} {p99 * 1000:8.2f} {median / base_median:6.2f}")
    hour, day, encode = _full_history_ms()
    print(f"a full day recorded (86,400 ticks): series 1 h {hour:.2f} ms, 24 h {day:.2f} ms, "
          f"1 h series + JSON {encode:.2f} ms ({encode / (base_median * 1000):.2f} x the 404)")


if __name__ == "__main__":
    main()
