"""CPU against GPU on one machine: time, metrics and run-to-run equality, at 1M and 10M rows.

For each size: a table of 20 float32 features and a binary label; a 20% evaluation split; a
`QuantileDMatrix` (evaluation rows with `ref=`) fed in Arrow record batches as the server's worker feeds
it; 200 rounds at depth 6 with train and eval metrics, on `device="cpu"` then twice on `device="cuda"`.
Then jobs through a server whose policy allows CUDA, as a notebook would send them, with the table in
each privacy mode as large_job.py serves it: mode dp (the default; the DP trainer computes its sums
with NumPy, so `device` moves only the scoring) and mode rules (XGBoost), each on both devices. One line
per figure. Needs an NVIDIA GPU and an XGBoost built with CUDA; says so and stops otherwise.

    python benchmarks/gpu.py [--sizes 1000000 10000000] [--rounds 200] [--modes dp rules]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import xgboost as xgb
from sklearn import metrics as skm

from remote_magic.families.base import Batches
from remote_magic.families.xgboost.inputs import RowBatches
from remote_magic_server.jobs.tasks import gpu_present
from tests.serverproc import running

FEATURES, DEPTH, BATCH = 20, 6, 1 << 18


def data(rows: int, seed: int = 0) -> tuple[pa.Table, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] - 0.3 * x[:, 2] * x[:, 3] + rng.normal(size=rows) > 0).astype(np.int8)
    return pa.table({f"f{i}": x[:, i] for i in range(FEATURES)}), y


def train(device: str, train_x: pa.Table, y: np.ndarray, eval_x: pa.Table, y_eval: np.ndarray, rounds: int):
    """Build the matrices from Arrow batches and train; (seconds, booster, eval predictions)."""
    start = time.perf_counter()
    dtrain = xgb.QuantileDMatrix(
        RowBatches(Batches(train_x.schema, train_x.to_batches(BATCH)), y, {}), max_bin=256
    )
    deval = xgb.QuantileDMatrix(
        RowBatches(Batches(eval_x.schema, eval_x.to_batches(BATCH)), y_eval, {}), max_bin=256, ref=dtrain
    )
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": DEPTH, "device": device, "nthread": os.cpu_count()},
        dtrain,
        rounds,
        evals=[(dtrain, "train"), (deval, "eval")],
        verbose_eval=False,
    )
    pred = booster.predict(deval)
    return time.perf_counter() - start, booster, pred


def through_the_server(rows: int, rounds: int, modes: list[str]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        table, y = data(rows, 1)
        table = table.append_column("id", pa.array(np.arange(rows))).append_column("label", pa.array(y))
        pq.write_table(table, base / "gpu.parquet")
        extra = "".join(
            f'\n[datasets.gpu_{mode}]\npath = "{base / "gpu.parquet"}"\nid_column = "id"\n'
            f'label_columns = ["label"]\n'
            f'column_levels.label = ["0", "1"]\nprivacy = "{mode}"\n'
            for mode in modes
        )
        policy = 'devices = ["cpu", "cuda"]\nworker_memory_mb = 65536'
        names = [f"gpu_{mode}" for mode in modes]
        with running(base / "data", base / "server.log", {"gpu": names}, extra, policy=policy) as server:
            for mode in modes:
                spec = {"dataset": f"gpu_{mode}", "label": "label", "where": "f2 > -3"}
                for device in ("cpu", "cuda"):
                    started = time.perf_counter()
                    model = xgb.XGBClassifier(n_estimators=rounds, max_depth=DEPTH, device=device)
                    result = server.client().train(model, spec, timeout=3600)
                    seconds = time.perf_counter() - started
                    print(
                        f"server job, mode {mode}, {rows:,} rows, {device}: {seconds:.2f} s, "
                        f"auc {result.metrics['auc']:.4f}"
                    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--modes", nargs="+", default=["dp", "rules"], choices=["dp", "rules"])
    args = parser.parse_args()
    if not (gpu_present() and xgb.build_info().get("USE_CUDA")):
        print("no NVIDIA GPU here (or XGBoost was built without CUDA): nothing to measure")
        return
    print(f"xgboost {xgb.__version__}, CUDA build {xgb.build_info().get('CUDA_VERSION')}")
    for rows in args.sizes:
        x, y = data(rows)
        cut = int(rows * 0.8)
        parts = (x.slice(0, cut), y[:cut], x.slice(cut), y[cut:])
        cpu_s, cpu_model, cpu_pred = train("cpu", *parts, args.rounds)
        gpu_s, gpu_model, gpu_pred = train("cuda", *parts, args.rounds)
        _, again, _ = train("cuda", *parts, args.rounds)
        truth = y[cut:]
        auc_cpu, auc_gpu = skm.roc_auc_score(truth, cpu_pred), skm.roc_auc_score(truth, gpu_pred)
        loss_cpu, loss_gpu = skm.log_loss(truth, cpu_pred), skm.log_loss(truth, gpu_pred)
        print(f"{rows:,} rows: cpu {cpu_s:.2f} s, gpu {gpu_s:.2f} s, speed-up {cpu_s / gpu_s:.1f}x")
        print(
            f"{rows:,} rows: auc cpu {auc_cpu:.5f} gpu {auc_gpu:.5f}, difference {abs(auc_cpu - auc_gpu):.5f}"
        )
        print(f"{rows:,} rows: log loss cpu {loss_cpu:.5f} gpu {loss_gpu:.5f}")
        same = bytes(gpu_model.save_raw("ubj")) == bytes(again.save_raw("ubj"))
        print(f"{rows:,} rows: two GPU runs give the same booster bytes: {same}")
    through_the_server(min(args.sizes), args.rounds, args.modes)


if __name__ == "__main__":
    main()
