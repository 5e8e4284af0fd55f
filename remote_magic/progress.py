"""A progress bar for a waiting job: tqdm.auto (a widget in Jupyter, text in a terminal).

It appears only after `delay` seconds, so quick jobs leave no trace, and it can be switched off for CI
with REMOTE_MAGIC_PROGRESS=off.
"""

from __future__ import annotations

import os

from tqdm.auto import tqdm

from .wire import JobStatus

OFF_VALUES = {"0", "off", "false", "no"}


def progress_enabled(default: bool = True) -> bool:
    value = os.environ.get("REMOTE_MAGIC_PROGRESS")
    return default if value is None else value.strip().lower() not in OFF_VALUES


class ProgressBar:
    """Feeds job statuses into a tqdm bar; use as the `on_progress` of `Job.wait`."""

    def __init__(self, delay: float = 1.0):
        self.delay = delay
        self.bar: tqdm | None = None

    def __call__(self, status: JobStatus) -> None:
        p = status.progress
        if self.bar is None:
            self.bar = tqdm(
                total=p.total_rounds or None, delay=self.delay, unit="round", desc=p.stage, leave=False
            )
        if p.total_rounds and self.bar.total != p.total_rounds:
            self.bar.reset(total=p.total_rounds)
        self.bar.set_description(p.stage, refresh=False)
        if p.metric is not None:
            shown = {k: v for k, v in (("train", p.metric.train), ("eval", p.metric.eval)) if v is not None}
            self.bar.set_postfix({f"{p.metric.name} {k}": v for k, v in shown.items()}, refresh=False)
        self.bar.update(max(0, p.round - self.bar.n))

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
