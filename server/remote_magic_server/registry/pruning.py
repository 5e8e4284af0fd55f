"""Storage of trained models: a job's model is kept for `[registry] keep_unregistered`, then removed
unless it is a registered version (those stay until their owner deletes them).

A job's catalog entry says which it is: kept, registered or pruned (api/jobs.py reads the folder).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

from ..jobs.store import MODEL_FILES, Store
from .records import ModelRegistry

log = logging.getLogger("remote_magic_server.registry")


def prune(store: Store, registry: ModelRegistry, keep_s: int) -> list[str]:
    """Remove the model files of final jobs older than `keep_s` whose model is not registered."""
    cutoff = (datetime.now(timezone.utc) - timedelta(seconds=keep_s)).isoformat(timespec="milliseconds")
    keep = registry.registered_jobs()
    pruned = []
    for job_id in store.final_jobs(before=cutoff):
        if job_id in keep:
            continue
        folder = store.job_dir(job_id)
        removed = [name for name in MODEL_FILES if (folder / name).exists()]
        for name in removed:
            (folder / name).unlink(missing_ok=True)
        if removed:
            pruned.append(job_id)
    if pruned:
        log.info("models_pruned", extra={"count": len(pruned)})
    return pruned
