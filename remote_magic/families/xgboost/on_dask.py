"""XGBoost's training on a Dask cluster: `xgboost.dask` over the job's partitions, where they are.

Imported only when the partitions are a cluster's (the confined worker never loads Dask). Each partition
turns its rows into the DataFrame XGBoost reads (text as categoricals with the job's fixed category
lists) and keeps it in its state; `xgboost.dask.train` reads them where they are. Training runs on a
thread of the driver while this one forwards the progress the first training worker publishes
(`ClusterProgress`) and asks the job whether to go on (`Run.check`); when it must stop, every training
worker is told to, and they stop together after their current round.

Whatever way training ends, nothing of it stays held on the cluster. `xgboost.dask` takes a
`distributed.MultiLock` on its training workers and releases it only when its own coroutine ends; a job
that stops first (a lost worker, a cancel, a start that took too long) would leave it held, or queued,
and every later job waiting on those workers for ever. The lock a job takes is recorded (`JobLock`) and
released on the way out. A job whose training workers have not all begun within the cluster's
`start_timeout_s` ends with `cluster_busy`.

XGBoost trains on the workers its matrices map parts to, wherever Dask computed those parts; a worker
mapped one matrix's part but none of another's fails ("A worker cannot have empty input when a dataframe
with categorical features is used"). The parts are mapped by the partition they came from
(`train_where_rows_are`), so every training worker has rows of every split.
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import threading
import time
from typing import ClassVar

import dask
import dask.dataframe as dd
import distributed
import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb
from distributed import Client, Variable
from xgboost import dask as dxgb

from ...contract.codes import Refusal
from ..base import PROGRESS_EVERY_S, Part, Partitions, Plan, Run
from .inputs import model_input

log = logging.getLogger("remote_magic.families.xgboost.on_dask")

POLL_S = 0.2
STOP_GRACE_S = 10.0
FRAMES = "xgboost_frames"  # a partition's state: its splits as DataFrames, with their labels
SPLITS = ("train", "eval")
NOT_STARTED = "the training cluster did not start the job in time; submit it again later"


class JobLock(distributed.MultiLock):
    """The lock xgboost.dask takes on its training workers, recorded so the driver can release it.

    xgboost.dask offers no way to name, time out or release its lock; it looks `distributed.MultiLock`
    up when it trains, so a driver process (one job) that installs this class learns the lock's id."""

    taken: ClassVar[list[str]] = []

    def __init__(self, names: list[str] | None = None, client: Client | None = None):
        super().__init__(names, client)
        self.taken.append(self.id)


distributed.MultiLock = JobLock  # type: ignore[misc]


def release_locks(ids: list[str], dask_scheduler: distributed.Scheduler) -> int:
    """Run on the scheduler: release (or withdraw from the queue) the job's locks still there."""
    locks = dask_scheduler.extensions["multi_locks"]
    held = [lock for lock in ids if lock in locks.requests]
    for lock in held:
        locks.release(id=lock)
    return len(held)


# A boolean column is pandas' nullable boolean whatever its values: as `object` (where a value is missing)
# XGBoost refused the partition, exactly when a row with a missing value was in it.
NULLABLE = {pa.bool_(): pd.BooleanDtype()}


def frames(part: Part, categories: dict[str, list[str]]) -> dict:
    """Keep the partition's splits as XGBoost reads them on a cluster; their sizes back."""
    dictionaries = {column: pa.array(values, pa.string()) for column, values in categories.items()}
    kept = {}
    for name in ("train", "eval"):
        table = pa.Table.from_batches(list(part.split(name).x), schema=part.split(name).x.schema)
        batch = pa.RecordBatch.from_arrays(
            [c.combine_chunks() for c in table.columns], names=table.column_names
        )
        kept[name] = (model_input(batch, dictionaries).to_pandas(types_mapper=NULLABLE.get), part.y(name))
    part.state[FRAMES] = kept
    return {name: len(y) for name, (_, y) in kept.items()}


