"""Receipt acceptance, sans-IO: may these receipt bytes settle against the job we matched?

This is the one place receipts are checked (protocols/market-v1.md §9, R1–R8): a receipt only
ever arrives at the gateway that sent the job, in its JobResult, and the plausibility and rate
checks need the provider's settlements over time, which the gateway's ledger keeps on disk (the
wire `Validator` checks announcements only). A gateway settles a user's payment only on a receipt
that (in this order; R1–R8 of the spec's §9)

1. decodes as a wire message with a valid signature, fresh: issued within the wire window (at
   most 300 s old, 30 s early) (R1: `malformed`, `bad_signature`, `stale`), and is a receipt
   (R2: `malformed`);
2. is not dated before the job was sent (R3: `stale`);
3. names exactly the job this gateway matched: provider, request id, gateway, user and the locked
   price (R4: `mismatch`). In fixed-price mode the locked price *is* the fixed price, so this
   check is what makes fixed mode settle at the fixed price;
4. has not settled before (R5: `replay`; the store's UNIQUE receipt id enforces it again on disk);
5. is plausible: no more tokens than were requested and no more than twice what the provider's
   announced capacity could have produced since the job was sent, counted as at least 1 s
   (R6: `implausible`);
6. stays within the ledger's ceiling on one settlement (R7: `implausible`);
7. keeps the provider within `max_tokens_per_minute` over the last 60 s (R8: `over_rate`).

Nothing here reads a clock, a file or a socket: `now` and the per-provider recent token count come
in as arguments, and every refusal is one `LedgerError` with a stable reason code for counters and
a message a person can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Container

from neuroshard_p2p import wire
from neuroshard_p2p.config import MarketConfig
from neuroshard_p2p.money import Settlement, settle_amounts
from neuroshard_p2p.timeline import ms_of, seconds_of
from neuroshard_p2p.wire import Job, Receipt, WireError

#: Refusal reason codes, stable for counters and metrics.
MALFORMED = "malformed"
BAD_SIGNATURE = "bad_signature"
STALE = "stale"
MISMATCH = "mismatch"
REPLAY = "replay"
IMPLAUSIBLE = "implausible"
OVER_RATE = "over_rate"
OVERFLOW = "overflow"
REASONS = (MALFORMED, BAD_SIGNATURE, STALE, MISMATCH, REPLAY, IMPLAUSIBLE, OVER_RATE, OVERFLOW)
#: Not a refusal: this node could not write its ledger (disk full, I/O error, read-only). Says
#: nothing about the receipt, is never counted among the refusals and never goes on the wire.
STORAGE = "storage"

#: Window of the per-provider rate limit (max_tokens_per_minute).
RATE_WINDOW_S = 60.0
#: The time since the job was sent counts as at least this long in the plausibility check, so
#: clock granularity and tiny jobs answered in a few milliseconds never look implausible.
RECEIPT_MIN_ELAPSED_MS = 1000
#: Ceiling on one settlement, whatever the receipt says: 10^6 NEURO and 10^12 tokens. Far above any
#: real job (50k tok/s × 300 s at 1 NEURO/1M tokens is 15 NEURO), far below where sums of signed
#: 64-bit SQLite integers could overflow.
MAX_SETTLEMENT_NANO = 10**15
MAX_SETTLEMENT_TOKENS = 10**12


class LedgerError(ValueError):
    """A receipt that may not settle, or a ledger that cannot do what was asked.

    `reason` is one of `REASONS` (a short stable code for counters); str(error) is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"LedgerError({self.reason!r}, {str(self)!r})"


