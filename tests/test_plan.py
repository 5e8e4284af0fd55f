"""The typed job plan: what a store kept before it was typed still loads, and it is kept as it was.

A real SQLite store: a plan written as the older servers wrote it (some keys missing, one since
dropped) is read back as a `JobPlan`, and a plan the intake writes is stored with the same keys."""

from __future__ import annotations

import json
import sqlite3

from remote_magic_server.jobs.store import Store
from remote_magic_server.plan import BaseModelRef, JobPlan

OLDER_PLAN = {
    "features": ["age", "income"],
    "filter_columns": ["age", "income", "label"],
    "dataset_version": 3,
    "release": {"curve": 5},
    "register": {"name": "churn", "alias": "prod"},
    "base_model": {"ref": "churn@2", "name": "churn", "number": 2, "job": "abc", "sha256": "00"},
    "recipe": "nightly",
    "no_longer_used": True,
}


def test_a_plan_an_older_server_stored_still_loads(tmp_path):
    store = Store(tmp_path / "jobs.sqlite", tmp_path / "jobs")
    job, _ = store.create_job("u", "d", "train", {}, JobPlan(), b"payload", None)
    with sqlite3.connect(tmp_path / "jobs.sqlite") as db:
        db.execute("UPDATE jobs SET plan = ? WHERE id = ?", (json.dumps(OLDER_PLAN), job.id))
    plan = store.get_job(job.id).plan
    assert plan.features == ["age", "income"] and plan.derive_columns == [] and plan.label_dtype == ""
    assert plan.snapshot is None  # queued before datasets had versions: the scheduler takes the latest
    assert plan.release.curve == 5 and plan.registration.name == "churn"
    assert plan.base_model == BaseModelRef(ref="churn@2", name="churn", number=2, job="abc", sha256="00")
    assert plan.recipe == "nightly" and plan.trigger is None
    store.close()


def test_a_plan_is_stored_with_the_keys_it_always_had(tmp_path):
    plan = JobPlan.model_validate(OLDER_PLAN)
    stored = json.loads(plan.stored())
    assert "no_longer_used" not in stored and "trigger" not in stored  # unset keys are left out
    assert stored["register"] == {"name": "churn", "alias": "prod"} and stored["dataset_version"] == 3
    assert JobPlan.model_validate_json(plan.stored()) == plan
