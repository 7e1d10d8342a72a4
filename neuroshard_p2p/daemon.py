"""The running node as `neuroshard-node run` starts it: node + ledger + backend + HTTP API.

    async with Daemon(settings) as daemon:   # ledger, backend, node, API: leaving stops them all
        daemon.node, daemon.api_url

This module is where the layers meet, so none of them has to know the others: the node does not
know the API exists, the API reads the node it is handed, the ledger knows neither. In order:

1. the data dir is taken (`<data-dir>/lock`: a second node on it stops with an error naming the
   first), the ledger of the data dir (`<data-dir>/ledger.sqlite3`) is opened and the inference
   backend made from the settings;
2. the node (`node.host.Node`) is started with both; its job service settles receipts in that
   ledger and serves jobs through that backend;
3. the HTTP API (`api.app`) is served by hypercorn's trio worker in the daemon's nursery, and its
   URL written to `<data-dir>/api` (the CLI's client commands read it).

Leaving reverses that. A clean stop first publishes the node's withdrawal and lets the jobs
under way end (`Node.drain`: at most `shutdown_drain_s`, while the API still streams their
answers; new requests and offers are refused). Then the URL file is removed, the API stops, the
node leaves, and the backend and the ledger close (shielded and bounded, so a hard stop closes
them too).
"""

from __future__ import annotations

import logging
import time
from contextlib import AsyncExitStack
from types import TracebackType
from typing import Any, Awaitable, Callable

import coincurve
import trio

from neuroshard_p2p.api.app import Api, create_app
from neuroshard_p2p.config import ConfigError
from neuroshard_p2p.ledger import AsyncLedger, LedgerError, ledger_path
from neuroshard_p2p.node.backends import InferenceBackend, make_backend
from neuroshard_p2p.node.datadir import (
    load_api_token,
    lock_data_dir,
    remove_api_url,
    write_api_url,
)
from neuroshard_p2p.node.errors import NodeError
from neuroshard_p2p.node.host import Node
from neuroshard_p2p.node.libp2p_compat import unwind
from neuroshard_p2p.node.settings import NodeSettings
from neuroshard_p2p.node.streams import failure_reason

log = logging.getLogger("neuroshard.daemon")

#: Longest wait for the ledger or the backend to close when the daemon stops.
CLOSE_BOUND_S = 5.0


class Daemon:
    """One node with its ledger, backend and HTTP API (see the module docstring). Construct, then
    `async with`; `node`, `ledger`, `backend` and `api` are set while it runs."""

    def __init__(self, settings: NodeSettings, *, private_key: coincurve.PrivateKey | None = None,
                 clock: Callable[[], float] = time.time,
                 stop_now: Callable[[], Awaitable[object]] | None = None) -> None:
        """`stop_now()`, awaited during a clean stop's wait for the jobs under way, returns
        when that wait should end at once (`run`: a second signal)."""
        self.settings = settings
        self._stop_now = stop_now
        self._private_key = private_key
        self._clock = clock
        self.node: Node | None = None
        self.ledger: AsyncLedger | None = None
        self.backend: InferenceBackend | None = None
        self.api: Api | None = None
        self._stack: AsyncExitStack | None = None
        #: Set when a clean stop's wait for the jobs under way is to end at once.
        self.stop_now = trio.Event()

    @property
    def api_url(self) -> str | None:
        """Where the HTTP API answers (None when it is off or not started)."""
        return None if self.api is None else self.api.url

    async def __aenter__(self) -> "Daemon":
        stack = AsyncExitStack()
        await stack.__aenter__()
        try:
            await self._start(stack)
        except BaseException as exc:
            await unwind(stack.__aexit__(type(exc), exc, exc.__traceback__), exc)
            raise
        self._stack = stack
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> bool | None:
        stack, self._stack = self._stack, None
        assert stack is not None
        return await stack.__aexit__(exc_type, exc, tb)

    async def _start(self, stack: AsyncExitStack) -> None:
        s = self.settings
        stack.callback(lock_data_dir(s.data_dir))
        if s.api_enabled:  # with a broken token file the API would refuse every write: say so now
            try:
                load_api_token(s.data_dir)
            except ConfigError as exc:
                raise NodeError(str(exc)) from None
        try:
            self.ledger = await AsyncLedger.open(ledger_path(s.data_dir))
        except LedgerError as exc:  # a damaged file: said, and left as it is
            raise NodeError(str(exc)) from None
        stack.push_async_callback(_close_shielded, self.ledger.aclose)
        self.backend = make_backend(s.backend, tokens_per_second=max(1, s.capacity),
                                    url=s.backend_url, model=s.backend_model,
                                    timeout_s=s.backend_timeout_s)
        stack.push_async_callback(_close_shielded, self.backend.aclose)
        node = Node(s, private_key=self._private_key, clock=self._clock, backend=self.backend,
                    ledger=self.ledger)
        self.node = await stack.enter_async_context(node)
        if s.api_enabled:
            nursery = await stack.enter_async_context(trio.open_nursery())
            stack.callback(nursery.cancel_scope.cancel)  # leaving: the API stops first
            url = await self._serve_api(nursery, self.node)
            write_api_url(s.data_dir, url)
            stack.callback(remove_api_url, s.data_dir, url)
        # First on a clean stop, while the API still streams the answers under way.
        stack.push_async_exit(self._drain)

    async def _drain(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                     tb: TracebackType | None) -> bool:
        """A clean stop lets the jobs under way end first (`Node.drain`, at most
        `shutdown_drain_s`, or until `stop_now` is set); a hard stop does not wait."""
        if exc_type is None and self.node is not None:
            async with trio.open_nursery() as nursery:
                if self._stop_now is not None:
                    nursery.start_soon(self._stop_now_when, self._stop_now)
                await self.node.drain(self.settings.shutdown_drain_s, self.stop_now)
                nursery.cancel_scope.cancel()
        return False

    async def _stop_now_when(self, happens: Callable[[], Awaitable[object]]) -> None:
        await happens()
        self.stop_now.set()

    async def _serve_api(self, nursery: trio.Nursery, node: Node) -> str:
        """Serve the API in `nursery`; returns its URL. Raises NodeError when it cannot bind."""
        from hypercorn.config import Config
        from hypercorn.trio import serve

        host, port = self.settings.api_host_port
        config = Config()
        config.bind = [f"{host}:{port}"]
        config.accesslog = None
        config.errorlog = logging.getLogger("neuroshard.api")
        config.graceful_timeout = 1.0
        data_dir = self.settings.data_dir
        # Read from the data dir at every write, so `neuroshard-node token --rotate` takes effect
        # without a restart.
        self.api = api = create_app(node, ledger=self.ledger, token=lambda: load_api_token(data_dir))

        async def run_api(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
            await serve(api, config, task_status=task_status)  # type: ignore[arg-type]

        try:
            binds = await nursery.start(run_api)
        except Exception as exc:  # noqa: BLE001 - an OSError, wrapped in exception groups
            raise NodeError(f"cannot serve the HTTP API on {host}:{port}: {failure_reason(exc)}") from None
        api.url = binds[0] if binds else f"http://{host}:{port}"
        return api.url


async def _close_shielded(aclose: Callable[[], Awaitable[None]]) -> None:
    """Run `aclose` even while the daemon is being cancelled, for at most CLOSE_BOUND_S."""
    with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_BOUND_S):
        await aclose()


__all__ = ["Daemon"]
