"""A user's privacy budgets as `%remote_budget` and `Client.budget()` show them: per mode-dp dataset the
cap, what is spent and left, and every charge with the job that made it (a failed or cancelled job was
charged too once its rows were admitted), so nothing is spent out of sight."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

from ..contract.wire import BudgetReport, DatasetBudget
from .tables import Table

if TYPE_CHECKING:
    import pandas as pd


def _headline(budget: DatasetBudget) -> str:
    raised = " (set for you by the data owner)" if budget.raised else ""
    return (
        f"{budget.dataset}: spent rho {budget.rho_spent:.4g} of {budget.rho_cap:g}{raised}; "
        f"left {budget.rho_remaining:.4g}"
    )


def _charges(budget: DatasetBudget) -> Table:
    rows = [
        [c.job_id or f"({c.kind})", c.kind, f"{c.rho:.4g}", c.at.replace("T", " ")[:19]]
        for c in budget.charges
    ]
    return Table(["job", "kind", "rho", "charged (UTC)"], rows)


class Budget:
    """The budgets, with a text face and an HTML face; `.to_pandas()` gives one row per charge."""

    def __init__(self, report: BudgetReport):
        self.report = report

    def __getitem__(self, dataset: str) -> DatasetBudget:
        for budget in self.report.datasets:
            if budget.dataset == dataset:
                return budget
        raise KeyError(f"no budget on {dataset!r}: it is not a mode-dp dataset you may use")

    def __repr__(self) -> str:
        if not self.report.datasets:
            return "No dataset you may use is served in mode dp: nothing is charged."
        parts = []
        for budget in self.report.datasets:
            charges = repr(_charges(budget)) if budget.charges else "(nothing charged yet)"
            parts.append(f"{_headline(budget)}\n{charges}")
        return "\n\n".join(parts)

    def _repr_html_(self) -> str:
        if not self.report.datasets:
            return f"<p>{html.escape(repr(self))}</p>"
        parts = []
        for budget in self.report.datasets:
            table = _charges(budget)._repr_html_() if budget.charges else "<p>(nothing charged yet)</p>"
            parts.append(f"<p><b>{html.escape(_headline(budget))}</b></p>{table}")
        return "<div class='remote-magic-budget'>" + "".join(parts) + "</div>"

    def to_pandas(self) -> pd.DataFrame:
        import pandas as pd

        rows = [{"dataset": b.dataset, **c.model_dump()} for b in self.report.datasets for c in b.charges]
        return pd.DataFrame(rows, columns=["dataset", "job_id", "kind", "rho", "at"])
