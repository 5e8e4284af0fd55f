"""Confine the worker process before it reads a byte of the payload.

Applied first thing in every worker: resource limits, then a fresh network namespace (no interface but
a downed loopback) where the kernel allows it. The result says what was applied, and the job status
shows it, so a data owner can see what isolation a job really had.
"""

from __future__ import annotations

import ctypes
import os
import resource

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def apply_limits(cpu_seconds: int, memory_mb: int, file_mb: int = 1024, open_files: int = 512) -> None:
    """CPU seconds (SIGXCPU, then SIGKILL), address space, file size, open files; no core dumps."""
    _set_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)
    _set_limit(resource.RLIMIT_AS, memory_mb * 2**20)
    _set_limit(resource.RLIMIT_FSIZE, file_mb * 2**20)
    _set_limit(resource.RLIMIT_NOFILE, open_files)
    _set_limit(resource.RLIMIT_CORE, 0)


def _unshare(flags: int) -> bool:
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.unshare(flags) == 0


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def isolate_network() -> str:
    """Move into a new network namespace; return the mechanism used, or 'none' if the kernel refused."""
    if _unshare(CLONE_NEWNET):
        return "netns"
    uid, gid = os.getuid(), os.getgid()
    if _unshare(CLONE_NEWUSER | CLONE_NEWNET):
        try:
            _write("/proc/self/setgroups", "deny")
            _write("/proc/self/uid_map", f"{uid} {uid} 1")
            _write("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError:
            pass
        return "userns+netns"
    return "none"


def confine(cpu_seconds: int, memory_mb: int) -> dict[str, str]:
    """Apply every confinement this machine supports; return what was applied."""
    network = isolate_network()
    apply_limits(cpu_seconds, memory_mb)
    return {"network": network, "limits": "rlimits"}
