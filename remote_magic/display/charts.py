"""Vega-Lite specs of released numbers, for the front end to draw.

Why not matplotlib here: a notebook front end (JupyterLab, Notebook 7, VS Code) draws
`application/vnd.vegalite.v5+json` in the browser at no kernel cost, and a spec of a few released
aggregates is a few KB; drawing the same figures in the kernel cost more than the whole server job. A saved
notebook read where nothing runs Vega (nbconvert's HTML, GitHub, nbviewer) needs a picture beside the spec:
`pictures.show` adds one as SVG, drawn by a helper process after the cell has answered.
`result.plot()` still returns matplotlib figures (plots.py) for restyling.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from .formats import compact

if TYPE_CHECKING:
    import pandas as pd

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"
TRAIN_COLOUR = "#4c72b0"
EVAL_COLOUR = "#dd8452"
COLOURS = {"train": TRAIN_COLOUR, "eval": EVAL_COLOUR}
HIGHER_IS_BETTER = ("auc", "aucpr", "map", "ndcg", "accuracy", "r2", "f1")
WIDTH = 260
HEIGHT = 180
AXIS = {"labelFontSize": 10, "titleFontSize": 11, "gridColor": "#e5e5e5"}
CONFIG = {
    "axis": AXIS,
    "view": {"stroke": None},
    "title": {"anchor": "start", "fontSize": 12, "fontWeight": "normal"},
    "legend": {"labelFontSize": 10, "titleFontSize": 10},
    "concat": {"spacing": 24},
}


def number(value: object) -> float | None:
    """A JSON-safe number: NaN or NA (a suppressed cell, a missing interval) becomes null."""
    import pandas as pd

    return None if pd.isna(value) else float(value)  # type: ignore[arg-type]


def best_round(history: pd.DataFrame) -> tuple[int, float]:
    """The boosting round with the best eval metric, and that value (the history must not be empty)."""
    evals = history["eval"]
    higher = str(history.columns.name).split("@")[0] in HIGHER_IS_BETTER
    best = int(evals.idxmax() if higher else evals.idxmin())
    return best, float(evals[best])


def learning_curve(history: pd.DataFrame) -> dict | None:
    """Train and eval metric per boosting round (mode dp: eval at checkpoints with its 95% interval), the
    best eval round marked."""
    if history.empty:
        return None
    metric = str(history.columns.name)
    splits = [split for split in COLOURS if split in history]
    points = [
        {"round": int(r), "split": split, "value": number(v)}
        for split in splits
        for r, v in history[split].items()
    ]
    best, value = best_round(history)
    x = {"field": "round", "type": "quantitative", "title": "boosting round"}
    layers: list[dict] = []
    if "eval_low" in history:
        band = [
            {"round": int(r), "low": number(lo), "high": number(hi)}
            for r, lo, hi in zip(history.index, history["eval_low"], history["eval_high"])
        ]
        layers.append(
            {
                "data": {"values": band},
                "mark": {"type": "area", "opacity": 0.2, "color": EVAL_COLOUR},
                "encoding": {"x": x, "y": {"field": "low", "type": "quantitative"}, "y2": {"field": "high"}},
            }
        )
    layers += [
        {
            "data": {"values": points},
            "mark": {"type": "line", "point": len(history) <= 30},
            "encoding": {
                "x": x,
                "y": {"field": "value", "type": "quantitative", "title": metric, "scale": {"zero": False}},
                "color": {
                    "field": "split",
                    "type": "nominal",
                    "title": None,
                    "scale": {"domain": splits, "range": [COLOURS[split] for split in splits]},
                    "legend": {"orient": "top", "direction": "horizontal"},
                },
            },
        },
        {
            "data": {"values": [{"round": best, "label": f"best eval {value:.4g}, round {best}"}]},
            "layer": [
                {"mark": {"type": "rule", "strokeDash": [2, 2], "color": "#999999"}},
                {
                    "mark": {
                        "type": "text",
                        "align": "left",
                        "dx": 4,
                        "y": 8,
                        "fontSize": 10,
                        "color": "#555555",
                    }
                },
            ],
            "encoding": {"x": {"field": "round", "type": "quantitative"}, "text": {"field": "label"}},
        },
    ]
    return {"title": "Learning curve", "width": WIDTH, "height": HEIGHT, "layer": layers}


def importance(importances: pd.Series, top: int = 12) -> dict | None:
    """Average gain per split of the top features (XGBoost's `gain`), largest on top."""
    gain = importances.head(top)
    if gain.empty:
        return None
    values = [{"feature": str(k), "gain": float(v), "label": compact(float(v))} for k, v in gain.items()]
    y = {"field": "feature", "type": "nominal", "sort": None, "title": None}
    return {
        "title": "Feature importance",
        "width": WIDTH,
        "height": {"step": 18},
        "data": {"values": values},
        "encoding": {
            "y": y,
            "x": {"field": "gain", "type": "quantitative", "title": "average gain per split"},
        },
        "layer": [
            {"mark": {"type": "bar", "color": TRAIN_COLOUR}},
            {
                "mark": {"type": "text", "align": "left", "dx": 3, "fontSize": 9, "color": "#555555"},
                "encoding": {"text": {"field": "label"}},
            },
        ],
    }


def confusion(cm: pd.DataFrame | None, suppressed_as: str) -> dict | None:
    """Released counts of the confusion matrix; suppressed cells are grey and say so."""
    if cm is None:
        return None
    cells = []
    for true in cm.index:
        for predicted in cm.columns:
            count = number(cm.loc[true, predicted])
            cells.append(
                {
                    "true": str(true),
                    "predicted": str(predicted),
                    "count": count,
                    "text": ["suppressed", f"({suppressed_as})"] if count is None else f"{int(count):,}",
                }
            )
    top = max((c["count"] for c in cells if c["count"] is not None), default=0)
    order = [str(label) for label in cm.columns]
    axis = {"labelAngle": 0}
    side = min(WIDTH, 70 * len(order) + 40)
    released = {"filter": "datum.count !== null"}
    return {
        "title": "Confusion matrix (eval)",
        "width": side,
        "height": side,
        "data": {"values": cells},
        "encoding": {
            "x": {"field": "predicted", "type": "ordinal", "sort": order, "axis": axis},
            "y": {"field": "true", "type": "ordinal", "sort": order, "axis": axis},
        },
        "layer": [
            {"mark": {"type": "rect", "color": "#dddddd"}},
            {
                "transform": [released],
                "mark": "rect",
                "encoding": {
                    "color": {
                        "field": "count",
                        "type": "quantitative",
                        "scale": {"scheme": "blues", "domainMin": 0},
                        "legend": None,
                    }
                },
            },
            {
                "mark": {"type": "text", "fontSize": 10 if len(order) <= 4 else 8},
                "encoding": {
                    "text": {"field": "text"},
                    "color": {
                        "condition": {"test": f"datum.count > {0.6 * top}", "value": "white"},
                        "value": "#222222",
                    },
                },
            },
        ],
    }


def metrics(values: Mapping[str, float | None], intervals: Mapping[str, Sequence[float]]) -> dict | None:
    """The released metrics with their 95% intervals (mode dp), one row each on its own scale: what a
    job released by default, drawn at no further cost, when it released no figure."""
    rows = [
        {"metric": name, "value": value, "low": intervals[name][0], "high": intervals[name][1]}
        for name, value in values.items()
        if value is not None and name in intervals
    ]
    if not rows:
        return None
    x = {"type": "quantitative", "scale": {"zero": False, "padding": 40}, "title": None}
    return {
        "title": "Metrics (eval), 95% intervals",
        "data": {"values": rows},
        "facet": {
            "row": {
                "field": "metric",
                "type": "nominal",
                "sort": None,
                "title": None,
                "header": {"labelAngle": 0, "labelAlign": "left", "labelFontSize": 11},
            }
        },
        "spec": {
            "width": WIDTH,
            "height": 22,
            "layer": [
                {
                    "mark": {"type": "rule", "color": EVAL_COLOUR},
                    "encoding": {"x": {"field": "low", **x}, "x2": {"field": "high"}},
                },
                {
                    "mark": {"type": "point", "filled": True, "size": 50, "color": EVAL_COLOUR},
                    "encoding": {
                        "x": {"field": "value", **x},
                        "tooltip": [{"field": f} for f in ("metric", "value", "low", "high")],
                    },
                },
            ],
        },
        "resolve": {"scale": {"x": "independent"}},
    }


def panel(charts: Sequence[dict | None]) -> dict | None:
    """The charts side by side in one spec (one picture to render for a saved notebook)."""
    made = [c for c in charts if c is not None]
    if not made:
        return None
    return {"$schema": SCHEMA, "hconcat": made, "config": CONFIG}
