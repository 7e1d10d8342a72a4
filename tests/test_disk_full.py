"""A gateway whose disk fills up: the job it paid for cannot be recorded.

Real parts: two `neuroshard-node run` processes on loopback. The gateway runs in a mount
namespace of its own (`unshare --mount`) with its data dir on a 1 MiB tmpfs; once it counts the
provider's capacity, the test fills that tmpfs (`nsenter` into the namespace, `dd`), and the
gateway's next settlement meets a real ENOSPC from SQLite. Every client command for the gateway
runs inside its namespace too, as its operator's would.

What must happen: the request fails, saying why, with nothing charged; it is not sent to the
provider again (it has served it), and the provider is not blamed; the ledger file stays usable,
and holds nothing the user was not charged for. Skipped where mount namespaces cannot be made
(not root, no `unshare` or `nsenter`).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from neuroshard_p2p import wire
from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
CLI = [sys.executable, "-m", "neuroshard_p2p.cli"]
NODE_FLAGS = ["--network", "simnet", "--listen", "/ip4/127.0.0.1/tcp/0", "--api", "127.0.0.1:0",
              "--no-mdns", "--no-upnp", "--log-level", "warning"]

REASON = ("needs root" if os.geteuid() != 0 else
          "needs unshare and nsenter" if not (shutil.which("unshare") and shutil.which("nsenter"))
          else None)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=f"{REASON}")]


def run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {done.stderr[-2000:]}")
    return done


def test_a_gateway_that_cannot_record_a_payment_fails_the_request_and_blames_no_one(
        tmp_path: Path) -> None:
    provider_dir, small = tmp_path / "provider", tmp_path / "small"
    small.mkdir()
    gateway_dir = small / "gateway"  # on the tmpfs, inside the gateway's namespace
    provider = subprocess.Popen([*CLI, "run", "--data-dir", str(provider_dir), *NODE_FLAGS,
                                 "--capacity", "1000"], cwd=ROOT, env=ENV,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    gateway: subprocess.Popen[str] | None = None
    try:
        wait_for(lambda: (provider_dir / "api").exists(), 20, "the provider serves its API")
        address = json.loads(run([*CLI, "id", "--data-dir", str(provider_dir), "--json"]).stdout)[
            "addrs"][0]
        gateway = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c",
             'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(small),
             *CLI, "run", "--data-dir", str(gateway_dir), *NODE_FLAGS, "--bootstrap", address],
            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        inside = ["nsenter", "-t", str(gateway.pid), "-m", "--"]

        def gateway_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            return run([*inside, *CLI, *args, "--data-dir", str(gateway_dir)], check=check)

        def gateway_json(*args: str) -> Any:
            return json.loads(gateway_cli(*args, "--json").stdout)

        wait_for(lambda: run([*inside, "cat", str(gateway_dir / "api")], check=False)
                 .returncode == 0, 20, "the gateway serves its API")
        assert not (small / "gateway").exists()  # the tmpfs is the gateway's alone
        wait_for(lambda: gateway_json("market")["supply_tokens_per_sec"] == 1000, 30,
                 "the gateway counts the provider's 1000 tokens/s")

        filled = run([*inside, "dd", "if=/dev/zero", f"of={small / 'fill'}", "bs=64k"],
                     check=False)
        assert "No space left on device" in filled.stderr, filled.stderr

        submitted = gateway_cli("submit", "--tokens", "200", "--max-price", "0.9").stdout
        rid = submitted.split()[1].rstrip(":")

        def status() -> dict[str, Any]:
            return dict(gateway_json("status", rid))

        wait_for(lambda: status()["state"] in ("completed", "failed", "expired"), 30,
                 "the request ends", show=status)
        ended = status()
        assert ended["state"] == "failed", ended
        assert ended["cost_nano"] is None, ended  # nothing charged
        problem = json.dumps(ended)
        assert "this node could not record its payment" in problem, ended
        assert "database or disk is full" in problem, ended

        # The provider served it once, and recorded it; it is not sent there again (the request
        # is failed, not pending) and the provider is not blamed for the gateway's disk.
        provider_ledger = json.loads(run([*CLI, "ledger", "--data-dir", str(provider_dir),
                                          "--json"]).stdout)
        assert provider_ledger["totals"]["settlements"] == 1, provider_ledger
        url = run([*inside, "cat", str(gateway_dir / "api")]).stdout.strip()
        metrics = httpx.get(url + "/metrics", timeout=10).text
        assert "neuroshard_ledger_write_failures_total 1.0" in metrics, metrics
        assert "neuroshard_provider_faults_total{" not in metrics, metrics  # none, of any kind

        # Space again: the ledger is intact and holds nothing the user was not charged for.
        run([*inside, "rm", str(small / "fill")])
        ledger = json.loads(gateway_cli("ledger", "--json").stdout)
        assert ledger["totals"]["settlements"] == 0, ledger
        gateway.send_signal(signal.SIGTERM)
        out, _ = gateway.communicate(timeout=20)
        assert f"could not record the settlement of {rid}" in out, out[-3000:]
    finally:
        for proc in (gateway, provider):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)



def metric(text: str, name: str) -> float:
    (line,) = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_a_provider_keeps_the_earnings_its_full_disk_cannot_take_and_records_them_later(
        tmp_path: Path) -> None:
    # The provider now runs in the mount namespace. Its disk fills; the job is served and paid
    # at the gateway; the earning is kept in memory and recorded once there is room. A second
    # one, still unrecorded when the provider stops, goes to its log with its signed receipt.
    gateway_dir, small = tmp_path / "gateway", tmp_path / "small"
    small.mkdir()
    provider_dir = small / "provider"
    provider = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(small),
         *CLI, "run", "--data-dir", str(provider_dir), *NODE_FLAGS, "--capacity", "1000"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    inside = ["nsenter", "-t", str(provider.pid), "-m", "--"]
    gateway: subprocess.Popen[str] | None = None
    try:
        def provider_json(*args: str) -> Any:
            return json.loads(run([*inside, *CLI, *args, "--data-dir", str(provider_dir),
                                   "--json"]).stdout)

        def provider_metrics() -> str:
            url = run([*inside, "cat", str(provider_dir / "api")]).stdout.strip()
            return httpx.get(url + "/metrics", timeout=10).text

        wait_for(lambda: run([*inside, "cat", str(provider_dir / "api")], check=False)
                 .returncode == 0, 20, "the provider serves its API")
        address = provider_json("id")["addrs"][0]
        gateway = subprocess.Popen([*CLI, "run", "--data-dir", str(gateway_dir), *NODE_FLAGS,
                                    "--bootstrap", address], cwd=ROOT, env=ENV,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

        def gateway_json(*args: str) -> Any:
            return json.loads(run([*CLI, *args, "--data-dir", str(gateway_dir), "--json"]).stdout)

        wait_for(lambda: (gateway_dir / "api").exists() and
                 gateway_json("market")["supply_tokens_per_sec"] == 1000, 30,
                 "the gateway counts the provider's 1000 tokens/s")

        def served_while_full() -> str:
            filled = run([*inside, "dd", "if=/dev/zero", f"of={small / 'fill'}", "bs=64k"],
                         check=False)
            assert "No space left on device" in filled.stderr, filled.stderr
            rid = run([*CLI, "submit", "--data-dir", str(gateway_dir), "--tokens", "200",
                       "--max-price", "0.9"]).stdout.split()[1].rstrip(":")
            wait_for(lambda: gateway_json("status", rid)["state"] == "completed", 30,
                     f"{rid} is served and paid at the gateway")
            return rid

        first = served_while_full()
        wait_for(lambda: metric(provider_metrics(), "neuroshard_unrecorded_earnings") == 1, 10,
                 "the provider keeps the earning its disk could not take")
        assert metric(provider_metrics(), "neuroshard_ledger_write_failures_total") == 1

        run([*inside, "rm", str(small / "fill")])  # room again: recorded within the retry
        wait_for(lambda: metric(provider_metrics(), "neuroshard_unrecorded_earnings") == 0, 30,
                 "the kept earning is recorded")
        (row,) = provider_json("ledger")["recent"]
        assert (row["request_id"], row["role"], row["tokens"]) == (first, "provider", 200), row

        second = served_while_full()
        wait_for(lambda: metric(provider_metrics(), "neuroshard_unrecorded_earnings") == 1, 10,
                 "the provider keeps the second earning")
        provider.send_signal(signal.SIGTERM)
        out, _ = provider.communicate(timeout=30)
        assert provider.returncode == 0, out[-3000:]
        (line,) = [line for line in out.splitlines() if f"earning for {second} not recorded" in
                   line]
        receipt = wire.decode_unchecked_time(bytes.fromhex(line.rsplit(" ", 1)[1]))
        assert isinstance(receipt, wire.Receipt), line  # signed, whole: it can be recorded
        assert (receipt.request_id, receipt.tokens_served) == (second, 200), receipt
        paid = gateway_json("ledger")["recent"]
        assert any(r["request_id"] == second for r in paid), paid
    finally:
        for proc in (gateway, provider):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=10)


LEDGER_ON_A_FULL_DISK = """
import os, sys
from tests.test_ledger import CONFIG, NOW, make_job, make_receipt
from neuroshard_p2p.ledger import Ledger, LedgerError, ledger_path
small = sys.argv[1]
ledger = Ledger.open(ledger_path(small))
with open(os.path.join(small, "fill"), "wb") as fill:  # every byte the tmpfs has left
    try:
        while True:
            fill.write(b"\\0" * 65536)
            fill.flush()
    except OSError:
        pass
