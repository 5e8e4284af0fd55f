"""Many jobs at once: users take turns in the queue, and a client whose queue is full waits for a place
(429 + Retry-After) instead of failing. A real SQLite store, and a real server on loopback."""

from __future__ import annotations

import json
import threading
import time

import pytest
import xgboost as xgb

from remote_magic import package_model
from remote_magic.client.errors import Busy
from remote_magic.display.progress import QueueWait
from remote_magic_server.jobs.store import Store
from remote_magic_server.jobs.timeline import PHASES
from remote_magic_server.plan import JobPlan
from tests.serverproc import ServerProcess, pause_worker, wait_until, write_config

SMALL = xgb.XGBClassifier(n_estimators=3, max_depth=2)
SMALL_SPEC = {"dataset": "breast_cancer_rules", "label": "malignant"}
LONG = package_model(xgb.XGBClassifier(n_estimators=2000, max_depth=8))
LONG_SPEC = {"dataset": "synthetic_rules", "label": "label"}


def queue(store: Store, user: str) -> str:
    return store.create_job(user, "d", "train", {}, JobPlan(), b"model", None)[0].id


def test_users_take_turns_and_a_restart_keeps_the_turns(tmp_path):
    store = Store(tmp_path / "store.sqlite", tmp_path / "jobs")
    sweep = [queue(store, "ann") for _ in range(3)]
    single = queue(store, "bob")
    order = []
    for _ in range(4):
        order.append(store.claim_next().id)
        time.sleep(0.002)  # started_at has millisecond resolution
    assert order == [sweep[0], single, sweep[1], sweep[2]]
    assert store.claim_next() is None

    later_sweep, later_single = queue(store, "ann"), queue(store, "bob")
    store.close()
    reopened = Store(tmp_path / "store.sqlite", tmp_path / "jobs")
    assert [reopened.claim_next().id, reopened.claim_next().id] == [later_single, later_sweep]
    reopened.close()


@pytest.fixture
def busy_server(tmp_path):
    server = ServerProcess(write_config(tmp_path / "data", extra="max_queued_per_user = 1"), tmp_path / "log")
    server.issue_tokens()
    server.start()
    yield server
    server.stop()


def test_a_full_queue_makes_the_client_wait_and_another_user_goes_first(busy_server, capsys):
    server = busy_server
    alice, bob = server.client(), server.client("bob")
    long_id = server.submit_raw(LONG, LONG_SPEC).json()["id"]
    pause_worker(server, long_id)
    queued = alice.submit(SMALL, SMALL_SPEC)  # alice's one place in the queue

    with pytest.raises(Busy) as refused:
        alice.submit(SMALL, SMALL_SPEC, queue_wait=0)
    assert refused.value.code == "too_many_jobs" and refused.value.retry_after >= 1
    other = bob.submit(SMALL, SMALL_SPEC)  # bob's queue is his own

    waits: list[tuple[float, float]] = []
    line = QueueWait()

    def on_wait(retry_in: float, waited: float) -> None:
        waits.append((retry_in, waited))
        line(retry_in, waited)

    outcome: dict = {}
    waiting = threading.Thread(
        target=lambda: outcome.update(job=alice.submit(SMALL, SMALL_SPEC, on_wait=on_wait, queue_wait=120))
    )
    waiting.start()
    wait_until(lambda: len(waits) >= 1, 300, "the client to wait for a place")
    alice.cancel(long_id)
    waiting.join(timeout=120)
    line.close()
    assert "job" in outcome, "the waiting submission never got a place"
    assert all(retry_in > 0 for retry_in, _ in waits)
    assert "waiting for a queue slot" in capsys.readouterr().err

    finished = {job.id: job.wait(timeout=120) for job in (queued, other, outcome["job"])}
    assert {s.state for s in finished.values()} == {"succeeded"}
    # bob was never served, alice was (her long job): bob's single job starts before her queued one
    assert finished[other.id].started_at <= finished[queued.id].started_at
    listed = [job.id for job in alice.jobs()]
    assert sorted(listed) == sorted([long_id, queued.id, outcome["job"].id])


def test_a_long_poll_for_the_end_skips_progress_and_the_log_holds_the_timeline(server):
    client = server.client()
    job = client.submit(SMALL, SMALL_SPEC)
    status = client.status(job.id, wait=60, since=job.status.version, final=True)
    assert status.state == "succeeded"  # progress changes did not end the wait

    def finished() -> dict | None:
        lines = [json.loads(line) for line in server.log_path.read_text().splitlines() if line[:1] == "{"]
        return next((e for e in lines if e.get("event") == "job_finished" and e["job"] == job.id), None)

    wait_until(lambda: finished() is not None, 300, "the job_finished line")
    line = finished()
    assert (line["user"], line["dataset"], line["kind"]) == ("alice", SMALL_SPEC["dataset"], "train")
    timeline = line["timeline_ms"]
    phases = set(PHASES)
    assert phases <= set(timeline) and all(ms >= 0 for ms in timeline.values())
    assert timeline["total"] >= max(timeline[p] for p in phases)
