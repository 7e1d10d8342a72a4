"""`neuroshard-node ledger` and `ledger verify` through the real CLI process, on a real SQLite file."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from conftest import make_key

from neuroshard_p2p import wire
from neuroshard_p2p.ledger import Ledger, ledger_path

PROVIDER, GATEWAY = make_key(2), make_key(1)
NOW = 1_800_000_000.0


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "neuroshard_p2p.cli", *args],
                          capture_output=True, text=True, timeout=60)


def settle_two(data_dir: Path) -> None:
    with Ledger.open(ledger_path(data_dir)) as ledger:
        for i, tokens in enumerate((1_000, 3_000)):
            ms = int(NOW * 1000) + i
            receipt = wire.sign(wire.Receipt(
                signer=wire.public_key_of(PROVIDER), issued_at_ms=ms, request_id=f"req-{i}",
                gateway=wire.public_key_of(GATEWAY), user="alice", tokens_served=tokens,
                locked_price_nano=100_000_000, started_at_ms=ms - 1000, ended_at_ms=ms), PROVIDER)
            ledger.settle(receipt, "gateway", NOW, 0.05)


def test_ledger_shows_totals_and_verify_passes_then_fails_after_tampering(tmp_path: Path) -> None:
    settle_two(tmp_path)
    shown = cli("ledger", "--data-dir", str(tmp_path))
    assert shown.returncode == 0, shown.stderr
    # 4000 tokens at 0.1 NEURO per 1M = 400,000 nano: 20,000 burned, 380,000 earned
    assert "all            2 settlements          4000 tokens  " \
           "paid 400000 = earned 380000 + burned 20000 nano" in shown.stdout
    assert "req-0" in shown.stdout and "req-1" in shown.stdout

    ok = cli("ledger", "verify", "--data-dir", str(tmp_path))
    assert ok.returncode == 0 and "ledger OK: 2 settlements" in ok.stdout

    with sqlite3.connect(ledger_path(tmp_path)) as conn:
        conn.execute("UPDATE settlements SET tokens = tokens + 1 WHERE request_id = 'req-0'")
    bad = cli("ledger", "verify", "--data-dir", str(tmp_path))
    assert bad.returncode == 1
    assert "stored tokens 1001 differs from the signed receipt's 1000" in bad.stdout


def test_ledger_of_a_fresh_data_dir_says_nothing_settled_and_creates_nothing(tmp_path: Path) -> None:
    shown = cli("ledger", "--data-dir", str(tmp_path))
    assert shown.returncode == 0
    assert shown.stdout.startswith("no ledger at ") and "nothing settled" in shown.stdout
    assert not ledger_path(tmp_path).exists()
