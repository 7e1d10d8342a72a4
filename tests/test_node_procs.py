"""Three `neuroshard-node run` processes, bootstrapped from the first, agree on the market; every
check goes through the CLI's client commands and the node's HTTP API, as a person would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.waiting import eventually, wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([sys.executable, "-m", "neuroshard_p2p.cli", *args], cwd=ROOT, env=ENV,
                            capture_output=True, text=True, timeout=30)
    if check and result.returncode != 0:
        raise AssertionError(f"neuroshard-node {' '.join(args)} failed: {result.stderr}")
    return result


def cli_json(*args: str) -> Any:
    return json.loads(cli(*args, "--json").stdout)


def start(data_dir: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir", str(data_dir),
         "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--log-level", "warning",
         *(extra if "--charter" in extra else ("--network", "simnet", *extra))],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.slow
def test_three_processes_bootstrapped_from_the_first_agree_on_the_price(tmp_path: Path) -> None:
    dirs = [tmp_path / name for name in ("a", "b", "c")]
    procs: list[subprocess.Popen[str]] = []
    try:
        procs.append(start(dirs[0], "--capacity", "1000"))
        wait_for(lambda: (dirs[0] / "api").exists(), 20, "the first node serves its API")
        first = cli_json("id", "--data-dir", str(dirs[0]))
        assert first["running"] is True
        bootstrap = first["addrs"][0]
        assert bootstrap.startswith("/ip4/127.0.0.1/tcp/") and bootstrap.endswith(first["peer_id"])
        for d in dirs[1:]:
            procs.append(start(d, "--bootstrap", bootstrap))
        for d in dirs[1:]:
            wait_for(lambda d=d: (d / "api").exists(), 20, f"{d.name} serves its API")

        # b offers capacity and c queues demand, both through the CLI
        assert "offering 500 tokens/s" in cli("register", "--data-dir", str(dirs[1]),
                                             "--capacity", "500", "--min-price", "0.02").stdout
        submitted = cli("submit", "--data-dir", str(dirs[2]), "--tokens", "100000",
                        "--max-price", "0.9").stdout
        assert submitted.startswith("request req-") and "locked price" in submitted
        assert "\nstate            pending" in submitted, submitted
        at = time.time() + 3  # an instant after every announcement above

        def markets() -> list[dict[str, Any]]:
            return [cli_json("market", "--data-dir", str(d), "--at", f"{at:.3f}") for d in dirs]

        def agreed() -> bool:
            views = markets()
            keys = ("tick", "current_price_nano", "target_price_nano", "supply_tokens_per_sec",
                    "demand_tokens_waiting", "available_nodes", "pending_requests")
            same = all({k: v[k] for k in keys} == {k: views[0][k] for k in keys} for v in views)
            return same and views[0]["supply_tokens_per_sec"] == 1500 and \
                views[0]["demand_tokens_waiting"] == 100_000

        wait_for(agreed, 20, "the three nodes report one price, supply 1500 and demand 100000")
        prices = {m["current_price_nano"] for m in markets()}
        assert len(prices) == 1
        # `id` says whether b's clock is in step with the two others' signed times
        wait_for(lambda: "\nclock:   agrees with 2 of 2 signer(s) within 5 s (median "
                 in cli("id", "--data-dir", str(dirs[1])).stdout, 20,
                 "b's clock is measured against a's and c's")
        assert cli("health", "--data-dir", str(dirs[1])).stdout == "ok: 2 peer(s), clock agrees\n"

        # peer exchange across processes: b and c, which only knew a, found each other
        peer_ids = [cli_json("id", "--data-dir", str(d))["peer_id"] for d in dirs]
        wait_for(lambda: peer_ids[2] in {p["peer_id"] for p in
                                          cli_json("peers", "--data-dir", str(dirs[1]))["peers"]},
                 20, "b is connected to c")

        # a POST without the token is refused
        import httpx

        url = (dirs[1] / "api").read_text().strip()
        refused = httpx.post(url + "/api/market/withdraw", timeout=5)
        assert refused.status_code == 401

        # SIGTERM on a: a clean stop; b and c stop counting its 1000 tokens/s at once
        a_url = (dirs[0] / "api").read_text().strip()
        procs[0].send_signal(signal.SIGTERM)
        out, _ = procs[0].communicate(timeout=20)
        assert procs[0].returncode == 0, out
        assert "withdrawing" in out
        # what `run` printed on start: the multiaddr to bootstrap from and the dashboard URL
        lines = out.splitlines()
        assert lines[lines.index("bootstrap other nodes from:") + 1] == f"  {bootstrap}", out
        assert f"dashboard: {a_url}/" in lines and "ready (Ctrl-C to stop)" in lines, out
        assert not (dirs[0] / "api").exists()  # a stopped node no longer claims an API
        wait_for(lambda: all(cli_json("market", "--data-dir", str(d))["supply_tokens_per_sec"] == 500
                             for d in dirs[1:]), 10, "a's withdrawal reached b and c")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()


def test_run_on_a_fresh_machine_creates_the_data_dir_and_a_bad_flag_is_a_clear_error(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    result = cli("init", "--data-dir", str(data_dir))
    assert "initialised" in result.stdout and "peer id: 16Uiu2" in result.stdout
    assert (data_dir / "identity.key").stat().st_mode & 0o777 == 0o600
    assert (data_dir / "api_token").stat().st_mode & 0o777 == 0o600
    assert "already initialised" in cli("init", "--data-dir", str(data_dir)).stdout
    token = cli("token", "--data-dir", str(data_dir)).stdout.strip()
    assert len(token) >= 32
    assert cli("token", "--data-dir", str(data_dir), "--rotate").stdout.strip() != token
    offline = cli_json("id", "--data-dir", str(data_dir))
    assert offline["running"] is False and offline["peer_id"].startswith("16Uiu2")
    bad = cli("run", "--data-dir", str(data_dir), "--bootstrap", "/ip4/127.0.0.1/tcp/1", check=False)
    assert bad.returncode == 1 and "must end in /p2p/<peer id>" in bad.stderr
    down = cli("market", "--data-dir", str(data_dir), "--api", "127.0.0.1:9", check=False)
    assert down.returncode == 1 and "no node answers" in down.stderr


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_a_reader_that_leaves_early_is_no_error(tmp_path: Path, unbuffered: str) -> None:
    """`neuroshard-node token | head -c0`: the pipe closes before we write; no traceback."""
    cli("init", "--data-dir", str(tmp_path))
    read_end, write_end = os.pipe()
    os.close(read_end)
    env = {k: v for k, v in ENV.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = unbuffered
    try:
        result = subprocess.run([sys.executable, "-m", "neuroshard_p2p.cli", "token", "--data-dir",
                                 str(tmp_path)], cwd=ROOT, env=env, stdout=write_end,
                                stderr=subprocess.PIPE, text=True, timeout=30)
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (0, "")


# -- backend flags and submit, through the CLI -------------------------------------------------

def test_openai_backend_without_a_url_is_a_usage_error_before_anything_is_created(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    result = cli("run", "--data-dir", str(data_dir), "--backend", "openai", check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("usage: neuroshard-node run")
    assert ("neuroshard-node run: error: the openai backend needs --backend-url URL and "
            "--backend-model NAME") in result.stderr
    assert not data_dir.exists()


@pytest.mark.parametrize("flags, message", [
    (["--backend", "openai", "--backend-url", "http://127.0.0.1:8080"],
     "the openai backend needs --backend-model NAME (or backend_url and backend_model in "),
    (["--backend", "openai", "--backend-model", "m"],
     "the openai backend needs --backend-url URL (or"),
    (["--backend-url", "ftp://127.0.0.1/"],
     "--backend-url must be http://host:port or https://host:port, got 'ftp://127.0.0.1/'"),
    (["--backend", "openai", "--backend-url", "http://", "--backend-model", "m"],
     "--backend-url must be http://host:port or https://host:port, got 'http://'"),
    (["--backend", "openai", "--backend-url", "http://h:1", "--backend-model", " "],
     "--backend-model must not be empty"),
    (["--backend-timeout", "0"], "--backend-timeout must be > 0 seconds, got 0"),
    (["--backend", "synthetic", "--backend-model", "m"],
     "--backend-model only applies to the openai backend"),
    (["--backend-url", "http://127.0.0.1:8080", "--backend-model", "m"],  # the file: synthetic
     "--backend-url and --backend-model only apply to the openai backend"),
])
def test_backend_flags_that_cannot_work_exit_with_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str) -> None:
    from neuroshard_p2p.cli import EXIT_USAGE, main

    data_dir = tmp_path / "node"
    assert main(["run", "--data-dir", str(data_dir), *flags]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: neuroshard-node run") and message in err, err
    assert not data_dir.exists()


@pytest.mark.parametrize("argv", [
    ["submit", "--tokens", "10", "--max-price", "nan"],
    ["submit", "--tokens", "10", "--max-price", "inf"],
    ["register", "--capacity", "10", "--min-price=-inf"],
    ["market", "--at", "nan"],
    ["run", "--min-price", "nan"],
    ["run", "--backend-timeout", "nan"],
])
def test_a_number_that_is_not_finite_is_a_usage_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    """Not a traceback from the JSON encoder, not a request."""
    from neuroshard_p2p.cli import EXIT_USAGE, main

    with pytest.raises(SystemExit) as exited:
        main([*argv, "--data-dir", str(tmp_path / "x")])
    assert exited.value.code == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"usage: neuroshard-node {argv[0]}" in err and "must be a finite number, got " in err
    assert not (tmp_path / "x").exists()


def test_backend_flags_reach_the_settings_and_complete_the_config_file(tmp_path: Path) -> None:
    from neuroshard_p2p.cli import build_parser, check_backend_flags, run_settings

    data_dir = tmp_path / "node"
    data_dir.mkdir()
    parser = build_parser()
    args = parser.parse_args(["run", "--data-dir", str(data_dir), "--backend", "openai",
                              "--backend-url", "http://127.0.0.1:8080/v1",
                              "--backend-model", "qwen2.5-0.5b-instruct",
                              "--backend-timeout", "12.5"])
    check_backend_flags(args)
    settings = run_settings(args)
    assert (settings.backend, settings.backend_url, settings.backend_model,
            settings.backend_timeout_s) == ("openai", "http://127.0.0.1:8080/v1",
                                            "qwen2.5-0.5b-instruct", 12.5)
    # the file names the server; the flag switches the backend on and picks the model
    (data_dir / "config.toml").write_text('[node]\nbackend_url = "http://10.0.0.5:11434/v1"\n')
    args = parser.parse_args(["run", "--data-dir", str(data_dir), "--backend", "openai",
                              "--backend-model", "llama3"])
    check_backend_flags(args)
    settings = run_settings(args)
    assert (settings.backend, settings.backend_url, settings.backend_model,
            settings.backend_timeout_s) == ("openai", "http://10.0.0.5:11434/v1", "llama3", 60.0)
    # no backend flag: the file decides, and a URL flag overrides its URL
    (data_dir / "config.toml").write_text('[node]\nbackend = "openai"\nbackend_model = "m"\n'
                                          'backend_url = "http://10.0.0.5:1"\n')
    args = parser.parse_args(["run", "--data-dir", str(data_dir),
                              "--backend-url", "https://models.example:443"])
    check_backend_flags(args)
    assert run_settings(args).backend_url == "https://models.example:443"
    # no flags: the synthetic default
    args = parser.parse_args(["run", "--data-dir", str(tmp_path / "other")])
    check_backend_flags(args)
    assert run_settings(args).backend == "synthetic"


def test_run_help_describes_every_flag() -> None:
    from neuroshard_p2p.cli import build_parser

    parser = build_parser()
    run = parser.parse_args(["run"]).command_parser
    text = run.format_help()
    for action in run._actions:
        for flag in action.option_strings:
            assert flag in text
        assert action.help, f"{action.option_strings} has no help"
    for flag in ("--backend {synthetic,openai}", "--backend-url URL", "--backend-model NAME",
                 "--backend-timeout SECONDS", "OpenAI-compatible"):
        assert flag in text


def test_every_command_has_help_for_every_flag() -> None:
    import argparse

    from neuroshard_p2p.cli import COMMANDS, build_parser

    parser = build_parser()
    [commands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(commands.choices) == set(COMMANDS) == {
        "init", "run", "id", "peers", "market", "register", "withdraw", "submit", "status",
        "token", "ledger", "charter", "member", "chat", "health"}
    top = parser.format_help()
    for name, sub in commands.choices.items():
        assert name in top
        text = sub.format_help()
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
            for flag in action.option_strings:
                assert flag in text
            if isinstance(action, argparse._SubParsersAction):  # charter new, member issue, …
                for verb, verb_parser in action.choices.items():
                    verb_text = verb_parser.format_help()
                    for verb_action in verb_parser._actions:
                        assert verb_action.help, (
                            f"{name} {verb} {verb_action.option_strings or verb_action.dest} "
                            f"has no help")
                        for flag in verb_action.option_strings:
                            assert flag in verb_text


async def async_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
    """The CLI in a child process without blocking the trio loop (the node it asks runs in it)."""
    import trio

    return await trio.run_process([sys.executable, "-m", "neuroshard_p2p.cli", *args],
                                  cwd=ROOT, env=ENV, capture_stdout=True, capture_stderr=True,
                                  check=False)


async def test_submit_prints_the_request_id_its_locked_price_and_its_state(
        tmp_path: Path) -> None:
    from tests.api_harness import api_node

    async with api_node(tmp_path / "gateway", 5) as gateway:
        async def run_cli(*args: str) -> subprocess.CompletedProcess[bytes]:
            return await async_cli(*args, "--data-dir", str(gateway.data_dir), "--api", gateway.url)

        result = await run_cli("submit", "--tokens", "5000", "--max-price", "0.9")
        assert result.returncode == 0, result.stderr
        out = result.stdout.decode()
        first = out.splitlines()[0]
        assert first.startswith("request req-") and first.endswith(": 5000 tokens"), out
        rid = first.split()[1].rstrip(":")
        status = (await gateway.get(f"/api/market/requests/{rid}")).json()
        locked = status["locked_price_nano"]
        assert locked > 0 and status["max_price_nano"] == 900_000_000
        assert out.splitlines()[1] == (f"locked price     {locked / 1e9:.9f} NEURO per 1M tokens "
                                       f"({locked} nano; your max 0.900000000)")
        # nobody offers capacity: it waits, and the line says so and why
        assert out.splitlines()[2].startswith("state            pending"), out
        assert out.splitlines()[3] == (f"follow it        curl {gateway.url}/api/market/"
                                       f"requests/{rid}")
        assert "queued" not in out

        # a max price below the market price: refused, nothing submitted
        refused = await run_cli("submit", "--tokens", "5000", "--max-price", "0.000000001")
        assert refused.returncode == 1
        err = refused.stderr.decode()
        assert err.startswith("error: node refused (409): current price ") and \
            err.rstrip().endswith("> max_price 0.000000001"), err
        assert [s.request_id for s in gateway.node.jobs.statuses()] == [rid]


async def test_status_shows_a_served_request_with_its_provider_cost_and_output(
        tmp_path: Path) -> None:
    from neuroshard_p2p.money import settle_amounts
    from tests.api_harness import API_MARKET, api_node

    async with api_node(tmp_path / "provider", 12, capacity=2000, min_price=0.01) as provider, \
            api_node(tmp_path / "gateway", 13, bootstrap=(provider.node.addrs[0],)) as gateway:
        where = ("--data-dir", str(gateway.data_dir))  # the URL comes from <data-dir>/api

        async def offered() -> bool:
            return (await gateway.get("/api/market/offers")).json()["count"] == 1

        await eventually(offered, 10, "the gateway sees the provider's offer")
        submitted = await async_cli("submit", *where, "--tokens", "300", "--max-price", "1.0",
                                    "--prompt", "say something")
        assert submitted.returncode == 0, submitted.stderr
        rid = submitted.stdout.decode().split()[1].rstrip(":")

        async def served() -> bool:
            body = (await gateway.get(f"/api/market/requests/{rid}")).json()
            return body["state"] in ("completed", "failed", "expired")

        await eventually(served, 20, "the request is served")
        result = await async_cli("status", rid, *where)
        assert result.returncode == 0, result.stderr
        status = (await gateway.get(f"/api/market/requests/{rid}")).json()
        locked = status["locked_price_nano"]
        cost = settle_amounts(300, locked, API_MARKET.burn_rate).payment
        lines = result.stdout.decode().splitlines()
        assert lines[:5] == [
            f"request {rid}: 300 tokens",
            f"locked price     {locked / 1e9:.9f} NEURO per 1M tokens ({locked} nano; "
            f"your max 1.000000000)",
            "state            completed: served 300 of 300 tokens",
            f"provider         {provider.node.peer_id}",
            f"cost             {cost / 1e9:.9f} NEURO for 300 tokens served"]
        # then the completion itself (the synthetic backend's filler: one word per token)
        assert lines[5] == "" and len(lines[6].split()) == 300
        assert json.loads((await async_cli("status", rid, *where, "--json")).stdout) == status
        unknown = await async_cli("status", "req-0000000000000000", *where)
        assert unknown.returncode == 1
        assert unknown.stderr.decode().startswith("error: node refused (404): no request with id")


async def test_client_commands_ask_only_the_node_of_their_data_dir(tmp_path: Path) -> None:
    """A data dir whose node is not running has no <data-dir>/api. Its client commands must not
    ask whatever answers at the configured address instead (here: another node) and report that
    node's peer id or market as this one's."""
    from neuroshard_p2p.identity import peer_id_of
    from neuroshard_p2p.node.datadir import ensure_data_dir, load_private_key
    from tests.api_harness import api_node

    async with api_node(tmp_path / "running", 14) as running:
        stopped = tmp_path / "stopped"
        ensure_data_dir(stopped)
        host_port = running.url.removeprefix("http://")
        (stopped / "config.toml").write_text(f'[node]\napi = "{host_port}"\n')
        mine = peer_id_of(load_private_key(stopped).public_key.format(compressed=True))
        assert mine != running.node.peer_id

        offline = await async_cli("id", "--data-dir", str(stopped), "--json")
        assert offline.returncode == 0, offline.stderr
        data = json.loads(offline.stdout)
        assert (data["running"], data["peer_id"]) == (False, mine)
        for command in (("market",), ("peers",), ("register", "--capacity", "10"), ("withdraw",)):
            result = await async_cli(*command, "--data-dir", str(stopped))
            assert result.returncode == 1, command
            assert result.stderr.decode().startswith(f"error: no running node for {stopped}: "), \
                result.stderr
        assert running.node.engine.offer.tokens_per_second == 0
        # --api still reaches any node on purpose
        asked = await async_cli("market", "--data-dir", str(stopped), "--api", running.url, "--json")
        assert json.loads(asked.stdout)["network"] == running.node.settings.network


def start_on_a_terminal(data_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], int]:
    """`run` in a session of its own whose controlling terminal is a new pty, as in an SSH login;
    returns the process and the pty's master end (closing it is the terminal going away)."""
    import fcntl
    import termios

    master, slave = os.openpty()

    def take_the_terminal() -> None:  # after setsid (start_new_session)
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
        # A login's shell starts with SIGHUP at its default; the test runner's may be ignored
        # (CI under nohup), which the node would inherit and rightly leave ignored.
        signal.signal(signal.SIGHUP, signal.SIG_DFL)

    try:
        node = subprocess.Popen(
            [sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir", str(data_dir),
             "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--network", "simnet",
             "--no-mdns", "--no-upnp", *extra],
            cwd=ROOT, env=ENV, stdin=slave, stdout=slave, stderr=slave, text=True,
            start_new_session=True, preexec_fn=take_the_terminal)
    finally:
        os.close(slave)
    return node, master


