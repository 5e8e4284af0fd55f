"""In mode dp no row's value decides whether a snapshot or a refresh fails (red-team review 6, section 2).

Each case is served twice by one real server: world `out` without the victim's row, world `in` with it
(a value that does not parse as its declared type, a repeated id, a missing id, a Parquet file written
as double because of one row). Both worlds must show analysts the same catalog (available, the same
versions and column types) and the same refresh counters in `/metrics`, and jobs
run on both; only the owner's CLI and log say what was nulled or dropped.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from pyarrow import fs

from remote_magic_server.cli import main
from remote_magic_server.data.files import CsvSource, local_glob
from remote_magic_server.data.snapshots import take_snapshot
from remote_magic_server.data.sources import SourceError
from tests.serverproc import running

ROWS = 300
CSV_TYPES = '{ id = "int64", age = "float64", visits = "int64", label = "int64" }'
CASES = ("malformed", "repeated_id", "missing_id", "parquet_double")
# The first file is the victim-free day 0: Parquet columns take the first file's types (docs/privacy.md).
DAYS = 2


def days(n: int) -> list[pd.DataFrame]:
    """The owner's rows, one frame per day: day 0 large, each later day two rows."""
    return [clean(), *(clean(start=ROWS + 10 * day, rows=2) for day in range(1, n))]


def clean(start: int = 1, rows: int = ROWS) -> pd.DataFrame:
    rng = np.random.default_rng(start)
    return pd.DataFrame(
        {
            "id": np.arange(start, start + rows),
            "age": rng.integers(20, 81, rows).astype(float),
            "visits": rng.integers(0, 9, rows),
            "label": rng.integers(0, 2, rows),
        }
    )


def victim(case: str, after: int) -> pd.DataFrame:
    """The victim's row, breaking the declaration as the case says; `after` is the largest id so far."""
    row = {"id": [str(after + 1)], "age": [99.0], "visits": ["3"], "label": [1]}
    if case == "malformed":
        row["visits"] = ["2.5"]
    elif case == "repeated_id":
        row["id"] = ["7"]  # a day-0 row's id
    elif case == "missing_id":
        row["id"] = [""]
    return pd.DataFrame(row)


def write_world(folder, case: str, frames: list[pd.DataFrame], with_victim: bool) -> None:
    """The owner's source: one CSV file, or (parquet_double) one Parquet file per frame, each written with
    the types its own rows give (the victim's 2.5 makes its file's `visits` double)."""
    if case == "parquet_double":
        folder.mkdir(exist_ok=True)
        for day, frame in enumerate(frames):
            if with_victim and day == len(frames) - 1:
                frame = pd.concat([frame, frame.tail(1).assign(id=frame["id"].max() + 1, visits=2.5)])
            frame.to_parquet(folder / f"day{day}.parquet", index=False)
        return
    rows = [f.astype(str) for f in frames]
    if with_victim:
        rows.append(victim(case, int(frames[-1]["id"].max())))
    pd.concat(rows).to_csv(folder, index=False)


def table(name: str, source) -> str:
    if str(source).endswith(".csv"):
        where = f'source = {{ kind = "csv", path = "{source}", columns = {CSV_TYPES} }}'
    else:
        where = f'source = {{ kind = "parquet", path = "{source}" }}'
    return (
        f'[datasets.{name}]\n{where}\nid_column = "id"\nlabel_columns = ["label"]\nprivacy = "dp"\n'
        'column_levels.label = ["0", "1"]\n'
    )


def where(data, case: str, world: str):
    return data / (f"{case}_{world}" if case == "parquet_double" else f"{case}_{world}.csv")


def public(server, name: str) -> dict:
    """What an analyst sees of a dataset that could tell the worlds apart, with its name taken out."""
    info = server.get(f"/datasets/{name}").json()
    return {
        "unavailable": info["unavailable"],
        "version": info["version"],
        "versions": [(v["number"], v["schema_hash"]) for v in info["versions"]],
        "columns": [(c["name"], c["dtype"], c["role"]) for c in info["columns"]],
    }


def refresh_counters(server, name: str) -> dict[str, str]:
    text = server.metrics()
    lines = [line for line in text.splitlines() if f'dataset="{name}"' in line]
    return {re.sub(r'dataset="[^"]+"', "", line.rsplit(" ", 1)[0]): line.rsplit(" ", 1)[1] for line in lines}


