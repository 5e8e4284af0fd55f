"""`remote-magic-server backup DEST` and `restore SRC`: a consistent copy of a running server's data
directory, and putting it back into an empty one.

The copy is taken in an order that keeps it consistent without stopping the server:
1. under the audit log's lock (appends wait for milliseconds), the job store with SQLite's online backup
   API and the audit log, so the head anchored in the copied store matches the copied log;
2. then every other SQLite database (the release ledger) with the same API: the ledger commits a
   release before the store marks its job done, so every job the copied store calls released has its
   row sets in the copied ledger;
3. then the job folders and every other file (snapshots, kept-aside audit logs): every job in the copied
   store has its folder (folders of later jobs are swept by the next start);
4. `manifest.json` lists every file with its size, SHA-256 and owner, and every folder's owner: a job
   folder holds files its worker wrote as the sandbox uid, and a job re-run after the restore rewrites them.
`restore` checks the manifest, copies into an empty data directory (as root, with the recorded owners;
modes travel with the copies), forgets the worker processes of jobs
that were running (they belong to the server that was copied: the restored one re-queues those jobs and
never signals those pids), and verifies the audit log against its anchored head.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from .audit import read_head, verify
from .config.settings import ConfigError, Settings
from .jobs.store import Store

MANIFEST = "manifest.json"
FORMAT = 1
_SQLITE_MAGIC = b"SQLite format 3\x00"
# The running server's lock; per-request scratch folders; federated trainings' sessions (binned rows,
# dropped at every start anyway).
_SKIP = {"server.lock", "describe", "sums", "federated"}


def _is_sqlite(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(16) == _SQLITE_MAGIC


def _copy_database(source: Path, target: Path) -> None:
    src = sqlite3.connect(str(source))
    dst = sqlite3.connect(str(target))
    try:
        src.backup(dst)
    finally:
        dst.close()
        src.close()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def backup(settings: Settings, dest: Path) -> dict:
    """Copy the data directory into `dest` (absent or empty); return the manifest."""
    data_dir = settings.server.data_dir
    if not settings.db_path.exists():
        raise ConfigError(f"no job store in {data_dir}: nothing to back up")
    if not _empty(dest):
        raise ConfigError(f"{dest} is not empty: back up into a new folder")
    dest.mkdir(parents=True, exist_ok=True)
    settings.audit_path.touch()
    with open(settings.audit_path, "a+b") as log:
        fcntl.flock(log, fcntl.LOCK_EX)
        try:
            _copy_database(settings.db_path, dest / settings.db_path.name)
            log.seek(0)
            (dest / settings.audit_path.name).write_bytes(log.read())
        finally:
            fcntl.flock(log, fcntl.LOCK_UN)
    databases = sorted(
        p
        for p in data_dir.iterdir()
        if p.is_file() and p != settings.db_path and p.suffix in (".sqlite", ".db") and _is_sqlite(p)
    )
    for database in databases:
        _copy_database(database, dest / database.name)
    done = {settings.db_path.name, settings.audit_path.name, *(d.name for d in databases)}
    for top in sorted(data_dir.iterdir()):
        if top.name in done or top.name in _SKIP or top.name.endswith(("-wal", "-shm", "-journal")):
            continue
        _copy_tree(top, dest / top.name)
    files = {
        str(p.relative_to(dest)): {"size": p.stat().st_size, "sha256": _sha256(p), "owner": _owner(p)}
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }
    folders = {str(p.relative_to(dest)): _owner(p) for p in sorted(dest.rglob("*")) if p.is_dir()}
    manifest = {
        "format": FORMAT,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "audit_head": read_head(dest / settings.db_path.name),
        "files": files,
        "folders": folders,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _owner(path: Path) -> list[int]:
    facts = path.stat()
    return [facts.st_uid, facts.st_gid]


def _chown(path: Path, owner: list[int] | None) -> None:
    """Give `path` its recorded owner; only root can, and only a root server runs workers as another uid."""
    if owner is not None and os.geteuid() == 0:
        os.chown(path, owner[0], owner[1], follow_symlinks=False)


def _copy(source: Path, target: Path) -> None:
    """Copy contents, mode, times and owner (like `cp -a`)."""
    shutil.copy2(source, target)
    _chown(target, _owner(source))


def _copy_tree(source: Path, target: Path) -> None:
    """Copy a file or folder; a file that vanishes meanwhile (a job folder swept) is skipped."""
    if source.is_file():
        with contextlib.suppress(FileNotFoundError):
            _copy(source, target)
        return
    for root, _dirs, names in os.walk(source):
        folder = target / Path(root).relative_to(source)
        folder.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            shutil.copystat(root, folder)
            _chown(folder, _owner(Path(root)))
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                _copy(Path(root) / name, folder / name)


def restore(settings: Settings, source: Path) -> str:
    """Put a backup into the (empty) data directory of `settings`; return a one-line summary."""
    data_dir = settings.server.data_dir
    try:
        manifest = json.loads((source / MANIFEST).read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{source} is not a remote-magic backup (no readable {MANIFEST})") from None
    if manifest.get("format") != FORMAT:
        raise ConfigError(f"{source}: backup format {manifest.get('format')} is not {FORMAT}")
    if not _empty(data_dir):
        raise ConfigError(f"restore goes into an empty data directory; {data_dir} has files")
    for name, facts in manifest["files"].items():
        path = source / name
        if not path.is_file() or _sha256(path) != facts["sha256"]:
            raise ConfigError(f"the backup is damaged: {name} is missing or differs from its manifest")
    data_dir.mkdir(parents=True, exist_ok=True)
    for name, facts in manifest["files"].items():
        (data_dir / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / name, data_dir / name)
        _chown(data_dir / name, facts.get("owner"))
    for name, owner in manifest.get("folders", {}).items():
        (data_dir / name).mkdir(parents=True, exist_ok=True)
        shutil.copystat(source / name, data_dir / name)
        _chown(data_dir / name, owner)
    store = Store(settings.db_path, settings.jobs_dir)
    try:
        store.forget_workers()
        jobs = sum(store.count_by_state().values())
    finally:
        store.close()
    verdict = verify(settings.audit_path, read_head(settings.db_path))
    if not verdict.ok:
        raise ConfigError(f"restored, but {verdict.describe()}")
    return f"restored {jobs} jobs and {len(manifest['files'])} files into {data_dir}; {verdict.describe()}"
