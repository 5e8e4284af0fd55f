"""Nothing lost under crashes, restarts, shutdowns and floods: real servers, real signals, real SQLite.

Each scenario runs its own server (tests/serverproc.py) on its own data directory, kills or stops it,
restarts it on the same directory and checks every job's fate through the API and in the store. A job
that must still be running when the signal lands has its worker paused (SIGSTOP) first, so the tests do
not depend on how fast a loaded machine trains.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
import requests
import xgboost as xgb
from prometheus_client.parser import text_string_to_metric_families

from remote_magic import Client, package_model
from remote_magic.client.errors import ConnectionProblem
from remote_magic_server.audit import AuditLog
from remote_magic_server.config.settings import Settings
from remote_magic_server.demo import free_port
from remote_magic_server.jobs.local_executor import LocalExecutor, process_mark
from remote_magic_server.jobs.scheduler import Scheduler
from remote_magic_server.jobs.store import SCHEMA_VERSION, QueueFull, Store, StoreError, hash_token
from remote_magic_server.plan import JobPlan
from remote_magic_server.release.desk import ReleaseDesk
from remote_magic_server.release.ledger import Ledger
from tests.serverproc import ServerProcess, pause_worker, rows, wait_until, write_config

SMALL_SPEC = {"dataset": "breast_cancer_rules", "label": "malignant"}
LONG_SPEC = {"dataset": "synthetic_rules", "label": "label"}
SMALL = package_model(xgb.XGBClassifier(n_estimators=3, max_depth=2))
LONG = package_model(xgb.XGBClassifier(n_estimators=150, max_depth=4))
FINAL = {"succeeded", "failed", "cancelled"}


def submit(server: ServerProcess, payload: bytes, spec: dict, key: str | None = None) -> requests.Response:
    headers = {"Idempotency-Key": key} if key else {}
    return server.submit_raw(payload, spec, headers=headers)


def status(server: ServerProcess, job_id: str) -> dict:
    return server.get(f"/jobs/{job_id}").json()


def descendants(pid: int) -> set[int]:
    """Every live process below `pid` (children of children too), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def refused(server: ServerProcess) -> bool:
    try:
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
        return False
    except OSError:
        return True


def log_events(server: ServerProcess) -> list[dict]:
    """The server's log, which must be one JSON object per line (workers' lines included)."""
    return [json.loads(line) for line in server.log_path.read_text().splitlines() if line.strip()]


def metric_samples(server: ServerProcess) -> dict[tuple[str, tuple], float]:
    text = server.metrics()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


@pytest.fixture
def make_server(tmp_path):
    started: list[ServerProcess] = []

    def make(extra: str = "", policy: str = "") -> ServerProcess:
        server = ServerProcess(
            write_config(tmp_path / "data", extra=extra, policy=policy), tmp_path / "server.log"
        )
        server.issue_tokens()
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop(signal.SIGKILL)


