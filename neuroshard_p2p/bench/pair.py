"""Two processes of one bench module, a receiver and a sender, started and released together
(`gossip_cost`, `stream_cost`): the receiver prints "ready ADDR", the sender is started with
ADDR and prints "ready"; then both are told "go" on stdin, and both are killed on the way out."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import Callable, Iterator


@contextmanager
def receiver_and_sender(module: str, receiver_args: list[str],
                        sender_args: Callable[[str], list[str]],
                        ) -> Iterator[tuple[subprocess.Popen[str], subprocess.Popen[str]]]:
    """Start `python -m module` with `receiver_args`, then with `sender_args(addr)` once the
    receiver says where it listens; tell both "go" once the sender is ready; yield (receiver,
    sender), their stdout readable; kill both after."""
    me = [sys.executable, "-m", module]
    rx = subprocess.Popen(me + receiver_args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          text=True)
    tx: subprocess.Popen[str] | None = None
    try:
        assert rx.stdin is not None and rx.stdout is not None
        addr = rx.stdout.readline().split()[1]
        tx = subprocess.Popen(me + sender_args(addr), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
        assert tx.stdin is not None and tx.stdout is not None
        assert tx.stdout.readline().startswith("ready")
        for p in (rx, tx):
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        yield rx, tx
    finally:
        for p in (tx, rx):
            if p is not None:
                p.kill()
                p.wait()
