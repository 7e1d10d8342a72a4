#!/usr/bin/env python3
"""Vectors of the relay (protocols/market-v2.md revision 2.1: relay, §8.5) → relay.json.

Called by generate.py (one line in its `documents()`; `generate.py --check` covers it). Like
generate.py it imports nothing of the project: the receiver's two buckets are re-read from §8.5
here, and its per-item rules are generate.py's own reading of §6 (`Validator`, live gossip without
V4) and of §8.2 (`g_frame` on a stream whose only kind is 17). Every session's outcome is also
written out by hand below, next to its frames; the script stops without writing if the two
disagree.

The receiver's charters are generate.py's `relaynet` (simnet's values, transport = "relay") and
`guild-relay` (guild's members and values, transport = "relay"), which charter.json publishes.
"""

from __future__ import annotations

from typing import Any

import generate as g  # this directory: generate.py puts itself on sys.path before calling us

HEADER = {"protocol": "neuroshard market v2, revision 2.1: relay",
          "spec": "protocols/market-v2.md §8.5 (and §4.1, §6, §8.2)",
          "generator": "protocols/vectors/v2/gen_relay.py"}

#: §8.5 rule 2 (after rule 1, the frame rules): per remote peer, frames (capacity 32, 20 a
#: second) and items (16,384, 4,096 a second).
FRAMES_CAPACITY, FRAMES_PER_S = 32, 20
ITEMS_CAPACITY, ITEMS_PER_S = 16_384, 4_096
#: §8.5 rule 3: rejects that depend on when and where the item arrives are skipped like ignores.
ARRIVAL_DEPENDENT = frozenset({"future", "rate_limited"})

T0 = g.T0
NOW = T0 + 3000


# --- the budget (§8.5 rule 2) --------------------------------------------------------------------

class Bucket:
    """V8's rule with another capacity and rate: created full, refilled continuously; a clock set
    back moves `refilled_at` back and keeps the tokens. `by_period`: the refill written as V8
    writes it, `+ (now − refilled_at) / period`; else `+ (now − refilled_at) × rate`."""

    def __init__(self, capacity: int, rate: int, now: float, by_period: bool) -> None:
        self.capacity, self.rate, self.by_period = capacity, rate, by_period
        self.tokens, self.refilled_at = float(capacity), now

    def refill(self, now: float) -> None:
        if now > self.refilled_at:
            elapsed = now - self.refilled_at
            gained = elapsed / (1 / self.rate) if self.by_period else elapsed * self.rate
            self.tokens = min(self.capacity, self.tokens + gained)
            self.refilled_at = now
        elif now < self.refilled_at:
            self.refilled_at = now


class Budget:
    """One remote peer's two buckets, created full at its first frame. A frame takes one frame
    token and its item count at once, and only if both buckets hold enough; else it takes none
    (both refills stay) and the stream is reset."""

    def __init__(self, by_period: bool) -> None:
        self.by_period = by_period
        self.frames: Bucket | None = None
        self.items: Bucket | None = None

    def take(self, items: int, now: float) -> bool:
        if self.frames is None or self.items is None:
            self.frames = Bucket(FRAMES_CAPACITY, FRAMES_PER_S, now, self.by_period)
            self.items = Bucket(ITEMS_CAPACITY, ITEMS_PER_S, now, self.by_period)
        self.frames.refill(now)
        self.items.refill(now)
        if self.frames.tokens < 1 or self.items.tokens < items:
            return False
        self.frames.tokens -= 1
        self.items.tokens -= items
        return True


