"""The one question the automation asks about data: what is the latest version of dataset X?

Recipes fire on a new version and registered versions record the one they were trained on. Until the
server snapshots sources into numbered versions, a dataset's version is its file's content identity: a
hash of the bytes, recomputed only when the file's size or modification time changes.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from typing import Protocol

from .settings import Settings

CHUNK = 1 << 20


class DatasetVersions(Protocol):
    def latest(self, dataset: str) -> str | None:
        """The newest version of a dataset, as text; None when it has none (or is not configured)."""
        ...


class FileIdentity:
    """A dataset's version is the first 16 hex digits of its file's SHA-256."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._cache: dict[Path, tuple[int, int, str]] = {}
        self._lock = threading.Lock()

    def latest(self, dataset: str) -> str | None:
        config = self.settings.datasets.get(dataset)
        if config is None:
            return None
        try:
            stat = config.path.stat()
        except OSError:
            return None
        with self._lock:
            cached = self._cache.get(config.path)
        if cached is not None and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            return cached[2]
        digest = hashlib.sha256()
        with open(config.path, "rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
        identity = digest.hexdigest()[:16]
        with self._lock:
            self._cache[config.path] = (stat.st_size, stat.st_mtime_ns, identity)
        return identity
