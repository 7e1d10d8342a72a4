"""Jobs: the sans-IO desks with exact times, then real nodes on 127.0.0.1 (libp2p job streams,
synthetic and OpenAI-compatible backends, SQLite ledgers)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p import wire
from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.node.job_records import NO_SETTLEMENT, Payers, PayerSettings, SeenJobs
from neuroshard_p2p.node.jobs import (
    GatewayDesk,
    GatewaySettings,
    ProviderDesk,
    declined,
    ViewOffers,
    job_protocol,
    progress_deadline_s,
)
from neuroshard_p2p.view import CountedOffer, MarketView
from neuroshard_p2p.wire import Announcement, Job, decode_job_frame, encode_job_frame
from tests.conftest import make_key

T0 = 1_700_000_000.0
CONFIG = MarketConfig(dynamic_pricing=False, target_response_s=2.0, claim_timeout_s=30.0,
                      request_expiry_s=120.0, retention_s=60.0)
PRICE = 100_000_000  # the fixed price 0.1 NEURO per 1M tokens, in nano
GATEWAY, CHEAP, DEAR, OTHER = (make_key(i) for i in (1, 2, 3, 4))


def pub(key: object) -> bytes:
    return key.public_key.format(compressed=True)  # type: ignore[attr-defined]


def signed_job(tokens: int = 100, *, provider: object = CHEAP, gateway: object = GATEWAY,
               request_id: str = "r1", locked: int = PRICE, now: float = T0) -> Job:
    job = Job(signer=pub(gateway), issued_at_ms=int(now * 1000), request_id=request_id,
              user="alice", provider=pub(provider), tokens=tokens, max_price_nano=2 * PRICE,
              locked_price_nano=locked, tier=1, prompt="hello")
    signed = wire.sign(job, gateway)  # type: ignore[arg-type]
    assert isinstance(signed, Job)
    return signed


# --- frames (their bytes and fuzzing: tests/test_wire_frames.py) -------------------------------

def test_declined_cuts_fields_to_the_wire_limits() -> None:
    frame = declined("x" * 500, "backend_timeout", "é" * 1000)
    assert frame.request_id == "?"
    assert len(frame.detail.encode()) == 512
    assert decode_job_frame(encode_job_frame(frame)) == frame


# --- provider desk ------------------------------------------------------------------------------

def test_provider_admits_by_its_own_capacity() -> None:
    desk = ProviderDesk(pub(CHEAP), CONFIG)  # 100 tokens/s × 2 s = 200 tokens in flight
    first, second, third = (signed_job(100, request_id=f"r{i}") for i in range(3))
    assert desk.admit(first, pub(GATEWAY), 100, 0, T0).accepted
    assert desk.admit(second, pub(GATEWAY), 100, 0, T0).accepted
    answer = desk.admit(third, pub(GATEWAY), 100, 0, T0)
    assert (answer.accepted, answer.reason) == (False, "full")
    assert answer.detail == "200 of 200 tokens in flight; no room for 100 more"
    desk.finish(first)
    # The gateway sends the request again in a new Job (the declined one's bytes would be a
    # replay: see below).
    again = signed_job(100, request_id="r2", now=T0 + 0.5)
    assert desk.admit(again, pub(GATEWAY), 100, 0, T0 + 0.5).accepted
    assert desk.in_flight_tokens == 200 and desk.peak_in_flight_tokens == 200
    assert desk.counts["accepted"] == 3 and desk.counts["full"] == 1


def test_provider_declines_work_queued_past_its_queue_limit() -> None:
    # 1000 tokens/s × target 60 s would let 60,000 tokens wait; the queue limit (2.5 s of work)
    # keeps every admitted job inside any gateway's progress deadline (5 s + 2 × its own time).
    desk = ProviderDesk(pub(CHEAP), MarketConfig(target_response_s=60.0))
    assert desk.admit(signed_job(2_000, request_id="a"), pub(GATEWAY), 1000, 0, T0).accepted
    assert desk.admit(signed_job(600, request_id="b"), pub(GATEWAY), 1000, 0, T0).accepted
    answer = desk.admit(signed_job(10, request_id="c"), pub(GATEWAY), 1000, 0, T0)
    assert (answer.accepted, answer.reason, answer.detail) == (
        False, "full", "2.6 s of work queued (limit 2.5 s at 1000 tokens/s)")
    assert progress_deadline_s(2_600, 1000) == 5.0 + 2 * 2.6


@pytest.mark.parametrize("job, sender, tps, min_price, reason", [
    (signed_job(provider=OTHER), GATEWAY, 100, 0, "wrong_provider"),
    (signed_job(), OTHER, 100, 0, "gateway_mismatch"),
    (signed_job(), GATEWAY, 0, 0, "not_offering"),
    (signed_job(), GATEWAY, 100, PRICE + 1, "below_min_price"),
    (signed_job(201), GATEWAY, 100, 0, "too_large"),
])
def test_provider_declines_with_a_reason(job: Job, sender: object, tps: int, min_price: int,
                                         reason: str) -> None:
    desk = ProviderDesk(pub(CHEAP), CONFIG)
    answer = desk.admit(job, pub(sender), tps, min_price, T0)
    assert (answer.accepted, answer.reason) == (False, reason)
    assert desk.in_flight_tokens == 0


def test_provider_declines_a_duplicate_in_flight() -> None:
    desk = ProviderDesk(pub(CHEAP), CONFIG)
    assert desk.admit(signed_job(10), pub(GATEWAY), 100, 0, T0).accepted
    answer = desk.admit(signed_job(10, now=T0 + 0.001), pub(GATEWAY), 100, 0, T0)
    assert (answer.reason, answer.detail) == ("duplicate", "request 'r1' is already being served")
    assert desk.in_flight_tokens == 10


def test_a_replayed_job_is_declined_until_it_could_no_longer_be_fresh() -> None:
    desk = ProviderDesk(pub(CHEAP), CONFIG)
    job = signed_job(10, now=T0)
    assert desk.admit(job, pub(GATEWAY), 100, 0, T0).accepted
    desk.finish(job)  # served and done: its bytes sent again are still a replay
    for at in (T0 + 1, T0 + 300.0):
        answer = desk.admit(job, pub(GATEWAY), 100, 0, at)
        assert (answer.accepted, answer.reason) == (False, "duplicate")
        assert "already received" in answer.detail
    assert desk.seen.replays == 2 and len(desk.seen) == 1
    # Past issued_at + 300 s the Job fails W13 at decoding; its id is let go.
    desk.admit(signed_job(10, request_id="later", now=T0 + 300.002), pub(GATEWAY), 100, 0,
               T0 + 300.002)
    assert len(desk.seen) == 1
    # A Job dated 30 s ahead (W13's limit) is remembered 330 s from its arrival.
    ahead = signed_job(10, request_id="ahead", now=T0 + 330)
    assert desk.admit(ahead, pub(GATEWAY), 100, 0, T0 + 300).accepted
    assert desk.admit(ahead, pub(GATEWAY), 100, 0, T0 + 630).reason == "duplicate"


def test_the_seen_jobs_are_bounded_per_gateway_and_in_all() -> None:
    desk = ProviderDesk(pub(CHEAP), CONFIG, seen=SeenJobs(max_ids=3, max_per_gateway=2))
    jobs = [signed_job(1, request_id=f"g{i}", now=T0 + i) for i in range(3)]
    assert [desk.admit(j, pub(GATEWAY), 100, 0, T0 + 3).reason for j in jobs] == [
        "", "", "full"]
    other = signed_job(1, gateway=OTHER, request_id="o1", now=T0 + 3)
    assert desk.admit(other, pub(OTHER), 100, 0, T0 + 3).accepted
    last = signed_job(1, gateway=OTHER, request_id="o2", now=T0 + 3)
    answer = desk.admit(last, pub(OTHER), 100, 0, T0 + 3)
    assert (answer.reason, desk.seen.overflows) == ("full", 2)
    assert "at most 2 jobs per gateway (3 in all)" in answer.detail
    # Once the first ids can no longer be fresh, there is room again.
    later = signed_job(1, request_id="g9", now=T0 + 301)
    assert desk.admit(later, pub(GATEWAY), 100, 0, T0 + 301).accepted


def test_a_gateway_that_does_not_settle_is_declined_unpaid_for_a_while() -> None:
    payers = Payers(PayerSettings(unpaid_strikes=3, unpaid_share=0.25, unpaid_window_s=600,
                                  unpaid_refusal_s=600))
    desk = ProviderDesk(pub(CHEAP), CONFIG, payers=payers)
    gw = pub(GATEWAY)
    # Settled jobs never count against it; refused receipts and silence do, within 600 s, once
    # there are 3 of them and they carry more than a quarter of the tokens served.
    assert not payers.on_outcome(gw, "settled", 100, T0)
    assert not payers.on_outcome(gw, "implausible", 10, T0 + 1)
    assert not payers.on_outcome(gw, NO_SETTLEMENT, 10, T0 + 2)
    assert not payers.on_outcome(gw, "settled", 100, T0 + 3)
    assert not payers.on_outcome(gw, NO_SETTLEMENT, 10, T0 + 3.5)  # 3 unpaid, 30 of 230 tokens
    assert desk.admit(signed_job(1, request_id="a", now=T0 + 4), gw, 100, 0, T0 + 4).accepted
    assert payers.on_outcome(gw, "replay", 50, T0 + 5)   # 4 unpaid, 80 of 280 tokens: > 25 %
    answer = desk.admit(signed_job(1, request_id="b", now=T0 + 6), gw, 100, 0, T0 + 6)
    assert (answer.accepted, answer.reason, answer.detail) == (
        False, "unpaid", "4 of the 6 jobs this provider served for your gateway were not "
                         "settled (last: replay); no jobs from it for 599 s more")
    # Other gateways are served meanwhile; this one again after 600 s, then 1,200 s next time.
    other = signed_job(1, gateway=OTHER, request_id="c", now=T0 + 6)
    assert desk.admit(other, pub(OTHER), 100, 0, T0 + 6).accepted
    assert desk.admit(signed_job(1, request_id="d", now=T0 + 605), gw, 100, 0,
                      T0 + 605).accepted
    assert [payers.on_outcome(gw, NO_SETTLEMENT, 10, T0 + 610 + i) for i in range(3)] == [
        False, False, True]
    record = payers.record(gw)
    assert record is not None and record.refused_until == T0 + 612 + 1200
    # Unpaid jobs older than the window do not add up.
    lax = Payers()
    assert not any(lax.on_outcome(gw, NO_SETTLEMENT, 10, T0 + 301 * i) for i in range(10))
    assert desk.counts["unpaid"] == 1 and payers.declined == 1


def test_receipt_names_the_job_and_never_more_tokens_than_requested() -> None:
    desk = ProviderDesk(pub(CHEAP), CONFIG)
    job = signed_job(100)
    receipt = desk.receipt_for(job, 250, T0 + 1, T0 + 2.5, T0 + 2.6)
    assert (receipt.request_id, receipt.gateway, receipt.user, receipt.tokens_served,
            receipt.locked_price_nano, receipt.started_at_ms, receipt.ended_at_ms,
            receipt.issued_at_ms) == ("r1", pub(GATEWAY), "alice", 100, PRICE,
                                      int((T0 + 1) * 1000), int((T0 + 2.5) * 1000),
                                      int((T0 + 2.6) * 1000))
    wire.encode(receipt, CHEAP)  # valid on the wire


# --- gateway desk -------------------------------------------------------------------------------

def offer(key: object, tps: int, min_price: int, at: float = T0) -> CountedOffer:
    return CountedOffer(pub(key), tps, min_price, int(at * 1000))


def gateway_desk(*offers: CountedOffer) -> GatewayDesk:
    desk = GatewayDesk(CONFIG, pub(GATEWAY), GatewaySettings(full_backoff_s=1.0,
                                                             lost_backoff_s=10.0))
    desk.set_view_offers([offer(GATEWAY, 10_000, 0), *offers], T0)  # own offer: never used
    return desk


def test_gateway_sends_the_request_to_the_cheapest_offer_at_the_locked_price() -> None:
    desk = gateway_desk(offer(CHEAP, 100, 10), offer(DEAR, 1000, 50_000_000))
    status = desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0,
                         tier="premium", prompt="why?")
    assert (status.state, status.locked_price_nano, status.reason) == (
        "pending", PRICE, "waiting for a match")
    [dispatch] = desk.dispatch(T0 + 0.1)
    job = dispatch.job
    assert dispatch.peer_id == peer_id_of(pub(CHEAP))
    assert (job.signer, job.provider, job.request_id, job.user, job.tokens, job.max_price_nano,
            job.locked_price_nano, job.tier, job.prompt, job.issued_at_ms) == (
        pub(GATEWAY), pub(CHEAP), "r1", "alice", 100, 2 * PRICE, PRICE, 2, "why?",
        int((T0 + 0.1) * 1000))
    assert dispatch.claim_deadline == T0 + 0.1 + 30.0
    assert dispatch.provider_tokens_per_s == 100
    assert desk.status("r1").state == "claimed"  # type: ignore[union-attr]
    assert desk.pending_tokens == 0


def test_declined_request_goes_to_the_next_offer_then_back_after_the_backoff() -> None:
    desk = gateway_desk(offer(CHEAP, 100, 10), offer(DEAR, 1000, 20))
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    [first] = desk.dispatch(T0)
    assert desk.on_declined("r1", first.attempt, first.peer_id, "full",
                            "200 of 200 tokens in flight", T0 + 0.2)
    status = desk.status("r1")
    assert status is not None and status.state == "pending"
    assert status.reason == (f"provider {first.peer_id[:6]}…{first.peer_id[-6:]} declined: full "
                             f"(200 of 200 tokens in flight); waiting for another offer")
    [second] = desk.dispatch(T0 + 0.3)
    assert second.peer_id == peer_id_of(pub(DEAR)) and second.attempt == 2
    # A late answer about the first attempt changes nothing.
    assert not desk.on_lost("r1", first.attempt, first.peer_id, "died", T0 + 0.4)
    desk.on_lost("r1", second.attempt, second.peer_id, "disconnected mid-job", T0 + 0.5)
    assert desk.dispatch(T0 + 0.6) == []  # the cheap one is still set aside, the dear one too
    assert desk.next_deadline() == pytest.approx(T0 + 1.2)
    [third] = desk.dispatch(T0 + 1.2)
    assert third.peer_id == peer_id_of(pub(CHEAP))
    assert desk.counts["declined"] == 1 and desk.counts["lost"] == 1
    assert desk.status("r1").attempts == 3  # type: ignore[union-attr]


def test_completed_request_costs_tokens_times_locked_price() -> None:
    desk = gateway_desk(offer(CHEAP, 100, 10))
    desk.submit("r1", "alice", 150, 2 * PRICE, price_nano=PRICE, now=T0)
    [dispatch] = desk.dispatch(T0)
    job = wire.sign(dispatch.job, GATEWAY)
    provider = ProviderDesk(pub(CHEAP), CONFIG)
    receipt = wire.sign(provider.receipt_for(job, 123, T0, T0 + 1.2, T0 + 1.2), CHEAP)
    status = desk.on_completed("r1", dispatch.attempt, receipt, "the answer", T0 + 1.3)
    assert status is not None
    assert (status.state, status.provider, status.tokens_served, status.cost_nano,
            status.output, status.reason) == (
        "completed", dispatch.peer_id, 123, 123 * PRICE // 1_000_000, "the answer",
        "served 123 of 150 tokens")


def test_backend_failure_fails_the_request_with_its_reason() -> None:
    desk = gateway_desk(offer(CHEAP, 100, 10))
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    [dispatch] = desk.dispatch(T0)
    desk.on_failed("r1", dispatch.attempt, dispatch.peer_id,
                   "provider could not serve it: backend_http_status: HTTP 500", T0 + 1)
    status = desk.status("r1")
    assert status is not None
    assert (status.state, status.cost_nano, status.reason) == (
        "failed", None, "provider could not serve it: backend_http_status: HTTP 500")


def test_claim_timeout_returns_to_pending_and_expiry_says_why() -> None:
    desk = gateway_desk(offer(CHEAP, 100, 10))
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    [dispatch] = desk.dispatch(T0)
    events = desk.advance(T0 + 30.0)
    assert [type(e).__name__ for e in events] == ["RequestRequeued"]
    status = desk.status("r1")
    assert status is not None and status.state == "pending"
    assert "did not complete within 30 s" in status.reason
    desk.on_accepted("r1", dispatch.attempt, T0 + 31)  # too late: not counted
    assert desk.counts["accepted"] == 0
    desk.set_view_offers([], T0 + 31)
    assert desk.dispatch(T0 + 31) == []
    assert desk.status("r1").reason.endswith("no capacity offered")  # type: ignore[union-attr]
    [expired] = desk.advance(T0 + 120.0)
    status = desk.status("r1")
    assert status is not None and status.state == "expired"
    assert status.reason.startswith("expired after 120 s without a provider")
    assert type(expired).__name__ == "RequestExpired"
    desk.advance(T0 + 120.0 + 60.0)
    assert desk.status("r1") is None  # pruned after retention


def test_no_offer_at_or_below_the_locked_price() -> None:
    desk = gateway_desk(offer(DEAR, 1000, 3 * PRICE))
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    assert desk.dispatch(T0) == []
    assert desk.status("r1").reason == (  # type: ignore[union-attr]
        "no offer at or below your locked price 0.10")


# --- the gateway's record of providers (node/reputation.py) ---------------------------------------

LIAR, HONEST = make_key(5), make_key(6)


def fault_and_route(desk: GatewayDesk, now: float, kind: str = "no_answer") -> list[str]:
    """Dispatch at `now`; every job to the liar faults at once. The providers of the jobs sent."""
    sent = []
    for d in desk.dispatch(now):
        sent.append(d.peer_id)
        if d.peer_id == peer_id_of(pub(LIAR)):
            assert desk.on_fault(d.request_id, d.attempt, d.peer_id, kind, "held it", now)
    return sent


def test_a_liar_draws_three_jobs_then_is_banned_and_no_request_waits_on_it() -> None:
    # The liar is always cheapest (price 0); the honest provider asks 10 nano. Both new here.
    desk = gateway_desk(offer(LIAR, 500, 0), offer(HONEST, 10_000, 10))
    liar, honest = peer_id_of(pub(LIAR)), peer_id_of(pub(HONEST))
    drawn = 0
    for second in range(0, 700):
        now = T0 + second
        desk.set_view_offers([offer(LIAR, 500, 0, now), offer(HONEST, 10_000, 10, now)], now)
        desk.submit(f"r{second}", "alice", 50, 2 * PRICE, price_nano=PRICE, now=now)
        sent = fault_and_route(desk, now)
        drawn += sent.count(liar)
        if liar in sent:
            # The faulted request went back to pending at once: the next dispatch, at the same
            # instant, hands it to the honest provider.
            assert fault_and_route(desk, now) == [honest]
        # Everything sent to the honest provider completes.
        for rid in [r.request_id for r in desk.book.requests() if r.state == "claimed"]:
            record = desk.book.get(rid)
            assert record is not None and record.provider == honest
            job = signed_job(50, provider=HONEST, request_id=rid, now=now)
            receipt = wire.sign(ProviderDesk(pub(HONEST), CONFIG).receipt_for(
                job, 50, now, now, now), HONEST)
            desk.on_completed(rid, desk._extra[rid].attempt, receipt, "ok", now)
        if second == 4:
            assert desk.routing(pub(LIAR), now)["state"] == "backing_off"
    # 3 faults in a row: at t = 0, after the 5 s back-off (t = 5) and the 10 s one (t = 15);
    # then banned 600 s; after the ban, on probation again, the 4th fault bans it 1,200 s.
    assert drawn == 4
    record = desk.reputation.get(liar)
    assert record is not None
    assert (record.sent, record.faults, record.strikes, record.bans, record.settled) == (
        4, 4, 4, 2, 0)
    assert record.banned_until == T0 + 615 + 1200
    assert desk.counts["failed"] == desk.counts["expired"] == 0
    assert desk.counts["completed"] == 700 and desk.count_by_state() == {"completed": 700}
    view = desk.routing(pub(LIAR), T0 + 700)
    assert (view["state"], view["skipped"]) == ("banned", True)
    assert view["why"].startswith("banned for 1115 s more after 4 faults in a row (last: "
                                  "no_answer: held it)")
    assert desk.routing(pub(HONEST), T0 + 700)["state"] == "trusted"
    assert desk.routing(pub(GATEWAY), T0 + 700)["state"] == "own"


def test_probation_is_one_small_job_at_a_time_and_never_starves_a_request() -> None:
    desk = gateway_desk(offer(CHEAP, 10_000, 10))
    cheap = peer_id_of(pub(CHEAP))
    desk.submit("big", "alice", 5_000, 2 * PRICE, price_nano=PRICE, now=T0)
    desk.submit("small", "alice", 50, 2 * PRICE, price_nano=PRICE, now=T0 + 1)
    desk.submit("small2", "alice", 50, 2 * PRICE, price_nano=PRICE, now=T0 + 2)
    # New here: on probation. One request, the first that is small enough (1,000 tokens).
    [first] = desk.dispatch(T0 + 3)
    assert (first.request_id, first.probation) == ("small", True)
    assert desk.dispatch(T0 + 3) == []
    complete(desk, first, CHEAP, T0 + 4)
    [second] = desk.dispatch(T0 + 4)
    assert second.request_id == "small2"
    complete(desk, second, CHEAP, T0 + 5)
    # Nobody else can take the big one: once no small one waits, an idle provider on probation
    # gets it, whatever its size (small jobs first, never small jobs only).
    [third] = desk.dispatch(T0 + 5)
    assert (third.request_id, third.probation) == ("big", True)
    complete(desk, third, CHEAP, T0 + 6)
    assert desk.reputation.state(cheap, T0 + 6) == "trusted"
    for i in range(3):
        desk.submit(f"more{i}", "alice", 50, 2 * PRICE, price_nano=PRICE, now=T0 + 7)
    assert [d.probation for d in desk.dispatch(T0 + 7)] == [False] * 3  # as its room allows


def complete(desk: GatewayDesk, d: object, key: object, now: float, latency: float = 0.0) -> None:
    job = wire.sign(d.job, GATEWAY)  # type: ignore[attr-defined]
    receipt = wire.sign(ProviderDesk(pub(key), CONFIG).receipt_for(
        job, job.tokens, now, now, now), key)
    assert desk.on_completed(d.request_id, d.attempt, receipt, "ok", now,  # type: ignore[attr-defined]
                             latency_s=latency) is not None


def test_equal_prices_prefer_a_settled_record_and_low_latency() -> None:
    desk = gateway_desk(offer(CHEAP, 10_000, 10), offer(DEAR, 10_000, 10))
    for i, key, latency in ((0, CHEAP, 0.9), (1, DEAR, 0.05)):
        for j in range(3):  # make both trusted, CHEAP slow and DEAR fast
            desk.set_view_offers([offer(key, 10_000, 10)], T0)
            desk.submit(f"w{i}{j}", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0)
            [d] = desk.dispatch(T0)
            complete(desk, d, key, T0, latency)
    desk.set_view_offers([offer(CHEAP, 10_000, 10), offer(DEAR, 10_000, 10)], T0)
    desk.submit("r", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 1)
    [d] = desk.dispatch(T0 + 1)
    assert d.peer_id == peer_id_of(pub(DEAR))
    assert desk.reputation.rank(peer_id_of(pub(DEAR))) == 50
    assert desk.reputation.rank(peer_id_of(pub(CHEAP))) == 900
    # A cheaper offer still wins whatever its record: price comes first.
    desk.set_view_offers([offer(CHEAP, 10_000, 9), offer(DEAR, 10_000, 10)], T0 + 2)
    desk.submit("r2", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 2)
    [d] = desk.dispatch(T0 + 2)
    assert d.peer_id == peer_id_of(pub(CHEAP))


def test_equal_prices_prefer_a_provider_that_takes_sampling_settings_after_trust() -> None:
    """Among offers at one min price: trusted first, then a provider whose job protocols include
    job/2.2.0 (the driver's `lacks_sampling` says which do not), then latency; price first."""
    old_id = peer_id_of(pub(CHEAP))

    def lacks(peer_id: str) -> bool:
        return peer_id == old_id

    desk = gateway_desk(offer(CHEAP, 10_000, 10), offer(DEAR, 10_000, 10))
    both = [offer(CHEAP, 10_000, 10), offer(DEAR, 10_000, 10)]
    assert peer_id_of(pub(CHEAP)) < peer_id_of(pub(DEAR))  # the book's tie-break favours CHEAP
    desk.submit("a", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0)
    [d] = desk.dispatch(T0, None, lacks)
    assert d.peer_id == peer_id_of(pub(DEAR))   # both on probation: the one that takes them
    complete(desk, d, DEAR, T0)
    desk.submit("b", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 1)
    [d] = desk.dispatch(T0 + 1)
    assert d.peer_id == old_id                  # without the driver's word, the tie-break
    complete(desk, d, CHEAP, T0 + 1)
    for j in range(2):  # DEAR trusted (3 settled jobs), CHEAP still on probation (1)
        desk.set_view_offers([offer(DEAR, 10_000, 10)], T0 + 2)
        desk.submit(f"t{j}", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 2)
        [d] = desk.dispatch(T0 + 2, None, lacks)
        complete(desk, d, DEAR, T0 + 2)
    desk.set_view_offers(both, T0 + 3)
    desk.submit("c", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 3)
    [d] = desk.dispatch(T0 + 3, None, lambda peer_id: peer_id == peer_id_of(pub(DEAR)))
    assert d.peer_id == peer_id_of(pub(DEAR))   # trust comes first, against the tie-break too
    complete(desk, d, DEAR, T0 + 3)
    # OTHER (new, on probation like DEAR) lacks them but asks less: price before everything
    desk.set_view_offers([offer(OTHER, 10_000, 9), offer(DEAR, 10_000, 10)], T0 + 4)
    desk.submit("d", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 4)
    [d] = desk.dispatch(T0 + 4, None, lambda peer_id: peer_id == peer_id_of(pub(OTHER)))
    assert d.peer_id == peer_id_of(pub(OTHER))


def test_faults_of_jobs_in_flight_together_make_one_strike() -> None:
    # A trusted provider with many jobs in flight that restarts loses them all at once: one
    # strike (5 s back-off), not a ban.
    desk = gateway_desk(offer(CHEAP, 10_000, 10))
    cheap = peer_id_of(pub(CHEAP))
    for j in range(3):
        desk.submit(f"w{j}", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0)
        [d] = desk.dispatch(T0)
        complete(desk, d, CHEAP, T0)
    for j in range(5):
        desk.submit(f"r{j}", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 1)
    sent = desk.dispatch(T0 + 1)
    assert len(sent) == 5
    for d in sent:
        desk.on_lost(d.request_id, d.attempt, d.peer_id, "disconnected mid-job", T0 + 2)
    record = desk.reputation.get(cheap)
    assert record is not None and (record.faults, record.strikes, record.bans) == (5, 1, 0)
    assert desk.reputation.state(cheap, T0 + 2) == "backing_off"
    assert desk.count_by_state() == {"pending": 5, "completed": 3}
    assert desk.dispatch(T0 + 6.9) == [] and desk.next_deadline() == T0 + 7
    assert desk.reputation.state(cheap, T0 + 7) == "probation"
    assert len(desk.dispatch(T0 + 7)) == 1  # back, on probation: one at a time


def test_a_decline_after_accepting_is_a_fault_and_fails_a_request_only_for_its_input() -> None:
    desk = gateway_desk(offer(CHEAP, 10_000, 0), offer(DEAR, 10_000, 10))
    cheap, dear = peer_id_of(pub(CHEAP)), peer_id_of(pub(DEAR))
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    [d] = desk.dispatch(T0)
    assert d.peer_id == cheap
    desk.on_accepted("r1", d.attempt, T0)
    assert desk.on_declined_after_accept("r1", d.attempt, cheap, "backend_timeout", "slow", T0)
    status = desk.status("r1")
    assert status is not None and status.state == "pending"
    assert status.reason.startswith(f"provider {short(cheap)} accepted, then could not serve "
                                    f"it: backend_timeout: slow; nothing charged")
    [d] = desk.dispatch(T0)  # at once, to the other provider
    assert d.peer_id == dear
    assert desk.on_declined_after_accept("r1", d.attempt, dear, "backend_http_status", "400",
                                         T0 + 1)
    assert desk.status("r1").state == "pending"  # type: ignore[union-attr]
    # The same provider failing on it again: the input is the likely cause.
    [d] = desk.dispatch(T0 + 5)
    assert d.peer_id == cheap
    assert desk.on_declined_after_accept("r1", d.attempt, cheap, "backend_timeout", "slow",
                                         T0 + 5)
    status = desk.status("r1")
    assert status is not None and (status.state, status.attempts) == ("failed", 3)
    assert status.reason == f"provider {short(cheap)} could not serve it: backend_timeout: slow"
    assert desk.fault_counts == {"declined_after_accept": 2}


def short(peer_id: str) -> str:
    return f"{peer_id[:6]}…{peer_id[-6:]}"


def test_the_progress_deadline_is_short_and_separate_from_the_total() -> None:
    desk = gateway_desk(offer(CHEAP, 500, 10))
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    [d] = desk.dispatch(T0)
    # 100 tokens at 500 tokens/s: 5 s + 2 × 0.2 s after acceptance; the claim timeout is 30 s.
    assert d.progress_s == pytest.approx(5.4)
    assert d.claim_deadline == T0 + 30.0


@pytest.mark.parametrize("kwargs, words", [
    ({"max_price_nano": PRICE - 1}, "current price 0.100000000 > max_price 0.099999999"),
    ({"tokens": 0}, "tokens must be a whole number > 0"),
    ({"request_id": "x" * 129}, "request id must be at most 128 bytes"),
    ({"prompt": "p" * (64 * 1024 + 1)}, "prompt is 65537 bytes"),
    ({"tokens": 2_000_000}, "above max_tokens_per_minute"),
])
def test_gateway_refuses_bad_requests_with_a_reason(kwargs: dict[str, object], words: str) -> None:
    desk = gateway_desk()
    args: dict[str, object] = {"request_id": "r1", "user": "alice", "tokens": 10,
                               "max_price_nano": PRICE, "prompt": ""}
    args.update(kwargs)
    with pytest.raises(MarketError, match=words.replace(".", r"\.")):
        desk.submit(args["request_id"], args["user"], args["tokens"],  # type: ignore[arg-type]
                    args["max_price_nano"], price_nano=PRICE, now=T0,  # type: ignore[arg-type]
                    prompt=args["prompt"])  # type: ignore[arg-type]
    assert desk.status("r1") is None


def test_the_gateway_bounds_its_open_requests_and_their_prompt_bytes() -> None:
    desk = GatewayDesk(CONFIG, pub(GATEWAY), GatewaySettings(max_open_requests=3,
                                                             max_prompt_bytes=10))
    for i in range(3):
        desk.submit(f"r{i}", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0, prompt="ab")
    assert desk.prompt_bytes == 6
    with pytest.raises(MarketError, match="this gateway holds 3 open requests"):
        desk.submit("r3", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0)
    desk.on_failed("r0", 0, "x", "no", T0)  # not its live attempt: changes nothing
    assert desk.status("r0").state == "pending"  # type: ignore[union-attr]
    assert desk.dispatch(T0) == []  # no offers: nothing is sent
    desk.advance(T0 + CONFIG.request_expiry_s)  # all three expire: their prompts go
    assert desk.prompt_bytes == 0
    desk.submit("r3", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 120, prompt="é" * 4)
    with pytest.raises(MarketError, match="holds 8 bytes of prompts waiting \\(limit 10\\)"):
        desk.submit("r4", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 120, prompt="abc")
    assert desk.status("r4") is None and desk.prompt_bytes == 8


def test_the_gateway_keeps_the_newest_outputs_within_its_byte_budget() -> None:
    desk = GatewayDesk(CONFIG, pub(GATEWAY), GatewaySettings(max_output_bytes=10))
    desk.set_view_offers([offer(CHEAP, 10_000, 10)], T0)
    provider = ProviderDesk(pub(CHEAP), CONFIG)
    for rid, text in (("r1", "first!"), ("r2", "second")):
        desk.submit(rid, "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0, prompt="p")
        [dispatch] = desk.dispatch(T0)
        job = wire.sign(dispatch.job, GATEWAY)
        receipt = wire.sign(provider.receipt_for(job, 10, T0, T0 + 1, T0 + 1), CHEAP)
        desk.on_completed(rid, dispatch.attempt, receipt, text, T0 + 1)
    first, second = desk.status("r1"), desk.status("r2")
    assert first is not None and second is not None
    assert (second.output, second.reason) == ("second", "served 10 of 10 tokens")
    assert first.output is None and first.cost_nano == second.cost_nano == 1000
    assert first.reason == ("served 10 of 10 tokens; its output is no longer kept (this gateway "
                            "keeps the newest 10 bytes of outputs)")
    assert (desk.output_bytes, desk.prompt_bytes) == (6, 0)
    desk.advance(T0 + 1 + CONFIG.retention_s + 10)  # pruned: nothing is held any more
    assert (desk.status("r2"), desk.output_bytes) == (None, 0)


def test_the_gateway_keeps_the_newest_finished_requests_within_its_count() -> None:
    # Each finished request held costs ~2 KB for retention_s (an hour): a busy gateway's memory
    # grew by its rate times an hour (a soak: 65 requests/s, 2.07 KB each, linear).
    desk = GatewayDesk(CONFIG, pub(GATEWAY), GatewaySettings(max_finished_requests=2))
    desk.set_view_offers([offer(CHEAP, 10_000, 10)], T0)
    provider = ProviderDesk(pub(CHEAP), CONFIG)
    for i, rid in enumerate(("r1", "r2", "r3")):
        desk.submit(rid, "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + i, prompt="p")
        [dispatch] = desk.dispatch(T0 + i)
        job = wire.sign(dispatch.job, GATEWAY)
        receipt = wire.sign(provider.receipt_for(job, 10, T0 + i, T0 + i + 1, T0 + i + 1), CHEAP)
        desk.on_completed(rid, dispatch.attempt, receipt, "out", T0 + i + 1)
    desk.submit("r4", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 5)  # open: not counted
    assert [desk.status(r) is not None for r in ("r1", "r2", "r3", "r4")] == [False, True, True,
                                                                             True]
    assert desk.count_by_state() == {"completed": 2, "pending": 1}
    assert (desk.output_bytes, desk.book.counters["pruned"]) == (6, 1)
    desk.submit("r1", "alice", 10, 2 * PRICE, price_nano=PRICE, now=T0 + 6)  # its id is free
    desk.advance(T0 + 4 + CONFIG.retention_s)  # r2 and r3 go at their own time, once each
    assert desk.count_by_state() == {"pending": 2} and desk.output_bytes == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["submit", "dispatch", "complete", "decline", "lose",
                                           "fail", "wait"]),
                          st.integers(0, 40)), max_size=60),
       st.sampled_from([2, 100_000]))
