"""Streaming staging: admitted rows flow from DuckDB as Arrow record batches into XGBoost's quantile
matrices, held in memory or spilled to the job folder for an external-memory matrix; the trees are the
same as the pandas + DMatrix path the server used before, and category codes follow a base model's."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import xgboost as xgb

from remote_magic.contract.wire import DatasetSpec
from remote_magic.families.aggregates import evaluate
from remote_magic.families.base import Batches, Split, encode_labels
from remote_magic.families.xgboost import family as xgboost_family
from remote_magic.families.xgboost.family import FAMILY
from remote_magic.families.xgboost.inputs import frame_of
from remote_magic_server.demo import synthetic_table
from remote_magic_server.jobs.tasks import file_limit_mb, staging_plan
from remote_magic_server.plan import JobPlan
from remote_magic_server.protocol import SCRATCH_DIR, Limits, Task
from remote_magic_server.worker import staging
from tests.onemachine import held_matrix, leaf_facts, train_here
from tests.serverproc import running

ROUNDS = 4


def synthetic(rows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    frame = synthetic_table(rows, seed)
    frame.loc[frame.index % 7 == 0, "bmi"] = np.nan  # missing values travel as Arrow nulls
    features = frame.drop(columns=["id", "label"])
    return pa.Table.from_pandas(features, preserve_index=False), frame["label"].to_numpy()


def in_batches(table: pa.Table, rows: int) -> Batches:
    return Batches(table.schema, table.to_batches(max_chunksize=rows))


def pandas_path(trained, train: pa.Table, y: np.ndarray, base: xgb.Booster | None = None) -> xgb.Booster:
    """What the server did before: the rows as a pandas frame with sorted categoricals, a DMatrix."""
    dtrain = xgb.DMatrix(frame_of(train), label=y, enable_categorical=True)
    return xgb.train(trained.params, dtrain, ROUNDS, xgb_model=base)


@pytest.mark.parametrize("small_cells", [0, 10**9], ids=["quantile", "small-dmatrix"])
def test_matrices_fed_in_batches_grow_the_trees_of_the_dmatrix_path(monkeypatch, small_cells):
    """Past `SMALL_MATRIX_CELLS` a quantile matrix fed batch by batch, below it one DMatrix of the
    batches: the same trees as the pandas + DMatrix path either way, and the same predictions."""
    monkeypatch.setattr(xgboost_family, "SMALL_MATRIX_CELLS", small_cells)
    train, y_train = synthetic(6000, 1)
    evaluation, y_eval = synthetic(1500, 2)
    labels = encode_labels(y_train, y_eval, "label", "classification")
    plan = FAMILY.canonical(xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=3))
    trained, parts = train_here(
        FAMILY,
        plan,
        Split(in_batches(train, 1024), y_train),
        Split(in_batches(evaluation, 500), y_eval),
        labels,
    )
    assert isinstance(held_matrix(parts, "train"), xgb.QuantileDMatrix) == (small_cells == 0)
    assert trained.booster.save_raw("json") == pandas_path(trained, train, labels.train).save_raw("json")
    exact = trained.booster.predict(xgb.DMatrix(frame_of(evaluation), enable_categorical=True))
    assert np.array_equal(
        trained.booster.predict(held_matrix(parts, "eval")), exact
    )  # eval rows binned with ref=, or exact


def test_continuing_a_notebook_model_keeps_its_category_codes_even_when_a_category_is_missing():
    notebook, y_notebook = synthetic(3000, 3)
    frame = frame_of(notebook)
    base = xgb.XGBClassifier(n_estimators=3, max_depth=3, enable_categorical=True).fit(frame, y_notebook)
    hidden, y_hidden = synthetic(4000, 4)
    keep = pa.array(hidden.column("region").to_numpy(zero_copy_only=False) != "east")
    hidden, y_hidden = hidden.filter(keep), y_hidden[keep.to_numpy(zero_copy_only=False)]
    labels = encode_labels(y_hidden, y_hidden, "label", "classification")
    plan = FAMILY.canonical(base.set_params(n_estimators=ROUNDS))
    trained, parts = train_here(FAMILY, plan, Split(hidden, y_hidden), Split(hidden, y_hidden), labels)
    dtrain = held_matrix(parts, "train")
    assert isinstance(dtrain, xgb.DMatrix) and not isinstance(dtrain, xgb.QuantileDMatrix)

    # in the notebook: the same rows with the notebook's own categories (east included, unused)
    same_codes = frame_of(hidden)
    same_codes["region"] = same_codes["region"].cat.set_categories(frame["region"].cat.categories)
    reference = xgb.train(
        trained.params,
        xgb.DMatrix(same_codes, label=labels.train, enable_categorical=True),
        ROUNDS,
        xgb_model=base.get_booster(),
    )
    assert trained.booster.save_raw("json") == reference.save_raw("json")
    with pytest.raises(xgb.core.XGBoostError):  # sorted categories of the hidden rows alone: refused
        pandas_path(trained, hidden, labels.train, base.get_booster())


def task_for(path, spec: dict, staging_mb: int, label_dtype: str = "") -> Task:
    """A train task on a Parquet file (every column but id and label a feature)."""
    checked = DatasetSpec.model_validate(spec)
    columns = [c for c in pq.read_schema(path).names if c not in ("id", "label")]
    plan = JobPlan(
        features=columns, filter_columns=[*columns, "label"], derive_columns=columns, label_dtype=label_dtype
    )
    limits = Limits(threads=1, cpu_seconds=60, memory_mb=4096, staging_mb=staging_mb, max_payload_bytes=0)
    return Task(
        kind="train",
        spec=checked,
        staging=staging_plan(checked, "train", str(path), "id", plan),
        limits=limits,
    )


@pytest.mark.parametrize("staging_mb", [0, 1], ids=["held", "spilled"])
def test_rows_without_a_label_are_counted_and_left_out_in_the_one_pass_over_the_file(tmp_path, staging_mb):
    """The staging query marks the rows the filter admits with a missing label (NULL, or NaN in a
    decimal column): staging counts them, as a second count query did before, and admits none."""
    table, y = synthetic(40_000, 6)
    label = y.astype(float)
    label[::9] = np.nan
    null = np.zeros(len(y), dtype=bool)
    null[1::11] = True
    path = tmp_path / "rows.parquet"
    labels = pa.array(label, mask=null)
    pq.write_table(
        table.append_column("id", pa.array(np.arange(len(y)))).append_column("label", labels), path
    )
    spec = {"dataset": "d", "label": "label", "where": "age > 20"}
    part = staging.stage(task_for(path, spec, staging_mb, "double"), tmp_path)

    admitted = table.column("age").to_numpy(zero_copy_only=False) > 20
    missing = admitted & (np.isnan(label) | null)
    assert part.missing_label == missing.sum() > 0
    rows = np.sort(np.concatenate([part.train_rows, part.eval_rows]))
    assert np.array_equal(rows, np.flatnonzero(admitted & ~missing))
    assert not np.isnan(np.concatenate([part.train.y, part.eval.y])).any()


def test_a_connection_opened_ahead_and_rehearsed_stages_a_job_as_a_fresh_one(tmp_path):
    """A warm worker rehearses staging on made-up rows on its DuckDB before any job (`rehearse`); the
    job's rows then staged on that connection, configured and locked, are those of a fresh one."""
    table, y = synthetic(5000, 8)
    label = y.astype(float)
    label[::13] = np.nan
    path = tmp_path / "rows.parquet"
    columns = table.append_column("id", pa.array(np.arange(len(y))))
    pq.write_table(columns.append_column("label", pa.array(label)), path)
    task = task_for(path, {"dataset": "d", "label": "label", "where": "age > 20"}, 0, "double")
    (tmp_path / "fresh").mkdir(), (tmp_path / "ahead").mkdir()
    fresh = staging.stage(task, tmp_path / "fresh")

    ahead = staging.open_ahead()
    made_up = staging.rehearse(ahead)
    assert len(made_up.train.y) + len(made_up.eval.y) == 63 and made_up.missing_label == 1
    assert set(made_up.levels["t"]) == {"level0", "level1", "level2"}
    staged = staging.stage(task, tmp_path / "ahead", staging.connect(task, tmp_path / "ahead", ahead))

    assert staged.missing_label == fresh.missing_label > 0
    assert staged.levels == fresh.levels
    for a, b in ((staged.train, fresh.train), (staged.eval, fresh.eval)):
        assert a.x.table().equals(b.x.table()) and np.array_equal(a.y, b.y, equal_nan=True)
    assert np.array_equal(staged.train_rows, fresh.train_rows)
    assert np.array_equal(staged.eval_rows, fresh.eval_rows)


