"""One signer's register: the few newest announcements it signed, and what they contribute when.

Retention rule (the heart of why merge is a join). Of all the announcements a view has received
from one signer, it keeps those that are both

* among the `keep` newest, ordered by (issued_at_ms, seq, msg_id), and
* issued at most `horizon_ms` before the newest one (the largest issued_at_ms received).

Whether a message is kept depends only on the messages ordered above it and on the largest
issued_at_ms, and both are themselves always kept. So dropping a message never changes what is
kept later, whatever else arrives: retained(A ∪ B) = retained(retained(A) ∪ retained(B)). That is
what makes the view's merge commutative, associative and idempotent, and lets a view forget.

Equivocation: two retained messages with the same seq (necessarily different ids — same id is the
same message). It is read off the retained set, so both messages travel with the view on merge
and sync and every replica marks the signer. An equivocating signer counts nothing at any time.
The mark lasts as long as the evidence is retained (at least `horizon_ms` of the signer's own
timeline, or until it signs `keep` newer messages); detecting equivocation across messages a view
has already forgotten would need unbounded memory, and a mark that depended on arrival order would
break convergence. The node's validator can keep a longer local memory of equivocators.

What counts at instant t: the retained message with the highest seq among those issued at or
before t, and only while t < its issued_at_ms + capacity_timeout. A signer that lists a lower seq
with a later timestamp has only itself to blame: the rule stays deterministic.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Callable, NamedTuple

from neuroshard_p2p.wire import Announcement


def order_key(message: Announcement) -> tuple[int, int, bytes]:
    """Newest-last order of one signer's messages; ties of (issued_at, seq) — equivocations —
    are ordered by message id."""
    return (message.issued_at_ms, message.seq, message.msg_id)


#: Turns an announcement into its packed contribution (see `steps.pack`).
Weigher = Callable[[Announcement], int]
#: The instant an announcement's signer stops counting whatever it says (a member's credential
#: expiry or revocation; far in the future otherwise).
EndOf = Callable[[Announcement], int]


class Segment(NamedTuple):
    """Over [start_ms, end_ms) the signer's counted announcement is `message`, contributing the
    packed quantities `weight`."""

    start_ms: int
    end_ms: int
    weight: int
    message: Announcement


class Register:
    """The retained announcements of one signer, oldest first, and the segments they count over
    (exactly what the view has added to its step sums for this signer)."""

    __slots__ = ("signer", "bucket", "messages", "keys", "equivocating", "segments", "simple")

    def __init__(self, signer: bytes, bucket: int) -> None:
        self.signer = signer
        self.bucket = bucket
        self.messages: list[Announcement] = []
        self.keys: list[tuple[int, int, bytes]] = []
        self.equivocating = False
        self.segments: tuple[Segment, ...] = ()
        #: Every retained message has its own segment, in order (so issued_at and seq both
        #: strictly increase and nobody equivocates): the view then merges a newer message
        #: without recomputing the segments (`MarketView._append`). An empty register is.
        self.simple = True

    @property
    def newest_ms(self) -> int:
        return self.messages[-1].issued_at_ms

    def insert(self, message: Announcement, keep: int, horizon_ms: int
               ) -> tuple[bool, list[Announcement]]:
        """Add a message (not already held) and apply the retention rule. Returns whether the
        message is retained and the messages dropped to make room (never both False and a
        non-empty list: a message that is not retained changes nothing)."""
        key = order_key(message)
        index = bisect_left(self.keys, key)
        self.keys.insert(index, key)
        self.messages.insert(index, message)
        newest = self.keys[-1][0]
        first = max(0, len(self.keys) - keep)
        while first < len(self.keys) and self.keys[first][0] < newest - horizon_ms:
            first += 1
        dropped = self.messages[:first]
        if first:
            del self.messages[:first]
            del self.keys[:first]
        retained = not any(m is message for m in dropped)
        self.equivocating = _has_equal_seqs(self.messages)
        return retained, [m for m in dropped if m is not message]

    def segments_for(self, timeout_ms: int, weigh: Weigher,
                     end_of: EndOf | None = None) -> tuple[Segment, ...]:
        """The counting segments of the retained messages (none while equivocating)."""
        if self.equivocating:
            return ()
        segments: list[Segment] = []
        best: Announcement | None = None
        for message in self.messages:  # oldest first
            if best is None or message.seq > best.seq:
                if best is not None:
                    _close(segments, best, message.issued_at_ms, timeout_ms, weigh, end_of)
                best = message
        if best is not None:
            _close(segments, best, best.issued_at_ms + timeout_ms, timeout_ms, weigh, end_of)
        return tuple(segments)

    def counted_at(self, t_ms: int) -> Segment | None:
        """The segment holding instant t_ms, if any (segments are disjoint and ascending)."""
        segments = self.segments
        lo, hi = 0, len(segments)
        while lo < hi:
            mid = (lo + hi) // 2
            if segments[mid].start_ms <= t_ms:
                lo = mid + 1
            else:
                hi = mid
        if lo and t_ms < segments[lo - 1].end_ms:
            return segments[lo - 1]
        return None


def _close(segments: list[Segment], best: Announcement, until_ms: int, timeout_ms: int,
           weigh: Weigher, end_of: EndOf | None) -> None:
    start = best.issued_at_ms
    end = min(until_ms, start + timeout_ms)
    if end_of is not None:
        end = min(end, end_of(best))
    if end > start:
        weight = weigh(best)
        if weight:
            segments.append(Segment(start, end, weight, best))


def _has_equal_seqs(messages: list[Announcement]) -> bool:
    seqs = {m.seq for m in messages}
    return len(seqs) < len(messages)


__all__ = ["Register", "Segment", "order_key"]
