"""What runs on a Dask cluster's workers for a job: server code only, on canonical data.

The job driver (driver.py) calls these functions by reference (the cluster has remote-magic installed)
with the server-built staging plan, fixed category lists and the canonical model; none of them ever
receives submitted bytes. A partition's rows stay on the worker that read them, inside the `Part` its
`stage` future holds; what goes back to the driver is an aggregate: counts, row numbers as roaring
bitmaps (for the differencing guard), per-tree leaf counts, prediction-bin histograms and the sums of
`remote_magic.families.partials`. `ClusterProgress` is the training callback each worker runs.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb
from pyroaring import BitMap

from remote_magic.contract import rows
from remote_magic.contract.query import EVAL_FLAG, ROW_ID
from remote_magic.families import partials, scoring
from remote_magic.families.xgboost.family import add_leaf_counts, model_input

from ..protocol import PARTITION_TABLE

PROGRESS_EVERY_S = 0.2


@dataclass
class Part:
    """One partition's admitted rows, held by the cluster worker that staged them."""

    features: pa.Table
    labels: np.ndarray
    is_eval: np.ndarray
    row_ids: np.ndarray

    def split(self, name: str) -> tuple[pa.Table, np.ndarray]:
        keep = self.is_eval if name == "eval" else ~self.is_eval
        return self.features.filter(pa.array(keep)), self.labels[keep]


def stage(path: str, start: int, stop: int, query: str, params: list, columns: list[str], label: str) -> Part:
    """Read rows start..stop of the snapshot and admit them with the staging plan's partition query, in
    a DuckDB that can read nothing but the registered rows. Row numbers are the file's, as on a single
    machine."""
    source = pq.ParquetFile(path)
    meta, first, wanted, offset = source.metadata, 0, [], 0
    for group in range(meta.num_row_groups):
        rows_in = meta.row_group(group).num_rows
        if first < stop and first + rows_in > start:
            if not wanted:
                offset = first
            wanted.append(group)
        first += rows_in
    table = source.read_row_groups(wanted).slice(start - offset, stop - start)
    numbers = pa.array(np.arange(start, start + table.num_rows, dtype=np.int64))
    table = table.append_column("file_row_number", numbers)
    con = duckdb.connect(":memory:", config={"threads": 1})
    try:
        con.register(PARTITION_TABLE, table)
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        admitted = con.sql(query, params=params).to_arrow_table()
    finally:
        con.close()
    return Part(
        features=rows.clean(admitted, columns),
        labels=admitted.column(label).to_numpy(),
        is_eval=admitted.column(EVAL_FLAG).fill_null(False).to_numpy(zero_copy_only=False).astype(bool),
        row_ids=admitted.column(ROW_ID).to_numpy().astype(np.uint32),
    )


def admission(part: Part, classes: bool) -> dict:
    """The partition's share of the admission: rows (and, for a classifier, rows per class and the
    distinct labels) of each split, rows per text level, and the row numbers as roaring bitmaps."""
    out: dict = {"levels": {}, "splits": {}}
    levels: dict[str, Counter] = {}
    rows.count_levels(levels, part.features)
    out["levels"] = {name: dict(found) for name, found in levels.items()}
    for name in ("train", "eval"):
        keep = part.is_eval if name == "eval" else ~part.is_eval
        y = part.labels[keep]
        split: dict = {"rows": int(keep.sum()), "row_ids": BitMap(part.row_ids[keep]).serialize()}
        if classes:
            values, counts = np.unique(y, return_counts=True)
            split["classes"] = {str(v): int(n) for v, n in zip(values, counts)}
            split["labels"] = values.tolist()
        out["splits"][name] = split
    return out


def frame(
    part: Part, name: str, categories: dict[str, list[str]], rare: dict[str, set[str]], classes: list | None
) -> tuple[pd.DataFrame, np.ndarray]:
    """A split of the partition as XGBoost reads it on a cluster: a DataFrame whose text columns are
    categoricals with the job's fixed category lists, and the labels as numbers (class codes)."""
    table, y = part.split(name)
    table = rows.merge_rare(table, rare)
    batch = pa.RecordBatch.from_arrays([c.combine_chunks() for c in table.columns], names=table.column_names)
    dictionaries = {column: pa.array(values, pa.string()) for column, values in categories.items()}
    x = model_input(batch, dictionaries).to_pandas()
    labels = np.searchsorted(np.array(classes), y) if classes is not None else y.astype(float)
    return x, labels


