"""Warm workers (`[executor] warm_workers`), with a real server: a job goes to a worker started ahead of
it, confined as a fresh one is, that serves that one job and exits; the pool refills, replaces a worker
that dies while it waits, and leaves no process behind when the server stops. What happened is read from
the server log's `warm_worker_*` and `job_started` lines and from /proc, never from timing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb

from remote_magic_server.jobs.local_executor import process_mark
from remote_magic_server.worker.sandbox import unreadable_code_path
from tests.serverproc import running, wait_until

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.3, "seed": 1}}
DEADLINE_S = 120


def events(server, name: str) -> list[dict]:
    """The server log's lines of one event, in order."""
    found = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            entry = json.loads(line)
            if entry.get("event") == name:
                found.append(entry)
    return found


def ready_pids(server) -> list[int]:
    return [entry["pid"] for entry in events(server, "warm_worker_ready")]


def started(server, job_id: str) -> dict:
    wait_until(
        lambda: any(e["job"] == job_id for e in events(server, "job_started")), DEADLINE_S, "job_started"
    )
    return next(e for e in events(server, "job_started") if e["job"] == job_id)


def gone(pid: int) -> bool:
    return process_mark(pid) is None


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """A server keeping two warm workers, with a dataset that accepts owner-approved notebook code."""
    base = tmp_path_factory.mktemp("warm")
    data_dir = base / "data"
    extra = (
        "\n[datasets.open_diabetes]\n"
        f'path = "{data_dir / "datasets" / "diabetes.parquet"}"\n'
        'id_column = "id"\nlabel_columns = ["progression"]\nallow_custom_code = true\nprivacy = "rules"\n'
    )
    users = {"alice": ["breast_cancer_rules", "open_diabetes"]}
    with running(data_dir, base / "server.log", users, extra, "[executor]\nwarm_workers = 2\n") as server:
        wait_until(lambda: len(ready_pids(server)) >= 2, DEADLINE_S, "two warm workers")
        yield server


def test_each_job_takes_its_own_warm_worker_which_exits_and_is_replaced(pooled):
    client = pooled.client()
    pids = []
    for seed in range(3):
        waiting = set(ready_pids(pooled))
        for pid in ready_pids(pooled)[-2:]:  # confinement covers the threads a process starts later only
            assert os.listdir(f"/proc/{pid}/task") == [str(pid)], "a waiting worker runs one thread"
        job = client.submit(xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=seed), SPEC)
        assert job.result(timeout=DEADLINE_S).metrics["auc"] > 0.8
        line = started(pooled, job.id)
        assert line["warm"] is True and line["pid"] in waiting
        pids.append(line["pid"])
        wait_until(lambda pid=line["pid"]: gone(pid), DEADLINE_S, "the job's worker to exit")
        wait_until(lambda n=len(waiting): len(ready_pids(pooled)) > n, DEADLINE_S, "a refill")
        isolation = job.status.isolation
        assert isolation["network"] in ("netns", "userns+netns")
        assert isolation["filesystem"].startswith("landlock-abi")
        if os.geteuid() == 0 and unreadable_code_path() is None:
            assert isolation["uid"] == "65534"
    assert len(set(pids)) == 3  # one process, one job
    ready = ready_pids(pooled)
    assert len(ready) == len(set(ready))  # a worker waits once: a used one never waits again


def test_a_worker_that_opened_duckdb_ahead_and_rehearsed_staging_runs_one_thread_until_its_job(pooled):
    """After 0.4 s with no job a warm worker opens its DuckDB and rehearses staging on made-up rows
    (worker/main.py `_open_ahead`): still one thread (confinement covers only the threads a process
    starts later), and the job it then takes stages and trains as on any worker."""
    waiting = ready_pids(pooled)[-2:]  # the pool keeps two; no job is running
    wait_until(
        lambda: set(waiting) <= {entry["pid"] for entry in events(pooled, "opened_ahead")},
        DEADLINE_S,
        "the waiting workers to open DuckDB ahead",
    )
    for pid in waiting:
        assert os.listdir(f"/proc/{pid}/task") == [str(pid)], "a rehearsed worker runs one thread"
    job = pooled.client().submit(xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=11), SPEC)
    result = job.result(timeout=DEADLINE_S)
    assert result.metrics["auc"] > 0.8
    assert started(pooled, job.id)["pid"] in waiting


