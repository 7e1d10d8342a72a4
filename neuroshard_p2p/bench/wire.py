"""Benchmark `wire`: how close decoding a message gets to the cost of its signature check.

    python -m neuroshard_p2p.bench wire [--n 2000] [--rounds 11]

Every rate is messages per second over the same N announcements (N signers, one message each, so
nothing is a repeat), measured in one run, the rows back to back in every round. Rates print the
best round of each row; ratios print the median over rounds of the ratio within a round (both
rows measured under the same load), which is what holds up on a shared machine. Rows:

- bare verify (parse key)  `coincurve.PublicKey(signer).verify(der, body)` with the DER signature
                           prepared in advance: the least work anyone can do with the wire bytes'
                           key, signature and body — the baseline;
- bare verify (parsed key) the same with the key objects parsed in advance: the stricter baseline;
- wire.decode              everything `decode` does: envelope, fields, canonical form, signature,
                           freshness, message id;
- Validator.check          decode plus the stateful rules (seen-cache, seq, rate, plausibility);
- duplicate drop           `Validator.check` of bytes already accepted (refused before verifying);
- wire.encode              signing, for scale.

The goal is decode / bare verify ≥ 0.8: our own work costs less than a quarter of the signature
check it wraps.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import time
from typing import Any, Callable

import coincurve
from coincurve.ecdsa import cdata_to_der, deserialize_compact

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig

NOW = 1_800_000_000.0
GOAL = 0.8


def _keys(n: int) -> list[coincurve.PrivateKey]:
    return [coincurve.PrivateKey(hashlib.sha256(b"bench-wire-%d" % i).digest()) for i in range(n)]


def _announcements(keys: list[coincurve.PrivateKey]) -> list[wire.Announcement]:
    ms = int(NOW * 1000)
    return [wire.Announcement(signer=wire.public_key_of(k), issued_at_ms=ms - i % 1000, seq=ms,
                              tokens_per_second=1000 + i, min_price_nano=100_000_000,
                              pending_tokens=i * 7, pending_requests=i % 5)
            for i, k in enumerate(keys)]


def _rate(n: int, fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def run(n: int = 2000, rounds: int = 11, *, quiet: bool = False) -> dict[str, float]:
    """Measure the rates in the module docstring, print them (unless `quiet`) and return them
    with the ratios."""
    keys = _keys(n)
    messages = _announcements(keys)
    wires = [wire.encode(m, k) for m, k in zip(messages, keys)]
    signed = [wire.decode(w, NOW) for w in wires]
    bare = [(m.signer, cdata_to_der(deserialize_compact(m.signature)), wire.body_of(m))
            for m in signed]
    parsed = [(coincurve.PublicKey(s), der, body) for s, der, body in bare]
    config = MarketConfig()

    def verify_parse() -> None:
        for signer, der, body in bare:
            if not coincurve.PublicKey(signer).verify(der, body):
                raise AssertionError("baseline failed to verify")

    def verify_parsed() -> None:
        for key, der, body in parsed:
            if not key.verify(der, body):
                raise AssertionError("baseline failed to verify")

    def decode_all() -> None:
        for data in wires:
            wire.decode(data, NOW)

    def validate_all() -> wire.Validator:
        validator = wire.Validator(config)
        for data in wires:
            validator.check(data, NOW)
        return validator

    def drop_duplicates(validator: wire.Validator) -> None:
        for data in wires:
            try:
                validator.check(data, NOW)
            except wire.WireError:
                pass

    def encode_all() -> None:
        for m, k in zip(messages, keys):
            wire.encode(m, k)

    best: dict[str, float] = {}
    ratios: dict[str, list[float]] = {"decode_vs_verify": [], "decode_vs_parsed_verify": [],
                                      "validate_vs_verify": []}

    def keep(name: str, value: float) -> float:
        best[name] = max(best.get(name, 0.0), value)
        return value

    for _ in range(rounds):
        # Within a round the rows run back to back, so a ratio of one round compares rates
        # measured under the same load; the median over rounds is the figure to read.
        parse = keep("verify_parse_per_s", _rate(n, verify_parse))
        parsed_rate = keep("verify_parsed_per_s", _rate(n, verify_parsed))
        decode = keep("decode_per_s", _rate(n, decode_all))
        validator: list[wire.Validator] = []
        validate = keep("validate_per_s", _rate(n, lambda: validator.append(validate_all())))
        keep("duplicate_per_s", _rate(n, lambda: drop_duplicates(validator[0])))
        keep("encode_per_s", _rate(n, encode_all))
        ratios["decode_vs_verify"].append(decode / parse)
        ratios["decode_vs_parsed_verify"].append(decode / parsed_rate)
        ratios["validate_vs_verify"].append(validate / parse)
    for name, values in ratios.items():
        best[name] = statistics.median(values)
    best["n"] = n
    best["rounds"] = rounds
    if not quiet:
        print(report(best))
    return best


def report(results: dict[str, float]) -> str:
    """The figures as the README prints them."""
    rows = [
        ("bare verify (parse key)", results["verify_parse_per_s"]),
        ("bare verify (parsed key)", results["verify_parsed_per_s"]),
        ("wire.decode", results["decode_per_s"]),
        ("Validator.check", results["validate_per_s"]),
        ("duplicate drop", results["duplicate_per_s"]),
        ("wire.encode (sign)", results["encode_per_s"]),
    ]
    lines = [f"wire: {results['n']:.0f} announcements per round, {results['rounds']:.0f} rounds; "
             "rates: best round, ratios: median of per-round ratios",
             f"{'':28}{'msg/s':>10}{'µs/msg':>9}"]
    lines += [f"{name:28}{rate:>10,.0f}{1e6 / rate:>9.1f}" for name, rate in rows]
    verdict = "meets" if results["decode_vs_verify"] >= GOAL else "MISSES"
    lines += [
        f"decode / bare verify (parse key)   {results['decode_vs_verify']:.2f}  ({verdict} the ≥ {GOAL} goal)",
        f"decode / bare verify (parsed key)  {results['decode_vs_parsed_verify']:.2f}",
        f"Validator.check / bare verify      {results['validate_vs_verify']:.2f}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench wire",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="announcements per round (default 2000)")
    parser.add_argument("--rounds", type=int, default=11, help="rounds (default 11)")
    args = parser.parse_args(argv)
    run(args.n, args.rounds)


if __name__ == "__main__":
    main()
