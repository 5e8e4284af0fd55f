"""The MLflow export: each released job becomes an MLflow run, each registered version an MLflow model
version carrying metadata only, each alias move an MLflow alias.

It is a target of the outbox like a webhook: the deliverer calls `send` from its own thread, a failure
(MLflow down, slow, or refusing) is retried with backoff, and nothing here ever touches a job. mlflow is
an optional extra, imported on first use. What is exported is what the API already released: the spec,
the parameters, the released metrics (with their intervals when the result has them), the released
learning curve as stepped metrics, and tags with the dataset version and the lineage. The model file is
logged only when it may leave the server (the release desk says so): a model the DP trainer trained (a
DP release, logged at once), or one whose release the data owner approved. Every step looks up what it
would create first, so a retry after a partial export never duplicates a run or a version.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

from remote_magic.contract.wire import ModelReleaseStatus
from remote_magic.families import MODEL_FILE

from ..config.settings import Settings
from ..jobs.store import JobRow, Store
from ..registry.registrar import read_params
from .outbox import Due

log = logging.getLogger("remote_magic_server.automation")

TAG = "remote_magic"


def _flat(prefix: str, value: object) -> dict[str, str]:
    """A spec as MLflow params: nested keys joined with dots, values as text."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(_flat(f"{prefix}.{key}" if prefix else str(key), item))
        return out
    if value is None:
        return {}
    text = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    return {prefix: text[:500]}


def _intervals(result: dict) -> dict[str, float]:
    """Released intervals, `{metric: {"lower", "upper"}}` or `{metric: [lower, upper]}`, as metrics."""
    out = {}
    for name, interval in (result.get("intervals") or {}).items():
        bounds = (interval.get("lower"), interval.get("upper")) if isinstance(interval, dict) else interval
        if isinstance(bounds, (list, tuple)) and len(bounds) == 2 and None not in bounds:
            out[f"{name}_lower"], out[f"{name}_upper"] = float(bounds[0]), float(bounds[1])
    return out


class MlflowExporter:
    def __init__(
        self, settings: Settings, store: Store, model_release: Callable[[JobRow], ModelReleaseStatus]
    ):
        data_dir = settings.server.data_dir
        self.uri = settings.mlflow.tracking_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
        self.artifacts = (data_dir / "mlartifacts").resolve()
        self.experiment_name = settings.mlflow.experiment
        self.store = store
        self.model_release = model_release
        self._client = None
        self._experiment = ""

    def _mlflow(self):
        if self._client is None:
            # Fail fast and let the outbox retry, rather than MLflow's own minutes-long retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            found = client.get_experiment_by_name(self.experiment_name)
            self._experiment = (
                found.experiment_id
                if found is not None
                else client.create_experiment(self.experiment_name, artifact_location=self.artifacts.as_uri())
            )
            self._client = client
        return self._client

    def send(self, due: Due) -> tuple[bool, int | None, str]:
        handlers = {"job.succeeded": self._run, "model.registered": self._version, "alias.moved": self._alias}
        try:
            handlers[due.event_type](due.data)
        except Exception:
            self._client = None  # reconnect on the next attempt
            raise
        return True, None, ""

    def _run_id(self, job_id: str) -> str | None:
        client = self._mlflow()
        found = client.search_runs([self._experiment], filter_string=f"tags.`{TAG}.job_id` = '{job_id}'")
        return found[0].info.run_id if found else None

    def _run(self, status: dict) -> None:
        from mlflow.entities import Metric, Param, RunTag

        job = self.store.get_job(status["id"])
        if job is None or not job.result or self._run_id(job.id) is not None:
            return
        client = self._mlflow()
        result = job.result
        training = result.get("training")
        tags = {
            f"{TAG}.job_id": job.id,
            f"{TAG}.dp_model": f"epsilon {training['epsilon']:.3g}" if training else "",
            f"{TAG}.user": job.user,
            f"{TAG}.kind": job.kind,
            f"{TAG}.dataset": job.dataset,
            f"{TAG}.dataset_version": str(job.plan.dataset_version or ""),
            f"{TAG}.lineage.parent": job.plan.base_model.ref if job.plan.base_model else "",
            f"{TAG}.recipe": job.plan.recipe or "",
            f"{TAG}.trigger": job.plan.trigger or "",
        }
        run = client.create_run(self._experiment, run_name=f"{job.kind} {job.id}", tags=tags)
        params = {**_flat("spec", job.spec), **_flat("model", read_params(self.store.job_dir(job.id)))}
        params["rounds.total"] = str(result.get("rounds", {}).get("total", ""))
        now = int(time.time() * 1000)
        released = {**result["metrics"], **_intervals(result)}
        metrics = [Metric(k, float(v), now, 0) for k, v in released.items() if v is not None]
        history = result.get("history")
        if history:
            base = int(result.get("rounds", {}).get("base", 0))
            for split in ("train", "eval"):
                values = history.get(split) or []
                steps = history.get("rounds") or [base + i + 1 for i in range(len(values))]
                key = f"{split}_{history['metric']}"
                metrics += [Metric(key, float(v), now, s) for s, v in zip(steps, values) if v is not None]
        client.log_batch(
            run.info.run_id,
            metrics=metrics,
            params=[Param(k, v) for k, v in sorted(params.items())][:100],
            tags=[RunTag(f"{TAG}.exported", "1")],
        )
        model = self.store.job_dir(job.id) / MODEL_FILE
        if self.model_release(job).state in ("dp_model", "approved") and model.exists():
            client.log_artifact(run.info.run_id, str(model), "model")
        client.set_terminated(run.info.run_id)
        log.info("mlflow_run_exported", extra={"job": job.id})

    def _mlflow_version(self, name: str, ref: str):
        client = self._mlflow()
        found = client.search_model_versions(f"name='{name}' and tags.`{TAG}.ref` = '{ref}'")
        return found[0] if found else None

    def _version(self, view: dict) -> None:
        name, ref = view["name"], view["ref"]
        if self._mlflow_version(name, ref) is not None:
            return
        client = self._mlflow()
        lineage = view["lineage"]
        run_id = self._run_id(lineage["job_id"])
        if run_id is None:
            raise RuntimeError("the job's run is not exported yet")
        if not client.search_registered_models(f"name='{name}'"):
            client.create_registered_model(name, tags={f"{TAG}.owner": lineage["user"]})
        logged = [f.path for f in client.list_artifacts(run_id, "model")]
        source = f"runs:/{run_id}/model" if logged else f"remote-magic://models/{name}/{view['number']}"
        tags = {
            f"{TAG}.ref": ref,
            f"{TAG}.origin": lineage["origin"],
            f"{TAG}.parent": lineage.get("parent") or "",
            f"{TAG}.dataset": lineage["dataset"],
            f"{TAG}.dataset_version": lineage.get("dataset_version") or "",
            f"{TAG}.model_file": "logged" if logged else "stays on the server",
            f"{TAG}.dp_model": f"epsilon {view['training']['epsilon']:.3g}" if view.get("training") else "",
        }
        client.create_model_version(name, source, run_id=run_id, tags=tags)
        log.info("mlflow_version_exported", extra={"version": ref})

    def _alias(self, data: dict) -> None:
        version = self._mlflow_version(data["name"], data["ref"])
        if version is None:
            raise RuntimeError("the version is not exported yet")
        self._mlflow().set_registered_model_alias(data["name"], data["alias"], version.version)
        log.info("mlflow_alias_exported", extra={"version": data["ref"], "alias": data["alias"]})
