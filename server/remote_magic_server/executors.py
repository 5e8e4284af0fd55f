"""The executors a server can run tasks on, by the config's `[executor] kind`.

Part of the composition root: the scheduler gets an `Executor` (jobs/executor.py) and never learns which
one. Adding an executor adds its class in jobs/ and one line in `EXECUTORS`.
"""

from __future__ import annotations

from collections.abc import Callable

from .config.settings import ExecutorSection
from .jobs.executor import Executor


def _local(config: ExecutorSection) -> Executor:
    from .jobs.local_executor import LocalExecutor

    return LocalExecutor(warm_workers=config.warm_workers)


def _dask(config: ExecutorSection) -> Executor:
    from .jobs.dask_executor import DaskExecutor

    return DaskExecutor(config)


EXECUTORS: dict[str, Callable[[ExecutorSection], Executor]] = {"local": _local, "dask": _dask}


def make_executor(config: ExecutorSection) -> Executor:
    """The executor the config's `[executor]` table names."""
    if config.kind not in EXECUTORS:
        raise ValueError(f"unknown executor kind {config.kind!r}")
    return EXECUTORS[config.kind](config)
