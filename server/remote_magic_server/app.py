"""The FastAPI application: wires the store, the scheduler and the routes; never trains, never reads rows.

It also owns the server's life: one server per data directory (a lock file), recovery on start-up, and on
SIGTERM (`begin_shutdown`, called by the serving loop) a drain: long-polls return at once, no new job
starts, running jobs get `shutdown_grace_s` to finish and the rest are re-queued.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from remote_magic import __version__

from .api import (
    budget,
    cost,
    datasets,
    describe,
    errors,
    federated,
    graphql_view,
    health,
    jobs,
    mock,
    models,
    recipes,
    registry,
    webhooks,
)
from .api.auditing import AuditMiddleware
from .api.auth import LastUsed
from .api.limits import FORM_OVERHEAD_BYTES, BodyLimit
from .api.metrics import Metrics, RequestTimer
from .api.notifier import Notifier
from .audit import open_audit
from .automation.dataset_versions import NumberedVersions
from .automation.service import Automation
from .config.settings import Settings
from .data.versions import Versions
from .executors import make_executor
from .intake.catalog import unused_columns
from .intake.status import job_release
from .intake.submissions import Intake
from .jobs.oneshot import Describer, FederatedSteps
from .jobs.scheduler import Scheduler
from .jobs.store import JobRow, Store
from .registry.access import Registry
from .registry.records import ModelRegistry
from .release.desk import ReleaseDesk
from .release.ledger import Ledger

log = logging.getLogger("remote_magic_server.api")


class DataDirLock:
    """One server per data directory: two would each re-queue and run the other's jobs."""

    def __init__(self, settings: Settings):
        self.path = settings.server.data_dir / "server.lock"
        self._file = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "w")  # noqa: SIM115 - held for the server's lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            raise RuntimeError(
                f"another server is already using the data directory {self.path.parent}"
            ) from None
        self._file = handle

    def held(self) -> bool:
        """Whether another process holds the lock now: asked before a command prints what only a
        server that starts may promise (a URL, a token)."""
        if not self.path.exists():
            return False
        with open(self.path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False

    def release(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def create_app(settings: Settings) -> FastAPI:
    """Build the app; the store and the scheduler start with it and stop with it."""
    notifier = Notifier()
    store = Store(settings.db_path, settings.jobs_dir)
    audit = open_audit(settings)
    ledger = Ledger(settings.ledger_path)
    desk = ReleaseDesk(settings, ledger, audit)
    executor = make_executor(settings.executor)
    scheduler = Scheduler(settings, store, executor, desk, on_change=notifier.notify)
    describer = Describer(settings, executor, desk)
    federated_steps = FederatedSteps(settings, executor, desk)
    versions = Versions(settings.snapshots_dir)
    metrics = Metrics(
        store,
        scheduler,
        settings.worker_count,
        versions,
        list(settings.datasets),
        settings.server.metrics_without_token,
    )
    model_registry = Registry(settings, ModelRegistry(settings.registry_path), settings.jobs_dir)
    intake = Intake(settings, store, model_registry, versions, audit, desk, scheduler.retry_after)
    automation = Automation(
        settings,
        store,
        model_registry,
        intake,
        NumberedVersions(versions),
        scheduler.notify,
        lambda job: job_release(desk, job, store),
    )

    def job_finished(job: JobRow, state: str, seconds: float) -> None:
        metrics.job_finished(job, state, seconds)
        try:
            automation.job_final(job.id)
        except Exception:  # noqa: BLE001 - the hand-over is repeated at start-up; a job never fails for it
            log.exception("the hand-over of job %s failed", job.id)

    scheduler.on_finish = job_finished
    lock = DataDirLock(settings)
    grace = settings.server.shutdown_grace_s

    def begin_shutdown() -> None:
        notifier.close()
        scheduler.drain(grace)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock.acquire()
        notifier.bind(asyncio.get_running_loop())
        scheduler.start()
        automation.start()
        sweeping = asyncio.create_task(federated_steps.sessions.sweep())
        log.info(
            "server_started",
            extra={
                "datasets": len(settings.datasets),
                "workers": settings.worker_count,
                "schema_version": store.schema_version(),
            },
        )
        for name, unused in unused_columns(settings, versions).items():
            log.info("columns_not_used", extra={"dataset": name, "columns": unused})
        try:
            yield
        finally:
            sweeping.cancel()
            begin_shutdown()
            await asyncio.to_thread(scheduler.stop, grace)
            await asyncio.to_thread(automation.stop)
            model_registry.store.close()
            store.close()
            ledger.close()
            lock.release()
            log.info("server_stopped")

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
    app.state.desk = desk
    app.state.describer = describer
    app.state.federated = federated_steps
    app.state.audit = audit
    app.state.notifier = notifier
    app.state.versions = versions
    app.state.metrics = metrics
    app.state.begin_shutdown = begin_shutdown
    app.state.registry = model_registry
    app.state.intake = intake
    app.state.automation = automation
    app.state.last_used = LastUsed(store)
    app.state.hub = None
    if settings.jupyterhub is not None:
        from .api.hub import HubSignIn

        app.state.hub = HubSignIn(settings.jupyterhub)
    errors.install(app)
    for resource in (
        health,
        datasets,
        jobs,
        cost,
        budget,
        describe,
        federated,
        models,
        mock,
        registry,
        recipes,
        webhooks,
        graphql_view,
    ):
        app.include_router(resource.router)
    app.add_middleware(AuditMiddleware, audit=audit)
    app.add_route("/metrics", metrics.endpoint, include_in_schema=False)
    app.add_middleware(BodyLimit, max_bytes=settings.server.max_payload_mb * 2**20 + FORM_OVERHEAD_BYTES)
    app.add_middleware(RequestTimer, metrics=metrics)
    return app
