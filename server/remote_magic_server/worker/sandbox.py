"""Confine the worker process before it reads a byte of the payload.

Applied first thing in every worker, in this order, each step with plain syscalls (no exec, so the
forkserver's preloaded modules stay usable):

1. the dataset file is opened while the process can still see it; DuckDB then reads it through
   `/proc/self/fd/N`, so the sandbox needs no path to it;
2. a fresh network namespace (no interface but a downed loopback), as root directly, otherwise inside a
   new user namespace;
3. resource limits: CPU seconds (SIGXCPU, then SIGKILL), address space, file size, open files, no core
   dumps, and a process count once the uid is unprivileged;
4. Landlock (Linux >= 5.13): reads only below the interpreter's code and the system's library folders
   plus the dataset file, writes only below the job directory, no execve at all, no TCP connect/bind
   (ABI >= 4), no signals to processes outside the sandbox (ABI >= 6);
5. when the server runs as root: an unprivileged uid/gid (default 65534, "nobody"), so file permissions
   protect secrets inside the readable system folders (/etc/shadow) too. The job directory is handed
   to that uid first; the dataset file's group is kept as the only supplementary group, so a data
   owner can grant read access with a group (chmod 640) rather than to everyone.

bubblewrap is not used: it needs an exec of a fresh interpreter per job, which would throw away the
preloaded forkserver; the same isolation comes from steps 2-5 in-process. The returned dict says what
was applied; the job status shows it, so a data owner can see what isolation a job really had.
"""

from __future__ import annotations

import ctypes
import logging
import os
import resource
import signal
import stat
import sys
from pathlib import Path

log = logging.getLogger("remote_magic_server.worker")

CLONE_NEWNET = 0x40000000
CLONE_NEWUSER = 0x10000000
PR_SET_NO_NEW_PRIVS = 38
PR_SET_PDEATHSIG = 1
DATA_BACKSTOP = 3  # the hard data limit, in worker memories (the resident watch is at one)

_SYS_LANDLOCK_CREATE_RULESET = 444
_SYS_LANDLOCK_ADD_RULE = 445
_SYS_LANDLOCK_RESTRICT_SELF = 446
_LANDLOCK_CREATE_RULESET_VERSION = 1
_LANDLOCK_RULE_PATH_BENEATH = 1

_FS_EXECUTE = 1 << 0
_FS_WRITE_FILE = 1 << 1
_FS_READ_FILE = 1 << 2
_FS_READ_DIR = 1 << 3
_FS_WRITE_TREE = sum(1 << bit for bit in range(4, 13))  # remove/make dir, file, fifo, sock, symlink...
_FS_MAKE_DIR = 1 << 7
_FS_MAKE_REG = 1 << 8
_FS_REFER = 1 << 13  # ABI 2
_FS_TRUNCATE = 1 << 14  # ABI 3
_FS_IOCTL_DEV = 1 << 15  # ABI 5
_NET_BIND_TCP = 1 << 0  # ABI 4
_NET_CONNECT_TCP = 1 << 1
_SCOPE_ABSTRACT_UNIX = 1 << 0  # ABI 6
_SCOPE_SIGNAL = 1 << 1

_READ = _FS_READ_FILE | _FS_READ_DIR
_SYSTEM_READ_PATHS = ("/usr", "/lib", "/lib64", "/etc", "/proc", "/sys", "/dev/urandom", "/dev/random")
_DEVICE_READ_WRITE = ("/dev/null", "/dev/zero")

_libc = ctypes.CDLL(None, use_errno=True)


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]  # fmt: skip


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _set_limit(which: int, soft: int, hard: int | None = None) -> None:
    hard = soft if hard is None else hard
    _, current_hard = resource.getrlimit(which)
    if current_hard != resource.RLIM_INFINITY:
        soft, hard = min(soft, current_hard), min(hard, current_hard)
    resource.setrlimit(which, (soft, hard))


