"""The one question the automation asks about data: what is the latest version of dataset X?

Recipes fire on a new version and `dataset.version` is published for it. The versions are the
snapshots the server takes of each source (data/versions.py), numbered 1, 2, 3...; a spec's pin
(`claims@3`) is not part of the dataset's name here.
"""

from __future__ import annotations

from typing import Protocol

from ..data.versions import Versions


class DatasetVersions(Protocol):
    def latest(self, dataset: str) -> str | None:
        """The newest version of a dataset, as text; None when it has none (or is not configured)."""
        ...


class NumberedVersions:
    """Version N of a dataset's snapshots, as "N"."""

    def __init__(self, versions: Versions):
        self.versions = versions

    def latest(self, dataset: str) -> str | None:
        version = self.versions.latest(dataset.split("@", 1)[0])
        return None if version is None else str(version.number)
