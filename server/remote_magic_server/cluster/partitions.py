"""A job's partitions on a Dask cluster: staged on the cluster's machines, called where they are.

The job driver (driver.py) stages the snapshot in contiguous runs of rows, one per partition, each on a
cluster worker (`stage`: the server-built partition query in a DuckDB that can read nothing but those
rows); the `Part` stays in that worker's memory, held by its future. `DaskPartitions.map` sends a
function to the worker that holds each partition (the same `Part` object every time, so the state a
family keeps there lasts) and gathers what comes back, which must be an aggregate: a small dict of
counts, sums and bitmaps, never rows. The functions are server and family code, called by reference
(the cluster has remote-magic installed); none of them ever receives submitted bytes.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from distributed import Client, Future, wait

from remote_magic.contract import rows
from remote_magic.contract.codes import Refusal
from remote_magic.contract.query import EVAL_FLAG, ROW_ID
from remote_magic.families.base import Batches, Part, Split, declared_labels

from ..protocol import PARTITION_TABLE

MAX_GATHER_BYTES = 64 * 2**20
HOLDER_CHECK_S = 1.0
LOST_WORKER = "a machine of the training cluster was lost; the job was stopped"


def stage(
    path: str,
    start: int,
    stop: int,
    query: str,
    params: list,
    columns: list[str],
    label: str,
    missing_query: str = "",
    label_levels: list[str] | None = None,
) -> Part:
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
        missing = int(con.sql(missing_query).fetchall()[0][0]) if missing_query else None
    finally:
        con.close()
    features = rows.clean(admitted, columns)
    levels: dict[str, Counter] = {}
    rows.count_levels(levels, features)
    labels = declared_labels(admitted.column(label), label_levels)
    is_eval = admitted.column(EVAL_FLAG).fill_null(False).to_numpy(zero_copy_only=False).astype(bool)
    row_ids = admitted.column(ROW_ID).to_numpy().astype(np.uint32)
    splits = [
        Split(x=Batches.of(features.filter(pa.array(keep))), y=labels[keep]) for keep in (~is_eval, is_eval)
    ]
    return Part(splits[0], splits[1], row_ids[~is_eval], row_ids[is_eval], levels, missing_label=missing)


def workers_of(client: Client) -> dict[str, dict]:
    """The scheduler's workers now, by address. Not `Client.scheduler_info()`: it returns the client's
    cache, which the client's own periodic refresh (of totals only) may overwrite with no workers between
    the fetch and the read; a busy machine then read as every worker lost."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


@dataclass
class DaskHandle:
    """What a family with its own distributed training needs of the cluster (families/xgboost/on_dask.py)."""

    client: Client
    futures: list[Future]
    name: str  # the job's, for the names of what its training shares on the cluster
    tracker_host: str | None
    collective_timeout_s: int
    start_timeout_s: float  # how long its training workers may take to begin together

    def workers(self) -> dict[str, dict]:
        return workers_of(self.client)


class DaskPartitions:
    """A job's partitions, each held by the cluster worker that staged it."""

    def __init__(self, dask: DaskHandle):
        """Wait for the partitions to be staged (raising here what staging raised), and note where each
        is: every call on a partition runs on that machine, and on no other."""
        self.dask = dask
        wait(dask.futures)
        for future in dask.futures:
            if future.status == "error":
                future.result()
        holders = dask.client.who_has(dask.futures)
        self.holders = [list(holders[future.key]) for future in dask.futures]

    def __len__(self) -> int:
        return len(self.dask.futures)

    def map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        client = self.dask.client
        calls = [
            client.submit(_call, future, fn, *args, workers=holder, allow_other_workers=False, pure=False)
            for future, holder in zip(self.dask.futures, self.holders)
        ]
        while True:
            try:
                wait(calls, timeout=HOLDER_CHECK_S)
                return gather(client, calls)
            except TimeoutError:
                # A partition's state lives only where its rows are: a lost holder cannot be replaced.
                alive = set(workers_of(client))
                if not all(set(holder) & alive for holder in self.holders):
                    client.cancel(calls)
                    raise Refusal("cluster_worker_lost", LOST_WORKER) from None


def _call(part: Part, fn: Callable[..., Any], *args: Any) -> Any:
    return fn(part, *args)


def gather(client: Client, futures: list[Future]) -> list[dict]:
    """Results of server and family functions that return aggregates: dicts of counts, sums and bitmaps,
    never rows. Anything else is refused before it is used."""
    results = client.gather(futures)
    for result in results:
        if not isinstance(result, dict):
            raise TypeError(f"a cluster task returned {type(result).__name__}, not an aggregate")
        if sys.getsizeof(result) > MAX_GATHER_BYTES:
            raise TypeError("a cluster task returned more than an aggregate")
    return results
