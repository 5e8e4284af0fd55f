"""The half of the trainer that runs where the rows are: exact sums in, leaf values out, state kept.

A `Partition` holds one partition's rows as codes (one byte per row and column), its labels and the
current margins of its rows. It answers two kinds of request with small arrays whose sum over all
partitions is the sum over all rows, and applies the updates the coordinator sends back:

- `Intercept`: the label sums the intercept is estimated from (`Objective.label_sums`);
- `Grow` (only when splits are selected): for each tree of the batch, the root at level 0 or each
  left child (node 2j) of the level being chosen, each column and each of its codes, the sum of the
  rows' clipped gradients, shape (trees, max(1, nodes / 2), columns, width); the coordinator makes the
  right children from the level above (`Coordinator._level`);
- `Nodes` (where the trees recentre, `Settings.recentres`): each tree's node sums of the rows' clipped
  gradients and hessians at a level, (trees, nodes, 2); its `NodeUpdate` moves the rows' margins, and
  the levels below (the first over all its nodes, `Grow.whole`: the histograms above are of the
  gradients before) and the leaves are summed from the gradients at the moved margins;
- a `Batch`: for each tree of the batch and each leaf, the sum of the rows' clipped gradients and
  hessians, shape (trees, leaves, 2).

All are computed from the margins the batch starts from (moved by a `NodeUpdate` where there is one).

Nothing a partition returns is released as it is: the coordinator adds noise before anything leaves.
"""

from __future__ import annotations

import functools
import math
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
    whole: bool = False  # every node's histograms, not only the left children's


@dataclass(frozen=True)
class Nodes:
    """The request for the gradient and hessian sums of the nodes at `level` of the batch's trees."""

    batch: Batch
    level: int


@dataclass(frozen=True)
class InterceptUpdate:
    margin: np.ndarray  # (trees per round,): added to every row's margins


@dataclass(frozen=True)
class LeafUpdate:
    batch: Batch
    values: np.ndarray  # (trees, leaves): each tree's leaf values as the model stores them


@dataclass(frozen=True)
class NodeUpdate:
    batch: Batch
    level: int
    values: np.ndarray  # (trees, nodes): added to the margins of each node's rows


Request = Intercept | Grow | Nodes | Batch
Update = InterceptUpdate | NodeUpdate | LeafUpdate


# From this many training rows a partition's histograms are summed in `threads` threads, a share of the
# column groups each (NumPy's ufuncs run without the GIL): each group's cells are its own and are summed
# as in one thread, so the sums are the same bits whatever the threads. On 10^6 rows of 10 columns, 2
# threads on 2 cores: a level in 0.6x the time. Below it the threads' hand-over costs more than they
# save. The family decides it on the rows' noisy count (`Run.public_rows`), never the exact one: a job's
# time would otherwise change by seconds exactly when one row took the count across it.
PARALLEL_ROWS = 100_000