def drain(master: int) -> None:
    """Read what the node wrote to its terminal so far (it would block on a full pty); nothing
    once the terminal is gone (-1)."""
    import select

    while master >= 0 and select.select([master], [], [], 0)[0]:
        try:
            if not os.read(master, 65536):
                return
        except OSError:  # EIO: every slave end closed
            return


@pytest.mark.slow
def test_a_node_whose_terminal_goes_away_withdraws_before_it_stops(tmp_path: Path) -> None:
    # An SSH session that drops: the kernel sends SIGHUP, and writes to the terminal fail (EIO).
    # The node stops as on Ctrl-C, withdrawing first, so its peer stops counting its capacity at
    # once instead of after the 60 s timeout.
    seller_dir, peer_dir = tmp_path / "seller", tmp_path / "peer"
    seller, master = start_on_a_terminal(seller_dir, "--capacity", "1000")
    peer: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: drain(master) or (seller_dir / "api").exists(), 20,
                 "the seller serves its API")
        address = cli_json("id", "--data-dir", str(seller_dir))["addrs"][0]
        peer = start(peer_dir, "--bootstrap", address, "--no-mdns", "--no-upnp")

        def supply() -> int:
            drain(master)
            return int(cli_json("market", "--data-dir", str(peer_dir))["supply_tokens_per_sec"])

        wait_for(lambda: (peer_dir / "api").exists() and supply() == 1000, 30,
                 "the peer counts the seller's 1000 tokens/s")
        os.close(master)  # the terminal goes away
        master = -1
        assert seller.wait(timeout=20) == 0
        wait_for(lambda: supply() == 0, 10, "the peer stops counting the seller at once")
    finally:
        if master >= 0:
            os.close(master)
        for proc in (seller, peer):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


