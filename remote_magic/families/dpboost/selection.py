"""DP split selection: each level's split chosen by the exponential mechanism on gradient histograms.

Random structure wastes most splits on a table whose signal lies in a few columns or in interactions
(nycflights13: 0.71 AUC with no noise at all against XGBoost's 0.79). Here each level of a tree chooses
its split among a public list of candidates (every numeric candidate threshold with missing values sent
either way; for a text column each single level and some random subsets of levels, drawn from the
coordinator's RNG) by the exponential mechanism (report-noisy-max with Gumbel noise,
`select(scores, linf, rho)`; the server passes OpenDP's noisy top-1, each score offset by a public prior
that gives every column the same weight, below) on the score

    S = sum over the children c of |G_c|

with G_c the sum of the rows' clipped gradients in child c: a split scores high when it separates rows
whose margins should go up from rows whose margins should go down. Adding or removing one row changes
one G_c by at most its gradient bound `g_t`, so S moves by at most `g_t`, however many rows there are,
while a good split's score grows with the rows. (The Newton gain sum G_c^2 / (H_c + lambda) moves by up to
3 g_t^2 and grows only with the squared mean gradient: on nycflights13 at epsilon 4 it chose little better
than chance.)

Two shapes: an oblivious tree (one split for all the nodes of a level, its score summed over them, as
CatBoost's trees), or a column per level chosen on the nodes' best scores summed, then each node's own
split on that column (`node_splits`): the nodes hold disjoint rows, so their selections together cost
one selection (parallel composition); a level then costs two selections.

A column and split chosen at every node on its own (one noisy top-1 per node, a level's together one selection
by parallel composition, the cost of an oblivious level) does not help either. On nycflights13
(benchmarks/dp_trainer.py's rows, `--validation`; AUC points below XGBoost, noise seeds 0-5 at epsilon 4, 0-1
otherwise): with no noise 0.5 above (oblivious 1.4 below), but 1.72 below at epsilon 4 (oblivious 1.74) and
5.1 at epsilon 1 (oblivious 3.8). The selection noise is the cause: a node at depth 5 holds 1/32 of the rows,
and its choice is mostly noise. At epsilon 1 (seed 0) with exact choices and noisy leaves it would be 0.7
below (oblivious 2.6), with noisy choices and exact leaves 4.7 (oblivious 3.1). A node's own split at the two
top levels and one split per level below: 1.53 at epsilon 4 on validation, but 1.83 against 1.67 on the
evaluation rows (seeds 0-1), and 3.5 against 3.4 at epsilon 1. One split per subtree of the top levels
instead: no better (two subtrees: 1.38 at epsilon 4, as the above on seeds 0-1; 4.2 at epsilon 1). The first
10 trees' structures reused for the other 40 (each selection with 5x the budget): 5 points below at both. A
choice per node also takes 2**level OpenDP draws per tree and level (63 per tree of depth 6, 2.8 ms each over
flights' 1,100 candidates at load 9 on 2 cores). Nor does the oblivious level gain from spending the
selections' budget on the early trees, whose gradients say most (round t's share in proportion to
exp(-t/tau)): tau 10 and 25 of 50 rounds, 4.6 and 3.9 points below at epsilon 1, 2.1 and 1.9 at epsilon 4
(evenly: 3.8 and 1.8, seeds 0-1).

Fewer or other candidates do not help either; a prior over them does at epsilon 1. Measured on
nycflights13's evaluation rows (benchmarks/dp_trainer.py, AUC points below XGBoost, mean over noise and
structure seeds 0-7 (sd), at epsilon 1 / 4; load 2-10): today's candidates (32 per numeric column over the
declared range, 64 random level subsets, about 920 in all) 3.44 (0.16) / 1.67 (0.10), with no noise (epsilon
10^4, seeds 0-1) 1.65, so at epsilon 4 the trees' shape is the whole gap.
- Fewer: a candidate at each half-integer of the integer columns (month 11, day 30, weekday 6, hour 24
  instead of 32 each, duplicates of one split gone) 3.66 / 1.74; 16 per numeric column 3.75 / 2.07.
- More: 64 per numeric column 3.26 (0.07) / 1.68 (no noise 1.48); 128 level subsets 3.50 / 1.72 (no noise
  1.40); 128 per numeric column and 256 subsets: no noise 1.35, the candidates' best, but not at epsilon 4
  (below).
- Quantiles of the DP sketch (`--sketch`, 10% of rho) instead of the declared range: 3.50 / 1.86 (seed 0 at
  epsilon 4), no noise 1.51; with 128 quantiles, no noise 1.45.
- A public prior instead of fewer candidates: each column the same total weight, shared by its candidates
  (the scores offset by b ln(1 / the column's candidates), b the Gumbel scale; no score's sensitivity
  changes), so the 308 candidates of `dest` no longer outweigh a numeric column's 64 by 5 to 1: **3.02
  (0.15) / 1.61 (0.14)**, better at epsilon 1 on all 8 seeds (by 0.27 to 0.57), at epsilon 4 on 6 of 8 and
  within the seeds' spread. The prior's power 0.5: 3.24 / 1.73; 1.5: 3.02 / 1.72. With 64 per numeric column
  3.12 / 1.71; with 128 subsets 3.16 / (1.63, 1.70 on seeds 0-1); with 128 per numeric column and 256
  subsets 3.04 (0.11) / 1.60 (0.09). At epsilon 0.5 / 2 (`--seeds 8`): 4.86 / 2.11 against 5.45 / 2.12; on
  the demo's rows within the seeds' spread (seeds 0-3, 0.06 to 0.09 less at each epsilon). Kept
  (`Candidates.prior`, `weighted`), though at epsilon 4 within the seeds' spread: there the gap is the
  trees' shape, which no candidate set here moves by more.
- The prior adapted to the training's own released choices (`adapted`): each column's weight times
  (6 + the levels of earlier trees that chose it) ** 2, so the columns the noisy selections keep finding
  are tried more often (post-processing of released splits: no score moves further, nothing is charged).
  **2.46 (0.13) / 1.60 (0.12)** against 3.02 / 1.61, better at epsilon 1 on all 8 seeds; at 0.5 3.60
  against 4.86. On validation rows (seeds 0-3, epsilon 1 / 4): power 1 2.71 / 1.62, power 3 2.58 /
  1.55, pseudo-count 12 (power 2) 2.58 / 1.57, 2 (power 1) 2.86 / 1.57, counts per level instead of over
  all levels 3.19 / 1.54; power 2 2.64 / 1.39 (default 3.48 / 1.62). On the demo's validation rows
  (seeds 0-3) 0.09 to 0.18 points better at each epsilon; flights' arrival delay clipped to -60..180 as a
  regression RMSE 36.73 / 35.78 against 36.93 / 35.86, and in 4 classes log loss 1.031 / 0.997 against
  1.049 / 1.003 (validation rows, seeds 0-1). Kept. Leaning also towards the numeric thresholds chosen
  before (each candidate's share of its column's weight times (1 + its choices), or (2 + its choices)
  ** 2): 2.70 / 1.43 and 2.77 / 1.50 against 2.64 / 1.39 (validation rows, seeds 0-3). (With
  `node_splits` the column is chosen on the nodes' best scores, without any prior.)

The score, not only the shape, costs at no noise: the oblivious level scored by XGBoost's gain
`sum G_c^2 / (H_c + 1)` instead of `|G_c|` is 0.62 below XGBoost with no noise (validation rows, seeds 0-1:
0.70, 0.54; `|G|`: 1.46, 1.22), and 0.38 at 100 rounds (`|G|`: 0.53): the `|G|` score gives nothing to a
split whose children's gradients have the same sign. Scores with a bounded sensitivity that do credit such
splits lose more to their noise than they gain (validation rows, seeds 0-1, no noise / epsilon 4 / 1):
`|G_c| / sqrt(n_c + l)` with the children's row counts (one row moves it by at most `1.5 g_t / sqrt(l)`,
scaled to `g_t`): l = 300 1.09 / 3.87 / 7.10, l = 3000 1.14 / 2.45 / 5.70; the centred
`|G_L - n_L G / n|` per node (one row moves it by less than `2 g_t`) 1.23 / 2.29. Maddock et al.'s one
column per tree (level 0 chooses the column, the levels below a split on it): 8.33 / 8.11 at epsilon
0.5 / 1.

Recentring partway down a tree did not pay on both tables at first. After level 3 of each tree, its 8 nodes'
(G, H) were released as a leaf's are (the same sensitivity, a share c of the leaves' budget; the leaves' noise
sd grows by 1 / sqrt(1 - c)) and each node's shrunk Newton step added to its rows' margins; levels 3-5 were
then scored, and the leaves fitted, on the gradients at those margins (leaf value = node step + leaf step,
still an ordinary tree). With no noise: 0.94 below XGBoost against 1.46 (validation rows, seed 0; after levels
2 and 4: 1.27; after each of levels 1-5: 1.20; the recentred gradients for the scores only, the leaves on the
first ones: 1.27). On flights' evaluation rows (seeds 0-7, with the adaptive prior, epsilon 1 / 4): c = 0.05
2.24 (0.14) / 1.49 (0.09), c = 0.1 2.33 (0.04) / 1.53 (0.12), against 2.46 / 1.60. But on the demo's
evaluation rows (seeds 0-3, epsilon 0.5 / 1) c = 0.05 0.36 / -0.17 against 0.11 / -0.33 (worse on all 4 seeds
at 0.5), c = 0.1 0.24 / -0.23, 0.2 0.37 / -0.20, 0.3 0.44 / -0.19, scores only 0.18 / -0.19 (c = 0.05) and
0.27 / -0.15 (0.1), so the loss there is in the splits the recentred scores choose; at epsilon 1 one table
gains where the other loses, so no public rule on the budget would choose for them. Not adopted. (The released
row count now tells the tables apart: a cell that leaves its rounds unset trains 100 where the count says the
sample is large, benchmarks/dp_trainer.py; recentring on top of that: below. The selection's share of the
budget at those 100 rounds, 0.4 or 0.6 instead of 0.5: 1.11 and 1.20 points below XGBoost against 1.04 at
epsilon 4, validation rows, seeds 0-3.)

Where the released count says the sample is large, level l's selections get a share of the round's
selection budget in proportion to 2 ** l (`Settings.level_shares`): flights at epsilon 4 0.92 against 1.08
on validation rows (the top levels more, 0.7 ** l: 1.16); a column chosen first, then its threshold, at
half a selection's rho each: 1.36. The numbers: benchmarks/dp_trainer.py.

Where the same count says the sample is large, each tree now also recentres at depth 3
(`Settings.recentres`, `RECENTRE_DEPTH`, a share `LARGE_RECENTRE_SHARE` = 0.2 of the leaves' budget), as
above but with the node's whole shrunk Newton step (not times the learning rate; its leaves' steps are);
the demo and flights at epsilon 0.5 and 1 train the same models as before. On flights' validation rows
at 100 rounds and 2 ** l shares (AUC points below XGBoost, epsilon 4, seeds 0-7): without 0.95 (0.07);
the node's step times the learning rate c = 0.1 0.91 (0.08), c = 0.2 0.98 (0.09); the whole step c = 0.2
**0.86 (0.10)**, better on 7 of 8 seeds; at epsilon 2 (seeds 0-5) 1.46 (0.08) against 1.52 (the
learning-rate step, c = 0.1: 1.58). Seeds 0-3 at epsilon 4 (without: 0.92): c = 0.05 0.95, after level 2
1.00, after level 4 0.93, the node's step times 0.3 (c = 0.1) 1.01, the whole step at c = 0.1 0.93 and
0.05 0.96. (On the evaluation rows, seeds 0-7, measured while screening: the learning-rate step at
c = 0.1 1.09 (0.06) / 1.51 (0.07) at epsilon 4 / 2, the whole step at c = 0.1 1.05 (0.12) / 1.58 (0.09),
against 1.13 (0.07) / 1.59 (0.09).) What else was tried with it: benchmarks/dp_trainer.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from .features import Features
from .structure import Batch

# Random level subsets per text column, besides each single level (16: 0.7 AUC points less on flights).
RANDOM_SUBSETS = 64
# The adaptive prior (`adapted`): a column's weight is (ADAPT_PSEUDO + the levels that chose it so far)
# ** ADAPT_POWER times its public one. 6 is one default tree's levels.
ADAPT_PSEUDO = 6.0
ADAPT_POWER = 2.0


@dataclass(frozen=True)
class Candidates:
    """The splits a level may choose: column, numeric candidate index, missing direction, text levels
    that go right (one row each). Every split is listed twice: the first half sends missing values left,
    the second half is the same splits in the same order sending them right (`scores` relies on it)."""

    feature: np.ndarray
    split: np.ndarray
    default_left: np.ndarray
    right: np.ndarray  # (candidates, levels)
    prior: np.ndarray  # log public weight: each column the same total, shared by its candidates

    def __post_init__(self) -> None:
        half = len(self.feature) // 2
        if not (
            len(self.feature) == 2 * half
            and np.array_equal(self.feature[:half], self.feature[half:])
            and np.array_equal(self.split[:half], self.split[half:])
            and np.array_equal(self.right[:half], self.right[half:])
            and self.default_left[:half].all()
            and not self.default_left[half:].any()
        ):
            raise ValueError("candidates list each split with missing values left, then the same right")


def candidates(features: Features, rng: np.random.Generator) -> Candidates:
    """Every split of every usable column, each once, missing values left or right (drawn without the
    rows). Only a text column's random subsets are drawn anew; with none, every level has the same list."""
    fixed = fixed_candidates(features)
    if fixed is not None:
        return fixed
    width = max((c.splits for c in features.columns if c.kind == "categorical"), default=0)
    feature, split, right = [], [], []
    for f in features.usable():
        column = features.columns[f]
        if column.kind == "categorical":
            levels = column.splits
            sets = np.concatenate(
                [np.eye(levels, width, dtype=bool), rng.random((RANDOM_SUBSETS, width)) < 0.5]
            ) & (np.arange(width) < levels)
            if levels == 1:  # only where no column has two levels (`usable`): the one level alone
                sets = sets[:1]
            else:
                # A subset and its complement split alike: keep the one without level 0, each once (a
                # candidate listed twice would be chosen twice as often). No set is then empty or full
                # (XGBoost refuses an empty one).
                sets[sets[:, 0]] ^= np.arange(width) < levels
                sets = np.unique(sets[sets.any(axis=1)], axis=0)
            right.append(sets)
            feature.append(np.full(len(sets), f))
            split.append(np.zeros(len(sets), np.int64))
        else:
            feature.append(np.full(column.splits, f))
            split.append(np.arange(column.splits))
            right.append(np.zeros((column.splits, width), dtype=bool))
    return _both_ways(np.concatenate(feature), np.concatenate(split), np.concatenate(right))


