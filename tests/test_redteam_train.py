"""A motivated analyst against the training rows: one person's label read through a training leaf that a
large evaluation group shares, by 20 analysts with their own tokens and budgets (issue 20).

The victim is the only row aged over 99, and ten other rows are aged 91 to 98 (all label 0). Each analyst
derives one feature, `leaf` = 1 for the old rows and for a large group of young rows with a high score
(whose labels are mostly 1), puts that group in the evaluation rows (`eval.where`) and trains a depth-1
stump on `leaf` with the smallest `min_child_weight` the catalog allows. The stump's `leaf = 1` value is
fitted on eleven training rows, the victim among them, and predicts every row of the evaluation group:
one training row moves the whole group's released log loss. The analyst knows every other row (the
adversary differential privacy is defined against), fits the same stump here in both worlds, and guesses
the world whose log loss is nearer the released one.

No guess may beat the budget the analyst spent: for Gaussian DP, accuracy <= Phi(sqrt(2 rho) / 2) plus a
binomial margin (`test_redteam_dp.bound`). In mode dp_eval_only (DP evaluation of a model trained
without DP) the attack wins 20 of 20; in mode dp (the DP trainer: training rows under the same proof) it
must lose.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from sklearn.metrics import log_loss

from tests.serverproc import running
from tests.test_redteam_dp import bound

ROWS = 8000
ANALYSTS = 20
VICTIM = 1234  # the row under attack (its index)
NEIGHBOURS = 10  # the other training rows in the victim's leaf: with it, 11 rows, just over the floor
OLD = "age > 90"
GROUP = "score > 0.3 AND age <= 90"  # the evaluation group that shares the victim's leaf
SPEC = {
    "label": "label",
    "features": [],
    "derive": {"leaf": f"CASE WHEN {OLD} OR score > 0.3 THEN 1 ELSE 0 END"},
    "eval": {"where": GROUP},
}
# Mode dp_eval_only trains without privacy, where the attack wins; mode dp trains with the DP trainer,
# where the same attack must lose.
MODES = [
    pytest.param(("dp_eval_only", True), id="dp-eval-only"),
    pytest.param(("dp", False), id="dp-trainer"),
]


def table(label: int) -> pd.DataFrame:
    """The hidden table in the world where the victim's label is `label`."""
    rng = np.random.default_rng(20)
    score = rng.normal(size=ROWS)
    frame = pd.DataFrame(
        {
            "id": np.arange(1, ROWS + 1),
            "age": rng.integers(20, 81, ROWS).astype(float),
            "score": score,
            "label": (score + rng.normal(scale=0.7, size=ROWS) > 0).astype(int),
        }
    )
    old = rng.choice(np.setdiff1d(np.arange(ROWS), [VICTIM]), NEIGHBOURS, replace=False)
    frame.loc[old, "age"] = 91.0 + np.arange(NEIGHBOURS) % 8
    frame.loc[old, ["score", "label"]] = [-1.0, 0]
    frame.loc[VICTIM, ["age", "score", "label"]] = [99.25, 0.0, label]
    return frame


def stump(min_child_weight: float | None, seed: int) -> xgb.XGBClassifier:
    """Depth 1, one round, a full Newton step from p = 0.5: the leaf is -G / H over its training rows."""
    return xgb.XGBClassifier(
        n_estimators=1,
        max_depth=1,
        learning_rate=1.0,
        reg_lambda=0.0,
        base_score=0.5,
        min_child_weight=min_child_weight,
        random_state=seed,
    )


def expected_log_loss(frame: pd.DataFrame, min_child_weight: float | None) -> float:
    """The log loss the server would release without noise: the same stump fitted here on the rows the
    spec admits (the analyst knows every row but the victim's label)."""
    leaf = ((frame.age > 90) | (frame.score > 0.3)).astype(float).to_frame("leaf")
    is_eval = (frame.score > 0.3) & (frame.age <= 90)
    model = stump(min_child_weight, 0).fit(leaf[~is_eval], frame.label[~is_eval])
    p = model.predict_proba(leaf[is_eval])[:, 1]
    return float(log_loss(frame.label[is_eval], np.clip(p, 0.01, 0.99), labels=[0, 1]))


@pytest.fixture(scope="module", params=MODES)
def red(request, tmp_path_factory):
    mode, wins = request.param
    base = tmp_path_factory.mktemp("redteam_train")
    data = base / "data"
    data.mkdir()
    for bit in (0, 1):
        table(bit).to_parquet(data / f"w{bit}.parquet", index=False)
    secrets = np.random.default_rng(7).permutation([0, 1] * (ANALYSTS // 2))
    config, users = "", {}
    for i, bit in enumerate(secrets):
        config += (
            f'\n[datasets.t{i:02d}]\npath = "{data}/w{bit}.parquet"\nid_column = "id"\n'
            f'label_columns = ["label"]\ncolumn_levels.label = ["0", "1"]\nprivacy = "{mode}"\n'
        )
        users[f"analyst{i:02d}"] = [f"t{i:02d}"]
    with running(data, base / "server.log", users, config) as server:
        server.secrets, server.wins = secrets, wins
        yield server


def test_one_training_row_through_a_shared_leaf(red):
    right, spent = 0, []
    for i, secret in enumerate(red.secrets):
        c = red.client(f"analyst{i:02d}")
        dataset = f"t{i:02d}"
        floor = c.dataset(dataset).bounds.min_leaf_rows
        min_child_weight = floor * 0.25 if floor else None  # the required floor: 10 rows at p = 0.5
        worlds = [expected_log_loss(table(bit), min_child_weight) for bit in (0, 1)]
        result = c.train(stump(min_child_weight, i), {"dataset": dataset, **SPEC}, timeout=300)
        released = result.metrics["log_loss"]
        right += int(abs(released - worlds[1]) < abs(released - worlds[0])) == secret
        spent.append(c.cost(None, {"dataset": dataset, "label": "label"}).rho_spent)
    most = max(spent)
    assert 0 < most <= 0.2, "every job was charged, and the attack stayed cheap"
    limit = bound(most, ANALYSTS)
    if red.wins:
        assert right / ANALYSTS > limit, (right, most, limit)
    else:
        assert right / ANALYSTS <= limit, (right, most, limit)