def test_counting_requests_by_state_equals_counting_their_statuses(
        steps: list[tuple[str, int]], max_finished: int) -> None:
    """`count_by_state` (what /api/market and /metrics read) keeps its counts as requests move
    and are pruned, by their time or by the count of finished ones held; it always equals
    counting `statuses()`, which walks every record."""
    from collections import Counter

    config = MarketConfig(dynamic_pricing=False, target_response_s=2.0, claim_timeout_s=5.0,
                          request_expiry_s=20.0, retention_s=15.0)
    desk = GatewayDesk(config, pub(GATEWAY), GatewaySettings(
        full_backoff_s=0.0, lost_backoff_s=0.0, max_finished_requests=max_finished))
    desk.set_view_offers([offer(CHEAP, 100, 10)], T0)
    provider = ProviderDesk(pub(CHEAP), config)
    now, sent = T0, []
    for action, n in steps:
        if action == "submit":
            try:  # ids come back once their request is pruned
                desk.submit(f"r{n % 6}", "alice", 10 + n, 2 * PRICE, price_nano=PRICE, now=now)
            except MarketError:
                assert desk.status(f"r{n % 6}") is not None  # still held: the id is taken
        elif action == "dispatch":
            sent += desk.dispatch(now)
        elif action == "wait":
            now += n / 2
            desk.advance(now)
        elif sent:
            d = sent.pop(0)
            if action == "complete":
                job = wire.sign(d.job, GATEWAY)
                receipt = wire.sign(provider.receipt_for(job, d.job.tokens, now, now, now), CHEAP)
                desk.on_completed(d.request_id, d.attempt, receipt, "x" * n, now)
            elif action == "decline":
                desk.on_declined(d.request_id, d.attempt, d.peer_id, "full", "", now)
            elif action == "lose":
                desk.on_lost(d.request_id, d.attempt, d.peer_id, "died", now)
            else:
                desk.on_failed(d.request_id, d.attempt, d.peer_id, "backend failed", now)
        counts = desk.count_by_state()
        statuses = desk.statuses()
        assert counts == dict(Counter(s.state for s in statuses))
        assert sum(n for state, n in counts.items() if state not in ("pending", "claimed")
                   ) <= max_finished
        # What the desk keeps beside the book goes with the book's records, prompts with the
        # request's end, at once (no periodic walk over every record does it).
        assert set(desk._extra) <= {s.request_id for s in statuses}
        assert desk.output_bytes == sum(desk._outputs.values())
        assert desk.prompt_bytes == sum(len(e.prompt.encode()) for e in desk._extra.values())
        assert all(not desk._extra[s.request_id].prompt for s in statuses
                   if s.state not in ("pending", "claimed") and s.request_id in desk._extra)
    desk.advance(now + 100)
    assert desk.count_by_state() == {} and desk.statuses() == []
    assert (desk._extra, desk._outputs, desk.output_bytes, desk.prompt_bytes) == ({}, {}, 0, 0)


