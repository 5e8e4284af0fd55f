"""Exceptions of the notebook side.

A remote failure must be a real exception so that papermill and nbval fail the cell, yet show only a
short message: `_render_traceback_` gives IPython two lines instead of a local traceback. The server's
error codes map to subclasses by their kind (listed once, in `codes.py`), so scripts can catch what they
can handle.
"""

from __future__ import annotations

from ..contract.codes import CODES, Kind, code_of


class RemoteMagicError(Exception):
    """Base class of everything remote_magic raises."""


class ConnectionProblem(RemoteMagicError):
    """The server could not be reached or answered something that is not our protocol."""

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


class DryRunError(RemoteMagicError):
    """A dry run on mock data found a mistake in the spec or the model; nothing was sent.

    `code` is the error code the server would answer for the same mistake (None for a problem only
    the local fit found)."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code

    def _render_traceback_(self) -> list[str]:
        return [
            f"{type(self).__name__}: {self}",
            "Fix the spec or the model; nothing was sent to the server.",
        ]


class FederatedError(RemoteMagicError):
    """A federated training could not start or go on; the message names the connection at fault."""

    def __init__(self, connection: str | None, message: str):
        super().__init__(f"{connection}: {message}" if connection else message)
        self.connection = connection

    def _render_traceback_(self) -> list[str]:
        return [f"FederatedError: {self}"]


class JobInterrupted(KeyboardInterrupt):
    """Ctrl-C (or the kernel's stop button) while waiting: the remote job was cancelled. Still a
    KeyboardInterrupt, so callers that stop on one still stop, but shown as one line instead of a
    traceback through requests and sockets."""

    def _render_traceback_(self) -> list[str]:
        return [f"Interrupted: {self}"]


class JobNotCancelled(JobInterrupted):
    """Ctrl-C while the server was unreachable: the job could not be cancelled, so it keeps its place
    and runs (and is charged) when the server returns. Still the interrupt, never a ConnectionProblem
    in its place, so the one thing the user must know, that the job lives on, is what they read."""

    def __init__(self, job_id: str, how: str | None = None):
        self.job_id = job_id
        how = how or f"Client.cancel({job_id!r})"
        super().__init__(
            f"could not cancel job {job_id} (the server is unreachable); it will run when the server "
            f"returns: cancel it then with {how}"
        )


class ServerUnreachable(UserWarning):
    """A script's wait lost the server for a while; the job keeps its place and the wait goes on."""


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
        hint = code_of(self.code).hint
        return [f"{type(self).__name__}{where}: {self}", *([hint] if hint else [])]


class BadRequest(RemoteError):
    """The request itself was refused (malformed, or asked too early)."""


class AuthError(RemoteError):
    """Missing or invalid token, or no access to the dataset or job."""


class NotFound(RemoteError):
    """No such job or resource (or one this token may not see)."""


class SpecError(RemoteError):
    """The dataset spec was refused: unknown column, bad filter, unknown dataset."""


class ModelRejected(RemoteError):
    """The submitted model was refused: not a supported estimator, custom code, corrupt bytes."""


class DisclosureRefused(RemoteError):
    """The disclosure policy refused to release a result (cohort too small, too close to another)."""


class BudgetExhausted(DisclosureRefused):
    """The privacy budget on this dataset is spent; stored answers can still be repeated."""


class JobFailed(RemoteError):
    """The remote job failed while it ran."""


class JobCancelled(RemoteError):
    """The remote job was cancelled."""


class Busy(RemoteError):
    """The server is at capacity for this user; retry later (`retry_after` seconds, when it said)."""

    retry_after: float | None = None


class ServerError(RemoteError):
    """The server failed; the details are in its log."""


_BY_KIND: dict[Kind, type[RemoteError]] = {
    "request": BadRequest,
    "auth": AuthError,
    "not_found": NotFound,
    "spec": SpecError,
    "model": ModelRejected,
    "disclosure": DisclosureRefused,
    "budget": BudgetExhausted,
    "busy": Busy,
    "cancelled": JobCancelled,
    "job": JobFailed,
    "server": ServerError,
}


def error_for(code: str, message: str, status: int | None = None, job_id: str | None = None) -> RemoteError:
    """The exception class of a server error code (by its kind in `remote_magic.codes`).

    A server failure (or a code this client does not know) that ended a job is a job failure; before
    any job exists it is a server error: a refusal before a job exists is never reported as JobFailed."""
    kind = CODES[code].kind if code in CODES else "job"
    if job_id is not None and kind == "server":
        kind = "job"  # the server failed while running this job
    if job_id is None and kind == "job" and code not in CODES:
        kind = "server"
    return _BY_KIND[kind](code, message, status=status, job_id=job_id)
