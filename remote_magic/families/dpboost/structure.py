"""The split structure of a batch of trees, drawn without looking at any row, and how rows follow it.

Every tree is complete, of depth `depth`; node `j` (0-based) of level `l` is node `2**l - 1 + j` in the
model, and leaf `j` is node `2**depth - 1 + j` (breadth-first, left child first). All nodes of one level
split on the same column (drawn at random per tree and level); each node draws its own split: a numeric
candidate, or a random subset of a text column's levels that goes right, and where a missing value goes.
The draw uses the coordinator's RNG and the public `Features` only, so the whole structure is public and
may be sent anywhere. (`selection.py` replaces the drawn splits level by level with DP-selected ones.)
One column per level, not per node, keeps routing to one read of one column per level (a column per node,
each row's code gathered from the flattened (columns * rows) codes, routed 3.4x slower: 0.14 s against
0.04 s per tree of depth 6 on 10^6 rows; `selection.py` says why it was not worth it).

Routing is one lookup per level over whole columns: with each node's split written as a table over the
column's codes (1 = right), a row's node at the next level is `2 * node + table[node, code]`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .features import Features


@dataclass(frozen=True)
class Batch:
    """A batch of trees fitted on the same gradients: `rounds` boosting rounds of `classes` trees each,
    in the model's order (round by round, class by class within a round)."""

    number: int
    rounds: int
    classes: int
    feature: np.ndarray  # (trees, depth): the column each level splits on
    split: np.ndarray  # (trees, depth, nodes): a numeric node's candidate index ("x < candidate" goes left)
    right: np.ndarray  # (trees, depth, nodes, levels): a text node's levels that go right
    default_left: np.ndarray  # (trees, depth, nodes): where a missing value goes

    @property
    def trees(self) -> int:
        return self.feature.shape[0]

    @property
    def depth(self) -> int:
        return self.feature.shape[1]

    @property
    def leaves(self) -> int:
        return 1 << self.depth

    def tables(self, features: Features) -> np.ndarray:
        """Each node's split as a table over its column's codes: (trees, depth, nodes, width), 1 = right."""
        width = features.width
        codes = np.arange(width)
        splits, text = features.splits[self.feature], features.text[self.feature]
        numeric_right = (codes > self.split[..., None]) & (codes <= splits[..., None, None])
        levels = np.zeros(self.right.shape[:3] + (width,), dtype=bool)
        span = min(self.right.shape[3], width)
        levels[..., :span] = self.right[..., :span]
        text_right = levels & (codes < splits[..., None, None])
        table = np.where(text[..., None, None], text_right, numeric_right)
        missing = codes == features.missing_codes[self.feature][..., None, None]
        table |= missing & ~self.default_left[..., None]
        return table.astype(np.uint8)

    def to_dict(self) -> dict:
        return {
            "number": self.number,
            "rounds": self.rounds,
            "classes": self.classes,
            "feature": self.feature.tolist(),
            "split": self.split.tolist(),
            "right": self.right.astype(np.uint8).tolist(),
            "default_left": self.default_left.astype(np.uint8).tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Batch:
        return cls(
            int(data["number"]),
            int(data["rounds"]),
            int(data["classes"]),
            np.asarray(data["feature"], dtype=np.int64),
            np.asarray(data["split"], dtype=np.int64),
            np.asarray(data["right"], dtype=bool),
            np.asarray(data["default_left"], dtype=bool),
        )


def draw(
    rng: np.random.Generator,
    features: Features,
    number: int,
    rounds: int,
    classes: int,
    depth: int,
    weights: np.ndarray | None = None,
) -> Batch:
    """A batch's structure: every choice uniform over the public candidates, nothing from the rows; with
    `weights` (public, one per feature column: `prior.column_weights`), each level's column drawn in
    proportion to them."""
    usable = features.usable()
    if len(usable) == 0:
        raise ValueError("no feature column has a public split candidate")
    trees, nodes = rounds * classes, 1 << (depth - 1)
    if weights is None:
        feature = rng.choice(usable, size=(trees, depth))
    else:
        share = np.asarray(weights, dtype=np.float64)[usable]
        feature = rng.choice(usable, size=(trees, depth), p=share / share.sum())
    splits = features.splits[feature][..., None]
    split = np.minimum((rng.random((trees, depth, nodes)) * splits).astype(np.int64), splits - 1)
    default_left = rng.random((trees, depth, nodes)) < 0.5
    width = max((c.splits for c in features.columns if c.kind == "categorical"), default=0)
    right = rng.random((trees, depth, nodes, width)) < 0.5
    if width:
        text = features.text[feature]
        right &= (np.arange(width) < splits[..., None]) & text[..., None, None]
        # XGBoost needs a level going right, and a split that sends every level right splits nothing:
        # move one level across.
        count = right.sum(axis=-1)
        stuck = text[..., None] & ((count == 0) | ((count == splits) & (splits >= 2)))
        flip = np.minimum((rng.random(stuck.shape) * splits).astype(np.int64), splits - 1)
        t, lv, nd = np.nonzero(stuck)
        right[t, lv, nd, flip[t, lv, nd]] ^= True
    return Batch(number, rounds, classes, feature, split, right, default_left)


def descend(
    batch: Batch, tables: np.ndarray, codes: np.ndarray, tree: int, node: np.ndarray, start: int, stop: int
) -> np.ndarray:
    """Each row's node at level `stop` of one tree, from its node at level `start` (level `depth`: its
    leaf, 0 .. 2**depth - 1)."""
    width = tables.shape[-1]
    node = node.astype(np.int32, copy=True)
    for level in range(start, stop):
        table = tables[tree, level].reshape(-1)
        index = node * width
        index += codes[batch.feature[tree, level]]
        node *= 2
        node += np.take(table, index)
    return node
