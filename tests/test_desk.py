"""The release desk on its own: admission (cohorts, the differencing guard and its ledger), results with
the policy in effect, model-release decisions, DP describe answers under a budget, the audit record."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from pyroaring import BitMap

from remote_magic.contract.codes import Refusal
from remote_magic_server.audit import AuditLog, verify
from remote_magic_server.config.settings import DatasetConfig, Settings
from remote_magic_server.protocol import (
    Admission,
    DescribeReport,
    ModelFacts,
    NoiseBatch,
    NoiseRequest,
    SplitCounts,
    SumsReport,
    TrainReport,
)
from remote_magic_server.release.desk import ReleaseDesk, Request
from remote_magic_server.release.ledger import Ledger


@pytest.fixture
def desk(tmp_path: Path) -> ReleaseDesk:
    settings = Settings(
        datasets={
            "plain": DatasetConfig(
                path=tmp_path / "t.parquet",
                id_column="id",
                label_columns=["y"],
                allow_model_release=True,
                privacy="rules",
                policy={"min_count": 20, "round_to": 10},
            ),
            "noisy": DatasetConfig(
                path=tmp_path / "n.parquet",
                id_column="id",
                label_columns=["y"],
                policy={"dp_rho_cap": 0.005},
                column_ranges={"a": (0.0, 10.0)},
                column_levels={"y": ["0", "1"]},
            ),
        }
    )
    return ReleaseDesk(settings, Ledger(tmp_path / "ledger.sqlite"), AuditLog(tmp_path / "audit.log"))


def admission(folder: Path, train: range, evaluation: range, classes=True) -> Admission:
    sets = {
        "training": BitMap(train),
        "evaluation": BitMap(evaluation),
        "admitted": BitMap(train) | BitMap(evaluation),
    }
    for role, bits in sets.items():
        (folder / f"rows-{role}.roaring").write_bytes(bits.serialize())

    def counts(rows: range) -> SplitCounts:
        half = len(rows) // 2
        return SplitCounts(rows=len(rows), classes={"0": half, "1": len(rows) - half} if classes else None)

    return Admission(
        counts={"train": counts(train), "eval": counts(evaluation)},
        row_sets={role: f"rows-{role}.roaring" for role in sets},
        table_rows=10_000,
    )


def request(user: str = "alice", dataset: str = "plain", kind: str = "train", job: str = "j1") -> Request:
    return Request(
        user=user,
        dataset=dataset,
        kind=kind,
        spec={"dataset": dataset, "label": "y"},
        job_id=job,
        features=("a",),
    )


def test_admission_checks_cohorts_then_the_guard_and_records_the_sets(desk, tmp_path):
    with pytest.raises(Refusal) as small:
        desk.admit(request(), admission(tmp_path, range(0, 500), range(500, 550)), tmp_path)
    assert small.value.code == "cohort_too_small"
    desk.admit(request(), admission(tmp_path, range(0, 800), range(800, 1000)), tmp_path)
    near = admission(tmp_path, range(1, 800), range(800, 1000))
    with pytest.raises(Refusal) as guard:
        desk.admit(request(job="j2"), near, tmp_path)
    assert guard.value.code == "differencing_refused" and "799" not in guard.value.message
    desk.admit(request(user="bob", job="j3"), near, tmp_path)  # bob has not seen the first set


def test_a_result_is_rounded_under_the_dataset_policy_and_says_so(desk, tmp_path):
    admitted = desk.admit(request(), admission(tmp_path, range(0, 803), range(803, 1004)), tmp_path)
    report = TrainReport(
        task="binary",
        metrics={"auc": 0.8765432},
        feature_importance={"a": 12.345678},
        stats={"n": 201},
        rounds={"base": 0, "new": 3, "total": 3},
        confusion={"labels": ["0", "1"], "counts": [[95, 5], [19, 82]]},
        model=ModelFacts(
            family="xgboost",
            min_leaf_rows=40,
            facts={"categorical": False, "max_depth": 2, "n_estimators": 3, "min_child_weight": 5},
        ),
    )
    result = desk.release_result(request(), admitted, report)
    assert result.metrics["auc"] == 0.8765 and result.policy.min_count == 20 and result.policy.round_to == 10
    assert result.confusion_matrix.counts == [[100, None], [None, 80]]
    assert result.summary.train.rows == 400 + 400
    assert desk.ledger.model_state("j1")["state"] == "awaiting_approval"


def describe_report() -> DescribeReport:
    return DescribeReport(
        rows=600,
        classes={"0": 300, "1": 300},
        columns=[
            {
                "name": "a",
                "kind": "numeric",
                "missing": 0,
                "values": 600,
                "histogram": {"edges": [0.0, 1.0], "counts": [200, 200, 200]},
            }
        ],
    )


def describe_admission(folder: Path) -> Admission:
    """A describe's admission of 600 rows (half of each class) out of 5000."""
    (folder / "rows-admitted.roaring").write_bytes(BitMap(range(600)).serialize())
    return Admission(
        counts={"eval": SplitCounts(rows=600, classes={"0": 300, "1": 300})},
        row_sets={"admitted": "rows-admitted.roaring"},
        table_rows=5000,
    )