@dataclass(frozen=True)
class MatchedJob:
    """What the gateway knows about a job it matched: the receipt must agree with all of it.

    `sent_at` is the gateway's own clock (seconds since the epoch) when it sent the job; it bounds
    how long the provider had to serve, independently of the times the provider writes into its
    receipt."""

    request_id: str
    gateway: bytes            # 33-byte public key of this gateway
    provider: bytes           # 33-byte public key of the provider the job went to
    user: str
    locked_price_nano: int    # per 1M tokens; in fixed-price mode this is the fixed price
    tokens_requested: int
    sent_at: float

    @classmethod
    def from_job(cls, job: Job, sent_at: float) -> "MatchedJob":
        """The record of a signed wire `Job` this gateway sent at `sent_at`."""
        return cls(request_id=job.request_id, gateway=job.signer, provider=job.provider,
                   user=job.user, locked_price_nano=job.locked_price_nano,
                   tokens_requested=job.tokens, sent_at=sent_at)


def decode_receipt(data: bytes, now: float | None) -> Receipt:
    """Decode wire bytes as a fresh, correctly signed receipt, or raise LedgerError. With
    `now=None` freshness is not checked (a provider's own receipt, a stored one)."""
    try:
        message = wire.decode(data, now) if now is not None else wire.decode_unchecked_time(data)
    except WireError as exc:
        if exc.reason == "bad_signature":
            raise LedgerError(BAD_SIGNATURE, f"receipt {exc}") from None
        if exc.reason in ("stale", "future"):
            raise LedgerError(STALE, f"receipt {exc}") from None
        raise LedgerError(MALFORMED, f"receipt is not a valid wire message ({exc.reason}): {exc}") from None
    if not isinstance(message, Receipt):
        raise LedgerError(MALFORMED, f"expected a receipt, got a {type(message).__name__}")
    return message


def check_matches_job(receipt: Receipt, job: MatchedJob) -> None:
    """The receipt names the job this gateway matched, at the price it locked."""
    def need(ok: bool, what: str, got: object, expected: object) -> None:
        if not ok:
            raise LedgerError(MISMATCH, f"receipt {what} is {got}, the matched job has {expected}")

    need(receipt.signer == job.provider, "signer (provider)", receipt.signer.hex()[:16] + "…",
         job.provider.hex()[:16] + "…")
    need(receipt.request_id == job.request_id, "request id", repr(receipt.request_id),
         repr(job.request_id))
    need(receipt.gateway == job.gateway, "gateway", receipt.gateway.hex()[:16] + "…",
         job.gateway.hex()[:16] + "…")
    need(receipt.user == job.user, "user", repr(receipt.user), repr(job.user))
    need(receipt.locked_price_nano == job.locked_price_nano, "locked price",
         f"{receipt.locked_price_nano} nano", f"{job.locked_price_nano} nano")


def check_issued_after_job(receipt: Receipt, job: MatchedJob) -> None:
    """A receipt dated before its job was sent (beyond the clock skew the wire allows) belongs to
    some other exchange."""
    earliest_ms = ms_of(job.sent_at - wire.MAX_FUTURE_S)
    if receipt.issued_at_ms < earliest_ms:
        before_s = job.sent_at - seconds_of(receipt.issued_at_ms)
        raise LedgerError(STALE, f"receipt issued {before_s:.0f} s before its job was sent "
                                 f"(clock skew limit {wire.MAX_FUTURE_S:.0f} s)")


