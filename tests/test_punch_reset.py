"""libp2p_compat 19: a hole-punch dial closed by us leaves no TIME-WAIT to refuse the next try.

DCUtR dials from the listen port to the peer's address (`_open_tcp_stream_from`), every try from
the same port to the same address. As shipped, a connection of one try that we close waits in
TIME-WAIT for 60 s, and a connect() from that port to that address fails meanwhile with
EADDRNOTAVAIL — unless the kernel may reuse the TIME-WAIT: Linux lets a connect() from an
explicitly bound port take over one that holds a TCP timestamp of the peer, and refuses it
otherwise (a peer or a middlebox without timestamps; `tcp_twsk_unique`). The dialer's namespace
turns timestamps off, the case where the retry is refused every time (with them on, it was
refused in some runs and not in others). Two network namespaces joined by a veth pair (loopback
always allows the reuse): a plain TCP server in one, and in the other a process that listens on
its port with SO_REUSEPORT (as py-libp2p's listener does), dials the server from that port,
closes, and dials again. Each side of the comparison runs in its own process (installing the
workaround patches py-libp2p for the process).

The first dial may instead be cancelled just after the kernel connected it, before the dial
returns (as DCUtR's round timeout can land): trio then closes the socket inside connect(), and
only a socket set to reset before it connected leaves no TIME-WAIT.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from tests.netns import Netns, namespaces_left, why_not
from tests.sides import run_side

ROOT = Path(__file__).resolve().parent.parent
REASON = why_not()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no network namespaces: {REASON}")

SERVER = """
import socket, threading
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("10.77.0.1", 4001))
server.listen(8)
print("listening", flush=True)
def drain(conn):
    while True:
        try:
            if not conn.recv(4096):
                break
        except OSError:
            break
    conn.close()
while True:
    conn, _ = server.accept()
    threading.Thread(target=drain, args=(conn,), daemon=True).start()
"""

DIALER = """
import socket, sys, time, trio
sys.path.insert(0, sys.argv[1])
from libp2p.transport.tcp import tcp
if sys.argv[2] == "workaround":
    from neuroshard_p2p.node.libp2p_compat import install_punch_reset_on_close
    install_punch_reset_on_close()
# The node's listener: the hole-punch dials share its port.
listener = socket.socket()
for option in (socket.SO_REUSEADDR, socket.SO_REUSEPORT):
    listener.setsockopt(socket.SOL_SOCKET, option, 1)
listener.bind(("10.77.0.2", 4001))
listener.listen(8)
TUPLE = ("02004D0A:0FA1", "01004D0A:0FA1")  # 10.77.0.2:4001 -> 10.77.0.1:4001, /proc/net/tcp
def states():
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.read().splitlines()[1:]]
    return [row[3] for row in rows if (row[1], row[2]) == TUPLE]
async def closed():
    # Until the connection has finished closing: gone, or waiting in TIME-WAIT (06).
    with trio.fail_after(5):
        while any(state != "06" for state in states()):
            await trio.sleep(0.01)
class CancelOnceConnected(trio.abc.Instrument):
    # Right before trio next polls for I/O (so before the dialling task can learn that its
    # connect() finished): wait until the kernel has completed the handshake, then cancel the
    # dial, as DCUtR's round timeout or a sibling's success does when it lands there.
    def __init__(self, scope):
        self.scope = scope
    def before_io_wait(self, timeout):
        if self.scope.cancel_called or not states():
            return  # not yet dialling
        deadline = time.monotonic() + 5
        while states() != ["01"] and time.monotonic() < deadline:
            time.sleep(0.001)  # blocking on purpose: no task may run meanwhile
        self.scope.cancel()
        # The poll about to run was given its timeout already (a day, nothing being due): a
        # callback in trio's queue wakes it at once.
        trio.lowlevel.current_trio_token().run_sync_soon(lambda: None)
async def cancelled_once_connected():
    with trio.CancelScope() as scope:
        instrument = CancelOnceConnected(scope)
        trio.lowlevel.add_instrument(instrument)
        try:
            await tcp._open_tcp_stream_from("10.77.0.1", 4001, ("10.77.0.2", 4001))
        finally:
            trio.lowlevel.remove_instrument(instrument)
    return "cancelled" if scope.cancelled_caught else "not cancelled"
async def main():
    outcomes = []
    for attempt in range(3):
        try:
            if attempt == 0 and sys.argv[3] == "cancel":
                outcomes.append(await cancelled_once_connected())
                await closed()
                continue
            with trio.fail_after(5):
                stream = await tcp._open_tcp_stream_from("10.77.0.1", 4001, ("10.77.0.2", 4001))
            await stream.aclose()  # as the upgrade failing would
            await closed()
            outcomes.append("connected")
        except Exception as error:
            outcomes.append("refused" if "Cannot assign requested address" in str(error)
                            else f"other: {error}")
    print(" ".join(outcomes), flush=True)
trio.run(main)
"""


@pytest.fixture
def pair() -> Iterator[tuple[Netns, str, str]]:
    net = Netns()
    try:
        a, b = net.namespace("pa"), net.namespace("pb")
        left, right = net.link(a, b)
        net.address(a, left, "10.77.0.1/24")
        net.address(b, right, "10.77.0.2/24")
        subprocess.run(["ip", "netns", "exec", b, "sysctl", "-qw", "net.ipv4.tcp_timestamps=0"],
                       check=True, timeout=30)
        server = net.popen(a, [sys.executable, "-c", SERVER], stdout=subprocess.PIPE)
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.strip() == "listening", line
        yield net, a, b
    finally:
        net.close()
        assert namespaces_left(net.tag) == []


def dial_three_times(b: str, side: str, first: str = "close") -> str:
    """Three dials from the listen port; the first closed after connecting ("close") or
    cancelled once the kernel has connected it, before the dial returns ("cancel")."""
    return run_side(DIALER, str(ROOT), side, first, timeout=60,
                    prefix=["ip", "netns", "exec", b])


def time_waits(b: str) -> int:
    out = subprocess.run(["ip", "netns", "exec", b, "ss", "-tan"], capture_output=True,
                         text=True, timeout=30).stdout
    return sum(line.startswith("TIME-WAIT") and "10.77.0.2:4001" in line
               for line in out.splitlines())


def test_a_closed_punch_leaves_time_wait_that_refuses_the_next_try_as_shipped(
        pair: tuple[Netns, str, str]) -> None:
    _, _, b = pair
    assert dial_three_times(b, "shipped") == "connected refused refused"
    assert time_waits(b) == 1


def test_with_the_workaround_every_try_from_the_listen_port_connects(
        pair: tuple[Netns, str, str]) -> None:
    _, _, b = pair
    assert dial_three_times(b, "workaround") == "connected connected connected"
    assert time_waits(b) == 0



def test_a_punch_cancelled_after_the_kernel_connected_leaves_time_wait_as_shipped(
        pair: tuple[Netns, str, str]) -> None:
    # trio closes a socket whose connect() it cancels; the kernel had finished the handshake,
    # so that close is a FIN and the 4-tuple waits in TIME-WAIT.
    _, _, b = pair
    assert dial_three_times(b, "shipped", "cancel") == "cancelled refused refused"
    assert time_waits(b) == 1


def test_with_the_workaround_a_punch_cancelled_after_connecting_refuses_nothing(
        pair: tuple[Netns, str, str]) -> None:
    # The socket is set to reset before it connects, so trio's close is a reset too.
    _, _, b = pair
    assert dial_three_times(b, "workaround", "cancel") == "cancelled connected connected"
    assert time_waits(b) == 0
