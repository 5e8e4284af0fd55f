"""Registration after a successful release: a finished job that asked to register becomes the next
version of its model, with its lineage, and moves an alias, when its condition holds.

The scheduler hands over the job only after the release desk released its result and the store recorded
it, so a version holds released numbers only; a condition compares two released numbers. The hand-over
may be repeated after a crash, so everything here is idempotent and the events it returns carry stable
keys (a webhook is queued once per key).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from remote_magic.contract.automation_wire import LOWER_IS_BETTER, Condition, RegisterRequest
from remote_magic.families import MODEL_FILE, PARAMS_FILE

from ..jobs.store import JobRow
from .access import Registry
from .records import NewVersion, VersionRow

log = logging.getLogger("remote_magic_server.registry")

MAX_PARAMS_BYTES = 64 * 1024


def asks_registration(job: JobRow) -> bool:
    """Whether a job's end registers its model: a succeeded training with a result that asked for it
    (the hand-over's rule; the status long-poll waits for its outcome by the same rule)."""
    return (
        job.plan.registration is not None
        and job.state == "succeeded"
        and job.kind == "train"
        and bool(job.result)
    )


@dataclass(frozen=True)
class RegistryEvent:
    type: str
    key: str
    model: str
    data: dict


def improvement(condition: Condition, new: dict, incumbent: VersionRow) -> tuple[bool, str]:
    """Whether released metric `new` beats the incumbent's by the margin, and the sentence saying so. In
    mode dp (both carry 95% intervals) it must also be beyond the noise: the intervals may not overlap,
    or an alias would move on noise."""
    metric = condition.metric
    old = incumbent.result.get("metrics", {}).get(metric)
    value = new.get("metrics", {}).get(metric)
    if value is None or old is None:
        return False, f"eval {metric} is not among the released metrics of this job and {incumbent.ref}"
    gain = (old - value) if metric in LOWER_IS_BETTER else (value - old)
    verdict = "improves" if gain >= condition.min_improvement - 1e-12 else "does not improve"
    said = f"by at least {condition.min_improvement:g}"
    band = new.get("intervals", {}).get(metric)
    old_band = incumbent.result.get("intervals", {}).get(metric)
    if verdict == "improves" and band and old_band and band[0] <= old_band[1] and old_band[0] <= band[1]:
        verdict, said = "does not improve", "beyond the noise (their 95% intervals overlap)"
    return (
        verdict == "improves",
        f"eval {metric} {value:.4g} {verdict} on {incumbent.ref}'s {old:.4g} {said}",
    )


def read_params(folder: Path) -> dict:
    """The parameters the worker trained with (it writes them beside the model); scalars only."""
    path = folder / PARAMS_FILE
    if not path.exists() or path.stat().st_size > MAX_PARAMS_BYTES:
        return {}
    try:
        raw = json.loads(path.read_bytes())
    except ValueError:
        return {}
    if not isinstance(raw, dict):
        return {}
    scalars = (str, int, float, bool, type(None))
    return {str(k)[:64]: v for k, v in list(raw.items())[:100] if isinstance(v, scalars)}


def _text(value: object) -> str | None:
    return None if value is None else str(value)


class Registrar:
    def __init__(self, registry: Registry):
        self.registry = registry
        self.store = registry.store

    def handle(self, job: JobRow) -> list[RegistryEvent]:
        """Register a succeeded training job that asked for it; return the events it caused."""
        register = job.plan.registration
        if register is None or not asks_registration(job):
            return []
        done = self.store.outcome(job.id)
        if done is None:
            self._register(job, register)
            done = self.store.outcome(job.id)
        return self._events(register, done)

    def _register(self, job: JobRow, register: RegisterRequest) -> None:
        folder = self.registry.jobs_dir / job.id
        if not (folder / MODEL_FILE).exists():
            self.store.record_outcome(job.id, "refused", "the job left no model to register")
            return
        if not self.store.claim_name(register.name, job.user):
            self.store.record_outcome(
                job.id, "refused", f"the model name {register.name!r} belongs to another user"
            )
            return
        if register.when is not None:
            aliases = self.store.aliases(register.name)
            number = aliases.get(register.alias) if register.alias else None
            incumbent = (
                self.store.version(register.name, number)
                if number is not None
                else self.store.latest(register.name)
            )
            if incumbent is not None:
                holds, sentence = improvement(register.when, job.result, incumbent)  # type: ignore[arg-type]
                if not holds:
                    self.store.record_outcome(job.id, "skipped", f"not registered: {sentence}")
                    return
        base = job.plan.base_model
        rounds_base = int(job.result.get("rounds", {}).get("base", 0))  # type: ignore[union-attr]
        origin = "version" if base else ("uploaded" if rounds_base else "fresh")
        row, _ = self.store.register(
            register.name,
            NewVersion(
                job_id=job.id,
                owner=job.user,
                dataset=job.dataset,
                dataset_version=_text(job.plan.dataset_version),
                origin=origin,
                parent=(base.name, base.number) if base else None,
                base_sha256=job.plan.payload_sha256 if origin == "uploaded" else None,
                spec=job.spec,
                params=read_params(folder),
                result=job.result,  # type: ignore[arg-type]
            ),
            register.alias,
        )
        log.info("model_registered", extra={"job": job.id, "version": row.ref})

    def _events(
        self, register: RegisterRequest, done: tuple[str, str | None, str] | None
    ) -> list[RegistryEvent]:
        if done is None or done[0] != "registered" or done[1] is None:
            return []
        name, number = done[1].split("@")
        row = self.store.version(name, int(number))
        if row is None:
            return []
        view = self.registry.view(row).model_dump(mode="json")
        events = [RegistryEvent("model.registered", f"model.registered:{row.ref}", name, view)]
        moved = self.store.alias_moved(name, register.alias) if register.alias else None
        if register.alias and moved is not None and moved[0] == row.number:
            events.append(alias_event(name, register.alias, row.number, moved[1]))
        return events


def alias_event(name: str, alias: str, number: int, moved_at: str) -> RegistryEvent:
    """An alias moved to `number` at `moved_at`: one event per move, however often it is told."""
    key = hashlib.sha256(f"{name}:{alias}:{number}:{moved_at}".encode()).hexdigest()[:16]
    data = {"name": name, "alias": alias, "version": number, "ref": f"{name}@{number}"}
    return RegistryEvent("alias.moved", f"alias.moved:{key}", name, data)