for name, write in (
        ("settle", lambda: ledger.settle(make_receipt(request_id="req-1").wire, "provider", NOW,
                                         0.05)),
        ("accept", lambda: ledger.accept(make_receipt(request_id="req-2").wire,
                                         make_job(request_id="req-2"), capacity_tokens_per_s=1000,
                                         now=NOW, config=CONFIG))):
    try:
        write()
        print(name, "written")
    except LedgerError as error:
        print(name, error.reason, "disk is full" in str(error))
reader = Ledger.open(ledger_path(small))  # `neuroshard-node ledger` on the full disk
print("read", reader.totals().settlements)
reader.close()
os.remove(os.path.join(small, "fill"))
print("refusals", sum(ledger.refusals().values()), "settlements", ledger.totals().settlements)
ledger.settle(make_receipt(request_id="req-1").wire, "provider", NOW, 0.05)
print("after", ledger.totals().settlements)
"""


def test_a_ledger_write_on_a_full_disk_is_a_storage_error_not_a_refusal(tmp_path: Path) -> None:
    # The provider's path (settle) and the gateway's (accept), on a real full tmpfs in a mount
    # namespace of the script's own: LedgerError `storage`, no refusal counted, nothing
    # half-written; the file still opens for reading; and the same receipt settles once there is
    # room again.
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         'mount -t tmpfs -o size=1m tmpfs "$0" && exec "$@"', str(tmp_path),
         sys.executable, "-c", LEDGER_ON_A_FULL_DISK, str(tmp_path)],
        cwd=ROOT, env={**ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{ROOT / 'tests'}"},
        capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.splitlines() == [
        "settle storage True", "accept storage True", "read 0", "refusals 0 settlements 0",
        "after 1"]
