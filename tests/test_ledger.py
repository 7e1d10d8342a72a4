"""The ledger: exact conservation, replay impossible across restarts, every refusal reasoned and
counted, and a verify that catches a tampered file. Real SQLite files, real signed receipts."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from pathlib import Path

import coincurve
import msgpack
import pytest
import trio
from coincurve.ecdsa import der_to_cdata, serialize_compact
from conftest import make_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.identity import peer_id_of
from neuroshard_p2p.ledger import (
    REASONS,
    AsyncLedger,
    Ledger,
    LedgerError,
    LedgerTotals,
    MatchedJob,
    check_receipt,
    ledger_path,
    ledger_summary,
    ledger_verify,
)
from neuroshard_p2p.money import Settlement, settle_amounts, to_nano

GATEWAY = make_key(1)
PROVIDER = make_key(2)
STRANGER = make_key(3)
GATEWAY_PK = wire.public_key_of(GATEWAY)
PROVIDER_PK = wire.public_key_of(PROVIDER)
STRANGER_PK = wire.public_key_of(STRANGER)
NOW = 1_800_000_000.0
SENT_AT = NOW - 10.0          # the job went out 10 s before the receipt arrives
CAPACITY = 1_000              # announced tokens/s → at most 2 × 1000 × 10 = 20 000 tokens
PRICE = 100_000_000           # 0.1 NEURO per 1M tokens
CONFIG = MarketConfig()


def make_receipt(*, key=PROVIDER, signer: bytes | None = None, issued_at: float = NOW,
                 request_id: str = "req-1", gateway: bytes = GATEWAY_PK, user: str = "alice",
                 tokens: int = 1_000, price: int = PRICE) -> wire.Receipt:
    issued_ms = int(issued_at * 1000)
    receipt = wire.Receipt(signer=signer or wire.public_key_of(key), issued_at_ms=issued_ms,
                           request_id=request_id, gateway=gateway, user=user,
                           tokens_served=tokens, locked_price_nano=price,
                           started_at_ms=issued_ms - 2_000, ended_at_ms=issued_ms)
    return wire.sign(receipt, key)  # type: ignore[return-value]


def make_job(*, request_id: str = "req-1", user: str = "alice", price: int = PRICE,
             tokens_requested: int = 50_000, sent_at: float = SENT_AT) -> MatchedJob:
    return MatchedJob(request_id=request_id, gateway=GATEWAY_PK, provider=PROVIDER_PK, user=user,
                      locked_price_nano=price, tokens_requested=tokens_requested,
                      sent_at=sent_at)


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(ledger_path(tmp_path)) as opened:
        yield opened


def accept(ledger: Ledger, data: bytes, job: MatchedJob, *, now: float = NOW,
           capacity: int = CAPACITY, config: MarketConfig = CONFIG) -> Settlement:
    return ledger.accept(data, job, capacity_tokens_per_s=capacity, now=now, config=config)


def only_refusal(ledger: Ledger) -> dict[str, int]:
    return {reason: n for reason, n in ledger.refusals().items() if n}


# -- settling ------------------------------------------------------------------------------------

def test_accepted_receipt_settles_with_the_burn(ledger: Ledger) -> None:
    receipt = make_receipt(tokens=1_000)
    settled = accept(ledger, receipt.wire, make_job())
    # 1000 tokens × 0.1 NEURO/1M = 100 000 nano; 5 % burned.
    assert settled == Settlement(payment=100_000, burned=5_000, earned=95_000)
    assert ledger.totals() == LedgerTotals(settlements=1, tokens=1_000, paid=100_000,
                                           burned=5_000, earned=95_000)
    assert ledger.totals("gateway") == ledger.totals()
    assert ledger.totals("provider") == LedgerTotals()
    assert ledger.spent("alice") == 100_000
    assert ledger.earnings(PROVIDER_PK) == 95_000
    assert ledger.earnings(STRANGER_PK) == 0
    [record] = ledger.recent(5)
    assert (record.receipt_id, record.request_id, record.role, record.user, record.provider,
            record.gateway, record.tokens, record.price_nano, record.payment, record.burned,
            record.earned, record.settled_at) == (
        receipt.msg_id, "req-1", "gateway", "alice", PROVIDER_PK, GATEWAY_PK, 1_000, PRICE,
        100_000, 5_000, 95_000, NOW)
    assert record.to_dict()["provider"] == peer_id_of(PROVIDER_PK)
    assert only_refusal(ledger) == {}
    assert ledger.verify().ok


@pytest.mark.parametrize("tokens, price, burn_rate, expected", [
    (1, 1, 0.05, (0, 0, 0)),                          # rounds down to nothing, in the user's favour
    (1_000_000, 19, 0.05, (19, 0, 19)),               # burn of 0.95 nano rounds down to 0
    (1_000_000, 20, 0.05, (20, 1, 19)),               # first whole burned nano
    (999_999, 1_000_001, 0.05, (999_999, 49_999, 950_000)),
    (20_000, 1_000_000_000, 0.05, (20_000_000, 1_000_000, 19_000_000)),
    (0, 1_000_000_000, 0.05, (0, 0, 0)),
    (1_000_000, 7, 0.0, (7, 0, 7)),
])
def test_rounding_edges_are_stored_exactly(ledger: Ledger, tokens: int, price: int,
                                           burn_rate: float,
                                           expected: tuple[int, int, int]) -> None:
    settled = ledger.settle(make_receipt(tokens=tokens, price=price), "gateway", NOW, burn_rate)
    assert (settled.payment, settled.burned, settled.earned) == expected
    totals = ledger.totals()
    assert (totals.paid, totals.burned, totals.earned) == expected
    assert ledger.verify().ok


def test_provider_records_its_own_receipt(ledger: Ledger) -> None:
    settled = ledger.settle(make_receipt(tokens=3_000), "provider", NOW, 0.05)
    assert settled == Settlement(payment=300_000, burned=15_000, earned=285_000)
    assert ledger.totals("provider").earned == 285_000
    assert ledger.totals("gateway") == LedgerTotals()
    assert ledger.earnings(PROVIDER_PK) == 285_000


def test_one_receipt_settles_once_even_when_this_node_is_gateway_and_provider(
        ledger: Ledger) -> None:
    receipt = make_receipt()
    ledger.settle(receipt, "gateway", NOW, 0.05)
    with pytest.raises(LedgerError) as err:
        ledger.settle(receipt, "provider", NOW, 0.05)
    assert err.value.reason == "replay"
    assert ledger.totals().settlements == 1


def test_unknown_role_is_an_error(ledger: Ledger) -> None:
    with pytest.raises(ValueError, match="role"):
        ledger.settle(make_receipt(), "user", NOW, 0.05)


def test_settle_uses_the_signed_bytes_not_the_object_handed_in(ledger: Ledger) -> None:
    import dataclasses
    receipt = make_receipt(tokens=1_000)
    inflated = dataclasses.replace(receipt, tokens_served=10_000)  # keeps the old signed bytes
    assert ledger.settle(inflated, "gateway", NOW, 0.05).payment == 100_000
    unsigned = wire.with_fields(receipt, request_id="req-2")
    with pytest.raises(LedgerError) as err:
        ledger.settle(unsigned, "gateway", NOW, 0.05)
    assert err.value.reason == "malformed"


# -- replay --------------------------------------------------------------------------------------

def test_replay_is_refused_with_totals_unchanged_even_after_reopening(tmp_path: Path) -> None:
    path = ledger_path(tmp_path)
    receipt = make_receipt(tokens=2_000)
    with Ledger.open(path) as ledger:
        accept(ledger, receipt.wire, make_job())
        before = ledger.totals()
        with pytest.raises(LedgerError) as err:
            accept(ledger, receipt.wire, make_job(), now=NOW + 1)
        assert err.value.reason == "replay"
        assert ledger.totals() == before
    with Ledger.open(path) as ledger:
        for attempt in (lambda: accept(ledger, receipt.wire, make_job(), now=NOW + 2),
                        lambda: ledger.settle(receipt, "gateway", NOW + 2, 0.05)):
            with pytest.raises(LedgerError) as err:
                attempt()
            assert err.value.reason == "replay"
        assert ledger.totals() == before == LedgerTotals(1, 2_000, 200_000, 10_000, 190_000)
        assert only_refusal(ledger) == {"replay": 3}
        assert ledger.verify().ok


def test_resigned_receipt_for_a_settled_request_is_a_replay(ledger: Ledger) -> None:
    accept(ledger, make_receipt(issued_at=NOW).wire, make_job())
    again = make_receipt(issued_at=NOW + 1)  # same request, new timestamp → new receipt id
    with pytest.raises(LedgerError) as err:
        accept(ledger, again.wire, make_job(), now=NOW + 1)
    assert err.value.reason == "replay"
    assert ledger.totals().settlements == 1


# -- refusals ------------------------------------------------------------------------------------

def forged_by_stranger() -> bytes:
    """The provider's receipt body, signed by someone else."""
    body = wire.body_of(wire.with_fields(make_receipt()))
    signature = serialize_compact(der_to_cdata(STRANGER.sign(body)))
    return msgpack.packb([body, signature], use_bin_type=True)


