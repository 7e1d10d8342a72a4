"""The v1 vectors whose behaviour version 2 keeps, in v2 bytes: `validator.json`, `receipts.json`,
`price.json` (the view and the clock), and the v1 frame vectors `frames.json` did not have yet.

`generate.py` calls this module (`documents`, `with_v1_frames`); like it, this module imports
nothing of the project. Each vector is a port of the one `protocols/vectors/generate.py` (v1)
wrote: the same keys, times, fields and expected outcomes, with the bytes of market-v2.md (version
item 2, an announcement's `work_nonce` and `credential`, a job's `credential`, frames of version 2
and the 5-item SyncRequest), and the rules v2's text adds to the same checks (V3, V7 and V8 for
sync and for revocation lists). Where v1 cross-checked against the project's code (`ledger.checks`,
the view), this module checks against generate.py's own reading of the text instead (`g_decode`,
`Validator`, `g_count`, `g_frame`, and `g_receipt` below): every hand-written outcome must be what
that reading gives, or nothing is written. The project's tests do the checking against the code.
"""

from __future__ import annotations

from typing import Any

import coincurve
import msgpack

import generate as g
from generate import (
    ANNOUNCE,
    AUTHORITY_A,
    FULL_NONCE,
    GATEWAY,
    GUILD,
    HEADER,
    JOB,
    OTHER,
    PROVIDER,
    RECEIPT,
    SIMNET,
    T0,
    TESTNET,
    Charter,
    Rejected,
    body_items,
    json_value,
    key,
    message,
    pack,
    peer_id,
    pub,
    sha,
)

#: The full-work nonce of the keys that have one (work.json): testnet asks 24 bits, so these
#: announcements would also count fully; validity does not look at the nonce.
NONCE = {pub(PROVIDER): FULL_NONCE["provider"], pub(GATEWAY): FULL_NONCE["gateway"]}


def announcement(k: coincurve.PrivateKey, seq: int, issued_at_ms: int, **changes: Any) -> bytes:
    """An open network's announcement of `k` (v1's `announcement`, in v2 bytes)."""
    return message(1, k, issued_at_ms, {**ANNOUNCE, "work_nonce": NONCE.get(pub(k), 0),
                                        "seq": seq, **changes})


def job_wire(sent_at_ms: int = T0, **changes: Any) -> bytes:
    return message(2, GATEWAY, sent_at_ms, {**JOB, **changes})


# --- validator.json (§6.2: V1, V3, V4, V6, V7, V8 over a sequence) -------------------------------

class Step:
    """One message given to the validator: its bytes, the receiver's clock, the path (`gossip` or
    `sync`), the publishing peer on gossip, and the expected outcome."""

    def __init__(self, data: bytes, now_ms: int, expect: str | tuple[str, str], *,
                 path: str = "gossip", from_signer: bytes | None = None,
                 counts: dict[str, int] | None = None) -> None:
        self.data, self.now_ms, self.expect, self.path = data, now_ms, expect, path
        self.from_signer, self.counts = from_signer, counts

    def json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wire": self.data.hex(), "now_ms": self.now_ms, "path": self.path}
        if self.from_signer is not None:
            out["from_peer"] = peer_id(self.from_signer)
        if self.counts is not None:
            out["counts"] = self.counts
        out["expect"] = (self.expect if isinstance(self.expect, str)
                         else {"reason": self.expect[0], "action": self.expect[1]})
        return out


def run_validator(charter: Charter, steps: list[Step]) -> None:
    """The steps through generate.py's reading of §6.2 (one fresh validator): each outcome must
    be the hand-written one, and each `counts` the tally so far (every outcome by its reason;
    `equivocation` also counts the accepted evidence, §6.2 V7)."""
    v = g.Validator(charter)
    tally: dict[str, int] = {}
    for number, s in enumerate(steps):
        items = msgpack.unpackb(msgpack.unpackb(s.data)[0])
        evidence = False
        if items[1] == 1:  # an announcement: evidence if its (signer, seq) has another id
            ids = v.seq_ids.get((items[2], items[4]), set())
            evidence = bool(ids) and sha(s.data) not in ids
        try:
            got: str | tuple[str, str] = v.check(s.data, s.now_ms, s.path, s.from_signer)
        except Rejected as r:
            got = (r.reason, r.action)
            tally[r.reason] = tally.get(r.reason, 0) + 1
        else:
            tally["accepted"] = tally.get("accepted", 0) + 1
            if evidence:
                tally["equivocation"] = tally.get("equivocation", 0) + 1
        assert got == s.expect, (number, got, s.expect)
        for reason, count in (s.counts or {}).items():
            assert tally.get(reason, 0) == count, (number, reason, tally)


def validator_vector(name: str, charter: Charter, note: str, steps: list[Step]) -> dict[str, Any]:
    run_validator(charter, steps)
    return {"name": name, "charter": charter.name, "note": note,
            "steps": [s.json() for s in steps]}