def test_dp_describe_charges_once_repeats_for_free_and_stops_at_the_cap(desk, tmp_path):
    admission_ = describe_admission(tmp_path)
    ask = Request(
        user="alice",
        dataset="noisy",
        kind="describe",
        spec={"dataset": "noisy", "label": "y"},
        features=("a",),
        charge_key="describe:1",
    )
    desk.admit(ask, admission_, tmp_path)
    first = desk.release_describe(ask, describe_report())
    assert first.privacy.rho_spent == 0.002 and first.privacy.rho == 0.002 and not first.privacy.repeated
    again = desk.stored_describe(ask)
    assert again.privacy.repeated and again.privacy.rho == 0 and again.privacy.rho_spent == 0.002
    assert again.classes == first.classes
    other = Request(
        **{
            **ask.__dict__,
            "spec": {"dataset": "noisy", "label": "y", "where": "a > 0"},
            "charge_key": "describe:2",
        }
    )
    (tmp_path / "rows-admitted.roaring").write_bytes(BitMap(range(100, 700)).serialize())
    desk.admit(other, admission_, tmp_path)
    desk.release_describe(other, describe_report())
    third = Request(
        **{
            **ask.__dict__,
            "spec": {"dataset": "noisy", "label": "y", "where": "a > 1"},
            "charge_key": "describe:3",
        }
    )
    (tmp_path / "rows-admitted.roaring").write_bytes(BitMap(range(200, 800)).serialize())
    with pytest.raises(Refusal) as spent:
        desk.admit(third, admission_, tmp_path)
    assert spent.value.code == "privacy_budget_exhausted"


def test_a_dp_describe_of_an_undeclared_column_pays_for_its_sketch_and_the_ledger_says_so(desk, tmp_path):
    admission_ = describe_admission(tmp_path)
    spec = {"dataset": "noisy", "label": "y"}
    declared = Request(user="bob", dataset="noisy", kind="describe", spec=spec, features=("a",))
    undeclared = Request(user="bob", dataset="noisy", kind="describe", spec=spec, features=("a", "b"))
    derived = Request(
        user="bob", dataset="noisy", kind="describe", spec={**spec, "derive": {"c": "a * 2"}}, features=("a",)
    )
    assert desk.cost(declared) == 0.002 and desk.train_cost(declared) == 0
    assert desk.cost(undeclared) == desk.cost(derived) == 0.004 and desk.train_cost(undeclared) == 0.002
    ask = Request(**{**undeclared.__dict__, "charge_key": "describe:b"})
    desk.admit(ask, admission_, tmp_path)
    answer = desk.release_describe(ask, describe_report())
    assert answer.privacy.rho == 0.004
    assert desk.ledger.rho_of("describe:b") == 0.004 and desk.ledger.spent("bob", "noisy") == 0.004


def test_every_decision_is_in_the_audit_log(desk, tmp_path):
    desk.record(request(), "released")
    desk.record(request(job="j2"), "failed", "timeout", "the job ran too long")
    entries = list(desk.audit.entries())
    assert [e["decision"] for e in entries] == ["released", "failed"] and entries[1]["code"] == "timeout"
    assert verify(desk.audit.path).ok
    assert np.all([e["event"] == "release_decision" for e in entries])


def test_in_mode_dp_no_differencing_refusal_answers_membership(desk, tmp_path):
    """In mode dp the noise covers differencing: a set one row away from a released one is admitted (a
    refusal there would tell, for free, whether that row is in the table)."""
    describe = {"dataset": "noisy", "kind": "describe"}  # two describes fit the test's small budget
    desk.admit(request(**describe), admission(tmp_path, range(0, 800), range(800, 1000)), tmp_path)
    near = admission(tmp_path, range(1, 800), range(800, 1000))
    desk.admit(request(**describe, job="j2"), near, tmp_path)
    with pytest.raises(Refusal) as guard:  # the same sets in mode rules: refused
        desk.admit(request(job="j3"), admission(tmp_path, range(0, 800), range(800, 1000)), tmp_path)
        desk.admit(request(job="j4"), admission(tmp_path, range(1, 800), range(800, 1000)), tmp_path)
    assert guard.value.code == "differencing_refused"


