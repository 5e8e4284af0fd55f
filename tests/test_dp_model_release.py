"""A model the DP trainer trained is a DP release: it leaves at once, to its job's owner, at no further
cost; every other model still waits for the data owner's approval. Real server over HTTP, a real mode-dp
job trained by the DP trainer.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb
from IPython.core.error import UsageError
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from remote_magic.client.errors import DisclosureRefused, RemoteError
from remote_magic.contract.wire import DPTraining
from remote_magic.display.model import RemoteModel
from remote_magic_server.demo import ensure_demo_data
from remote_magic_server.jobs.store import Store
from remote_magic_server.privacy.model_release import NOT_ALLOWED, may_leave, outside_proof
from tests.serverproc import USERS, dataset_table, magic_shell, pause_worker, running

FEATURES = ["age", "income", "bmi", "smoker", "visits"]
DP_SPEC = {"dataset": "synthetic", "label": "label", "features": FEATURES}
TRAINING = DPTraining(rho=0.05, epsilon=1.93, trees=8, sigma_gradient=3.2, sigma_hessian=1.6)


# the rule, as a pure function
def test_a_dp_trained_model_may_leave_whatever_the_dataset_and_the_owner_said():
    for allowed in (False, True):
        for decided in (None, ("refused", "a leaf is small"), ("awaiting_approval", "awaits")):
            state, message = may_leave(TRAINING, allowed, decided)
            assert state == "dp_model"
            assert "DP release" in message and "epsilon 1.93" in message and "rho 0.05" in message


def test_a_job_that_ran_notebook_code_or_continued_a_non_dp_model_is_never_a_dp_release():
    outside = outside_proof(True, None)
    assert outside == "the job ran notebook code"
    said = f"no DP release ({outside}): models stay on the server"
    assert may_leave(TRAINING, True, None, outside) == ("not_allowed", said)
    assert may_leave(TRAINING, True, ("awaiting_approval", "awaits"), outside)[0] == "awaiting_approval"
    assert outside_proof(False, ("m@1", False)) == "its base model m@1 was not a DP release"
    assert outside_proof(False, ("m@1", True)) is None and outside_proof(False, None) is None


def test_any_other_model_leaves_only_as_the_dataset_and_the_owner_decided():
    assert may_leave(None, False, ("approved", "ok")) == ("not_allowed", NOT_ALLOWED)
    assert may_leave(None, True, None) == ("not_allowed", NOT_ALLOWED)
    assert may_leave(None, True, ("awaiting_approval", "awaits")) == ("awaiting_approval", "awaits")
    assert may_leave(None, True, ("approved", "ok")) == ("approved", "ok")


# over HTTP
@pytest.fixture(scope="module")
def dp_server(tmp_path_factory):
    """The demo tables, and the synthetic one once more with model release on (mode rules)."""
    base = tmp_path_factory.mktemp("dpout")
    path = ensure_demo_data(base / "data")["synthetic"]
    flags = base / "flags.parquet"
    table = pd.read_parquet(path)
    member = pd.array(np.where(table["id"] % 7 == 0, None, table["smoker"] == 1), dtype="boolean")
    table.assign(outcome=table["label"] == 1, member=member).to_parquet(flags)
    grades = base / "grades.parquet"
    table.assign(grade=np.where(table["label"] == 1, 10, 5)).drop(columns="label").to_parquet(grades)
    extra = (
        (
            f'\n[datasets.release_on]\npath = "{path}"\nid_column = "id"\nlabel_columns = ["label"]\n'
            'privacy = "rules"\nallow_model_release = true\n'
        )
        + dataset_table("undeclared", path, "label")
        + dataset_table("by_region", path, "region")
        + dataset_table("flags", flags, "outcome", **{"column_levels.outcome": "[true, false]"})
        + dataset_table("grades", grades, "grade", **{"column_levels.grade": '["5", "10"]'})
    )
    users = {**USERS, "alice": [*USERS["alice"], "release_on", "undeclared", "by_region", "flags", "grades"]}
    grants = '[registry]\ngrants = { dp_out = ["bob"], approved_out = ["bob"], flags_out = ["bob"] }\n'
    with running(base / "data", base / "server.log", users, extra_datasets=extra, extra=grants) as server:
        yield server


@pytest.fixture(scope="module")
def dp_job(dp_server):
    """A finished mode-dp train job whose model the DP trainer trained, registered as dp_out@1."""
    client = dp_server.client()
    result = client.train(xgb.XGBClassifier(n_estimators=8, max_depth=3), DP_SPEC, register="dp_out")
    assert result.raw.training is not None and result.raw.training.trees == 8
    return result


def test_a_dp_model_downloads_at_once_with_its_cost_and_nothing_more_is_charged(dp_server, dp_job):
    client = dp_server.client()
    training = dp_job.raw.training
    assert training is not None and dp_job.training == training.model_dump()
    status = client.model_status(dp_job.job_id)
    assert status.state == "dp_model"
    assert "DP release" in status.message and f"epsilon {training.epsilon:.3g}" in status.message
    before = client.rho_left("synthetic")
    model = dp_job.model()
    assert client.rho_left("synthetic") == before  # the download is free
    assert model.dp and model.release == "dp_model" and model.training == training
    assert model.budget_left == before and model.dataset == "synthetic" and model.task == "binary"
    assert isinstance(model.estimator, xgb.XGBClassifier) and model.classes == ["0", "1"]
    rounds = dp_job.rounds["total"]
    assert model.booster.num_boosted_rounds() == rounds
    line = model.summary()
    assert f"XGBClassifier (binary classifier, {rounds} rounds): a DP release" in line
    assert f"epsilon {training.epsilon:.3g}" in line and f"budget left on synthetic: rho {before:.3g}" in line
    assert dp_job.job_id not in line
    stored = dp_server.settings.jobs_dir / dp_job.job_id / "model.json"
    assert client.download_model(dp_job.job_id) == stored.read_bytes()
    [first, *_] = downloads(dp_server, dp_job.job_id)
    assert first["release"] == "dp_model" and first["dataset"] == "synthetic" and first["user"] == "alice"


def downloads(server, job_id: str) -> list[dict]:
    """The audit log's model downloads of one job."""
    lines = (server.data_dir / "audit.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if '"model_download"' in line]
    return [entry for entry in entries if entry.get("job") == job_id]


def test_a_dp_model_is_its_owners_only(dp_server, dp_job):
    bob = dp_server.client("bob")
    for call in (bob.download_model, bob.model_status, bob.load_model):
        with pytest.raises(RemoteError) as missing:
            call(dp_job.job_id)
        assert missing.value.code == "not_found"


def test_the_downloaded_dp_model_predicts_what_the_server_scored(dp_server, dp_job):
    """The server scores its registered copy on the mode-rules twin of the table (exact metrics, four
    significant digits); the downloaded model scores the same rows of the same file here."""
    client = dp_server.client()
    version = client.model("dp_out@1")
    assert version.training == dp_job.raw.training
    model = client.load_version("dp_out@1")
    assert model.ref == "dp_out@1" and model.training == dp_job.raw.training
    where = "age >= 50"
    scored = client.evaluate(
        None, {**DP_SPEC, "dataset": "synthetic_rules", "where": where}, model_ref="dp_out@1"
    )
    table = pd.read_parquet(dp_server.settings.datasets["synthetic"].path)
    rows = table[(table["age"] >= 50) & table["label"].notna()]
    probability = model.estimator.predict_proba(rows[FEATURES])[:, 1]
    assert np.array_equal(probability, dp_job.model().booster.predict(xgb.DMatrix(rows[FEATURES])))
    here = {
        "log_loss": log_loss(rows["label"], probability),
        "auc": roc_auc_score(rows["label"], probability),
    }
    for name, value in here.items():
        unit = 10 ** (math.floor(math.log10(abs(value))) - 3)  # the fourth significant digit
        assert abs(scored.metrics[name] - value) <= unit / 2 + 1e-12, (name, scored.metrics[name], value)
    evaluated = client.model_status(scored.job_id)
    assert evaluated.state == "not_allowed" and evaluated.message.startswith(
        "this job evaluated a model and trained none"
    )


def test_a_downloaded_model_computes_its_jobs_derived_columns_from_your_rows(dp_server):
    """A model trained with `derive` failed on the analyst's rows ("your rows lack 2 column(s)"), and
    rebuilding them by hand can differ without a word; the downloaded model now computes them by the
    job's own expressions, and predicts what the server scored on the same rows."""
    derive = {"risk": "0.07 * age - ln(income) + 0.14 * bmi", "older": "CASE WHEN age > 65 THEN 1 ELSE 0 END"}
    client = dp_server.client()
    spec = {**DP_SPEC, "derive": derive}
    trained = client.train(xgb.XGBClassifier(n_estimators=8, max_depth=3), spec, register="derived_out")
    where = "age >= 50"
    scored = client.evaluate(
        None, {**spec, "dataset": "synthetic_rules", "where": where}, model_ref="derived_out@1"
    )
    path = dp_server.settings.datasets["synthetic"].path
    table = pd.read_parquet(path)
    rows = table[(table["age"] >= 50) & table["label"].notna()]
    mine = rows[FEATURES]  # the analyst's rows: no risk, no older
    by_server = duckdb.sql(  # the server's engine over the same file, as a check written apart
        f"SELECT 0.07 * age - ln(income) + 0.14 * bmi AS risk, CASE WHEN age > 65 THEN 1 ELSE 0 END AS older "
        f"FROM read_parquet('{path}') WHERE age >= 50 AND label IS NOT NULL"
    ).df()
    for model in (trained.model(), client.load_version("derived_out@1")):
        probability = model.predict_proba(mine)[:, 1]
        full = mine.assign(risk=by_server["risk"].to_numpy(), older=by_server["older"].to_numpy())
        assert np.array_equal(
            probability, model.booster.predict(xgb.DMatrix(full[model.booster.feature_names]))
        )
    for name, value in {
        "log_loss": log_loss(rows["label"], probability),
        "auc": roc_auc_score(rows["label"], probability),
    }.items():
        unit = 10 ** (math.floor(math.log10(abs(value))) - 3)
        assert abs(scored.metrics[name] - value) <= unit / 2 + 1e-12, (name, scored.metrics[name], value)
    with pytest.raises(ValueError, match=r"derived column\(s\) risk = 0.07 \* age .*unknown column 'income'"):
        model.predict_proba(mine.drop(columns="income"))


def test_a_registered_version_is_evaluated_with_the_classes_it_was_trained_on(dp_server):
    """The owner of `undeclared` named no classes: a mode-dp job on it needs public ones. The analyst
    named them to train; evaluating the registered version (no fitted model in the cell for the client
    to read them from) takes that job's classes, which were public then, instead of refusing."""
    client = dp_server.client()
    spec = {**DP_SPEC, "dataset": "undeclared"}
    with pytest.raises(RemoteError) as unnamed:
        client.train(xgb.XGBClassifier(n_estimators=3, max_depth=2), spec)
    assert unnamed.value.code == "unsupported_model" and "`classes`" in unnamed.value.message
    trained = client.train(
        xgb.XGBClassifier(n_estimators=3, max_depth=2), {**spec, "classes": [0, 1]}, register="undeclared_out"
    )
    assert [c.label for c in trained.raw.summary.train.classes] == ["0", "1"]
    before = client.rho_left("undeclared")
    scored = client.evaluate(None, spec, model_ref="undeclared_out@1")
    assert [c.label for c in scored.raw.summary.eval.classes] == ["0", "1"]
    assert "auc" in scored.metrics and client.rho_left("undeclared") < before


def test_a_model_fitted_on_other_columns_is_refused_before_any_row_at_no_cost(dp_server):
    """XGBoost refused it after admission: charged, and `not_released` said to raise min_child_weight.
    The model's columns are its own: compared with the spec's before any row is read."""
    client = dp_server.client()
    rng = np.random.default_rng(0)
    named = pd.DataFrame(rng.normal(size=(50, 3)), columns=FEATURES[:3])
    fitted = [
        xgb.XGBClassifier(n_estimators=2).fit(named, rng.integers(0, 2, 50)),
        xgb.XGBClassifier(n_estimators=2).fit(named.to_numpy(), rng.integers(0, 2, 50)),
        xgb.XGBClassifier(n_estimators=2).fit(named[FEATURES[2::-1]], rng.integers(0, 2, 50)),
    ]
    before = client.rho_left("synthetic")
    messages = []
    for model in fitted:
        with pytest.raises(RemoteError) as refused:
            client.evaluate(model, {**DP_SPEC, "features": FEATURES[:3] if model is fitted[2] else FEATURES})
        assert refused.value.code == "feature_mismatch"
        messages.append(refused.value.message)
    assert "fitted on the features age, income, bmi" in messages[0] and "3 features" in messages[1]
    assert "bmi, income, age" in messages[2]
    assert client.rho_left("synthetic") == before
    assert client.evaluate(fitted[0], {**DP_SPEC, "features": FEATURES[:3]}).metrics["log_loss"] is not None


def test_a_repeated_training_is_its_first_runs_model_downloaded_and_registered(dp_server):
    """Running the same cell again is answered from the stored result at no cost; it is the first run's
    model too, so it downloads, and a `register` added on the second run registers it."""
    client = dp_server.client()
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2)
    spec = {**DP_SPEC, "where": "age > 30"}
    first = client.train(model, spec)
    before = client.rho_left("synthetic")
    again = client.train(model, spec, register="repeated_out")
    assert again.raw.privacy.repeated and client.rho_left("synthetic") == before
    assert client.download_model(again.job_id) == client.download_model(first.job_id)
    registration = client.status(again.job_id).registration  # answered with the job's end, not later
    assert registration is not None and registration.state == "registered", registration
    assert "registered as repeated_out@1" in again.raw.notes
    assert client.load_version("repeated_out@1").booster.save_raw() == first.model().booster.save_raw()
    for n in range(4):  # a repeat ends as it is claimed: the long-poll that saw it claimed wakes at its end
        job = client.submit(model, spec, register=f"repeated_{n}")
        answer = dp_server.get(f"/jobs/{job.id}", params={"wait": 60, "final": "true"}).json()
        assert answer["state"] == "succeeded", answer
        assert answer["registration"] == {
            "state": "registered",
            "version": f"repeated_{n}@1",
            "message": f"registered as repeated_{n}@1",
        }, answer["registration"]


