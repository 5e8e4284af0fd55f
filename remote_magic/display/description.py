"""What `%remote_describe` and `Client.describe` return: a described spec with two faces.

`__repr__` for terminals and nbval, `_repr_html_` for notebooks: a table with one row per column, a small
inline histogram (numeric) or category bars (categorical) in it. Both show only what the server released
(rounded counts, merged histogram bins with open outer ends, large categories), so they are deterministic
for a given answer. One thing is known without the server: a column the spec's filter tests with a
comparison can have no missing value among the admitted rows (a NULL never passes it), so its missing
count is shown as 0, not as suppressed.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from ..contract.wire import ColumnDescription, DatasetSpec, DescribeResult, HistogramBin, PolicyInEffect
from .formats import count_text, dataset_text, privacy_text, rules_text

if TYPE_CHECKING:
    import pandas as pd

BAR_COLOUR = "#4c72b0"
OTHER_COLOUR = "#b0b0b0"
HISTOGRAM_HEIGHT = 28
HISTOGRAM_WIDTH = 140
CATEGORY_BAR_WIDTH = 120
# Predicates that are NULL when any column in them is NULL, so a row with such a NULL is never admitted.
_NULL_REJECTING = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE, exp.In, exp.Between, exp.Like)


def never_missing(where: str | None) -> frozenset[str]:
    """Columns that cannot be NULL in any row this filter admits (SQL's three-valued logic)."""
    if not where:
        return frozenset()
    try:
        tree = sqlglot.parse_one(where, dialect="duckdb")
    except sqlglot.errors.SqlglotError:
        return frozenset()
    return _rejected(tree)


def _rejected(node: exp.Expression) -> frozenset[str]:
    if isinstance(node, exp.Paren):
        return _rejected(node.this)
    if isinstance(node, exp.And):
        return _rejected(node.this) | _rejected(node.expression)
    if isinstance(node, exp.Or):
        return _rejected(node.this) & _rejected(node.expression)
    if isinstance(node, exp.Not):
        inner = node.this.this if isinstance(node.this, exp.Paren) else node.this
        if isinstance(inner, exp.Is) and isinstance(inner.expression, exp.Null):
            return frozenset(c.name for c in inner.find_all(exp.Column))
        return _rejected(inner) if isinstance(inner, _NULL_REJECTING) else frozenset()
    if isinstance(node, _NULL_REJECTING):
        return frozenset(c.name for c in node.find_all(exp.Column))
    return frozenset()


def _bin_label(b: HistogramBin) -> str:
    if b.lower is None and b.upper is None:
        return "all values"
    if b.lower is None:
        return f"< {b.upper:g}"
    if b.upper is None:
        return f">= {b.lower:g}"
    return f"[{b.lower:g}, {b.upper:g})"


def _distribution_text(col: ColumnDescription, count: Callable[[int | None], str]) -> str:
    if col.kind == "numeric":
        return (
            ", ".join(f"{_bin_label(b)}: {count(b.count)}" for b in col.histogram or []) or "too few values"
        )
    cats = ", ".join(f"{c.value}: {count(c.count)}" for c in col.categories or [])
    other = f", other: {count(col.other)}" if col.other is not None else ""
    cut = f" (the {len(col.categories or [])} largest shown; more are in other)" if col.categories_cut else ""
    return (cats or "no category large enough") + other + cut


def _histogram_html(col: ColumnDescription, policy: PolicyInEffect | None) -> str:
    """Equal-width bars (the outer bins are open, so edges cannot set widths), labelled at both ends."""
    bins = col.histogram or []
    if not bins:
        return "<span style='color:#888'>too few values</span>"
    top = max((b.count or 0) for b in bins) or 1
    bars = "".join(
        f"<div title='{html.escape(_bin_label(b))}: {count_text(b.count, policy)}' style='flex:1;"
        f"height:{max(1, round(HISTOGRAM_HEIGHT * (b.count or 0) / top))}px;background:{BAR_COLOUR}'></div>"
        for b in bins
    )
    ends = (
        f"<div style='display:flex;justify-content:space-between;font-size:0.75em;color:#888'>"
        f"<span>{html.escape(_bin_label(bins[0]))}</span><span>{html.escape(_bin_label(bins[-1]))}</span></div>"
        if len(bins) > 1
        else ""
    )
    return (
        f"<div style='width:{HISTOGRAM_WIDTH}px'><div class='remote-magic-histogram' style='display:flex;"
        f"align-items:flex-end;gap:1px;height:{HISTOGRAM_HEIGHT}px'>{bars}</div>{ends}</div>"
    )


def _categories_html(col: ColumnDescription, policy: PolicyInEffect | None) -> str:
    """One bar per released category, and a grey one for the rows of categories too small to name."""
    shown = [(c.value, c.count, BAR_COLOUR) for c in col.categories or []]
    if col.other is not None:
        shown.append(("other", col.other, OTHER_COLOUR))
    if not shown:
        return "<span style='color:#888'>no category large enough</span>"
    top = max((n or 0) for _, n, _ in shown) or 1
    rows = "".join(
        f"<tr><td style='padding:0 6px 0 0;text-align:left'>{html.escape(value)}</td><td style='padding:0'>"
        f"<div style='width:{max(1, round(CATEGORY_BAR_WIDTH * (n or 0) / top))}px;height:9px;"
        f"background:{colour}'></div></td><td style='padding:0 0 0 6px;text-align:right;"
        f"font-variant-numeric:tabular-nums'>{count_text(n, policy)}</td></tr>"
        for value, n, colour in shown
    )
    cut = (
        f"<div style='color:#888;font-size:0.75em'>the {len(col.categories or [])} largest shown; more are "
        "in other</div>"
        if col.categories_cut
        else ""
    )
    return (
        "<table class='remote-magic-categories' style='border-collapse:collapse;font-size:0.85em'>"
        f"{rows}</table>{cut}"
    )


class Description:
    """Aggregates of a spec's admitted rows, as released by the server."""

    def __init__(self, raw: DescribeResult, spec: DatasetSpec | None = None):
        self.raw = raw
        self._never_missing = never_missing(spec.where if spec is not None else None)

    @property
    def rows(self) -> int | None:
        return self.raw.rows

    @property
    def classes(self) -> dict[str, int | None] | None:
        return None if self.raw.classes is None else {c.label: c.count for c in self.raw.classes}

    @property
    def columns(self) -> dict[str, ColumnDescription]:
        return {c.name: c for c in self.raw.columns}

    @property
    def privacy(self) -> dict | None:
        """What this answer cost under differential privacy and the budget left; None in mode rules."""
        return None if self.raw.privacy is None else self.raw.privacy.model_dump()

    def _count(self, n: int | None) -> str:
        return count_text(n, self.raw.policy)

    def _noisy(self, n: int | None) -> str:
        """A headline count (rows, classes); in mode dp with its noise, `505 +/- 175`."""
        half = self.raw.count_half_width
        return f"{self._count(n)} +/- {half:.0f}" if half and n is not None else self._count(n)

    def _missing_text(self, column: str) -> str:
        """Missing values: exactly 0 when the filter rules them out, else as released; in mode dp with
        its noise (`35 +/- 40`), as a noisy count of a column with no missing value is rarely 0."""
        return "0" if column in self._never_missing else self._noisy(self.columns[column].missing)

    def _noise_text(self) -> str | None:
        half = self.raw.count_half_width
        if not half:
            return None
        return (
            f"every count is noisy (differential privacy): within +/- {half:.0f} of the true count 95% of "
            "the time, so a small count may be 0 in the table"
        )

    def missing(self, column: str) -> int | None:
        """Rows with no value in `column`: 0 when the filter rules missing values out (known from the
        filter alone, so a suppressed or noisy count is replaced), else as released."""
        return 0 if column in self._never_missing else self.columns[column].missing

    def histogram(self, column: str) -> pd.Series:
        """A numeric column's released bins as a Series indexed by bin label."""
        import pandas as pd

        col = self.columns[column]
        bins = col.histogram or []
        return pd.Series(
            [b.count for b in bins], index=[_bin_label(b) for b in bins], name=column, dtype="Float64"
        )

    def to_dict(self) -> dict:
        return self.raw.model_dump(mode="json")

    def _budget_text(self) -> str | None:
        return None if self.raw.privacy is None else privacy_text(self.raw.privacy)

    def __repr__(self) -> str:
        r = self.raw
        of = dataset_text(r.dataset, r.dataset_version)
        lines = [f"Description of {of} (label {r.label}): {self._noisy(r.rows)} rows"]
        if r.classes is not None:
            lines.append("classes: " + ", ".join(f"{c.label}: {self._noisy(c.count)}" for c in r.classes))
        width = max((len(c.name) for c in r.columns), default=0)
        missing = {c.name: f"missing {self._missing_text(c.name)}" for c in r.columns}
        room = max((len(m) for m in missing.values()), default=13)
        room = max(room, 13)
        for c in r.columns:
            lines.append(
                f"  {c.name:<{width}}  {c.kind:<11}  {missing[c.name]:<{room}}  "
                f"{_distribution_text(c, self._count)}"
            )
        lines += [text for text in (self._noise_text(), self._budget_text()) if text]
        lines.append(f"({rules_text(r.policy, metrics=False).lower()}; outer histogram bins are open)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        r = self.raw
        cell = "padding:4px 10px;border-bottom:1px solid #eee;vertical-align:top;text-align:left"
        num = cell + ";text-align:right;font-variant-numeric:tabular-nums"
        classes = ""
        if r.classes is not None:
            classes = (
                f"<div style='margin-bottom:6px'>label <code>{html.escape(r.label)}</code>: "
                + ", ".join(f"{html.escape(c.label)} &ndash; {self._noisy(c.count)}" for c in r.classes)
                + "</div>"
            )
        bars = {"numeric": _histogram_html, "categorical": _categories_html}
        rows = "".join(
            f"<tr><th style='{cell}'>{html.escape(c.name)}</th>"
            f"<td style='{cell}'>{c.kind}</td>"
            f"<td style='{num}'>{self._missing_text(c.name)}</td><td style='{cell}'>"
            f"{bars[c.kind](c, r.policy)}</td></tr>"
            for c in r.columns
        )
        budget = self._budget_text()
        return (
            "<div class='remote-magic-describe' style='font-family:sans-serif'>"
            "<div style='font-size:1.1em;font-weight:600;margin-bottom:4px'>"
            f"{html.escape(dataset_text(r.dataset, r.dataset_version))}: "
            f"{self._noisy(r.rows)} rows</div>{classes}"
            "<table style='border-collapse:collapse;font-size:0.9em'><thead><tr>"
            f"<th style='{cell}'>column</th><th style='{cell}'>kind</th>"
            f"<th style='{num}'>missing</th><th style='{cell}'>distribution</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
            + "".join(f"<div>{html.escape(t)}</div>" for t in (self._noise_text(), budget) if t)
            + "<div style='color:#666;font-size:0.85em;margin-top:4px'>"
            f"{html.escape(rules_text(r.policy, metrics=False))}; outer histogram bins are open.</div></div>"
        )
