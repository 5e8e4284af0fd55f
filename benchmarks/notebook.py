"""A `%%remote_train` cell on a real kernel against `Client.train` and local XGBoost on the same rows.

The kernel is an ipykernel driven as nbclient drives it (execute request, then iopub until the kernel is
idle), so the cell's time is what a notebook user waits for. Measured in one run, interleaved: the cell
plain and with every extra (`--curve 10 --importance 5 --confusion`), `Client.train` in this process, and
the in-process floor (DuckDB read and filter, `xgb.train` with evals, the metrics); the kernel's own CPU
per cell (psutil on the kernel process, 10 ms ticks: until idle, and until the next cell; the figures'
SVG is drawn by a helper process, not counted here); and `%load_ext remote_magic` in fresh kernels against
an empty cell.

Measured honestly on a shared machine (issue 22):
- `Client.train` starts once the kernel is wholly idle, its helper too: the helper draws a cell's
  pictures for 50-300 ms after the cell, on the same cores. A call started at once (faster than a user
  types) is measured on every other cell and printed beside it, not counted in the ratio.
- The floor runs in a process of its own at the workers' CPU priority and with their OpenMP waiting
  (`small_job.Floor`): a worker steps back by `WORKER_NICE`, and on a busy machine a floor at the
  benchmark's own priority may get up to three times a worker's share of the cores (one run at load
  10: `Client.train` 1.83x that floor, 0.88x the fair one). The same work in this process is printed
  too; on a quiet machine the two are about the same.
Targets (issue 22): cell p50 <= 300 ms and p95 <= 450 ms with every extra; kernel CPU <= 30 ms a cell;
`%load_ext` <= 100 ms; `Client.train` <= 1.5x local.

    python benchmarks/notebook.py [--cells 30] [--kernels 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil
import xgboost as xgb
from jupyter_client.manager import start_new_kernel

from benchmarks.small_job import FEATURES, ROUNDS, ROWS, SPEC, Floor, local_once, make_table
from remote_magic import Client
from remote_magic.display.pictures import VEGALITE
from tests.serverproc import running

DEPTH = 4
FLAGS = "--dataset bench --label label --where 'f2 > -3' --eval-fraction 0.2 --seed 0"
MODEL = f"from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators={ROUNDS}, max_depth={DEPTH})"
PLAIN = f"%%remote_train {FLAGS} -o r\n{MODEL}"
EXTRAS = f"%%remote_train {FLAGS} --curve 10 --importance 5 --confusion -o r\n{MODEL}"


class Pictures:
    """The figures a cell showed (Vega-Lite specs, display ids) and those whose picture came since: the
    kernel's helper process draws each one's SVG after the cell and updates its display (`charts.show`),
    so an update may arrive while a later cell runs."""

    def __init__(self) -> None:
        self.shown: set[str] = set()
        self.drawn: set[str] = set()

    def saw(self, msg: dict) -> None:
        kind, content = msg["msg_type"], msg["content"]
        display_id = content.get("transient", {}).get("display_id")
        if kind == "display_data" and VEGALITE in content.get("data", {}) and display_id:
            self.shown.add(display_id)
        elif kind == "update_display_data" and display_id:
            self.drawn.add(display_id)

    def wait(self, kc, timeout: float = 300.0) -> float:
        """Read iopub until every figure shown has its picture; the milliseconds that took."""
        start = time.perf_counter()
        while not self.shown <= self.drawn:
            self.saw(kc.get_iopub_msg(timeout=timeout))
        return (time.perf_counter() - start) * 1e3


def run_cell(
    kc, code: str, pictures: Pictures | None = None, timeout: float = 300.0
) -> tuple[float, list[str]]:
    """Execute like nbclient: send the request, read iopub until idle; the wall time and any error."""
    start = time.perf_counter()
    msg_id = kc.execute(code, store_history=False)
    errors = []
    while True:
        msg = kc.get_iopub_msg(timeout=timeout)
        if pictures is not None:
            pictures.saw(msg)
        if msg["parent_header"].get("msg_id") != msg_id:
            continue
        kind, content = msg["msg_type"], msg["content"]
        if kind == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")
        if kind == "status" and content["execution_state"] == "idle":
            break
    kc.get_shell_msg(timeout=timeout)
    return (time.perf_counter() - start) * 1e3, errors


def train_ms(client: Client) -> float:
    """One `Client.train` of the benchmark's model, in milliseconds."""
    start = time.perf_counter()
    client.train(xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=DEPTH), SPEC)
    return (time.perf_counter() - start) * 1e3


def kernel(env: dict[str, str]):
    km, kc = start_new_kernel(kernel_name="python3", env=env)
    return km, kc, psutil.Process(km.provisioner.process.pid)


def cpu_ms(process: psutil.Process) -> float:
    times = process.cpu_times()
    return (times.user + times.system) * 1e3


