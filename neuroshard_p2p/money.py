"""Money: integer nano-NEURO from the wire to the ledger.

Prices are quoted in nano-NEURO per 1M tokens. A payment for `tokens` at `price_nano` is
tokens × price // 1M (rounded down, in the user's favour); the burn is taken from the payment and
the provider earns exactly the rest, so payment == earned + burned for every settlement.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

NANO_PER_NEURO = 1_000_000_000
TOKENS_PER_PRICE_UNIT = 1_000_000


def to_nano(neuro: float) -> int:
    """NEURO (a float from a person or a config file) to integer nano-NEURO, rounded half-even."""
    return round(neuro * NANO_PER_NEURO)


def from_nano(nano: int) -> float:
    """nano-NEURO to NEURO, for display only."""
    return nano / NANO_PER_NEURO


@dataclass(frozen=True)
class Settlement:
    """What one served request moves: the user pays `payment`, `burned` is destroyed and the
    provider earns `earned`. All integers, nano-NEURO."""

    payment: int
    burned: int
    earned: int


def settle_amounts(tokens: int, price_nano: int, burn_rate: float = 0.05) -> Settlement:
    """Split the payment for `tokens` at `price_nano` (per 1M tokens) into burn and earning.

    The burn rate is applied as an exact fraction (0.05 → 1/20), never as a float product, so the
    result is the same on every machine.
    """
    if tokens < 0 or price_nano < 0:
        raise ValueError(f"tokens and price must be >= 0, got {tokens}, {price_nano}")
    payment = tokens * price_nano // TOKENS_PER_PRICE_UNIT
    rate = Fraction(burn_rate).limit_denominator(1_000_000)
    burned = payment * rate.numerator // rate.denominator
    return Settlement(payment=payment, burned=burned, earned=payment - burned)
