"""What a federated training shows: each owner's DP evaluation, the metrics pooled over the owners, and
what each owner's budget paid.

Pooling is post-processing of released numbers only: each metric is averaged over the owners weighted
by their noisy evaluation row counts, and its 95% interval's half-width is the weighted root of the
squared half-widths (the owners' noise and samples are independent). AUC pooled so is the average of
per-owner AUCs, not the AUC of the pooled rows (that would need the rows' scores together); it says so.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass

from .result import TrainResult

_BOX = "font-family:sans-serif;border:1px solid #ddd;border-radius:6px;padding:10px 14px;max-width:1400px"
_CELL = "text-align:left;padding:2px 10px;border-bottom:1px solid #eee"
_NUM = "text-align:right;padding:2px 10px;border-bottom:1px solid #eee;font-variant-numeric:tabular-nums"


@dataclass
class OwnerResult:
    """One data owner's part: its DP evaluation of the final model, and what its budget paid."""

    name: str
    dataset: str
    evaluation: TrainResult
    rho_train: float
    batches: int
    rho_cap: float | None = None

    @property
    def rows(self) -> int | None:
        """The noisy count of its evaluation rows (the pooling weight)."""
        return self.evaluation.raw.summary.eval.rows

    @property
    def rho_eval(self) -> float:
        privacy = self.evaluation.raw.privacy
        return privacy.rho if privacy is not None else 0.0

    @property
    def rho_left(self) -> float | None:
        privacy = self.evaluation.raw.privacy
        return privacy.rho_remaining if privacy is not None else None


@dataclass
class FederatedResult:
    """A model trained over several owners' servers: its XGBoost JSON (a DP release), an estimator
    to predict with, each owner's evaluation and cost, and the pooled metrics."""

    model: bytes
    estimator: object
    owners: list[OwnerResult]
    trees: int
    round_trips: int
    seconds: float

    @property
    def pooled(self) -> dict[str, tuple[float, float]]:
        """Each metric every owner released, averaged over the owners by their noisy evaluation rows:
        (value, 95% half-width)."""
        weights = [max(o.rows or 0, 0) for o in self.owners]
        total = sum(weights)
        if total <= 0:
            return {}
        out = {}
        names = set.intersection(*(set(o.evaluation.metrics) for o in self.owners))
        for name in sorted(names):
            values = [o.evaluation.metrics[name] for o in self.owners]
            if any(v is None for v in values):
                continue
            value = sum(w * v for w, v in zip(weights, values)) / total  # type: ignore[operator]
            halves = []
            for o in self.owners:
                low, high = o.evaluation.intervals.get(name, (math.nan, math.nan))
                halves.append((high - low) / 2)
            half = math.sqrt(sum((w * h) ** 2 for w, h in zip(weights, halves))) / total
            out[name] = (value, half)
        return out

    @property
    def metrics(self) -> dict[str, float]:
        return {name: value for name, (value, _) in self.pooled.items()}

    def __repr__(self) -> str:
        lines = [
            f"Federated DP training: {self.trees} trees over {len(self.owners)} servers, "
            f"{self.round_trips} round trips, {self.seconds:.1f} s",
            "pooled over the owners (weighted by their noisy evaluation rows; AUC: the owners' average):",
        ]
        lines += [f"  {name}: {value:.4f} +/- {half:.4f}" for name, (value, half) in self.pooled.items()]
        for o in self.owners:
            metrics = ", ".join(f"{k} {v:.4f}" for k, v in o.evaluation.metrics.items() if v is not None)
            left = f", {o.rho_left:.4g} left" if o.rho_left is not None else ""
            lines.append(
                f"  {o.name} ({o.dataset}): {o.rows} eval rows; {metrics}; rho {o.rho_train:.4g} for "
                f"{o.batches} batches + {o.rho_eval:.4g} for the evaluation{left}"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        pooled = self.pooled
        names = list(pooled)
        head = "".join(f"<th style='{_NUM}'>{html.escape(n)}</th>" for n in names)
        rows = []
        for o in self.owners:
            cells = []
            for n in names:
                value = o.evaluation.metrics.get(n)
                low, high = o.evaluation.intervals.get(n, (math.nan, math.nan))
                text = "&ndash;" if value is None else f"{value:.4f} &plusmn; {(high - low) / 2:.4f}"
                cells.append(f"<td style='{_NUM}'>{text}</td>")
            left = "&ndash;" if o.rho_left is None else f"{o.rho_left:.4g}"
            rows.append(
                f"<tr><th style='{_CELL}'>{html.escape(o.name)} <code>{html.escape(o.dataset)}</code></th>"
                f"<td style='{_NUM}'>{o.rows if o.rows is not None else '&ndash;'}</td>{''.join(cells)}"
                f"<td style='{_NUM}'>{o.rho_train:.4g} + {o.rho_eval:.4g}</td>"
                f"<td style='{_NUM}'>{left}</td></tr>"
            )
        pooled_cells = "".join(
            f"<td style='{_NUM}'><b>{value:.4f} &plusmn; {half:.4f}</b></td>"
            for value, half in pooled.values()
        )
        rows.append(
            f"<tr><th style='{_CELL}'>pooled</th><td style='{_NUM}'></td>{pooled_cells}"
            "<td></td><td></td></tr>"
        )
        return (
            f"<div class='remote-magic-federated' style='{_BOX}'>"
            "<div style='font-size:1.15em;font-weight:600'>"
            f"Federated DP training: {self.trees} trees over {len(self.owners)} servers</div>"
            f"<div style='color:#666;margin-bottom:8px'>{self.round_trips} round trips, "
            f"{self.seconds:.1f} s; "
            "each owner's rows stayed on its server, which noised its own sums and charged its own budget"
            f"</div><table style='border-collapse:collapse;font-size:0.9em'><thead><tr><th style='{_CELL}'>"
            f"owner</th><th style='{_NUM}'>eval rows</th>{head}<th style='{_NUM}'>rho (train + eval)</th>"
            f"<th style='{_NUM}'>rho left</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<div style='color:#666;font-size:0.85em;margin-top:6px'>Metrics on each owner's evaluation "
            "rows under DP, with 95% intervals; pooled: weighted by the noisy row counts (AUC: the owners' "
            "average, not the AUC of the pooled rows).</div></div>"
        )
