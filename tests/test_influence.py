"""Bounded influence (protocol v2 §7.1, §6.2 V6m): what one identity, many fresh identities and
non-members can do to the counted supply, demand and price. Each test attacks the sans-IO engine
with signed messages built as a hostile peer would, and asserts the exact counted quantities."""

from __future__ import annotations

import hashlib

import coincurve
import pytest

from neuroshard_p2p.charter import builtin
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.core.pricing import target_price_nano
from neuroshard_p2p.node.engine import PeerEngine
from neuroshard_p2p.view import MarketView
from neuroshard_p2p.wire import Announcement, decode_unchecked_time, encode
from neuroshard_p2p.wire.membership import Admission
from neuroshard_p2p.wire.messages import Credential, RevocationList
from neuroshard_p2p.wire.validate import Validator
from neuroshard_p2p.wire.work import grind, work_bits

T0 = 1_767_225_600.0
T0_MS = int(T0 * 1000)
MAX_U63 = 2**63 - 1
CONFIG = builtin("simnet").market


def key(name: str) -> coincurve.PrivateKey:
    return coincurve.PrivateKey(hashlib.sha256(f"influence test key: {name}".encode()).digest())


def pub(k: coincurve.PrivateKey) -> bytes:
    return k.public_key.format(compressed=True)


def announce(k: coincurve.PrivateKey, at_ms: int = T0_MS, *, seq: int = 1, tps: int = 0,
             pending_tokens: int = 0, pending_requests: int = 0, nonce: int = 0,
             credential: bytes = b"") -> bytes:
    return encode(Announcement(pub(k), at_ms, seq, tps, 0, pending_tokens, pending_requests,
                               nonce, credential), k)


def accepted(validator: Validator, view: MarketView, data: bytes, now: float = T0) -> None:
    message = validator.check(data, now)
    assert isinstance(message, Announcement)
    view.merge_message(message)


# -- one identity --------------------------------------------------------------------------

def test_the_demand_pump_of_one_message_counts_at_most_the_signer_caps() -> None:
    """The attack of issue 14: pending_tokens = pending_requests = 2^63 − 1 in one message."""
    view = MarketView(CONFIG)
    validator = Validator(CONFIG)
    accepted(validator, view, announce(key("pump"), pending_tokens=MAX_U63,
                                       pending_requests=MAX_U63))
    stats = view.stats_at_ms(T0_MS)
    assert stats.demand_tokens_waiting == CONFIG.max_signer_pending_tokens == 1_000_000
    assert stats.pending_requests == CONFIG.max_signer_pending_requests == 1_000


def test_one_identity_moves_the_target_no_more_than_the_stated_bound() -> None:
    """An honest market of 1,000 tok/s at u = 0.5 (30,000 tokens waiting); one extra identity
    at every cap moves the target to exactly the price of (D + d1) / (60 S) — never further."""
    honest = [key(f"honest {i}") for i in range(10)]
    view = MarketView(CONFIG)
    validator = Validator(CONFIG)
    for k in honest:
        accepted(validator, view, announce(k, tps=100, pending_tokens=3_000, pending_requests=3))
    before = view.stats_at_ms(T0_MS)
    assert (before.supply_tokens_per_sec, before.demand_tokens_waiting) == (1_000, 30_000)
    accepted(validator, view, announce(key("one identity"), tps=0, pending_tokens=MAX_U63,
                                       pending_requests=MAX_U63))
    after = view.stats_at_ms(T0_MS)
    bound_demand = 30_000 + CONFIG.max_signer_pending_tokens
    assert after.demand_tokens_waiting == bound_demand
    assert target_price_nano(after.supply_tokens_per_sec, after.demand_tokens_waiting, CONFIG) == \
        target_price_nano(1_000, bound_demand, CONFIG)


# -- many fresh identities: the work ramp ------------------------------------------------------

def test_a_key_without_work_counts_with_weight_two_to_the_bits_short() -> None:
    config = CONFIG.replace(identity_work_bits=12)
    k = key("worker")
    found = grind(pub(k), 0, 20_000, stop_at=12)
    assert found.bits >= 12  # 2^12 expected tries; 20,000 gives a miss once in ~130
    lazy = key("lazy")
    lazy_bits = work_bits(pub(lazy), 0)
    view = MarketView(config)
    validator = Validator(config)
    accepted(validator, view, announce(k, tps=40_000, nonce=found.nonce))
    assert view.stats_at_ms(T0_MS).supply_tokens_per_sec == 40_000
    accepted(validator, view, announce(lazy, tps=40_000, pending_tokens=80_000,
                                       pending_requests=8))
    stats = view.stats_at_ms(T0_MS)
    shift = 12 - lazy_bits
    assert stats.supply_tokens_per_sec == 40_000 + (40_000 >> shift)
    assert stats.demand_tokens_waiting == 80_000 >> shift


