"""Write or check simnet/data/worked-keys.txt: simnet's pool of keys that did their identity work.

    python scripts/simnet_worked_keys.py --check            every line: the key's work bits (fast)
    python scripts/simnet_worked_keys.py --write 128        grind keys 0..127 (slow: 2^24 hashes
                                                            each, ~37 s of a core in Python)

Key j is the secp256k1 key whose secret is SHA-256("neuroshard-simnet/worked/<j>"); its line holds
the first nonce >= 0 whose work hash (neuroshard_p2p.wire.work) has at least 24 leading zero bits,
and those bits. Anyone can check a line in microseconds; `--write` finds the same nonces again.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from neuroshard_p2p.wire.work import grind, work_bits
from simnet.identities import TABLE_BITS, worked_key

PATH = Path(__file__).resolve().parent.parent / "simnet" / "data" / "worked-keys.txt"
HEADER = (
    "# simnet worked keys: key j = secp256k1 key with secret SHA-256(\"neuroshard-simnet/worked/<j>\");\n"
    "# columns: j, the first nonce >= 0 whose work hash (wire.work) has >= 24 leading zero bits, "
    "those bits.\n"
    "# Written and checked by scripts/simnet_worked_keys.py (protocols/market-v2.md, section 4).\n")


def signer(j: int) -> bytes:
    return worked_key(j).public_key.format(compressed=True)


def first_nonce(j: int) -> tuple[int, int, int]:
    """(j, the first nonce with >= TABLE_BITS work bits, its bits)."""
    key, start, step = signer(j), 0, 1 << 20
    while True:
        found = grind(key, start, step, stop_at=TABLE_BITS)
        if found.bits >= TABLE_BITS:
            return j, found.nonce, found.bits
        start += step


def check() -> int:
    bad = 0
    lines = [l for l in PATH.read_text(encoding="ascii").splitlines() if l and not l.startswith("#")]
    for expected, line in enumerate(lines):
        j, nonce, bits = (int(x) for x in line.split())
        actual = work_bits(signer(j), nonce)
        if j != expected or actual != bits or bits < TABLE_BITS:
            print(f"line {expected}: key {j} nonce {nonce}: {actual} work bits, file says {bits}")
            bad += 1
    print(f"{len(lines)} worked keys, {bad} wrong")
    return 1 if bad else 0


def write(count: int, processes: int) -> int:
    with ProcessPoolExecutor(processes) as pool:
        rows = sorted(pool.map(first_nonce, range(count)))
    PATH.write_text(HEADER + "".join(f"{j} {n} {b}\n" for j, n, b in rows), encoding="ascii")
    print(f"wrote {count} worked keys to {PATH}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--check", action="store_true", help="check every line (fast)")
    group.add_argument("--write", type=int, metavar="N", help="grind keys 0..N-1 (slow)")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args(argv)
    return check() if args.check else write(args.write, args.processes)


if __name__ == "__main__":
    sys.exit(main())
