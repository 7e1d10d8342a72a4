"""Range-based set reconciliation (Meyer 2023; the Negentropy protocol), sans-IO.

protocols/market-v2.md §8.4 (revision 2.1: reconciliation). Two peers hold sets of items
(issued_at_ms, message id); each learns which ids it lacks and which the other lacks, with traffic
that grows with the difference, not with the set:

- Items are ordered by (ts, id). A range is [lower, upper) of bounds (ts, id prefix).
- The **fingerprint** of a range is the first 16 bytes of
  SHA-256("neuroshard/recon/v2.1" ‖ u64be(count) ‖ u256be(Σ ids mod 2^256)), ids read as 256-bit
  big-endian integers: incremental (a sum), order-free, and the count makes a range of k items
  differ from one of k+1 even in the unlikely case their sums collide.
- On a Fingerprint range that differs from ours, we answer the same span as our ids if we hold
  at most IDLIST_MAX (32) items there, else as B = 16 sub-ranges of equal item count, each with its
  fingerprint. On an IdList, we compute what each side lacks and answer Skip.
- A turn whose ranges are all Skip ends the exchange; each side then sends what the other
  `want`s and pushes what it learnt the other lacks.

`ReconSet.process` is the whole machine: a Reconcile frame in, the reply frame and the ids learnt
out. It reads no clock and does no I/O; `reconcile_pair` runs two sets against each other through
the real codec (used by tests, the simulator and the benchmarks).
"""

from __future__ import annotations

import hashlib
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import Iterable, Iterator

from neuroshard_p2p.wire.recon import (
    FINGERPRINT_LEN, IDLIST_MAX, INFINITE_TS, MAX_RANGES, MAX_RECONCILE_FRAME, MAX_WANT,
    MODE_FINGERPRINT, MODE_IDLIST, MODE_SKIP, ReconRange, Reconcile, decode_reconcile,
    encode_reconcile,
)

#: Sub-ranges a differing range is split into.
BRANCHES = 16
#: Recent items a "since" opening lists by id at most (8,192 × 34 B ≈ 280 KB, a quarter of the
#: frame limit; 256 IdList ranges).
RECENT_MAX = 8192
_TAG = b"neuroshard/recon/v2.1"
_MOD = 1 << 256
_INF = (INFINITE_TS, b"")
#: Worst-case bytes of one encoded range: bound (9 + 34) + mode + an IdList of 32 ids (3 + 32 × 34).
_RANGE_MAX_BYTES = 9 + 34 + 1 + 3 + IDLIST_MAX * 34 + 1
#: Room kept for the frame header, the want array and the final catch-all range.
_FRAME_RESERVE = 8 + 5 + MAX_WANT * 34 + _RANGE_MAX_BYTES

Item = tuple[int, bytes]


def fingerprint(count: int, id_sum: int) -> bytes:
    """The fingerprint of a range holding `count` items whose ids sum to `id_sum` (mod 2^256)."""
    return hashlib.sha256(_TAG + count.to_bytes(8, "big")
                          + (id_sum % _MOD).to_bytes(32, "big")).digest()[:FINGERPRINT_LEN]


def bound_between(below: Item, above: Item) -> tuple[int, bytes]:
    """The shortest bound b with below < b <= above: (above.ts, b"") if the timestamps differ,
    else above's id cut one byte after the prefix it shares with below's."""
    if below[0] != above[0]:
        return (above[0], b"")
    a, b = below[1], above[1]
    k = 0
    while k < len(a) and k < len(b) and a[k] == b[k]:
        k += 1
    return (above[0], b[:k + 1])


@dataclass
class Learnt:
    """What one reconciliation turn taught a side: ids the peer lacks (`have`) and ids it lacks
    that the peer holds (`need`)."""
    have: list[bytes] = field(default_factory=list)
    need: list[bytes] = field(default_factory=list)


#: Items per block of a ReconSet: a block is copied on its first change after a snapshot and its
#: prefix sums rebuilt on the first read after a change, so both cost O(_LOAD); lookups cost
#: O(log n). New items carry recent timestamps and land in the last blocks, expiry takes the
#: first: between two sessions only a few blocks change.
_LOAD = 256


