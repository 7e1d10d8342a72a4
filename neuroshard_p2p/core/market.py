"""The embedded market: NeuroShard's `InferenceMarket` API, working as its docs show, over the
order book and the price curve.

This is the one place in the core driven by a clock: every public call reads `clock()` once and
passes that time down. Prices move on ticks (tick k = floor(t / tick_s)). The price at tick k is
`pricing.smoothed_price` over the targets of ticks k−W+1 … k (W = window_ticks, never before the
market started), where a tick's target is the target price of the market state at the end of that
tick and the current tick's target is that of the state now. Ticks in which nothing happened carry
the state forward; timeouts (stale capacity, claim timeouts, expiries) are applied at their own
deadlines, so the price does not depend on when, or how often, the market was called.
"""

from __future__ import annotations

import math
import time
from collections import deque
from typing import Any, Callable

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.average import PricePoint, TickAverage
from neuroshard_p2p.core.book import Match, OrderBook, RequestStatus, RestingOffer
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.core.pricing import (clearing_price_nano, demand_histogram, target_price_nano,
                                         tick_of, tick_start, utilization, window_price)
from neuroshard_p2p.money import Settlement, from_nano, to_nano

def _neuro(name: str, value: object) -> float:
    """A price given in NEURO by a person: a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value < 0:
        raise MarketError(f"{name} must be a number of NEURO >= 0, got {value!r}")
    return float(value)


def _whole(name: str, value: object) -> int:
    """A count given by a person: an int, or a float with no fractional part (1000.0)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise MarketError(f"{name} must be a whole number, got {value!r}")
    return value


