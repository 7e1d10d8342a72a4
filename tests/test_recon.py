"""Range-based set reconciliation (§8.4, revision 2.1): laws against a naive set difference."""

from __future__ import annotations

import hashlib
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neuroshard_p2p.view.recon import BRANCHES, RECENT_MAX, ReconSet, bound_between, reconcile_pair
from neuroshard_p2p.wire.errors import WireError
from neuroshard_p2p.wire.recon import (
    IDLIST_MAX, INFINITE_TS, MODE_FINGERPRINT, MODE_IDLIST, ReconRange, Reconcile, decode_reconcile,
    encode_reconcile,
)


def make_item(n: int, spread: int = 1000) -> tuple[int, bytes]:
    msg_id = hashlib.sha256(n.to_bytes(8, "big")).digest()
    return (int.from_bytes(msg_id[:4], "big") % spread, msg_id)


def traffic_bound(view_size: int, difference: int) -> int:
    """Bytes a reconciliation may cost: per differing item, one split of B fingerprint ranges
    (~62 B each) per level of the range tree, plus its id in an IdList; plus the opening frame (an IdList when the view holds at most 32 items)."""
    levels = 1 + max(0, math.ceil(math.log(max(view_size, 1) / IDLIST_MAX, BRANCHES)))
    return 64 + IDLIST_MAX * 34 + difference * (levels * BRANCHES * 62 + IDLIST_MAX * 34)


sets = st.sets(st.integers(0, 5000), max_size=300)


@settings(max_examples=150, deadline=None)
@given(common=sets, only_a=sets, only_b=sets, spread=st.sampled_from([1, 3, 1000, 10**9]))
def test_both_sides_learn_exactly_the_naive_difference(common, only_a, only_b, spread):
    a_items = {make_item(n, spread) for n in common | only_a}
    b_items = {make_item(n, spread) for n in common | only_b}
    result = reconcile_pair(ReconSet(a_items), ReconSet(b_items))
    ids_a = {i for _, i in a_items}
    ids_b = {i for _, i in b_items}
    assert result.a_lacks == ids_b - ids_a
    assert result.b_lacks == ids_a - ids_b
    # After each pushes what the other lacks, both hold the union.
    assert ids_a | result.a_lacks == ids_b | result.b_lacks == ids_a | ids_b
    assert result.frame_bytes <= traffic_bound(max(len(a_items), len(b_items)),
                                               len(ids_a ^ ids_b))


@pytest.mark.parametrize("difference", [0, 1, 10])
def test_traffic_follows_the_difference_not_the_view(difference):
    costs = {}
    for size in (100, 20_000):
        common = {make_item(n, 10**9) for n in range(size)}
        a_only = {make_item(10**7 + n, 10**9) for n in range(difference)}
        b_only = {make_item(2 * 10**7 + n, 10**9) for n in range(difference)}
        result = reconcile_pair(ReconSet(common | a_only), ReconSet(common | b_only))
        assert len(result.a_lacks) == len(result.b_lacks) == difference
        costs[size] = result.frame_bytes
        assert result.frame_bytes <= traffic_bound(size, 2 * difference)
    if difference == 0:
        assert costs == {100: 36, 20_000: 36}  # one fingerprint each way: nothing differs
    # Against listing the view (what a digest-bucket resend costs at least): under 3 %.
    assert costs[20_000] <= 0.03 * 32 * 20_000


@settings(max_examples=150, deadline=None)
@given(common=sets, only_a=sets, only_b=sets, spread=st.sampled_from([1, 3, 1000]),
       since=st.integers(-5, 1100))
def test_the_recent_opening_learns_exactly_the_naive_difference(common, only_a, only_b, spread, since):
    """The "since" opening (§8.4, revision 2.1): items before `since` as one range, the rest by
    id; whatever `since` is (before everything, inside, after everything), the result is the
    naive set difference."""
    a_items = {make_item(n, spread) for n in common | only_a}
    b_items = {make_item(n, spread) for n in common | only_b}
    result = reconcile_pair(ReconSet(a_items), ReconSet(b_items), since_ms=since)
    ids_a = {i for _, i in a_items}
    ids_b = {i for _, i in b_items}
    assert result.a_lacks == ids_b - ids_a
    assert result.b_lacks == ids_a - ids_b


def test_the_recent_opening_settles_recent_differences_in_one_round_trip():
    """10,000 old items held by both, 2,000 recent ones of which each side lacks 200: the
    opening lists the recent ids, the answer is the responder's want: two frames, no split."""
    old = {(n, hashlib.sha256(n.to_bytes(8, "big")).digest()) for n in range(10_000)}
    recent = [(20_000 + n, hashlib.sha256(n.to_bytes(8, "big") + b"r").digest()) for n in range(2_000)]
    a = ReconSet(old | set(recent[200:]))
    b = ReconSet(old | set(recent[:1_800]))
    result = reconcile_pair(a, b, since_ms=20_000)
    assert len(result.a_lacks) == len(result.b_lacks) == 200
    assert result.turns == 1  # the responder's answer is all Skip: only its want goes back
    assert len(result.frames) == 1 and len(result.frames[0]) < 1_800 * 35 + 64 * 20
    with_ranges = reconcile_pair(a, b)
    assert with_ranges.turns > 3 and with_ranges.a_lacks == result.a_lacks


