"""The result of a remote job, with two faces: `__repr__` for terminals and nbval, `_repr_html_` for
notebooks. Both are deterministic (no job ids, no timings), so example notebooks can check them. Shown in a
notebook, the HTML face is followed by the figures as one Vega-Lite spec the front end draws (charts.py).

Why it is long: both faces of every part of a result (rows, metrics with their intervals, extras, the
privacy cost, notes) sit side by side, so a change to one face is made beside the other.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from ..contract.wire import JobResult, SplitSummary
from .formats import count_text, dataset_text, interval_text, metric_text, privacy_text, rules_text

if TYPE_CHECKING:
    import pandas as pd
    import xgboost

    from .model import RemoteModel
    from .plots import Figures

TASK_NAMES = {"binary": "binary classifier", "multiclass": "multiclass classifier", "regression": "regressor"}
# The eval curve has "clearly passed its best round" when at least this share of the rounds (and at least
# MIN_ROUNDS_PAST rounds) came after the best one, and the last value is worse than the best by at least
# this share of the curve's range.
SHARE_OF_ROUNDS_PAST = 0.2
MIN_ROUNDS_PAST = 5
SHARE_OF_RANGE_LOST = 0.05
# The importance ranking is the one DP release with no interval (OpenDP's noisy top-k releases names
# only): said beside it, so a noise column in a headline is not read as a finding (rev11 #6).
RANKING_NOTE = (
    "the ranking is drawn with noise and has no interval: a feature of little or no effect can be drawn "
    "in, and features of close importance come in either order"
)


class TrainResult:
    """Aggregate statistics of a remote training or evaluation job, as released by the server."""

    def __init__(
        self,
        raw: JobResult,
        downloader: Callable[[str], bytes] | None = None,
        loader: Callable[[str], RemoteModel] | None = None,
    ):
        self.raw = raw
        self._downloader = downloader
        self._loader = loader
        self.spec_source: str | None = None
        """Where the spec came from when a spec variable was used (set by the magics)."""

    def _count(self, n: int | None) -> str:
        return count_text(n, self.raw.policy)

    def _metric(self, value: float) -> str:
        return metric_text(value, self.raw.policy)

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
    def metrics(self) -> dict[str, float | None]:
        """Released metrics on the evaluation rows; None where a metric could not be released (`notes`)."""
        return dict(self.raw.metrics)

    @property
    def intervals(self) -> dict[str, tuple[float, float]]:
        """The 95% interval of each metric (datasets in mode dp: the values include DP noise)."""
        return {name: (low, high) for name, (low, high) in self.raw.intervals.items()}

    @property
    def privacy(self) -> dict | None:
        """What this result cost (zCDP rho, and epsilon at delta) and the budget left; None in mode rules."""
        return None if self.raw.privacy is None else self.raw.privacy.model_dump()

    @property
    def training(self) -> dict | None:
        """Mode dp: what the DP trainer's part of the job cost (rho, epsilon), the trees it added and
        the noise's sd on each leaf's gradient and hessian sums; None for a model trained without DP."""
        return None if self.raw.training is None else self.raw.training.model_dump()

    @property
    def importance_ranking(self) -> list[str] | None:
        """Mode dp: the top features by permutation importance on eval rows (a noisy top-k), best first."""
        return self.raw.importance_ranking

    @property
    def notes(self) -> list[str]:
        return list(self.raw.notes)

    def _ranking_kind(self) -> str:
        return f"a noisy top {len(self.raw.importance_ranking or [])}, best first"

    @property
    def rounds(self) -> dict[str, int]:
        return self.raw.rounds.model_dump()

    @property
    def history(self) -> pd.DataFrame:
        """The metric per boosting round on the train and eval rows, for the rounds trained remotely; in
        mode dp the eval metric at the checkpoints asked for (`curve=K`) with its 95% interval."""
        import pandas as pd

        h = self.raw.history
        if h is None:
            return pd.DataFrame(columns=["train", "eval"], index=pd.Index([], name="round"))
        if h.rounds is not None:
            bands = h.eval_intervals or [[float("nan")] * 2] * len(h.eval)
            frame = pd.DataFrame(
                {"eval": h.eval, "eval_low": [b[0] for b in bands], "eval_high": [b[1] for b in bands]},
                index=pd.Index(h.rounds, name="round"),
            )
        else:
            frame = pd.DataFrame({"train": h.train, "eval": h.eval})
            frame.index = pd.RangeIndex(
                self.raw.rounds.base + 1, self.raw.rounds.base + 1 + len(frame), name="round"
            )
        frame.columns.name = h.metric
        return frame

    @property
    def feature_importance(self) -> pd.Series:
        """Average gain per split of each feature, largest first (mode rules; mode dp releases a ranking,
        `importance_ranking`, instead)."""
        import pandas as pd

        series = pd.Series(self.raw.feature_importance, name="gain", dtype=float)
        return series.sort_values(ascending=False, kind="stable")

    @property
    def summary(self) -> dict:
        return self.raw.summary.model_dump()

    @property
    def confusion_matrix(self) -> pd.DataFrame | None:
        """True class in rows, predicted in columns; `NaN` marks a suppressed cell."""
        import pandas as pd

        cm = self.raw.confusion_matrix
        if cm is None:
            return None
        frame = pd.DataFrame(cm.counts, index=cm.labels, columns=cm.labels, dtype="Float64")
        frame.index.name, frame.columns.name = "true", "predicted"
        return frame

    def to_dict(self) -> dict:
        return self.raw.model_dump(mode="json")

    def model(self) -> RemoteModel:
        """The trained model, loaded: `.estimator` (XGBClassifier / XGBRegressor, for `predict_proba`
        on your own rows), `.booster`, its cost and the budget left. A DP model comes at once, at no
        further cost; any other once the data owner approved it (else `DisclosureRefused` says how)."""
        if self._loader is None:
            raise RuntimeError("this result is not attached to a server connection")
        return self._loader(self.job_id)

    def download_model(self, path: str | Path | None = None) -> xgboost.Booster:
        """The trained model as an `xgboost.Booster`, once the server releases it (also saved to `path`).

        A model the DP trainer trained is released at once. Any other stays on the server unless the
        dataset allows release, the model passes the release rules and the data owner approved it;
        until then this raises `DisclosureRefused` saying which."""
        import xgboost

        if self._downloader is None:
            raise RuntimeError("this result is not attached to a server connection")
        data = self._downloader(self.job_id)
        if path is not None:
            Path(path).write_bytes(data)
        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        return booster

    def _splits(self) -> Iterator[tuple[str, SplitSummary]]:
        for split in ("train", "eval"):
            part = getattr(self.raw.summary, split)
            if part is not None:
                yield split, part

    def best_round(self) -> tuple[int, float]:
        """The boosting round with the best eval metric, and that value (the history must not be empty)."""
        from .charts import best_round

        return best_round(self.history)

    def past_best_note(self) -> str | None:
        """A sentence when the eval curve has clearly passed its best round (more rounds made it worse)."""
        evals = self.history["eval"]
        if self.raw.kind != "train" or len(evals) < 2 * MIN_ROUNDS_PAST:
            return None
        best, value = self.best_round()
        last, final = int(evals.index[-1]), float(evals.iloc[-1])
        past = last - best >= max(MIN_ROUNDS_PAST, SHARE_OF_ROUNDS_PAST * len(evals))
        lost = abs(final - value) >= SHARE_OF_RANGE_LOST * float(evals.max() - evals.min())
        if not (past and lost and final != value) or self._within_noise(best, last):
            return None
        # The server never stops early (it refuses `early_stopping_rounds`): the advice is the rounds to set.
        new = best - self.raw.rounds.base
        return (
            f"The eval {self.history.columns.name} was best at round {best} ({self._metric(value)}) and is "
            f"{self._metric(final)} at round {last}: fewer rounds would do better (set n_estimators near "
            f"{max(new, 1)})."
        )

    @property
    def ran_with(self) -> list[str]:
        """What the job ran with, one line each: the spec as the server resolved it, the features, the
        rows admitted, the rows left out and why, and the spec variable when one was used."""
        r = self.raw
        lines = []
        if self.spec_source:
            lines.append(f"spec variable: {self.spec_source}")
        used = r.ran_with
        if used is not None:
            if used.eval is None:
                split = "every admitted row"
            elif hasattr(used.eval, "fraction"):
                split = f"{used.eval.fraction:g} held out (seed {used.eval.seed})"
            else:
                split = f"rows where {used.eval.where}"
            lines.append(f"spec: label {used.label}; filter: {used.where or 'none'}; eval: {split}")
            derived = f" (derived: {', '.join(used.derived)})" if used.derived else ""
            lines.append(f"features ({len(used.features)}): {', '.join(used.features)}{derived}")
        parts = [f"{split} {self._count(part.rows)}" for split, part in self._splits()]
        noisy = " (noisy counts)" if r.privacy is not None else ""
        lines.append(f"rows admitted: {' + '.join(parts)}{noisy}")
        for dropped in r.summary.dropped:
            lines.append(f"rows left out: {self._count(dropped.rows)} with a {dropped.reason}{noisy}")
        return lines

    def _within_noise(self, first: int, second: int) -> bool:
        """Whether two rounds' eval values have overlapping 95% intervals (mode dp): then no difference
        between them may be read as real, and no note is made of it."""
        history = self.history
        if "eval_low" not in history.columns:
            return False
        a, b = history.loc[first], history.loc[second]
        return bool(a["eval_low"] <= b["eval_high"] and b["eval_low"] <= a["eval_high"])

    def _rounds_text(self) -> str:
        r = self.raw.rounds
        if self.raw.kind == "evaluate":
            return f"{r.total} rounds, scored without training"
        if r.base == 0:
            return f"{r.new} rounds"
        return f"{r.base} base + {r.new} new = {r.total} rounds"

    # text face
    def _summary_lines(self) -> list[str]:
        lines = []
        for split, part in self._splits():
            classes = ", ".join(f"{c.label}: {self._count(c.count)}" for c in part.classes)
            lines.append(f"  {split:<5} {self._count(part.rows)} rows" + (f" ({classes})" if classes else ""))
        return lines

    def __repr__(self) -> str:
        r = self.raw
        what = "evaluation" if r.kind == "evaluate" else "training"
        on = dataset_text(r.dataset, r.dataset_version)
        lines = [f"TrainResult: {what} of a {TASK_NAMES[r.task]} on {on}"]
        if r.kind == "train":
            lines.append(f"rounds: {self._rounds_text().removesuffix(' rounds')}")
        policy = r.policy
        noisy = "noisy counts (a 0 may show as tens), then " if r.privacy is not None else ""
        lines.append(
            f"rows ({noisy}rounded to {policy.round_to}; counts under {policy.min_count} suppressed):"
            if policy is not None
            else "rows:"
        )
        lines += self._summary_lines()
        lines += self.ran_with
        lines.append("metrics (eval set" + (", 95% intervals" if r.intervals else "") + "):")
        lines += [f"  {name:<9} {self._metric_text(name)}" for name in r.metrics]
        top = self.feature_importance.head(5)
        if len(top):
            lines.append("top features by gain: " + ", ".join(top.index))
        if r.importance_ranking:
            ranked = ", ".join(r.importance_ranking)
            lines.append(f"top features by permutation importance ({self._ranking_kind()}): {ranked}")
            lines.append(f"note: {RANKING_NOTE}")
        note = self.past_best_note()
        if note:
            lines.append(f"note: {note}")
        lines += [f"note: {note}" for note in r.notes + self.extras_note()]
        if r.privacy is not None:
            lines.append(privacy_text(r.privacy))
        return "\n".join(lines)

    def extras_note(self) -> list[str]:
        """Mode dp: which extra fills each empty field (each costs budget of its own), so an empty
        `history` or `confusion_matrix` is not mistaken for a failure."""
        r = self.raw
        if r.privacy is None:
            return []
        empty = []
        if r.history is None:
            empty.append("result.history (--curve K, or curve=K: the eval metric at K checkpoints)")
        if r.importance_ranking is None:
            empty.append(
                "result.importance_ranking (--importance K; result.feature_importance, the gain, is not "
                "released in mode dp)"
            )
        if r.confusion_matrix is None and r.task != "regression":
            empty.append("result.confusion_matrix (--confusion)")
        return ["empty in mode dp until asked for: " + "; ".join(empty)] if empty else []

    def _metric_text(self, name: str) -> str:
        value = self.raw.metrics[name]
        if value is None:
            return "not available"
        return interval_text(value, self.raw.intervals.get(name), self.raw.policy)

    # notebook face
    def plot(self) -> Figures:
        """The matplotlib figures (learning curve, feature importance, confusion matrix when present), by
        name; displayed in a notebook, they show side by side. A job that released none of them (a
        default job in mode dp) draws its metrics with their 95% intervals; `.note` says which figures
        were not released and what asks for them."""
        from . import plots

        made = {
            "learning curve": plots.learning_curve(self.history),
            "feature importance": plots.importance(self.feature_importance),
            "confusion matrix": plots.confusion(self.confusion_matrix, count_text(None, self.raw.policy)),
        }
        figures = {name: fig for name, fig in made.items() if fig is not None}
        if not figures:
            fallback = plots.metrics(self.raw.metrics, self.raw.intervals)
            figures = {} if fallback is None else {"metrics": fallback}
        return plots.Figures(figures, note=self.figures_note())

    def figures_note(self) -> str:
        """One line: the figures this job did not release and what asks for them ("" when none is missing
        that an option would release)."""
        r = self.raw
        asks = []
        if r.privacy is not None and self.history.empty:
            asks.append("--curve K (release={'curve': K}) for a learning curve")
        if r.confusion_matrix is None and r.task != "regression":
            asks.append("--confusion (release={'confusion': True}) for a confusion matrix")
        if not asks:
            return ""
        cost = ", each at a cost in budget" if r.privacy is not None else ""
        return f"Not released by this job: ask with {' or '.join(asks)}{cost}."

    def charts(self) -> dict | None:
        """The figures of `plot()` as one Vega-Lite spec (a few KB of released numbers), for a front end
        to draw; None when there is nothing to draw."""
        from . import charts

        return charts.panel(list(self._charts().values()))

    def _charts(self) -> dict[str, dict]:
        """The charts there is something to draw for, by the name the caption gives them; a job that
        released none (a default job in mode dp) draws its metrics with their 95% intervals."""
        from . import charts

        made = {
            "learning curve": charts.learning_curve(self.history),
            "feature importance": charts.importance(self.feature_importance),
            "confusion matrix": charts.confusion(self.confusion_matrix, count_text(None, self.raw.policy)),
        }
        drawn = {name: chart for name, chart in made.items() if chart is not None}
        if drawn:
            return drawn
        fallback = charts.metrics(self.raw.metrics, self.raw.intervals)  # released anyway: no cost
        return {} if fallback is None else {"metrics": fallback}

    def _ipython_display_(self) -> None:
        from . import charts
        from .pictures import display_with_figures

        drawn = self._charts()  # the caption is what a text front end shows: it names what is drawn
        alt = f"Figures: {', '.join(drawn)}"
        display_with_figures(repr(self), self._repr_html_(), charts.panel(list(drawn.values())), alt)

    def _repr_html_(self) -> str:
        r = self.raw
        what = "Evaluation" if r.kind == "evaluate" else "Training"
        note = self.past_best_note()
        note_html = f"<div style='{_NOTE}'>{html.escape(note)}</div>" if note else ""
        return (
            f"<div class='remote-magic-result' style='{_BOX}'>"
            f"<div style='font-size:1.15em;font-weight:600'>{what}: {TASK_NAMES[r.task]} on "
            f"<code>{html.escape(dataset_text(r.dataset, r.dataset_version))}</code></div>"
            f"<div style='color:#666;margin-bottom:8px'>{self._rounds_text()}</div>"
            f"<div class='remote-magic-ran-with' style='color:#444;font-size:0.9em;margin-bottom:8px'>"
            f"{'<br>'.join(html.escape(line) for line in self.ran_with)}</div>"
            f"<div style='display:flex;flex-wrap:wrap;gap:24px;align-items:flex-start'>"
            f"{self._rows_html()}{self._metrics_html()}</div>{note_html}"
            f"<div style='color:#666;font-size:0.85em;margin-top:6px'>{html.escape(rules_text(r.policy))}"
            f", on the evaluation rows.{self._notes_html()}</div></div>"
        )

    def _notes_html(self) -> str:
        r = self.raw
        parts = [f"<br>{html.escape(note)}" for note in r.notes + self.extras_note()]
        if r.importance_ranking:
            parts.append(
                f"<br>Top features by permutation importance ({self._ranking_kind()}): "
                + html.escape(", ".join(r.importance_ranking))
                + f"<br>{html.escape(RANKING_NOTE)}"
            )
        if r.privacy is not None:
            parts.append(f"<br><b>{html.escape(privacy_text(r.privacy))}</b>")
        return "".join(parts)

    def _rows_html(self) -> str:
        rows = []
        for split, part in self._splits():
            classes = "<br>".join(f"{html.escape(c.label)}: {self._count(c.count)}" for c in part.classes)
            rows.append(
                f"<tr><th style='{_CELL}'>{split}</th><td style='{_NUM}'>{self._count(part.rows)}</td>"
                f"<td style='{_NUM}'>{classes or '&ndash;'}</td></tr>"
            )
        return (
            f"<table class='remote-magic-summary' style='{_TABLE}'><caption style='{_CAPTION}'>Rows used"
            f"</caption><thead><tr><th style='{_CELL}'>split</th><th style='{_NUM}'>rows</th>"
            f"<th style='{_NUM}'>per class</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        )

    def _metrics_html(self) -> str:
        """One row per released metric: its name and its value as released."""

        rows = "".join(
            f"<tr><th style='{_CELL}'>{html.escape(name)}</th>"
            f"<td style='{_NUM}'>{html.escape(self._metric_text(name))}</td></tr>"
            for name in self.raw.metrics
        )
        return (
            f"<table class='remote-magic-metrics' style='{_TABLE}'><caption style='{_CAPTION}'>Metrics "
            f"(eval)</caption><tbody>{rows}</tbody></table>"
        )


_BOX = "font-family:sans-serif;border:1px solid #ddd;border-radius:6px;padding:10px 14px;max-width:1400px"
_TABLE = "border-collapse:collapse;font-size:0.9em"
_CAPTION = "text-align:left;font-weight:600;padding-bottom:4px"
_CELL = "text-align:left;padding:2px 10px;border-bottom:1px solid #eee"
_NUM = "text-align:right;padding:2px 10px;border-bottom:1px solid #eee;font-variant-numeric:tabular-nums"
_NOTE = "margin-top:8px;padding:4px 8px;border-left:3px solid #dd8452;background:rgba(221,132,82,0.08)"
