"""Benchmark a members network under a flood of non-members: the memory 2,000 non-member keys
add to a real node (issue 14: "add <= 50 MB RSS to a node").

    python -m neuroshard_p2p.bench members [--keys 2000] [--settle 3]

A victim node runs in a process of its own (so its resident memory is its own): a real `Node`
of a members network (protocols/market-v2.md §3, V6m) whose validator checks the charter's
admission. A hostile node in this process connects to it and publishes `--keys` announcements,
each from a fresh key and authored by that key's own libp2p identity (as a hostile client can),
half offering 50,000 tok/s, half queueing a 1,000-token request, none with a credential. The
victim's RSS is read from /proc before the flood, once it has refused every announcement, and
after `--settle` more seconds. The baseline, measured in the same run on a second victim: the
same number of announcements from *members* (each with a credential), which the node accepts and
holds: what the same traffic costs when it counts.

Since the accountability layer (node/guard.py) the victim bans the carrier at its 20th refused
message and stops reading it: the non-member flood ends there, and the bench reports how many
the carrier got out and how many the victim verified before the ban.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import coincurve
import trio

from neuroshard_p2p.charter import charter_for
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.datadir import CREDENTIAL_FILE, save_hex_file
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.timeline import ms_of
from neuroshard_p2p.wire import Announcement, encode
from neuroshard_p2p.wire.membership import Admission, issue_credential
from neuroshard_p2p.wire.messages import ROLE_GATEWAY, ROLE_PROVIDER, Credential

MARKET = MarketConfig(window_ticks=32)
NETWORK = "bench-members"
AUTHORITY = coincurve.PrivateKey(hashlib.sha256(b"bench members authority").digest())
CHARTER = charter_for(MARKET, name=NETWORK).replace(
    policy="members", authorities=(AUTHORITY.public_key.format(compressed=True),))
PEER_ID_PREFIX = bytes([0x00, 0x25, 0x08, 0x02, 0x12, 0x21])


def _admission() -> Admission:
    admission = Admission.of(CHARTER)
    assert admission is not None
    return admission


def _settings(data_dir: Path) -> NodeSettings:
    return NodeSettings(data_dir=data_dir, listen=("/ip4/127.0.0.1/tcp/0",), api="off",
                        charter=CHARTER, peer_exchange_interval_s=0.5,
                        bootstrap_retry_initial_s=0.2, shutdown_grace_s=0.2)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc")


def _admit(data_dir: Path, key: coincurve.PrivateKey) -> None:
    """The authority's credential for `key` in `data_dir` (a node of a members network refuses
    to start without one)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    save_hex_file(data_dir / CREDENTIAL_FILE, issue_credential(
        AUTHORITY, CHARTER.hash, key.public_key.format(compressed=True), roles=3,
        max_tokens_per_second=50_000, max_pending_tokens=1_000_000, max_pending_requests=1_000,
        issued_at_ms=0, expires_at_ms=2**62))


# -- the victim (its own process) -------------------------------------------------------------

async def _victim(data_dir: Path) -> None:
    """Run a members-network node; print its address, then answer each stdin line with its
    refusal counts and view size (one JSON line)."""
    key = coincurve.PrivateKey(hashlib.sha256(b"bench members victim").digest())
    _admit(data_dir, key)
    node = Node(_settings(data_dir), private_key=key)
    async with node:
        print(json.dumps({"addr": node.addrs[0]}), flush=True)
        stdin = trio.wrap_file(sys.stdin)
        while await stdin.readline():
            counts: dict[str, int] = {}
            for (_outcome, reason), n in node.engine.gossip_counts.items():
                counts[reason] = counts.get(reason, 0) + n
            print(json.dumps({"counts": counts, "held": len(node.engine.view),
                              "banned": node.guard.graylisted(node.now())}), flush=True)


class _Victim:
    def __init__(self, data_dir: Path) -> None:
        root = Path(__file__).resolve().parent.parent.parent
        env = {**os.environ, "PYTHONPATH": str(root)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "neuroshard_p2p.bench.members", "--victim", str(data_dir)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=root)
        self.addr = json.loads(self._line())["addr"]

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"victim node ended (exit {self.proc.poll()})")
        return line

    def stats(self) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write("stats\n")
        self.proc.stdin.flush()
        data: dict[str, Any] = json.loads(self._line())
        return data

    @property
    def rss_kb(self) -> int:
        return _rss_kb(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)


# -- the flood ----------------------------------------------------------------------------------

def _authored(key: coincurve.PrivateKey, wire: bytes, topic: str, seqno: int) -> Any:
    """A gossipsub message authored and signed by `key`'s own libp2p identity."""
    from libp2p.crypto.secp256k1 import create_new_key_pair
    from libp2p.pubsub.pb import rpc_pb2
    from libp2p.pubsub.validators import PUBSUB_SIGNING_PREFIX

    keys = create_new_key_pair(key.secret)
    msg = rpc_pb2.Message(data=wire, topicIDs=[topic],
                          from_id=PEER_ID_PREFIX + key.public_key.format(compressed=True),
                          seqno=seqno.to_bytes(8, "big"))
    msg.signature = keys.private_key.sign(PUBSUB_SIGNING_PREFIX.encode() + msg.SerializeToString())
    msg.key = keys.public_key.serialize()
    return msg