class ReconSet:
    """(ts, id) items in order with prefix sums of their ids, for fingerprints in O(log n).

    Kept incrementally (`add`, `discard`: O(log n + _LOAD)), so a node's view maintains one
    alongside its merges and expiries (`MarketView.recon_set`) instead of building one per
    session. `snapshot()` is a read-only copy in O(n / _LOAD): it shares the blocks, and the set
    copies a block the first time it changes one afterwards (copy on write), so a session
    answers every turn from the view as it was when the session started.
    """

    def __init__(self, items: Iterable[Item] = (), load: int = _LOAD) -> None:
        ordered = sorted(set(items))
        self._load = load
        self._blocks: list[list[Item]] = [ordered[i:i + load]
                                          for i in range(0, len(ordered), load)]
        self._maxes: list[Item] = [block[-1] for block in self._blocks]
        #: Per block: prefix sums of its ids (len + 1 values), None until read after a change.
        self._block_sums: list[list[int] | None] = [None] * len(self._blocks)
        #: Per block: False while a snapshot may share it (copy before changing it).
        self._owned: list[bool] = [True] * len(self._blocks)
        #: Items before block k, and the sum of their ids (k = 0 .. blocks); None after a change.
        self._offsets: list[int] | None = None
        self._totals: list[int] | None = None
        self._len = len(ordered)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[Item]:
        for block in self._blocks:
            yield from block

    # -- changes ----------------------------------------------------------------------------

    def _own(self, k: int) -> list[Item]:
        if not self._owned[k]:
            self._blocks[k] = list(self._blocks[k])
            self._owned[k] = True
        self._block_sums[k] = None
        self._offsets = self._totals = None
        return self._blocks[k]

    def add(self, item: Item) -> bool:
        """Insert an item; False if it was held already."""
        blocks, maxes = self._blocks, self._maxes
        if not blocks:
            blocks.append([item])
            maxes.append(item)
            self._block_sums.append(None)
            self._owned.append(True)
            self._offsets = self._totals = None
            self._len = 1
            return True
        k = bisect_left(maxes, item)
        if k == len(blocks):
            k -= 1
        block = blocks[k]
        j = bisect_left(block, item)
        if j < len(block) and block[j] == item:
            return False
        block = self._own(k)
        block.insert(j, item)
        maxes[k] = block[-1]
        self._len += 1
        if len(block) > 2 * self._load:
            half = len(block) // 2
            blocks[k:k + 1] = [block[:half], block[half:]]
            maxes[k:k + 1] = [block[half - 1], block[-1]]
            self._block_sums[k:k + 1] = [None, None]
            self._owned[k:k + 1] = [True, True]
        return True

    def discard(self, item: Item) -> bool:
        """Remove an item; False if it was not held."""
        blocks, maxes = self._blocks, self._maxes
        k = bisect_left(maxes, item)
        if k == len(blocks):
            return False
        j = bisect_left(blocks[k], item)
        if j == len(blocks[k]) or blocks[k][j] != item:
            return False
        block = self._own(k)
        del block[j]
        self._len -= 1
        if block:
            maxes[k] = block[-1]
        else:
            del blocks[k], maxes[k], self._block_sums[k], self._owned[k]
        return True

    def snapshot(self) -> "ReconSet":
        """A read-only copy of the set as it is now, in O(blocks) (see the class docstring)."""
        self._prefix()
        copy = ReconSet.__new__(ReconSet)
        copy._blocks = list(self._blocks)
        copy._maxes = list(self._maxes)
        copy._block_sums = list(self._block_sums)
        copy._owned = [False] * len(self._blocks)  # read-only: never changed
        copy._offsets, copy._totals, copy._len = self._offsets, self._totals, self._len
        copy._load = self._load
        self._owned = [False] * len(self._blocks)
        return copy

    # -- reads ------------------------------------------------------------------------------

    def _sums_of(self, k: int) -> list[int]:
        sums = self._block_sums[k]
        if sums is None:
            total = 0
            sums = [0]
            for _, msg_id in self._blocks[k]:
                total += int.from_bytes(msg_id, "big")
                sums.append(total)
            self._block_sums[k] = sums
        return sums

    def _prefix(self) -> tuple[list[int], list[int]]:
        if self._offsets is None or self._totals is None:
            offsets, totals = [0], [0]
            count = total = 0
            for k, block in enumerate(self._blocks):
                count += len(block)
                total += self._sums_of(k)[-1]
                offsets.append(count)
                totals.append(total)
            self._offsets, self._totals = offsets, totals
        return self._offsets, self._totals

    def index(self, bound: tuple[int, bytes]) -> int:
        """Index of the first item at or above `bound`."""
        if bound == _INF:
            return self._len
        k = bisect_left(self._maxes, bound)
        if k == len(self._blocks):
            return self._len
        offsets, _ = self._prefix()
        return offsets[k] + bisect_left(self._blocks[k], bound)

    def _locate(self, i: int) -> tuple[int, int]:
        offsets, _ = self._prefix()
        k = bisect_right(offsets, i) - 1
        return k, i - offsets[k]

    def item_at(self, i: int) -> Item:
        k, j = self._locate(i)
        return self._blocks[k][j]

    def _sum_before(self, i: int) -> int:
        _, totals = self._prefix()
        if i >= self._len:
            return totals[-1]
        k, j = self._locate(i)
        return totals[k] + self._sums_of(k)[j]

    def fingerprint_of(self, lo: int, hi: int) -> bytes:
        return fingerprint(hi - lo, self._sum_before(hi) - self._sum_before(lo))

    def items_between(self, lo: int, hi: int) -> list[Item]:
        """Items lo .. hi − 1."""
        if lo >= hi:
            return []
        k, j = self._locate(lo)
        out: list[Item] = []
        want = hi - lo
        blocks = self._blocks
        while len(out) < want:
            out.extend(blocks[k][j:j + want - len(out)])
            k, j = k + 1, 0
        return out

    def initiate(self, since_ms: int | None = None) -> Reconcile:
        """The opening frame (§8.4). At most 32 items: one IdList of all of them. Else, without
        `since_ms`: one Fingerprint range over everything. With `since_ms` (the "recent"
        opening, revision 2.1): the items issued before since_ms as one range (ids if at most
        32, else a fingerprint), then every item from since_ms on by id, in IdList ranges of 32
        items — the last at most RECENT_MAX of them (an earlier since bound otherwise). Recent
        items are where two views differ (a keep-alive spreads for ~20 s), and there a
        difference costs the responder one set lookup instead of a split of 16 fingerprints at
        every level of the range tree."""
        n = self._len
        if n <= IDLIST_MAX:
            return Reconcile((ReconRange(*_INF, MODE_IDLIST, ids=self._ids(0, n)),))
        lo = n if since_ms is None else self.index((max(0, since_ms), b""))
        if lo >= n:
            return Reconcile((ReconRange(*_INF, MODE_FINGERPRINT, self.fingerprint_of(0, n)),))
        lower: tuple[int, bytes] = (max(0, since_ms or 0), b"")
        if n - lo > RECENT_MAX:
            lo = n - RECENT_MAX
            lower = bound_between(self.item_at(lo - 1), self.item_at(lo))
        ranges: list[ReconRange] = []
        if lower > (0, b""):
            if lo <= IDLIST_MAX:
                ranges.append(ReconRange(*lower, MODE_IDLIST, ids=self._ids(0, lo)))
            else:
                ranges.append(ReconRange(*lower, MODE_FINGERPRINT, self.fingerprint_of(0, lo)))
        for start in range(lo, n, IDLIST_MAX):
            end = min(start + IDLIST_MAX, n)
            bound = _INF if end == n else bound_between(self.item_at(end - 1), self.item_at(end))
            ranges.append(ReconRange(*bound, MODE_IDLIST, ids=self._ids(start, end)))
        return Reconcile(tuple(ranges))

    def _ids(self, lo: int, hi: int) -> tuple[bytes, ...]:
        return tuple(sorted(msg_id for _, msg_id in self.items_between(lo, hi)))

    def _split(self, lo: int, hi: int, upper: tuple[int, bytes]) -> list[ReconRange]:
        count = hi - lo
        if count <= IDLIST_MAX:
            return [ReconRange(*upper, MODE_IDLIST, ids=self._ids(lo, hi))]
        out: list[ReconRange] = []
        start = lo
        for part in range(1, BRANCHES + 1):
            end = lo + count * part // BRANCHES
            bound = upper if part == BRANCHES else bound_between(self.item_at(end - 1), self.item_at(end))
            out.append(ReconRange(*bound, MODE_FINGERPRINT, self.fingerprint_of(start, end)))
            start = end
        return out

    def process(self, frame: Reconcile, learnt: Learnt) -> Reconcile:
        """Answer one Reconcile frame; add what it teaches to `learnt`. The reply keeps the
        frame limits: past them, the rest of the span goes back as one Fingerprint range, which
        the peer will split in the next turn (nothing is lost, it only takes a turn more)."""
        out: list[ReconRange] = []
        size = 0
        lower: tuple[int, bytes] = (0, b"")
        lo = 0
        for position, r in enumerate(frame.ranges):
            hi = self.index(r.bound)
            if len(out) + BRANCHES + 1 >= MAX_RANGES or size + _FRAME_RESERVE + BRANCHES * _RANGE_MAX_BYTES > MAX_RECONCILE_FRAME:
                rest = self.index(lower)
                out.append(ReconRange(*_INF, MODE_FINGERPRINT, self.fingerprint_of(rest, self._len)))
                # What the remaining IdLists would have taught is learnt next turn instead.
                break
            if r.mode == MODE_SKIP:
                out.append(ReconRange(*r.bound, MODE_SKIP))
            elif r.mode == MODE_FINGERPRINT:
                if self.fingerprint_of(lo, hi) == r.fingerprint:
                    out.append(ReconRange(*r.bound, MODE_SKIP))
                else:
                    parts = self._split(lo, hi, r.bound)
                    out.extend(parts)
                    size += sum(_range_bytes(p) for p in parts)
            else:  # MODE_IDLIST
                theirs = set(r.ids)
                ours = {msg_id for _, msg_id in self.items_between(lo, hi)}
                learnt.have.extend(sorted(ours - theirs))
                learnt.need.extend(sorted(theirs - ours))
                out.append(ReconRange(*r.bound, MODE_SKIP))
            lower, lo = r.bound, hi
        return Reconcile(_merge_skips(out))


