"""Recipes over the real server: a new dataset version runs a recipe once, also when it appears while the
server is down or the server is killed during the run; a recipe whose spec no longer fits is paused and
says why; a moved alias runs an evaluation recipe; `every` fires once per period."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import xgboost as xgb

from remote_magic.client.errors import BadRequest, NotFound
from remote_magic.contract.automation_wire import RecipeIn, Triggers
from remote_magic.display.tables import jobs_table
from remote_magic_server.automation.recipes import Recipes
from remote_magic_server.automation.schema import open_automation
from remote_magic_server.automation.triggers import TriggerCheck
from remote_magic_server.demo import ensure_demo_data, free_port
from remote_magic_server.registry.records import ModelRegistry
from remote_magic_server.sqlitedb import now
from tests.hookreceiver import Receiver
from tests.serverproc import running, wait_until

FEATURES = ["mean_radius", "mean_texture", "mean_area", "worst_area"]
SPEC = {"dataset": "claims", "label": "malignant", "features": FEATURES, "eval": {"fraction": 0.3, "seed": 1}}
PORT = free_port()


def write_file(path: Path, frame: pd.DataFrame) -> None:
    """Replace the dataset's source file atomically, as a data owner's export job would."""
    tmp = path.with_suffix(".tmp")
    frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)


def write_version(server, path: Path, frame: pd.DataFrame) -> None:
    """A new version of the dataset: its source changes and the owner snapshots it (`dataset refresh`),
    whether the server is running or not."""
    write_file(path, frame)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_magic_server",
            "dataset",
            "refresh",
            "claims",
            "--config",
            str(server.config),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("recipes")
    claims = base / "claims.parquet"
    extra_datasets = (
        f'\n[datasets.claims]\npath = "{claims}"\nid_column = "id"\nlabel_columns = ["malignant"]\n'
        'privacy = "rules"\n'
    )
    extra = (
        f'[webhooks]\nallow = ["http://127.0.0.1:{PORT}"]\nbackoff_s = 0.2\n\n[automation]\npoll_s = 0.2\n'
    )
    (base / "data").mkdir()
    source = pd.read_parquet(ensure_demo_data(base / "data")["breast_cancer"])
    write_file(claims, source)
    users = {"alice": ["claims", "breast_cancer_rules", "synthetic"]}
    with running(base / "data", base / "server.log", users, extra_datasets, extra) as server:
        yield server, claims, source


def recipe_jobs(client, name: str) -> list:
    return [j for j in client.jobs(limit=200) if j.recipe == name]


def wait_jobs(client, name: str, count: int, timeout: float = 600.0, final: bool = True) -> list:
    found: list = []

    def enough() -> bool:
        found[:] = recipe_jobs(client, name)
        return len(found) >= count and (not final or all(j.state in ("succeeded", "failed") for j in found))

    wait_until(enough, timeout, f"{count} runs of {name}", every=0.2)
    return found


def round_began(server) -> str:
    db = sqlite3.connect(f"file:{server.settings.automation_path}?mode=ro", uri=True)
    try:
        row = db.execute("SELECT value FROM marks WHERE key = 'round_began'").fetchone()
    finally:
        db.close()
    return row[0] if row else ""


def wait_for_a_round(server) -> None:
    """Wait until a whole round of the automation loop, begun after this call, has ended: whatever was
    due by this call has been started."""
    since = now()
    wait_until(lambda: round_began(server) > since, 300, "a round of the automation loop")


def test_a_new_data_version_runs_the_recipe_once_even_across_kills(served):
    server, claims, source = served
    client = server.client()
    client.save_recipe(
        "nightly",
        SPEC,
        xgb.XGBClassifier(n_estimators=3, max_depth=2),
        on_new_data=True,
        register="claims_model",
    )
    wait_for_a_round(server)
    assert recipe_jobs(client, "nightly") == [], "saving a recipe never runs it"

    write_version(server, claims, source.assign(mean_texture=source.mean_texture * 1.001))
    [first] = wait_jobs(client, "nightly", 1)
    assert (
        first.state == "succeeded" and first.trigger.startswith("new version ") and "claims" in first.trigger
    )
    assert "recipe nightly (new version" in repr(jobs_table([first]))

    server.stop(signal.SIGKILL)  # the next version appears while the server is down
    write_version(server, claims, source.iloc[20:])  # 20 rows fewer: past the differencing rule
    server.start()
    runs = wait_jobs(client, "nightly", 2)
    write_version(server, claims, source.iloc[40:])
    wait_until(lambda: len(recipe_jobs(client, "nightly")) >= 3, 300, "the third run", every=0.05)
    server.stop(signal.SIGKILL)  # killed while the run it started is queued or running
    server.start()
    runs = wait_jobs(client, "nightly", 3)
    wait_for_a_round(server)  # a fourth run would have started by now
    runs = recipe_jobs(client, "nightly")
    assert len(runs) == 3 and all(j.state == "succeeded" for j in runs), [(j.state, j.error) for j in runs]
    assert len({j.trigger for j in runs}) == 3
    versions = client.models("claims_model").models[0].versions
    assert [v.number for v in versions] == [1, 2, 3]
    assert len({v.lineage.dataset_version for v in versions}) == 3
    assert client.recipe("nightly").runs == 3


def test_a_recipe_whose_spec_no_longer_fits_is_paused_with_a_clear_message(served):
    server, claims, source = served
    client = server.client()
    receiver = Receiver(PORT)
    try:
        hook = client.subscribe(receiver.url, ["recipe.paused", "dataset.version"])
        client.save_recipe("fragile", SPEC, xgb.XGBClassifier(n_estimators=2), on_new_data=True)
        write_version(server, claims, source.drop(columns=["worst_area"]))
        wait_until(lambda: client.recipe("fragile").state != "active", 300, "the recipe to pause", every=0.2)
        recipe = client.recipe("fragile")
        assert recipe.state == "paused" and "worst_area" in recipe.paused_reason
        assert recipe_jobs(client, "fragile") == []
        events = {r.body.decode() for r in receiver.wait_for(2)}
        assert any('"recipe.paused"' in e and "worst_area" in e for e in events)
        assert any('"dataset.version"' in e and '"claims"' in e for e in events)
        client.unsubscribe(hook.id)
    finally:
        receiver.close()
        write_version(server, claims, source)
    client.delete_recipe("fragile")
    with pytest.raises(NotFound):
        client.recipe("fragile")


def test_a_recipe_run_passes_the_same_disclosure_rules_as_a_run_by_hand(served):
    server, _, _ = served
    client = server.client()
    tiny = {**SPEC, "dataset": "breast_cancer_rules", "where": "mean_radius > 25"}
    client.save_recipe("tiny", tiny, xgb.XGBClassifier(n_estimators=2), every="1d")
    job = client.run_recipe("tiny")
    status = job.wait(timeout=600)
    assert status.state == "failed" and status.error.code == "cohort_too_small"
    assert status.recipe == "tiny" and status.trigger == "run by hand"
    with pytest.raises(BadRequest, match="at least one trigger"):
        client.save_recipe("idle", tiny, xgb.XGBClassifier(n_estimators=2))


def test_a_recipe_run_spends_the_same_privacy_budget_as_a_run_by_hand(served):
    server, _, _ = served
    client = server.client()
    spec = {"dataset": "synthetic", "label": "label", "eval": {"fraction": 0.2, "seed": 9}}
    by_hand = client.train(
        xgb.XGBClassifier(n_estimators=3, max_depth=2, min_child_weight=3), spec
    ).raw.privacy
    model = xgb.XGBClassifier(n_estimators=4, max_depth=2, min_child_weight=3)
    client.save_recipe("private_run", spec, model, every="1d")
    run = client.run_recipe("private_run").result().raw.privacy
    assert by_hand.rho > 0 and run.rho == pytest.approx(by_hand.rho) and not run.repeated
    assert run.rho_spent == pytest.approx(by_hand.rho_spent + run.rho)


def test_a_moved_alias_runs_an_evaluation_recipe(served):
    server, _, _ = served
    client = server.client()
    spec = {**SPEC, "dataset": "breast_cancer_rules"}
    client.train(xgb.XGBClassifier(n_estimators=3), spec, register="watched")
    with pytest.raises(NotFound):  # the alias does not exist yet: the first run could not be checked
        client.save_recipe(
            "judge", spec, kind="evaluate", base_model="watched@champion", on_new_model="watched"
        )
    client.save_recipe("judge", spec, kind="evaluate", base_model="watched@latest", on_new_model="watched")
    client.set_alias("watched", "champion", 1)
    [run] = wait_jobs(client, "judge", 1)
    assert run.kind == "evaluate" and run.state == "succeeded" and run.base_model == "watched@1"
    assert run.trigger == "alias champion moved to watched@1"
    with pytest.raises(BadRequest, match="may not register into"):
        client.save_recipe("loop", spec, xgb.XGBClassifier(), on_new_model="watched", register="watched")


def test_every_fires_once_per_period(tmp_path):
    db = open_automation(tmp_path / "automation.sqlite")
    models = ModelRegistry(tmp_path / "registry.sqlite")
    recipes = Recipes(db)
    check = TriggerCheck(recipes, versions=None, models=models)  # type: ignore[arg-type]
    recipe = RecipeIn(name="daily", spec=SPEC, triggers=Triggers(every="1d"))
    start = 86400 * 20000 + 10
    recipes.save("alice", recipe, b"", check.marks(recipe, at=start))
    assert check.check(at=start + 3600) == []
    [fire] = check.check(at=start + 86400)
    assert fire.trigger == "every 1d" and check.check(at=start + 86400 + 60) == []
    assert len(check.check(at=start + 5 * 86400)) == 1, "days missed while down fire once, not four times"
    assert recipes.unstarted() == [fire, *recipes.unstarted()[1:]]
    db.close()
    models.close()
