"""Dataset versions as a real server serves them: the catalog lists versions (never a value), a spec may
pin one and keeps training on it after a refresh, every job and result names its version, a failed
refresh keeps the previous version serving and shows in /metrics, and `refresh_every` refreshes inside
the server."""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from remote_magic.client.errors import RemoteError, SpecError
from remote_magic.contract.codes import CODES, Refusal
from remote_magic.display.tables import columns_table, datasets_table, jobs_table, versions_table
from remote_magic_server.cli import main
from remote_magic_server.data.versions import Versions
from remote_magic_server.intake.catalog import unavailable, version_of
from remote_magic_server.jobs.store import Store
from remote_magic_server.plan import JobPlan
from tests.serverproc import running

SENTINEL = "Zanzibar-Quartz"  # a value in the data that must never appear in any answer
CLAIMS = """
[datasets.claims]
source = { kind = "csv", path = "claims.csv", columns = { x = "float64", region = "string" } }
id_column = "key"
label_columns = ["y"]
privacy = "rules"
"""


def write_claims(path, rows: int, extra_column: bool = False) -> None:
    rng = np.random.default_rng(rows)
    x = rng.normal(size=rows)
    frame = pd.DataFrame(
        {
            "key": np.arange(rows),
            "x": x,
            "region": rng.choice(["north", SENTINEL], rows),
            "y": (x + rng.normal(scale=0.5, size=rows) > 0).astype(int),
        }
    )
    if extra_column:
        frame["z"] = rng.normal(size=rows)
    frame.to_csv(path, index=False)


def refresh(server, name: str = "claims") -> int:
    with pytest.raises(SystemExit) as done:
        main(["dataset", "refresh", name, "--config", str(server.config)])
    return done.value.code


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("versions")
    data = base / "data"
    data.mkdir()
    write_claims(data / "claims.csv", 600)
    with running(data, base / "server.log", {"alice": ["claims"]}, CLAIMS) as server:
        yield server


def model() -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=5, max_depth=2, min_child_weight=3)


def test_versions_pinning_and_schema_changes_end_to_end(served):
    client = served.client()
    first = served.get("/datasets/claims").json()
    assert first["version"] == 1 and [v["number"] for v in first["versions"]] == [1]
    assert first["rows"] == 600 and first["versions"][0]["rows"] == 600
    assert len(first["versions"][0]["schema_hash"]) == 16 and first["versions"][0]["schema_change"] is None
    inferred = {c["name"]: c["inferred"] for c in first["columns"]}
    assert inferred == {"key": True, "x": False, "region": False, "y": True}

    write_claims(served.data_dir / "claims.csv", 800, extra_column=True)
    assert refresh(served) == 0
    assert refresh(served) == 0  # unchanged: still two versions
    now = served.get("/datasets/claims").json()
    assert now["version"] == 2 and [v["number"] for v in now["versions"]] == [1, 2]
    assert now["versions"][1]["schema_change"] == {"added": ["z"], "dropped": [], "retyped": []}
    assert now["rows"] == 800 and "z" in [c["name"] for c in now["columns"]]
    pinned_info = served.get("/datasets/claims@1").json()
    assert pinned_info["version"] == 1 and "z" not in [c["name"] for c in pinned_info["columns"]]

    spec = {"dataset": "claims@1", "label": "y", "eval": {"fraction": 0.2, "seed": 1}}
    pinned = client.train(model(), spec)
    latest = client.train(model(), {**spec, "dataset": "claims"})
    assert pinned.raw.dataset_version == 1 and latest.raw.dataset_version == 2
    assert pinned.raw.dataset == latest.raw.dataset == "claims"
    pinned_rows = pinned.raw.summary.train.rows + pinned.raw.summary.eval.rows
    latest_rows = latest.raw.summary.train.rows + latest.raw.summary.eval.rows
    assert abs(pinned_rows - 600) <= 10 and abs(latest_rows - 800) <= 10  # each ran on its own snapshot
    with pytest.raises(RemoteError) as no_z:  # version 1 has no column z; version 2 has
        client.train(model(), {**spec, "features": ["x", "z"]})
    assert no_z.value.code == "unknown_column"
    with_z = client.train(model(), {**spec, "dataset": "claims", "features": ["x", "z"]})
    assert with_z.raw.dataset_version == 2
    assert "on claims@1" in repr(pinned) and "on claims@2" in repr(latest)

    jobs = {j.id: j for j in client.jobs()}
    assert jobs[pinned.job_id].dataset_version == 1 and jobs[latest.job_id].dataset_version == 2
    table = jobs_table(list(jobs.values()))
    assert {row[table.header.index("dataset")] for row in table.rows} == {"claims@1", "claims@2"}
    dataset = client.dataset("claims")
    shown = repr(columns_table(dataset)) + repr(versions_table(dataset))
    assert "claims@2:" in shown and "claims@1 " in shown and "+z" in shown and "(inferred)" in shown
    audit = (served.data_dir / "audit.log").read_text()
    assert f'"job":"{pinned.job_id}"' in audit and '"dataset_version":1' in audit

    with pytest.raises(RemoteError) as refused:
        client.train(model(), {**spec, "dataset": "claims@9"})
    assert refused.value.code == "unknown_version" and "versions: 1, 2" in str(refused.value)
    every_answer = json.dumps([first, now, pinned_info, pinned.raw.model_dump(), latest.raw.model_dump()])
    assert SENTINEL not in every_answer


