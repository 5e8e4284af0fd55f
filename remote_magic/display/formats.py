"""How released numbers read: counts (or what a suppressed one means) and the rules they came under.

Every display object formats through here, from the policy that travelled with the answer, never from
constants: a dataset may set stricter numbers than the server's defaults.
"""

from __future__ import annotations

from ..contract.wire import PolicyInEffect, PrivacyReport


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


def metric_text(value: float, policy: PolicyInEffect | None) -> str:
    """A released metric with the digits it was released with (4 significant: `0.4810`, not `0.481`, so
    a trailing zero is not mistaken for less precision); without the policy, as it came."""
    if policy is None or value == 0:
        return f"{value:g}"
    return f"{value:#.{policy.significant_digits}g}".rstrip(".")


def compact(value: float) -> str:
    """Three significant digits with a k/M/G/T suffix: short axis and bar labels for large numbers such as
    a regressor's gains."""
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.3g}{suffix}"
    return f"{value:.3g}"


def privacy_text(report: PrivacyReport) -> str:
    """What an answer cost under differential privacy and what is left, in one line."""
    if report.repeated:
        cost = "the stored answer to an identical request: no cost"
    else:
        cost = f"cost rho {report.rho:.4g} (epsilon {report.epsilon:.3g} at delta {report.delta:g})"
    return (
        f"differential privacy: {cost}; budget left rho {report.rho_remaining:.4g} of {report.rho_cap:g}; "
        "values include noise"
    )
