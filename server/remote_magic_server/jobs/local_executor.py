"""The local executor: one fresh, sandboxed worker process per task, forked from a preloaded forkserver.

The forkserver's parent preloaded numpy, pandas, xgboost and duckdb (worker/preload.py), so a worker
costs a fork, not an import, and this process never imports them: the worker is started by module name.
Once warmed, a task goes to a warm worker of the pool (worker_pool.py: forked and, once it has waited
a moment idle, its DuckDB open before the task existed, still one process per task) when one is waiting,
else to a fresh one. Messages travel as JSON (a DP training's noise requests as noise frames) over a
duplex pipe (never pickle) and are validated here. A worker that dies without a word (a segfault in
XGBoost's parser, the OOM killer, the CPU limit) becomes a fixed code.
A worker's resident memory is watched here (whenever a wait for its next message times out, and at most every
`MEMORY_CHECK_S` while messages stream), as Dask's nanny watches its workers: past the task's
`memory_mb` it is stopped and the task ends `out_of_memory` (its hard data limit is a multiple of that,
sandbox.DATA_BACKSTOP, because libraries reserve much more than they touch).
"""

from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing
import os
import signal
import time
from multiprocessing.connection import Connection
from pathlib import Path

from ..protocol import (
    MAX_MESSAGE_BYTES,
    Assignment,
    Failure,
    ParentMessage,
    ProgressNote,
    Task,
    WorkerMessage,
    read_message,
)
from .executor import InvalidReport, WorkerGone
from .worker_pool import Warm, WorkerPool

LAUNCH = "remote_magic_server.runner.launch"
PRELOAD = ["remote_magic_server.worker.preload", __name__]

_DEATH_BY_STAGE = {
    "starting": Failure(
        code="invalid_model", message="the model could not be decoded: its bytes are corrupt or hostile"
    ),
}
_DEFAULT_DEATH = Failure(code="worker_crashed", message="the job's worker process stopped unexpectedly")
_OUT_OF_MEMORY = Failure(code="out_of_memory", message="the job ran out of memory")
# While messages stream in (a DP training's ~100 noise round trips a small job), the worker's memory is
# read at most this often, not after every message: each read of /proc costs the parent 40-80 us.
MEMORY_CHECK_S = 0.05
# OpenMP threads that wait (XGBoost's, between its many small parallel steps) sleep at once rather than
# spin, libgomp's default: a spinning thread holds a core its sibling may need, and beside any other
# load (other workers, the API, whatever else runs on the host) a small job's training took 5-10x its
# CPU and wall time (issue 22: 20 rounds on 8k rows at load 9, 1078 ms of worker CPU and 1792 ms a
# `Client.train` spinning; 153 ms and 277 ms sleeping). Set before the forkserver starts (libgomp reads
# it when XGBoost loads there); a value the server was started with is kept (but ACTIVE made the 10^6-row
# job of benchmarks/large_job.py 5x slower on a quiet 2-core host too: docs/deployment.md).
WORKER_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
_DEATH_BY_SIGNAL = {
    -signal.SIGXCPU: Failure(
        code="cpu_limit", message="the job used more CPU time than this server allows and was stopped"
    ),
}


def start_by_name(module: str, function: str, *args: object) -> None:
    """The process target: import `module` in the child and call `function`, so the parent only names it."""
    getattr(importlib.import_module(module), function)(*args)


def process_mark(pid: int) -> str | None:
    """The start time of a process (Linux: clock ticks since boot), to tell it from a reused pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None  # a zombie has already stopped running
    return fields[19]


def resident_bytes(pid: int) -> int:
    """A process's anonymous resident memory, what it holds and the kernel cannot drop (0 when it is
    gone). File pages are left out: the libraries' code, and the external-memory pages XGBoost maps
    from the job folder, are page cache the kernel reclaims under pressure."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return 0