def test_a_small_tables_duckdb_is_left_to_the_worker_and_a_larger_ones_is_closed(tmp_path, monkeypatch):
    """Closing a DuckDB costs a small job about 2.7 ms, and its worker exits (freeing it) after the job:
    a table of at most `KEEP_OPEN_CELLS` (rows x staged columns, from the footer) leaves its connection
    open; a larger one's is closed once staged, so that training gets its memory back."""
    table, y = synthetic(2000, 9)
    path = tmp_path / "rows.parquet"
    pq.write_table(
        table.append_column("id", pa.array(np.arange(len(y)))).append_column("label", pa.array(y)), path
    )
    task = task_for(path, {"dataset": "d", "label": "label"}, 0)
    task.staging.table_rows = len(y)
    monkeypatch.setattr(staging, "KEEP_OPEN_CELLS", len(y) * len(task.staging.columns))
    small = staging.connect(task, tmp_path)
    kept = staging.stage(task, tmp_path, small)
    assert small.execute("SELECT 1").fetchall() == [(1,)]

    monkeypatch.setattr(staging, "KEEP_OPEN_CELLS", len(y) * len(task.staging.columns) - 1)
    large = staging.connect(task, tmp_path)
    closed = staging.stage(task, tmp_path, large)
    with pytest.raises(duckdb.ConnectionException):
        large.execute("SELECT 1")
    assert kept.train.x.table().equals(closed.train.x.table())
    assert np.array_equal(kept.eval_rows, closed.eval_rows)