def test_two_thousand_fresh_keys_without_work_add_what_the_ramp_allows() -> None:
    """2,000 fresh keys, each announcing 1,000 waiting tokens (issue 14's sybil demand). With
    F = 24 each counts 1,000 >> (24 − bits): the sum is exactly that, and below 1 % of their
    claim."""
    config = CONFIG.replace(identity_work_bits=24)
    view = MarketView(config)
    validator = Validator(config)
    expected = 0
    for i in range(2_000):
        k = key(f"sybil {i}")
        accepted(validator, view, announce(k, pending_tokens=1_000, pending_requests=1))
        expected += 1_000 >> (24 - work_bits(pub(k), 0))
    demand = view.stats_at_ms(T0_MS).demand_tokens_waiting
    assert demand == expected
    assert demand < 2_000 * 1_000 // 100


# -- members networks ----------------------------------------------------------------------------

AUTHORITY = key("authority")
MEMBERS = builtin("simnet").replace(name="members", policy="members",
                                    authorities=(pub(AUTHORITY),))
ADMISSION = Admission.of(MEMBERS)


def credential(member: coincurve.PrivateKey, *, roles: int = 3, tps: int = 10_000,
               tokens: int = 50_000, requests: int = 10, expires_ms: int = T0_MS + 3_600_000,
               by: coincurve.PrivateKey = AUTHORITY, network: bytes | None = None) -> bytes:
    return encode(Credential(pub(by), T0_MS - 1_000, network or MEMBERS.hash, pub(member), roles,
                             tps, tokens, requests, expires_ms), by)


def members_validator() -> Validator:
    assert ADMISSION is not None
    return Validator(MEMBERS.market, admission=ADMISSION)


def reason(validator: Validator, data: bytes) -> str:
    try:
        validator.check(data, T0)
    except Exception as error:  # noqa: BLE001 - WireError: its reason is what we test
        return getattr(error, "reason", repr(error))
    return "accepted"


def test_non_members_count_for_nothing_with_a_reason() -> None:
    validator = members_validator()
    outsider = key("outsider")
    assert reason(validator, announce(outsider, tps=1_000)) == "not_member"
    assert reason(validator, announce(outsider, tps=1_000,
                                      credential=credential(outsider, by=outsider))) == "not_member"
    assert reason(validator, announce(outsider, tps=1_000, credential=credential(
        outsider, network=hashlib.sha256(b"another charter").digest()))) == "not_member"
    stolen = credential(key("member"))
    assert reason(validator, announce(outsider, tps=1_000, credential=stolen)) == "not_member"
    assert reason(validator, announce(outsider, tps=1_000,
                                      credential=credential(outsider, roles=2))) == "not_member"
    assert reason(validator, announce(outsider, pending_tokens=1, pending_requests=1,
                                      credential=credential(outsider, roles=1))) == "not_member"
    assert reason(validator, announce(outsider, tps=1, credential=credential(
        outsider, expires_ms=T0_MS))) == "not_member"
    assert validator.counts["not_member"] == 7
    # An open network carries no credentials at all.
    assert reason(Validator(CONFIG), announce(outsider, credential=stolen)) == "bad_field"


def test_two_thousand_non_member_keys_move_the_price_by_zero() -> None:
    assert ADMISSION is not None
    engine = PeerEngine(MEMBERS.market, key("honest member"), tokens_per_second=1_000,
                        admission=ADMISSION)
    engine.set_credential(credential(key("honest member")))
    engine.poll_announcements(T0)
    gateway = key("honest gateway")
    engine.on_gossip(announce(gateway, pending_tokens=30_000, pending_requests=3,
                              credential=credential(gateway)), T0)
    tick = engine.tick_of(T0 + 5)
    price_before = engine.tick_price(tick)
    digest_before = engine.view.digest()
    refused = 0
    for i in range(2_000):
        k = key(f"non-member {i}")
        verdict = engine.on_gossip(announce(k, tps=50_000, pending_tokens=1_000_000,
                                            pending_requests=1_000), T0 + 1)
        refused += verdict.reason == "not_member"
    assert refused == 2_000
    assert engine.tick_price(tick) == price_before
    assert engine.view.digest() == digest_before and len(engine.view) == 2


def test_a_members_caps_and_its_credentials_expiry_bound_what_it_counts() -> None:
    validator = members_validator()
    view = MarketView(MEMBERS.market)
    m = key("capped member")
    accepted(validator, view, announce(m, tps=50_000, pending_tokens=MAX_U63,
                                       pending_requests=MAX_U63,
                                       credential=credential(m, expires_ms=T0_MS + 30_000)))
    stats = view.stats_at_ms(T0_MS)
    assert (stats.supply_tokens_per_sec, stats.demand_tokens_waiting, stats.pending_requests) == \
        (10_000, 50_000, 10)
    assert view.stats_at_ms(T0_MS + 29_999).supply_tokens_per_sec == 10_000
    assert view.stats_at_ms(T0_MS + 30_000).supply_tokens_per_sec == 0