def test_the_recent_opening_lists_at_most_recent_max_ids():
    items = {make_item(n, 10**6) for n in range(RECENT_MAX + 5_000)}
    opening = ReconSet(items).initiate(since_ms=0)
    listed = sum(len(r.ids) for r in opening.ranges if r.mode == MODE_IDLIST)
    assert listed == RECENT_MAX and opening.ranges[0].mode == MODE_FINGERPRINT
    assert len(encode_reconcile(opening)) < 300_000


def test_a_large_difference_spans_several_frames_within_limits():
    a = ReconSet(make_item(n, 10**9) for n in range(30_000))
    b = ReconSet(make_item(n, 10**9) for n in range(20_000, 50_000))
    result = reconcile_pair(a, b)
    assert len(result.a_lacks) == len(result.b_lacks) == 20_000
    assert all(len(frame) <= 1024 * 1024 for frame in result.frames)


@given(st.binary(max_size=300))
@settings(max_examples=300, deadline=None)
def test_no_bytes_crash_the_decoder(data):
    try:
        frame = decode_reconcile(data)
    except WireError:
        return
    assert encode_reconcile(frame) == data


def test_frame_rules_refuse_bad_frames():
    good = encode_reconcile(Reconcile((ReconRange(INFINITE_TS, b"", MODE_FINGERPRINT, b"\x01" * 16),)))
    assert decode_reconcile(good).ranges[0].fingerprint == b"\x01" * 16
    bad = [
        Reconcile((ReconRange(5, b"", MODE_FINGERPRINT, b"\x01" * 16),)),             # not ending at ∞
        Reconcile((ReconRange(INFINITE_TS, b"", MODE_FINGERPRINT, b"\x01" * 15),)),   # short fp
        Reconcile((ReconRange(INFINITE_TS, b"", MODE_IDLIST, ids=(b"\x02" * 32, b"\x01" * 32)),)),
        Reconcile((ReconRange(INFINITE_TS, b"", MODE_IDLIST, ids=(b"\x01" * 32,) * (IDLIST_MAX + 1)),)),
        Reconcile((ReconRange(9, b"", 0), ReconRange(9, b"", 0),
                   ReconRange(INFINITE_TS, b"", MODE_FINGERPRINT, b"\x01" * 16))),     # not ascending
        Reconcile((ReconRange(INFINITE_TS, b"", 3),)),                                # mode
    ]
    for frame in bad:
        with pytest.raises(WireError) as caught:
            encode_reconcile(frame)
        assert caught.value.reason == "bad_field"


def test_bound_between_is_the_shortest_separator():
    assert bound_between((1, b"\xff" * 32), (2, b"\x00" * 32)) == (2, b"")
    assert bound_between((2, b"\x10\x20" + b"\x00" * 30), (2, b"\x10\x30" + b"\x00" * 30)) == (2, b"\x10\x30")


# ---------------------------------------------------------------------------------------------
# The incremental set (revision 2.1 performance): after any sequence of inserts and removals,
# and across snapshots, it answers exactly as a set built from scratch.

def same_answers(kept: ReconSet, fresh: ReconSet) -> None:
    n = len(fresh)
    assert len(kept) == n and list(kept) == list(fresh)
    cuts = sorted({0, n, n // 3, n // 2, (2 * n) // 3, max(0, n - 1)})
    for lo in cuts:
        for hi in cuts:
            if lo <= hi:
                assert kept.fingerprint_of(lo, hi) == fresh.fingerprint_of(lo, hi)
                assert kept.items_between(lo, hi) == fresh.items_between(lo, hi)
    for item in list(fresh)[:: max(1, n // 7)] + [(0, b""), (17, b"\x80")]:
        assert kept.index(item) == fresh.index(item)
    assert kept.initiate() == fresh.initiate()


ops = st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400)


@settings(max_examples=150, deadline=None)
@given(start=st.sets(st.integers(0, 300), max_size=60), changes=ops, load=st.sampled_from([1, 2, 4, 256]),
       snap_at=st.integers(0, 400))
def test_incremental_set_equals_a_fresh_one(start, changes, load, snap_at):
    kept = ReconSet((make_item(n, 40) for n in start), load=load)
    model = {make_item(n, 40) for n in start}
    snapshot, at_snapshot = None, None
    for step, (insert, n) in enumerate(changes):
        if step == snap_at:
            snapshot, at_snapshot = kept.snapshot(), set(model)
        item = make_item(n, 40)
        if insert:
            assert kept.add(item) == (item not in model)
            model.add(item)
        else:
            assert kept.discard(item) == (item in model)
            model.discard(item)
    same_answers(kept, ReconSet(model))
    if snapshot is not None:
        same_answers(snapshot, ReconSet(at_snapshot))
