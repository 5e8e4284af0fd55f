"""The DP trainer behind the family seam: the one model job (runner/model_job.py) trains it on staged
rows, with its noise asked of a parent on the other end of a real pipe (the worker protocol), here as
one partition, as two, and on a LocalCluster's partitions; the same seeded noise gives the same model.

The parent here answers noise requests with seeded NumPy draws, as the server's release desk answers
them with OpenDP's (tests/test_dp_training.py runs the real server)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from distributed import Client
from pydantic import BaseModel

from remote_magic.contract.codes import Refusal
from remote_magic.families import MODEL_FILE
from remote_magic.families.dpboost.family import FAMILY, check_label
from remote_magic.families.dpboost.partition import PARALLEL_ROWS, histogram_threads
from remote_magic.families.dpboost.schedule import releases
from remote_magic.families.dpboost.settings import DEFAULT_ROUNDS, LARGE_ROUNDS, Settings
from remote_magic.families.partitions import InProcess
from remote_magic_server.cluster import partitions
from remote_magic_server.demo import synthetic_table
from remote_magic_server.protocol import (
    NoiseAnswer,
    NoiseAnswers,
    NoiseBatch,
    NoiseRequest,
    PrivateTraining,
    ProgressNote,
    TrainingPlan,
    TrainReport,
)
from remote_magic_server.worker import staging
from tests.test_family_seam import Proceeding, halves, run_with, stage_halves
from tests.test_streaming import task_for

RHO = 0.5
RANGES = {"age": (18.0, 90.0), "bmi": (10.0, 50.0), "visits": (0.0, 15.0)}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    frame = synthetic_table(4000, 5)
    path = tmp_path_factory.mktemp("dpfam") / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def job(path: Path, params: dict | None = None, declared: bool = True, rho: float = RHO):
    task = task_for(path, {"dataset": "d", "label": "label", "eval": {"fraction": 0.25, "seed": 2}}, 0)
    order = PrivateTraining(
        rho=rho,
        column_ranges=RANGES if declared else {},
        column_levels={"region": ["east", "north", "south", "west"]} if declared else {},
        delta=1e-6,
    )
    task = task.model_copy(update={"dp_training": order, "structure": True})
    model = xgb.XGBClassifier(**({"n_estimators": 8, "max_depth": 3} if params is None else params))
    return task, FAMILY.canonical(model)


class Parent(Proceeding):
    """The parent's end of the pipe: proceeds at admission, answers noise with seeded NumPy draws, and
    counts what the requests cost; like the release desk, it holds each request to the next release of
    the training plan the worker declared (families/dpboost/schedule.py)."""

    def __init__(self, seed: int, rho: float = RHO):
        super().__init__()
        self.rng = np.random.default_rng(seed)
        self.order_rho = rho
        self.rho = 0.0
        self.planned: list = []
        self.declared: tuple | None = None  # (settings, plan) while the rounds wait for the count
        self.off_plan: list[int] = []  # requests that were not the plan's next release
        self.asks: list[NoiseRequest] = []  # every request, a batch's one by one
        self.batches = 0

    def plan(self, plan: TrainingPlan, count: float | None = None) -> None:
        settings = Settings(**{k: tuple(v) if isinstance(v, list) else v for k, v in plan.settings.items()})
        self.planned = list(
            releases(settings, self.order_rho, len(plan.sketched), plan.sketch_rho, plan.continuing, count)
        )
        waits = count is None and settings.waits_for_count(plan.continuing)
        self.declared = (settings, plan) if waits else None

    def answer(self, message: BaseModel) -> BaseModel | None:
        if isinstance(message, TrainingPlan):
            self.plan(message)
            return None
        if isinstance(message, NoiseBatch):
            self.batches += 1
            return NoiseAnswers(answers=[self.noise(ask) for ask in message.requests])
        if not isinstance(message, NoiseRequest):
            return super().answer(message)
        return self.noise(message)

    def noise(self, message: NoiseRequest) -> NoiseAnswer:
        self.asks.append(message)
        asked = len(self.asks)
        expected = self.planned[asked - 1] if asked <= len(self.planned) else None
        if expected is None or not (
            message.kind == expected.kind
            and math.isclose(message.bound, expected.bound, rel_tol=1e-9)
            and math.isclose(message.rho, expected.rho, rel_tol=1e-9)
        ):
            self.off_plan.append(asked)
        self.rho += message.rho if expected is None else expected.cost  # as the desk charges it
        scale = message.bound / math.sqrt(2 * message.rho)
        values = np.asarray(message.values)
        if message.kind == "gaussian":
            noisy = list(values + self.rng.normal(0.0, scale, len(values)))
            if self.declared is not None and asked == len(self.planned):  # the intercept: the rest
                settings, plan = self.declared
                self.plan(plan, settings.objective_().count(noisy))
            return NoiseAnswer(values=noisy)
        return NoiseAnswer(index=int(np.argmax(values + self.rng.gumbel(0.0, scale, len(values)))))


def run_job(task, plan, parts, folder: Path, seed: int = 1, rho: float = RHO) -> tuple[TrainReport, Parent]:
    parent = Parent(seed, rho)
    report = run_with(task, plan, FAMILY, parts, folder, parent)
    assert parent.off_plan == [], "each request is the declared plan's next release"
    assert len(parent.asks) == len(parent.planned), "every release the plan makes was asked for, none other"
    return report, parent


def margins(folder: Path, table: pa.Table) -> np.ndarray:
    booster = xgb.Booster()
    booster.load_model(str(folder / MODEL_FILE))
    frame = table.to_pandas()
    frame["region"] = frame["region"].astype("category")
    return booster.predict(xgb.DMatrix(frame, enable_categorical=True), output_margin=True)


def features_of(path: Path) -> pa.Table:
    return pq.read_table(path).drop(["id", "label"])


def test_the_dp_family_trains_through_the_model_job_and_spends_its_order(dataset, tmp_path):
    task, plan = job(dataset)
    report, parent = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "one")
    assert report.training is not None and report.training.trees == 8
    assert parent.rho == pytest.approx(RHO, rel=1e-9)  # every bit of the order, and no more
    assert parent.batches == 8, "each round's gradient and hessian sums in one round trip"
    assert report.rounds.new == 8 and report.history is None and report.feature_importance == {}
    rounds = [m.round for m in parent.seen if isinstance(m, ProgressNote) and m.stage == "training"]
    assert rounds[-1] == 8 and rounds == sorted(rounds), "progress at most five times a second, the last too"
    assert report.metrics["auc"] > 0.7  # rho 0.5 on 3,000 rows learns the signal
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "one" / MODEL_FILE))
    assert booster.num_boosted_rounds() == 8
    thresholds = {c for c in booster.trees_to_dataframe().query("Feature == 'age'")["Split"].dropna()}
    grid = np.linspace(18, 90, 34)[1:-1].astype(np.float32)
    assert all(np.isclose(grid, t, atol=1e-3).any() for t in thresholds)  # public candidates only


def test_undeclared_columns_get_a_sketch_paid_from_the_same_order(dataset, tmp_path):
    task, plan = job(dataset, declared=False)
    report, parent = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "sk")
    assert parent.rho == pytest.approx(RHO, rel=1e-9)
    first = parent.asks[0]
    assert first.kind == "gaussian" and first.rho == pytest.approx(0.1 * RHO)  # the sketch comes first
    assert report.metrics["auc"] > 0.65


def test_the_same_noise_gives_the_same_model_on_one_partition_or_two(dataset, tmp_path):
    task, plan = job(dataset)
    one, _ = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "one")
    two, _ = run_job(task, plan, InProcess(halves(staging.stage(task, tmp_path))), tmp_path / "two")
    rows = features_of(dataset)
    np.testing.assert_allclose(margins(tmp_path / "one", rows), margins(tmp_path / "two", rows), atol=1e-5)
    assert one.stats.n == two.stats.n


def test_a_base_model_gets_dp_trees_on_top(dataset, tmp_path):
    frame = synthetic_table(500, 9)
    base = xgb.XGBClassifier(n_estimators=3, max_depth=2, enable_categorical=True)
    x = frame.drop(columns=["id", "label"])
    x["region"] = x["region"].astype("category")
    base.fit(x, frame["label"])
    task, _ = job(dataset)
    plan = FAMILY.canonical(base)
    report, _ = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "base")
    assert plan.base is not None and plan.rounds == 3  # a fitted estimator continues for its n_estimators
    assert report.rounds.base == 3 and report.rounds.new == 3 and report.rounds.total == 6
    assert report.training is not None and report.training.trees == 3


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "sketched"])
def test_a_base_model_that_never_saw_a_level_is_continued_with_its_own_codes_first(
    dataset, tmp_path, declared
):
    """A notebook model fitted on two of the four regions: its predictions on the rows of the others
    failed (XGBoost refuses a level a model did not record) after the budget was spent, and on the
    sketched path exactly when a row of such a level was in. Its list now leads the training's."""
    frame = synthetic_table(500, 9)
    frame = frame[frame["region"].isin(["north", "south"])]
    base = xgb.XGBClassifier(n_estimators=3, max_depth=2, enable_categorical=True)
    x = frame.drop(columns=["id", "label"])
    x["region"] = x["region"].astype("category")
    base.fit(x, frame["label"])
    task, _ = job(dataset, declared=declared)
    folder = tmp_path / "led"
    report, parent = run_job(task, FAMILY.canonical(base), InProcess([staging.stage(task, tmp_path)]), folder)
    assert parent.rho == pytest.approx(RHO, rel=1e-9) and report.metrics["auc"] > 0.6
    model = xgb.Booster()
    model.load_model(str(folder / MODEL_FILE))
    levels = dict(model.get_categories(export_to_arrow=True).to_arrow())["region"].to_pylist()
    assert levels[:2] == ["north", "south"] and {"east", "west"} <= set(levels)
    seen = x[x["region"].isin(["north", "south"])]
    kept = model.predict(
        xgb.DMatrix(seen, enable_categorical=True), output_margin=True, iteration_range=(0, 3)
    )
    alone = base.get_booster().predict(xgb.DMatrix(seen, enable_categorical=True), output_margin=True)
    np.testing.assert_allclose(kept, alone, rtol=1e-6)  # the base's trees read its levels as before