def body_tampered() -> bytes:
    """A valid receipt with tokens raised after signing."""
    body, signature = msgpack.unpackb(make_receipt(tokens=1_000).wire)
    fields = msgpack.unpackb(body)
    fields[7] = 1_999  # tokens_served
    return msgpack.packb([msgpack.packb(fields, use_bin_type=True), signature], use_bin_type=True)


def announcement() -> bytes:
    msg = wire.Announcement(signer=PROVIDER_PK, issued_at_ms=int(NOW * 1000), seq=1,
                            tokens_per_second=1000, min_price_nano=1, pending_tokens=0,
                            pending_requests=0)
    return wire.encode(msg, PROVIDER)


REFUSALS = {
    "forged signature": (forged_by_stranger, make_job, "bad_signature"),
    "body changed after signing": (body_tampered, make_job, "bad_signature"),
    "garbage bytes": (lambda: b"\x92\xc4\x01x", make_job, "malformed"),
    "not a receipt": (announcement, make_job, "malformed"),
    "older than 300 s": (lambda: make_receipt(issued_at=NOW - 300.001).wire,
                         lambda: make_job(sent_at=NOW - 400), "stale"),
    "from the future": (lambda: make_receipt(issued_at=NOW + 31).wire, make_job, "stale"),
    "issued before the job was sent": (lambda: make_receipt(issued_at=SENT_AT - 31).wire,
                                       make_job, "stale"),
    "wrong provider": (lambda: make_receipt(key=STRANGER).wire, make_job, "mismatch"),
    "wrong request": (lambda: make_receipt(request_id="req-9").wire, make_job, "mismatch"),
    "wrong gateway": (lambda: make_receipt(gateway=STRANGER_PK).wire, make_job, "mismatch"),
    "wrong user": (lambda: make_receipt(user="mallory").wire, make_job, "mismatch"),
    "wrong price": (lambda: make_receipt(price=PRICE + 1).wire, make_job, "mismatch"),
    "more than requested": (lambda: make_receipt(tokens=1_001).wire,
                            lambda: make_job(tokens_requested=1_000), "implausible"),
    "faster than 2 × capacity": (lambda: make_receipt(tokens=20_001).wire, make_job,
                                 "implausible"),
    "faster than 2 × capacity in the first second": (
        lambda: make_receipt(tokens=2_001).wire, lambda: make_job(sent_at=NOW - 0.01),
        "implausible"),
}