def test_kill9_with_jobs_queued_and_running_loses_none_and_runs_none_twice(make_server):
    server = make_server("max_queued_per_user = 10")
    long_id = submit(server, LONG, LONG_SPEC, key="long").json()["id"]
    worker = pause_worker(server, long_id)
    queued = []
    for i in range(10):
        response = submit(server, SMALL, SMALL_SPEC, key=f"small-{i}")
        assert response.status_code == 202, response.text
        queued.append(response.json()["id"])

    refused = submit(server, SMALL, SMALL_SPEC, key="one-too-many")
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_jobs"
    assert int(refused.headers["Retry-After"]) >= 1
    repeat = submit(server, SMALL, SMALL_SPEC, key="small-3")
    assert repeat.status_code == 200 and repeat.json()["id"] == queued[3]
    health = server.get("/health", user=None).json()
    assert (health["running"], health["queued"], health["store"]) == (1, 10, "ok")

    assert status(server, long_id)["state"] == "running"
    family = descendants(server.proc.pid)
    assert worker in family
    waiter = server.client().job(long_id)
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(state=waiter.wait(timeout=240).state))
    thread.start()

    server.stop(signal.SIGKILL)
    wait_until(
        lambda: all(process_mark(pid) is None for pid in family), 10, "the workers to die with the server"
    )
    before = rows(server)
    assert before[long_id]["state"] == "running"
    assert [before[j]["state"] for j in queued] == ["queued"] * 10

    # A worker that outlived its server (no PR_SET_PDEATHSIG, say): the restart must reap it first.
    survivor = subprocess.Popen(["sleep", "300"])
    db = sqlite3.connect(server.settings.db_path)
    db.execute(
        "UPDATE jobs SET worker_pid = ?, worker_started = ? WHERE id = ?",
        (survivor.pid, process_mark(survivor.pid), long_id),
    )
    db.commit()
    db.close()

    server.start()
    assert survivor.wait(timeout=300) == -signal.SIGKILL
    repeat = submit(server, SMALL, SMALL_SPEC, key="small-3")
    assert repeat.status_code == 200 and repeat.json()["id"] == queued[3]

    client = server.client()
    for job_id in [long_id, *queued]:
        assert client.job(job_id).wait(timeout=240).state == "succeeded"
    thread.join(timeout=60)
    assert outcome == {"state": "succeeded"}, "the long-poll did not reconnect and resume"

    listed = [job["id"] for job in server.get("/jobs").json()["jobs"]]
    assert sorted(listed) == sorted([long_id, *queued])
    after = rows(server)
    assert after[long_id]["attempts"] == 2
    assert [after[j]["attempts"] for j in queued] == [1] * 10
    assert sorted(p.name for p in server.settings.jobs_dir.iterdir()) == sorted(listed)

    events = log_events(server)
    assert {"event": "orphan_reaped", "job": long_id, "pid": survivor.pid}.items() <= next(
        e for e in events if e["event"] == "orphan_reaped"
    ).items()
    requeued = [e for e in events if e["event"] == "job_requeued"]
    assert [(e["job"], e["reason"]) for e in requeued] == [(long_id, "server restarted")]
    started = [e["job"] for e in events if e["event"] == "job_started"]
    assert sorted(started) == sorted([long_id, long_id, *queued])

    samples = metric_samples(server)
    assert samples[("remote_magic_jobs", (("state", "succeeded"),))] == 11
    assert samples[("remote_magic_queue_length", ())] == 0
    duration = ("remote_magic_job_duration_seconds_count", (("kind", "train"), ("state", "succeeded")))
    assert samples[duration] == 11


def test_a_closed_port_fails_at_once_and_the_working_connection_stays(shell, server):
    """A refused connection was tried five times with backoff: 9 s before the cell failed. The restart
    above shows the long-poll still rides out a server that is gone for a while."""
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    error = shell.run_cell(f"%remote_connect {closed}").error_in_exec
    took_magic = time.monotonic() - start
    start = time.monotonic()
    with pytest.raises(ConnectionProblem) as refused:
        Client(closed, token=server.tokens["alice"]).health()
    took_client = time.monotonic() - start
    for said in (error, refused.value):
        assert (
            isinstance(said, ConnectionProblem)
            and str(said) == f"cannot reach {closed}: is the server running?"
        )
    assert took_magic < 3 and took_client < 3, (took_magic, took_client)
    assert "synthetic" in [row[0] for row in shell.run_line_magic("remote_datasets", "").rows]


def connected_to(server: ServerProcess) -> bool:
    """This process holds a connection to the server that the server has accepted (a request in
    flight: the other calls here close theirs)."""
    return any(
        c.status == psutil.CONN_ESTABLISHED and c.raddr and c.raddr.port == server.port
        for c in psutil.Process().net_connections("tcp")
    )


