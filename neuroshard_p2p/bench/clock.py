"""What the clock watch (node/clockwatch.py) costs on the receive path: `engine.on_gossip` per
accepted announcement without and with the watch, in one run, on a network without identity work
(simnet) and with testnet's (one work hash more per message). Best of `--rounds` rounds of
announcements from `--signers` signers, ten each per round.

    python -m neuroshard_p2p.bench clock [--signers 300 --rounds 5]
"""

from __future__ import annotations

import argparse
import time
from typing import Sequence

import coincurve

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.node.clockwatch import ClockWatch
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.wire import Announcement, decode_unchecked_time
from neuroshard_p2p.wire.work import work_bits, work_weight

T0 = 1_700_000_000.0
PER_ROUND = 10


def _key(i: int) -> coincurve.PrivateKey:
    return coincurve.PrivateKey((7_000_000 + i).to_bytes(32, "big"))


def _rounds(signers: int, rounds: int) -> list[list[tuple[bytes, str]]]:
    """Each round: PER_ROUND fresh announcements of every signer, 2 s apart (signed time)."""
    engines = [PeerEngine(MarketConfig(capacity_timeout_s=60.0), _key(i), tokens_per_second=100)
               for i in range(signers)]
    out = []
    for r in range(rounds):
        batch = []
        for k in range(PER_ROUND):
            for engine in engines:
                engine.set_offer(100 + PER_ROUND * r + k + 1, 0)
                batch.append((engine.poll_announcements(T0 + 50 * r + 2 * k)[0], engine.peer_id))
        out.append(batch)
    return out


def _per_message(config: MarketConfig, rounds: list[list[tuple[bytes, str]]],
                 watched: bool) -> float:
    """Seconds per on_gossip call of a fresh receiving engine, best round."""
    node = PeerEngine(config, _key(999_999))
    node.validator.rate_burst = 1e9  # the rounds come faster than V8 lets one signer through
    if watched:
        node.clock_watch = ClockWatch()
    best = float("inf")
    for r, batch in enumerate(rounds):
        now = T0 + 50 * r + 30
        start = time.perf_counter()
        for data, peer in batch:
            verdict = node.on_gossip(data, now, peer)
            assert verdict.accepted, verdict
        best = min(best, (time.perf_counter() - start) / len(batch))
    return best


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench clock",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--signers", type=int, default=300, help="signers announcing")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (the best one counts)")
    args = parser.parse_args(argv)
    rounds = _rounds(args.signers, args.rounds)
    print(f"engine.on_gossip per accepted announcement, {args.signers} signers, best of "
          f"{args.rounds} rounds of {args.signers * PER_ROUND}")
    plain: dict[int, float] = {}
    for bits, network in ((0, "no identity work (simnet)"), (24, "24 bits (testnet)")):
        config = MarketConfig(capacity_timeout_s=60.0, identity_work_bits=bits)
        # alternated, three times each, so a machine that speeds up or slows down hits both
        # sides alike; the best of each side counts
        runs: dict[bool, list[float]] = {False: [], True: []}
        for _ in range(3):
            for watched in (False, True):
                runs[watched].append(_per_message(config, rounds, watched))
        without, with_ = min(runs[False]), min(runs[True])
        plain[bits] = without
        print(f"  {network:27} without the watch {without * 1e6:7.2f} us, with it "
              f"{with_ * 1e6:7.2f} us  (x{with_ / without:.3f}, +{(with_ - without) * 1e6:.2f} us)")
    # The difference above is within the rounds' noise; the watch's own work, timed alone on the
    # same messages, is the figure that travels (as a share of on_gossip's time in this run).
    messages = [decode_unchecked_time(data) for batch in rounds for data, _ in batch]
    signed = [(m.signer, m.issued_at_ms, m.work_nonce) for m in messages
              if isinstance(m, Announcement)]
    for bits, network in ((0, "no identity work (simnet)"), (24, "24 bits (testnet)")):
        best = float("inf")
        for _ in range(5):
            watch = ClockWatch()
            start = time.perf_counter()
            for signer, issued_at_ms, nonce in signed:
                weight = work_weight(work_bits(signer, nonce), bits) if bits else 1.0
                watch.observe(signer, issued_at_ms, T0 + 30, weight)
            best = min(best, (time.perf_counter() - start) / len(signed))
        print(f"  the watch alone, {network:27} {best * 1e6:5.2f} us per message: "
              f"{100 * best / plain[bits]:.1f} % of on_gossip's time")


if __name__ == "__main__":
    main()