@pytest.mark.parametrize("name", sorted(REFUSALS))
def test_bad_receipts_are_refused_with_the_reason_and_counted(ledger: Ledger, name: str) -> None:
    make_bytes, job, reason = REFUSALS[name]
    data = make_bytes()
    with pytest.raises(LedgerError) as err:
        check_receipt(data, job(), capacity_tokens_per_s=CAPACITY, now=NOW,
                      recent_provider_tokens=0, config=CONFIG)
    assert err.value.reason == reason, str(err.value)
    with pytest.raises(LedgerError) as err:
        accept(ledger, data, job())
    assert err.value.reason == reason, str(err.value)
    assert only_refusal(ledger) == {reason: 1}
    assert ledger.totals() == LedgerTotals()
    assert ledger.recent() == []


@pytest.mark.parametrize("issued_at, sent_at, tokens, capacity", [
    (NOW - 300.0, NOW - 400, 1_000, CAPACITY),   # exactly 300 s old is still fresh
    (SENT_AT - 30, SENT_AT, 1_000, CAPACITY),    # 30 s of clock skew before the job is allowed
    (NOW, SENT_AT, 20_000, CAPACITY),            # exactly 2 × capacity × elapsed
    (NOW, SENT_AT, 1_000, 10**9),                # absurd announced capacity does not hurt...
    (NOW, NOW - 0.01, 2_000, CAPACITY),          # elapsed counts as at least 1 s
])
def test_boundaries_that_still_settle(ledger: Ledger, issued_at: float, sent_at: float,
                                      tokens: int, capacity: int) -> None:
    receipt = make_receipt(issued_at=issued_at, tokens=tokens)
    accept(ledger, receipt.wire, make_job(sent_at=sent_at), capacity=capacity)
    assert ledger.totals().tokens == tokens


