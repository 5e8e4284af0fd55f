"""A cluster that lost a worker while the other was paused: does the next job run to the end?

Issue 21: a worker killed mid-job while the surviving worker was paused left xgboost.dask's locks held,
and the next job waited for the job timeout. Each cycle here, on a LocalCluster of two workers (one
partition each) behind a server with the Dask executor: a long job trains; the one worker is paused
(SIGSTOP), the other killed (SIGKILL); the job must end `cluster_worker_lost`; the paused worker is
resumed (SIGCONT) and the killed one comes back (its nanny restarts it); then no lock is held on the
scheduler, and a short job must succeed. It prints each cycle and, at the end, the short job's time after
a loss against the same job on the healthy cluster measured at the start (the ratio).

    python -m benchmarks.dask_lost_worker [--cycles 20]

tests/test_dask.py runs a few cycles of `lost_worker_cycle`.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import xgboost as xgb
from distributed import Client, LocalCluster

from remote_magic_server.cluster.partitions import workers_of
from tests.serverproc import ServerProcess, running, wait_until

LONG = xgb.XGBClassifier(n_estimators=2000, max_depth=8, learning_rate=0.01)
SHORT = xgb.XGBClassifier(n_estimators=10, max_depth=4)
SPEC = {"dataset": "synthetic_rules", "label": "label", "eval": {"fraction": 0.2, "seed": 1}}
CONFIG = '\n[executor]\nkind = "dask"\nscheduler = "{}"\npartitions = 2\ncollective_timeout_s = 10\n'


@dataclass
class Cycle:
    lost_code: str | None  # the killed job's error code
    lost_s: float  # from the kill to the job's end
    held: dict  # the scheduler's locks once that job had ended
    back: str  # how the killed worker came back: "nanny" (restarted) or "replaced"
    next_state: str  # the next job's
    next_s: float  # the next job's time, from its submission


def held_locks(client: Client) -> dict[str, list[str]]:
    """The scheduler's MultiLocks that someone holds or waits for, by name."""

    def locks(dask_scheduler) -> dict[str, list[str]]:
        found = dask_scheduler.extensions["multi_locks"].locks
        return {name: list(ids) for name, ids in found.items() if ids}

    return client.run_on_scheduler(locks)


def short_job(server: ServerProcess) -> tuple[str, float]:
    started = time.monotonic()
    job = server.client().submit(SHORT, SPEC)
    return job.wait(timeout=600).state, time.monotonic() - started


def rejoin(cluster: Client, victim: str) -> str:
    """Wait for the killed worker's nanny to start a new one ("nanny"). A LocalCluster closes and drops
    a nanny whose worker is not back within `distributed.deploy.lost-worker-timeout` (15 s: a slow
    restart on a busy machine), distributed's own restart can race and close a nanny for good
    (dask/distributed#7312), and the scheduler can keep listing the killed worker. Then do what an
    operator would: forget the dead worker on the scheduler and start a nanny in place of every one
    without a live worker ("replaced"). The cycle's test is what the server does next, not the nanny.
    Each fallback is printed, so a failure in CI shows the cluster's state."""
    if _rejoined(cluster, victim, 120):
        return "nanny"
    print(f"rejoin: {victim} not back: {cluster_state(cluster)}", file=sys.stderr, flush=True)
    if victim in workers_of(cluster):
        cluster.run_on_scheduler(_forget, address=victim)
    local = cluster.cluster
    alive = workers_of(cluster)
    for name in [n for n, nanny in local.workers.items() if not _serving(nanny, alive)]:
        local.loop.add_callback(local.workers.pop(name).close)
    local.scale(len(local.worker_spec))  # starts a nanny for every name in the spec that has none
    if _rejoined(cluster, victim, 300, dropped_ends=False):  # scale starts the nannies in the background
        return "replaced"
    raise AssertionError(f"{victim} did not come back: {cluster_state(cluster)}")


async def _forget(dask_scheduler, address: str) -> None:
    await dask_scheduler.remove_worker(address, stimulus_id="dask-lost-worker-forget", close=False)


def _serving(nanny, alive: dict[str, dict]) -> bool:
    return str(nanny.status) == "Status.running" and nanny.is_alive() and nanny.worker_address in alive


def cluster_state(cluster: Client) -> str:
    """The scheduler's workers and each nanny's state, for a message."""
    listed = workers_of(cluster).items()
    workers = {address: (info.get("name"), info.get("status")) for address, info in listed}
    nannies = {
        name: (str(nanny.status), nanny.worker_address, nanny.pid, nanny.is_alive())
        for name, nanny in cluster.cluster.workers.items()
    }
    return f"scheduler {workers}, nannies {nannies}"


def _rejoined(cluster: Client, victim: str, timeout: float, dropped_ends: bool = True) -> bool:
    """True once the scheduler has two workers and not the victim; False at the timeout, or (with
    `dropped_ends`) at once when the cluster has dropped a nanny: it starts no new one by itself."""
    local = cluster.cluster
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = workers_of(cluster)
        if len(workers) == 2 and victim not in workers:
            return True
        if dropped_ends and len(local.workers) < len(local.worker_spec):
            return False
        time.sleep(0.1)
    return False


def lost_worker_cycle(server: ServerProcess, cluster: Client) -> Cycle:
    job = server.client().submit(LONG, SPEC)
    wait_until(lambda: job.refresh().progress.round > 0 or job.done, 300, "training rounds")
    pids = cluster.run(os.getpid)
    victim, survivor = sorted(pids)
    os.kill(pids[survivor], signal.SIGSTOP)
    try:
        killed = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        status = job.wait(timeout=300)
        lost_s = time.monotonic() - killed
    finally:
        os.kill(pids[survivor], signal.SIGCONT)
    held = held_locks(cluster)
    back = rejoin(cluster, victim)
    state, next_s = short_job(server)
    return Cycle(status.error.code if status.error else None, lost_s, held, back, state, next_s)


def local_cluster() -> LocalCluster:
    return LocalCluster(
        n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, local_cluster() as cluster, Client(cluster) as client:
        base = Path(tmp)
        users = {"alice": ["synthetic_rules"]}
        config = CONFIG.format(cluster.scheduler_address)
        with running(base / "data", base / "server.log", users, config) as server:
            healthy = [short_job(server)[1] for _ in range(2)]
            cycles = []
            for number in range(1, args.cycles + 1):
                cycle = lost_worker_cycle(server, client)
                cycles.append(cycle)
                print(
                    f"cycle {number:2d}: lost job {cycle.lost_code} after {cycle.lost_s:.1f} s, "
                    f"locks held after it {len(cycle.held)}, worker back by {cycle.back}, "
                    f"next job {cycle.next_state} in {cycle.next_s:.1f} s",
                    flush=True,
                )
    good = [c for c in cycles if c.lost_code == "cluster_worker_lost" and not c.held]
    succeeded = [c for c in good if c.next_state == "succeeded"]
    print(
        f"{len(succeeded)}/{len(cycles)} cycles: the lost job ended cluster_worker_lost, "
        "nothing held, the next job succeeded"
    )
    after = statistics.median(c.next_s for c in cycles)
    print(
        f"next job after a loss: median {after:.1f} s; on the healthy cluster {min(healthy):.1f} s; ratio "
        f"{after / min(healthy):.2f}x"
    )


if __name__ == "__main__":
    main()
