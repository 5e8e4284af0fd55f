"""The FastAPI application: wires the store, the scheduler and the routes; never trains, never reads rows."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from remote_magic import __version__

from ..jobs.scheduler import Scheduler
from ..jobs.store import Store
from ..settings import Settings
from . import describe, errors, models, routes
from .auditing import AuditMiddleware

log = logging.getLogger("remote_magic_server.api")


class Notifier:
    """Wakes long-polling status requests when the scheduler changes a job (from any thread)."""

    def __init__(self) -> None:
        self.loop: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[str, set[asyncio.Event]] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def subscribe(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        return event

    def unsubscribe(self, job_id: str, event: asyncio.Event) -> None:
        waiters = self._waiters.get(job_id)
        if waiters is not None:
            waiters.discard(event)
            if not waiters:
                self._waiters.pop(job_id, None)

    async def wait(self, event: asyncio.Event, timeout: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)

    def notify(self, job_id: str) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._wake, job_id)

    def _wake(self, job_id: str) -> None:
        for event in list(self._waiters.get(job_id, ())):
            event.set()


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the store and the scheduler start with it and stop with it."""
    notifier = Notifier()
    store = Store(settings.db_path, settings.jobs_dir)
    scheduler = Scheduler(settings, store, on_change=notifier.notify)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        notifier.bind(asyncio.get_running_loop())
        scheduler.start()
        log.info("serving %d dataset(s) with %d worker(s)", len(settings.datasets), settings.worker_count)
        try:
            yield
        finally:
            await asyncio.to_thread(scheduler.stop, 0.0)
            store.close()
            scheduler.ledger.close()

    app = FastAPI(
        title="remote-magic server",
        version=__version__,
        description="Train XGBoost models on hidden data; only disclosure-checked aggregates leave.",
        lifespan=lifespan,
        responses=errors.ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.scheduler = scheduler
    app.state.notifier = notifier
    errors.install(app)
    app.include_router(routes.router)
    app.include_router(describe.router)
    app.include_router(models.router)
    app.add_middleware(AuditMiddleware, audit=scheduler.audit, store=store)
    return app
