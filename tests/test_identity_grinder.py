"""The identity-work grinder is a real child process (node/work.py): signals meant for the whole
process group leave it alone, a grinder that dies is replaced a bounded number of times, and a
node killed outright takes its grinder with it.

Each test signals or kills real processes and watches what happens to them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest
import trio

from neuroshard_p2p.node.work import RESTARTS, IdentityWork
from tests.conftest import make_key
from tests.waiting import eventually, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
#: More bits than any test grinds to: the work never finishes on its own.
BITS = 40


def grinders() -> list[multiprocessing.process.BaseProcess]:
    return [child for child in multiprocessing.active_children() if child.is_alive()]


async def test_the_group_s_ctrl_c_and_sigterm_leave_the_grinder_grinding(tmp_path: Path) -> None:
    work = IdentityWork(make_key(8).public_key.format(compressed=True), BITS, tmp_path,
                        on_better=lambda nonce: None, chunk=1 << 12)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(work.run)
        await eventually(lambda: work.progress.hashes >= 3 << 12, 30, "three chunks ground")
        (grinder,) = grinders()
        for signum in (signal.SIGINT, signal.SIGTERM):
            os.kill(grinder.pid or 0, signum)
        ground = work.progress.hashes
        await eventually(lambda: work.progress.hashes >= ground + (5 << 12), 30,
                         "five more chunks ground after SIGINT and SIGTERM")
        assert [child.pid for child in grinders()] == [grinder.pid]
        nursery.cancel_scope.cancel()
    await eventually(lambda: not grinders(), 10, "the grinder gone once the work stopped")


async def test_a_grinder_that_dies_is_replaced_and_the_node_gives_up_after_restarts(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Chunks of ~4 s: no chunk completes between two kills, so the deaths are in a row.
    work = IdentityWork(make_key(9).public_key.format(compressed=True), BITS, tmp_path,
                        on_better=lambda nonce: None, chunk=1 << 22)
    killed: list[int] = []
    caplog.set_level(logging.WARNING, logger="neuroshard.node")
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:  # ends when work.run gives up
            nursery.start_soon(work.run)
            for _ in range(RESTARTS + 1):
                (grinder,) = await eventually(
                    lambda: [g for g in grinders() if g.pid not in killed], 30,
                    "a grinder other than those killed runs")
                killed.append(grinder.pid or 0)
                os.kill(grinder.pid or 0, signal.SIGKILL)
    assert work.progress.hashes == 0 and not work.progress.done
    messages = [record.getMessage() for record in caplog.records]
    assert messages.count("identity work: the grinding process died; starting another") == RESTARTS
    assert messages[-1] == (f"identity work: the grinding process died {RESTARTS + 1} times in "
                            f"a row; stopping at 0 of {BITS} bits")
    await eventually(lambda: not grinders(), 10, "no grinder left")


@contextmanager
def grinding_node(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`neuroshard-node run` on a network asking BITS bits of identity work, in a session (and
    process group) of its own, as a terminal would start it; entered once it grinds, killed on
    leaving if it still runs."""
    charter = tmp_path / "charter.toml"
    subprocess.run([sys.executable, "-m", "neuroshard_p2p.cli", "charter", "new", "--name",
                    "grinder", "--set", f"identity_work_bits={BITS}", "-o", str(charter)],
                   cwd=ROOT, env=ENV, check=True, capture_output=True, timeout=30)
    data_dir = tmp_path / "node"
    node = subprocess.Popen(
        [sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir", str(data_dir),
         "--charter", str(charter), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
         "--no-mdns", "--no-upnp"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_for(lambda: (data_dir / "api").exists() and len(in_session(node)) >= 2, 30,
                 "the node serves its API and has started its grinder")
        yield node, data_dir
        wait_for(lambda: in_session(node) == [], 10, "nothing of the node's left running",
                 show=lambda: in_session(node))
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate(timeout=10)


def in_session(node: subprocess.Popen[str]) -> list[str]:
    """The processes of the node's session: the node, its grinder, multiprocessing's tracker."""
    return subprocess.run(["pgrep", "-s", str(node.pid)], capture_output=True, text=True,
                          timeout=10).stdout.split()


def test_ctrl_c_while_grinding_stops_the_node_cleanly(tmp_path: Path) -> None:
    # Leaving the block also waits until nothing of the node's session is left running.
    with grinding_node(tmp_path) as (node, data_dir):
        os.killpg(node.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        out, _ = node.communicate(timeout=30)
        assert node.returncode == 0, out[-3000:]
        assert "SIGINT: withdrawing and stopping" in out and "Traceback" not in out, out[-3000:]
        assert (data_dir / "work.json").exists()  # the search position kept for a restart


def test_a_node_killed_outright_takes_its_grinder_with_it(tmp_path: Path) -> None:
    # Leaving the block also waits until nothing of the node's session is left running.
    with grinding_node(tmp_path) as (node, _):
        node.kill()
        node.communicate(timeout=10)
