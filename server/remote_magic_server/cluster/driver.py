"""The driver of a cluster job: the server's one Dask client for the job, trusted code on canonical data.

It never sees the submitted bytes: a confined local worker decoded them (a `plan` task) and the parent
wrote this process its `DriverTask` (the job's task, the canonical plan, the cluster). It stages the
job's partitions on the cluster (partitions.py) and runs the same model job as a local worker
(runner/model_job.py) on them, so it speaks the same protocol to the parent (progress, admission and the
parent's decision, then a report or a failure) and the scheduler and the release desk cannot tell the
difference. It imports no model library: the job's family trains on the partitions (XGBoost's with
`xgboost.dask`), and what comes back from the cluster are aggregates and the trained model.

A scheduler that cannot be reached within `connect_timeout_s` ends the job with `cluster_unavailable`;
a training worker that leaves the cluster ends it with `cluster_worker_lost` as soon as the scheduler
notices (the surviving workers give up within `collective_timeout_s`); training whose workers have not
all begun within `start_timeout_s` ends it with `cluster_busy`; SIGTERM from the parent (a cancel)
tells the training workers to stop after their current round, then ends the driver. Either way what
the training held on the cluster is released first (families/xgboost/on_dask.py). Before staging, a
worker whose thread an earlier job's let-go task still holds is left out (stuck.py): every task the job
sends (staging, the calls on partitions, XGBoost's matrices) is restricted to the other workers, so it
neither waits behind that task nor for the jobs that still use that worker; such a worker is restarted
once it counts as stuck and nothing else is on it.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from urllib.parse import urlsplit

import dask
import numpy as np
import pyarrow.parquet as pq
from distributed import Client, Future, KilledWorker, Security, wait

from remote_magic.contract.codes import Refusal
from remote_magic.families import family
from remote_magic.families.base import Plan

from ..protocol import ClusterConfig, DriverTask, TrainReport
from ..runner import model_job
from ..runner.channel import Channel, serve
from . import partitions, stuck
from .partitions import LOST_WORKER, DaskHandle, DaskPartitions, workers_of

log = logging.getLogger("remote_magic_server.cluster")

POLL_S = 0.2
WORKERS_EVERY_S = 1.0
LOSS_NOTICE_S = 5.0  # how long a failed collective waits for the scheduler to notice a lost worker
STUCK_IN_USE = (
    "every worker of the training cluster is held by an earlier job that did not end while other jobs use "
    "it; submit again later, or ask the data owner"
)


def security(cluster: ClusterConfig) -> Security | None:
    if cluster.tls_cert is None:
        return None
    return Security(
        tls_ca_file=cluster.tls_ca_file,
        tls_client_cert=cluster.tls_cert,
        tls_client_key=cluster.tls_key,
        require_encryption=True,
    )


class Driver:
    def __init__(self, job: DriverTask, folder: Path, channel: Channel):
        self.job = job
        self.task = job.task
        self.folder = folder
        self.channel = channel
        self.stopping = threading.Event()

    def run(self) -> TrainReport | None:
        cluster = self.job.cluster
        try:
            client = Client(
                cluster.scheduler,
                security=security(cluster),
                timeout=cluster.connect_timeout_s,
                set_as_default=True,  # xgboost.dask looks for the default client
            )
        except (OSError, TimeoutError) as exc:
            log.warning(
                "cluster_unreachable", extra={"scheduler": cluster.scheduler, "error": str(exc)[:200]}
            )
            raise Refusal("cluster_unavailable", "the training cluster could not be reached") from None
        try:
            return self._run(client)
        finally:
            client.close(timeout=5)

    def _run(self, client: Client) -> TrainReport | None:
        canonical = self.job.plan
        plan = canonical.plan((self.folder / canonical.base).read_bytes() if canonical.base else None)
        self.channel.stage("staging")
        patience = self.job.cluster.collective_timeout_s + LOSS_NOTICE_S
        try:
            usable = sorted(stuck.usable_workers(client, patience))
        except stuck.StuckInUse:
            raise Refusal("cluster_busy", STUCK_IN_USE) from None
        # Every task this job sends, the training thread's included, may run on the usable workers only.
        with dask.annotate(workers=usable, allow_other_workers=False):
            return self._train(client, plan, usable)

    def _train(self, client: Client, plan: Plan, usable: list[str]) -> TrainReport | None:
        task = self.task
        assert task.staging is not None
        parts = DaskPartitions(
            DaskHandle(
                client=client,
                futures=_staged(client, self._stage(client, task.staging.dataset_path, usable), usable),
                name=self.folder.name,
                tracker_host=urlsplit(self.job.cluster.scheduler).hostname,
                collective_timeout_s=self.job.cluster.collective_timeout_s,
                start_timeout_s=self.job.cluster.start_timeout_s,
            )
        )
        at_start = set(usable)
        checked = [time.monotonic()]

        def check() -> None:
            """Stop on the parent's cancel; end the job when a worker it may use is gone."""
            if self.stopping.is_set():
                raise SystemExit(0)
            if time.monotonic() - checked[0] >= WORKERS_EVERY_S:
                checked[0] = time.monotonic()
                if not at_start <= _workers(client):
                    raise Refusal("cluster_worker_lost", LOST_WORKER)

        try:
            return model_job.run(task, plan, family(plan.family), parts, self.channel, self.folder, check)
        except (Refusal, SystemExit, KilledWorker):
            raise
        except Exception:
            # A peer that left makes the others' collective fail, maybe before the scheduler says so.
            deadline = time.monotonic() + LOSS_NOTICE_S
            while time.monotonic() < deadline:
                if not at_start <= _workers(client):
                    raise Refusal("cluster_worker_lost", LOST_WORKER) from None
                time.sleep(POLL_S)
            raise

    def _stage(self, client: Client, path: str, usable: list[str]) -> list[Future]:
        """Stage the snapshot on the cluster in contiguous runs of rows, one per partition (by default
        one per usable worker), each on a usable worker: the scheduler puts it on the least busy one,
        so they spread over the workers (a worker that is gone or paused by then gets none). A worker
        an earlier job's let-go task holds (stuck.py) gets none."""
        rows_total = pq.read_metadata(path).num_rows
        count = max(1, min(self.job.cluster.partitions or len(usable), rows_total))
        bounds = np.linspace(0, rows_total, count + 1).astype(int)
        staging = self.task.staging
        assert staging is not None
        return [
            client.submit(
                partitions.stage,
                path,
                int(start),
                int(stop),
                staging.partition_query,
                staging.params,
                staging.columns,
                staging.label,
                staging.partition_missing_label_query,
                staging.label_levels,
                workers=usable,
                allow_other_workers=False,
                pure=False,
            )
            for start, stop in zip(bounds, bounds[1:])
        ]


