"""The MLflow export: against the embedded SQLite store (runs, metrics by step, params, tags, model
versions with metadata only, aliases), and against a real `mlflow server` on loopback that is down while
a job runs: the job is not delayed, and the export catches up once MLflow is back."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import xgboost as xgb

from remote_magic.contract.wire import ModelReleaseStatus
from remote_magic_server.automation.mlflow_export import MlflowExporter
from remote_magic_server.config.settings import load_settings
from remote_magic_server.demo import free_port
from remote_magic_server.jobs.store import Store
from tests.serverproc import running

mlflow = pytest.importorskip("mlflow")
SPEC = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.3, "seed": 4}}
USERS = {"alice": ["breast_cancer_rules"]}


def model(rounds: int = 5) -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=rounds, max_depth=2)


def eventually(read, timeout: float = 90.0):
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = read()
        except Exception:  # noqa: BLE001 - MLflow may still be starting or the export still queued
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("the export did not arrive")
        time.sleep(0.5)


def exported(log: str) -> bool:
    return log.count("mlflow_version_exported") == 2 and "mlflow_alias_exported" in log


def runs_of(client, job_id: str):
    experiment = client.get_experiment_by_name("remote-magic")
    if experiment is None:
        return []
    return client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`remote_magic.job_id` = '{job_id}'"
    )


def test_jobs_and_versions_are_exported_to_the_embedded_store(tmp_path):
    extra = "[mlflow]\nenabled = true\n[webhooks]\nbackoff_s = 0.5\nmax_backoff_s = 2\n"
    with running(tmp_path / "data", tmp_path / "server.log", USERS, extra=extra) as server:
        client = server.client()
        first = client.train(model(), SPEC, register={"name": "flow", "alias": "champion"})
        second = client.train(model(3), SPEC, register="flow", base_model="flow@champion")
        # Wait for the server's exports before opening the store here: two processes creating MLflow's
        # tables in one SQLite file at once would race.
        eventually(lambda: exported(server.log_path.read_text()))
    uri = f"sqlite:///{server.data_dir / 'mlflow.db'}"
    ml = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    [run] = runs_of(ml, second.job_id)
    data = run.data
    assert data.metrics["auc"] == second.metrics["auc"]
    assert data.params["spec.dataset"] == "breast_cancer_rules" and data.params["spec.eval.fraction"] == "0.3"
    assert data.params["model.max_depth"] == "2" and data.params["rounds.total"] == "8"
    assert data.tags["remote_magic.lineage.parent"] == "flow@1" and data.tags["remote_magic.dataset_version"]
    curve = ml.get_metric_history(run.info.run_id, f"eval_{second.history.columns.name}")
    assert [m.step for m in curve] == [6, 7, 8]
    assert [round(m.value, 4) for m in curve] == [round(v, 4) for v in second.history["eval"]]
    versions = sorted(ml.search_model_versions("name='flow'"), key=lambda v: int(v.version))
    assert [v.tags["remote_magic.ref"] for v in versions] == ["flow@1", "flow@2"]
    assert versions[1].tags["remote_magic.parent"] == "flow@1"
    assert all(v.tags["remote_magic.model_file"] == "stays on the server" for v in versions)
    assert ml.list_artifacts(run.info.run_id) == []
    assert ml.get_model_version_by_alias("flow", "champion").tags["remote_magic.ref"] == "flow@1"
    [first_run] = runs_of(ml, first.job_id)
    assert first_run.data.tags["remote_magic.lineage.parent"] == ""


def test_the_model_file_is_logged_only_when_it_may_leave(tmp_path, server):
    job = server.client().train(model(2), SPEC)
    settings = load_settings(server.config)
    settings.server.data_dir = tmp_path
    store = Store(server.settings.db_path, server.settings.jobs_dir)
    try:
        states = {"approved": "approved", "awaiting": "awaiting_approval", "dp": "dp_model"}
        for name, state in states.items():
            settings.mlflow.experiment = name
            status = ModelReleaseStatus(job_id=job.job_id, state=state, message="")  # type: ignore[arg-type]
            MlflowExporter(settings, store, lambda _job, s=status: s)._run({"id": job.job_id})
        ml = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
        artifacts = {}
        for name in states:
            experiment = ml.get_experiment_by_name(name).experiment_id
            [run] = ml.search_runs([experiment])
            artifacts[name] = [f.path for f in ml.list_artifacts(run.info.run_id, "model")]
    finally:
        store.close()
    assert artifacts == {"approved": ["model/model.json"], "awaiting": [], "dp": ["model/model.json"]}


def mlflow_server(folder: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            f"sqlite:///{folder / 'mlflow.db'}",
            "--default-artifact-root",
            (folder / "artifacts").as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "mlflow.log", "ab"),  # noqa: SIM115 - kept for the process's lifetime
    )


def test_a_stopped_mlflow_server_delays_nothing_and_the_export_catches_up(tmp_path):
    port = free_port()
    (tmp_path / "ml").mkdir()
    extra = (
        f'[mlflow]\nenabled = true\ntracking_uri = "http://127.0.0.1:{port}"\n\n'
        "[webhooks]\nbackoff_s = 0.5\nmax_backoff_s = 10\nmax_attempts = 50\n"
    )
    with running(tmp_path / "data", tmp_path / "server.log", USERS, extra=extra) as server:
        client = server.client()
        # MLflow is not running: the job ends before its export can be delivered (no wall-clock bound,
        # which would test the machine's speed); the retries span minutes (50 tries, up to 10 s apart),
        # far above an MLflow server's start on a busy machine.
        result = client.train(model(), SPEC, register="remote_flow")
        assert result.metrics["auc"] > 0.8
        assert client.status(result.job_id).state == "succeeded"
        proc = mlflow_server(tmp_path / "ml", port)
        try:
            ml = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{port}")
            finished = lambda: [r for r in runs_of(ml, result.job_id) if r.info.status == "FINISHED"]  # noqa: E731
            [run] = eventually(finished, timeout=600)
            versions = eventually(lambda: ml.search_model_versions("name='remote_flow'"), timeout=60)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    assert run.data.metrics["auc"] == result.metrics["auc"]
    assert [v.tags["remote_magic.ref"] for v in versions] == ["remote_flow@1"]
