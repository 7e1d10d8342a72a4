"""Whether this node's clock agrees with its peers', from the times they sign (sans-IO).

Every rule of the market runs on signed time: a peer refuses an announcement issued more than
30 s after its own clock (W13), capacity counts for 60 s of signed time, and the price of an
instant uses what was signed before it. A node whose clock is wrong breaks quietly: 45 s ahead,
every peer refuses its announcements and nobody counts its capacity, while it goes on offering;
45 s behind, it refuses every peer's announcement as "from the future" and prices an empty
market. Its peers log the rejects; the node itself saw nothing. The watch is how it finds out.

What it measures: each verified announcement's signed issue time minus this node's clock when
it arrived (`observe`), kept per signer as the largest such difference over the last 5 to 10
minutes. An announcement arrives after it was signed, by gossip in well under a second and by
reconciliation up to a period later, so the largest difference is the one that waited least:
the signer's clock minus ours, less a delay. Announcements refused as `future` or `stale` count
too: their signature was checked, and they are the evidence when the gap is largest.

The verdict (`reading`): when signers holding more than half of the weight heard from in the
window, and at least two of them, are ahead of this node by `warn_s` (5 s) or more, this node's
clock is behind. A delay can make a signer look behind, never ahead, so the other way asks
more: this node's clock is ahead when signers holding more than two thirds of the weight
(`AHEAD_SHARE`), and at least two, are behind by that much, counting only signers heard over
more than a keep-alive period (`confirm_s`: the period, 20 s unless told, plus `CONFIRM_S`). A
node's first syncs bring every signer's last keep-alive, signed up to a period before; and on a
quiet network, while a hundred nodes start on two cores, keep-alives that ride sync arrived
5–8 s late from half the signers (docs/scaling.md, 24th and 25th passes). A clock truly ahead
puts nearly every signer behind. When the only signer heard from is off by `warn_s`, the two
clocks differ and the node cannot tell which is wrong (`differs`); otherwise it agrees with its
peers, and the signers that are off by that much are counted as peers with a wrong clock. One
signer's claim never decides the verdict while two others disagree with it.

Identities are cheap, so a signer weighs what it weighs in the price: 2^(bits − F) for a key
with fewer than the charter's F bits of identity work (wire/work.py), 1 with F or more. And the
watch remembers at most `max_signers`; when full, a new signer takes the place of one not heard
from in the window, or of a lighter one, or none: a flood of fresh identities cannot push out
the signers it already measures. On a network with identity work, fresh keys with no work move
nothing; on one without (simnet), a majority of identities decides, as it would move the price.
The verdict is a warning and a failed `/api/health` check; nothing is refused or priced by it.

It reads no clock: `now` comes in as an argument (seconds of this node's clock).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from neuroshard_p2p.timeline import ms_of

#: A difference this large, in seconds, is a wrong clock rather than a slow network.
WARN_S = 5.0
#: Each signer's best difference is kept per bucket of this many seconds; the reading uses the
#: current bucket and the one before (so 5 to 10 minutes of arrivals).
BUCKET_S = 300.0
#: A signer counts as behind this node's clock only once heard over a keep-alive period and this
#: much more (its first and its latest arrival in the window that far apart; `confirm_s`). At
#: first contact a signer's newest announcement can be a whole keep-alive period old (it signs
#: again only then), and a node's first syncs, seconds apart, bring exactly those; a message
#: that arrives more than a period after the first was signed after this node began listening,
#: and came at the network's speed.
CONFIRM_S = 5.0
#: The keep-alive period assumed for signers unless told (the reference `announce_interval_s`).
KEEP_ALIVE_S = 20.0
#: The share of the weight heard from that must be behind this node for it to be told its clock
#: is ahead (more than half for behind: no delay can fake that).
AHEAD_SHARE = 2 / 3
#: Signers remembered at most, least recently heard dropped first.
MAX_SIGNERS = 512

AGREES = "agrees"
AHEAD = "ahead"
BEHIND = "behind"
DIFFERS = "differs"
UNKNOWN = "unknown"
STATES = (AGREES, AHEAD, BEHIND, DIFFERS, UNKNOWN)


@dataclass(frozen=True)
class ClockReading:
    """This node's clock against its peers' at one instant.

    `state`: `agrees`, `ahead` (this node's clock is ahead of most signers'), `behind`,
    `differs` (the only signer heard from is off), or `unknown` (no signer heard from in the
    window). `offset_s`: the median of (signer's clock − ours) over the signers that decided
    the state (when it agrees, those within `warn_s`; when wrong, of an even number of them the
    middle one nearer zero: a gap at least half of them show, never the mean of two that none
    shows); negative when this node is ahead.
    `signers`: signers heard from in the window; `off`: how many of them are `warn_s` or more
    away from this node's clock, either way."""

    state: str
    offset_s: float | None
    signers: int
    off: int
    warn_s: float = WARN_S

    @property
    def wrong(self) -> bool:
        """This node's clock is wrong by the majority of its peers."""
        return self.state in (AHEAD, BEHIND)

    @property
    def warns(self) -> bool:
        """Worth an operator's attention: wrong, or differing from the only peer's."""
        return self.state in (AHEAD, BEHIND, DIFFERS)

    def describe(self, max_future_s: float, max_age_s: float) -> str:
        """One line for an operator: the state, the gap and what it breaks."""
        if self.state == UNKNOWN:
            return "no signed time heard from peers yet"
        assert self.offset_s is not None
        gap = abs(self.offset_s)
        if self.state == AGREES:
            text = (f"agrees with {self.signers - self.off} of {self.signers} signer(s) within "
                    f"{self.warn_s:g} s (median {self.offset_s:+.1f} s)")
            if self.off:
                text += f"; {self.off} {'is' if self.off == 1 else 'are'} off by more"
            return text
        if self.state == DIFFERS:
            way = "ahead of" if self.offset_s > 0 else "behind"
            return (f"the only signer heard from is {gap:.0f} s {way} this node's clock: one of "
                    "the two clocks is wrong, and the other's announcements are refused or "
                    "counted short. Check this node's clock (e.g. enable NTP).")
        majority = f"{self.off} of {self.signers} signer(s)"
        if self.state == AHEAD:
            text = f"this node's clock is {gap:.0f} s ahead of {majority}"
            if gap > max_future_s:
                text += (f": peers refuse its announcements (more than {max_future_s:g} s in the "
                         "future), so nobody counts its capacity or demand")
            else:
                text += ": peers' capacity stops counting early here, and its price runs high"
        else:
            text = f"this node's clock is {gap:.0f} s behind {majority}"
            if gap > max_age_s:
                text += (f": peers ignore its announcements (more than {max_age_s:g} s old), so "
                         "nobody counts its capacity or demand")
            elif gap > max_future_s:
                text += (f": it refuses peers' announcements (more than {max_future_s:g} s in "
                         "the future), so it counts no peer's capacity")
            else:
                text += ": its price lags the network's"
        return text + ". Set the clock right (e.g. enable NTP)."


class _Heard:
    """One signer's best differences (ms): in bucket `bucket`, and in the bucket before it; and
    the heaviest weight its messages carried."""

    __slots__ = ("bucket", "best", "before", "weight", "first_at", "last_at")

    def __init__(self, bucket: int, best: int, before: int | None, weight: float,
                 at: float) -> None:
        self.bucket = bucket
        self.best = best
        self.before = before
        self.weight = weight
        self.first_at = at  # arrivals (this node's clock): the first in the window, the latest
        self.last_at = at


class ClockWatch:
    """Per-signer clock differences and the verdict on this node's clock (module docstring)."""

    def __init__(self, *, warn_s: float = WARN_S, bucket_s: float = BUCKET_S,
                 max_signers: int = MAX_SIGNERS, keep_alive_s: float = KEEP_ALIVE_S) -> None:
        if warn_s <= 0 or bucket_s <= 0 or max_signers < 1 or keep_alive_s < 0:
            raise ValueError("warn_s and bucket_s must be > 0, max_signers >= 1 and "
                             "keep_alive_s >= 0")
        self.warn_s = warn_s
        #: How long a signer must have been heard over before it counts as behind (CONFIRM_S).
        self.confirm_s = keep_alive_s + CONFIRM_S
        self.bucket_s = bucket_s
        self.max_signers = max_signers
        self._signers: dict[bytes, _Heard] = {}  # least recently heard first

    def observe(self, signer: bytes, issued_at_ms: int, now: float, weight: float = 1.0) -> None:
        """A verified message of `signer`, signed at `issued_at_ms`, arrived at `now`; `weight`:
        what the signer's key weighs in the price (2^(bits − F), at most 1)."""
        difference = issued_at_ms - ms_of(now)
        bucket = int(now // self.bucket_s)
        heard = self._signers.get(signer)
        if heard is None:
            if len(self._signers) >= self.max_signers and not self._make_room(bucket, weight):
                return
            self._signers[signer] = _Heard(bucket, difference, None, weight, now)
            return
        if heard.bucket < bucket - 1 or heard.bucket > bucket:
            # not heard for a whole bucket, or our clock was set back: start from here
            heard.bucket, heard.best, heard.before = bucket, difference, None
            heard.first_at = heard.last_at = now
        elif heard.bucket == bucket - 1:
            heard.bucket, heard.best, heard.before = bucket, difference, heard.best
        elif difference > heard.best:
            heard.best = difference
        if weight > heard.weight:
            heard.weight = weight
        heard.first_at = min(heard.first_at, now)
        heard.last_at = max(heard.last_at, now)

    def _make_room(self, bucket: int, weight: float) -> bool:
        """Full: drop a signer not heard from in the window, else the lightest one if it is
        lighter than the newcomer. False when neither (the newcomer is not remembered)."""
        lightest: tuple[float, bytes] | None = None
        for signer, heard in self._signers.items():
            if not bucket - 1 <= heard.bucket <= bucket:
                del self._signers[signer]
                return True
            if lightest is None or heard.weight < lightest[0]:
                lightest = (heard.weight, signer)
        if lightest is not None and lightest[0] < weight:
            del self._signers[lightest[1]]
            return True
        return False

    def reset(self) -> None:
        """Forget every difference: the driver saw this node's clock set (stepped), so what was
        measured before describes a clock that is gone."""
        self._signers.clear()

    def offsets(self, now: float) -> dict[bytes, float]:
        """Each signer heard from in the window: its best (signer's clock − ours), in seconds."""
        return {signer: offset for signer, (offset, _, _) in self._weighed(now).items()}

    def _weighed(self, now: float) -> dict[bytes, tuple[float, float, bool]]:
        """Each signer heard from in the window: (its best difference in seconds, its weight,
        whether it was heard over at least `confirm_s`)."""
        bucket = int(now // self.bucket_s)
        result: dict[bytes, tuple[float, float, bool]] = {}
        for signer, heard in self._signers.items():
            if heard.bucket == bucket:
                best = heard.best if heard.before is None else max(heard.best, heard.before)
            elif heard.bucket == bucket - 1:
                best = heard.best
            else:
                continue
            result[signer] = (best / 1000, heard.weight,
                              heard.last_at - heard.first_at >= self.confirm_s)
        return result

    def reading(self, now: float) -> ClockReading:
        """The verdict at `now` (module docstring)."""
        weighed = list(self._weighed(now).values())
        if not weighed:
            return ClockReading(UNKNOWN, None, 0, 0, self.warn_s)
        offsets = [o for o, _, _ in weighed]
        ahead = [o for o in offsets if o >= self.warn_s]      # signers ahead of us: we are behind
        late = [o for o in offsets if o <= -self.warn_s]      # signers behind us, or late
        # signers behind us, heard over confirm_s: we are ahead
        behind = [(o, w) for o, w, heard_long in weighed if o <= -self.warn_s and heard_long]
        total = sum(w for _, w, _ in weighed)
        half = total / 2
        if len(offsets) == 1 and (ahead or behind):
            return ClockReading(DIFFERS, offsets[0], 1, 1, self.warn_s)
        if len(ahead) >= 2 and sum(w for o, w, _ in weighed if o >= self.warn_s) > half:
            return ClockReading(BEHIND, _gap(ahead), len(offsets), len(ahead),
                                self.warn_s)
        if len(behind) >= 2 and sum(w for _, w in behind) > AHEAD_SHARE * total:
            return ClockReading(AHEAD, _gap([o for o, _ in behind]), len(offsets),
                                len(behind), self.warn_s)
        in_step = [o for o in offsets if -self.warn_s < o < self.warn_s] or offsets
        return ClockReading(AGREES, statistics.median(in_step), len(offsets),
                            len(ahead) + len(late), self.warn_s)


def _gap(offsets: list[float]) -> float:
    """The median of offsets all on one side of zero; of an even number, the middle one nearer
    zero. (45 s ahead of two signers and 90 s of a third that is itself behind: 45 s, as with all
    three; the plain median of the first two confirmed would be 67.5 s, a gap nobody has.)"""
    nearest_first = sorted(offsets, key=abs)
    return nearest_first[(len(nearest_first) - 1) // 2]


__all__ = ["AGREES", "AHEAD", "AHEAD_SHARE", "BEHIND", "BUCKET_S", "CONFIRM_S", "DIFFERS", "KEEP_ALIVE_S", "STATES",
           "ClockReading", "ClockWatch", "MAX_SIGNERS", "UNKNOWN", "WARN_S"]
