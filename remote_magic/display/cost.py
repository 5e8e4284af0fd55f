"""A job's price before it runs (`Client.cost`, `--dry-run`), read as a sentence rather than as the wire
model's field list: what training and evaluation would each cost (zCDP rho and epsilon at delta), the
budget left after it, the noise per leaf and the expected 95% intervals."""

from __future__ import annotations

import html

from ..contract.wire import CostEstimate, is_dp


def cost_lines(c: CostEstimate) -> list[str]:
    """The estimate, one line each: the cost, the trainer's noise, the expected intervals, the notes."""
    if not is_dp(c.privacy):
        return ["cost: none (this dataset releases rounded numbers, without differential privacy)"]
    expected = ", ".join(f"{name} +/- {value:g}" for name, value in c.expected.items())
    rows = f" for about {c.assumed_eval_rows:,} evaluation rows" if c.assumed_eval_rows else ""
    after = (
        "it would pass your budget's cap and be refused"
        if c.over_cap
        else f"budget left after it: rho {c.rho_remaining_after:.4g} of {c.rho_cap:g}"
    )
    total = f"rho {c.rho:g} (epsilon {c.epsilon:.3g} at delta {c.delta:g})"
    if c.rho_train:
        total += f": training rho {c.rho_train:g} (epsilon {c.epsilon_train:.3g})"
        total += f" and evaluation rho {c.rho_eval:g}"
    t = c.training
    noise = (
        [
            f"DP training: {t.trees} trees; Gaussian noise on each leaf's sums: sd "
            f"{t.sigma_gradient:.3g} on the gradients, {t.sigma_hessian:.3g} on the hessians"
        ]
        if t
        else []
    )
    return [
        f"cost if submitted: {total}; {after}",
        *noise,
        *([f"expected 95% intervals{rows}: {expected}"] if expected else []),
        *(f"note: {note}" for note in c.notes),
        *(f"warning: {warning}" for warning in c.warnings),
    ]


class Cost(CostEstimate):
    """`Client.cost`'s answer: the wire model's fields (`rho`, `rho_train`, `expected`, ...), printed and
    shown in a notebook as the lines a dry run shows, not as pydantic's field list."""

    def _headline(self) -> str:
        what = "evaluation" if self.kind == "evaluate" else "training"
        return f"Cost of a {what} job on {self.dataset} (mode {self.privacy}), before anything is spent"

    def __repr__(self) -> str:
        return "\n".join([self._headline(), *cost_lines(self)])

    def __str__(self) -> str:
        return repr(self)

    def _repr_html_(self) -> str:
        lines = "".join(f"<li>{html.escape(line)}</li>" for line in cost_lines(self))
        return (
            f"<div class='remote-magic-cost'><b>{html.escape(self._headline())}</b>"
            f"<ul style='margin:4px 0'>{lines}</ul></div>"
        )
