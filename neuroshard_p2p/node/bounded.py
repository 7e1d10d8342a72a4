"""Forgetting the least recently seen entries of a bounded table, sparing the ones that hold a
running penalty (sans-IO).

A node remembers at most so many peers, providers and gateways, and forgets the least recently
seen first. Forgetting a record whose ban or refusal still runs would lift it: a peer refused
for not paying, or banned for lying, would be served again once enough other identities had
passed through the table (identities are cheap). So those are forgotten last: only when every
record in the table holds one.
"""

from __future__ import annotations

from collections import OrderedDict
from itertools import islice
from typing import Callable, Hashable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def forget_beyond(records: "OrderedDict[K, V]", limit: int,
                  spare: Callable[[V], bool]) -> list[K]:
    """Delete entries of `records` (least recently seen first) until at most `limit` remain,
    skipping those `spare` holds while there are others. Returns the keys deleted."""
    excess = len(records) - limit
    if excess <= 0:
        return []
    victims = list(islice((k for k, v in records.items() if not spare(v)), excess))
    if len(victims) < excess:  # all spared: the oldest go anyway
        chosen = set(victims)
        victims += list(islice((k for k in records if k not in chosen), excess - len(victims)))
    for key in victims:
        del records[key]
    return victims


__all__ = ["forget_beyond"]
