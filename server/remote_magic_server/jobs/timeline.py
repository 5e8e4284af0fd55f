"""Where a job's time goes: the moments the parent sees, turned into phases for the server log.

The scheduler marks what it does (claim, start, finish) and when each of the worker's messages arrives;
the worker adds only how long its confinement took (the `isolation` message), since nothing else
separates the fork from it. Every mark is a moment on the parent's clock, never a value of the data,
and the phases go to the server log (`job_timeline`), never into a response. `benchmarks/small_job.py`
reads them to print where the time of a small job goes.
"""

from __future__ import annotations

import time
from datetime import datetime

from ..protocol import Admission, Isolation, ProgressNote, WorkerMessage

# phase name -> (the mark it starts at, the mark it ends at), in the order a job passes them
PHASES: dict[str, tuple[str, str]] = {
    "queue": ("submitted", "claimed"),
    "launch": ("claimed", "started"),
    "fork": ("started", "confining"),
    "confine": ("confining", "confined"),
    "decode": ("confined", "staging"),
    "stage": ("staging", "admission"),
    "admit": ("admission", "admitted"),
    "train": ("admitted", "evaluating"),
    "evaluate": ("evaluating", "reported"),
    "release": ("reported", "finished"),
}

_STAGE_MARKS = {"staging": "staging", "evaluating": "evaluating"}


class Timeline:
    """The moments (epoch seconds) one job passed, first sighting of each."""

    def __init__(self, submitted_at: str | None = None):
        self.marks: dict[str, float] = {}
        if submitted_at is not None:
            self.marks["submitted"] = datetime.fromisoformat(submitted_at).timestamp()

    def mark(self, name: str, at: float | None = None) -> None:
        self.marks.setdefault(name, time.time() if at is None else at)

    def saw(self, message: WorkerMessage) -> None:
        """Mark the arrival of a worker message that ends a phase."""
        if isinstance(message, Isolation):
            now = time.time()
            self.mark("confining", now - message.seconds)
            self.mark("confined", now)
        elif isinstance(message, ProgressNote) and message.stage in _STAGE_MARKS:
            self.mark(_STAGE_MARKS[message.stage])
        elif isinstance(message, Admission):
            self.mark("admission")
        elif message.type in ("report", "describe", "error"):
            self.mark("reported")

    def phases(self) -> dict[str, float]:
        """Milliseconds per phase the job went through completely, plus `total` from the first mark."""
        out = {}
        for name, (start, end) in PHASES.items():
            if start in self.marks and end in self.marks:
                out[name] = round((self.marks[end] - self.marks[start]) * 1e3, 2)
        if self.marks:
            out["total"] = round((max(self.marks.values()) - min(self.marks.values())) * 1e3, 2)
        return out
