"""A provider whose inference backend refuses connections offers nothing until it answers again.

Before: a provider whose llama.cpp / vLLM / Ollama server was down (or not yet up) kept
announcing its capacity, so every peer's price counted tokens per second nobody could serve,
and buyers were matched to it until their requests failed. Real parts: two `neuroshard-node
run` processes on 127.0.0.1 (a provider with the `openai` backend and a gateway) and the
OpenAI-compatible test server as a process of its own, stopped and started on one port.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "neuroshard_p2p.cli"]
SERVER = Path(__file__).with_name("openai_compat_server.py")
NODE_FLAGS = ["--network", "simnet", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
              "--no-mdns", "--no-upnp", "--log-level", "warning"]

pytestmark = pytest.mark.slow


def cli_json(data_dir: Path, *args: str) -> Any:
    done = subprocess.run([*CLI, *args, "--data-dir", str(data_dir), "--json"], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_server(port: int) -> subprocess.Popen[str]:
    server = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port)], cwd=ROOT,
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    line = server.stdout.readline()
    assert line.startswith("listening on "), line
    return server


def test_a_provider_offers_nothing_while_its_backend_refuses_connections(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there yet: the backend is "down" at start
    provider_dir, gateway_dir = tmp_path / "provider", tmp_path / "gateway"
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(subprocess.Popen(
            [*CLI, "run", "--data-dir", str(provider_dir), *NODE_FLAGS, "--capacity", "1000",
             "--backend", "openai", "--backend-url", f"http://127.0.0.1:{port}",
             "--backend-model", "test-model"],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        wait_for(lambda: (provider_dir / "api").exists(), 20, "the provider serves its API")
        address = cli_json(provider_dir, "id")["addrs"][0]
        procs.append(subprocess.Popen([*CLI, "run", "--data-dir", str(gateway_dir), *NODE_FLAGS,
                                       "--bootstrap", address], cwd=ROOT, env=ENV,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True))
        wait_for(lambda: (gateway_dir / "api").exists(), 20, "the gateway serves its API")

        def provider_state() -> tuple[bool, int, float]:
            node = cli_json(provider_dir, "id")
            info = httpx.get(node["api"] + "/api/node", timeout=10).json()
            metrics = httpx.get(node["api"] + "/metrics", timeout=10).text
            (gauge,) = [line for line in metrics.splitlines()
                        if line.startswith("neuroshard_backend_reachable ")]
            return (info["backend_reachable"], info["offer"]["tokens_per_second"],
                    float(gauge.split()[1]))

        def supply_at_gateway() -> int:
            return int(cli_json(gateway_dir, "market")["supply_tokens_per_sec"])

        # 1. Down at start: the check finds it, and the gateway counts nothing.
        wait_for(lambda: provider_state() == (False, 0, 0.0), 15,
                 "the provider holds its offer back", show=provider_state)
        wait_for(lambda: cli_json(gateway_dir, "peers")["count"] >= 1 and
                 supply_at_gateway() == 0, 20, "the gateway counts no capacity")
        # /api/health says why this provider is not doing its work (a monitor's view)
        provider_api = cli_json(provider_dir, "id")["api"]
        health = httpx.get(provider_api + "/api/health", timeout=10)
        assert health.status_code == 503
        assert [p["check"] for p in health.json()["problems"]] == ["backend"], health.json()

        # The operator changes the offer meanwhile: it waits with the rest.
        done = subprocess.run([*CLI, "register", "--data-dir", str(provider_dir), "--capacity",
                               "800"], cwd=ROOT, env=ENV, capture_output=True, text=True,
                              timeout=30)
        assert done.returncode == 0, done.stderr
        assert provider_state() == (False, 0, 0.0)

        # 2. The server comes up: within a check (5 s) the offer, as last set, is announced.
        server = start_server(port)
        procs.append(server)
        wait_for(lambda: provider_state() == (True, 800, 1.0), 15,
                 "the provider offers again", show=provider_state)
        wait_for(lambda: supply_at_gateway() == 800, 15, "the gateway counts 800 tokens/s")
        health = httpx.get(provider_api + "/api/health", timeout=10)
        assert (health.status_code, health.json()["problems"]) == (200, []), health.json()

        # 3. The server goes down: the next job meets it, and the offer is withdrawn at once.
        server.send_signal(signal.SIGKILL)
        server.communicate(timeout=10)
        done = subprocess.run([*CLI, "submit", "--data-dir", str(gateway_dir), "--tokens", "10",
                               "--max-price", "0.9", "--prompt", "hello"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: supply_at_gateway() == 0, 15,
                 "the gateway stops counting the provider's capacity")
        assert provider_state() == (False, 0, 0.0)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        out = procs[0].communicate(timeout=10)[0]  # the provider's log
        for proc in procs[1:]:
            if proc.stdout is not None and not proc.stdout.closed:  # not read yet
                proc.communicate(timeout=10)
    assert out.count("backend unreachable: offering no capacity") == 2, out[-3000:]
    assert out.count("backend reachable again: offering 800 tokens/s") == 1, out[-3000:]
