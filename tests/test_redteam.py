"""The attacker's view: every attack on the disclosure policy, played against a real server, fails.

One extra server serves a small table with planted secrets: a nickname and a ward held by a single
row each, a row whose age no other row shares, and a grade with three members. Every response body
the attacker receives is kept and searched for the planted values at the end.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from remote_magic.client.errors import DisclosureRefused, RemoteError
from tests.serverproc import running

ROWS = 600
NICK = "QUOKKA-UNIQUE-4242"
WARD = "ZEBRA-7731"
RARE_RANK = 250
FEATURES = ["rank", "age", "score"]
BODIES: list[str] = []


def _table() -> pd.DataFrame:
    rng = np.random.default_rng(5)
    rank = np.arange(1, ROWS + 1, dtype=float)
    age = rng.integers(20, 80, ROWS).astype(float)
    score = rng.normal(size=ROWS)
    label = (score + rng.normal(scale=0.5, size=ROWS) > 0).astype(int)
    age[RARE_RANK - 1] = 99.0
    nickname = rng.choice(["alpha", "beta", "gamma"], ROWS).astype(object)
    nickname[RARE_RANK - 1] = NICK
    ward = rng.choice(["north", "south"], ROWS).astype(object)
    ward[17] = WARD
    grade = np.where(np.arange(ROWS) % 2 == 0, "a", "b").astype(object)
    grade[[3, 5, 7]] = "c"
    return pd.DataFrame(
        {
            "id": np.arange(1, ROWS + 1),
            "rank": rank,
            "age": age,
            "score": score,
            "nickname": nickname,
            "ward": ward,
            "grade": grade,
            "label": label,
        }
    )


@pytest.fixture(scope="module", params=["local", pytest.param("dask", marks=pytest.mark.dask)])
def red(request, tmp_path_factory):
    """The attacker's server; run once more with `[executor] kind = "dask"` (a LocalCluster on loopback),
    where the same attacks must fail the same way."""
    base = tmp_path_factory.mktemp("redteam")
    data = base / "data"
    data.mkdir()
    path = data / "attack.parquet"
    _table().to_parquet(path, index=False)
    common = f'path = "{path}"\nid_column = "id"\nlabel_columns = ["label", "grade", "ward"]\n'
    extra = (
        f'\n[datasets.attack]\n{common}privacy = "rules"\n'
        f"\n[datasets.attack_dp]\n{common}policy = {{ dp_rho_cap = 0.012 }}\n"
        f'\n[datasets.release]\n{common}allow_model_release = true\nprivacy = "rules"\n'
        f'\n[datasets.broken]\n{common}privacy = "rules"\n'
    )
    with contextlib.ExitStack() as stack:
        if request.param == "dask":
            from distributed import LocalCluster

            cluster = stack.enter_context(
                LocalCluster(n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None)
            )
            extra += f'\n[executor]\nkind = "dask"\nscheduler = "{cluster.scheduler_address}"\n'
        users = {"mallory": ["attack", "attack_dp", "release", "broken"]}
        yield stack.enter_context(running(data, base / "server.log", users, extra))
    for body in BODIES:
        assert NICK not in body and WARD not in body


def _client(red):
    client = red.client("mallory")
    client._session.hooks["response"].append(lambda r, *a, **k: BODIES.append(r.text))
    return client


def _post(red, path, **kw):
    response = red.post(path, user="mallory", **kw)
    BODIES.append(response.text)
    return response


def _describe(red, where, label="label", dataset="attack"):
    spec = {"dataset": dataset, "label": label, "where": where}
    return _post(red, "/describe", json={k: v for k, v in spec.items() if v is not None})


def _fitted():
    rng = np.random.default_rng(0)
    x = pd.DataFrame(rng.normal(size=(300, 3)) * [100, 20, 1] + [300, 50, 0], columns=FEATURES)
    return xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, (x["score"] > 0).astype(int))


def test_one_row_difference_is_refused_in_describe_train_and_evaluate(red):
    client = _client(red)
    first = _describe(red, "rank > 100")
    assert first.status_code == 200, first.text
    again = _describe(red, "rank > 100")
    assert again.json() == first.json()
    # The same rows minus the one row with a rare age: its label would be the difference of the counts.
    rare = _describe(red, "rank > 100 AND age < 90")
    assert rare.status_code == 422 and rare.json()["error"]["code"] == "differencing_refused"
    assert "classes" not in rare.text and 'rows":' not in rare.text
    spec = {"dataset": "attack", "label": "label", "features": FEATURES, "eval": {"fraction": 0.3, "seed": 1}}
    client.train(xgb.XGBClassifier(n_estimators=5, max_depth=2), {**spec, "where": "rank > 100"})
    with pytest.raises(DisclosureRefused, match="differencing rule"):
        client.train(
            xgb.XGBClassifier(n_estimators=5, max_depth=2), {**spec, "where": "rank > 100 AND age < 90"}
        )
    # Two overlapping ranges that differ by the row of rank 101 only, scored without training.
    model = _fitted()
    base = {"dataset": "attack", "label": "label", "features": FEATURES}
    client.evaluate(model, {**base, "where": "rank BETWEEN 101 AND 400"})
    with pytest.raises(DisclosureRefused) as exc:
        client.evaluate(model, {**base, "where": "rank BETWEEN 102 AND 400"})
    assert exc.value.code == "differencing_refused" and "101" not in exc.value.message
    # A genuinely different cohort is still fine.
    client.evaluate(model, {**base, "where": "rank > 300"})


def test_near_complement_of_the_table_is_refused(red):
    refused = _describe(red, "age < 90")
    assert refused.status_code == 422 and "complement rule" in refused.json()["error"]["message"]
    with pytest.raises(DisclosureRefused, match="complement rule"):
        _client(red).evaluate(
            _fitted(), {"dataset": "attack", "label": "label", "features": FEATURES, "where": "age < 90"}
        )


@pytest.mark.parametrize("n", [1, 5, 99])
def test_tiny_evaluation_sets_are_refused(red, n):
    spec = {"dataset": "attack", "label": "label", "features": FEATURES, "eval": {"where": f"rank <= {n}"}}
    with pytest.raises(DisclosureRefused) as exc:
        _client(red).evaluate(_fitted(), spec)
    assert exc.value.code == "cohort_too_small"


def test_tiny_evaluation_split_of_a_training_job_is_refused(red):
    spec = {"dataset": "attack", "label": "label", "features": FEATURES, "eval": {"where": "rank <= 5"}}
    with pytest.raises(DisclosureRefused) as exc:
        _client(red).train(xgb.XGBClassifier(n_estimators=3), spec)
    assert exc.value.code == "cohort_too_small"


def test_a_class_with_three_members_is_refused(red):
    client = _client(red)
    with pytest.raises(DisclosureRefused) as exc:
        client.train(
            xgb.XGBClassifier(n_estimators=3), {"dataset": "attack", "label": "grade", "features": FEATURES}
        )
    assert exc.value.code == "class_too_small" and "'c'" not in exc.value.message
    refused = _describe(red, None, label="grade")
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "class_too_small"


def test_single_row_values_never_appear(red):
    client = _client(red)
    described = client.describe({"dataset": "attack", "label": "label", "where": "rank > 50"})
    nick = described.columns["nickname"]
    assert {c.value for c in nick.categories} == {"alpha", "beta", "gamma"}
    assert described.columns["age"].histogram[-1].upper is None  # the oldest age is never an edge
    result = client.train(
        xgb.XGBClassifier(n_estimators=5, max_depth=2),
        {
            "dataset": "attack",
            "label": "label",
            "features": [*FEATURES, "nickname"],
            "where": "rank > 200",
            "eval": {"fraction": 0.3, "seed": 4},
        },
    )
    BODIES.append(repr(result) + result._repr_html_())
    with pytest.raises(DisclosureRefused, match="class"):
        client.train(
            xgb.XGBClassifier(n_estimators=3), {"dataset": "attack", "label": "ward", "features": FEATURES}
        )
    BODIES.append(red.get("/datasets/attack", user="mallory").text)


def test_worker_failures_carry_only_fixed_messages(red):
    client = _client(red)
    # pandas fails with "could not convert string to float: '<a ward>'": only the fixed text comes back.
    with pytest.raises(RemoteError) as exc:
        client.train(
            {"params": {"objective": "reg:squarederror"}, "num_boost_round": 3},
            {"dataset": "attack", "label": "ward", "features": FEATURES},
        )
    assert exc.value.message == "label 'ward' is not numeric"
    # An unexpected failure inside the worker (its snapshot file damaged on disk, as a failing disk
    # would): the fixed internal message, never the path or the reader's words; the traceback in the log.
    (snapshot,) = (red.settings.snapshots_dir / "broken").glob("*.parquet")
    snapshot.chmod(0o644)
    snapshot.write_bytes(b"PAR1" + b"north south " * 100 + b"PAR1")
    failed = _describe(red, "rank > 5", dataset="broken")
    assert failed.status_code == 500
    assert failed.json()["error"] == {"code": "internal_error", "message": "the job failed on the server"}
    for body in (failed.text, str(exc.value)):
        assert "north" not in body and "south" not in body and "Traceback" not in body
        assert str(red.data_dir) not in body and "parquet" not in body.lower()
    assert "Traceback" in red.log_path.read_text()


def test_dp_repeats_return_the_stored_answer_and_spend_once(red):
    answers = [_describe(red, "rank > 60", dataset="attack_dp") for _ in range(50)]
    assert all(a.status_code == 200 for a in answers)
    bodies = [a.json() for a in answers]
    budgets = [b.pop("privacy") for b in bodies]
    assert all(b == bodies[0] for b in bodies)
    assert budgets[0]["repeated"] is False and all(b["repeated"] for b in budgets[1:])
    # 0.004 each: dp_rho_describe, and dp_rho_describe_sketch as the table declares no ranges or levels
    assert {b["rho_spent"] for b in budgets} == {0.004}
    assert budgets[0]["rho"] == 0.004 and {b["rho"] for b in budgets[1:]} == {0.0}
    assert budgets[-1]["rho_remaining"] == 0.008
    # The same rows asked for in other words (filter spelled differently, columns reordered) are a new
    # question, charged and noised afresh: a free repeat would say exactly whether two filters admit the
    # same rows, which is a fact about the rows (one person's combination left out, or not).
    words = {"dataset": "attack_dp", "label": "label", "where": "60 < rank AND rank < 1000"}
    reworded = _post(
        red, "/describe", json={**words, "features": ["score", "rank", "age", "nickname"]}
    ).json()
    budget = reworded.pop("privacy")
    assert budget["repeated"] is False and budget["rho"] == 0.004 and budget["rho_remaining"] == 0.004
    assert _describe(red, "rank > 160", dataset="attack_dp").json()["privacy"]["rho_remaining"] == 0.0
    spent = _describe(red, "rank > 260", dataset="attack_dp")
    assert spent.status_code == 422 and spent.json()["error"]["code"] == "privacy_budget_exhausted"
    assert _describe(red, "rank > 60", dataset="attack_dp").json()["privacy"]["repeated"] is True
    again = _post(red, "/describe", json=words).json()
    assert again.pop("privacy")["repeated"] is True and again == reworded  # as written: its stored answer


def _approve(red, job_id):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_magic_server",
            "approve",
            job_id,
            "--config",
            str(red.config),
            "--by",
            "owner",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_model_release_refuses_risky_models_and_waits_for_approval(red):
    client = _client(red)
    spec = {
        "dataset": "release",
        "label": "label",
        "features": FEATURES,
        "eval": {"fraction": 0.4, "seed": 9},
    }
    deep = client.train(
        xgb.XGBClassifier(n_estimators=30, max_depth=8, min_child_weight=0, learning_rate=0.3),
        {**spec, "where": "rank <= 300"},
    )
    with pytest.raises(DisclosureRefused, match="may not leave the server"):
        deep.download_model()
    assert client.model_status(deep.job_id).state == "refused"
    assert _approve(red, deep.job_id).returncode == 1

    safe = client.train(
        xgb.XGBClassifier(n_estimators=10, max_depth=2, min_child_weight=5), {**spec, "where": "rank > 300"}
    )
    with pytest.raises(DisclosureRefused, match="approval"):
        safe.download_model()
    approved = _approve(red, safe.job_id)
    assert approved.returncode == 0, approved.stderr
    booster = safe.download_model()
    assert booster.num_boosted_rounds() == 10
    BODIES.append(booster.save_raw("json").decode())

    with pytest.raises(DisclosureRefused, match="awaits|may not"):
        _client(red).train(
            xgb.XGBClassifier(n_estimators=10, max_depth=2, min_child_weight=5),
            {**spec, "features": [*FEATURES, "nickname"], "where": "rank <= 450 AND rank > 50"},
        ).download_model()


def test_audit_log_records_refusals_and_verifies(red):
    log = red.data_dir / "audit.log"
    text = log.read_text()
    assert '"differencing_refused"' in text and '"model_approved"' in text
    assert NICK not in text
    verified = subprocess.run(
        [sys.executable, "-m", "remote_magic_server", "audit", "--config", str(red.config), "--verify"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and "intact" in verified.stdout
