"""Cluster workers whose thread a lost job's training still holds: left out of the next job, restarted.

When a training worker is lost, the survivors' training should give up within `collective_timeout_s`.
XGBoost's collective does not always: a survivor that was paused (SIGSTOP) while its peer was killed can
stay blocked in an allreduce that never returns (seen with xgboost 3.2: the collective's loop thread
waits for work with no deadline while the training thread waits for the loop). Dask cannot stop a
running thread, so such a worker keeps the task, which no client wants any more, forever, and every
later task sent there queues behind it.

So before staging, the job driver asks every worker which of its threads run a task no client wants
(Dask's `cancelled` state). A let-go task that drivers have known for less than the patience (the
collective's timeout plus a margin) may be a cancelled job's last round: the job waits for it to end or
turn stuck. Each worker remembers when a driver first found each of its let-go tasks, so only the jobs
of that first window wait; later ones judge at once. A worker still running a stuck task is left out of
the job: the job's tasks are restricted to the others (driver.py), so it waits neither behind that
task, whose thread the scheduler takes for free, nor for the jobs that still use that worker. A stuck
worker is restarted through its nanny once nothing on it belongs to another job (no data, no task in
hand or queued), so a restart never ends another analyst's job (a cancelled job's honest long task
looks the same as a wedged one from here). With no worker left the job fails `cluster_busy`
(StuckInUse). A worker that does not answer (paused) is not judged here; the job's own checks handle it.
"""

from __future__ import annotations

import logging
import time

from distributed import Client

from .partitions import workers_of

log = logging.getLogger("remote_magic_server.cluster")

POLL_S = 0.2
ASK_TIMEOUT_S = 5.0
RESTART_TIMEOUT_S = 60.0

_first_found: dict[tuple[str, str], float] = {}  # on a worker: when a driver first found a let-go task


def _unwanted(dask_worker) -> dict[str, float]:
    """Run on a worker: the tasks its threads still execute that the scheduler has let go, each with the
    seconds since a driver first found it let go (kept in the worker's process, for later jobs)."""
    running = dask_worker.state.executing | dask_worker.state.long_running
    keys = {(dask_worker.address, str(task.key)) for task in running if task.state == "cancelled"}
    now = time.monotonic()
    for gone in [found for found in _first_found if found[0] == dask_worker.address and found not in keys]:
        del _first_found[gone]
    for found in keys:
        _first_found.setdefault(found, now)
    return {key: now - _first_found[(address, key)] for address, key in sorted(keys)}


def _ask(client: Client) -> dict[str, dict[str, float]]:
    """Each answering worker's let-go tasks and their ages; {} when the cluster does not answer in time."""
    try:
        answers = client.run(_unwanted, on_error="return", callback_timeout=ASK_TIMEOUT_S)
    except (OSError, TimeoutError):
        return {}
    return {address: ages for address, ages in answers.items() if isinstance(ages, dict) and ages}


class StuckInUse(Exception):
    """Every worker runs a let-go task, and those stuck are used by other jobs: this job cannot run now."""


def _in_use(client: Client, workers: set[str]) -> set[str]:
    """The workers among `workers` that hold data, or have a task in hand or queued, for a live client
    (all of them when the scheduler cannot tell: one another driver just restarted is not known)."""
    try:
        held = client.has_what(sorted(workers))
        busy = client.processing(sorted(workers))
    except KeyError:
        return set(workers)
    return {address for address in workers if held.get(address) or busy.get(address)}


def _restart(client: Client, workers: set[str]) -> set[str]:
    """Restart `workers` through their nannies; those restarted."""
    try:
        outcome = client.restart_workers(sorted(workers), timeout=RESTART_TIMEOUT_S, raise_for_error=False)
    except (OSError, TimeoutError, ValueError):
        outcome = {}
    restarted = {address for address, status in outcome.items() if status == "OK"}
    if restarted:
        log.warning("cluster_worker_restarted", extra={"workers": len(restarted)})
    return restarted


def usable_workers(client: Client, patience_s: float) -> set[str]:
    """The workers this job may use: all but those running a let-go task. A let-go task that drivers have
    known for less than `patience_s` may be a cancelled job's last round: wait for it to end or turn
    stuck. A stuck worker is restarted if no other job uses it, else left out without waiting for it;
    StuckInUse when no worker is left."""
    let_go = _ask(client)
    began = time.monotonic()
    deadline = began + patience_s + ASK_TIMEOUT_S  # by then every task found is judged
    while any(max(ages.values()) < patience_s for ages in let_go.values()) and time.monotonic() < deadline:
        time.sleep(POLL_S)
        let_go = _ask(client)
    waited = round(time.monotonic() - began, 1)
    stuck = {address for address, ages in let_go.items() if max(ages.values()) >= patience_s}
    free = stuck - _in_use(client, stuck) if stuck else set()
    left_out = set(let_go) - (_restart(client, free) if free else set())
    usable = set(workers_of(client)) - left_out
    if left_out:
        log.warning(
            "cluster_worker_left_out",
            extra={"workers": len(left_out), "usable": len(usable), "waited_s": waited},
        )
    if not usable:
        raise StuckInUse
    return usable
