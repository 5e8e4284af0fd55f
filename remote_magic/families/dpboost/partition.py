"""The half of the trainer that runs where the rows are: exact sums in, leaf values out, state kept.

A `Partition` holds one partition's rows as codes (one byte per row and column), its labels and the
current margins of its rows. It answers two kinds of request with small arrays whose sum over all
partitions is the sum over all rows, and applies the updates the coordinator sends back:

- `Intercept`: the label sums the intercept is estimated from (`Objective.label_sums`);
- `Grow` (only when splits are selected): for each tree of the batch, each node of the level being
  chosen, each column and each of its codes, the sum of the rows' clipped gradients, shape
  (trees, nodes, columns, width);
- a `Batch`: for each tree of the batch and each leaf, the sum of the rows' clipped gradients and
  hessians, shape (trees, leaves, 2).

Both are computed from the margins the batch starts from.

Nothing a partition returns is released as it is: the coordinator adds noise before anything leaves.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .features import Features, bin_table
from .objectives import Objective
from .structure import Batch, descend


@dataclass(frozen=True)
class Intercept:
    """The request for label sums, before any tree (only when no base model gives the margins)."""


@dataclass(frozen=True)
class Grow:
    """The request for histograms at `level` of the batch's trees (its levels above are decided)."""

    batch: Batch
    level: int


@dataclass(frozen=True)
class InterceptUpdate:
    margin: np.ndarray  # (trees per round,): added to every row's margins


@dataclass(frozen=True)
class LeafUpdate:
    batch: Batch
    values: np.ndarray  # (trees, leaves): each tree's leaf values as the model stores them


Request = Intercept | Grow | Batch
Update = InterceptUpdate | LeafUpdate


# From this many rows a partition's histograms are summed in `threads` threads, a share of the columns
# each (NumPy's ufuncs run without the GIL): each column's cells are its own and each cell adds its rows
# in row order, so the sums are the same bits. On 10^6 rows of 10 columns, 2 threads on 2 cores: a
# level in 0.6x the time. Below it the threads' hand-over costs more than they save.
PARALLEL_ROWS = 100_000


@functools.cache
def _pool(threads: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="dpboost-histograms")


