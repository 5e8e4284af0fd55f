"""A progress bar for a waiting job: an HTML line updated in place in Jupyter, tqdm text in a terminal.

It shows the stage (queued, staging, training, evaluating), the boosting round k/n and the latest train
and eval metric. It appears only after `delay` seconds, so quick jobs leave no trace, and it can be
switched off for CI with REMOTE_MAGIC_PROGRESS=off (or `%config RemoteMagic.progress = False`). A script's
`Client.train` shows the text bar when run in a terminal (`script_bar`).

In a notebook the bar is a display with an id, updated in place and emptied when the wait ends (done,
failed or interrupted), then cleared with the cell's next output (`tidy.py`). A saved notebook therefore
carries no leftover: no widget whose state was never saved ("Error displaying widget"), no frozen
"training: 0/60" and no empty output in nbconvert's HTML, GitHub or nbviewer.
"""

from __future__ import annotations

import html
import os
import time

from ..contract.wire import JobStatus
from .tidy import PROGRESS_MARK

OFF_VALUES = {"0", "off", "false", "no"}
CLOSED = {"text/plain": ""}


def progress_enabled(default: bool = True) -> bool:
    value = os.environ.get("REMOTE_MAGIC_PROGRESS")
    return default if value is None else value.strip().lower() not in OFF_VALUES


def script_bar(progress: bool | None = None, delay: float = 1.0) -> ProgressBar | None:
    """The bar `Client.train` and `Client.evaluate` show while they wait, or None for none. `progress`
    None: a text bar when stderr is a terminal (a script run by hand), none in a log, a pipe or CI (a
    bar there writes a line per refresh), none in a kernel (the magics show the notebook's bar) and none
    with REMOTE_MAGIC_PROGRESS=off; True: a bar in any case (the notebook's in a kernel); False: none."""
    import sys

    if progress is None:
        progress = progress_enabled() and not in_kernel() and sys.stderr.isatty()
    return ProgressBar(delay=delay) if progress else None


def stage_of(status: JobStatus) -> str:
    """The stage to show: a job a worker has claimed but not yet reported on is starting, not queued."""
    stage = status.progress.stage
    if status.state == "running" and stage == "queued":
        return "starting"
    return stage if status.state in ("queued", "running") else status.state


def _metric_text(status: JobStatus, separator: str = ", ") -> str:
    m = status.progress.metric
    if m is None:
        return ""
    shown = [(k, v) for k, v in (("train", m.train), ("eval", m.eval)) if v is not None]
    return m.name + " " + separator.join(f"{k} {v:.4g}" for k, v in shown) if shown else ""


def describe(status: JobStatus) -> str:
    """One line for a status: `training 120/200 logloss train 0.41 eval 0.45`."""
    p = status.progress
    parts = [stage_of(status)]
    if p.total_rounds and p.stage == "training" and status.state == "running":
        parts.append(f"{p.round}/{p.total_rounds}")
    metric = _metric_text(status, separator=" ")
    return " ".join([*parts, metric] if metric else parts)


def in_kernel() -> bool:
    """Whether we run in a Jupyter kernel, whose front end can update a display in place."""
    from IPython import get_ipython

    return getattr(get_ipython(), "kernel", None) is not None


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


