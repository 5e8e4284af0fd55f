"""`remote_magic.compare(*results)`: several runs side by side, as a DataFrame and a plot."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from .formats import count_text, dataset_text, interval_text
from .result import TrainResult

if TYPE_CHECKING:
    from matplotlib.figure import Figure

MAIN_METRICS = ("auc", "accuracy", "r2", "rmse", "log_loss")
LOWER_IS_BETTER = ("rmse", "mae", "log_loss")
ENDS = ("low", "high")


def _overlap(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


class Comparison:
    """Runs in rows; rounds, rows used and every metric in columns. `.table` is the DataFrame,
    `.plot()` the matplotlib figure (eval learning curves and the main metric per run, with its 95% error
    bars in mode dp); a notebook shows the table and the same figure as a Vega-Lite spec its front end
    draws (`charts()`)."""

    def __init__(self, results: Sequence[TrainResult], names: Sequence[str]):
        if len(names) != len(results):
            raise ValueError("give one name per result")
        self.results = dict(zip(names, results))

    @property
    def table(self) -> pd.DataFrame:
        """One row per run: its dataset version (`loans@2`), kind, rounds, rows, and each metric followed,
        in mode dp, by its 95% interval's ends (columns `"<metric> low"`, `"<metric> high"`)."""
        rows = []
        for name, r in self.results.items():
            summary = r.summary
            row = {
                "run": name,
                "dataset": dataset_text(r.raw.dataset, r.raw.dataset_version),
                "kind": r.kind,
                "rounds": r.rounds["total"],
                "train rows": (summary.get("train") or {}).get("rows"),
                "eval rows": summary["eval"]["rows"],
            }
            for metric, value in r.metrics.items():
                band = r.intervals.get(metric)
                ends = dict(zip((f"{metric} {end}" for end in ENDS), band)) if band is not None else {}
                row.update({metric: value, **ends})
            rows.append(row)
        return pd.DataFrame(rows).set_index("run")

    @property
    def _points(self) -> pd.DataFrame:
        """`table` without the intervals' columns (the display writes each as `value [low, high]`)."""
        table = self.table
        return table.drop(columns=[c for c in table.columns if c.endswith(ENDS) and " " in c])

    @property
    def intervals(self) -> pd.DataFrame:
        """The 95% interval of each metric per run (mode dp), as columns (metric, "low"/"high"); a run
        without one (mode rules) has NaN there. For error bars and for ranking within the noise."""
        rows = {
            name: {
                (metric, end): band[i] for metric, band in r.intervals.items() for i, end in enumerate(ENDS)
            }
            for name, r in self.results.items()
        }
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "run"
        if frame.columns.empty:
            return frame
        frame.columns = pd.MultiIndex.from_tuples(frame.columns, names=["metric", "end"])
        return frame.sort_index(axis=1)

    def ranking(self, metric: str | None = None) -> str:
        """The runs ordered by a metric (the main one by default), best first. Neighbours whose 95%
        intervals overlap are joined by `~`: the noise cannot order them, so neither should a choice."""
        metric = metric or self.main_metric
        if metric is None:
            return ""
        values = self.table[metric].dropna().astype(float)
        ordered = values.sort_values(ascending=metric in LOWER_IS_BETTER, kind="stable")
        bands = {name: self.results[name].intervals.get(metric) for name in ordered.index}
        text, tied = str(ordered.index[0]) if len(ordered) else "", False
        for before, after in zip(ordered.index, ordered.index[1:]):
            overlap = (
                bands[before] is not None
                and bands[after] is not None
                and _overlap(bands[before], bands[after])
            )
            tied |= overlap
            text += f" {'~' if overlap else '>'} {after}"
        direction = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        line = f"ranking by {metric} ({direction}): {text}"
        if tied:
            line += (
                "\n~: their 95% intervals overlap; the difference is within the noise, do not choose on it"
            )
        return line

    @property
    def main_metric(self) -> str | None:
        columns = self.table.columns
        return next((m for m in MAIN_METRICS if m in columns), None)

    @property
    def colours(self) -> dict[str, tuple[float, float, float]]:
        """One colour per run, the same for its curve and its bar."""
        from matplotlib import colormaps

        palette = colormaps["tab10"].colors
        return {name: palette[i % len(palette)] for i, name in enumerate(self.results)}

    def charts(self) -> dict | None:
        """The figure of `plot()` as one Vega-Lite spec of the released numbers."""
        from . import compare_figures

        return compare_figures.spec(self)

    def versus_best(self, metric: str | None = None) -> dict[str, str | None]:
        """Each run against the best by a metric (the main one by default): "best", "within the noise"
        (its 95% interval overlaps the best's: not distinguishable from it), "beyond the noise", or None
        where either run has no interval (mode rules), so nothing is said."""
        metric = metric or self.main_metric
        if metric is None:
            return {}
        values = self.table[metric].dropna().astype(float)
        if values.empty:
            return {}
        best = values.idxmin() if metric in LOWER_IS_BETTER else values.idxmax()
        best_band = self.results[best].intervals.get(metric)
        verdicts: dict[str, str | None] = {}
        for name in values.index:
            band = self.results[name].intervals.get(metric)
            if name == best:
                verdicts[name] = "best"
            elif band is None or best_band is None:
                verdicts[name] = None
            else:
                verdicts[name] = "within the noise" if _overlap(band, best_band) else "beyond the noise"
        return verdicts

    def _ipython_display_(self) -> None:
        from .pictures import display_with_figures

        alt = "Figure: eval learning curves and the main metric per run"
        display_with_figures(repr(self), self._repr_html_(), self.charts(), alt)

    def plot(self) -> Figure:
        from . import compare_figures

        return compare_figures.figure(self)

    def _text_table(self) -> pd.DataFrame:
        points = self._points
        table = points.astype(object)
        for name, result in self.results.items():
            row = table.loc[name]
            table.loc[name] = row.where(row.notna(), count_text(None, result.raw.policy))
        table.loc[points["kind"] == "evaluate", "train rows"] = "-"
        for column in points.columns:
            if pd.api.types.is_float_dtype(points[column]) and column not in ("train rows", "eval rows"):
                table[column] = [
                    interval_text(v, self.results[name].intervals.get(column), self.results[name].raw.policy)
                    if isinstance(v, float)
                    else v
                    for name, v in table[column].items()
                ]
            elif column in ("rounds", "train rows", "eval rows"):
                table[column] = [f"{int(v):,}" if isinstance(v, (int, float)) else v for v in table[column]]
        return table

    def _footer(self) -> list[str]:
        """The ranking, and what the brackets are when there are intervals."""
        lines = [line for line in self.ranking().split("\n") if line]
        if any(r.intervals for r in self.results.values()):
            lines.append("[low, high]: 95% intervals; the values include differential-privacy noise")
        return lines

    def __repr__(self) -> str:
        return "\n".join(
            [f"Comparison of {len(self.results)} runs", self._text_table().to_string(), *self._footer()]
        )

    def _repr_html_(self) -> str:
        table = self._text_table()
        head = "".join(f"<th>{html.escape(str(c))}</th>" for c in ["run", *table.columns])
        body = "".join(
            "<tr>"
            + f"<th style='text-align:left'>{html.escape(str(name))}</th>"
            + "".join(f"<td style='text-align:right'>{html.escape(str(v))}</td>" for v in row)
            + "</tr>"
            for name, row in zip(table.index, table.to_numpy())
        )
        return (
            "<div class='remote-magic-compare' style='font-family:sans-serif'>"
            f"<table class='remote-magic-table'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
            + "".join(f"<p style='margin:4px 0'>{html.escape(line)}</p>" for line in self._footer())
            + "</div>"
        )


def compare(
    *results: TrainResult | Mapping[str, TrainResult], names: Sequence[str] | None = None
) -> Comparison:
    """Compare results: `compare(a, b)`, `compare(a, b, names=["depth 2", "depth 4"])` or
    `compare({"depth 2": a, "depth 4": b})`."""
    if len(results) == 1 and isinstance(results[0], Mapping):
        named = dict(results[0])
        return Comparison(list(named.values()), [str(n) for n in named])
    runs = [r for r in results if isinstance(r, TrainResult)]
    if len(runs) != len(results) or not runs:
        raise TypeError("compare() takes TrainResult objects (or one dict of them)")
    return Comparison(runs, list(names) if names is not None else [f"run {i + 1}" for i in range(len(runs))])
