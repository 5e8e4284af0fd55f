"""Load: N clients of one user submit M small jobs each and poll them; is anything lost, is it fair, and
does the API stay fast?

Starts its own server (demo data, a fresh data directory, a free loopback port), then, on the demo
table in mode rules (in mode dp an identical repeat is answered from the stored release without a
worker, which would measure nothing), runs:

1. baseline: the clients poll a finished job's status while the workers are idle;
2. load: N clients of one user (a sweep) each submit M jobs (with idempotency keys). The user's queue
   on the server holds `max_queued_per_user` jobs; beyond that the server answers 429 with Retry-After
   and the client waits for a place (as a notebook's `--no-wait` sweep does). Each client then polls its
   jobs' status in turn, one request every `--interval` seconds, until all are final;
3. fairness: once the sweep's queue is full, a second user submits one job; it should start within
   about one job's time, not after the whole sweep.

It prints how many jobs are accounted for (each submitted id once, in a final state), the errors, the
throughput, the p50/p99 latency of status requests while workers train against the idle baseline
measured in the same run, and how long the second user's job waited against a typical job's time.

    python benchmarks/load.py [--clients 64] [--jobs 25] [--interval 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import xgboost as xgb

from remote_magic import Client
from remote_magic.contract.wire import FINAL_STATES, JobStatus
from tests.serverproc import ServerProcess, write_config

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.25, "seed": 1}}
BASELINE_S = 3.0
QUEUE_WAIT_S = 3600.0


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed_status(client: Client, job_id: str, latencies: list[float]) -> JobStatus:
    started = time.perf_counter()
    status = client.status(job_id)
    latencies.append(time.perf_counter() - started)
    return status


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
        self.final: dict[str, JobStatus] = {}
        self.waits = 0
        self.lock = threading.Lock()

    def waited(self, _retry_in: float, _waited: float) -> None:
        with self.lock:
            self.waits += 1

    def client_run(self, index: int, client: Client) -> None:
        model = xgb.XGBClassifier(n_estimators=5, max_depth=2)
        ids = []
        for j in range(self.jobs):
            try:
                job = client.submit(model, SPEC, idempotency_key=f"load-{index}-{j}", on_wait=self.waited)
                ids.append(job.id)
            except Exception as exc:  # noqa: BLE001 - every failure is counted, none stops the run
                self.errors.append(f"submit: {type(exc).__name__}: {exc}")
        self.submitted[index] = ids
        pending = list(ids)
        while pending:
            job_id = pending.pop(0)
            try:
                status = timed_status(client, job_id, self.latencies)
                if status.state in FINAL_STATES:
                    self.final[job_id] = status
                else:
                    pending.append(job_id)
            except Exception as exc:  # noqa: BLE001
                self.errors.append(f"status: {type(exc).__name__}: {exc}")
                pending.append(job_id)
            time.sleep(self.interval)

    def run(self, other: Client, queue_full: threading.Event) -> tuple[float, JobStatus | None]:
        threads = [threading.Thread(target=self.client_run, args=(i, c)) for i, c in enumerate(self.clients)]
        started = time.perf_counter()
        for t in threads:
            t.start()
        second = None
        if queue_full.wait(timeout=600):
            job = other.submit(xgb.XGBClassifier(n_estimators=5, max_depth=2), SPEC)
            second = job.wait(timeout=600)
        for t in threads:
            t.join()
        return time.perf_counter() - started, second


def account(submitted: dict[int, list[str]], final: dict[str, JobStatus]) -> tuple[int, list[str]]:
    """Submissions that came back as one job each, every one succeeded; and what is wrong."""
    ids = [job_id for jobs in submitted.values() for job_id in jobs]
    problems = [f"job {i} submitted twice" for i in {i for i in ids if ids.count(i) > 1}]
    found = 0
    for job_id in set(ids):
        status = final.get(job_id)
        if status is not None and status.state == "succeeded":
            found += 1
        else:
            state = status.state if status else "not final"
            problems.append(f"job {job_id}: {state} ({status.error.code if status and status.error else ''})")
    return found, problems


def watch_queue(client: Client, jobs: int, full: threading.Event, stop: threading.Event) -> None:
    """Set `full` once the sweep's queue on the server is full (the second user submits then)."""
    while not stop.is_set():
        queued = sum(1 for job in client.jobs(limit=jobs) if job.state == "queued")
        if queued >= jobs:
            full.set()
            return
        time.sleep(0.2)


