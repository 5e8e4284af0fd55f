"""A motivated analyst against mode dp: every route that recovered one row's label (or membership) in a
6,000-row table under mode rules, played by 20 independent analysts with their own tokens and budgets.

Each analyst is given one table, at random: the table with the target row's label 0, the same table
with it 1 (label routes), or the table with the row and without it (membership routes), and guesses.
No route may guess right more often than the budget the analyst spent allows: for Gaussian DP,
accuracy <= Phi(sqrt(2 rho) / 2), plus a binomial margin for 20 analysts. The routes closed by structure
(the label in a filter, an `eval_metric` decided by one row) are refused outright, before any job
exists; encoders and native categoricals never carry the planted single-row category; and no response
body holds the planted values. The same attack harness recovers the label every time on a twin table
in mode rules, so the attacks are real.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder

from remote_magic.client.dryrun import dry_run
from remote_magic.client.errors import DryRunError, RemoteError
from remote_magic.contract.wire import DatasetSpec
from remote_magic_server.worker import staging
from tests.serverproc import running
from tests.test_streaming import task_for

ROWS = 6000
TARGET = 4321  # the row under attack (its index)
TARGET_AGE = 99.25  # no other row has an age above 80, nor a fraction
NICK = "QUOKKA-UNIQUE-4242"
ANALYSTS = 20
Z_999 = 3.09  # one-sided 99.9% normal quantile: the binomial margin
BODIES: list[str] = []


def table(label: int | None) -> pd.DataFrame:
    """The hidden table; `label` is the target row's label, None for the table without it."""
    rng = np.random.default_rng(11)
    age = rng.integers(20, 81, ROWS).astype(float)
    score = rng.normal(size=ROWS)
    frame = pd.DataFrame(
        {
            "id": np.arange(1, ROWS + 1),
            "age": age,
            "score": score,
            "nickname": rng.choice(["alpha", "beta", "gamma"], ROWS).astype(object),
            "label": (score + rng.normal(scale=0.7, size=ROWS) > 0).astype(int),
        }
    )
    frame.loc[TARGET, ["age", "nickname"]] = [TARGET_AGE, NICK]
    if label is None:
        return frame.drop(index=TARGET).reset_index(drop=True)
    frame.loc[TARGET, "label"] = label
    return frame


