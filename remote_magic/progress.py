"""A progress bar for a waiting job: tqdm.auto (a widget in Jupyter, text in a terminal).

It shows the stage (queued, staging, training, evaluating), the boosting round k/n and the latest train
and eval metric. It appears only after `delay` seconds, so quick jobs leave no trace, and it can be
switched off for CI with REMOTE_MAGIC_PROGRESS=off (or `%config RemoteMagic.progress = False`).
"""

from __future__ import annotations

import os
import time

from tqdm.auto import tqdm

from .wire import JobStatus

OFF_VALUES = {"0", "off", "false", "no"}


def progress_enabled(default: bool = True) -> bool:
    value = os.environ.get("REMOTE_MAGIC_PROGRESS")
    return default if value is None else value.strip().lower() not in OFF_VALUES


def describe(status: JobStatus) -> str:
    """One line for a status: `training 120/200 logloss train 0.41 eval 0.45`."""
    p = status.progress
    parts = [p.stage if status.state in ("queued", "running") else status.state]
    if p.total_rounds and p.stage == "training" and status.state == "running":
        parts.append(f"{p.round}/{p.total_rounds}")
    if p.metric is not None:
        shown = [(k, v) for k, v in (("train", p.metric.train), ("eval", p.metric.eval)) if v is not None]
        if shown:
            parts.append(p.metric.name + " " + " ".join(f"{k} {v:.4g}" for k, v in shown))
    return " ".join(parts)


class ProgressBar:
    """Feeds job statuses into a tqdm bar; use as the `on_progress` of `Job.wait`."""

    def __init__(self, delay: float = 1.0):
        self.delay = delay
        self.started = time.monotonic()
        self.bar: tqdm | None = None
        self.seen_rounds: list[int] = []

    def __call__(self, status: JobStatus) -> None:
        """Show `status`; the bar is created only once `delay` has passed (tqdm's own `delay` does not
        hold back an explicit refresh in a terminal)."""
        p = status.progress
        if self.bar is None:
            if time.monotonic() - self.started < self.delay:
                return
            self.bar = tqdm(
                total=p.total_rounds or None,
                unit="round",
                desc=p.stage,
                leave=False,
                bar_format="{desc}: {n_fmt}/{total_fmt} |{bar}| {elapsed}{postfix}",
            )
        bar = self.bar
        if p.total_rounds and bar.total != p.total_rounds:
            bar.reset(total=p.total_rounds)
        bar.set_description_str(p.stage, refresh=False)
        if p.metric is not None:
            shown = {k: v for k, v in (("train", p.metric.train), ("eval", p.metric.eval)) if v is not None}
            bar.set_postfix_str(
                p.metric.name + " " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()), refresh=False
            )
        done = bar.total if status.state == "succeeded" and bar.total else max(p.round, bar.n)
        if done != bar.n:
            bar.n = done
            self.seen_rounds.append(done)
        bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class QueueWait:
    """One line while a submission waits for a place in the server's queue (this user's is full); use
    as the `on_wait` of `Client.submit`."""

    def __init__(self) -> None:
        self.bar: tqdm | None = None

    def __call__(self, retry_in: float, waited: float) -> None:
        if self.bar is None:
            self.bar = tqdm(total=None, bar_format="{desc}", leave=False)
        self.bar.set_description_str(
            f"waiting for a queue slot (your queue on the server is full): next try in {retry_in:.0f} s, "
            f"waited {waited:.0f} s"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