def test_rows_past_the_budget_spill_and_train_through_external_memory(tmp_path):
    table, y = synthetic(40_000, 5)
    path = tmp_path / "rows.parquet"
    pq.write_table(
        table.append_column("id", pa.array(np.arange(len(y)))).append_column("label", pa.array(y)), path
    )
    spec = {"dataset": "d", "label": "label", "where": "age > 20"}
    (tmp_path / "held").mkdir(), (tmp_path / "spilled").mkdir()
    held = staging.stage(task_for(path, spec, 0), tmp_path / "held")
    spilled = staging.stage(task_for(path, spec, 1), tmp_path / "spilled")

    assert not held.train.x.files and held.train.x.cache is None
    assert spilled.train.x.files and spilled.eval.x.files
    assert all(isinstance(chunk, Path) for chunk in spilled.train.x.chunks)
    assert all(f.parent == tmp_path / "spilled" / SCRATCH_DIR for f in spilled.train.x.files)
    for a, b in ((held.train, spilled.train), (held.eval, spilled.eval)):
        assert a.x.table().equals(b.x.table()) and np.array_equal(a.y, b.y)
        assert a.x.text_values() == b.x.text_values() == {"region": {"north", "south", "east", "west"}}
    assert np.array_equal(held.train_rows, spilled.train_rows)

    labels = encode_labels(held.train.y, held.eval.y, "label", "classification")
    plan_ = FAMILY.canonical(xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=3))
    in_memory, held_parts = train_here(FAMILY, plan_, held.train, held.eval, labels)
    external, spilled_parts = train_here(FAMILY, plan_, spilled.train, spilled.eval, labels)
    assert isinstance(held_matrix(spilled_parts, "train"), xgb.ExtMemQuantileDMatrix)
    assert list((tmp_path / "spilled" / SCRATCH_DIR).glob("train*.page"))
    assert external.booster.save_raw("json") == in_memory.booster.save_raw("json")
    assert evaluate(FAMILY, external, spilled_parts, 2) == evaluate(FAMILY, in_memory, held_parts, 2)
    assert leaf_facts(FAMILY, external, spilled_parts) == leaf_facts(FAMILY, in_memory, held_parts)


