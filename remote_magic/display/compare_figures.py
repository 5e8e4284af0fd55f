"""The figures of a comparison: the eval learning curves and the main metric per run, as one Vega-Lite
spec (`spec`, what a notebook shows) and as a matplotlib figure (`figure`, what `Comparison.plot()`
returns). In mode dp the metric carries each run's 95% error bar, the best run's interval is a grey band,
and the runs worse than the best beyond the noise are faded: the figure must not invite a choice made on
noise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from . import charts
from .formats import metric_text

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

    from .result import TrainResult


class Comparison(Protocol):
    """What the figures read of `compare.Comparison` (named here, not imported: it imports this)."""

    results: Mapping[str, TrainResult]
    table: pd.DataFrame
    main_metric: str | None
    colours: Mapping[str, tuple[float, float, float]]

    def versus_best(self, metric: str | None = None) -> dict[str, str | None]: ...


FADED = 0.35  # the opacity of a run worse than the best beyond the noise


def spec(comparison: Comparison) -> dict | None:
    """The eval learning curves and the main metric per run, side by side, of the released numbers."""
    curves = [
        {"run": name, "round": int(r), "value": charts.number(v)}
        for name, result in comparison.results.items()
        for r, v in result.history["eval"].items()
    ]
    metric = next(
        (str(r.history.columns.name) for r in comparison.results.values() if not r.history.empty), ""
    )
    colour = {
        "field": "run",
        "type": "nominal",
        "sort": list(comparison.results),
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
    main = comparison.main_metric
    if main is not None:
        made.append(metric_chart(comparison, main, colour))
    return charts.panel(made)


def metric_chart(comparison: Comparison, metric: str, colour: dict) -> dict:
    """The metric per run: bars in mode rules; in mode dp a point with its 95% error bar, the best run's
    interval as a grey band behind, and the runs beyond the noise of the best faded: an error bar that
    reaches the band cannot be told from the best, so the figure does not invite a choice between them."""
    verdicts = comparison.versus_best(metric)
    values = []
    for name, v in comparison.table[metric].items():
        band = comparison.results[name].intervals.get(metric)
        low, high = (charts.number(band[0]), charts.number(band[1])) if band else (None, None)
        value = charts.number(v)
        values.append(
            {
                "run": name,
                "value": value,
                "label": metric_text(v, comparison.results[name].raw.policy) if value is not None else "",
                "low": low,
                "high": high,
                "top": max(x for x in (value, high) if x is not None) if value is not None else None,
                "versus best": verdicts.get(name) or "",
            }
        )
    banded = [row for row in values if row["low"] is not None]
    faded = {"test": "datum['versus best'] === 'beyond the noise'", "value": FADED}
    tooltip = [{"field": "run"}, {"field": "label", "title": metric}]
    if banded:
        tooltip += [{"field": "low"}, {"field": "high"}, {"field": "versus best"}]
    x = {"field": "run", "type": "nominal", "sort": list(comparison.results), "title": None}
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


def figure(comparison: Comparison) -> Figure:
    """The same two panels in matplotlib, each run in one colour, for restyling."""
    from matplotlib.figure import Figure

    from . import plots

    fig = Figure(figsize=(8.6, plots.HEIGHT), layout="constrained")
    curves, bars = fig.subplots(1, 2, width_ratios=[3, 2])
    for ax in (curves, bars):
        plots._style(ax)
    colours = comparison.colours
    metric = ""
    for name, r in comparison.results.items():
        history = r.history
        if not history.empty:
            metric = str(history.columns.name)
            curves.plot(history.index, history["eval"], label=name, linewidth=1.6, color=colours[name])
    if metric:
        curves.set_ylabel(f"eval {metric}", fontsize=9)
        curves.legend(frameon=False, fontsize=8)
    curves.set_xlabel("boosting round", fontsize=9)
    curves.set_title("Eval learning curves", fontsize=10, loc="left")
    main = comparison.main_metric
    if main is not None:
        values = comparison.table[main]
        heights = values.to_numpy(dtype=float)
        bands = [comparison.results[name].intervals.get(main) for name in values.index]
        errors = [
            [h - b[0] if b else 0.0 for h, b in zip(heights, bands)],
            [b[1] - h if b else 0.0 for h, b in zip(heights, bands)],
        ]
        verdicts = comparison.versus_best(main)
        drawn = bars.bar(
            [str(i) for i in values.index],
            heights,
            color=[colours[name] for name in values.index],
            yerr=errors if any(bands) else None,
            capsize=4,
        )
        for patch, name in zip(drawn.patches, values.index):
            patch.set_alpha(FADED if verdicts.get(name) == "beyond the noise" else 1.0)
        labels = [metric_text(v, comparison.results[name].raw.policy) for name, v in values.items()]
        bars.bar_label(drawn, labels=labels, fontsize=8, padding=2)
        bars.margins(y=0.15)
        bars.tick_params(axis="x", labelrotation=20)
        bars.set_title(f"{main} (eval)", fontsize=10, loc="left")
    return fig
