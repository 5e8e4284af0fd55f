"""Mode dp: the noise is what the budget says, intervals cover the truth, the accounting is exact, and
the numbers are usable (the quickstart's AUC interval is at most +/- 0.01)."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from pyroaring import BitMap

from remote_magic.client.errors import BudgetExhausted, DisclosureRefused, SpecError
from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import JobResult, ReleaseOptions
from remote_magic_server.audit import AuditLog
from remote_magic_server.config.settings import DatasetConfig, Policy, Settings
from remote_magic_server.privacy import dp, dp_release
from remote_magic_server.protocol import Admission, EvalStats, SplitCounts, Structure, TrainReport
from remote_magic_server.release.desk import ReleaseDesk, Request
from remote_magic_server.release.ledger import Ledger

POLICY = Policy()
DRAWS = 2000  # enough that the sample standard deviation is within 10% of sigma by a wide margin


@pytest.mark.parametrize(("l2", "rho"), [(1.0, 0.0025), (math.log(100), 0.0025), (math.sqrt(2), 0.01)])
def test_the_noise_is_what_the_budget_says(l2, rho):
    sigma = dp.sigma(l2, rho)
    floats = np.array([dp.gaussian([100.0], l2, rho)[0][0] for _ in range(DRAWS)])
    counts = np.array([dp.gaussian_counts([1000], l2, rho)[0][0] for _ in range(DRAWS)])
    for sample, centre in ((floats, 100.0), (counts, 1000)):
        assert abs(sample.std() / sigma - 1) < 0.10
        assert abs(sample.mean() - centre) < 4 * sigma / math.sqrt(DRAWS)


def test_a_long_release_drawn_in_pieces_is_the_whole_releases_noise():
    """A DP training's sketch (thousands of counts) is noised in pieces on the cores: each entry's noise
    has the release's own scale, independently of the others, and the scale reported is the release's."""
    l2, rho, n = math.sqrt(20), 0.005, 4 * 1024
    noisy, scale = dp.gaussian([100.0] * n, l2, rho)
    assert scale == dp._measurement(float, l2, rho, n)[1] == pytest.approx(dp.sigma(l2, rho))
    noise = np.asarray(noisy) - 100.0
    assert len(noise) == n and abs(noise.std() / scale - 1) < 0.05
    assert abs(noise.mean()) < 4 * scale / math.sqrt(n)
    pieces = noise.reshape(4, -1)  # 4 pieces of 1,024
    together = np.corrcoef(pieces)[np.triu_indices(4, 1)]
    assert np.all(np.abs(together) < 4 / math.sqrt(n / 4)), "no piece repeats another's noise"


def test_releases_drawn_together_each_have_their_own_noise_at_the_same_total_cost():
    """A batch's gradient and hessian sums are drawn by one OpenDP measurement (`dp.gaussians`): each
    part's noise has its own release's sd, independent of the other's, and OpenDP's map of the joint
    vector's bound meets the sum of their rhos."""
    (g_l2, g_rho), (h_l2, h_rho), n = (0.85, 0.002), (0.25, 0.0005), 3000
    g, h = dp.gaussians([([37.0] * n, g_l2, g_rho), ([5.0] * (n // 2), h_l2, h_rho)])
    assert (len(g), len(h)) == (n, n // 2)
    g_noise, h_noise = np.asarray(g) - 37.0, np.asarray(h) - 5.0
    for noise, sigma in ((g_noise, dp.sigma(g_l2, g_rho)), (h_noise, dp.sigma(h_l2, h_rho))):
        assert abs(noise.std() / sigma - 1) < 0.06 and abs(noise.mean()) < 4 * sigma / math.sqrt(len(noise))
    assert abs(np.corrcoef(g_noise[: n // 2], h_noise)[0, 1]) < 4 / math.sqrt(n // 2)
    rho = g_rho + h_rho
    bound = math.sqrt(2 * rho) * dp._BOUND_UP
    measurement, scale = dp._measurement(float, bound, rho, n + n // 2)
    assert measurement.map(bound) <= rho and scale == pytest.approx(1.0)
    assert dp.gaussians([([1.0, 2.0], g_l2, g_rho)])[0] != [1.0, 2.0]  # one release: drawn as it is


@pytest.mark.parametrize(("k", "linf", "rho"), [(1, 0.85, 0.000275625), (1, 1e-3, 1e-7), (3, 2.0, 0.05)])
def test_a_new_selection_budget_is_met_exactly_without_a_search(monkeypatch, k, linf, rho):
    """A noisy top-k for a (k, bound, rho) not seen before is built from its privacy map's closed form
    and checked by OpenDP's map (a binary search built dozens of measurements: 40-230 ms on the path of
    a job's first selection): its cost is the budget, not more and not noticeably less."""
    built = []
    make = dp.measurements.make_noisy_top_k
    monkeypatch.setattr(
        dp.measurements, "make_noisy_top_k", lambda *a, **kw: built.append(1) or make(*a, **kw)
    )
    dp._top_k.cache_clear()
    measurement = dp._top_k(k, linf, rho)
    assert len(built) <= 3
    assert rho * (1 - 1e-6) <= measurement.map(linf) <= rho


def test_epsilon_of_the_default_budget_and_the_guess_bound():
    assert dp.epsilon(POLICY.dp_rho_job, 1e-6) == pytest.approx(0.622, abs=1e-3)
    # an analyst who spends the whole default budget on one row's label guesses right with at most:
    guess = 0.5 * (1 + math.erf(math.sqrt(2 * POLICY.dp_rho_cap) / 2 / math.sqrt(2)))
    assert 0.75 < guess < 0.77


def report(auc: float = 0.8612, n: int = 10_000, positives: int = 3_500) -> tuple[TrainReport, dict]:
    stats = EvalStats(
        n=n,
        correct=int(0.8 * n),
        loss_sum=0.45 * n,
        loss_clip=math.log(100),
        auc=auc,
        confusion=[[n - positives - 500, 500], [1500, positives - 1500]],
    )
    train = TrainReport(
        task="binary",
        metrics={"auc": auc},
        feature_importance={},
        rounds={"base": 0, "new": 5, "total": 5},
        stats=stats,
    )
    counts = {
        "eval": SplitCounts(rows=n, classes={"0": n - positives, "1": positives}),
        "train": SplitCounts(rows=4 * n, classes={"0": 4 * (n - positives), "1": 4 * positives}),
    }
    return train, counts


def test_intervals_cover_the_exact_value_and_the_auc_interval_is_narrow_enough():
    exact, counts = report()
    covered = 0
    widths = []
    for seed in range(400):  # OpenDP's draws are not seeded: 400 of them put 90% 4.6 sd below 95%
        noisy = dp_release.draw_counts(counts, POLICY)
        result = dp_release.release_dp(exact, noisy, POLICY, ReleaseOptions(), f"job{seed}", "d", "train")
        low, high = result.intervals["auc"]
        covered += low <= exact.stats.auc <= high
        widths.append((high - low) / 2)
        assert set(result.metrics) == {"auc", "log_loss", "accuracy"}
        assert result.feature_importance == {} and result.history is None
    assert covered >= 360
    assert np.median(widths) <= 0.01


def test_auc_is_not_released_when_a_class_is_too_small_whatever_the_cause():
    exact, counts = report(positives=0)
    exact.stats.auc = None
    result = dp_release.release_dp(
        exact, dp_release.draw_counts(counts, POLICY), POLICY, ReleaseOptions(), "j", "d", "evaluate"
    )
    assert result.metrics["auc"] is None and "auc" in result.notes[0]


def test_past_the_noisy_bound_an_undefined_auc_is_released_as_a_coin_flip_not_omitted():
    """Whether an AUC comes out is decided on the noisy counts alone: where they pass (rarely, for a
    class no row holds) the exact AUC is undefined and scored 0.5, never a note that only the world
    without the class's one row would get."""
    exact, counts = report()
    exact.stats.auc = None
    result = dp_release.release_dp(
        exact, dp_release.draw_counts(counts, POLICY), POLICY, ReleaseOptions(), "j", "d", "evaluate"
    )
    assert result.metrics["auc"] is not None and abs(result.metrics["auc"] - 0.5) < 0.05
    assert not any("auc" in note for note in result.notes)


def test_a_classifiers_metric_whose_interval_spans_knowing_nothing_says_so():
    """`log_loss 0.017 [0, 0.871]` beside accuracy 0.82 read as a near-perfect model (rev11 #6): a metric
    whose interval is wider than the step from a model that knows nothing to a perfect one (log loss ln k
    to 0, accuracy 1/k to 1, auc 0.5 to 1) comes with a note that it tells nothing alone; its value stays
    (a federated training pools the owners' values)."""
    metrics = {"auc": 0.9, "log_loss": 0.017, "accuracy": 0.8191}
    intervals = {"auc": [0.85, 0.95], "log_loss": [0.0, 0.871], "accuracy": [0.78, 0.86]}
    notes = dp_release._swamped(metrics, intervals, 2)
    assert metrics == {"auc": 0.9, "log_loss": 0.017, "accuracy": 0.8191} and "log_loss" in intervals
    assert notes == [
        "log_loss tells nothing alone: its 95% interval is wider than the step from a model that knows "
        "nothing to a perfect one (0.693); more evaluation rows narrow it"
    ]
    four = {"log_loss": 0.9, "accuracy": 0.3}
    assert dp_release._swamped(four, {"log_loss": [0.3, 1.3], "accuracy": [0.0, 0.7]}, 4) == []
    assert four == {"log_loss": 0.9, "accuracy": 0.3}, "within ln 4 and 3/4: kept"
    exact, counts = report()
    for seed in range(20):
        result = dp_release.release_dp(
            exact, dp_release.draw_counts(counts, POLICY), POLICY, ReleaseOptions(), f"j{seed}", "d", "train"
        )
        assert None not in result.metrics.values() and not result.notes, "10,000 rows: no note"


def regression(
    n: int, label_range: tuple[float, float], scale: float, seed: int = 0
) -> tuple[TrainReport, dict, float]:
    """A regression's report on `n` gamma-distributed labels (costs, of `scale`) and a model a little
    better than their mean, as the worker's own `scoring.stats` sums them; and the model's exact r2."""
    from remote_magic.families import scoring

    rng = np.random.default_rng(seed)
    y = np.clip(rng.gamma(2.0, scale, n), *label_range)
    pred = y + rng.normal(0, y.std() / 2, n)
    stats = scoring.stats("regression", y, pred, 0, label_range)
    train = TrainReport(
        task="regression",
        metrics={},
        feature_importance={},
        rounds={"base": 0, "new": 5, "total": 5},
        stats=EvalStats(**stats),
    )
    r2 = 1 - ((y - pred) ** 2).sum() / ((y - y.mean()) ** 2).sum()
    return train, {"eval": SplitCounts(rows=n), "train": SplitCounts(rows=4 * n)}, r2


def evaluations(exact: TrainReport, counts: dict, runs: int) -> Iterator[JobResult]:
    """The DP releases of an evaluate job's report, each with fresh counts and its own job id."""
    for seed in range(runs):
        noisy = dp_release.draw_counts(counts, POLICY)
        yield dp_release.release_dp(exact, noisy, POLICY, ReleaseOptions(), f"job{seed}", "d", "evaluate")


def test_r2_is_released_only_where_the_labels_spread_stands_clear_of_its_noise():
    """On a wide label range (0 to 20,000) and 600 rows of labels near 400, the noise on the sum of
    squares swamps the labels' spread: r2 came out around -1e19, its interval missing the truth. It is
    now omitted, decided on the noisy sums alone; on 10,000 rows of a range of 400 (the label's sum
    noised at its own bound, not its square's) it comes out, its interval covering r2."""
    exact, counts, _ = regression(600, (0.0, 20_000.0), 200.0)
    for result in evaluations(exact, counts, 20):
        assert result.metrics["r2"] is None and "r2" not in result.intervals
        assert any("r2 needs" in note for note in result.notes)
        assert result.metrics["rmse"] is not None and result.metrics["mae"] is not None
    exact, counts, r2 = regression(10_000, (0.0, 400.0), 40.0)
    covered = 0
    for result in evaluations(exact, counts, 100):
        low, high = result.intervals["r2"]
        covered += low <= r2 <= high
        assert abs(result.metrics["r2"] - r2) < 0.4 and not result.notes
    assert covered >= 85


def test_an_rmse_whose_noisy_sum_falls_below_zero_keeps_an_interval_that_covers_it():
    """The interval is the metric at the ends of its noisy sum's interval. Reflected about the point, as
    it was, an RMSE shown 0 (its noisy sum below 0) got the interval (0, 0): on 600 rows of a range of
    20,000 it covered the RMSE about 73 times of 200, not 190."""
    exact, counts, _ = regression(600, (0.0, 20_000.0), 1000.0)
    rmse = math.sqrt(exact.stats.sse / exact.stats.n)
    covered = 0
    for result in evaluations(exact, counts, 100):
        low, high = result.intervals["rmse"]
        covered += low <= rmse <= high
    assert covered >= 85


def test_a_released_rmse_is_never_below_the_released_mae():
    """A noisy sum of squares below 0 released "rmse 0 [0, 89.62]" beside "mae 15.91" (RMSE is never
    below MAE); the RMSE is now the larger of the two, its interval ends no lower than MAE's, and its
    interval still covers the true RMSE."""
    exact, counts, _ = regression(600, (0.0, 20_000.0), 1000.0)
    rmse = math.sqrt(exact.stats.sse / exact.stats.n)
    covered, raised = 0, 0
    for result in evaluations(exact, counts, 100):
        metrics, intervals = result.metrics, result.intervals
        assert metrics["rmse"] >= metrics["mae"]
        assert intervals["rmse"][0] >= intervals["mae"][0] and intervals["rmse"][1] >= intervals["mae"][1]
        raised += metrics["rmse"] == metrics["mae"]
        covered += intervals["rmse"][0] <= rmse <= intervals["rmse"][1]
    assert raised >= 5, "no seed had a noisy sum of squares below the MAE: the case is not tested"
    assert covered >= 85


def test_models_that_single_out_rows_are_flagged_for_the_owner_never_refused():
    """A refusal that depended on the rows would answer a question about them for free."""
    exact, counts = report()
    exact.structure = Structure(base_smallest_leaf=1, trained_smallest_leaf=9, base_isolated=1)
    flags = dp_release.structure_flags(exact.structure, POLICY)
    assert flags == ["base_smallest_leaf 1", "trained_smallest_leaf 9", "base_isolated 1"]
    noisy = dp_release.draw_counts(counts, POLICY)
    assert dp_release.release_dp(exact, noisy, POLICY, ReleaseOptions(), "j", "d", "train").metrics["auc"]
    exact.structure = Structure(base_smallest_leaf=0, trained_smallest_leaf=10, trained_isolated=0)
    assert dp_release.structure_flags(exact.structure, POLICY) == []


@pytest.fixture
def desk(tmp_path: Path) -> ReleaseDesk:
    (tmp_path / "t.parquet").write_bytes(b"not read")
    settings = Settings(
        policy=Policy(dp_rho_cap=0.035),
        datasets={
            "d": DatasetConfig(
                path=tmp_path / "t.parquet",
                id_column="id",
                label_columns=["y"],
                policy={"dp_rho_dataset_cap": 0.05},
                privacy="dp_eval_only",  # the evaluation's charges alone (test_dp_training: mode dp's)
            )
        },
    )
    return ReleaseDesk(settings, Ledger(tmp_path / "ledger.sqlite"), AuditLog(tmp_path / "audit.log"))


def admit(desk: ReleaseDesk, folder: Path, job: str, user: str = "alice", start: int = 0):
    _, counts = report()
    sets = {
        "training": BitMap(range(start, start + 4000)),
        "evaluation": BitMap(range(start + 4000, start + 5000)),
    }
    for role, bits in sets.items():
        (folder / f"{role}.roaring").write_bytes(bits.serialize())
    admission = Admission(counts=counts, row_sets={r: f"{r}.roaring" for r in sets}, table_rows=100_000)
    request = Request(
        user=user,
        dataset="d",
        kind="train",
        spec={"dataset": "d", "label": "y"},
        job_id=job,
        payload_sha256="ab" * 32,
    )
    return request, desk.admit(request, admission, folder)


def test_a_job_is_charged_once_when_admitted_and_repeats_are_free(desk, tmp_path):
    request, admitted = admit(desk, tmp_path, "j1")
    assert desk.ledger.spent("alice", "d") == pytest.approx(0.01)
    again, readmitted = admit(desk, tmp_path, "j1")  # the same job after a server restart
    assert desk.ledger.spent("alice", "d") == pytest.approx(0.01)
    assert readmitted.noisy.to_json() == admitted.noisy.to_json(), "no fresh noise for the same job"
    exact, _ = report()
    first = desk.release_result(request, admitted, exact)
    assert first.privacy.rho == pytest.approx(0.01) and not first.privacy.repeated
    stored = desk.stored_result(Request(**{**request.__dict__, "job_id": "j2"}))
    assert stored is not None and stored[1] == "j1"  # the job whose model it is
    repeat = stored[0]
    assert repeat.privacy.repeated and repeat.privacy.rho == 0
    assert repeat.metrics == first.metrics and repeat.job_id == "j2"
    assert desk.ledger.spent("alice", "d") == pytest.approx(0.01)


def test_refusals_before_admission_are_free_and_the_caps_hold(desk, tmp_path):
    admit(desk, tmp_path, "j1")
    admit(desk, tmp_path, "j2", start=10_000)
    admit(desk, tmp_path, "j3", start=20_000)
    with pytest.raises(Refusal) as user_cap:
        desk.check_budget(Request(user="alice", dataset="d", kind="train", spec={}))
    assert user_cap.value.code == "privacy_budget_exhausted" and "rho 0.035" in user_cap.value.message
    assert desk.ledger.spent("alice", "d") == pytest.approx(0.03)
    admit(desk, tmp_path, "j4", user="bob", start=30_000)
    admit(desk, tmp_path, "j5", user="bob", start=40_000)
    with pytest.raises(Refusal, match="across all analysts"):
        desk.check_budget(Request(user="carol", dataset="d", kind="train", spec={}))
    extras = ReleaseOptions(confusion=True, curve=5, importance=3)
    assert desk.cost(Request(user="x", dataset="d", kind="train", spec={}, options=extras)) == pytest.approx(
        0.017
    )


def test_a_failure_after_admission_is_one_code_in_mode_dp(desk):
    """Its message blamed the leaf size (min_child_weight), which no DP mode refuses on (rev11 #2)."""
    request = Request(user="alice", dataset="d", kind="train", spec={}, job_id="j")
    code, message = desk.after_admission(request, "training_failed", "XGBoost refused")
    assert code == "not_released" and "min_child_weight" not in message and "charged" in message
    assert desk.after_admission(request, "worker_crashed", "gone")[0] == "not_released"
    assert desk.after_admission(request, "cancelled", "the job was cancelled")[0] == "cancelled"


# end to end, on the shared server (demo tables in mode dp; `synthetic_eval_only`: the same table in mode
# dp_eval_only, where models train without DP under the leaf floor)
QUICKSTART = {"dataset": "synthetic", "label": "label", "eval": {"fraction": 0.2, "seed": 42}}
EVAL_ONLY = {**QUICKSTART, "dataset": "synthetic_eval_only"}
TRAIN_RHO = 0.05  # the DP trainer's part of a train job in mode dp (Policy.dp_rho_train)


def test_the_quickstart_result_has_narrow_intervals_a_cost_and_the_budget_left(server):
    client = server.client()
    model = xgb.XGBClassifier(n_estimators=40, max_depth=4, min_child_weight=3)
    estimate = client.cost(model, QUICKSTART)
    assert estimate.privacy == "dp" and estimate.rho == pytest.approx(0.01 + TRAIN_RHO)
    job = client.submit(model, QUICKSTART)
    result = job.result(timeout=300)
    low, high = result.intervals["auc"]
    assert result.metrics["auc"] > 0.75 and (high - low) / 2 <= 0.01
    assert result.training["trees"] == 40, "mode dp trains with the DP trainer"
    assert result.privacy["rho"] == pytest.approx(0.01 + TRAIN_RHO) and result.privacy["rho_remaining"] < 50
    assert result.feature_importance.empty and result.history.empty
    assert "[" in repr(result) and "budget left" in repr(result)
    for stamp in (job.status.submitted_at, job.status.finished_at):
        assert stamp.endswith("Z") and "." not in stamp, "job times are whole seconds"
    again = client.train(model, QUICKSTART)
    assert again.privacy["repeated"] and again.metrics == result.metrics


def test_extras_cost_more_and_come_with_intervals(server):
    client = server.client()
    model = xgb.XGBClassifier(n_estimators=20, max_depth=3, min_child_weight=3)
    options = {"confusion": True, "curve": 4, "importance": 3}
    result = client.train(model, {**QUICKSTART, "eval": {"fraction": 0.25, "seed": 3}}, release=options)
    assert result.privacy["rho"] == pytest.approx(0.017 + TRAIN_RHO)
    assert len(result.history) == 4 and {"eval_low", "eval_high"} <= set(result.history.columns)
    assert len(result.importance_ranking) == 3 and result.confusion_matrix is not None
    assert "f1" in result.intervals
    # The ranking, the one release with no interval, headlined the quickstart bare (rev11 #6).
    for shown in (repr(result), result._repr_html_()):
        assert "permutation importance (a noisy top 3, best first)" in shown
        assert "has no interval: a feature of little or no effect can be drawn in" in shown


def test_structural_refusals_are_free_and_clear(server):
    client = server.client()
    with pytest.raises(SpecError, match="label 'label' may not appear"):
        client.submit(xgb.XGBClassifier(min_child_weight=3), {**QUICKSTART, "where": "label = 1"})
    with pytest.raises(Exception, match="min_child_weight = 1 is below 2.5") as info:  # dp_eval_only's floor
        client.train(xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=1), EVAL_ONLY)
    assert info.value.code == "parameter_out_of_bounds", "an explicit value below the floor is refused"
    with pytest.raises(Exception, match="eval_metric") as metric:
        client.train(
            xgb.XGBClassifier(n_estimators=3, min_child_weight=3, eval_metric="error@0.99"), QUICKSTART
        )
    assert metric.value.code == "parameter_out_of_bounds"


def test_in_mode_dp_eval_only_a_leaf_floor_left_unset_takes_the_servers_value(server):
    from remote_magic import DatasetSpec, dry_run

    client = server.client()
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2)
    checked = dry_run(
        model, DatasetSpec(**EVAL_ONLY), client.dataset("synthetic_eval_only"), client.mock("synthetic")
    )
    assert checked.features, "the dry run agrees with the server: no refusal"
    result = client.train(model, EVAL_ONLY)
    note = "min_child_weight not set: trained with the value this dataset requires, min_child_weight=3"
    assert result.notes[0] == note and f"note: {note}" in repr(result)
    explicit = client.train(xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3), EVAL_ONLY)
    assert not any("not set" in n for n in explicit.notes)


def test_budget_exhaustion_is_its_own_exception_and_refuses_before_a_job_exists(server, tmp_path):
    from tests.serverproc import running

    path = server.settings.datasets["breast_cancer"].path
    tiny = f'[datasets.tiny]\npath = "{path}"\nid_column = "id"\nlabel_columns = ["malignant"]\n'
    tiny += 'privacy = "dp_eval_only"\npolicy = { dp_rho_cap = 0.025 }\n'  # jobs of the evaluation's cost
    tiny += 'column_levels.malignant = ["0", "1"]\n'  # the noisy modes take a classifier's classes public
    (tmp_path / "data").mkdir()
    with running(tmp_path / "data", tmp_path / "log", {"eve": ["tiny"]}, tiny) as small:
        client = small.client("eve")
        model = xgb.XGBClassifier(n_estimators=2, max_depth=2, min_child_weight=3)
        for seed in (1, 2):
            client.submit(
                model, {"dataset": "tiny", "label": "malignant", "eval": {"fraction": 0.4, "seed": seed}}
            ).wait(timeout=120)
        before = len(client.jobs())
        with pytest.raises(BudgetExhausted) as spent:
            client.submit(
                model, {"dataset": "tiny", "label": "malignant", "eval": {"fraction": 0.4, "seed": 3}}
            )
        assert isinstance(spent.value, DisclosureRefused) and "rho 0.025" in spent.value.message
        assert len(client.jobs()) == before, "the refusal created no job"
        estimate = client.cost(model, {"dataset": "tiny", "label": "malignant"})
        assert estimate.rho_remaining_after == 0 and estimate.rho_spent == pytest.approx(0.02)


def test_a_noisy_class_refusal_names_the_public_classes_it_is_about():
    """The classes of the noisy modes are public (declared, or the spec's): a refusal says which one was
    short, so an analyst who named a class no row holds learns what to drop."""
    small = POLICY.min_class_rows - 1
    counts = {"train": SplitCounts(rows=5000, classes={"bronze": 2500, "gold": 2500, "platinum": small})}
    with pytest.raises(Refusal) as refused:
        dp_release.check_cohort(dp_release.NoisyCounts(counts, 1.0), POLICY)
    assert refused.value.code == "class_too_small" and "'platinum'" in refused.value.message
    assert "'gold'" not in refused.value.message and "noisy count" in refused.value.message