def validator_vectors() -> list[dict[str, Any]]:
    ok = "accepted"
    a1, a2, a3 = (announcement(PROVIDER, n, T0 + n) for n in (1, 2, 3))
    eq_a, eq_b, eq_c = (announcement(PROVIDER, 4, T0 + 4, pending_tokens=n) for n in (1, 2, 3))
    flood = [announcement(GATEWAY, n, T0 + n) for n in range(1, 10)]
    me, other = pub(PROVIDER), pub(OTHER)
    out = [
        # the v1 vectors, in v2 bytes
        validator_vector("duplicate", TESTNET,
                         "the same bytes twice: the second is ignored without penalty (V1)",
                         [Step(a1, T0 + 1000, ok), Step(a1, T0 + 1100, ("duplicate", "ignore"))]),
        validator_vector("seq-regression", TESTNET,
                         "an older seq after a newer one is ignored (V7)",
                         [Step(a2, T0 + 1000, ok),
                          Step(a1, T0 + 1100, ("seq_regression", "ignore")),
                          Step(a3, T0 + 1200, ok)]),
        validator_vector("equivocation", TESTNET,
                         "two different messages with the same (signer, seq): the second is "
                         "passed on once as evidence (counted as equivocation), a third is "
                         "ignored (V7)",
                         [Step(eq_a, T0 + 1000, ok),
                          Step(eq_b, T0 + 1100, ok, counts={"equivocation": 1}),
                          Step(eq_c, T0 + 1200, ("equivocation", "ignore"))]),
        validator_vector("rate-limit", TESTNET,
                         "burst 5, one more token per tick (testnet tick_s 1.0): the 6th "
                         "announcement at the same instant is rejected, one a second later is "
                         "accepted (V8)",
                         [*(Step(flood[i], T0 + 1000, ok) for i in range(5)),
                          Step(flood[5], T0 + 1000, ("rate_limited", "reject")),
                          Step(flood[6], T0 + 2000, ok)]),
        validator_vector("rate-limit-clock-set-back", TESTNET,
                         "the receiver's clock is set back 40 s after a burst of 5: the bucket "
                         "refills from the new time (the 6th message then is rejected, one a "
                         "second later accepted), not from the old one 40 s ahead (V8)",
                         [*(Step(flood[i], T0 + 60_000, ok) for i in range(5)),
                          Step(flood[5], T0 + 20_000, ("rate_limited", "reject")),
                          Step(flood[6], T0 + 21_000, ok)]),
        validator_vector("implausible-capacity", TESTNET,
                         "capacity above max_node_tokens_per_s (testnet 50,000) (V6)",
                         [Step(announcement(PROVIDER, 1, T0, tokens_per_second=50_001), T0 + 1000,
                               ("implausible", "reject")),
                          Step(announcement(PROVIDER, 2, T0, tokens_per_second=50_000), T0 + 1000,
                               ok)]),
        validator_vector("freshness-boundaries", TESTNET,
                         "exactly 300 s old and exactly 30 s early are still accepted (W13)",
                         [Step(announcement(PROVIDER, 1, T0), T0 + 300_000, ok),
                          Step(announcement(PROVIDER, 2, T0 + 330_000), T0 + 300_000, ok)]),
        validator_vector("author", TESTNET,
                         "on gossip the announcement's signer must be the publishing peer "
                         "(`from`) (V4)",
                         [Step(a1, T0 + 1000, ("wrong_signer", "reject"), from_signer=other),
                          Step(a1, T0 + 1000, ok, from_signer=me)]),
        validator_vector("kind-on-gossip", TESTNET,
                         "on the topic and in sync only announcements travel, and revocation "
                         "lists in a members network: a job and a receipt travel on the job "
                         "stream (§9), a credential only inside an announcement or a job, and an "
                         "open network has no lists (V3)",
                         [Step(job_wire(), T0 + 1000, ("kind", "reject")),
                          Step(message(3, PROVIDER, T0 + 2000, RECEIPT), T0 + 3000,
                               ("kind", "reject")),
                          Step(g.PROVIDER_CREDENTIAL, T0 + 3000, ("kind", "reject")),
                          Step(g.revocation_list(AUTHORITY_A, 1, T0, [], network=TESTNET.hash),
                               T0 + 3000, ("kind", "reject"))]),
        # what v2's text adds to the same rules
        validator_vector("sync-takes-no-token", TESTNET,
                         "V8 is for live gossip: 3 announcements by sync create the signer's "
                         "bucket full and take no token, so 5 more by gossip at the same instant "
                         "pass and the 6th is rejected",
                         [*(Step(flood[i], T0 + 1000, ok, path="sync") for i in range(3)),
                          *(Step(flood[i], T0 + 1000, ok) for i in range(3, 8)),
                          Step(flood[8], T0 + 1000, ("rate_limited", "reject"))]),
        validator_vector("sync-history", TESTNET,
                         "V7's history form (§8): by sync a seq below the highest accepted is "
                         "accepted (by gossip it is a seq_regression), the same bytes again are a "
                         "duplicate (V1), and it raises nothing: gossip below the highest stays a "
                         "seq_regression",
                         [Step(a3, T0 + 1000, ok),
                          Step(a1, T0 + 1100, ("seq_regression", "ignore")),
                          Step(a1, T0 + 1200, ok, path="sync"),
                          Step(a1, T0 + 1300, ("duplicate", "ignore"), path="sync"),
                          Step(a2, T0 + 1400, ("seq_regression", "ignore")),
                          Step(a2, T0 + 1500, ok, path="sync")]),
        validator_vector("sync-equivocation", TESTNET,
                         "by sync an equal seq with another id is accepted as equivocation "
                         "evidence also when the signer already equivocated at that seq (§8); by "
                         "gossip the third is ignored",
                         [Step(eq_a, T0 + 1000, ok),
                          Step(eq_b, T0 + 1100, ok, counts={"equivocation": 1}),
                          Step(eq_c, T0 + 1200, ("equivocation", "ignore")),
                          Step(eq_c, T0 + 1300, ok, path="sync")]),
    ]
    return out + list_validator_vectors()