def test_a_model_not_trained_by_the_dp_trainer_still_waits_for_approval(dp_server):
    client = dp_server.client()
    spec = {**DP_SPEC, "dataset": "release_on"}
    result = client.train(xgb.XGBClassifier(n_estimators=4, max_depth=2, min_child_weight=5), spec)
    assert result.raw.training is None
    assert client.model_status(result.job_id).state == "awaiting_approval"
    for take in (result.model, result.download_model, lambda: client.load_model(result.job_id)):
        with pytest.raises(DisclosureRefused, match=f"remote-magic-server approve {result.job_id}"):
            take()
    off = client.train(
        xgb.XGBClassifier(n_estimators=4, max_depth=2), {**DP_SPEC, "dataset": "synthetic_rules"}
    )
    # mode dp_eval_only: DP numbers, but the model was trained without DP, so it is no DP release
    eval_only = client.train(
        xgb.XGBClassifier(n_estimators=4, max_depth=2), {**DP_SPEC, "dataset": "synthetic_eval_only"}
    )
    assert eval_only.raw.privacy is not None and eval_only.raw.training is None
    for job in (off, eval_only):
        assert client.model_status(job.job_id).state == "not_allowed"
        with pytest.raises(DisclosureRefused, match="models stay on the server"):
            job.model()
        assert downloads(dp_server, job.job_id) == []
    assert downloads(dp_server, result.job_id) == []