def test_announced_capacity_is_capped_by_config(ledger: Ledger) -> None:
    config = MarketConfig(max_node_tokens_per_s=1_000)
    with pytest.raises(LedgerError) as err:   # ...but cannot buy headroom beyond the cap
        accept(ledger, make_receipt(tokens=20_001).wire, make_job(), capacity=10**9,
               config=config)
    assert err.value.reason == "implausible"
    accept(ledger, make_receipt(tokens=20_000).wire, make_job(), capacity=10**9, config=config)


def test_rate_limit_per_provider_over_the_last_minute(ledger: Ledger) -> None:
    config = MarketConfig(max_tokens_per_minute=3_000)

    def settle(request_id: str, tokens: int, now: float) -> None:
        receipt = make_receipt(request_id=request_id, tokens=tokens, issued_at=now)
        accept(ledger, receipt.wire, make_job(request_id=request_id, sent_at=now - 10),
               now=now, config=config)

    settle("a", 2_000, NOW)
    with pytest.raises(LedgerError) as err:
        settle("b", 1_001, NOW + 1)
    assert err.value.reason == "over_rate"
    settle("b", 1_000, NOW + 1)                     # exactly the limit
    with pytest.raises(LedgerError) as err:
        settle("c", 1, NOW + 59.9)                  # "a" is still inside the window
    assert err.value.reason == "over_rate"
    settle("c", 2_000, NOW + 60.5)                  # "a" left the window; "b" (1000) has not
    with pytest.raises(LedgerError) as err:
        settle("d", 1, NOW + 60.6)
    assert err.value.reason == "over_rate"
    assert ledger.recent_tokens(PROVIDER_PK, NOW + 60.6) == 3_000
    assert only_refusal(ledger) == {"over_rate": 3}
    assert ledger.totals().tokens == 5_000


def test_fixed_price_mode_settles_at_the_fixed_price(ledger: Ledger) -> None:
    config = MarketConfig(dynamic_pricing=False, fixed_price=0.25)
    fixed = to_nano(config.fixed_price)
    job = make_job(price=fixed)               # in fixed mode the gateway locks the fixed price
    with pytest.raises(LedgerError) as err:   # a provider claiming a (higher) dynamic price
        accept(ledger, make_receipt(price=PRICE * 3).wire, job, config=config)
    assert err.value.reason == "mismatch"
    settled = accept(ledger, make_receipt(price=fixed, tokens=4_000).wire, job, config=config)
    assert settled == Settlement(payment=1_000_000, burned=50_000, earned=950_000)


def test_refusal_counts_survive_reopening(tmp_path: Path) -> None:
    with Ledger.open(ledger_path(tmp_path)) as ledger:
        for _ in range(2):
            with pytest.raises(LedgerError):
                accept(ledger, make_receipt(user="mallory").wire, make_job())
    with Ledger.open(ledger_path(tmp_path)) as ledger:
        assert only_refusal(ledger) == {"mismatch": 2}
        assert ledger.refusals() == {reason: 2 if reason == "mismatch" else 0
                                     for reason in REASONS}


# -- conservation --------------------------------------------------------------------------------

