"""The daemon: one `async with` that opens the ledger, starts the node with it, serves the HTTP API
beside it and undoes all of it on the way out (clean stop, hard stop, failed start)."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import pytest
import trio

from neuroshard_p2p.daemon import Daemon
from neuroshard_p2p.node.datadir import ensure_data_dir, read_api_url
from neuroshard_p2p.node.errors import NodeError
from tests.conftest import make_key
from tests.node_harness import test_settings


async def test_a_daemon_serves_the_api_with_the_node_s_ledger_and_cleans_up(tmp_path: Path) -> None:
    ensure_data_dir(tmp_path)
    settings = test_settings(tmp_path, api="127.0.0.1:0")
    async with Daemon(settings, private_key=make_key(1)) as daemon:
        assert daemon.node is not None and daemon.api_url is not None
        url = daemon.api_url
        assert url.startswith("http://127.0.0.1:")
        assert read_api_url(tmp_path) == url
        # The ledger the API reads is the one the node's job service settles in.
        assert daemon.ledger is not None and daemon.node.jobs.ledger is daemon.ledger
        assert daemon.node.jobs.backend is daemon.backend
        async with httpx.AsyncClient(timeout=10.0) as client:
            node_info = (await client.get(url + "/api/node")).json()
            ledger = await client.get(url + "/api/ledger")
        assert (node_info["api"], node_info["peer_id"]) == (url, daemon.node.peer_id)
        assert ledger.status_code == 200
        assert ledger.json()["node"]["earned_nano"] == 0
    assert read_api_url(tmp_path) is None
    assert not (tmp_path / "ledger.sqlite3-wal").exists()  # SQLite removes it on close
    async with httpx.AsyncClient(timeout=2.0) as client:
        with pytest.raises(httpx.ConnectError):
            await client.get(url + "/api/node")


async def test_a_hard_stop_still_closes_the_ledger_and_removes_the_url(tmp_path: Path) -> None:
    ensure_data_dir(tmp_path)
    settings = test_settings(tmp_path, api="127.0.0.1:0")
    with trio.CancelScope() as scope:
        async with Daemon(settings, private_key=make_key(2)) as daemon:
            assert read_api_url(tmp_path) == daemon.api_url
            assert (tmp_path / "ledger.sqlite3-wal").exists()
            scope.cancel()
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert read_api_url(tmp_path) is None
    assert not (tmp_path / "ledger.sqlite3-wal").exists()


async def test_an_api_port_in_use_fails_the_start_and_leaves_nothing_open(tmp_path: Path) -> None:
    ensure_data_dir(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        settings = test_settings(tmp_path, api=f"127.0.0.1:{port}")
        with pytest.raises(NodeError) as raised:
            async with Daemon(settings, private_key=make_key(3)):
                pytest.fail("the daemon started on a port in use")
    assert str(raised.value) == (f"cannot serve the HTTP API on 127.0.0.1:{port}: "
                                 f"address already in use")
    assert read_api_url(tmp_path) is None
    assert not (tmp_path / "ledger.sqlite3-wal").exists()