@pytest.fixture(scope="module", params=["local", pytest.param("dask", marks=pytest.mark.dask)])
def red(request, tmp_path_factory):
    """The analysts' server; run once more with `[executor] kind = "dask"` (a LocalCluster on loopback),
    where no route may beat the budget either."""
    base = tmp_path_factory.mktemp("redteam_dp")
    data = base / "data"
    data.mkdir()
    worlds = {"w0": table(0), "w1": table(1), "out": table(None), "w2": table(2)}
    worlds["nan"] = table(0).astype({"label": float})
    worlds["nan"].loc[TARGET, "label"] = float("nan")
    worlds["nan_out"] = table(None).astype({"label": float})
    # Nine other rows hold a tenth nickname, and the target too (or the target is out): ten rows or nine.
    worlds["d_in"], worlds["d_out"] = table(0), table(None)
    for frame in (worlds["d_in"], worlds["d_out"]):
        frame.loc[frame.index[:9], "nickname"] = "zeta"
    worlds["d_in"].loc[TARGET, "nickname"] = "zeta"
    # A boolean column, missing only in the target's row; and the target's label an infinity.
    for name, frame in (("flag_in", table(0)), ("flag_out", table(None))):
        frame["flag"] = (frame["id"] % 3 == 0).astype(object)
        frame.loc[frame["age"] > 99, "flag"] = None
        worlds[name] = frame
    worlds["inf"] = table(0).astype({"label": float})
    worlds["inf"].loc[TARGET, "label"] = float("inf")
    for name, frame in worlds.items():
        rows = pa.Table.from_pandas(frame, preserve_index=False)
        if name == "nan":  # a NaN, not the null pandas would write for it
            at = rows.schema.get_field_index("label")
            rows = rows.set_column(at, "label", pa.array(frame["label"].to_numpy(), from_pandas=False))
        pq.write_table(rows, data / f"{name}.parquet")
    rng = np.random.default_rng(2026)
    secrets = {
        "label": rng.permutation([0, 1] * (ANALYSTS // 2)),
        "member": rng.permutation([0, 1] * (ANALYSTS // 2)),
    }
    # Each member analyst's table is its own: the first row (never the target) gets another id, so no two
    # hold the same rows. Tables of the same rows share one catalog draw (rev8 #5): on shared files the
    # twenty guesses from the catalog were two draws, not twenty, and came out all right or all wrong.
    for i in range(ANALYSTS):
        frame = worlds["w0" if secrets["member"][i] else "out"].copy()
        frame.loc[0, "id"] = ROWS + 1 + i
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), data / f"m{i:02d}.parquet")
    config, users = "", {}
    common = 'id_column = "id"\nlabel_columns = ["label"]\n'
    binary = common + 'column_levels.label = ["0", "1"]\n'  # the owner's declared classes (mode dp)
    for i in range(ANALYSTS):
        label_file = f"w{secrets['label'][i]}"
        member_file = f"m{i:02d}"
        config += f'\n[datasets.l{i:02d}]\npath = "{data / label_file}.parquet"\n{binary}'
        config += f'\n[datasets.m{i:02d}]\npath = "{data / member_file}.parquet"\n{binary}'
        users[f"analyst{i:02d}"] = [f"l{i:02d}", f"m{i:02d}"]
    for bit in (0, 1):
        config += f'\n[datasets.rules{bit}]\npath = "{data}/w{bit}.parquet"\n{common}privacy = "rules"\n'
    users["control"] = ["rules0", "rules1"]
    # The classes: the target's label is a class no other row holds ("w2"), or the target is out.
    declared = 'column_levels.label = ["0", "1.0"]\n'
    two = 'column_levels.label = ["0", "1"]\n'
    eval_only = 'privacy = "dp_eval_only"\n'
    for name, world, extra in (
        ("declared_in", "w2", declared),
        ("declared_out", "out", declared),
        ("declared_three", "out", 'column_levels.label = ["0", "1", "2"]\n'),
        ("undeclared_in", "w2", ""),
        ("undeclared_out", "out", ""),
        ("eval_only_in", "w2", eval_only),
        ("eval_only_out", "out", eval_only),
        ("nan_in", "nan", two),
        ("nan_out", "nan_out", two),
        ("range_in", "w0", "label_ranges.label = [0, 1]\n"),
        ("range_out", "out", "label_ranges.label = [0, 1]\n"),
        ("zeta_in", "d_in", two),
        ("zeta_out", "d_out", two),
        ("zeta_eval_only_in", "d_in", two + eval_only),
        ("zeta_eval_only_out", "d_out", two + eval_only),
        ("flag_in", "flag_in", two),
        ("flag_out", "flag_out", two),
        ("flag_eval_only_in", "flag_in", two + eval_only),
        ("flag_eval_only_out", "flag_out", two + eval_only),
        ("inf_in", "inf", "label_ranges.label = [0, 1]\n"),
        ("inf_out", "nan_out", "label_ranges.label = [0, 1]\n"),
    ):
        config += f'\n[datasets.{name}]\npath = "{data}/{world}.parquet"\n{common}{extra}'
    users["classes"] = [
        *("declared_in", "declared_out", "declared_three", "undeclared_in", "undeclared_out"),
        *("nan_in", "nan_out", "eval_only_in", "eval_only_out", "range_in", "range_out"),
        *("zeta_in", "zeta_out", "zeta_eval_only_in", "zeta_eval_only_out"),
        *("flag_in", "flag_out", "flag_eval_only_in", "flag_eval_only_out", "inf_in", "inf_out"),
    ]
    with contextlib.ExitStack() as stack:
        if request.param == "dask":
            from distributed import LocalCluster

            cluster = stack.enter_context(
                LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
            )
            config += f'\n[executor]\nkind = "dask"\nscheduler = "{cluster.scheduler_address}"\n'
        server = stack.enter_context(running(data, base / "server.log", users, config))
        server.secrets = secrets
        yield server
    for body in BODIES:
        assert NICK not in body and str(TARGET_AGE) not in body


def client(red, user):
    c = red.client(user)
    c._session.hooks["response"].append(lambda r, *a, **k: BODIES.append(r.text))
    return c


def stump(positive_age: float) -> xgb.XGBClassifier:
    """A hand-built base model, fitted here on made-up rows: margin 0 (p = 0.5) for ages up to 80 and
    confident (p ~ 0.98) above `positive_age`'s split; its min_child_weight is then set to pass the
    parameter bounds. With `positive_age` = the target's age it singles the target out; with 200 it
    treats the target like everyone else."""
    ages = np.arange(20, 81, dtype=float)
    made_up = pd.DataFrame({"age": np.r_[ages, ages, positive_age], "score": 0.0})
    labels = np.r_[np.zeros(len(ages)), np.ones(len(ages)), 1]
    model = xgb.XGBClassifier(
        n_estimators=3, max_depth=1, learning_rate=1.0, min_child_weight=0, reg_lambda=0, base_score=0.5
    )
    model.fit(made_up, labels)
    return model.set_params(min_child_weight=3)


def _log_loss(run, model, spec) -> float | None:
    try:
        return run(model, spec).metrics.get("log_loss")
    except RemoteError:
        return None


def differencing(c, dataset: str, train: bool) -> float | None:
    """Two jobs on the same rows: the model that singles the target out, and its twin that does not.
    Every other row gets the same prediction from both, so the log losses differ by the target's
    contribution alone: positive when its label is 0, negative when 1, zero when it is absent."""
    spec = {"dataset": dataset, "label": "label", "features": ["age", "score"]}
    if train:  # a train job of 0 new rounds from the stump is scored like an evaluation
        spec["eval"] = {"where": "age > 50"}
        run = c.train
        models = [stump(TARGET_AGE).set_params(n_estimators=0), stump(200.0).set_params(n_estimators=0)]
    else:
        run = c.evaluate
        models = [stump(TARGET_AGE), stump(200.0)]
    singled, twin = (_log_loss(run, m, spec) for m in models)
    return None if singled is None or twin is None else singled - twin


def label_by_evaluation(c, dataset: str) -> int:
    diff = differencing(c, dataset, train=False)
    return int(diff is not None and diff < 0.0002)


def label_by_continuing(c, dataset: str) -> int:
    diff = differencing(c, dataset, train=True)
    return int(diff is not None and diff < 0.0002)


def member_by_evaluation(c, dataset: str) -> int:
    diff = differencing(c, dataset, train=False)
    return int(diff is not None and abs(diff) > 0.00005)


def label_by_indicator(c, dataset: str) -> int:
    """A derived indicator of the target row (and an expression that overflows on every row), a deep
    model, the eval learning curve and the importance ranking: the indicator ranks first if it helps."""
    spec = {
        "dataset": dataset,
        "label": "label",
        "features": ["score"],
        "derive": {"flag": "CASE WHEN age > 90 THEN 1 ELSE 0 END", "boom": "exp(age * 100)"},
        "eval": {"fraction": 0.5, "seed": 4},
    }
    model = xgb.XGBClassifier(n_estimators=30, max_depth=8, min_child_weight=3)
    try:
        result = c.train(model, spec, release={"importance": 1, "curve": 5})
    except RemoteError:
        return 0
    return int(result.importance_ranking[:1] == ["flag"])


def member_by_count(c, dataset: str) -> int:
    """The released row counts of the whole table, against its known size."""
    spec = {"dataset": dataset, "label": "label", "features": ["score"], "eval": {"fraction": 0.5, "seed": 1}}
    result = c.train(xgb.XGBClassifier(n_estimators=2, max_depth=2, min_child_weight=3), spec)
    rows = (result.summary["train"]["rows"] or 0) + (result.summary["eval"]["rows"] or 0)
    return int(rows >= ROWS)


def nan_stump() -> xgb.XGBClassifier:
    """The stump that singles the target out, with a NaN leaf on the target's side: the predictions of
    exactly the rows above age 80 are NaN. Scoring failed on them, so the failure (`not_released` in
    mode dp) came exactly when the target was in the table, and a result when it was not."""
    model = stump(TARGET_AGE)
    data = json.loads(model.get_booster().save_raw("json"))
    tree = data["learner"]["gradient_booster"]["model"]["trees"][0]
    right = tree["right_children"][0]
    tree["split_conditions"][right] = tree["base_weights"][right] = float("nan")
    model.get_booster().load_model(bytearray(json.dumps(data).encode()))
    return model


def member_by_nan_leaf(c, dataset: str) -> int:
    spec = {"dataset": dataset, "label": "label", "features": ["age", "score"]}
    try:
        c.evaluate(nan_stump(), spec)
    except RemoteError as exc:
        return int(exc.code == "not_released")
    return 0


def member_by_refusal(c, dataset: str) -> int:
    """Describe a large group, then the same group OR the target's own values: a differencing guard on
    the exact rows refused the second exactly when the target was in the table."""
    group = {"dataset": dataset, "label": "label", "features": ["score"], "where": "age <= 50"}
    try:
        c.describe(group)
        c.describe({**group, "where": "age <= 50 OR age > 99"})
    except RemoteError as exc:
        return int(exc.code == "differencing_refused")
    return 0


def member_by_catalog(c, dataset: str) -> int:
    """The catalog's row count of the table, against its known size with the target."""
    return int((c.dataset(dataset).rows or 0) >= ROWS)


def bound(rho: float, n: int) -> float:
    """The best accuracy a guess may have after spending rho (Gaussian DP), plus the binomial margin."""
    p = 0.5 * (1 + math.erf(math.sqrt(2 * rho) / 2 / math.sqrt(2)))
    return p + Z_999 * math.sqrt(p * (1 - p) / n)


ROUTES = {
    "label": {
        "evaluate": label_by_evaluation,
        "continue": label_by_continuing,
        "indicator": label_by_indicator,
    },
    "member": {
        "evaluate": member_by_evaluation,
        "count": member_by_count,
        "refusal": member_by_refusal,
        "nan_leaf": member_by_nan_leaf,
        "catalog": member_by_catalog,
    },
}


@pytest.mark.parametrize("kind", ["label", "member"])
def test_no_route_beats_the_budget(red, kind):
    prefix = "l" if kind == "label" else "m"
    right = dict.fromkeys(ROUTES[kind], 0)
    spent = []
    for i in range(ANALYSTS):
        c = client(red, f"analyst{i:02d}")
        dataset = f"{prefix}{i:02d}"
        for name, route in ROUTES[kind].items():
            right[name] += route(c, dataset) == red.secrets[kind][i]
        spent.append(c.cost(None, {"dataset": dataset, "label": "label"}).rho_spent)
    most = max(spent)
    # a train job in mode dp costs the DP trainer's rho too (0.05 beside the evaluation's 0.01)
    assert 0 < most <= 0.3, "every job an attacker ran was charged, none was free"
    for name, hits in right.items():
        assert hits / ANALYSTS <= bound(most, ANALYSTS), (kind, name, hits, most)


def test_the_attacks_are_real_they_win_in_mode_rules(red):
    c = client(red, "control")
    for bit in (0, 1):
        assert label_by_evaluation(c, f"rules{bit}") == bit
        assert label_by_continuing(c, f"rules{bit}") == bit
    assert member_by_refusal(c, "rules0") == 1  # the guard still stands in mode rules


def test_routes_closed_by_structure_are_refused_before_any_job(red):
    c = client(red, "analyst00")
    before = len(c.jobs())
    with pytest.raises(RemoteError) as label_filter:
        c.submit(
            xgb.XGBClassifier(min_child_weight=3), {"dataset": "l00", "label": "label", "where": "label = 1"}
        )
    assert label_filter.value.code == "invalid_filter"
    with pytest.raises(RemoteError) as derived:
        c.submit(
            xgb.XGBClassifier(min_child_weight=3),
            {"dataset": "l00", "label": "label", "derive": {"x": "label"}},
        )
    assert derived.value.code == "invalid_derive" and "is a label column" in str(derived.value)
    with pytest.raises(RemoteError) as metric:  # a threshold metric would count one row's side
        c.submit(
            xgb.XGBClassifier(min_child_weight=3, eval_metric="error@0.99"),
            {"dataset": "l00", "label": "label"},
        )
    assert metric.value.code == "parameter_out_of_bounds"
    assert len(c.jobs()) == before


def test_a_model_no_prediction_survives_is_refused_before_any_row_in_both_worlds(red):
    """The NaN-leaf stump is refused on the model alone, at no cost, whether the target is in or not."""
    for i in [list(red.secrets["member"]).index(0), list(red.secrets["member"]).index(1)]:
        c = client(red, f"analyst{i:02d}")
        spec = {"dataset": f"m{i:02d}", "label": "label", "features": ["age", "score"]}
        spent = c.cost(None, spec).rho_spent
        with pytest.raises(RemoteError) as refused:
            c.evaluate(nan_stump(), spec)
        assert refused.value.code == "invalid_model" and "finite" in str(refused.value)
        assert c.cost(None, spec).rho_spent == spent


def test_declared_classes_are_the_classes_whatever_the_rows(red):
    """Without a declaration the classes were the admitted rows' labels: one row with its own label was
    a class of one row, and the job was refused `class_too_small` (on its noisy count) where without the
    row there was no such class to refuse, so the refusal said the row was in. Mode dp now trains a
    classifier only on the owner's declared classes: without them it is refused before any row is read,
    at no cost, in both worlds alike (a dry run says so too). With them the staging query admits only rows
    of those classes, and the model and the released counts have exactly those classes, with or without
    the row ("1.0" declares the integer label 1); a declared class no row holds is still a class, its
    count noised like any other's (mostly too small to release)."""
    c = client(red, "classes")
    spec = {"label": "label", "features": ["score"]}
    model = xgb.XGBClassifier(n_estimators=2, max_depth=2)

    def classes(dataset: str) -> tuple[list[str], int] | str:
        """The released classes and the model's num_class, or the refusal's code."""
        try:
            result = c.train(model, {**spec, "dataset": dataset})
        except RemoteError as exc:
            return exc.code
        counted = [k.label for k in result.raw.summary.train.classes]
        booster = json.loads(c.download_model(result.job_id))
        return counted, int(booster["learner"]["learner_model_param"]["num_class"])

    undeclared = ("undeclared_in", "undeclared_out")
    assert [classes(name) for name in undeclared] == ["unsupported_model"] * 2
    with pytest.raises(DryRunError) as refused:
        first = undeclared[0]
        dry_run(model, DatasetSpec(dataset=first, **spec), c.dataset(first), c.mock(first))
    assert refused.value.code == "unsupported_model" and "`column_levels.label`" in str(refused.value)
    assert [c.cost(None, {**spec, "dataset": name}).rho_spent for name in undeclared] == [0.0, 0.0]
    assert classes("declared_in") == classes("declared_out") == (["0", "1"], 0)
    assert classes("declared_three") in ("class_too_small", (["0", "1", "2"], 3))


def test_an_evaluation_takes_its_classes_from_the_model_never_from_the_rows(red):
    """An evaluate job on a label without declared classes took its classes from the evaluation rows: a
    row with a label of its own made a class, and the job was refused `class_too_small` (or not released)
    exactly when that row was in. Now the classes are public before any row is read: the client sends the
    fitted classifier's own `classes_` (the spec's `classes`), only rows of those classes are admitted,
    and both worlds give the same classes. Without public classes, or with as many as the model does not
    predict, the evaluation is refused before any row, at no cost, in both worlds alike."""
    c = client(red, "classes")
    rng = np.random.default_rng(5)
    public = pd.DataFrame({"score": rng.normal(size=400)})
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(public, (public.score > 0).astype(int))
    undeclared = ("undeclared_in", "undeclared_out")
    spec = {"label": "label", "features": ["score"]}
    for name in undeclared:
        result = c.evaluate(model, {**spec, "dataset": name})
        assert [k.label for k in result.raw.summary.eval.classes] == ["0", "1"]

    def refusal(dataset: str, model: object, **more: object) -> str:
        try:
            c.evaluate(model, {**spec, "dataset": dataset, **more})
        except RemoteError as exc:
            return f"{exc.code}: {exc}"
        return "evaluated"

    spent = [c.cost(None, {**spec, "dataset": name}).rho_spent for name in undeclared]
    booster = model.get_booster()  # a bare Booster has no `classes_` for the client to send
    found = {name: refusal(name, booster) for name in undeclared}
    assert len(set(found.values())) == 1 and found["undeclared_in"].startswith("invalid_spec"), found
    assert "`classes`" in found["undeclared_in"] and "`column_levels.label`" in found["undeclared_in"]
    three = [refusal(name, model, classes=[0, 1, 2]) for name in undeclared]
    assert len(set(three)) == 1 and three[0].startswith("invalid_model") and "2 classes" in three[0]
    assert [c.cost(None, {**spec, "dataset": name}).rho_spent for name in undeclared] == spent
    with pytest.raises(DryRunError) as refused:
        dry_run(
            booster,
            DatasetSpec(dataset="undeclared_in", **spec),
            c.dataset("undeclared_in"),
            c.mock("undeclared_in"),
            kind="evaluate",
        )
    assert refused.value.code == "invalid_spec"
    owner = refusal("declared_in", model, classes=[0, 2])
    assert owner.startswith("invalid_spec") and "`column_levels.label`" in owner
    assert refusal("declared_in", model, classes=[0, 1]) == "evaluated"  # the owner's own, named again
    # describe: the label's classes are the public ones, or none (the label is then a sketched column)
    shown = [c.describe({**spec, "dataset": name}) for name in undeclared]
    assert [d.classes for d in shown] == [None, None]
    assert all(d.columns["label"].kind == "numeric" for d in shown)  # a histogram on sketched edges
    named = [c.describe({**spec, "dataset": name, "classes": [0, 1]}).classes for name in undeclared]
    assert [sorted(n) for n in named] == [["0", "1"], ["0", "1"]], named


def test_in_mode_dp_eval_only_a_training_takes_public_classes_too(red):
    """Mode dp_eval_only trains without DP but releases its evaluation under DP: a classifier's classes
    taken from the rows made a class of the one row with a label of its own (in the released counts,
    or a refusal on its noisy count) exactly when that row was in. Its training now takes public classes
    too: without them it is refused before any row, at no cost, in both worlds alike; with them both
    worlds have the same classes."""
    c = client(red, "classes")
    worlds = ("eval_only_in", "eval_only_out")
    spec = {"label": "label", "features": ["score"]}
    model = xgb.XGBClassifier(n_estimators=2, max_depth=2, min_child_weight=3)
    refused = []
    for name in worlds:
        with pytest.raises(RemoteError) as exc:
            c.train(model, {**spec, "dataset": name})
        refused.append((exc.value.code, c.cost(None, {**spec, "dataset": name}).rho_spent))
    assert refused == [("invalid_spec", 0.0)] * 2
    for name in worlds:
        result = c.train(model, {**spec, "dataset": name, "classes": [0, 1]})
        assert [k.label for k in result.raw.summary.eval.classes] == ["0", "1"]


def test_a_row_whose_label_is_nan_is_not_admitted_and_fails_nothing(red):
    """A NaN label in a column of decimals was admitted (the staging query left out NULLs only), and the
    label rules then ended the job after admission (`not_released`) exactly when such a row was in."""
    c = client(red, "classes")
    for dataset in ("nan_in", "nan_out"):
        for kind in (xgb.XGBClassifier(n_estimators=2, max_depth=2), xgb.XGBRegressor(n_estimators=2)):
            spec = {"dataset": dataset, "label": "label", "features": ["score"]}
            try:
                result = c.train(kind, spec)
            except RemoteError as exc:  # a regression without a label range: refused before any row
                assert isinstance(kind, xgb.XGBRegressor) and exc.code == "unsupported_model", exc
                continue
            assert [k.label for k in result.raw.summary.train.classes] == ["0.0", "1.0"]


def test_the_planted_category_never_leaves_through_encoders_or_native_categoricals(red):
    c = client(red, "analyst01")
    encoder = ColumnTransformer(
        [("nick", OneHotEncoder(handle_unknown="ignore"), ["nickname"])], remainder="passthrough"
    )
    pipeline = Pipeline([("pre", encoder), ("m", xgb.XGBClassifier(n_estimators=5, min_child_weight=3))])
    spec = {"dataset": "l01", "label": "label", "features": ["nickname", "score"]}
    for model in (pipeline, xgb.XGBClassifier(n_estimators=5, min_child_weight=3)):
        try:
            result = c.train(model, spec, release={"importance": 3})
        except RemoteError:
            continue
        assert NICK not in repr(result) and all(NICK not in name for name in result.importance_ranking)


def test_value_dependent_failures_look_the_same_in_both_worlds(red):
    """An evaluation set of the target row only, and a derive that overflows only on it: each world
    gives the same code (a refusal on noisy counts, or a result), never a failure only one world has."""
    outcomes: dict[int, set] = {}
    for i in [list(red.secrets["label"]).index(0), list(red.secrets["label"]).index(1)]:
        c = client(red, f"analyst{i:02d}")
        dataset = f"l{i:02d}"
        spec = {"dataset": dataset, "label": "label", "features": ["score"], "eval": {"where": "age > 90"}}
        job = c.submit(xgb.XGBClassifier(n_estimators=2, min_child_weight=3), spec)
        job.wait(timeout=120)
        outcomes.setdefault(red.secrets["label"][i], set()).add(
            job.status.error.code if job.status.error else "ok"
        )
    assert outcomes[0] == outcomes[1] == {"cohort_too_small"}


def test_a_prediction_that_overflows_on_one_row_fails_nothing(red):
    """A `count:poisson` Booster whose one leaf (100, within the leaf limit) holds only the target's age
    predicts exp(100), inf in float32, for that row alone. Scoring it failed, so the evaluation ended
    `not_released` exactly when the target was in the table; now the prediction is read at the label
    range's end, and both worlds release the metrics."""
    frame = pd.DataFrame({"age": [20.0, 50.0, 95.0, 30.0]})
    booster = xgb.train(
        {"objective": "count:poisson", "max_depth": 1, "base_score": 1.0},
        xgb.DMatrix(frame, label=[1.0, 2.0, 3.0, 4.0]),
        1,
    )
    data = json.loads(booster.save_raw("json"))
    tree = data["learner"]["gradient_booster"]["model"]["trees"][0]
    tree["split_indices"][0], tree["split_conditions"][0], tree["default_left"][0] = 0, 90.0, 1
    tree["split_conditions"][1], tree["split_conditions"][2] = 0.0, 100.0  # age >= 90: exp(100)
    booster.load_model(bytearray(json.dumps(data).encode()))
    assert np.isinf(booster.predict(xgb.DMatrix(pd.DataFrame({"age": [TARGET_AGE]})))).all()
    c = client(red, "classes")
    for dataset in ("range_in", "range_out"):
        result = c.evaluate(booster, {"dataset": dataset, "label": "label", "features": ["age"]})
        assert result.metrics["rmse"] is not None and result.metrics["mae"] is not None, dataset


def test_a_derived_value_beyond_float32_fails_nothing(red):
    """`CASE WHEN age > 99 THEN 1e300 ELSE 0 END` is a finite double, so it passed as a value; XGBoost
    reads features as float32, where it is inf, and refused the rows: an evaluation or a training ended
    `not_released` exactly when the target (the one age above 99) was in, in modes dp and dp_eval_only
    (a review: 20 of 20 right at rho 0.01). Such a value is missing now, as an infinite one was."""
    c = client(red, "classes")
    derive = {"big": "CASE WHEN age > 99 THEN 1e300 ELSE 0 END"}
    made_up = pd.DataFrame({"score": np.linspace(-2, 2, 200), "big": 0.0})
    fitted = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(made_up, (made_up.score > 0).astype(int))
    for dataset in ("zeta_in", "zeta_out", "zeta_eval_only_in", "zeta_eval_only_out"):
        spec = {"dataset": dataset, "label": "label", "features": ["score"], "derive": derive}
        assert c.evaluate(fitted, spec).metrics["auc"] is not None, dataset
        spec["eval"] = {"where": "age > 60"}  # the target is an evaluation row
        model = xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3)
        assert c.train(model, spec).metrics["auc"] is not None, dataset


def test_an_infinite_label_is_a_missing_one(red):
    """A regression label of inf was admitted (the staging query left out NULL and NaN), and scoring
    then failed, `not_released`, exactly when that row was in."""
    c = client(red, "classes")
    made_up = pd.DataFrame({"score": np.linspace(-2, 2, 200)})
    fitted = xgb.XGBRegressor(n_estimators=3, max_depth=2).fit(made_up, (made_up.score > 0).astype(float))
    for dataset in ("inf_in", "inf_out"):
        spec = {"dataset": dataset, "label": "label", "features": ["score"]}
        assert c.evaluate(fitted, spec).metrics["rmse"] is not None, dataset


def test_a_boolean_column_reads_the_same_with_or_without_a_missing_value(red):
    """A boolean column with one missing value became pandas `object`: describe showed it as text, and
    on a Dask cluster XGBoost refused the partition, exactly when the target (its one missing value) was
    admitted. Its type now comes from the schema."""
    c = client(red, "classes")
    where = "(age < 40 AND flag IS NOT NULL) OR age > 99"
    kinds = {}
    for dataset in ("flag_in", "flag_out"):
        described = c.describe({"dataset": dataset, "label": "label", "features": ["flag"], "where": where})
        kinds[dataset] = described.columns["flag"].kind
        made_up = pd.DataFrame({"score": np.linspace(-2, 2, 200), "flag": np.arange(200) % 2 == 0})
        fitted = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(made_up, (made_up.score > 0).astype(int))
        spec = {"dataset": dataset, "label": "label", "features": ["score", "flag"], "where": "age > 70"}
        assert c.evaluate(fitted, spec).metrics["auc"] is not None, dataset
        spec = {"dataset": dataset.replace("flag", "flag_eval_only"), "label": "label"}
        spec |= {"features": ["score", "flag"], "eval": {"where": "age < 30"}}  # the target trains
        model = xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3)
        assert c.train(model, spec).metrics["auc"] is not None, dataset
    assert kinds == {"flag_in": "categorical", "flag_out": "categorical"}  # True/False counts (e20b624)


