"""The Dask executor against real clusters on loopback: a `LocalCluster` bound to 127.0.0.1, and the
`dask scheduler` / `dask worker` command line over TLS with certificates made here.

One partition on one worker grows the local executor's trees; two partitions stay within 0.005 AUC;
a worker killed mid-training ends the job with a fixed code in bounded time, and killed while the other
is paused leaves nothing held and the next job runs; a worker whose thread a let-go task holds is
left out of the next job and restarted once idle; a job that cannot start within `start_timeout_s`
ends with a fixed code; partitions all on one of two workers, missing text levels, train as on one
machine; a scheduler that cannot be reached fails in bounded time; nothing of the cluster listens outside
loopback; what the cluster may not run (a Pipeline) runs on the server's machine; hostile payloads meet
the same strict decoder. Slow: marked `dask`, run by `.ci/run` in a step of its own (`pytest -m dask`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import trustme
import xgboost as xgb
from distributed import Client, Future, LocalCluster, MultiLock
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from benchmarks.dask_lost_worker import CONFIG, held_locks, lost_worker_cycle
from remote_magic.client.errors import RemoteError
from remote_magic.families import family
from remote_magic.families.base import Plan
from remote_magic.families.partitions import InProcess
from remote_magic.families.xgboost.on_dask import train_where_rows_are
from remote_magic_server.cluster import partitions, stuck
from remote_magic_server.cluster.partitions import workers_of
from remote_magic_server.demo import free_port, synthetic_table
from remote_magic_server.worker import staging
from tests.serverproc import ServerProcess, running, wait_until, write_config
from tests.test_family_seam import run_job
from tests.test_hostile_payloads import FIXED_CODES, _outcomes, build_corpus
from tests.test_streaming import task_for

pytestmark = pytest.mark.dask

SMALL = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.25, "seed": 3}}
LARGE = {"dataset": "synthetic_rules", "label": "label", "eval": {"fraction": 0.2, "seed": 1}}
LOOPBACK = {"127.0.0.1", "::1"}


def executor(scheduler: str, **keys: object) -> str:
    lines = [f'\n[executor]\nkind = "dask"\nscheduler = "{scheduler}"']
    lines += [f"{k} = {json.dumps(v) if isinstance(v, str) else v}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


def local_cluster(workers: int) -> LocalCluster:
    return LocalCluster(
        n_workers=workers, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
    )


@pytest.fixture(scope="module")
def cluster(dask_cluster):
    return dask_cluster


@pytest.fixture(scope="module")
def one_partition(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("dask1")
    extra = executor(cluster.scheduler_address, partitions=1)
    with running(base / "data", base / "server.log", {"alice": ["breast_cancer_rules"]}, extra) as server:
        yield server


@pytest.fixture(scope="module")
def two_partitions(cluster, tmp_path_factory):
    base = tmp_path_factory.mktemp("dask2")
    extra = executor(cluster.scheduler_address, partitions=2)
    users = {"alice": ["synthetic_rules", "breast_cancer_rules", "synthetic"]}
    with running(base / "data", base / "server.log", users, extra) as server:
        yield server


def trees(server: ServerProcess, job_id: str) -> list:
    model = json.loads((server.settings.jobs_dir / job_id / "model.json").read_text())
    return model["learner"]["gradient_booster"]["model"]["trees"]


def test_one_partition_grows_the_trees_of_the_local_executor(one_partition, server):
    model = xgb.XGBClassifier(n_estimators=8, max_depth=3)
    on_cluster = one_partition.client().train(model, SMALL, timeout=300)
    here = server.client().train(model, SMALL, timeout=300)
    assert trees(one_partition, on_cluster.job_id) == trees(server, here.job_id)
    assert on_cluster.summary == here.summary and on_cluster.rounds == here.rounds
    for name, value in here.metrics.items():
        assert on_cluster.metrics[name] == pytest.approx(value, abs=1e-3), name  # AUC: from bins
    assert on_cluster.history.equals(here.history)


def test_two_partitions_stay_within_0005_auc(two_partitions, server):
    model = xgb.XGBClassifier(n_estimators=30, max_depth=4)
    on_cluster = two_partitions.client().train(model, LARGE, timeout=300)
    here = server.client().train(model, LARGE, timeout=300)
    assert abs(on_cluster.metrics["auc"] - here.metrics["auc"]) <= 0.005
    assert on_cluster.summary == here.summary  # the same admitted rows, split the same way


def test_a_registered_version_is_continued_and_evaluated_on_the_cluster(one_partition):
    """The registry works through the cluster: the trained model and its parameters land in the job
    folder, a later job continues that version (decoded by the local plan task, never by the cluster),
    and an evaluation scores it."""
    client = one_partition.client()
    model = xgb.XGBClassifier(n_estimators=4, max_depth=2)
    first = client.train(model, SMALL, register="on_cluster", timeout=300)
    second = client.train(model, SMALL, register="on_cluster", base_model="on_cluster@1", timeout=300)
    assert second.rounds == {"base": 4, "new": 4, "total": 8}
    version = client.model("on_cluster@2")
    assert version.lineage.parent == "on_cluster@1" and version.lineage.params["max_depth"] == 2
    scored = client.evaluate(None, SMALL, model_ref="on_cluster@1", timeout=300)
    assert scored.metrics["auc"] == pytest.approx(first.metrics["auc"], abs=1e-3)


def test_progress_arrives_and_a_cancel_stops_the_training_on_the_cluster(two_partitions, cluster):
    model = xgb.XGBClassifier(n_estimators=2000, max_depth=8, learning_rate=0.01)
    job = two_partitions.client().submit(model, LARGE)
    wait_until(lambda: job.refresh().progress.round > 0 or job.done, 180, "rounds reported from the cluster")
    assert job.status.progress.total_rounds == 2000 and job.status.progress.metric is not None
    job.cancel()
    assert job.wait(timeout=30).state == "cancelled"
    with Client(cluster.scheduler_address) as client:
        wait_until(lambda: not any(client.processing().values()), 30, "the cluster to stop training")


def test_nothing_listens_outside_loopback_in_a_namespace_of_its_own():
    """A cluster job in a network namespace whose only interface is loopback (docs/deployment.md: XGBoost
    binds its collective's ring sockets on the training workers to every interface)."""
    if os.geteuid() != 0:
        pytest.skip("a network namespace whose workers drop to the sandbox uid needs root (CI runs as root)")
    root = Path(__file__).resolve().parents[1]
    command = ["unshare", "--net", sys.executable, "-m", "tests.netns_cluster"]
    done = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    outcome = json.loads(done.stdout.strip().splitlines()[-1])
    assert outcome["interfaces"] == ["lo"] and outcome["state"] == "succeeded"
    ports = {port for _, port in outcome["listening"]}
    assert len(ports) >= 4  # the server, the scheduler, the workers, XGBoost's tracker and ring
    assert {ip for ip, _ in outcome["listening"]} <= LOOPBACK | {"0.0.0.0", "::"}


def test_a_dp_training_continues_a_fitted_base_model_on_the_cluster(two_partitions):
    """The executor checked the base model's bytes against the first family that reads them (XGBoost),
    so the DP trainer's continuation always failed `invalid_model` on the cluster."""
    features = ["age", "income", "bmi", "smoker", "visits"]
    public = synthetic_table(300, 5)
    base = xgb.XGBClassifier(n_estimators=3, max_depth=2).fit(public[features], public["label"])
    spec = {"dataset": "synthetic", "label": "label", "features": features}
    result = two_partitions.client().train(base.set_params(n_estimators=2), spec, timeout=300)
    assert result.raw.training is not None
    assert result.rounds["base"] == 3 and result.rounds["total"] > 3


def test_what_the_cluster_may_not_run_runs_here(one_partition):
    pipeline = Pipeline([("scale", StandardScaler()), ("model", xgb.XGBClassifier(n_estimators=3))])
    result = one_partition.client().train(pipeline, SMALL, timeout=300)
    assert result.rounds["total"] == 3
    log = (one_partition.log_path).read_text()
    assert '"event": "task_done"' in log


def test_hostile_payloads_meet_the_same_strict_decoder(one_partition, tmp_path):
    outcomes = _outcomes(one_partition, build_corpus(tmp_path))
    for name, (status, code) in outcomes.items():
        assert status in (202, 413, 422) and code in FIXED_CODES, (name, status, code)
    time.sleep(0.5)
    assert list(tmp_path.iterdir()) == [], "a payload had a side effect"


def test_a_worker_killed_mid_training_ends_the_job_with_a_fixed_code(tmp_path):
    with local_cluster(2) as doomed:
        extra = executor(doomed.scheduler_address, partitions=2, collective_timeout_s=10)
        users = {"alice": ["synthetic_rules"]}
        with running(tmp_path / "data", tmp_path / "server.log", users, extra) as server:
            model = xgb.XGBClassifier(n_estimators=2000, max_depth=8, learning_rate=0.01)
            job = server.client().submit(model, LARGE)
            wait_until(lambda: job.refresh().progress.round > 0 or job.done, 180, "training rounds")
            with Client(doomed.scheduler_address) as client:
                victim = next(iter(client.run(os.getpid).values()))
            killed = time.monotonic()
            os.kill(victim, signal.SIGKILL)
            status = job.wait(timeout=60)
            elapsed = time.monotonic() - killed
    assert status.state == "failed" and status.error.code == "cluster_worker_lost"
    assert elapsed < 15, f"the job took {elapsed:.1f} s to end"


def test_a_worker_killed_while_the_other_is_paused_leaves_nothing_held_and_the_next_job_runs(tmp_path):
    """Issue 21: the failed job's locks stayed held and the next job waited for the job timeout.
    `python -m benchmarks.dask_lost_worker` runs 20 such cycles."""
    with local_cluster(2) as cluster, Client(cluster) as client:
        users = {"alice": ["synthetic_rules"]}
        config = CONFIG.format(cluster.scheduler_address)
        with running(tmp_path / "data", tmp_path / "server.log", users, config) as server:
            cycles = [lost_worker_cycle(server, client) for _ in range(3)]
    for cycle in cycles:
        assert cycle.lost_code == "cluster_worker_lost" and cycle.held == {}, cycle
        assert cycle.next_state == "succeeded", cycle


PATIENCE_S = 10  # collective_timeout_s (5) plus the driver's margin (5)


def let_go_and_held(client: Client, worker: str) -> list[Future]:
    """Another job's data on `worker`, and a task that never ends holding the worker's only thread, let
    go by its client (as a lost job's training can stay blocked in XGBoost's collective)."""
    data = client.scatter(list(range(10)), workers=[worker], hash=False)
    blocker = client.submit(time.sleep, 3600, workers=[worker], pure=False)
    wait_until(lambda: client.processing([worker])[worker], 60, "the blocking task to start")
    blocker.release()
    wait_until(lambda: client.run(stuck._unwanted, workers=[worker])[worker], 60, "the task let go")
    return data


def let_go_for(client: Client, worker: str) -> float:
    """How long drivers have known the worker's oldest let-go task."""
    return max(client.run(stuck._unwanted, workers=[worker])[worker].values(), default=0.0)


def waited_for_let_go(log: str, job_id: str) -> float:
    """How long the job's driver waited for let-go tasks (its `cluster_worker_left_out`, the next in the
    log after the job's start)."""
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    begun = next(e for e in entries if e["event"] == "job_started" and e["job"] == job_id)
    left_out = [e for e in entries[entries.index(begun) :] if e["event"] == "cluster_worker_left_out"]
    return left_out[0]["waited_s"]


def test_a_worker_a_lost_job_left_stuck_is_left_out_and_restarted_once_idle(tmp_path):
    """A survivor of a lost worker can stay blocked in XGBoost's collective forever. Here a let-go task
    that never ends holds one worker's only thread while that worker also holds data another job still
    wants. Once that task counts as stuck (found `collective_timeout_s` + 5 s ago), the next job leaves
    the worker alone at once and runs on the other one (rev8 #6: every job waited that long, then up to
    `start_timeout_s` holding a server slot, and failed `cluster_busy`). With both workers so held, a job
    fails `cluster_busy` without waiting for `start_timeout_s`. Once nothing else is on them, the next
    job restarts both and runs."""
    with local_cluster(2) as cluster, Client(cluster) as client:
        extra = executor(cluster.scheduler_address, partitions=2, collective_timeout_s=5, start_timeout_s=120)
        users = {"alice": ["breast_cancer_rules"]}
        with running(tmp_path / "data", tmp_path / "server.log", users, extra) as server:
            pids = client.run(os.getpid)
            held, other = sorted(pids)
            held_data = let_go_and_held(client, held)
            wait_until(
                lambda: let_go_for(client, held) >= PATIENCE_S, 60, "the let-go task to count as stuck"
            )
            first = server.client().train(xgb.XGBClassifier(n_estimators=3), SMALL, timeout=60)
            after_first = client.run(os.getpid)
            waited_s = waited_for_let_go(server.log_path.read_text(), first.job_id)
            other_data = let_go_and_held(client, other)
            with pytest.raises(RemoteError) as busy:  # within 60 s, well before start_timeout_s
                server.client().train(xgb.XGBClassifier(n_estimators=3), SMALL, timeout=60)
            during = client.run(os.getpid)
            still_there = client.gather([held_data, other_data])
            del held_data, other_data
            wait_until(lambda: not any(client.has_what().values()), 60, "the other job's data to go")
            result = server.client().train(xgb.XGBClassifier(n_estimators=3), SMALL, timeout=120)
            after = client.run(os.getpid)
            log = server.log_path.read_text()
    assert first.rounds["total"] == 3
    assert after_first == pids, "a worker another job uses was restarted"
    assert waited_s < 1, f"the job waited {waited_s} s for a stuck worker"
    assert busy.value.code == "cluster_busy"
    assert during == pids and still_there == [list(range(10))] * 2
    assert result.rounds["total"] == 3
    assert not set(pids.values()) & set(after.values()), "the stuck workers were not restarted once idle"
    assert '"event": "cluster_worker_restarted"' in log
    assert len(after) == 2


def test_a_job_that_cannot_start_ends_with_a_fixed_code_and_leaves_no_lock_queued(tmp_path):
    """A lock left on the training workers (here the test's own) keeps a job from starting: it ends
    `cluster_busy` after `start_timeout_s`, its queued request withdrawn, and once the lock is gone the
    next job runs."""
    with local_cluster(2) as cluster, Client(cluster) as client:
        extra = executor(cluster.scheduler_address, partitions=2, start_timeout_s=5)
        users = {"alice": ["breast_cancer_rules"]}
        with running(tmp_path / "data", tmp_path / "server.log", users, extra) as server:
            stale = MultiLock(list(workers_of(client)), client)
            assert stale.acquire(timeout=10)
            started = time.monotonic()
            with pytest.raises(RemoteError) as failed:
                server.client().train(xgb.XGBClassifier(n_estimators=3), SMALL, timeout=300)
            waited = time.monotonic() - started
            assert failed.value.code == "cluster_busy" and waited < 120
            assert set(held_locks(client)) == set(stale.names)
            queued = [ids for ids in held_locks(client).values() if len(ids) > 1]
            assert not queued, "the failed job's request stayed queued"
            stale.release()
            result = server.client().train(xgb.XGBClassifier(n_estimators=3), SMALL, timeout=300)
    assert result.rounds["total"] == 3


def text_levels_apart(folder: Path) -> Path:
    """The synthetic table sorted by its text column: the first half has no 'south' or 'west', the
    second no 'east'."""
    frame = synthetic_table(3000, 11).sort_values("region", kind="stable").reset_index(drop=True)
    frame["id"] = range(len(frame))
    path = folder / "rows.parquet"
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), path)
    return path