# --- the view's offers, kept while they cannot change --------------------------------------------

VIEW_CONFIG = MarketConfig(capacity_timeout_s=60.0)
SELLERS = [make_key(i) for i in range(40, 46)]


def announced(key: object, at_ms: int, seq: int, tps: int, min_price: int = 10) -> Announcement:
    message = wire.decode_unchecked_time(wire.encode(
        Announcement(pub(key), at_ms, seq, tps, min_price, 0, 0), key))  # type: ignore[arg-type]
    assert isinstance(message, Announcement)
    return message


def test_view_offers_are_kept_until_the_view_or_an_expiry_changes_them() -> None:
    view, cache = MarketView(VIEW_CONFIG), ViewOffers()
    t0 = int(T0 * 1000)
    a, b = SELLERS[0], SELLERS[1]
    view.merge_message(announced(a, t0 + 250, 1, 100))
    view.merge_message(announced(b, t0 + 700, 1, 200, 5))
    first = cache.at(view, T0 + 1)
    assert first == tuple(view.offers_at(T0 + 1)) and len(first) == 2
    assert view.offers_change_after_ms(t0 + 1000) == t0 + 250 + 60_000  # a expires first
    for dt in (1.5, 10, 59.0, 60.249):  # same version, before a's expiry: the kept tuple
        assert cache.at(view, T0 + dt) is first
    assert (cache.hits, cache.misses) == (4, 1)
    # a's offer expires at issued_at + 60 s, in the middle of a tick: gone at that very ms
    # (a cache keyed by (version, tick) would still hand it out until the tick ends)
    assert [o.signer for o in cache.at(view, T0 + 60.25)] == [pub(b)]
    assert cache.misses == 2
    # a merge changes the version: computed again, even at an instant answered before
    view.merge_message(announced(a, t0 + 60_300, 2, 300, 1))
    assert cache.at(view, T0 + 60.3) == tuple(view.offers_at(T0 + 60.3))
    assert [o.tokens_per_second for o in cache.at(view, T0 + 60.3)] == [300, 200]
    assert cache.misses == 3
    # an instant before the kept window (a clock stepping back) is computed, not guessed
    assert cache.at(view, T0 + 60.299) == tuple(view.offers_at(T0 + 60.299))
    assert cache.misses == 4


