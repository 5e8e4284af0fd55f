"""The executor seam: where a validated task runs, and how its messages come back.

The scheduler keeps the queue and the state machine; an `Executor` starts a task and hands back an
`Execution` that yields the worker's typed messages (protocol.py), takes the parent's decisions, and can
be killed. `LocalExecutor` (local_executor.py) runs one sandboxed process per task; `DaskExecutor`
(dask_executor.py) runs training on a cluster. This module names neither: the composition root picks one
by `[executor] kind` (executors.py), so the seam never imports its implementations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from ..protocol import Failure, ParentMessage, Task, WorkerMessage


class WorkerGone(Exception):
    """The worker ended without a final message; `failure` is the fixed code its end maps to."""

    def __init__(self, failure: Failure):
        super().__init__(failure.message)
        self.failure = failure


class InvalidReport(Exception):
    """The worker sent something that is not a protocol message."""


class Execution(Protocol):
    """One running task."""

    warm: bool  # whether a worker started ahead of the task took it (the server log says which)

    @property
    def ref(self) -> tuple[int, str | None]:
        """What a restarted server needs to find this worker again (for a local process: pid, start mark)."""
        ...

    def receive(self, timeout: float) -> WorkerMessage | None:
        """The next message, or None when none came within `timeout` seconds.

        Raises WorkerGone when the worker ended without a final message, InvalidReport when a message
        does not validate."""
        ...

    def reply(self, decision: ParentMessage) -> None: ...

    def kill(self) -> None: ...

    def close(self) -> None:
        """Wait for the worker to end (killing it if it does not) and release its resources."""
        ...


class Executor(Protocol):
    def start(self, task: Task, folder: Path, name: str) -> Execution:
        """Write the task to `folder` and start it there."""
        ...

    def warm(self) -> None:
        """Get ready ahead of the first task (e.g. start a forkserver and its warm workers)."""
        ...

    def close(self) -> None:
        """Stop what `warm` started and still waits for a task; running tasks are the caller's."""
        ...

    def reap(self, ref: tuple[int, str | None]) -> bool:
        """Stop a worker left over by a previous server process, if it is still that worker."""
        ...