def test_partitions_on_one_of_two_workers_missing_text_levels_train_as_on_one_machine(cluster, tmp_path):
    path = text_levels_apart(tmp_path)
    task = task_for(path, {"dataset": "d", "label": "label", "eval": {"fraction": 0.25, "seed": 2}}, 0)
    plan = Plan(family="xgboost", params={"max_depth": 3}, rounds=6, task="classification")
    xgboost = family("xgboost")
    here, _ = run_job(task, plan, InProcess([staging.stage(task, tmp_path)]), tmp_path / "here", xgboost)
    rows = pq.read_metadata(path).num_rows
    s = task.staging
    assert s is not None
    with Client(cluster) as client:
        first = sorted(workers_of(client))[0]
        futures = [
            client.submit(
                partitions.stage, str(path), a, b, s.partition_query, s.params, s.columns, s.label,
                workers=[first], allow_other_workers=False, pure=False,
            )
            for a, b in ((0, rows // 2), (rows // 2, rows))
        ]  # fmt: skip
        parts = partitions.DaskPartitions(partitions.DaskHandle(client, futures, "apart", None, 30, 120))
        assert parts.holders == [[first], [first]]
        there, _ = run_job(task, plan, parts, tmp_path / "there", xgboost)
    assert there.rounds == here.rounds and there.stats.n == here.stats.n
    for name, value in here.metrics.items():
        assert there.metrics[name] == pytest.approx(value, abs=1e-3), name


def test_every_training_worker_gets_parts_of_every_split():
    """Dask computed the evaluation parts on a worker that holds no training rows (work stealing):
    the parts are mapped back to the workers whose partitions they came from."""

    def matrix(where: dict[str, list[int]]) -> SimpleNamespace:
        futures = {w: [SimpleNamespace(key=f"k{i}") for i in order] for w, order in where.items()}
        order = {f.key: int(f.key[1:]) for fs in futures.values() for f in fs}
        return SimpleNamespace(worker_map=futures, partition_order=order)

    matrices = {"train": matrix({"a": [0, 1, 2]}), "eval": matrix({"b": [0, 1]})}
    sizes = [{"train": 5, "eval": 2}, {"train": 4, "eval": 0}, {"train": 6, "eval": 3}]
    train_where_rows_are(matrices, ["a", "c", "d"], sizes)  # partition 1 (on c) has no evaluation rows
    mapped = {s: {w: [f.key for f in fs] for w, fs in m.worker_map.items()} for s, m in matrices.items()}
    assert mapped == {"train": {"a": ["k0", "k1"], "d": ["k2"]}, "eval": {"a": ["k0"], "d": ["k1"]}}
    alone = {"train": matrix({"b": [0]}), "eval": matrix({"a": [0]})}
    train_where_rows_are(alone, ["a"], [{"train": 3, "eval": 1}])
    assert list(alone["train"].worker_map) == list(alone["eval"].worker_map) == ["a"]


def test_an_unreachable_scheduler_fails_with_a_fixed_code(tmp_path):
    extra = executor(f"tcp://127.0.0.1:{free_port()}", connect_timeout_s=2)
    with running(
        tmp_path / "data", tmp_path / "server.log", {"alice": ["breast_cancer_rules"]}, extra
    ) as server:
        started = time.monotonic()
        with pytest.raises(RemoteError) as failed:
            server.client().train(xgb.XGBClassifier(n_estimators=3), SMALL, timeout=120)
    assert failed.value.code == "cluster_unavailable" and time.monotonic() - started < 30


def certificates(folder: Path) -> dict[str, Path]:
    """A CA and one certificate for 127.0.0.1 it signed (the scheduler, the workers and the server)."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1")
    files = {"ca": folder / "ca.pem", "cert": folder / "cert.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    issued.private_key_and_cert_chain_pem.write_to_path(str(files["cert"]))
    files["key"] = files["cert"]
    return files


def test_a_tls_cluster_from_the_command_line_trains_and_refuses_plain_clients(tmp_path):
    files = certificates(tmp_path)
    port = free_port()
    address = f"tls://127.0.0.1:{port}"
    tls = [
        "--tls-ca-file",
        str(files["ca"]),
        "--tls-cert",
        str(files["cert"]),
        "--tls-key",
        str(files["key"]),
    ]
    dask = [Path(sys.executable).parent / "dask"]
    scheduler = subprocess.Popen(
        [*map(str, dask), "scheduler", "--host", "127.0.0.1", "--port", str(port), "--protocol", "tls",
         "--no-dashboard", *tls],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = subprocess.Popen(
        [*map(str, dask), "worker", address, "--host", "127.0.0.1", "--nthreads", "1", "--nworkers", "1",
         "--no-dashboard", *tls],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        extra = executor(
            address, tls_ca_file=str(files["ca"]), tls_cert=str(files["cert"]), tls_key=str(files["key"])
        )
        with running(
            tmp_path / "data", tmp_path / "server.log", {"alice": ["breast_cancer_rules"]}, extra
        ) as server:
            result = server.client().train(xgb.XGBClassifier(n_estimators=4, max_depth=3), SMALL, timeout=300)
        assert result.rounds["total"] == 4 and result.metrics["auc"] > 0.9
        with pytest.raises((OSError, TimeoutError)):
            Client(f"tcp://127.0.0.1:{port}", timeout=3)  # no certificate, no plain connection
    finally:
        for process in (worker, scheduler):
            process.terminate()
            process.wait(timeout=30)


def test_tcp_to_another_machine_is_refused_by_the_config(tmp_path):
    config = write_config(tmp_path / "data", extra_datasets=executor("tcp://10.0.0.5:8786"))
    with pytest.raises(Exception, match="needs tls://"):
        ServerProcess(config, tmp_path / "log")