def test_a_job_past_the_staging_budget_trains_through_external_memory_on_the_server(tmp_path):
    rng = np.random.default_rng(6)
    rows = 220_000  # 20 float32 columns: about 17 MiB of features, past a 16 MiB budget
    x = rng.normal(size=(rows, 20)).astype(np.float32)
    label = (x[:, 0] + rng.normal(size=rows) > 0).astype(np.int8)
    columns = {"id": np.arange(rows)} | {f"f{i}": x[:, i] for i in range(20)} | {"label": label}
    path = tmp_path / "big.parquet"
    pq.write_table(pa.table(columns), path)
    extra = "".join(
        f'\n[datasets.{name}]\npath = "{path}"\nid_column = "id"\nlabel_columns = ["label"]\n{policy}\n'
        for name, policy in (
            ("small_budget", 'privacy = "rules"\npolicy = { staging_mb = 16 }'),
            ("default_budget", 'privacy = "rules"'),
        )
    )
    spec = {"label": "label", "where": "f1 > -2", "eval": {"fraction": 0.2, "seed": 3}}
    model = xgb.XGBClassifier(n_estimators=3, max_depth=3)
    with running(tmp_path / "data", tmp_path / "log", {"u": ["small_budget", "default_budget"]}, extra) as s:
        client = s.client("u")
        external = client.train(model, {"dataset": "small_budget", **spec}, timeout=300)
        in_memory = client.train(model, {"dataset": "default_budget", **spec}, timeout=300)
        folders = list(s.settings.jobs_dir.iterdir())
    lines = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines() if line.startswith("{")]
    staged = [line["spilled_files"] for line in lines if line.get("event") == "staged"]
    assert staged[0] > 0 and staged[1] == 0
    done = [line for line in lines if line.get("event") == "task_done" and line.get("kind") == "train"]
    assert len(done) == 2 and all(line["cpu_s"] > 0 for line in done)  # benchmarks/large_job.py reads it
    assert external.metrics == in_memory.metrics and external.summary == in_memory.summary
    assert len(folders) == 2 and not any((folder / SCRATCH_DIR).exists() for folder in folders)


def test_a_jobs_file_limit_grows_with_its_table_not_with_its_memory(tmp_path, monkeypatch):
    """XGBoost writes the bin index of every training row to one external-memory file, about the table's
    own size: a file limit of the worker's memory stopped a table twice that size (found by
    benchmarks/big_table.py). The limit is twice the table uncompressed, never below the memory."""
    from remote_magic_server.jobs import tasks

    rng = np.random.default_rng(0)
    table = pa.table({f"f{i}": rng.normal(size=400_000) for i in range(8)})  # 24 MiB of doubles
    pq.write_table(table, tmp_path / "t.parquet", compression="zstd")
    uncompressed = pq.read_metadata(tmp_path / "t.parquet").row_group(0).total_byte_size
    monkeypatch.setattr(tasks, "DEFAULT_FILE_MB", 1)  # the floor, 1 GiB, would hide a table this small
    assert file_limit_mb(str(tmp_path / "t.parquet"), 16) == 2 * (uncompressed // 2**20 + 1) > 2 * 24
    assert file_limit_mb(str(tmp_path / "t.parquet"), 4096) == 4096