def list_validator_vectors() -> list[dict[str, Any]]:
    """§6.3 in the guild (members) network: V4 does not apply, V7 by (seq, id), V8 in the
    authority's one bucket, shared with its announcements."""
    ok = "accepted"
    lists = {seq: g.revocation_list(AUTHORITY_A, seq, T0 + seq, [(pub(OTHER), T0)])
             for seq in (1, 2, 3)}
    # three lists of one seq: ordered by message id, the same everywhere
    same_seq = sorted((g.revocation_list(AUTHORITY_A, 4, T0 + 4, [(pub(OTHER), T0 + n)])
                       for n in range(3)), key=sha)
    low, mid, high = same_seq
    gw = pub(GATEWAY)
    newest = [
        Step(lists[2], T0 + 1000, ok, from_signer=gw),
        Step(lists[1], T0 + 1100, ("seq_regression", "ignore")),
        Step(lists[2], T0 + 1200, ("duplicate", "ignore")),
        Step(lists[3], T0 + 1300, ok, path="sync"),
        Step(mid, T0 + 1400, ok),
        Step(high, T0 + 1500, ok),
        Step(low, T0 + 1600, ("seq_regression", "ignore")),
        Step(low, T0 + 1700, ("seq_regression", "ignore"), path="sync"),
    ]
    auth = AUTHORITY_A
    ann = [g.member_announcement(k=auth, issued=T0 + n, seq=n) for n in (1, 2, 3)]
    burst = [g.revocation_list(auth, seq, T0 + 10 + seq, [(pub(OTHER), T0)]) for seq in range(1, 8)]
    shared = [
        Step(ann[0], T0 + 1000, ok), Step(ann[1], T0 + 1000, ok),
        *(Step(burst[i], T0 + 1000, ok) for i in range(3)),
        Step(burst[3], T0 + 1000, ("rate_limited", "reject")),
        Step(ann[2], T0 + 1000, ("rate_limited", "reject")),
        Step(burst[3], T0 + 2000, ok),
        Step(burst[4], T0 + 2000, ok, path="sync"),
        Step(burst[5], T0 + 2000, ("rate_limited", "reject")),
        Step(burst[5], T0 + 3000, ok),
    ]
    return [
        validator_vector("list-newest-wins", GUILD,
                         "revocation lists of one authority (§6.3): any peer may relay one (V4 "
                         "does not apply); a lower seq than the held list is a seq_regression, "
                         "the same bytes a duplicate (V1); of lists with one seq the larger "
                         "message id wins, on gossip and in sync alike (V7 for lists)",
                         newest),
        validator_vector("list-rate-limit", GUILD,
                         "authority a, also a member that announces, has one bucket for its "
                         "announcements and its lists: 2 announcements and 3 lists at one instant "
                         "pass, a 4th list and a 3rd announcement are rejected; a list a second "
                         "later passes, one by sync takes no token, a further one by gossip is "
                         "rejected until the next second (V8)",
                         shared),
    ]


# --- receipts.json (§9 step 4, R1–R8) -----------------------------------------------------------

def receipt_defaults(charter: Charter) -> dict[str, Any]:
    p = charter.params
    burn_percent = round(p["burn_rate"] * 100)
    assert burn_percent / 100 == p["burn_rate"]
    return {"charter": charter.name, "max_node_tokens_per_s": p["max_node_tokens_per_s"],
            "max_tokens_per_minute": p["max_tokens_per_minute"],
            "burn_rate_percent": burn_percent, "receipt_min_elapsed_ms": 1000,
            "max_settlement_tokens": 10**12, "max_settlement_nano": 10**15,
            "rate_window_ms": 60_000, "max_age_ms": g.MAX_AGE_MS,
            "max_future_ms": g.MAX_FUTURE_MS}


def g_receipt(data: bytes, job: bytes, sent_at_ms: int, now_ms: int, capacity: int, recent: int,
              settled_before: bool, charter: Charter) -> str | dict[str, int]:
    """§9 step 4, R1–R8 in order: the first reason that fails, or the settlement."""
    d = receipt_defaults(charter)
    try:                                                            # R1
        kind, items = g.g_decode(data, now_ms, charter)
    except Rejected as r:
        if r.rule in ("W3", "W12"):
            return "bad_signature"
        return "stale" if r.rule == "W13" else "malformed"
    if kind != 3:                                                   # R2
        return "malformed"
    r = dict(zip(g.FIELDS[3], items[4:]))
    _, job_items = g.g_decode(job, None, charter)
    j = dict(zip(g.FIELDS[2], job_items[4:]))
    if items[3] < sent_at_ms - d["max_future_ms"]:                  # R3
        return "stale"
    if (items[2], r["request_id"], r["gateway"], r["user"], r["locked_price_nano"]) != (
            j["provider"], j["request_id"], job_items[2], j["user"], j["locked_price_nano"]):
        return "mismatch"                                           # R4
    if settled_before:                                              # R5
        return "replay"
    tokens, price = r["tokens_served"], r["locked_price_nano"]
    offer = min(capacity, d["max_node_tokens_per_s"])               # open network: no cred cap
    elapsed_ms = max(now_ms - sent_at_ms, d["receipt_min_elapsed_ms"])
    if tokens > j["tokens"] or tokens * 1000 > 2 * offer * elapsed_ms:
        return "implausible"                                        # R6
    payment = tokens * price // 10**6
    if tokens > d["max_settlement_tokens"] or payment > d["max_settlement_nano"]:
        return "implausible"                                        # R7
    if recent + tokens > d["max_tokens_per_minute"]:                # R8
        return "over_rate"
    burn = payment * d["burn_rate_percent"] // 100
    return {"payment_nano": payment, "burn_nano": burn, "earned_nano": payment - burn}