def _workers(client: Client) -> set[str]:
    return set(workers_of(client))


def _staged(client: Client, futures: list[Future], usable: list[str]) -> list[Future]:
    """Wait for the staging; end the job if every worker it may use has gone (its tasks may run on no
    other, so they would wait for ever)."""
    while True:
        try:
            wait(futures, timeout=WORKERS_EVERY_S)
            return futures
        except TimeoutError:
            if not set(usable) & _workers(client):
                client.cancel(futures)
                raise Refusal("cluster_worker_lost", LOST_WORKER) from None


def run(job_dir: str, conn: Connection) -> None:
    """Entry point of a driver process (started like a worker, from the forkserver)."""
    serve(job_dir, conn, _drive)


def _drive(folder: Path, channel: Channel) -> None:
    job = DriverTask.model_validate_json((folder / "driver.json").read_text())
    driver = Driver(job, folder, channel)
    signal.signal(signal.SIGTERM, lambda *_: driver.stopping.set())
    try:
        report = driver.run()
    except KilledWorker:
        log.warning("cluster job %s lost a worker", folder.name)
        raise Refusal("cluster_worker_lost", LOST_WORKER) from None
    except (OSError, TimeoutError):
        log.exception("cluster job %s lost the cluster", folder.name)
        raise Refusal("cluster_unavailable", "the training cluster stopped answering") from None
    except SystemExit:
        return  # cancelled: the parent is not listening
    if report is not None:
        channel.send(report)