def test_in_mode_dp_the_catalog_count_is_drawn_once_per_version_and_charged_to_no_analyst(desk):
    """A draw per distinct exact count gave two versions of one count one shown count: equal shown
    counts said a row had been replaced, or restored. Each version now has its own draw, stored."""
    from remote_magic_server.release.desk import CATALOG

    rho = desk.policy("noisy").dp_rho_catalog
    shown = [desk.table_size("noisy", 1, "c1", 6000) for _ in range(3)]
    assert shown[0] == shown[1] == shown[2], "the same count is shown to every request: no fresh noise"
    assert desk.ledger.spent(CATALOG, "noisy") == pytest.approx(rho)
    assert desk.ledger.spent("alice", "noisy") == 0
    drawn = [desk.table_size("noisy", version, f"c{version}", 6000) for version in range(2, 22)]
    assert len(set(drawn)) > 10, "versions of one exact count are drawn apart"
    assert max(abs(d - 6000) for d in drawn) < 10 / math.sqrt(2 * rho)
    assert desk.ledger.spent(CATALOG, "noisy") == pytest.approx(21 * rho)
    assert [desk.table_size("noisy", version, f"c{version}", 6000) for version in range(1, 22)] == [
        shown[0],
        *drawn,
    ]
    assert desk.ledger.spent(CATALOG, "noisy") == pytest.approx(21 * rho), "a version shown again is free"
    assert desk.table_size("plain", 1, "c1", 6003) == 6000  # mode rules: rounded, as before


def test_one_table_under_two_noisy_names_shows_one_catalog_draw_charged_once(tmp_path):
    """A draw stored per name gave a table served under k names k draws to average (red-team review 8),
    and one stored per table text gave the file as `path =` and as `source =` two (review 10). The draw
    is the table's content's: every name, spelling and version serving those rows reads it."""
    from remote_magic_server.release.desk import CATALOG, _digest

    table = {"path": tmp_path / "n.parquet", "id_column": "id", "label_columns": ["y"]}
    names = {"a": "dp", "b": "dp", "c": "dp_eval_only"}
    datasets = {name: DatasetConfig(**table, privacy=mode) for name, mode in names.items()}
    source = {"kind": "parquet", "path": str(tmp_path / "n.parquet")}
    datasets["d"] = DatasetConfig(source=source, id_column="id", label_columns=["y"])
    desk = ReleaseDesk(
        Settings(datasets=datasets), Ledger(tmp_path / "ledger.sqlite"), AuditLog(tmp_path / "audit.log")
    )
    shown = [
        desk.table_size(name, number, "same-rows", 6000)
        for name, number in (("a", 1), ("b", 4), ("c", 2), ("d", 1))
    ]
    assert shown[0] == shown[1] == shown[2] == shown[3]
    rho = desk.policy("a").dp_rho_catalog
    assert sum(desk.ledger.spent(CATALOG, name) for name in datasets) == pytest.approx(rho)
    drawn = {desk.table_size("b", 5, f"other-rows-{n}", 6000) for n in range(20)}
    assert len(drawn) > 10, "other content (other rows) is drawn apart"
    # Draws made before they were stored by content alone are kept, not redrawn: by the table's text
    # and content, and before that by the name and version.
    legacy = _digest("catalog", desk._table("c"), "version", 9)
    desk.ledger.store_answer(CATALOG, "c", legacy, {"rows": 5990})
    assert (
        desk.table_size("c", 9, "before-the-upgrade", 6000)
        == desk.table_size("a", 1, "before-the-upgrade", 6000)
        == desk.table_size("d", 1, "before-the-upgrade", 6000)
        == 5990
    )
    legacy = _digest("catalog", desk._table("d"), "content", "stored-by-text")
    desk.ledger.store_answer(CATALOG, desk._table("d"), legacy, {"rows": 5985})
    assert (
        desk.table_size("d", 2, "stored-by-text", 6000)
        == desk.table_size("a", 2, "stored-by-text", 6000)
        == 5985
    )
    assert sum(desk.ledger.spent(CATALOG, name) for name in datasets) == pytest.approx(21 * rho)


