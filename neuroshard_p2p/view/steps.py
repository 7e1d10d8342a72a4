"""Network totals over time as a sum of step functions: O(log n) at a tick's instant, plus the
changes inside that tick at any other instant.

Every announcement that counts contributes a constant amount (nodes, tokens per second, pending
tokens, pending requests) over a half-open interval of the signed timeline [start, end). The
network total at t is the sum of the contributions whose interval holds t, which equals the sum of
all deltas (+v at start, −v at end) at times ≤ t. `StepSum` keeps those deltas and answers that
prefix sum without visiting every signer.

Two tricks keep it cheap in pure Python:

* The quantities of one contribution are packed into one integer, one 128-bit lane each
  (`pack`/`unpack`). Integer addition is linear, so a sum of packed deltas is the packed sum; at
  any instant every lane of the total is a sum of non-negative contributions well below 2^128, so
  it unpacks exactly. One dict operation moves all quantities at once.
* Deltas are grouped in blocks of one tick, aligned so that block j starts exactly at the instant
  tick j is evaluated at (j·tick − settle_delay). Block sums sit in a plain dict, their keys in a
  sorted list with a prefix-sum array beside it that is rebuilt lazily from the lowest changed
  block on; changes arrive near the present, so a rebuild touches a few hundred blocks whatever
  the number of signers. The value at a tick's instant is then one bisection plus one dict lookup,
  and an `add` is a few dict operations (a new block key is inserted into the sorted list, which
  happens about once per tick).
"""

from __future__ import annotations

from bisect import bisect_left, insort

LANE_BITS = 128
LANE_MASK = (1 << LANE_BITS) - 1


def pack(available_nodes: int, supply: int, demand: int, requests: int, counted: int,
         marker: int = 0) -> int:
    """One contribution as a packed integer (all quantities must be >= 0 and < 2^128).
    `marker` is a sixth lane that only makes contributions of different messages differ (a
    clearing network's price depends on each counted message's ask and bids, not only on the
    totals, so replacing a message by one with equal totals must still register as a change)."""
    return (available_nodes
            | supply << LANE_BITS
            | demand << (2 * LANE_BITS)
            | requests << (3 * LANE_BITS)
            | counted << (4 * LANE_BITS)
            | marker << (5 * LANE_BITS))


def unpack(value: int) -> tuple[int, int, int, int, int]:
    """The lanes of a packed total (without the marker). Only valid for a total whose every lane
    is >= 0."""
    return (value & LANE_MASK,
            (value >> LANE_BITS) & LANE_MASK,
            (value >> (2 * LANE_BITS)) & LANE_MASK,
            (value >> (3 * LANE_BITS)) & LANE_MASK,
            (value >> (4 * LANE_BITS)) & LANE_MASK)


class StepSum:
    """A sum of step functions of integer time (ms), as packed deltas grouped in blocks.

    Block j holds the instants [j·block_ms − shift_ms, (j+1)·block_ms − shift_ms).
    """

    __slots__ = ("_block_ms", "_shift_ms", "_points", "_blocks", "_keys", "_cum", "_valid",
                 "changed_from")

    def __init__(self, block_ms: int, shift_ms: int) -> None:
        if block_ms <= 0:
            raise ValueError("block_ms must be > 0")
        self._block_ms = block_ms
        self._shift_ms = shift_ms
        self._points: dict[int, dict[int, int]] = {}    # block → {instant: packed delta}
        self._blocks: dict[int, int] = {}                # block → packed sum of its deltas (≠ 0)
        self._keys: list[int] = []                       # the blocks of _blocks, ascending …
        self._cum: list[int] = []                        # … and the sum of deltas up to each,
        self._valid = 0                                  # exact for _keys[:_valid] only
        #: Lowest block changed since the owner last reset this (for the owner's own caches).
        self.changed_from: int | None = None

    def add(self, t_ms: int, delta: int) -> None:
        """Add a packed delta at instant t_ms (a step up or down from t_ms on)."""
        self.add_many(t_ms, delta)

    def add_many(self, *changes: int) -> None:
        """`add(t, delta)` for each pair of the flat list t1, delta1, t2, delta2, …: the same
        result as that many `add` calls (a sum does not depend on order), with the lookups
        done once (a view's merge adds three steps per announcement)."""
        points_of = self._points
        blocks = self._blocks
        keys = self._keys
        block_ms, shift_ms = self._block_ms, self._shift_ms
        changed = self.changed_from
        for i in range(0, len(changes), 2):
            delta = changes[i + 1]
            if not delta:
                continue
            t_ms = changes[i]
            block = (t_ms + shift_ms) // block_ms
            points = points_of.get(block)
            if points is None:
                points_of[block] = {t_ms: delta}
            else:
                value = points.get(t_ms)
                if value is None:
                    points[t_ms] = delta  # the caller's object: views may share it
                else:
                    value += delta
                    if value:
                        points[t_ms] = value
                    else:
                        del points[t_ms]
                        if not points:
                            del points_of[block]
            valid = self._valid
            if valid and keys[valid - 1] >= block:
                self._valid = bisect_left(keys, block, 0, valid)
            total = blocks.get(block)
            if total is None:
                blocks[block] = delta
                if keys and block < keys[-1]:
                    insort(keys, block)
                else:
                    keys.append(block)
            else:
                total += delta
                if total:
                    blocks[block] = total
                else:
                    del blocks[block]
                    del keys[bisect_left(keys, block)]
            if changed is None or block < changed:
                changed = block
        self.changed_from = changed

    def _before(self, block: int) -> int:
        """Sum of all deltas in blocks < block."""
        keys = self._keys
        if self._valid < len(keys):
            self._rebuild()
        i = bisect_left(keys, block)
        return self._cum[i - 1] if i else 0

    def _rebuild(self) -> None:
        keys, cum, blocks = self._keys, self._cum, self._blocks
        i = self._valid
        running = cum[i - 1] if i else 0
        del cum[i:]
        for key in keys[i:]:
            running += blocks[key]
            cum.append(running)
        self._valid = len(keys)

    def value_at(self, t_ms: int) -> int:
        """The packed total at instant t_ms: the sum of all deltas at instants <= t_ms."""
        block = (t_ms + self._shift_ms) // self._block_ms
        total = self._before(block)
        points = self._points.get(block)
        if points:
            for instant, delta in points.items():
                if instant <= t_ms:
                    total += delta
        return total

    def value_at_block_start(self, block: int) -> int:
        """The packed total at the first instant of `block` (a tick's evaluation instant):
        one bisection and one lookup."""
        total = self._before(block)
        points = self._points.get(block)
        if points:
            total += points.get(block * self._block_ms - self._shift_ms, 0)
        return total

    def __len__(self) -> int:
        """Number of instants holding a non-zero delta (what the step sums cost in memory)."""
        return sum(len(points) for points in self._points.values())


__all__ = ["StepSum", "pack", "unpack", "LANE_BITS"]