def receipt_vectors() -> list[dict[str, Any]]:
    """Each vector: the Job the gateway sent (fields, wire, its clock `sent_at_ms` when it sent it),
    the gateway's `now_ms` when the JobResult arrived, the capacity of the matched offer, the
    provider's tokens settled at this gateway in the last 60 s, whether these receipt bytes settled
    before, the receipt bytes, and the outcome: accept with the settlement, or the first of R1–R8
    that fails (its reason). Every vector passes the rules before the one it names; vectors named
    `order-*` also fail a later rule, so they pin which of the two is checked first."""

    def job(sent_at_ms: int = T0, **changes: Any) -> dict[str, Any]:
        fields = {**JOB, **changes}
        return {"fields": {"signer": pub(GATEWAY).hex(), "issued_at_ms": sent_at_ms,
                           **{n: json_value(v) for n, v in fields.items()}},
                "wire": job_wire(sent_at_ms, **changes).hex(), "sent_at_ms": sent_at_ms}

    def receipt(k: coincurve.PrivateKey = PROVIDER, issued: int = T0 + 2000,
                **changes: Any) -> bytes:
        fields = {**RECEIPT, "started_at_ms": issued - 1800, "ended_at_ms": issued - 300, **changes}
        return message(3, k, issued, fields)

    def vector(name: str, rule: str, note: str, data: bytes, expect: str, *,
               the_job: dict[str, Any] | None = None, now_ms: int = T0 + 2500,
               capacity: int = 1000, recent: int = 0,
               settled_before: bool = False) -> dict[str, Any]:
        j = the_job or job()
        out: dict[str, Any] = {
            "name": name, "rule": rule, "note": note, "job": j, "now_ms": now_ms,
            "capacity_tokens_per_s": capacity, "recent_provider_tokens": recent,
            "settled_before": settled_before, "receipt": data.hex()}
        got = g_receipt(data, bytes.fromhex(j["wire"]), j["sent_at_ms"], now_ms, capacity, recent,
                        settled_before, TESTNET)
        if expect == "accept":
            assert isinstance(got, dict), (name, got)
            out["expect"] = "accept"
            out["settlement"] = got
        else:
            assert got == expect, (name, got)
            out["expect"] = {"reason": expect}
        return out

    good = receipt()
    forged = bytearray(good)
    forged[-1] ^= 0x01
    stale_forged = bytearray(receipt(issued=T0 - 300_000))
    stale_forged[-1] ^= 0x01
    big_price = 2 * 10**18            # 500 tokens × 2·10^18 / 10^6 = 10^15 nano exactly
    long_ms = 10**10 + 1000   # 2 × 50,000 tokens/s × (10^10 + 1000) ms ≥ (10^12 + 1) × 1000
    huge_job = job(T0 + 2500 - long_ms, tokens=10**12 + 1, locked_price_nano=1000,
                   max_price_nano=1000)
    return [
        vector("accept", "-", "480 tokens at 0.12 NEURO/1M: 57,600 nano paid, 2,880 burned",
               good, "accept"),
        # R1: the bytes as a message (§6.1 W1–W13 at now)
        vector("r1-bad-signature", "R1", "one bit of the signature flipped (W12)", bytes(forged),
               "bad_signature"),
        vector("r1-not-a-message", "R1", "bytes that are no wire message (W2)", b"\x92\xc4\x00",
               "malformed"),
        vector("r1-bad-field", "R1",
               "started_at_ms after ended_at_ms (W10 bad_field → malformed)",
               receipt(started_at_ms=T0 + 1800, ended_at_ms=T0 + 1700), "malformed"),
        vector("r1-version-1", "R1",
               "the same receipt as a v1 message (v1's layout differs only in the version "
               "item), correctly signed: W6 version → malformed",
               g.signed([1, *body_items(3, pub(PROVIDER), T0 + 2000,
                                        {**RECEIPT, "started_at_ms": T0 + 200,
                                         "ended_at_ms": T0 + 1700})[1:]], PROVIDER),
               "malformed"),
        vector("r1-stale", "R1", "received 300.001 s after its issued_at (W13)", good, "stale",
               now_ms=T0 + 2000 + 300_001),
        vector("r1-stale-boundary", "R1", "received exactly 300 s after its issued_at: fresh",
               good, "accept", now_ms=T0 + 2000 + 300_000),
        vector("r1-future", "R1", "issued 30.001 s after the gateway's now (W13 future → stale)",
               receipt(issued=T0 + 32_501), "stale"),
        vector("r1-future-boundary", "R1", "issued exactly 30 s after the gateway's now: fresh",
               receipt(issued=T0 + 32_500), "accept"),
        vector("order-r1-signature-before-age", "R1",
               "bad signature and 302.5 s old: W12 comes before W13",
               bytes(stale_forged), "bad_signature"),
        # R2: a Receipt
        vector("r2-a-job", "R2", "the Job itself, validly signed by the gateway, not a Receipt",
               bytes.fromhex(job()["wire"]), "malformed"),
        vector("r2-an-announcement", "R2", "a valid announcement of the provider, not a Receipt",
               announcement(PROVIDER, 1, T0 + 2000), "malformed"),
        # R3: not dated before the job (sent_at − 30 s)
        vector("r3-at-bound", "R3", "issued exactly 30 s before the job was sent",
               receipt(issued=T0 + 2000), "accept", the_job=job(T0 + 32_000), now_ms=T0 + 32_500),
        vector("r3-before-bound", "R3", "issued 30.001 s before the job was sent",
               receipt(issued=T0 + 1999), "stale", the_job=job(T0 + 32_000), now_ms=T0 + 32_500),
        vector("order-r3-before-r4", "R3", "dated before the job and names another user: stale",
               receipt(issued=T0 + 1999, user="bob"), "stale", the_job=job(T0 + 32_000),
               now_ms=T0 + 32_500),
        # R4: names the job sent
        vector("r4-signer", "R4", "signed by another key than the job's provider", receipt(OTHER),
               "mismatch"),
        vector("r4-request-id", "R4", "another request id", receipt(request_id="req-0002"),
               "mismatch"),
        vector("r4-gateway", "R4", "names another gateway", receipt(gateway=pub(OTHER)),
               "mismatch"),
        vector("r4-user", "R4", "names another user", receipt(user="bob"), "mismatch"),
        vector("r4-locked-price", "R4", "another locked price (fixed mode: the fixed price)",
               receipt(locked_price_nano=120_000_001), "mismatch"),
        vector("order-r4-before-r5", "R4", "another user, and these bytes settled before: mismatch",
               receipt(user="bob"), "mismatch", settled_before=True),
        # R5: not settled before
        vector("r5-replay", "R5", "these receipt bytes settled before", good, "replay",
               settled_before=True),
        vector("order-r5-before-r6", "R5",
               "settled before, and implausible at 1 token/s: replay", good, "replay",
               settled_before=True, capacity=1),
        # R6: plausible
        vector("r6-more-than-requested", "R6", "501 tokens for a job of 500",
               receipt(tokens_served=501), "implausible"),
        vector("r6-at-capacity", "R6",
               "480 tokens in 2.5 s at 96 tokens/s: 480 × 1000 = 2 × 96 × 2500",
               good, "accept", capacity=96),
        vector("r6-above-capacity", "R6", "481 tokens in 2.5 s at 96 tokens/s: one above",
               receipt(tokens_served=481), "implausible", capacity=96),
        vector("r6-floor", "R6",
               "answered 100 ms after sending counts as 1 s: 480 × 1000 = 2 × 240 × 1000",
               good, "accept", capacity=240, the_job=job(T0 + 2400)),
        vector("r6-floor-above", "R6", "the same with 481 tokens: one above 2 × 240 × 1 s",
               receipt(tokens_served=481), "implausible", capacity=240, the_job=job(T0 + 2400)),
        vector("r6-capacity-capped", "R6",
               "10^9 tokens/s announced counts as max_node_tokens_per_s = 50,000: 250,000 tokens "
               "in 2.5 s", receipt(tokens_served=250_000), "accept", capacity=10**9,
               the_job=job(tokens=300_000)),
        vector("r6-capacity-capped-above", "R6",
               "the same with 250,001 tokens: above 2 × 50,000 × 2.5 s",
               receipt(tokens_served=250_001), "implausible", capacity=10**9,
               the_job=job(tokens=300_000)),
        vector("order-r6-before-r8", "R6",
               "implausible at 95 tokens/s and over the per-minute limit: implausible", good,
               "implausible", capacity=95, recent=999_999),
        # R7: one settlement within the ceiling
        vector("r7-payment-at-ceiling", "R7", "500 tokens at 2·10^18 nano/1M: exactly 10^15 nano",
               receipt(tokens_served=500, locked_price_nano=big_price), "accept",
               the_job=job(locked_price_nano=big_price, max_price_nano=big_price)),
        vector("r7-payment-above-ceiling", "R7", "500 tokens at 2·10^18 + 2000 nano/1M: 10^15 + 1",
               receipt(tokens_served=500, locked_price_nano=big_price + 2000), "implausible",
               the_job=job(locked_price_nano=big_price + 2000, max_price_nano=big_price + 2000)),
        vector("r7-tokens-at-ceiling", "R7",
               "exactly 10^12 tokens (plausible: the job went out 10^10 + 1000 ms before, at "
               "50,000 tokens/s) pass R7, then fail R8",
               receipt(issued=T0 + 2000, tokens_served=10**12, locked_price_nano=1000), "over_rate",
               the_job=huge_job, capacity=50_000),
        vector("r7-tokens-above-ceiling", "R7",
               "10^12 + 1 tokens: implausible (R7, before R8's over_rate)",
               receipt(issued=T0 + 2000, tokens_served=10**12 + 1, locked_price_nano=1000),
               "implausible", the_job=huge_job, capacity=50_000),
        # R8: tokens per minute
        vector("r8-at-limit", "R8", "999,520 settled in the last 60 s + 480 = 1,000,000", good,
               "accept", recent=999_520),
        vector("r8-above-limit", "R8", "999,521 settled in the last 60 s + 480 = 1,000,001", good,
               "over_rate", recent=999_521),
    ]