def test_a_failed_refresh_keeps_serving_and_shows_in_metrics_and_the_audit_log(served):
    before = served.get("/datasets/claims").json()["version"]
    (served.data_dir / "claims.csv").write_text("key,x,region,y\n1,0.5,north,0\n1,0.7,north,1\n")
    assert refresh(served) == 1
    assert served.get("/datasets/claims").json()["version"] == before
    still = served.client().train(model(), {"dataset": "claims", "label": "y"})
    assert still.raw.dataset_version == before
    metrics = served.metrics()
    assert f'remote_magic_dataset_version{{dataset="claims"}} {before}.0' in metrics
    failures = 'remote_magic_dataset_refresh_failures_total{dataset="claims",reason="invalid_snapshot"} 1.0'
    assert failures in metrics
    assert 'remote_magic_dataset_refreshes_total{dataset="claims",outcome="unchanged"} 1.0' in metrics
    audit = (served.data_dir / "audit.log").read_text()
    assert '"event":"dataset_refresh_failed"' in audit and SENTINEL not in audit


def test_versions_that_queued_or_held_jobs_use_are_in_use(tmp_path):
    store = Store(tmp_path / "store.sqlite", tmp_path / "jobs")

    def job(version: int, state: str = "queued") -> str:
        row, _ = store.create_job(
            "u", "claims", "train", {}, JobPlan(dataset_version=version), b"x", None, state
        )
        return row.id

    try:
        job(4)
        assert store.claim_next().plan.dataset_version == 4  # running
        job(1)
        job(3, "awaiting_approval")
        store.finish(job(2), "succeeded")
        kept = job(5)
        store.finish(kept, "succeeded")
        assert store.dataset_versions_in_use("claims") == {1, 3, 4}
        assert store.dataset_versions_in_use("claims", [kept]) == {1, 3, 4, 5}
        assert store.dataset_versions_in_use("other") == set()
    finally:
        store.close()


def test_refresh_every_refreshes_inside_the_server(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_claims(data / "claims.csv", 300)
    scheduled = CLAIMS + 'refresh_every = "2s"\n'
    with running(data, tmp_path / "server.log", {"alice": ["claims"]}, scheduled) as server:
        assert server.get("/datasets/claims").json()["version"] == 1
        write_claims(data / "claims.csv", 320)
        deadline = time.monotonic() + 300
        while server.get("/datasets/claims").json()["version"] != 2:
            assert time.monotonic() < deadline, "no scheduled refresh made version 2"
            time.sleep(0.5)
        assert server.get("/datasets/claims").json()["rows"] == 320
    log = (tmp_path / "server.log").read_text()
    assert '"event": "dataset_refreshed"' in log and SENTINEL not in log


BROKEN = """
[datasets.broken]
source = { kind = "csv", path = "claims.csv" }
id_column = "custid"
label_columns = ["y"]
privacy = "rules"
"""


def test_a_dataset_whose_first_snapshot_failed_is_unavailable_at_once_not_busy(tmp_path):
    """Found by review (rev4 #1): a job on it said "your queue is full" and retried a 503 for 600 s, and
    the catalog showed `none yet <10 rows`. Now the catalog says it is unavailable and a job is refused
    at once, without the owner's reason (a column name of their source), which only their log holds."""
    data = tmp_path / "data"
    data.mkdir()
    write_claims(data / "claims.csv", 300)
    with running(data, tmp_path / "server.log", {"alice": ["claims", "broken"]}, CLAIMS + BROKEN) as server:
        info = server.client().dataset("broken")
        assert info.version is None and "snapshot of it failed" in info.unavailable
        table = repr(datasets_table([info, server.client().dataset("claims")])).splitlines()
        assert table[2].split() == ["broken", "unavailable", "-", "-"] and table[3].split()[:2] == [
            "claims",
            "1",
        ]
        started = time.monotonic()
        with pytest.raises(SpecError) as refused:
            server.client().submit(model(), {"dataset": "broken", "label": "y"}, queue_wait=30)
        assert time.monotonic() - started < 10  # one answer, no retries
        assert refused.value.code == "dataset_snapshot_failed" and refused.value.status == 409
        message = str(refused.value)
        assert "not available now" in message and "ask the data owner" in message.lower()
        assert "custid" not in message and str(data) not in message and "queue" not in message
    log = (tmp_path / "server.log").read_text().splitlines()
    plain = [line for line in log if line.startswith("dataset broken: its first snapshot failed")]
    assert len(plain) == 1 and "(invalid_snapshot)" in plain[0] and "'custid'" in plain[0], log
    assert "dataset refresh broken" in plain[0] and not [line for line in log if "dataset claims:" in line]


def test_no_version_is_busy_while_the_first_snapshot_is_taken_and_refused_once_it_failed(tmp_path):
    """A dataset with no snapshot attempt yet is being snapshotted (`serve` takes first snapshots before
    it answers; a second API process may not have): a job waits (503 busy). Once the attempt failed, it
    is refused (409), and a version taken later serves again."""
    versions = Versions(tmp_path)
    try:
        with pytest.raises(Refusal) as waiting:
            version_of(versions, "claims")
        assert waiting.value.code == "dataset_unavailable" and CODES["dataset_unavailable"].kind == "busy"
        versions.record_refresh("claims", "failed", reason="invalid_snapshot", message="id column missing")
        with pytest.raises(Refusal) as failed:
            version_of(versions, "claims")
        assert failed.value.code == "dataset_snapshot_failed" and "id column" not in str(failed.value)
        assert unavailable(versions, "claims") is not None
    finally:
        versions.close()