def test_a_describe_of_no_row_fails_as_one_of_one_row(red):
    """A filter only the target row can pass, with a text column to sketch (its levels undeclared): the
    sketch once asked an empty release where no row had a value, which failed (`not_released`), while
    the target row made it pass to the noisy cohort check (`cohort_too_small`): membership, exactly, for
    a describe's cost. Each world now gives the same refusal."""
    c = client(red, "classes")
    codes = {}
    for name in ("declared_in", "declared_out"):
        for where in ("age > 90", f"nickname = '{NICK}'"):
            spec = {"dataset": name, "label": "label", "features": ["nickname"], "where": where}
            with pytest.raises(RemoteError) as refused:
                c.describe(spec)
            codes.setdefault(name, set()).add(refused.value.code)
            assert "(noisy count; the describe was charged)" in str(refused.value)
    assert codes["declared_in"] == codes["declared_out"] == {"cohort_too_small"}


def test_a_filter_that_fails_on_one_row_leaves_that_row_out_in_both_worlds(tmp_path):
    """A date compared with a nanosecond timestamp (both times, so the check lets it through) cannot be
    cast on a row dated 9999-12-31: that failed the whole staging query, uncharged, exactly when such a
    row was in the table (found by review). Now the row is left out, as one the filter is false for."""
    dates = [datetime.date(2020, 1, 1) + datetime.timedelta(days=int(d)) for d in range(40)]
    admitted = {}
    for world in ("in", "out"):
        when = [*dates[:-1], datetime.date(9999, 12, 31) if world == "in" else dates[-1]]
        rows = pa.table(
            {
                "id": pa.array(range(40), pa.int64()),
                "day": pa.array(when, pa.date32()),
                "seen": pa.array([1_600_000_000_000_000_000] * 40, pa.timestamp("ns")),
                "label": pa.array([0, 1] * 20, pa.int64()),
            }
        )
        pq.write_table(rows, tmp_path / f"{world}.parquet")
        task = task_for(
            tmp_path / f"{world}.parquet", {"dataset": "d", "label": "label", "where": "day < seen"}, 0
        )
        (tmp_path / world).mkdir()
        part = staging.stage(task, tmp_path / world)
        admitted[world] = len(part.train_rows) + len(part.eval_rows)
    assert admitted == {"in": 39, "out": 40}