def fixed_candidates(features: Features) -> Candidates | None:
    """The candidates when no usable column is text: the same at every level (drawing nothing), so a
    training builds them once (read-only); None when a text column's subsets are drawn per level."""
    usable = features.usable()
    if features.text[usable].any():
        return None
    counts = features.splits[usable]
    feature = np.repeat(usable, counts)
    split = np.arange(len(feature)) - np.repeat(np.cumsum(counts) - counts, counts)
    options = _both_ways(feature, split, np.zeros((len(feature), 0), dtype=bool))
    for array in (options.feature, options.split, options.default_left, options.right, options.prior):
        array.flags.writeable = False
    return options


def _both_ways(feature: np.ndarray, split: np.ndarray, right: np.ndarray) -> Candidates:
    """Each split twice, missing values left then right, with the prior."""
    both = np.concatenate([np.ones(len(feature), bool), np.zeros(len(feature), bool)])
    feature = np.tile(feature, 2)
    _, column, count = np.unique(feature, return_inverse=True, return_counts=True)
    return Candidates(feature, np.tile(split, 2), both, np.tile(right, (2, 1)), -np.log(count[column]))


def weighted(scores: np.ndarray, prior: np.ndarray, linf: float, rho: float) -> np.ndarray:
    """Scores with a candidate list's log prior (`Candidates.prior`, or `adapted`'s) added in units of
    the selection's Gumbel scale `linf / sqrt(2 rho)` (OpenDP's noisy top-1 at `rho`): the noisy top-1
    then draws a column in proportion to its prior weight times exp(score / scale), whatever its number
    of candidates. The offsets do not depend on the rows, so no score moves further than before."""
    return scores + linf / np.sqrt(2 * rho) * prior