class LocalExecution:
    def __init__(
        self,
        process: multiprocessing.process.BaseProcess,
        conn: Connection,
        memory_mb: int | None = None,
        warm: bool = False,
        message_mb: int | None = None,
    ):
        self.process = process
        self.conn = conn
        self.stage = "starting"
        self.memory_bytes = memory_mb * 2**20 if memory_mb else None
        # A message may be as large as the worker's memory (a release over every distinct text value
        # of a column: 8 bytes each). A fixed cap below that failed a job exactly when the admitted rows
        # held one value too many: a membership oracle. The cap is the owner's, never the rows'.
        self.message_bytes = max(MAX_MESSAGE_BYTES, (message_mb or memory_mb or 0) * 2**20)
        self._memory_read_at = -math.inf
        self.warm = warm  # a warm worker of the pool, not one forked for this task

    @property
    def ref(self) -> tuple[int, str | None]:
        pid = self.process.pid or 0
        return pid, process_mark(pid)

    def receive(self, timeout: float) -> WorkerMessage | None:
        waiting = self.conn.poll(timeout)
        now = time.monotonic()
        if self.memory_bytes is not None and (not waiting or now - self._memory_read_at >= MEMORY_CHECK_S):
            self._memory_read_at = now
            if resident_bytes(self.process.pid or 0) > self.memory_bytes:
                self.kill()
                raise WorkerGone(_OUT_OF_MEMORY)
        if not waiting:
            return None
        try:
            data = self.conn.recv_bytes(self.message_bytes)
        except (EOFError, OSError):
            raise WorkerGone(self._death()) from None
        try:
            message = read_message(data)
        except ValueError:  # pydantic's ValidationError is one
            raise InvalidReport("the worker's message is not a protocol message") from None
        if isinstance(message, ProgressNote):
            self.stage = message.stage
        return message

    def _death(self) -> Failure:
        self.process.join(timeout=5)
        return _DEATH_BY_SIGNAL.get(self.process.exitcode or 0) or _DEATH_BY_STAGE.get(
            self.stage, _DEFAULT_DEATH
        )

    @property
    def exitcode(self) -> int | None:
        return self.process.exitcode

    def reply(self, decision: ParentMessage) -> None:
        with contextlib.suppress(OSError):
            self.conn.send_bytes(decision.model_dump_json().encode())

    def kill(self) -> None:
        self.process.kill()

    def close(self) -> None:
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=5)
        self.conn.close()


class LocalExecutor:
    def __init__(self, preload: list[str] = PRELOAD, warm_workers: int = 0) -> None:
        for name, value in WORKER_ENVIRONMENT.items():
            os.environ.setdefault(name, value)
        self.ctx = multiprocessing.get_context("forkserver")
        self.ctx.set_forkserver_preload(preload)
        self.pool = WorkerPool(self._start_warm, warm_workers) if warm_workers else None

    def warm(self) -> None:
        """Start the forkserver (its preload takes seconds), then fill the pool of warm workers."""
        process = self.ctx.Process(target=start_by_name, args=(LAUNCH, "ready"))
        process.start()
        process.join()
        if self.pool is not None:
            self.pool.open()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()

    def start(self, task: Task, folder: Path, name: str) -> LocalExecution:
        (folder / "task.json").write_text(task.model_dump_json())
        while self.pool is not None and (warm := self.pool.take()) is not None:
            process, conn = warm
            try:
                conn.send_bytes(Assignment(folder=str(folder)).model_dump_json().encode())
            except OSError:  # it died as it was taken: the next one, or a fresh one
                conn.close()
                process.join(timeout=5)
                continue
            return LocalExecution(process, conn, task.limits.memory_mb, warm=True)
        return self.spawn("run", folder, name, task.limits.memory_mb)

    def _start_warm(self) -> Warm:
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=start_by_name, args=(LAUNCH, "wait", child_conn), name="warm-worker"
        )
        process.start()
        child_conn.close()
        return process, parent_conn

    def spawn(self, entry: str, folder: Path, name: str, memory_mb: int | None = None) -> LocalExecution:
        """Fork a child that runs `runner.launch.<entry>` on the job folder, with a pipe to it."""
        parent_conn, child_conn = self.ctx.Pipe(duplex=True)
        process = self.ctx.Process(
            target=start_by_name, args=(LAUNCH, entry, str(folder), child_conn), name=name
        )
        process.start()
        child_conn.close()
        return LocalExecution(process, parent_conn, memory_mb)

    def reap(self, ref: tuple[int, str | None], timeout: float = 5.0) -> bool:
        pid, mark = ref
        if mark is None or process_mark(pid) != mark:
            return False
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + timeout
        while process_mark(pid) == mark and time.monotonic() < deadline:
            time.sleep(0.02)
        return True
