"""What `%remote_describe` and `Client.describe` return: a described spec with two faces.

`__repr__` for terminals and nbval, `_repr_html_` for notebooks; both show only what the server
released (rounded counts, merged histogram bins with open outer ends, large categories), so they are
deterministic for a given answer.
"""

from __future__ import annotations

import html

import pandas as pd

from .formats import count_text, privacy_text, rules_text
from .wire import ColumnDescription, DescribeResult, HistogramBin, PolicyInEffect


def _count(n: int | None, policy: PolicyInEffect | None) -> str:
    return count_text(n, policy)


def _bin_label(b: HistogramBin) -> str:
    if b.lower is None and b.upper is None:
        return "all values"
    if b.lower is None:
        return f"< {b.upper:g}"
    if b.upper is None:
        return f">= {b.lower:g}"
    return f"[{b.lower:g}, {b.upper:g})"


def _column_text(col: ColumnDescription, policy: PolicyInEffect | None) -> str:
    missing = f"missing {_count(col.missing, policy)}"
    if col.kind == "numeric":
        bins = (
            ", ".join(f"{_bin_label(b)}: {_count(b.count, policy)}" for b in col.histogram or [])
            or "too few values"
        )
        return f"  {col.name} (numeric; {missing}): {bins}"
    cats = ", ".join(f"{c.value}: {_count(c.count, policy)}" for c in col.categories or [])
    other = f", other: {_count(col.other, policy)}" if col.other is not None else ""
    return f"  {col.name} (categorical; {missing}): {cats or 'no category large enough'}{other}"


class Description:
    """Aggregates of a spec's admitted rows, as released by the server."""

    def __init__(self, raw: DescribeResult):
        self.raw = raw

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

    def histogram(self, column: str) -> pd.Series:
        """A numeric column's released bins as a Series indexed by bin label."""
        col = self.columns[column]
        bins = col.histogram or []
        return pd.Series(
            [b.count for b in bins], index=[_bin_label(b) for b in bins], name=column, dtype="Float64"
        )

    def to_dict(self) -> dict:
        return self.raw.model_dump(mode="json")

    def __repr__(self) -> str:
        r = self.raw
        lines = [f"Description of {r.dataset} (label {r.label}): {_count(r.rows, r.policy)} rows"]
        if r.classes is not None:
            lines.append(
                "classes: " + ", ".join(f"{c.label}: {_count(c.count, r.policy)}" for c in r.classes)
            )
        lines += [_column_text(c, r.policy) for c in r.columns]
        if r.privacy is not None:
            lines.append(privacy_text(r.privacy))
        lines.append(f"({rules_text(r.policy, metrics=False).lower()}; outer histogram bins are open)")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        r = self.raw
        total = _count(r.rows, r.policy)
        parts = [f"<div class='remote-magic-describe'><h4>{html.escape(r.dataset)}: {total} rows</h4>"]
        if r.classes is not None:
            cells = "".join(
                f"<tr><th>{html.escape(c.label)}</th><td>{_count(c.count, r.policy)}</td></tr>"
                for c in r.classes
            )
            parts.append(
                f"<table><thead><tr><th>{html.escape(r.label)}</th><th>rows</th></tr></thead>{cells}</table>"
            )
        rows = "".join(
            f"<tr><th>{html.escape(c.name)}</th><td>{c.kind}</td><td>{_count(c.missing, r.policy)}</td>"
            f"<td>{html.escape(_column_text(c, r.policy).split(': ', 1)[1])}</td></tr>"
            for c in r.columns
        )
        parts.append(
            "<table><thead><tr><th>column</th><th>kind</th><th>missing</th><th>distribution</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
        if r.privacy is not None:
            parts.append(f"<p>{html.escape(privacy_text(r.privacy))}</p>")
        parts.append(f"<p><small>{html.escape(rules_text(r.policy, metrics=False))}.</small></p></div>")
        return "".join(parts)
