"""Exceptions of the notebook side.

A remote failure must be a real exception so that papermill and nbval fail the cell, yet show only a
short message: `_render_traceback_` gives IPython two lines instead of a local traceback. The server's
error codes map to subclasses so scripts can catch what they can handle.
"""

from __future__ import annotations


class RemoteMagicError(Exception):
    """Base class of everything remote_magic raises."""


class ConnectionProblem(RemoteMagicError):
    """The server could not be reached or answered something that is not our protocol."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class DryRunError(RemoteMagicError):
    """A dry run on mock data found a mistake in the spec or the model; nothing was sent."""

    def _render_traceback_(self) -> list[str]:
        return [
            f"{type(self).__name__}: {self}",
            "Fix the spec or the model; nothing was sent to the server.",
        ]


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (or the kernel's stop button) while waiting: the remote job was cancelled. Still a
    KeyboardInterrupt, so callers that stop on one still stop, but shown as one line instead of a
    traceback through requests and sockets."""

    def _render_traceback_(self) -> list[str]:
        return [f"Interrupted: {self}"]


class RemoteError(RemoteMagicError):
    """The server refused a request or a remote job failed. Carries the server's fixed code."""

    def __init__(self, code: str, message: str, status: int | None = None, job_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.job_id = job_id

    def __str__(self) -> str:
        return f"[{self.code}] {self.message}"

    def _render_traceback_(self) -> list[str]:
        where = f" (job {self.job_id})" if self.job_id else ""
        hint = _HINTS.get(self.code)
        return [f"{type(self).__name__}{where}: {self}", *([hint] if hint else [])]


class AuthError(RemoteError):
    """Missing or invalid token, or no access to the dataset or job."""


class SpecError(RemoteError):
    """The dataset spec was refused: unknown column, bad filter, unknown dataset."""


class ModelRejected(RemoteError):
    """The submitted model was refused: not a supported estimator, custom code, corrupt bytes."""


class DisclosureRefused(RemoteError):
    """The disclosure policy refused to release a result (cohort too small, too close to another)."""


class JobFailed(RemoteError):
    """The remote job failed while it ran."""


class JobCancelled(RemoteError):
    """The remote job was cancelled."""


class Busy(RemoteError):
    """The server is at capacity for this user; retry later."""


_BY_CODE: dict[str, type[RemoteError]] = {
    "unauthorized": AuthError,
    "forbidden": AuthError,
    "not_found": RemoteError,
    "unknown_dataset": SpecError,
    "invalid_spec": SpecError,
    "unknown_column": SpecError,
    "invalid_filter": SpecError,
    "invalid_model": ModelRejected,
    "custom_code_refused": ModelRejected,
    "unsupported_model": ModelRejected,
    "parameter_out_of_bounds": ModelRejected,
    "payload_too_large": ModelRejected,
    "cohort_too_small": DisclosureRefused,
    "class_too_small": DisclosureRefused,
    "differencing_refused": DisclosureRefused,
    "privacy_budget_exhausted": DisclosureRefused,
    "model_not_released": DisclosureRefused,
    "cancelled": JobCancelled,
    "too_many_jobs": Busy,
}


_HINTS: dict[str, str] = {
    "unauthorized": "Check the token in $REMOTE_MAGIC_TOKEN (or the variable named by --token-env).",
    "forbidden": "Ask the data owner for access to this dataset.",
    "unknown_dataset": "%remote_datasets lists the datasets your token grants.",
    "unknown_column": "%remote_datasets NAME lists the columns; --dry-run checks a spec locally.",
    "invalid_spec": "%remote_datasets NAME lists the columns and their roles.",
    "invalid_filter": "Filters take columns, literals, comparisons, AND/OR/NOT, IN, BETWEEN, IS NULL.",
    "cohort_too_small": "Admit more rows: widen the filter or lower the evaluation fraction.",
    "class_too_small": "Admit more rows of the rare class, or merge classes.",
    "differencing_refused": "Change the filter by more rows, or reuse the earlier spec.",
    "too_many_jobs": "Wait for a running job to finish (%remote_jobs), then retry.",
}


def error_for(code: str, message: str, status: int | None = None, job_id: str | None = None) -> RemoteError:
    """Build the exception class that matches a server error code."""
    return _BY_CODE.get(code, JobFailed)(code, message, status=status, job_id=job_id)
