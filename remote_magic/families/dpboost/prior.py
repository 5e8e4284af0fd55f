"""A public prior over the columns a random structure splits on, from one DP release at the start.

Random splits (the federated trainer's, one round trip per batch) draw every tree level's column
uniformly; on a table where some columns carry no signal, a share of the levels is wasted on them (the
benchmark's table: 4 noise columns of 10 cost 0.5 AUC points, in-process). Here the training's sketch
(`candidates.py`, one release before the first batch) also releases, per column, the sums of the rows'
clipped gradients at the public start margin over a few coarse public bins (`PRIOR_BINS` of each numeric
range, with a bin below it, one above it and one for missing values; a text column's public levels and
one for missing or other levels), each row's gradient divided by its bound. One row then adds at most 1
(L2, over its classes) to one bin of each column: the release's L2 sensitivity grows from
sqrt(numeric ranges) to sqrt(numeric ranges + scored columns), in the same Gaussian release at the same
rho (docs/privacy.md, "The federated sketch").

The coordinator turns the released sums into column weights (post-processing, so public): a column's
score is the single server's split score `S = sum over children |G_c|` (`selection.py`) at its best
coarse edge (missing values either way; a text column's levels each sent their best way), less the
unsplit `|G|`, in units of the noise on the column's bins (`sigma * sqrt(entries)`). A column whose score
reaches `PRIOR_Z` keeps weight 1, the others `PRIOR_FLOOR`, and the thresholds stay uniform over the
candidates. Measured in-process (benchmarks/federated.py's rows and settings, three servers' noise,
seeds 100 to 105): weights rising with the score (exp(S / T), S - T) put most levels on the strongest
column and lose 1 to 8 points; weighting the thresholds by their scores loses 1.2; a hard cut at
z >= 4 scores 0.8501 against 0.8448 uniform and 0.8502 for an oracle that drops exactly the noise
columns (z >= 3: 0.8479; 8 coarse bins: 0.8490; 256: 0.8467). A column that is wrongly cut costs more
than a noise column kept (dropping income and visits: 0.820), hence the floor. At a tenth of the rho
(0.03) the informative columns' scores fall near the cut and the prior loses 0.5 points (0.8347
against 0.8399); at 1.0 it gains 0.5 (0.8508 against 0.8460).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .candidates import range_grids
from .features import Column, Features, bin_column, float32_values
from .objectives import Objective
from .settings import federated_settings

PRIOR_BINS = 16  # coarse bins of a numeric range (a sixteenth of its fine sketch grid's 256 each)
PRIOR_Z = 4.0  # a column's score, in noise units, that keeps its full weight
PRIOR_FLOOR = 0.1  # the weight of a column below it


@dataclass(frozen=True)
class PriorRequest:
    """What each server sums for the prior: the coarse edges of the sketched numeric ranges and the
    levels of the text columns, per class of the objective's trees."""

    edges: dict[str, np.ndarray]
    text: dict[str, tuple[str, ...]]
    classes: int

    @property
    def columns(self) -> int:
        return len(self.edges) + len(self.text)

    def sizes(self) -> list[int]:
        """Each column's entries in the released vector: (bins, classes) flattened."""
        numeric = [(len(e) + 2) * self.classes for e in self.edges.values()]
        return numeric + [(len(levels) + 1) * self.classes for levels in self.text.values()]

    @property
    def size(self) -> int:
        return sum(self.sizes())