@pytest.mark.slow
def test_a_node_run_under_nohup_is_not_stopped_by_sighup(tmp_path: Path) -> None:
    # nohup sets SIGHUP to be ignored; the node leaves it so, and stops on SIGTERM as usual.
    node = subprocess.Popen(
        ["nohup", sys.executable, "-m", "neuroshard_p2p.cli", "run", "--data-dir",
         str(tmp_path), "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0", "--network",
         "simnet", "--no-mdns", "--no-upnp"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (tmp_path / "api").exists(), 20, "the node serves its API")
        node.send_signal(signal.SIGHUP)
        assert cli_json("id", "--data-dir", str(tmp_path))["running"] is True
        node.send_signal(signal.SIGTERM)
        out, _ = node.communicate(timeout=20)
        assert node.returncode == 0, out
        assert "SIGTERM: withdrawing and stopping" in out and "SIGHUP" not in out, out
    finally:
        if node.poll() is None:
            node.kill()
            node.communicate(timeout=10)


@pytest.mark.slow
def test_a_second_node_on_a_data_dir_in_use_is_refused_and_a_killed_node_leaves_no_lock(
        tmp_path: Path) -> None:
    # One identity, two nodes: two sequence counters signing as one key, one ledger, and each
    # writing the API file the client commands read. The second is refused, naming the first.
    first = start(tmp_path)
    second: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: (tmp_path / "api").exists(), 20, "the first node serves its API")
        url = (tmp_path / "api").read_text()
        second = start(tmp_path)  # other ports (0), the same data dir
        out, _ = second.communicate(timeout=30)
        assert second.returncode == 1, out
        assert out.strip().splitlines()[-1] == (
            f"error: {tmp_path} is in use by another running node (pid {first.pid}): stop it, "
            f"or give this one another --data-dir"), out
        assert (tmp_path / "api").read_text() == url
        assert cli_json("id", "--data-dir", str(tmp_path))["running"] is True
        # killed outright: the kernel drops the lock with the process, so a new node starts
        first.kill()
        first.communicate(timeout=10)
        second = start(tmp_path)
        wait_for(lambda: (tmp_path / "api").exists() and (tmp_path / "api").read_text() != url,
                 20, "a new node serves its API on the same data dir")
        assert (tmp_path / "lock").read_text() == f"{second.pid}\n"
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


