"""The sans-IO peer engine: announcing, receiving, anti-entropy and the price, driven with bytes
and fake times (no network, no clock)."""

from __future__ import annotations

import hashlib

import coincurve
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.errors import MarketError
from neuroshard_p2p.node.engine import PeerEngine, SyncCounts, Verdict
from neuroshard_p2p.wire import Announcement, WireError, decode_unchecked_time, encode
from neuroshard_p2p.wire.frames import encode_sync
from neuroshard_p2p.wire.messages import SyncResponse
from tests.conftest import assert_sans_io, make_key

T0 = 1_700_000_000.0  # a whole second, so ticks start at T0 + k
CONFIG = MarketConfig(capacity_timeout_s=60.0)


def engine(i: int, **kwargs: object) -> PeerEngine:
    return PeerEngine(CONFIG, make_key(i), **kwargs)  # type: ignore[arg-type]


def announcement_of(data: bytes) -> Announcement:
    message = decode_unchecked_time(data)
    assert isinstance(message, Announcement)
    return message


def deliver(data: bytes, to: PeerEngine, now: float, author: PeerEngine) -> str:
    return to.on_gossip(data, now, from_peer=author.peer_id).outcome


# -- announcing ---------------------------------------------------------------------------------

def test_a_node_with_capacity_announces_once_then_keeps_alive_every_interval() -> None:
    a = engine(1, tokens_per_second=1000, min_price_nano=5, announce_interval_s=20.0)
    first = a.poll_announcements(T0)
    assert len(first) == 1
    message = announcement_of(first[0])
    assert (message.tokens_per_second, message.min_price_nano, message.pending_tokens,
            message.pending_requests) == (1000, 5, 0, 0)
    assert message.issued_at_ms == int(T0 * 1000) and message.seq == int(T0 * 1000)
    assert a.poll_announcements(T0 + 0.5) == []
    # The keep-alive comes up to 20 % early, by a fraction drawn from the announcement's bytes.
    fraction = int.from_bytes(hashlib.sha256(first[0]).digest()[:4], "big") / 2**32
    due = T0 + 20.0 * (1 - 0.2 * fraction)
    assert T0 + 16.0 < due <= T0 + 20.0
    assert a.poll_announcements(due - 0.01) == []
    assert a.next_deadline() == due
    again = a.poll_announcements(due)
    assert len(again) == 1 and announcement_of(again[0]).seq == int(due * 1000)


def test_keep_alives_of_nodes_that_changed_together_spread_out() -> None:
    nodes = [engine(i, tokens_per_second=100, announce_interval_s=20.0) for i in range(1, 11)]
    for node in nodes:
        assert len(node.poll_announcements(T0)) == 1
    deadlines = {node.next_deadline() for node in nodes}
    assert len(deadlines) == 10  # ten different instants, not one burst
    assert all(T0 + 16.0 < d <= T0 + 20.0 for d in deadlines)
    assert max(deadlines) - min(deadlines) > 1.0


def test_reannounce_repeats_an_unchanged_state_at_the_next_tick_only() -> None:
    a = engine(1, tokens_per_second=1000, announce_interval_s=20.0)
    [first] = a.poll_announcements(T0)
    a.reannounce()
    assert a.wants_poll
    assert a.poll_announcements(T0 + 0.5) == []          # once per tick still holds
    assert a.next_deadline() == T0 + 1.0
    [again] = a.poll_announcements(T0 + 1.0)
    assert announcement_of(again).tokens_per_second == 1000
    assert announcement_of(again).seq > announcement_of(first).seq
    assert a.poll_announcements(T0 + 2.0) == []          # one repeat, not a stream of them


def test_reannounce_of_a_silent_node_says_nothing() -> None:
    a = engine(1)
    a.reannounce()
    assert a.poll_announcements(T0) == [] and a.next_deadline() is None


def test_a_node_with_nothing_to_offer_or_buy_stays_silent() -> None:
    a = engine(1)
    assert a.poll_announcements(T0) == []
    assert a.poll_announcements(T0 + 100) == []
    assert a.next_deadline() is None
    assert a.withdraw(T0 + 101) is None


