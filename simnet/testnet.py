"""`neuroshard-simnet testnet`: K real `neuroshard-node run` processes on consecutive ports.

Node i keeps its data dir in `<data-dir>/node-i` (so its peer id survives restarts), listens for
libp2p on `port + i` and serves its API and dashboard on `api-port + i`. Node 0 is the bootstrap
node; the others dial it. The network is a built-in (`--network simnet`, the default: no identity
work to grind; or `testnet`), or, for any other name, the simnet charter under that name, written
to `<data-dir>/charter.toml` (a network of its own: other local networks never mix with it). The command prints the bootstrap multiaddr an outside
`neuroshard-node run --bootstrap …` uses to join, then waits. Ctrl-C (or SIGTERM) sends SIGINT to
every node — each publishes its withdrawal and stops — and waits for them; a node that does not
stop within the grace period is killed.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_S = 15.0
START_TIMEOUT_S = 60.0


@dataclass
class TestnetNode:
    """One node process of the testnet."""

    index: int
    data_dir: Path
    port: int
    api_port: int
    peer_id: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.port}/p2p/{self.peer_id}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "node.log"


def node_command() -> list[str]:
    """How to start `neuroshard-node`: the installed script, or this Python with the module."""
    script = shutil.which("neuroshard-node")
    if script:
        return [script]
    return [sys.executable, "-m", "neuroshard_p2p.cli"]


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_testnet(peers: int, *, data_dir: str = "out/testnet", port: int = 4011,
                api_port: int = 8000, network: str = "simnet", capacity: int = 1000,
                host: str = "127.0.0.1", log_level: str = "warning",
                stop_after_s: float | None = None) -> int:
    """Start the testnet and block until Ctrl-C/SIGTERM (or `stop_after_s`, for tests); stop all
    nodes cleanly. Returns the exit code."""
    from neuroshard_p2p.node.datadir import ensure_data_dir

    if peers < 1:
        raise ValueError("--peers must be at least 1")
    if not (1 <= port and port + peers - 1 <= 65535 and 1 <= api_port
            and api_port + peers - 1 <= 65535):
        raise ValueError("ports out of range")
    root = Path(data_dir)
    network_args, network_id = testnet_charter(network, root)
    nodes = []
    for i in range(peers):
        report = ensure_data_dir(root / f"node-{i}")
        nodes.append(TestnetNode(i, report.path, port + i, api_port + i, report.peer_id))
        api_file = report.path / "api"
        if api_file.exists():
            api_file.unlink()  # a stale file from a run that was killed
    env = {**os.environ}
    # Make the package importable when running from a source checkout without installing it.
    source_root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [source_root, env.get("PYTHONPATH")]))
    command = node_command()
    stopping = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    code = 0
    try:
        for node in nodes:
            args = [*command, "run", "--data-dir", str(node.data_dir),
                    "--listen", f"/ip4/{host}/tcp/{node.port}",
                    "--api", f"{'127.0.0.1' if host == '0.0.0.0' else host}:{node.api_port}",
                    *network_args, "--capacity", str(capacity),
                    "--log-level", log_level]
            if node.index > 0:
                args += ["--bootstrap", nodes[0].multiaddr]
            log = open(node.log_path, "ab")
            # Own session: the terminal's Ctrl-C reaches only us; we stop the nodes in order.
            node.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
            log.close()
            print(f"started node {node.index} (pid {node.process.pid})", flush=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(nodes)
        while waiting and not stopping:
            for node in list(waiting):
                assert node.process is not None
                if node.process.poll() is not None:
                    raise RuntimeError(f"node {node.index} exited with code "
                                       f"{node.process.returncode}:\n{_tail(node.log_path)}")
                if (node.data_dir / "api").exists():
                    waiting.remove(node)
            if time.monotonic() > deadline:
                raise RuntimeError(f"nodes {[n.index for n in waiting]} did not start their API "
                                   f"within {START_TIMEOUT_S:g} s; logs in {root}")
            time.sleep(0.1)
        if not stopping:
            _print_ready(nodes, network_id, network_args)
        started = time.monotonic()
        while not stopping:
            for node in nodes:
                assert node.process is not None
                if node.process.poll() is not None:
                    print(f"node {node.index} exited (code {node.process.returncode}); last log "
                          f"lines:\n{_tail(node.log_path)}", file=sys.stderr, flush=True)
                    stopping = True
                    code = 1
            if stop_after_s is not None and time.monotonic() - started >= stop_after_s:
                break
            time.sleep(0.2)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        code = 1
    finally:
        _stop_all(nodes)
        for s, handler in previous.items():
            signal.signal(s, handler)
    return code


def testnet_charter(network: str, root: Path) -> tuple[list[str], str]:
    """The `run` flags that put a node on `network`, and its network id: a built-in's name, or
    the simnet charter under that name, kept in `<root>/charter.toml`."""
    from neuroshard_p2p.charter import BUILTIN, builtin

    if network in BUILTIN:
        return ["--network", network], builtin(network).network_id
    charter = builtin("simnet").replace(name=network, description="A local testnet.")
    path = root / "charter.toml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(charter.to_toml(), encoding="utf-8")
    return ["--charter", str(path.resolve())], charter.network_id


def _print_ready(nodes: list[TestnetNode], network: str, network_args: list[str]) -> None:
    print("", flush=True)
    print(f"testnet '{network}' is up: {len(nodes)} nodes", flush=True)
    for node in nodes:
        print(f"  node {node.index}: {node.peer_id}  dashboard http://127.0.0.1:{node.api_port}/"
              f"  data {node.data_dir}", flush=True)
    print("", flush=True)
    print("bootstrap multiaddr:", flush=True)
    print(f"  {nodes[0].multiaddr}", flush=True)
    print("join from another terminal with:", flush=True)
    print(f"  neuroshard-node run --data-dir ./my-node {' '.join(network_args)} --listen "
          f"/ip4/127.0.0.1/tcp/0 --api 127.0.0.1:0 --bootstrap {nodes[0].multiaddr}", flush=True)
    print("Ctrl-C stops every node (each withdraws its capacity first).", flush=True)


def _stop_all(nodes: list[TestnetNode]) -> None:
    running = [n for n in nodes if n.process is not None and n.process.poll() is None]
    if not running:
        return
    print(f"stopping {len(running)} nodes …", flush=True)
    for node in running:
        assert node.process is not None
        try:
            node.process.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + STOP_GRACE_S
    for node in running:
        assert node.process is not None
        try:
            node.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"node {node.index} did not stop within {STOP_GRACE_S:g} s: killing it",
                  file=sys.stderr, flush=True)
            node.process.kill()
            node.process.wait()
    print("all nodes stopped", flush=True)


__all__ = ["run_testnet", "TestnetNode", "node_command"]
