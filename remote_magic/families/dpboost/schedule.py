"""Every noisy release a DP training asks for, in order, from its public settings alone.

A release is the kind of noise (`gaussian` sums, or a noisy `top1` of scores), the bound by which one
row moves what is noised (L2 for sums, per score for a top-1) and its rho: the sketch's Gaussian (one,
over the sketched columns' counts: one row moves each column's counts by one), the intercept's, then
per batch of rounds each level's split selections (one per tree, or per tree a column and one per node;
each level's rho its share, `Settings.select_rho`; where the trees recentre, the sums of the nodes at
`RECENTRE_DEPTH` before that level's; at `Settings.node_level` the level's split and then each node's
threshold, the nodes' together charged once: parallel composition) and the leaves' gradient and
hessian sums. The
coordinator asks exactly these (a test runs it against this list), so the trusted parent, which never
sees a row, checks each request a worker sends against the trainer's own settings: a worker cannot state
a smaller bound, or a different rho, than the proof has for that release.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from .accounting import Scales
from .settings import RECENTRE_DEPTH, Settings


@dataclass(frozen=True)
class Release:
    """One noisy release: its noise is that of `rho`; it is charged `charge` (None: `rho`), 0 for the
    second and later of a level's per-node selections, whose nodes hold disjoint rows."""

    kind: Literal["gaussian", "top1"]
    bound: float
    rho: float
    charge: float | None = None

    @property
    def cost(self) -> float:
        return self.rho if self.charge is None else self.charge


def releases(
    settings: Settings,
    rho: float,
    sketched_columns: int,
    sketch_rho: float,
    continuing: bool,
    count: float | None = None,
) -> Iterator[Release]:
    """The releases of a training with budget `rho`, of which `sketch_rho` pays for the sketch of
    `sketched_columns` columns (none: 0 and 0.0), continuing a base model or not. Settings whose rounds
    wait for the intercept's row count (`Settings.waits_for_count`) end after the intercept unless
    `count`, the count that release gave, is passed: the rounds, and so every later release, follow
    from it."""
    if sketched_columns:
        yield Release("gaussian", math.sqrt(sketched_columns), sketch_rho)
        rho = rho - sketch_rho
    objective = settings.objective_()
    waits = settings.waits_for_count(continuing)
    scales = settings.scales(rho, continuing=continuing)
    if scales.sigma_intercept is not None:
        yield Release("gaussian", objective.intercept_bound, settings.intercept_share * rho)
    if waits and count is None:
        return
    settings = settings.for_count(count, rho)
    scales = settings.scales(rho, continuing=continuing)
    done = 0
    while done < settings.rounds:
        rounds = min(settings.batch_size, settings.rounds - done)
        if scales.sigma_select is not None:
            for level in range(settings.max_depth):
                if settings.recentres and level == RECENTRE_DEPTH:
                    yield from leaf_releases(settings, scales, rounds, nodes=True)
                yield from level_releases(settings, scales, level, rounds * objective.trees_per_round)
        yield from leaf_releases(settings, scales, rounds)
        done += rounds


def level_releases(settings: Settings, scales: Scales, level: int, trees: int) -> Iterator[Release]:
    """A level's selections for `trees` trees, tree by tree: one each; or the level's split (with
    `node_splits` its column) and then each node's own, the nodes' charged once between them."""
    bound, rho = settings.select_bound, settings.select_rho(scales, level)
    nodes = 1 << level
    if settings.node_splits:
        first, each = rho, rho
    elif level == settings.node_level:
        first, each = (1.0 - settings.node_share) * rho, settings.node_share * rho
    else:
        yield from [Release("top1", bound, rho)] * trees
        return
    for _ in range(trees):
        yield Release("top1", bound, first)
        yield Release("top1", bound, each)
        yield from [Release("top1", bound, each, charge=0.0)] * (nodes - 1)


def leaf_releases(
    settings: Settings, scales: Scales, rounds: int, nodes: bool = False
) -> tuple[Release, Release]:
    """A batch of `rounds` rounds' gradient and hessian sums: one row moves each tree's sums, and the
    batch has `rounds` trees per class, so the L2 bound grows as sqrt(rounds) and the rho as rounds.
    Where the trees recentre (`Settings.recentres`) the sums at depth RECENTRE_DEPTH (`nodes`; one row is
    in one node, as in one leaf) take `recentre_share` of that rho and the leaves the rest, so the batch
    costs what it did."""
    objective = settings.objective_()
    g, h = objective.gradient_bound, objective.hessian_bound
    scale = math.sqrt(rounds)
    share = 1.0
    if settings.recentres:
        share = settings.recentre_share if nodes else 1.0 - settings.recentre_share
    return (
        Release("gaussian", g * scale, share * rounds * g * g / (2 * scales.sigma_g**2)),
        Release("gaussian", h * scale, share * rounds * h * h / (2 * scales.sigma_h**2)),
    )
