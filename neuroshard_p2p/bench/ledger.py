"""Benchmark `ledger`: settlements per second, with the baselines measured in the same run.

    python -m neuroshard_p2p.bench ledger [--n 2000] [--dir DIR]

Receipts are signed before the clock starts (signing is the provider's cost, not the ledger's).
Printed rates, each over the same receipts on a fresh file in DIR (default: the temp dir; give the
node's data disk to measure that disk):

- decode only      `wire.decode_unchecked_time`: the signature check every settlement repeats;
- settle NORMAL    `Ledger.settle`, synchronous=NORMAL (no fsync per commit);
- settle FULL      `Ledger.settle`, synchronous=FULL (the default: fsync per commit);
- accept FULL      `Ledger.accept`: every receipt check + settle, as a gateway runs it (one
                   provider, a settlement every 50 ms of ledger time, so its 60 s rate window
                   holds up to 1200 earlier settlements to sum);
- async FULL       `AsyncLedger.accept` from trio, one worker thread hop per settlement;
- verify           `Ledger.verify` rows per second over the FULL ledger.

Ratios (FULL / NORMAL, async / sync, settle / decode) are what to read across machines.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import coincurve
import trio

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.ledger import AsyncLedger, Ledger, MatchedJob

GATEWAY_KEY = coincurve.PrivateKey((1).to_bytes(32, "big"))
PROVIDER_KEY = coincurve.PrivateKey((2).to_bytes(32, "big"))
CONFIG = MarketConfig(max_tokens_per_minute=10**15)
NOW = 1_800_000_000.0


SPACING_S = 0.05   # ledger time between settlements in the accept rows


def _receipts(n: int, tag: str) -> list[tuple[bytes, MatchedJob]]:
    gateway, provider = wire.public_key_of(GATEWAY_KEY), wire.public_key_of(PROVIDER_KEY)
    out = []
    for i in range(n):
        ms = int((NOW + i * SPACING_S) * 1000)
        receipt = wire.Receipt(signer=provider, issued_at_ms=ms, request_id=f"{tag}-{i}",
                               gateway=gateway, user=f"user-{i % 50}", tokens_served=1 + i % 4000,
                               locked_price_nano=100_000_000, started_at_ms=ms - 1000,
                               ended_at_ms=ms)
        data = wire.encode(receipt, PROVIDER_KEY)
        job = MatchedJob(request_id=receipt.request_id, gateway=gateway, provider=provider,
                         user=receipt.user, locked_price_nano=receipt.locked_price_nano,
                         tokens_requested=receipt.tokens_served, sent_at=ms / 1000 - 5)
        out.append((data, job))
    return out


def _rate(n: int, fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def run(n: int = 2000, directory: str | None = None) -> dict[str, Any]:
    """Measure and return the rates (per second) and ratios described in the module docstring."""
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        base = Path(tmp)
        results: dict[str, Any] = {"n": n, "dir": str(Path(directory or tempfile.gettempdir()))}

        batch = _receipts(n, "decode")
        results["decode_per_s"] = _rate(n, lambda: [wire.decode_unchecked_time(d) for d, _ in batch])

        for mode in ("NORMAL", "FULL"):
            batch = _receipts(n, f"settle-{mode}")
            with Ledger.open(base / f"settle-{mode}.sqlite3", synchronous=mode) as ledger:
                results[f"settle_{mode.lower()}_per_s"] = _rate(
                    n, lambda: [ledger.settle(d, "gateway", NOW, 0.05) for d, _ in batch])

        batch = _receipts(n, "accept")
        with Ledger.open(base / "accept.sqlite3") as ledger:
            results["accept_full_per_s"] = _rate(n, lambda: [
                ledger.accept(d, job, capacity_tokens_per_s=50_000, now=job.sent_at + 5,
                              config=CONFIG)
                for d, job in batch])
            start = time.perf_counter()
            report = ledger.verify()
            results["verify_rows_per_s"] = report.rows / (time.perf_counter() - start)
            assert report.ok, str(report)

        batch = _receipts(n, "async")

        async def settle_async() -> None:
            async with await AsyncLedger.open(base / "async.sqlite3") as ledger:
                for data, job in batch:
                    await ledger.accept(data, job, capacity_tokens_per_s=50_000,
                                        now=job.sent_at + 5, config=CONFIG)

        results["async_accept_full_per_s"] = _rate(n, lambda: trio.run(settle_async))

    results["full_over_normal"] = results["settle_full_per_s"] / results["settle_normal_per_s"]
    results["async_over_sync"] = results["async_accept_full_per_s"] / results["accept_full_per_s"]
    results["settle_full_over_decode"] = results["settle_full_per_s"] / results["decode_per_s"]
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench ledger",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="settlements per measurement")
    parser.add_argument("--dir", default=None, help="directory for the ledger files")
    args = parser.parse_args(argv)
    r = run(args.n, args.dir)
    print(f"ledger benchmark: {r['n']} settlements per row, files in {r['dir']}")
    for label, key in (("decode only (signature check)", "decode_per_s"),
                       ("settle, synchronous=NORMAL", "settle_normal_per_s"),
                       ("settle, synchronous=FULL", "settle_full_per_s"),
                       ("accept (checks + settle), FULL", "accept_full_per_s"),
                       ("AsyncLedger.accept from trio, FULL", "async_accept_full_per_s"),
                       ("verify (rows)", "verify_rows_per_s")):
        print(f"  {label:38s} {r[key]:>10,.0f} /s")
    print(f"  FULL / NORMAL        {r['full_over_normal']:.2f}")
    print(f"  async / sync accept  {r['async_over_sync']:.2f}")
    print(f"  settle FULL / decode {r['settle_full_over_decode']:.2f}")


if __name__ == "__main__":
    main()