class InferenceMarket:
    """An inference market in one process: nodes register capacity, users submit requests, the
    price follows supply and demand on ticks.

        market = InferenceMarket()
        market.register_capacity("node1", tokens_per_second=1000, min_price=0.01)
        market.submit_request("req1", "user1", 10000, max_price=1.0)
        market.withdraw_capacity("node1")
        stats = market.get_market_stats()

    `clock` returns seconds since the epoch (default: the wall clock); tests pass a fake one.
    Prices at this surface are NEURO per 1M tokens (floats); inside, nano-NEURO integers.
    Operations that cannot be done raise MarketError (a ValueError) saying why.
    """

    def __init__(self, config: MarketConfig | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self._config = config if config is not None else MarketConfig()
        self._clock: Callable[[], float] = clock if clock is not None else time.time
        self._book = OrderBook(self._config)
        self._now = self._read_clock(-math.inf)
        self._tick = tick_of(self._now, self._config)   # the current, unfinished tick
        # Targets of the last W finished ticks, oldest first.
        self._targets: deque[int] = deque(maxlen=self._config.window_ticks)
        self._average = TickAverage(self._config.tick_s)

    # ---------------------------------------------------------------- the seed's API

    def register_capacity(self, node_id: str, tokens_per_second: int,
                          min_price: float = 0.0) -> RestingOffer:
        """Offer `tokens_per_second` of inference at no less than `min_price` NEURO per 1M tokens.
        Registering again replaces the offer and counts as its re-announcement (capacity not
        re-registered within capacity_timeout_s stops counting)."""
        tokens_per_second = _whole("tokens_per_second", tokens_per_second)
        if tokens_per_second <= 0:
            raise MarketError(f"tokens_per_second must be > 0, got {tokens_per_second} "
                              f"(use withdraw_capacity to stop offering)")
        min_price = _neuro("min_price", min_price)
        if min_price > self._config.max_price:
            raise MarketError(f"min_price {min_price:g} > the market's max_price "
                              f"{self._config.max_price:g}: no request could ever pay it")
        now = self._catch_up()
        offer = self._book.set_offer(node_id, tokens_per_second, to_nano(min_price), now)
        assert offer is not None
        return offer

    def withdraw_capacity(self, node_id: str) -> bool:
        """Stop offering `node_id`'s capacity; False if it offered none."""
        self._catch_up()
        return self._book.withdraw(node_id)

    def submit_request(self, request_id: str, user_id: str, tokens: int, max_price: float = 1.0,
                       tier: str = "standard") -> RequestStatus:
        """Ask for `tokens` of inference paying at most `max_price` NEURO per 1M tokens. The
        request locks the current price; it is refused if max_price is below it."""
        max_price = _neuro("max_price", max_price)
        now = self._catch_up()
        return self._book.submit(request_id, user_id, _whole("tokens", tokens),
                                 to_nano(max_price), self._price_nano(), now, tier)

    def get_market_stats(self) -> dict[str, Any]:
        """The market at a glance. Prices in NEURO per 1M tokens (with exact *_nano twins).
        `utilization` is None when demand waits and no capacity is offered (u = ∞), so the
        result stays valid JSON."""
        self._catch_up()
        book = self._book
        price = self._price_nano()
        target = self._target_nano()
        u = utilization(book.supply_tokens_per_sec, book.demand_tokens_waiting,
                        self._config.target_response_s)
        return {
            "enabled": True,
            "mode": self._config.mode,
            "current_price": from_nano(price),
            "current_price_nano": price,
            "target_price": from_nano(target),
            "target_price_nano": target,
            "supply_tokens_per_sec": book.supply_tokens_per_sec,
            "demand_tokens_waiting": book.demand_tokens_waiting,
            "utilization": None if math.isinf(u) else u,
            "pending_requests": book.pending_count,
            "claimed_requests": book.claimed_count,
            "available_nodes": book.offer_count,
            "avg_price_24h": from_nano(self._average.average(self._tick, price) or 0),
            "tick": self._tick,
            "min_price": self._config.min_price,
            "max_price": self._config.max_price,
            "completed_requests": book.counters["completed"],
            "expired_requests": book.counters["expired"],
        }

    # ---------------------------------------------------------------- serving requests

    def match_requests(self) -> list[Match]:
        """Match every pending request that can be matched now (see OrderBook.match); the
        matched ones are claimed by their providers."""
        now = self._catch_up()
        return self._book.match(now, self._price_nano() if self._config.clearing else None)

    def claim_request(self, node_id: str) -> Match | None:
        """`node_id` takes the next pending request it can serve; None if there is none."""
        return self._book.claim_next(node_id, self._catch_up())

    def complete_request(self, request_id: str, tokens_served: int | None = None,
                         node_id: str | None = None) -> Settlement:
        """A claimed request was served (all its tokens unless `tokens_served` says fewer):
        returns what the user pays, what is burned and what the provider earns (nano-NEURO)."""
        now = self._catch_up()
        if tokens_served is None:
            status = self._book.get(request_id)
            if status is None:
                raise MarketError(f"unknown request {request_id!r}")
            tokens_served = status.tokens
        return self._book.complete(request_id, tokens_served, now, node_id=node_id)

    def release_request(self, request_id: str,
                        reason: str = "released by its provider") -> RequestStatus:
        """A claimed request goes back to pending (its provider declined or failed)."""
        return self._book.release(request_id, self._catch_up(), reason)

    def fail_request(self, request_id: str, reason: str) -> RequestStatus:
        """A request ends unserved and unpaid, for `reason`."""
        return self._book.fail(request_id, self._catch_up(), reason)

    def get_request(self, request_id: str) -> RequestStatus | None:
        """The request's state and why it is there; None if unknown or already pruned."""
        self._catch_up()
        return self._book.get(request_id)

    # ---------------------------------------------------------------- prices

    def get_current_price(self) -> float:
        """The price now, NEURO per 1M tokens."""
        self._catch_up()
        return from_nano(self._price_nano())

    def current_price_nano(self) -> int:
        """The price now, nano-NEURO per 1M tokens."""
        self._catch_up()
        return self._price_nano()

    def price_history(self) -> list[PricePoint]:
        """Per-minute average prices of the finished ticks of the last 24 h, oldest first."""
        self._catch_up()
        return self._average.history()

    @property
    def config(self) -> MarketConfig:
        """The configuration the market runs with."""
        return self._config

    @property
    def book(self) -> OrderBook:
        """The order book as of now (read it; change it through the market so prices stay in
        step). Like every public call, reading it reads the clock and applies the timeouts due,
        so what it shows never lags behind what the next call would see."""
        self._catch_up()
        return self._book

    # ---------------------------------------------------------------- ticks

    def _read_clock(self, not_before: float) -> float:
        now = self._clock()
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise MarketError(f"the clock returned {now!r}, not a finite number of seconds")
        # A clock that steps back (NTP) must not rewind ticks: time stands still instead.
        return max(float(now), not_before)

    def _target_nano(self) -> int:
        if self._config.clearing:
            book = self._book
            return clearing_price_nano(
                [(o.min_price_nano, o.tokens_per_second) for o in book.offers()],
                demand_histogram((r.max_price_nano, r.tokens) for r in book.pending()),
                self._config)
        return target_price_nano(self._book.supply_tokens_per_sec,
                                 self._book.demand_tokens_waiting, self._config)

    def _price_nano(self) -> int:
        """The smoothed price of the current tick: the last W−1 finished ticks' targets, then the
        target of the state now."""
        keep = self._config.window_ticks - 1
        finished = list(self._targets)[max(0, len(self._targets) - keep):] if keep else []
        return window_price([*finished, self._target_nano()], self._config)

    def _catch_up(self) -> float:
        """Read the clock, finish every tick before the current one, apply timeouts up to now."""
        now = self._read_clock(self._now)
        current = tick_of(now, self._config)
        while self._tick < current:
            tick = self._tick
            # The state at the end of this tick: every timeout due before the next one starts.
            self._book.advance(math.nextafter(tick_start(tick + 1, self._config), -math.inf))
            target = self._target_nano()
            # Nothing changes the state until the next timeout, so the ticks up to the one
            # holding it share this target: record them in one go.
            last = current - 1
            deadline = self._book.next_deadline()
            if deadline is not None:
                last = max(tick, min(last, tick_of(deadline, self._config) - 1))
            self._finish_ticks(tick, last, target)
            self._tick = last + 1
        self._book.advance(now)
        self._now = now
        return now

    def _finish_ticks(self, first: int, last: int, target_nano: int) -> None:
        """Record ticks first..last, which all had this target."""
        window = self._config.window_ticks
        count = last - first + 1
        for offset in range(min(count, window)):
            self._targets.append(target_nano)
            self._average.add_run(first + offset, first + offset,
                                  window_price(list(self._targets), self._config))
        if count > window:
            # The window now holds only this target, so every later tick of the run has the
            # same price.
            self._average.add_run(first + window, last,
                                  window_price(list(self._targets), self._config))


__all__ = ["InferenceMarket", "PricePoint"]
