"""One task in one fresh, confined process: read the task, confine, run it, report.

The executor starts `runner.launch.run` from a forkserver whose parent preloaded numpy, pandas, xgboost and
duckdb (preload.py), so a worker costs a fork, not an import. A warm worker (`wait`, started ahead by the
executor's pool) has also opened its DuckDB before any job exists, once it has waited
`OPEN_AHEAD_AFTER_S` with none, and rehearsed staging on made-up rows; it then takes one job folder
from the parent and runs it exactly as `run` does (the same confinement, before the payload is read),
and ends with it: a worker never serves a second job. Every message to the parent is a typed protocol
message (protocol.py) as JSON over a pipe, never pickle. A refusal becomes a `failure` with its fixed
code; anything unexpected becomes `internal_error`, with its traceback in the server log (stderr) only,
never on the pipe.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from multiprocessing.connection import Connection
from pathlib import Path

import duckdb

from ..protocol import Assignment, Isolation, Task
from ..runner import model_job
from ..runner.channel import Channel, serve
from . import sandbox, staging

log = logging.getLogger("remote_magic_server.worker")
# A warm worker opens its DuckDB ahead only once it has waited this long with no job. A federated
# training's next step comes sooner (0.1 to 0.3 s after the last took its worker) and stages nothing: the
# DuckDB it never used cost 22 ms of CPU to open and 2 to close, a quarter of such a worker's CPU, on two
# shared cores part of the three servers' step time (docs/federated.md, "The wall time, measured again").
# A job that stages and comes sooner connects on its own path (about 10 ms), as a fresh worker does: short
# enough that jobs a person or small_job.py submits one after another (0.5 s or more apart) find it open.
OPEN_AHEAD_AFTER_S = 0.4


def _resident_mb() -> float:
    """This process's resident memory now (Linux), in MiB; 0 where /proc does not say."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return 0.0


def _cpu_s() -> float:
    """CPU seconds this process has used so far, every thread's (a benchmark compares a job's CPU with
    the same work in one process: unlike wall time, it holds on a busy machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _run(task: Task, folder: Path, channel: Channel, ahead: duckdb.DuckDBPyConnection | None = None) -> None:
    start_rss_mb = _resident_mb()  # what the fork inherited: the preloaded libraries
    start_cpu = _cpu_s()
    dataset = task.staging.dataset_path if task.staging is not None else None
    if task.staging is not None:
        # Opened now, read only after confinement: from here on the dataset is `/proc/self/fd/N` and
        # the job folder is the working directory (relative paths).
        task.staging.dataset_path = sandbox.open_dataset(task.staging.dataset_path)
    model_file = folder / "model.pkl"
    payload = open(model_file, "rb") if model_file.exists() else None  # noqa: SIM115
    limits = task.limits
    started = time.monotonic()
    applied = sandbox.confine(
        limits.cpu_seconds,
        limits.memory_mb,
        str(folder),
        dataset,
        limits.sandbox_uid,
        limits.sandbox_gid,
        limits.file_mb,
        limits.gpu,
    )
    channel.send(Isolation(applied=applied, seconds=time.monotonic() - started))
    started = time.monotonic()
    con = None
    if ahead is not None and task.staging is not None:
        con = staging.connect(task, Path("."), ahead)  # locked now: confined, before the payload is read
    elif ahead is not None:
        ahead.close()
    if task.kind == "describe":
        from . import describe_task

        report = describe_task.run(task, channel, con)
    elif task.kind == "sums":
        from . import sums_task

        report = sums_task.run(task, channel, con)
    elif task.kind == "review":
        from . import review_task

        report = review_task.run(payload.read() if payload is not None else b"")
    elif task.kind == "plan":
        from . import model_task

        report = model_task.plan_only(task, payload, channel)
    else:
        from . import model_task

        report = model_task.run(task, payload, channel, con)
    log.info(
        "task_done",
        extra={
            "task": folder.name,
            "kind": task.kind,
            "seconds": round(time.monotonic() - started, 3),
            "cpu_s": round(_cpu_s() - start_cpu, 3),
            "start_rss_mb": start_rss_mb,
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
    )
    if report is not None:
        channel.send(report)


def run(job_dir: str, conn: Connection) -> None:
    """Entry point of a worker process."""
    serve(job_dir, conn, lambda folder, channel: _run(_task(folder), folder, channel))


def wait(conn: Connection) -> None:
    """Entry point of a warm worker: wait for one job's folder (opening DuckDB once it has waited
    `OPEN_AHEAD_AFTER_S`), run it as `run` does, end.
    A pool that closes before handing it a job (the pipe ends) ends it quietly."""
    ahead = None if conn.poll(OPEN_AHEAD_AFTER_S) else _open_ahead()
    try:
        assignment = Assignment.model_validate_json(conn.recv_bytes())
    except (EOFError, OSError):
        os._exit(0)
    serve(assignment.folder, conn, lambda folder, channel: _run(_task(folder), folder, channel, ahead))


def _open_ahead() -> duckdb.DuckDBPyConnection:
    """The DuckDB of a warm worker, opened before its job, with staging and the admission's row counts
    rehearsed on made-up rows (`staging.rehearse`), so that the job's own take the later, cheaper path.
    Nothing of the rehearsal is kept but the connection, which holds no table."""
    con = staging.open_ahead()
    model_job.admission_share(staging.rehearse(con), True)
    log.info("opened_ahead", extra={"pid": os.getpid()})
    return con


def _task(folder: Path) -> Task:
    return Task.model_validate_json((folder / "task.json").read_text())
