"""A data owner's config mistakes come out as one line each, saying where and what to write instead:
an unknown key with the nearest known one, a CSV file given as `path` with how a CSV source is declared;
and the natural TOML for the classes of a number or true/false label (bare values) is read as it means."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from remote_magic_server.config.settings import ConfigError, load_settings

DATASET = '[datasets.x]\npath = "t.parquet"\nid_column = "id"\nlabel_columns = ["y"]\n'


def mistakes(tmp_path, text: str) -> list[str]:
    config = tmp_path / "server.toml"
    config.write_text(text)
    with pytest.raises(ConfigError) as raised:
        load_settings(config)
    lines = str(raised.value).splitlines()
    assert all(line.startswith(f"{config}: ") for line in lines), lines
    return [line.removeprefix(f"{config}: ") for line in lines]


def test_each_unknown_key_is_one_line_with_its_path_and_the_nearest_known_key(tmp_path):
    text = "[sever]\nport = 1\n[policy]\ndp_rho_caps = 2\n" + DATASET + 'colum_levels = { y = ["0"] }\n'
    text += '[datasets.z]\nid_column = "id"\nlabel_columns = ["y"]\npolicy = { min_rowz = 200 }\n'
    text += 'source = { kind = "csv", paht = "a.csv" }\n'
    assert sorted(mistakes(tmp_path, text)) == [
        "datasets.z.policy: unknown policy key 'min_rowz'; did you mean 'min_rows'?",
        "datasets.z.source.csv.path: Field required",
        "unknown key datasets.x.colum_levels; did you mean 'column_levels'?",
        "unknown key datasets.z.source.csv.paht; did you mean 'path'?",
        "unknown key policy.dp_rho_caps; did you mean 'dp_rho_cap'?",
        "unknown key sever; did you mean 'server'?",
    ]


def test_a_csv_file_given_as_path_says_how_to_declare_a_csv_source(tmp_path):
    found = mistakes(tmp_path, DATASET.replace("t.parquet", "exports/x.csv"))
    assert len(found) == 1 and found[0].startswith("datasets.x.path: exports/x.csv looks like a CSV file")
    assert 'source = { kind = "csv", path = "exports/x.csv" }' in found[0]
    nested = mistakes(
        tmp_path, DATASET.replace('path = "t.parquet"', 'source = { kind = "parquet", path = "x.CSV" }')
    )
    assert len(nested) == 1 and 'kind = "csv"' in nested[0], nested


def test_bare_numbers_and_booleans_as_declared_levels_are_read_as_their_text(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text(DATASET + "column_levels = { y = [0, 1, 2], flag = [true, false], w = [0.5] }\n")
    levels = load_settings(config).datasets["x"].column_levels
    assert levels == {"y": ["0", "1", "2"], "flag": ["true", "false"], "w": ["0.5"]}
    config.write_text(DATASET + 'column_levels = { y = [1, "1"] }\n')  # the same class twice
    with pytest.raises(ConfigError, match=r"datasets\.x\.column_levels: levels of 'y': 1 to 254 distinct"):
        load_settings(config)


def test_doctor_prints_one_fatal_line_per_mistake(tmp_path):
    config = tmp_path / "server.toml"
    config.write_text("[sever]\nport = 1\n[policy]\ndp_rho_caps = 2\n")
    cmd = [sys.executable, "-m", "remote_magic_server", "doctor", "--config", str(config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "LC_ALL": "C"})
    assert done.returncode == 1 and "pydantic" not in done.stdout
    assert done.stdout.splitlines() == [
        f"FATAL  config: {config}: unknown key policy.dp_rho_caps; did you mean 'dp_rho_cap'?",
        f"FATAL  config: {config}: unknown key sever; did you mean 'server'?",
    ]
