"""The Dask executor: training and evaluation on a Dask cluster, with the trust boundary where it was.

A cluster job is two processes in a row, both forked from the local executor's forkserver:

1. a confined local worker decodes the payload with the strict unpickler and answers a `plan` task
   with the canonical plan (parameters as JSON, the base model re-written in its family's saved form,
   which this process checks before anything reads it);
2. the job driver (`cluster/driver.py`), trusted code that never sees the payload, is the server's Dask
   client for the job: it stages the job's partitions on the cluster with the server-built staging
   plan and runs the same model job as a local worker on them (the family trains there), gathering
   aggregates and the trained model only.

Both speak the worker protocol, so the scheduler and the release desk see one execution. What the
cluster must not run stays on this machine: describe and review tasks, owner-approved custom code,
Pipelines (their preprocessors refit on every training row at once) and permutation importance (it
shuffles a column over all evaluation rows).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from remote_magic.families import saved_by
from remote_magic.families.base import STOPS_EARLY

from ..config.settings import ExecutorSection
from ..protocol import (
    CanonicalPlan,
    ClusterConfig,
    DriverTask,
    Failure,
    ParentMessage,
    PlanReady,
    Task,
    WorkerMessage,
)
from .local_executor import PRELOAD, LocalExecution, LocalExecutor

DRIVER = "remote_magic_server.cluster.driver"
# what families.base.check_kind says (the API refuses these before a job exists; this is a second look)
PIPELINE_EVALUATED = "evaluate takes a bare XGBoost model; send a Pipeline with train"
UNFITTED_EVALUATED = "evaluation needs a fitted model; fit it first"


def runs_on_cluster(task: Task) -> bool:
    return task.kind in ("train", "evaluate") and not task.approved_sha256 and not task.release.importance


class DriverExecution(LocalExecution):
    """The driver process: a cancel is SIGTERM, so it can tell the cluster to stop before it ends."""

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.process.terminate()


class ClusterExecution:
    """A cluster job seen as one execution: the decoder's messages, then the driver's."""

    def __init__(self, local: LocalExecutor, config: ExecutorSection, task: Task, folder: Path, name: str):
        assert task.bounds is not None
        self.local = local
        self.config = config
        self.task = task
        self.folder = folder
        self.name = name
        self.current: LocalExecution = local.start(task.model_copy(update={"kind": "plan"}), folder, name)
        self.decoding = True
        self.warm = self.current.warm

    @property
    def ref(self) -> tuple[int, str | None]:
        return self.current.ref

    def receive(self, timeout: float) -> WorkerMessage | None:
        message = self.current.receive(timeout)
        if self.decoding and isinstance(message, PlanReady):
            self.decoding = False
            return self._next(message.plan)
        return message

    def _next(self, plan: CanonicalPlan) -> WorkerMessage | None:
        """Hand the canonical plan to the driver (or, for a Pipeline, the whole job to a local worker)."""
        self.current.close()
        if self.task.kind == "evaluate" and plan.preprocess is not None:
            return Failure(code="unsupported_model", message=PIPELINE_EVALUATED)
        if self.task.kind == "evaluate" and plan.base is None:
            return Failure(code="unsupported_model", message=UNFITTED_EVALUATED)
        if self.task.kind == "train" and plan.stops_early:
            return Failure(code="parameter_out_of_bounds", message=STOPS_EARLY)
        if plan.preprocess is not None:
            self.current = self.local.start(self.task, self.folder, self.name)
            return None
        if plan.base is not None and not _saved_by(plan.family, self.folder / Path(plan.base).name):
            return Failure(
                code="invalid_model",
                message="the model could not be decoded: its bytes are corrupt or hostile",
            )
        plan = plan.model_copy(update={"base": Path(plan.base).name if plan.base else None})
        driver = DriverTask(task=self.task, plan=plan, cluster=cluster_config(self.config))
        (self.folder / "driver.json").write_text(driver.model_dump_json())
        started = self.local.spawn("drive", self.folder, f"{self.name}-driver")
        self.current = DriverExecution(started.process, started.conn, message_mb=self.task.limits.memory_mb)
        self.current.stage = "staging"  # a driver that dies did not fail to decode anything
        return None

    def reply(self, decision: ParentMessage) -> None:
        self.current.reply(decision)

    def kill(self) -> None:
        self.current.kill()

    def close(self) -> None:
        self.current.close()


def _saved_by(family: str, path: Path) -> bool:
    """Whether the decoder's base model is one its family saved (checked without the model library)."""
    try:
        return saved_by(family, path.read_bytes())
    except OSError:
        return False


def cluster_config(config: ExecutorSection) -> ClusterConfig:
    return ClusterConfig(
        scheduler=config.scheduler,
        tls_ca_file=str(config.tls_ca_file) if config.tls_ca_file else None,
        tls_cert=str(config.tls_cert) if config.tls_cert else None,
        tls_key=str(config.tls_key) if config.tls_key else None,
        partitions=config.partitions,
        connect_timeout_s=config.connect_timeout_s,
        collective_timeout_s=config.collective_timeout_s,
        start_timeout_s=config.start_timeout_s,
    )


class DaskExecutor:
    """Training and evaluation on the cluster the config names; every other task on this machine."""

    def __init__(self, config: ExecutorSection):
        self.config = config
        self.local = LocalExecutor([*PRELOAD, DRIVER], config.warm_workers)

    def warm(self) -> None:
        self.local.warm()

    def close(self) -> None:
        self.local.close()

    def start(self, task: Task, folder: Path, name: str) -> LocalExecution | ClusterExecution:
        if not runs_on_cluster(task):
            return self.local.start(task, folder, name)
        return ClusterExecution(self.local, self.config, task, folder, name)

    def reap(self, ref: tuple[int, str | None]) -> bool:
        return self.local.reap(ref)