def test_changes_within_a_tick_coalesce_into_one_announcement_at_the_next_tick() -> None:
    a = engine(1, tokens_per_second=100)
    assert len(a.poll_announcements(T0 + 0.1)) == 1
    a.set_offer(200, 0)
    a.set_offer(300, 7)
    assert a.wants_poll
    assert a.poll_announcements(T0 + 0.5) == []  # same tick as the last announcement
    assert a.next_deadline() == T0 + 1.0
    [data] = a.poll_announcements(T0 + 1.0)
    assert (announcement_of(data).tokens_per_second, announcement_of(data).min_price_nano) == (300, 7)
    # back to what was announced within the tick: nothing to say
    a.set_offer(100, 0)
    a.set_offer(300, 7)
    assert a.poll_announcements(T0 + 2.0) == []


def test_withdrawing_the_offer_announces_zeros_once_then_silence() -> None:
    a = engine(1, tokens_per_second=100)
    a.poll_announcements(T0)
    a.withdraw_offer()
    [data] = a.poll_announcements(T0 + 1)
    assert announcement_of(data).tokens_per_second == 0
    assert a.poll_announcements(T0 + 60) == []
    assert a.next_deadline() is None


def test_seq_grows_across_restarts_and_past_a_previous_run_heard_from_peers() -> None:
    a = engine(1, tokens_per_second=100)
    [old] = a.poll_announcements(T0)
    # the same key restarted 5 s later: seq from the clock is already above the old one
    restarted = engine(1, tokens_per_second=100)
    [new] = restarted.poll_announcements(T0 + 5)
    assert announcement_of(new).seq > announcement_of(old).seq
    # a run with a clock behind the old run hears its old announcement through sync/gossip
    behind = engine(1, tokens_per_second=50)
    frames = [encode_sync(SyncResponse((old,)))]
    counts = behind.on_sync_response(frames[0], T0 - 10)
    assert counts.accepted == 1
    [fresh] = behind.poll_announcements(T0 - 9)
    assert announcement_of(fresh).seq == announcement_of(old).seq + 1
    assert announcement_of(fresh).tokens_per_second == 50


def test_queued_requests_raise_demand_until_taken_or_expired() -> None:
    config = CONFIG.replace(request_expiry_s=30.0)
    a = PeerEngine(config, make_key(1))
    r1 = a.submit_request(5000, 10**8, T0)
    a.submit_request(3000, 10**8, T0 + 0.2)
    [data] = a.poll_announcements(T0 + 0.3)
    assert (announcement_of(data).pending_tokens, announcement_of(data).pending_requests) == (8000, 2)
    assert a.take_request(r1.request_id) == r1
    [data] = a.poll_announcements(T0 + 1)
    assert announcement_of(data).pending_tokens == 3000
    keep_alive = a.next_deadline()  # the keep-alive (16-20 s after T0 + 1) comes before the expiry
    assert keep_alive is not None and T0 + 17.0 < keep_alive <= T0 + 21.0
    [data] = a.poll_announcements(T0 + 30.2)  # the second request expired
    assert announcement_of(data).pending_tokens == 0
    with pytest.raises(MarketError):
        a.submit_request(0, 10**8, T0)
    with pytest.raises(MarketError):
        a.submit_request(10, 0, T0)


def test_offer_is_checked_against_the_market_limits() -> None:
    a = engine(1)
    with pytest.raises(MarketError, match="max_node_tokens_per_s"):
        a.set_offer(CONFIG.max_node_tokens_per_s + 1, 0)
    with pytest.raises(MarketError):
        a.set_offer(-1, 0)


# -- receiving ----------------------------------------------------------------------------------

def test_peers_that_heard_the_same_announcements_report_the_same_market() -> None:
    a, b, c = engine(1, tokens_per_second=1000), engine(2, tokens_per_second=500), engine(3)
    c.submit_request(60_000, 10**9, T0)
    published = {e: e.poll_announcements(T0)[0] for e in (a, b, c)}
    for receiver in (a, b, c):
        for author, data in published.items():
            if author is not receiver:
                assert deliver(data, receiver, T0 + 0.05, author) == "accepted"
    t = T0 + 10
    snapshots = [e.stats(t) for e in (a, b, c)]
    assert snapshots[0] == snapshots[1] == snapshots[2]
    assert snapshots[0].supply_tokens_per_sec == 1500
    assert snapshots[0].demand_tokens_waiting == 60_000
    assert snapshots[0].available_nodes == 2
    assert a.view.digest() == b.view.digest() == c.view.digest()
    tick = a.tick_of(t)
    assert a.tick_price(tick) == b.tick_price(tick) == c.tick_price(tick)


