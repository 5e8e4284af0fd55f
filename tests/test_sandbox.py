"""The worker's sandbox, tested from the inside: a probe runs in a real worker process (forked from a
forkserver preloaded like the scheduler's), applies the production `sandbox.confine`, then tries to reach
the network, read and write files it must not touch, and do the work a job needs."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import socket
import time

import pandas as pd
import pytest
import xgboost as xgb
from sklearn.compose import ColumnTransformer
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from remote_magic_server.jobs.executor import WorkerGone
from remote_magic_server.jobs.local_executor import LocalExecution, LocalExecutor
from remote_magic_server.protocol import ProgressNote
from remote_magic_server.worker.sandbox import DATA_BACKSTOP, unreadable_code_path

PRELOAD = "remote_magic_server.worker.preload"


def _attempt(action) -> str:
    try:
        action()
    except OSError as exc:
        return type(exc).__name__
    return "ok"


def probe(job_dir: str, dataset: str, port: int, secret: str, outside: str, conn) -> None:
    """Runs inside the confined process; reports what each attempt gave."""
    from remote_magic_server.worker import sandbox, staging

    fd_path = sandbox.open_dataset(dataset)
    report: dict = {"applied": sandbox.confine(120, 4096, job_dir, dataset)}

    def connect() -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(3)
            s.connect(("127.0.0.1", port))

    def read_secret() -> None:
        with open(secret) as fh:
            fh.read()

    def write_outside() -> None:
        with open(outside, "w") as fh:
            fh.write("x")

    def write_inside() -> None:
        with open("model.ubj", "w") as fh:
            fh.write("x")

    def read_other_job() -> None:
        os.listdir(os.path.dirname(job_dir))

    report["replace_task"] = _attempt(lambda: os.unlink("task.json"))
    report["symlink"] = _attempt(lambda: os.symlink("/etc/shadow", "link"))
    report["fifo"] = _attempt(lambda: os.mkfifo("fifo"))
    report["tcp"] = _attempt(connect)
    report["read_secret"] = _attempt(read_secret)
    report["read_other_jobs"] = _attempt(read_other_job)
    report["write_outside"] = _attempt(write_outside)
    report["write_inside"] = _attempt(write_inside)
    report["exec"] = os.system("/bin/true")  # noqa: S605 - the attempt is the test
    con = staging.connect_locked(fd_path)
    report["dataset_rows"] = con.execute("SELECT count(*) FROM read_parquet(?)", [fd_path]).fetchone()[0]
    report["uid"] = os.getuid()
    report["data_limit_mb"] = resource.getrlimit(resource.RLIMIT_DATA)[0] // 2**20

    def allocate_past_the_data_limit() -> None:
        bytearray(report["data_limit_mb"] * 2**20 + 2**30)

    try:
        allocate_past_the_data_limit()
        report["past_data_limit"] = "ok"
    except MemoryError:
        report["past_data_limit"] = "MemoryError"
    conn.send(json.dumps(report))
    conn.close()


@pytest.fixture(scope="module")
def sandboxed(tmp_path_factory):
    """Run the probe once; return its report and the paths it was given."""
    base = tmp_path_factory.mktemp("sandbox")
    dataset = base / "data.parquet"
    pd.DataFrame({"x": range(25)}).to_parquet(dataset)
    secret = base / "secret.txt"
    secret.write_text("do not read")
    secret.chmod(0o644)
    (base / "jobs" / "other").mkdir(parents=True)
    job_dir = base / "jobs" / "job1"
    job_dir.mkdir()
    (job_dir / "task.json").write_text("{}")
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])
    parent, child = ctx.Pipe(duplex=False)
    outside = base / "written-outside"
    args = (str(job_dir), str(dataset), listener.getsockname()[1], str(secret), str(outside), child)
    process = ctx.Process(target=probe, args=args)
    process.start()
    child.close()
    assert parent.poll(120), "the probe did not report"
    report = json.loads(parent.recv())
    process.join(30)
    listener.setblocking(False)
    with pytest.raises(BlockingIOError):
        listener.accept()
    listener.close()
    return report, job_dir, outside


def test_confinement_is_reported(sandboxed):
    report, _, _ = sandboxed
    applied = report["applied"]
    assert applied["network"] in ("netns", "userns+netns")
    assert applied["filesystem"].startswith("landlock-abi")
    if os.geteuid() == 0 and unreadable_code_path() is None:
        assert applied["uid"] == "65534" and report["uid"] == 65534
    elif os.geteuid() == 0:
        assert applied["uid"].startswith("0 (server's own") and report["uid"] == 0


def test_the_hard_data_limit_is_a_multiple_of_the_workers_memory(sandboxed):
    report, _, _ = sandboxed
    assert report["data_limit_mb"] == 4096 * DATA_BACKSTOP
    assert report["past_data_limit"] == "MemoryError"


def test_workers_openmp_threads_sleep_while_they_wait_unless_the_server_was_told_otherwise(monkeypatch):
    """The executor sets OMP_WAIT_POLICY for the forkserver its workers come from (spinning OpenMP threads
    made a small job 5-10x slower beside other load); a value the server was started with is kept."""
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    LocalExecutor()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    LocalExecutor()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


def _hog(megabytes: int, conn, chatty: bool = False) -> None:
    """Touch `megabytes` of memory, say so, and wait to be stopped (`chatty`: sending progress notes
    without a pause, as a DP training's noise requests come)."""
    block = bytearray(megabytes * 2**20)
    block[::4096] = b"x" * len(block[::4096])
    conn.send_bytes(b"touched")
    note = ProgressNote(stage="training").model_dump_json().encode()
    deadline = time.monotonic() + 120
    while chatty and time.monotonic() < deadline:
        conn.send_bytes(note)
    time.sleep(120)


def _hogging(megabytes: int, memory_mb: int, chatty: bool = False) -> LocalExecution:
    """A forked process holding `megabytes`, followed as a worker whose task allows `memory_mb`."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe(duplex=True)
    process = ctx.Process(target=_hog, args=(megabytes, child, chatty))
    process.start()
    child.close()
    assert parent.poll(60) and parent.recv_bytes() == b"touched"
    return LocalExecution(process, parent, memory_mb=memory_mb)


@pytest.mark.parametrize("chatty", [False, True])
def test_a_worker_past_its_resident_memory_is_stopped_as_out_of_memory(chatty: bool):
    """The parent's watch (jobs/local_executor.py): a worker that holds more resident memory than its task's
    memory_mb is killed and its task ends out_of_memory, even though no allocation failed; also one whose
    messages never stop coming (its memory is read at most every MEMORY_CHECK_S then, not never)."""
    execution = _hogging(400, memory_mb=200, chatty=chatty)
    started = time.monotonic()
    with pytest.raises(WorkerGone) as gone:
        while time.monotonic() - started < 30:
            execution.receive(0.2)
    assert gone.value.failure.code == "out_of_memory"
    execution.process.join(10)
    assert execution.process.exitcode == -9


def test_a_worker_within_its_resident_memory_is_left_alone():
    execution = _hogging(50, memory_mb=1024)
    assert execution.receive(0.3) is None and execution.process.is_alive()
    execution.kill()
    execution.process.join(10)


def test_no_tcp_connection_to_a_loopback_listener(sandboxed):
    assert sandboxed[0]["tcp"] in ("PermissionError", "OSError", "ConnectionRefusedError", "TimeoutError")
    assert sandboxed[0]["tcp"] != "ok"


def test_no_read_outside_its_dataset(sandboxed):
    report = sandboxed[0]
    assert report["read_secret"] == "PermissionError"
    assert report["read_other_jobs"] == "PermissionError"
    assert report["dataset_rows"] == 25


def test_no_write_outside_its_job_directory(sandboxed):
    report, job_dir, outside = sandboxed
    assert report["write_outside"] == "PermissionError" and not outside.exists()
    assert report["write_inside"] == "ok" and (job_dir / "model.ubj").exists()


def test_the_servers_files_in_the_job_directory_cannot_be_replaced(sandboxed):
    """task.json is rewritten by the root scheduler on a retry: no link or fifo may stand in for it."""
    report, job_dir, _ = sandboxed
    assert report["replace_task"] == report["symlink"] == report["fifo"] == "PermissionError"
    assert (job_dir / "task.json").read_text() == "{}"


def test_no_program_can_be_executed(sandboxed):
    assert sandboxed[0]["exec"] != 0


def test_a_scaler_pipeline_trains_with_the_sandbox_on(server):
    client = server.client()
    pipeline = Pipeline(
        [("scale", StandardScaler()), ("model", xgb.XGBClassifier(n_estimators=15, max_depth=3))]
    )
    job = client.submit(
        pipeline, {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.3}}
    )
    result = job.result(timeout=120)
    assert result.metrics["auc"] > 0.9
    assert result.rounds == {"base": 0, "new": 15, "total": 15}
    isolation = job.status.isolation
    assert isolation["network"] in ("netns", "userns+netns")
    assert isolation["filesystem"].startswith("landlock-abi")
    if os.geteuid() == 0:
        expected = "65534" if unreadable_code_path() is None else "0 (server's own"
        assert isolation["uid"].startswith(expected)
    assert (server.data_dir / "jobs" / job.id / "model.json").exists()


def test_a_fitted_column_pipeline_continues_training(server):
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import MinMaxScaler, OneHotEncoder

    data = pd.read_parquet(server.settings.datasets["synthetic_rules"].path).head(2000)
    features = ["age", "income", "bmi", "region", "smoker"]
    front = ColumnTransformer(
        [
            (
                "num",
                Pipeline([("impute", SimpleImputer()), ("scale", MinMaxScaler())]),
                ["age", "income", "bmi"],
            ),
            ("cat", OneHotEncoder(handle_unknown="ignore"), ["region"]),
        ],
        remainder="passthrough",
    )
    model = Pipeline([("front", front), ("xgb", xgb.XGBClassifier(n_estimators=5, max_depth=3))])
    model.fit(data[features], data["label"])
    model.set_params(xgb__n_estimators=10)
    spec = {"dataset": "synthetic_rules", "label": "label", "features": features, "eval": {"fraction": 0.2}}
    result = server.client().train(model, spec)
    assert result.rounds == {"base": 5, "new": 10, "total": 15}
    assert result.metrics["auc"] > 0.7


def test_pipeline_parameter_out_of_bounds_is_named(server):
    from remote_magic.client.errors import RemoteError

    pipeline = Pipeline(
        [("scale", StandardScaler()), ("model", xgb.XGBClassifier(n_estimators=5, max_depth=99))]
    )
    with pytest.raises(RemoteError) as info:
        server.client().train(pipeline, {"dataset": "breast_cancer_rules", "label": "malignant"})
    assert info.value.code == "parameter_out_of_bounds"
    assert "max_depth" in str(info.value) and "12" in str(info.value)


@pytest.fixture(scope="module")
def limited_server(tmp_path_factory):
    """A server whose `slow` dataset gives each job 2 s, and `small_memory` 1 GiB of memory."""
    from tests.serverproc import running

    base = tmp_path_factory.mktemp("limited")
    data_dir = base / "data"
    path = data_dir / "datasets" / "synthetic.parquet"
    extra = (
        f'\n[datasets.slow]\npath = "{path}"\nid_column = "id"\nlabel_columns = ["label"]\n'
        'privacy = "rules"\npolicy = { job_timeout_s = 2 }\n'
        f'\n[datasets.small_memory]\npath = "{path}"\nid_column = "id"\nlabel_columns = ["label"]\n'
        'privacy = "rules"\npolicy = { worker_memory_mb = 1024 }\n'
    )
    users = {"dave": ["slow", "small_memory", "breast_cancer_rules"]}
    with running(data_dir, base / "server.log", users, extra) as server:
        yield server


def _dense_one_hot_of_income() -> Pipeline:
    """A Pipeline whose encoder makes a dense column of each of the ~47,000 incomes: ~15 GB."""
    encode = ColumnTransformer([("income", OneHotEncoder(sparse_output=False), ["income"])])
    return Pipeline([("encode", encode), ("model", xgb.XGBClassifier(n_estimators=2))])


# Past the hard data limit an allocation may also fail inside native code (OpenMP starting a thread,
# DuckDB's allocator) that ends the process instead of raising: that is still a clean failure with a
# fixed code, the one the scheduler gives a worker that died without a word.
@pytest.mark.parametrize(
    ("dataset", "codes"), [("slow", {"timeout"}), ("small_memory", {"out_of_memory", "worker_crashed"})]
)
def test_a_job_out_of_time_or_memory_fails_cleanly(limited_server, dataset, codes):
    from remote_magic.client.errors import RemoteError

    client = limited_server.client("dave")
    model = (
        xgb.XGBClassifier(n_estimators=2000, max_depth=12, learning_rate=0.01)
        if dataset == "slow"
        else _dense_one_hot_of_income()
    )
    with pytest.raises(RemoteError) as info:
        client.train(model, {"dataset": dataset, "label": "label"})
    assert info.value.code in codes
    assert limited_server.get("/health", user=None).json()["status"] == "ok"
    quick = client.submit(
        xgb.XGBClassifier(n_estimators=2), {"dataset": "breast_cancer_rules", "label": "malignant"}
    )
    assert quick.result(timeout=60).rounds["total"] == 2


def confine_beside_a_thread(job_dir: str, conn) -> None:
    """Runs in a worker-like child: start a thread, then try to confine."""
    import threading

    from remote_magic_server.worker import sandbox

    release = threading.Event()
    threading.Thread(target=release.wait, daemon=True).start()
    try:
        sandbox.confine(60, 1024, job_dir, None)
        conn.send("confined")
    except OSError as exc:
        conn.send(str(exc))
    release.set()
    conn.close()


def test_a_process_with_a_second_thread_is_not_confined(tmp_path):
    """The network namespace and Landlock hold only for the calling thread and the threads it starts
    later: confinement refuses to run beside a thread that already runs (it would stay outside)."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([PRELOAD])
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=confine_beside_a_thread, args=(str(tmp_path), child))
    process.start()
    child.close()
    assert parent.poll(120), "the child did not report"
    assert parent.recv() == "the worker has 2 threads before its confinement; it must have one"
    process.join(30)
