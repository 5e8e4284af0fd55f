"""A real remote-magic server for tests: a uvicorn subprocess on a free loopback port."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from remote_magic import Client
from remote_magic_server.config.settings import load_settings
from remote_magic_server.demo import (
    DEMO_DATASETS,
    DEMO_PRIVACY,
    LABEL_CLASSES,
    LABEL_RANGES,
    demo_mock_path,
    ensure_demo_data,
    free_port,
)
from remote_magic_server.jobs.store import METRICS_SCOPE, Store

DEMO_NAMES = [f"{name}{suffix}" for name in DEMO_DATASETS for suffix in ("", "_rules", "_eval_only")]
USERS = {"alice": DEMO_NAMES, "bob": ["breast_cancer", "breast_cancer_rules"]}
TEST_RHO_CAP = 50.0
_DEMO_CACHE: list[Path] = []


def demo_data(data_dir: Path) -> dict[str, Path]:
    """`ensure_demo_data(data_dir)`, its tables made once per test process and copied from there: the
    same bytes (the demo tables are seeded), without generating them again for each of the suite's
    dozens of servers."""
    if not _DEMO_CACHE:
        cache = Path(tempfile.mkdtemp(prefix="remote-magic-demo-"))
        atexit.register(shutil.rmtree, cache, True)
        ensure_demo_data(cache)
        _DEMO_CACHE.append(cache)
    folder = data_dir / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    for made in (_DEMO_CACHE[0] / "datasets").iterdir():
        if not (folder / made.name).exists():
            shutil.copyfile(made, folder / made.name)
    return ensure_demo_data(data_dir)


def write_config(data_dir: Path, extra_datasets: str = "", extra: str = "", policy: str = "") -> Path:
    """A TOML config serving the demo tables (plus any extra dataset tables) from data_dir.

    The demo tables are served in the demo's own modes (the synthetic one in mode dp, the small ones in
    mode rules), once more as `<name>_rules` in mode rules, for tests that compare exact numbers, and as
    `<name>_eval_only` in mode dp_eval_only (DP numbers of models trained without DP).
    The test suite runs hundreds of jobs as one analyst, so its budget is larger than the default."""
    paths = demo_data(data_dir)
    lines = ["[server]", f'data_dir = "{data_dir}"', "workers = 1", "", extra, ""]
    lines += ["[policy]", f"dp_rho_cap = {TEST_RHO_CAP}", policy, ""]
    for name, (_, label, desc) in DEMO_DATASETS.items():
        mock = demo_mock_path(paths[name])
        modes = (("", DEMO_PRIVACY[name]), ("_rules", "rules"), ("_eval_only", "dp_eval_only"))
        for suffix, mode in modes:
            lines += [
                f"[datasets.{name}{suffix}]",
                f'path = "{paths[name]}"',
                f'description = "{desc}"',
                'id_column = "id"',
                f'label_columns = ["{label}"]',
                f'privacy = "{mode}"',
                *(f"label_ranges.{k} = [{lo}, {hi}]" for k, (lo, hi) in LABEL_RANGES.get(name, {}).items()),
                *(f"column_levels.{k} = {json.dumps(v)}" for k, v in LABEL_CLASSES.get(name, {}).items()),
                *([f'mock_path = "{mock}"'] if mock else []),
                "",
            ]
    config = data_dir / "server.toml"
    config.write_text("\n".join(lines) + extra_datasets)
    return config


def dataset_table(name: str, path: Path | str, label: str, privacy: str = "dp", **more: str) -> str:
    """A `[datasets.NAME]` config table for a test's own Parquet file (id column `id`, one label); `more`
    are further keys with their TOML values as written: `policy="{ dp_rho_cap = 0.025 }"`."""
    lines = [
        f"[datasets.{name}]",
        f'path = "{path}"',
        'id_column = "id"',
        f'label_columns = ["{label}"]',
        f'privacy = "{privacy}"',
        *(f"{key} = {value}" for key, value in more.items()),
    ]
    return "\n".join(lines) + "\n"


class ServerProcess:
    """Start, stop, kill and restart a server on one config and data directory."""

    def __init__(self, config: Path, log_path: Path):
        self.config = config
        self.settings = load_settings(config)
        self.data_dir = self.settings.server.data_dir
        self.log_path = log_path
        self.port = free_port()
        scheme = "https" if self.settings.server.tls_cert else "http"
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None
        self.tokens: dict[str, str] = {}
        self.verify: bool | str = True  # a CA bundle for a TLS server
        self.cert: str | None = None  # a client certificate, if the server requires one

    def issue_tokens(self, users: dict[str, list[str]] = USERS) -> dict[str, str]:
        store = Store(self.settings.db_path, self.settings.jobs_dir)
        for user, datasets in users.items():
            self.tokens[user] = store.issue_token(user, datasets)
        store.close()
        return self.tokens

    def metrics(self) -> str:
        """Scrape /metrics as Prometheus does, with a metrics token (made once, in the store)."""
        if "metrics" not in self.tokens:
            store = Store(self.settings.db_path, self.settings.jobs_dir)
            self.tokens["metrics"] = store.create_token("prometheus", [], scope=METRICS_SCOPE)[1]
            store.close()
        headers = {"Authorization": f"Bearer {self.tokens['metrics']}"}
        response = requests.get(f"{self.url}/metrics", headers=headers, timeout=10, verify=self.verify)
        assert response.status_code == 200, response.text
        return response.text

    def start(self, timeout: float = 60.0, extra: tuple[str, ...] = ()) -> ServerProcess:
        """Start `serve` (with `extra` arguments) and wait until it answers its health check."""
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "remote_magic_server",
                "serve",
                "--config",
                str(self.config),
                "--port",
                str(self.port),
                *extra,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = "\n".join(Path(self.log_path).read_text(errors="replace").splitlines()[-15:])
                code = self.proc.returncode
                raise RuntimeError(f"server exited with {code}; log: {self.log_path}, ending:\n{tail}")
            try:
                health = requests.get(f"{self.url}/v1/health", timeout=1, verify=self.verify, cert=self.cert)
                if health.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.1)
        self.stop()  # not left running behind the error, to slow every later test down
        raise TimeoutError(f"server did not start; log: {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def client(self, user: str = "alice") -> Client:
        return Client(self.url, self.tokens[user])

    def get(self, path: str, user: str | None = "alice", **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("cert", self.cert)
        return requests.get(f"{self.url}/v1{path}", headers=headers, timeout=30, **kwargs)

    def post(self, path: str, user: str | None = "alice", **kwargs) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"} if user else {}
        headers.update(kwargs.pop("headers", {}))
        kwargs.setdefault("verify", self.verify)
        kwargs.setdefault("cert", self.cert)
        return requests.post(f"{self.url}/v1{path}", headers=headers, timeout=30, **kwargs)

    def submit_raw(
        self, payload: bytes, spec: dict, user: str | None = "alice", **kwargs
    ) -> requests.Response:
        """POST these exact bytes as a job, bypassing the client's packaging, to test what the API refuses."""
        files = {"model": ("model.pkl", payload, "application/octet-stream")}
        return self.post("/jobs", user=user, files=files, data={"spec": json.dumps(spec)}, **kwargs)