def test_the_rows_start_from_the_analysts_public_base_score_as_the_model_does(dataset, tmp_path):
    """The partitions fitted their trees from margin 0 while the released model started from the
    analyst's base_score: the trees corrected a start the model did not have."""
    task, plan = job(dataset, {"n_estimators": 8, "max_depth": 3, "base_score": 0.95})
    run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "start")
    rate = pq.read_table(dataset)["label"].to_numpy().mean()
    predicted = 1 / (1 + np.exp(-margins(tmp_path / "start", features_of(dataset))))
    assert abs(predicted.mean() - rate) < abs(0.95 - rate) / 3


@pytest.mark.parametrize(
    ("model", "code", "named"),
    [
        (xgb.XGBClassifier(subsample=0.5), "parameter_out_of_bounds", "subsample"),
        (xgb.XGBClassifier(objective="rank:pairwise"), "unsupported_model", "rank:pairwise"),
        (xgb.XGBClassifier(early_stopping_rounds=5), "parameter_out_of_bounds", "early_stopping_rounds"),
    ],
)
def test_what_dp_training_cannot_honour_is_refused_by_name(model, code, named):
    with pytest.raises(Refusal) as caught:
        FAMILY.canonical(model)
    assert caught.value.code == code and named in caught.value.message


def test_a_regression_without_the_owners_label_range_is_refused_before_any_row():
    plan = FAMILY.canonical(xgb.XGBRegressor(n_estimators=5))
    with pytest.raises(Refusal, match="label_ranges"):
        FAMILY.check_order(plan, None, None)
    FAMILY.check_order(plan, (0.0, 10.0), None)