def features_of(pair: tuple[pd.DataFrame, np.ndarray]) -> pd.DataFrame:
    return pair[0]


def labels_of(pair: tuple[pd.DataFrame, np.ndarray]) -> pd.Series:
    return pd.Series(pair[1])


def empty_frame(pair: tuple[pd.DataFrame, np.ndarray]) -> pd.DataFrame:
    """A frame's columns and types without its rows (what a dask DataFrame needs to know up front)."""
    return pair[0].iloc[:0]


@dataclass
class Asked:
    """What the driver wants counted over a partition, with the trained model."""

    task: str
    n_classes: int
    label_range: tuple | None
    residual_clip: float | None
    base_rounds: int
    total_rounds: int
    train: bool
    checkpoints: list[int]
    spreads: dict[str, float | None]
    structure: bool  # what the model sets apart (mode dp): isolation, base leaves
    leaves: bool  # the new trees' leaf counts (mode dp, or the model-release rules)


def _matrix(x: pd.DataFrame) -> xgb.DMatrix:
    return xgb.DMatrix(x, enable_categorical=True, nthread=1)


def moments(booster: xgb.Booster, frames: list[tuple[pd.DataFrame, np.ndarray]], asked: Asked) -> dict:
    """Sums of a regressor's predictions on the partition's admitted rows (trained model, base model),
    from which the driver learns their spread."""
    out = {}
    for key, rounds in (("trained", 0), ("base", asked.base_rounds)):
        if key == "base" and not rounds:
            continue
        pred = np.concatenate([booster.predict(_matrix(x), iteration_range=(0, rounds)) for x, _ in frames])
        out[key] = partials.moments(pred)
    return out


def scores(
    booster: xgb.Booster,
    train: tuple[pd.DataFrame, np.ndarray],
    evaluation: tuple[pd.DataFrame, np.ndarray],
    asked: Asked,
) -> dict:
    """Every aggregate of the report a partition contributes to: the evaluation rows' partial sums and
    learning-curve loss sums, leaf counts (new trees on training rows, base trees on admitted rows) and
    prediction-bin histograms of the admitted rows (trained and base model)."""
    x_eval, y_eval = evaluation
    eval_matrix = _matrix(x_eval)
    pred = booster.predict(eval_matrix)
    out: dict = {"partial": partials.partial(asked.task, y_eval, pred, asked.n_classes, asked.label_range)}
    out["curve"] = [
        float(
            scoring.row_losses(
                asked.task,
                y_eval,
                booster.predict(eval_matrix, iteration_range=(0, r)),
                asked.n_classes,
                asked.residual_clip,
            ).sum()
        )
        for r in asked.checkpoints
    ]
    admitted = [train, evaluation] if asked.train else [evaluation]
    matrices = [_matrix(x) for x, _ in admitted]
    trained_leaves: list[np.ndarray] = []
    base_leaves: list[np.ndarray] = []
    if asked.train and asked.leaves:
        add_leaf_counts(trained_leaves, booster, matrices[0], asked.base_rounds, asked.total_rounds)
    if asked.base_rounds and asked.structure:
        for matrix in matrices:
            add_leaf_counts(base_leaves, booster, matrix, 0, asked.base_rounds)
    out["trained_leaves"] = [c.tolist() for c in trained_leaves]
    out["base_leaves"] = [c.tolist() for c in base_leaves]
    for key, rounds in (("trained", 0), ("base", asked.base_rounds)):
        if not asked.structure or (key == "base" and not rounds):
            continue
        pred = np.concatenate([booster.predict(m, iteration_range=(0, rounds)) for m in matrices])
        out[f"{key}_isolation"] = dict(
            partials.isolation(asked.task, pred, asked.n_classes, asked.spreads.get(key))
        )
    return out


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
        from distributed import Variable
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
