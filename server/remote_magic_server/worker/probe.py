"""The doctor's hands on the sandbox and the data: run as `python -m remote_magic_server.worker.probe`.

The API process may not import the worker package or DuckDB, and must never read a row, so the
doctor (doctor.py) runs these checks in this separate process: it reads a JSON request on stdin and
writes one JSON list of findings on stdout. Each sandbox step is tried for real in a forked child (the
same functions a worker calls, so a step the kernel refuses here would fail a job too); the children
are forked before DuckDB starts any thread. Then each dataset is opened as a worker opens it (as the
sandbox uid when root) and read with a locked-down DuckDB: its id column must be unique and present,
its label columns present, and what the owner declared of its columns (`probe_declared.py`) must
match the rows.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from remote_magic.contract.wire import near_column

from . import sandbox
from .probe_declared import declared_findings

Finding = dict[str, str]


ID_LIKE_MIN_ROWS = 100  # a text column with a distinct value in each of at least this many rows


def _finding(level: str, check: str, message: str) -> Finding:
    return {"level": level, "check": check, "message": message}


def _in_child(step: Callable[[], str]) -> tuple[bool, str]:
    """Run `step` in a forked child (it may unshare, limit or drop privileges for good); return whether
    it returned and its text, or the error's text."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            text, code = step(), 0
        except BaseException as exc:  # noqa: BLE001 - reported to the parent
            text, code = f"{type(exc).__name__}: {exc}", 1
        os.write(write_end, text.encode()[:4000])
        os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        text = fh.read().decode(errors="replace")
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0, text


def _landlock(scratch: str) -> Finding:
    ok, text = _in_child(lambda: sandbox.restrict_filesystem([], scratch))
    if not ok:
        return _finding(
            "fatal", "landlock", f"the kernel has Landlock but refused the worker's rules ({text})"
        )
    if text == "none":
        return _finding(
            "warn",
            "landlock",
            "no Landlock: jobs run without file-system confinement; use Linux >= 5.13 with landlock in "
            "the kernel's lsm= list",
        )
    return _finding("ok", "landlock", f"ABI {text.removeprefix('landlock-abi')}")


def _network() -> Finding:
    ok, text = _in_child(sandbox.isolate_network)
    if ok and text != "none":
        return _finding("ok", "network", f"jobs get their own network namespace ({text})")
    return _finding(
        "warn",
        "network",
        "no network namespace: jobs can reach the network; run the server as root, or allow "
        "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1)",
    )


def _limits(cpu_seconds: int, memory_mb: int) -> Finding:
    def step() -> str:
        sandbox.apply_limits(cpu_seconds, memory_mb)
        return str(resource.getrlimit(resource.RLIMIT_DATA)[0])

    ok, text = _in_child(step)
    if not ok:
        return _finding("fatal", "rlimits", f"the worker's resource limits cannot be set ({text})")
    granted = int(text)
    wanted = memory_mb * sandbox.DATA_BACKSTOP
    if granted != resource.RLIM_INFINITY and granted < wanted * 2**20:
        return _finding(
            "warn",
            "rlimits",
            f"the hard data limit ({granted // 2**20} MiB) is below {sandbox.DATA_BACKSTOP} x "
            f"worker_memory_mb ({wanted} MiB); raise it (ulimit -d, LimitDATA= in systemd) or lower "
            "worker_memory_mb",
        )
    limits = f"cpu, {memory_mb} MiB resident (data up to {wanted} MiB), file size, open files, no core"
    return _finding("ok", "rlimits", limits)


def _readable(path: str, uid: int, gid: int) -> tuple[bool, str]:
    """Open the dataset as a worker does: before confinement, then read it through /proc as the uid the
    worker will have."""
    as_root = os.geteuid() == 0
    drops = as_root and sandbox.unreadable_code_path() is None

    def step() -> str:
        proc_path = sandbox.open_dataset(path)
        if drops:
            sandbox.drop_privileges(uid, gid, os.stat(path).st_gid or None)
        with open(proc_path, "rb") as fh:
            fh.read(4)
        return f"uid {uid}" if drops else f"uid {os.getuid()}"

    return _in_child(step)


def _dataset_file(name: str, ds: dict, uid: int, gid: int) -> Finding:
    ok, text = _readable(ds["path"], uid, gid)
    if ok:
        return _finding("ok", f"dataset {name}", f"readable by the workers ({text})")
    return _finding(
        "fatal",
        f"dataset {name}",
        f"{ds['path']} is not readable by the sandbox uid {uid}: make it world-readable (chmod o+r), or "
        "group-readable (chmod g+r) by a group the file has, which workers keep",
    )


