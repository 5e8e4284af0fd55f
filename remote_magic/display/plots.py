"""matplotlib figures of released numbers. Built on the object-oriented API (no pyplot state), so
drawing never changes the user's current figure, and `result.plot()` hands the figures over for
restyling (a `Figures` mapping that a notebook displays side by side). The functions take plain frames
and series, not result objects."""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from .charts import EVAL_COLOUR, TRAIN_COLOUR, best_round
from .formats import compact

HEIGHT = 3.0
WIDTH = 4.2
DPI = 90


def _style(ax) -> None:
    ax.spines[["top", "right"]].set_visible(False)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=8)


def to_png(fig: Figure, dpi: int = DPI) -> str:
    """The figure as a base64 PNG, for inline HTML."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode()


def figure_row(figures: Mapping[str, Figure]) -> str:
    """The figures side by side in one row, each at most its natural width and shrunk together on a
    narrow page, so a confusion matrix sits beside the curves instead of on a row of its own."""
    widths = " ".join(f"minmax(0, {round(fig.get_figwidth() * DPI)}px)" for fig in figures.values())
    images = "".join(
        f"<img class='remote-magic-plot' alt='{html.escape(name)}' style='{_IMG}' "
        f"src='data:image/png;base64,{to_png(fig)}'/>"
        for name, fig in figures.items()
    )
    return (
        f"<div class='remote-magic-plots' style='display:grid;grid-template-columns:{widths};gap:12px;"
        f"align-items:start;margin-top:10px;max-width:1400px'>{images}</div>"
    )


_IMG = "width:100%;height:auto;border:1px solid #eee;border-radius:4px;background:white"


class Figures(Mapping[str, Figure]):
    """A result's figures by name (`figures["learning curve"]` is a matplotlib Figure, to restyle or
    save); displayed in a notebook, it shows them side by side. `note` says, in one line, which figures
    the job did not release and what asks for them (shown with the figures, or alone when there are none)."""

    def __init__(self, figures: Mapping[str, Figure], note: str = ""):
        self._figures = dict(figures)
        self.note = note

    def __getitem__(self, name: str) -> Figure:
        return self._figures[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._figures)

    def __len__(self) -> int:
        return len(self._figures)

    def __repr__(self) -> str:
        if not self._figures:
            return f"Figures(): {self.note or 'nothing to draw'}"
        text = f"Figures({', '.join(self._figures)}): index by name for each matplotlib Figure"
        return f"{text}\n{self.note}" if self.note else text

    def _repr_html_(self) -> str:
        note = f"<div style='color:#666;font-size:0.9em'>{html.escape(self.note)}</div>" if self.note else ""
        if not self._figures:
            return note or "<div>Figures(): nothing to draw</div>"
        return figure_row(self._figures) + note


def learning_curve(history: pd.DataFrame) -> Figure | None:
    """Train and eval metric per boosting round, with the best eval round marked."""
    if history.empty:
        return None
    metric = str(history.columns.name)
    fig = Figure(figsize=(WIDTH, HEIGHT), layout="constrained")
    ax = fig.subplots()
    _style(ax)
    if "train" in history:
        ax.plot(history.index, history["train"], label="train", color=TRAIN_COLOUR, linewidth=1.8)
    ax.plot(history.index, history["eval"], label="eval", color=EVAL_COLOUR, linewidth=1.8, marker=".")
    if "eval_low" in history:  # mode dp: the eval metric at checkpoints, with its 95% interval
        ax.fill_between(
            history.index,
            history["eval_low"],
            history["eval_high"],
            color=EVAL_COLOUR,
            alpha=0.2,
            label="95% interval",
        )
    best, value = best_round(history)
    ax.axvline(best, color="#999999", linestyle=":", linewidth=1)
    ax.annotate(
        f"best eval {value:.4g}\nround {best}",
        xy=(best, value),
        xytext=(0.97, 0.95),
        textcoords="axes fraction",
        ha="right",
        va="top",
        fontsize=8,
        color="#555555",
    )
    ax.set_xlabel("boosting round", fontsize=9)
    ax.set_ylabel(metric, fontsize=9)
    ax.set_title("Learning curve", fontsize=10, loc="left")
    ax.legend(frameon=False, fontsize=8, loc="center right")
    return fig


def importance(importances: pd.Series, top: int = 12) -> Figure | None:
    """Average gain per split of the top features (XGBoost's `gain`), largest on top."""
    gain = importances.head(top)
    if gain.empty:
        return None
    fig = Figure(figsize=(WIDTH, max(HEIGHT, 0.24 * len(gain) + 0.9)), layout="constrained")
    ax = fig.subplots()
    _style(ax)
    ax.grid(False, axis="y")
    names, values = list(gain.index)[::-1], list(gain.values)[::-1]
    bars = ax.barh(names, values, color=TRAIN_COLOUR, height=0.65)
    ax.bar_label(bars, labels=[compact(v) for v in values], padding=2, fontsize=7, color="#555555")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: compact(v)))
    ax.margins(x=0.15)
    ax.set_xlabel("average gain per split", fontsize=9)
    ax.set_title("Feature importance", fontsize=10, loc="left")
    return fig


def confusion(cm: pd.DataFrame | None, suppressed_as: str) -> Figure | None:
    """Released counts of the confusion matrix; suppressed cells are grey and say so."""
    if cm is None:
        return None
    values = np.ma.masked_invalid(cm.astype(float).to_numpy())
    n = values.shape[0]
    size = min(WIDTH, max(HEIGHT, 0.55 * n + 1.4))
    fig = Figure(figsize=(size, size * 0.9), layout="constrained")
    ax = fig.subplots()
    cmap = colormaps["Blues"].with_extremes(bad="#dddddd")
    ax.imshow(values, cmap=cmap, vmin=0)
    top = values.max() if values.count() else 0
    suppressed = np.ma.getmaskarray(values)
    for i in range(n):
        for j in range(n):
            if suppressed[i, j]:
                text, colour = f"suppressed\n({suppressed_as})", "#555555"
            else:
                count = values[i, j]
                text, colour = f"{int(count):,}", "white" if count > 0.6 * top else "#222222"
            ax.text(j, i, text, ha="center", va="center", fontsize=8 if n <= 4 else 6, color=colour)
    ax.set_xticks(range(n), labels=list(cm.columns), fontsize=8)
    ax.set_yticks(range(n), labels=list(cm.index), fontsize=8)
    ax.set_xlabel("predicted", fontsize=9)
    ax.set_ylabel("true", fontsize=9)
    ax.set_title("Confusion matrix (eval)", fontsize=10, loc="left")
    return fig


def metrics(values: Mapping[str, float | None], intervals: Mapping[str, Sequence[float]]) -> Figure | None:
    """The released metrics with their 95% intervals (mode dp), one row each on its own scale."""
    shown = [(name, v, intervals[name]) for name, v in values.items() if v is not None and name in intervals]
    if not shown:
        return None
    fig = Figure(figsize=(WIDTH, 0.5 + 0.55 * len(shown)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(len(shown), 1))
    for ax, (name, value, (low, high)) in zip(axes, shown):
        _style(ax)
        ax.grid(False, axis="y")
        ax.errorbar([value], [0], xerr=[[value - low], [high - value]], fmt="o", color=EVAL_COLOUR, capsize=3)
        ax.set_yticks([0], labels=[name], fontsize=8)
        ax.margins(x=0.25)
    axes[0].set_title("Metrics (eval), 95% intervals", fontsize=10, loc="left")
    return fig
