"""This node's identity work (protocols/market-v2.md §7.1): ground in the background, kept in the
data dir.

A key with fewer than the charter's `identity_work_bits` (F) bits of work counts with weight
2^(bits − F) in every peer's price. `IdentityWork` grinds nonces for the node's key with the pure
`wire.work.grind`, one chunk at a time in a child process whose result a worker thread awaits
(`trio.to_thread`): `hashlib` keeps the GIL for inputs this small, so grinding in a thread of the
node's own process would make its trio loop wait for the GIL after every wake-up (several grinding
nodes in one process starved each other's streams into timeouts). Every better nonce goes to the
engine at once (it rides in the next announcement). It stops at F bits. The best nonce and where the
search stands are kept in `<data-dir>/work.json` (datadir.py) whenever the bits grow, every
`save_every_s` and when the node stops, so a restart neither grinds again nor starts over.
A network with F = 0 (simnet) has nothing to grind.

The grinding process ignores SIGINT and SIGTERM: Ctrl-C in a terminal and a service manager's stop
reach every process of the node's group, and the node, not its helper, decides how it stops (a
grinder that died of them broke the pool, and the node crashed before it could withdraw). On
Linux it dies with the node (a parent-death signal), so a node killed outright leaves no grinder
behind. A grinder that dies anyway (killed, out of memory) is replaced, at most `RESTARTS` times
in a row; then the node runs on with the work it has.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing
import os
import signal
import sys
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import trio

from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.node.datadir import StoredWork, load_work, save_work
from neuroshard_p2p.wire.work import Found, grind, work_weight

log = logging.getLogger("neuroshard.node")

#: Nonces tried per worker-thread call: about 0.1 s of one core in CPython, so a stopping node
#: waits at most that long for the thread, and the loop gets the GIL back between chunks.
CHUNK = 1 << 16
#: How often the search position is written while nothing better turns up.
SAVE_EVERY_S = 10.0
#: Grinding processes that may die in a row, each replaced, before the node stops grinding.
RESTARTS = 3


#: prctl(2): deliver a signal to this process when the thread that created it ends (Linux).
_PR_SET_PDEATHSIG = 1


#: What a terminal's Ctrl-C and a service manager's stop send to every process of the group.
_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _start_grinder(node_pid: int) -> None:
    """The grinding process's initializer (see the module docstring): the node decides when it
    stops, and on Linux it dies with the node, even one killed outright (SIGKILL), instead of
    waiting forever for its next chunk."""
    for signum in _STOP_SIGNALS:
        signal.signal(signum, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != node_pid:  # the node died before the line above
            os._exit(0)


def _submit(pool: ProcessPoolExecutor, *args: object) -> Future[Found]:
    """`pool.submit(grind, *args)`, which starts the grinding process when there is none, with
    the stop signals blocked meanwhile: the process inherits the mask, so one of them arriving
    while it starts up, before `_start_grinder` ignores them, waits instead of killing it (and
    its traceback in the node's output). The node's own arrive as soon as the mask is back."""
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        return pool.submit(grind, *args)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)


def _grinding_pool() -> ProcessPoolExecutor:
    # "spawn": a fork of a process running trio and libp2p threads is not safe. Made (and its
    # process started, by `submit`) on trio's thread, which lives as long as the node: the
    # death signal follows the creating thread, not the process.
    return ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_start_grinder, initargs=(os.getpid(),))


@dataclass
class WorkProgress:
    """Where this node's identity work stands (read by the API and the metrics)."""

    required_bits: int
    nonce: int = 0
    bits: int = 0
    #: The next nonce to try.
    next_nonce: int = 0
    #: Nonces tried by this run (0 when the kept work was already enough).
    hashes: int = 0
    #: True when the nonce came from work.json.
    loaded: bool = False

    @property
    def done(self) -> bool:
        return self.bits >= self.required_bits

    @property
    def weight(self) -> float:
        """What this key counts for in every peer's price: 2^(bits − F), at most 1."""
        return work_weight(self.bits, self.required_bits)


class IdentityWork:
    """Grinds and keeps the identity work of one key (see the module docstring)."""

    def __init__(self, signer: bytes, required_bits: int, data_dir: Path, *,
                 on_better: Callable[[int], None], chunk: int = CHUNK,
                 save_every_s: float = SAVE_EVERY_S) -> None:
        self.signer = signer
        self.data_dir = data_dir
        self.progress = WorkProgress(required_bits)
        self._on_better = on_better
        self._chunk = chunk
        self._save_every_s = save_every_s
        self._saved: StoredWork | None = None

    def load(self) -> None:
        """Take up the work kept for this key (nothing to do when F = 0). A damaged file is
        logged and ground over, never fatal."""
        if self.progress.required_bits == 0:
            return
        try:
            stored = load_work(self.data_dir, self.signer)
        except ConfigError as exc:
            log.warning("identity work: %s; grinding from the start", exc)
            return
        if stored is None:
            return
        self._saved = stored
        p = self.progress
        p.nonce, p.bits, p.next_nonce, p.loaded = (stored.nonce, stored.bits, stored.next_nonce,
                                                   True)
        log.info("identity work: %d bits kept in %s (network needs %d)", p.bits,
                 self.data_dir / "work.json", p.required_bits)
        if p.bits > 0:
            self._on_better(p.nonce)

    async def run(self) -> None:
        """Grind until the key has F bits, then return (at once when it has them already)."""
        p = self.progress
        if p.done:
            return
        log.info("identity work: grinding for %d bits (have %d)", p.required_bits, p.bits)
        started = last_save = trio.current_time()
        pool = _grinding_pool()
        deaths = 0
        try:
            while not p.done:
                best = Found(p.nonce, p.bits)
                try:
                    future = _submit(pool, self.signer, p.next_nonce, self._chunk, best,
                                     p.required_bits)
                    found = await trio.to_thread.run_sync(future.result)
                except BrokenProcessPool:
                    deaths += 1
                    pool.shutdown(wait=False, cancel_futures=True)
                    if deaths > RESTARTS:
                        log.error("identity work: the grinding process died %d times in a row; "
                                  "stopping at %d of %d bits", deaths, p.bits, p.required_bits)
                        return
                    log.warning("identity work: the grinding process died; starting another")
                    pool = _grinding_pool()
                    continue
                deaths = 0
                p.hashes += self._chunk
                p.next_nonce += self._chunk
                if found.bits > p.bits:
                    p.nonce, p.bits = found
                    self._on_better(p.nonce)
                    self._save()
                    last_save = trio.current_time()
                    log.debug("identity work: %d bits (nonce %d)", p.bits, p.nonce)
                elif trio.current_time() - last_save >= self._save_every_s:
                    self._save()
                    last_save = trio.current_time()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            self._save()  # synchronous: also runs when the node is being cancelled
        log.info("identity work done: %d bits after %d hashes in %.1f s", p.bits, p.hashes,
                 trio.current_time() - started)

    def _save(self) -> None:
        p = self.progress
        stored = StoredWork(p.nonce, p.bits, p.next_nonce)
        if stored == self._saved:
            return
        try:
            save_work(self.data_dir, self.signer, stored)
            self._saved = stored
        except OSError as exc:
            log.warning("identity work: cannot write %s: %s", self.data_dir / "work.json",
                        exc.strerror or exc)


__all__ = ["IdentityWork", "WorkProgress", "CHUNK", "RESTARTS", "SAVE_EVERY_S"]