def test_view_offers_see_an_announcement_issued_later_start_and_take_over() -> None:
    view, cache = MarketView(VIEW_CONFIG), ViewOffers()
    t0 = int(T0 * 1000)
    a, c = SELLERS[2], SELLERS[3]
    view.merge_message(announced(a, t0, 1, 100))
    # held already, issued 10 s ahead of the reader's clock (a peer's clock may run ahead)
    view.merge_message(announced(a, t0 + 10_000, 2, 0))       # a withdraws then
    view.merge_message(announced(c, t0 + 5_000, 1, 700, 3))   # c starts offering then
    assert [o.signer for o in cache.at(view, T0 + 1)] == [pub(a)]
    assert view.offers_change_after_ms(t0 + 1000) == t0 + 5_000
    assert cache.at(view, T0 + 4.999) == (view.offers_at(T0 + 4.999)[0],)
    assert [o.signer for o in cache.at(view, T0 + 5)] == [pub(c), pub(a)]
    assert [o.signer for o in cache.at(view, T0 + 10)] == [pub(c)]
    assert view.offers_change_after_ms(t0 + 10_000) == t0 + 65_000
    assert cache.at(view, T0 + 65) == ()
    # a's withdrawal (zero capacity) counts until t0 + 70 s: a boundary, if not for the offers
    assert view.offers_change_after_ms(t0 + 65_000) == t0 + 70_000
    assert view.offers_change_after_ms(t0 + 70_000) is None
    assert cache.at(view, T0 + 70) is cache.at(view, T0 + 100_000) == ()  # nothing counts again


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(
    st.sampled_from(["merge", "read"]),
    st.integers(0, len(SELLERS) - 1),                  # signer
    st.integers(-2_000, 130_000),                      # issued at / read at, ms after T0
    st.integers(0, 3), st.integers(0, 5)), max_size=40))
