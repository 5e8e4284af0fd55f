"""Cluster workers whose thread a lost job's training still holds: found before a job stages, restarted.

When a training worker is lost, the survivors' training should give up within `collective_timeout_s`.
XGBoost's collective does not always: a survivor that was paused (SIGSTOP) while its peer was killed can
stay blocked in an allreduce that never returns (seen with xgboost 3.2: the collective's loop thread
waits for work with no deadline while the training thread waits for the loop). Dask cannot stop a
running thread, so such a worker keeps the task, which no client wants any more, forever, and every
later task sent there (the next job's staging) queues behind it: the next job hung.

So before staging, the job driver asks every worker which of its threads run a task no client wants
(Dask's `cancelled` state). A task that has not ended within the patience (the collective's timeout plus
a margin) is stuck. A stuck worker is restarted through its nanny only once nothing on it belongs to
another job (no data, no task in hand or queued), so a restart never ends another analyst's job (a
cancelled job's honest long task looks the same as a wedged one from here); the job waits for that up
to `start_timeout_s`, then fails `cluster_busy` (StuckInUse). It cannot just leave such a worker out:
the scheduler sees its thread as free and would send it the job's unplaced tasks, which would queue
behind the stuck one forever. A worker that cannot be restarted (no nanny) is left out of staging. A
worker that does not answer (paused) is not judged here; the job's own checks handle it.
"""

from __future__ import annotations

import logging
import time

from distributed import Client

log = logging.getLogger("remote_magic_server.cluster")

POLL_S = 0.2
ASK_TIMEOUT_S = 5.0
RESTART_TIMEOUT_S = 60.0


def _unwanted(dask_worker) -> list[str]:
    """Run on a worker: the tasks its threads still execute that the scheduler has let go."""
    running = dask_worker.state.executing | dask_worker.state.long_running
    return sorted(str(task.key) for task in running if task.state == "cancelled")


def _ask(client: Client, workers: list[str] | None = None) -> dict[str, set[str]]:
    """Each answering worker's unwanted tasks; {} when the cluster does not answer in time."""
    try:
        answers = client.run(_unwanted, workers=workers, on_error="return", callback_timeout=ASK_TIMEOUT_S)
    except (OSError, TimeoutError):
        return {}
    return {address: set(keys) for address, keys in answers.items() if isinstance(keys, list) and keys}


def stuck_workers(client: Client, patience_s: float) -> set[str]:
    """The workers still running, after `patience_s`, a task that was already unwanted when asked first."""
    pending = _ask(client)
    deadline = time.monotonic() + patience_s
    while pending and time.monotonic() < deadline:
        time.sleep(POLL_S)
        now = _ask(client, list(pending))
        pending = {address: keys & now.get(address, set()) for address, keys in pending.items()}
        pending = {address: keys for address, keys in pending.items() if keys}
    return set(pending)


class StuckInUse(Exception):
    """A stuck worker that other jobs still use, after the wait: this job cannot run now."""


def _in_use(client: Client, workers: set[str]) -> set[str]:
    """The workers among `workers` that hold data, or have a task in hand or queued, for a live client."""
    held = client.has_what(sorted(workers))
    busy = client.processing(sorted(workers))
    return {address for address in workers if held.get(address) or busy.get(address)}


def free_stuck_workers(client: Client, patience_s: float, wait_s: float) -> set[str]:
    """Restart the stuck workers once no other job uses them (waiting up to `wait_s`, else StuckInUse);
    return those that could not be restarted (to be left out of staging)."""
    stuck = stuck_workers(client, patience_s)
    if not stuck:
        return set()
    in_use = _in_use(client, stuck)
    log.warning("cluster_worker_stuck", extra={"workers": len(stuck), "in_use": len(in_use)})
    deadline = time.monotonic() + wait_s
    while in_use and time.monotonic() < deadline:
        time.sleep(POLL_S)
        in_use = _in_use(client, in_use)
    if in_use:
        raise StuckInUse
    try:
        outcome = client.restart_workers(sorted(stuck), timeout=RESTART_TIMEOUT_S, raise_for_error=False)
    except (OSError, TimeoutError, ValueError):
        outcome = {}
    restarted = {address for address, status in outcome.items() if status == "OK"}
    if restarted:
        log.warning("cluster_worker_restarted", extra={"workers": len(restarted)})
    return stuck - restarted
