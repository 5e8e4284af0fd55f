"""The family seam is real: a second family, written against `Partitions` only (tests/leaf_family.py),
runs the model job (runner/model_job.py) on rows held here, as one partition and as several, and on a
LocalCluster's partitions, through the same code, and reports the same numbers.

The parent's end of the worker protocol is a thread on a real pipe: it validates every message as the
server does and answers the admission."""

from __future__ import annotations

import threading
from multiprocessing import Pipe
from multiprocessing.connection import Connection
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from distributed import Client, Future
from pydantic import BaseModel

from remote_magic.contract import rows as rows_
from remote_magic.families.base import Batches, Part, Plan, Split
from remote_magic.families.partitions import InProcess
from remote_magic_server.cluster import partitions
from remote_magic_server.demo import synthetic_table
from remote_magic_server.protocol import Admission, Decision, Staging, TrainReport, read_message
from remote_magic_server.runner import model_job
from remote_magic_server.runner.channel import Channel
from remote_magic_server.worker import staging
from tests.leaf_family import FAMILY
from tests.test_streaming import task_for

ROUNDS = 6


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    frame = synthetic_table(3000, 11)
    path = tmp_path_factory.mktemp("seam") / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def job(path: Path, staging_mb: int = 0):
    task = task_for(
        path, {"dataset": "d", "label": "label", "eval": {"fraction": 0.25, "seed": 2}}, staging_mb
    )
    task = task.model_copy(update={"model_facts": True, "structure": True})
    return task, Plan(family=FAMILY.name, params={}, rounds=ROUNDS, task="classification")


class Proceeding:
    """The parent's end of the pipe: reads every message as the server does (kept in `seen`) and lets
    the job proceed at admission; a subclass answers more (`answer`)."""

    def __init__(self) -> None:
        self.seen: list = []

    def answer(self, message: BaseModel) -> BaseModel | None:
        return Decision(proceed=True) if isinstance(message, Admission) else None

    def serve(self, conn: Connection) -> None:
        while True:
            try:
                message = read_message(conn.recv_bytes())
            except EOFError:
                return
            self.seen.append(message)
            reply = self.answer(message)
            if reply is not None:
                conn.send_bytes(reply.model_dump_json().encode())


def run_with(task, plan, family, parts, folder: Path, parent: Proceeding) -> TrainReport:
    """The model job on these partitions, with `parent` on the other end of a pipe."""
    ours, theirs = Pipe(duplex=True)
    listener = threading.Thread(target=parent.serve, args=(ours,), daemon=True)
    listener.start()
    folder.mkdir(exist_ok=True)
    report = model_job.run(task, plan, family, parts, Channel(theirs), folder)
    theirs.close()
    listener.join(10)
    assert report is not None
    return report


def run_job(task, plan, parts, folder: Path, family=FAMILY) -> tuple[TrainReport, list]:
    """The model job (of the leaf family unless told), with a parent that only lets it proceed; the
    report and the messages the parent read."""
    parent = Proceeding()
    return run_with(task, plan, family, parts, folder, parent), parent.seen


def stage_halves(client: Client, dataset: Path, s: Staging | None) -> list[Future]:
    """The file's two halves of rows, each staged on the cluster as a partition (its future)."""
    assert s is not None
    rows = pq.read_metadata(dataset).num_rows
    return [
        client.submit(
            partitions.stage,
            str(dataset),
            a,
            b,
            s.partition_query,
            s.params,
            s.columns,
            s.label,
            pure=False,
        )
        for a, b in ((0, rows // 2), (rows // 2, rows))
    ]


def halves(part: Part) -> list[Part]:
    """One staged partition as two (its rows in two runs), each with its share of the level counts."""
    out = []
    for name in ("first", "second"):
        splits, numbers = [], []
        for split, rows in ((part.train, part.train_rows), (part.eval, part.eval_rows)):
            table, half = split.x.table(), len(split.y) // 2
            keep = slice(0, half) if name == "first" else slice(half, len(split.y))
            chunk = table.slice(keep.start, keep.stop - keep.start)
            splits.append(Split(x=Batches.of(chunk), y=split.y[keep]))
            numbers.append(rows[keep])
        levels: dict = {}
        for split in splits:
            rows_.count_levels(levels, split.x.table())
        out.append(Part(splits[0], splits[1], numbers[0], numbers[1], levels))
    return out


def test_a_second_family_reports_alike_on_one_partition_and_on_two(dataset, tmp_path):
    task, plan = job(dataset)
    one, messages = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "one")
    two, _ = run_job(task, plan, InProcess(halves(staging.stage(task, tmp_path))), tmp_path / "two")
    progress = [m.round for m in messages if getattr(m, "stage", "") == "training"]
    assert progress[-1] == ROUNDS and one.rounds.total == ROUNDS
    admitted = next(m for m in messages if isinstance(m, Admission))
    assert one.model is not None and one.model.min_leaf_rows == admitted.counts["train"].rows  # one leaf
    assert_alike(one, two)


@pytest.mark.dask
def test_a_second_family_trains_on_a_local_cluster_through_the_same_code(dataset, tmp_path, dask_cluster):
    task, plan = job(dataset)
    here, _ = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "here")
    with Client(dask_cluster) as client:
        futures = stage_halves(client, dataset, task.staging)
        handle = partitions.DaskHandle(client, futures, "seam", None, 60, 600.0)
        there, _ = run_job(task, plan, partitions.DaskPartitions(handle), tmp_path / "there")
    assert_alike(here, there)


def assert_alike(a: TrainReport, b: TrainReport) -> None:
    """The same job's reports, from one partition and from several: counts and sums agree; the AUC of
    several partitions is ranked by bins of probability (a constant model ties every row)."""
    assert a.rounds == b.rounds and a.task == b.task == "binary"
    assert a.model == b.model and a.structure == b.structure
    assert a.stats.n == b.stats.n and a.stats.correct == b.stats.correct
    assert a.stats.loss_sum == pytest.approx(b.stats.loss_sum)
    for name, value in a.metrics.items():
        assert b.metrics[name] == pytest.approx(value, abs=1e-9), name
    assert np.array_equal(a.confusion.counts, b.confusion.counts)