def test_view_offers_always_equal_the_views_answer(steps: list[tuple[str, int, int, int, int]]
                                                   ) -> None:
    view, cache = MarketView(VIEW_CONFIG), ViewOffers()
    t0 = int(T0 * 1000)
    now_ms = t0
    seqs = [0] * len(SELLERS)
    for action, who, at, tps, price in steps:
        if action == "merge":
            seqs[who] += 1 if at % 3 else -1  # now and then a lower seq: history out of order
            view.merge_message(announced(SELLERS[who], t0 + at, seqs[who] + 10, 100 * tps, price))
        else:
            # reads mostly move forward, at ms resolution, sometimes right on a boundary
            now_ms = max(now_ms, t0 + at) if at % 7 else t0 + at
            until = view.offers_change_after_ms(now_ms)
            for t in (now_ms, now_ms + 1, until - 1 if until else now_ms + 2,
                      until if until else now_ms + 3):
                assert cache.at(view, t / 1000) == tuple(view.offers_at(t / 1000))


def test_the_offer_cache_benchmark_runs() -> None:
    from neuroshard_p2p.bench.jobs import offer_cache

    [(signers, read, miss, hit)] = offer_cache((3,), repeat=2)
    assert signers == 3 and min(read, miss, hit) > 0


def test_job_protocol_id_carries_the_network() -> None:
    testnet = builtin("testnet").network_id
    assert job_protocol(testnet) == f"/neuroshard/{testnet}/job/2.0.0"
    assert job_protocol("mainnet-0123456789abcdef") == "/neuroshard/mainnet-0123456789abcdef/job/2.0.0"
    from neuroshard_p2p.node.job_service import JobSettings

    assert JobSettings().protocol == f"/neuroshard/{testnet}/job/2.0.0"