def budget_vectors() -> dict[str, Any]:
    def steps(*runs: tuple[float, int, str, int]) -> list[tuple[float, int, str]]:
        return [(at, items, expect) for at, items, expect, times in runs for _ in range(times)]

    cases = [
        ("frame-burst", "32 frames at once are read, the 33rd is not; the frames bucket refills "
         "20 a second, continuously: half a token at 0.025 s is not enough and stays, so at "
         "0.05 s one frame is read",
         steps((0.0, 1, "read", 32), (0.0, 1, "reset", 1), (0.025, 1, "reset", 1),
               (0.05, 1, "read", 1), (0.05, 1, "reset", 1), (0.1, 1, "read", 1))),
        ("items-burst", "four frames of 4,096 items empty the items bucket (16,384); a 1-item "
         "frame is then reset and takes no frame token: the 28 frame tokens left still let 28 "
         "empty frames through, and the next is reset",
         steps((0.0, 4096, "read", 4), (0.0, 1, "reset", 1), (0.0, 0, "read", 28),
               (0.0, 0, "reset", 1))),
        ("frames-short-takes-no-items", "the frames bucket is empty: a frame of 4,096 items is "
         "reset and takes no item tokens, so 0.05 s later (4,096 + 204.8 items, one frame) a "
         "4,096-item frame is read",
         steps((0.0, 4096, "read", 3), (0.0, 0, "read", 29), (0.0, 4096, "reset", 1),
               (0.05, 4096, "read", 1))),
        ("one-second-from-empty", "empty at 0 s, refilled 4,096 items by exactly 1 s: 4,097 "
         "items are reset (a count no single frame can carry, F7: a pin of the bucket alone), "
         "4,096 are read, one more item is reset",
         steps((0.0, 4096, "read", 4), (1.0, 4097, "reset", 1), (1.0, 4096, "read", 1),
               (1.0, 1, "reset", 1))),
        ("clock-set-back", "the first frame arrives at 8 s (the buckets are created full then); "
         "the receiver's clock is set back to 4 s: the tokens stay (none), the refill goes on "
         "from 4 s, so at 4.0625 s (1.25 frame tokens) one frame is read. Without V8's "
         "set-back clause it would be reset until the clock passed 8 s again",
         steps((8.0, 1, "read", 32), (8.0, 1, "reset", 1), (4.0, 1, "reset", 1),
               (4.0625, 1, "read", 1), (4.0625, 1, "reset", 1))),
    ]
    out = []
    for name, note, written in cases:
        # A reader that multiplies by the rate instead of dividing by the period must get the
        # same outcome at every step: no vector hangs on a float's last bit.
        for by_period in (True, False):
            budget = Budget(by_period)
            got = ["read" if budget.take(items, at) else "reset" for at, items, _ in written]
            assert got == [expect for _, _, expect in written], (name, by_period, got)
        out.append({"name": name, "note": note,
                    "steps": [{"at_s": at, "items": items, "expect": expect}
                              for at, items, expect in written]})
    return {"frames": {"capacity": FRAMES_CAPACITY, "per_s": FRAMES_PER_S},
            "items": {"capacity": ITEMS_CAPACITY, "per_s": ITEMS_PER_S},
            "note": "one remote peer's relay frames (all its relay streams together), each case "
                    "a fresh peer: at_s is the receiver's clock in seconds, items the frame's "
                    "item count; read, or reset and charged a fault. The buckets are created "
                    "full at the peer's first frame",
            "cases": out}


# --- sessions (§8.5 rules 1 and 3) ---------------------------------------------------------------

def g_relay_session(charter: g.Charter, held: list[tuple[bytes, int, bytes]],
                    frames: list[bytes], now_ms: int) -> dict[str, Any]:
    """The receiver: its state from `held` (accepted by live gossip from their signers), then the
    frames of one relay stream in order. Frame rules F1–F8 with 17 the only kind; items by the
    live-gossip rules without V4; `future` and `rate_limited` skipped; any other reject stops.
    (A session's few frames stay far inside rule 2's budget, which `budget_vectors` pins.)"""
    v = g.Validator(charter)
    for data, at_ms, signer in held:
        assert v.check(data, at_ms, "gossip", from_signer=signer) == "accepted"
    outcomes: list[str] = []
    forward: list[str] = []

    def end(reset: bool, unchecked: int = 0, frame_error: str | None = None) -> dict[str, Any]:
        return {"outcomes": outcomes, "forward": forward, "reset": reset,
                "faults": 1 if reset else 0, "unchecked": unchecked, "frame_error": frame_error}

    for data in frames:
        try:
            items = g.g_frame(data, "relay")[2]
        except g.Rejected as r:
            return end(True, frame_error=r.reason)
        for index, item in enumerate(items):
            try:
                v.check(item, now_ms, "gossip", from_signer=None)   # no from: V4 does not apply
            except g.Rejected as r:
                outcomes.append(r.reason)
                if r.action == "reject" and r.reason not in ARRIVAL_DEPENDENT:
                    return end(True, unchecked=len(items) - index - 1)
            else:
                outcomes.append("accepted")
                forward.append(g.sha(item).hex())
    return end(False)


def announcement(k: Any, seq: int, issued: int, **changes: Any) -> bytes:
    """An open network's announcement (relaynet asks no identity work: nonce 0)."""
    return g.message(1, k, issued, {**g.ANNOUNCE, "seq": seq, "work_nonce": 0, **changes})


