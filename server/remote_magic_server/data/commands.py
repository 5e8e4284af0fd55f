"""What `remote-magic-server dataset list|versions|refresh|prune` does and prints, for the data owner.

The owner sees exact row counts and full hashes here (it is their data); the catalog that analysts see
shows rounded counts only.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..config.settings import Settings
from ..config.sources import staged_as
from . import lifecycle
from .sources import SourceError
from .versions import Version, Versions, schema_change

if TYPE_CHECKING:
    from ..doctor import Finding


def _line(version: Version) -> str:
    return (
        f"v{version.number}  {version.created}  {version.rows:,} rows  "
        f"schema {version.schema_hash[:12]}  content {version.content_hash[:12]}"
    )


def list_datasets(settings: Settings) -> int:
    versions = Versions(settings.snapshots_dir)
    for name, config in settings.datasets.items():
        latest = versions.latest(name)
        last = versions.last_refresh(name)
        where = config.source_config.describe()
        every = f"every {config.refresh_every}" if config.refresh_every else "on demand"
        current = f"v{latest.number} ({latest.rows:,} rows, {latest.created})" if latest else "no version"
        print(f"{name}: {where}; {current}; refreshed {every}")
        if last and last["outcome"] == "failed":
            print(f"  last refresh failed at {last['at']} ({last['reason']}): {last['message']}")
        elif last and last["message"]:
            print(f"  last refresh at {last['at']} changed rows: {last['message']}")
    return 0


def show_versions(settings: Settings, name: str) -> int:
    history = Versions(settings.snapshots_dir).history(name, include_pruned=True)
    if not history:
        print(f"{name}: no version yet (run `remote-magic-server dataset refresh {name}`)")
        return 0
    previous = None
    for version in history:
        if version.pruned:
            print(f"v{version.number}  pruned {version.pruned}")
            continue
        print(_line(version))
        change = schema_change(previous.columns, version.columns) if previous else None
        if change:
            parts = [f"+{c}" for c in change.added] + [f"-{c}" for c in change.dropped]
            parts += [f"~{c} {old} -> {new}" for c, old, new in change.retyped]
            print(f"    schema changed: {', '.join(parts)}")
        if version.inferred:
            print(f"    inferred types: {', '.join(version.inferred)}")
        previous = version
    return 0


def refresh_now(settings: Settings, name: str) -> int:
    # The refresh's log events are the server log's; here the lines below say it, so Python's last-resort
    # handler must not print a bare event name (`dataset_refresh_failed`) first.
    logger = logging.getLogger("remote_magic_server.data")
    if not any(isinstance(h, logging.NullHandler) for h in logger.handlers):
        logger.addHandler(logging.NullHandler())
    try:
        outcome = lifecycle.refresh(settings, name)
    except SourceError as exc:
        print(f"{name}: refresh failed ({exc.reason}): {exc.message}", file=sys.stderr)
        latest = Versions(settings.snapshots_dir).latest(name)
        serving = f"v{latest.number} keeps serving" if latest else "it has no version: jobs on it are refused"
        print(f"{name}: {serving}", file=sys.stderr)
        return 1
    if outcome.new:
        print(f"{name}: new version {_line(outcome.version)}")
    else:
        print(f"{name}: unchanged; v{outcome.version.number} keeps serving")
    if outcome.repaired:
        print(f"{name}: {staged_as(settings.datasets[name].source_config)}: {outcome.repaired}")
    for finding in declared_findings(settings, name, outcome.version.file):
        print(finding.line())
    return 0


def declared_findings(settings: Settings, name: str, file: Path) -> list[Finding]:
    """The doctor's data checks of the version a refresh made (a new column left as a default feature,
    a declaration that no longer matches the rows): what `doctor` would say about it, its warnings and
    fatal lines only."""
    from ..doctor import probe_files

    check = f"dataset {name}"
    found = probe_files(settings, {name: file})
    return [f for f in found if f.check == check and f.level in ("warn", "fatal")]


def prune_versions(settings: Settings, name: str, keep: int, in_use: set[int]) -> int:
    if keep < 1:
        print("--keep must be at least 1", file=sys.stderr)
        return 2
    pruned = lifecycle.prune(settings, name, keep, in_use)
    held = sorted(n for n in in_use if Versions(settings.snapshots_dir).get(name, n))
    print(f"{name}: pruned {', '.join(f'v{v.number}' for v in pruned) or 'nothing'}")
    if held:
        print(f"{name}: kept for jobs that use them: {', '.join(f'v{n}' for n in held)}")
    return 0
