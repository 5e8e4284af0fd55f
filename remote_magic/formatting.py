"""How released numbers are written, in text and HTML alike: counts, metrics and importances.

A metric is shown with the precision it was released at (four significant digits: `0.4810`, not
`0.481`, so a trailing zero is not mistaken for less precision); a suppressed count is `<10`; large
importances are compact (`123k`) so a regressor's gains stay readable.
"""

from __future__ import annotations

SIGNIFICANT_DIGITS = 4
SUPPRESSED = "<10"
_SUFFIXES = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))


def count(n: int | None) -> str:
    """A released count: thousands separated, `<10` when suppressed."""
    return SUPPRESSED if n is None else f"{n:,}"


def significant(value: float, digits: int = SIGNIFICANT_DIGITS) -> str:
    """`value` to `digits` significant digits, trailing zeros kept; large values as whole numbers."""
    if abs(value) >= 10**digits:
        return f"{value:,.0f}"
    return f"{value:#.{digits}g}".rstrip(".")


def compact(value: float) -> str:
    """Three significant digits with a k/M/G/T suffix: axis and bar labels that stay short."""
    for threshold, suffix in _SUFFIXES:
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"