def load_ext_times(env: dict[str, str], kernels: int) -> tuple[list[float], list[float]]:
    """`%load_ext remote_magic` in fresh kernels, each after an empty cell (the kernel's own round trip)."""
    loads, empties = [], []
    for _ in range(kernels):
        km, kc, _ = kernel(env)
        try:
            empties.append(run_cell(kc, "pass")[0])
            ms, errors = run_cell(kc, "%load_ext remote_magic")
            assert not errors, errors
            loads.append(ms)
        finally:
            kc.stop_channels()
            km.shutdown_kernel(now=True)
    return loads, empties


def p(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def line(name: str, values: list[float], target: str = "") -> None:
    print(f"  {name:44s} p50 {statistics.median(values):7.1f} ms  p95 {p(values, 95):7.1f} ms  {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=30, help="measured cells of each kind")
    parser.add_argument("--kernels", type=int, default=5, help="fresh kernels for %%load_ext")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        table = base / "bench.parquet"
        make_table(table)
        extra = (
            f'\n[datasets.bench]\npath = "{table}"\nid_column = "id"\nlabel_columns = ["label"]\n'
            'column_levels.label = ["0", "1"]\n'
            'privacy = "rules"\n'  # mode dp would answer identical repeats from the stored release
        )
        users = {"bench": ["bench"]}
        with running(base / "data", base / "server.log", users, extra) as server, Floor() as floor:
            client = server.client("bench")
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("REMOTE_MAGIC")},
                "REMOTE_MAGIC_URL": server.url,
                "REMOTE_MAGIC_TOKEN": server.tokens["bench"],
            }
            loads, empties = load_ext_times(env, args.kernels)
            km, kc, proc = kernel(env)
            try:
                pictures = Pictures()
                for code in ("%load_ext remote_magic", "%remote_connect", PLAIN, EXTRAS, PLAIN, EXTRAS):
                    assert not run_cell(kc, code, pictures)[1], code
                pictures.wait(kc)
                kinds = ("plain", "extras")
                names = (*kinds, "client", "overlapped", "floor", "local")
                timings: dict[str, list[float]] = {k: [] for k in names}
                cpu: dict[str, list[float]] = {name: [] for name in kinds}
                cpu_after: dict[str, list[float]] = {name: [] for name in kinds}
                drawing: dict[str, list[float]] = {name: [] for name in kinds}
                for i in range(args.cells):
                    for name, code in (("plain", PLAIN), ("extras", EXTRAS)):
                        before = cpu_ms(proc)
                        ms, errors = run_cell(kc, code, pictures)
                        assert not errors, errors
                        timings[name].append(ms)
                        cpu[name].append(cpu_ms(proc) - before)
                        if i % 2:  # as quick as no user is: while the helper draws the cell's pictures
                            timings["overlapped"].append(train_ms(client))
                        else:
                            drawing[name].append(pictures.wait(kc))
                        pictures.wait(kc)
                        timings["client"].append(train_ms(client))
                        timings["floor"].append(floor(table) * 1e3)
                        timings["local"].append(local_once(table) * 1e3)
                        cpu_after[name].append(cpu_ms(proc) - before)
            finally:
                kc.stop_channels()
                km.shutdown_kernel(now=True)

    cores = os.cpu_count()
    load = os.getloadavg()[0]
    print(f"notebook latency: {ROWS} rows x {FEATURES} features, {ROUNDS} rounds, depth {DEPTH}, mode rules")
    print(
        f"  {args.cells} cells of each kind, interleaved; {cores} cores, load average {load:.1f} at the end"
    )
    line("local XGBoost (DuckDB + xgb.train + metrics)", timings["floor"])
    line("  the same in this process (its priority, OpenMP default)", timings["local"])
    line("Client.train (submit to result)", timings["client"])
    line("  the same at once after a cell, as pictures are drawn", timings["overlapped"])
    line("%%remote_train cell, plain", timings["plain"])
    line("%%remote_train cell, every extra", timings["extras"], "(target p50 <= 300, p95 <= 450)")
    ratio = statistics.median(timings["client"]) / statistics.median(timings["floor"])
    own = statistics.median(timings["client"]) / statistics.median(timings["local"])
    print(f"  Client.train / local (p50): {ratio:.2f}x (target <= 1.5x); in this process {own:.2f}x")
    for name in ("plain", "extras"):
        print(
            f"  kernel CPU per {name} cell: until idle p50 {statistics.median(cpu[name]):.1f} ms; "
            f"until the next cell p50 {statistics.median(cpu_after[name]):.1f} ms "
            "(target <= 30 ms)"
        )
    for name in kinds:
        line(f"figures' pictures, {name} cell: after idle", drawing[name], "(the kernel's helper process)")
    line("empty cell in a fresh kernel", empties)
    line("%load_ext remote_magic in a fresh kernel", loads, "(target <= 100 ms)")


if __name__ == "__main__":
    main()
