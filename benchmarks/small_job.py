"""Round trip of a small job through the server against the same work done in-process.

The architecture's floor for a small job (10k rows x 20 features, 20 rounds, 2 cores) is DuckDB
read+filter plus `xgb.train` with evals; everything the server adds (HTTP, store, fork, policy) should
stay within about 2x of it. Both are measured here, in the same run, and the ratio is printed.

    python benchmarks/small_job.py [--reps 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import xgboost as xgb

from remote_magic import Client
from tests.serverproc import running

ROWS, FEATURES, ROUNDS = 10_000, 20, 20


def make_table(path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES))
    label = (x[:, 0] + 0.5 * x[:, 1] + rng.normal(size=ROWS) > 0).astype(int)
    frame = pd.DataFrame(x, columns=[f"f{i}" for i in range(FEATURES)])
    frame.insert(0, "id", np.arange(ROWS))
    frame["label"] = label
    frame.to_parquet(path, index=False)


def local_once(path: Path) -> float:
    start = time.perf_counter()
    con = duckdb.connect()
    frame = con.execute(
        "SELECT * EXCLUDE (id), (hash(id, 0) % 1000000) < 200000 AS is_eval"
        " FROM read_parquet(?) WHERE f2 > -3",
        [str(path)],
    ).df()
    is_eval = frame.pop("is_eval").to_numpy()
    features = [f"f{i}" for i in range(FEATURES)]
    dtrain = xgb.DMatrix(frame.loc[~is_eval, features], label=frame.loc[~is_eval, "label"])
    deval = xgb.DMatrix(frame.loc[is_eval, features], label=frame.loc[is_eval, "label"])
    xgb.train(
        {"objective": "binary:logistic", "max_depth": 4, "nthread": 2},
        dtrain,
        ROUNDS,
        evals=[(dtrain, "train"), (deval, "eval")],
        verbose_eval=False,
    )
    return time.perf_counter() - start


def remote_once(client: Client) -> float:
    start = time.perf_counter()
    client.train(
        xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=4),
        {"dataset": "bench", "label": "label", "where": "f2 > -3", "eval": {"fraction": 0.2, "seed": 0}},
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--reps", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        table = base / "bench.parquet"
        make_table(table)
        extra = f'\n[datasets.bench]\npath = "{table}"\nid_column = "id"\nlabel_columns = ["label"]\n'
        with running(base / "data", base / "server.log", {"bench": ["bench"]}, extra) as server:
            client = server.client("bench")
            local_once(table), remote_once(client)
            local, remote = [], []
            for _ in range(args.reps):
                local.append(local_once(table))
                remote.append(remote_once(client))
    lm, rm = statistics.median(local), statistics.median(remote)
    print(f"small job: {ROWS} rows x {FEATURES} features, {ROUNDS} rounds, {args.reps} reps (medians)")
    print(f"  in-process DuckDB + xgb.train: {lm * 1000:7.1f} ms")
    print(f"  through the server:            {rm * 1000:7.1f} ms")
    print(f"  ratio server / in-process:     {rm / lm:7.2f}x   (target: about 2x)")


if __name__ == "__main__":
    main()