def test_a_classifier_without_the_owners_declared_classes_is_refused_before_any_row():
    """The classes would otherwise be the rows' own labels (tests/test_redteam_dp.py shows the leak)."""
    plan = FAMILY.canonical(xgb.XGBClassifier(n_estimators=5))
    hint = "the label 'y' holds decimal numbers"
    with pytest.raises(Refusal, match=r"`column_levels\.y`") as caught:
        FAMILY.check_order(plan, (0.0, 1.0), None, hint, label="y")
    assert caught.value.code == "unsupported_model" and caught.value.message.startswith(hint + "; ")
    FAMILY.check_order(plan, None, ["0", "1"])
    with pytest.raises(Refusal, match="the label has 2 public classes, the training has 3"):
        check_label(True, None, ["0", "1"], expected_classes=3)
    check_label(True, None, ["a", "b", "c"], expected_classes=3)


@pytest.mark.parametrize(
    ("rho", "rounds", "depth", "sums"),
    [(RHO, DEFAULT_ROUNDS, 2, 2), (400.0, LARGE_ROUNDS, 2, 2), (400.0, LARGE_ROUNDS, 4, 4)],
)
def test_rounds_left_unset_follow_the_released_row_count(dataset, tmp_path, rho, rounds, depth, sums):
    """3,000 training rows at rho 0.5 are a small sample (n sqrt(rho) about 2,100): today's rounds; at
    rho 400, 60,000: the large sample's, whose trees deeper than RECENTRE_DEPTH also release their nodes'
    sums there (`sums` Gaussian releases a round). The budget is spent whole either way, every request
    the next of the plan the parent made from the count it released."""
    task, plan = job(dataset, {"max_depth": depth}, rho=rho)
    assert plan.rounds_unset and plan.rounds == LARGE_ROUNDS  # what the owner's bounds see
    report, parent = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "n", rho=rho)
    assert report.training is not None and report.training.trees == rounds
    assert parent.rho == pytest.approx(rho, rel=1e-9)
    kinds = [ask.kind for ask in parent.asks]
    first = kinds.index("top1")  # the sketch's and the intercept's releases come before
    assert kinds[first:].count("gaussian") == sums * rounds
    progress = [m.round for m in parent.seen if isinstance(m, ProgressNote) and m.stage == "training"]
    assert progress[-1] == plan.rounds, "progress in the plan's rounds, to the end"
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "n" / MODEL_FILE))
    assert booster.num_boosted_rounds() == rounds


