"""The seam every data source plugs into: `Source.stage(dest)` and the one error type.

`stage` writes every row to one new Parquet file, in an order that depends only on the source (sorted
file names; `ORDER BY` the id column in PostgreSQL), so unchanged rows give the same bytes. Only the
trusted server runs it, never a sandboxed worker, which is why workers never need a network. Every
failure is a `SourceError` with a fixed `reason` (for metrics and the audit log) and a message that
names the source and never holds a secret or a data value.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from .total import Repairs

REASONS = (
    "config",
    "unreachable",
    "auth_failed",
    "not_found",
    "timeout",
    "query_failed",
    "invalid_snapshot",
    "unreadable",
)


class SourceError(Exception):
    """A source could not be read or its rows cannot be a snapshot."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason
        self.message = message


class Source(ABC):
    """One place a dataset's rows come from. With `total` set (the noisy modes) `stage` converts each
    value on its own and never fails on one (see `total`), counting what it changed in `repairs`."""

    def __init__(self, description: str):
        self.description = description
        self.total = False
        self.repairs = Repairs()
        self.left_out: list[str] = []  # columns of a later file that the first file lacks (Parquet folders)
        self.retyped: list[str] = []  # a later file's columns of another type, converted (Parquet folders)

    @abstractmethod
    def stage(self, dest: Path) -> list[str]:
        """Write every row to `dest` as Parquet; return the columns whose type was inferred, not declared."""

    def staging_note(self) -> str:
        """What the staging changed or left out, one line in the owner's words ("" for nothing): the
        registry's refresh message, which only the owner's CLI and doctor print."""
        parts = [self.repairs.summary()]
        if self.left_out:
            names = ", ".join(repr(c) for c in self.left_out)
            parts.append(f"column(s) {names} of a later file are not in the first file and were left out")
        parts += self.retyped
        return "; ".join(p for p in parts if p)

    def fail(self, reason: str, problem: str) -> SourceError:
        return SourceError(reason, f"{self.description}: {problem}")
