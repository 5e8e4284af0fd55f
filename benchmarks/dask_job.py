"""A cluster job against the same job on one machine: how much does the Dask executor cost?

1,000,000 rows x 20 float features, a binary label, depth 6, a 20% evaluation split, in mode dp (the
default a user gets: structure counted over every admitted row) and in mode rules beside it. The same
job through two servers on the same table: one with the local executor (one worker process, two
threads), one with `[executor] kind = "dask"` on a LocalCluster of two workers of one thread each (two
partitions). Interleaved, in the same run; it prints the ratio (target <= 1.5x) and both jobs' phases
from the server log's timelines.

    python benchmarks/dask_job.py [--rows 1000000] [--rounds 100] [--reps 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import xgboost as xgb
from distributed import LocalCluster

from benchmarks.large_job import FEATURES, make_table
from remote_magic import Client
from tests.serverproc import running

DEPTH, THREADS = 6, 2


def dataset(table: Path, privacy: str) -> str:
    return (
        f'\n[datasets.large_{privacy}]\npath = "{table}"\nid_column = "id"\nlabel_columns = ["label"]\n'
        'column_levels.label = ["0", "1"]\n'
        f'privacy = "{privacy}"\npolicy = {{ max_threads = {THREADS} }}\n'
    )


def once(client: Client, privacy: str, rounds: int, seed: int) -> tuple[float, float]:
    """One job; a new evaluation seed each time, so mode dp never answers from its ledger."""
    start = time.perf_counter()
    result = client.train(
        xgb.XGBClassifier(n_estimators=rounds, max_depth=DEPTH, min_child_weight=3),  # mode dp's leaf floor
        {"dataset": f"large_{privacy}", "label": "label", "eval": {"fraction": 0.2, "seed": seed}},
        timeout=3600,
    )
    return time.perf_counter() - start, result.metrics["auc"] or 0.0


def timelines(log: Path) -> list[dict]:
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line["timeline_ms"] for line in lines if line.get("event") == "job_finished"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--reps", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        table = base / "large.parquet"
        make_table(table, args.rows)
        datasets = dataset(table, "dp") + dataset(table, "rules")
        users = {"bench": ["large_dp", "large_rules"]}
        times: dict[tuple[str, str], list[float]] = {}
        aucs: dict[tuple[str, str], float] = {}
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
            ) as cluster,
            running(base / "local", base / "local.log", users, datasets) as local,
        ):
            executor = (
                f'\n[executor]\nkind = "dask"\nscheduler = "{cluster.scheduler_address}"\npartitions = 2\n'
            )
            with running(base / "dask", base / "dask.log", users, datasets + executor) as dask:
                for rep in range(args.reps):
                    for privacy in ("dp", "rules"):
                        for name, server in (("local", local), ("dask", dask)):
                            seconds, auc = once(server.client("bench"), privacy, args.rounds, rep)
                            times.setdefault((name, privacy), []).append(seconds)
                            aucs[(name, privacy)] = auc
            phases = {"local": timelines(base / "local.log")[-1], "dask": timelines(base / "dask.log")[-1]}
    print(f"dask job: {args.rows} rows x {FEATURES} features, {args.rounds} rounds, depth {DEPTH}, eval")
    print(f"  split; {args.reps} runs each, interleaved (medians); local: one worker, {THREADS} threads;")
    print("  dask: a LocalCluster of 2 workers x 1 thread, 2 partitions")
    for privacy in ("dp", "rules"):
        here = statistics.median(times[("local", privacy)])
        there = statistics.median(times[("dask", privacy)])
        auc_here, auc_there = aucs[("local", privacy)], aucs[("dask", privacy)]
        print(f"  mode {privacy:5}: local {here:7.2f} s (auc {auc_here:.4f}), dask {there:7.2f} s ", end="")
        print(f"(auc {auc_there:.4f}); ratio {there / here:5.2f}x (target <= 1.5)")
    for name, last in phases.items():
        steps = ", ".join(f"{k} {v / 1e3:.2f}" for k, v in last.items())
        print(f"  the last {name} job (mode rules), seconds: {steps}")


if __name__ == "__main__":
    main()
