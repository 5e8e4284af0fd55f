"""The half of the trainer that sees only sums: it draws the structure, adds the noise, makes the model.

The coordinator never touches a row. Where the rows live decides only who adds the partitions' sums up:
one process calls each `Partition` in turn, a Dask executor submits to its workers and gathers, a
federated coordinator asks each data owner's server. The caller hands that in as two callables:

    sums(request) -> the sum over all partitions of `Partition.sums(request)`
    apply(update) -> None, after every partition has applied `Partition.apply(update)`

`noise(values, l2, rho) -> values` releases a vector whose entries one row moves by at most `l2` in L2
norm, at a cost of `rho` (the server passes OpenDP's Gaussian through its release desk; a test passes a
seeded NumPy Gaussian, so the same seeds give the same model wherever the rows are). With split selection,
`select(scores, linf, rho) -> index` releases the index of (about) the highest score, each of which one
row moves by at most `linf`, at a cost of `rho` (OpenDP's noisy top-1; a test passes seeded Gumbel noise).
`noise_many([(values, l2, rho), ...])`, where given, asks a batch's gradient and hessian releases in one
round trip; they are the same two releases, in the same order, as two `noise` calls; `select_many`,
where given, asks a level's per-node selections (`Settings.node_level`) together the same way. `weights`,
where given, are public column weights the random structure draws each level's column by (`prior.py`).
Settings that leave the rounds to the row count (`Settings.rounds_from_count`) get them from the count the
intercept's release gives (`settings` holds the chosen ones after it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from .booster import Tree, base_score_of, margin_of_base_score, model_json, parse_base
from .features import Features
from .partition import (
    Grow,
    Intercept,
    InterceptUpdate,
    LeafUpdate,
    Nodes,
    NodeUpdate,
    Request,
    Update,
)
from .schedule import leaf_releases
from .selection import Candidates, Scoring, adapted, candidates, choose, fixed_candidates, weighted
from .settings import NODE_PRIOR, RECENTRE_DEPTH, Settings
from .structure import Batch, draw

Noise = Callable[[list[float], float, float], list[float]]
NoiseMany = Callable[[list[tuple[list[float], float, float]]], list[list[float]]]
Select = Callable[[list[float], float, float], int]
SelectMany = Callable[[list[tuple[np.ndarray, float, float]]], list[int]]
Sums = Callable[[Request], np.ndarray]
Apply = Callable[[Update], None]


@dataclass(frozen=True)
class Released:
    """The trained model (XGBoost JSON) and what training cost."""

    model: bytes
    rho: float
    sigma_g: float
    sigma_h: float
    sigma_intercept: float | None
    sigma_select: float | None


class Coordinator:
    """Runs one training job over sums: `requests()` in order, `release()` each request's sums (and
    apply the update it returns, if any, before asking for the next request)."""

    def __init__(
        self,
        features: Features,
        settings: Settings,
        rho: float,
        noise: Noise,
        base_model: bytes | None = None,
        select: Select | None = None,
        noise_many: NoiseMany | None = None,
        weights: np.ndarray | None = None,
        select_many: SelectMany | None = None,
    ):
        self.features = features
        self.settings = settings
        self.objective = settings.objective_()
        self.noise = noise
        self.noise_many = noise_many
        self.select = select
        self.select_many = select_many
        self.weights = weights  # the random structure's public column prior (prior.py), if any
        if settings.split_share > 0 and select is None:
            raise ValueError("split selection needs a select function")
        self.base = parse_base(base_model, features, self.objective) if base_model is not None else None
        continuing = self.base is not None
        if not settings.waits_for_count(continuing):  # else the intercept's count sets the rounds
            self.settings = settings = settings.for_count(None, rho)
        self.scales = settings.scales(rho, continuing=continuing)
        self.rho = rho
        self.rng = np.random.default_rng(settings.seed)
        self._fixed = fixed_candidates(features)
        self._scoring = Scoring(features, self._fixed) if self._fixed is not None else None
        self.chosen = np.zeros(len(features.columns))  # how many selected levels chose each column
        self._above: np.ndarray | None = None  # the growing batch's histograms of the level above
        self._offset: np.ndarray | None = None  # the growing batch's node values at RECENTRE_DEPTH
        self.trees: list[Tree] = []
        self.spent = 0.0
        margin = np.asarray(settings.base_margin, dtype=np.float64) if settings.base_margin else None
        self.start = margin if margin is not None else self.objective.initial_margin()

    def requests(self) -> Iterator[Request]:
        """The requests of the whole job, in order; each batch's structure is drawn when it is due."""
        if self.scales.sigma_intercept is not None:
            yield Intercept()
        settings = self.settings  # its rounds chosen by now
        done = 0
        while done < settings.rounds:
            rounds = min(settings.batch_size, settings.rounds - done)
            self._growing = draw(
                self.rng,
                self.features,
                done // settings.batch_size,
                rounds,
                self.objective.trees_per_round,
                settings.max_depth,
                self.weights,
            )
            self._offset = None
            if self.scales.sigma_select is not None:
                for level in range(settings.max_depth):
                    recentre = settings.recentres and level == RECENTRE_DEPTH
                    if recentre:
                        yield Nodes(self._growing, level)  # `release` moves the margins
                    yield Grow(self._growing, level, whole=recentre)  # `release` sets the level's splits
            yield self._growing
            done += rounds

    def release(self, request: Request, sums: np.ndarray) -> Update | None:
        """Noise the exact sums of one request and turn them into the update the partitions apply
        (None for a level's histograms: the chosen splits go out with the next request)."""
        if isinstance(request, Intercept):
            return self._intercept(np.asarray(sums, dtype=np.float64))
        if isinstance(request, Grow):
            self._grow(request, np.asarray(sums, dtype=np.float64))
            return None
        if isinstance(request, Nodes):
            return self._recentre(request, np.asarray(sums, dtype=np.float64))
        return self._leaves(request, np.asarray(sums, dtype=np.float64))

    def _level(self, request: Grow, sums: np.ndarray) -> np.ndarray:
        """A level's histograms from the partitions' summed sums (`children`), keeping only the level
        above, and none after the batch's last level."""
        if request.level == 0 or request.whole:
            hist = sums
        else:
            assert self._above is not None, "a batch's levels are grown in order"
            hist = children(self._above, sums)
        self._above = hist if request.level + 1 < request.batch.depth else None
        return hist

    def _grow(self, request: Grow, sums: np.ndarray) -> None:
        assert self.select is not None and self.scales.sigma_select is not None
        hist = self._level(request, sums)
        bound = self.settings.select_bound
        rho = self.settings.select_rho(self.scales, request.level)
        options = self._fixed if self._fixed is not None else candidates(self.features, self.rng)
        scoring = self._scoring if self._scoring is not None else Scoring(self.features, options)
        batch, nodes = request.batch, 1 << request.level
        own = self.settings.node_share if request.level == self.settings.node_level else 0.0
        for tree in range(batch.trees):
            table = scoring(hist[tree])
            if not self.settings.node_splits:
                self.spent += rho
                first = (1.0 - own) * rho
                total = weighted(table.sum(axis=0), adapted(options, self.chosen), bound, first)
                index = np.full(nodes, self.select(total, bound, first))
                self.chosen[options.feature[index[0]]] += 1
                if own:
                    index = self._own(table, options, index[0], bound, own * rho)
            else:
                # The column by its best split at each node, summed; then each node's split on it. The
                # nodes hold disjoint rows, so their selections together cost one selection's rho.
                columns = np.unique(options.feature)
                best = np.stack([table[:, options.feature == f].max(axis=1) for f in columns], axis=1)
                self.spent += 2 * rho
                column = columns[self.select(best.sum(axis=0), bound, rho)]
                at = np.flatnonzero(options.feature == column)
                index = np.array([at[self.select(table[j, at], bound, rho)] for j in range(nodes)])
            batch = choose(batch, tree, request.level, options, index)
        self._growing = batch

    def _own(
        self, table: np.ndarray, options: Candidates, split: int, bound: float, rho: float
    ) -> np.ndarray:
        """Each node's own split among the candidates on the column of the level's `split`, by the node's
        own scores, the level's split given the public prior weight NODE_PRIOR and the others the rest
        evenly (the nodes hold disjoint rows: together one selection at `rho`). Flights at epsilon 4,
        validation rows: 0.79 points below XGBoost against 0.86 with the level's split at every node
        (benchmarks/dp_trainer.py)."""
        at = np.flatnonzero(options.feature == options.feature[split])
        prior = np.where(at == split, np.log(NODE_PRIOR), np.log((1.0 - NODE_PRIOR) / (len(at) - 1)))
        asks = [(weighted(scores[at], prior, bound, rho), bound, rho) for scores in table]
        if self.select_many is not None:
            return at[np.asarray(self.select_many(asks), dtype=np.int64)]
        return np.array([at[self.select(*ask)] for ask in asks])

    def _release(self, values: np.ndarray, l2: float, rho: float) -> np.ndarray:
        return self._release_all([(values, l2, rho)])[0]

    def _release_all(self, releases: list[tuple[np.ndarray, float, float]]) -> list[np.ndarray]:
        """Noise several releases, in order: in one `noise_many` call where there is one."""
        asks = [(values.ravel().tolist(), l2, rho) for values, l2, rho in releases]
        self.spent += sum(rho for _, _, rho in asks)
        if self.noise_many is not None and len(asks) > 1:
            noisy = self.noise_many(asks)
        else:
            noisy = [self.noise(*ask) for ask in asks]
        return [
            np.asarray(drawn, dtype=np.float64).reshape(values.shape)
            for drawn, (values, _, _) in zip(noisy, releases, strict=True)
        ]

    def _intercept(self, sums: np.ndarray) -> InterceptUpdate:
        bound = self.objective.intercept_bound
        rho = self.settings.intercept_share * self.rho
        noisy = self._release(sums, bound, rho)
        if self.settings.rounds_from_count:
            self.settings = self.settings.for_count(self.objective.count(noisy), self.rho)
            self.scales = self.settings.scales(self.rho)
        margin = self.objective.intercept(noisy)
        # The partitions move to exactly the margin XGBoost will start from (its base_score is float32).
        self.start = margin_of_base_score(self.objective, base_score_of(self.objective, margin))
        return InterceptUpdate(self.start - self.objective.initial_margin())

    def _steps(self, batch: Batch, sums: np.ndarray, nodes: bool) -> tuple[np.ndarray, np.ndarray]:
        """The leaves' (the nodes' with `nodes`) noisy hessian sums and shrunk Newton steps, as a leaf's
        value is made (`Settings`), from their exact gradient and hessian sums. A node's step is not
        scaled by the learning rate: its leaves' steps, fitted on what it leaves, are (flights at epsilon 4,
        validation rows: 0.86 points below XGBoost against 0.98 with the node's scaled too, selection.py)."""
        settings = self.settings
        g_release, h_release = leaf_releases(settings, self.scales, batch.rounds, nodes)
        g, h = self._release_all(
            [
                (sums[..., 0], g_release.bound, g_release.rho),
                (sums[..., 1], h_release.bound, h_release.rho),
            ]
        )
        cover = np.maximum(h, 0.0)
        sigma_g = settings.leaf_sigmas(self.scales)[0]  # this release's noise sd
        if nodes:
            sigma_g = self.scales.sigma_g / np.sqrt(settings.recentre_share)
        unit = settings.leaf_unit
        shrink = settings.reg_lambda + settings.noise_lambda * sigma_g / unit
        step = np.clip(-g / (cover + shrink), -settings.max_leaf * unit, settings.max_leaf * unit)
        return cover, step * (1.0 if nodes else settings.learning_rate) / batch.rounds

    def _recentre(self, request: Nodes, sums: np.ndarray) -> NodeUpdate:
        """The nodes' released steps, which move their rows' margins; each leaf adds its own to its
        ancestor's (`_leaves`)."""
        _, step = self._steps(request.batch, sums, nodes=True)
        self._offset = step.astype(np.float32).astype(np.float64)
        return NodeUpdate(request.batch, request.level, self._offset)

    def _leaves(self, batch: Batch, sums: np.ndarray) -> LeafUpdate:
        cover, step = self._steps(batch, sums, nodes=False)
        moved = np.zeros_like(step)
        if self._offset is not None:  # each leaf's ancestor at RECENTRE_DEPTH moved its rows already
            moved = np.repeat(self._offset, batch.leaves // self._offset.shape[1], axis=1)
        values = (moved + step).astype(np.float32)
        for tree in range(batch.trees):
            self.trees.append(Tree(batch, tree, values[tree], cover[tree].astype(np.float32)))
        return LeafUpdate(batch, values.astype(np.float64) - moved)

    def model(self) -> bytes:
        """The model so far as XGBoost JSON (a base model's trees first)."""
        return model_json(
            self.features, self.objective, base_score_of(self.objective, self.start), self.trees, self.base
        )

    def run(self, sums: Sums, apply: Apply) -> Released:
        """Train: every request's sums from `sums`, every update to `apply`; the model and its cost."""
        for request in self.requests():
            update = self.release(request, sums(request))
            if update is not None:
                apply(update)
        scales = self.scales
        sigma_g, sigma_h = self.settings.leaf_sigmas(scales)  # the leaves' own, as the job reports
        return Released(
            self.model(),
            self.spent,
            sigma_g,
            sigma_h,
            scales.sigma_intercept,
            scales.sigma_select,
        )


def children(above: np.ndarray, left: np.ndarray) -> np.ndarray:
    """A level's histograms (trees, nodes, columns, width) from the level above's and the partitions'
    summed sums of its left children (node 2j at row j): each right child is its parent minus its
    sibling, as a parent's rows are its two children's (sibling subtraction; the partitions then add only
    the rows in left children). It is done here, once, on sums already added over the partitions, so one
    machine and a cluster compute the same from the same sums (up to the order the partitions' sums are
    added in, as for every sum), a cluster's workers send half the cells, and no partition keeps
    histograms between levels. A right child's sums are not its rows' sums to the last bit, but the
    scores they give are exact up to float rounding."""
    hist = np.empty((left.shape[0], 2 * left.shape[1], *left.shape[2:]))
    hist[:, 0::2] = left
    np.subtract(above, left, out=hist[:, 1::2])
    return hist


def local(partitions: list) -> tuple[Sums, Apply]:
    """`sums` and `apply` over partitions held in this process."""

    def sums(request: Request) -> np.ndarray:
        return np.sum([p.sums(request) for p in partitions], axis=0)

    def apply(update: Update) -> None:
        for p in partitions:
            p.apply(update)

    return sums, apply
