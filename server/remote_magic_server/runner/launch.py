"""The first code every child of the forkserver runs: a confined worker, or a cluster job's driver.

The child ties its life to the server's and steps back in CPU priority (a killed server leaves no worker
behind, and the API stays responsive while workers train), then runs `worker.main` (`run`) or the job
driver (`drive`, which never sees the payload); `serve` turns whatever ends the child's task into one
protocol message. The executors start children by this module's name. Kept free of heavy imports so the
forkserver can preload it cheaply.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable
from multiprocessing import forkserver
from multiprocessing.connection import Connection
from pathlib import Path

from remote_magic.contract.codes import Refusal

from ..logs import configure_logging
from ..protocol import Failure
from .channel import Channel

log = logging.getLogger("remote_magic_server.worker")

WORKER_NICE = 5
PR_SET_PDEATHSIG = 1


def run(*args: object) -> None:
    """Set up the child, then run the task (`worker.main.run`), or `ready` to warm the forkserver."""
    set_up()
    if args:
        from ..worker import main

        main.run(*args)  # type: ignore[arg-type]


def drive(*args: object) -> None:
    """Set up the child, then drive a cluster job (`cluster.driver.run`): no user bytes reach it."""
    set_up()
    from ..cluster import driver

    driver.run(*args)  # type: ignore[arg-type]


def set_up() -> None:
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


def serve(job_dir: str, conn: Connection, body: Callable[[Path, Channel], None]) -> None:
    """Run `body` in a worker-like process: a refusal becomes a `failure` with its fixed code, anything
    unexpected `internal_error` (its traceback in the server log only); then the process ends."""
    channel = Channel(conn)
    folder = Path(job_dir)
    try:
        body(folder, channel)
    except Refusal as exc:
        channel.send(Failure(code=exc.code, message=exc.message[:500]))
    except MemoryError:
        channel.send(Failure(code="out_of_memory", message="the job ran out of memory"))
    except Exception:  # noqa: BLE001 - every failure must become a fixed code
        log.exception("task %s failed", folder.name)
        channel.send(Failure(code="internal_error", message="the job failed on the server"))
    finally:
        conn.close()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
