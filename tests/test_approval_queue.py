"""The data owner's output check of trained models, against a real server and the real CLI: `approve
--list` is the queue of models awaiting approval, `approve JOB --show` what one is (features, trees,
the release checks it passed, its released metrics) without deciding, and `approve JOB` prints the same
before it approves. Found by review (rev11 #5): approval was done blind, by job id alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from remote_magic.client.errors import DisclosureRefused
from tests.serverproc import running

ROWS = 600


@pytest.fixture(scope="module")
def owner(tmp_path_factory):
    base = tmp_path_factory.mktemp("approval")
    data = base / "data"
    data.mkdir()
    rng = np.random.default_rng(3)
    score = rng.normal(size=ROWS)
    frame = pd.DataFrame(
        {
            "id": np.arange(ROWS),
            "age": rng.integers(20, 80, ROWS).astype(float),
            "score": score,
            "region": rng.choice(["north", "south"], ROWS),
            "label": (score + rng.normal(scale=0.5, size=ROWS) > 0).astype(int),
        }
    )
    frame.to_parquet(data / "shop.parquet", index=False)
    table = (
        f'[datasets.shop]\npath = "{data / "shop.parquet"}"\nid_column = "id"\nlabel_columns = ["label"]\n'
        'privacy = "rules"\nallow_model_release = true\n\n'
        f'[datasets.closed]\npath = "{data / "shop.parquet"}"\nid_column = "id"\nlabel_columns = ["label"]\n'
        'privacy = "rules"\n'
    )
    with running(data, base / "server.log", {"carl": ["shop", "closed"]}, table) as server:
        yield server


def approve(server, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "remote_magic_server", "approve", *args, "--config", str(server.config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def test_the_owner_lists_and_reviews_models_before_approving_one(owner):
    client = owner.client("carl")
    spec = {"dataset": "shop", "label": "label", "features": ["age", "score"], "eval": {"fraction": 0.3}}
    result = client.train(xgb.XGBClassifier(n_estimators=6, max_depth=2, min_child_weight=5), spec)
    listed = approve(owner, "--list")
    assert listed.returncode == 0, listed.stderr
    text = listed.stdout
    assert f"job {result.job_id}: user carl, dataset shop, submitted 20" in text and "family xgboost" in text
    assert "  features: age, score" in text and "trees: 6 rounds, max_depth 2, min_child_weight 5" in text
    assert "passed: no categorical features" in text and "passed: every leaf holds at least 10" in text
    auc = f"auc {result.metrics['auc']:.4g}"
    assert f"released metrics: {', '.join(f'{k} {v:.4g}' for k, v in result.metrics.items())}" in text, text
    assert auc in text and text.rstrip().endswith("1 model(s) awaiting approval; approve one: approve JOB")

    shown = approve(owner, result.job_id, "--show")
    assert shown.returncode == 0 and shown.stdout.splitlines()[0].startswith(f"job {result.job_id}: ")
    assert client.model_status(result.job_id).state == "awaiting_approval"  # --show decides nothing
    done = approve(owner, result.job_id, "--by", "owner")
    assert done.returncode == 0, done.stderr
    assert "  features: age, score" in done.stdout and done.stdout.rstrip().endswith(
        f"approved: the model of job {result.job_id} may now be downloaded by carl"
    )
    assert client.model_status(result.job_id).state == "approved"
    assert approve(owner, "--list").stdout.strip() == "0 model(s) awaiting approval"
    assert approve(owner).returncode == 2


def test_a_refused_model_says_what_to_do_instead(owner):
    client = owner.client("carl")
    spec = {"dataset": "shop", "label": "label", "features": ["age", "region"], "eval": {"fraction": 0.3}}
    text = client.train(xgb.XGBClassifier(n_estimators=4, max_depth=2, min_child_weight=5), spec)
    with pytest.raises(DisclosureRefused, match="leave the text columns out of `features`, or derive"):
        text.download_model()
    shown = approve(owner, text.job_id, "--show")
    assert shown.returncode == 1 and "categorical features" in shown.stderr
    closed = client.train(xgb.XGBClassifier(n_estimators=4, max_depth=2), {**spec, "dataset": "closed"})
    with pytest.raises(DisclosureRefused, match=r"register the model on the server \(`--register NAME`"):
        closed.download_model()