def _range_bytes(r: ReconRange) -> int:
    """An upper estimate of a range's encoded size."""
    return 9 + 34 + 1 + (17 if r.mode == MODE_FINGERPRINT else 3 + 34 * len(r.ids) if r.mode == MODE_IDLIST else 1)


def _merge_skips(ranges: list[ReconRange]) -> tuple[ReconRange, ...]:
    """Consecutive Skips as one; a frame of Skips only as no range at all (the end)."""
    merged: list[ReconRange] = []
    for r in ranges:
        if r.mode == MODE_SKIP and merged and merged[-1].mode == MODE_SKIP:
            merged[-1] = r
        else:
            merged.append(r)
    if all(r.mode == MODE_SKIP for r in merged):
        return ()
    return tuple(merged)


@dataclass
class PairResult:
    """One reconciliation between an initiator A and a responder B, run through the codec."""
    a_lacks: set[bytes]
    b_lacks: set[bytes]
    turns: int
    frame_bytes: int
    frames: list[bytes]


def reconcile_pair(a: ReconSet, b: ReconSet, max_turns: int = 64,
                   since_ms: int | None = None) -> PairResult:
    """Run the exchange of §8.4 between `a` (dialer, opening with `initiate(since_ms)`) and `b`
    (listener) until a turn carries no range; return what each side learnt it lacks. Every
    frame goes through encode and decode."""
    learnt_a, learnt_b = Learnt(), Learnt()
    frames: list[bytes] = []
    message = a.initiate(since_ms)
    sides = ((b, learnt_b), (a, learnt_a))
    turn = 0
    while message.ranges and turn < max_turns:
        wire = encode_reconcile(message)
        frames.append(wire)
        side, learnt = sides[turn % 2]
        message = side.process(decode_reconcile(wire), learnt)
        turn += 1
    a_lacks = set(learnt_a.need) | set(learnt_b.have)
    b_lacks = set(learnt_b.need) | set(learnt_a.have)
    return PairResult(a_lacks, b_lacks, turn, sum(len(f) for f in frames), frames)


__all__ = ["BRANCHES", "RECENT_MAX", "ReconSet", "Learnt", "PairResult", "fingerprint", "bound_between",
           "reconcile_pair"]
