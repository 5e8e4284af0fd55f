"""PostgreSQL sources against a real server (Debian's `postgresql`, initdb into a temporary folder, on a
free loopback port): table and query snapshots, read-only sessions, timeouts, wrong credentials, a crash
of the refresh and of the database mid-refresh, and no secret anywhere."""

from __future__ import annotations

import hashlib
import json
import logging
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from remote_magic_server.config.settings import load_settings
from remote_magic_server.data.lifecycle import refresh
from remote_magic_server.data.sources import SourceError
from remote_magic_server.data.versions import Versions
from remote_magic_server.demo import free_port
from tests.pgserver import INSTALL, OWNER, PostgresServer, bindir
from tests.serverproc import running

pytestmark = pytest.mark.skipif(bindir() is None, reason=INSTALL)

ROWS = 600
SLOW_QUERY = "WITH pause AS MATERIALIZED (SELECT pg_sleep(delay) FROM knobs) SELECT c.* FROM claims c, pause"


def claims(rows: int = ROWS, seed: int = 5) -> pa.Table:
    rng = np.random.default_rng(seed)
    age = rng.integers(18, 90, rows).astype(float)
    label = (rng.random(rows) < 1 / (1 + np.exp(-(age - 50) / 10))).astype(np.int32)
    order = rng.permutation(rows)  # stored out of id order: the snapshot sorts by id
    return pa.table(
        {
            "key": pa.array(np.arange(1, rows + 1)[order], pa.int64()),
            "age": pa.array(age[order]),
            "region": pa.array(rng.choice(["north", "south"], rows)[order]),
            "label": pa.array(label[order]),
        }
    )


@pytest.fixture(scope="module")
def pg():
    server = PostgresServer().start()
    server.load("claims", claims())
    server.execute(
        "ALTER TABLE claims ADD COLUMN amount numeric(10, 2) DEFAULT 12.5",
        "CREATE SEQUENCE ticket",
        "CREATE TABLE knobs (delay float8)",
        "INSERT INTO knobs VALUES (0)",
    )
    yield server
    server.close()


@pytest.fixture
def password(pg, monkeypatch):
    monkeypatch.setenv("RM_TEST_PGPASSWORD", pg.password)
    return pg.password


def settings_for(tmp_path, pg, source: str, name: str = "claims"):
    config = tmp_path / "server.toml"
    config.write_text(
        f'[server]\ndata_dir = "data"\n\n[datasets.{name}]\n'
        f'source = {{ kind = "postgres", host = "127.0.0.1", port = {pg.port}, user = "{OWNER}", '
        f'password_env = "RM_TEST_PGPASSWORD", {source} }}\nid_column = "key"\nlabel_columns = ["label"]\n'
    )
    return load_settings(config)


def test_a_table_snapshot_is_ordered_by_id_typed_and_stable(tmp_path, pg, password):
    settings = settings_for(tmp_path, pg, 'table = "public.claims"')
    first = refresh(settings, "claims")
    snap = pq.read_table(first.version.file)
    assert first.new and first.version.rows == ROWS
    assert snap.column("key").to_pylist() == list(range(1, ROWS + 1))
    assert dict(first.version.columns) == {
        "key": "int64", "age": "double", "region": "string", "label": "int32", "amount": "double"
    }  # fmt: skip
    assert snap.schema.metadata is None and all(f.metadata is None for f in snap.schema)
    second = refresh(settings, "claims")
    assert not second.new and second.version.number == 1
    assert first.version.source == f"postgres 127.0.0.1:{pg.port}/postgres table public.claims"


def test_a_query_source_sees_only_its_rows(tmp_path, pg, password):
    query = "SELECT key, age, label FROM claims WHERE region = 'north'"
    settings = settings_for(tmp_path, pg, f'query = "{query}"')
    north = pg.execute("SELECT count(*) FROM claims WHERE region = 'north'")[0][0]
    version = refresh(settings, "claims").version
    assert version.rows == north and [c for c, _ in version.columns] == ["key", "age", "label"]
    south_key = pg.execute("SELECT min(key) FROM claims WHERE region = 'south'")[0][0]
    pg.execute(f"UPDATE claims SET age = age + 1 WHERE key = {south_key}")
    assert not refresh(settings, "claims").new  # a row the query does not see changed: same content
    north_key = pg.execute("SELECT min(key) FROM claims WHERE region = 'north'")[0][0]
    pg.execute(f"UPDATE claims SET age = age + 1 WHERE key = {north_key}")
    changed = refresh(settings, "claims")
    assert changed.new and changed.version.number == 2
    pg.execute(f"UPDATE claims SET age = age - 1 WHERE key IN ({south_key}, {north_key})")