def check_plausible(receipt: Receipt, job: MatchedJob, capacity_tokens_per_s: int, now: float,
                    config: MarketConfig) -> None:
    """No more tokens than requested, and no more than 2 × capacity × elapsed.

    Capacity is what the provider announced (capped at `max_node_tokens_per_s`, so a node cannot
    buy itself headroom by announcing an absurd capacity). Elapsed is the gateway's own
    `now − sent_at` rounded to whole ms, not the times in the receipt, which the provider writes
    itself; it counts as at least RECEIPT_MIN_ELAPSED_MS, so a tiny job answered in a few
    milliseconds never looks implausible. Integer milliseconds, no float comparison."""
    if receipt.tokens_served > job.tokens_requested:
        raise LedgerError(IMPLAUSIBLE, f"receipt claims {receipt.tokens_served} tokens served, "
                                       f"the job requested {job.tokens_requested}")
    capacity = max(0, min(capacity_tokens_per_s, config.max_node_tokens_per_s))
    elapsed_ms = max(ms_of(now - job.sent_at), RECEIPT_MIN_ELAPSED_MS)
    if receipt.tokens_served * 1000 > 2 * capacity * elapsed_ms:
        raise LedgerError(IMPLAUSIBLE, f"receipt claims {receipt.tokens_served} tokens in "
                                       f"{seconds_of(elapsed_ms):.3f} s since the job was sent; at the "
                                       f"announced {capacity} tokens/s at most "
                                       f"{2 * capacity * elapsed_ms // 1000} are plausible "
                                       f"(2 × capacity × elapsed)")


def check_rate(receipt: Receipt, recent_provider_tokens: int, config: MarketConfig) -> None:
    """The provider's tokens settled in the last 60 s plus this receipt stay within
    `max_tokens_per_minute`."""
    total = recent_provider_tokens + receipt.tokens_served
    if total > config.max_tokens_per_minute:
        raise LedgerError(OVER_RATE, f"provider would reach {total} tokens in {RATE_WINDOW_S:.0f} s "
                                     f"(limit max_tokens_per_minute = {config.max_tokens_per_minute})")


def amounts_of(receipt: Receipt, burn_rate: float) -> Settlement:
    """The settlement a receipt makes, refused (`implausible`) beyond the per-settlement ceiling."""
    if receipt.tokens_served > MAX_SETTLEMENT_TOKENS:
        raise LedgerError(IMPLAUSIBLE, f"receipt claims {receipt.tokens_served} tokens "
                                       f"(ledger ceiling {MAX_SETTLEMENT_TOKENS} per settlement)")
    amounts = settle_amounts(receipt.tokens_served, receipt.locked_price_nano, burn_rate)
    if amounts.payment > MAX_SETTLEMENT_NANO:
        raise LedgerError(IMPLAUSIBLE, f"receipt would move {amounts.payment} nano-NEURO "
                                       f"(ledger ceiling {MAX_SETTLEMENT_NANO} per settlement)")
    return amounts


def check_receipt(data: bytes, job: MatchedJob, *, capacity_tokens_per_s: int, now: float,
                  recent_provider_tokens: int, config: MarketConfig,
                  seen: Container[bytes] = frozenset()) -> Receipt:
    """Accept `data` as the receipt for `job` or raise LedgerError with the reason.

    `capacity_tokens_per_s` is the provider's announced capacity when the job was matched;
    `recent_provider_tokens` the tokens already settled for this provider in the last 60 s;
    `seen` the receipt ids (SHA-256 of the wire bytes) that already settled."""
    receipt = decode_receipt(data, now)
    check_issued_after_job(receipt, job)
    check_matches_job(receipt, job)
    if receipt.msg_id in seen:
        raise LedgerError(REPLAY, f"receipt {receipt.msg_id.hex()[:16]}… has already settled")
    check_plausible(receipt, job, capacity_tokens_per_s, now, config)
    amounts_of(receipt, config.burn_rate)
    check_rate(receipt, recent_provider_tokens, config)
    return receipt


__all__ = [
    "LedgerError", "MatchedJob", "check_receipt", "decode_receipt", "check_matches_job",
    "check_issued_after_job", "check_plausible", "check_rate", "amounts_of", "REASONS",
    "MALFORMED", "BAD_SIGNATURE", "STALE", "MISMATCH", "REPLAY", "IMPLAUSIBLE", "OVER_RATE",
    "OVERFLOW", "RATE_WINDOW_S", "RECEIPT_MIN_ELAPSED_MS", "MAX_SETTLEMENT_NANO",
    "MAX_SETTLEMENT_TOKENS",
]
