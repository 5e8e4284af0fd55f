"""Dataset versions through the owner's CLI: a refresh makes a version only when the content changed,
`versions` shows schema changes, `prune` keeps what jobs use, and a failed refresh keeps the previous
version and is recorded in the registry and the audit log."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from remote_magic_server.cli import main
from remote_magic_server.config.settings import load_settings
from remote_magic_server.data.lifecycle import prune
from remote_magic_server.data.versions import Versions


def cli(capsys, config, *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as done:
        main(["dataset", *args, "--config", str(config)])
    out = capsys.readouterr()
    return done.value.code, out.out, out.err


def write(path, n=50, changed=False, extra_column=False):
    frame = pd.DataFrame({"key": np.arange(n), "x": np.arange(n) * 0.5, "y": np.arange(n) % 2})
    if changed:
        frame.loc[7, "x"] = 99.0
    if extra_column:
        frame["z"] = "a"
    frame.to_csv(path, index=False)


@pytest.fixture
def config(tmp_path):
    write(tmp_path / "claims.csv")
    path = tmp_path / "server.toml"
    path.write_text(
        '[server]\ndata_dir = "data"\n\n[datasets.claims]\n'
        'source = { kind = "csv", path = "claims.csv", columns = { x = "float64" } }\n'
        'id_column = "key"\nlabel_columns = ["y"]\nprivacy = "rules"\n'
    )
    return path


def test_unchanged_content_makes_one_version_and_a_changed_row_a_new_one(capsys, config, tmp_path):
    code, out, _ = cli(capsys, config, "refresh", "claims")
    assert code == 0 and "new version v1" in out and "50 rows" in out
    code, out, _ = cli(capsys, config, "refresh", "claims")
    assert code == 0 and "unchanged; v1 keeps serving" in out
    write(tmp_path / "claims.csv", changed=True)
    code, out, _ = cli(capsys, config, "refresh", "claims")
    assert code == 0 and "new version v2" in out
    versions = Versions(load_settings(config).snapshots_dir).history("claims")
    assert [v.number for v in versions] == [1, 2]
    assert versions[0].content_hash != versions[1].content_hash
    assert versions[0].schema_hash == versions[1].schema_hash
    assert pq.read_table(versions[0].file).column("x")[7].as_py() == 3.5  # v1 is immutable
    assert pq.read_table(versions[1].file).column("x")[7].as_py() == 99.0


def test_versions_shows_a_schema_change_and_list_shows_the_latest(capsys, config, tmp_path):
    cli(capsys, config, "refresh", "claims")
    write(tmp_path / "claims.csv", extra_column=True)
    cli(capsys, config, "refresh", "claims")
    code, out, _ = cli(capsys, config, "versions", "claims")
    assert code == 0 and out.count("\nv") + out.startswith("v") == 2
    assert "schema changed: +z" in out and "inferred types: key, y, z" in out
    code, out, _ = cli(capsys, config, "list")
    assert code == 0 and "claims: csv " in out and "v2 (50 rows" in out and "on demand" in out


def test_prune_keeps_the_newest_and_every_version_a_job_uses(capsys, config, tmp_path):
    for n in range(4):
        write(tmp_path / "claims.csv", n=50 + n)
        cli(capsys, config, "refresh", "claims")
    settings = load_settings(config)
    files = {v.number: v.file for v in Versions(settings.snapshots_dir).history("claims")}
    pruned = prune(settings, "claims", keep=1, in_use={2})
    assert [v.number for v in pruned] == [1, 3]
    live = Versions(settings.snapshots_dir).history("claims")
    assert [v.number for v in live] == [2, 4]
    assert not files[1].exists() and not files[3].exists() and files[2].exists() and files[4].exists()
    code, out, _ = cli(capsys, config, "versions", "claims")
    assert "v1  pruned" in out and "v3  pruned" in out
    write(tmp_path / "claims.csv", n=99)
    cli(capsys, config, "refresh", "claims")
    assert Versions(settings.snapshots_dir).latest("claims").number == 5  # numbers are never reused
    code, out, _ = cli(capsys, config, "prune", "claims", "--keep", "1")
    assert code == 0 and "pruned v2, v4" in out
    code, _, err = cli(capsys, config, "prune", "claims", "--keep", "0")
    assert code == 2 and "--keep" in err


def test_a_failed_refresh_keeps_the_previous_version_and_is_recorded(capsys, config, tmp_path):
    cli(capsys, config, "refresh", "claims")
    (tmp_path / "claims.csv").write_text("key,x,y\n1,1.0,0\n1,2.0,1\n")
    code, _, err = cli(capsys, config, "refresh", "claims")
    assert code == 1 and "refresh failed (invalid_snapshot)" in err and "claims.csv" in err
    assert "'key' is not unique" in err
    settings = load_settings(config)
    latest = Versions(settings.snapshots_dir).latest("claims")
    assert latest.number == 1 and latest.rows == 50 and latest.file.exists()
    code, out, _ = cli(capsys, config, "list")
    assert "last refresh failed" in out and "invalid_snapshot" in out
    audit = settings.audit_path.read_text()
    assert '"event":"dataset_refresh_failed"' in audit and '"reason":"invalid_snapshot"' in audit


def test_an_unknown_dataset_is_named(capsys, config):
    code, _, err = cli(capsys, config, "refresh", "nope")
    assert code == 2 and "no dataset named 'nope'" in err and "claims" in err