def test_text_features_are_read_by_the_models_own_categories_never_by_the_rows(red):
    """A fitted model's text feature was coded by its recorded categories, then the admitted rows' other
    levels, after a rare merge decided by exact counts: with the target, ten rows kept a nickname the
    model never saw (XGBoost refuses one that sorts after its own), without it nine merged into
    `(rare)` (accepted), so the evaluation failed `not_released` exactly when the target was in. Now the
    model's own categories are the whole list (a level it never saw reads as missing), no level merges
    in mode dp, and a model that records no categories is refused before any row, at no cost."""
    made_up = pd.DataFrame(
        {"nickname": pd.Categorical(["alpha", "beta", "gamma"] * 20), "score": np.linspace(-1, 1, 60)}
    )
    labels = (made_up["score"] > 0).astype(int)
    fitted = xgb.XGBClassifier(n_estimators=3, max_depth=2, enable_categorical=True, min_child_weight=3)
    fitted.fit(made_up, labels)
    codes = xgb.DMatrix(
        np.c_[made_up["nickname"].cat.codes, made_up["score"]],
        label=labels,
        feature_names=["nickname", "score"],
        feature_types=["c", "q"],
        enable_categorical=True,
    )
    uncoded = xgb.train({"objective": "binary:logistic", "max_depth": 2, "min_child_weight": 3}, codes, 3)
    c = client(red, "classes")
    outcomes = {}
    for dataset in ("zeta_in", "zeta_out"):
        spec = {"dataset": dataset, "label": "label", "features": ["nickname", "score"]}
        job = c.submit(fitted, spec, kind="evaluate")
        job.wait(timeout=120)
        outcomes[dataset] = job.status.error.code if job.status.error else "ok"
        spent = c.cost(None, spec).rho_spent
        with pytest.raises(RemoteError) as refused:
            c.evaluate(uncoded, spec)
        assert refused.value.code == "invalid_model" and "categories of nickname" in str(refused.value)
        assert c.cost(None, spec).rho_spent == spent
    assert outcomes == {"zeta_in": "ok", "zeta_out": "ok"}


