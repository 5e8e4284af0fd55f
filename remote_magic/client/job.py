"""A handle on a remote job: wait for it (long-poll), watch it, cancel it on Ctrl-C, fetch its result.

The handle needs only the four calls of `JobCalls`, which `Client` has; it does not import the client,
so the client's modules import this one and never the other way round.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Protocol

from ..contract.wire import FINAL_STATES, JobResult, JobStatus, Registration
from ..display.model import RemoteModel
from ..display.result import TrainResult
from .errors import ConnectionProblem, RemoteError, error_for

POLL_WAIT = 10.0
RECONNECT_DELAY = 1.0
PROGRESS_POLL_WAIT = 1.0


class JobCalls(Protocol):
    """What a job handle asks of the client."""

    def status(
        self,
        job_id: str,
        wait: float = 0,
        since: int | None = None,
        final: bool = False,
        result: bool = False,
    ) -> JobStatus: ...

    def cancel(self, job_id: str) -> JobStatus: ...

    def result(self, job_id: str) -> JobResult: ...

    def download_model(self, job_id: str) -> bytes: ...

    def load_model(self, job_id: str) -> RemoteModel: ...


class Job:
    """A handle on a remote job: wait for it, watch it, cancel it, fetch its result."""

    def __init__(self, client: JobCalls, status: JobStatus, notes: list[str] | None = None):
        self.client = client
        self.status = status
        self.notes = notes or []  # the client's own lines for the result (a value the server chose)

    @property
    def id(self) -> str:
        return self.status.id

    @property
    def done(self) -> bool:
        return self.status.state in FINAL_STATES

    def __repr__(self) -> str:
        from ..display.progress import describe

        s = self.status
        return f"<Job {self.id} {s.kind} on {s.dataset}: {describe(s)}>"

    def _repr_html_(self) -> str:
        from ..display.tables import job_html

        return job_html(self.status)

    def refresh(self, wait: float = 0, final: bool = False) -> JobStatus:
        """Fetch the status; with `wait`, block until it changes (with `final`: until the job ends, and
        then with its result) or `wait` seconds pass."""
        since = None if wait == 0 else self.status.version
        self.status = self.client.status(self.id, wait=wait, since=since, final=final, result=final)
        return self.status

    def cancel(self) -> JobStatus:
        self.status = self.client.cancel(self.id)
        return self.status

    def wait(
        self,
        timeout: float | None = None,
        on_progress: Callable[[JobStatus], None] | None = None,
        progress_after: float = 0.0,
    ) -> JobStatus:
        """Long-poll until the job is final. Ctrl-C cancels the remote job, then re-raises.

        With `on_progress`, from `progress_after` seconds on, each long-poll lasts at most a second,
        so a progress display is refreshed at least once a second even while nothing changes (a
        queued job); changes arrive at once. Before that, and without `on_progress`, a long-poll
        returns only when the job ends: a job quicker than `progress_after` (a progress bar's delay)
        costs one round trip, not one per progress line, each of which the kernel would pay for.
        A dropped connection or a 5xx does not end the wait: it reconnects and resumes from the last
        version seen (the job lives on across a server restart)."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        watch_from = start + progress_after if on_progress is not None else math.inf
        try:
            if on_progress is not None and progress_after <= 0:
                on_progress(self.status)
            while not self.done:
                now = time.monotonic()
                watching = now >= watch_from
                poll = PROGRESS_POLL_WAIT if watching else min(POLL_WAIT, watch_from - now)
                remaining = poll if deadline is None else min(poll, deadline - now)
                if remaining <= 0:
                    raise TimeoutError(f"job {self.id} is still {self.status.state} after {timeout} s")
                try:
                    self.refresh(wait=remaining, final=not watching)
                except ConnectionProblem:
                    time.sleep(RECONNECT_DELAY)  # the server restarts or the network blips: resume
                    continue
                except RemoteError as exc:
                    if exc.status is None or exc.status < 500:
                        raise
                    time.sleep(RECONNECT_DELAY)  # a proxy or the server failed this poll: poll again
                    continue
                if on_progress is not None and time.monotonic() >= watch_from:
                    on_progress(self.status)
        except KeyboardInterrupt:
            self.cancel()
            raise
        return self.status

    def result(
        self,
        timeout: float | None = None,
        on_progress: Callable[[JobStatus], None] | None = None,
        progress_after: float = 0.0,
    ) -> TrainResult:
        """Wait for the job and return its aggregate result; a failed job raises a RemoteError."""
        self._succeeded(timeout, on_progress, progress_after)
        raw = self.status.result or self.client.result(self.id)  # the final long-poll brought it
        notes = [*self.notes, *_registration_note(self.status.registration)]
        if notes:
            raw = raw.model_copy(update={"notes": [*notes, *raw.notes]})
        return TrainResult(raw, downloader=self.client.download_model, loader=self.client.load_model)

    def model(self, timeout: float | None = None) -> RemoteModel:
        """Wait for the job and bring its trained model home (`Client.load_model`): a DP model at once,
        any other once the data owner approved it."""
        self._succeeded(timeout)
        return self.client.load_model(self.id)

    def _succeeded(
        self,
        timeout: float | None,
        on_progress: Callable[[JobStatus], None] | None = None,
        progress_after: float = 0.0,
    ) -> None:
        """Wait for the job; a job that did not succeed raises its error as a RemoteError."""
        status = self.wait(timeout=timeout, on_progress=on_progress, progress_after=progress_after)
        if status.state != "succeeded":
            error = status.error
            code = error.code if error else status.state
            message = error.message if error else f"the job ended {status.state}"
            raise error_for(code, message, job_id=self.id)


def _registration_note(registration: Registration | None) -> list[str]:
    """What became of `register`, said with the result (the server answers a job's end once its
    registration is recorded): a cell that registers nothing must say so."""
    if registration is None:
        return []
    if registration.state == "registered":
        return [f"registered as {registration.version}"]
    message = registration.message
    return [message if message.startswith("not registered") else f"not registered: {message}"]