def test_hostile_gossip_is_rejected_or_ignored_with_a_reason_and_never_counts() -> None:
    honest, victim, hostile = engine(1, tokens_per_second=1000), engine(2), engine(3)
    [data] = honest.poll_announcements(T0)
    assert deliver(data, victim, T0, honest) == "accepted"
    before = victim.stats(T0 + 5)
    # replay of the same bytes
    assert victim.on_gossip(data, T0 + 1, from_peer=honest.peer_id).reason == "duplicate"
    # someone else's announcement relayed as if authored by the hostile peer
    other = engine(4, tokens_per_second=50_000)
    [theirs] = other.poll_announcements(T0)
    assert victim.on_gossip(theirs, T0, from_peer=hostile.peer_id).reason == "wrong_signer"
    # forged: the honest node's content signed by the hostile key, under the honest signer
    forged = bytearray(data)
    forged[-1] ^= 1
    assert victim.on_gossip(bytes(forged), T0, from_peer=honest.peer_id).reason == "bad_signature"
    # stale: signed long ago
    stale = encode(Announcement(hostile.signer, int((T0 - 400) * 1000), 1, 1000, 0, 0, 0),
                   hostile.private_key)
    verdict = victim.on_gossip(stale, T0, from_peer=hostile.peer_id)
    assert (verdict.outcome, verdict.reason) == ("ignored", "stale")
    # oversize and garbage
    assert victim.on_gossip(b"\x00" * 100_000, T0, from_peer=hostile.peer_id).reason == "oversize"
    assert victim.on_gossip(b"\xc1garbage", T0, from_peer=hostile.peer_id).outcome == "rejected"
    # implausible capacity
    too_much = Announcement(hostile.signer, int(T0 * 1000), 5, CONFIG.max_node_tokens_per_s + 1,
                            0, 0, 0)
    try:
        encoded = encode(too_much, hostile.private_key)
    except WireError:
        encoded = None
    if encoded is not None:
        assert victim.on_gossip(encoded, T0, from_peer=hostile.peer_id).reason == "implausible"
    assert victim.stats(T0 + 5) == before
    counts = victim.gossip_counts
    assert counts[("accepted", "accepted")] == 1
    assert counts[("ignored", "duplicate")] == 1
    assert counts[("rejected", "wrong_signer")] == 1
    assert counts[("rejected", "bad_signature")] == 1
    assert counts[("ignored", "stale")] == 1


def test_a_verdict_is_an_immutable_value() -> None:
    a, b = engine(1, tokens_per_second=1000), engine(2)
    [data] = a.poll_announcements(T0)
    accepted = b.on_gossip(data, T0, from_peer=a.peer_id)
    again = b.on_gossip(data, T0, from_peer=a.peer_id)
    assert (accepted.outcome, accepted.reason, accepted.detail, accepted.accepted) == \
        ("accepted", "accepted", "", True)
    assert accepted.message == announcement_of(data)
    assert (again.outcome, again.reason, again.message, again.accepted) == \
        ("ignored", "duplicate", None, False)
    assert again.detail.endswith("already seen")
    assert accepted == Verdict("accepted", "accepted", accepted.message)
    assert hash(accepted) == hash(Verdict("accepted", "accepted", accepted.message))
    plain = ("accepted", "accepted", accepted.message, "")
    assert accepted != again and accepted != plain and plain != accepted
    assert not accepted == plain and not plain == accepted
    assert repr(Verdict("ignored", "stale", None, "old")) == \
        "Verdict(outcome='ignored', reason='stale', message=None, detail='old')"
    with pytest.raises(AttributeError):
        accepted.outcome = "rejected"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        accepted.extra = 1  # type: ignore[attr-defined]