def _dataset_columns(name: str, ds: dict) -> list[Finding]:
    from sqlglot import exp

    from .staging import connect_locked

    con = connect_locked(ds["path"])
    try:
        rel = con.sql("SELECT * FROM read_parquet(?) LIMIT 0", params=[ds["path"]])
        columns = set(rel.columns)
        found: list[Finding] = []
        for label in [c for c in ds["label_columns"] if c not in columns]:
            near = near_column(label, columns)
            found.append(
                _finding(
                    "fatal", f"dataset {name}", f"label {label!r} is not a column{near}: fix label_columns"
                )
            )
        id_column = ds["id_column"]
        if id_column not in columns:
            near = near_column(id_column, columns)
            said = f"the id column {id_column!r} is not a column{near}: fix id_column"
            found.append(_finding("fatal", f"dataset {name}", said))
            return found
        ident = exp.column(id_column, quoted=True).sql(dialect="duckdb")
        rows, distinct, nulls = con.execute(
            f"SELECT count(*), count(DISTINCT {ident}), count(*) - count({ident}) FROM read_parquet(?)",
            [ds["path"]],
        ).fetchone()
        if nulls or distinct != rows:
            found.append(
                _finding(
                    "fatal",
                    f"dataset {name}",
                    f"id column {id_column!r} is not unique ({rows - distinct} repeated or missing values): "
                    "the evaluation split and the release ledger need one id per row",
                )
            )
        found += _id_like_text(con, name, ds, rel)
        found += declared_findings(con, name, ds, _arrow_types(ds["path"]))
        if not any(f["level"] == "fatal" for f in found):
            labels = ", ".join(ds["label_columns"])
            present = f"label(s) {labels} present" if labels else "no label to check"
            found.append(_finding("ok", f"dataset {name}", f"{len(columns)} columns, id unique, {present}"))
        return found
    except Exception as exc:  # noqa: BLE001 - a file DuckDB cannot read is the finding
        return [
            _finding(
                "fatal",
                f"dataset {name}",
                f"{ds['path']} cannot be read as Parquet ({exc}); a CSV file is declared as "
                'source = { kind = "csv", path = "..." }',
            )
        ]
    finally:
        con.close()


def _arrow_types(path: str) -> dict[str, str]:
    """Column -> Arrow type name, as a dataset version records them (data/snapshots.py)."""
    import pyarrow.parquet as pq

    return {f.name: str(f.type) for f in pq.read_schema(path)}


def _id_like_text(con, name: str, ds: dict, rel) -> list[Finding]:
    """Text columns that became default features though every row holds its own value (an id by
    another name): as a feature one can single out rows and teaches the model nothing. Told to the data
    owner only (the doctor, and the log at start-up), like the timestamps no spec can use."""
    from sqlglot import exp

    skip = {ds["id_column"], *ds["label_columns"], *ds.get("exclude_columns", [])}
    text = [c for c, t in zip(rel.columns, rel.types) if str(t) == "VARCHAR" and c not in skip]
    found = []
    for column in text:
        ident = exp.column(column, quoted=True).sql(dialect="duckdb")
        values, distinct = con.execute(
            f"SELECT count({ident}), count(DISTINCT {ident}) FROM read_parquet(?)", [ds["path"]]
        ).fetchall()[0]
        if values >= ID_LIKE_MIN_ROWS and distinct == values:
            found.append(
                _finding(
                    "warn",
                    f"dataset {name}",
                    f"column {column!r} holds text unique to each row, like an id, and is a default "
                    "feature: it can single out rows and teaches a model nothing; add it to "
                    "exclude_columns",
                )
            )
    return found


def probe(request: dict) -> list[Finding]:
    """Every check of the request, sandbox first (forked children), then the data (DuckDB)."""
    findings: list[Finding] = []
    with tempfile.TemporaryDirectory(prefix="remote-magic-probe-") as scratch:
        findings.append(_landlock(scratch))
    findings.append(_network())
    findings.append(_limits(request["cpu_seconds"], request["memory_mb"]))
    readable = []
    for name, ds in request["datasets"].items():
        if not Path(ds["path"]).is_file():
            continue  # the doctor reports a missing file itself
        found = _dataset_file(name, ds, request["sandbox_uid"], request["sandbox_gid"])
        findings.append(found)
        if found["level"] == "ok":
            readable.append(name)
    for name in readable:
        findings.extend(_dataset_columns(name, request["datasets"][name]))
    return findings


if __name__ == "__main__":
    json.dump(probe(json.load(sys.stdin)), sys.stdout)
