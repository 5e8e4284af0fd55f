"""When and where refreshes run inside the server: first snapshots at start-up, then `refresh_every`.

Each refresh runs in a child interpreter (`python -m remote_magic_server.data.lifecycle`), so the API
process never reads a row or loads a database driver, and a crash or `kill -9` of a refresh takes
nothing else down. The schedule is kept in the registry (the last attempt of each dataset, by any
process), so a restart or a refresh from the owner's CLI moves the next one along.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
import time
from datetime import datetime

from ..config.settings import Settings
from .versions import Versions

log = logging.getLogger("remote_magic_server.data")
CHILD_MODULE = "remote_magic_server.data.lifecycle"


def run_in_child(
    settings: Settings, names: list[str], timeout: float | None = None, stop: threading.Event | None = None
) -> int:
    """Refresh `names` in a fresh interpreter; its log lines join the server's. Returns how many failed.

    The child is killed when `timeout` passes or `stop` is set (the server is shutting down); what it
    was writing is swept by the next refresh.
    """
    order = json.dumps({"settings": settings.model_dump(mode="json"), "names": names})
    proc = subprocess.Popen([sys.executable, "-m", CHILD_MODULE], stdin=subprocess.PIPE, text=True)
    proc.stdin.write(order)
    proc.stdin.close()
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if (stop is not None and stop.is_set()) or (deadline is not None and time.monotonic() > deadline):
            proc.kill()
            proc.wait()
            log.error("dataset_refresh_stopped", extra={"datasets": names, "timeout_s": timeout})
            return len(names)
        time.sleep(0.2)
    return proc.returncode


def missing_versions(settings: Settings) -> list[str]:
    """Datasets that have no version yet."""
    versions = Versions(settings.snapshots_dir)
    try:
        return [name for name in settings.datasets if versions.latest(name) is None]
    finally:
        versions.close()


def first_snapshots(settings: Settings) -> list[str]:
    """Take the first snapshot of every dataset that has none; one plain line for the owner about each
    that failed, with the reason its refresh logged (the server serves the others meanwhile)."""
    missing = missing_versions(settings)
    if not missing:
        return []
    run_in_child(settings, missing)
    versions = Versions(settings.snapshots_dir)
    try:
        failed = [(name, versions.last_refresh(name)) for name in missing if versions.latest(name) is None]
    finally:
        versions.close()
    return [
        f"dataset {name}: its first snapshot failed ({last['reason']}): {last['message']}; analysts see it "
        f"as unavailable until `remote-magic-server dataset refresh {name}` succeeds (`doctor` checks it)"
        if last
        else f"dataset {name}: its first snapshot did not finish (see the log); jobs on it wait for one"
        for name, last in failed
    ]


class Refresher:
    """Refresh every dataset with `refresh_every` on its schedule, each in a child interpreter."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.due = {name: ds.refresh_seconds for name, ds in settings.datasets.items() if ds.refresh_seconds}
        self.attempted: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="dataset-refresher", daemon=True)

    def start(self) -> Refresher:
        if self.due:
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def _next_times(self, versions: Versions) -> dict[str, float]:
        """When each dataset is due: an interval after its last attempt, by any process."""
        times = {}
        for name, every in self.due.items():
            last = versions.last_refresh(name)
            recorded = datetime.fromisoformat(last["at"]).timestamp() if last else 0.0
            times[name] = max(recorded, self.attempted.get(name, 0.0)) + every
        return times

    def _loop(self) -> None:
        versions = Versions(self.settings.snapshots_dir)
        while not self._stop.is_set():
            times = self._next_times(versions)
            now = time.time()
            ready = sorted(name for name, at in times.items() if at <= now)
            if ready:
                self.attempted.update(dict.fromkeys(ready, now))
                run_in_child(self.settings, ready, max(self.due[n] for n in ready), self._stop)
                continue
            self._stop.wait(min(times.values()) - now)
        versions.close()
