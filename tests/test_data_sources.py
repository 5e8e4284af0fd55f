"""Sources snapshotted into versions: a hive-partitioned Parquet folder, CSV with the owner's types, a
prefix of objects on an S3-compatible server, and snapshots the dataset's roles refuse.

S3 runs against moto's standalone server on loopback: no real S3 is reachable from these machines, and
moto speaks the S3 protocol (listing, ranged GETs, error codes) to pyarrow's own S3 client, which is the
code that talks to a real bucket.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from remote_magic_server.config.settings import ConfigError, load_settings
from remote_magic_server.data.lifecycle import refresh
from remote_magic_server.data.sources import SourceError
from remote_magic_server.data.versions import Versions
from remote_magic_server.demo import free_port


def settings_for(tmp_path, dataset_toml: str):
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "data"\n\n[datasets.d]\n{dataset_toml}')
    return load_settings(config)


def rows(n: int = 60, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "key": np.arange(n),
            "x": rng.normal(size=n),
            "region": rng.choice(["north", "south"], n),
            "y": rng.integers(0, 2, n),
        }
    )


def snapshot_rows(version) -> pd.DataFrame:
    return pq.read_table(version.file).to_pandas()


def test_a_hive_partitioned_folder_becomes_one_version_with_its_partition_column(tmp_path):
    frame = rows()
    pq.write_to_dataset(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "lake", ["region"])
    settings = settings_for(tmp_path, 'source = { kind = "parquet", path = "lake" }\nid_column = "key"\n'
                            'label_columns = ["y"]\n')  # fmt: skip
    version = refresh(settings, "d").version
    snap = snapshot_rows(version).sort_values("key").reset_index(drop=True)
    assert version.number == 1 and version.rows == 60
    assert dict(version.columns)["region"] == "string" and version.inferred == []
    assert snap["region"].tolist() == frame["region"].tolist()
    assert np.allclose(snap["x"], frame["x"])
    assert version.file.parent == settings.snapshots_dir / "d" and version.file.stem == version.content_hash


def test_csv_keeps_the_owners_types_and_names_the_ones_it_inferred(tmp_path):
    (tmp_path / "part-1.csv").write_text("key,zip,amount,y\n1,00123,10,0\n2,04000,12,1\n")
    (tmp_path / "part-2.csv").write_text("key,zip,amount,y\n3,00777,11,1\n")
    settings = settings_for(
        tmp_path,
        'source = { kind = "csv", path = "part-*.csv", columns = { zip = "string", amount = "float64" } }\n'
        'id_column = "key"\nlabel_columns = ["y"]\nprivacy = "rules"\n',
    )
    version = refresh(settings, "d").version
    types = dict(version.columns)
    assert types["zip"] == "string" and types["amount"] == "double" and types["key"] == "int64"
    assert sorted(version.inferred) == ["key", "y"]
    snap = snapshot_rows(version)
    assert snap["zip"].tolist() == ["00123", "04000", "00777"]  # a guess would have made these numbers


def test_in_mode_dp_a_csv_column_without_a_declared_type_fails_whatever_its_values(tmp_path):
    """An inferred type came from the rows (integers everywhere but one row's 2.5 read as double) and
    the catalog showed it for free: a membership oracle. Declared, both worlds have the same types."""
    types = []
    for world, visits in (("in", "2.5"), ("out", "3")):
        folder = tmp_path / world
        folder.mkdir()
        (folder / "t.csv").write_text(f"key,visits,y\n1,2,0\n2,{visits},1\n")
        source = 'source = { kind = "csv", path = "t.csv", columns = { key = "int64", y = "int64"%s } }\n'
        roles = 'id_column = "key"\nlabel_columns = ["y"]\n'
        with pytest.raises(SourceError) as failure:
            refresh(settings_for(folder, source % "" + roles), "d")
        assert failure.value.reason == "invalid_snapshot"
        assert failure.value.message.endswith("add these to the source's `columns`: visits")
        declared = settings_for(folder, source % ', visits = "float64"' + roles)
        types.append(dict(refresh(declared, "d").version.columns))
    assert types[0] == types[1] and types[0]["visits"] == "double"


def test_hive_partition_values_are_read_as_text_whatever_they_look_like(tmp_path):
    frame = rows().assign(band=lambda f: f["key"] % 3)
    pq.write_to_dataset(pa.Table.from_pandas(frame, preserve_index=False), tmp_path / "lake", ["band"])
    settings = settings_for(tmp_path, 'source = { kind = "parquet", path = "lake" }\nid_column = "key"\n'
                            'label_columns = ["y"]\n')  # fmt: skip
    version = refresh(settings, "d").version
    assert dict(version.columns)["band"] == "string" and version.inferred == []
    snap = snapshot_rows(version).sort_values("key")
    assert snap["band"].tolist() == [str(k % 3) for k in snap["key"]]


def test_in_mode_rules_a_csv_value_that_does_not_parse_fails_naming_the_column_but_not_the_value(tmp_path):
    """Mode rules stays strict (the owner fixes the file); the noisy modes make such a value NULL
    (tests/test_snapshots_total.py)."""
    (tmp_path / "claims.csv").write_text("key,amount,y\n1,10,0\n2,SECRET-VALUE-42,1\n")
    settings = settings_for(
        tmp_path,
        'source = { kind = "csv", path = "claims.csv", columns = { amount = "float64" } }\n'
        'id_column = "key"\nlabel_columns = ["y"]\nprivacy = "rules"\n',
    )
    with pytest.raises(SourceError) as failure:
        refresh(settings, "d")
    assert failure.value.reason == "invalid_snapshot"
    assert "'amount'" in failure.value.message and "double" in failure.value.message
    assert "csv " in failure.value.message and "SECRET-VALUE-42" not in failure.value.message
    assert Versions(settings.snapshots_dir).latest("d") is None


LATER_FILES = {  # a later file's `x`, where the first file's is int64
    "double": pa.array([2.5, 3.0]),
    "string": pa.array(["7", "SECRET-VALUE-42"]),
    "timestamp[ms]": pa.array([1, 2], pa.timestamp("ms")),
    "list<element: int64>": pa.array([[1], [2]]),
}


@pytest.mark.parametrize("later", sorted(LATER_FILES))
def test_a_later_parquet_file_typed_otherwise_is_named_in_mode_rules_and_converted_in_mode_dp(
    tmp_path, later
):
    """A folder takes its first file's types. A later file's other type failed as "the files do not
    share one schema" (no file, no column), crashed (a list: ArrowNotImplementedError), or was cast
    silently (a timestamp became a number). Mode rules now names the file and the column and the type
    to write; the noisy modes convert value by value, as documented (no row may fail a snapshot there),
    and the owner's note names the file and the column. Never a value."""
    lake = tmp_path / "lake" / "region=north"
    lake.mkdir(parents=True)
    pq.write_table(pa.table({"key": [1, 2], "x": [10, 20], "y": [0, 1]}), lake / "a.parquet")
    pq.write_table(pa.table({"key": [3, 4], "x": LATER_FILES[later], "y": [1, 0]}), lake / "b.parquet")
    source = 'source = { kind = "parquet", path = "lake" }\nid_column = "key"\nlabel_columns = ["y"]\n'
    with pytest.raises(SourceError) as failure:
        refresh(settings_for(tmp_path, source + 'privacy = "rules"\n'), "d")
    message = failure.value.message
    assert failure.value.reason == "invalid_snapshot", message
    assert f"column 'x' of region=north/b.parquet is {later}, and int64 in the first file" in message
    assert "write that file's column as int64" in message and "SECRET" not in message

    done = refresh(settings_for(tmp_path, source + 'privacy = "dp"\n'), "d")
    assert dict(done.version.columns)["x"] == "int64"
    assert snapshot_rows(done.version).sort_values("key")["x"].tolist()[:2] == [10, 20]
    assert (
        f"column 'x' of region=north/b.parquet is {later}, converted to the first file's int64"
        in done.repaired
    )


def test_in_mode_dp_a_later_file_of_a_type_that_never_converts_is_nulled_at_once(tmp_path):
    """A list column where the first file has numbers was cast value by value (by bisection): 200,000
    rows cost 6.4 s of CPU. No value of it can convert, whatever the rows: all NULL at once."""
    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(pa.table({"key": [1, 2], "x": [10, 20], "y": [0, 1]}), lake / "a.parquet")
    rows = 200_000
    later = {"key": np.arange(3, rows + 3), "x": pa.array([[1]] * rows), "y": np.zeros(rows, int)}
    pq.write_table(pa.table(later), lake / "b.parquet")
    source = 'source = { kind = "parquet", path = "lake" }\nid_column = "key"\nlabel_columns = ["y"]\n'
    started = time.process_time()
    done = refresh(settings_for(tmp_path, source + 'privacy = "dp"\n'), "d")
    assert time.process_time() - started < 5.0
    assert snapshot_rows(done.version)["x"].isna().sum() == rows
    assert f"{rows:,} value(s) of 'x' did not parse and are NULL" in done.repaired


def test_a_later_parquet_file_whose_values_fit_the_first_files_type_is_staged_in_mode_rules(tmp_path):
    """int32 for int64, and a double column whose every value is whole, convert without loss."""
    lake = tmp_path / "lake"
    lake.mkdir()
    pq.write_table(pa.table({"key": [1, 2], "x": [10, 20], "y": [0, 1]}), lake / "a.parquet")
    later = {"key": pa.array([3, 4], pa.int32()), "x": [30.0, 40.0], "y": [1, 0]}
    pq.write_table(pa.table(later), lake / "b.parquet")
    source = 'source = { kind = "parquet", path = "lake" }\nid_column = "key"\nlabel_columns = ["y"]\n'
    version = refresh(settings_for(tmp_path, source + 'privacy = "rules"\n'), "d").version
    assert dict(version.columns)["x"] == "int64"
    assert snapshot_rows(version).sort_values("key")["x"].tolist() == [10, 20, 30, 40]


@pytest.mark.parametrize(
    "frame, problem, mode",
    [  # a repeated or missing id fails in mode rules; the noisy modes drop its rows (test_snapshots_total)
        (pd.DataFrame({"key": [1, 2, 2], "y": [0, 1, 0]}), "is not unique", "rules"),
        (pd.DataFrame({"key": [1.0, None, 3.0], "y": [0, 1, 0]}), "missing values", "rules"),
        (pd.DataFrame({"key": [1, 2, 3], "label": [0, 1, 0]}), "label 'y' is not a column", "rules"),
        (pd.DataFrame({"key": [1, 2, 3], "label": [0, 1, 0]}), "label 'y' is not a column", "dp"),
    ],
)
def test_a_snapshot_that_breaks_the_declared_roles_is_refused_and_leaves_nothing(
    tmp_path, frame, problem, mode
):
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    toml = f'path = "t.parquet"\nid_column = "key"\nlabel_columns = ["y"]\nprivacy = "{mode}"\n'
    settings = settings_for(tmp_path, toml)
    with pytest.raises(SourceError) as failure:
        refresh(settings, "d")
    assert failure.value.reason == "invalid_snapshot" and problem in failure.value.message
    assert list((settings.snapshots_dir / "d").glob("*.parquet")) == []
    assert Versions(settings.snapshots_dir).last_refresh("d")["outcome"] == "failed"


def test_a_missing_file_fails_naming_the_source(tmp_path):
    settings = settings_for(tmp_path, 'path = "nowhere.parquet"\nid_column = "key"\nlabel_columns = ["y"]\n')
    with pytest.raises(SourceError) as failure:
        refresh(settings, "d")
    assert failure.value.reason == "not_found" and "nowhere.parquet" in failure.value.message


@pytest.mark.parametrize(
    "dataset_toml, complaint",
    [
        ('path = "a.parquet"\nsource = { kind = "parquet", path = "a.parquet" }\n', "exactly one of"),
        ('source = { kind = "oracle", path = "x" }\n', "oracle"),
        ('source = { kind = "postgres", table = "t", query = "SELECT 1" }\n', "exactly one of `table`"),
        ('source = { kind = "postgres", table = "t", password = "hunter2" }\n', "password"),
        ('source = { kind = "csv", path = "a.csv", columns = { a = "integer" } }\n', "unknown type"),
        ('source = { kind = "s3", url = "http://bucket/x" }\n', "url"),
        ('path = "a.parquet"\nrefresh_every = "soon"\n', "duration"),
    ],
)
def test_a_bad_source_table_stops_the_config_with_a_clear_message(tmp_path, dataset_toml, complaint):
    with pytest.raises(ConfigError) as failure:
        settings_for(tmp_path, dataset_toml + 'id_column = "key"\nlabel_columns = ["y"]\n')
    assert complaint in str(failure.value)


def test_a_dataset_name_with_an_at_sign_is_refused(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text('[datasets."claims@2"]\npath = "a.parquet"\nid_column = "k"\nlabel_columns = ["y"]\n')
    with pytest.raises(ConfigError, match="dataset name"):
        load_settings(config)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """moto's S3 server on a free loopback port, with a bucket holding Parquet and CSV objects."""
    boto3 = pytest.importorskip("boto3")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    keys = {"aws_access_key_id": "test-access-key", "aws_secret_access_key": "s3-test-secret-9f1c"}
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
    client.create_bucket(Bucket="lake")
    frame = rows(80, seed=3)
    for part, chunk in enumerate((frame.iloc[:40], frame.iloc[40:])):
        body = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pandas(chunk, preserve_index=False), body)
        client.put_object(Bucket="lake", Key=f"claims/part-{part}.parquet", Body=body.getvalue().to_pybytes())
        client.put_object(Bucket="lake", Key=f"csv/part-{part}.csv", Body=chunk.to_csv(index=False).encode())
    client.put_object(Bucket="lake", Key="claims/_SUCCESS", Body=b"")
    yield {"endpoint": endpoint, "frame": frame, "client": client, "keys": keys}
    server.stop()


def s3_settings(tmp_path, s3, monkeypatch, url: str, extra: str = ""):
    monkeypatch.setenv("RM_S3_KEY", s3["keys"]["aws_access_key_id"])
    monkeypatch.setenv("RM_S3_SECRET", s3["keys"]["aws_secret_access_key"])
    return settings_for(
        tmp_path,
        f'source = {{ kind = "s3", url = "{url}", endpoint = "{s3["endpoint"]}", region = "us-east-1", '
        f'access_key_env = "RM_S3_KEY", secret_key_env = "RM_S3_SECRET", timeout_s = 5{extra} }}\n'
        'id_column = "key"\nlabel_columns = ["y"]\n',
    )


def test_an_s3_prefix_of_parquet_objects_becomes_a_version(tmp_path, s3, monkeypatch):
    settings = s3_settings(tmp_path, s3, monkeypatch, "s3://lake/claims/")
    first = refresh(settings, "d")
    snap = snapshot_rows(first.version)
    assert first.new and first.version.rows == 80 and first.version.source == "s3 s3://lake/claims/"
    assert snap["key"].tolist() == s3["frame"]["key"].tolist()
    assert not refresh(settings, "d").new  # same objects, same bytes: no new version


def test_an_s3_prefix_of_csv_objects_with_declared_types(tmp_path, s3, monkeypatch):
    settings = s3_settings(
        tmp_path,
        s3,
        monkeypatch,
        "s3://lake/csv/",
        ', format = "csv", columns = { key = "int64", x = "float64", region = "string", y = "float64" }',
    )
    version = refresh(settings, "d").version
    assert version.rows == 80 and dict(version.columns)["y"] == "double" and "y" not in version.inferred


def test_a_missing_bucket_fails_naming_the_url_and_no_key(tmp_path, s3, monkeypatch, caplog):
    settings = s3_settings(tmp_path, s3, monkeypatch, "s3://no-such-bucket/claims/")
    with pytest.raises(SourceError) as failure:
        refresh(settings, "d")
    assert failure.value.reason == "not_found"
    assert failure.value.message.startswith("s3 s3://no-such-bucket/claims/: ")
    assert "bucket 'no-such-bucket' does not exist" in failure.value.message
    recorded = json.dumps(Versions(settings.snapshots_dir).last_refresh("d")) + caplog.text
    recorded += settings.audit_path.read_text()
    assert "dataset_refresh_failed" in settings.audit_path.read_text()
    assert s3["keys"]["aws_secret_access_key"] not in recorded + failure.value.message
