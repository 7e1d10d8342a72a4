"""Benchmark `core`: order-book matching and price ticks, each against a baseline run alongside.

    python -m neuroshard_p2p.bench core [--requests 100000] [--offers 10000] [--ticks 20000]

- matching: one `OrderBook.match` of `--requests` pending requests (three tiers, locked prices
  0.05-1.0) over `--offers` offers (200-5,000 tokens/s, min prices 0.01-0.5). Baseline: `sorted()`
  of the same requests' matching keys (tier, price, age, id: the order matching must at least
  establish), and, for scale, `sorted()` of as many floats. Goal: match <= 5x sorted(keys).
- ticks: an `InferenceMarket` holding `--offers` offers and 1,000 pending requests; each tick the
  clock moves one tick_s, one offer is re-announced and the price is read. Baseline: the same
  price computed naively per tick (summing supply and demand over the whole book, then the fold),
  which is what the seed did on every event.

Each figure is the median of `--rounds` rounds; the ratios are taken per round (both sides
measured back to back) so a shared machine's load mostly cancels out.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from typing import Any, Callable

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.book import TIERS, OrderBook
from neuroshard_p2p.core.market import InferenceMarket
from neuroshard_p2p.core.pricing import smoothed_price, target_price_nano
from neuroshard_p2p.money import to_nano

START = 1_800_000_000.0


def _book_config() -> MarketConfig:
    # Nothing times out during the benchmark.
    return MarketConfig(capacity_timeout_s=1e9, request_expiry_s=1e9, claim_timeout_s=1e9)


def _filled_book(requests: int, offers: int, seed: int) -> tuple[OrderBook, float]:
    """A book with `offers` offers and `requests` pending requests; returns it and the seconds
    the submits took."""
    rng = random.Random(seed)
    book = OrderBook(_book_config())
    for i in range(offers):
        book.set_offer(f"node{i}", rng.randint(200, 5_000), to_nano(rng.uniform(0.01, 0.5)), START)
    orders = [(f"req{i}", f"user{i % 997}", rng.randint(100, 10_000), to_nano(1.0),
               to_nano(rng.uniform(0.05, 1.0)), START + i * 1e-3, rng.choice(TIERS))
              for i in range(requests)]
    started = time.perf_counter()
    for order in orders:
        book.submit(*order)
    return book, time.perf_counter() - started


def bench_matching(requests: int, offers: int, rounds: int) -> dict[str, Any]:
    match_s: list[float] = []
    keys_s: list[float] = []
    floats_s: list[float] = []
    submit_s: list[float] = []
    matched = 0
    for r in range(rounds):
        book, submitted = _filled_book(requests, offers, seed=r)
        submit_s.append(submitted)
        keys = [(["premium", "standard", "economy"].index(s.tier), -s.locked_price_nano,
                  s.submitted_at, s.request_id) for s in book.pending()]
        random.Random(r).shuffle(keys)
        rng = random.Random(r)
        floats = [rng.random() for _ in range(requests)]
        started = time.perf_counter()
        result = book.match(START + requests * 1e-3)
        match_s.append(time.perf_counter() - started)
        matched = len(result)
        started = time.perf_counter()
        sorted(keys)
        keys_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        sorted(floats)
        floats_s.append(time.perf_counter() - started)
    return {
        "requests": requests, "offers": offers, "matched": matched,
        "match_s": statistics.median(match_s),
        "sorted_keys_s": statistics.median(keys_s),
        "sorted_floats_s": statistics.median(floats_s),
        "ratio_keys": statistics.median(m / k for m, k in zip(match_s, keys_s)),
        "ratio_floats": statistics.median(m / f for m, f in zip(match_s, floats_s)),
        "submit_s": statistics.median(submit_s),
    }


class _Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _market(offers: int) -> tuple[InferenceMarket, _Clock]:
    rng = random.Random(7)
    clock = _Clock(START)
    market = InferenceMarket(_book_config(), clock=clock)
    for i in range(offers):
        market.register_capacity(f"node{i}", rng.randint(200, 5_000), rng.uniform(0.01, 0.5))
    for i in range(1_000):
        market.submit_request(f"req{i}", "user", rng.randint(100, 10_000), max_price=1.0)
    return market, clock


def _ticks_per_s(ticks: int, step: Callable[[int], object]) -> float:
    started = time.perf_counter()
    for i in range(ticks):
        step(i)
    return ticks / (time.perf_counter() - started)


def bench_ticks(offers: int, ticks: int, rounds: int) -> dict[str, Any]:
    market, clock = _market(offers)
    config = market.config
    tick_s = config.tick_s
    offer_list = market.book.offers()

    def tick(i: int) -> None:
        clock.t += tick_s
        offer = offer_list[i % len(offer_list)]
        market.register_capacity(offer.node_id, offer.tokens_per_second, 0.01)
        market.current_price_nano()

    # The naive way: recount the book each tick, keep the targets, fold.
    state = {o.node_id: o.tokens_per_second for o in offer_list}
    waiting = [s.tokens for s in market.book.pending()]
    targets: list[int] = []

    def naive(i: int) -> None:
        offer = offer_list[i % len(offer_list)]
        state[offer.node_id] = offer.tokens_per_second
        targets.append(target_price_nano(sum(state.values()), sum(waiting), config))
        del targets[:-config.window_ticks]
        smoothed_price(targets, config)

    fast: list[float] = []
    slow: list[float] = []
    for _ in range(rounds):
        fast.append(_ticks_per_s(ticks, tick))
        slow.append(_ticks_per_s(max(1, ticks // 10), naive))
    return {
        "offers": offers, "ticks": ticks,
        "ticks_per_s": statistics.median(fast),
        "naive_ticks_per_s": statistics.median(slow),
        "speedup": statistics.median(f / s for f, s in zip(fast, slow)),
    }


def run(requests: int = 100_000, offers: int = 10_000, ticks: int = 20_000,
        rounds: int = 3) -> dict[str, Any]:
    """Measure both parts; returns the figures."""
    return {"matching": bench_matching(requests, offers, rounds),
            "ticks": bench_ticks(offers, ticks, rounds)}


def report(results: dict[str, Any]) -> str:
    m, t = results["matching"], results["ticks"]
    verdict = "meets" if m["ratio_keys"] <= 5 else "MISSES"
    return "\n".join([
        f"core: matching {m['requests']:,} requests over {m['offers']:,} offers "
        f"({m['matched']:,} matched)",
        f"  match()                      {m['match_s'] * 1e3:8.1f} ms",
        f"  sorted() of the same keys    {m['sorted_keys_s'] * 1e3:8.1f} ms   "
        f"match / sorted = {m['ratio_keys']:.2f}x ({verdict} the <= 5x goal)",
        f"  sorted() of as many floats   {m['sorted_floats_s'] * 1e3:8.1f} ms   "
        f"match / sorted = {m['ratio_floats']:.2f}x",
        f"  (submitting them took        {m['submit_s'] * 1e3:8.1f} ms)",
        f"core: price ticks with {t['offers']:,} offers (one re-announcement and a price read "
        f"per tick)",
        f"  InferenceMarket              {t['ticks_per_s']:10,.0f} ticks/s",
        f"  naive recount per tick       {t['naive_ticks_per_s']:10,.0f} ticks/s   "
        f"speed-up {t['speedup']:.1f}x",
    ])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m neuroshard_p2p.bench core",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--offers", type=int, default=10_000)
    parser.add_argument("--ticks", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    print(report(run(args.requests, args.offers, args.ticks, args.rounds)), flush=True)


if __name__ == "__main__":
    main()
