"""Stage the admitted rows of a dataset with a locked-down DuckDB, streamed as Arrow record batches.

DuckDB may read exactly one file, the dataset's, and nothing else; its configuration (threads, memory,
a spill folder in the job folder) is locked before the query runs. The query is the server-built
staging plan (`Staging.query`, from `remote_magic.query`, the same builder the dry run uses), never
user text. Rows stream out of DuckDB batch by batch and are split into training and evaluation rows as
they pass (rows whose label is missing are counted and dropped in the same pass, as the query marks
them): the row numbers, the labels and the rows per text level are kept for admission; the feature
columns stay Arrow batches (non-finite values missing, as `remote_magic.rows` says, like the dry run),
held in memory up to the staging budget and spilled past it to Arrow files in the job folder, from where
an external-memory matrix reads them. Rare text levels are merged as the batches are read, once every
row has been counted. There is never a pandas copy of the whole table.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from remote_magic.contract import rows
from remote_magic.contract.codes import Refusal
from remote_magic.contract.query import EVAL_FLAG, MISSING_FLAG, ROW_ID
from remote_magic.families.base import Batches, Part, Split, declared_labels

from ..protocol import SCRATCH_DIR, Task

log = logging.getLogger("remote_magic_server.worker")

BATCH_ROWS = 65_536
DUCKDB_MIN_MB = 128  # DuckDB's own memory: a quarter of the worker's, and never less than this
SPILL_FILE_BYTES = 256 * 2**20  # a spill file is closed at this size (the worker's file-size limit)
# A table of at most this many cells (rows x staged columns, from the footer: not the admitted rows) keeps
# its DuckDB open until the worker exits (which frees it at no cost): closing one takes about 2.7 ms of a
# small job's CPU, and what it holds after staging is small (6 MB after 10,000 rows x 20 columns). A
# larger table's is closed once staged, so that training gets its memory (210 MB at 10^6 rows x 20).
KEEP_OPEN_CELLS = 2_000_000
# One thread (the caller's) and no asynchronous I/O pool: a worker reads one local file, which its query
# threads read as fast; DuckDB's async pool (for object storage) would start 8 threads with every
# connection, and a warm worker's threads must all be started after it confined itself.
_NO_THREADS = {"threads": 1, "async_threads": 0}


def open_ahead() -> duckdb.DuckDBPyConnection:
    """A DuckDB opened before a warm worker has a job: in memory, nothing read yet, and no thread of its
    own (confinement applies per thread, so the worker must still be one thread when it confines
    itself). Opening one costs more than reading a small job's rows; `connect` configures and locks it
    once the job is known, confined, before the job's payload is read."""
    con = duckdb.connect(":memory:", config=_NO_THREADS)
    con.execute("SELECT 1").fetchall()  # the first statement of a connection pays for its set-up
    return con


# Made-up rows of a staging query's shape (a number, a text column, a label, the query's flag columns),
# from DuckDB's `range`: nothing of any dataset's, and no file read.
_REHEARSAL_QUERY = (
    "SELECT (range / 7)::DOUBLE AS x, 'level' || (range % 3)::VARCHAR AS t, (range % 2)::BIGINT AS label, "
    f'(HASH(range, 0) % 10) < 3 AS "{EVAL_FLAG}", range AS "{ROW_ID}", range = 0 AS "{MISSING_FLAG}" '
    "FROM range(64) WHERE COALESCE(TRY(x > -3), FALSE)"
)


def rehearse(con: duckdb.DuckDBPyConnection) -> Part:
    """Stage made-up rows on `con` (from `open_ahead`) as a job's rows are staged, in this thread only
    (DuckDB has no thread of its own, Arrow's kernels here are single-threaded), and return them, for a
    warm worker to rehearse what a job does next with them. A fresh process's first staging costs about
    7 ms of CPU more than a later one (its first query into Arrow, its first Arrow filters, the pages
    inherited from the forkserver it writes to for the first time); a rehearsed worker's job stages as
    a later one does."""
    reader = con.sql(_REHEARSAL_QUERY).to_arrow_reader(BATCH_ROWS)
    return _stage_rows(reader, ["x", "t"], "label", Path(SCRATCH_DIR), staging_mb=0, rare_level_rows=2)[0]