def finished_lines(log: Path) -> dict[str, dict]:
    """The server log's `job_finished` lines by job: its run time and its timeline (queue wait, ...), in
    milliseconds; the API's timestamps are whole seconds, too coarse for jobs this short."""
    found = {}
    for line in log.read_text().splitlines():
        entry = json.loads(line) if line.startswith("{") else {}
        if entry.get("event") == "job_finished":
            found[entry["job"]] = entry
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--jobs", type=int, default=25, help="jobs per client")
    parser.add_argument("--interval", type=float, default=0.1, help="seconds between a client's polls")
    parser.add_argument("--workers", type=int, default=0, help="server workers (0: cores - 1)")
    parser.add_argument("--max-queued", type=int, default=20, help="the server's max_queued_per_user")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        config = write_config(base / "data", extra=f"max_queued_per_user = {args.max_queued}")
        config.write_text(config.read_text().replace("workers = 1", f"workers = {args.workers}"))
        server = ServerProcess(config, base / "server.log")
        users = {name: ["breast_cancer_rules"] for name in ("sweep", "other", "idle")}
        server.issue_tokens(users)
        server.start()
        try:
            idle = Client(server.url, server.tokens["idle"])
            done = idle.submit(xgb.XGBClassifier(n_estimators=5, max_depth=2), SPEC)
            done.wait(timeout=120)
            watchers = [Client(server.url, server.tokens["idle"]) for _ in range(args.clients)]
            idle_latencies = baseline(watchers, done.id, args.interval)
            clients = [
                Client(server.url, server.tokens["sweep"], queue_wait=QUEUE_WAIT_S)
                for _ in range(args.clients)
            ]
            load = Load(clients, args.jobs, args.interval)
            full, stop = threading.Event(), threading.Event()
            watcher = threading.Thread(
                target=watch_queue,
                args=(Client(server.url, server.tokens["sweep"]), args.max_queued, full, stop),
            )
            watcher.start()
            elapsed, second = load.run(Client(server.url, server.tokens["other"]), full)
            stop.set()
            watcher.join()
            found, problems = account(load.submitted, load.final)
            workers = server.get("/health", user=None).json()["workers"]
        finally:
            server.stop()
        finished = finished_lines(base / "server.log")

    total = args.clients * args.jobs
    p50, p99 = percentile(load.latencies, 0.50), percentile(load.latencies, 0.99)
    b50, b99 = percentile(idle_latencies, 0.50), percentile(idle_latencies, 0.99)
    durations = [finished[i]["seconds"] for i in load.final if i in finished]
    typical = statistics.median(durations) if durations else float("nan")
    print(f"{args.clients} clients x {args.jobs} jobs of one user, {workers} worker(s)", end=", ")
    print(f"polling every {args.interval} s")
    print(f"jobs accounted for: {found} of {total}")
    print(f"errors: {len(load.errors) + len(problems)}")
    for line in (load.errors + problems)[:10]:
        print(f"  {line}")
    print(f"submissions that waited for a queue slot (429 + Retry-After): {load.waits}")
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
    if second is not None:
        waited = finished[second.id]["timeline_ms"]["queue"] / 1e3
        print(
            f"a second user's job submitted mid-sweep ({args.max_queued} of the sweep's jobs queued): "
            f"started after {waited:.2f} s; a sweep job takes {typical:.2f} s "
            f"({waited / typical:.2f} job times); it {second.state}"
        )
    else:
        print("the sweep's queue never filled: no second-user measurement")


if __name__ == "__main__":
    main()
