"""A large job through the server against the same work in one process, in each privacy mode.

1,000,000 rows x 20 float features, 200 rounds, depth 6, 2 threads, a 20% evaluation split. Mode dp
(what a user gets by default: the DP trainer, training rho `dp_rho_train`, no declared column ranges, so
its candidates come from the DP sketch) against the DP trainer run in-process on the same rows
(benchmarks/inprocess.py) with its noise drawn by OpenDP as the server's release desk draws it
(`OpenDPNoise`: the same trainer with the same sampler, the ratio the target is about, <= 1.1x), and
beside it with seeded NumPy noise of the same scale (the price of OpenDP's exact sampler is the
difference). Mode rules against XGBoost in-process: DuckDB reads and filters the Parquet file to Arrow,
a `QuantileDMatrix` (evaluation rows with `ref=`), `xgb.train` with train and eval metrics per round,
predictions and the metrics; target <= 1.05x. Through the server: the same job from a client, submit
to result. Interleaved, in the same run.
The in-process work runs where a job's worker would (small_job's `Floor`): a process of its own at the
worker's CPU priority (`WORKER_NICE` below the benchmark's) with the worker's OpenMP environment
(`WORKER_ENVIRONMENT`), so any other load on the machine slows both sides alike.
Wall time is what the targets are about; on a busy machine it mostly measures who got the cores, so
each run's CPU seconds are printed beside it (in-process: the process's, every thread's; through the
server: the worker's own, from the `task_done` line's `cpu_s`, plus the server process's during the
job), and their ratio, which moves far less under load. It also prints the worker's peak resident memory (from
the server log's `task_done` line: the worker's own `ru_maxrss`, and what it had on starting, inherited
from the forkserver) against the size of the admitted feature data.
Figures, and where a job's time goes: docs/deployment.md, "Large jobs".

    python -m benchmarks.large_job [--rows 1000000] [--rounds 200] [--reps 2] [--modes dp rules]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb

from benchmarks.inprocess import OpenDPNoise, dp_train_and_score, train_and_score
from benchmarks.small_job import Floor
from remote_magic import Client
from remote_magic_server.config.settings import Policy
from remote_magic_server.runner.launch import WORKER_NICE
from tests.serverproc import running

FEATURES, DEPTH, THREADS = 20, 6, 2
# Mode dp's in-process runs, by their noise: OpenDP's (as the server's desk draws it) first, the target's.
FLOORS = {"OpenDP noise": True, "NumPy noise": False}
QUERY = (
    "SELECT * EXCLUDE (id), (hash(id, 0) % 1000000) < 200000 AS is_eval FROM read_parquet(?) WHERE f2 > -2"
)


def make_table(path: Path, rows: int) -> int:
    """A Parquet file of float32 features and a binary label; returns the feature bytes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    label = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] * x[:, 3] + rng.normal(size=rows) > 0).astype(np.int8)
    columns = {"id": pa.array(np.arange(rows))} | {f"f{i}": pa.array(x[:, i]) for i in range(FEATURES)}
    pq.write_table(pa.table(columns | {"label": pa.array(label)}), path, row_group_size=200_000)
    return x.nbytes


def local_once(path: Path, rounds: int, mode: str, opendp: bool = False) -> tuple[float, float]:
    """Wall and CPU seconds of the work in the calling process (mode dp: its noise OpenDP's if `opendp`,
    else seeded NumPy draws)."""
    start, cpu = time.perf_counter(), time.process_time()
    con = duckdb.connect(config={"threads": THREADS})
    table = con.sql(QUERY, params=[str(path)]).to_arrow_table()
    con.close()
    is_eval = table.column("is_eval").to_numpy(zero_copy_only=False)
    x = table.select([f"f{i}" for i in range(FEATURES)])
    y = table.column("label").to_numpy()
    x_train, x_eval = x.filter(pa.array(~is_eval)), x.filter(pa.array(is_eval))
    if mode == "dp":
        rho = Policy.model_fields["dp_rho_train"].default
        noise = OpenDPNoise() if opendp else None
        dp_train_and_score(x_train, y[~is_eval], x_eval, y[is_eval], DEPTH, rounds, THREADS, rho, noise)
        return time.perf_counter() - start, time.process_time() - cpu
    dtrain = xgb.QuantileDMatrix(x_train, label=y[~is_eval], nthread=THREADS)
    deval = xgb.QuantileDMatrix(x_eval, label=y[is_eval], ref=dtrain, nthread=THREADS)
    train_and_score(dtrain, deval, y[is_eval], DEPTH, rounds, THREADS)
    return time.perf_counter() - start, time.process_time() - cpu