# --- price.json: the view and the clock (§7.1, §7.4) --------------------------------------------

#: v1's view config as a charter: simnet (open, F = 0) with a window of 4 ticks and small caps.
#: No announcement below reaches max_signer_pending_requests or max_signer_pending_tokens, and
#: with F = 0 every key counts fully, so v2 counts exactly what v1 counted.
VIEW_CHARTER = Charter("price-view", {**SIMNET.params, "window_ticks": 4,
                                      "max_node_tokens_per_s": 2000,
                                      "max_tokens_per_minute": 1000},
                       description="The view and clock vectors of price.json: simnet with a "
                                   "window of 4 ticks and small per-signer caps.")

#: What each view vector tells apart from a plausible mistake (the texts of v1's price.json).
VIEW_ALTS = {
    "no_settle": "tick k is evaluated at k·tick − settle_delay, not at k·tick",
    "expiry_inclusive": "an announcement stops counting at exactly issued_at + capacity_timeout",
    "equivocation_ignored": "an equivocating signer counts nothing",
    "no_horizon": "retention drops what was issued more than horizon before the signer's newest",
    "no_keep": "retention keeps only the keep newest of a signer",
    "no_caps": "a signer counts at most max_node_tokens_per_s and pending_requests × "
               "max_tokens_per_minute",
    "withdrawal_ignored": "a withdrawal (all-zero, higher seq) replaces the signer's previous "
                          "announcement",
}
CLOCK_PIN = "the clock rounds to the nearest ms, not truncation"