def prior_request(
    ranges: Mapping[str, tuple[float, float]], features: Features, classes: int
) -> PriorRequest:
    """The prior's layout from public values only: the sketch's ranges (their fine grids every
    `PRIOR_BINS`-th edge) and the text columns' levels, in the features' order."""
    edges = {}
    for name, grid in range_grids(ranges).grids.items():
        step = max(1, (len(grid) - 1) // PRIOR_BINS)
        edges[name] = np.asarray(grid[::step], dtype=np.float64)
    text = {c.name: c.levels for c in features.columns if c.kind == "categorical" and c.levels}
    return PriorRequest(edges, text, classes)


def federated_prior(
    ranges: Mapping[str, tuple[float, float]] | None, features: list[dict], settings: dict, wanted: bool
) -> PriorRequest | None:
    """A federated sketch's prior (None without one) from the request's public parts: the coordinator,
    each server's parent (the release it plans) and its worker (what it sums) make it alike."""
    if not wanted or not ranges:
        return None
    columns = Features.from_dict({"columns": features})
    return prior_request(ranges, columns, federated_settings(settings).objective_().trees_per_round)


def sketch_bound(ranges: Mapping[str, tuple[float, float]], prior: PriorRequest | None) -> float:
    """The L2 sensitivity of a sketch's one release: one count per range, and with the prior one
    gradient (scaled to norm <= 1) per scored column."""
    return math.sqrt(len(ranges) + (prior.columns if prior is not None else 0))


def prior_sums(
    request: PriorRequest,
    data: pa.Table | Iterable[pa.RecordBatch],
    labels: np.ndarray,
    objective: Objective,
    start: Sequence[float] | None,
) -> list[float]:
    """One partition's exact prior sums (they add over partitions): every row's clipped gradient at the
    public start margin, divided by the objective's bound, summed per column and bin."""
    y = objective.labels(labels)
    margin = np.asarray(start if start is not None else objective.initial_margin(), dtype=np.float64)
    g, _ = objective.gradients(np.broadcast_to(margin, (len(y), len(margin))), y)
    g = g / objective.gradient_bound
    totals = [np.zeros(size) for size in request.sizes()]
    at = 0
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    for batch in batches:
        rows = g[at : at + batch.num_rows]
        at += batch.num_rows
        codes = []
        for name, edges in request.edges.items():
            values = float32_values(batch.column(name))
            found = np.searchsorted(edges.astype(np.float32), values, side="right")
            codes.append(np.where(np.isnan(values), len(edges) + 1, found))
        for name, levels in request.text.items():
            codes.append(bin_column(Column(name, "categorical", levels=levels), batch.column(name)))
        for total, code in zip(totals, codes, strict=True):
            bins = len(total) // request.classes
            for k in range(request.classes):
                total[k :: request.classes] += np.bincount(code, weights=rows[:, k], minlength=bins)
    if at != len(y):
        raise ValueError(f"{len(y)} labels for {at} rows")
    return [float(v) for total in totals for v in total]


def column_weights(
    features: Features, request: PriorRequest, noisy: Sequence[float], sigma: float
) -> np.ndarray:
    """Each feature column's weight for the structure's draw, from the prior sums released (several
    servers' added up) and the sd of their noise (post-processing: public). Columns the prior does not
    score (booleans) keep weight 1; all 1 when no scored column reaches `PRIOR_Z`."""
    if len(noisy) != request.size:
        raise ValueError(f"the prior has {len(noisy)} sums, not {request.size}")
    values = np.asarray(noisy, dtype=np.float64)
    z: dict[str, float] = {}
    at = 0
    for name, size in zip([*request.edges, *request.text], request.sizes(), strict=True):
        sums = values[at : at + size].reshape(-1, request.classes)
        at += size
        unsplit = np.abs(sums.sum(axis=0)).sum()
        if name in request.edges:
            inside, missing = sums[:-1], sums[-1]
            left = np.cumsum(inside, axis=0)[1:-2]  # x < each inner coarse edge
            right = inside.sum(axis=0) - left
            best = max(
                (np.abs(left + missing) + np.abs(right)).sum(axis=1).max(initial=0.0),
                (np.abs(left) + np.abs(right + missing)).sum(axis=1).max(initial=0.0),
            )
        else:
            best = np.abs(sums).sum()
        z[name] = (best - unsplit) / (max(sigma, 1e-300) * math.sqrt(size))
    weights = np.ones(len(features.columns))
    if any(score >= PRIOR_Z for score in z.values()):
        for i, column in enumerate(features.columns):
            if column.name in z and z[column.name] < PRIOR_Z:
                weights[i] = PRIOR_FLOOR
    return weights
