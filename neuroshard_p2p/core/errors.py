"""The one error type of the market core, and the price formatting its messages use."""

from __future__ import annotations

from neuroshard_p2p.money import NANO_PER_NEURO


class MarketError(ValueError):
    """A market operation that cannot be done as asked. str(error) says why in words a person can
    act on, e.g. "current price 0.31 > max_price 0.20"."""


def format_price(nano: int, digits: int = 2) -> str:
    """A nano-NEURO amount as NEURO with at least `digits` decimals, and more where fewer would be
    off by over 5 % (0.057 rather than 0.06, 0.000000005 rather than 0.00)."""
    neuro = nano / NANO_PER_NEURO
    for d in range(digits, 9):
        text = f"{neuro:.{d}f}"
        if abs(float(text) * NANO_PER_NEURO - nano) <= 0.05 * abs(nano):
            return text
    return f"{neuro:.9f}"


def format_prices(a_nano: int, b_nano: int) -> tuple[str, str]:
    """Two prices with just enough decimals to tell them apart, so a comparison in a message
    never reads "0.06 > 0.06"."""
    for d in range(2, 10):
        a, b = format_price(a_nano, d), format_price(b_nano, d)
        if a != b or a_nano == b_nano:
            return a, b
    return format_price(a_nano, 9), format_price(b_nano, 9)


__all__ = ["MarketError", "format_price", "format_prices"]