def process_cpu(pid: int) -> float:
    """CPU seconds a process (every thread) has used, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def remote_once(client: Client, rounds: int, mode: str, seed: int) -> tuple[float, float]:
    """One job; a new split seed each time, since mode dp answers a repeated request from its store."""
    start = time.perf_counter()
    result = client.train(
        xgb.XGBClassifier(n_estimators=rounds, max_depth=DEPTH),
        {
            "dataset": f"large_{mode}",
            "label": "label",
            "where": "f2 > -2",
            "eval": {"fraction": 0.2, "seed": seed},
        },
    )
    return time.perf_counter() - start, result.metrics["auc"]


def timelines(log: Path) -> list[dict]:
    """Each finished job's phases (ms), from the server log's `job_finished` lines."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["timeline_ms"] for line in lines if line.get("event") == "job_finished"]


def train_tasks(log: Path) -> list[dict]:
    """Each finished train task's `task_done` line (CPU seconds, peak and starting RSS), in order."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "task_done" and line.get("kind") == "train"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--modes", nargs="+", default=["dp", "rules"], choices=["dp", "dp_eval_only", "rules"]
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        table = base / "large.parquet"
        data_bytes = make_table(table, args.rows)
        extra = "".join(
            f'\n[datasets.large_{mode}]\npath = "{table}"\nid_column = "id"\nlabel_columns = ["label"]\n'
            'column_levels.label = ["0", "1"]\n'
            f'privacy = "{mode}"\npolicy = {{ max_threads = {THREADS}, max_n_estimators = {args.rounds} }}\n'
            for mode in args.modes
        )
        log = base / "server.log"
        floors = {m: FLOORS if m == "dp" else {"XGBoost": False} for m in args.modes}
        local: dict[str, dict[str, list[tuple[float, float]]]] = {
            m: {name: [] for name in floors[m]} for m in args.modes
        }
        remote: dict[str, list[tuple[float, float]]] = {m: [] for m in args.modes}
        jobs: list[str] = []
        aucs: dict[str, float] = {}
        users = {"bench": [f"large_{m}" for m in args.modes]}
        with running(base / "data", log, users, extra) as server, Floor() as floor:
            client = server.client("bench")
            for rep in range(args.reps):
                for mode in args.modes:
                    for name, opendp in floors[mode].items():
                        run = floor.pool.submit(local_once, table, args.rounds, mode, opendp)
                        local[mode][name].append(run.result())
                    before = process_cpu(server.proc.pid)
                    seconds, aucs[mode] = remote_once(client, args.rounds, mode, rep)
                    remote[mode].append((seconds, process_cpu(server.proc.pid) - before))
                    jobs.append(mode)
        tasks = train_tasks(log)
        phases = timelines(log)
        worker_cpu: dict[str, list[float]] = {m: [] for m in args.modes}
        for mode, task in zip(jobs, tasks, strict=True):
            worker_cpu[mode].append(task["cpu_s"])
    print(f"large job: {args.rows} rows x {FEATURES} features, {args.rounds} rounds, depth {DEPTH}, ")
    print(f"  {THREADS} threads, eval split; {args.reps} runs each, interleaved (medians);")
    print(f"  in-process at the workers' priority (nice +{WORKER_NICE}) and OpenMP environment")
    for mode in args.modes:
        rm = statistics.median(wall for wall, _ in remote[mode])
        rc = statistics.median(w + p for w, (_, p) in zip(worker_cpu[mode], remote[mode]))
        target = 1.1 if mode == "dp" else 1.05
        print(f"  mode {mode}: through the server {rm:7.2f} s, CPU {rc:.2f} s (auc {aucs[mode]:.4g})")
        for i, (name, runs) in enumerate(local[mode].items()):
            lm = statistics.median(wall for wall, _ in runs)
            lc = statistics.median(cpu for _, cpu in runs)
            trainer = f"the DP trainer, {name}" if mode == "dp" else name
            aim = f" (target <= {target})" if i == 0 else ""
            print(f"    in-process ({trainer}) {lm:7.2f} s, CPU {lc:.2f} s; ", end="")
            print(f"ratio {rm / lm:.3f}x{aim}, CPU {rc / lc:.3f}x")
            every = ", ".join(
                f"{a:.2f} / {b:.2f} s (CPU {c:.2f} / {w:.2f} + {p:.2f} s)"
                for (a, c), (b, p), w in zip(runs, remote[mode], worker_cpu[mode])
            )
            print(f"      every run, local / remote (CPU: local / worker + server): {every}")
    if phases:
        last = phases[-1]
        print("  the last server job, seconds: " + ", ".join(f"{k} {v / 1e3:.2f}" for k, v in last.items()))
    if tasks:
        peak, start = max((task["peak_rss_mb"], task["start_rss_mb"]) for task in tasks)
        mib = data_bytes / 2**20
        print(f"  admitted feature data: {mib:.0f} MiB; worker peak RSS {peak:.0f} MiB ({peak / mib:.2f}x)")
        print(f"  of which inherited from the forkserver at start: {start:.0f} MiB; ")
        print(f"  peak above start / data: {(peak - start) / mib:.2f}x")


if __name__ == "__main__":
    main()
