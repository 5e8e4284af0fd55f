"""Prometheus metrics at /metrics: jobs by state, queue length, the worker pool, job and request durations,
dataset versions and refreshes.

Counts come from the store and the versions registry when Prometheus scrapes (so they are right after a
restart, and include refreshes run by other processes); durations are histograms observed as jobs
finish and requests end. Each app has its own registry, so several apps in one process (tests) do not
collide. The route template labels requests, never the raw path, so
job ids do not become label values.

Like JupyterHub's (`authenticate_prometheus = True`), /metrics needs a token: one the owner made for
scrapers (`token create --metrics`), which reads /metrics and nothing else; an analyst's token does not
read it (the metrics name every dataset and show everyone's queue). `[server] metrics_without_token =
true` opens it to any scraper that reaches the port, as before.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import get_args

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from remote_magic.contract.wire import JobState

from ..data.versions import OUTCOMES, Versions
from ..jobs.scheduler import Scheduler
from ..jobs.store import JobRow, Store
from .auth import metrics_reader

JOB_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60)


class _StoreCollector(Collector):
    def __init__(self, store: Store, scheduler: Scheduler, workers: int):
        self.store = store
        self.scheduler = scheduler
        self.workers = workers

    def collect(self) -> Iterator[Metric]:
        up = self.store.ping()
        counts = self.store.count_by_state() if up else {}
        jobs = GaugeMetricFamily("remote_magic_jobs", "Jobs in the store, by state.", labels=["state"])
        for state in get_args(JobState):
            jobs.add_metric([state], counts.get(state, 0))
        yield jobs
        yield GaugeMetricFamily(
            "remote_magic_queue_length", "Jobs waiting for a worker.", counts.get("queued", 0)
        )
        yield GaugeMetricFamily(
            "remote_magic_workers_busy", "Worker processes running a job.", self.scheduler.running_count()
        )
        yield GaugeMetricFamily("remote_magic_workers_max", "Worker processes allowed at once.", self.workers)
        yield GaugeMetricFamily("remote_magic_store_up", "1 if the job store answers.", 1 if up else 0)


class _DatasetCollector(Collector):
    """Dataset versions and refreshes, from the versions registry (refreshes run in other processes)."""

    def __init__(self, versions: Versions, datasets: list[str]):
        self.versions = versions
        self.datasets = datasets

    def collect(self) -> Iterator[Metric]:
        stats = self.versions.stats(self.datasets)
        latest = GaugeMetricFamily(
            "remote_magic_dataset_version",
            "The latest version of a dataset (0: none yet).",
            labels=["dataset"],
        )
        refreshes = CounterMetricFamily(
            "remote_magic_dataset_refreshes",
            "Refreshes of a dataset, by outcome.",
            labels=["dataset", "outcome"],
        )
        failures = CounterMetricFamily(
            "remote_magic_dataset_refresh_failures",
            "Failed refreshes of a dataset, by reason.",
            labels=["dataset", "reason"],
        )
        for entry in stats:
            latest.add_metric([entry.dataset], entry.latest or 0)
            for outcome in OUTCOMES:
                refreshes.add_metric([entry.dataset, outcome], entry.outcomes.get(outcome, 0))
            for reason, count in sorted(entry.failures.items()):
                failures.add_metric([entry.dataset, reason], count)
        yield latest
        yield refreshes
        yield failures


class Metrics:
    """The app's registry and the observations the scheduler and the HTTP layer feed it."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        workers: int,
        versions: Versions,
        datasets: list[str],
        without_token: bool = False,
    ):
        self.store = store
        self.without_token = without_token
        self.registry = CollectorRegistry()
        self.job_seconds = Histogram(
            "remote_magic_job_duration_seconds",
            "Wall-clock time of a job in its worker, by kind and final state.",
            ["kind", "state"],
            buckets=JOB_BUCKETS,
            registry=self.registry,
        )
        self.request_seconds = Histogram(
            "remote_magic_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_StoreCollector(store, scheduler, workers))
        self.registry.register(_DatasetCollector(versions, datasets))

    def job_finished(self, job: JobRow, state: str, seconds: float) -> None:
        self.job_seconds.labels(job.kind, state).observe(seconds)

    async def endpoint(self, request: Request) -> Response:
        """The metrics, to a metrics token (or to anyone, where the config says so)."""
        if not self.without_token:
            last_used = request.app.state.last_used
            authorization = request.headers.get("authorization")
            request.state.principal = await metrics_reader(self.store, last_used, authorization)
        text = await asyncio.to_thread(generate_latest, self.registry)
        return Response(text, media_type=CONTENT_TYPE_LATEST)


class RequestTimer:
    """ASGI middleware: observe how long each HTTP request takes until its response has been sent."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed_send(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                route = getattr(scope.get("route"), "path", "unmatched")
                self.metrics.request_seconds.labels(scope["method"], route).observe(
                    time.perf_counter() - started
                )

        await self.app(scope, receive, timed_send)