@pytest.mark.parametrize(
    "source, reason, words",
    [
        ("query = \"SELECT key, label, nextval('ticket') AS t FROM claims\"", "query_failed", "read-only"),
        ('query = "SELECT c.* FROM claims c, pg_sleep(3)", timeout_s = 1', "timeout", "statement timeout"),
        ('table = "public.no_such_table"', "not_found", "no_such_table"),
    ],
)
def test_the_query_runs_read_only_under_a_timeout(tmp_path, pg, password, source, reason, words):
    settings = settings_for(tmp_path, pg, source)
    with pytest.raises(SourceError) as failure:
        refresh(settings, "claims")
    assert failure.value.reason == reason and words in failure.value.message
    assert failure.value.message.startswith(f"postgres 127.0.0.1:{pg.port}/postgres ")
    assert Versions(settings.snapshots_dir).latest("claims") is None


def test_wrong_credentials_and_an_unreachable_server_never_show_a_secret(tmp_path, pg, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    wrong = "Wrong-Pass-4b1e9"
    monkeypatch.setenv("RM_TEST_PGPASSWORD", wrong)
    monkeypatch.setenv("RM_TEST_PGDSN", pg.uri(password=wrong))
    settings = settings_for(tmp_path, pg, 'table = "claims"')
    failures = []
    with pytest.raises(SourceError) as failure:
        refresh(settings, "claims")
    failures.append(failure.value)
    assert failure.value.reason == "auth_failed" and "password authentication failed" in failure.value.message
    (tmp_path / "server.toml").write_text(
        '[server]\ndata_dir = "data"\n\n[datasets.claims]\n'
        'source = { kind = "postgres", dsn_env = "RM_TEST_PGDSN", table = "claims" }\n'
        'id_column = "key"\nlabel_columns = ["label"]\n'
        f'[datasets.gone]\nsource = {{ kind = "postgres", port = {free_port()}, user = "{OWNER}", '
        'password_env = "RM_TEST_PGPASSWORD", table = "claims", connect_timeout_s = 2 }\n'
        'id_column = "key"\nlabel_columns = ["label"]\n'
    )
    settings = load_settings(tmp_path / "server.toml")
    for name, reason in (("claims", "auth_failed"), ("gone", "unreachable")):
        with pytest.raises(SourceError) as failure:
            refresh(settings, name)
        assert failure.value.reason == reason
        failures.append(failure.value)
    assert failures[1].message.startswith("postgres $RM_TEST_PGDSN table claims: ")
    monkeypatch.delenv("RM_TEST_PGPASSWORD")
    with pytest.raises(SourceError) as failure:
        refresh(settings, "gone")
    assert failure.value.reason == "config" and "RM_TEST_PGPASSWORD is not set" in failure.value.message
    registry = Versions(settings.snapshots_dir)
    everything = " ".join(str(f) for f in failures) + caplog.text + settings.audit_path.read_text()
    everything += json.dumps([registry.last_refresh(n) for n in ("claims", "gone")])
    for secret in (wrong, pg.password, pg.uri(password=wrong)):
        assert secret not in everything


def test_kill_9_during_a_refresh_leaves_the_previous_version_and_no_partial_one(tmp_path, pg, password):
    settings = settings_for(tmp_path, pg, f'query = "{SLOW_QUERY}"')
    before = refresh(settings, "claims").version
    digest = hashlib.sha256(before.file.read_bytes()).hexdigest()
    pg.execute("UPDATE knobs SET delay = 30", "UPDATE claims SET age = age + 1 WHERE key = 3")
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "remote_magic_server", "dataset", "refresh", "claims", "--config",
             str(tmp_path / "server.toml")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        folder = settings.snapshots_dir / "claims"
        deadline = time.monotonic() + 300
        while not pg.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")[0][0]:
            assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        pg.execute("UPDATE knobs SET delay = 0", "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                   "WHERE wait_event = 'PgSleep'")  # fmt: skip
    registry = Versions(settings.snapshots_dir)
    assert [v.number for v in registry.history("claims", include_pruned=True)] == [1]
    assert list(folder.glob(".tmp-*")), "the killed refresh left its temporary file"
    assert hashlib.sha256(before.file.read_bytes()).hexdigest() == digest == before.content_hash
    after = refresh(settings, "claims")
    assert after.new and after.version.number == 2
    left = sorted(p.name for p in folder.glob("*.parquet"))
    assert left == sorted([before.file.name, after.version.file.name])  # the partial file was swept
    pg.execute("UPDATE claims SET age = age - 1 WHERE key = 3")


def test_postgres_datasets_serve_jobs_and_survive_the_database_going_away(tmp_path, pg, password):
    """A table source and a query source, snapshotted at start-up, train and evaluate end to end; then the
    database dies in the middle of a refresh, and the previous version still serves (the worker never
    needs the database) while /metrics shows the failure. No secret in any answer, log or error."""
    common = f'port = {pg.port}, user = "{OWNER}", password_env = "RM_TEST_PGPASSWORD"'
    datasets = f"""
[datasets.pg_table]
source = {{ kind = "postgres", {common}, table = "claims" }}
id_column = "key"
label_columns = ["label"]
privacy = "rules"

[datasets.pg_query]
source = {{ kind = "postgres", {common}, query = "{SLOW_QUERY}" }}
id_column = "key"
label_columns = ["label"]
privacy = "rules"
exclude_columns = ["amount"]
"""
    data = tmp_path / "data"
    data.mkdir()
    users = {"alice": ["pg_table", "pg_query"]}
    answers: list[str] = []
    with running(data, tmp_path / "server.log", users, datasets) as server:
        client = server.client()
        for name in ("pg_table", "pg_query"):
            info = server.get(f"/datasets/{name}")
            answers.append(info.text)
            assert info.json()["version"] == 1 and info.json()["rows"] == ROWS
        spec = {"dataset": "pg_table", "label": "label", "features": ["age", "region"]}
        trained = client.train(xgb.XGBClassifier(n_estimators=10, max_depth=2, min_child_weight=3), spec)
        public = pd.DataFrame({"age": np.arange(18.0, 90.0)})
        fitted = xgb.XGBClassifier(n_estimators=5, max_depth=2, min_child_weight=3).fit(
            public, public["age"] > 50
        )
        scored = client.evaluate(fitted, {"dataset": "pg_query", "label": "label", "features": ["age"]})
        assert trained.raw.dataset_version == scored.raw.dataset_version == 1
        assert trained.metrics["auc"] > 0.6 and scored.metrics["auc"] > 0.6
        assert scored.raw.summary.eval.rows == ROWS
        answers += [trained.raw.model_dump_json(), scored.raw.model_dump_json()]

        pg.execute("UPDATE knobs SET delay = 30", "UPDATE claims SET age = age + 1 WHERE key = 9")
        proc = subprocess.Popen(
            [sys.executable, "-m", "remote_magic_server", "dataset", "refresh", "pg_query", "--config",
             str(server.config)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 300
            while not pg.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'")[0][0]:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.1)
            pg.stop("immediate")
            out, err = proc.communicate(timeout=60)
            assert proc.returncode == 1 and "pg_query: refresh failed (unreachable)" in err
            assert f"postgres 127.0.0.1:{pg.port}/postgres query: " in err
            again = client.evaluate(fitted, {"dataset": "pg_query", "label": "label", "features": ["age"]})
            assert again.raw.dataset_version == 1 and again.metrics == scored.metrics
            metrics = server.metrics()
            failure = '_refresh_failures_total{dataset="pg_query",reason="unreachable"} 1.0'
            assert f"remote_magic_dataset{failure}" in metrics
            answers += [again.raw.model_dump_json(), server.get("/datasets/pg_query").text, out, err]
        finally:
            if not (pg.data / "postmaster.pid").exists():
                pg.start()
            pg.execute("UPDATE knobs SET delay = 0", "UPDATE claims SET age = age - 1 WHERE key = 9")
    everything = " ".join(answers) + (tmp_path / "server.log").read_text() + (data / "audit.log").read_text()
    assert "dataset_refresh_failed" in (data / "audit.log").read_text()
    assert pg.password not in everything and pg.uri() not in everything


def test_a_misspelt_id_column_is_named_with_the_nearest_column(tmp_path, pg, password):
    """Found by review (rev11 #7): a PostgreSQL source's `id_column` typo showed the database's raw error
    (`column "kye" does not exist`, `LINE 1:` and the caret line's spaces); a CSV source names the id
    column and the nearest one. Now both say the same."""
    settings = settings_for(tmp_path, pg, 'table = "public.claims"')
    settings.datasets["claims"].id_column = "kye"
    with pytest.raises(SourceError) as failure:
        refresh(settings, "claims")
    assert failure.value.reason == "invalid_snapshot"
    assert failure.value.message == (
        f"postgres 127.0.0.1:{pg.port}/postgres table public.claims: the id column 'kye' is not a column "
        "(did you mean 'key'?): fix id_column"
    )
    query = settings_for(tmp_path, pg, 'query = "SELECT key AS key_id, label FROM claims"')
    with pytest.raises(SourceError, match=r"the id column 'key' is not a column \(did you mean 'key_id'\?\)"):
        refresh(query, "claims")
