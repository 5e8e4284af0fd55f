"""Unit tests of the pure disclosure rules: guard, describe release, model release, DP, audit chain."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from pyroaring import BitMap

from remote_magic.contract.codes import Refusal
from remote_magic_server.audit import AuditLog, verify
from remote_magic_server.config.settings import DatasetConfig, Policy, Settings
from remote_magic_server.privacy.describe_rules import merge_bins, release_describe, sensitivity
from remote_magic_server.privacy.dp import gaussian_counts
from remote_magic_server.privacy.guard import check_differencing
from remote_magic_server.privacy.model_release import check_model_release, unnecessary_risk
from remote_magic_server.privacy.policy import release
from remote_magic_server.protocol import DescribeReport, ModelFacts, SplitCounts, TrainReport
from remote_magic_server.release.ledger import Ledger
from remote_magic_server.worker.describe_task import nice_edges

POLICY = Policy()


def test_guard_refuses_a_set_one_row_away_from_a_released_one():
    released = [BitMap(range(500))]
    with pytest.raises(Refusal) as exc:
        check_differencing({"training": BitMap(range(1, 500))}, released, 10_000, 10)
    assert exc.value.code == "differencing_refused"
    assert "differencing rule" in exc.value.message and "499" not in exc.value.message


@pytest.mark.parametrize("missing", [1, 9])
def test_guard_refuses_the_near_complement_of_the_table(missing):
    with pytest.raises(Refusal, match="complement rule"):
        check_differencing({"admitted": BitMap(range(1000 - missing))}, [], 1000, 10)


def test_guard_allows_identical_repeats_and_large_differences():
    released = [BitMap(range(500))]
    check_differencing({"a": BitMap(range(500)), "b": BitMap(range(10, 500))}, released, 1000, 10)
    check_differencing({"whole": BitMap(range(1000))}, released, 1000, 10)


def test_merge_bins_gives_every_bin_the_minimum_and_open_outer_ends():
    bins = merge_bins([0.0, 1.0, 2.0, 3.0], [3, 12, 4, 4, 2], 10)
    assert [n for _, _, n in bins] == [15, 10]
    assert bins[0][0] is None and bins[-1][1] is None
    assert merge_bins([0.0], [4, 5], 10) == []


def _raw_describe(**over):
    raw = {
        "rows": 400,
        "classes": {"0": 250, "1": 150},
        "columns": [
            {
                "name": "age",
                "kind": "numeric",
                "missing": 3,
                "values": 397,
                "histogram": {"edges": [20.0, 40.0, 60.0], "counts": [2, 150, 200, 45]},
            },
            {
                "name": "town",
                "kind": "categorical",
                "missing": 0,
                "values": 400,
                "categories": {"big": 390, "Tinyville": 1, "small": 9},
                "rest": 0,
            },
        ],
    }
    raw.update(over)
    return DescribeReport.model_validate(raw)


def test_describe_release_hides_small_categories_and_extremes():
    out = release_describe(_raw_describe(), POLICY, "d", "label")
    text = out.model_dump_json()
    assert "Tinyville" not in text and "small" not in text
    town = out.columns[1]
    assert [c.value for c in town.categories] == ["big"] and town.other == 10
    age = out.columns[0]
    assert all(b.count >= 10 for b in age.histogram)
    assert age.histogram[0].lower is None and age.histogram[-1].upper is None
    assert age.missing is None
    assert out.rows == 250 + 150


def test_in_mode_dp_the_noisy_counts_alone_decide_what_shows():
    """The worker reports only declared or DP-selected names and edges there (tests/test_describe_dp.py),
    so nothing here may read an exact count: a name and a bin show or not by their noisy counts."""
    lifted = release_describe(_raw_describe(), POLICY, "d", "label", lambda counts: [n + 100 for n in counts])
    town = lifted.columns[1]
    assert [c.value for c in town.categories] == ["big", "small", "Tinyville"]
    lowered = release_describe(_raw_describe(), POLICY, "d", "label", lambda counts: [0 for _ in counts])
    assert lowered.columns[1].categories == [] and lowered.columns[0].histogram is None


def test_describe_release_refuses_small_cohorts_and_classes():
    with pytest.raises(Refusal, match="fewer than 100 rows"):
        release_describe(_raw_describe(rows=99), POLICY, "d", "label")
    with pytest.raises(Refusal) as exc:
        release_describe(_raw_describe(classes={"a": 397, "b": 3}), POLICY, "d", "label")
    assert exc.value.code == "class_too_small"


def test_dp_noise_comes_from_opendp_and_is_applied_before_rounding():
    raw = _raw_describe()
    drawn: list[list[int]] = []

    def noise(counts: list[int]) -> list[int]:
        drawn.append(gaussian_counts(counts, sensitivity(raw) ** 0.5, 0.002)[0])
        return drawn[-1]

    out = release_describe(raw, POLICY, "d", "label", noise, noisy_cohort=True)
    assert drawn and len(drawn[0]) == 1 + 2 + 1 + 4 + 1 + 3 + 1
    assert all(c.count is None or c.count % 5 == 0 for c in out.classes)
    assert sensitivity(raw) == 4


def test_totals_are_recomputed_from_released_cells():
    report = TrainReport(
        task="binary",
        metrics={"auc": 0.912345},
        feature_importance={},
        stats={"n": 203},
        rounds={"base": 0, "new": 0, "total": 0},
    )
    counts = {"eval": SplitCounts(rows=203, classes={"0": 101, "1": 102})}
    out = release(report, counts, POLICY, "j", "d", "evaluate")
    assert out.summary.eval.rows == 100 + 100
    assert out.metrics["auc"] == 0.9123


@pytest.mark.parametrize(
    ("depth", "trees", "mcw", "risky"),
    [(6, 100, 1, True), (8, 30, 0, True), (3, 500, 0, False), (6, 100, 7, False), (6, 8, 2, False)],
)
def test_sacro_ml_xgboost_risk_rule(depth, trees, mcw, risky):
    assert unnecessary_risk(depth, trees, mcw) is risky


def xgboost_facts(min_leaf_rows: int, **facts: object) -> ModelFacts:
    return ModelFacts(family="xgboost", min_leaf_rows=min_leaf_rows, facts=facts)


def test_model_release_needs_large_leaves_and_no_categories():
    ok = {
        "min_leaf_rows": 25,
        "max_depth": 2,
        "n_estimators": 10,
        "min_child_weight": 5,
        "categorical": False,
    }
    check_model_release(xgboost_facts(**ok), POLICY)
    for bad in ({"min_leaf_rows": 3}, {"categorical": True}, {"max_depth": 0, "min_child_weight": 1}):
        with pytest.raises(Refusal) as exc:
            check_model_release(xgboost_facts(**{**ok, **bad}), POLICY)
        assert exc.value.code == "model_release_refused"


def test_dataset_overrides_only_tighten_the_new_numbers(tmp_path):
    settings = Settings(
        datasets={
            "d": DatasetConfig(
                path=tmp_path / "x.parquet",
                id_column="id",
                label_columns=["y"],
                policy={"dp_rho_job": 0.5, "dp_rho_cap": 0.5, "min_leaf_rows": 5, "max_categories": 100},
            )
        }
    )
    policy = settings.policy_for("d")
    assert policy.dp_rho_job == 0.01 and policy.dp_rho_cap == 0.5
    assert policy.min_leaf_rows == 10 and policy.max_categories == 40


def _lines(path):
    return path.read_text().splitlines()


@pytest.mark.parametrize("tamper", ["edit", "delete", "swap", "append_forged"])
def test_audit_chain_detects_tampering(tmp_path, tamper):
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    for i in range(4):
        log.record("release_decision", "alice", job=str(i), decision="released")
    assert verify(path).ok and verify(path).entries == 4
    lines = _lines(path)
    if tamper == "edit":
        entry = json.loads(lines[1])
        entry["decision"] = "refused"
        lines[1] = json.dumps(entry)
    elif tamper == "delete":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        forged = json.loads(lines[-1])
        forged.update(seq=5, prev="f" * 64)
        lines.append(json.dumps(forged))
    path.write_text("\n".join(lines) + "\n")
    verdict = verify(path)
    assert not verdict.ok and verdict.problem


def test_ledger_stores_sets_once_and_charges_the_budget_once(tmp_path):
    ledger = Ledger(tmp_path / "ledger.sqlite")
    ledger.record_sets("alice", "t", "job:1", {"a": BitMap(range(200)), "b": BitMap(range(200))})
    ledger.record_sets("alice", "t", "job:2", {"a": BitMap(range(200))})
    assert ledger.released_sets("alice", "t") == [BitMap(range(200))]
    assert ledger.released_sets("bob", "t") == []
    ledger.charge("job:1", "alice", "t", "train", 0.01, {"splits": {}})
    ledger.charge("job:1", "alice", "t", "train", 0.01, {"splits": {"changed": 1}})
    assert ledger.spent("alice", "t") == 0.01 and ledger.charged("job:1") == {"splits": {}}
    ledger.charge("job:2", "bob", "t", "train", 0.02, {})
    assert ledger.spent_by_all("t") == pytest.approx(0.03) and ledger.charged("job:3") is None
    ledger.store_answer("alice", "t", "k2", {"rows": 100})
    assert ledger.stored_answer("alice", "t", "k2") == {"rows": 100}
    assert ledger.stored_answer("bob", "t", "k2") is None
    ledger.set_model_state("j", "alice", "t", "refused", "why")
    assert not ledger.approve_model("j", "owner")
    ledger.set_model_state("j", "alice", "t", "awaiting_approval", "ok")
    assert ledger.approve_model("j", "owner") and ledger.model_state("j")["approved_by"] == "owner"


def test_histogram_edges_are_round_numbers_inside_the_range():
    values = np.random.default_rng(1).normal(50, 10, 1000)
    edges = nice_edges(values)
    steps = {round(b - a, 9) for a, b in zip(edges, edges[1:])}
    assert len(steps) == 1 and steps.pop() in (1, 2, 5, 10)
    assert values.min() < edges[0] and edges[-1] < values.max()
    assert nice_edges(np.full(50, 3.0))


def test_audit_cli_verifies_and_detects_tampering(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n')
    log = AuditLog(tmp_path / "data" / "audit.log")
    log.record("request", "alice", method="GET", path="/v1/whoami", status=200)
    log.record("release_decision", "alice", job="j1", decision="refused", code="differencing_refused")

    def cli(*args):
        cmd = [sys.executable, "-m", "remote_magic_server", "audit", "--config", str(config), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)

    shown = cli()
    assert shown.returncode == 0 and "differencing_refused" in shown.stdout
    assert cli("--verify").returncode == 0
    path = tmp_path / "data" / "audit.log"
    path.write_text(path.read_text().replace('"refused"', '"released"'))
    tampered = cli("--verify")
    assert tampered.returncode == 1 and "TAMPERED" in tampered.stderr and "line 2" in tampered.stderr