def _announcements(keys: int, members: bool, now: float) -> list[tuple[coincurve.PrivateKey, bytes]]:
    """`keys` fresh keys' announcements: even ones offer capacity, odd ones queue demand;
    with `members`, each carries a credential of the charter's authority."""
    out = []
    now_ms = ms_of(now)
    for i in range(keys):
        tag = b"member" if members else b"outsider"
        key = coincurve.PrivateKey(hashlib.sha256(b"bench %s %d" % (tag, i)).digest())
        signer = key.public_key.format(compressed=True)
        credential = b""
        if members:
            credential = encode(Credential(
                AUTHORITY.public_key.format(compressed=True), now_ms - 60_000, CHARTER.hash,
                signer, ROLE_PROVIDER | ROLE_GATEWAY, MARKET.max_node_tokens_per_s,
                MARKET.max_signer_pending_tokens, MARKET.max_signer_pending_requests,
                now_ms + 3_600_000), AUTHORITY)
        offer = (50_000, 0, 0) if i % 2 == 0 else (0, 1_000, 1)
        out.append((key, encode(Announcement(signer, now_ms, now_ms, offer[0], 0, offer[1],
                                             offer[2], 0, credential), key)))
    return out


async def _flood(victim: _Victim, keys: int, members: bool, tmp: Path, settle_s: float,
                 reason: str) -> dict[str, Any]:
    """Connect a hostile node to `victim`, publish the announcements, wait until the victim
    has counted every one under `reason`; RSS before, then and `settle_s` later."""
    hostile_key = coincurve.PrivateKey(
        hashlib.sha256(b"bench members hostile %s" % reason.encode()).digest())
    _admit(tmp / f"hostile-{reason}", hostile_key)  # the carrier itself is a member
    hostile = Node(_settings(tmp / f"hostile-{reason}"), private_key=hostile_key)
    async with hostile:
        await hostile.connect(victim.addr)
        with trio.fail_after(30):
            while not hostile.gossipsub.mesh.get(hostile.topic):
                await trio.sleep(0.05)
        await trio.sleep(1.0)
        before = victim.stats()["counts"].get(reason, 0)
        rss_before = victim.rss_kb
        pubsub = hostile.pubsub
        started = time.perf_counter()
        sent = 0
        for seqno, (key, wire) in enumerate(_announcements(keys, members, time.time()), 1):
            # The victim bans a carrier of 20 refused messages and stops reading it: its queue
            # then never drains, and the flood ends there.
            with trio.move_on_after(5.0) as stuck:
                while any(len(q) >= 16 for q in pubsub.peer_queues.values()):
                    await trio.sleep(0.002)
            if stuck.cancelled_caught or not pubsub.peer_queues:
                break
            await pubsub.push_msg(pubsub.my_id, _authored(key, wire, hostile.topic, seqno))
            sent += 1
        # Every message counted, or the carrier banned (then the rest never reach the view).
        with trio.fail_after(120):
            while ((stats := victim.stats())["counts"].get(reason, 0) - before < sent
                   and not stats["banned"]):
                await trio.sleep(0.2)
        elapsed = time.perf_counter() - started
        rss_done = victim.rss_kb
        await trio.sleep(settle_s)
        rss_settled = victim.rss_kb
        stats = victim.stats()
    return {"counted": stats["counts"].get(reason, 0) - before, "held": stats["held"],
            "sent": sent, "banned": stats["banned"],
            "rss_before_kb": rss_before, "rss_done_kb": rss_done, "rss_settled_kb": rss_settled,
            "seconds": elapsed}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench members",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=2_000, help="announcing keys (default 2000)")
    parser.add_argument("--settle", type=float, default=3.0,
                        help="seconds after the last refusal before the second reading")
    parser.add_argument("--victim", metavar="DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.ERROR)
    logging.getLogger("libp2p").setLevel(logging.CRITICAL)
    if args.victim:
        trio.run(_victim, Path(args.victim))
        return
    rows = {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for label, members, reason in (("non-members", False, "not_member"),
                                       ("members (baseline)", True, "accepted")):
            victim = _Victim(tmp / f"victim-{reason}")
            try:
                rows[label] = trio.run(_flood, victim, args.keys, members, tmp, args.settle,
                                       reason)
            finally:
                victim.stop()
    print(f"members network: {args.keys} keys announcing capacity or demand to one real node "
          "(a process of its own), RSS from /proc")
    for label, r in rows.items():
        added = (r["rss_settled_kb"] - r["rss_before_kb"]) / 1024
        print(f"  {label:19s} sent {r['sent']:5d}, counted {r['counted']:5d} "
              f"({'refused' if label == 'non-members' else 'accepted'}) in {r['seconds']:.1f} s; "
              f"carrier {'banned' if r['banned'] else 'not banned'}; view holds {r['held']}; "
              f"RSS {r['rss_before_kb'] / 1024:.1f}"
              f" -> {r['rss_done_kb'] / 1024:.1f} -> {r['rss_settled_kb'] / 1024:.1f} MB "
              f"(+{added:.1f} MB)")
    outsiders, members = rows["non-members"], rows["members (baseline)"]
    o_add = outsiders["rss_settled_kb"] - outsiders["rss_before_kb"]
    m_add = members["rss_settled_kb"] - members["rss_before_kb"]
    print(f"  added by non-members: {o_add / 1024:.1f} MB (goal <= 50 MB); "
          f"{o_add / m_add:.2f}x what the same announcements from members add"
          if m_add > 0 else f"  added by non-members: {o_add / 1024:.1f} MB (goal <= 50 MB)")


if __name__ == "__main__":
    main()
