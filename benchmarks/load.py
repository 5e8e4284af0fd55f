"""Load: N clients submit M small jobs each and poll them; is anything lost, and does the API stay fast?

Starts its own server (demo data, a fresh data directory, a free loopback port), gives every client its
own user, then:

1. baseline: the clients poll a finished job's status while the workers are idle;
2. load: each client submits its M jobs (with idempotency keys), then polls their status in turn, one
   request every `--interval` seconds, until all are final, while the workers train them.

It prints how many jobs are accounted for (each submitted id listed once, in a final state), the errors,
the throughput, and the p50/p99 latency of status requests under load against the idle baseline measured
in the same run.

    python benchmarks/load.py [--clients 16] [--jobs 10] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import xgboost as xgb

from remote_magic import Client
from remote_magic.wire import FINAL_STATES
from tests.serverproc import ServerProcess, write_config

SPEC = {"dataset": "breast_cancer", "label": "malignant", "eval": {"fraction": 0.25, "seed": 1}}
BASELINE_S = 3.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_status(client: Client, job_id: str, latencies: list[float]) -> str:
    started = time.perf_counter()
    state = client.job(job_id).status.state
    latencies.append(time.perf_counter() - started)
    return state


def baseline(clients: list[Client], job_id: str, interval: float) -> list[float]:
    """Status latency while no worker runs: every client polls one finished job."""
    latencies: list[float] = []
    stop = time.monotonic() + BASELINE_S

    def poll(client: Client) -> None:
        while time.monotonic() < stop:
            timed_status(client, job_id, latencies)
            time.sleep(interval)

    threads = [threading.Thread(target=poll, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return latencies


class Load:
    def __init__(self, clients: list[Client], jobs: int, interval: float):
        self.clients = clients
        self.jobs = jobs
        self.interval = interval
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.submitted: dict[int, list[str]] = {}

    def client_run(self, index: int, client: Client) -> None:
        model = xgb.XGBClassifier(n_estimators=5, max_depth=2)
        ids = []
        for j in range(self.jobs):
            try:
                ids.append(client.submit(model, SPEC, idempotency_key=f"load-{index}-{j}").id)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                self.errors.append(f"submit: {type(exc).__name__}: {exc}")
        self.submitted[index] = ids
        pending = list(ids)
        while pending:
            job_id = pending.pop(0)
            try:
                if timed_status(client, job_id, self.latencies) not in FINAL_STATES:
                    pending.append(job_id)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"status: {type(exc).__name__}: {exc}")
                pending.append(job_id)
            time.sleep(self.interval)

    def run(self) -> float:
        threads = [threading.Thread(target=self.client_run, args=(i, c)) for i, c in enumerate(self.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return time.perf_counter() - started


def account(clients: list[Client], submitted: dict[int, list[str]]) -> tuple[int, list[str]]:
    """Jobs listed by the server exactly once per submission, in a final state; and what is wrong."""
    found, problems = 0, []
    for index, client in enumerate(clients):
        listed = [job for job in client.jobs(limit=500) if job.id in set(submitted.get(index, []))]
        ids = [job.id for job in listed]
        if len(ids) != len(set(ids)):
            problems.append(f"client {index}: a job is listed twice")
        for job in listed:
            if job.state == "succeeded":
                found += 1
            else:
                problems.append(f"job {job.id}: {job.state} ({job.error.code if job.error else ''})")
    return found, problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--jobs", type=int, default=10, help="jobs per client")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a client's polls")
    parser.add_argument("--workers", type=int, default=0, help="server workers (0: cores - 1)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config = write_config(base / "data")
        config.write_text(config.read_text().replace("workers = 1", f"workers = {args.workers}"))
        server = ServerProcess(config, base / "server.log")
        users = {f"user{i}": ["breast_cancer"] for i in range(args.clients)} | {"idle": ["breast_cancer"]}
        server.issue_tokens(users)
        server.start()
        try:
            idle = Client(server.url, server.tokens["idle"])
            done = idle.submit(xgb.XGBClassifier(n_estimators=5, max_depth=2), SPEC)
            done.wait(timeout=120)
            watchers = [Client(server.url, server.tokens["idle"]) for _ in range(args.clients)]
            idle_latencies = baseline(watchers, done.id, args.interval)
            clients = [Client(server.url, server.tokens[f"user{i}"]) for i in range(args.clients)]
            load = Load(clients, args.jobs, args.interval)
            elapsed = load.run()
            found, problems = account(clients, load.submitted)
            workers = server.get("/health", user=None).json()["workers"]
        finally:
            server.stop()

    total = args.clients * args.jobs
    p50, p99 = percentile(load.latencies, 0.50), percentile(load.latencies, 0.99)
    b50, b99 = percentile(idle_latencies, 0.50), percentile(idle_latencies, 0.99)
    print(f"{args.clients} clients x {args.jobs} jobs, {workers} worker(s), polling every {args.interval} s")
    print(f"jobs accounted for: {found} of {total}")
    print(f"errors: {len(load.errors) + len(problems)}")
    for line in (load.errors + problems)[:10]:
        print(f"  {line}")
    print(f"throughput: {total / elapsed:.1f} jobs/s ({elapsed:.1f} s for all)")
    print(
        f"status latency while workers train ({len(load.latencies)} requests): "
        f"p50 {p50 * 1e3:.1f} ms, p99 {p99 * 1e3:.1f} ms, max {max(load.latencies) * 1e3:.1f} ms"
    )
    print(
        f"status latency, idle workers baseline ({len(idle_latencies)} requests): "
        f"p50 {b50 * 1e3:.1f} ms, p99 {b99 * 1e3:.1f} ms"
    )
    print(f"ratio busy/idle: p50 {p50 / b50:.2f}x, p99 {p99 / b99:.2f}x")
    print(f"mean status latency under load: {statistics.fmean(load.latencies) * 1e3:.1f} ms")


if __name__ == "__main__":
    main()
