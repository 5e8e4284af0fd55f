"""Mistakes in a magic's arguments or cell, as errors the front end sees.

IPython only prints a plain `UsageError`: no error message reaches the kernel's client, so papermill
reports an empty message and nbval passes the cell. A `MagicUsageError` is still a `UsageError` (code that
catches one keeps working) but is shown through `_render_traceback_`, so it fails the run and reads as the
same single line.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

from IPython.core.error import UsageError

F = TypeVar("F", bound=Callable)


class MagicUsageError(UsageError):
    """A mistake in a magic's arguments or cell: one line, and an error the front end sees."""

    def _render_traceback_(self) -> list[str]:
        return [f"UsageError: {self}"]


def usage_errors(func: F) -> F:
    """Raise every UsageError of a magic as a MagicUsageError."""

    @functools.wraps(func)
    def magic(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except MagicUsageError:
            raise
        except UsageError as exc:
            raise MagicUsageError(str(exc)) from None

    return magic  # type: ignore[return-value]


def empty_cell_body(lines: list[str]) -> list[str]:
    """An input transformer: a `%%remote_train` or `%%remote_evaluate` cell with nothing under its first
    line gets one blank line. IPython refuses an empty cell magic with a plain `UsageError` that
    papermill and nbclient do not see (rev11 #8); with the blank line it reaches the magic, which raises
    a `MagicUsageError` that says what to do."""
    magic = lines and lines[0].startswith(("%%remote_train", "%%remote_evaluate"))
    if magic and not "".join(lines[1:]).strip():
        return [lines[0].rstrip("\n") + "\n", "\n"]
    return lines