def connect_locked(
    path: str,
    threads: int = 1,
    memory_mb: int = 0,
    spill: str | None = None,
    ahead: duckdb.DuckDBPyConnection | None = None,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB that can read `path` and nothing else, with its configuration locked: at most
    `threads` threads and `memory_mb` of memory (0: DuckDB's default), spilling a large sort to `spill`.
    `ahead` (from `open_ahead`) is configured instead of opening a new one."""
    if ahead is None:
        con = duckdb.connect(":memory:", config={**_NO_THREADS, "threads": threads})
    else:
        con = ahead
        con.execute(f"SET threads = {int(threads)}")  # an int written in, as memory_limit: 0.08 ms, not 0.4
    con.execute("SET allowed_paths = ?", [[path]])
    if memory_mb:
        con.execute(f"SET memory_limit = '{int(memory_mb)}MB'")
    if spill is not None:
        con.execute("SET temp_directory = ?", [spill])
    con.execute("SET enable_external_access = false")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


@dataclass
class _Part:
    """One split's rows as they stream past: feature batches, labels, row numbers, rows per text level."""

    name: str
    columns: list[str]
    chunks: list[pa.RecordBatch | Path] = field(default_factory=list)
    labels: list[pa.Array] = field(default_factory=list)
    row_ids: list[np.ndarray] = field(default_factory=list)
    levels: dict[str, Counter] = field(default_factory=dict)
    folder: Path | None = None
    _sink: pa.OSFile | None = None
    _writer: pa.ipc.RecordBatchStreamWriter | None = None

    def add(self, part: pa.RecordBatch, label: str) -> int:
        """Keep a batch of this split; return how many bytes of feature data it added in memory."""
        features = rows.clean(part, self.columns)
        self.row_ids.append(part.column(ROW_ID).to_numpy(zero_copy_only=False).astype(np.uint32))
        self.labels.append(part.column(label))
        rows.count_levels(self.levels, features)
        if self.folder is not None:
            self._write(features)
            return 0
        self.chunks.append(features)
        return features.nbytes

    def spill(self, folder: Path) -> None:
        """From now on write this split's feature batches to Arrow files in `folder`, the held ones first."""
        self.folder = folder
        held, self.chunks = self.chunks, []
        for batch in held:
            self._write(batch)  # type: ignore[arg-type]

    def _write(self, batch: pa.RecordBatch) -> None:
        if self._sink is not None and self._sink.tell() >= SPILL_FILE_BYTES:
            self._close()
        if self._writer is None:
            assert self.folder is not None
            path = self.folder / f"{self.name}-{len(self.chunks)}.arrows"
            self.chunks.append(path)
            self._sink = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_stream(self._sink, batch.schema)
        self._writer.write_batch(batch)

    def _close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._sink is not None:
            self._sink.close()
        self._writer, self._sink = None, None

    def split(
        self,
        schema: pa.Schema,
        label: pa.DataType,
        cache: str,
        text: dict,
        rare: dict,
        declared: list[str] | None = None,
    ) -> tuple[Split, np.ndarray]:
        """The split's rows for the model family (labels as the `declared` classes), and their row numbers."""
        self._close()
        spilled = self.folder is not None
        batches = Batches(schema, self.chunks, cache if spilled else None, text, rare)
        row_ids = np.concatenate(self.row_ids) if self.row_ids else np.zeros(0, dtype=np.uint32)
        y = declared_labels(pa.chunked_array(self.labels, type=label), declared)
        return Split(x=batches, y=y), row_ids


def connect(task: Task, folder: Path = Path("."), ahead: duckdb.DuckDBPyConnection | None = None):
    """The task's locked DuckDB (`ahead`, configured now, or a new one), spilling to the job's scratch
    folder. DuckDB reads whole row groups: its memory follows the worker's, not the staging budget (a
    16 MiB budget left it too little for one row group of a wide table)."""
    assert task.staging is not None
    scratch = folder / SCRATCH_DIR
    scratch.mkdir(exist_ok=True)
    duckdb_mb = max(task.limits.memory_mb // 4, DUCKDB_MIN_MB)
    return connect_locked(task.staging.dataset_path, task.limits.threads, duckdb_mb, str(scratch), ahead)


def stage(task: Task, folder: Path = Path("."), con: duckdb.DuckDBPyConnection | None = None) -> Part:
    """Run the task's staging plan and split the admitted rows into training and evaluation rows: one
    partition, which holds every admitted row. `con` is the task's DuckDB if it was connected already;
    it is closed once staged, unless the table is small (`KEEP_OPEN_CELLS`).

    Past `staging_mb` of feature data (0: no limit) both splits spill to Arrow files in the job folder's
    scratch folder, which also holds DuckDB's own spill files and the external-memory matrices' pages.
    Text levels with fewer than `rare_level_rows` admitted rows (both splits) merge into `(rare)`."""
    assert task.staging is not None and task.spec is not None
    staging, derive = task.staging, bool(task.spec.derive)
    try:
        con = con if con is not None else connect(task, folder)
        reader = con.sql(staging.query, params=[*staging.params, staging.dataset_path]).to_arrow_reader(
            BATCH_ROWS
        )
    except duckdb.Error as exc:
        _raise_failure(exc, derive)
    try:
        part, spilled, held = _stage_rows(
            reader,
            staging.columns,
            staging.label,
            folder / SCRATCH_DIR,
            task.limits.staging_mb,
            task.rare_level_rows,
            derive,
            staging.label_levels,
        )
    finally:
        if staging.table_rows is None or staging.table_rows * len(staging.columns) > KEEP_OPEN_CELLS:
            con.close()
    log.info("staged", extra={"spilled_files": spilled, "held_mb": round(held / 2**20, 1)})
    return part


def _stage_rows(
    reader: pa.RecordBatchReader,
    columns: list[str],
    label: str,
    scratch: Path,
    staging_mb: int,
    rare_level_rows: int,
    derive: bool = False,
    declared: list[str] | None = None,
) -> tuple[Part, int, int]:
    """The reader's rows (a staging query's: features, label, flags) as one partition (see `stage`), the
    number of files it spilled and the bytes of feature data it holds in memory past the last spill."""
    parts = {name: _Part(name, columns) for name in ("train", "eval")}
    held = 0
    schema = reader.schema
    missing = 0 if MISSING_FLAG in schema.names else None  # rows the filter admits with no label
    for batch in _batches(reader, derive):
        flagged = batch.column(MISSING_FLAG) if missing is not None else None
        dropped = pc.sum(flagged).as_py() if flagged is not None else 0
        if dropped:
            missing += dropped
            batch = batch.filter(pc.invert(flagged))
        is_eval = batch.column(EVAL_FLAG).fill_null(False)
        for name, keep in (("train", pc.invert(is_eval)), ("eval", is_eval)):
            part = batch.filter(keep)
            if part.num_rows:
                held += parts[name].add(part, label)
        if staging_mb and held > staging_mb * 2**20:
            for part in parts.values():
                part.spill(scratch)
            held = 0
    spilled = sum(1 for part in parts.values() for chunk in part.chunks if isinstance(chunk, Path))
    counts: dict[str, Counter] = {}
    for part in parts.values():
        for name, found in part.levels.items():
            counts.setdefault(name, Counter()).update(found)
    rare = rows.rare_levels(counts, rare_level_rows)
    text = rows.levels(counts, rare)
    features = rows.clean(pa.RecordBatch.from_pylist([], schema=schema), columns).schema
    label_type = schema.field(label).type
    train, train_rows = parts["train"].split(
        features, label_type, str(scratch / "train"), text, rare, declared
    )
    evaluation, eval_rows = parts["eval"].split(
        features, label_type, str(scratch / "eval"), text, rare, declared
    )
    return Part(train, evaluation, train_rows, eval_rows, counts, missing_label=missing), spilled, held


def _batches(reader: pa.RecordBatchReader, spec_has_derive: bool) -> Iterator[pa.RecordBatch]:
    """The reader's batches. DuckDB runs the query as they are read, so its failures arrive here, as
    Arrow errors; they become the staging failures they are."""
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            return
        except (pa.ArrowException, OSError) as exc:
            _raise_failure(exc, spec_has_derive)
        yield batch


def _raise_failure(exc: Exception, spec_has_derive: bool) -> NoReturn:
    """Out of memory, or (with derived columns) a derivation that is undefined for some rows; anything
    else stays what it was (an internal error, in the server log only)."""
    if isinstance(exc, duckdb.OutOfMemoryException) or "out of memory" in str(exc).lower():
        raise MemoryError("staging ran out of memory") from exc
    if not spec_has_derive:
        raise exc
    raise Refusal(
        "staging_failed",
        "the admitted rows could not be staged; a derived column may be undefined for some rows "
        "(for example ln of a non-positive number)",
    ) from exc