def test_a_revocation_list_ends_a_member_from_its_instant_in_every_view() -> None:
    validator = members_validator()
    m = key("revoked member")
    data = announce(m, tps=1_000, credential=credential(m))
    revocations = encode(RevocationList(pub(AUTHORITY), T0_MS, 1, MEMBERS.hash,
                                        ((pub(m), T0_MS + 10_000),)), AUTHORITY)
    views = [MarketView(MEMBERS.market), MarketView(MEMBERS.market)]
    accepted(validator, views[0], data)
    checked = validator.check(revocations, T0)
    assert isinstance(checked, RevocationList)
    views[0].merge_revocations(checked)
    # The other view learns them in the other order.
    views[1].merge_revocations(checked)
    views[1].merge_message(views[0].messages_of(pub(m))[0])
    for view in views:
        assert view.stats_at_ms(T0_MS + 9_999).supply_tokens_per_sec == 1_000
        assert view.stats_at_ms(T0_MS + 10_000).supply_tokens_per_sec == 0
    assert views[0].digest() == views[1].digest()
    # An older list of the same authority changes nothing; a non-authority's is refused.
    assert reason(validator, revocations) == "duplicate"
    forged = encode(RevocationList(pub(m), T0_MS, 2, MEMBERS.hash, ()), m)
    assert reason(validator, forged) == "not_member"
    assert reason(Validator(CONFIG), revocations) == "kind"


def test_revocation_lists_travel_by_sync_to_a_late_joiner() -> None:
    assert ADMISSION is not None
    m = key("synced member")
    old = PeerEngine(MEMBERS.market, m, tokens_per_second=1_000, admission=ADMISSION)
    old.set_credential(credential(m))
    old.poll_announcements(T0)
    revocations = encode(RevocationList(pub(AUTHORITY), T0_MS, 1, MEMBERS.hash,
                                        ((pub(m), T0_MS + 10_000),)), AUTHORITY)
    assert old.on_gossip(revocations, T0).outcome == "accepted"
    late = PeerEngine(MEMBERS.market, key("late joiner"), admission=ADMISSION)
    for frame in old.on_sync_request(late.sync_request(T0 + 1), T0 + 1):
        late.on_sync_response(frame, T0 + 1)
    assert late.view.digest() == old.view.digest()
    assert late.view.revoked_from(pub(m)) == T0_MS + 10_000


# -- views converge after hostile input ----------------------------------------------------------

def test_what_one_node_was_fed_is_gone_once_no_peer_would_accept_it() -> None:
    """A hostile sync answer gives one node 4,096 fresh-key announcements that no other node
    holds; once they are older than the 300 s any peer accepts, expiry removes them and the two
    views' digests are identical again."""
    attacked = PeerEngine(CONFIG, key("attacked"))
    other = PeerEngine(CONFIG, key("other"))
    for engine in (attacked, other):
        engine.on_gossip(announce(key("shared"), tps=500), T0)
    for i in range(4_096):
        attacked.on_gossip(announce(key(f"flood {i}"), tps=1), T0)
    assert attacked.view.digest() != other.view.digest()
    later = T0 + 300.001
    attacked.expire(later)
    other.expire(later)
    assert len(attacked.view) == len(other.view) == 0
    assert attacked.view.digest() == other.view.digest()


def test_expiry_drops_single_old_messages_of_a_live_signer() -> None:
    view = MarketView(CONFIG)
    validator = Validator(CONFIG)
    k = key("live")
    for i in range(4):
        at = T0_MS + i * 60_000
        accepted(validator, view, announce(k, at, seq=at, tps=100), now=at / 1000)
    assert len(view.messages_of(pub(k))) == 3  # the horizon already dropped the first
    assert view.expire_before(T0_MS + 120_001) == 2
    assert [m.issued_at_ms for m in view.messages_of(pub(k))] == [T0_MS + 180_000]
    assert view.stats_at_ms(T0_MS + 180_000).supply_tokens_per_sec == 100


def test_work_bits_are_the_leading_zero_bits_of_the_tagged_hash() -> None:
    signer = pub(key("work"))
    digest = hashlib.sha256(b"neuroshard/work/v2" + signer + (7).to_bytes(8, "big")).digest()
    value = int.from_bytes(digest, "big")
    assert work_bits(signer, 7) == 256 - value.bit_length()
    found = grind(signer, 0, 5_000)
    assert found.bits == max(work_bits(signer, n) for n in range(5_000))
    assert decode_unchecked_time(announce(key("work"), nonce=found.nonce)).work_nonce == found.nonce


@pytest.mark.parametrize("changes", [{"identity_work_bits": -1}, {"identity_work_bits": 49},
                                     {"max_signer_pending_tokens": 0},
                                     {"max_signer_pending_requests": 0}], ids=str)
def test_bad_caps_are_configuration_errors(changes: dict[str, int]) -> None:
    from neuroshard_p2p.config import ConfigError
    with pytest.raises(ConfigError, match=next(iter(changes))):
        MarketConfig(**changes)