def histogram_threads(threads: int, public_rows: int | None, on_cluster: bool) -> int:
    """The threads a partition sums its histograms in: the job's on one machine when the training rows'
    noisy count (`Run.public_rows`) reaches `PARALLEL_ROWS`, else one; a cluster's partitions already
    run side by side, one per worker. Never the exact count: the job's time would change by seconds
    exactly when one row took it across the threshold."""
    many = public_rows is not None and public_rows >= PARALLEL_ROWS
    return threads if many and not on_cluster else 1


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
            return self._histograms(request.batch, request.level, request.whole)
        if isinstance(request, Nodes):
            return self._node_sums(request.batch, request.level)
        return self._node_sums(request, request.depth)

    def _node_sums(self, batch: Batch, level: int) -> np.ndarray:
        """Each tree's gradient and hessian sums of its nodes at `level` (the leaves at its depth)."""
        g, h = self._batch_gradients(batch)
        nodes = 1 << level
        out = np.zeros((batch.trees, nodes, 2))
        for tree in range(batch.trees):
            node = self._node(batch, tree, level)
            k = tree % batch.classes
            out[tree, :, 0] = np.bincount(node, weights=g[:, k], minlength=nodes)
            out[tree, :, 1] = np.bincount(node, weights=h[:, k], minlength=nodes)
        return out

    def apply(self, update: Update) -> None:
        """Move the margins by what the coordinator released."""
        if isinstance(update, InterceptUpdate):
            self.margins += np.asarray(update.margin, dtype=np.float64)[None, :]
            return
        if isinstance(update, NodeUpdate):  # the batch's levels below are summed at the moved margins
            self._move(update.batch, update.level, update.values)
            self._gradients = (update.batch.number, *self.objective.gradients(self.margins, self.labels))
            return
        self._move(update.batch, update.batch.depth, update.values)
        self._nodes, self._gradients, self._routing = {}, None, None

    def _move(self, batch: Batch, level: int, values: np.ndarray) -> None:
        """Each row's margins plus its node's value at `level` of each tree."""
        values = np.asarray(values, dtype=np.float64)
        for tree in range(batch.trees):
            node = self._node(batch, tree, level)
            self.margins[:, tree % batch.classes] += np.take(values[tree], node)

    def _batch_gradients(self, batch: Batch) -> tuple[np.ndarray, np.ndarray]:
        """The gradients the batch is fitted on (the margins before it, or after its `NodeUpdate`), kept
        while it grows."""
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

    def _histograms(self, batch: Batch, level: int, whole: bool = False) -> np.ndarray:
        """Each tree's (nodes, columns, width) gradient sums of the root (level 0) or of the level's left
        children (node 2j at row j): the coordinator makes each right child from its parent and its
        sibling (`coordinator.children`), so only the rows in left children are added. Which child is
        added is fixed (always the left), not chosen by the rows: the code path is the same in every
        world; a level's time follows how many rows its left children hold, nanoseconds a row. With
        `whole` every node's rows are added (node j at row j).
        The columns are added in groups (`_joint`): one `np.bincount` per group over its joint codes,
        then each column's sums from the joint histogram, so a row is added once per group, not once
        per column."""
        g, _ = self._batch_gradients(batch)
        columns, width = len(self.features.columns), self.features.width
        nodes = 1 << level if whole else 1 << max(level - 1, 0)
        out = np.zeros((batch.trees, nodes, columns, width))
        together = self._joint if nodes <= JOINT_NODES else [((f,), self.codes[f]) for f in range(columns)]
        lanes = min(self.threads, len(together))
        for tree in range(batch.trees):
            node = self._node(batch, tree, level)
            weights = g[:, tree % batch.classes]
            if level == 0 or whole:
                rows, start = None, node if level else np.zeros(self.rows, np.int32)
                weights = np.ascontiguousarray(weights)
            else:
                rows = np.flatnonzero((node & 1) == 0)
                start, weights = node[rows] >> 1, weights[rows]
            lane_sums = [
                functools.partial(self._add, out[tree], together[lane::lanes], start, weights, rows)
                for lane in range(lanes)
            ]
            others = [_pool(lanes - 1).submit(lane_sum) for lane_sum in lane_sums[1:]]
            lane_sums[0]()  # this thread takes the first share itself
            for done in others:
                done.result()
        return out

    @functools.cached_property
    def _joint(self) -> list[tuple[tuple[int, ...], np.ndarray]]:
        """The columns in groups for levels of up to JOINT_NODES nodes (`groups`), each with its rows'
        joint codes (its columns' codes in mixed radix, one number a row; a lone column's own codes),
        made once: a level then gathers and indexes one array a group, not one a column."""
        widths = tuple(c.width for c in self.features.columns)
        found = []
        for group in groups(widths, JOINT_NODES):
            joint = self.codes[group[0]]
            if len(group) > 1:
                joint = np.zeros(self.rows, np.uint16)
                for f in group:
                    joint *= np.uint16(widths[f])
                    joint += self.codes[f]
            found.append((group, joint))
        return found

    def _add(
        self,
        out: np.ndarray,
        share: list[tuple[tuple[int, ...], np.ndarray]],
        start: np.ndarray,
        weights: np.ndarray,
        rows: np.ndarray | None,
    ) -> None:
        """One lane's groups of columns into `out` (nodes, columns, width), over `rows` (None: all) whose
        node is `start`: a row's cell of a group's joint histogram is its node, then its joint code.
        Each column's cells are its own."""
        nodes = out.shape[0]
        for group, joint in share:
            shape = [self.features.columns[f].width for f in group]
            cells = start * np.int32(math.prod(shape))
            cells += joint if rows is None else joint.take(rows)
            hist = np.bincount(cells, weights, minlength=nodes * math.prod(shape)).reshape(nodes, *shape)
            for i, (f, codes) in enumerate(zip(group, shape, strict=True)):
                others = tuple(1 + j for j in range(len(group)) if j != i)
                out[:, f, :codes] = hist.sum(axis=others) if others else hist


# Levels of up to this many nodes (those of trees of depth 6 or less) add the columns in groups whose
# joint codes a partition makes once (`Partition._joint`); deeper levels one column at a time.
JOINT_NODES = 16
# A group's joint histogram has at most this many cells (nodes x its columns' codes multiplied), 2**15
# float64 (256 KiB, within a core's L2 cache), so a group's joint code fits in 16 bits. On the 10^6
# rows' 10 columns (8 of 34 codes, one of 5, one of 3: pairs, the two narrow ones together) a level's
# adds took 0.46x (root) to 0.52x (level 5) the time of one bincount per column, one thread, with the
# joint codes made at each level; made once (`Partition._joint`), the trainer's CPU went a further 0.89x.
GROUP_CELLS = 1 << 15


@functools.lru_cache(maxsize=256)
def groups(widths: tuple[int, ...], nodes: int) -> list[tuple[int, ...]]:
    """The columns (of these public `widths`: codes each) in groups whose joint histogram at `nodes`
    nodes has at most GROUP_CELLS cells (a column wider than that alone): widest first, each into the
    first group it fits."""
    found: list[list[int]] = []
    cells: list[int] = []
    for f in sorted(range(len(widths)), key=lambda f: -widths[f]):
        width = widths[f]
        at = next((i for i, c in enumerate(cells) if c * width <= GROUP_CELLS), None)
        if at is None:
            found.append([f])
            cells.append(nodes * width)
        else:
            found[at].append(f)
            cells[at] *= width
    return [tuple(sorted(group)) for group in found]