@contextmanager
def running(
    data_dir: Path,
    log_path: Path,
    users: dict[str, list[str]],
    extra_datasets: str = "",
    extra: str = "",
    policy: str = "",
    start_timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """A started server with extra datasets, config tables and `[policy]` lines, and these users'
    tokens; stopped even when the body fails. A large table's first snapshot is taken before the
    server answers: give it `start_timeout`."""
    server = ServerProcess(
        write_config(data_dir, extra_datasets=extra_datasets, extra=extra, policy=policy), log_path
    )
    server.issue_tokens(users)
    server.start(start_timeout)
    try:
        yield server
    finally:
        server.stop()


def stamp_training(server: ServerProcess, job_id: str, training: dict) -> None:
    """Write a DP trainer's part (`JobResult.training`) into a finished job's stored result and its
    registered versions, as if the worker had reported it: for tests of what a DP model's release does."""
    for path, table, column in (
        (server.settings.db_path, "jobs", "id"),
        (server.settings.registry_path, "versions", "job_id"),
    ):
        db = sqlite3.connect(path, timeout=30)
        try:
            with db:
                query = f"SELECT result FROM {table} WHERE {column} = ?"
                for (text,) in db.execute(query, (job_id,)).fetchall():
                    result = json.dumps({**json.loads(text), "training": training})
                    db.execute(f"UPDATE {table} SET result = ? WHERE {column} = ?", (result, job_id))
        finally:
            db.close()


@contextmanager
def magic_shell(server: ServerProcess, user: str, monkeypatch, url: bool = True) -> Iterator[object]:
    """A real IPython shell with the extension loaded, signed in to `server` as `user` (`url=False`: the
    token only, for tests that connect by hand); its variables are cleared afterwards."""
    from IPython.core.interactiveshell import InteractiveShell

    import remote_magic

    if url:
        monkeypatch.setenv("REMOTE_MAGIC_URL", server.url)
    monkeypatch.setenv("REMOTE_MAGIC_TOKEN", server.tokens[user])
    monkeypatch.setenv("REMOTE_MAGIC_PROGRESS", "off")
    ip = InteractiveShell.instance()
    remote_magic.load_ipython_extension(ip)
    try:
        yield ip
    finally:
        remote_magic.unload_ipython_extension(ip)
        for name in [n for n in ip.user_ns if not n.startswith("_")]:
            ip.user_ns.pop(name, None)


def wait_until(predicate, timeout: float, what: str, every: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def pause_worker(server: ServerProcess, job_id: str) -> int:
    """Wait for the job's worker to confine itself (it reports its isolation), freeze it, return its pid."""
    wait_until(lambda: rows(server)[job_id]["isolation"] is not None, 120, f"job {job_id} to start", 0.005)
    pid = rows(server)[job_id]["worker_pid"]
    os.kill(pid, signal.SIGSTOP)
    return pid


def rows(server: ServerProcess) -> dict[str, sqlite3.Row]:
    db = sqlite3.connect(f"file:{server.settings.db_path}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    try:
        return {r["id"]: r for r in db.execute("SELECT * FROM jobs")}
    finally:
        db.close()
