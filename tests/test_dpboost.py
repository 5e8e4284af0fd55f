"""The DP boosting trainer's core (remote_magic.families.dpboost) with real XGBoost: noise, accounting,
partition sums, the model XGBoost loads, public candidates, parameters. No server."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import xgboost as xgb
from sklearn.metrics import roc_auc_score

from remote_magic.contract.codes import Refusal
from remote_magic.families.dpboost import (
    BINARY,
    MULTICLASS,
    REGRESSION,
    Column,
    Coordinator,
    Features,
    Intercept,
    Objective,
    Partition,
    Settings,
    candidates_between,
    local,
    noise_scales,
    predict_margins,
    total_rho,
)
from remote_magic.families.dpboost.accounting import (
    epsilon,
    gaussian_rho,
    rho_for_epsilon,
    selection_delta,
    selection_threshold,
)
from remote_magic.families.dpboost.booster import load
from remote_magic.families.dpboost.candidates import CandidatePlan, Declared, grid_counts, sketch_counts
from remote_magic.families.dpboost.coordinator import children
from remote_magic.families.dpboost.features import count_at_most
from remote_magic.families.dpboost.objectives import BINARY_GRADIENT_CLIP
from remote_magic.families.dpboost.params import PARAMETERS, check_params, settings_from_params
from remote_magic.families.dpboost.partition import GROUP_CELLS, PARALLEL_ROWS, Grow, groups
from remote_magic.families.dpboost.schedule import releases
from remote_magic.families.dpboost.selection import adapted, candidates, scores, weighted
from remote_magic.families.dpboost.settings import (
    LARGE_LEVEL_GROWTH,
    LARGE_NODE_SHARE,
    LARGE_RECENTRE_SHARE,
    LARGE_SAMPLE,
    NODE_PRIOR,
    NODE_SAMPLE,
    RECENTRE_DEPTH,
)
from remote_magic.families.dpboost.structure import Batch, descend, draw

LEVELS = ("east", "north", "south", "west")
HUGE = 1e12  # a budget at which the noise is negligible


def seeded_noise(seed: int, record: list | None = None):
    rng = np.random.default_rng(seed)

    def noise(values, l2, rho):
        noisy = np.asarray(values) + rng.normal(0.0, l2 / math.sqrt(2 * rho), len(values))
        if record is not None:
            record.append((np.asarray(values), noisy, l2, rho))
        return list(noisy)

    return noise


def seeded_select(seed: int, record: list | None = None):
    rng = np.random.default_rng(seed + 7)

    def select(values, linf, rho):
        if record is not None:
            record.append((linf, rho))
        return int(np.argmax(np.asarray(values) + rng.gumbel(0.0, linf / math.sqrt(2 * rho), len(values))))

    return select


def level_histograms(partition: Partition, batch: Batch, level: int) -> np.ndarray:
    """A level's histograms of every node, as the coordinator makes them from a partition's sums: the
    root's, then each level's right children from the level above (`children`)."""
    hist = partition.sums(Grow(batch, 0))
    for below in range(1, level + 1):
        hist = children(hist, partition.sums(Grow(batch, below)))
    return hist


def make_rows(n: int, seed: int = 0, classes: int = 2, regression: bool = False):
    """Rows with a numeric column (some missing), a uniform one, a text column (some missing, one level
    outside the public list) and a boolean; a label with a clear signal."""
    rng = np.random.default_rng(seed)
    x1 = rng.normal(size=n)
    x2 = rng.uniform(0, 10, n)
    region = rng.choice([*LEVELS, "mars"], n, p=[0.3, 0.3, 0.2, 0.15, 0.05])
    flag = rng.random(n) < 0.4
    effect = (
        pd.Series(region).map({"east": -1.0, "north": 0.0, "south": 1.0, "west": 2.0, "mars": 0.5}).to_numpy()
    )
    signal = 2.0 * x1 + 1.5 * (x2 > 5) + effect + 0.8 * flag - 1.0
    if regression:
        y = 10 + 3 * signal + rng.normal(size=n)
    elif classes == 2:
        y = (rng.random(n) < 1 / (1 + np.exp(-2 * signal))).astype(np.int64)
    else:
        y = np.digitize(
            signal + rng.normal(scale=0.3, size=n), np.quantile(signal, np.linspace(0, 1, classes + 1)[1:-1])
        )
    x1 = np.where(rng.random(n) < 0.1, np.nan, x1)
    region = np.where(rng.random(n) < 0.05, None, region)
    table = pa.table({"x1": x1, "x2": x2, "region": pa.array(region, pa.string()), "flag": flag})
    return table, y


FEATURES = Features(
    (
        Column("x1", "numeric", candidates_between(-4, 4, 31)),
        Column("x2", "numeric", candidates_between(0, 10, 15)),
        Column("region", "categorical", levels=LEVELS),
        Column.boolean("flag"),
    )
)


def train(
    settings, table, y, rho=HUGE, parts=1, seed=0, base=None, base_margins=None, record=None, select=None
):
    bounds = np.linspace(0, table.num_rows, parts + 1).astype(int)
    if parts == 3:
        bounds = np.array([0, table.num_rows // 7, table.num_rows // 2, table.num_rows])
    partitions = [
        Partition(
            FEATURES,
            table.slice(a, b - a),
            y[a:b],
            settings.objective_(),
            None if base_margins is None else base_margins[a:b],
        )
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    coordinator = Coordinator(
        FEATURES, settings, rho, seeded_noise(seed, record), base, select or seeded_select(seed)
    )
    released = coordinator.run(*local(partitions))
    return released, partitions


def margins_of(partitions):
    return np.concatenate([p.margins for p in partitions])


def analyst_frame(table: pa.Table, booster: xgb.Booster) -> pd.DataFrame:
    """The rows as an analyst would predict on them: original strings as a pandas categorical over the
    model's category list (a level outside it missing)."""
    frame = table.to_pandas()
    levels = dict(booster.get_categories(export_to_arrow=True).to_arrow())["region"].to_pylist()
    frame["region"] = pd.Categorical(frame["region"].where(frame["region"].isin(levels)), categories=levels)
    return frame


# The noise


def test_each_leaf_release_has_the_configured_scale_and_the_noise_has_that_spread():
    table, y = make_rows(3000)
    settings = Settings(rounds=40, max_depth=3, batch_size=4, split_share=0.0)
    record: list = []
    rho = 0.5
    released, _ = train(settings, table, y, rho=rho, record=record)
    scales = settings.scales(rho)
    leaf_calls = record[1:]  # the first release is the intercept
    assert len(leaf_calls) == 2 * 10
    for i, (_, _, l2, call_rho) in enumerate(leaf_calls):
        expected = scales.sigma_g if i % 2 == 0 else scales.sigma_h
        assert l2 / math.sqrt(2 * call_rho) == pytest.approx(expected, rel=1e-12)
        assert l2 == pytest.approx((BINARY_GRADIENT_CLIP if i % 2 == 0 else 0.25) * math.sqrt(4))
    assert released.sigma_g == pytest.approx(scales.sigma_g)
    drawn = np.concatenate([noisy - exact for exact, noisy, _, _ in leaf_calls[0::2]])
    assert len(drawn) == 40 * 8
    assert np.std(drawn) == pytest.approx(scales.sigma_g, rel=0.1)
    drawn_h = np.concatenate([noisy - exact for exact, noisy, _, _ in leaf_calls[1::2]])
    assert np.std(drawn_h) == pytest.approx(scales.sigma_h, rel=0.1)