# The refusals a gossiped announcement can get, with their action: protocols/market-v1.md §6.1
# (W1-W13) and §6.2 (V1-V8). on_gossip turns a crash into ("rejected", "internal_error"), which is
# not among them.
GOSSIP_REFUSALS = {
    "oversize": "rejected", "malformed": "rejected", "bad_signature": "rejected",
    "non_canonical": "rejected", "version": "rejected", "kind": "rejected",
    "bad_field": "rejected", "stale": "ignored", "future": "rejected", "duplicate": "ignored",
    "wrong_signer": "rejected", "implausible": "rejected", "seq_regression": "ignored",
    "rate_limited": "rejected",
}


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_gossip_of_any_bytes_never_raises(data: bytes) -> None:
    victim = engine(2)
    verdict = victim.on_gossip(data, T0, from_peer=engine(3).peer_id)
    assert verdict.reason != "internal_error", verdict.detail  # a crash inside the engine
    assert GOSSIP_REFUSALS.get(verdict.reason) == verdict.outcome, verdict


def test_a_silent_node_stops_counting_at_issued_at_plus_capacity_timeout() -> None:
    a, b = engine(1, tokens_per_second=1000), engine(2)
    [data] = a.poll_announcements(T0 + 0.25)
    deliver(data, b, T0 + 0.3, a)
    assert b.stats(T0 + 0.25 + 59.999).supply_tokens_per_sec == 1000
    assert b.stats(T0 + 0.25 + 60.0).supply_tokens_per_sec == 0


def test_a_withdrawal_stops_counting_at_once() -> None:
    a, b = engine(1, tokens_per_second=1000), engine(2)
    deliver(a.poll_announcements(T0)[0], b, T0, a)
    withdrawal = a.withdraw(T0 + 0.5)  # same tick: the last word is never held back
    assert withdrawal is not None
    assert deliver(withdrawal, b, T0 + 0.6, a) == "accepted"
    assert b.stats(T0 + 0.5).supply_tokens_per_sec == 0
    assert b.stats(T0 + 0.499).supply_tokens_per_sec == 1000


# -- anti-entropy -------------------------------------------------------------------------------

def sync(puller: PeerEngine, source: PeerEngine, now: float) -> int:
    """One pull; returns how many announcements travelled."""
    frames = source.on_sync_request(puller.sync_request(now), now)
    return sum(puller.on_sync_response(f, now).received for f in frames)


def test_a_late_joiner_pulls_the_whole_view_and_agrees_on_every_tick() -> None:
    peers = [engine(i, tokens_per_second=100 * i) for i in range(1, 6)]
    hub = engine(10)
    hub.submit_request(20_000, 10**9, T0)
    for k, e in enumerate(peers):
        for step in range(3):  # some history per signer
            e.set_offer(100 * (k + 1) + step, 0)
            for data in e.poll_announcements(T0 + step * 2 + k * 0.1):
                assert deliver(data, hub, T0 + step * 2 + k * 0.1, e) == "accepted"
    hub.poll_announcements(T0 + 6)
    late = engine(11)
    travelled = sync(late, hub, T0 + 8)
    assert travelled == hub.view.message_count
    assert late.view.digest() == hub.view.digest()
    for tick in range(int(T0) - 5, int(T0) + 40):
        assert late.tick_price(tick) == hub.tick_price(tick)
    assert sync(late, hub, T0 + 9) == 0  # equal digests: nothing sent


def test_sync_history_out_of_order_is_merged_not_refused() -> None:
    a, b, c = engine(1, tokens_per_second=100), engine(2), engine(3)
    first = a.poll_announcements(T0)[0]
    a.set_offer(200, 0)
    second = a.poll_announcements(T0 + 1)[0]
    for data in (first, second):
        deliver(data, b, T0 + 1.1, a)
    deliver(second, c, T0 + 1.1, a)  # c missed the first one
    assert c.view.digest() != b.view.digest()
    sync(c, b, T0 + 2)
    assert c.view.digest() == b.view.digest()
    assert c.sync_counts[("accepted", "history")] == 1
    assert c.tick_price(int(T0) + 3) == b.tick_price(int(T0) + 3)
    # one validator pass per synced announcement, under the history rules: the older one is not
    # first refused as a seq regression and then checked a second time
    assert c.validator.counts["seq_regression"] == 0
    assert c.validator.counts["duplicate"] == 1  # `second`, already held: sent with its bucket
    assert c.validator.counts["accepted"] == 2  # `second` by gossip, `first` by sync
    assert c.sync_counts == {("accepted", "history"): 1, ("ignored", "duplicate"): 1}


