"""`remote-magic-server doctor`: find what would fail a job before serving, one line each, with what to do.

`serve` runs the same checks at start-up and refuses to start on a fatal one. Checks that need the
sandbox or the data (Landlock, network namespaces, rlimits, each dataset read as the sandbox uid, its id
column unique, its labels present, the declared classes, levels and ranges against its rows) run in a
separate process, `worker/probe.py`: the API process never imports the worker package or DuckDB, and
never reads a row. The rest runs here: the data directory and free disk, the job store's schema, the
audit log against its anchored head, the TLS files, JupyterHub, the clock. Levels: `ok`, `warn` (jobs
run, with less than they could have), `fatal` (jobs or sign-ins would fail, or the audit log does not
match its anchor). A source other than a Parquet `path` with no version yet is snapshotted into a scratch
folder for the data checks (by `doctor` only: `serve` takes the first snapshot itself).

Why it is long: one short function per check, each with the words it says to the owner.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import requests

from .audit import Verdict, last_entry, read_head, verify
from .config.settings import Settings
from .jobs.store import SCHEMA_VERSION

if TYPE_CHECKING:
    from .data.sources import SourceError

MIN_FREE_MB = 100
LOW_FREE_MB = 1024
CERT_WARN_DAYS = 14
CLOCK_SLACK = timedelta(minutes=1)
PROBE_TIMEOUT_S = 120


@dataclass(frozen=True)
class Finding:
    level: str  # "ok", "info" (worth knowing; nothing fails), "warn" or "fatal"
    check: str
    message: str

    def line(self) -> str:
        return f"{self.level.upper():<5}  {self.check}: {self.message}"


def _existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _data_dir(settings: Settings) -> list[Finding]:
    data_dir = settings.server.data_dir
    here = _existing(data_dir)
    if not os.access(here, os.W_OK | os.X_OK):
        return [Finding("fatal", "data_dir", f"{here} is not writable by this user: fix its owner or mode")]
    free_mb = shutil.disk_usage(here).free // 2**20
    if free_mb < MIN_FREE_MB:
        level, advice = "fatal", "jobs cannot write their folders; free space or move data_dir"
    elif free_mb < LOW_FREE_MB:
        level, advice = "warn", "little room for job folders and backups"
    else:
        level, advice = "ok", "writable"
    return [Finding(level, "data_dir", f"{data_dir}: {free_mb} MiB free; {advice}")]


def _store(settings: Settings) -> list[Finding]:
    if not settings.db_path.exists():
        return [Finding("ok", "store", "no job store yet; it is created at start")]
    db = sqlite3.connect(f"file:{settings.db_path}?mode=ro", uri=True)
    try:
        version = int(db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    except (sqlite3.Error, TypeError, ValueError):
        return [Finding("fatal", "store", f"{settings.db_path} is not a remote-magic job store")]
    finally:
        db.close()
    if version > SCHEMA_VERSION:
        return [
            Finding(
                "fatal",
                "store",
                f"schema version {version} is newer than this server's {SCHEMA_VERSION}: "
                "upgrade remote-magic",
            )
        ]
    if version < SCHEMA_VERSION:
        return [
            Finding(
                "ok",
                "store",
                f"schema version {version} is migrated to {SCHEMA_VERSION} at start "
                "(take a backup first: remote-magic-server backup)",
            )
        ]
    return [Finding("ok", "store", f"schema version {version}")]


def audit_verdict(settings: Settings) -> Verdict:
    """The audit log checked against the head anchored in the job store."""
    return verify(settings.audit_path, read_head(settings.db_path))


def _audit(settings: Settings, accept_mismatch: bool) -> list[Finding]:
    verdict = audit_verdict(settings)
    if verdict.ok:
        return [Finding("ok", "audit", verdict.describe())]
    if accept_mismatch:
        return [
            Finding(
                "warn",
                "audit",
                f"{verdict.describe()}; continuing as told (--accept-audit-mismatch): the log is kept aside "
                "and a new chain starts with an entry that records this",
            )
        ]
    return [
        Finding(
            "fatal",
            "audit",
            f"{verdict.describe()}; find out what happened (restore the log from a backup), or start with "
            "serve --accept-audit-mismatch, which is itself recorded",
        )
    ]


def _certificate_expiry(path: Path) -> datetime:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc


def _tls(settings: Settings) -> list[Finding]:
    server = settings.server
    if server.tls_cert is None:
        from remote_magic.contract.addresses import is_loopback

        if is_loopback(server.host):
            return [Finding("ok", "tls", f"plain HTTP on loopback ({server.host})")]
        return [
            Finding(
                "warn",
                "tls",
                f"plain HTTP on {server.host}: tokens cross the network in clear text; set tls_cert and "
                "tls_key, or put a TLS proxy in front",
            )
        ]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(server.tls_cert), str(server.tls_key))
        if server.tls_client_ca is not None:
            context.load_verify_locations(str(server.tls_client_ca))
        expires = _certificate_expiry(server.tls_cert)
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return [
            Finding(
                "fatal",
                "tls",
                f"the TLS files do not load ({reason}): tls_cert must be a PEM certificate, tls_key its own "
                "private key, tls_client_ca a PEM CA bundle",
            )
        ]
    left = expires - datetime.now(timezone.utc)
    if left <= timedelta(0):
        return [Finding("fatal", "tls", f"the certificate expired on {expires:%Y-%m-%d}: renew it")]
    if left < timedelta(days=CERT_WARN_DAYS):
        return [Finding("warn", "tls", f"the certificate expires on {expires:%Y-%m-%d}: renew it soon")]
    clients = ", client certificates required" if server.tls_client_ca else ""
    return [Finding("ok", "tls", f"certificate and key match, valid until {expires:%Y-%m-%d}{clients}")]


def _hub(settings: Settings) -> list[Finding]:
    hub = settings.jupyterhub
    if hub is None:
        return []
    if importlib.util.find_spec("jupyterhub") is None:
        missing = "the jupyterhub package is not installed: pip install 'remote-magic[jupyterhub]'"
        return [Finding("fatal", "jupyterhub", missing)]
    token = os.environ.get(hub.api_token_env)
    if not token:
        return [
            Finding(
                "fatal",
                "jupyterhub",
                f"${hub.api_token_env} is not set: give this service's Hub API token in that variable",
            )
        ]
    url = f"{hub.api_url.rstrip('/')}/user"
    try:
        response = requests.get(url, headers={"Authorization": f"token {token}"}, timeout=hub.timeout_s)
    except requests.RequestException:
        return [
            Finding("warn", "jupyterhub", f"{hub.api_url} does not answer; Hub sign-in fails until it does")
        ]
    if response.status_code != 200:
        return [
            Finding(
                "fatal",
                "jupyterhub",
                f"the Hub refuses this service's token (HTTP {response.status_code}): check "
                f"${hub.api_token_env} against the Hub's services config",
            )
        ]
    scopes = response.json().get("scopes", [])
    if not any(s == "read:users:groups" or s.startswith("read:users:groups!") for s in scopes) and hub.groups:
        return [
            Finding(
                "fatal",
                "jupyterhub",
                "the service's token lacks the scope read:users:groups, so group grants cannot work: add it "
                "to the service's role in the Hub",
            )
        ]
    return [Finding("ok", "jupyterhub", f"{hub.api_url} answers and accepts this service's token")]


def _clock(settings: Settings) -> list[Finding]:
    now = datetime.now(timezone.utc)
    entry = last_entry(settings.audit_path)
    last = datetime.fromisoformat(entry["time"]) if entry else None
    if last is not None and last > now + CLOCK_SLACK:
        return [
            Finding(
                "warn",
                "clock",
                f"the clock ({now:%Y-%m-%d %H:%M} UTC) is behind the audit log's last entry "
                f"({last:%Y-%m-%d %H:%M}): token expiry depends on it; check NTP",
            )
        ]
    return [Finding("ok", "clock", f"{now:%Y-%m-%d %H:%M} UTC")]


def _files(settings: Settings) -> list[Finding]:
    found = []
    for name, ds in settings.datasets.items():
        if ds.path is not None and not ds.path.exists():
            found.append(
                Finding("warn", f"dataset {name}", f"{ds.path} does not exist: fix path; {_without(name)}")
            )
        if ds.mock_path is not None and not ds.mock_path.is_file():
            found.append(Finding("fatal", f"dataset {name}", f"mock_path {ds.mock_path} does not exist"))
    if not settings.datasets:
        found.append(Finding("warn", "datasets", "the config serves no dataset"))
    return found


def _labels(settings: Settings, said: list[Finding]) -> list[Finding]:
    """In the noisy modes a classifier job takes public classes (the owner's declared ones, or an
    analyst's `classes`: `base.check_public_classes`), and mode dp trains a regressor only on a declared
    range (the DP trainer's rule, `dpboost.family.check_label`): the owner of a label with neither should
    hear it before an analyst is refused. A label already `said` to be no column (by the probe, or the
    trial snapshot, in the words of `missing_roles`) is a typo, not a missing declaration: not repeated."""
    found = []
    for name, ds in settings.datasets.items():
        mode = settings.policy_for(name).privacy
        if mode == "rules":
            continue
        declared = {*ds.column_levels, *ds.label_ranges}
        regressor = "mode dp trains no regressor on it, and " if mode == "dp" else ""
        told = " ".join(f.message for f in said if f.check == f"dataset {name}")
        for label in [
            label
            for label in ds.label_columns
            if label not in declared and f"label {label!r} is not a column" not in told
        ]:
            found.append(
                Finding(
                    "warn",
                    f"dataset {name}",
                    f"label {label} has neither declared classes nor a range: {regressor}every classifier "
                    f"job on it must name its classes (`classes` in the spec); declare column_levels.{label} "
                    f"(a classifier's classes) or label_ranges.{label} (a regression's range)",
                )
            )
    return found


def _without(name: str) -> str:
    """What a dataset without a first snapshot means, the same for every kind of source (a missing
    Parquet file included): the others serve, this one is unavailable until a refresh succeeds."""
    return (
        f"`serve` starts without it, and every job on it is refused as unavailable until "
        f"`remote-magic-server dataset refresh {name}` succeeds"
    )


def _readable_file(settings: Settings, name: str) -> Path | None:
    """The file a worker of this dataset reads: its latest snapshot, else (before the first one) its
    Parquet file; None for another source not yet snapshotted."""
    from .data.versions import Versions

    latest = Versions(settings.snapshots_dir).latest(name) if settings.snapshots_dir.exists() else None
    if latest is not None:
        return latest.file
    path = settings.datasets[name].path
    return path if path is not None and path.is_file() else None


def _no_snapshot(name: str, exc: SourceError) -> Finding:
    message = f"its source gives no snapshot ({exc.reason}): {exc.message}; {_without(name)}"
    return Finding("warn", f"dataset {name}", message)


def _trial_snapshot(
    settings: Settings, name: str, folder: Path
) -> tuple[Path | None, list[Finding], list[str]]:
    """A source with no snapshot yet (CSV, a database, a bucket) snapshotted into `folder`, so that it is
    checked like a Parquet file; a snapshot that fails is one line with the reason a refresh would log.
    A snapshot failed only by a label that is no column is said so, and its rows are still checked for
    the rest (returned with the labels that are columns)."""
    from .data.lifecycle import trial
    from .data.sources import SourceError

    try:
        snapshot, missing = trial(settings, name, folder)
    except SourceError as exc:
        return None, [_no_snapshot(name, exc)], []
    found = [_repaired(settings, name, snapshot.note)] if snapshot.note else []
    columns = {column for column, _ in snapshot.columns}
    labels = [label for label in settings.datasets[name].label_columns if label in columns]
    return snapshot.file, [*found, _no_snapshot(name, missing)] if missing else found, labels


def _repaired(settings: Settings, name: str, summary: str) -> Finding:
    """What a total staging (modes dp, dp_eval_only) changed in the rows, and the columns of a later
    Parquet file it left out: the owner fixes the source."""
    from .config.sources import staged_as

    how = staged_as(settings.datasets[name].source_config)
    return Finding("warn", f"dataset {name}", f"its snapshot was {how}: {summary}")


def _last_repairs(settings: Settings, name: str) -> list[Finding]:
    """The last refresh's changes to the rows of a dataset that already has a version, or its failure
    (which `dataset list` shows too, and the owner may not run)."""
    from .data.versions import Versions

    if not settings.snapshots_dir.exists():
        return []
    versions = Versions(settings.snapshots_dir)
    try:
        last, latest = versions.last_refresh(name), versions.latest(name)
    finally:
        versions.close()
    if last is not None and last["outcome"] == "failed":
        serving = f"v{latest.number} keeps serving" if latest else "it has no version yet"
        message = f"the last refresh failed at {last['at']} ({last['reason']}): {last['message']}; {serving}"
        return [Finding("warn", f"dataset {name}", message)]
    if last is None or not last["message"]:
        return []
    return [_repaired(settings, name, last["message"])]


def _probe(settings: Settings, trial: bool = False) -> list[Finding]:
    """The sandbox and data checks; with `trial`, a source not yet snapshotted is snapshotted for them
    into a scratch folder first (the doctor; `serve` takes its first snapshots itself)."""
    data_dir = settings.server.data_dir
    near = data_dir if data_dir.is_dir() and os.access(data_dir, os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="doctor-", dir=near) as scratch:
        os.chmod(scratch, 0o711)  # noqa: S103 - traversed, not listed, by the sandbox uid's probe (as snapshots)
        files, found, labels = {}, [], {}
        for name in settings.datasets:
            path = _readable_file(settings, name)
            if path is None and trial and settings.datasets[name].path is None:
                path, failed, labels[name] = _trial_snapshot(settings, name, Path(scratch))
                found += failed
            else:
                found += _last_repairs(settings, name)
            if path is not None:
                files[name] = path
        return [*found, *probe_files(settings, files, labels)]


def probe_files(
    settings: Settings, files: dict[str, Path], labels: dict[str, list[str]] | None = None
) -> list[Finding]:
    """The sandbox and data checks of these datasets' files, in their own process (worker/probe.py);
    `labels`: a dataset's labels to check, where some were already found not to be columns."""
    policies = [settings.policy_for(name) for name in settings.datasets] or [settings.policy]
    request = {
        "cpu_seconds": max(p.job_timeout_s for p in policies) + 30,
        "memory_mb": max(p.worker_memory_mb for p in policies),
        "sandbox_uid": settings.server.sandbox_uid,
        "sandbox_gid": settings.server.sandbox_gid,
        "datasets": {
            name: {
                "path": str(path),
                **settings.datasets[name].model_dump(
                    mode="json",
                    include={
                        "id_column",
                        "label_columns",
                        "exclude_columns",
                        "column_levels",
                        "column_ranges",
                        "label_ranges",
                    },
                ),
                "privacy": settings.policy_for(name).privacy,
                **({"label_columns": labels[name]} if labels and name in labels else {}),
            }
            for name, path in files.items()
        },
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "remote_magic_server.worker.probe"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        return [Finding("fatal", "sandbox", f"the sandbox probe ran past {PROBE_TIMEOUT_S} s")]
    try:
        return [Finding(**f) for f in json.loads(done.stdout)]
    except (ValueError, TypeError):
        why = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return [Finding("fatal", "sandbox", f"the sandbox probe failed: {why}")]


def run_checks(settings: Settings, accept_audit_mismatch: bool = False, trial: bool = False) -> list[Finding]:
    """Every check, in the order a data owner would fix them; `trial` snapshots a source that has none
    yet to check it (the doctor does; `serve` takes the first snapshot itself, once)."""
    found = [
        *_data_dir(settings),
        *_store(settings),
        *_audit(settings, accept_audit_mismatch),
        *_tls(settings),
        *_hub(settings),
        *_clock(settings),
        *_files(settings),
        *_probe(settings, trial),
    ]
    return [*found, *_labels(settings, found)]


def fatal(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.level == "fatal"]