def test_a_model_continued_from_one_trained_without_dp_is_no_dp_release(dp_server, dp_job):
    """Its first trees are in the file and the proof covers only the new ones (found by review: a mode
    rules model, one row a leaf, left as a DP release after one DP round on top of it)."""
    client = dp_server.client()
    rules = {**DP_SPEC, "dataset": "synthetic_rules"}
    client.train(xgb.XGBClassifier(n_estimators=3, max_depth=6, min_child_weight=0), rules, register="plain")
    on_top = client.train(xgb.XGBClassifier(n_estimators=1, max_depth=2), DP_SPEC, base_model="plain@1")
    assert on_top.raw.training is not None  # the new tree is the DP trainer's
    status = client.model_status(on_top.job_id)
    assert status.state == "not_allowed" and "base model plain@1 was not a DP release" in status.message
    with pytest.raises(DisclosureRefused, match="plain@1 was not a DP release"):
        on_top.model()
    assert downloads(dp_server, on_top.job_id) == []
    # a DP version continued by the DP trainer is a DP release still, and so is what continues that
    again = client.train(xgb.XGBClassifier(n_estimators=1, max_depth=2), DP_SPEC, base_model="dp_out@1")
    assert client.model_status(again.job_id).state == "dp_model"
    assert again.model().booster.num_boosted_rounds() == 9
    # Jobs accepted before the intake recorded whether the base was a DP release are asked about now.
    for job_id, state in ((again.job_id, "dp_model"), (on_top.job_id, "not_allowed")):
        db = sqlite3.connect(dp_server.settings.db_path)
        with db:
            db.execute(
                "UPDATE jobs SET plan = json_remove(plan, '$.base_model.dp_release') WHERE id = ?", (job_id,)
            )
        db.close()
        assert client.model_status(job_id).state == state