def adapted(options: Candidates, chosen: np.ndarray) -> np.ndarray:
    """The candidates' log prior moved towards the columns this training's earlier selections chose
    (`chosen[f]`: how many levels of earlier trees, or of earlier trees of the batch, chose column f):
    each column's weight times (ADAPT_PSEUDO + chosen[f]) ** ADAPT_POWER. Those choices are released
    already (the model shows them), so this is post-processing: it moves no score by a row. Only the
    prior array is made, not a new `Candidates` (whose checks cost more than the level's scores)."""
    return options.prior + ADAPT_POWER * np.log(ADAPT_PSEUDO + chosen[options.feature])


def scores(features: Features, hist: np.ndarray, options: Candidates) -> np.ndarray:
    """The score of every candidate at every node of a level, shape (nodes, candidates), from one tree's
    gradient histograms hist (nodes, columns, width) (`Scoring`, for one level)."""
    return Scoring(features, options)(hist)


class Scoring:
    """The scores of one candidate list from a level's histograms: the numeric splits in one step over all
    columns, a text column's from its level subsets, each split's two missing directions together. What
    to gather where depends on the candidates only, so it is worked out once: a training whose candidates
    are fixed (no text column) scores every level of every tree with one `Scoring`, in half the time of
    working it out each level (20 columns, 32 candidates each)."""

    def __init__(self, features: Features, options: Candidates):
        self.size, half = len(options.feature), len(options.feature) // 2
        column = options.feature[:half]
        text = features.text[column]
        numeric = np.flatnonzero(~text)
        f = column[numeric]
        self.columns, width = len(features.columns), features.width
        self.numeric = (_index(numeric), _index(numeric + half))
        # A column's bins 0 .. Q (its missing code is Q + 1); `right` of split k is bins k + 1 .. Q.
        numeric_column = ~features.text
        self.bins = [
            (q, np.flatnonzero((features.splits == q) & numeric_column))
            for q in np.unique(features.splits[f])
        ]
        self.numeric_columns = f
        self.below = f * width + options.split[numeric]  # cells of the (columns * width) histogram
        self.missing = f * width + features.missing_codes[f]
        self.text: list[tuple[int, int, int, tuple[np.ndarray, np.ndarray], np.ndarray]] = []
        for c in np.unique(column[text]):
            splits, missing_code = features.splits[c], features.missing_codes[c]
            at = np.flatnonzero(column == c)
            right = options.right[at][:, :splits].T.astype(np.float64)
            self.text.append((c, splits, missing_code, (at, at + half), right))

    def __call__(self, hist: np.ndarray) -> np.ndarray:
        nodes = hist.shape[0]
        out = np.empty((nodes, self.size))
        if len(self.numeric_columns):
            bins = np.zeros((nodes, self.columns))
            for q, at in self.bins:
                bins[:, at] = hist[:, at, : q + 1].sum(axis=-1)
            total = np.take(bins, self.numeric_columns, axis=1)
            below = np.take(np.cumsum(hist, axis=-1).reshape(nodes, -1), self.below, axis=1)
            right = total - below
            missing = np.take(hist.reshape(nodes, -1), self.missing, axis=1)
            _place(out, self.numeric, total - right, right, missing)
        for c, splits, missing_code, at, subsets in self.text:
            g = hist[:, c, :]
            right = g[:, :splits] @ subsets
            left = g[:, :missing_code].sum(axis=1, keepdims=True) - right
            _place(out, at, left, right, g[:, missing_code][:, None])
        return out