def test_a_sync_batch_of_one_signers_history_is_not_rate_limited() -> None:
    a, b, c = engine(1, tokens_per_second=100), engine(2), engine(3)
    for step in range(8):  # eight announcements of a, one per tick: more than the burst of 5
        a.set_offer(100 + step, 0)
        [data] = a.poll_announcements(T0 + step)
        assert deliver(data, b, T0 + step, a) == "accepted"
    assert len(b.view.messages_of(a.signer)) == 8
    assert sync(c, b, T0 + 8) == 8
    assert c.view.digest() == b.view.digest()
    assert c.validator.counts["rate_limited"] == 0 and c.validator.counts["accepted"] == 8
    # sent oldest first, so each was the newest held when it arrived
    assert c.sync_counts == {("accepted", "accepted"): 8}
    for tick in range(int(T0) - 2, int(T0) + 12):
        assert c.tick_price(tick) == b.tick_price(tick)
    # and a's live gossip afterwards is still held to the gossip rules, with a full bucket
    a.set_offer(500, 0)
    [live] = a.poll_announcements(T0 + 9)
    assert deliver(live, c, T0 + 9, a) == "accepted"


def test_sync_still_refuses_forged_stale_and_implausible_announcements() -> None:
    honest, hostile, c = engine(1, tokens_per_second=100), engine(3), engine(4)
    [data] = honest.poll_announcements(T0)
    forged = bytearray(data)
    forged[-1] ^= 1
    stale = encode(Announcement(hostile.signer, int((T0 - 400) * 1000), 1, 1000, 0, 0, 0),
                   hostile.private_key)
    limit = CONFIG.max_node_tokens_per_s
    implausible = encode(Announcement(hostile.signer, int(T0 * 1000), 2, limit + 1, 0, 0, 0),
                         hostile.private_key)
    # an ignored item is skipped and the session goes on; a rejected one stops it (v2 §8.3)
    frame = encode_sync(SyncResponse((stale, implausible, bytes(forged))))
    counts = c.on_sync_response(frame, T0 + 1)
    assert counts == SyncCounts(3, 0, 1, 1, fault="implausible", unchecked=1)
    assert c.sync_counts == {("ignored", "stale"): 1, ("rejected", "implausible"): 1}
    frame = encode_sync(SyncResponse((bytes(forged), stale, implausible)))
    assert c.on_sync_response(frame, T0 + 1) == SyncCounts(3, 0, 0, 1, fault="bad_signature",
                                                           unchecked=2)
    assert c.sync_counts == {("ignored", "stale"): 1, ("rejected", "implausible"): 1,
                             ("rejected", "bad_signature"): 1}
    assert c.view.message_count == 0


def test_a_sync_answer_of_forged_items_costs_one_check_not_one_per_item() -> None:
    honest, c = engine(1, tokens_per_second=100), engine(4)
    [data] = honest.poll_announcements(T0)
    [good] = engine(2, tokens_per_second=7).poll_announcements(T0)
    forged = bytearray(data)
    forged[-1] ^= 1
    checks_before = sum(c.validator.counts.values())
    frame = encode_sync(SyncResponse((good,) + (bytes(forged),) * 4095))
    counts = c.on_sync_response(frame, T0 + 1)
    assert counts == SyncCounts(4096, 1, 0, 1, fault="bad_signature", unchecked=4094)
    assert sum(c.validator.counts.values()) - checks_before == 2  # the good one and one forgery
    assert c.view.message_count == 1  # what came before the stop stays accepted


def test_bad_sync_frames_raise_wire_errors_and_are_counted() -> None:
    a = engine(1)
    with pytest.raises(WireError):
        a.on_sync_request(b"\x93\x01\x11\x90", T0)  # a response where a request belongs
    with pytest.raises(WireError):
        a.on_sync_response(b"junk", T0)
    assert sum(a.sync_frame_errors.values()) == 2
    # a response carrying junk announcements: counted per announcement, not raised
    junk = encode_sync(SyncResponse((b"\x01" * 20, b"\x92\xc4\x01\x00\xc4\x01\x00")))
    counts = a.on_sync_response(junk, T0)
    assert counts == SyncCounts(2, 0, 0, 1, fault="malformed", unchecked=1)


