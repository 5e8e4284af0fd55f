"""One job in one fresh, confined process: decode, stage, train, evaluate, report raw aggregates.

The scheduler starts `run` by module name from a forkserver whose parent preloaded numpy, pandas,
xgboost and duckdb (preload.py), so a worker costs a fork, not an import. Messages to the scheduler are
JSON over a pipe (never pickle): progress, then one `result` or one `error` with a fixed code. Anything
unexpected becomes `internal_error`; its traceback goes to the server log (stderr), never to the pipe.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import BinaryIO

from ..payload import PayloadError
from . import sandbox

log = logging.getLogger("remote_magic_server.worker")


class _Reporter:
    def __init__(self, conn: Connection):
        self.conn = conn

    def send(self, kind: str, **body: object) -> None:
        self.conn.send_bytes(json.dumps({"type": kind, **body}).encode())

    def stage(self, stage: str, total: int = 0) -> None:
        self.send("progress", stage=stage, round=0, total=total, metric=None)


def _summarize_counts(frame, label: str, task: str) -> dict:
    counts: dict = {"rows": len(frame)}
    if task != "regression":
        counts["classes"] = {str(k): int(v) for k, v in frame[label].value_counts().items()}
    return counts


def _job(task: dict, job_dir: Path, payload: BinaryIO | None, reporter: _Reporter) -> dict:
    import numpy as np

    from ..privacy.policy import PolicyRefusal, check_cohort
    from . import evidence, staging, training
    from .unpickle import approved_loads, strict_loads

    if task["kind"] == "describe":
        from .describe import describe

        reporter.stage("staging")
        return describe(task, job_dir)
    reporter.stage("starting")
    if payload is None:
        raise PayloadError("invalid_model", "the job has no model")
    data = payload.read()
    if task.get("approved_sha256"):
        model = approved_loads(data, task["approved_sha256"])
    else:
        model = strict_loads(data, task["max_payload_bytes"])
    plan = training.make_plan(model, custom_code=bool(task.get("approved_sha256")))
    threads = task["threads"]
    training.check_bounds(plan, task["policy"], threads)
    kind = task["kind"]
    if kind == "evaluate" and plan.base is None:
        raise training.TrainingError("unsupported_model", "evaluation needs a fitted model; fit it first")
    if kind == "evaluate" and plan.preprocess is not None:
        raise training.TrainingError(
            "unsupported_model", "evaluate takes a bare XGBoost model; send a Pipeline with train"
        )

    reporter.stage("staging")
    default_eval = {"fraction": 0.2, "seed": 0} if kind == "train" else None
    staged = staging.stage(
        task["path"],
        task["spec"],
        task["features"],
        task["filter_columns"],
        task["id_column"],
        default_eval,
        task.get("derive_columns", []),
    )
    label_task = "regression" if plan.task == "regression" else "classification"
    raw_counts = {"eval": _summarize_counts(staged.eval, staged.label, label_task)}
    if kind == "train":
        raw_counts["train"] = _summarize_counts(staged.train, staged.label, label_task)
    try:
        check_cohort(raw_counts, task["policy"])
    except PolicyRefusal as refusal:
        raise training.TrainingError(refusal.code, refusal.message) from None
    sets = {"evaluation": staged.eval_rows}
    if kind == "train":
        sets["training"] = staged.train_rows
        sets["admitted"] = np.concatenate([staged.train_rows, staged.eval_rows])
    row_sets = evidence.write_row_sets(job_dir, sets)

    base_rounds = plan.base.num_boosted_rounds() if plan.base is not None else 0
    history: dict = {}
    model_facts = None
    if kind == "train":
        reporter.send("progress", stage="training", round=0, total=plan.rounds, metric=None)

        def report(done: int, latest: dict) -> None:
            reporter.send("progress", stage="training", round=done, total=plan.rounds, metric=latest)

        booster, history, classes, deval, y_eval = training.train(plan, staged, threads, report)
        booster.save_model("model.ubj")
        new_rounds = booster.num_boosted_rounds() - base_rounds
        if task.get("allow_model_release"):
            import xgboost as xgb

            dtrain = xgb.DMatrix(staged.train[staged.features], enable_categorical=True, nthread=threads)
            categorical = any(str(staged.train[f].dtype) == "category" for f in staged.features)
            model_facts = evidence.model_facts(plan.params, booster, dtrain, base_rounds, categorical)
            booster.save_model(str(job_dir / "model.json"))
    else:
        import xgboost as xgb

        _, y_eval, classes = training.encode_labels(staged, plan.task)
        training.finalize_params(plan, len(classes), threads)
        booster, new_rounds = plan.base, 0
        booster.set_param({"nthread": threads})
        deval = xgb.DMatrix(
            staged.eval[staged.features], label=y_eval, enable_categorical=True, nthread=threads
        )

    reporter.stage("evaluating")
    try:
        evaluation = training.evaluate(booster, deval, y_eval, plan.task, len(classes))
    except ValueError as exc:
        raise training.TrainingError(
            "evaluation_failed", "the model's predictions could not be scored on the evaluation rows"
        ) from exc
    metric_name, train_curve, eval_curve = "", [], []
    if history:
        metric_name = next(iter(history["eval"]))
        train_curve = history["train"][metric_name]
        eval_curve = history["eval"][metric_name]
    gain = booster.get_score(importance_type="gain") if booster.num_boosted_rounds() else {}
    return {
        "task": plan.task,
        "metrics": evaluation["metrics"],
        "confusion": {"labels": classes, "counts": evaluation["confusion"]}
        if "confusion" in evaluation
        else None,
        "history": {"metric": metric_name, "train": train_curve, "eval": eval_curve} if history else None,
        "feature_importance": {str(k): float(v) for k, v in gain.items()},
        "counts": raw_counts,
        "rounds": {"base": base_rounds, "new": new_rounds, "total": base_rounds + new_rounds},
        "row_sets": row_sets,
        "table_rows": evidence.table_rows(task["path"]),
        "model": model_facts,
    }


def run(job_dir: str, conn: Connection) -> None:
    """Entry point of a worker process (started by name from the scheduler)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s worker %(message)s")
    reporter = _Reporter(conn)
    path = Path(job_dir)
    try:
        task = json.loads((path / "task.json").read_text())
        dataset = task["path"]
        # Opened now, read only after confinement: from here on the dataset is `/proc/self/fd/N` and
        # the job folder is the working directory (relative paths).
        task["path"] = sandbox.open_dataset(dataset)
        model_file = path / "model.pkl"
        payload = open(model_file, "rb") if model_file.exists() else None  # noqa: SIM115
        applied = sandbox.confine(
            task["cpu_seconds"],
            task["memory_mb"],
            str(path),
            dataset,
            task.get("sandbox_uid", 65534),
            task.get("sandbox_gid", 65534),
        )
        reporter.send("isolation", applied=applied)
        started = time.monotonic()
        raw = _job(task, Path("."), payload, reporter)
        log.info("job %s done in %.3f s", path.name, time.monotonic() - started)
        reporter.send("result", raw=raw)
    except PayloadError as exc:
        reporter.send("error", code=exc.code, message=exc.message)
    except Exception as exc:  # noqa: BLE001 - every failure must become a fixed code
        from .training import TrainingError

        if isinstance(exc, TrainingError):
            reporter.send("error", code=exc.code, message=exc.message)
        elif isinstance(exc, MemoryError):
            reporter.send("error", code="out_of_memory", message="the job ran out of memory")
        else:
            log.exception("job %s failed", path.name)
            reporter.send("error", code="internal_error", message="the job failed on the server")
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