def features_of(part: Part, split: str) -> pd.DataFrame:
    return part.state[FRAMES][split][0]


def labels_of(part: Part, split: str) -> pd.Series:
    return pd.Series(part.state[FRAMES][split][1])


def empty_frame(part: Part, split: str) -> pd.DataFrame:
    """A frame's columns and types without its rows (what a dask DataFrame needs to know up front)."""
    return part.state[FRAMES][split][0].iloc[:0]


def threads_on(parts: Partitions, threads: int) -> int:
    """The job's threads, but never more than a cluster worker has."""
    workers = parts.dask.workers().values()
    return max(1, min([threads, *(w["nthreads"] for w in workers)]))


def train_on_dask(
    plan: Plan, parts: Partitions, params: dict, task: str, categories: dict[str, pa.Array], run: Run
) -> tuple[xgb.Booster, dict, int]:
    """The trained booster, its evaluation history, and the threads each training worker used: the
    job's, but never more than a cluster worker has (more OpenMP threads than cores, in step with the
    other workers every round, made a one-thread worker train four times slower)."""
    handle = parts.dask
    client = handle.client
    threads = threads_on(parts, params["nthread"])
    params = {**params, "nthread": threads}
    sizes = parts.map(frames, {name: values.to_pylist() for name, values in categories.items()})
    exact = plan.base is not None  # a base model's splits need exact values, as on one machine
    matrices: dict[str, dxgb.DaskDMatrix] = {}
    for split in SPLITS:
        kept = [f for f, n in zip(handle.futures, sizes) if n[split]]
        x = dd.from_delayed(
            [dask.delayed(features_of)(f, split) for f in kept],
            meta=client.submit(empty_frame, kept[0], split).result(),
        )
        y = dd.from_delayed(
            [dask.delayed(labels_of)(f, split) for f in kept],
            meta=pd.Series(dtype="float64" if task == "regression" else "int64"),
        )
        if exact:
            matrices[split] = dxgb.DaskDMatrix(client, x, y, enable_categorical=True)
        else:
            matrices[split] = dxgb.DaskQuantileDMatrix(
                client, x, y, max_bin=params["max_bin"], ref=matrices.get("train"), enable_categorical=True
            )
    holders = client.who_has(handle.futures)
    train_where_rows_are(matrices, [sorted(holders[f.key])[0] for f in handle.futures], sizes)
    names = {
        "progress": f"remote-magic-progress-{handle.name}",
        "cancel": f"remote-magic-cancel-{handle.name}",
        "started": f"remote-magic-started-{handle.name}",
    }
    Variable(names["progress"], client=client).set(None)
    Variable(names["cancel"], client=client).set(False)
    Variable(names["started"], client=client).set(False)
    outcome: dict = {}

    def train() -> None:
        try:
            outcome["out"] = dxgb.train(
                client,
                params,
                matrices["train"],
                num_boost_round=plan.rounds,
                evals=[(matrices["train"], "train"), (matrices["eval"], "eval")],
                xgb_model=xgb.Booster(model_file=bytearray(plan.base)) if plan.base else None,
                verbose_eval=False,
                callbacks=[ClusterProgress(names, plan.base_rounds)],
                coll_cfg=xgb.collective.Config(
                    timeout=handle.collective_timeout_s, tracker_host_ip=handle.tracker_host
                ),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    # In the caller's context: its Dask annotations (the workers the job may use) hold for training too.
    worker = threading.Thread(
        target=contextvars.copy_context().run, args=(train,), name="cluster-train", daemon=True
    )
    worker.start()
    try:
        _follow(client, worker, names, run, handle.start_timeout_s)
    finally:
        _release(client)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["out"]["booster"], outcome["out"]["history"], threads


def train_where_rows_are(
    matrices: dict[str, dxgb.DaskDMatrix], holders: list[str], sizes: list[dict[str, int]]
) -> None:
    """Map every part of each matrix to a worker that trains on rows of every split.

    The training workers are those holding a partition with rows in every split; a part is mapped to
    the worker holding its partition, or (its holder trains on no other split) to a training worker in
    turn. XGBoost runs each training task on its worker and fetches the parts mapped there."""
    both = {holders[p] for p, size in enumerate(sizes) if all(size[s] for s in SPLITS)}
    training = sorted(both) or [next(holders[p] for p, size in enumerate(sizes) if size["train"])]
    for split, matrix in matrices.items():
        kept = [p for p, size in enumerate(sizes) if size[split]]
        elsewhere = itertools.cycle(training)
        mapped: dict[str, list] = {}
        for future in sorted(
            (f for fs in matrix.worker_map.values() for f in fs), key=lambda f: matrix.partition_order[f.key]
        ):
            holder = holders[kept[matrix.partition_order[future.key]]]
            mapped.setdefault(holder if holder in training else next(elsewhere), []).append(future)
        matrix.worker_map = mapped


def _release(client: Client) -> None:
    """Release the locks this job's training took that are still held (or queued) on the scheduler."""
    if not JobLock.taken:
        return
    try:
        released = client.run_on_scheduler(release_locks, list(JobLock.taken))
    except (OSError, TimeoutError) as exc:
        log.warning("could not release the training locks: %s", str(exc)[:200])
        return
    if released:
        log.warning("released %d training lock(s) the job's training left held", released)


def _follow(
    client: Client, worker: threading.Thread, names: dict[str, str], run: Run, start_timeout_s: float
) -> None:
    """Forward progress while the cluster trains; when the job must stop (or its training workers have
    not all begun within `start_timeout_s`), stop the training workers."""
    progress = Variable(names["progress"], client=client)
    started = Variable(names["started"], client=client)
    began, begun = time.monotonic(), False
    last_seen = None
    while worker.is_alive():
        worker.join(POLL_S)
        try:
            run.check()
            begun = begun or bool(started.get(timeout=5))
            if not begun and time.monotonic() - began > start_timeout_s:
                raise Refusal("cluster_busy", NOT_STARTED)
        except BaseException:
            Variable(names["cancel"], client=client).set(True)
            worker.join(STOP_GRACE_S)
            raise
        now = progress.get(timeout=5)
        if now is not None and now != last_seen:
            last_seen = now
            run.report(int(now["done"]), now["latest"])


class ClusterProgress(xgb.callback.TrainingCallback):
    """Run by every training worker: the first one publishes the round and latest metrics (at most five
    times a second) for the driver, and every round all of them agree (an allreduce) whether the driver
    asked them to stop, so they stop together and no worker waits on a peer that left."""

    def __init__(self, names: dict[str, str], base_rounds: int):
        super().__init__()
        self.progress = names["progress"]
        self.cancel = names["cancel"]
        self.started = names["started"]
        self.base_rounds = base_rounds
        self.last = 0.0
        self.stop = 0.0

    def before_training(self, model: xgb.Booster) -> xgb.Booster:
        """Every training worker got here together (their collective is up): the job has started."""
        from xgboost import collective

        if collective.get_rank() == 0:
            Variable(self.started).set(True)
        return model

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        from xgboost import collective

        now = time.monotonic()
        if collective.get_rank() == 0 and now - self.last >= PROGRESS_EVERY_S:
            self.last = now
            latest = {s: {m: float(v[-1]) for m, v in by.items()} for s, by in evals_log.items()}
            Variable(self.progress).set(
                {"done": model.num_boosted_rounds() - self.base_rounds, "latest": latest}
            )
            self.stop = 1.0 if Variable(self.cancel).get(timeout=5) else 0.0
        agreed = collective.allreduce(np.array([self.stop]), collective.Op.MAX)
        return bool(agreed[0] > 0)