def test_sigterm_finishes_running_jobs_within_grace_and_requeues_the_rest(make_server, tmp_path):
    # The grace covers the paused job's whole remainder on a busy machine; the second half shows a short one.
    server = make_server("shutdown_grace_s = 900")
    first = submit(server, LONG, LONG_SPEC).json()["id"]
    waiting = submit(server, LONG, LONG_SPEC, key="waiting").json()
    worker = pause_worker(server, first)
    poll: dict = {}

    def long_poll() -> None:
        started = time.monotonic()
        response = server.get(f"/jobs/{waiting['id']}", params={"wait": 60, "since": waiting["version"]})
        poll.update(status=response.status_code, seconds=time.monotonic() - started)

    poller = threading.Thread(target=long_poll)
    poller.start()
    wait_until(lambda: connected_to(server), 60, "the long-poll to reach the server")
    server.proc.send_signal(signal.SIGTERM)
    poller.join(timeout=120)
    assert poll["status"] == 200 and poll["seconds"] < 45, "a long-poll held up the shutdown (it waits 60 s)"
    wait_until(lambda: refused(server), 300, "the server to stop accepting connections")
    assert server.proc.poll() is None, "the server did not wait for its running job"
    os.kill(worker, signal.SIGCONT)
    server.proc.wait(timeout=900)
    stopped = rows(server)
    assert stopped[first]["state"] == "succeeded"
    assert (stopped[waiting["id"]]["state"], stopped[waiting["id"]]["attempts"]) == ("queued", 0)

    # Now a grace period too short for the job that runs: it is stopped and re-queued, attempt refunded.
    write_config(tmp_path / "data", extra="shutdown_grace_s = 1")
    server.start()
    pause_worker(server, waiting["id"])
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=300)  # the paused job never ends: the server ending at all is the grace's end
    stopped = rows(server)[waiting["id"]]
    assert (stopped["state"], stopped["attempts"], stopped["worker_pid"]) == ("queued", 0, None)
    assert any(
        e["event"] == "job_requeued" and e["reason"] == "server shutting down" for e in log_events(server)
    )

    server.start()
    repeat = submit(server, LONG, LONG_SPEC, key="waiting")
    assert repeat.status_code == 200 and repeat.json()["id"] == waiting["id"]
    assert server.client().job(waiting["id"]).wait(timeout=240).state == "succeeded"
    assert len(server.get("/jobs").json()["jobs"]) == 2


def test_payload_limits_are_413_before_the_body_is_read(make_server):
    server = make_server("max_payload_mb = 1")
    big = SMALL + b"\0" * (3 * 2**19)
    response = submit(server, big, SMALL_SPEC)
    assert response.status_code == 413 and response.json()["error"]["code"] == "payload_too_large"

    def chunks():  # no Content-Length: sent chunked, counted as it arrives
        yield b'--b\r\nContent-Disposition: form-data; name="model"; filename="m"\r\n\r\n'
        for _ in range(40):
            yield b"x" * 2**16

    streamed = server.post(
        "/jobs", data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b"}
    )
    assert streamed.status_code == 413 and streamed.json()["error"]["code"] == "payload_too_large"

    # A declared length over the limit is answered without a byte of the body having been sent.
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Authorization: Bearer {server.tokens['alice']}\r\n".encode()
            + b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 10000000000\r\n\r\n"
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 413")
    assert b'"payload_too_large"' in answer
    assert server.get("/jobs").json()["jobs"] == []


def test_a_job_past_its_wall_clock_limit_is_stopped_and_one_server_owns_a_data_dir(make_server, tmp_path):
    server = make_server(policy="job_timeout_s = 2")
    job_id = submit(server, LONG, LONG_SPEC).json()["id"]
    worker = pause_worker(server, job_id)
    final = server.client().job(job_id).wait(timeout=600)
    assert (final.state, final.error.code) == ("failed", "timeout")
    wait_until(lambda: process_mark(worker) is None, 300, "the stopped worker to be killed")

    second = ServerProcess(server.config, tmp_path / "second.log")
    with pytest.raises(RuntimeError, match="exited"):
        second.start()
    assert "another server is already using the data directory" in (tmp_path / "second.log").read_text()
    assert server.get("/health", user=None).json()["status"] == "ok"


