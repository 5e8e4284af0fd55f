"""The automation as one part of the server: the hand-over of finished jobs, the trigger loop, the
deliverers and the pruning of old models.

`job_final` is the hand-over: the scheduler calls it after the release desk released a job's result and
the store recorded its end. It registers the model when asked (registry/registrar.py), pauses a recipe
whose run no longer fits its data, and publishes the events; all of it is idempotent, and on start-up
the jobs that ended since the last watermark are handed over again, so a crash in between loses nothing
and repeats nothing. The loop checks the recipes' triggers and the datasets' versions every `poll_s`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from remote_magic.contract.automation_wire import Recipe, RecipeIn
from remote_magic.contract.codes import CODES, Refusal
from remote_magic.contract.wire import ModelReleaseStatus

from ..config.settings import Settings
from ..config.sources import parse_duration
from ..intake.status import status_of
from ..intake.submissions import Intake, Submission
from ..jobs.store import JobRow, Store
from ..registry.access import Registry
from ..registry.pruning import prune
from ..registry.registrar import Registrar, RegistryEvent, alias_event
from ..sqlitedb import Database, now
from .dataset_versions import DatasetVersions
from .deliverer import Deliverer
from .outbox import Event, Outbox
from .recipes import Fire, Recipes
from .schema import mark, open_automation
from .subscriptions import Webhooks
from .triggers import TriggerCheck

log = logging.getLogger("remote_magic_server.automation")

WATERMARK_LAG_S = 120
PRUNE_EVERY_S = 3600
PAUSING_KINDS = frozenset({"spec", "not_found", "model", "auth", "budget"})


class Automation:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        registry: Registry,
        intake: Intake,
        versions: DatasetVersions,
        notify_scheduler: Callable[[], None],
        model_release: Callable[[JobRow], ModelReleaseStatus],
    ):
        self.settings = settings
        self.store = store
        self.registry = registry
        self.intake = intake
        self.versions = versions
        self.notify_scheduler = notify_scheduler
        self.db: Database = open_automation(settings.automation_path)
        self.outbox = Outbox(self.db, settings.mlflow.enabled)
        self.webhooks = Webhooks(self.db, settings.webhooks)
        self.recipes = Recipes(self.db)
        self.registrar = Registrar(registry)
        self.triggers = TriggerCheck(self.recipes, versions, registry.store)
        poll = settings.automation.poll_s
        self.deliverers = [Deliverer(self.outbox, "webhook", self.webhooks.send, settings.webhooks, poll)]
        if settings.mlflow.enabled:
            from .mlflow_export import MlflowExporter

            exporter = MlflowExporter(settings, store, model_release)
            self.deliverers.append(Deliverer(self.outbox, "mlflow", exporter.send, settings.webhooks, poll))
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="automation", daemon=True)
        self._pruned_at: float | None = None  # None: prune at the first round, whatever the uptime

    # life
    def start(self) -> None:
        self._reconcile()
        for deliverer in self.deliverers:
            deliverer.start()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for deliverer in self.deliverers:
            deliverer.stop()
        self.db.close()

    def _reconcile(self) -> None:
        """Hand over again every job that ended since the watermark (a crash may have cut it short)."""
        for job_id in self.store.final_jobs(since=mark(self.db, "handed_over_since")):
            self.job_final(job_id)
        self._start_fires(self.recipes.unstarted())

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad moment
                log.exception("the automation loop failed; it carries on")
            self._wake.wait(timeout=self.settings.automation.poll_s)
            self._wake.clear()

    def tick(self) -> None:
        """One round: new dataset versions, recipes' triggers, unstarted fires, the watermark, pruning.
        The `round_began` mark says when the last whole round began (the loop is turning)."""
        began = now()
        self._dataset_versions()
        self._start_fires(self.triggers.check() + self.recipes.unstarted())
        lag = datetime.now(timezone.utc) - timedelta(seconds=WATERMARK_LAG_S)
        with self.db.write() as db:
            db.execute(
                "UPDATE marks SET value = MAX(value, ?) WHERE key = 'handed_over_since'",
                (lag.isoformat(timespec="milliseconds"),),
            )
            db.execute("INSERT OR REPLACE INTO marks (key, value) VALUES ('round_began', ?)", (began,))
        if self._pruned_at is None or time.monotonic() - self._pruned_at > PRUNE_EVERY_S:
            self._pruned_at = time.monotonic()
            prune(self.store, self.registry.store, parse_duration(self.settings.registry.keep_unregistered))

    # events
    def may_see(self, user: str, audience: tuple[str, str]) -> bool:
        kind, name = audience
        if kind == "user":
            return user == name
        if kind == "model":
            return self.registry.may_use(user, name)
        return name in self.store.datasets_of(user)

    def publish(self, event: Event) -> None:
        if self.outbox.publish(event, self.may_see):
            for deliverer in self.deliverers:
                deliverer.wake()

    def publish_registry(self, event: RegistryEvent) -> None:
        self.publish(Event(event.type, event.key, event.data, ("model", event.model)))

    def alias_moved(self, name: str, alias: str, number: int) -> None:
        moved = self.registry.store.alias_moved(name, alias)
        if moved is not None:
            self.publish_registry(alias_event(name, alias, number, moved[1]))

    def _dataset_versions(self) -> None:
        for dataset in self.settings.datasets:
            latest = self.versions.latest(dataset)
            key = f"dataset:{dataset}"
            seen = mark(self.db, key)
            if latest is None or latest == seen:
                continue
            with self.db.write() as db:
                db.execute("INSERT OR REPLACE INTO marks (key, value) VALUES (?, ?)", (key, latest))
            if seen is not None:
                data = {"dataset": dataset, "version": latest}
                self.publish(
                    Event(
                        "dataset.version", f"dataset.version:{dataset}:{latest}", data, ("dataset", dataset)
                    )
                )

    # the hand-over
    def job_final(self, job_id: str) -> None:
        """A job ended and its result (if any) is stored: register, pause a failing recipe, publish."""
        job = self.store.get_job(job_id)
        if job is None or job.state not in ("succeeded", "failed"):
            return
        registry_events = self.registrar.handle(job)
        code = CODES.get(job.error_code or "")
        if job.state == "failed" and job.plan.recipe and code is not None and code.kind in PAUSING_KINDS:
            self.pause(job.user, job.plan.recipe, f"its run {job.id} failed: {job.error_message}")
        status = status_of(job, self.registry).model_dump(mode="json")
        self.publish(Event(f"job.{job.state}", f"job.{job.state}:{job.id}", status, ("user", job.user)))
        for event in registry_events:  # after the job's own event, so its MLflow run comes first
            self.publish_registry(event)

    # recipes
    def save_recipe(self, user: str, datasets: list[str], recipe: RecipeIn, payload: bytes) -> Recipe:
        """Check a recipe as its first run would be checked, then store it; it fires on what comes next."""
        if recipe.register_as and recipe.triggers.on_new_model == recipe.register_as.name:
            raise Refusal(
                "invalid_request", "a recipe may not register into the model whose new versions trigger it"
            )
        if recipe.triggers.on_new_model and not self.registry.may_use(user, recipe.triggers.on_new_model):
            raise Refusal(
                "unknown_model", f"no model named {recipe.triggers.on_new_model!r} is available to you"
            )
        triggers = recipe.triggers
        if not (triggers.on_new_data or triggers.on_new_model or triggers.every):
            raise Refusal("invalid_request", "a recipe needs at least one trigger")
        self.intake.prepare(self._submission(user, datasets, recipe, payload, None))
        return self.recipes.save(user, recipe, payload, self.triggers.marks(recipe))

    def _submission(
        self, user: str, datasets: list[str], recipe: RecipeIn, payload: bytes, fire: Fire | None
    ) -> Submission:
        return Submission(
            user=user,
            datasets=datasets,
            spec=recipe.spec,
            payload=payload,
            kind=recipe.kind,
            idempotency_key=f"recipe:{recipe.name}:{fire.seq}" if fire else None,
            register=recipe.register_as,
            base_model=recipe.base_model,
            origin={"recipe": recipe.name, "trigger": fire.trigger} if fire else {},
        )

    def run_now(self, user: str, name: str) -> str:
        """Fire a recipe by hand; return its job id."""
        stored = self.recipes.get(user, name)
        assert stored is not None
        fire = self.recipes.fire(user, name, f"hand:{time.time_ns()}", "run by hand", stored.seen)
        assert fire is not None
        self._start_fires([fire], raise_refusal=True)
        started = self.db.read("SELECT job_id FROM fires WHERE seq = ?", (fire.seq,)).fetchone()
        return started["job_id"]

    def pause(self, user: str, name: str, reason: str) -> None:
        if self.recipes.get(user, name, missing_ok=True) is None:
            return
        if self.recipes.set_state(user, name, "paused", reason):
            log.info("recipe_paused", extra={"user": user, "recipe": name})
            data = {"recipe": name, "reason": reason}
            key = f"recipe.paused:{user}:{name}:{time.time_ns()}"
            self.publish(Event("recipe.paused", key, data, ("user", user)))

    def _start_fires(self, fires: list[Fire], raise_refusal: bool = False) -> None:
        for fire in fires:
            stored = self.recipes.get(fire.owner, fire.recipe, missing_ok=True)
            if stored is None or (stored.recipe.state != "active" and not raise_refusal):
                self.recipes.started(fire, "", "the recipe was deleted or paused before it ran")
                continue
            datasets = self.store.datasets_of(fire.owner)
            try:
                job, _ = self.intake.accept(
                    self._submission(fire.owner, datasets, stored.recipe, stored.payload, fire)
                )
            except Refusal as refusal:
                if refusal.code == "too_many_jobs" and not raise_refusal:
                    continue  # the queue is full: this fire starts at a later round
                self.recipes.started(fire, "", refusal.message)
                if CODES[refusal.code].kind in PAUSING_KINDS:
                    self.pause(fire.owner, fire.recipe, f"it no longer fits: {refusal.message}")
                if raise_refusal:
                    raise
                continue
            self.recipes.started(fire, job.id)
            log.info("recipe_fired", extra={"user": fire.owner, "recipe": fire.recipe, "job": job.id})
            self.notify_scheduler()