def test_in_mode_dp_eval_only_a_training_fails_on_no_row_of_its_own(red):
    """Mode dp_eval_only trains with XGBoost as sent, and no refusal may depend on the rows there either.
    A Pipeline whose encoder was given its levels failed to fit, and a continued notebook model failed
    to read a training level it had not seen (ten `zeta` rows with the target, nine merged into `(rare)`
    without), each `not_released` exactly when the target was in. A Pipeline is now refused before any
    row, at no cost; a continued model reads text by its own categories (an unseen level is missing)."""
    made_up = pd.DataFrame(
        {"nickname": pd.Categorical(["alpha", "beta", "gamma"] * 20), "score": np.linspace(-1, 1, 60)}
    )
    labels = (made_up["score"] > 0).astype(int)
    base = xgb.XGBClassifier(n_estimators=3, max_depth=2, enable_categorical=True, min_child_weight=3)
    base.fit(made_up, labels)
    encoder = ColumnTransformer(
        [("nick", OneHotEncoder(categories=[["alpha", "beta", "gamma"]]), ["nickname"])],
        remainder="passthrough",
    )
    pipeline = Pipeline([("pre", encoder), ("m", xgb.XGBClassifier(n_estimators=3, min_child_weight=3))])
    c = client(red, "classes")
    outcomes = {}
    for dataset in ("zeta_eval_only_in", "zeta_eval_only_out"):
        spec = {"dataset": dataset, "label": "label", "features": ["nickname", "score"]}
        spent = c.cost(None, spec).rho_spent
        with pytest.raises(RemoteError) as refused:
            c.train(pipeline, spec)
        assert refused.value.code == "unsupported_model" and "Pipeline" in str(refused.value)
        assert c.cost(None, spec).rho_spent == spent
        job = c.submit(base.set_params(n_estimators=3), spec)
        job.wait(timeout=120)
        outcomes[dataset] = job.status.error.code if job.status.error else "ok"
    assert outcomes == {"zeta_eval_only_in": "ok", "zeta_eval_only_out": "ok"}
