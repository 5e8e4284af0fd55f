"""A dataset's versions over time: refresh and prune.

A refresh snapshots the source and registers a new version when the content changed; a failure leaves
the previous version serving and is recorded in the registry (for /metrics and `dataset list`), in the
log and in the audit log, with a message that names the source and never a secret. One refresh or prune
per dataset runs at a time, across processes (a file lock that dies with its holder). Run as a module,
it refreshes the datasets the server's `schedule` hands it on stdin.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..audit import AuditLog
from ..config.settings import Settings
from .snapshots import TMP_PREFIX, Snapshot, missing_roles, take_snapshot
from .sources import SourceError, source_for
from .versions import Version, Versions

log = logging.getLogger("remote_magic_server.data")


@dataclass(frozen=True)
class Refreshed:
    version: Version
    new: bool
    repaired: str | None = None


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
            declared_only = settings.policy_for(name).noisy
            snapshot = take_snapshot(source, folder, config.id_column, config.label_columns, declared_only)
        except SourceError as exc:
            _failed(settings, versions, name, source.description, exc)
            raise
        except Exception as exc:
            log.exception("dataset_refresh_error", extra={"dataset": name})
            error = source.fail("unreadable", f"could not be read ({type(exc).__name__})")
            _failed(settings, versions, name, source.description, error)
            raise error from None
        version, new = versions.add(name, snapshot, source.description)
    # What a total staging changed goes with the refresh record's message, which only the owner's CLI
    # and doctor print (the catalog and /metrics read the outcome and the reason, never the message).
    repaired = snapshot.note or None
    versions.record_refresh(name, "new_version" if new else "unchanged", version.number, message=repaired)
    log.info(
        "dataset_refreshed",
        extra={
            "dataset": name,
            "version": version.number,
            "new": new,
            "rows": version.rows,
            **({"repairs": snapshot.repairs.as_log()} if snapshot.repairs else {}),
            **({"left_out_columns": source.left_out} if source.left_out else {}),
        },
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
    return Refreshed(version, new, repaired)


def trial(settings: Settings, name: str, folder: Path) -> tuple[Snapshot, SourceError | None]:
    """A snapshot of the dataset's source into `folder`, registered nowhere: what the doctor checks before
    a first version exists. Raises SourceError, with the same words a refresh would log. A label that is
    no column does not stop it: the error a refresh would raise for that comes back beside the snapshot,
    so the doctor still checks the rest of the declarations on the rows (one mistake hides no other)."""
    config = settings.datasets[name]
    source = source_for(config.source_config, config.id_column)
    try:
        declared_only = settings.policy_for(name).noisy
        snapshot = take_snapshot(source, folder / name, config.id_column, [], declared_only)
    except SourceError:
        raise
    except Exception as exc:
        raise source.fail("unreadable", f"could not be read ({type(exc).__name__})") from None
    problems = missing_roles([column for column, _ in snapshot.columns], None, config.label_columns)
    return snapshot, source.fail("invalid_snapshot", "; ".join(problems)) if problems else None


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
