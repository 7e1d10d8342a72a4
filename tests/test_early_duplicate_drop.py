"""libp2p_compat entry 18 with real hosts on 127.0.0.1: py-libp2p 0.8.1's pubsub starts a task for
every message of an RPC it reads, and only that task asks whether the message was seen before,
which most copies were (every mesh peer forwards each message). With
`install_early_duplicate_drop` a copy already seen starts no task; a new message still starts
one, is delivered once and forwarded. Each side runs in its own process: the workaround is
process-wide."""

from __future__ import annotations

from tests.sides import run_side

PEERS = """
import sys, trio, multiaddr
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.pb import rpc_pb2
from tests.test_accountability import raw_host
from tests.test_rpc_coalescing import pubsub_on
from tests.waiting import eventually
if sys.argv[1] == "early":
    from neuroshard_p2p.node.libp2p_compat import install_early_duplicate_drop
    install_early_duplicate_drop()
TOPIC = "/neuroshard-test/early-drop"

async def main():
    async with raw_host(21) as a, pubsub_on(a) as pa, raw_host(22) as b, pubsub_on(b) as pb, \\
            raw_host(23) as c, pubsub_on(c) as pc:
        subs = [await p.subscribe(TOPIC) for p in (pa, pb, pc)]
        await a.connect(info_from_p2p_addr(c.get_addrs()[0]))  # a line: a - c - b
        await b.connect(info_from_p2p_addr(c.get_addrs()[0]))
        with trio.fail_after(60):
            await eventually(lambda: a.get_id() in pc.router.mesh.get(TOPIC, set()) and
                             b.get_id() in pc.router.mesh.get(TOPIC, set()), 30, "meshed")
            tasks = lambda: pc.manager.stats.tasks.total_count
            before = tasks()
            await pa.publish(TOPIC, b"first")
            msg = await subs[2].get()            # c delivered it,
            assert (await subs[1].get()).data == b"first"  # and forwarded it to b
            new_message_tasks = tasks() - before
            # a sends c the same message again: a copy, as a second mesh peer's would be.
            before = tasks()
            copy = rpc_pb2.RPC()
            copy.publish.append(msg)
            assert await pa.write_msg(pa.peers[c.get_id()], copy)
            await pa.publish(TOPIC, b"second")   # sent after the copy, on the same stream
            assert (await subs[2].get()).data == b"second"  # not the copy
            assert (await subs[1].get()).data == b"second"
            print(new_message_tasks, tasks() - before, flush=True)

trio.run(main)
"""


def test_a_copy_already_seen_starts_no_task() -> None:
    counts = {}
    for side in ("shipped", "early"):
        counts[side] = tuple(map(int, run_side(PEERS, side, timeout=120).split()))
    # A new message: one task at c either way. The copy and a second new message: two tasks as
    # shipped (the copy's own finds it seen and ends), one with the early drop.
    assert counts == {"shipped": (1, 2), "early": (1, 1)}
