"""What a notebook shows of the registry: a table of versions, and a lineage chain drawn as a small graph.

The graph is matplotlib (object-oriented API, no pyplot state): each version a box with its main metric,
each dataset version the version was trained on a box of its own, arrows from parent to child.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..contract.automation_wire import LineageChain, ModelList, ModelVersion
from .formats import point_text
from .tables import Table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

VERSION_COLOUR = "#dbe7f5"
DATA_COLOUR = "#fbe5d6"


def _metric(version: ModelVersion) -> str:
    return point_text(version.main_metric)


def _origin(version: ModelVersion) -> str:
    lineage = version.lineage
    if lineage.origin == "version":
        return f"from {lineage.parent}" if lineage.parent else "from a deleted version"
    if lineage.origin == "uploaded":
        return f"uploaded base {(lineage.base_sha256 or '')[:12]}"
    return "fresh"


def _data(version: ModelVersion) -> str:
    lineage = version.lineage
    return f"{lineage.dataset}@{lineage.dataset_version}" if lineage.dataset_version else lineage.dataset


def models_table(models: ModelList) -> Table:
    """One row per version: its reference, aliases, origin, data and main metric."""
    rows = [
        [v.ref, ", ".join(v.aliases), _origin(v), _data(v), _metric(v), v.lineage.job_id, v.created[:19]]
        for model in models.models
        for v in model.versions
    ]
    return Table(["version", "aliases", "origin", "data", "main metric", "job", "created (UTC)"], rows)


class LineageView:
    """A version and its ancestors: text for terminals, a drawn graph for notebooks, `.plot()` for more."""

    def __init__(self, chain: LineageChain):
        self.chain = chain

    @property
    def versions(self) -> list[ModelVersion]:
        return self.chain.versions

    def __repr__(self) -> str:
        lines = [
            f"{v.ref}{' [' + ', '.join(v.aliases) + ']' if v.aliases else ''}  {_metric(v)}  "
            f"trained on {_data(v)}  ({_origin(v)})"
            for v in self.versions
        ]
        return "\n".join(lines) if lines else "(no versions)"

    def plot(self) -> Figure:
        """The chain, oldest on the left: version boxes on top, the data each was trained on below."""
        from matplotlib.figure import Figure  # here, not at import: a client that draws nothing skips it

        chain = list(reversed(self.versions))
        fig = Figure(figsize=(max(3.0, 2.2 * len(chain)), 2.4), layout="constrained")
        ax = fig.subplots()
        ax.set_axis_off()
        ax.set_xlim(-0.7, len(chain) - 0.3)
        ax.set_ylim(-0.8, 1.6)
        box = {"boxstyle": "round,pad=0.4", "linewidth": 0.8}
        for i, version in enumerate(chain):
            label = version.ref + (f"\n[{', '.join(version.aliases)}]" if version.aliases else "")
            label += f"\n{_metric(version)}" if _metric(version) else ""
            ax.text(
                i, 1, label, ha="center", va="center", fontsize=8, bbox={**box, "facecolor": VERSION_COLOUR}
            )
            lineage = version.lineage
            data = lineage.dataset + (
                f"\nversion {lineage.dataset_version[:8]}" if lineage.dataset_version else ""
            )
            ax.text(
                i,
                -0.3,
                data,
                ha="center",
                va="center",
                fontsize=7,
                bbox={**box, "facecolor": DATA_COLOUR},
            )
            ax.annotate("", xy=(i, 0.62), xytext=(i, -0.05), arrowprops={"arrowstyle": "->", "color": "#999"})
            if i:
                ax.annotate("", xy=(i - 0.38, 1), xytext=(i - 0.62, 1), arrowprops={"arrowstyle": "->"})
        if chain and chain[0].lineage.origin != "version":
            ax.text(0, 1.45, _origin(chain[0]), ha="center", va="bottom", fontsize=7, color="#666")
        return fig

    def _repr_html_(self) -> str:
        from . import plots

        rows = "".join(
            f"<tr><td>{html.escape(v.ref)}</td><td>{html.escape(', '.join(v.aliases))}</td>"
            f"<td>{html.escape(_metric(v))}</td><td>{html.escape(_data(v))}</td>"
            f"<td>{html.escape(_origin(v))}</td></tr>"
            for v in self.versions
        )
        image = (
            f"<img alt='lineage graph' src='data:image/png;base64,{plots.to_png(self.plot())}'/>"
            if self.versions
            else ""
        )
        return (
            f"<div class='remote-magic-lineage'>{image}<table class='remote-magic-table'><thead><tr>"
            "<th>version</th><th>aliases</th><th>main metric</th><th>data</th><th>origin</th>"
            f"</tr></thead><tbody>{rows}</tbody></table></div>"
        )


def recipes_table(recipes: Sequence) -> Table:
    rows = []
    for r in recipes:
        triggers = [
            *(["new data"] if r.triggers.on_new_data else []),
            *([f"new {r.triggers.on_new_model}"] if r.triggers.on_new_model else []),
            *([f"every {r.triggers.every}"] if r.triggers.every else []),
        ]
        state = r.state if r.state == "active" else f"paused: {r.paused_reason or ''}"
        rows.append([r.name, r.kind, r.spec.dataset, ", ".join(triggers), str(r.runs), state])
    return Table(["recipe", "kind", "dataset", "triggers", "runs", "state"], rows)