def test_the_released_sums_are_the_partitions_exact_sums_plus_noise():
    table, y = make_rows(2000)
    settings = Settings(rounds=3, max_depth=2, intercept_share=0.0, split_share=0.0)
    record: list = []
    _, (partition,) = train(settings, table, y, rho=1.0, record=record)
    fresh = Partition(FEATURES, table, y, settings.objective_())
    batch = draw(np.random.default_rng(0), FEATURES, 0, 1, 1, 2)
    exact = fresh.sums(batch)
    assert np.allclose(record[0][0], exact[..., 0].ravel())
    assert exact[..., 1].sum() == pytest.approx(0.25 * 2000)  # every row's hessian at margin 0
    assert exact[..., 0].sum() == pytest.approx(0.5 * 2000 - y.sum())


def test_a_leaf_is_the_noisy_newton_step_shrunk_by_the_noises_own_scale():
    table, y = make_rows(2000)
    values = {}
    for k in (0.0, 2.0):
        settings = Settings(rounds=1, max_depth=2, intercept_share=0.0, split_share=0.0, noise_lambda=k)
        record: list = []
        released, _ = train(settings, table, y, rho=0.01, record=record)
        (_, g, _, _), (_, h, _, _) = record
        shrink = settings.reg_lambda + k * released.sigma_g
        expected = np.clip(-g / (np.maximum(h, 0) + shrink), -settings.max_leaf, settings.max_leaf)
        tree = json.loads(released.model)["learner"]["gradient_booster"]["model"]["trees"][0]
        values[k] = np.asarray(tree["base_weights"][3:])
        assert np.allclose(values[k], expected * settings.learning_rate, rtol=1e-6)
    assert released.sigma_g > 5 and np.all(np.abs(values[2.0]) < np.abs(values[0.0]))


# The accounting


@pytest.mark.parametrize(
    "rounds, g, h, share, intercept, split, selections",
    [
        (100, 1.0, 0.25, 0.5, 0.02, 0.0, 0),
        (30, math.sqrt(2), 0.5, 0.8, 0.0, 0.0, 0),
        (7, 20.0, 1.0, 0.6, 0.1, 0.4, 6),
    ],
)
def test_the_accountant_matches_the_proof_and_its_inverse_round_trips(
    rounds, g, h, share, intercept, split, selections
):
    rho = 0.07
    scales = noise_scales(rho, rounds, g, h, share, intercept, math.sqrt(2), split, 3.0, selections)
    by_formula = (
        (math.sqrt(2) ** 2 / (2 * scales.sigma_intercept**2) if intercept else 0.0)
        + rounds * (g**2 / (2 * scales.sigma_g**2) + h**2 / (2 * scales.sigma_h**2))
        + (rounds * selections * 9.0 / (2 * scales.sigma_select**2) if split else 0.0)
    )
    assert by_formula == pytest.approx(rho, rel=1e-12)
    total = total_rho(
        rounds,
        g,
        h,
        scales.sigma_g,
        scales.sigma_h,
        math.sqrt(2),
        scales.sigma_intercept,
        0.01,
        3.0,
        scales.sigma_select,
        selections,
    )
    assert total == pytest.approx(rho + 0.01, rel=1e-12)
    assert gaussian_rho(g, scales.sigma_g) == pytest.approx(
        share * (1 - split) * rho * (1 - intercept) / rounds
    )


def test_a_job_spends_exactly_its_budget_and_epsilon_converts_both_ways():
    table, y = make_rows(2000)
    for settings in (
        Settings(rounds=5, max_depth=2, split_share=0.0),
        Settings(rounds=5, max_depth=3, split_share=0.3, node_splits=True),
    ):
        picks: list = []
        released, _ = train(settings, table, y, rho=0.2, select=seeded_select(1, picks))
        assert released.rho == pytest.approx(0.2, rel=1e-9)
        if settings.split_share:
            assert len(picks) == 5 * (3 + 1 + 2 + 4)  # per level a column, then each node
            assert {linf for linf, _ in picks} == {BINARY_GRADIENT_CLIP}
    for eps in (0.5, 1.0, 4.0):
        assert epsilon(rho_for_epsilon(eps, 1e-6), 1e-6) == pytest.approx(eps)


def test_epsilon_is_opendps_zcdp_to_approx_dp_conversion():
    """The conversion is OpenDP's (Canonne, Kamath and Steinke's), tighter than Bun and Steinke's."""
    from opendp import combinators, domains, measurements, metrics
    from opendp.mod import enable_features

    enable_features("contrib")
    space = domains.atom_domain(T=float, nan=False), metrics.absolute_distance(T=float)
    for scale in (0.5, 2.0, 8.0, 40.0):
        gaussian = measurements.make_gaussian(*space, scale=scale)
        rho = gaussian.map(1.0)
        curve = combinators.make_zCDP_to_approxDP(gaussian).map(1.0)
        for delta in (1e-9, 1e-6, 1e-3):
            assert epsilon(rho, delta) == pytest.approx(curve.epsilon(delta), rel=1e-9, abs=1e-12)
    # at delta 1e-6 epsilon 4 / 1 / 0.5 buy rho 0.311 / 0.0244 / 0.0066 (Bun and Steinke: 0.254 / 0.0175 /
    # 0.0044)
    for eps, rho in ((4.0, 0.3111), (1.0, 0.02436), (0.5, 0.006642)):
        assert rho_for_epsilon(eps, 1e-6) == pytest.approx(rho, rel=1e-3)
        assert epsilon(rho_for_epsilon(eps, 1e-6), 1e-6) <= eps
    assert epsilon(0.0, 1e-6) == 0.0


def test_a_large_sample_gives_the_deeper_levels_more_of_the_selection_budget():
    """Where the released count says the sample is large, level l's selections get a share in proportion
    to LARGE_LEVEL_GROWTH ** l; the schedule the parent checks, the selections the coordinator asks and the
    total all agree, and the budget is spent whole."""
    unset = Settings(rounds=4, max_depth=3, split_share=0.3, rounds_from_count=True)
    rho = 0.25
    small, large = unset.for_count(LARGE_SAMPLE, rho), unset.for_count(4 * LARGE_SAMPLE, rho)
    assert small.level_growth == 1.0 and small.level_shares() == (1.0, 1.0, 1.0)
    assert large.level_growth == LARGE_LEVEL_GROWTH == 2.0 and large.rounds == 4
    assert large.level_shares() == pytest.approx((3 / 7, 6 / 7, 12 / 7))
    planned = [r.rho for r in releases(large, rho, 0, 0.0, False) if r.kind == "top1"]
    # The last level's split at 1 - LARGE_NODE_SHARE of its rho (its nodes' own splits the rest).
    assert planned[1] == pytest.approx(2 * planned[0])
    assert planned[2] == pytest.approx(4 * (1 - LARGE_NODE_SHARE) * planned[0])
    table, y = make_rows(2000)
    picks: list = []
    released, _ = train(
        replace(large, intercept_share=0.0), table, y, rho=rho, select=seeded_select(1, picks)
    )
    asked = [r for _, r in picks]
    assert asked == [
        r.rho for r in releases(replace(large, intercept_share=0.0), rho, 0, 0.0, False) if r.kind == "top1"
    ]
    assert asked[:3] == pytest.approx([asked[0], 2 * asked[0], 2 * asked[0]])
    assert released.rho == pytest.approx(rho, rel=1e-9)