def test_a_federated_step_asks_its_batchs_noise_and_a_session_step_is_charged_as_an_admission(desk, tmp_path):
    """A sums step's worker cannot ask for less noise than its batch's releases (the parent holds each
    request to them); a session's later step (`readmit`) is charged as an admission is, once per key, and
    the same key again is answered with its draws at no cost."""
    from remote_magic.families.dpboost.schedule import Release

    releases = (Release("gaussian", 1.0, 0.001), Release("gaussian", 0.5, 0.001))

    def step(key: str, dataset: str = "noisy") -> Request:
        spec = {"dataset": dataset, "label": "y"}
        return Request(
            "alice", dataset, "sums", spec, features=("a",), charge_key=key, step_rho=0.002, releases=releases
        )

    def report(hessian_bound: float = 0.5) -> SumsReport:
        asks = [
            NoiseRequest(kind="gaussian", values=[1.0, 2.0], bound=1.0, rho=0.001),
            NoiseRequest(kind="gaussian", values=[3.0, 4.0], bound=hessian_bound, rho=0.001),
        ]
        return SumsReport(trees=1, leaves=2, noise=NoiseBatch(requests=asks))

    rows = admission(tmp_path, range(0, 800), range(800, 1000))
    first = desk.release_sums(step("s1"), desk.admit(step("s1"), rows, tmp_path), report())
    assert (
        len(first.gradients) == 2 and first.privacy.rho == pytest.approx(0.002) and not first.privacy.repeated
    )
    with pytest.raises(Refusal) as less:
        desk.release_sums(step("s2"), desk.readmit(step("s2"), rows), report(hessian_bound=0.05))
    assert less.value.code == "invalid_worker_report"
    again = desk.release_sums(step("s1"), desk.readmit(step("s1"), rows), report())
    assert again.gradients == first.gradients and again.hessians == first.hessians
    assert again.privacy.repeated and again.privacy.rho == 0
    assert desk.ledger.spent("alice", "noisy") == pytest.approx(0.004)  # s1 and s2, each once
    desk.check_budget(step("s1"))  # the budget left (0.001) cannot pay for a step, but s1 is paid for
    with pytest.raises(Refusal, match="cannot pay") as short:
        desk.check_budget(step("s3"))
    assert short.value.code == "privacy_budget_exhausted"
    with pytest.raises(Refusal) as rules:
        desk.readmit(step("s3", "plain"), rows)
    assert rules.value.code == "federated_needs_dp"


def test_a_describe_asks_one_sketch_at_its_charge_and_no_other_job_asks_noise(desk, tmp_path):
    """A worker taken over by its payload chose a noise request's bound and rho freely outside a
    training: a scale OpenDP searched for without end (a thread of the server held), or a flood of
    near-free requests. Now a describe's one sketch is checked against what it was charged for (its rho,
    a bound of one count per undeclared column shown, at most one per column shown) and any other kind
    of job is answered no noise at all."""
    sketch = Request(
        user="bob",
        dataset="noisy",
        kind="describe",
        spec={"dataset": "noisy", "label": "y", "derive": {"c": "a * 2"}},
        features=("a", "b"),
        charge_key="describe:s",
    )
    bad = [
        NoiseRequest(kind="gaussian", values=[1.0], bound=1.0, rho=0.002),  # b and c undeclared: sqrt 2
        NoiseRequest(kind="gaussian", values=[1.0], bound=1e300, rho=0.002),
        NoiseRequest(kind="gaussian", values=[1.0], bound=math.sqrt(2), rho=1e-300),
        NoiseRequest(kind="top1", values=[1.0, 2.0], bound=math.sqrt(2), rho=0.002),
    ]
    for i, ask in enumerate(bad):
        request = Request(**{**sketch.__dict__, "user": f"u{i}", "charge_key": f"describe:bad{i}"})
        admitted = desk.admit(request, describe_admission(tmp_path), tmp_path)
        with pytest.raises(Refusal) as refused:
            desk.noise(request, admitted, ask)
        assert refused.value.code == "invalid_worker_report", ask
    admitted = desk.admit(sketch, describe_admission(tmp_path), tmp_path)
    good = NoiseRequest(kind="gaussian", values=[5.0, 6.0], bound=math.sqrt(2), rho=0.002)
    assert len(desk.noise(sketch, admitted, good).values) == 2
    with pytest.raises(Refusal, match="does not make"):
        desk.noise(sketch, admitted, good)  # a second sketch
    evaluate = Request(
        user="carol", dataset="plain", kind="evaluate", spec={"dataset": "plain", "label": "y"}
    )
    admitted = desk.admit(evaluate, admission(tmp_path, range(600), range(600, 1200)), tmp_path)
    with pytest.raises(Refusal, match="does not make"):
        desk.noise(evaluate, admitted, NoiseRequest(kind="gaussian", values=[1.0], bound=1.0, rho=1e-300))
