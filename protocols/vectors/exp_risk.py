#!/usr/bin/env python3
"""How often does the price depend on the last bit of exp()? (protocols/market-v1.md §7.2)

    python protocols/vectors/exp_risk.py [N]     # N random market states (default 1,000,000)

The target price is the only place where the protocol calls a function that IEEE 754 does not
require to be correctly rounded: exp() in σ. This script draws N random (supply, demand) pairs,
utilization u uniform in [0, 4) (where the curve moves), and for both curves computes the target
price in nano-NEURO with

* Python's math.exp (the platform's libm),
* a correctly rounded exp (the `decimal` module at 50 digits, rounded to the nearest double),
* that correctly rounded value one ulp below and one ulp above,

and counts the states where the integer price differs. Deterministic (fixed seed). Needs nothing
but the standard library; the curve is written out here from §7.2, not imported.
"""

from __future__ import annotations

import decimal
import math
import random
import sys
from typing import Callable

P_MIN, P_MAX, STEEPNESS, TARGET_RESPONSE_S = 0.01, 1.0, 3.0, 60.0
CTX = decimal.Context(prec=50)


def exp_correct(z: float) -> float:
    """exp(z) correctly rounded to a double (50 digits, then the nearest double)."""
    return float(CTX.exp(decimal.Decimal(z)))


E3 = 0.0  # exp(STEEPNESS), correctly rounded: σ(−1) of the normalized curve


def target_nano(supply: int, demand: int, curve: str, exp: Callable[[float], float]) -> int:
    if supply == 0:
        u = math.inf if demand > 0 else 0.0
    else:
        u = (demand / TARGET_RESPONSE_S) / supply
    lo, hi = round(P_MIN * 1e9), round(P_MAX * 1e9)
    if math.isinf(u):
        return hi

    def sigma(x: float) -> float:
        z = -STEEPNESS * x
        return 0.0 if z > 700 else 1.0 / (1.0 + exp(z))

    s = sigma(u - 1.0)
    if curve == "normalized":
        s0 = sigma(-1.0)
        s = (s - s0) / (1.0 - s0)
    price = min(P_MAX, max(P_MIN, P_MIN + (P_MAX - P_MIN) * s))
    return min(hi, max(lo, round(price * 1e9)))


def main(n: int) -> None:
    global E3
    E3 = exp_correct(STEEPNESS)
    assert math.exp(STEEPNESS) == E3
    rng = random.Random(20260101)
    libm_exp_differs = 0
    differ = {curve: {"libm": 0, "down": 0, "up": 0} for curve in ("seed", "normalized")}
    for _ in range(n):
        supply = rng.randint(1, 1_000_000)
        demand = rng.randint(0, int(4 * TARGET_RESPONSE_S) * supply - 1)
        u = (demand / TARGET_RESPONSE_S) / supply
        z = -STEEPNESS * (u - 1.0)
        exact = exp_correct(z)
        if math.exp(z) != exact:
            libm_exp_differs += 1
        # exp is called at z and (normalized curve) at STEEPNESS for σ(−1), whose exp(3.0) is
        # the same in every state; only exp(z) is moved by an ulp.
        variants = {"libm": math.exp(z), "down": math.nextafter(exact, -math.inf),
                    "up": math.nextafter(exact, math.inf)}
        for curve, counts in differ.items():
            reference = target_nano(supply, demand, curve, lambda w: exact if w == z else E3)
            for name, value in variants.items():
                moved = target_nano(supply, demand, curve, lambda w: value if w == z else E3)
                if moved != reference:
                    counts[name] += 1
    print(f"{n} states, u uniform in [0, 4); math.exp differs from the correctly rounded exp "
          f"on {libm_exp_differs}")
    for curve, counts in differ.items():
        print(f"{curve}: nano price differs with math.exp {counts['libm']}, "
              f"exp one ulp low {counts['down']}, one ulp high {counts['up']}")


def screened(n: int) -> None:
    """Many more states, cheaply: only states whose price·1e9 (with math.exp) lies within 1e-6
    of a half can change their integer by an ulp of exp (an ulp moves it by ~1e-7), so only
    those are checked against the correctly rounded exp."""
    rng = random.Random(20260102)
    near = 0
    differ = {curve: 0 for curve in ("seed", "normalized")}
    for _ in range(n):
        supply = rng.randint(1, 1_000_000)
        demand = rng.randint(0, int(4 * TARGET_RESPONSE_S) * supply - 1)
        u = (demand / TARGET_RESPONSE_S) / supply
        z = -STEEPNESS * (u - 1.0)
        s = 1.0 / (1.0 + math.exp(z))
        for curve in differ:
            v = s
            if curve == "normalized":
                s0 = 1.0 / (1.0 + E3)
                v = (s - s0) / (1.0 - s0)
            x = min(P_MAX, max(P_MIN, P_MIN + (P_MAX - P_MIN) * v)) * 1e9
            if abs(x - math.floor(x) - 0.5) > 1e-6:
                continue
            near += 1
            exact = exp_correct(z)
            reference = target_nano(supply, demand, curve, lambda w: exact if w == z else E3)
            for value in (math.exp(z), math.nextafter(exact, -math.inf),
                          math.nextafter(exact, math.inf)):
                if target_nano(supply, demand, curve,
                               lambda w: value if w == z else E3) != reference:
                    differ[curve] += 1
                    break
    print(f"screened {n} states: {near} (state, curve) pairs within 1e-6 of a half; the price "
          f"moves with exp's last bit (math.exp or ±1 ulp) in {differ}")


if __name__ == "__main__":
    E3 = exp_correct(STEEPNESS)
    if len(sys.argv) > 1 and sys.argv[1] == "--screened":
        screened(int(sys.argv[2]) if len(sys.argv) > 2 else 10_000_000)
    else:
        main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