def _index(at: np.ndarray) -> np.ndarray | slice:
    """Indices as a slice where they are a run (a slice writes faster than a list of indices)."""
    if len(at) and np.array_equal(at, np.arange(at[0], at[0] + len(at))):
        return slice(int(at[0]), int(at[0]) + len(at))
    return at


def _place(
    out: np.ndarray,
    at: tuple[np.ndarray | slice, np.ndarray | slice],
    left: np.ndarray,
    right: np.ndarray,
    missing: np.ndarray,
) -> None:
    """The scores |G_left| + |G_right| of some splits with their missing rows' sum sent left (at `at[0]`)
    and sent right (at `at[1]`)."""
    out[:, at[0]] = np.abs(left + missing) + np.abs(right)
    out[:, at[1]] = np.abs(left) + np.abs(right + missing)


def choose(batch: Batch, tree: int, level: int, options: Candidates, index: np.ndarray) -> Batch:
    """The batch with one tree's level set to candidate `index[j]` at node j (all of one column)."""
    nodes = 1 << level
    feature, split = batch.feature.copy(), batch.split.copy()
    right, default_left = batch.right.copy(), batch.default_left.copy()
    feature[tree, level] = options.feature[index[0]]
    split[tree, level, :nodes] = options.split[index]
    default_left[tree, level, :nodes] = options.default_left[index]
    # Without a usable text column the candidates hold no levels, though an unusable one widens `right`.
    right[tree, level, :nodes, :] = False
    right[tree, level, :nodes, : options.right.shape[-1]] = options.right[index]
    return replace(batch, feature=feature, split=split, right=right, default_left=default_left)