def test_the_engine_uses_one_key_for_its_peer_id_and_its_signatures() -> None:
    key = coincurve.PrivateKey(b"\x07" * 32)
    a = PeerEngine(CONFIG, key, tokens_per_second=1)
    [data] = a.poll_announcements(T0)
    assert announcement_of(data).signer == key.public_key.format(compressed=True)
    assert a.peer_id.startswith("16Uiu2")


# -- sans-IO ------------------------------------------------------------------------------------

def test_the_sans_io_node_modules_read_no_clock_and_do_no_io() -> None:
    """The engine and the job desks take `now` as an argument; their drivers (host, job_service,
    the simulator) own the clocks, sockets and files."""
    for module_name in ("neuroshard_p2p.node.engine", "neuroshard_p2p.node.jobs"):
        assert assert_sans_io(module_name) > 10, module_name


def test_a_sync_brings_a_relay_only_the_fresh_changes_of_what_it_held() -> None:
    """Protocol v2 §8.5's MAY (3.): of what a sync brings, a relay passes on only a signer's
    newest announcement that is a fresh material change (or a turn to silence) from the one held
    before it — not keep-alives, small moves, history, the first of a signer, old changes."""
    a, b = engine(1, tokens_per_second=100), engine(2)
    a.set_demand(10_000, 2)
    held = a.poll_announcements(T0)[0]
    deliver(held, b, T0 + 0.1, a)

    def synced(data: bytes, to: PeerEngine, now: float, pass_on: bool = True) -> SyncCounts:
        return to.on_sync_response(encode_sync(SyncResponse((data,))), now, pass_on)

    a.set_offer(200, 0)  # capacity changed: material
    change = a.poll_announcements(T0 + 1)[0]
    assert synced(change, b, T0 + 1.5) == SyncCounts(1, 1, 0, 0, forward=(change,))
    a.set_demand(10_500, 2)  # 5 %: below the step (12.5 % of 10,000)
    small = a.poll_announcements(T0 + 2)[0]
    assert synced(small, b, T0 + 2.5) == SyncCounts(1, 1, 0, 0)
    [keep_alive] = a.poll_announcements(T0 + 22.5)  # the same state, 16–20 s later
    assert announcement_of(keep_alive).pending_tokens == 10_500
    assert synced(keep_alive, b, T0 + 23) == SyncCounts(1, 1, 0, 0)
    a.set_demand(12_000, 2)  # 1,500 from 10,500: past the step
    bigger = a.poll_announcements(T0 + 24)[0]
    assert synced(bigger, b, T0 + 24.5, pass_on=False) == SyncCounts(1, 1, 0, 0)  # no relay
    withdrawal = a.withdraw(T0 + 25)
    assert withdrawal is not None
    assert synced(withdrawal, b, T0 + 25.5).forward == (withdrawal,)  # to silence
    # the first of a signer (a joining node pulls the whole view), history, and a change that
    # is older than the recent window (T/3 = 20 s) are not passed on
    c, d = engine(3), engine(4)
    assert synced(change, c, T0 + 1.5) == SyncCounts(1, 1, 0, 0)
    assert synced(held, c, T0 + 1.6) == SyncCounts(1, 1, 0, 0)
    assert c.sync_counts[("accepted", "history")] == 1
    deliver(held, d, T0 + 0.1, a)
    assert synced(change, d, T0 + 21.1) == SyncCounts(1, 1, 0, 0)
    e = engine(5)  # holds the first and the third: the second, a change from the first, is
    deliver(held, e, T0 + 0.1, a)  # history by the time it comes
    deliver(small, e, T0 + 2.1, a)
    assert synced(change, e, T0 + 2.5) == SyncCounts(1, 1, 0, 0)
    assert e.sync_counts[("accepted", "history")] == 1
    assert b.view.current(a.signer) == announcement_of(withdrawal)
