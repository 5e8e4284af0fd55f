"""A table larger than a worker's memory trains to completion through external memory.

Generates a wide Parquet table (100 float32 features) whose feature data is `--factor` (2) times the
worker's memory (`worker_memory_mb`, the resident memory the server lets a worker hold), and a small one
that fits. Wide, because what XGBoost keeps per row whatever the width (label, gradient, prediction:
about 25 bytes) must fit too: at 20 features a table twice the memory holds more rows than that allows.
Through the server: the big table (its admitted rows spill to the job folder past the staging budget
and train from an `ExtMemQuantileDMatrix` there), then the small table in memory and the small table
forced through external memory (a tiny staging budget), so the external path's cost is seen on rows
that also fit. Each table is served in each privacy mode, as large_job.py does: mode dp (the default:
the DP trainer) and mode rules (XGBoost).
Prints per mode one line per figure: sizes, times, seconds per million rows, the ratios, and that the
metrics of the small table agree between the two paths.

    python benchmarks/big_table.py [--worker-memory-mb 2048] [--factor 2] [--rounds 10] [--modes dp rules]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb

from tests.serverproc import running

FEATURES = 100
CHUNK_ROWS = 200_000
TABLES = ("big", "small", "small_external")


def make_table(path: Path, feature_mb: float, seed: int) -> int:
    """Write a Parquet table with `feature_mb` MiB of float32 features, chunk by chunk; return its rows."""
    rows = int(feature_mb * 2**20 / (4 * FEATURES))
    rng = np.random.default_rng(seed)
    schema = pa.schema(
        [("id", pa.int64())] + [(f"f{i}", pa.float32()) for i in range(FEATURES)] + [("label", pa.int8())]
    )
    with pq.ParquetWriter(path, schema) as writer:
        for start in range(0, rows, CHUNK_ROWS):
            n = min(CHUNK_ROWS, rows - start)
            x = rng.normal(size=(n, FEATURES)).astype(np.float32)
            label = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=n) > 0).astype(np.int8)
            columns = [pa.array(np.arange(start, start + n))] + [pa.array(x[:, i]) for i in range(FEATURES)]
            writer.write_table(pa.Table.from_arrays([*columns, pa.array(label)], schema=schema))
    return rows


def dataset(name: str, path: Path, policy: str, mode: str) -> str:
    head = f'\n[datasets.{name}]\npath = "{path}"\nid_column = "id"\n'
    declared = 'label_columns = ["label"]\ncolumn_levels.label = ["0", "1"]\n'  # the classes (mode dp)
    return head + declared + f'privacy = "{mode}"\npolicy = {policy}\n'


def spilled(log: Path) -> list[int]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["spilled_files"] for line in lines if line.get("event") == "staged"]


def peaks(log: Path) -> list[float]:
    """Each train task's peak resident MiB (the worker's own ru_maxrss), in order."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["peak_rss_mb"] for line in lines if line.get("event") == "task_done"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker-memory-mb", type=int, default=2048)
    parser.add_argument("--factor", type=float, default=2.0, help="big table's features / worker memory")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--modes", nargs="+", default=["dp", "rules"], choices=["dp", "rules"])
    args = parser.parse_args()
    memory = args.worker_memory_mb
    budget = memory // 4
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        started = time.perf_counter()
        big_rows = make_table(base / "big.parquet", args.factor * memory, 1)
        small_rows = make_table(base / "small.parquet", budget / 2, 2)
        print(f"generated {big_rows:,} + {small_rows:,} rows in {time.perf_counter() - started:.0f} s")
        limits = f"{{ worker_memory_mb = {memory}, max_threads = 2 }}"
        tiny = f"{{ worker_memory_mb = {memory}, max_threads = 2, staging_mb = 16 }}"
        files = {"big": "big.parquet", "small": "small.parquet", "small_external": "small.parquet"}
        extra = "".join(
            dataset(f"{t}_{mode}", base / files[t], tiny if t == "small_external" else limits, mode)
            for mode in args.modes
            for t in TABLES
        )
        log = base / "server.log"
        model = xgb.XGBClassifier(n_estimators=args.rounds, max_depth=6)
        spec = {"label": "label", "where": "f3 > -3", "eval": {"fraction": 0.1, "seed": 0}}
        times, results = {}, {}
        names = [f"{table}_{mode}" for mode in args.modes for table in TABLES]
        with running(base / "data", log, {"owner": names}, extra, start_timeout=1800) as server:
            client = server.client("owner")
            for name in names:
                started = time.perf_counter()
                results[name] = client.train(model, {"dataset": name, **spec}, timeout=7200)
                times[name] = time.perf_counter() - started
        paths, peak = spilled(log), peaks(log)
    feature_mb = {"big": big_rows * FEATURES * 4 / 2**20, "small": small_rows * FEATURES * 4 / 2**20}
    print(f"worker memory {memory} MiB (resident), staging budget {budget} MiB, {args.rounds} rounds")
    for i, mode in enumerate(args.modes):
        trainer = "the DP trainer" if mode == "dp" else "XGBoost"
        big, small, external = (f"{table}_{mode}" for table in TABLES)
        print(f"mode {mode} ({trainer}):")
        print(
            f"  big table: {big_rows:,} rows, {feature_mb['big']:.0f} MiB of features "
            f"({feature_mb['big'] / memory:.1f}x the worker's memory), spilled to {paths[3 * i]} file(s): "
            f"{times[big]:.1f} s, {times[big] / big_rows * 1e6:.2f} s per million rows, "
            f"auc {results[big].metrics['auc']:.4f}; worker peak RSS {peak[3 * i]:.0f} MiB "
            f"({peak[3 * i] / memory:.2f}x its memory)"
        )
        per_million = {name: times[name] / small_rows * 1e6 for name in (small, external)}
        print(
            f"  table that fits: {small_rows:,} rows, {feature_mb['small']:.0f} MiB: "
            f"in memory {times[small]:.1f} s ({per_million[small]:.2f} s per million rows), "
            f"through external memory {times[external]:.1f} s "
            f"({per_million[external]:.2f} s per million rows), "
            f"ratio {times[external] / times[small]:.2f}x"
        )
        per_row = times[big] / big_rows / (times[small] / small_rows)
        print(f"  big table per row vs in memory per row: {per_row:.2f}x")
        same = results[small].metrics == results[external].metrics
        print(f"  the table that fits gives the same released metrics on both paths: {same}")


if __name__ == "__main__":
    main()
