"""Benchmark `soak`: a gateway and a provider under steady buying, and what their memory does.

    python -m neuroshard_p2p.bench soak [--seconds 960] [--clients 4] [--every 60]

Two `neuroshard-node run` processes on 127.0.0.1 (network simnet): a provider offering 50,000
tokens/s with the synthetic backend, and a gateway bootstrapped from it. `--clients` threads
of the official `openai` client (installed with the test extras) buy through the gateway's
/v1/chat/completions without a pause, half the requests streamed, 50 tokens each. Every
`--every` seconds it prints the requests done and each process's resident memory (VmRSS); at the
end, each process's growth per request over the run (KB), and the errors seen.

What it showed (7 December, 16 minutes, 62,062 requests, 0 errors): the provider levelled off
(107 → 122 MB, flat after ~10 minutes: its seen-job ids last 330 s); the gateway grew linearly by
2.07 KB a request, since each finished request was kept for retention_s (an hour). The gateway
now keeps at most 100,000 (`GatewaySettings.max_finished_requests`), so its growth stops there.
"""

from __future__ import annotations

import argparse
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MODEL = "neuroshard/synthetic-1"


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _wait_for(path: Path, pattern: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text()) if path.exists() else None
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise SystemExit(f"no {pattern!r} in {path} within {timeout:g} s:\n"
                     f"{path.read_text() if path.exists() else ''}")


def run(seconds: float, clients: int, every: float) -> None:
    import httpx
    import openai

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []

        def start(name: str, *extra: str) -> subprocess.Popen[bytes]:
            log = (base / f"{name}.log").open("w")
            process = subprocess.Popen(
                [sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir",
                 str(base / name), "--network", "simnet", "--no-mdns", "--no-upnp",
                 "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", *extra],
                stdout=log, stderr=subprocess.STDOUT)
            procs.append(process)
            return process

        try:
            provider = start("provider", "--capacity", "50000")
            addr = _wait_for(base / "provider.log", r"(/ip4/127\.0\.0\.1/tcp/\d+/p2p/\w+)", 60)
            gateway = start("gateway", "--bootstrap", addr)
            url = _wait_for(base / "gateway.log", r"dashboard: (http://127\.0\.0\.1:\d+)/", 60)
            token = (base / "gateway" / "api_token").read_text().strip()
            deadline = time.monotonic() + 90
            while httpx.get(url + "/api/market").json().get("supply_tokens_per_sec", 0) == 0:
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway never counted the provider's offer")
                time.sleep(0.5)
            client = openai.OpenAI(base_url=url + "/v1", api_key=token, max_retries=0,
                                   timeout=30)
            done = [0] * clients
            errors: dict[str, int] = {}
            stop_at = time.monotonic() + seconds

            def buy(i: int) -> None:
                n = 0
                while time.monotonic() < stop_at:
                    n += 1
                    try:
                        answer: Any = client.chat.completions.create(
                            model=MODEL, max_tokens=50, stream=n % 2 == 0,
                            messages=[{"role": "user", "content": f"client {i} request {n}"}],
                            extra_body={"provider": {"max_price": {"completion": 5}}})
                        if n % 2 == 0:
                            for _ in answer:
                                pass
                        done[i] += 1
                    except Exception as exc:  # noqa: BLE001 - counted and shown
                        key = f"{type(exc).__name__}: {str(exc)[:80]}"
                        errors[key] = errors.get(key, 0) + 1

            first = (_rss_mb(gateway.pid), _rss_mb(provider.pid))
            threads = [threading.Thread(target=buy, args=(i,)) for i in range(clients)]
            started = time.monotonic()
            for thread in threads:
                thread.start()
            print(f"soak: {clients} openai clients through one gateway for {seconds:g} s")
            print(f"  {'s':>6}  {'requests':>9}  {'gateway MB':>10}  {'provider MB':>11}")
            while time.monotonic() < stop_at:
                print(f"  {time.monotonic() - started:6.0f}  {sum(done):9,}  "
                      f"{_rss_mb(gateway.pid):10.1f}  {_rss_mb(provider.pid):11.1f}", flush=True)
                time.sleep(max(0.1, min(every, stop_at - time.monotonic())))
            for thread in threads:
                thread.join()
            last = (_rss_mb(gateway.pid), _rss_mb(provider.pid))
            total = max(1, sum(done))
            print(f"  {time.monotonic() - started:6.0f}  {sum(done):9,}  {last[0]:10.1f}  "
                  f"{last[1]:11.1f}")
            print(f"  growth per request: gateway {(last[0] - first[0]) * 1024 / total:.2f} KB, "
                  f"provider {(last[1] - first[1]) * 1024 / total:.2f} KB; "
                  f"errors {sum(errors.values())} {errors or ''}")
        finally:
            for process in procs:
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in procs:
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench soak",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=960.0, help="how long to buy")
    parser.add_argument("--clients", type=int, default=4, help="client threads buying at once")
    parser.add_argument("--every", type=float, default=60.0, help="seconds between samples")
    args = parser.parse_args(argv)
    run(args.seconds, args.clients, args.every)
