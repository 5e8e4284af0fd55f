"""Opt-in custom code: held until the data owner reviews it with `remote-magic-server review`, decoded
with cloudpickle only inside the sandboxed worker after approval, refused everywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest
import xgboost as xgb

from remote_magic.client.errors import DisclosureRefused, RemoteError
from tests.serverproc import running, stamp_training


class _Reduce:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.fixture(scope="module")
def owner_server(tmp_path_factory):
    """A server with one dataset that accepts custom code (`open_diabetes`) beside the demo ones."""
    base = tmp_path_factory.mktemp("custom")
    data_dir = base / "data"
    extra = (
        "\n[datasets.open_diabetes]\n"
        f'path = "{data_dir / "datasets" / "diabetes.parquet"}"\n'
        'id_column = "id"\nlabel_columns = ["progression"]\nallow_custom_code = true\nprivacy = "rules"\n'
    )
    with running(
        data_dir, base / "server.log", {"carol": ["open_diabetes", "diabetes_rules"]}, extra
    ) as server:
        yield server


def review(server, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "remote_magic_server", "review", *args, "--config", str(server.config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _wait_state(server, job_id: str, states: set[str], user: str = "carol") -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        status = server.get(f"/jobs/{job_id}", user=user, params={"wait": 5}).json()
        if status["state"] in states:
            return status
    raise AssertionError(f"job {job_id} never reached {states}")


def test_custom_objective_is_held_reviewed_approved_and_trained(owner_server):
    def squared_error_objective(y_true, y_pred):
        return y_pred - y_true, np.ones_like(y_pred)

    client = owner_server.client("carol")
    model = xgb.XGBRegressor(n_estimators=30, max_depth=2, objective=squared_error_objective)
    spec = {"dataset": "open_diabetes", "label": "progression", "eval": {"fraction": 0.3, "seed": 1}}
    job = client.submit(model, spec)
    assert job.status.state == "awaiting_approval"

    with pytest.raises(RemoteError) as info:
        client.submit(model, {**spec, "dataset": "diabetes_rules"})
    assert info.value.code == "custom_code_refused" and "squared_error_objective" in info.value.message

    listing = review(owner_server, "list")
    assert job.id in listing and "squared_error_objective" in listing
    shown = review(owner_server, "show", job.id)
    assert "cloudpickle.cloudpickle._make_function" in shown
    assert "squared_error_objective" in shown and "ones_like" in shown and "RETURN" in shown

    assert "approved" in review(owner_server, "approve", job.id)
    result = job.result(timeout=120)
    assert result.metrics["r2"] > 0.2
    assert result.rounds["total"] == 30
    assert job.status.isolation["filesystem"].startswith("landlock")


def test_a_job_that_ran_notebook_code_is_no_dp_release_whatever_its_result_says(owner_server):
    def squared_error_objective(y_true, y_pred):
        return y_pred - y_true, np.ones_like(y_pred)

    client = owner_server.client("carol")
    model = xgb.XGBRegressor(n_estimators=3, max_depth=2, objective=squared_error_objective)
    spec = {"dataset": "open_diabetes", "label": "progression", "eval": {"fraction": 0.3, "seed": 1}}
    job = client.submit(model, spec)
    assert "approved" in review(owner_server, "approve", job.id)
    job.result(timeout=120)
    training = {"rho": 0.05, "epsilon": 1.7, "trees": 3, "sigma_gradient": 1.0, "sigma_hessian": 1.0}
    stamp_training(owner_server, job.id, training)
    assert client.result(job.id).training is not None
    assert client.model_status(job.id).state == "not_allowed"
    with pytest.raises(DisclosureRefused, match="models stay on the server"):
        job.model()


def test_review_never_runs_the_payload_and_a_rejected_job_fails(owner_server, tmp_path):
    canary = tmp_path / "canary"
    payload = {  # notebook code first, so the payload is held; the owner must see the trap behind it
        "f": lambda x: x,
        "params": {"objective": "reg:squarederror"},
        "trap": _Reduce(os.system, f"touch {canary}"),
    }
    job = owner_server.client("carol").submit(payload, {"dataset": "open_diabetes", "label": "progression"})
    assert job.status.state == "awaiting_approval"
    shown = review(owner_server, "show", job.id)
    assert "posix.system" in shown and "<lambda>" in shown
    assert not canary.exists()
    assert "rejected" in review(owner_server, "reject", job.id)
    status = _wait_state(owner_server, job.id, {"failed"})
    assert status["error"]["code"] == "rejected_by_owner"
    assert job.id not in review(owner_server, "list")
    assert not canary.exists()


def test_review_refuses_an_unknown_job(owner_server):
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "remote_magic_server",
            "review",
            "approve",
            "nope",
            "--config",
            str(owner_server.config),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "awaiting approval" in done.stderr