class _TextBar:
    """tqdm on stderr, erased when closed."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=None,
            unit="round",
            leave=False,
            bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}",
        )

    def show(self, stage: str, done: int, total: int, elapsed: float, metric: str) -> None:
        bar = self.bar
        if total and bar.total != total:
            bar.total = total  # not `reset`, which would restart the clock shown
        bar.set_description_str(stage, refresh=False)
        if metric:
            bar.set_postfix_str(metric, refresh=False)
        bar.n = done
        bar.refresh()

    def close(self) -> None:
        self.bar.close()


_HTML_BAR = (
    "<div class='remote-magic-progress' style='font-family:var(--jp-ui-font-family,sans-serif);"
    "font-size:0.9em;color:var(--jp-ui-font-color1,inherit);display:flex;gap:8px;align-items:center'>"
    "<span style='min-width:6em'>{stage}</span>"
    "<span style='display:inline-block;width:16em;height:0.8em;border-radius:3px;"
    "background:var(--jp-layout-color3,#ddd)'><span style='display:block;height:100%;width:{percent}%;"
    "border-radius:3px;background:var(--jp-brand-color1,#1976d2)'></span></span>"
    "<span style='font-variant-numeric:tabular-nums'>{counts} &middot; {elapsed}</span>"
    "<span style='color:var(--jp-ui-font-color2,#666)'>{metric}</span></div>"
)


class _NotebookBar:
    """An HTML line with a display id: updated in place, emptied when closed."""

    def __init__(self) -> None:
        from IPython.display import display

        self.handle = display(CLOSED, raw=True, display_id=True, metadata={PROGRESS_MARK: True})

    def show(self, stage: str, done: int, total: int, elapsed: float, metric: str) -> None:
        counts = f"{done}/{total}" if total else f"{done}/?"
        percent = round(100 * done / total, 1) if total else 0
        text = f"{stage}: {counts} {_clock(elapsed)}" + (f" {metric}" if metric else "")
        markup = _HTML_BAR.format(
            stage=html.escape(stage),
            percent=percent,
            counts=counts,
            elapsed=_clock(elapsed),
            metric=html.escape(metric),
        )
        self.handle.update({"text/plain": text, "text/html": markup}, raw=True)

    def close(self) -> None:
        self.handle.update(CLOSED, raw=True)


class ProgressBar:
    """Feeds job statuses into a bar; use as the `on_progress` of `Job.wait`, and close it after."""

    def __init__(self, delay: float = 1.0, notebook: bool | None = None):
        self.delay = delay
        self.notebook = in_kernel() if notebook is None else notebook
        self.started = time.monotonic()
        self.view: _NotebookBar | _TextBar | None = None
        self.done = 0
        self.seen_rounds: list[int] = []

    def __call__(self, status: JobStatus) -> None:
        """Show `status`; the bar is created only once `delay` has passed."""
        p = status.progress
        if self.view is None:
            if time.monotonic() - self.started < self.delay:
                return
            self.view = _NotebookBar() if self.notebook else _TextBar()
        done = p.total_rounds if status.state == "succeeded" and p.total_rounds else max(p.round, self.done)
        if done != self.done:
            self.done = done
            self.seen_rounds.append(done)
        self.view.show(
            stage_of(status), done, p.total_rounds, time.monotonic() - self.started, _metric_text(status)
        )

    def notice(self, line: str) -> None:
        """Say `line` in the bar itself (the server is unreachable, say), shown at once, delay or
        not; the job's next status replaces it."""
        if self.view is None:
            self.view = _NotebookBar() if self.notebook else _TextBar()
        self.view.show("waiting", self.done, 0, time.monotonic() - self.started, line)

    @property
    def shown(self) -> bool:
        return self.view is not None

    def close(self) -> None:
        if self.view is not None:
            self.view.close()


class QueueWait:
    """One line while a submission waits for a place in the server's queue (this user's is full): in
    the same views as the job's bar; use as the `on_wait` of `Client.submit`, and close it after."""

    def __init__(self, notebook: bool | None = None):
        self.notebook = in_kernel() if notebook is None else notebook
        self.view: _NotebookBar | _TextBar | None = None

    def __call__(self, retry_in: float, waited: float) -> None:
        if self.view is None:
            self.view = _NotebookBar() if self.notebook else _TextBar()
        self.view.show(
            "waiting for a queue slot", 0, 0, waited, f"your queue is full; next try in {retry_in:.0f} s"
        )

    def close(self) -> None:
        if self.view is not None:
            self.view.close()
