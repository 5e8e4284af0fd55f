"""Materialise a source into one immutable, content-hashed Parquet file, or into nothing at all.

The rows go to a temporary name in the dataset's folder, are fsynced, checked against the dataset's
declared roles (id column present, unique and never missing; every label column present), and only then
renamed to `<sha256>.parquet` and the folder fsynced. A crash at any point leaves either no new file or a
complete one that no version lists yet (the next refresh sweeps both), never half a version.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from remote_magic.contract.wire import near_column

from .total import Repairs, drop_bad_ids

if TYPE_CHECKING:
    from .source import Source

TMP_PREFIX = ".tmp-"
HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class Snapshot:
    file: Path
    content_hash: str
    rows: int
    columns: list[tuple[str, str]]
    inferred: list[str]
    repairs: Repairs = field(default_factory=Repairs)
    note: str = ""  # what the staging changed or left out (`Source.staging_note`), for the owner

    @property
    def schema_hash(self) -> str:
        return schema_hash(self.columns)


def schema_hash(columns: list[tuple[str, str]]) -> str:
    """SHA-256 of the column names and types, in order: equal exactly when the schemas are."""
    return hashlib.sha256(json.dumps([list(c) for c in columns]).encode()).hexdigest()


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def missing_roles(names: list[str], id_column: str | None, labels: list[str]) -> list[str]:
    """The id column (None: not checked) and labels that are not among `names`, each with the near name
    and the key to fix: the same words from a refresh, the doctor's trial and a database source."""
    problems = [
        f"label {c!r} is not a column{near_column(c, names)}: fix label_columns"
        for c in labels
        if c not in names
    ]
    if id_column is not None and id_column not in names:
        near = near_column(id_column, names)
        problems.insert(0, f"the id column {id_column!r} is not a column{near}: fix id_column")
    return problems


def _check_roles(source: Source, path: Path, names: list[str], id_column: str, labels: list[str]) -> None:
    problems = missing_roles(names, id_column, labels)
    if problems:
        raise source.fail("invalid_snapshot", "; ".join(problems))
    ids = pq.read_table(path, columns=[id_column]).column(0)
    if ids.null_count:
        raise source.fail("invalid_snapshot", f"the id column {id_column!r} has missing values")
    if pc.count_distinct(ids).as_py() != len(ids):
        raise source.fail("invalid_snapshot", f"the id column {id_column!r} is not unique")


def take_snapshot(
    source: Source, folder: Path, id_column: str, labels: list[str], declared_only: bool = False
) -> Snapshot:
    """Stage the source's rows into `folder`; return the complete, checked, content-named snapshot.

    With `declared_only` (the noisy modes) a column whose type the source inferred fails the snapshot:
    an inferred type comes from the rows' values (a column of integers but one row's 2.5 reads as
    double), and the catalog shows every column's type for free. There staging is also total (see
    `total`): no row's value fails it, and rows with a missing or repeated id are dropped, not refused."""
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
    tmp.touch(exist_ok=False)  # on disk from the start: a crash at any point leaves it for the sweep
    source.total = declared_only
    try:
        inferred = source.stage(tmp)
        if declared_only and inferred:
            raise source.fail(
                "invalid_snapshot",
                "in modes dp and dp_eval_only every column needs a declared type (an inferred one would "
                "come from the rows, and the catalog shows it): add these to the source's `columns`: "
                + ", ".join(inferred),
            )
        _fsync(tmp)
        try:
            meta = pq.read_metadata(tmp)
        except pa.ArrowInvalid:
            raise source.fail("invalid_snapshot", "the file is not Parquet") from None
        schema = meta.schema.to_arrow_schema()
        if declared_only and id_column in schema.names:
            source.repairs.dropped_ids += drop_bad_ids(tmp, id_column)
            _fsync(tmp)
            meta = pq.read_metadata(tmp)
        _check_roles(source, tmp, schema.names, id_column, labels)
        content_hash = _file_hash(tmp)
        final = folder / f"{content_hash}.parquet"
        if final.exists():
            tmp.unlink()
        else:
            os.chmod(tmp, 0o444)
            os.replace(tmp, final)
            _fsync(folder)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Snapshot(
        file=final,
        content_hash=content_hash,
        rows=meta.num_rows,
        columns=[(f.name, str(f.type)) for f in schema],
        inferred=inferred,
        repairs=source.repairs,
        note=source.staging_note(),
    )