def g_view_totals(held: list[g.Held], t: int, charter: Charter,
                  alt: str | None = None) -> tuple[int, int, int]:
    """§7.1 at instant t (ms): supply, demand and available nodes, with `alt` one of VIEW_ALTS
    (v1's reading of the same rules; in an open network v2 adds the work shift and the two
    per-signer caps)."""
    p = charter.params
    tick, settle, timeout = (charter.ms("tick_s"), charter.ms("settle_delay_s"),
                             charter.ms("capacity_timeout_s"))
    keep = p["window_ticks"] + -(-settle // tick) + 8
    horizon = p["window_ticks"] * tick + settle + timeout + 30_000
    by_signer: dict[bytes, list[g.Held]] = {}
    for m in held:
        by_signer.setdefault(m.signer, []).append(m)
    supply = demand = nodes = 0
    for signer, ms in by_signer.items():
        ms = sorted(ms, key=lambda m: (m.issued, m.seq, m.id))
        retained = ms if alt == "no_keep" else ms[-keep:]
        newest = max(m.issued for m in retained)
        if alt != "no_horizon":
            retained = [m for m in retained if m.issued >= newest - horizon]
        if len({m.seq for m in retained}) < len(retained) and alt != "equivocation_ignored":
            continue  # equivocation: counts nothing
        f = [m for m in retained if m.issued <= t and not (
            alt == "withdrawal_ignored" and not (m.f["tokens_per_second"] or m.f["pending_tokens"]
                                                 or m.f["pending_requests"]))]
        if not f:
            continue
        best = max(f, key=lambda m: (m.seq, bytes(255 - b for b in m.id)))
        if not t < best.issued + timeout + (1 if alt == "expiry_inclusive" else 0):
            continue
        a = best.f
        shift = max(0, p["identity_work_bits"] - g.work_bits(signer, a["work_nonce"]))
        if alt == "no_caps":
            offer, waiting = a["tokens_per_second"], a["pending_tokens"]
        else:
            offer = min(a["tokens_per_second"], p["max_node_tokens_per_s"])
            rq = min(a["pending_requests"], p["max_signer_pending_requests"])
            waiting = min(a["pending_tokens"], p["max_tokens_per_minute"] * rq,
                          p["max_signer_pending_tokens"])
        c = offer >> shift
        supply += c
        demand += waiting >> shift
        nodes += 1 if c > 0 else 0
    if alt is None:  # generate.py's reading of §7.1 must count the same
        count = g.g_count(held, [], t, charter)
        assert (supply, demand, nodes) == (count["supply"], count["demand"],
                                           count["available_nodes"]), t
    return supply, demand, nodes


def view_price_document() -> dict[str, Any]:
    charter = VIEW_CHARTER
    again = g.g_charter_from_toml(charter.toml())
    assert again.canonical == charter.canonical
    p = charter.params
    labels = {"provider": PROVIDER, "gateway": GATEWAY, "other": OTHER}
    zero = {"tokens_per_second": 0, "pending_tokens": 0, "pending_requests": 0}
    spec = [
        ("provider", 1, T0 - 5000, {"tokens_per_second": 1000, "pending_tokens": 0,
                                    "pending_requests": 0},
         "capacity 1000 from before the window"),
        ("provider", 2, T0 + 3500, {"tokens_per_second": 1500, "pending_tokens": 0,
                                    "pending_requests": 0},
         "issued inside tick k0+5's settle delay (after its instant T0+3000, before it starts): "
         "counts from tick k0+6"),
        ("gateway", 1, T0 - 5000, {**zero, "pending_tokens": 90_000, "pending_requests": 100},
         "demand 90,000 tokens in 100 requests"),
        ("other", 1, T0 - 60_000, {**zero, "tokens_per_second": 700},
         "expires at exactly T0 = issued_at + capacity_timeout: counts at k0+1 (instant "
         "T0−1000), not at k0+2 (instant T0)"),
        ("price d", 1, T0 - 4000, {**zero, "tokens_per_second": 500}, "capacity 500 …"),
        ("price d", 2, T0 + 1000, dict(zero), "… withdrawn at T0+1000 = the instant of tick k0+3"),
        ("price e", 7, T0 - 10_000, {**zero, "tokens_per_second": 800},
         "equivocation, first of two with seq 7 …"),
        ("price e", 7, T0 + 2000, {**zero, "tokens_per_second": 900},
         "… second: the signer counts nothing at any instant, also before this one was issued"),
        ("price f", 1, T0 - 3000, {"tokens_per_second": 3000, "pending_tokens": 5000,
                                   "pending_requests": 2},
         "plausibility caps: capacity 3000 counts max_node_tokens_per_s = 2000, pending 5000 "
         "tokens counts 2 × max_tokens_per_minute = 2000"),
        ("price g", 1, T0 - 50_000, {**zero, "tokens_per_second": 600},
         "retention by horizon: issued 100,000 ms before its signer's newest (next), more than "
         "horizon_ms = 96,000, so not retained; if it were, it would count 600 at every tick here"),
        ("price g", 2, T0 + 50_000, {**zero, "tokens_per_second": 600},
         "… its signer's newest, issued after every evaluated instant"),
        ("price h", 1, T0 - 8000, {**zero, "tokens_per_second": 100},
         "retention by keep: its signer has 15 announcements (this and the next 14), keep = 14, "
         "so this oldest is not retained; if it were, it would count 100 at every tick here"),
        *(("price h", n, T0 + 20_000 + n, {**zero, "tokens_per_second": 100},
           f"… {n - 1} of 14 newer ones, issued after every evaluated instant")
          for n in range(2, 16)),
    ]
    messages, held = [], []
    for label, seq, issued, fields, note in spec:
        k = labels.get(label) or key(label)
        data = message(1, k, issued, {**ANNOUNCE, "seq": seq, "work_nonce": 0, "credential": b"",
                                      **fields})
        held.append(g.Held(data, label, note, charter))
        messages.append({"note": note, "label": label, "signer": pub(k).hex(),
                         "issued_at_ms": issued, "seq": seq,
                         "tokens_per_second": fields["tokens_per_second"],
                         "min_price_nano": ANNOUNCE["min_price_nano"],
                         "pending_tokens": fields["pending_tokens"],
                         "pending_requests": fields["pending_requests"],
                         "work_nonce": 0, "credential": "",
                         "wire": data.hex(), "id": sha(data).hex()})
    tick_ms, settle_ms = charter.ms("tick_s"), charter.ms("settle_delay_s")
    k0 = T0 // tick_ms

    def tick_row(k: int, alt: str | None = None) -> dict[str, Any]:
        shift = 0 if alt == "no_settle" else settle_ms
        window = range(k - p["window_ticks"] + 1, k + 1)
        targets = [g.g_target(*g_view_totals(held, j * tick_ms - shift, charter, alt)[:2], p)
                   for j in window]
        supply, demand, nodes = g_view_totals(held, k * tick_ms - shift, charter, alt)
        return {"tick": k, "evaluated_at_ms": k * tick_ms - settle_ms, "supply": supply,
                "demand": demand, "available_nodes": nodes, "target_nano": targets[-1],
                "price_nano": g.g_fold(targets, p)}

    ticks = []
    for k in range(k0 - 2, k0 + 9):
        row = tick_row(k)
        row["pins"] = [text for alt, text in VIEW_ALTS.items() if tick_row(k, alt) != row]
        ticks.append(row)
    pinned = {pin for row in ticks for pin in row["pins"]}
    assert pinned == set(VIEW_ALTS.values()), set(VIEW_ALTS.values()) - pinned
    # A receiver's clock → tick: k = ⌊round(now_s·1000) / tick⌋ (§7.4).
    clock = [{"now_s": s, "now_ms": round(s * 1000), "tick": round(s * 1000) // tick_ms,
              "pins": ([CLOCK_PIN] if int(s * 1000) // tick_ms != round(s * 1000) // tick_ms
                       else [])}
             for s in (T0 / 1000 + 2.9994, T0 / 1000 + 2.9995, T0 / 1000 + 2.9996,
                       T0 / 1000 - 0.0004)]
    assert any(entry["pins"] for entry in clock)
    return {"charter": {**charter.summary(), "toml": charter.toml()},
            "keep": p["window_ticks"] + -(-settle_ms // tick_ms) + 8,
            "horizon_ms": p["window_ticks"] * tick_ms + settle_ms
            + charter.ms("capacity_timeout_s") + 30_000,
            "announcements": messages, "ticks": ticks, "clock": clock}


# --- frames.json: v1's frame vectors that v2's list did not have ---------------------------------

def _peers_of_size(size: int, head: list[Any]) -> list[Any]:
    """32 peers with 5 addresses each whose frame `head + [peers]` is exactly `size` bytes:
    addresses grown one byte at a time up to 255 bytes (str8 throughout)."""
    peers = [[f"peer-{i:02}", ["/" + "a" * 199] * 5] for i in range(32)]
    deficit = size - len(pack([*head, peers]))
    for entry in peers:
        for j, addr in enumerate(entry[1]):
            grow = min(deficit, 255 - len(addr))
            entry[1][j] = addr + "a" * grow
            deficit -= grow
    assert deficit == 0 and len(pack([*head, peers])) == size
    return peers


def v1_frame_vectors() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """v1's valid and invalid frames (protocols/vectors/frames.json) that frames.json lacks, with
    version 2 on the sync and job streams, the revocations digest as a SyncRequest's 5th item, and
    a stream for each (v1 read some with a decoder of any kind: here the stream they were about).
    Peer exchange is unchanged: those bytes are v1's."""
    receipt = g._wire_of("receipt")
    z = bytes(32)
    b16 = [z] * 16
    one = g.PEERS[:1]
    peers_array16 = b"\xdc\x00\x01" + pack(one)[1:]
    valid_spec = [
        ("job-result-empty-output", "job", [2, 20, "req-0001", receipt, ""],
         "a JobResult with empty output (0 bytes of text are allowed)"),
        ("peer-exchange-empty", "peers/1.1.0", [1, 21, []], "a listener with no peer to tell"),
        ("peer-exchange-legacy-empty", "peers/1.0.0", [1, []], "the same in the 1.0.0 layout"),
    ]
    valid = []
    for name, stream, items, note in valid_spec:
        data = pack(items)
        g.g_frame(data, stream)
        kind = items[1] if stream != "peers/1.0.0" else None
        valid.append({"name": name, "note": note, "stream": stream,
                      "frame": g.FRAME_NAMES[kind] if kind else "peer_exchange_legacy",
                      "fields": json_value(items[2:] if kind else items[1:]), "bytes": data.hex()})
    bad = [
        ("sync-request-short-digest", "sync", pack([2, 16, z[:31], b16, z]), "bad_field", "F7",
         "the view digest is bin(32)"),
        ("sync-kind-99", "sync", pack([2, 99, z]), "kind", "F4", "no frame kind 99"),
        ("job-declined-4-items", "job", pack([2, 18, "req-0001", "full"]), "malformed", "F6",
         "JobDeclined has 5 items (here detail is missing)"),
        ("sync-response-empty-map", "sync", b"\x93\x02\x11\x91\x80", "malformed", "F2",
         "an empty map (80) as the one message: maps never appear, not even empty ones"),
        ("sync-request-kind-uint8", "sync", b"\x95\x02\xcc\x10" + pack([2, 16, z, b16, z])[3:],
         "non_canonical", "F8", "kind 16 written as uint8 (cc 10)"),
        ("job-declined-empty-reason", "job", pack([2, 18, "req-0001", "", ""]), "bad_field",
         "F7", "reason is 1..128 bytes"),
        ("job-accepted-empty-request-id", "job", pack([2, 19, ""]), "bad_field", "F7",
         "request_id is 1..128 bytes"),
        ("job-accepted-request-id-129-bytes", "job", pack([2, 19, "é" * 64 + "x"]), "bad_field",
         "F7", "129 bytes of UTF-8 in 65 characters: the limit is in bytes"),
        ("job-accepted-extra-item", "job", pack([2, 19, "req-0001", ""]), "malformed", "F6",
         "JobAccepted has 3 items"),
        ("job-accepted-oversize", "job", pack([2, 19, "x" * 1100]), "oversize", "F5",
         "above JobAccepted's 1,024 bytes: F5 comes before F7's request_id limit"),
        ("job-accepted-str8", "job", b"\x93\x02\x13\xd9\x08req-0001", "non_canonical", "F8",
         "an 8-byte request id as str8 instead of fixstr"),
        ("job-declined-detail-513-bytes", "job", pack([2, 18, "req-0001", "full", "x" * 513]),
         "bad_field", "F7", "detail is at most 512 bytes"),
        ("job-result-receipt-as-text", "job", pack([2, 20, "req-0001", receipt.hex(), "ok"]),
         "bad_field", "F7", "the receipt is bin"),
        ("job-result-empty-receipt", "job", pack([2, 20, "req-0001", b"", "ok"]), "bad_field",
         "F7", "the receipt is at least 1 byte"),
        ("job-result-output-as-bin", "job", pack([2, 20, "req-0001", receipt, b"ok"]),
         "bad_field", "F7", "the output is text"),
        ("job-result-4-items", "job", pack([2, 20, "req-0001", receipt]), "malformed", "F6",
         "JobResult has 5 items"),
        ("sync-request-on-job-stream", "job", pack([2, 16, z, b16, z]), "kind", "F4",
         "a valid SyncRequest on the job stream"),
        ("job-accepted-on-sync-stream", "sync", pack([2, 19, "req-0001"]), "kind", "F4",
         "a valid JobAccepted on the sync stream"),
        ("peer-exchange-33-peers", "peers/1.1.0", pack([1, 21, one * 33]), "bad_field", "F7",
         "at most 32 peers"),
        ("peer-exchange-9-addrs", "peers/1.1.0", pack([1, 21, [["p", ["/a"] * 9]]]), "bad_field",
         "F7", "at most 8 addresses per peer"),
        ("peer-exchange-empty-peer-id", "peers/1.1.0", pack([1, 21, [["", ["/a"]]]]), "bad_field",
         "F7", "a peer id is 1..128 bytes"),
        ("peer-exchange-peer-id-129-bytes", "peers/1.1.0", pack([1, 21, [["p" * 129, []]]]),
         "bad_field", "F7", "a peer id is 1..128 bytes"),
        ("peer-exchange-addr-257-bytes", "peers/1.1.0", pack([1, 21, [["p", ["/" + "a" * 256]]]]),
         "bad_field", "F7", "an address is 1..256 bytes"),
        ("peer-exchange-empty-addr", "peers/1.1.0", pack([1, 21, [["p", [""]]]]), "bad_field",
         "F7", "an address is 1..256 bytes"),
        ("peer-exchange-entry-3-items", "peers/1.1.0", pack([1, 21, [["p", ["/a"], 0]]]),
         "bad_field", "F7", "a peer is exactly [peer_id, addrs]"),
        ("peer-exchange-addr-as-bin", "peers/1.1.0", pack([1, 21, [["p", [b"/a"]]]]), "bad_field",
         "F7", "addresses are text"),
        ("peer-exchange-4-items", "peers/1.1.0", pack([1, 21, one, []]), "malformed", "F6",
         "PeerExchange has 3 items"),
        ("peer-exchange-array16", "peers/1.1.0", b"\x93\x01\x15" + peers_array16,
         "non_canonical", "F8", "a one-peer list with an array16 header"),
        ("peer-exchange-oversize", "peers/1.1.0",
         pack([1, 21, _peers_of_size(32_769, [1, 21])]), "oversize", "F5",
         "one byte above PeerExchange's 32,768 bytes"),
        ("peer-exchange-legacy-on-1.1.0", "peers/1.1.0", pack([1, one]), "kind", "F4",
         "the 1.0.0 layout read as frame 21: its item 1 is no kind"),
        ("peer-list-version-uint8", "peers/1.0.0", b"\x92\xcc\x01" + pack(one), "non_canonical",
         "L5", "version 1 written as uint8"),
        ("peer-list-frame-21-on-1.0.0", "peers/1.0.0", pack([1, 21, one]), "malformed", "L2",
         "frame 21 read as the 1.0.0 layout: 3 items, not 2"),
        ("peer-list-map", "peers/1.0.0", pack({"1": one}), "malformed", "L2", "a map"),
        ("peer-list-33-peers", "peers/1.0.0", pack([1, one * 33]), "bad_field", "L4",
         "at most 32 peers"),
        ("peer-list-addr-as-bin", "peers/1.0.0", pack([1, [["p", [b"/a"]]]]), "bad_field", "L4",
         "addresses are text"),
        ("peer-list-oversize", "peers/1.0.0", pack([1, _peers_of_size(32_769, [1])]), "oversize",
         "L1", "one byte above 32,768 bytes"),
    ]
    invalid = []
    for name, stream, data, reason, rule, note in bad:
        try:
            g.g_frame(data, stream)
        except Rejected as r:
            assert (r.reason, r.rule) == (reason, rule), (name, r.reason, r.rule)
        else:
            raise AssertionError(f"frame vector {name} decodes")
        invalid.append({"name": name, "note": note, "stream": stream, "bytes": data.hex(),
                        "reason": reason, "action": "reject", "rule": rule})
    return valid, invalid


def with_v1_frames(frames: dict[str, Any]) -> dict[str, Any]:
    """frames.json with v1's frame vectors it lacked appended (names stay unique)."""
    valid, invalid = v1_frame_vectors()
    out = {**frames, "valid": frames["valid"] + valid, "invalid": frames["invalid"] + invalid}
    for part in ("valid", "invalid"):
        names = [v["name"] for v in out[part]]
        assert len(names) == len(set(names)), part
    return out


# --- the files ------------------------------------------------------------------------------------

def documents() -> dict[str, Any]:
    return {
        "validator.json": {**HEADER, "defaults": {
            "rate_burst": 5, "rate_refill_s": "the charter's tick_s (testnet 1.0)",
            "max_node_tokens_per_s": TESTNET.params["max_node_tokens_per_s"]},
            "vectors": validator_vectors()},
        "receipts.json": {**HEADER, "defaults": receipt_defaults(TESTNET),
                          "vectors": receipt_vectors()},
        "price.json": {**HEADER, "view": view_price_document()},
    }

