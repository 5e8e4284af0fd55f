"""XGBoost's training on a Dask cluster: `xgboost.dask` over the job's partitions, where they are.

Imported only when the partitions are a cluster's (the confined worker never loads Dask). Each partition
turns its rows into the DataFrame XGBoost reads (text as categoricals with the job's fixed category
lists) and keeps it in its state; `xgboost.dask.train` reads them where they are. Training runs on a
thread of the driver while this one forwards the progress the first training worker publishes
(`ClusterProgress`) and asks the job whether to go on (`Run.check`); when it must stop, every training
worker is told to, and they stop together after their current round.
"""

from __future__ import annotations

import threading
import time

import dask
import dask.dataframe as dd
import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb
from distributed import Variable
from xgboost import dask as dxgb

from ..base import Part, Partitions, Plan, Run
from .inputs import model_input

POLL_S = 0.2
STOP_GRACE_S = 10.0
PROGRESS_EVERY_S = 0.2
FRAMES = "xgboost_frames"  # a partition's state: its splits as DataFrames, with their labels


def frames(part: Part, categories: dict[str, list[str]]) -> dict:
    """Keep the partition's splits as XGBoost reads them on a cluster; their sizes back."""
    dictionaries = {column: pa.array(values, pa.string()) for column, values in categories.items()}
    kept = {}
    for name in ("train", "eval"):
        table = pa.Table.from_batches(list(part.split(name).x), schema=part.split(name).x.schema)
        batch = pa.RecordBatch.from_arrays(
            [c.combine_chunks() for c in table.columns], names=table.column_names
        )
        kept[name] = (model_input(batch, dictionaries).to_pandas(), part.y(name))
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
    workers = parts.dask.client.scheduler_info(n_workers=-1)["workers"].values()
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
    for split in ("train", "eval"):
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
    names = {
        "progress": f"remote-magic-progress-{handle.name}",
        "cancel": f"remote-magic-cancel-{handle.name}",
    }
    Variable(names["progress"], client=client).set(None)
    Variable(names["cancel"], client=client).set(False)
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
                callbacks=[ClusterProgress(names["progress"], names["cancel"], plan.base_rounds)],
                coll_cfg=xgb.collective.Config(
                    timeout=handle.collective_timeout_s, tracker_host_ip=handle.tracker_host
                ),
            )
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=train, name="cluster-train", daemon=True)
    worker.start()
    _follow(client, worker, names, run)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["out"]["booster"], outcome["out"]["history"], threads


def _follow(client: object, worker: threading.Thread, names: dict[str, str], run: Run) -> None:
    """Forward progress while the cluster trains; when the job must stop, stop the training workers."""
    progress = Variable(names["progress"], client=client)
    last_seen = None
    while worker.is_alive():
        worker.join(POLL_S)
        try:
            run.check()
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

    def __init__(self, progress: str, cancel: str, base_rounds: int):
        super().__init__()
        self.progress = progress
        self.cancel = cancel
        self.base_rounds = base_rounds
        self.last = 0.0
        self.stop = 0.0

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
