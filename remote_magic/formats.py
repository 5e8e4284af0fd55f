"""How released numbers read: counts (or what a suppressed one means) and the rules they came under.

Every display object formats through here, from the policy that travelled with the answer, never from
constants: a dataset may set stricter numbers than the server's defaults.
"""

from __future__ import annotations

from .wire import PolicyInEffect


def count_text(n: int | None, policy: PolicyInEffect | None) -> str:
    """A released count, or how a suppressed one reads under the rules in effect."""
    if n is not None:
        return f"{n:,}"
    return f"<{policy.min_count}" if policy is not None else "suppressed"


def dataset_text(name: str, version: int | None) -> str:
    """A dataset and the version an answer is of, as a spec pins it: `claims@3`."""
    return f"{name}@{version}" if version is not None else name


def rules_text(policy: PolicyInEffect | None, metrics: bool = True) -> str:
    """The rules an answer was released under, in one sentence (without a full stop)."""
    if policy is None:
        return "As released by the server's disclosure policy"
    counts = f"Counts rounded to {policy.round_to}; counts under {policy.min_count} suppressed"
    return f"{counts}; metrics to {policy.significant_digits} significant digits" if metrics else counts
