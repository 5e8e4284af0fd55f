"""The first code every child of the forkserver runs: a confined worker, or a cluster job's driver.

The child ties its life to the server's and steps back in CPU priority (a killed server leaves no worker
behind, and the API stays responsive while workers train), then runs `worker.main` (`run`; `wait` for a
warm worker of the executor's pool) or the job driver (`drive`, which never sees the payload): the top
of every child, the only module of runner/ that names worker/ or cluster/. The executors start children
by this module's name. Kept free of heavy imports so the forkserver can preload it cheaply.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
from multiprocessing import forkserver

from ..logs import configure_logging

WORKER_NICE = 5
PR_SET_PDEATHSIG = 1


def run(*args: object) -> None:
    """Set up the child, then run the task (`worker.main.run`), or `ready` to warm the forkserver."""
    _set_up()
    if args:
        from ..worker import main

        main.run(*args)  # type: ignore[arg-type]


def wait(*args: object) -> None:
    """Set up the child, then wait as a warm worker for one task (`worker.main.wait`)."""
    _set_up()
    from ..worker import main

    main.wait(*args)  # type: ignore[arg-type]


def drive(*args: object) -> None:
    """Set up the child, then drive a cluster job (`cluster.driver.run`): no user bytes reach it."""
    _set_up()
    from ..cluster import driver

    driver.run(*args)  # type: ignore[arg-type]


def _set_up() -> None:
    _release_forkserver()
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(WORKER_NICE)
    configure_logging("info")


def ready() -> None:
    """A no-op target that starts the forkserver ahead of the first job."""


def _release_forkserver() -> None:
    """Drop the child's copy of the server's keep-alive pipe to the forkserver.

    The forkserver exits when every holder of that pipe is gone; a worker that kept its copy would keep
    its own parent, the forkserver, alive after the server was killed, and PR_SET_PDEATHSIG would never
    fire. A worker starts no processes, so it has no use for the pipe."""
    server = getattr(forkserver, "_forkserver", None)
    fd = getattr(server, "_forkserver_alive_fd", None)
    if isinstance(fd, int):
        with contextlib.suppress(OSError):
            os.close(fd)
        server._forkserver_alive_fd = None  # type: ignore[union-attr]


def _die_with_parent() -> None:
    """SIGKILL this process when its parent (the forkserver, which exits with the server) dies."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent or parent == 1:
        os._exit(1)  # the parent died before the signal was armed
