"""`remote_magic.compare(*results)`: several runs side by side, as a DataFrame and a plot."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from .formats import count_text, interval_text, metric_text
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
        rows = []
        for name, r in self.results.items():
            summary = r.summary
            row = {
                "run": name,
                "dataset": r.raw.dataset,
                "kind": r.kind,
                "rounds": r.rounds["total"],
                "train rows": (summary.get("train") or {}).get("rows"),
                "eval rows": summary["eval"]["rows"],
            }
            rows.append({**row, **r.metrics})
        return pd.DataFrame(rows).set_index("run")

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
        from . import charts

        curves = [
            {"run": name, "round": int(r), "value": charts.number(v)}
            for name, result in self.results.items()
            for r, v in result.history["eval"].items()
        ]
        metric = next((str(r.history.columns.name) for r in self.results.values() if not r.history.empty), "")
        colour = {
            "field": "run",
            "type": "nominal",
            "sort": list(self.results),
            "scale": {"scheme": "category10"},
        }
        made = []
        if curves:
            made.append(
                {
                    "title": "Eval learning curves",
                    "width": charts.WIDTH,
                    "height": charts.HEIGHT,
                    "data": {"values": curves},
                    "mark": "line",
                    "encoding": {
                        "x": {"field": "round", "type": "quantitative", "title": "boosting round"},
                        "y": {
                            "field": "value",
                            "type": "quantitative",
                            "title": f"eval {metric}",
                            "scale": {"zero": False},
                        },
                        "color": colour,
                    },
                }
            )
        main = self.main_metric
        if main is not None:
            made.append(self._metric_chart(main, colour))
        return charts.panel(made)

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

    def _metric_chart(self, metric: str, colour: dict) -> dict:
        """The metric per run: bars in mode rules; in mode dp a point with its 95% error bar, the best run's
        interval as a grey band behind, and the runs beyond the noise of the best faded: an error bar that
        reaches the band cannot be told from the best, so the figure does not invite a choice between them."""
        from . import charts

        verdicts = self.versus_best(metric)
        values = []
        for name, v in self.table[metric].items():
            band = self.results[name].intervals.get(metric)
            low, high = (charts.number(band[0]), charts.number(band[1])) if band else (None, None)
            value = charts.number(v)
            values.append(
                {
                    "run": name,
                    "value": value,
                    "label": metric_text(v, self.results[name].raw.policy) if value is not None else "",
                    "low": low,
                    "high": high,
                    "top": max(x for x in (value, high) if x is not None) if value is not None else None,
                    "versus best": verdicts.get(name) or "",
                }
            )
        banded = [row for row in values if row["low"] is not None]
        faded = {"test": "datum['versus best'] === 'beyond the noise'", "value": 0.35}
        tooltip = [{"field": "run"}, {"field": "label", "title": metric}]
        if banded:
            tooltip += [{"field": "low"}, {"field": "high"}, {"field": "versus best"}]
        x = {"field": "run", "type": "nominal", "sort": list(self.results), "title": None}
        shown = {"x": x, "color": colour, "opacity": {"condition": faded, "value": 1}, "tooltip": tooltip}
        mark = {"type": "point", "filled": True, "size": 70} if banded else "bar"
        layers: list[dict] = [{"mark": mark, "encoding": shown}]
        chart: dict = {"title": f"{metric} (eval)"}
        y = {"field": "value", "type": "quantitative", "title": None, "scale": {"zero": not banded}}
        if banded:
            best = next((row for row in values if row["versus best"] == "best"), None)
            if best is not None and best["low"] is not None:
                layers.insert(
                    0,
                    {
                        "data": {"values": [{"low": best["low"], "high": best["high"]}]},
                        "mark": {"type": "rect", "color": "#999999", "opacity": 0.18},
                        "encoding": {
                            "y": {"field": "low", "type": "quantitative"},
                            "y2": {"field": "high"},
                        },
                    },
                )
            layers.append(
                {
                    "transform": [{"filter": "datum.low !== null"}],
                    "mark": {"type": "errorbar", "ticks": {"size": 10}, "color": "#333333"},
                    "encoding": {
                        "x": x,
                        "y": {"field": "low", "type": "quantitative", "title": None},
                        "y2": {"field": "high"},
                    },
                }
            )
            chart["title"] = {
                "text": f"{metric} (eval)",
                "subtitle": [
                    "error bars: 95% intervals; grey: the best run's",
                    "an error bar in the grey: not told from the best",
                    "faded: worse than the best beyond the noise",
                ],
                "subtitleFontSize": 9,
                "subtitleColor": "#555555",
            }
        layers.append(
            {
                "mark": {"type": "text", "dy": -6, "fontSize": 9},
                "encoding": {
                    "x": x,
                    "y": {"field": "top", "type": "quantitative"},
                    "text": {"field": "label"},
                },
            }
        )
        return {
            **chart,
            "width": {"step": 40},
            "height": charts.HEIGHT,
            "data": {"values": values},
            "encoding": {"y": y},
            "layer": layers,
        }

    def _ipython_display_(self) -> None:
        from .charts import display_with_figures

        alt = "Figure: eval learning curves and the main metric per run"
        display_with_figures(repr(self), self._repr_html_(), self.charts(), alt)

    def plot(self) -> Figure:
        from matplotlib.figure import Figure

        from . import plots

        fig = Figure(figsize=(8.6, plots.HEIGHT), layout="constrained")
        curves, bars = fig.subplots(1, 2, width_ratios=[3, 2])
        for ax in (curves, bars):
            plots._style(ax)
        colours = self.colours
        metric = ""
        for name, r in self.results.items():
            history = r.history
            if not history.empty:
                metric = str(history.columns.name)
                curves.plot(history.index, history["eval"], label=name, linewidth=1.6, color=colours[name])
        if metric:
            curves.set_ylabel(f"eval {metric}", fontsize=9)
            curves.legend(frameon=False, fontsize=8)
        curves.set_xlabel("boosting round", fontsize=9)
        curves.set_title("Eval learning curves", fontsize=10, loc="left")
        main = self.main_metric
        if main is not None:
            values = self.table[main]
            heights = values.to_numpy(dtype=float)
            bands = [self.results[name].intervals.get(main) for name in values.index]
            errors = [
                [h - b[0] if b else 0.0 for h, b in zip(heights, bands)],
                [b[1] - h if b else 0.0 for h, b in zip(heights, bands)],
            ]
            verdicts = self.versus_best(main)
            drawn = bars.bar(
                [str(i) for i in values.index],
                heights,
                color=[colours[name] for name in values.index],
                yerr=errors if any(bands) else None,
                capsize=4,
            )
            for patch, name in zip(drawn.patches, values.index):
                patch.set_alpha(0.35 if verdicts.get(name) == "beyond the noise" else 1.0)
            labels = [metric_text(v, self.results[name].raw.policy) for name, v in values.items()]
            bars.bar_label(drawn, labels=labels, fontsize=8, padding=2)
            bars.margins(y=0.15)
            bars.tick_params(axis="x", labelrotation=20)
            bars.set_title(f"{main} (eval)", fontsize=10, loc="left")
        return fig

    def _text_table(self) -> pd.DataFrame:
        table = self.table.astype(object)
        for name, result in self.results.items():
            row = table.loc[name]
            table.loc[name] = row.where(row.notna(), count_text(None, result.raw.policy))
        table.loc[self.table["kind"] == "evaluate", "train rows"] = "-"
        for column in self.table.columns:
            if pd.api.types.is_float_dtype(self.table[column]) and column not in ("train rows", "eval rows"):
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