# =================================================================================================
# Real nodes on 127.0.0.1: libp2p job streams, SQLite ledgers.

from contextlib import asynccontextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import AsyncIterator  # noqa: E402

import trio  # noqa: E402

from neuroshard_p2p.ledger import Ledger  # noqa: E402
from neuroshard_p2p.ledger.store import ledger_path  # noqa: E402
from neuroshard_p2p.daemon import Daemon  # noqa: E402
from neuroshard_p2p.node.backends import OpenAIBackend  # noqa: E402
from neuroshard_p2p.node.host import Node  # noqa: E402
from neuroshard_p2p.node.job_service import JobService  # noqa: E402
from neuroshard_p2p.node.settings import NodeSettings  # noqa: E402
from tests.node_harness import simnet_charter  # noqa: E402
from tests.openai_compat_server import start_openai_server  # noqa: E402
from tests.waiting import eventually  # noqa: E402

NET_CONFIG = MarketConfig(dynamic_pricing=False, target_response_s=2.0, claim_timeout_s=10.0,
                          request_expiry_s=60.0)


@asynccontextmanager
async def job_node(data_dir: Path, key_index: int, *, capacity: int = 0, min_price: float = 0.0,
                   **node_settings: object) -> AsyncIterator[tuple[Node, JobService]]:
    """A real node on 127.0.0.1 run by a daemon (api off), which opens the ledger in its data dir
    for the node's job service (`node.jobs`)."""
    node_settings.setdefault("charter", simnet_charter(NET_CONFIG))
    settings = NodeSettings(data_dir=data_dir, listen=("/ip4/127.0.0.1/tcp/0",), api="off",
                            capacity=capacity, min_price=min_price, announce_interval_s=5.0,
                            stream_timeout_s=3.0, **node_settings)  # type: ignore[arg-type]
    async with Daemon(settings, private_key=make_key(key_index)) as daemon:
        assert daemon.node is not None
        yield daemon.node, daemon.node.jobs


