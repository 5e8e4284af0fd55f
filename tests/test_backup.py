"""Backup while five jobs are in flight, restore into a new data directory: the jobs, results, ledgers,
budgets and audit chain of the copy are those of the server at the moment of the backup, and the
restored server serves (and finishes the jobs that were in flight)."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys

import xgboost as xgb

from remote_magic_server.audit import read_head, verify
from remote_magic_server.demo import ensure_demo_data
from tests.serverproc import ServerProcess, rows, running, wait_until
from tests.test_reliability import pause_worker

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant"}
JOB_COLUMNS = "id, user, dataset, kind, state, spec, plan, result, error_code, submitted_at, finished_at"


def table(db_path, sql: str) -> set[tuple]:
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        return set(db.execute(sql).fetchall())
    finally:
        db.close()


def ledger(path) -> dict[str, set[tuple]]:
    return {
        name: table(path, f"SELECT * FROM {name}")
        for name in ("row_sets", "privacy_spend", "dp_answers", "model_releases")
    }


BC_DESCRIBE = {"dataset": "bc_dp", "label": "malignant", "features": ["mean_radius"]}


def cli(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "remote_magic_server", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_backup_while_five_jobs_run_then_restore_into_a_new_data_dir(tmp_path):
    data = tmp_path / "a"
    paths = ensure_demo_data(data)
    dp_table = (
        f'[datasets.bc_dp]\npath = "{paths["breast_cancer"]}"\nid_column = "id"\n'
        'label_columns = ["malignant"]\n'
    )
    dest = tmp_path / "backup"
    users = {"alice": ["breast_cancer_rules", "bc_dp"]}
    with running(data, tmp_path / "a.log", users, extra_datasets=dp_table) as a:
        client = a.client()
        finished = client.train(
            xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3), SPEC, timeout=120
        )
        # spends DP budget; one feature keeps the noise small beside the 212-row class (32 columns: sd 91)
        client.describe(BC_DESCRIBE)
        jobs = [
            client.submit(
                xgb.XGBClassifier(n_estimators=4, max_depth=2, min_child_weight=3),
                {**SPEC, "eval": {"fraction": 0.3, "seed": s}},
            )
            for s in range(5)
        ]
        pid = pause_worker(a, jobs[0].id)  # one job is surely running, four queued, while the copy is made
        before = ledger(a.settings.ledger_path)
        lines_before = len(a.settings.audit_path.read_text().splitlines())
        try:
            made = cli("backup", str(dest), "--config", str(a.config))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert made.returncode == 0, made.stderr
        assert all(job.wait(timeout=180).state == "succeeded" for job in jobs)
        after = ledger(a.settings.ledger_path)
        a_jobs = {row[0]: row for row in table(a.settings.db_path, f"SELECT {JOB_COLUMNS} FROM jobs")}
        a_audit = a.settings.audit_path.read_text().splitlines()
        config_text = a.config.read_text()

    copied = {row[0]: row for row in table(dest / "store.sqlite", f"SELECT {JOB_COLUMNS} FROM jobs")}
    in_flight = {job.id for job in jobs}
    assert {row[4] for i, row in copied.items() if i in in_flight} <= {"running", "queued"}
    assert {i for i, row in copied.items() if row[4] == "running"} == {jobs[0].id}

    restored_dir = tmp_path / "b"
    config = tmp_path / "b.toml"
    config.write_text(config_text.replace(f'data_dir = "{data}"', f'data_dir = "{restored_dir}"'))
    done = cli("restore", str(dest), "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert "audit log intact" in done.stdout
    assert cli("restore", str(dest), "--config", str(config)).returncode == 2  # never over existing data

    b_jobs = {row[0]: row for row in table(restored_dir / "store.sqlite", f"SELECT {JOB_COLUMNS} FROM jobs")}
    assert set(b_jobs) == set(a_jobs)
    for job_id, row in b_jobs.items():
        if job_id not in in_flight:
            assert row == a_jobs[job_id]  # finished jobs and their results, identical
    assert json.loads(b_jobs[finished.job_id][7])["metrics"] == finished.metrics
    b_ledger = ledger(restored_dir / "ledger.sqlite")
    assert (
        b_ledger["privacy_spend"] == before["privacy_spend"] == after["privacy_spend"]
        and b_ledger["privacy_spend"]
    )
    assert b_ledger["dp_answers"] == before["dp_answers"]
    for name in ("row_sets", "model_releases"):
        assert before[name] <= b_ledger[name] <= after[name]
    b_audit = (restored_dir / "audit.log").read_text().splitlines()
    assert lines_before <= len(b_audit) and b_audit == a_audit[: len(b_audit)]
    assert verify(restored_dir / "audit.log", read_head(restored_dir / "store.sqlite")).ok
    assert not table(restored_dir / "store.sqlite", "SELECT id FROM jobs WHERE worker_pid IS NOT NULL")

    b = ServerProcess(config, tmp_path / "b.log")
    b.tokens = {"alice": a.tokens["alice"]}  # tokens come back with the store
    b.start()
    try:
        restored = b.client()
        assert restored.job(finished.job_id).result().metrics == finished.metrics
        assert all(restored.job(job.id).wait(timeout=180).state == "succeeded" for job in jobs)
        assert restored.describe(BC_DESCRIBE).privacy["repeated"]
    finally:
        b.stop()


def test_a_job_whose_worker_wrote_its_row_sets_before_the_backup_runs_again_after_the_restore(tmp_path):
    """The worker writes its row sets into the job folder as the sandbox uid; a job caught after that
    re-runs on the restored server and must be able to write them again."""
    data = tmp_path / "a"
    dest = tmp_path / "backup"
    with running(data, tmp_path / "a.log", {"alice": ["breast_cancer_rules"]}) as a:
        job = a.client().submit(xgb.XGBClassifier(n_estimators=400, max_depth=4), SPEC)
        row_sets = a.settings.jobs_dir / job.id / "rows-evaluation.roaring"
        wait_until(row_sets.exists, 180, "the worker's row sets")
        pid = rows(a)[job.id]["worker_pid"]
        os.kill(pid, signal.SIGSTOP)  # training, not finished: the copy has the job running
        try:
            made = cli("backup", str(dest), "--config", str(a.config))
        finally:
            os.kill(pid, signal.SIGCONT)
        assert made.returncode == 0, made.stderr
        assert rows(a)[job.id]["state"] == "running"
        written_by = os.stat(row_sets)
        config_text = a.config.read_text()
        token = a.tokens["alice"]

    restored_dir = tmp_path / "b"
    config = tmp_path / "b.toml"
    config.write_text(config_text.replace(f'data_dir = "{data}"', f'data_dir = "{restored_dir}"'))
    done = cli("restore", str(dest), "--config", str(config))
    assert done.returncode == 0, done.stderr
    restored = os.stat(restored_dir / "jobs" / job.id / "rows-evaluation.roaring")
    assert (restored.st_uid, restored.st_gid, restored.st_mode) == (
        written_by.st_uid,
        written_by.st_gid,
        written_by.st_mode,
    )

    b = ServerProcess(config, tmp_path / "b.log")
    b.tokens = {"alice": token}
    b.start()
    try:
        again = b.client().job(job.id).wait(timeout=600)
        assert again.state == "succeeded", (again.error, (tmp_path / "b.log").read_text()[-3000:])
    finally:
        b.stop()
