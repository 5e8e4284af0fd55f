"""Rows per second into a dataset snapshot, against reading the same rows plainly, in the same run.

PostgreSQL (a real server: Debian's binaries, initdb into a temporary folder, on loopback): a refresh of
a table source (ADBC binary COPY -> Arrow -> Parquet, checks, fsync, hash) against `psql` running
`COPY (SELECT * FROM t ORDER BY id) TO STDOUT (FORMAT binary)` into /dev/null. Parquet: a refresh of a
folder of Parquet files (read, rewrite, checks, hash) and of one file (a byte copy plus checks) against
DuckDB reading the same rows into Arrow (and, for the folder, DuckDB rewriting them as one Parquet file,
the same work without the checks). The ratio is snapshot time over baseline time.

    python benchmarks/snapshot.py [--rows 1000000] [--reps 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from remote_magic_server.config.settings import load_settings
from remote_magic_server.data.lifecycle import refresh
from tests.pgserver import OWNER, PostgresServer


def make_table(rows: int) -> pa.Table:
    rng = np.random.default_rng(0)
    columns = {"id": pa.array(np.arange(rows), pa.int64())}
    for i in range(6):
        columns[f"f{i}"] = pa.array(rng.normal(size=rows))
    columns["region"] = pa.array(rng.choice(["north", "south", "east", "west"], rows))
    columns["visits"] = pa.array(rng.poisson(3, rows).astype(np.int32))
    columns["label"] = pa.array(rng.integers(0, 2, rows).astype(np.int32))
    return pa.table(columns)


def timed(fn: Callable[[], object], reps: int) -> float:
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def report(name: str, rows: int, snapshot_s: float, baseline: str, baseline_s: float) -> None:
    print(
        f"{name:<28} snapshot {rows / snapshot_s:>12,.0f} rows/s   {baseline:<26} "
        f"{rows / baseline_s:>12,.0f} rows/s   ratio {snapshot_s / baseline_s:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    table = make_table(args.rows)
    pg = PostgresServer().start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            base = Path(tmp)
            pg.load("bench", table)
            os.environ["BENCH_PGPASSWORD"] = pg.password
            pq.write_table(table, base / "one.parquet")
            (base / "folder").mkdir()
            quarter = max(1, args.rows // 4)
            for part, start in enumerate(range(0, args.rows, quarter)):
                pq.write_table(table.slice(start, quarter), base / "folder" / f"part-{part}.parquet")
            (base / "server.toml").write_text(
                '[server]\ndata_dir = "data"\n\n'
                f'[datasets.pg]\nsource = {{ kind = "postgres", port = {pg.port}, user = "{OWNER}", '
                'password_env = "BENCH_PGPASSWORD", table = "bench" }\n'
                'id_column = "id"\nlabel_columns = ["label"]\n\n'
                '[datasets.folder]\nsource = { kind = "parquet", path = "folder" }\n'
                'id_column = "id"\nlabel_columns = ["label"]\n\n'
                '[datasets.one]\npath = "one.parquet"\nid_column = "id"\nlabel_columns = ["label"]\n'
            )
            settings = load_settings(base / "server.toml")
            psql = [
                "psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(pg.port), "-U", OWNER, "-d", "postgres",
                "-c", "COPY (SELECT * FROM bench ORDER BY id) TO STDOUT (FORMAT binary)",
            ]  # fmt: skip
            env = {**os.environ, "PGPASSWORD": pg.password}

            def copy_out() -> None:
                subprocess.run(psql, env=env, check=True, stdout=subprocess.DEVNULL)

            def duck(pattern: str) -> Callable[[], object]:
                return lambda: duckdb.sql(f"SELECT * FROM read_parquet('{pattern}')").to_arrow_table()

            print(f"{args.rows:,} rows x {table.num_columns} columns, median of {args.reps}")
            refresh(settings, "pg")  # warm the server's cache, as the baseline gets it warm too
            report(
                "postgres table", args.rows, timed(lambda: refresh(settings, "pg"), args.reps),
                "psql COPY ... TO binary", timed(copy_out, args.reps),
            )  # fmt: skip
            report(
                "parquet folder (4 files)", args.rows, timed(lambda: refresh(settings, "folder"), args.reps),
                "duckdb read to arrow", timed(duck(f"{base}/folder/*.parquet"), args.reps),
            )  # fmt: skip
            copy_to = f"COPY (SELECT * FROM read_parquet('{base}/folder/*.parquet')) TO '{base}/duck.parquet'"
            report(
                "parquet folder (4 files)", args.rows, timed(lambda: refresh(settings, "folder"), args.reps),
                "duckdb COPY to parquet", timed(lambda: duckdb.sql(copy_to), args.reps),
            )  # fmt: skip
            report(
                "parquet file (byte copy)", args.rows, timed(lambda: refresh(settings, "one"), args.reps),
                "duckdb read to arrow", timed(duck(f"{base}/one.parquet"), args.reps),
            )  # fmt: skip
    finally:
        pg.close()


if __name__ == "__main__":
    main()
