"""A handle on a remote job: wait for it (long-poll), watch it, cancel it on Ctrl-C, fetch its result.

The handle needs only the four calls of `JobCalls`, which `Client` has; it does not import the client,
so the client's modules import this one and never the other way round.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from typing import Protocol

from ..contract.wire import FINAL_STATES, JobResult, JobStatus, Registration
from ..display.model import RemoteModel
from ..display.result import TrainResult
from .errors import ConnectionProblem, JobNotCancelled, RemoteError, ServerUnreachable, error_for

POLL_WAIT = 10.0
RECONNECT_DELAY = 0.5  # the first retry's delay; each next one doubles, up to RECONNECT_DELAY_MAX
RECONNECT_DELAY_MAX = 5.0
UNREACHABLE_AFTER = 3.0  # seconds without the server before the wait says so (once per outage)
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
        on_notice: Callable[[str], None] | None = None,
    ) -> JobStatus:
        """Long-poll until the job is final. Ctrl-C cancels the remote job, then re-raises.

        With `on_progress`, from `progress_after` seconds on, each long-poll lasts at most a second,
        so a progress display is refreshed at least once a second even while nothing changes (a
        queued job); changes arrive at once. Before that, and without `on_progress`, a long-poll
        returns only when the job ends: a job quicker than `progress_after` (a progress bar's delay)
        costs one round trip, not one per progress line, each of which the kernel would pay for.
        A dropped connection or a 5xx does not end the wait: it retries, backing off up to
        RECONNECT_DELAY_MAX, and resumes from the last version seen (the job lives on across a server
        restart). After UNREACHABLE_AFTER seconds without the server it says so once, to `on_notice`
        (default: a ServerUnreachable warning), rather than wait in silence. A server that answers at
        once without a change (one shutting down releases its long-polls) is polled with the same
        backoff, not in a loop. Ctrl-C while the server is unreachable raises JobNotCancelled."""
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        watch_from = start + progress_after if on_progress is not None else math.inf
        outage = _Outage(self.id, on_notice or _warn)
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
                seen = self.status.version
                try:
                    self.refresh(wait=remaining, final=not watching)
                except ConnectionProblem:
                    outage.retry(deadline)  # the server restarts or the network blips: resume
                    continue
                except RemoteError as exc:
                    if exc.status is None or exc.status < 500:
                        raise
                    outage.retry(deadline)  # a proxy or the server failed this poll: poll again
                    continue
                outage.answered()
                early = time.monotonic() - now < remaining / 2
                if self.status.version == seen and early and not self.done:
                    outage.pause(deadline)  # answered at once with nothing new: a closing server
                else:
                    outage.over()
                if on_progress is not None and time.monotonic() >= watch_from:
                    on_progress(self.status)
        except KeyboardInterrupt:
            try:
                self.cancel()
            except ConnectionProblem:
                raise JobNotCancelled(self.id) from None
            except RemoteError as exc:
                if exc.status is None or exc.status < 500:
                    raise
                raise JobNotCancelled(self.id) from None
            raise
        return self.status

    def result(
        self,
        timeout: float | None = None,
        on_progress: Callable[[JobStatus], None] | None = None,
        progress_after: float = 0.0,
        on_notice: Callable[[str], None] | None = None,
    ) -> TrainResult:
        """Wait for the job and return its aggregate result; a failed job raises a RemoteError."""
        self._succeeded(timeout, on_progress, progress_after, on_notice)
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
        on_notice: Callable[[str], None] | None = None,
    ) -> None:
        """Wait for the job; a job that did not succeed raises its error as a RemoteError."""
        status = self.wait(timeout, on_progress, progress_after, on_notice)
        if status.state != "succeeded":
            error = status.error
            code = error.code if error else status.state
            message = error.message if error else f"the job ended {status.state}"
            raise error_for(code, message, job_id=self.id)


def _warn(message: str) -> None:
    """A script's notice, as a warning at the script's own line: the first frame outside this package,
    however deep the wait was called (a fixed stacklevel showed `status = self.wait(...)`)."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("remote_magic."):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, ServerUnreachable, stacklevel=level)


class _Outage:
    """The wait's retries while the server is away: delays doubling from RECONNECT_DELAY up to
    RECONNECT_DELAY_MAX, and one notice once it has been away UNREACHABLE_AFTER seconds."""

    def __init__(self, job_id: str, notice: Callable[[str], None]):
        self.job_id = job_id
        self.notice = notice
        self.since: float | None = None
        self.delay = RECONNECT_DELAY
        self.said = False

    def retry(self, deadline: float | None) -> None:
        """A poll failed: say so once the outage is long enough, then wait before the next."""
        now = time.monotonic()
        if self.since is None:
            self.since = now
        if not self.said and now - self.since >= UNREACHABLE_AFTER:
            self.said = True
            self.notice(f"the server is unreachable, retrying; job {self.job_id} keeps its place")
        self.pause(deadline)

    def pause(self, deadline: float | None) -> None:
        """Wait the current delay (never past the deadline), and double it for the next time."""
        delay = self.delay if deadline is None else max(0.0, min(self.delay, deadline - time.monotonic()))
        time.sleep(delay)
        self.delay = min(self.delay * 2, RECONNECT_DELAY_MAX)

    def answered(self) -> None:
        """A poll was answered: after an outage it said, say once that the server is back."""
        if self.said:
            self.since, self.said = None, False
            self.notice(f"the server answers again; job {self.job_id} goes on")

    def over(self) -> None:
        """The server answered with news: the next outage starts afresh."""
        self.since = None
        self.delay = RECONNECT_DELAY
        self.said = False


def _registration_note(registration: Registration | None) -> list[str]:
    """What became of `register`, said with the result (the server answers a job's end once its
    registration is recorded): a cell that registers nothing must say so."""
    if registration is None:
        return []
    if registration.state == "registered":
        return [f"registered as {registration.version}"]
    message = registration.message
    return [message if message.startswith("not registered") else f"not registered: {message}"]