def test_a_damaged_ledger_is_a_clear_error_and_is_left_as_it_was(tmp_path: Path) -> None:
    cli("init", "--data-dir", str(tmp_path))
    ledger = tmp_path / "ledger.sqlite3"
    damaged = b"not a database, whatever it was\n" * 64
    ledger.write_bytes(damaged)
    expected = f"error: {ledger} is not a usable ledger: file is not a database"
    node = start(tmp_path)
    out, _ = node.communicate(timeout=30)
    assert (node.returncode, out.strip().splitlines()[-1]) == (1, expected), out
    assert "Traceback" not in out, out
    summary = cli("ledger", "--data-dir", str(tmp_path), check=False)
    assert (summary.returncode, summary.stdout, summary.stderr.strip()) == (1, "", expected)
    assert ledger.read_bytes() == damaged


def test_the_data_dir_lock_holds_where_its_pid_cannot_be_written(tmp_path: Path) -> None:
    # A full disk: the pid is only for the message, so the lock still holds and a second taker
    # is refused with the holder unknown (the node then stops at its ledger, which says why).
    from neuroshard_p2p.node.datadir import LOCK_FILE, lock_data_dir
    from neuroshard_p2p.node.errors import NodeError

    (tmp_path / LOCK_FILE).symlink_to("/dev/full")  # every write: ENOSPC
    release = lock_data_dir(tmp_path)
    try:
        with pytest.raises(NodeError) as refused:
            lock_data_dir(tmp_path)
        assert str(refused.value) == (
            f"{tmp_path} is in use by another running node (pid unknown): stop it, or give "
            f"this one another --data-dir")
    finally:
        release()
    lock_data_dir(tmp_path)()  # released: free to take again