class Partition:
    """One partition's rows, binned once, with their margins kept across batches. They start from a base
    model's margins (`base_margin`, one row each), else from the model's public start (`start`: the
    analyst's base_score), else from the objective's."""

    def __init__(
        self,
        features: Features,
        data: pa.Table | Iterable[pa.RecordBatch],
        labels: np.ndarray,
        objective: Objective,
        base_margin: np.ndarray | None = None,
        start: Sequence[float] | None = None,
        threads: int = 1,
    ):
        self.features = features
        self.threads = threads
        self.objective = objective
        self.codes = bin_table(features, data)
        self.labels = objective.labels(labels)
        rows, classes = self.codes.shape[1], objective.trees_per_round
        if len(self.labels) != rows:
            raise ValueError(f"{len(self.labels)} labels for {rows} rows")
        if base_margin is None:
            first = objective.initial_margin() if start is None else np.asarray(start, dtype=np.float64)
            self.margins = np.tile(first, (rows, 1))
        else:
            self.margins = np.asarray(base_margin, dtype=np.float64).reshape(rows, classes).copy()
        self._nodes: dict[tuple[int, int], tuple[int, np.ndarray]] = {}
        self._gradients: tuple[int, np.ndarray, np.ndarray] | None = None
        self._routing: tuple[Batch, np.ndarray] | None = None

    @classmethod
    def held(
        cls,
        features: Features,
        objective: Objective,
        codes: np.ndarray,
        labels: np.ndarray,
        margins: np.ndarray,
    ) -> Partition:
        """A partition from its `codes`, `labels` and `margins` as kept between calls (a federated
        training's session keeps them on its server between steps)."""
        partition = cls.__new__(cls)
        partition.features, partition.objective, partition.threads = features, objective, 1
        partition.codes, partition.labels, partition.margins = codes, labels, margins
        partition._nodes, partition._gradients, partition._routing = {}, None, None
        return partition

    @property
    def rows(self) -> int:
        return self.codes.shape[1]

    def sums(self, request: Request) -> np.ndarray:
        """Exact sums over this partition's rows (the coordinator adds them over partitions)."""
        if isinstance(request, Intercept):
            return self.objective.label_sums(self.labels)
        if isinstance(request, Grow):
            return self._histograms(request.batch, request.level)
        batch = request
        g, h = self._batch_gradients(batch)
        out = np.zeros((batch.trees, batch.leaves, 2))
        for tree in range(batch.trees):
            leaf = self._node(batch, tree, batch.depth)
            k = tree % batch.classes
            out[tree, :, 0] = np.bincount(leaf, weights=g[:, k], minlength=batch.leaves)
            out[tree, :, 1] = np.bincount(leaf, weights=h[:, k], minlength=batch.leaves)
        return out

    def apply(self, update: Update) -> None:
        """Move the margins by what the coordinator released."""
        if isinstance(update, InterceptUpdate):
            self.margins += np.asarray(update.margin, dtype=np.float64)[None, :]
            return
        batch, values = update.batch, np.asarray(update.values, dtype=np.float64)
        for tree in range(batch.trees):
            leaf = self._node(batch, tree, batch.depth)
            self.margins[:, tree % batch.classes] += np.take(values[tree], leaf)
        self._nodes = {}
        self._gradients = None
        self._routing = None

    def _batch_gradients(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """The gradients the batch is fitted on (the margins before it), kept while it grows."""
        if self._gradients is None or self._gradients[0] != batch.number:
            g, h = self.objective.gradients(self.margins, self.labels)
            self._gradients = (batch.number, g, h)
        return self._gradients[1], self._gradients[2]

    def _node(self, batch: Batch, tree: int, level: int) -> np.ndarray:
        """Each row's node at `level` of a tree (read-only), carried on from the deepest level reached
        before."""
        key = (batch.number, tree)
        start, node = self._nodes.get(key, (0, None))
        if node is None or start > level:
            start, node = 0, np.zeros(self.rows, dtype=np.int32)
        if start < level:
            node = descend(batch, self._tables(batch), self.codes, tree, node, start, level)
        self._nodes[key] = (level, node)
        return node

    def _tables(self, batch: Batch) -> np.ndarray:
        """The batch's routing tables (`Batch.tables`), made when a row must descend, and kept while the
        same batch asks again (its other trees, its leaf sums and then its update)."""
        if self._routing is None or self._routing[0] is not batch:
            self._routing = (batch, batch.tables(self.features))
        return self._routing[1]

    def _histograms(self, batch: Batch, level: int) -> np.ndarray:
        """Each tree's (nodes, columns, width) gradient sums, one `np.add.at` per column into the flat
        output: row (node, code) of column f is cell node * columns * width + f * width + code. Each cell
        adds its rows' gradients one by one in row order, as `np.bincount` would (so the same bits), in
        about three quarters of its time (NumPy 2's unbuffered fast path, no minimum/maximum pass)."""
        g, _ = self._batch_gradients(batch)
        columns, width = len(self.features.columns), self.features.width
        out = np.zeros((batch.trees, 1 << level, columns, width))
        start = np.empty(self.rows, np.intp)
        lanes = min(self.threads, columns) if self.rows >= PARALLEL_ROWS else 1
        cells = [np.empty(self.rows, np.intp) for _ in range(lanes)]
        for tree in range(batch.trees):
            np.multiply(self._node(batch, tree, level), columns * width, out=start)
            weights = np.ascontiguousarray(g[:, tree % batch.classes])
            flat = out[tree].reshape(-1)
            lane_sums = [
                functools.partial(self._add, flat, start, weights, cells, lane) for lane in range(lanes)
            ]
            others = [_pool(lanes - 1).submit(lane_sum) for lane_sum in lane_sums[1:]]
            lane_sums[0]()  # this thread takes the first share itself
            for done in others:
                done.result()
        return out

    def _add(self, flat: np.ndarray, start: np.ndarray, weights: np.ndarray, cells: list, lane: int) -> None:
        """Lane `lane`'s share of the columns (every `len(cells)`-th) into `flat`: row (node, code) of
        column f is cell start + f * width + code. Each column's cells are its own."""
        width, lanes = self.features.width, len(cells)
        for f in range(lane, len(self.features.columns), lanes):
            np.add(start, self.codes[f], out=cells[lane])
            np.add.at(flat[f * width :], cells[lane], weights)