def test_the_registry_gives_a_dp_version_to_those_who_see_it_and_an_approved_one_to_its_owner(
    dp_server, dp_job
):
    alice, bob = dp_server.client(), dp_server.client("bob")
    shared = bob.load_version("dp_out@1")  # granted: a DP release, like the version's released metrics
    assert shared.dp and shared.job_id == dp_job.job_id and shared.budget_left is None
    spec = {**DP_SPEC, "dataset": "release_on"}
    result = alice.train(
        xgb.XGBClassifier(n_estimators=4, max_depth=2, min_child_weight=5), spec, register="approved_out"
    )
    with pytest.raises(DisclosureRefused, match="remote-magic-server approve"):
        alice.load_version("approved_out@1")
    approve = [sys.executable, "-m", "remote_magic_server", "approve", result.job_id, "--config"]
    done = subprocess.run([*approve, str(dp_server.config)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    model = alice.load_version("approved_out@1")
    assert model.release == "approved" and model.training is None and model.booster.num_boosted_rounds() == 4
    assert model.summary().endswith("released with the data owner's approval; no privacy budget spent on it")
    with pytest.raises(DisclosureRefused, match="approved for its owner only"):
        bob.load_version("approved_out@1")
    assert [e["user"] for e in downloads(dp_server, result.job_id)] == ["alice"]


def test_unknown_and_unfinished_jobs_say_so(dp_server):
    client = dp_server.client()
    with pytest.raises(RemoteError) as missing:
        client.load_model("no-such-job")
    assert missing.value.code == "not_found"
    job = client.submit(
        xgb.XGBClassifier(n_estimators=2, max_depth=2), {**DP_SPEC, "dataset": "synthetic_rules"}
    )
    pid = pause_worker(dp_server, job.id)
    try:
        for call in (client.load_model, client.model_status):
            with pytest.raises(RemoteError, match="not finished") as waiting:
                call(job.id)
            assert waiting.value.code == "not_finished"
    finally:
        os.kill(pid, signal.SIGCONT)
    job.wait(timeout=300)


# the magic
@pytest.fixture()
def dp_shell(dp_server, monkeypatch):
    with magic_shell(dp_server, "alice", monkeypatch) as ip:
        yield ip


def test_the_magic_puts_a_dp_model_in_the_notebook_and_says_its_cost(dp_shell, dp_job, capsys):
    dp_shell.run_line_magic("remote_model", f"{dp_job.job_id} --as clf")
    said = capsys.readouterr().out
    rounds = dp_job.rounds["total"]
    assert said.startswith(f"clf: XGBClassifier (binary classifier, {rounds} rounds): a DP release")
    assert "epsilon" in said and "budget left on synthetic" in said and len(said.strip().splitlines()) == 1
    clf = dp_shell.user_ns["clf"]
    assert isinstance(clf, RemoteModel) and isinstance(clf.estimator, xgb.XGBClassifier)
    rows = pd.DataFrame(
        {"age": [70.0, 30.0], "income": [20e3, 90e3], "bmi": [35.0, 21.0], "smoker": [1, 0], "visits": [9, 0]}
    )
    assert clf.predict_proba(rows).shape == (2, 2) and list(clf.predict(rows)) in (
        [0, 1],
        [1, 0],
        [0, 0],
        [1, 1],
    )
    dp_shell.user_ns["res"] = dp_job
    dp_shell.run_line_magic("remote_model", "res --as booster --booster")
    assert isinstance(dp_shell.user_ns["booster"], xgb.Booster)
    shown = dp_shell.run_line_magic("remote_model", "dp_out@1")
    assert shown.ref == "dp_out@1" and "a DP release" in repr(shown)


def test_rows_missing_a_feature_are_refused_naming_it_and_extra_columns_are_not_read(dp_job):
    model = dp_job.model()
    rows = pd.DataFrame(
        {"age": [70.0], "income": [20e3], "BMI": [35.0], "smoker": [1], "visits": [9], "label": [1]}
    )
    for predict in (model.predict, model.predict_proba):
        with pytest.raises(ValueError) as refused:
            predict(rows)
        said = str(refused.value)
        assert said.startswith("your rows lack 1 column(s) the model was trained on: bmi")
        assert "(it does not read your column(s) BMI, label)" in said
    shuffled = rows.rename(columns={"BMI": "bmi"})[["label", "visits", "bmi", "smoker", "income", "age"]]
    expected = model.estimator.predict_proba(shuffled[FEATURES])
    assert model.predict_proba(shuffled).tolist() == expected.tolist()


def test_text_columns_are_read_against_the_levels_the_model_knows(dp_server):
    spec = {**DP_SPEC, "features": ["age", "region"]}
    model = dp_server.client().train(xgb.XGBClassifier(n_estimators=3, max_depth=2), spec).model()
    assert model.dp and model.booster.feature_types == ["float", "c"]
    mine = pd.DataFrame({"age": [70.0, 70.0, 70.0], "region": ["north", "atlantis", None]})
    probability = model.predict_proba(mine)
    assert probability[1].tolist() == probability[2].tolist()  # an unknown level reads as missing
    coded = pd.DataFrame(
        {
            "age": [70.0],
            "region": pd.Categorical(["north"], categories=model.rows(mine)["region"].cat.categories),
        }
    )
    assert probability[0].tolist() == model.estimator.predict_proba(coded)[0].tolist()


def test_the_magic_refuses_bad_arguments_clearly(dp_shell, dp_job):
    with pytest.raises(UsageError, match="--booster needs --as"):
        dp_shell.run_line_magic("remote_model", f"{dp_job.job_id} --booster")
    with pytest.raises(UsageError, match="not a variable name"):
        dp_shell.run_line_magic("remote_model", f"{dp_job.job_id} --as 1x")
    with pytest.raises(UsageError, match="'nope' is neither a variable in this notebook nor a job id"):
        dp_shell.run_line_magic("remote_model", "nope --as m")
    with pytest.raises(RemoteError, match="no such job"):
        dp_shell.run_line_magic("remote_model", "0123456789abcdef --as m")
    assert "m" not in dp_shell.user_ns


def test_every_magic_that_takes_a_job_reads_the_same_words_and_says_which_it_was_not(
    dp_server, dp_shell, dp_job
):
    """In a fresh kernel `%remote_model bare` said "no such job" (the word went to the server as an
    id); `%remote_job e1`, `e1` a result variable, said so too though `%remote_model e1` took it; and
    `%remote_model --as last` asked for a JOB_ID without saying why."""
    for magic in ("remote_job", "remote_model", "remote_cancel"):
        with pytest.raises(UsageError) as neither:
            dp_shell.run_line_magic(magic, "bare")
        said = str(neither.value)
        assert said.startswith("'bare' is neither a variable in this notebook nor a job id; %" + magic)
    for magic, line in (("remote_model", "--as last"), ("remote_job", "")):
        with pytest.raises(UsageError, match=f"%{magic} needs a job .*no job has run in this session yet"):
            dp_shell.run_line_magic(magic, line)
    dp_shell.user_ns["e1"] = dp_job
    dp_shell.user_ns["handle"] = dp_server.client().job(dp_job.job_id)
    for word in ("e1", "handle", dp_job.job_id):
        assert dp_shell.run_line_magic("remote_job", word).job_id == dp_job.job_id
        assert dp_shell.run_line_magic("remote_model", word).job_id == dp_job.job_id
    dp_shell.user_ns["spec"] = DP_SPEC
    with pytest.raises(UsageError, match="'spec' holds a dict, not a job or its result"):
        dp_shell.run_line_magic("remote_job", "spec")
    with pytest.raises(UsageError, match="'dp_out@1' is a registered version; %remote_job takes a job id"):
        dp_shell.run_line_magic("remote_job", "dp_out@1")


def test_a_saved_model_file_reads_back(tmp_path: Path, dp_job):
    booster = dp_job.download_model(tmp_path / "model.json")
    assert (
        xgb.Booster(model_file=str(tmp_path / "model.json")).num_boosted_rounds()
        == booster.num_boosted_rounds()
    )


def test_the_mlflow_export_logs_a_dp_model_at_once(tmp_path: Path, dp_server, dp_job):
    """The exporter asks the release desk as the server does (app.py); a DP model's file is logged."""
    mlflow = pytest.importorskip("mlflow")
    from remote_magic_server.api.models import job_release
    from remote_magic_server.audit import AuditLog
    from remote_magic_server.automation.mlflow_export import MlflowExporter
    from remote_magic_server.config.settings import load_settings
    from remote_magic_server.jobs.store import Store
    from remote_magic_server.release.desk import ReleaseDesk
    from remote_magic_server.release.ledger import Ledger

    settings = load_settings(dp_server.config)
    desk = ReleaseDesk(settings, Ledger(settings.ledger_path), AuditLog(tmp_path / "audit.log"))
    settings.server.data_dir = tmp_path
    store = Store(dp_server.settings.db_path, dp_server.settings.jobs_dir)
    try:
        exporter = MlflowExporter(settings, store, lambda job: job_release(desk, job, store))
        exporter._run({"id": dp_job.job_id})
    finally:
        store.close()
    ml = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    [run] = ml.search_runs([ml.get_experiment_by_name(settings.mlflow.experiment).experiment_id])
    assert [f.path for f in ml.list_artifacts(run.info.run_id, "model")] == ["model/model.json"]
    assert run.data.tags["remote_magic.dp_model"] == f"epsilon {dp_job.raw.training.epsilon:.3g}"


def test_a_repeat_copies_the_first_runs_model_files_never_what_a_link_points_at(tmp_path):
    """A worker that could make links in its folder must not make a repeat's folder hold another file."""
    store = Store(tmp_path / "store.sqlite", tmp_path / "jobs")
    first = store.job_dir("first")
    first.mkdir(parents=True)
    (first / "model.json").write_text('{"model": 1}')
    secret = tmp_path / "secret.txt"
    secret.write_text("not a model")
    (first / "params.json").symlink_to(secret)
    store.copy_model("first", "again")
    again = store.job_dir("again")
    assert (again / "model.json").read_text() == '{"model": 1}'
    assert not (again / "params.json").exists()


def test_a_class_count_the_label_does_not_have_is_refused_before_any_row_at_no_cost(dp_server):
    """`num_class = 3` on a label with two declared classes was admitted, charged, and failed
    `not_released` with advice about min_child_weight. An `XGBClassifier()` on four classes trains."""
    client = dp_server.client()
    before = client.rho_left("synthetic")
    for model in (
        xgb.XGBClassifier(objective="multi:softprob", num_class=3, n_estimators=2),
        xgb.XGBClassifier(num_class=3, n_estimators=2),
    ):
        with pytest.raises(RemoteError) as refused:
            client.train(model, DP_SPEC)
        assert refused.value.code == "invalid_model" and "num_class = 3" in refused.value.message
        assert "2 classes" in refused.value.message
    assert client.rho_left("synthetic") == before
    four = {"dataset": "by_region", "label": "region", "features": ["age"]}
    four["classes"] = ["east", "north", "south", "west"]
    trained = client.train(xgb.XGBClassifier(n_estimators=2), four)
    assert len(trained.raw.summary.train.classes) == 4
    home = client.load_model(trained.job_id)  # predicts the label's levels, not XGBoost's codes
    assert set(home.predict(pd.DataFrame({"age": [20.0, 50.0, 80.0]}))) <= set(four["classes"])


def test_a_failed_jobs_model_status_says_it_failed_not_that_release_is_off(dp_server):
    """`%remote_model` after a refused parameter took the failed job and said "model release is off for
    this dataset", on a dataset whose DP models always leave."""
    client = dp_server.client()
    job = client.submit(xgb.XGBClassifier(scale_pos_weight=2.0, n_estimators=2), DP_SPEC)
    job.wait(timeout=120)
    assert job.status.state == "failed"
    status = client.model_status(job.id)
    assert (
        status.state == "not_allowed"
        and status.message == "this job failed and left no model: there is no model to take"
    )


def test_a_regressor_on_a_text_label_is_told_to_classify(dp_server):
    """It was told to ask the data owner for a numeric range of the text label."""
    client = dp_server.client()
    with pytest.raises(RemoteError) as refused:
        client.train(
            xgb.XGBRegressor(n_estimators=2), {"dataset": "by_region", "label": "region", "features": ["age"]}
        )
    assert refused.value.code == "unsupported_model", refused.value.message
    assert "'region' is text, and a regressor needs numbers: use XGBClassifier" in refused.value.message


def test_a_regressor_on_a_label_with_declared_classes_is_told_to_classify(dp_server):
    """The demo's 0/1 label (declared classes, no range) was answered "ask the data owner to declare
    `label_ranges.label`". Judged on the declaration alone, by the server and the dry run, at no cost."""
    from remote_magic import DatasetSpec, dry_run
    from remote_magic.client.errors import DryRunError

    client = dp_server.client()
    said = "the label 'label' has the classes 0, 1 (the data owner's public list) and no range: "
    said += "it is a classifier's label, use XGBClassifier"
    before = client.rho_left("synthetic")
    with pytest.raises(RemoteError) as refused:
        client.train(xgb.XGBRegressor(n_estimators=2), DP_SPEC)
    assert refused.value.code == "unsupported_model" and refused.value.message.startswith(said)
    assert client.rho_left("synthetic") == before
    with pytest.raises(DryRunError) as checked:
        model = xgb.XGBRegressor(n_estimators=2)
        dry_run(model, DatasetSpec(**DP_SPEC), client.dataset("synthetic"), client.mock("synthetic"))
    assert str(checked.value) == said


@pytest.fixture(scope="module")
def flags_model(dp_server):
    """A DP model of a true/false label, on a true/false feature with missing values."""
    spec = {"dataset": "flags", "label": "outcome", "features": ["age", "income", "member"]}
    return dp_server.client().train(xgb.XGBClassifier(n_estimators=3, max_depth=2), spec).model()


def test_a_true_false_labels_model_predicts_booleans(dp_server, flags_model):
    """It predicted the strings 'True'/'False', which equal no boolean, so `accuracy_score` refused
    them. An integer label's model predicts integers, a text label's its text (see above)."""
    assert flags_model.classes == ["False", "True"]
    rows = pd.read_parquet(dp_server.settings.datasets["flags"].path).head(200)
    predicted = flags_model.predict(rows)
    assert predicted.dtype == bool and 0.5 < accuracy_score(rows["outcome"], predicted) <= 1.0


def test_a_model_has_classes_like_xgboosts_sklearn_api_in_predict_probas_order(dp_server, flags_model):
    """It had only `classes` (text) and no `classes_`. Declared [true, false], the classes are sorted
    as scikit-learn and XGBoost sort them (np.unique), the order of predict_proba's columns."""
    assert flags_model.classes_.tolist() == [False, True] and flags_model.classes_.dtype == bool
    rows = pd.read_parquet(dp_server.settings.datasets["flags"].path).head(200)
    picked = flags_model.classes_[flags_model.predict_proba(rows).argmax(axis=1)]
    assert picked.tolist() == flags_model.predict(rows).tolist()
    fitted = xgb.XGBRegressor(n_estimators=2).fit(rows[["income"]], rows["id"])
    regressor = RemoteModel.load(bytes(fitted.get_booster().save_raw("json")), "job", "flags", None, None)
    assert not hasattr(regressor, "classes_"), "a regressor has none, as in scikit-learn"


def test_rows_typed_the_natural_way_are_read_as_the_server_reads_its_rows(flags_model):
    """`member=[True, None]` is a pandas object column, and XGBoost refused it with its own dtype error
    (18 frames). Read as the server reads its rows: a true/false value as 1/0, a missing one as missing;
    a column that holds no numbers is one ValueError naming it."""
    mine = pd.DataFrame(
        {"age": [70.0, 70.0, 70.0], "income": [2e4] * 3, "member": [True, None, False]}, index=[5, 3, 9]
    )
    assert mine["member"].dtype == object
    typed = mine.assign(member=[1.0, np.nan, 0.0])
    expected = flags_model.estimator.predict_proba(typed)
    assert flags_model.predict_proba(mine).tolist() == expected.tolist()
    assert flags_model.predict(mine).tolist() == (expected[:, 1] > 0.5).tolist()
    for column in (["yes", None, "no"], [True, "no", None]):
        with pytest.raises(ValueError) as unread:
            flags_model.predict(mine.assign(member=column))
        said = str(unread.value)
        assert said.startswith("your column 'member' ") and "\n" not in said, said


def test_a_registered_versions_model_predicts_the_label_values_its_jobs_model_did(dp_server):
    """`load_version` gave the model without its classes, so a registered true/false (or text)
    classifier predicted XGBoost's codes 0, 1 where the job's model predicted the label's values. The
    version carries its job's released classes, for its owner and for a user it is shared with (bob,
    to whom `flags` is not granted, reads the classes' text)."""
    alice, bob = dp_server.client(), dp_server.client("bob")
    spec = {"dataset": "flags", "label": "outcome", "features": ["age", "income", "member"]}
    trained = alice.train(xgb.XGBClassifier(n_estimators=3, max_depth=2), spec, register="flags_out")
    rows = pd.read_parquet(dp_server.settings.datasets["flags"].path).head(200)
    expected = trained.model().predict(rows)
    assert expected.dtype == bool
    version = alice.model("flags_out@1")
    assert version.classes == ["False", "True"] and version.label == "outcome"
    for client in (alice, bob):
        model = client.load_version("flags_out@1")
        assert model.classes == ["False", "True"]
        predicted = model.predict(rows)
        assert predicted.dtype == bool and predicted.tolist() == expected.tolist()
    four = {"dataset": "by_region", "label": "region", "features": ["age"]}
    four["classes"] = ["east", "north", "south", "west"]
    regions = alice.train(xgb.XGBClassifier(n_estimators=2), four, register="regions_out")
    ages = pd.DataFrame({"age": [20.0, 50.0, 80.0]})
    from_version = alice.load_version("regions_out@1").predict(ages)
    assert from_version.tolist() == regions.model().predict(ages).tolist()
    assert set(from_version) <= set(four["classes"])


def test_number_classes_whose_text_order_differs_name_the_models_codes_right(dp_server):
    """rev6: the result lists the classes as text ("10", "5") while the model's codes follow the label's
    values (5 is code 0), so every prediction of a 5/10 label came back swapped, downloaded or from
    the registry."""
    client = dp_server.client()
    spec = {"dataset": "grades", "label": "grade", "features": FEATURES}
    result = client.train(xgb.XGBClassifier(n_estimators=8, max_depth=3), spec, register="grades_out")
    rows = client.mock("synthetic").head(200)
    for model in (client.load_model(result.job_id), client.load_version("grades_out@1")):
        margin = model.booster.predict(xgb.DMatrix(model.rows(rows)), output_margin=True)
        assert list(model.classes_) == [5, 10]
        assert list(model.predict(rows)) == list(np.where(margin > 0, 10, 5))