settlement_steps = st.lists(
    st.tuples(
        st.sampled_from(["alice", "bob", "carol"]),
        st.sampled_from([PROVIDER, STRANGER]),
        st.one_of(st.sampled_from([0, 1, 19, 20, 999_999, 1_000_000]),
                  st.integers(0, 10**9)),
        st.one_of(st.sampled_from([1, 19, 20, 999_999, 1_000_001]),
                  st.integers(0, 10**12)),
        st.sampled_from([0.05, 0.0, 0.01, 1 / 3, 0.5, 0.999]),
        st.sampled_from(["gateway", "provider"]),
        st.booleans(),   # replay an earlier receipt before this one
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(settlement_steps, st.randoms(use_true_random=False))
def test_conservation_under_any_sequence_of_settlements(steps, rng) -> None:
    with tempfile.TemporaryDirectory() as tmp, \
            Ledger.open(ledger_path(tmp), synchronous="NORMAL") as ledger:
        settled: list[wire.Receipt] = []
        by_role = {"gateway": [0, 0, 0, 0, 0], "provider": [0, 0, 0, 0, 0]}
        spent: dict[str, int] = {}
        earned: dict[bytes, int] = {}
        for i, (user, key, tokens, price, burn_rate, role, replay) in enumerate(steps):
            if replay and settled:
                before = ledger.totals()
                with pytest.raises(LedgerError) as err:
                    ledger.settle(rng.choice(settled), rng.choice(["gateway", "provider"]),
                                  NOW, burn_rate)
                assert err.value.reason == "replay"
                assert ledger.totals() == before
            receipt = make_receipt(key=key, request_id=f"r{i}", user=user, tokens=tokens,
                                   price=price)
            result = ledger.settle(receipt, role, NOW + i, burn_rate)
            expected = settle_amounts(tokens, price, burn_rate)
            assert result == expected
            assert result.payment == result.burned + result.earned
            assert result.burned >= 0 and result.earned >= 0
            settled.append(receipt)
            acc = by_role[role]
            for j, value in enumerate((1, tokens, expected.payment, expected.burned,
                                       expected.earned)):
                acc[j] += value
            spent[user] = spent.get(user, 0) + expected.payment
            pk = wire.public_key_of(key)
            earned[pk] = earned.get(pk, 0) + expected.earned

        totals = ledger.totals()
        assert totals.paid == totals.earned + totals.burned
        for role, acc in by_role.items():
            assert ledger.totals(role) == LedgerTotals(*acc)
        assert totals.paid == sum(spent.values())
        assert totals.earned == sum(earned.values())
        for user, amount in spent.items():
            assert ledger.spent(user) == amount
        for pk, amount in earned.items():
            assert ledger.earnings(pk) == amount
        report = ledger.verify()
        assert report.ok, str(report)
        assert report.rows == len(settled) and report.totals == totals


# -- verify --------------------------------------------------------------------------------------

def flip_receipt_byte(conn: sqlite3.Connection) -> None:
    [(data,)] = conn.execute("SELECT receipt FROM settlements WHERE id = 3").fetchall()
    flipped = data[:40] + bytes([data[40] ^ 0xFF]) + data[41:]
    conn.execute("UPDATE settlements SET receipt = ? WHERE id = 3", (flipped,))


def run_sql(*statements: str):
    def tamper(conn: sqlite3.Connection) -> None:
        for statement in statements:
            assert conn.execute(statement).rowcount >= 1, statement
    return tamper


TAMPERING = {
    # A careful forger moves 1 nano from burn to earning in the row, the totals and the
    # account, so every sum still agrees: only recomputing from the signed receipt catches it.
    "amounts shifted consistently": (
        run_sql("UPDATE settlements SET burned = burned - 1, earned = earned + 1 WHERE id = 2",
                "UPDATE totals SET burned = burned - 1, earned = earned + 1 "
                "WHERE role = 'gateway'",
                "UPDATE accounts SET amount = amount + 1 WHERE kind = 'provider'"),
        "amounts paid/burned/earned 200000/9999/190001, recomputed 200000/10000/190000"),
    "tokens raised in the row": (
        run_sql("UPDATE settlements SET tokens = tokens + 1 WHERE id = 1"),
        "stored tokens 1001 differs from the signed receipt's 1000"),
    "receipt bytes altered": (flip_receipt_byte, "stored receipt does not verify"),
    "settlement deleted": (
        run_sql("DELETE FROM settlements WHERE id = 3"),
        "totals for role gateway"),
    "payment inflated everywhere": (
        run_sql("UPDATE settlements SET payment = payment + 20, earned = earned + 20 "
                "WHERE id = 1",
                "UPDATE totals SET paid = paid + 20, earned = earned + 20 WHERE role = 'gateway'",
                "UPDATE accounts SET amount = amount + 20 "
                "WHERE kind = 'provider' OR name = 'alice'"),
        "recomputed 100000/5000/95000"),
    "user account edited": (
        run_sql("UPDATE accounts SET amount = amount - 5 WHERE kind = 'user' AND name = 'bob'"),
        "user account 'bob'"),
}


@pytest.mark.parametrize("name", sorted(TAMPERING))
def test_verify_detects_a_tampered_file(tmp_path: Path, name: str) -> None:
    tamper, expected_problem = TAMPERING[name]
    with Ledger.open(ledger_path(tmp_path)) as ledger:
        for i, (user, tokens) in enumerate([("alice", 1_000), ("bob", 2_000), ("bob", 3_000)]):
            accept(ledger, make_receipt(request_id=f"r{i}", user=user, tokens=tokens).wire,
                   make_job(request_id=f"r{i}", user=user))
    ok, report = ledger_verify(tmp_path)
    assert ok, report
    conn = sqlite3.connect(ledger_path(tmp_path))
    with conn:
        tamper(conn)
    conn.close()
    ok, report = ledger_verify(tmp_path)
    assert not ok
    assert "ledger FAILED" in report
    assert expected_problem in report, report


def test_verify_lists_a_few_problems_and_counts_the_rest(tmp_path: Path) -> None:
    """A ledger with every row damaged: the report stays short (and verify's memory bounded)."""
    with Ledger.open(ledger_path(tmp_path)) as ledger:
        for i in range(5):
            accept(ledger, make_receipt(request_id=f"r{i}").wire, make_job(request_id=f"r{i}"))
    with sqlite3.connect(ledger_path(tmp_path)) as conn:
        assert conn.execute("UPDATE settlements SET request_id = request_id || 'x'").rowcount == 5
    with Ledger.open(ledger_path(tmp_path)) as ledger:
        report = ledger.verify(max_listed=2)
        assert not report.ok and report.rows == 5
        assert report.problems == (
            "settlement #1 (request 'r0x'): stored request id 'r0x' differs from the signed "
            "receipt's 'r0'",
            "settlement #2 (request 'r1x'): stored request id 'r1x' differs from the signed "
            "receipt's 'r1'")
        assert report.more_problems == 3
        assert str(report).endswith("  … and 3 more")
        assert ledger.verify(max_listed=0).problems == report.problems[:1]


def test_a_file_that_is_not_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    ledger_path(tmp_path).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError) as err:
        Ledger.open(ledger_path(tmp_path))
    assert err.value.reason == "malformed"
    ok, report = ledger_verify(tmp_path)
    assert not ok and "not a usable ledger" in report


# -- CLI hooks and the trio wrapper --------------------------------------------------------------

def test_summary_of_a_data_dir_without_a_ledger_creates_nothing(tmp_path: Path) -> None:
    summary = ledger_summary(tmp_path)
    assert summary["exists"] is False and summary["totals"]["paid"] == 0
    assert ledger_verify(tmp_path)[0] is True
    assert not ledger_path(tmp_path).exists()


def test_summary_shows_totals_recent_refusals_and_earnings(tmp_path: Path) -> None:
    with Ledger.open(ledger_path(tmp_path)) as ledger:
        accept(ledger, make_receipt().wire, make_job())
        with pytest.raises(LedgerError):
            accept(ledger, make_receipt(user="mallory").wire, make_job())
    summary = ledger_summary(tmp_path, provider=PROVIDER_PK)
    assert summary["exists"] is True
    assert summary["totals"]["paid"] == 100_000 and summary["totals"]["burned"] == 5_000
    assert summary["by_role"]["gateway"]["settlements"] == 1
    assert summary["refusals"]["mismatch"] == 1
    assert [r["request_id"] for r in summary["recent"]] == ["req-1"]
    assert summary["earnings"] == {"provider": peer_id_of(PROVIDER_PK), "earned": 95_000,
                                   "earned_neuro": 95_000 / 1e9}


async def test_async_ledger_settles_concurrently_from_trio(tmp_path: Path) -> None:
    receipts = [make_receipt(request_id=f"t{i}", tokens=100 * (i + 1)) for i in range(20)]
    async with await AsyncLedger.open(ledger_path(tmp_path)) as ledger:
        results: list[Settlement] = []

        async def settle_one(receipt: wire.Receipt) -> None:
            results.append(await ledger.accept(
                receipt.wire, make_job(request_id=receipt.request_id), now=NOW,
                capacity_tokens_per_s=CAPACITY, config=CONFIG))

        async with trio.open_nursery() as nursery:
            for receipt in receipts:
                nursery.start_soon(settle_one, receipt)
        with pytest.raises(LedgerError):
            await ledger.settle(receipts[0], "gateway", NOW, 0.05)
        totals = await ledger.totals()
        assert totals.settlements == 20 == len(results)
        assert totals.tokens == sum(100 * (i + 1) for i in range(20))
        assert totals.paid == sum(r.payment for r in results)
        assert (await ledger.refusals())["replay"] == 1
        assert (await ledger.verify()).ok


async def test_async_ledger_keeps_the_trio_loop_running_while_sqlite_waits(tmp_path: Path) -> None:
    """Another connection holds the write lock, so the settlement waits inside SQLite (busy
    timeout 10 s); the trio loop must keep running meanwhile — this task is the one that lets
    go of the lock. Run on the loop's thread, the settlement would block it and fail with
    'database is locked' after 10 s."""
    path = ledger_path(tmp_path)
    async with await AsyncLedger.open(path) as ledger:
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        results: list[Settlement] = []

        async def settle() -> None:
            results.append(await ledger.accept(make_receipt().wire, make_job(), now=NOW,
                                               capacity_tokens_per_s=CAPACITY, config=CONFIG))

        with trio.fail_after(8):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(settle)
                for _ in range(100):          # the loop turns while the worker thread waits
                    await trio.sleep(0)
                assert results == []
                blocker.execute("COMMIT")
                blocker.close()
        assert results == [Settlement(payment=100_000, burned=5_000, earned=95_000)]
        assert (await ledger.totals()).settlements == 1


# --- protocols/vectors/v2/receipts.json (spec v2 §9 step 4, R1–R8) -----------------------------

VECTORS = Path(__file__).resolve().parent.parent / "protocols" / "vectors" / "v2"
RECEIPTS = json.loads((VECTORS / "receipts.json").read_text("utf-8"))
RECEIPT_VECTORS = RECEIPTS["vectors"]
#: The vectors' provider key (messages.json publishes it), to sign the settlements of "the last
#: 60 s" that a vector's recent_provider_tokens stands for.
VECTOR_PROVIDER_KEY = next(
    coincurve.PrivateKey(bytes.fromhex(v["private_key"]))
    for v in json.loads((VECTORS / "messages.json").read_text("utf-8"))["vectors"]
    if v["name"] == "receipt")


def test_receipt_vectors_use_this_configs_values() -> None:
    """The vectors' charter (testnet) has the values CONFIG checks receipts with."""
    d = RECEIPTS["defaults"]
    charter = next(c for c in json.loads((VECTORS / "charter.json").read_text("utf-8"))["valid"]
                   if c["name"] == d["charter"])
    assert (CONFIG.max_node_tokens_per_s, CONFIG.max_tokens_per_minute, CONFIG.burn_rate) == (
        d["max_node_tokens_per_s"], d["max_tokens_per_minute"], d["burn_rate_percent"] / 100) == (
        charter["params"]["max_node_tokens_per_s"], charter["params"]["max_tokens_per_minute"],
        charter["params"]["burn_rate"])


def vector_job(vector: dict) -> MatchedJob:
    sent = wire.decode_unchecked_time(bytes.fromhex(vector["job"]["wire"]))
    assert isinstance(sent, wire.Job)
    fields = vector["job"]["fields"]
    assert (sent.signer.hex(), sent.issued_at_ms, sent.request_id, sent.user, sent.provider.hex(),
            sent.tokens, sent.locked_price_nano) == (
        fields["signer"], fields["issued_at_ms"], fields["request_id"], fields["user"],
        fields["provider"], int(fields["tokens"]), int(fields["locked_price_nano"]))
    return MatchedJob.from_job(sent, vector["job"]["sent_at_ms"] / 1000)


def test_receipt_vectors_cover_every_rule_and_reason() -> None:
    assert len(RECEIPT_VECTORS) >= 30
    assert {v["rule"] for v in RECEIPT_VECTORS} == {"-", "R1", "R2", "R3", "R4", "R5", "R6", "R7",
                                                    "R8"}
    refused = {v["expect"]["reason"] for v in RECEIPT_VECTORS if v["expect"] != "accept"}
    assert refused == set(REASONS) - {"overflow"}


@pytest.mark.parametrize("vector", RECEIPT_VECTORS, ids=lambda v: v["name"])
def test_receipt_vector_through_the_checks(vector: dict) -> None:
    data = bytes.fromhex(vector["receipt"])
    seen = {hashlib.sha256(data).digest()} if vector["settled_before"] else set()
    kwargs = dict(capacity_tokens_per_s=vector["capacity_tokens_per_s"],
                  now=vector["now_ms"] / 1000,
                  recent_provider_tokens=vector["recent_provider_tokens"], config=CONFIG,
                  seen=seen)
    if vector["expect"] == "accept":
        receipt = check_receipt(data, vector_job(vector), **kwargs)
        amounts = settle_amounts(receipt.tokens_served, receipt.locked_price_nano, CONFIG.burn_rate)
        assert {"payment_nano": amounts.payment, "burn_nano": amounts.burned,
                "earned_nano": amounts.earned} == vector["settlement"]
    else:
        with pytest.raises(LedgerError) as caught:
            check_receipt(data, vector_job(vector), **kwargs)
        assert caught.value.reason == vector["expect"]["reason"]


@pytest.mark.parametrize("vector", RECEIPT_VECTORS, ids=lambda v: v["name"])
def test_receipt_vector_through_a_sqlite_ledger(vector: dict, ledger: Ledger) -> None:
    """The same vector against a real ledger file: its state is made by settling, 61 s before now
    (outside the rate window), the receipt itself when it "settled before", and, 30 s before now,
    a receipt of the same provider for the vector's recent tokens."""
    data = bytes.fromhex(vector["receipt"])
    now = vector["now_ms"] / 1000
    job = vector_job(vector)
    if vector["settled_before"]:
        ledger.settle(data, "gateway", now - 61, CONFIG.burn_rate)
    if vector["recent_provider_tokens"]:
        issued_ms = vector["now_ms"] - 30_000
        filler = wire.sign(wire.Receipt(
            signer=job.provider, issued_at_ms=issued_ms, request_id="earlier", gateway=job.gateway,
            user="carol", tokens_served=vector["recent_provider_tokens"], locked_price_nano=1,
            started_at_ms=issued_ms, ended_at_ms=issued_ms), VECTOR_PROVIDER_KEY)
        ledger.settle(filler.wire, "gateway", now - 30, CONFIG.burn_rate)
    assert ledger.recent_tokens(job.provider, now) == vector["recent_provider_tokens"]
    before = ledger.totals()
    if vector["expect"] == "accept":
        amounts = accept(ledger, data, job, now=now, capacity=vector["capacity_tokens_per_s"])
        assert {"payment_nano": amounts.payment, "burn_nano": amounts.burned,
                "earned_nano": amounts.earned} == vector["settlement"]
        assert ledger.has_settled(hashlib.sha256(data).digest())
        assert ledger.totals().paid == before.paid + amounts.payment
    else:
        with pytest.raises(LedgerError) as caught:
            accept(ledger, data, job, now=now, capacity=vector["capacity_tokens_per_s"])
        assert caught.value.reason == vector["expect"]["reason"]
        assert only_refusal(ledger) == {vector["expect"]["reason"]: 1}
        assert ledger.totals() == before
