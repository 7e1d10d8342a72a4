"""libp2p_compat entry 20 with real hosts on 127.0.0.1: messages queued for one peer by tasks
that finish one after the other (as pubsub's per-message tasks do in a burst) leave as many RPCs
with entry 16 alone, whose sending loop runs between those tasks, and as one RPC when the loop
first waits for the process to be idle (`install_send_when_idle`). A process that is never idle
still sends, after at most `SEND_LINGER_S`. Each side runs in its own process: the workarounds
are process-wide."""

from __future__ import annotations

from neuroshard_p2p.node.libp2p_compat import SEND_LINGER_S
from tests.sides import run_side

PEERS = """
import sys, time, trio
from libp2p.peer.peerinfo import info_from_p2p_addr
from tests.test_accountability import raw_host
from tests.test_rpc_coalescing import count_publish_frames, pubsub_on
from tests.waiting import eventually
from neuroshard_p2p.node import libp2p_compat
libp2p_compat.install_rpc_coalescing()
if sys.argv[1] == "idle":
    libp2p_compat.install_send_when_idle()
TOPIC = "/neuroshard-test/send-when-idle"
BURST = 12

async def main():
    counts, _ = count_publish_frames()
    async with raw_host(31) as a, pubsub_on(a) as pa, raw_host(32) as b, pubsub_on(b) as pb:
        await pa.subscribe(TOPIC)
        sub = await pb.subscribe(TOPIC)
        await a.connect(info_from_p2p_addr(b.get_addrs()[0]))
        with trio.fail_after(60):
            await eventually(lambda: b.get_id() in pa.router.mesh.get(TOPIC, set()), 30, "meshed")

            async def late(k):  # task k publishes after 5k scheduler passes
                for _ in range(5 * k):
                    await trio.sleep(0)
                await pa.publish(TOPIC, b"burst-%d" % k)
            async with trio.open_nursery() as nursery:
                for k in range(BURST):
                    nursery.start_soon(late, k)
            got = sorted([(await sub.get()).data for _ in range(BURST)])
            assert got == sorted(b"burst-%d" % k for k in range(BURST)), got
            burst_frames = counts[0]

            # A process that never runs out of work: the message still leaves.
            stop = trio.Event()
            async def busy():
                with trio.move_on_after(20):
                    while not stop.is_set():
                        await trio.sleep(0)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(busy)
                start = time.monotonic()
                await pa.publish(TOPIC, b"while busy")
                assert (await sub.get()).data == b"while busy"
                delay = time.monotonic() - start
                still_busy = not stop.is_set()
                stop.set()
            print(burst_frames, counts[1], int(still_busy), f"{delay:.3f}", flush=True)

trio.run(main)
"""


def test_a_burst_from_tasks_in_turn_goes_as_one_rpc_and_a_busy_process_still_sends() -> None:
    figures = {}
    for side in ("coalescing", "idle"):
        frames, messages, busy, delay = run_side(PEERS, side, timeout=120).split()
        figures[side] = (int(frames), int(messages), int(busy), float(delay))
    burst = 12
    # Entry 16 alone: the sending loop runs after the first task and between the others, so the
    # twelve messages leave in several RPCs; waiting for idle, in one.
    assert figures["coalescing"][0] >= 6, figures
    assert figures["idle"][0] == 1, figures
    for side, (frames, messages, busy, delay) in figures.items():
        assert messages == burst + 1, (side, figures)  # the burst, then the busy one
        assert busy == 1, (side, figures)  # received while the busy task still ran
    # Never idle: the message waited out the linger, and not much more.
    assert SEND_LINGER_S <= figures["idle"][3] < SEND_LINGER_S + 2.0, figures