def test_same_idempotency_key_from_threads_at_once_makes_one_job(tmp_path):
    store = Store(tmp_path / "store.sqlite", tmp_path / "jobs")
    results: list = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(store.create_job("alice", "d", "train", {}, JobPlan(), b"payload", "same-key"))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({job.id for job, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert [p.name for p in (tmp_path / "jobs").iterdir()] == [results[0][0].id]
    store.close()


def test_queue_limit_counts_only_that_users_queued_jobs(tmp_path):
    store = Store(tmp_path / "store.sqlite", tmp_path / "jobs")
    for i in range(2):
        store.create_job("alice", "d", "train", {}, JobPlan(), b"p", f"a{i}", max_queued=2)
    with pytest.raises(QueueFull) as full:
        store.create_job("alice", "d", "train", {}, JobPlan(), b"p", "a2", max_queued=2)
    assert full.value.queued == 2
    store.create_job("bob", "d", "train", {}, JobPlan(), b"p", "b0", max_queued=2)
    assert store.create_job("alice", "d", "train", {}, JobPlan(), b"p", "a1", max_queued=2)[1] is False
    store.claim_next()
    store.create_job("alice", "d", "train", {}, JobPlan(), b"p", "a2", max_queued=2)
    assert len(list((tmp_path / "jobs").iterdir())) == 4
    store.close()


def test_interrupted_jobs_are_retried_a_bounded_number_of_times(tmp_path):
    settings = Settings.model_validate({"server": {"data_dir": str(tmp_path)}})
    store = Store(settings.db_path, settings.jobs_dir)
    unlucky, _ = store.create_job("alice", "d", "train", {}, JobPlan(), b"p", "unlucky")
    desk = ReleaseDesk(settings, Ledger(settings.ledger_path), AuditLog(settings.audit_path))
    for expected in ("queued", "queued", "failed"):
        assert store.claim_next().id == unlucky.id
        Scheduler(settings, store, LocalExecutor(), desk)._recover()  # the server was killed while it ran
        assert store.get_job(unlucky.id).state == expected
    failed = store.get_job(unlucky.id)
    assert (failed.error_code, failed.attempts) == ("interrupted", 3)
    assert "3 times" in failed.error_message
    store.close()


def test_reap_orphan_kills_only_the_process_it_recorded():
    sleeper = subprocess.Popen(["sleep", "300"])
    mark = process_mark(sleeper.pid)
    assert mark is not None
    executor = LocalExecutor()
    assert executor.reap((sleeper.pid, str(int(mark) + 1))) is False
    assert sleeper.poll() is None, "a reused pid (another start time) must not be killed"
    assert executor.reap((sleeper.pid, mark)) is True
    assert sleeper.wait(timeout=300) == -signal.SIGKILL
    assert executor.reap((sleeper.pid, mark)) is False


def test_store_migrates_an_old_schema_and_refuses_a_newer_one(tmp_path):
    from remote_magic_server.jobs.store import _SCHEMA

    db_path = tmp_path / "store.sqlite"
    old = sqlite3.connect(db_path)
    old.executescript(_SCHEMA)
    old.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    old.execute(
        "INSERT INTO jobs (id, user, dataset, kind, state, spec, plan, submitted_at, progress)"
        " VALUES ('j1', 'alice', 'd', 'train', 'queued', '{}', '{}', 'now', '{\"stage\": \"queued\"}')"
    )
    old.execute(
        "INSERT INTO tokens (token_hash, user, datasets, created_at) VALUES (?, 'alice', '[\"d\"]', 'then')",
        (hash_token("rm_old"),),
    )
    old.commit()
    old.close()
    store = Store(db_path, tmp_path / "jobs")
    assert store.schema_version() == SCHEMA_VERSION == 4
    assert store.get_job("j1").state == "queued"
    token = store.lookup_token("rm_old")  # a token issued before the lifecycle keeps working
    assert token.user == "alice" and token.id and token.state() == "active" and token.expires_at is None
    store.claim_next()
    store.set_worker("j1", os.getpid(), process_mark(os.getpid()))
    assert store.running_workers() == [("j1", os.getpid(), process_mark(os.getpid()))]
    store.close()

    newer = sqlite3.connect(db_path)
    newer.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    newer.commit()
    newer.close()
    with pytest.raises(StoreError, match="newer"):
        Store(db_path, tmp_path / "jobs")
