"""The order book: submission, matching, the request lifecycle, and its invariants under random
operations (hypothesis stateful)."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.stateful import (RuleBasedStateMachine, initialize, invariant, precondition,
                                 rule)

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.book import (TIERS, TRANSITIONS, Match, OfferExpired, OfferRejected,
                                      OrderBook, RequestExpired, RequestRequeued, RequestStatus,
                                      RestingOffer, State)
from neuroshard_p2p.core.errors import MarketError, format_price, format_prices

T0 = 1_000_000.0
CONFIG = MarketConfig()          # claim 60 s, expiry 600 s, retention 3600 s, capacity 60 s
NEURO = 1_000_000_000
RANK = {"premium": 0, "standard": 1, "economy": 2}


def book_with(*offers: tuple[str, int, int]) -> OrderBook:
    book = OrderBook(CONFIG)
    for node_id, tps, price in offers:
        book.set_offer(node_id, tps, price, T0)
    return book


def submit(book: OrderBook, request_id: str, tokens: int = 1000, price: int = 100_000_000,
           at: float = T0, tier: str = "standard", max_price: int = NEURO) -> RequestStatus:
    return book.submit(request_id, "user", tokens, max_price, price, at, tier)


def reference_match(offers: list[RestingOffer], pending: list[RequestStatus],
                    in_flight: dict[str, int], config: MarketConfig) -> list[Match]:
    """The matching rule written the slow, obvious way (O(n·m))."""
    order = sorted(pending, key=lambda r: (RANK[r.tier], -r.locked_price_nano, r.submitted_at,
                                           r.request_id))
    by_price = sorted(offers, key=lambda o: (o.min_price_nano, o.rank, o.node_id))
    room = {o.node_id: o.capacity_tokens(config.target_response_s)
            - in_flight.get(o.node_id, 0) for o in offers}
    for o in offers:  # on probation: one request at a time, of at most probation_tokens
        if o.probation_tokens:
            room[o.node_id] = 0 if in_flight.get(o.node_id) else min(room[o.node_id],
                                                                       o.probation_tokens)
    result = []
    for request in order:
        for offer in by_price:
            if (offer.min_price_nano <= request.locked_price_nano
                    and room[offer.node_id] >= request.tokens):
                room[offer.node_id] -= request.tokens
                if offer.probation_tokens:
                    room[offer.node_id] = 0
                result.append(Match(request.request_id, offer.node_id,
                                    request.locked_price_nano, request.tokens))
                break
    return result


# ------------------------------------------------------------------ submission


def test_submit_locks_the_current_price() -> None:
    book = OrderBook(CONFIG)
    status = submit(book, "r1", tokens=10_000, price=56_951_614)
    assert status.state is State.PENDING
    assert status.locked_price_nano == 56_951_614
    assert status.expires_at == T0 + 600
    assert (book.demand_tokens_waiting, book.pending_count, len(book)) == (10_000, 1, 1)


def test_max_price_below_the_current_price_is_refused_with_both_prices() -> None:
    book = OrderBook(CONFIG)
    with pytest.raises(MarketError) as info:
        submit(book, "r1", price=310_000_000, max_price=200_000_000)
    assert str(info.value) == "current price 0.31 > max_price 0.20"
    with pytest.raises(MarketError) as info:
        submit(book, "r2", price=56_951_614, max_price=56_000_000)
    assert str(info.value) == "current price 0.057 > max_price 0.056"
    assert len(book) == 0 and book.demand_tokens_waiting == 0


@pytest.mark.parametrize("changes, message", [
    ({"tokens": 0}, "tokens must be a whole number > 0, got 0"),
    ({"tokens": -5}, "tokens must be a whole number > 0, got -5"),
    ({"tokens": True}, "tokens must be a whole number > 0, got True"),
    ({"tokens": 2.5}, "tokens must be a whole number > 0, got 2.5"),
    ({"tokens": 2**53 + 1}, "exceeds the limit"),
    ({"max_price": -1}, "max_price must be >= 0, got -0.000000001"),
    ({"tier": "gold"}, "tier must be one of economy, standard, premium, got 'gold'"),
    ({"request_id": ""}, "request id must be a non-empty string"),
    ({"request_id": "x" * 257}, "at most 256 characters"),
    ({"at": float("nan")}, "now must be a finite time"),
])
def test_malformed_requests_are_refused(changes: dict[str, object], message: str) -> None:
    book = OrderBook(CONFIG)
    args: dict[str, object] = {"request_id": "r1", "tokens": 1000, "price": 0, "at": T0,
                               "tier": "standard", "max_price": NEURO}
    args.update(changes)
    with pytest.raises(MarketError) as info:
        book.submit(args["request_id"], "user", args["tokens"], args["max_price"],  # type: ignore
                    args["price"], args["at"], args["tier"])  # type: ignore[arg-type]
    assert message in str(info.value)
    assert len(book) == 0


def test_a_request_id_is_taken_until_pruned() -> None:
    book = book_with(("n1", 1000, 0))
    submit(book, "r1")
    with pytest.raises(MarketError, match="request id 'r1' is already taken \\(pending\\)"):
        submit(book, "r1")
    book.match(T0)
    book.complete("r1", 1000, T0 + 1)
    with pytest.raises(MarketError, match="already taken \\(completed\\)"):
        submit(book, "r1")
    book.advance(T0 + 1 + CONFIG.retention_s)
    assert book.get("r1") is None
    assert submit(book, "r1", at=T0 + 4000).state is State.PENDING


def test_price_formatting() -> None:
    assert format_price(310_000_000) == "0.31"
    assert format_price(5) == "0.000000005"
    assert format_price(0) == "0.00"
    assert format_price(56_951_614) == "0.057"
    assert format_price(85_099_598) == "0.085"
    assert format_price(1_000_000_000) == "1.00"
    assert format_prices(200_000_000, 200_000_000) == ("0.20", "0.20")
    assert format_prices(1_000_000_001, 1_000_000_000) == ("1.000000001", "1.000000000")


# ------------------------------------------------------------------ offers


def test_offers_and_supply() -> None:
    book = book_with(("n1", 1000, 10_000_000), ("n2", 500, 0))
    assert book.supply_tokens_per_sec == 1500 and book.offer_count == 2
    book.set_offer("n1", 2000, 10_000_000, T0 + 1)       # re-announcement replaces
    assert book.supply_tokens_per_sec == 2500
    assert book.set_offer("n2", 0, 0, T0 + 1) is None     # zero capacity withdraws
    assert book.supply_tokens_per_sec == 2000 and book.offer_count == 1
    assert book.withdraw("n1") and not book.withdraw("n1")
    assert book.supply_tokens_per_sec == 0


@pytest.mark.parametrize("tps, price, message", [
    (50_001, 0, "tokens_per_second 50001 is implausible for one node (limit 50000)"),
    (-1, 0, "tokens_per_second must be an integer >= 0"),
    (10.5, 0, "tokens_per_second must be an integer >= 0"),
    (100, -1, "min_price must be >= 0"),
])
def test_implausible_offers_are_refused(tps: int, price: int, message: str) -> None:
    book = OrderBook(CONFIG)
    with pytest.raises(MarketError) as info:
        book.set_offer("n1", tps, price, T0)
    assert message in str(info.value)
    assert book.offer_count == 0


def test_set_offers_replaces_all_and_reports_rejects() -> None:
    book = book_with(("old", 1000, 0))
    rejects = book.set_offers([
        RestingOffer("a", 100, 0, T0),
        RestingOffer("b", 0, 0, T0),               # a withdrawal: skipped, not a reject
        RestingOffer("c", 60_000, 0, T0),          # implausible
        RestingOffer("a", 200, 0, T0),             # duplicate
        RestingOffer("d", 300, 5, T0 - 60),        # stale
        RestingOffer("e", 400, 7, T0 - 59.5),
    ], T0)
    assert [o.node_id for o in book.offers()] == ["a", "e"]
    assert book.supply_tokens_per_sec == 500
    assert [(r.node_id, r.reason.split(":")[0].split(" ")[0]) for r in rejects] == [
        ("c", "tokens_per_second"), ("a", "duplicate"), ("d", "stale")]
    assert all(isinstance(r, OfferRejected) for r in rejects)


def test_stale_offers_are_not_matched_and_expire_on_advance() -> None:
    book = book_with(("n1", 1000, 0))
    submit(book, "r1", at=T0 + 60)
    assert book.match(T0 + 60) == []          # announced at T0, timeout 60 s: stale at T0 + 60
    assert book.get("r1").reason == "no capacity offered"  # type: ignore[union-attr]
    assert book.advance(T0 + 59.9) == []
    assert book.advance(T0 + 60) == [OfferExpired("n1")]
    assert book.supply_tokens_per_sec == 0 and book.offer_count == 0


def test_a_reannounced_offer_does_not_expire_on_its_old_deadline() -> None:
    book = book_with(("n1", 1000, 0))
    book.set_offer("n1", 1000, 0, T0 + 30)
    assert book.advance(T0 + 60) == []
    assert book.advance(T0 + 90) == [OfferExpired("n1")]


# ------------------------------------------------------------------ matching


def test_matching_order_tier_then_price_then_age() -> None:
    book = book_with(("n1", 1, 0))                 # room for exactly 60 tokens
    submit(book, "old-cheap", tokens=10, price=100, at=T0)
    submit(book, "new-cheap", tokens=10, price=100, at=T0 + 1)
    submit(book, "rich", tokens=10, price=900, at=T0 + 2)
    submit(book, "economy-rich", tokens=10, price=999, at=T0, tier="economy")
    submit(book, "premium-poor", tokens=10, price=1, at=T0 + 3, tier="premium")
    assert [s.request_id for s in book.pending()] == [
        "premium-poor", "rich", "old-cheap", "new-cheap", "economy-rich"]
    matches = book.match(T0 + 3)
    assert [m.request_id for m in matches] == [
        "premium-poor", "rich", "old-cheap", "new-cheap", "economy-rich"]


def test_cheapest_offer_with_room_and_price_bounds() -> None:
    book = book_with(("cheap", 1, 50), ("mid", 1, 100), ("dear", 1000, 500))
    submit(book, "a", tokens=60, price=100)        # fills cheap exactly (60 = 1 tps × 60 s)
    submit(book, "b", tokens=30, price=100, at=T0 + 1)
    submit(book, "c", tokens=31, price=100, at=T0 + 2)   # mid has 30 left: too small
    submit(book, "d", tokens=5, price=40, at=T0 + 3)     # below every offer's min price
    assert book.match(T0 + 3) == [Match("a", "cheap", 100, 60), Match("b", "mid", 100, 30)]
    assert book.in_flight("cheap") == 60 and book.in_flight("mid") == 30
    assert book.get("c").reason == (  # type: ignore[union-attr]
        "no offer at or below your locked price with room for 31 tokens")
    assert book.get("d").reason == (  # type: ignore[union-attr]
        "no offer at or below your locked price 0.00000004")
    assert book.demand_tokens_waiting == 36 and book.claimed_count == 2
    # The claimed tokens stay in flight across calls: cheap is full, mid has 30 left.
    submit(book, "e", tokens=30, price=100, at=T0 + 4)
    assert book.match(T0 + 4) == [Match("e", "mid", 100, 30)]
    submit(book, "f", tokens=1, price=100, at=T0 + 5)
    assert book.match(T0 + 5) == []
    book.complete("a", 60, T0 + 6)
    assert book.match(T0 + 6) == [Match("c", "cheap", 100, 31), Match("f", "cheap", 100, 1)]


def test_claimed_requests_say_who_has_them() -> None:
    book = book_with(("n1", 1000, 0))
    submit(book, "r1")
    book.match(T0)
    status = book.get("r1")
    assert status is not None and status.state is State.CLAIMED
    assert (status.provider, status.claimed_at, status.reason) == ("n1", T0, "claimed by n1")


def test_many_matches_leave_the_rest_in_order() -> None:
    # More than an eighth of the book matched: the pending index is rebuilt from the rest.
    book = book_with(("n1", 10, 0))          # room 600
    for i in range(100):
        submit(book, f"r{i:03}", tokens=10, price=100 + i, at=T0 + i / 10)
    matches = book.match(T0 + 10)
    assert [m.request_id for m in matches] == [f"r{i:03}" for i in range(99, 39, -1)]
    assert [s.request_id for s in book.pending()] == [f"r{i:03}" for i in range(39, -1, -1)]
    assert book.demand_tokens_waiting == 400


offer_lists = st.lists(st.tuples(st.integers(0, 12), st.integers(1, 40), st.integers(0, 6),
                                 st.sampled_from([0.0, 30.0, 61.0])), max_size=25)
# Sizes that often equal an offer's room exactly (rooms are multiples of 60), where "cheapest offer
# with room" is easiest to get wrong.
request_tokens = st.one_of(st.integers(1, 2500), st.sampled_from([30, 60, 120, 180, 240, 600]))
request_lists = st.lists(st.tuples(request_tokens, st.integers(0, 7),
                                   st.sampled_from(TIERS), st.integers(0, 5)), max_size=60)


@given(offer_lists, request_lists, st.lists(st.integers(0, 59), max_size=10))
@settings(max_examples=300, deadline=None)
def test_match_equals_the_obvious_algorithm(offers: list[tuple[int, int, int, float]],
                                            requests: list[tuple[int, int, str, int]],
                                            claim_first: list[int]) -> None:
    book = OrderBook(CONFIG)
    now = T0 + 60
    for node, tps, price, age in offers:
        book.set_offer(f"n{node}", tps, price * 10, now - age)
    for i, (tokens, price, tier, age) in enumerate(requests):
        submit(book, f"r{i}", tokens=tokens, price=price * 10, at=now - age, tier=tier)
    # Some requests claimed one by one first, so offers start with tokens in flight.
    for i in claim_first:
        for offer in book.offers():
            try:
                book.claim(f"r{i}", offer.node_id, now)
                break
            except MarketError:
                continue
    fresh = [o for o in book.offers() if now < o.announced_at + CONFIG.capacity_timeout_s]
    in_flight = {o.node_id: book.in_flight(o.node_id) for o in book.offers()}
    expected = reference_match(fresh, book.pending(), in_flight, CONFIG)
    assert book.match(now) == expected


ranked_offer_lists = st.lists(st.tuples(st.integers(0, 12), st.integers(1, 40), st.integers(0, 3),
                                        st.integers(0, 3), st.sampled_from([0, 0, 30, 200])),
                              max_size=20)


@given(ranked_offer_lists, request_lists, st.lists(st.integers(0, 59), max_size=10))
@settings(max_examples=300, deadline=None)
def test_match_with_ranks_and_probation_equals_the_obvious_algorithm(
        offers: list[tuple[int, int, int, int, int]], requests: list[tuple[int, int, str, int]],
        claim_first: list[int]) -> None:
    # A gateway's preference (rank, among equal prices) and probation (one request at a time,
    # at most probation_tokens) never change the price order or over-allocate an offer.
    book = OrderBook(CONFIG)
    now = T0 + 60
    book.set_offers([RestingOffer(f"n{node}", tps, price * 10, now, rank=rank,
                                  probation_tokens=probation)
                     for node, tps, price, rank, probation in
                     {o[0]: o for o in offers}.values()], now)
    for i, (tokens, price, tier, age) in enumerate(requests):
        submit(book, f"r{i}", tokens=tokens, price=price * 10, at=now - age, tier=tier)
    for i in claim_first:
        for offer in book.offers():
            try:
                book.claim(f"r{i}", offer.node_id, now)
                break
            except MarketError:
                continue
    in_flight = {o.node_id: book.in_flight(o.node_id) for o in book.offers()}
    expected = reference_match(book.offers(), book.pending(), in_flight, CONFIG)
    assert book.match(now) == expected
    for offer in book.offers():
        if offer.probation_tokens:
            taken = [m.tokens for m in expected if m.node_id == offer.node_id]
            assert len(taken) <= (0 if in_flight[offer.node_id] else 1)
            assert all(tokens <= offer.probation_tokens for tokens in taken)


def test_probation_takes_one_small_request_at_a_time_and_rank_breaks_price_ties() -> None:
    book = OrderBook(CONFIG)
    book.set_offers([RestingOffer("new", 1000, 0, T0, rank=1, probation_tokens=100),
                     RestingOffer("slow", 1000, 10, T0, rank=5),
                     RestingOffer("fast", 1000, 10, T0, rank=2)], T0)
    submit(book, "big", tokens=500, at=T0)
    submit(book, "small", tokens=50, at=T0 + 1)
    submit(book, "small2", tokens=50, at=T0 + 2)
    # The cheapest offer is on probation: it takes the first request that fits its 100 tokens,
    # and only that one; the rest go to the better ranked of the two equal prices.
    assert book.match(T0 + 3) == [Match("big", "fast", 100_000_000, 500),
                                  Match("small", "new", 100_000_000, 50),
                                  Match("small2", "fast", 100_000_000, 50)]
    submit(book, "small3", tokens=50, at=T0 + 4)
    assert book.match(T0 + 4) == [Match("small3", "fast", 100_000_000, 50)]
    book.complete("small", 50, T0 + 5)
    submit(book, "small4", tokens=50, at=T0 + 6)
    assert book.match(T0 + 6) == [Match("small4", "new", 100_000_000, 50)]
    with pytest.raises(MarketError, match="room for 0 more tokens"):
        submit(book, "small5", tokens=1, at=T0 + 7)
        book.claim("small5", "new", T0 + 7)


# ------------------------------------------------------------------ lifecycle


def in_state(state: State) -> tuple[OrderBook, str]:
    """A book holding request "r" in `state`."""
    book = book_with(("n1", 1000, 0))
    submit(book, "r")
    if state is State.PENDING:
        return book, "r"
    if state is State.EXPIRED:
        book.advance(T0 + 600)
        return book, "r"
    book.match(T0)
    if state is State.COMPLETED:
        book.complete("r", 1000, T0)
    elif state is State.FAILED:
        book.fail("r", T0, "backend error")
    return book, "r"


def act(book: OrderBook, request_id: str, action: str) -> object:
    if action == "claim":
        return book.claim(request_id, "n1", T0)
    if action == "complete":
        return book.complete(request_id, 1000, T0)
    if action == "release":
        return book.release(request_id, T0)
    return book.fail(request_id, T0, "why")


@pytest.mark.parametrize("state", list(State))
@pytest.mark.parametrize("action", ["claim", "complete", "release", "fail"])
def test_every_transition_follows_the_table(state: State, action: str) -> None:
    book, request_id = in_state(state)
    assert book.get(request_id).state is state  # type: ignore[union-attr]
    allowed = (state, action) in TRANSITIONS
    if allowed:
        act(book, request_id, action)
        assert book.get(request_id).state is TRANSITIONS[(state, action)]  # type: ignore
    else:
        with pytest.raises(MarketError) as info:
            act(book, request_id, action)
        assert str(info.value) == f"request 'r' is {state}; cannot {action} it"
        assert book.get(request_id).state is state  # type: ignore[union-attr]


def test_claim_timeout_requeues_then_expiry_then_pruning() -> None:
    book = book_with(("n1", 1000, 0))
    submit(book, "r1", tokens=500)
    book.match(T0 + 10)
    assert book.advance(T0 + 69.9) == [OfferExpired("n1")]   # announced at T0, not again
    events = book.advance(T0 + 70)
    assert events == [RequestRequeued(
        "r1", "n1", "provider n1 did not complete within 60 s; waiting for another")]
    status = book.get("r1")
    assert status is not None and status.state is State.PENDING and status.provider is None
    assert book.in_flight("n1") == 0 and book.demand_tokens_waiting == 500
    # Its expiry counts from submission, not from the requeue.
    events = book.advance(T0 + 600)
    assert events == [RequestExpired(
        "r1", "expired after 600 s without a provider (last: provider n1 did not complete "
              "within 60 s; waiting for another)")]
    assert book.get("r1").finished_at == T0 + 600  # type: ignore[union-attr]
    assert book.demand_tokens_waiting == 0 and book.pending_count == 0
    book.advance(T0 + 600 + 3599)
    assert len(book) == 1
    book.advance(T0 + 600 + 3600)
    assert len(book) == 0 and book.get("r1") is None


def test_timeouts_apply_at_their_deadlines_however_late_advance_is_called() -> None:
    book = book_with(("n1", 1000, 0))
    submit(book, "r1")
    book.match(T0)
    # One late call: the claim times out at T0 + 60, the request is pending again and expires at
    # T0 + 600, and is pruned at T0 + 4200 — all in one advance.
    events = book.advance(T0 + 10_000)
    assert [type(e) for e in events] == [OfferExpired, RequestRequeued, RequestExpired]
    assert len(book) == 0 and book.timer_count() == 0


def test_release_keeps_the_requests_place() -> None:
    book = book_with(("n1", 1000, 0))
    submit(book, "first", at=T0)
    book.match(T0)
    submit(book, "second", at=T0 + 1)
    status = book.release("first", T0 + 2, "provider declined: busy")
    assert (status.state, status.reason) == (State.PENDING, "provider declined: busy")
    assert [s.request_id for s in book.pending()] == ["first", "second"]
    assert book.in_flight("n1") == 0


def test_complete_settles_at_the_locked_price() -> None:
    book = book_with(("n1", 1000, 10_000_000))
    submit(book, "req1", tokens=10_000, price=56_951_614)
    book.match(T0)
    with pytest.raises(MarketError, match="claimed by 'n1', not 'n2'"):
        book.complete("req1", 10_000, T0 + 1, node_id="n2")
    with pytest.raises(MarketError, match="tokens_served must be a whole number in 0..10000"):
        book.complete("req1", 10_001, T0 + 1)
    settlement = book.complete("req1", 10_000, T0 + 1, node_id="n1")
    # 10,000 × 56,951,614 // 1,000,000 = 569,516; burn 5 % = 28,475 (floor); earned the rest.
    assert (settlement.payment, settlement.burned, settlement.earned) == (569_516, 28_475, 541_041)
    status = book.get("req1")
    assert status is not None and status.settlement == settlement
    assert status.reason == "served 10000 of 10000 tokens" and status.finished_at == T0 + 1
    assert book.counters["payment_nano"] == 569_516 and book.counters["completed"] == 1


def test_claim_and_claim_next_say_why_not() -> None:
    book = book_with(("cheap", 1, 0), ("dear", 1000, 500))
    submit(book, "big", tokens=100, price=600)
    submit(book, "poor", tokens=10, price=100, at=T0 + 1)
    with pytest.raises(MarketError, match="'dear' asks at least 0.0000005 > locked price "
                                          "0.0000001 of request 'poor'"):
        book.claim("poor", "dear", T0)
    with pytest.raises(MarketError, match="'cheap' has room for 60 more tokens; request 'big' "
                                          "needs 100"):
        book.claim("big", "cheap", T0)
    with pytest.raises(MarketError, match="node 'ghost' has no capacity offered"):
        book.claim_next("ghost", T0)
    assert book.claim_next("cheap", T0) == Match("poor", "cheap", 100, 10)
    assert book.claim_next("cheap", T0) is None       # "big" does not fit
    assert book.claim_next("dear", T0) == Match("big", "dear", 600, 100)


def test_unknown_request() -> None:
    book = OrderBook(CONFIG)
    with pytest.raises(MarketError, match="unknown request 'nope'"):
        book.complete("nope", 1, T0)
    assert book.get("nope") is None


@pytest.mark.parametrize("bad", [["r1"], {"id": 1}, None, 7, b"r1"])
def test_ids_of_the_wrong_type_are_market_errors_not_crashes(bad: object) -> None:
    """Ids and tiers come from callers (the API, the embedded market's users): a list or a dict
    where a string belongs is refused with a reason, never a TypeError from a dict lookup."""
    book = book_with(("n1", 1000, 0))
    submit(book, "r1")
    assert book.get(bad) is None  # type: ignore[arg-type]
    assert book.offer(bad) is None and book.in_flight(bad) == 0  # type: ignore[arg-type]
    assert book.withdraw(bad) is False  # type: ignore[arg-type]
    for call in (lambda: book.complete(bad, 1, T0),  # type: ignore[arg-type]
                 lambda: book.release(bad, T0),  # type: ignore[arg-type]
                 lambda: book.fail(bad, T0, "why")):  # type: ignore[arg-type]
        with pytest.raises(MarketError, match="unknown request"):
            call()
    for call in (lambda: book.claim("r1", bad, T0),  # type: ignore[arg-type]
                 lambda: book.claim_next(bad, T0)):  # type: ignore[arg-type]
        with pytest.raises(MarketError, match="has no capacity offered"):
            call()
    with pytest.raises(MarketError, match="tier must be one of economy, standard, premium"):
        book.submit("r2", "u", 10, NEURO, 0, T0, bad)  # type: ignore[arg-type]
    assert (len(book), book.pending_count, book.offer_count) == (1, 1, 1)


# ------------------------------------------------------------------ invariants (stateful)


class BookMachine(RuleBasedStateMachine):
    """Random operations on a book; after each, its totals must agree with its records, and
    every match and settlement must obey the rules."""

    @initialize()
    def start(self) -> None:
        self.config = MarketConfig(claim_timeout_s=30, request_expiry_s=200, retention_s=100,
                                   capacity_timeout_s=60)
        self.book = OrderBook(self.config)
        self.now = T0
        self.next_id = 0

    def records(self) -> list[RequestStatus]:
        return self.book.requests()

    def ids_in(self, state: State) -> list[str]:
        return sorted(r.request_id for r in self.records() if r.state is state)

    @rule(node=st.integers(0, 4), tps=st.sampled_from([0, 1, 5, 50]),
          price=st.sampled_from([0, 50, 100, 300]))
    def offer(self, node: int, tps: int, price: int) -> None:
        self.book.set_offer(f"n{node}", tps, price, self.now)

    @rule(offers=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 60),
                                    st.sampled_from([0, 50, 100, 300])), max_size=6))
    def replace_offers(self, offers: list[tuple[int, int, int]]) -> None:
        self.book.set_offers([RestingOffer(f"n{n}", t, p, self.now) for n, t, p in offers],
                             self.now)

    @rule(node=st.integers(0, 6))
    def withdraw(self, node: int) -> None:
        self.book.withdraw(f"n{node}")

    @rule(tokens=request_tokens, price=st.sampled_from([0, 60, 100, 200, 400]),
          headroom=st.sampled_from([-1, 0, 100]), tier=st.sampled_from(TIERS))
    def submit(self, tokens: int, price: int, headroom: int, tier: str) -> None:
        self.next_id += 1
        request_id = f"r{self.next_id}"
        if headroom < 0:
            with pytest.raises(MarketError, match="current price|max_price must be >= 0"):
                self.book.submit(request_id, "u", tokens, price - 1, price, self.now, tier)
            assert self.book.get(request_id) is None
        else:
            status = self.book.submit(request_id, "u", tokens, price + headroom, price,
                                      self.now, tier)
            assert status.locked_price_nano == price

    def check_matches(self, matches: list[Match]) -> None:
        trs = self.config.target_response_s
        for match in matches:
            offer = self.book.offer(match.node_id)
            status = self.book.get(match.request_id)
            assert offer is not None and status is not None
            assert self.now < offer.announced_at + self.config.capacity_timeout_s
            # Never outside the price bounds.
            assert offer.min_price_nano <= match.locked_price_nano <= status.max_price_nano
            assert match.locked_price_nano == status.locked_price_nano
            assert match.tokens == status.tokens
            assert status.state is State.CLAIMED and status.provider == match.node_id
            # Never over-allocated.
            assert self.book.in_flight(match.node_id) <= offer.capacity_tokens(trs)

    @rule()
    def match(self) -> None:
        offers = [o for o in self.book.offers()
                  if self.now < o.announced_at + self.config.capacity_timeout_s]
        in_flight = {o.node_id: self.book.in_flight(o.node_id) for o in offers}
        expected = reference_match(offers, self.book.pending(), in_flight, self.config)
        matches = self.book.match(self.now)
        assert matches == expected
        self.check_matches(matches)

    @rule(node=st.integers(0, 4))
    def claim_next(self, node: int) -> None:
        try:
            match = self.book.claim_next(f"n{node}", self.now)
        except MarketError as error:
            assert "has no capacity offered" in str(error)
            return
        if match is not None:
            self.check_matches([match])

    @precondition(lambda self: bool(self.ids_in(State.CLAIMED)))
    @rule(data=st.data(), share=st.floats(0, 1))
    def complete(self, data: st.DataObject, share: float) -> None:
        request_id = data.draw(st.sampled_from(self.ids_in(State.CLAIMED)))
        status = self.book.get(request_id)
        assert status is not None
        served = int(status.tokens * share)
        paid_before = self.book.counters["payment_nano"]
        settlement = self.book.complete(request_id, served, self.now)
        # Conservation of money on every completion.
        assert settlement.payment == served * status.locked_price_nano // 1_000_000
        assert settlement.burned == settlement.payment * 5 // 100
        assert settlement.payment == settlement.earned + settlement.burned
        assert min(settlement.payment, settlement.burned, settlement.earned) >= 0
        assert self.book.counters["payment_nano"] == paid_before + settlement.payment

    @precondition(lambda self: bool(self.ids_in(State.CLAIMED)))
    @rule(data=st.data())
    def release(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self.ids_in(State.CLAIMED)))
        assert self.book.release(request_id, self.now, "declined").state is State.PENDING

    @precondition(lambda self: bool(self.ids_in(State.PENDING) + self.ids_in(State.CLAIMED)))
    @rule(data=st.data())
    def fail(self, data: st.DataObject) -> None:
        request_id = data.draw(st.sampled_from(self.ids_in(State.PENDING)
                                               + self.ids_in(State.CLAIMED)))
        assert self.book.fail(request_id, self.now, "backend").state is State.FAILED

    @rule(seconds=st.sampled_from([0.0, 1.0, 29.0, 31.0, 61.0, 150.0, 250.0]))
    def advance(self, seconds: float) -> None:
        before = {r.request_id: r for r in self.records()}
        self.now += seconds
        for event in self.book.advance(self.now):
            if isinstance(event, RequestRequeued):
                assert before[event.request_id].state is State.CLAIMED
                # One long advance can requeue, expire and prune the same request.
                after = self.book.get(event.request_id)
                assert after is None or after.state in (State.PENDING, State.EXPIRED)
            elif isinstance(event, RequestExpired):
                assert before[event.request_id].state in (State.PENDING, State.CLAIMED)
        for record in self.records():
            deadline = {State.PENDING: record.expires_at,
                        State.CLAIMED: (record.claimed_at or 0) + self.config.claim_timeout_s}
            assert deadline.get(record.state, (record.finished_at or 0)
                                + self.config.retention_s) > self.now

    @rule()
    def drain(self) -> None:
        """Bounded memory: once everything has timed out and been pruned, nothing is left."""
        self.now += 60 + 30 + 200 + 100 + 1
        self.book.advance(self.now)
        assert len(self.book) == 0
        assert self.book.offer_count == 0 and self.book.supply_tokens_per_sec == 0
        assert self.book.timer_count() == 0

    @invariant()
    def totals_agree_with_records(self) -> None:
        records = self.records()
        pending = [r for r in records if r.state is State.PENDING]
        claimed = [r for r in records if r.state is State.CLAIMED]
        assert self.book.demand_tokens_waiting == sum(r.tokens for r in pending)
        assert self.book.pending_count == len(pending)
        assert [r.request_id for r in self.book.pending()] == [
            r.request_id for r in sorted(pending, key=lambda r: (
                RANK[r.tier], -r.locked_price_nano, r.submitted_at, r.request_id))]
        assert self.book.claimed_count == len(claimed)
        flights: dict[str, int] = {}
        for r in claimed:
            assert r.provider is not None
            flights[r.provider] = flights.get(r.provider, 0) + r.tokens
        for node in {r.provider for r in claimed} | {o.node_id for o in self.book.offers()}:
            assert self.book.in_flight(node or "") == flights.get(node or "", 0)
        assert self.book.supply_tokens_per_sec == sum(o.tokens_per_second
                                                    for o in self.book.offers())
        for r in records:
            assert r.locked_price_nano <= r.max_price_nano
        # Timer entries never outgrow the live records by more than the compaction slack.
        assert self.book.timer_count() <= 2 * (len(records) + self.book.offer_count) + 1024 + 1


TestBookMachine = BookMachine.TestCase
TestBookMachine.settings = settings(max_examples=150, stateful_step_count=40, deadline=None,
                                    suppress_health_check=[HealthCheck.too_slow])
