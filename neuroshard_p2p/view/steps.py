"""Network totals over time as a sum of step functions, readable in O(log n) at any instant.

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
  tick j is evaluated at (j·tick − settle_delay). Block sums sit in a sorted map with a lazily
  rebuilt prefix-sum array; a change invalidates it only from the changed block on, and changes
  arrive near the present, so a rebuild touches a few hundred blocks whatever the number of
  signers. The value at a tick's instant is then one bisection plus one dict lookup.
"""

from __future__ import annotations

from bisect import bisect_left

from sortedcontainers import SortedDict

LANE_BITS = 128
LANE_MASK = (1 << LANE_BITS) - 1


def pack(available_nodes: int, supply: int, demand: int, requests: int, counted: int) -> int:
    """One contribution as a packed integer (all quantities must be >= 0 and < 2^128)."""
    return (available_nodes
            | supply << LANE_BITS
            | demand << (2 * LANE_BITS)
            | requests << (3 * LANE_BITS)
            | counted << (4 * LANE_BITS))


def unpack(value: int) -> tuple[int, int, int, int, int]:
    """The lanes of a packed total. Only valid for a total whose every lane is >= 0."""
    return (value & LANE_MASK,
            (value >> LANE_BITS) & LANE_MASK,
            (value >> (2 * LANE_BITS)) & LANE_MASK,
            (value >> (3 * LANE_BITS)) & LANE_MASK,
            value >> (4 * LANE_BITS))


class StepSum:
    """A sum of step functions of integer time (ms), as packed deltas grouped in blocks.

    Block j holds the instants [j·block_ms − shift_ms, (j+1)·block_ms − shift_ms).
    """

    __slots__ = ("_block_ms", "_shift_ms", "_points", "_blocks", "_keys", "_cum", "_dirty",
                 "changed_from")

    def __init__(self, block_ms: int, shift_ms: int) -> None:
        if block_ms <= 0:
            raise ValueError("block_ms must be > 0")
        self._block_ms = block_ms
        self._shift_ms = shift_ms
        self._points: dict[int, dict[int, int]] = {}    # block → {instant: packed delta}
        self._blocks: SortedDict = SortedDict()          # block → packed sum of its deltas
        self._keys: list[int] = []                       # prefix cache: blocks, ascending …
        self._cum: list[int] = []                        # … and the sum of deltas up to each
        self._dirty: int | None = None                   # lowest block the cache is stale from
        #: Lowest block changed since the owner last reset this (for the owner's own caches).
        self.changed_from: int | None = None

    def add(self, t_ms: int, delta: int) -> None:
        """Add a packed delta at instant t_ms (a step up or down from t_ms on)."""
        if not delta:
            return
        block = (t_ms + self._shift_ms) // self._block_ms
        points = self._points.get(block)
        if points is None:
            points = self._points[block] = {}
        value = points.get(t_ms, 0) + delta
        if value:
            points[t_ms] = value
        else:
            del points[t_ms]
            if not points:
                del self._points[block]
        total = self._blocks.get(block, 0) + delta
        if total:
            self._blocks[block] = total
        else:
            # A block whose deltas cancel adds nothing to the prefix sums: keep the map small.
            self._blocks.pop(block, None)
        if self._dirty is None or block < self._dirty:
            self._dirty = block
        if self.changed_from is None or block < self.changed_from:
            self.changed_from = block

    def _before(self, block: int) -> int:
        """Sum of all deltas in blocks < block."""
        if self._dirty is not None:
            self._rebuild(self._dirty)
        i = bisect_left(self._keys, block)
        return self._cum[i - 1] if i else 0

    def _rebuild(self, start: int) -> None:
        keys, cum = self._keys, self._cum
        i = bisect_left(keys, start)
        running = cum[i - 1] if i else 0
        del keys[i:]
        del cum[i:]
        blocks = self._blocks
        for key in blocks.irange(minimum=start):
            running += blocks[key]
            keys.append(key)
            cum.append(running)
        self._dirty = None

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