def test_a_broken_token_file_stops_the_start_and_token_rotate_mends_it(tmp_path: Path) -> None:
    # An empty token file let the node run with an API that answered every write 500.
    cli("init", "--data-dir", str(tmp_path))
    (tmp_path / "api_token").write_text("\n")
    node = start(tmp_path)
    out, _ = node.communicate(timeout=30)
    assert (node.returncode, out.strip().splitlines()[-1]) == (
        1, f"error: the API token file {tmp_path / 'api_token'} is empty: `neuroshard-node token "
           f"--rotate --data-dir {tmp_path}` writes a new one"), out
    assert "Traceback" not in out, out
    token = cli("token", "--data-dir", str(tmp_path), "--rotate").stdout.strip()
    assert len(token) == 43 and (tmp_path / "api_token").read_text() == token + "\n"
    missing = tmp_path / "missing"
    gone = cli("token", "--data-dir", str(missing), "--rotate", check=False)
    assert (gone.returncode, gone.stdout, gone.stderr.strip()) == (
        1, "", f"error: no data dir at {missing}: run `neuroshard-node init` first")
    assert not missing.exists()


def read_so_far(process: subprocess.Popen[str], seen: list[str]) -> str:
    """What `process` has written to its stdout pipe so far, without blocking."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    os.set_blocking(fd, False)
    try:
        while chunk := os.read(fd, 65536):
            seen.append(chunk.decode("utf-8", "replace"))
    except BlockingIOError:
        pass
    return "".join(seen)


def test_a_stop_waits_for_the_job_under_way_and_a_second_signal_ends_the_wait(
        tmp_path: Path) -> None:
    provider = start(tmp_path / "p", "--capacity", "1000")
    gateway: subprocess.Popen[str] | None = None
    try:
        def answer(*args: str) -> Any:  # None until the node is up
            found = cli(*args, "--json", check=False)
            return json.loads(found.stdout) if found.returncode == 0 else {}

        def running_addrs() -> list[str] | None:
            data = answer("id", "--data-dir", str(tmp_path / "p"))
            return data.get("addrs") if data.get("running") is not False else None
        addr = wait_for(running_addrs, 20, "the provider is up")[0]
        # alone, and said so by `health` (exit status 1) for a script or a monitor
        alone = cli("health", "--data-dir", str(tmp_path / "p"), check=False)
        assert (alone.returncode, alone.stdout, alone.stderr) == (
            1, "peers: no connected peer: it sees no market but its own (give it one with "
               "--bootstrap)\n", "")
        gateway = start(tmp_path / "g", "--bootstrap", addr)
        wait_for(lambda: answer("market", "--data-dir", str(tmp_path / "g")).get(
            "supply_tokens_per_sec") == 1000, 20, "the gateway counts the provider")
        submitted = cli("submit", "--data-dir", str(tmp_path / "g"), "--tokens", "30000",
                        "--max-price", "1").stdout  # 30 s of serving
        rid = submitted.split()[1].rstrip(":")
        wait_for(lambda: cli_json("status", "--data-dir", str(tmp_path / "g"), rid)["state"]
                 == "claimed", 20, "the provider serves the request")
        gateway.send_signal(signal.SIGTERM)
        seen: list[str] = []
        waiting = "waiting up to 30 s for 1 job(s) under way to end (SIGTERM again: stop now)"
        wait_for(lambda: waiting in read_so_far(gateway, seen), 10, "the stop waits for the job")
        assert gateway.poll() is None  # still waiting, the job 30 s from its end
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(timeout=10)
        out = read_so_far(gateway, seen)
        assert gateway.returncode == 0, out
        lines = [line.split(" neuroshard.jobs: ")[-1] for line in out.splitlines()]
        assert lines[-4:] == [waiting, "SIGTERM: not waiting for the jobs under way",
                              "stopping with 1 job(s) still under way: their peers see them cut "
                              "off", "stopped"], out
        assert "Traceback" not in out, out
    finally:
        for process in (gateway, provider):
            if process is not None and process.poll() is None:
                process.kill()
                process.wait()


async def test_a_node_alone_says_how_to_get_a_peer_and_when_it_has_one(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`run`'s line for a node nobody joined (a first run on the default network, whose charter
    names no bootstrap peer): after its wait (20 s in `run`; 1 s here), what is missing and the
    flag that mends it; then one line when a peer arrives. Real nodes, in this process."""
    import trio

    from neuroshard_p2p.cli import _print_alone
    from tests.conftest import make_key
    from tests.node_harness import start_node, test_settings

    async with trio.open_nursery() as nursery:
        lone_settings = test_settings(tmp_path / "lone")
        lone = await start_node(nursery, lone_settings, make_key(1))
        printer = trio.CancelScope()

        async def watch() -> None:
            with printer:
                await _print_alone(lone.node, lone_settings, after_s=1.0)

        nursery.start_soon(watch)
        said = await eventually(lambda: capsys.readouterr().out or None, 10, "the hint")
        assert said == (
            "no peers after 1 s: it has no bootstrap peer (--bootstrap, or the network's charter), "
            "and nobody dialled it. Give it one: neuroshard-node run --bootstrap <a node's "
            "multiaddr> (`neuroshard-node id` on that node prints it); until then it prices only "
            "what it offers and queues itself\n")
        other = await start_node(nursery, test_settings(
            tmp_path / "other", bootstrap=tuple(lone.node.addrs)), make_key(2))
        said = await eventually(lambda: capsys.readouterr().out or None, 20, "the peer line")
        assert said == "first peer connected (1 now)\n"
        printer.cancel()
        await other.stop()
        await lone.stop()