def apply_limits(cpu_seconds: int, memory_mb: int, file_mb: int = 1024, open_files: int = 512) -> None:
    """CPU seconds (SIGXCPU, then SIGKILL), data, file size, open files; no core dumps.

    `memory_mb` (the worker's memory) is watched as resident memory by the parent
    (jobs/local_executor.py); the data limit here, DATA_BACKSTOP times it, is the hard ceiling under that
    watch. It is on data (RLIMIT_DATA), not address space: DuckDB's allocator, XGBoost's external-memory
    pages, per-thread arenas and CUDA reserve far more than they touch (a 4 GiB table trained in 1.9 GiB
    resident held 4.5 GiB of data mappings), and a limit on reservations refused tables that fit."""
    _set_limit(resource.RLIMIT_CPU, cpu_seconds, cpu_seconds + 5)
    _set_limit(resource.RLIMIT_DATA, memory_mb * DATA_BACKSTOP * 2**20)
    _set_limit(resource.RLIMIT_FSIZE, file_mb * 2**20)
    _set_limit(resource.RLIMIT_NOFILE, open_files)
    _set_limit(resource.RLIMIT_CORE, 0)


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


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


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 when Landlock is unavailable."""
    version = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, None, 0, _LANDLOCK_CREATE_RULESET_VERSION)
    return max(int(version), 0)


def _code_paths() -> list[str]:
    """Where the interpreter and the imported packages live: needed for late imports."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path}
    return sorted(p for p in paths if p and os.path.isabs(p) and os.path.exists(p))


def _add_rule(ruleset: int, path: str, access: int) -> None:
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError:
        return
    try:
        if not os.path.isdir(path):
            access &= _FS_EXECUTE | _FS_WRITE_FILE | _FS_READ_FILE | _FS_TRUNCATE | _FS_IOCTL_DEV
        attr = _PathBeneathAttr(allowed_access=access, parent_fd=fd)
        if _libc.syscall(_SYS_LANDLOCK_ADD_RULE, ruleset, _LANDLOCK_RULE_PATH_BENEATH, ctypes.byref(attr), 0):
            raise OSError(ctypes.get_errno(), f"landlock_add_rule failed for {path}")
    finally:
        os.close(fd)


def gpu_devices() -> list[str]:
    """The NVIDIA device files a CUDA job opens (control, unified memory, the GPUs themselves)."""
    return sorted(str(p) for p in Path("/dev").glob("nvidia*") if not p.is_dir())


def restrict_filesystem(read_files: list[str], write_dir: str, devices: list[str] = ()) -> str:
    """Landlock: read system and code folders and `read_files`, write only below `write_dir`, no exec,
    no TCP. Return what was applied ('landlock-abiN', or 'none' on kernels without Landlock)."""
    abi = landlock_abi()
    if abi < 1:
        return "none"
    handled_fs = _FS_EXECUTE | _FS_WRITE_FILE | _READ | _FS_WRITE_TREE
    handled_fs |= (_FS_REFER if abi >= 2 else 0) | (_FS_TRUNCATE if abi >= 3 else 0)
    handled_fs |= _FS_IOCTL_DEV if abi >= 5 else 0
    attr = _RulesetAttr(
        handled_access_fs=handled_fs,
        handled_access_net=(_NET_BIND_TCP | _NET_CONNECT_TCP) if abi >= 4 else 0,
        scoped=(_SCOPE_ABSTRACT_UNIX | _SCOPE_SIGNAL) if abi >= 6 else 0,
    )
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _libc.syscall(_SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), size, 0)
    if ruleset < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset failed")
    try:
        for path in (*_SYSTEM_READ_PATHS, *_code_paths(), *read_files):
            _add_rule(ruleset, path, _READ)
        # New regular files and folders only: no unlink or rename (the server's task.json and model.pkl
        # stay as written), no symlinks, fifos or device nodes the root scheduler could be tricked by.
        writable = _READ | _FS_WRITE_FILE | _FS_MAKE_REG | _FS_MAKE_DIR | (_FS_TRUNCATE if abi >= 3 else 0)
        for path in _DEVICE_READ_WRITE:
            _add_rule(ruleset, path, _FS_READ_FILE | _FS_WRITE_FILE)
        for path in devices:  # a GPU is driven by ioctls on its device files
            _add_rule(ruleset, path, _FS_READ_FILE | _FS_WRITE_FILE | (_FS_IOCTL_DEV if abi >= 5 else 0))
        _add_rule(ruleset, write_dir, writable)
        if _libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise OSError(ctypes.get_errno(), "PR_SET_NO_NEW_PRIVS failed")
        if _libc.syscall(_SYS_LANDLOCK_RESTRICT_SELF, ruleset, 0):
            raise OSError(ctypes.get_errno(), "landlock_restrict_self failed")
    finally:
        os.close(ruleset)
    return f"landlock-abi{abi}"