def test_a_worker_that_dies_in_the_pool_is_replaced_and_never_given_a_job(pooled):
    victim = ready_pids(pooled)[-1]
    before = len(ready_pids(pooled))
    os.kill(victim, signal.SIGKILL)
    wait_until(
        lambda: any(e["pid"] == victim for e in events(pooled, "warm_worker_lost")), DEADLINE_S, "lost"
    )
    wait_until(lambda: len(ready_pids(pooled)) > before, DEADLINE_S, "a replacement")
    job = pooled.client().submit(xgb.XGBClassifier(n_estimators=5, max_depth=2, random_state=7), SPEC)
    assert job.result(timeout=DEADLINE_S).metrics["auc"] > 0.8
    line = started(pooled, job.id)
    assert line["warm"] is True and line["pid"] != victim


def _review(server, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "remote_magic_server", "review", *args, "--config", str(server.config)],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_a_warm_worker_is_confined_before_the_payload_runs(pooled, tmp_path):
    """Owner-approved notebook code (a custom objective) runs inside the warm worker and tries to leave
    it on every call: a TCP connection to a loopback listener, a read of a file the worker may not see,
    a write outside its job folder. It answers gradients only while every attempt fails, so the job
    succeeds only if the worker was confined."""
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the worker")
    secret.chmod(0o600)
    outside = tmp_path / "written-outside"
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    secret_path, outside_path = str(secret), str(outside)

    def connect() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(2)
            s.connect(("127.0.0.1", port))

    def escaping_objective(y_true, y_pred):
        for attempt in (
            connect,
            lambda: open(secret_path).read(),  # noqa: SIM115
            lambda: open(outside_path, "w").write("x"),  # noqa: SIM115
        ):
            try:
                attempt()
            except OSError:
                continue
            raise RuntimeError("the worker is not confined")
        return y_pred - y_true, np.ones_like(y_pred)

    model = xgb.XGBRegressor(n_estimators=5, max_depth=2, objective=escaping_objective)
    client = pooled.client()
    job = client.submit(
        model, {"dataset": "open_diabetes", "label": "progression", "eval": {"fraction": 0.3}}
    )
    assert job.status.state == "awaiting_approval"
    assert "approved" in _review(pooled, "approve", job.id)
    result = job.result(timeout=DEADLINE_S)
    assert result.rounds["total"] == 5
    assert started(pooled, job.id)["warm"] is True
    assert not outside.exists()
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()


def test_stopping_the_server_leaves_no_worker(tmp_path):
    with running(tmp_path / "data", tmp_path / "server.log", {"alice": ["breast_cancer_rules"]}, "",
                 "[executor]\nwarm_workers = 3\n") as server:  # fmt: skip
        wait_until(lambda: len(ready_pids(server)) >= 3, DEADLINE_S, "three warm workers")
        job = server.client().submit(xgb.XGBClassifier(n_estimators=5, max_depth=2), SPEC)
        job.result(timeout=DEADLINE_S)
        wait_until(lambda: len(ready_pids(server)) >= 4, DEADLINE_S, "a refill")
        pids = ready_pids(server)
        assert not any(gone(pid) for pid in pids[-3:])
    wait_until(lambda: all(gone(pid) for pid in pids), DEADLINE_S, "every warm worker to exit")
    assert len(events(server, "warm_worker_stopped")) >= 3  # stopped by the server, not orphaned


def test_without_warm_workers_every_job_gets_a_fresh_one(tmp_path):
    with running(tmp_path / "data", tmp_path / "server.log", {"alice": ["breast_cancer_rules"]}, "",
                 "[executor]\nwarm_workers = 0\n") as server:  # fmt: skip
        job = server.client().submit(xgb.XGBClassifier(n_estimators=5, max_depth=2), SPEC)
        job.result(timeout=DEADLINE_S)
        assert started(server, job.id)["warm"] is False
        assert not ready_pids(server)


def test_the_pool_size_key_is_documented():
    root = Path(__file__).resolve().parent.parent
    for doc in ("README.md", "docs/deployment.md"):
        assert "warm_workers" in (root / doc).read_text(), doc
