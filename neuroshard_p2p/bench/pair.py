"""Two processes of one bench module, a receiver and a sender, started and released together
(`gossip_cost`, `stream_cost`): the receiver prints "ready ADDR", the sender is started with
ADDR and prints "ready"; then both are told "go" on stdin, and both are killed on the way out.
And the hosts they run: py-libp2p on 127.0.0.1 with a fixed key."""

from __future__ import annotations

import subprocess
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator


def bench_host(seed: int, muxer: str = "yamux") -> tuple[Any, list[Any]]:
    """(host, listen addresses): a py-libp2p host on 127.0.0.1 at an OS-chosen port, its
    secp256k1 key derived from `seed`, the muxer preferred as a node prefers it."""
    import multiaddr
    from libp2p import new_host
    from libp2p.crypto.secp256k1 import create_new_key_pair

    from neuroshard_p2p.node.libp2p_compat import muxer_options

    listen = [multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]
    return new_host(key_pair=create_new_key_pair(seed.to_bytes(32, "big")),
                    muxer_opt=muxer_options(muxer), listen_addrs=listen), listen


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
