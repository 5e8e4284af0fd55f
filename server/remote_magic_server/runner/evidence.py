"""What the trusted parent needs to decide a release, besides the aggregates themselves.

The admitted row sets go to the job folder as serialized roaring bitmaps of file row numbers (the pipe
carries JSON, and a set of millions of rows does not belong in it); the parent reads them for the
differencing guard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pyroaring import BitMap

from ..protocol import Staging


def table_rows(staging: Staging) -> int:
    """Rows in the whole table: as the parent read them from the Parquet footer with the task, else
    from the footer here."""
    if staging.table_rows is not None:
        return staging.table_rows
    return pq.read_metadata(staging.dataset_path).num_rows


def write_row_sets(job_dir: Path, sets: dict[str, np.ndarray]) -> dict[str, str]:
    """Serialize each set next to the job and return the file names, by role."""
    return write_bitmaps(
        job_dir, {role: BitMap(rows.astype(np.uint32, copy=False)) for role, rows in sets.items()}
    )


def write_bitmaps(job_dir: Path, sets: dict[str, BitMap]) -> dict[str, str]:
    """Write row sets that are bitmaps already (a cluster's partitions sent theirs); names by role."""
    names = {}
    for role, bits in sets.items():
        name = f"rows-{role}.roaring"
        (job_dir / name).write_bytes(bits.serialize())
        names[role] = name
    return names
