"""Crash safety: a process settling in a loop is SIGKILLed at random points, several times over
the same ledger file. After every kill the ledger verifies and every settlement the process had
acknowledged (ack line fsynced after settle returned) is there."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import neuroshard_p2p
from neuroshard_p2p.ledger import Ledger, ledger_path, ledger_verify
from tests.waiting import wait_for

ROUNDS = 10
ROUND_DEADLINE_S = 60.0
REPO_ROOT = Path(neuroshard_p2p.__file__).resolve().parent.parent


def acknowledged(ack_file: Path) -> list[bytes]:
    """Receipt ids from complete ack lines (a line torn by the kill promised nothing)."""
    if not ack_file.exists():
        return []
    lines = ack_file.read_bytes().split(b"\n")[:-1]
    return [bytes.fromhex(line.decode("ascii")) for line in lines]


def start_driver(db: Path, ack_file: Path, seed: int,
                 count: int | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    args = [sys.executable, "-m", "neuroshard_p2p.ledger.crashdriver", "--db", str(db),
            "--ack-file", str(ack_file), "--seed", str(seed)]
    if count is not None:
        args += ["--count", str(count)]
    return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def check_after_restart(data_dir: Path, ack_file: Path, kills: int) -> int:
    ok, report = ledger_verify(data_dir)
    assert ok, report
    acked = acknowledged(ack_file)
    assert len(set(acked)) == len(acked)
    with Ledger.open(ledger_path(data_dir)) as ledger:
        missing = [rid.hex() for rid in acked if not ledger.has_settled(rid)]
        assert missing == [], f"acknowledged settlements lost: {missing}"
        settled = ledger.totals().settlements
    # Each killed run can have committed at most one settlement it had not yet acknowledged.
    assert len(acked) <= settled <= len(acked) + kills
    return settled


@pytest.mark.slow
def test_sigkill_at_random_points_loses_no_acknowledged_settlement(tmp_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    db, ack_file = ledger_path(tmp_path), tmp_path / "acks"
    for kills in range(1, ROUNDS + 1):
        before = len(acknowledged(ack_file))
        target = before + rng.randint(1, 60)
        driver = start_driver(db, ack_file, seed=rng.randrange(2**32))
        try:
            # Kill as soon as the driver is past a random number of acknowledgements: where in
            # its loop (signing, inside the transaction, fsyncing the ack) it is then is random.
            def past_target() -> bool:
                if driver.poll() is not None:
                    pytest.fail(f"driver exited {driver.returncode} (seed {seed}): "
                                f"{driver.stderr.read().decode(errors='replace')}")
                return len(acknowledged(ack_file)) >= target

            wait_for(past_target, ROUND_DEADLINE_S, f"the driver acknowledges {target} settlements",
                     interval=0.001)
            driver.send_signal(signal.SIGKILL)
            assert driver.wait(timeout=30) == -signal.SIGKILL
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait(timeout=30)
            driver.stdout.close()
            driver.stderr.close()
        settled = check_after_restart(tmp_path, ack_file, kills)
        assert settled >= target, f"seed {seed}"

    # The ledger keeps working after all that: a clean run settles on top and verifies.
    before = len(acknowledged(ack_file))
    driver = start_driver(db, ack_file, seed=1, count=25)
    _, stderr = driver.communicate(timeout=ROUND_DEADLINE_S)
    assert driver.returncode == 0, stderr.decode(errors="replace")
    assert len(acknowledged(ack_file)) == before + 25
    check_after_restart(tmp_path, ack_file, ROUNDS)
    with Ledger.open(db) as ledger:
        assert ledger.refusals()["replay"] >= 3   # every 7th iteration replays, and is refused
