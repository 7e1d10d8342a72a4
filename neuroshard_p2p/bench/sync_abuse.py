"""What a peer that pulls the view in a loop costs a node: the node's CPU share while attacked,
against its idle baseline, measured in one run.

    python -m neuroshard_p2p.bench sync_abuse [--signers 2000] [--seconds 5] [--identities 30]

The attacked node runs in its own process (a real `Node` on 127.0.0.1 whose view holds
`--signers` announcements, so every answer carries the whole view); its CPU time is read from
/proc while the attacker, a bare py-libp2p host in this process (no market code), does:

- idle      connected, asks nothing: the node's baseline;
- one key   opens sync streams back to back with a digest that matches no view, each asking for
            the whole view, for `--seconds`;
- new keys  the same, but whenever the node bans it, it comes back with a fresh key (a fresh
            peer id costs the attacker one key and one connection), for `--seconds`;
- unguarded the one-key loop against a second node whose sync budget is switched off (a bucket
            of 10^9): what the same attacker cost before the budget, in the same run.

Each row prints the node's CPU share (CPU seconds per wall second), the answers it gave and the
bytes they carried. Figures come from one run on whatever machine runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator

import coincurve
import trio

from neuroshard_p2p.charter import Charter, builtin
from neuroshard_p2p.config import MarketConfig


def _charter() -> Charter:
    """The built-in simnet charter (no identity work: the seeded keys count in full)."""
    return builtin("simnet").replace(market=MarketConfig())

PARTS = ("idle", "one key", "new keys", "unguarded")


# -- the attacked node (a child process) ---------------------------------------------------------


async def _serve_victim(signers: int, data_dir: Path, sync_burst: float) -> None:
    from neuroshard_p2p.node.guard import GuardPolicy, PeerGuard
    from neuroshard_p2p.node.host import Node
    from neuroshard_p2p.node.settings import NodeSettings
    from neuroshard_p2p.wire import Announcement, encode

    settings = NodeSettings(data_dir=data_dir, listen=("/ip4/127.0.0.1/tcp/0",), api="off",
                            capacity=100, sync_interval_s=3600.0, charter=_charter())
    node = Node(settings, private_key=coincurve.PrivateKey((5000).to_bytes(32, "big")))
    if sync_burst != GuardPolicy().sync_burst:  # the unguarded row: no sync budget
        node.guard = PeerGuard(GuardPolicy(sync_burst=sync_burst))
    async with node:
        now = node.now()
        for i in range(signers):
            key = coincurve.PrivateKey((10_000 + i).to_bytes(32, "big"))
            data = encode(Announcement(key.public_key.format(compressed=True),
                                       int(now * 1000), 1, 100, 0, 0, 0), key)
            node.engine.on_gossip(data, now)
        print(f"ready {node.addrs[0]} {node.engine.view.message_count}", flush=True)
        stdin = trio.lowlevel.FdStream(os.dup(0))
        buffered = b""
        while True:
            chunk = await stdin.receive_some(1024)
            if not chunk:
                return
            buffered += chunk
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                if line.strip() == b"stats":
                    c, g = node.counters, node.guard
                    print(json.dumps({"served": c.syncs_served, "over_budget": c.syncs_over_budget,
                                      "busy": c.syncs_refused_busy, "bans": g.bans,
                                      "refused_connections": c.connections_refused,
                                      "refused_streams": c.streams_refused}), flush=True)


class _Victim:
    """The attacked node's process: its address, its CPU time, its counters."""

    def __init__(self, tmp: Path, signers: int, sync_burst: float = 3.0) -> None:
        root = Path(__file__).resolve().parent.parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        tmp.mkdir(parents=True, exist_ok=True)
        self.log = tmp / "node.log"  # py-libp2p logs every refused stream; kept out of the table
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "neuroshard_p2p.bench", "sync_abuse", "--victim",
                 "--signers", str(signers), "--data-dir", str(tmp), "--sync-burst",
                 str(sync_burst)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                cwd=root)
        line = self._line(60)
        if not line.startswith("ready "):
            raise RuntimeError(f"the attacked node did not start: {line!r}")
        _, self.addr, held = line.split()
        self.held = int(held)

    def _line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"the attacked node ended (exit {self.proc.poll()}): "
                                   f"{self.log.read_text()[-2000:]}")
            if line.startswith(("ready ", "{")):
                return line.strip()
        raise RuntimeError("the attacked node did not answer")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self) -> dict[str, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        return dict(json.loads(self._line(10)))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# -- the attacker (this process) -----------------------------------------------------------------


@asynccontextmanager
async def _raw_host(index: int) -> AsyncIterator[Any]:
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.secp256k1 import create_new_key_pair

    from neuroshard_p2p.node.libp2p_compat import muxer_options

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    secret = (900_000 + index).to_bytes(32, "big")
    host = new_host(key_pair=create_new_key_pair(secret), muxer_opt=muxer_options("yamux"),
                    listen_addrs=listen)
    async with host.run(listen):
        yield host


async def _pull_loop(victim_addr: str, seconds: float, fresh_keys: bool,
                     first_key: int) -> dict[str, int]:
    """Pull the whole view back to back for `seconds`; with `fresh_keys`, come back under a new
    key each time the node stops answering. Returns what the attacker got."""
    import multiaddr
    from libp2p.custom_types import TProtocol
    from libp2p.peer.peerinfo import info_from_p2p_addr

    from neuroshard_p2p.node.host import sync_protocol
    from neuroshard_p2p.node.streams import FrameStream
    from neuroshard_p2p.wire.frames import MAX_FRAME_SIZE, encode_sync
    from neuroshard_p2p.wire.framing import length_prefixed
    from neuroshard_p2p.wire.messages import KIND_SYNC_RESPONSE, SyncRequest

    info = info_from_p2p_addr(multiaddr.Multiaddr(victim_addr))
    protocol = TProtocol(sync_protocol(_charter().network_id))
    request = length_prefixed(encode_sync(SyncRequest(b"\0" * 32, (b"\0" * 32,) * 16, b"\0" * 32)))
    got = {"answers": 0, "bytes": 0, "refused": 0, "identities": 0}
    deadline = trio.current_time() + seconds
    key = first_key
    while trio.current_time() < deadline:
        got["identities"] += 1
        async with _raw_host(key) as host:
            key += 1
            with trio.move_on_at(deadline):
                await host.connect(info)
                failures = 0
                # One key keeps asking (after its ban each try is a connection the node closes
                # on arrival); with fresh keys, three refusals in a row mean "take the next".
                while not fresh_keys or failures < 3:
                    try:
                        stream = await host.new_stream(info.peer_id, [protocol])
                        await stream.write(request)
                        frames = FrameStream(stream, MAX_FRAME_SIZE[KIND_SYNC_RESPONSE])
                        while (frame := await frames.next()) is not None:
                            got["bytes"] += len(frame)
                        got["answers"] += 1
                        failures = 0
                    except Exception:  # noqa: BLE001 - reset: over budget, or banned
                        got["refused"] += 1
                        failures += 1
        if not fresh_keys:
            break
    return got


async def _idle(victim_addr: str, seconds: float) -> dict[str, int]:
    import multiaddr
    from libp2p.peer.peerinfo import info_from_p2p_addr

    async with _raw_host(0) as host:
        await host.connect(info_from_p2p_addr(multiaddr.Multiaddr(victim_addr)))
        await trio.sleep(seconds)
    return {"answers": 0, "bytes": 0, "refused": 0, "identities": 1}


def _measure(victim: _Victim, attack: Any) -> tuple[float, dict[str, int], dict[str, int]]:
    before = victim.stats()
    cpu, wall = victim.cpu_s(), time.monotonic()
    got = trio.run(attack)
    share = (victim.cpu_s() - cpu) / (time.monotonic() - wall)
    after = victim.stats()
    return share, got, {k: after[k] - before[k] for k in after}


def run(signers: int, seconds: float) -> list[tuple[str, float, dict[str, int], dict[str, int]]]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        victim = _Victim(Path(tmp) / "guarded", signers)
        try:
            for part, attack in (
                    ("idle", lambda: _idle(victim.addr, seconds)),
                    ("one key", lambda: _pull_loop(victim.addr, seconds, False, 1)),
                    ("new keys", lambda: _pull_loop(victim.addr, seconds, True, 1000))):
                rows.append((part, *_measure(victim, attack)))
            held = victim.held
        finally:
            victim.close()
        unguarded = _Victim(Path(tmp) / "unguarded", signers, sync_burst=1e9)
        try:
            rows.append(("unguarded", *_measure(
                unguarded, lambda: _pull_loop(unguarded.addr, seconds, False, 5000))))
        finally:
            unguarded.close()
    print(f"sync abuse: one attacked node (own process, view of {held} announcements) on "
          f"127.0.0.1, {seconds:g} s per row; CPU share = node CPU s per wall s")
    print("  answers: sync requests the node answered; refused: the attacker's tries that got no"
          " answer;\n  closed conns / reset streams: a banned peer's connections and streams the"
          " node refused")
    print(f"  {'row':10} {'cpu share':>9} {'answers':>8} {'MB out':>7} {'refused':>8} "
          f"{'keys':>5} {'bans':>5} {'closed conns':>12} {'reset streams':>13}")
    base = rows[0][1]
    for part, share, got, node in rows:
        print(f"  {part:10} {share:9.3f} {node['served']:8d} {got['bytes'] / 1e6:7.2f} "
              f"{got['refused']:8d} {got['identities']:5d} {node['bans']:5d} "
              f"{node['refused_connections']:12d} {node['refused_streams']:13d}"
              + ("" if part == "idle" else f"   ({share - base:+.3f} over idle)"))
    return rows


def _quiet() -> None:
    """Both processes expect refused streams and bans by the hundred: log only what is worse."""
    import logging

    import libp2p  # noqa: F401 - it sets its loggers' levels when imported: set ours after

    logging.basicConfig(level=logging.ERROR)
    for name in ("libp2p", "neuroshard", "multiaddr"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench sync_abuse",
                                     description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--signers", type=int, default=2000,
                        help="announcements in the attacked node's view (default 2000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds per row (default 5)")
    parser.add_argument("--victim", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sync-burst", type=float, default=3.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    _quiet()
    if args.victim:
        trio.run(_serve_victim, args.signers, args.data_dir, args.sync_burst)
        return
    run(args.signers, args.seconds)


__all__ = ["main", "run", "PARTS"]
