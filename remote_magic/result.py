"""The result of a remote job, with two faces: `__repr__` for terminals and nbval, `_repr_html_` for
notebooks. Both are deterministic (no job ids, no timings), so example notebooks can check them.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from .wire import JobResult

if TYPE_CHECKING:
    import xgboost

    from .client import Client

TASK_NAMES = {"binary": "binary classifier", "multiclass": "multiclass classifier", "regression": "regressor"}


def _count(n: int | None) -> str:
    return "<10" if n is None else f"{n:,}"


class TrainResult:
    """Aggregate statistics of a remote training or evaluation job, as released by the server."""

    def __init__(self, raw: JobResult, client: Client | None = None):
        self.raw = raw
        self._client = client

    @property
    def job_id(self) -> str:
        return self.raw.job_id

    @property
    def kind(self) -> str:
        return self.raw.kind

    @property
    def task(self) -> str:
        return self.raw.task

    @property
    def metrics(self) -> dict[str, float]:
        return dict(self.raw.metrics)

    @property
    def rounds(self) -> dict[str, int]:
        return self.raw.rounds.model_dump()

    @property
    def history(self) -> pd.DataFrame:
        """Per-round eval metric on the train and eval sets, for the rounds trained remotely."""
        h = self.raw.history
        if h is None:
            return pd.DataFrame(columns=["train", "eval"], index=pd.Index([], name="round"))
        frame = pd.DataFrame({"train": h.train, "eval": h.eval})
        frame.index = pd.RangeIndex(
            self.raw.rounds.base + 1, self.raw.rounds.base + 1 + len(frame), name="round"
        )
        frame.columns.name = h.metric
        return frame

    @property
    def feature_importance(self) -> pd.Series:
        """Total gain per feature, largest first."""
        series = pd.Series(self.raw.feature_importance, name="gain", dtype=float)
        return series.sort_values(ascending=False, kind="stable")

    @property
    def summary(self) -> dict:
        return self.raw.summary.model_dump()

    @property
    def confusion_matrix(self) -> pd.DataFrame | None:
        """True class in rows, predicted in columns; `NaN` marks a suppressed cell."""
        cm = self.raw.confusion_matrix
        if cm is None:
            return None
        frame = pd.DataFrame(cm.counts, index=cm.labels, columns=cm.labels, dtype="Float64")
        frame.index.name, frame.columns.name = "true", "predicted"
        return frame

    def to_dict(self) -> dict:
        return self.raw.model_dump(mode="json")

    def download_model(self, path: str | Path | None = None) -> xgboost.Booster:
        """The trained model as an `xgboost.Booster`, once the server releases it (also saved to `path`).

        Models stay on the server unless the dataset allows release, the model passes the release rules
        and the data owner approved it; until then this raises `DisclosureRefused` saying which."""
        import xgboost

        if self._client is None:
            raise RuntimeError("this result is not attached to a server connection")
        data = self._client.download_model(self.job_id)
        if path is not None:
            Path(path).write_bytes(data)
        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        return booster

    # text face
    def _summary_lines(self) -> list[str]:
        lines = []
        for split in ("train", "eval"):
            part = getattr(self.raw.summary, split)
            if part is None:
                continue
            classes = ", ".join(f"{c.label}: {_count(c.count)}" for c in part.classes)
            lines.append(f"  {split:<5} {_count(part.rows)} rows" + (f" ({classes})" if classes else ""))
        return lines

    def __repr__(self) -> str:
        r = self.raw
        what = "evaluation" if r.kind == "evaluate" else "training"
        lines = [f"TrainResult: {what} of a {TASK_NAMES[r.task]} on {r.dataset}"]
        if r.kind == "train":
            lines.append(f"rounds: {r.rounds.base} base + {r.rounds.new} new = {r.rounds.total}")
        lines.append("rows (rounded to 5; counts under 10 suppressed):")
        lines += self._summary_lines()
        lines.append("metrics (eval set):")
        lines += [f"  {name:<9} {value:.4g}" for name, value in r.metrics.items()]
        top = self.feature_importance.head(5)
        if len(top):
            lines.append("top features by gain: " + ", ".join(top.index))
        return "\n".join(lines)

    # notebook face
    def plot(self) -> dict:
        """matplotlib figures: learning curve, feature importance, confusion matrix (when present)."""
        from . import plots

        return plots.figures(self)

    def _repr_html_(self) -> str:
        from . import plots

        r = self.raw
        what = "Evaluation" if r.kind == "evaluate" else "Training"
        parts = [
            "<div class='remote-magic-result'>"
            f"<h4>{what}: {TASK_NAMES[r.task]} on {html.escape(r.dataset)}</h4>"
        ]
        rows = []
        for split in ("train", "eval"):
            part = getattr(r.summary, split)
            if part is not None:
                classes = ", ".join(f"{html.escape(c.label)}: {_count(c.count)}" for c in part.classes)
                rows.append(f"<tr><th>{split}</th><td>{_count(part.rows)}</td><td>{classes}</td></tr>")
        parts.append(
            "<table class='remote-magic-summary'><thead><tr><th>split</th><th>rows</th><th>classes</th></tr>"
            f"</thead><tbody>{''.join(rows)}</tbody></table>"
        )
        metric_rows = "".join(
            f"<tr><th>{html.escape(k)}</th><td>{v:.4g}</td></tr>" for k, v in r.metrics.items()
        )
        parts.append(f"<table class='remote-magic-metrics'><tbody>{metric_rows}</tbody></table>")
        if r.kind == "train":
            parts.append(f"<p>rounds: {r.rounds.base} base + {r.rounds.new} new = {r.rounds.total}</p>")
        for title, fig in plots.figures(self).items():
            buffer = io.BytesIO()
            fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
            plots.close(fig)
            data = base64.b64encode(buffer.getvalue()).decode()
            parts.append(f"<img class='remote-magic-plot' alt='{title}' src='data:image/png;base64,{data}'/>")
        parts.append("<p><small>Counts rounded to 5; counts under 10 suppressed.</small></p></div>")
        return "".join(parts)
