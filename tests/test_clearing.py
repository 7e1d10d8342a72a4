"""The clearing mode (issue 18, protocol v2 revision 2.1): the uniform clearing price of asks and
bids as a pure integer function, its laws, and the economics figures it was built to reach."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p.charter import Charter, CharterError, builtin
from neuroshard_p2p.config import ConfigError, MarketConfig
from neuroshard_p2p.core.pricing import (DEMAND_BUCKET_EDGES_NANO, DEMAND_BUCKETS,
                                         clearing_price_nano, demand_bucket, demand_histogram,
                                         target_price_nano, window_price)
from simnet import economics as econ
from simnet.scenario import load

CLEARING = MarketConfig(curve="clearing")
LO, HI = 10_000_000, 1_000_000_000        # P_min 0.01, P_max 1.0 in nano per 1M tokens
T_MS = 60_000


def bids(**tokens_at_edge: int) -> list[int]:
    """A bid histogram from {edge in nano as 'e<nano>': tokens}."""
    out = [0] * DEMAND_BUCKETS
    for key, tokens in tokens_at_edge.items():
        out[DEMAND_BUCKET_EDGES_NANO.index(int(key[1:]))] += tokens
    return out


def covered(offers: list[tuple[int, int]], demand: list[int], p: int) -> bool:
    """The definition, written out: S(p)·T >= D(p)·1000."""
    supply = sum(c for ask, c in offers if ask <= p and c > 0)
    waiting = sum(t for edge, t in zip(DEMAND_BUCKET_EDGES_NANO, demand) if edge >= p)
    return supply * T_MS >= waiting * 1000


def test_bucket_edges_are_a_fixed_1_2_5_series() -> None:
    assert DEMAND_BUCKETS == 16
    assert DEMAND_BUCKET_EDGES_NANO[:4] == (0, 1_000_000, 2_000_000, 5_000_000)
    assert DEMAND_BUCKET_EDGES_NANO[-1] == 50_000_000_000
    assert list(DEMAND_BUCKET_EDGES_NANO) == sorted(set(DEMAND_BUCKET_EDGES_NANO))
    assert demand_bucket(0) == 0 and demand_bucket(999_999) == 0 and demand_bucket(1_000_000) == 1
    assert demand_bucket(HI) == 10 and demand_bucket(HI - 1) == 9
    assert demand_bucket(2**63 - 1) == 15
    assert demand_histogram([(HI, 500), (300_000_000, 7), (HI + 5, 1)]) == tuple(
        bids(e1000000000=501, e200000000=7))


def test_empty_sides_ties_and_bounds() -> None:
    none = [0] * DEMAND_BUCKETS
    # No demand: P_min, whatever is offered.
    assert clearing_price_nano([], none, CLEARING) == LO
    assert clearing_price_nano([(400_000_000, 1000)], none, CLEARING) == LO
    # Demand the cheapest offer covers: its ask (P_min when it asks less).
    d = bids(e1000000000=60_000)                       # 60,000 tokens bid up to 1.0
    assert clearing_price_nano([(352_000_000, 1000)], d, CLEARING) == 352_000_000
    assert clearing_price_nano([(1, 1000)], d, CLEARING) == LO
    # Exactly covered (1000 tokens/s × 60 s = 60,000 tokens) is covered: ties go to the lower price.
    assert clearing_price_nano([(300_000_000, 999), (400_000_000, 1)], d, CLEARING) == 400_000_000
    assert clearing_price_nano([(300_000_000, 1000), (400_000_000, 1)], d, CLEARING) == 300_000_000
    # Two offers at one ask add up.
    assert clearing_price_nano([(300_000_000, 500), (300_000_000, 500)], d, CLEARING) == 300_000_000
    # Not enough supply at any price up to P_max: P_max.
    assert clearing_price_nano([(300_000_000, 999)], d, CLEARING) == HI
    # Demand but no supply, bids below P_max: just above the highest bid (nothing trades).
    assert clearing_price_nano([], bids(e200000000=60_000), CLEARING) == 200_000_001
    # An ask above P_max never counts; bids under P_min never count.
    assert clearing_price_nano([(HI + 1, 10**9)], d, CLEARING) == HI
    assert clearing_price_nano([], bids(e5000000=10**9), CLEARING) == LO
    # The highest bids leave first: supply covers the bids at 0.5 and up from 0.2 + 1 nano on.
    d2 = bids(e200000000=60_000, e500000000=60_000)
    assert clearing_price_nano([(100_000_000, 1000)], d2, CLEARING) == 200_000_001
    # Fixed mode ignores asks and bids.
    assert clearing_price_nano([], d, CLEARING.replace(dynamic_pricing=False)) == 100_000_000


def test_the_clearing_value_is_a_charter_value_that_leaves_the_testnet_alone() -> None:
    testnet = builtin("testnet")
    assert testnet.network_id == "testnet-3094f19bc2e8b045"
    clearing = testnet.with_params(curve="clearing")
    assert clearing.market.clearing and clearing.network_id != testnet.network_id
    assert not MarketConfig(curve="clearing", dynamic_pricing=False).clearing
    with pytest.raises(ConfigError, match="target_response_s"):
        MarketConfig(curve="clearing", target_response_s=60.0004)
    text = clearing.to_toml().replace("target_response_s = 60.0", "target_response_s = 60.0004")
    with pytest.raises(CharterError, match="whole number of ms") as refused:
        Charter.from_toml(text)
    assert (refused.value.reason, refused.value.key) == ("bad_value", "target_response_s")
    with pytest.raises(ValueError, match="asks and bids"):
        target_price_nano(1000, 1000, CLEARING)
    # No smoothing: a tick's price is its own clearing price.
    assert window_price([5, 7, 30_000_000], CLEARING) == 30_000_000


offers_st = st.lists(st.tuples(st.integers(0, 2 * HI), st.integers(0, 100_000)), max_size=12)
demand_st = st.lists(st.integers(0, 10**8), min_size=DEMAND_BUCKETS, max_size=DEMAND_BUCKETS)


@settings(max_examples=300, deadline=None)
@given(offers_st, demand_st)
def test_the_price_is_the_lowest_covered_price(offers: list[tuple[int, int]],
                                               demand: list[int]) -> None:
    p = clearing_price_nano(offers, demand, CLEARING)
    assert LO <= p <= HI
    if covered(offers, demand, p):
        assert p == LO or not covered(offers, demand, p - 1)
    else:
        assert p == HI  # nothing is covered up to P_max
        assert not any(covered(offers, demand, q)
                       for q in {LO, HI, *(a for a, _ in offers if LO <= a <= HI)})


@settings(max_examples=200, deadline=None)
@given(offers_st, demand_st, st.tuples(st.integers(0, 2 * HI), st.integers(1, 100_000)),
       st.integers(0, DEMAND_BUCKETS - 1), st.integers(1, 10**8), st.randoms())
def test_more_supply_never_raises_it_more_demand_never_lowers_it_order_is_irrelevant(
        offers: list[tuple[int, int]], demand: list[int], extra: tuple[int, int], bucket: int,
        tokens: int, rnd: object) -> None:
    p = clearing_price_nano(offers, demand, CLEARING)
    assert clearing_price_nano([*offers, extra], demand, CLEARING) <= p
    more = list(demand)
    more[bucket] += tokens
    assert clearing_price_nano(offers, more, CLEARING) >= p
    shuffled = list(offers)
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    assert clearing_price_nano(shuffled, demand, CLEARING) == p


# ---------------------------------------------------------------------------------------------
# Economics: the done-when figures of issue 18, from the shipped `phases` scenario, seed 1


def test_economics_clearing_mode_reaches_the_issue_figures_and_the_curve_is_unchanged() -> None:
    scenario = load("phases")
    params = econ.EconomicsParams.from_mapping(dict(scenario.economics))
    base = scenario.market_config()
    clearing = econ.run(base.replace(curve="clearing"), params)
    lowest_ask = min(econ.node_ask_nano(params, clearing.market, c) for c in _capacities(params))
    by_name = {f.name: f for f in clearing.phases}
    # Bootstrap rests at the lowest ask instead of swinging to P_max.
    boot = by_name["bootstrap"]
    assert boot.price_p10 == boot.price_p90 == boot.price_max == lowest_ask / 1e9
    for name in ("growth", "mature"):
        f = by_name[name]
        assert f.price_median * 0.9 <= f.price_p10 <= f.price_p90 <= f.price_median * 1.1
        assert f.swings_per_hour <= 2
        assert f.overshoot <= 0.10
    for f in clearing.phases:
        assert f.unmet_share == 0.0  # no demand unmet that an idle node would serve at its ask
    # The seed curve's figures are today's (the issue's numbers), not re-tuned.
    seed = econ.run(base.replace(curve="seed", max_step=None), params)
    boot, growth = seed.phases[0], seed.phases[1]
    assert (round(boot.price_p10, 3), round(boot.price_p90, 3)) == (0.058, 0.889)
    assert round(boot.swings_per_hour, 1) == 25.5 and round(boot.overshoot * 100) == 1507
    assert (round(growth.price_p10, 3), round(growth.price_p90, 3)) == (0.156, 0.504)
    assert round(growth.overshoot * 100) == 217


def _capacities(params: econ.EconomicsParams) -> list[float]:
    import random
    rng = random.Random(params.seed)
    spread = params.capacity_spread
    return [params.capacity * (1 - spread + 2 * spread * rng.random())
            for _ in range(params.nodes)]


# ---------------------------------------------------------------------------------------------
# The wire, the view and the engine on a clearing network


from neuroshard_p2p.core.book import OrderBook  # noqa: E402
from neuroshard_p2p.core.errors import MarketError  # noqa: E402
from neuroshard_p2p.core.market import InferenceMarket  # noqa: E402
from neuroshard_p2p.node.engine import PeerEngine  # noqa: E402
from neuroshard_p2p.view import MarketView  # noqa: E402
from neuroshard_p2p.wire import Announcement, WireError, decode_unchecked_time, encode  # noqa: E402
from neuroshard_p2p.wire.validate import Validator  # noqa: E402
from tests.conftest import make_key  # noqa: E402

NOW = 1_700_000_000.0


def test_announcements_carry_the_bids_exactly_on_clearing_networks() -> None:
    key = make_key(1)
    signer = key.public_key.format(compressed=True)
    hist = tuple(bids(e1000000000=700, e200000000=300))
    with_bids = Announcement(signer, int(NOW * 1000), 1, 1000, 5, 1000, 2, demand_by_limit=hist)
    data = encode(with_bids, key)
    decoded = decode_unchecked_time(data)
    assert decoded.demand_by_limit == hist and decoded == with_bids
    plain = encode(Announcement(signer, int(NOW * 1000), 2, 1000, 5, 1000, 2), key)
    assert decode_unchecked_time(plain).demand_by_limit is None
    assert len(data) - len(plain) == 3 + 14 + 3 + 3  # array16 header, 14 zeros, two uint16
    # The histogram must add up to pending_tokens and have 16 buckets (W10).
    for bad in (hist[:15], (*hist[:-1], 1)):
        with pytest.raises(WireError, match="demand_by_limit"):
            encode(Announcement(signer, int(NOW * 1000), 3, 1000, 5, 1000, 2,
                                demand_by_limit=bad), key)
    # V6c: a clearing network wants the bids, any other network refuses them.
    clearing = Validator(CLEARING)
    curve = Validator(MarketConfig())
    assert clearing.check(data, NOW).demand_by_limit == hist
    with pytest.raises(WireError, match="carry demand_by_limit") as err:
        clearing.check(plain, NOW)
    assert err.value.reason == "bad_field"
    with pytest.raises(WireError, match="only on clearing networks"):
        curve.check(encode(Announcement(signer, int(NOW * 1000), 4, 1000, 5, 1000, 2,
                                        demand_by_limit=hist), key), NOW)


def test_the_book_matches_bids_at_or_above_the_clearing_price_to_asks_at_or_below_it() -> None:
    book = OrderBook(CLEARING)
    book.set_offer("cheap", 10, 100_000_000, NOW)       # room for 10 × 60 = 600 tokens
    book.set_offer("dear", 1000, 350_000_000, NOW)
    # Bids wait whatever the price now (a curve market would refuse max < price).
    book.submit("low", "u", 400, 200_000_000, 500_000_000, NOW)
    book.submit("high", "u", 400, 900_000_000, 500_000_000, NOW)
    book.submit("mid", "u", 400, 350_000_000, 500_000_000, NOW)
    with pytest.raises(MarketError, match="clearing price"):
        book.match(NOW)
    matches = book.match(NOW, 300_000_000)
    # Only bids >= 0.3, the highest bid first, only to offers asking <= 0.3, all at 0.3.
    assert [(m.request_id, m.node_id, m.locked_price_nano) for m in matches] == [
        ("high", "cheap", 300_000_000)]
    assert book.get("low").reason == "your max price 0.20 is below the clearing price 0.30"
    assert book.get("mid").reason == ("no offer at or below the clearing price 0.30 with room "
                                      "for 400 tokens")
    matches = book.match(NOW, 350_000_000)
    assert [(m.request_id, m.node_id, m.locked_price_nano) for m in matches] == [
        ("mid", "dear", 350_000_000)]
    assert book.get("mid").locked_price_nano == 350_000_000
    assert book.get("high").locked_price_nano == 300_000_000


def test_the_embedded_market_clears_too() -> None:
    clock = [NOW]
    market = InferenceMarket(CLEARING, clock=lambda: clock[0])
    market.register_capacity("a", 1000, min_price=0.3)
    market.register_capacity("b", 1000, min_price=0.5)
    assert market.current_price_nano() == LO   # no bids
    market.submit_request("r1", "u", 45_000, max_price=1.0)
    market.submit_request("r2", "u", 45_000, max_price=1.0)  # 1,500 tokens/s over 60 s
    assert market.current_price_nano() == 500_000_000
    matches = market.match_requests()
    assert [(m.request_id, m.node_id, m.locked_price_nano) for m in matches] == [
        ("r1", "a", 500_000_000), ("r2", "b", 500_000_000)]


def clearing_engines(n: int) -> list[PeerEngine]:
    return [PeerEngine(CLEARING, make_key(100 + i)) for i in range(n)]


def test_every_engine_computes_the_clearing_price_of_what_it_holds() -> None:
    engines = clearing_engines(6)
    for i, e in enumerate(engines[:4]):
        e.set_offer(500 + 100 * i, 250_000_000 + 50_000_000 * i)
    engines[4].submit_request(60_000, 1_000_000_000, NOW)
    engines[4].submit_request(60_000, 1_000_000_000, NOW)
    engines[5].set_demand(30_000, 1)                          # no histogram: bids up to P_max
    published = [d for e in engines for d in e.poll_announcements(NOW)]
    for e in engines:
        for data in published:
            e.on_gossip(data, NOW + 0.1)
    own = decode_unchecked_time(published[4])
    assert own.demand_by_limit == tuple(bids(e1000000000=120_000))
    assert decode_unchecked_time(published[5]).demand_by_limit == tuple(bids(e1000000000=30_000))
    tick = engines[0].tick_of(NOW) + 3                          # evaluated after the settle delay
    prices = {e.tick_price(tick).price_nano for e in engines}
    # 150,000 tokens waiting need 2,500 tokens/s: 500 + 600 + 700 + 800 at asks 0.25 … 0.4.
    assert prices == {400_000_000}
    offers, demand = engines[0].view.asks_and_bids_at_ms(engines[0].view.evaluation_ms(tick))
    assert clearing_price_nano(offers, demand, CLEARING) == 400_000_000
    # A new ask with the same totals changes the price (the view's cache must notice).
    engines[3].set_offer(800, 390_000_000)
    later = NOW + 2
    for data in engines[3].poll_announcements(later):
        for e in engines:
            e.on_gossip(data, later)
    assert {e.tick_price(engines[0].tick_of(later) + 3).price_nano for e in engines} == {
        390_000_000}


def test_a_views_bids_are_capped_per_signer_like_its_demand() -> None:
    config = CLEARING.replace(max_signer_pending_tokens=50_000)
    view = MarketView(config)
    key = make_key(7)
    signer = key.public_key.format(compressed=True)
    hist = tuple(bids(e1000000000=40_000, e200000000=40_000))
    view.merge_message(decode_unchecked_time(encode(Announcement(
        signer, int(NOW * 1000), 1, 0, 0, 80_000, 10, demand_by_limit=hist), key)))
    _, demand = view.asks_and_bids_at_ms(int(NOW * 1000))
    # 50,000 count, the highest bids first.
    assert demand == bids(e1000000000=40_000, e200000000=10_000)


# ---------------------------------------------------------------------------------------------
# The view: same messages ⇒ same clearing price, whatever the order and whatever was asked before

_KEYS = [make_key(200 + i) for i in range(6)]
_SIGNERS = [k.public_key.format(compressed=True) for k in _KEYS]
_T0_MS = 1_700_000_000_000

announcement_st = st.tuples(
    st.integers(0, 5),                          # signer
    st.integers(0, 20_000),                     # issued_at offset (ms)
    st.integers(0, 3_000),                      # capacity
    st.sampled_from([0, 50_000_000, 200_000_000, 350_000_000, 600_000_000]),  # ask
    st.lists(st.integers(0, 40_000), min_size=3, max_size=3),  # bids at 0.2, 0.5, 1.0
)


def _signed(spec: tuple[int, int, int, int, list[int]], seq: int) -> Announcement:
    who, offset, capacity, ask, three = spec
    hist = [0] * DEMAND_BUCKETS
    hist[8], hist[9], hist[10] = three
    return decode_unchecked_time(encode(Announcement(
        _SIGNERS[who], _T0_MS + offset, seq, capacity, ask if capacity else 0, sum(hist),
        1 if sum(hist) else 0, demand_by_limit=tuple(hist)), _KEYS[who]))


@settings(max_examples=60, deadline=None)
@given(st.lists(announcement_st, min_size=1, max_size=14), st.randoms())
def test_views_holding_the_same_announcements_clear_at_the_same_price(
        specs: list[tuple[int, int, int, int, list[int]]], rnd: object) -> None:
    config = CLEARING.replace(capacity_timeout_s=10.0)
    messages = [_signed(spec, seq=1 + i) for i, spec in enumerate(specs)]
    first_tick = _T0_MS // 1000
    ticks = range(first_tick, first_tick + 26, 3)
    # One view merges one message at a time and is asked the prices in between (its tick cache
    # fills and must be invalidated by each merge); the other merges everything, shuffled.
    stepwise = MarketView(config)
    for message in messages:
        stepwise.merge_message(message)
        for tick in ticks:
            stepwise.price_at_tick(tick)
    shuffled = list(messages) * 2
    rnd.shuffle(shuffled)  # type: ignore[attr-defined]
    at_once = MarketView(config)
    at_once.merge_messages(shuffled)
    assert stepwise.digest() == at_once.digest()
    for tick in ticks:
        price = stepwise.price_at_tick(tick).price_nano
        assert price == at_once.price_at_tick(tick).price_nano
        # … and it is §7.7 of what counts at the tick's evaluation instant.
        offers, demand = at_once.asks_and_bids_at_ms(at_once.evaluation_ms(tick))
        assert price == clearing_price_nano(offers, demand, config)