def test_min_child_weight_is_no_longer_the_analysts_business():
    plan = FAMILY.canonical(xgb.XGBClassifier(min_child_weight=2.5, n_estimators=5))
    assert plan.family == "dpboost" and plan.rounds == 5


@pytest.mark.dask
def test_the_dp_family_gives_the_same_model_on_a_local_cluster(dataset, tmp_path, dask_cluster):
    task, plan = job(dataset)
    run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "here")
    with Client(dask_cluster) as client:
        futures = stage_halves(client, dataset, task.staging)
        handle = partitions.DaskHandle(client, futures, "dpfam", None, 60, 600.0)
        there, parent = run_job(task, plan, partitions.DaskPartitions(handle), tmp_path / "there")
    assert parent.rho == pytest.approx(RHO, rel=1e-9) and there.training is not None
    table = features_of(dataset)
    np.testing.assert_allclose(
        margins(tmp_path / "here", table), margins(tmp_path / "there", table), atol=1e-5
    )


def test_a_text_column_none_of_whose_levels_clears_the_sketch_trains_and_scores(tmp_path):
    """Every level of an id-like text column is held by one row, so the sketch keeps none: the model's
    category list for it was empty, which XGBoost cannot read, and the job failed at scoring after its
    budget was spent. The column now records one public placeholder that no split uses."""
    frame = synthetic_table(3000, 7)
    frame["region"] = [f"person-{i}" for i in range(len(frame))]
    path = tmp_path / "unique.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    task, plan = job(path, declared=False)
    report, parent = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "u")
    assert parent.rho == pytest.approx(RHO, rel=1e-9) and report.metrics["auc"] > 0.6
    booster = xgb.Booster()
    booster.load_model(str(tmp_path / "u" / MODEL_FILE))
    recorded = dict(booster.get_categories(export_to_arrow=True).to_arrow())
    assert recorded["region"].to_pylist() == ["(no level released)"]
    assert "region" not in set(booster.trees_to_dataframe()["Feature"])


def test_the_threads_follow_the_noisy_row_count_never_the_exact_one():
    """Whether a partition sums its histograms in the job's threads changed the job's time by seconds;
    decided on the exact rows, it did so exactly when one row took the count across `PARALLEL_ROWS`.
    The parent's noisy count (`Decision.train_rows`, a release the result carries) decides it now."""
    assert histogram_threads(2, None, False) == 1
    assert histogram_threads(2, PARALLEL_ROWS - 1, False) == 1
    assert histogram_threads(2, PARALLEL_ROWS, False) == 2
    assert histogram_threads(2, 10 * PARALLEL_ROWS, True) == 1