def refresh(server, name: str, capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(["dataset", "refresh", name, "--config", str(server.config)])
    out = capsys.readouterr()
    assert done.value.code == 0, out.err
    return out.out


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    base = tmp_path_factory.mktemp("total")
    data = base / "data"
    data.mkdir()
    tables = ""
    for case in CASES:
        for world in ("out", "in"):
            write_world(where(data, case, world), case, days(DAYS), world == "in")
            tables += table(f"{case}_{world}", where(data, case, world))
    names = [f"{case}_{world}" for case in CASES for world in ("out", "in")]
    with running(data, base / "server.log", {"alice": names}, tables, start_timeout=180) as server:
        yield server


@pytest.mark.parametrize("case", CASES)
def test_one_rows_value_never_decides_a_snapshot_or_a_refresh(served, case, capsys):
    data = served.data_dir
    first = {world: public(served, f"{case}_{world}") for world in ("out", "in")}
    assert first["in"] == first["out"]
    assert first["in"]["unavailable"] is None and first["in"]["version"] == 1
    assert ("visits", "int64", "feature") in first["in"]["columns"]

    # The owner's next day: one ordinary new row in both worlds, and the victim's row again in world in.
    frames = days(DAYS + 1)
    printed = {}
    for world in ("out", "in"):
        write_world(where(data, case, world), case, frames, world == "in")
        printed[world] = refresh(served, f"{case}_{world}", capsys)
    second = {world: public(served, f"{case}_{world}") for world in ("out", "in")}
    assert second["in"] == second["out"] and second["in"]["version"] == 2
    counters = {world: refresh_counters(served, f"{case}_{world}") for world in ("out", "in")}
    assert counters["in"] == counters["out"]
    assert not [k for k in counters["in"] if "failures" in k]

    # Only the owner hears what was changed: the CLI and the server log, never the catalog.
    said = "missing or repeated id dropped" if "id" in case else "did not parse and are NULL"
    assert said in printed["in"] and said not in printed["out"]
    assert "did not parse" not in str(second) and "dropped" not in str(second)

    described = served.client().describe({"dataset": f"{case}_in", "label": "label"})
    assert described.raw.dataset_version == 2


def test_the_owner_reads_the_counts_in_the_log_and_from_dataset_list_and_doctor(served, capsys):
    log = served.log_path.read_text()
    assert '"repairs"' in log and '"dropped_ids": 1' in log
    with pytest.raises(SystemExit):
        main(["dataset", "list", "--config", str(served.config)])
    listed = capsys.readouterr().out
    assert "changed rows: 1 value(s) of 'visits' did not parse" in listed
    with pytest.raises(SystemExit):
        main(["doctor", "--config", str(served.config)])
    doctor = capsys.readouterr().out
    assert "dataset malformed_in: its snapshot was staged as the declared types say" in doctor
    assert "dataset malformed_out: its snapshot was staged" not in doctor


def test_total_staging_converts_each_value_alone_and_still_fails_on_what_no_row_decides(tmp_path):
    """Each value converts or is NULL on its own (so other rows never change with the victim's); a row
    with the wrong number of fields is skipped; a declared column not in the header still fails."""
    good = b"id,visits,flag,label\n1,3,true,0\n2,4,0,1\n"
    odd = b"3,2.5,yes,1\n4,\xff7,TRUE,0\n5,6,1,0,9\n"
    (tmp_path / "a.csv").write_bytes(good + odd)
    (tmp_path / "b.csv").write_bytes(good)
    types = {"id": "int64", "visits": "int64", "flag": "bool", "label": "int64"}

    def staged(name: str):
        source = CsvSource("csv", local_glob(str(tmp_path / name)), fs.LocalFileSystem(), types)
        snapshot = take_snapshot(source, tmp_path / "snaps", "id", ["label"], declared_only=True)
        return pq.read_table(snapshot.file).to_pylist(), snapshot.repairs

    with_odd, repairs = staged("a.csv")
    without, nothing = staged("b.csv")
    assert with_odd[:2] == without and not nothing
    assert with_odd[2:] == [
        {"id": 3, "visits": None, "flag": None, "label": 1},
        {"id": 4, "visits": None, "flag": True, "label": 0},
    ]
    assert repairs.nulled == {"visits": 2, "flag": 1} and repairs.skipped_rows == 1

    (tmp_path / "c.csv").write_bytes(b"id,visits,label\n1,3,0\n")
    with pytest.raises(SourceError) as failure:
        staged("c.csv")
    assert failure.value.reason == "invalid_snapshot" and "'flag'" in failure.value.message


def test_a_later_parquet_files_extra_column_is_named_and_the_types_are_the_first_files(tmp_path, capsys):
    """Found by review (rev9 #9): a later file's extra column was dropped without a word, and the line
    said "as the declared types say" though nobody declares a Parquet folder's types."""
    lake = tmp_path / "lake"
    lake.mkdir()
    first, later = days(2)
    first.to_parquet(lake / "day0.parquet", index=False)
    later.assign(visits=2.5, extra=["x", "y"]).to_parquet(lake / "day1.parquet", index=False)
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ndata_dir = "{tmp_path / "data"}"\n\n' + table("lake", lake))
    with pytest.raises(SystemExit) as done:
        main(["dataset", "refresh", "lake", "--config", str(config)])
    printed = capsys.readouterr().out
    assert done.value.code == 0, printed
    assert (
        "lake: staged as the first file's types say: 2 value(s) of 'visits' did not parse and are NULL; "
        "column(s) 'extra' of a later file are not in the first file and were left out; "
        "column 'visits' of day1.parquet is double, converted to the first file's int64\n"
    ) in printed
    with pytest.raises(SystemExit):
        main(["doctor", "--config", str(config)])
    doctor = capsys.readouterr().out
    assert "WARN   dataset lake: its snapshot was staged as the first file's types say: 2 value(s)" in doctor
    assert "'extra' of a later file" in doctor and "declared types" not in doctor
