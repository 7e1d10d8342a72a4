"""Crash-test driver: settle receipts in a loop, acknowledging each only after it settled.

    python -m neuroshard_p2p.ledger.crashdriver --db PATH --ack-file PATH [--count N] [--seed S]

Each iteration signs a fresh receipt with fixed test keys (gateway = secret 1, provider = secret 2),
passes it through `Ledger.accept` as a gateway would, and only after that call returned appends the
receipt id (hex) plus a newline to the ack file and fsyncs it. Every few iterations it also replays
an earlier receipt, which must be refused. A test kills this process with SIGKILL at random points
and then checks that every acknowledged id is in the ledger and `verify()` still passes: an ack
line on disk is a promise the settlement was durable before the promise was written.

Exit codes: 0 after --count settlements, 3 if a replay was not refused.
"""

from __future__ import annotations

import argparse
import os
import random
import secrets
import sys
import time

import coincurve

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.ledger.checks import REPLAY, LedgerError, MatchedJob
from neuroshard_p2p.ledger.store import Ledger
from neuroshard_p2p.timeline import ms_of

GATEWAY_KEY = coincurve.PrivateKey((1).to_bytes(32, "big"))
PROVIDER_KEY = coincurve.PrivateKey((2).to_bytes(32, "big"))
USERS = ("alice", "bob", "carol")
PRICES_NANO = (1, 999_999, 10_000_000, 100_000_000, 1_000_000_000)
CAPACITY_TOKENS_PER_S = 50_000
# The rate limit is not under test here; settle as fast as the disk allows.
CONFIG = MarketConfig(max_tokens_per_minute=10**15)


def signed_receipt(request_id: str, user: str, tokens: int, price_nano: int,
                   now: float) -> wire.Receipt:
    """A receipt from the test provider for the test gateway's job."""
    now_ms = ms_of(now)
    receipt = wire.Receipt(
        signer=wire.public_key_of(PROVIDER_KEY), issued_at_ms=now_ms, request_id=request_id,
        gateway=wire.public_key_of(GATEWAY_KEY), user=user, tokens_served=tokens,
        locked_price_nano=price_nano, started_at_ms=now_ms - 1000, ended_at_ms=now_ms)
    return wire.sign(receipt, PROVIDER_KEY)  # type: ignore[return-value]


def run(db: str, ack_file: str, count: int | None, seed: int | None,
        synchronous: str = "FULL") -> int:
    rng = random.Random(seed)
    run_id = f"{os.getpid()}-{secrets.token_hex(4)}"
    ledger = Ledger.open(db, synchronous=synchronous)
    fd = os.open(ack_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    i = 0
    try:
        while count is None or i < count:
            now = time.time()
            request_id = f"crash-{run_id}-{i}"
            tokens = rng.choice((0, 1, rng.randint(1, 20_000)))
            receipt = signed_receipt(request_id, rng.choice(USERS), tokens,
                                     rng.choice(PRICES_NANO), now)
            job = MatchedJob(request_id=request_id, gateway=receipt.gateway,
                             provider=receipt.signer, user=receipt.user,
                             locked_price_nano=receipt.locked_price_nano,
                             tokens_requested=max(1, tokens), sent_at=now - 1.0)
            ledger.accept(receipt.wire, job, capacity_tokens_per_s=CAPACITY_TOKENS_PER_S,
                          now=now, config=CONFIG)
            # Acknowledge only now that accept() returned (the transaction is committed).
            os.write(fd, receipt.msg_id.hex().encode("ascii") + b"\n")
            os.fsync(fd)
            i += 1
            if i % 7 == 0:  # replay the receipt just settled: a refusal is written, too
                try:
                    ledger.accept(receipt.wire, job, capacity_tokens_per_s=CAPACITY_TOKENS_PER_S,
                                  now=now, config=CONFIG)
                except LedgerError as exc:
                    if exc.reason != REPLAY:
                        raise
                else:
                    print("replayed receipt settled twice", file=sys.stderr)
                    return 3
    finally:
        os.close(fd)
        ledger.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m neuroshard_p2p.ledger.crashdriver",
        description="Settle test receipts in a loop; append each settled receipt id to the ack "
                    "file (fsynced) only after the settlement committed.")
    parser.add_argument("--db", required=True, help="ledger SQLite file")
    parser.add_argument("--ack-file", required=True, help="file to append acknowledged ids to")
    parser.add_argument("--count", type=int, default=None, help="stop after N (default: never)")
    parser.add_argument("--seed", type=int, default=None, help="seed for tokens/prices/users")
    parser.add_argument("--synchronous", choices=("FULL", "NORMAL"), default="FULL")
    args = parser.parse_args(argv)
    return run(args.db, args.ack_file, args.count, args.seed, args.synchronous)


if __name__ == "__main__":
    sys.exit(main())