def _hand_over(job_dir: Path, uid: int, gid: int) -> None:
    """Let the sandbox uid create files in the job directory; the server's files in it stay root's
    (readable, not writable), and Landlock forbids replacing them."""
    os.chown(job_dir, uid, gid, follow_symlinks=False)


def drop_privileges(uid: int, gid: int, keep_group: int | None) -> str:
    """Become `uid`/`gid` for good (real, effective and saved ids); return the uid as text."""
    os.setgroups([keep_group] if keep_group is not None else [])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
        raise OSError("the worker could not drop its privileges")
    # Changing ids clears the parent-death signal that jobs/launch.py armed: arm it again, so the
    # worker still dies with the server.
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    return str(uid)


def open_dataset(path: str) -> str:
    """Open the dataset now, before confinement; return the path the confined process reads it by."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    return f"/proc/self/fd/{fd}"


def unreadable_code_path() -> str | None:
    """The first installed-package folder on sys.path that other users cannot read, or None.

    A worker that dropped to the sandbox uid must still import what its libraries load lazily, so the
    uid is dropped only when the packages are readable by it (the standard library is preloaded).
    """
    base = Path(sys.base_prefix).resolve()
    for entry in filter(None, sys.path):
        path = Path(entry).resolve()
        in_stdlib = (path == base or base in path.parents) and "site-packages" not in path.parts
        if not path.is_dir() or in_stdlib:
            continue
        for folder in (path, *path.parents):
            mode = folder.stat().st_mode
            if not mode & stat.S_IXOTH or (folder == path and not mode & stat.S_IROTH):
                return str(path)
    return None


def confine(
    cpu_seconds: int,
    memory_mb: int,
    job_dir: str,
    dataset: str | None,
    uid: int = 65534,
    gid: int = 65534,
    file_mb: int = 1024,
    gpu: bool = False,
) -> dict[str, str]:
    """Apply every confinement this machine supports; return what was applied.

    The process is left in the job directory: its files are reached by relative paths, which works
    even when a folder above it is closed to the sandbox uid. `uid`/`gid` apply only as root. Raises
    OSError if a step the kernel claims to support fails: a job never runs with less than it reports.

    The process must be one thread: the network namespace and Landlock confine the calling thread and
    what it starts later, never a thread that already runs (a warm worker opens DuckDB without one)."""
    threads = len(os.listdir("/proc/self/task")) if os.path.isdir("/proc/self/task") else 1
    if threads != 1:
        raise OSError(f"the worker has {threads} threads before its confinement; it must have one")
    folder = Path(job_dir)
    as_root = os.geteuid() == 0
    dataset_gid = os.stat(dataset).st_gid if dataset else 0
    if as_root:
        _hand_over(folder, uid, gid)
    os.chdir(folder)
    network = isolate_network()
    apply_limits(cpu_seconds, memory_mb, file_mb)
    applied = {"network": network, "limits": "rlimits cpu,data,fsize,nofile,core; resident memory watched"}
    devices = gpu_devices() if gpu else []
    applied["filesystem"] = restrict_filesystem([dataset] if dataset else [], str(folder), devices)
    if gpu:
        applied["gpu"] = ",".join(Path(d).name for d in devices) or "none found"
    closed = unreadable_code_path() if as_root else None
    if as_root and closed is None:
        _set_limit(resource.RLIMIT_NPROC, 1024)
        applied["uid"] = drop_privileges(uid, gid, dataset_gid if dataset_gid != 0 else None)
    elif as_root:
        log.warning("workers keep the server's uid: %s is not readable by other users", closed)
        applied["uid"] = (
            f"{os.getuid()} (server's own: its Python packages are not readable by the sandbox uid)"
        )
    else:
        applied["uid"] = f"{os.getuid()} (server's own)"
    return applied
