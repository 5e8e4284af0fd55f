"""A dataset's versions over time: refresh, prune, first snapshots at start-up, and refreshes on a schedule.

A refresh snapshots the source and registers a new version when the content changed; a failure leaves
the previous version serving and is recorded in the registry (for /metrics and `dataset list`), in the
log and in the audit log, with a message that names the source and never a secret. One refresh or prune
per dataset runs at a time, across processes (a file lock that dies with its holder).

Inside the server, refreshes run in a child interpreter (`run_in_child`), so the API process never
reads a row or loads a database driver, and a crash or `kill -9` of a refresh takes nothing else down.
"""

from __future__ import annotations

import fcntl
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..jobs.audit import AuditLog
from ..settings import Settings
from .snapshots import TMP_PREFIX, take_snapshot
from .sources import SourceError, source_for
from .versions import Version, Versions

log = logging.getLogger("remote_magic_server.data")


@dataclass(frozen=True)
class Refreshed:
    version: Version
    new: bool


@contextmanager
def _dataset_lock(folder: Path) -> Iterator[None]:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def _sweep(folder: Path, in_use: set[str]) -> None:
    """Remove what a crashed refresh or an earlier prune left: temporary files and unlisted snapshots."""
    for path in folder.glob("*.parquet"):
        if path.name.startswith(TMP_PREFIX) or path.name not in in_use:
            path.unlink(missing_ok=True)


def refresh(settings: Settings, name: str, versions: Versions | None = None) -> Refreshed:
    """Snapshot the dataset's source; a new version if its content changed. Raises SourceError."""
    config = settings.datasets[name]
    versions = versions or Versions(settings.snapshots_dir)
    source = source_for(config.source_config, config.id_column)
    folder = versions.folder(name)
    with _dataset_lock(folder):
        _sweep(folder, versions.files_in_use(name))
        try:
            snapshot = take_snapshot(source, folder, config.id_column, config.label_columns)
        except SourceError as exc:
            _failed(settings, versions, name, source.description, exc)
            raise
        except Exception as exc:
            log.exception("dataset_refresh_error", extra={"dataset": name})
            error = source.fail("unreadable", f"could not be read ({type(exc).__name__})")
            _failed(settings, versions, name, source.description, error)
            raise error from None
        version, new = versions.add(name, snapshot, source.description)
    versions.record_refresh(name, "new_version" if new else "unchanged", version.number)
    log.info(
        "dataset_refreshed",
        extra={"dataset": name, "version": version.number, "new": new, "rows": version.rows},
    )
    if new:
        AuditLog(settings.audit_path).record(
            "dataset_version_created",
            None,
            dataset=name,
            version=version.number,
            source=version.source,
            content_hash=version.content_hash,
            schema_hash=version.schema_hash,
        )
    return Refreshed(version, new)


def _failed(settings: Settings, versions: Versions, name: str, source: str, error: SourceError) -> None:
    versions.record_refresh(name, "failed", reason=error.reason, message=error.message)
    log.error(
        "dataset_refresh_failed",
        extra={"dataset": name, "source": source, "reason": error.reason, "detail": error.message},
    )
    AuditLog(settings.audit_path).record(
        "dataset_refresh_failed", None, dataset=name, source=source, reason=error.reason
    )


def prune(settings: Settings, name: str, keep: int, in_use: set[int]) -> list[Version]:
    """Drop all but the newest `keep` versions, never one in `in_use`; delete their unshared files."""
    versions = Versions(settings.snapshots_dir)
    folder = versions.folder(name)
    with _dataset_lock(folder):
        pruned = versions.prune(name, keep, in_use)
        _sweep(folder, versions.files_in_use(name))
    if pruned:
        AuditLog(settings.audit_path).record(
            "dataset_versions_pruned", None, dataset=name, versions=[v.number for v in pruned]
        )
    return pruned


def run_in_child(settings: Settings, names: list[str], timeout: float | None = None) -> int:
    """Refresh `names` in a fresh interpreter; its log lines join the server's. Returns how many failed."""
    order = json.dumps({"settings": settings.model_dump(mode="json"), "names": names})
    proc = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, text=True)
    try:
        proc.communicate(order, timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        log.error("dataset_refresh_timeout", extra={"datasets": names, "after_s": timeout})
        return len(names)
    return proc.returncode


def missing_versions(settings: Settings) -> list[str]:
    """Datasets that have no version yet."""
    versions = Versions(settings.snapshots_dir)
    try:
        return [name for name in settings.datasets if versions.latest(name) is None]
    finally:
        versions.close()


class Refresher:
    """Refresh every dataset with `refresh_every` on its schedule, each in a child interpreter."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.due = {name: ds.refresh_seconds for name, ds in settings.datasets.items() if ds.refresh_seconds}
        self.attempted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dataset-refresher", daemon=True)

    def start(self) -> Refresher:
        if self.due:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _next_times(self, versions: Versions) -> dict[str, float]:
        """When each dataset is due: an interval after its last attempt, by any process."""
        times = {}
        for name, every in self.due.items():
            last = versions.last_refresh(name)
            recorded = datetime.fromisoformat(last["at"]).timestamp() if last else 0.0
            times[name] = max(recorded, self.attempted.get(name, 0.0)) + every
        return times

    def _loop(self) -> None:
        versions = Versions(self.settings.snapshots_dir)
        while not self._stop.is_set():
            times = self._next_times(versions)
            now = time.time()
            ready = sorted(name for name, at in times.items() if at <= now)
            if ready:
                self.attempted.update(dict.fromkeys(ready, now))
                run_in_child(self.settings, ready, timeout=max(self.due[n] for n in ready))
                continue
            self._stop.wait(min(times.values()) - now)
        versions.close()


def _child_main() -> int:
    from ..logs import configure_logging

    order = json.loads(sys.stdin.read())
    settings = Settings.model_validate(order["settings"])
    configure_logging(settings.server.log_level)
    versions = Versions(settings.snapshots_dir)
    failed = 0
    for name in order["names"]:
        try:
            refresh(settings, name, versions)
        except SourceError:
            failed += 1
    return failed


if __name__ == "__main__":
    sys.exit(_child_main())