async def wait_for_offers(node: Node, *providers: Node) -> None:
    """Until `node`'s merged view has an offer from each provider."""
    wanted = {p.engine.signer for p in providers}
    await eventually(lambda: wanted <= {o.signer for o in node.engine.view.offers_at(node.now())},
                     10, f"an offer from each of {len(wanted)} providers in the view")


async def finished(jobs: JobService, request_id: str, timeout: float = 15.0):  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        return await jobs.wait_finished(request_id)


def ledger_totals(data_dir: Path) -> tuple[int, int, int, int]:
    """(settlements, tokens, paid, earned) of a node's ledger, read from its file; verify passes."""
    with Ledger.open(ledger_path(data_dir)) as ledger:
        assert ledger.verify().ok
        totals = ledger.totals()
        return totals.settlements, totals.tokens, totals.paid, totals.earned


async def test_request_at_gateway_is_served_by_provider_at_the_locked_price(tmp_path: Path) -> None:
    async with job_node(tmp_path / "a", 21) as (a, gateway), \
            job_node(tmp_path / "b", 22, capacity=1000, min_price=0.01) as (b, provider):
        await a.connect(b.addrs[0])
        await wait_for_offers(a, b)
        status = gateway.submit(500, 2 * PRICE, prompt="secret prompt 7f3a", user="alice")
        assert (status.state, status.locked_price_nano) == ("pending", PRICE)
        done = await finished(gateway, status.request_id)
        assert (done.state, done.provider, done.tokens_served, done.cost_nano, done.attempts) == (
            "completed", b.peer_id, 500, 500 * PRICE // 1_000_000, 1)
        assert done.output is not None and len(done.output.split()) == 500
        assert provider.counters.jobs_served == 1 and gateway.counters.receipts_settled == 1
        # 500 tokens at 1000/s: the provider's 0.5 s of serving lies between the gateway opening
        # the stream and the result arriving (how it splits around the accept frame depends on
        # when the gateway gets to read that frame)
        c = gateway.counters
        assert c.timed_jobs == 1 and c.answer_wait_s + c.result_wait_s >= 0.5
        # The prompt travelled on the job stream only: no announcement anyone holds carries it.
        for node in (a, b):
            assert all(b"secret prompt" not in m.wire for m in node.engine.view.all_messages())
        # A request queued through the engine (Node.submit_request, as the CLI does) is routed too.
        queued = a.submit_request(200, 2 * PRICE, prompt="queued")
        done = await finished(gateway, queued.request_id)
        assert (done.state, done.provider, done.cost_nano) == ("completed", b.peer_id, 20_000)
        # Both ledgers hold the settlements (the gateway's payments, the provider's earnings).
        await eventually(lambda: provider.counters.earnings_recorded >= 2, 5,
                         "the provider recorded both earnings")
    # Both nodes closed their ledgers as they stopped (SQLite removes the WAL file then).
    assert not (tmp_path / "a" / "ledger.sqlite3-wal").exists()
    assert not (tmp_path / "b" / "ledger.sqlite3-wal").exists()
    assert ledger_totals(tmp_path / "a") == (2, 700, 70_000, 66_500)
    assert ledger_totals(tmp_path / "b") == (2, 700, 70_000, 66_500)


async def test_without_an_offer_the_status_says_why_and_the_gateway_announces_demand(
        tmp_path: Path) -> None:
    async with job_node(tmp_path / "a", 23) as (a, gateway), \
            job_node(tmp_path / "b", 24, capacity=1000, min_price=0.5) as (b, _):
        await a.connect(b.addrs[0])
        await wait_for_offers(a, b)
        status = gateway.submit(700, 2 * PRICE)
        await eventually(lambda: b.engine.view.demand_at(b.now()) == 700
                         and "no offer at or below" in gateway.status(status.request_id).reason,  # type: ignore[union-attr]
                         10, "b counts the demand and the request says why it waits")
        now = gateway.status(status.request_id)
        assert now is not None and now.state == "pending"
        assert now.reason == "no offer at or below your locked price 0.10"


async def test_a_job_never_reaches_a_provider_of_another_network(tmp_path: Path) -> None:
    net_a, net_b = simnet_charter(NET_CONFIG, name="net-a"), simnet_charter(NET_CONFIG, name="net-b")
    async with job_node(tmp_path / "a", 25, charter=net_a) as (a, gateway), \
            job_node(tmp_path / "b", 26, capacity=1000, min_price=0.01,
                     charter=net_b) as (b, provider):
        assert (gateway.settings.protocol, provider.settings.protocol) == (
            f"/neuroshard/{net_a.network_id}/job/2.0.0", f"/neuroshard/{net_b.network_id}/job/2.0.0")
        await a.connect(b.addrs[0])
        # The views of two networks never mix (topic and sync carry the network id); hand the
        # gateway b's offer anyway, as a confused or hostile relay might.
        offer = b.engine.view.current(b.engine.signer)
        assert offer is not None
        assert a.engine.on_gossip(offer.wire, a.now(), from_peer=b.peer_id).accepted
        await wait_for_offers(a, b)
        status = gateway.submit(100, 2 * PRICE)
        await eventually(lambda: gateway.gateway.counts["lost"] >= 1, 10,
                         "the gateway counts the job lost")
        now = gateway.status(status.request_id)
        assert now is not None and (now.state, now.attempts) == ("pending", 1)
        assert f"provider {b.peer_id[:6]}…{b.peer_id[-6:]} was unreachable" in now.reason
        assert provider.counters.jobs_served == 0
        assert provider.provider.counts == dict.fromkeys(provider.provider.counts, 0)


async def test_two_gateways_flooding_one_small_provider(tmp_path: Path) -> None:
    # The small provider: 100 tokens/s × target 2 s = 200 tokens in flight (two 100-token jobs).
    async with job_node(tmp_path / "g1", 31) as (g1, gateway1), \
            job_node(tmp_path / "g2", 32) as (g2, gateway2), \
            job_node(tmp_path / "small", 33, capacity=100, min_price=0.01) as (small, small_jobs):
        for node in (g1, g2):
            await node.connect(small.addrs[0])
            await wait_for_offers(node, small)
        # A provider new to a gateway is on probation there (one job at a time): three small
        # jobs settled at each gateway make it trusted, so both then fill the room they see.
        warm = [(gateway, gateway.submit(10, 2 * PRICE).request_id)
                for gateway in (gateway1, gateway2) for _ in range(3)]
        assert [(await finished(gateway, rid)).state for gateway, rid in warm] == [
            "completed"] * 6
        assert gateway1.gateway.reputation.state(small.peer_id, g1.now()) == "trusted"
        async with job_node(tmp_path / "big", 34, capacity=5000, min_price=0.05) as (big, _):
            for node in (g1, g2, small):
                await node.connect(big.addrs[0])
            for node in (g1, g2):
                await wait_for_offers(node, small, big)
            ids = [(gateway, gateway.submit(100, 2 * PRICE).request_id)
                   for gateway in (gateway1, gateway2) for _ in range(4)]
            results = [await finished(gateway, rid) for gateway, rid in ids]
    capacity = 200
    assert small_jobs.provider.peak_in_flight_tokens <= capacity
    assert all(r.state == "completed" and r.tokens_served == 100 and r.cost_nano == 10_000
               for r in results)
    by_provider = {p: sum(r.provider == p for r in results) for p in (small.peer_id, big.peer_id)}
    assert by_provider[small.peer_id] >= 2 and sum(by_provider.values()) == 8
    declines = gateway1.gateway.decline_counts.get("full", 0) + \
        gateway2.gateway.decline_counts.get("full", 0)
    assert declines >= 1 and declines == small_jobs.provider.counts["full"]
    # A decline is no fault: nothing counts against the small provider.
    assert gateway1.gateway.reputation.faults == gateway2.gateway.reputation.faults == {}
    # Each declined job went to the next offer and completed there, charged once.
    for name, gateway in (("g1", gateway1), ("g2", gateway2)):
        assert ledger_totals(tmp_path / name)[:3] == (7, 430, 43_000)


async def test_provider_killed_mid_job_costs_nothing_and_the_request_completes_elsewhere(
        tmp_path: Path) -> None:
    async with job_node(tmp_path / "a", 41) as (a, gateway), \
            job_node(tmp_path / "c", 43, capacity=2000, min_price=0.05) as (c, spare):
        async with trio.open_nursery() as doomed:
            async def run_doomed(task_status: trio.TaskStatus[tuple[Node, JobService]]) -> None:
                # Slow and cheap: a 300-token job takes 3 s, so it is cut off mid-job.
                async with job_node(tmp_path / "b", 42, capacity=100, min_price=0.01) as pair:
                    task_status.started(pair)
                    await trio.sleep_forever()

            b, victim = await doomed.start(run_doomed)
            await a.connect(b.addrs[0])
            await a.connect(c.addrs[0])
            await wait_for_offers(a, b, c)
            status = gateway.submit(150, 2 * PRICE)
            await eventually(lambda: victim.provider.jobs_in_flight > 0, 5,
                             "the doomed provider is serving the job")
            doomed.cancel_scope.cancel()  # hard stop: no withdrawal, connections dropped
        assert not (tmp_path / "b" / "ledger.sqlite3-wal").exists()  # closed even so
        done = await finished(gateway, status.request_id)
        assert (done.state, done.provider, done.tokens_served, done.cost_nano, done.attempts) == (
            "completed", c.peer_id, 150, 15_000, 2)
        assert gateway.gateway.counts["lost"] == 1
        assert victim.counters.jobs_served == 0
    # One settlement, with the spare provider; the dead attempt left nothing in any ledger.
    assert ledger_totals(tmp_path / "a") == (1, 150, 15_000, 14_250)
    with Ledger.open(ledger_path(tmp_path / "a")) as ledger:
        [record] = ledger.recent()
        assert record.provider == c.engine.signer
    assert ledger_totals(tmp_path / "b") == (0, 0, 0, 0)


async def test_provider_stops_serving_when_the_gateway_goes_away(tmp_path: Path) -> None:
    async with job_node(tmp_path / "b", 45, capacity=100, min_price=0.01) as (b, provider):
        async with trio.open_nursery() as doomed:
            async def run_gateway(task_status: trio.TaskStatus[tuple[Node, JobService]]) -> None:
                async with job_node(tmp_path / "a", 44) as pair:
                    task_status.started(pair)
                    await trio.sleep_forever()

            a, gateway = await doomed.start(run_gateway)
            await a.connect(b.addrs[0])
            await wait_for_offers(a, b)
            gateway.submit(150, 2 * PRICE)  # 1.5 s of serving at 100 tokens/s
            await eventually(lambda: provider.provider.jobs_in_flight > 0, 5,
                             "the provider is serving the job")
            doomed.cancel_scope.cancel()  # the gateway stops (hard) mid-job
        # The gateway resets its job stream as it goes; the provider stops serving (before the
        # 1.5 s the job would have taken: abandoned, not served), frees the capacity and issues
        # no receipt.
        await eventually(lambda: provider.counters.jobs_abandoned > 0, 10,
                         "the provider abandons the job")
        assert provider.provider.jobs_in_flight == provider.provider.in_flight_tokens == 0
        assert provider.counters.jobs_served == 0 and provider.counters.earnings_recorded == 0
        assert provider.counters.jobs_abandoned == 1
    assert ledger_totals(tmp_path / "b") == (0, 0, 0, 0)


async def test_openai_backend_serves_jobs_and_its_errors_fail_them(tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        server = await start_openai_server(nursery)
        async with job_node(tmp_path / "a", 51) as (a, gateway), \
                job_node(tmp_path / "b", 52, capacity=1000, min_price=0.01, backend="openai",
                         backend_url=server.url, backend_model="tiny-model") as (b, provider):
            await a.connect(b.addrs[0])
            await wait_for_offers(a, b)
            ok = gateway.submit(50, 2 * PRICE, prompt="one two three")
            bad = gateway.submit(50, 2 * PRICE, prompt="!error please")
            served = await finished(gateway, ok.request_id)
            failed = await finished(gateway, bad.request_id)
        nursery.cancel_scope.cancel()
    assert isinstance(provider.backend, OpenAIBackend)
    assert server.requests[0]["model"] == "tiny-model"
    # Tokens come from the server's usage (3 words), not from the 50 requested.
    assert (served.state, served.tokens_served, served.cost_nano, served.output) == (
        "completed", 3, 3 * PRICE // 1_000_000, "one two three")
    # The failing prompt is tried again once (a provider fault, for all the gateway knows), then
    # fails for its own reason: the same provider failed on it twice.
    assert failed.state == "failed" and failed.cost_nano is None and failed.attempts == 2
    assert "backend_http_status" in failed.reason
    assert "HTTP 500: model crashed: out of memory" in failed.reason
    assert provider.counters.backend_errors == 2
    assert gateway.gateway.fault_counts == {"declined_after_accept": 1}
    assert [r["max_tokens"] for r in server.requests] == [50, 50, 50]
    assert ledger_totals(tmp_path / "a") == (1, 3, 300, 285)


def test_while_this_nodes_clock_is_wrong_no_provider_failure_is_held_against_it() -> None:
    """A gateway whose clock is 45 s behind signs jobs whose deadline its provider finds past:
    accepted, then declined `backend_deadline` (so it went on two real nodes in a hand run, the
    decline charged as `declined_after_accept`). While its clock watch warns, the node's driver
    tells the desk why it cannot blame anyone (`not_holding`): the provider is set aside, not
    faulted, and the request says why."""
    desk = gateway_desk(offer(CHEAP, 10_000, 0), offer(DEAR, 10_000, 10))
    cheap = peer_id_of(pub(CHEAP))
    desk.not_holding = "this node's clock is wrong: behind, +45 s"
    desk.submit("r1", "alice", 100, 2 * PRICE, price_nano=PRICE, now=T0)
    [d] = desk.dispatch(T0)
    desk.on_accepted("r1", d.attempt, T0)
    assert desk.on_declined_after_accept("r1", d.attempt, cheap, "backend_deadline",
                                         "0.00 s left", T0)
    status = desk.status("r1")
    assert status is not None and status.state == "pending"
    assert status.reason == (f"provider {short(cheap)} accepted, then could not serve it: "
                             f"backend_deadline: 0.00 s left; not held against it (this node's "
                             f"clock is wrong: behind, +45 s); nothing charged; waiting for "
                             f"another offer")
    assert (desk.fault_counts, desk.faults_not_held, desk.counts["lost"]) == ({}, 1, 1)
    assert desk.reputation.on_probation(cheap)  # no fault recorded
    [d] = desk.dispatch(T0 + 1)  # the cheap one is set aside for lost_backoff_s
    assert d.peer_id == peer_id_of(pub(DEAR))
    desk.not_holding = None  # the clock agrees again: a failure is the provider's once more
    assert desk.on_lost("r1", d.attempt, d.peer_id, "disconnected mid-job", T0 + 2)
    assert desk.fault_counts == {"dropped": 1}
