"""matplotlib figures of a result. Built on the object-oriented API (no pyplot state), so drawing a
result never changes the user's current figure."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd
from matplotlib.figure import Figure

if TYPE_CHECKING:
    from .result import TrainResult


def close(fig: Figure) -> None:
    fig.clear()


def learning_curve(result: TrainResult) -> Figure | None:
    history = result.history
    if history.empty:
        return None
    fig = Figure(figsize=(5, 3))
    ax = fig.subplots()
    ax.plot(history.index, history["train"], label="train")
    ax.plot(history.index, history["eval"], label="eval")
    ax.set_xlabel("boosting round")
    ax.set_ylabel(str(history.columns.name))
    ax.set_title("learning curve")
    ax.legend()
    return fig


def importance(result: TrainResult, top: int = 15) -> Figure | None:
    gain = result.feature_importance.head(top)
    if gain.empty:
        return None
    fig = Figure(figsize=(5, 0.3 * len(gain) + 1))
    ax = fig.subplots()
    ax.barh(list(gain.index)[::-1], list(gain.values)[::-1])
    ax.set_xlabel("total gain")
    ax.set_title("feature importance")
    return fig


def confusion(result: TrainResult) -> Figure | None:
    cm = result.confusion_matrix
    if cm is None:
        return None
    fig = Figure(figsize=(3.5, 3))
    ax = fig.subplots()
    values = cm.astype(float).fillna(0).to_numpy()
    ax.imshow(values, cmap="Blues")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            value = cm.iat[i, j]
            ax.text(
                j,
                i,
                "suppressed" if pd.isna(value) else f"{int(value):,}",
                ha="center",
                va="center",
                fontsize=8,
            )
    ax.set_xticks(range(len(cm.columns)), labels=list(cm.columns))
    ax.set_yticks(range(len(cm.index)), labels=list(cm.index))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (eval)")
    return fig


def figures(result: TrainResult) -> dict[str, Figure]:
    made = {
        "learning curve": learning_curve(result),
        "feature importance": importance(result),
        "confusion matrix": confusion(result),
    }
    return {name: fig for name, fig in made.items() if fig is not None}