@pytest.mark.parametrize("objective", [BINARY, MULTICLASS])
def test_a_large_sample_recentres_each_tree_partway_down_within_the_rounds_rho(objective):
    """Where the released count says the sample is large, each tree's nodes at RECENTRE_DEPTH release
    their sums with LARGE_RECENTRE_SHARE of the leaves' rho (the leaves the rest: a round costs what it
    did), before that level's selection, as the schedule the parent checks says; their steps move the
    rows' margins, the levels below and the leaves are fitted on the gradients there, and each leaf holds
    its ancestor's step plus its own, so XGBoost predicts the trainer's margins. A small sample does not."""
    classes = 3 if objective == MULTICLASS else 2
    trees = 3 if objective == MULTICLASS else 1
    unset = Settings(
        objective=objective, num_class=3, rounds=3, max_depth=5, split_share=0.4, rounds_from_count=True
    )
    rho = 0.5
    small, large = unset.for_count(LARGE_SAMPLE, rho), unset.for_count(4 * LARGE_SAMPLE, rho)
    assert not small.recentres and large.recentres and large.recentre_share == LARGE_RECENTRE_SHARE
    assert RECENTRE_DEPTH == 3 and LARGE_RECENTRE_SHARE == 0.2
    large = replace(large, intercept_share=0.0)
    planned = list(releases(large, rho, 0, 0.0, False))
    before = list(releases(replace(large, recentre_share=0.0), rho, 0, 0.0, False))
    assert sum(r.cost for r in planned) == pytest.approx(rho, rel=1e-12)
    per_round = [(r.kind, r.rho) for r in planned[: len(planned) // 3]]
    old = [r.rho for r in before[: len(before) // 3] if r.kind == "gaussian"]
    assert [kind for kind, _ in per_round] == [
        *["top1"] * (RECENTRE_DEPTH * trees),
        *["gaussian"] * 2,
        *["top1"] * ((4 - RECENTRE_DEPTH) * trees + (1 + 16) * trees),  # the last level's nodes too
        *["gaussian"] * 2,
    ]
    gaussians = [r for kind, r in per_round if kind == "gaussian"]
    assert gaussians == pytest.approx([0.2 * old[0], 0.2 * old[1], 0.8 * old[0], 0.8 * old[1]])
    table, y = make_rows(3000, classes=classes)
    record: list = []
    released, partitions = train(large, table, y, rho=rho, parts=3, record=record)
    assert [(l2, r) for _, _, l2, r in record] == [(r.bound, r.rho) for r in planned if r.kind == "gaussian"]
    assert released.rho == pytest.approx(rho, rel=1e-9)
    round_sigma_g = large.scales(rho).sigma_g
    leaf_noise = (large.scales(rho).sigma_g / math.sqrt(0.8), large.scales(rho).sigma_h / math.sqrt(0.8))
    assert (released.sigma_g, released.sigma_h) == pytest.approx(leaf_noise)  # the leaves' own, reported
    margins = margins_of(partitions)
    assert np.allclose(predict_margins(released.model, FEATURES, table), margins, atol=1e-5)
    if objective == MULTICLASS:
        return
    # The first tree: the nodes' and the leaves' released sums, exact and noisy, in that order.
    (node_g, noisy_g, *_), (_, noisy_h, *_), (leaf_g, leaf_noisy_g, *_), (_, leaf_noisy_h, *_) = record[:4]

    def step(g, h, share):
        shrink = large.reg_lambda + large.noise_lambda * round_sigma_g / math.sqrt(share)
        return np.clip(-np.asarray(g) / (np.maximum(h, 0) + shrink), -large.max_leaf, large.max_leaf)

    # A node moves its rows by its whole shrunk step, a leaf by its own times the learning rate.
    offset = step(noisy_g, noisy_h, 0.2).astype(np.float32).astype(np.float64)
    own = step(leaf_noisy_g, leaf_noisy_h, 0.8) * large.learning_rate
    leaves = (np.repeat(offset, 4) + own).astype(np.float32)
    first = json.loads(released.model)["learner"]["gradient_booster"]["model"]["trees"][0]
    assert np.allclose(np.asarray(first["base_weights"])[-32:], leaves, rtol=1e-6, atol=1e-7)
    # The leaves' gradients are the moved rows': below each node they sum to less than the node's did.
    assert np.abs(leaf_g.reshape(8, 4).sum(axis=1)).sum() < 0.5 * np.abs(node_g).sum()


def test_a_large_samples_last_level_lets_each_node_choose_its_own_split_on_the_levels_column():
    """Where the released count says the sample is larger still (NODE_SAMPLE), the last level's selection
    rho is split: the level's split takes 1 - LARGE_NODE_SHARE, then each node chooses its own split
    among the candidates on that split's column with LARGE_NODE_SHARE, charged once for all the nodes
    (their rows are disjoint), so the job spends exactly its budget; the coordinator asks what the
    schedule lists, the nodes of one level keep one column but not one threshold, and XGBoost predicts
    the trainer's margins. A smaller sample keeps one split per level."""
    unset = Settings(rounds=3, max_depth=3, split_share=0.4, intercept_share=0.0, rounds_from_count=True)
    rho = 0.5
    small, large = unset.for_count(LARGE_SAMPLE, rho), unset.for_count(4 * LARGE_SAMPLE, rho)
    middle = unset.for_count(1.5 * LARGE_SAMPLE / math.sqrt(rho), rho)  # large, but below NODE_SAMPLE
    assert middle.recentre_share == LARGE_RECENTRE_SHARE and middle.node_level is None
    assert NODE_SAMPLE == 2 * LARGE_SAMPLE
    assert small.node_level is None and large.node_level == 2
    assert large.node_share == LARGE_NODE_SHARE == 0.5 and NODE_PRIOR == 0.8
    planned = list(releases(large, rho, 0, 0.0, False))
    level = large.select_rho(large.scales(rho), 2)
    per_round = planned[: len(planned) // 3]
    assert [r.kind for r in per_round] == ["top1"] * 7 + ["gaussian"] * 2
    assert [r.rho for r in per_round[2:7]] == pytest.approx([level / 2] * 5)
    assert [r.cost for r in per_round[2:7]] == pytest.approx([level / 2] * 2 + [0.0] * 3)
    assert sum(r.cost for r in planned) == pytest.approx(rho, rel=1e-12)
    assert sum(r.rho for r in planned) > 1.1 * rho, "the nodes' noise is that of their whole share each"
    table, y = make_rows(4000)
    picks: list = []
    released, partitions = train(large, table, y, rho=HUGE, parts=3, select=seeded_select(2, picks))
    asked = [r.rho for r in releases(large, HUGE, 0, 0.0, False) if r.kind == "top1"]
    assert [r for _, r in picks] == pytest.approx(asked)
    assert released.rho == pytest.approx(HUGE, rel=1e-9)
    assert np.allclose(predict_margins(released.model, FEATURES, table), margins_of(partitions), atol=1e-5)
    trees = json.loads(released.model)["learner"]["gradient_booster"]["model"]["trees"]
    last = [(t["split_indices"][3:7], t["split_conditions"][3:7], t["default_left"][3:7]) for t in trees]
    assert all(len(set(columns)) == 1 for columns, _, _ in last), "one column per level"
    assert any(len(set(zip(at, left))) > 1 for _, at, left in last), "each node its own threshold"
    assert all(len(set(t["split_conditions"][1:3])) == 1 for t in trees), "above it, one split per level"


def test_a_levels_per_node_selections_are_asked_together_where_the_job_can_batch_them():
    """`select_many` (one round trip to the parent for a level's nodes, not one each) asks the same
    selections in the same order as one `select` call each, so the model is the same; it gets each
    tree's last level's 2**level node selections in one call."""
    settings = Settings(rounds=3, max_depth=3, split_share=0.4, intercept_share=0.0, rounds_from_count=True)
    large = settings.for_count(4 * LARGE_SAMPLE, 0.5)
    table, y = make_rows(4000)
    one_by_one, _ = train(large, table, y, rho=HUGE, select=seeded_select(3))
    select, sizes = seeded_select(3), []

    def select_many(asks):
        sizes.append(len(asks))
        return [select(*ask) for ask in asks]

    partitions = [Partition(FEATURES, table, y, large.objective_())]
    coordinator = Coordinator(FEATURES, large, HUGE, seeded_noise(0), None, select, select_many=select_many)
    together = coordinator.run(*local(partitions))
    assert sizes == [1 << large.node_level] * large.rounds
    assert together.model == one_by_one.model


def test_level_selection_threshold_and_delta_are_inverse():
    threshold = selection_threshold(12.0, 1e-8, 2)
    assert selection_delta(12.0, threshold, 2) == pytest.approx(1e-8, rel=1e-6)
    assert threshold > 1 + 5 * 12.0


@pytest.mark.parametrize("objective", [BINARY, MULTICLASS, REGRESSION])
def test_one_rows_contributions_stay_within_the_bounds_the_proof_uses(objective):
    rng = np.random.default_rng(2)
    settings = Settings(objective=objective, num_class=4, label_range=(0.0, 10.0))
    loss = settings.objective_()
    classes = loss.trees_per_round
    margins = rng.normal(scale=20, size=(5000, classes))
    y = rng.integers(0, 4 if objective == MULTICLASS else 2, 5000)
    if objective == REGRESSION:
        y = loss.labels(rng.normal(5, 30, 5000))
        assert y.min() == 0.0 and y.max() == 10.0
    g, h = loss.gradients(margins, y)
    assert np.linalg.norm(g, axis=1).max() <= loss.gradient_bound + 1e-12
    assert np.linalg.norm(h, axis=1).max() <= loss.hessian_bound + 1e-12
    assert np.abs(g).max() <= loss.tree_gradient_bound + 1e-12
    sums = np.array([loss.label_sums(y[i : i + 1]) for i in range(50)])
    assert np.linalg.norm(sums, axis=1).max() <= loss.intercept_bound + 1e-12


def test_the_logistic_gradient_is_clipped_to_its_bound_and_exact_inside_it():
    loss = Settings().objective_()
    assert loss.gradient_bound == loss.tree_gradient_bound == BINARY_GRADIENT_CLIP < 1.0
    g, h = loss.gradients(np.array([[-5.0], [0.0], [5.0], [0.0], [1.0]]), np.array([1, 1, 0, 0, 1]))
    p = 1 / (1 + math.exp(-1.0))
    assert g[:, 0] == pytest.approx([-BINARY_GRADIENT_CLIP, -0.5, BINARY_GRADIENT_CLIP, 0.5, p - 1])
    assert h[1:2, 0] == pytest.approx([0.25])


def test_a_regressions_residual_is_clipped_to_an_eighth_of_the_label_range_and_exact_inside_it():
    """The residual can reach the range's whole width, but clipped to an eighth of it every noisy sum and
    split score carries 8x less noise (benchmarks/dp_regression.py: r2 0.33 to 0.58 at 4k rows)."""
    loss = Settings(objective=REGRESSION, label_range=(0.0, 80.0)).objective_()
    assert loss.gradient_bound == loss.tree_gradient_bound == 10.0
    g, h = loss.gradients(np.array([[80.0], [0.0], [45.0], [30.0]]), np.array([0.0, 80.0, 40.0, 33.0]))
    assert g[:, 0] == pytest.approx([10.0, -10.0, 5.0, -3.0])
    assert h[:, 0] == pytest.approx([1.0] * 4)


def test_a_dp_regression_trains_the_same_model_whatever_units_its_label_is_in():
    """A leaf's shrink and clip are in units of the public range (`Settings.leaf_unit`): in the label's
    own units a range 28x wider (a spend in cents, not dollars) shrank every leaf 28x harder and clipped
    it 28x tighter, another model (benchmarks/dp_regression.py: r2 0.45 against 0.58 at 4k rows)."""
    table, y = make_rows(2000, regression=True)
    lo, hi = float(y.min()), float(y.max())
    margins = []
    for scale in (1.0, 28.0):
        settings = Settings(objective=REGRESSION, label_range=(lo * scale, hi * scale), rounds=8, max_depth=3)
        _, partitions = train(settings, table, y * scale, rho=0.05, seed=4)
        margins.append(margins_of(partitions)[:, 0] / scale)
    assert np.std(margins[0]) > 0.5
    assert np.allclose(margins[0], margins[1], rtol=1e-4, atol=1e-4 * (hi - lo))


# The partitions


@pytest.mark.parametrize("objective", [BINARY, MULTICLASS, REGRESSION])
def test_three_uneven_partitions_sum_to_one(objective):
    table, y = make_rows(
        1500, classes=3 if objective == MULTICLASS else 2, regression=objective == REGRESSION
    )
    settings = Settings(objective=objective, num_class=3, label_range=(-20.0, 40.0), max_depth=3)
    whole = Partition(FEATURES, table, y, settings.objective_())
    cuts = [0, 100, 1100, 1500]
    parts = [
        Partition(FEATURES, table.slice(a, b - a), y[a:b], settings.objective_())
        for a, b in zip(cuts, cuts[1:])
    ]
    batch = draw(np.random.default_rng(3), FEATURES, 0, 2, settings.objective_().trees_per_round, 3)
    for request in (Intercept(), Grow(batch, 0), Grow(batch, 2), batch):
        together = whole.sums(request)
        assert np.allclose(sum(p.sums(request) for p in parts), together, rtol=1e-12, atol=1e-9)


def test_the_same_seeds_give_the_same_model_on_one_partition_or_three():
    table, y = make_rows(3000)
    for settings in (
        Settings(rounds=6, max_depth=3, batch_size=2, split_share=0.0),
        Settings(rounds=4, max_depth=3, split_share=0.5),
    ):
        one, _ = train(settings, table, y, rho=0.3, parts=1, seed=5)
        three, _ = train(settings, table, y, rho=0.3, parts=3, seed=5)
        a, b = json.loads(one.model), json.loads(three.model)
        trees_a, trees_b = (
            a["learner"]["gradient_booster"]["model"]["trees"],
            b["learner"]["gradient_booster"]["model"]["trees"],
        )
        for ta, tb in zip(trees_a, trees_b, strict=True):
            assert ta["split_indices"] == tb["split_indices"] and ta["categories"] == tb["categories"]
            assert np.allclose(ta["split_conditions"], tb["split_conditions"], rtol=1e-5, atol=1e-6)


# The model XGBoost loads


@pytest.mark.parametrize("split_share", [0.0, 0.5])
@pytest.mark.parametrize("objective", [BINARY, MULTICLASS, REGRESSION])
def test_the_booster_predicts_the_trainers_own_margins(objective, split_share):
    table, y = make_rows(
        3000, classes=3 if objective == MULTICLASS else 2, regression=objective == REGRESSION
    )
    settings = Settings(
        objective=objective,
        num_class=3,
        label_range=(-20.0, 40.0),
        rounds=12,
        max_depth=4,
        batch_size=3,
        split_share=split_share,
    )
    released, partitions = train(settings, table, y, rho=2.0, parts=3)
    booster = load(released.model)
    margins = margins_of(partitions)
    assert np.allclose(predict_margins(released.model, FEATURES, table), margins, atol=1e-5)
    analyst = booster.predict(
        xgb.DMatrix(analyst_frame(table, booster), enable_categorical=True), output_margin=True
    )
    assert np.allclose(np.asarray(analyst).reshape(margins.shape), margins, atol=1e-5)
    if objective == BINARY:
        probabilities = booster.inplace_predict(analyst_frame(table, booster))
        assert np.allclose(probabilities, 1 / (1 + np.exp(-margins[:, 0])), atol=1e-6)
    if objective == MULTICLASS:
        info = json.loads(released.model)["learner"]["gradient_booster"]["model"]["tree_info"]
        assert info == [0, 1, 2] * 12
        probabilities = booster.predict(xgb.DMatrix(analyst_frame(table, booster), enable_categorical=True))
        expected = np.exp(margins) / np.exp(margins).sum(axis=1, keepdims=True)
        assert np.allclose(probabilities, expected, atol=1e-6)


def test_selected_splits_also_predict_the_trainers_margins():
    table, y = make_rows(3000)
    settings = Settings(rounds=4, max_depth=3, split_share=0.4, node_splits=True)
    released, partitions = train(settings, table, y, rho=1.0)
    assert np.allclose(predict_margins(released.model, FEATURES, table), margins_of(partitions), atol=1e-5)


@pytest.mark.parametrize("split_share", [0.0, 0.5])
def test_a_text_column_left_with_one_level_trains_a_model_xgboost_loads(split_share):
    """A filter on an undeclared text column (a Parquet `year=` folder) leaves it one public level: its
    random level subsets were masked to that level, some empty, and XGBoost refused the model
    (`j_end - j_begin > 0`) after the job was charged. Such a column now has no split."""
    rng = np.random.default_rng(5)
    x1 = rng.normal(size=2000)
    table = pa.table({"x1": x1, "year": pa.array(["2024"] * 2000)})
    y = (rng.random(2000) < 1 / (1 + np.exp(-2 * x1))).astype(np.int64)
    features = Features(
        (
            Column("x1", "numeric", candidates_between(-4, 4, 31)),
            Column("year", "categorical", levels=("2024",)),
        )
    )
    settings = Settings(rounds=6, max_depth=4, batch_size=2, split_share=split_share)
    for seed in range(4):
        partition = Partition(features, table, y, settings.objective_())
        coordinator = Coordinator(features, settings, 1.0, seeded_noise(seed), None, seeded_select(seed))
        released = coordinator.run(*local([partition]))
        booster = load(released.model)
        assert np.allclose(predict_margins(released.model, features, table), partition.margins, atol=1e-5)
        assert "year" not in booster.get_score(importance_type="weight")
    # The column alone still trains (its one level against missing rows), not a failure after charging.
    alone = Features(features.columns[1:])
    partition = Partition(alone, table.select(["year"]), y, settings.objective_())
    released = Coordinator(alone, settings, 1.0, seeded_noise(0), None, seeded_select(0)).run(
        *local([partition])
    )
    assert np.allclose(predict_margins(released.model, alone, table), partition.margins, atol=1e-5)
    assert load(released.model).num_boosted_rounds() == 6


def test_continuing_a_base_model_appends_trees_and_keeps_the_base_ones():
    table, y = make_rows(4000)
    other, y_other = make_rows(2000, seed=9)
    frame = analyst_frame(other, load(train(Settings(rounds=1, max_depth=1), table, y)[0].model))
    base = xgb.XGBClassifier(n_estimators=5, max_depth=2, enable_categorical=True).fit(frame, y_other)
    base_json = bytes(base.get_booster().save_raw("json"))
    base_margins = predict_margins(base_json, FEATURES, table)
    settings = Settings(rounds=6, max_depth=3)
    released, partitions = train(settings, table, y, rho=1.0, base=base_json, base_margins=base_margins)
    model = json.loads(released.model)["learner"]["gradient_booster"]["model"]
    old = json.loads(base_json)["learner"]["gradient_booster"]["model"]["trees"]
    assert len(model["trees"]) == 5 + 6 and model["iteration_indptr"] == list(range(12))
    assert model["trees"][:5] == old
    assert np.allclose(predict_margins(released.model, FEATURES, table), margins_of(partitions), atol=1e-5)
    assert not np.allclose(margins_of(partitions), base_margins)


def test_a_base_model_on_other_columns_is_refused():
    base = xgb.XGBClassifier(n_estimators=2, max_depth=2).fit(np.zeros((20, 3)), np.arange(20) % 2)
    with pytest.raises(Refusal) as refused:
        Coordinator(
            FEATURES,
            Settings(),
            1.0,
            seeded_noise(0),
            bytes(base.get_booster().save_raw("json")),
            seeded_select(0),
        )
    assert refused.value.code == "unsupported_model"


@pytest.mark.parametrize("leaf", [float("nan"), float("inf"), 1e30])
def test_a_base_model_with_a_leaf_no_sum_survives_is_refused_before_any_row(leaf):
    """A NaN leaf makes the sums over the rows that reach it NaN through any noise: the released model
    would say whether any training row reached that leaf (a crafted base model: whether one row is in)."""
    table, y = make_rows(2000)
    frame = analyst_frame(table, load(train(Settings(rounds=1, max_depth=1), table, y)[0].model))
    base = xgb.XGBClassifier(n_estimators=2, max_depth=2, enable_categorical=True).fit(frame, y)
    data = json.loads(base.get_booster().save_raw("json"))
    tree = data["learner"]["gradient_booster"]["model"]["trees"][1]
    at = tree["left_children"].index(-1)
    tree["split_conditions"][at] = tree["base_weights"][at] = leaf
    crafted = json.dumps(data).encode()
    assert np.isfinite(predict_margins(bytes(base.get_booster().save_raw("json")), FEATURES, table)).all()
    with pytest.raises(Refusal) as refused:
        Coordinator(FEATURES, Settings(), 1.0, seeded_noise(0), crafted, seeded_select(0))
    assert refused.value.code == "invalid_model" and "leaf values" in refused.value.message


def test_the_model_carries_only_candidates_and_noisy_statistics():
    table, y = make_rows(3000)
    exact_data = set(np.asarray(table.column("x2"), dtype=np.float32).tolist())
    record: list = []
    released, _ = train(Settings(rounds=8, max_depth=4, split_share=0.0), table, y, rho=0.5, record=record)
    allowed = {float(np.float32(v)) for c in FEATURES.columns for v in c.candidates}
    trees = json.loads(released.model)["learner"]["gradient_booster"]["model"]["trees"]
    for tree in trees:
        inner = np.array(tree["left_children"]) >= 0
        numeric = inner & (np.array(tree["split_type"]) == 0)
        thresholds = set(np.array(tree["split_conditions"])[numeric].tolist())
        assert thresholds <= allowed and not thresholds & exact_data
        assert set(tree["loss_changes"]) == {0.0}
        assert set(np.array(tree["base_weights"])[inner].tolist()) == {0.0}
        cover = np.array(tree["sum_hessian"])
        assert (cover >= 0).all() and cover[0] == pytest.approx(cover[1] + cover[2], rel=1e-4)
    # Each leaf's cover is its noisy hessian sum (clipped at 0), never the exact one.
    exact_h, noisy_h = record[2][0], record[2][1]
    assert np.allclose(trees[0]["sum_hessian"][15:], np.maximum(noisy_h, 0), rtol=1e-6)
    filled = exact_h > 0
    assert not np.isin(np.float32(exact_h[filled]), np.float32(trees[0]["sum_hessian"][15:])).any()


# Public candidates


def test_declared_candidates_cost_nothing_and_sketched_ones_come_from_noisy_counts():
    table, _ = make_rows(20_000)
    plan = CandidatePlan(
        (
            Declared("x1", "numeric", sketch=True),
            Declared("x2", "numeric", 0, 10, sketch=True),
            Declared("region", "categorical"),
            Declared("flag", "boolean"),
        ),
        count=15,
    )
    request = plan.request()
    assert set(request.grids) == {"x1", "x2"} and request.text == ("region",)
    record: list = []
    sketched = plan.features(sketch_counts(request, table), seeded_noise(1, record), 0.01, 1e-8)
    assert (sketched.rho, sketched.delta) == (0.01, 1e-8)
    ((values, _, l2, rho),) = record
    assert l2 == pytest.approx(math.sqrt(3)) and rho == 0.01
    x1, x2, region, flag = sketched.features.columns
    assert region.levels == tuple(sorted(["east", "mars", "north", "south", "west"]))
    assert flag.candidates == (0.5,)
    inside = [c for c in x2.candidates if 0 <= c <= 10]
    assert len(inside) == len(x2.candidates) >= 12
    quartiles = np.quantile(
        np.asarray(table.column("x1"))[~np.isnan(np.asarray(table.column("x1")))], [0.25, 0.5, 0.75]
    )
    assert np.allclose(np.quantile(x1.candidates, [0.25, 0.5, 0.75]), quartiles, atol=0.15)
    declared = CandidatePlan((Declared("x2", "numeric", 0, 10), Declared("flag", "boolean")), count=4)
    assert declared.request() is None
    assert declared.declared().columns[0].candidates == (2.0, 4.0, 6.0, 8.0)


def test_no_split_candidate_has_an_empty_or_full_level_set_and_one_level_gives_none():
    """XGBoost refuses a category split with no level, and one with every level splits nothing."""
    features = Features(
        (
            Column("one", "categorical", levels=("a",)),
            Column("two", "categorical", levels=("a", "b")),
            Column("four", "categorical", levels=LEVELS),
            Column("x", "numeric", (0.5,)),
        )
    )
    for seed in range(20):
        options = candidates(features, np.random.default_rng(seed))
        assert 0 not in options.feature
        for f, levels in ((1, 2), (2, 4)):
            sets = options.right[options.feature == f][:, :levels]
            assert sets.any(axis=1).all() and not sets.all(axis=1).any()
        batch = draw(np.random.default_rng(seed), features, 0, 8, 1, 4)
        assert 0 not in batch.feature
    assert features.usable().tolist() == [1, 2, 3]
    alone = Features(features.columns[:1])
    assert alone.usable().tolist() == [0], "where no column has two levels, the one level alone"
    options = candidates(alone, np.random.default_rng(0))
    assert options.right[:, :1].all() and len(options.feature) == 2, "the level, missing rows either way"


def test_a_level_only_few_rows_hold_is_not_selected():
    rare = pa.table({"c": pa.array(["a"] * 5000 + ["b"] * 5000 + ["rare"] * 2)})
    plan = CandidatePlan((Declared("c", "categorical"),))
    sketched = plan.features(sketch_counts(plan.request(), rare), seeded_noise(2), 0.05, 1e-8)
    assert sketched.features.columns[0].levels == ("a", "b")


def test_a_text_column_no_row_has_a_value_in_still_asks_a_release():
    """An empty release failed where one row with a value made it pass: the sketch asks the same
    shape of release (a zero that no row moves ends each text column's counts) either way."""
    plan = CandidatePlan((Declared("c", "categorical"),))
    for column in (pa.array([None] * 50, pa.string()), pa.array([None] * 49 + ["victim"])):
        record: list = []
        sketched = plan.features(
            sketch_counts(plan.request(), pa.table({"c": column})), seeded_noise(3, record), 0.05, 1e-8
        )
        ((values, *_),) = record
        assert len(values) >= 1 and values[-1] == 0
        assert sketched.features.columns[0].levels == ()


def test_split_scores_move_by_at_most_their_bound_when_one_row_is_added():
    rng = np.random.default_rng(4)
    table, y = make_rows(400)
    settings = Settings(max_depth=2)
    batch = draw(rng, FEATURES, 0, 1, 1, 2)
    options = candidates(FEATURES, rng)
    for extra in range(20):
        row = table.slice(extra, 1)
        for label in (0, 1):
            base = Partition(FEATURES, table, y, settings.objective_())
            base.margins[:] = rng.normal(scale=3, size=base.margins.shape)
            more = Partition(
                FEATURES, pa.concat_tables([table, row]), np.append(y, label), settings.objective_()
            )
            more.margins[:-1] = base.margins
            more.margins[-1] = 8.0 * (1 - 2 * label)  # the most extreme gradient
            before = scores(FEATURES, level_histograms(base, batch, 1)[0], options)
            after = scores(FEATURES, level_histograms(more, batch, 1)[0], options)
            assert np.abs(after - before).max() <= settings.select_bound + 1e-9
            assert np.abs(after - before).max() > 0.5


def test_every_candidates_score_is_its_childrens_gradient_sums_from_the_rows():
    table, y = make_rows(700)
    settings = Settings(max_depth=3)
    partition = Partition(FEATURES, table, y, settings.objective_())
    partition.margins[:] = np.random.default_rng(5).normal(scale=2, size=partition.margins.shape)
    rng = np.random.default_rng(6)
    batch = draw(rng, FEATURES, 0, 1, 1, 3)
    options = candidates(FEATURES, rng)
    node = descend(batch, batch.tables(FEATURES), partition.codes, 0, np.zeros(len(y), np.int32), 0, 2)
    g = settings.objective_().gradients(partition.margins, partition.labels)[0][:, 0]
    found = scores(FEATURES, level_histograms(partition, batch, 2)[0], options)
    expected = np.empty_like(found)
    for i, (f, split, left, right) in enumerate(
        zip(options.feature, options.split, options.default_left, options.right)
    ):
        column, codes = FEATURES.columns[f], partition.codes[f].astype(np.int64)
        missing = codes == column.missing_code
        if column.kind == "categorical":
            goes_right = np.append(right[: column.splits], False)[np.minimum(codes, column.splits)]
        else:
            goes_right = codes > split
        goes_right = np.where(missing, not left, goes_right & ~missing)
        for j in range(4):
            at = node == j
            expected[j, i] = abs(g[at & ~goes_right].sum()) + abs(g[at & goes_right].sum())
    assert found.shape == (4, len(options.feature))
    assert np.allclose(found, expected, rtol=1e-12, atol=1e-9)


def test_level_histograms_are_each_nodes_rows_gradient_sums():
    """A partition adds only the rows in left children (columns in groups, `partition.groups`, or one
    at a time below 16 nodes); they and the right children made from the level above (sibling
    subtraction) are their rows' sums up to rounding, whatever the objective's trees per round."""
    for settings, level in (
        (Settings(max_depth=3), 2),
        (Settings(objective=MULTICLASS, num_class=3, max_depth=3), 2),
        (Settings(max_depth=7), 6),
    ):
        table, y = make_rows(900, classes=settings.num_class if settings.num_class > 1 else 2)
        partition = Partition(FEATURES, table, y, settings.objective_())
        partition.margins[:] = np.random.default_rng(8).normal(scale=2, size=partition.margins.shape)
        trees = settings.objective_().trees_per_round
        batch = draw(np.random.default_rng(9), FEATURES, 0, 2, trees, settings.max_depth)
        g = settings.objective_().gradients(partition.margins, partition.labels)[0]
        width, nodes = FEATURES.width, 1 << level
        left = partition.sums(Grow(batch, level))
        found = level_histograms(partition, batch, level)
        whole = partition.sums(Grow(batch, level, whole=True))  # every node's own rows (recentring)
        assert left.shape[1] == nodes // 2 and found.shape[1] == nodes == whole.shape[1]
        for tree in range(batch.trees):
            node = descend(
                batch, batch.tables(FEATURES), partition.codes, tree, np.zeros(900, np.int32), 0, level
            )
            even = node % 2 == 0
            for f in range(len(FEATURES.columns)):
                weights = g[:, tree % batch.classes]
                cells = np.bincount(node * width + partition.codes[f], weights, minlength=nodes * width)
                exact = np.bincount(
                    node[even] // 2 * width + partition.codes[f][even],
                    weights=weights[even],
                    minlength=nodes // 2 * width,
                )
                assert np.allclose(left[tree, :, f, :], exact.reshape(-1, width), rtol=1e-12, atol=1e-12)
                assert np.allclose(found[tree, :, f, :], cells.reshape(-1, width), rtol=1e-12, atol=1e-9)
                assert np.allclose(whole[tree, :, f, :], cells.reshape(-1, width), rtol=1e-12, atol=1e-12)


def test_column_groups_hold_every_column_once_within_their_cells():
    """A level's columns are added in groups of one joint histogram each: every column in one group, a
    group of several within GROUP_CELLS cells at the level's nodes, fewer groups where nodes are few."""
    widths = (34, 3, 256, 5, 34, 34, 2, 17)
    for nodes in (1, 4, 16, 1024):
        found = groups(widths, nodes)
        assert sorted(f for group in found for f in group) == list(range(len(widths)))
        for group in found:
            assert len(group) == 1 or nodes * math.prod(widths[f] for f in group) <= GROUP_CELLS
    assert len(groups(widths, 1)) < len(groups(widths, 16)) < len(groups(widths, 1024))


def test_histograms_summed_in_threads_are_the_same_bits():
    """Past PARALLEL_ROWS a partition sums its histograms in its job's threads, a share of the column
    groups each: every group's cells are summed as in one thread, so the sums, and the model, do not
    move."""
    rows = PARALLEL_ROWS + 1000
    table, y = make_rows(rows, classes=2)
    settings = Settings(max_depth=3)
    found = []
    for threads in (1, 2, 3):
        partition = Partition(FEATURES, table, y, settings.objective_(), threads=threads)
        partition.margins[:] = np.random.default_rng(8).normal(scale=2, size=partition.margins.shape)
        batch = draw(np.random.default_rng(9), FEATURES, 0, 2, 1, 3)
        found.append(partition.sums(Grow(batch, 2)))
    assert np.array_equal(found[0], found[1]) and np.array_equal(found[0], found[2])


def test_binning_and_sketch_counts_are_a_binary_search_per_value():
    """Codes and sketch counts come from comparisons and a sort (faster); they are exactly what a
    binary search per value gives, NaN, infinities, -0.0 and values on a threshold included."""
    rng = np.random.default_rng(10)
    for count in (1, 32, 200):
        values = (rng.normal(size=3000) * 10.0 ** rng.integers(-6, 6, 3000)).astype(np.float32)
        thresholds = np.unique(rng.choice(values, count, replace=False))
        special = rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0, 0.0], np.float32), 300)
        values[rng.choice(3000, 300, replace=False)] = special
        values[rng.choice(3000, 50, replace=False)] = rng.choice(thresholds, 50)
        found = np.searchsorted(thresholds, values, side="right")
        expected = np.where(np.isnan(values), 0, found)
        assert np.array_equal(count_at_most(thresholds, values), expected)
        bins = np.where(np.isnan(values), count + 1, found)
        assert np.array_equal(grid_counts(thresholds, values), np.bincount(bins, minlength=count + 2))
    assert np.array_equal(grid_counts(thresholds, values[:0]), np.zeros(count + 2))


def test_candidates_must_list_each_split_missing_left_then_missing_right():
    options = candidates(FEATURES, np.random.default_rng(0))
    half = len(options.feature) // 2
    with pytest.raises(ValueError, match="missing values left, then the same right"):
        replace(options, default_left=np.roll(options.default_left, 1))
    with pytest.raises(ValueError, match="missing values left, then the same right"):
        replace(options, split=np.concatenate([options.split[:half], options.split[:half][::-1]]))


def test_each_candidate_split_is_listed_once():
    options = candidates(FEATURES, np.random.default_rng(0))
    keys = [
        (int(f), int(k), bool(d), tuple(r.tolist()))
        for f, k, d, r in zip(options.feature, options.split, options.default_left, options.right)
    ]
    assert len(set(keys)) == len(keys)
    region = options.feature == 2
    assert region.sum() == 2 * (2 ** (len(LEVELS) - 1) - 1)  # every two-way partition of 4 levels, twice
    assert not options.right[region][:, 0].any()


def test_the_prior_gives_each_column_the_same_chance_whatever_its_candidates():
    options = candidates(FEATURES, np.random.default_rng(0))
    columns = np.unique(options.feature)
    assert [np.exp(options.prior[options.feature == f]).sum() for f in columns] == pytest.approx([1.0] * 4)
    # Equal scores: the noisy top-1 then picks each column about equally often (x1 has 62 candidates,
    # flag 2); without the prior x1 would be chosen 62 / 108 of the time and flag 2 / 108.
    linf, rho = 1.0, 0.01
    total = weighted(np.zeros(len(options.feature)), options.prior, linf, rho)
    select = seeded_select(3)
    chosen = options.feature[[select(list(total), linf, rho) for _ in range(4000)]]
    shares = np.bincount(chosen, minlength=4) / 4000
    assert shares == pytest.approx([0.25] * 4, abs=0.03)


def test_the_prior_leans_towards_the_columns_earlier_levels_chose():
    options = candidates(FEATURES, np.random.default_rng(0))
    # Six earlier levels chose x2 and none another column: x2's weight is ((6 + 6) / 6) ** 2 = 4 times
    # each other column's, so with equal scores it is drawn 4 / 7 of the time.
    prior = adapted(options, np.array([0.0, 6.0, 0.0, 0.0]))
    linf, rho = 1.0, 0.01
    total = weighted(np.zeros(len(options.feature)), prior, linf, rho)
    select = seeded_select(4)
    chosen = options.feature[[select(list(total), linf, rho) for _ in range(4000)]]
    shares = np.bincount(chosen, minlength=4) / 4000
    assert shares == pytest.approx([1 / 7, 4 / 7, 1 / 7, 1 / 7], abs=0.03)
    # Before any choice it is the public prior, every column shifted alike (which changes no draw).
    offset = adapted(options, np.zeros(4)) - options.prior
    assert offset == pytest.approx(np.full(len(options.prior), 2 * np.log(6)))


# Parameters


def test_an_xgbclassifier_as_written_is_accepted_with_the_trainers_defaults():
    settings = settings_from_params(xgb.XGBClassifier().get_params())
    assert settings == Settings()
    settings = settings_from_params(
        xgb.XGBClassifier(
            n_estimators=20,
            max_depth=3,
            learning_rate=0.5,
            reg_lambda=2.0,
            n_jobs=2,
            random_state=7,
            min_child_weight=1,
            subsample=1.0,
        ).get_params()
    )
    assert (
        settings.rounds,
        settings.max_depth,
        settings.learning_rate,
        settings.reg_lambda,
        settings.seed,
    ) == (20, 3, 0.5, 2.0, 7)
    assert settings_from_params(xgb.XGBClassifier().get_params(), num_class=4).num_class == 4
    regression = settings_from_params(
        xgb.XGBRegressor().get_params(), classifier=False, label_range=(0.0, 5.0)
    )
    assert regression.objective == REGRESSION and regression.label_range == (0.0, 5.0)


@pytest.mark.parametrize(
    "params, code, named",
    [
        (dict(subsample=0.5), "parameter_out_of_bounds", "subsample"),
        (dict(colsample_bytree=0.8, gamma=1.0), "parameter_out_of_bounds", "candidates); gamma ("),
        (dict(max_bin=64), "parameter_out_of_bounds", "max_bin (splits come from"),
        (dict(eval_metric="aucpr"), "parameter_out_of_bounds", "eval_metric (mode dp releases"),
        (dict(tree_method="exact"), "parameter_out_of_bounds", "tree_method ("),
        (dict(missing=-1.0), "parameter_out_of_bounds", "missing ("),
        (dict(feature_types=["q"]), "parameter_out_of_bounds", "feature_types ("),
        (dict(scale_pos_weight=3.0), "parameter_out_of_bounds", "scale_pos_weight ("),
        (dict(max_depth=40), "parameter_out_of_bounds", "max_depth"),
        (dict(objective="reg:logistic"), "unsupported_model", "reg:logistic"),
        (dict(booster="dart"), "parameter_out_of_bounds", "booster"),
    ],
)
def test_parameters_without_a_meaning_here_are_refused_by_name(params, code, named):
    with pytest.raises(Refusal) as refused:
        settings_from_params(xgb.XGBClassifier(**params).get_params())
    assert refused.value.code == code and named in refused.value.message


@pytest.mark.parametrize("estimator", [xgb.XGBClassifier, xgb.XGBRegressor])
def test_every_parameter_an_estimator_has_is_in_the_table_and_a_refused_one_is_refused_by_name(estimator):
    """The table decides every parameter XGBoost's estimators have (a new one fails here, not silently
    later); each refused one set to a value other than its defaults is refused, naming it."""
    params = estimator().get_params()
    assert set(params) <= set(PARAMETERS)
    odd = {list: [1], tuple: (1,), str: "other", int: 7, float: 0.37}
    for name, (kind, defaults, _) in PARAMETERS.items():
        if kind != "refused":
            continue
        value = odd[type(defaults[0])] if defaults else 0.37
        with pytest.raises(Refusal, match=rf"refuses {name} \(") as refused:
            check_params({name: value})
        assert refused.value.code == "parameter_out_of_bounds"
    harmless = {n: 3 for n, (kind, _, _) in PARAMETERS.items() if kind == "harmless"}
    check_params(harmless)
    check_params({"eval_metric": "auc", "tree_method": "hist", "max_bin": 256, "min_child_weight": 50})


def test_a_regression_without_a_public_label_range_is_refused():
    with pytest.raises(Refusal, match="label"):
        settings_from_params(xgb.XGBRegressor().get_params(), classifier=False)


# Learning


@pytest.mark.parametrize("extra", [{}, dict(split_share=0.0), dict(split_share=0.3, node_splits=True)])
def test_with_no_noise_the_trainer_learns_a_clear_signal(extra):
    table, y = make_rows(6000)
    test, y_test = make_rows(3000, seed=1)
    released, _ = train(Settings(rounds=30, max_depth=4, **extra), table, y, rho=HUGE)
    assert roc_auc_score(y_test, predict_margins(released.model, FEATURES, test)[:, 0]) > 0.9


@pytest.mark.parametrize(
    ("objective", "sums"),
    [
        (Objective(BINARY), [1000.0, 300.0]),
        (Objective(MULTICLASS, 3), [500.0, 300.0, 200.0]),
        (Objective(REGRESSION, label_range=(0.0, 4.0)), [2000.0, 150.0]),  # (r n, ...), r = 2
    ],
)
def test_each_losss_label_sums_give_the_row_count(objective, sums):
    assert objective.count(sums) == pytest.approx(1000.0)
    y = np.zeros(1000, dtype=np.int64) if objective.name != REGRESSION else np.full(1000, 1.5)
    assert objective.count(objective.label_sums(objective.labels(y))) == pytest.approx(1000.0)


def test_rounds_follow_the_count_only_where_the_analyst_left_them_unset():
    unset = Settings(rounds=100, rounds_from_count=True)
    rho = 0.25  # sqrt: 0.5
    assert unset.for_count(90_000.0, rho).rounds == 100  # n sqrt(rho) = 45,000
    assert unset.for_count(89_000.0, rho).rounds == 50
    assert unset.for_count(None, rho).rounds == 50, "no count released: today's rounds"
    assert not unset.for_count(1e9, rho).rounds_from_count
    assert replace(unset, rounds=30).for_count(1e9, rho).rounds == 30, "never more than the plan's"
    chosen = Settings(rounds=70)
    assert chosen.for_count(1e9, rho) == chosen and chosen.for_count(10.0, rho) == chosen
    assert unset.waits_for_count(False) and not unset.waits_for_count(True)
    assert not replace(unset, base_margin=(0.0,)).waits_for_count(False)
