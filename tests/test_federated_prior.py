"""The federated sketch's column prior (`dpboost.prior`): what one row can move, how the released sums
become column weights, and how the random structure draws its columns by them."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest
from pydantic import ValidationError

from remote_magic.contract.wire import FederatedSettings
from remote_magic.families.dpboost import Column, Features
from remote_magic.families.dpboost.objectives import BINARY, MULTICLASS, Objective
from remote_magic.families.dpboost.prior import (
    PRIOR_FLOOR,
    column_weights,
    prior_request,
    prior_sums,
    sketch_bound,
)
from remote_magic.families.dpboost.structure import draw

RANGES = {"signal": (0.0, 10.0), "noise": (0.0, 10.0)}
FEATURES = Features(
    (
        Column("signal", "numeric", (5.0,)),
        Column("noise", "numeric", (5.0,)),
        Column("town", "categorical", levels=("a", "b")),
        Column("flag", "boolean", (0.5,)),
    )
)


def rows(n: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    """A label that follows `signal` only; a missing value and a level outside the list in each column."""
    rng = np.random.default_rng(seed)
    signal, noise = rng.uniform(0, 10, n), rng.uniform(0, 10, n)
    signal[0] = noise[1] = np.nan
    town = rng.choice(["a", "b", "z"], n)
    labels = (rng.random(n) < 1 / (1 + np.exp(-(np.nan_to_num(signal) - 5)))).astype(np.int64)
    table = pa.table({"signal": signal, "noise": noise, "town": town, "flag": rng.random(n) < 0.5})
    return table, labels


@pytest.mark.parametrize(("objective", "classes"), [(BINARY, 1), (MULTICLASS, 3)])
def test_one_row_moves_the_prior_sums_by_at_most_one_per_scored_column(objective, classes):
    table, labels = rows(200)
    labels = labels % (2 if objective == BINARY else 3)
    loss = Objective(objective, classes if objective == MULTICLASS else 1)
    request = prior_request(RANGES, FEATURES, loss.trees_per_round)
    assert request.columns == 3 and request.size == (2 * 19 + 3) * loss.trees_per_round  # flag: unscored
    assert sketch_bound(RANGES, request) == math.sqrt(2 + 3) and sketch_bound(RANGES, None) == math.sqrt(2)
    whole = np.asarray(prior_sums(request, table, labels, loss, None))
    for row in range(5):
        keep = np.arange(200) != row
        without = np.asarray(prior_sums(request, table.filter(pa.array(keep)), labels[keep], loss, None))
        assert np.linalg.norm(whole - without) <= math.sqrt(request.columns) + 1e-9
    # The sums add up over partitions (record batches here), as every server's do.
    parts = table.to_batches(max_chunksize=64)
    assert len(parts) > 1
    assert np.allclose(prior_sums(request, parts, labels, loss, None), whole)


def test_the_weights_keep_the_columns_with_a_signal_and_cut_the_others_to_the_floor():
    table, labels = rows(20_000)
    loss = Objective(BINARY)
    request = prior_request(RANGES, FEATURES, 1)
    exact = prior_sums(request, table, labels, loss, None)
    # In units of the release's noise (sd 30 here), which must stand above the rows' own scatter.
    weights = column_weights(FEATURES, request, exact, sigma=30.0)
    assert weights.tolist() == [1.0, PRIOR_FLOOR, PRIOR_FLOOR, 1.0]  # the boolean is not scored
    # Noise that drowns every score: no column stands out, so the draw stays uniform.
    assert column_weights(FEATURES, request, exact, sigma=1e6).tolist() == [1.0] * 4
    with pytest.raises(ValueError, match="sums, not"):
        column_weights(FEATURES, request, exact[:-1], sigma=1.0)


def test_the_structure_draws_its_columns_by_the_weights_and_without_them_as_before():
    rng = lambda: np.random.default_rng(4)  # noqa: E731
    drawn = draw(rng(), FEATURES, 0, 50, 1, 4, np.array([1.0, 0.0, 0.0, 0.0]))
    assert (drawn.feature == 0).all()
    uniform = draw(rng(), FEATURES, 0, 50, 1, 4)
    assert set(np.unique(uniform.feature)) == {0, 1, 2, 3}
    same = draw(rng(), FEATURES, 0, 50, 1, 4, None)
    assert np.array_equal(same.feature, uniform.feature) and np.array_equal(same.split, uniform.split)
    leaning = draw(rng(), FEATURES, 0, 500, 1, 4, np.array([1.0, PRIOR_FLOOR, 1.0, 1.0]))
    share = np.mean(leaning.feature == 1)
    assert 0.01 < share < 0.06  # 0.1 / 3.1 of the levels


def test_a_federated_base_margin_is_finite_and_moderate():
    """A NaN margin made every gradient NaN and failed the job after admission, charged."""
    fields = dict(
        rounds=5, max_depth=2, learning_rate=0.3, reg_lambda=1.0, batch_size=5, grad_share=0.8, max_leaf=2.0
    )
    assert FederatedSettings(**fields, base_margin=[0.5]).base_margin == [0.5]
    for margin in ([float("nan")], [float("inf")], [1e300], []):
        with pytest.raises(ValidationError):
            FederatedSettings(**fields, base_margin=margin)
