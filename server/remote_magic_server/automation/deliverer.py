"""The deliverer: one thread per kind of target (webhooks, MLflow) that works through the outbox.

Each attempt that fails is retried after `backoff_s * 2**(attempts - 1)` seconds (at most
`max_backoff_s`) until `max_attempts`; the schedule is in the outbox, so a restart resumes it. Targets
get their own threads so that a slow MLflow server never delays a webhook, and neither ever touches a
job: jobs finish before anything is queued here.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ..config.settings import WebhooksSection
from .outbox import Due, Outbox

log = logging.getLogger("remote_magic_server.automation")

# One attempt: (delivered, HTTP status if any, what went wrong).
Sender = Callable[[Due], tuple[bool, int | None, str]]


def backoff(config: WebhooksSection, attempts: int) -> float | None:
    """Seconds before the next attempt after `attempts` failed ones; None: give up."""
    if attempts >= config.max_attempts:
        return None
    return min(config.max_backoff_s, config.backoff_s * 2 ** (attempts - 1))


class Deliverer:
    def __init__(self, outbox: Outbox, target: str, send: Sender, config: WebhooksSection, poll_s: float):
        self.outbox = outbox
        self.target = target
        self.send = send
        self.config = config
        self.poll_s = poll_s
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"deliver-{target}", daemon=True)

    def start(self) -> Deliverer:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)

    def run_once(self) -> int:
        """Attempt every delivery that is due; return how many were attempted."""
        due = self.outbox.due(self.target)
        for item in due:
            if self._stop.is_set():
                break
            try:
                ok, status, error = self.send(item)
            except Exception as exc:  # noqa: BLE001 - a failed attempt is retried, never fatal
                log.warning("delivery_error", extra={"delivery": item.id, "error": type(exc).__name__})
                ok, status, error = False, None, f"the attempt failed ({type(exc).__name__})"
            if ok:
                self.outbox.delivered(item.id, status)
            else:
                self.outbox.failed_attempt(item.id, status, error, backoff(self.config, item.attempts + 1))
            log.info(
                "delivery_attempt",
                extra={"delivery": item.id, "target": self.target, "delivered": ok, "status": status},
            )
        return len(due)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
                wait = self.outbox.next_due_in(self.target)
            except Exception:  # noqa: BLE001 - the loop must outlive a bad moment of the database
                log.exception("the %s deliverer failed; it carries on", self.target)
                wait = None
            self._wake.wait(timeout=self.poll_s if wait is None else min(wait + 0.01, self.poll_s))
            self._wake.clear()