def session_vectors() -> list[dict[str, Any]]:
    P, G, O = g.PROVIDER, g.GATEWAY, g.OTHER
    p1, p2, p3, p4 = (announcement(P, n, T0 + 500 * n) for n in (1, 2, 3, 4))
    g1, g2 = announcement(G, 1, T0 + 1000), announcement(G, 2, NOW - 300_000)
    o1, o2, o3 = (announcement(O, n, T0 + 500 * n) for n in (1, 2, 3))
    g_stale = announcement(G, 1, NOW - 300_001, pending_tokens=7)
    p3_eq = announcement(P, 3, T0 + 1500, pending_tokens=1)
    p3_eq2 = announcement(P, 3, T0 + 1500, pending_tokens=2)
    burst = [announcement(P, n, T0 + 2000) for n in range(2, 7)]     # seq 2..6, one instant
    g_future = announcement(G, 3, NOW + 30_001)
    o_edge = announcement(O, 4, NOW + 30_000)
    forged = bytearray(p2)
    forged[-1] ^= 1
    receipt = g.message(3, P, T0 + 2000, g.RECEIPT)
    job = g.message(2, G, T0, g.JOB)
    implausible = announcement(P, 2, T0 + 1000, tokens_per_second=50_001)
    empty = g.g_view_digests([], [])
    sync_request = g.pack([2, 16, empty["digest"], empty["bucket_digests"],
                           empty["revocations_digest"]])
    non_canonical = b"\x93\x02\xcc\x11" + g.pack([g1])                 # kind 17 as uint8

    # guild-relay: credentials and lists name guild-relay's hash; guild's do not admit to it.
    GR = g.GUILD_RELAY
    m_p1 = g.member_announcement(P, T0, cred=g.credential(P, network=GR.hash))
    m_p2 = g.member_announcement(P, T0 + 1000, cred=g.credential(P, network=GR.hash), seq=2)
    m_gw_guild = g.member_announcement(G, T0 + 1000, cred=g.credential(G))
    m_other = g.member_announcement(O, T0 + 1000, cred=g.credential(O, network=GR.hash))
    rl_a = g.revocation_list(g.AUTHORITY_A, 1, T0 - g.DAY_MS, [(g.pub(O), T0)],
                             network=GR.hash)
    rl_b = g.revocation_list(g.AUTHORITY_B, 1, T0 - g.DAY_MS, [], network=GR.hash)
    rl_a_guild = g.revocation_list(g.AUTHORITY_A, 2, T0, [])          # guild's hash

    R = g.RELAYNET

    def at(data: bytes, ms: int, k: Any) -> tuple[bytes, int, bytes]:
        """A message the receiver accepted by gossip at `ms`, published by its signer's node."""
        return (data, ms, g.pub(k))

    # name, charter, note, held [(wire, accepted at ms, signer)], frames (item lists, or raw bytes),
    # and the outcome written by hand: outcomes, forward, unchecked, frame_error (reset and one
    # fault whenever the session stops).
    cases: list[tuple[str, g.Charter, str, list[tuple[bytes, int, bytes]], list[Any], list[str],
                      list[bytes], int, str | None, bool]] = [
        ("others-items-accepted", R,
         "items signed by three keys, none of them the relaying peer's: V4 does not apply on a "
         "relay stream (the signature authenticates the author), so all are accepted and passed "
         "on; an empty frame first is read and changes nothing",
         [at(p1, T0 + 600, P)], [[], [p2, g1, o1]],
         ["accepted"] * 3, [p2, g1, o1], 0, None, False),
        ("ignored-items-skipped", R,
         "live rules: an item the receiver holds (V1 duplicate), an older seq of a signer it "
         "holds (V7 seq_regression), an item 300.001 s old (W13 stale) are ignored, not passed "
         "on; the session goes on and accepts a new seq, and an item exactly 300 s old",
         [at(p1, T0 + 600, P), at(p2, T0 + 1100, P), at(o3, T0 + 1600, O)],
         [[p2, o2, g_stale, p3, g2]],
         ["duplicate", "seq_regression", "stale", "accepted", "accepted"], [p3, g2], 0, None,
         False),
        ("equivocation", R,
         "the receiver holds the provider's seq 3; another seq 3 is accepted and passed on as "
         "evidence (V7), a third one is ignored (equivocation), a seq 4 is accepted",
         [at(p3, T0 + 1600, P)], [[p3_eq, p3_eq2, p4]],
         ["accepted", "equivocation", "accepted"], [p3_eq, p4], 0, None, False),
        ("arrival-dependent-skipped", R,
         "the provider's seq 1 came by gossip at the same instant, taking one of its 5 V8 tokens "
         "(one bucket for gossip and relay); of its seqs 2..6 in the frame four are accepted "
         "and the fifth is rate_limited; an item 30.001 s ahead of the receiver's clock is "
         "future. Both are rejects that depend on arrival: skipped (no reset, no fault, not "
         "passed on) and the next items are still checked: one exactly 30 s ahead, and one "
         "more signer's",
         [at(p1, NOW, P)], [[*burst, g_future, o_edge, g1]],
         ["accepted"] * 4 + ["rate_limited", "future", "accepted", "accepted"],
         [*burst[:4], o_edge, g1], 0, None, False),
        ("stop-at-bad-signature", R,
         "the second item fails W12 (reject): the receiver stops, the first item stays "
         "accepted (and is passed on), the third item and the second frame are never looked "
         "at, the stream is reset and the peer charged one fault",
         [], [[g1, bytes(forged), o1], [p3]],
         ["accepted", "bad_signature"], [g1], 1, None, True),
        ("stop-at-receipt", R,
         "a gossip-valid Receipt as an item: V3 (kind, reject) on this path, which carries "
         "announcements only on an open network: stop",
         [], [[g1, receipt, o1]], ["accepted", "kind"], [g1], 1, None, True),
        ("stop-at-job", R,
         "a Job as the only item of the second frame: V3 kind, stop",
         [], [[o1], [job]], ["accepted", "kind"], [o1], 0, None, True),
        ("stop-at-implausible", R,
         "V6: 50,001 tokens/s above max_node_tokens_per_s 50,000 (reject): stop at the first "
         "item, nothing accepted",
         [], [[implausible, g1]], ["implausible"], [], 1, None, True),
        ("sync-request-frame", R,
         "a SyncRequest (kind 16) on the relay stream, whose only kind is 17: F4 kind, reset "
         "and a fault; the first frame's item stays accepted",
         [], [[g1], sync_request], ["accepted"], [g1], 0, "kind", True),
        ("non-canonical-frame", R,
         "kind 17 written as uint8 (cc 11): F8 non_canonical; the frame's item is never "
         "checked",
         [], [non_canonical, [g1]], [], [], 0, "non_canonical", True),
        ("members-list-and-not-member", GR,
         "guild-relay (members): a list the receiver holds is a duplicate, another authority's "
         "list and a member's newer announcement are accepted; an announcement whose credential "
         "names guild's hash, not guild-relay's, is not_member (V6m, reject): stop",
         [at(m_p1, T0 + 600, P), at(rl_b, T0 + 600, g.AUTHORITY_B)],
         [[rl_b, rl_a, m_p2, m_gw_guild, m_other]],
         ["duplicate", "accepted", "accepted", "not_member"], [rl_a, m_p2], 1, None, True),
        ("members-list-of-another-network", GR,
         "a list signed by a guild-relay authority for guild's hash: not_member (§6.3), stop",
         [], [[rl_a, rl_a_guild, m_p2]], ["accepted", "not_member"], [rl_a], 1, None, True),
    ]
    out = []
    for name, charter, note, held, frames, outcomes, forward, unchecked, frame_error, reset \
            in cases:
        raw = [g.pack([2, 17, f]) if isinstance(f, list) else f for f in frames]
        got = g_relay_session(charter, held, raw, NOW)
        written = {"outcomes": outcomes, "forward": [g.sha(x).hex() for x in forward],
                   "reset": reset, "faults": 1 if reset else 0, "unchecked": unchecked,
                   "frame_error": frame_error}
        assert got == written, (name, got, written)
        out.append({
            "name": name, "note": note, "charter": charter.name,
            "held": [{"wire": data.hex(), "id": g.sha(data).hex(), "now_ms": ms,
                      "from_peer": g.peer_id(signer)} for data, ms, signer in held],
            "now_ms": NOW, "frames": [f.hex() for f in raw],
            "item_ids": [[g.sha(i).hex() for i in f] if isinstance(f, list) else None
                         for f in frames],
            **written})
    return out


def documents() -> dict[str, Any]:
    return {"relay.json": {
        **HEADER,
        "protocol_id": "/neuroshard/<network_id>/relay/2.1.0",
        "arrival_dependent": sorted(ARRIVAL_DEPENDENT),
        "budget": budget_vectors(),
        "sessions": session_vectors(),
    }}
