"""The embedded InferenceMarket: the seed's API as documented, prices on ticks with an injected
clock, the 24 h average, and bounded memory."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given, settings, strategies as st

from neuroshard_p2p import InferenceMarket, MarketConfig
from neuroshard_p2p.core.book import Match, State
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.core.pricing import smoothed_price, target_price_nano
from neuroshard_p2p.money import Settlement

T0 = 1_800_000_000.0   # a tick boundary for every tick_s used here


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_seed_example_verbatim() -> None:
    from neuroshard_p2p import InferenceMarket
    market = InferenceMarket()
    market.register_capacity("node1", tokens_per_second=1000, min_price=0.01)
    market.submit_request("req1", "user1", 10000, max_price=1.0)
    market.withdraw_capacity("node1")
    stats = market.get_market_stats()

    for field in ("enabled", "mode", "current_price", "supply_tokens_per_sec",
                  "demand_tokens_waiting", "utilization", "pending_requests", "available_nodes",
                  "avg_price_24h", "target_price", "claimed_requests", "tick"):
        assert field in stats
    assert stats["enabled"] is True and stats["mode"] == "dynamic"
    assert (stats["supply_tokens_per_sec"], stats["demand_tokens_waiting"]) == (0, 10000)
    assert (stats["pending_requests"], stats["available_nodes"]) == (1, 0)
    assert stats["target_price"] == 1.0        # demand and no supply: u = ∞ → P_max
    assert stats["utilization"] is None        # u = ∞ is not valid JSON
    json.dumps(stats, allow_nan=False)


def test_design_note_scenarios_in_one_tick() -> None:
    """The seed doc's three test scenarios, each read within one tick (so the price is the
    target of the state: the window holds just this tick)."""
    market = InferenceMarket(clock=Clock(T0 + 0.1))
    market.register_capacity("node1", tokens_per_second=1000, min_price=0.01)
    market.submit_request("req1", "user1", 10000, max_price=1.0)
    stats = market.get_market_stats()
    assert stats["current_price_nano"] == 85_099_598     # u = 1/6
    assert stats["utilization"] == pytest.approx(1 / 6)
    assert stats["current_price"] == 0.085099598

    for i in range(10):                                   # test 2: high demand
        market.submit_request(f"req-high{i}", f"user{i}", 50000, max_price=1.0)
    stats = market.get_market_stats()
    assert stats["utilization"] == pytest.approx(8.5)
    assert stats["current_price_nano"] == 1_000_000_000

    for i in range(10):                                   # test 3: supply responds
        market.register_capacity(f"node{i}", 1000, 0.01)
    stats = market.get_market_stats()
    assert (stats["supply_tokens_per_sec"], stats["available_nodes"]) == (10_000, 10)
    assert stats["utilization"] == pytest.approx(0.85)
    assert stats["current_price_nano"] == 395_467_158


def test_the_first_request_locks_the_price_of_an_idle_market() -> None:
    market = InferenceMarket(clock=Clock())
    market.register_capacity("node1", tokens_per_second=1000, min_price=0.01)
    status = market.submit_request("req1", "user1", 10000, max_price=1.0)
    # Locked before it joined the queue: u = 0 → 0.0570 (the seed curve at zero).
    assert status.locked_price_nano == 56_951_614
    assert status.state is State.PENDING and status.tier == "standard"


# ------------------------------------------------------------------ ticks


def test_price_on_ticks_is_the_fold_over_the_window() -> None:
    """Move the clock tick by tick and change the state at chosen ticks; at every tick the price
    must equal the fold over the targets of the last W ticks, computed here independently."""
    clock = Clock()
    config = MarketConfig()
    market = InferenceMarket(config, clock)
    supply, demand = 0, 0
    finished: list[int] = []          # targets of finished ticks, oldest first
    changes = {3: ("offer", 1000), 5: ("request", 10_000), 9: ("request", 500_000),
               40: ("offer", 50_000), 45: ("request", 2_000_000)}
    for k in range(120):
        clock.t = T0 + k + 0.5
        if k in changes:
            kind, amount = changes[k]
            if kind == "offer":
                market.register_capacity(f"n{k}", amount, 0.0)
                supply += amount
            else:
                market.submit_request(f"r{k}", "u", amount)
                demand += amount
        # Offers must be re-announced within capacity_timeout_s (60 s) to keep counting.
        for node_k in (3, 40):
            if k > node_k and (k - node_k) % 50 == 0:
                market.register_capacity(f"n{node_k}", changes[node_k][1], 0.0)
        current = target_price_nano(supply, demand, config)
        expected = smoothed_price([*finished[-(config.window_ticks - 1):], current], config)
        assert market.current_price_nano() == expected, k
        stats = market.get_market_stats()
        assert (stats["target_price_nano"], stats["tick"]) == (current, int(T0) + k)
        finished.append(current)
    # The window is full of the last target: the price has converged to it exactly.
    assert market.current_price_nano() == finished[-1]


def test_idle_ticks_carry_the_state_and_timeouts_act_at_their_deadlines() -> None:
    """No calls between T0 and T0 + 200 s: the offer (announced at T0) stops counting at T0 + 60,
    so the price of the ticks after that is P_max, as if the market had been watched."""
    clock = Clock()
    config = MarketConfig()
    market = InferenceMarket(config, clock)
    market.register_capacity("n1", 1000, 0.0)
    market.submit_request("r1", "u", 30_000)
    clock.t = T0 + 200
    stats = market.get_market_stats()
    assert stats["supply_tokens_per_sec"] == 0 and stats["available_nodes"] == 0
    with_offer = target_price_nano(1000, 30_000, config)
    targets = [with_offer] * 60 + [1_000_000_000] * 141          # ticks T0 … T0 + 200
    assert stats["current_price_nano"] == smoothed_price(targets[-config.window_ticks:], config)
    assert stats["current_price_nano"] == 1_000_000_000
    # The 24 h average weighs every tick once: 60 ticks at with_offer, then the fall.
    prices = [smoothed_price(targets[max(0, j - 31):j + 1], config) for j in range(201)]
    assert stats["avg_price_24h"] * 1e9 == pytest.approx(
        (sum(prices) + 100) // 201, abs=0.5)


events = st.lists(st.tuples(
    st.floats(0, 400),                                     # seconds after the previous event
    st.sampled_from(["offer", "withdraw", "submit", "match", "complete"]),
    st.integers(0, 3), st.integers(1, 50_000)), max_size=25)


@given(events)
@settings(max_examples=60, deadline=None)
def test_price_does_not_depend_on_how_often_the_market_is_called(
        schedule: list[tuple[float, str, int, int]]) -> None:
    watched_clock, idle_clock = Clock(), Clock()
    config = MarketConfig(request_expiry_s=300, retention_s=200)
    watched = InferenceMarket(config, watched_clock)
    idle = InferenceMarket(config, idle_clock)
    t = T0
    for n, (gap, kind, node, amount) in enumerate(schedule):
        # The watched market is read at every tick of the gap; the idle one is not.
        for k in range(math.floor(t) + 1, math.floor(t + gap) + 1):
            watched_clock.t = float(k)
            watched.current_price_nano()
        t += gap
        results = []
        for market, clock in ((watched, watched_clock), (idle, idle_clock)):
            clock.t = t
            try:
                if kind == "offer":
                    result: object = market.register_capacity(f"n{node}", amount % 5000 + 1, 0.0)
                elif kind == "withdraw":
                    result = market.withdraw_capacity(f"n{node}")
                elif kind == "submit":
                    result = market.submit_request(f"r{n}", "u", amount)
                elif kind == "match":
                    result = market.match_requests()
                else:
                    claimed = [s.request_id for s in market.book.requests()
                               if s.state is State.CLAIMED]
                    result = market.complete_request(claimed[0]) if claimed else None
            except MarketError as error:
                result = str(error)
            results.append((result, market.get_market_stats(), market.price_history()))
        assert results[0] == results[1]


def test_avg_price_24h_is_time_weighted_and_forgets_after_a_day() -> None:
    clock = Clock()
    # A tick a minute: 1,440 ticks in 24 h. Requests wait for days.
    config = MarketConfig(tick_s=60.0, request_expiry_s=10 * 86400)
    market = InferenceMarket(config, clock)
    low = market.current_price_nano()
    assert low == 56_951_614                     # empty market: u = 0
    # 1 h at the low price, then 3 h with demand and no supply (P_max). One event each: the
    # average weighs ticks, not events.
    clock.t = T0 + 3600
    market.submit_request("r1", "u", 1_000_000)
    clock.t = T0 + 4 * 3600
    stats = market.get_market_stats()
    targets = [low] * 60 + [1_000_000_000] * 181
    prices = [smoothed_price(targets[max(0, j - 31):j + 1], config) for j in range(241)]
    assert len(prices) == 241 and prices[-1] == 1_000_000_000
    assert round(stats["avg_price_24h"] * 1e9) == (sum(prices) + 120) // 241
    # Most of the weight is on the 3 h at P_max: an average per event would give about 0.5.
    assert 0.75 < stats["avg_price_24h"] < 0.77
    # 25 h later the last 24 h hold only P_max ticks.
    clock.t = T0 + 29 * 3600
    stats = market.get_market_stats()
    assert stats["current_price_nano"] == 1_000_000_000
    assert stats["avg_price_24h"] == 1.0
    history = market.price_history()
    assert len(history) == 1439                  # the finished ticks of the last 24 h
    assert history[0].at == T0 + 5 * 3600 + 60
    assert all(point.price_nano == 1_000_000_000 and point.ticks == 1 for point in history)


def test_memory_stays_bounded_over_days() -> None:
    clock = Clock()
    market = InferenceMarket(MarketConfig(retention_s=600), clock)
    for hour in range(72):
        clock.t = T0 + hour * 3600
        market.register_capacity("n1", 1000, 0.0)
        market.submit_request(f"r{hour}", "u", 1000)
        match = market.claim_request("n1")
        assert match is not None
        market.complete_request(match.request_id)
        market.submit_request(f"lost{hour}", "u", 10**9)   # never fits: expires, then pruned
    clock.t += 601 + 600
    market.get_market_stats()
    assert len(market.book) == 0
    assert len(market.price_history()) <= 1441             # per-minute buckets of 24 h
    assert market.book.timer_count() <= 1024
    assert market.get_market_stats()["completed_requests"] == 72
    assert market.get_market_stats()["expired_requests"] == 72


def test_max_step_caps_every_tick() -> None:
    clock = Clock()
    config = MarketConfig(max_step=0.125)
    assert config.window_ticks == 59
    market = InferenceMarket(config, clock)
    market.register_capacity("n1", 1000, 0.0)
    prices = []
    for k in range(400):
        clock.t = T0 + k
        if k % 50 == 0:
            market.register_capacity("n1", 1000, 0.0)     # keep the offer fresh
        if k == 20:
            market.submit_request("spike", "u", 10_000_000)  # u = 166: target P_max
        if k == 150:
            match = market.claim_request("n1")
            assert match is None                             # too big for n1 (60,000 tokens)
            market.fail_request("spike", "cancelled")        # demand gone: target back to low
        prices.append(market.current_price_nano())
    assert max(prices) == 1_000_000_000 and prices[-1] == 56_951_614
    for before, after in zip(prices, prices[1:]):
        assert abs(after - before) <= max(1, int(0.125 * before))


def test_fixed_mode_ignores_supply_and_demand() -> None:
    clock = Clock()
    market = InferenceMarket(MarketConfig(dynamic_pricing=False, fixed_price=0.2), clock)
    assert market.get_current_price() == 0.2
    market.register_capacity("n1", 1000, 0.0)
    market.submit_request("r1", "u", 10**7, max_price=0.2)
    clock.t += 100
    stats = market.get_market_stats()
    assert (stats["mode"], stats["current_price"], stats["target_price"]) == ("fixed", 0.2, 0.2)
    assert stats["avg_price_24h"] == 0.2
    with pytest.raises(MarketError, match="current price 0.20 > max_price 0.19"):
        market.submit_request("r2", "u", 10, max_price=0.19)


# ------------------------------------------------------------------ serving, errors


def test_claim_complete_release_fail() -> None:
    clock = Clock()
    market = InferenceMarket(clock=clock)
    market.register_capacity("node1", tokens_per_second=1000, min_price=0.01)
    market.submit_request("req1", "user1", 10000, max_price=1.0)
    market.submit_request("req2", "user2", 20000, max_price=1.0, tier="premium")
    assert market.match_requests() == [Match("req2", "node1", 85_099_598, 20_000),
                                       Match("req1", "node1", 56_951_614, 10_000)]
    assert market.get_market_stats()["claimed_requests"] == 2
    assert market.release_request("req2", "provider restarting").reason == "provider restarting"
    assert market.claim_request("node1") == Match("req2", "node1", 85_099_598, 20_000)
    settlement = market.complete_request("req1", node_id="node1")
    assert settlement == Settlement(payment=569_516, burned=28_475, earned=541_041)
    status = market.fail_request("req2", "backend crashed")
    assert (status.state, status.reason) == (State.FAILED, "backend crashed")
    with pytest.raises(MarketError, match="request 'req1' is completed; cannot complete it"):
        market.complete_request("req1")
    with pytest.raises(MarketError, match="unknown request 'ghost'"):
        market.complete_request("ghost")
    assert market.get_request("ghost") is None


@pytest.mark.parametrize("call, message", [
    (lambda m: m.register_capacity("n", 0), "tokens_per_second must be > 0, got 0"),
    (lambda m: m.register_capacity("n", -5), "tokens_per_second must be > 0"),
    (lambda m: m.register_capacity("n", 10.5), "tokens_per_second must be a whole number"),
    (lambda m: m.register_capacity("n", "100"), "tokens_per_second must be a whole number"),
    (lambda m: m.register_capacity("n", 60_000), "implausible for one node (limit 50000)"),
    (lambda m: m.register_capacity("n", 10, min_price=math.nan), "min_price must be a number"),
    (lambda m: m.register_capacity("n", 10, min_price=2.0),
     "min_price 2 > the market's max_price 1: no request could ever pay it"),
    (lambda m: m.submit_request("r", "u", 10, max_price=math.inf), "max_price must be a number"),
    (lambda m: m.submit_request("r", "u", 10, max_price=-1), "max_price must be a number"),
    (lambda m: m.submit_request("r", "u", 0), "tokens must be a whole number > 0"),
    (lambda m: m.submit_request("r", "u", 10, max_price=0.01),
     "current price 0.057 > max_price 0.01"),
    (lambda m: m.submit_request("r", "u", 10, tier="vip"), "tier must be one of"),
])
def test_bad_calls_are_clear_errors(call: object, message: str) -> None:
    market = InferenceMarket(clock=Clock())
    with pytest.raises(MarketError) as info:
        call(market)  # type: ignore[operator]
    assert message in str(info.value)
    stats = market.get_market_stats()
    assert (stats["pending_requests"], stats["available_nodes"]) == (0, 0)


def test_reading_the_book_catches_up_with_the_clock() -> None:
    """`market.book` shows the book as of now, like every other call: a claim that timed out
    while nobody called the market is pending again when the book is read."""
    clock = Clock()
    market = InferenceMarket(clock=clock)
    market.register_capacity("n1", 1, 0.0)
    market.submit_request("r1", "u", 1)
    assert [m.request_id for m in market.match_requests()] == ["r1"]
    clock.t = T0 + 59.999
    assert market.book.get("r1").state is State.CLAIMED  # type: ignore[union-attr]
    clock.t = T0 + 60                                        # claim_timeout_s after the claim
    assert market.book.get("r1").state is State.PENDING  # type: ignore[union-attr]
    assert market.book.claimed_count == 0


def test_accepts_whole_float_capacity_and_withdraw_of_nothing() -> None:
    market = InferenceMarket(clock=Clock())
    assert market.register_capacity("n", 1000.0).tokens_per_second == 1000
    assert market.withdraw_capacity("n") is True
    assert market.withdraw_capacity("n") is False


def test_clock_stepping_back_does_not_rewind_ticks() -> None:
    clock = Clock(T0 + 100)
    market = InferenceMarket(clock=clock)
    market.register_capacity("n1", 1000, 0.0)
    tick = market.get_market_stats()["tick"]
    clock.t = T0 + 50
    market.submit_request("r1", "u", 10)
    stats = market.get_market_stats()
    assert stats["tick"] == tick
    assert market.get_request("r1").submitted_at == T0 + 100  # type: ignore[union-attr]
    clock.t = math.nan
    with pytest.raises(MarketError, match="the clock returned nan"):
        market.get_market_stats()


def test_bench_core_runs_from_the_dispatcher() -> None:
    """`python -m neuroshard_p2p.bench core` (tiny sizes): the figures the README quotes come
    from this command."""
    import subprocess
    import sys
    result = subprocess.run(
        [sys.executable, "-m", "neuroshard_p2p.bench", "core", "--requests", "2000",
         "--offers", "200", "--ticks", "200", "--rounds", "1"],
        capture_output=True, text=True, timeout=120, check=True)
    assert "core: matching 2,000 requests over 200 offers" in result.stdout
    assert "match / sorted = " in result.stdout and "ticks/s" in result.stdout
    listing = subprocess.run([sys.executable, "-m", "neuroshard_p2p.bench", "--list"],
                             capture_output=True, text=True, timeout=60, check=True)
    assert listing.stdout.split()[0] == "core"
    unknown = subprocess.run([sys.executable, "-m", "neuroshard_p2p.bench", "nope"],
                             capture_output=True, text=True, timeout=60)
    assert unknown.returncode == 2 and "unknown section 'nope'" in unknown.stderr
