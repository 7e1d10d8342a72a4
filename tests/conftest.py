"""Shared test helpers: deterministic keys. Nothing here stands in for project code."""

from __future__ import annotations

import coincurve
import pytest


def make_key(i: int) -> coincurve.PrivateKey:
    """The i-th fixed test key (i >= 1): secret = i as 32 big-endian bytes."""
    return coincurve.PrivateKey(i.to_bytes(32, "big"))


@pytest.fixture
def keys() -> list[coincurve.PrivateKey]:
    return [make_key(i) for i in range(1, 11)]
