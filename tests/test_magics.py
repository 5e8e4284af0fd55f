"""The magics in a real IPython shell against the real server: progress, interrupt, async jobs, dry runs,
configuration, and that the token never shows."""

from __future__ import annotations

import io
import json
import re
import signal
import threading
import time

import pytest
import xgboost as xgb
from IPython.core.error import UsageError
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

import remote_magic
from remote_magic import TrainResult, compare
from remote_magic.client.dryrun import DryRun
from remote_magic.client.errors import DisclosureRefused, DryRunError, SpecError
from remote_magic.display.pictures import VEGALITE
from remote_magic.display.progress import ProgressBar

IMPORT = "from xgboost import XGBClassifier\n"
LONG_JOB = IMPORT + "model = XGBClassifier(n_estimators=2000, max_depth=10, learning_rate=0.01)"
TINY = IMPORT + "model = XGBClassifier(n_estimators=3)"


def run(ip: InteractiveShell, cell: str):
    result = ip.run_cell(cell)
    result.raise_error()
    return result.result


def posts_to_jobs(log: str) -> int:
    """Submissions in the server's access log (whatever its line format): POSTs to /v1/jobs itself."""
    return sum(1 for line in log.splitlines() if "POST" in line and re.search(r"/v1/jobs(?![/\w])", line))


def wait_running(server, before: set[str], timeout: float = 300.0) -> str:
    """The id of alice's job that appeared after `before` and is training."""
    client = server.client()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in client.jobs(limit=20):
            if job.id not in before and job.state == "running" and job.progress.stage == "training":
                return job.id
        time.sleep(0.05)
    raise AssertionError("the job never started training")


def test_progress_updates_arrive_during_a_200_round_job(server, capsys):
    job = server.client().submit(
        xgb.XGBClassifier(n_estimators=200, max_depth=7, learning_rate=0.05),
        {"dataset": "synthetic_rules", "label": "label"},
    )
    bar = ProgressBar(delay=0)
    stamps: list[float] = []

    def watch(status):
        stamps.append(time.monotonic())
        bar(status)

    try:
        status = job.wait(timeout=1800, on_progress=watch)
    finally:
        bar.close()
    assert status.state == "succeeded"
    rounds = set(bar.seen_rounds) - {0, 200}
    assert len(rounds) >= 5, bar.seen_rounds
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    # About once a second on an idle machine; the bound tells a refreshing display from one that waits.
    assert max(gaps) < 10, "the display must be refreshed while the job trains"
    shown = capsys.readouterr().err
    assert re.search(r"training: \d+/200 .*logloss train [\d.]+, eval [\d.]+", shown), shown[-500:]


def test_progress_bar_is_quiet_for_fast_jobs_and_off_by_config(shell, capsys):
    shell.run_line_magic("config", "RemoteMagic.progress = True")
    run(
        shell,
        "%%remote_train -d breast_cancer_rules -l malignant -o quick\n" + TINY,
    )
    assert "round" not in capsys.readouterr().err, "a job under the delay leaves no bar"
    shell.run_line_magic("config", "RemoteMagic.progress = False")
    shell.run_line_magic("config", "RemoteMagic.progress_delay = 0.0")
    run(
        shell,
        "%%remote_train -d breast_cancer_rules -l malignant -o quick\n" + TINY,
    )
    assert "round" not in capsys.readouterr().err


class CountingCalls:
    """The real client, with each status call's wait and how long it took recorded, and requests for a
    result counted."""

    def __init__(self, client):
        self.client = client
        self.polls: list[tuple[float, float]] = []
        self.results = 0

    def status(self, job_id, wait=0, since=None, final=False, result=False):
        start = time.monotonic()
        try:
            return self.client.status(job_id, wait=wait, since=since, final=final, result=result)
        finally:
            self.polls.append((wait, time.monotonic() - start))

    def result(self, job_id):
        self.results += 1
        return self.client.result(job_id)

    def __getattr__(self, name):
        return getattr(self.client, name)


def test_a_job_quicker_than_the_progress_delay_is_one_long_poll_not_one_per_progress_line(server):
    """Before the bar may appear nothing is shown, so nothing wakes the client but the job's end: a
    long-poll returns early only once, with the final state and the result (each early return, and a
    second request for the result, is a round trip the kernel pays for)."""
    client = server.client()
    calls = CountingCalls(client)
    job = client.submit(
        xgb.XGBClassifier(n_estimators=30), {"dataset": "breast_cancer_rules", "label": "malignant"}
    )
    job.client = calls
    shown: list[str] = []
    status = job.wait(timeout=1800, on_progress=lambda s: shown.append(s.state), progress_after=1800)
    assert status.state == "succeeded" and not shown
    early = [(wait, took) for wait, took in calls.polls[:-1] if took < wait - 0.5]
    assert not early, f"long-polls woken before the job ended: {calls.polls}"
    assert status.result is not None and status.result.job_id == job.id
    assert job.result().metrics == status.result.metrics and calls.results == 0, "asked for the result again"


@pytest.fixture()
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt, as in a kernel. A process started in the background by a
    non-interactive shell inherits SIGINT as ignored, and Python then installs no handler for it."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_interrupt_cancels_the_remote_job_within_two_seconds(shell, server, capsys, sigint_raises):
    before = {j.id for j in server.client().jobs(limit=50)}
    main = threading.main_thread().ident
    fired: dict[str, object] = {}

    def interrupt():
        fired["job"] = wait_running(server, before)
        fired["at"] = time.monotonic()
        signal.pthread_kill(main, signal.SIGINT)

    timer = threading.Thread(target=interrupt, daemon=True)
    timer.start()
    result = shell.run_cell("%%remote_train -d synthetic_rules -l label\n" + LONG_JOB)
    timer.join(5)
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    client = server.client()
    while client.job(fired["job"]).status.state != "cancelled":
        assert time.monotonic() - fired["at"] < 120, "the remote job was not cancelled"
        time.sleep(0.02)
    shown = capsys.readouterr()
    assert shown.out == f"Interrupted: remote job {fired['job']} was cancelled.\n", "one line, no traceback"
    assert shown.err == ""


def test_no_wait_then_remote_job_renders_the_same_result_as_a_blocking_run(shell):
    cell = (
        "%%remote_train -d breast_cancer_rules -l malignant --eval-fraction 0.3 --seed 5 {flags}\n"
        "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=12, max_depth=3)"
    )
    blocking = run(shell, cell.format(flags="-o blocking"))
    job = run(shell, cell.format(flags="--no-wait -o handle"))
    assert isinstance(job, remote_magic.Job) and shell.user_ns["handle"] is job
    assert job.id in repr(job) and "breast_cancer_rules" in repr(job)
    assert "remote-magic-job" in job._repr_html_() and f"%remote_job {job.id}" in job._repr_html_()
    job.wait(timeout=600)
    later = shell.run_line_magic("remote_job", job.id)
    assert isinstance(later, TrainResult) and later.job_id != blocking.job_id
    assert repr(later) == repr(blocking)
    assert later._repr_html_() == blocking._repr_html_()
    table = shell.run_line_magic("remote_jobs", "")
    assert table.header[:9] == [
        *("job", "model", "rounds", "dataset", "kind", "state", "progress", "submitted (UTC)", "main metric")
    ]
    listed = {row[0]: dict(zip(table.header, row)) for row in table.rows}
    assert listed[job.id]["state"] == "succeeded" and listed[job.id]["main metric"].startswith("auc ")
    assert listed[job.id]["model"] == "XGBClassifier" and listed[job.id]["rounds"] == "12"
    assert listed[job.id]["dataset"] == "breast_cancer_rules@1"  # the dataset version the job ran on
    with capture_output() as out:
        shell.run_line_magic("remote_cancel", job.id)
    assert f"Job {job.id}: succeeded" in out.stdout


def test_remote_job_shows_progress_while_running_and_cancel_stops_it(shell, server):
    before = {j.id for j in server.client().jobs(limit=50)}
    job = run(shell, "%%remote_train -d synthetic_rules -l label --no-wait\n" + LONG_JOB)
    job_id = wait_running(server, before)
    assert job_id == job.id
    shown = shell.run_line_magic("remote_job", job_id)
    assert isinstance(shown, remote_magic.Job)
    assert re.search(r"<progress value='\d+' max='2000'", shown._repr_html_())
    assert re.search(r"training \d+/2000", repr(shown))
    with capture_output() as out:
        shell.run_line_magic("remote_cancel", job_id)
    assert f"Job {job_id}:" in out.stdout
    assert server.client().job(job_id).wait(timeout=300).state == "cancelled"


def test_dry_run_finds_a_misspelt_feature_before_any_request_reaches_the_jobs_endpoint(shell, server):
    jobs_before = len(server.client().jobs(limit=500))
    log_before = posts_to_jobs(server.log_path.read_text())
    cell = "%%remote_train --dry-run -d synthetic_rules -l label {flags}\n" + TINY
    result = shell.run_cell(cell.format(flags="--features agee,bmi"))
    error = result.error_in_exec
    assert isinstance(error, DryRunError)
    assert str(error) == "unknown column 'agee' in features; did you mean 'age'?"
    assert len(error._render_traceback_()) == 2
    for flags, message in [
        ("--where 'bmii > 20'", "unknown column 'bmii' in filter; did you mean 'bmi'?"),
        ("--where 'bmi > '", "could not be parsed"),
        ("--where 'upper(region) = 1'", "not allowed"),
        ("--eval-where 'regon IS NULL'", "unknown column 'regon' in eval filter; did you mean 'region'?"),
        ("--where 'region = north'", "unknown column 'north' in filter; text takes single quotes: 'north'"),
    ]:
        failed = shell.run_cell(cell.format(flags=flags)).error_in_exec
        assert isinstance(failed, DryRunError) and message in str(failed), (flags, failed)
    bad_label = shell.run_cell(cell.replace("-l label", "-l lable").format(flags="")).error_in_exec
    assert str(bad_label).startswith("unknown column 'lable' in label; did you mean 'label'")
    report = run(
        shell, cell.format(flags="--features age,bmi,region --where \"age > 0 AND region IN ('north')\"")
    )
    assert isinstance(report, DryRun) and report.features == ["age", "bmi", "region"] and report.rounds == 3
    assert "nothing was sent to the server" in repr(report)
    fitted = run(shell, cell.format(flags="--where 'age >= 50' --eval-fraction 0.25"))
    assert 0 < fitted.admitted < 200 and fitted.train_rows + fitted.eval_rows == fitted.admitted
    assert posts_to_jobs(server.log_path.read_text()) == log_before
    assert "/v1/datasets/synthetic_rules/mock" in server.log_path.read_text()
    assert len(server.client().jobs(limit=500)) == jobs_before


def test_dry_run_of_continued_training_catches_a_feature_mismatch(shell):
    shell.user_ns["spec"] = {
        "dataset": "breast_cancer_rules",
        "label": "malignant",
        "features": ["mean_radius"],
    }
    cell = (
        "%%remote_train --dry-run --spec spec\nimport numpy as np\nfrom xgboost import XGBClassifier\n"
        "model = XGBClassifier(n_estimators=3).fit(np.random.rand(50, 2), np.arange(50) % 2)"
    )
    error = shell.run_cell(cell).error_in_exec
    assert isinstance(error, DryRunError) and "XGBoost refused the model" in str(error)


def test_remote_failure_is_a_short_real_exception(shell):
    result = shell.run_cell(
        "%%remote_train -d breast_cancer_rules -l malignant --where 'mean_radius > 27'\n"
        "from xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=3)"
    )
    error = result.error_in_exec
    assert isinstance(error, DisclosureRefused)
    lines = error._render_traceback_()
    assert 1 <= len(lines) <= 2 and "Traceback" not in "".join(lines)
    assert "widen the filter" in lines[-1]


def test_classes_on_a_regressor_are_refused_for_what_they_are_not_as_too_few_rows(shell, server):
    """It admitted only the rows whose label was 0 or 1 and advised widening the filter."""
    jobs_before = len(server.client().jobs(limit=500))
    cell = "from xgboost import XGBRegressor\nmodel = XGBRegressor(n_estimators=3)"
    for flags in ("", "--dry-run "):
        result = shell.run_cell(
            f"%%remote_train {flags}-d diabetes_rules -l progression --classes 0,1\n{cell}"
        )
        error = result.error_in_exec
        assert isinstance(error, SpecError if not flags else DryRunError) and error.code == "invalid_spec"
        lines = error._render_traceback_()
        assert "classes (--classes) are for a classifier, and this model is a regressor" in lines[0]
        assert "leave them out, or send an XGBClassifier" in lines[0] and "widen" not in " ".join(lines)
    assert len(server.client().jobs(limit=500)) == jobs_before  # refused before any job existed


def test_config_lists_every_trait_with_its_help(shell):
    with capture_output() as out:
        shell.run_line_magic("config", "RemoteMagic")
    text = out.stdout
    for trait in ("url", "token_env", "timeout", "progress", "progress_delay"):
        assert f"RemoteMagic.{trait}" in text
    magic = shell.user_ns["_remote_magic"]
    for name, trait in magic.traits(config=True).items():
        assert trait.help and len(trait.help) > 15, name


def test_the_token_never_shows(shell, server):
    token = server.tokens["alice"]
    magic = shell.user_ns["_remote_magic"]
    with capture_output() as out:
        shell.run_line_magic("remote_connect", "--name other")
        shell.run_line_magic("config", "RemoteMagic")
        shell.run_line_magic("xmode", "Verbose")
        try:
            shell.run_cell("%%remote_train -d nope -l x\nmodel = 1")
            shell.run_cell("%%remote_train -d synthetic_rules -l label --features agee --dry-run\n" + TINY)
            shell.run_cell("_remote_magic.client._request('GET', '/nowhere')")
        finally:
            shell.run_line_magic("xmode", "Context")
    job = magic.client.submit(
        xgb.XGBClassifier(n_estimators=2), {"dataset": "breast_cancer_rules", "label": "malignant"}
    )
    job.wait(timeout=600)
    texts = [out.stdout, out.stderr, repr(magic.client), repr(job), job._repr_html_(), repr(magic)]
    texts += [repr(magic.client._session.auth), repr(magic.client.__dict__), repr(magic.connections)]
    assert "Connected to" in out.stdout and "[other]" in out.stdout
    for text in texts:
        assert token not in text


def test_compare_gives_a_table_and_a_plot(server):
    client = server.client()
    spec = {"dataset": "diabetes_rules", "label": "progression", "eval": {"fraction": 0.3, "seed": 4}}
    shallow = client.train(xgb.XGBRegressor(n_estimators=20, max_depth=2), spec)
    deep = client.train(xgb.XGBRegressor(n_estimators=10, max_depth=4), spec)
    cmp = compare({"shallow": shallow, "deep": deep})
    table = cmp.table
    assert list(table.index) == ["shallow", "deep"]
    assert list(table.columns[:5]) == ["dataset", "kind", "rounds", "train rows", "eval rows"]
    assert table.loc["shallow", "rounds"] == 20 and table.loc["deep", "r2"] == deep.metrics["r2"]
    assert cmp.main_metric == "r2"
    fig = cmp.plot()
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 2
    assert repr(cmp).splitlines()[0] == "Comparison of 2 runs" and "shallow" in repr(cmp)
    assert "<table" in cmp._repr_html_() and "<img" not in cmp._repr_html_()
    spec = cmp.charts()
    assert [c["title"] for c in spec["hconcat"]] == ["Eval learning curves", "r2 (eval)"]
    assert {v["run"] for v in spec["hconcat"][1]["data"]["values"]} == {"shallow", "deep"}
    assert list(compare(shallow, deep).table.index) == ["run 1", "run 2"]
    with pytest.raises(TypeError):
        compare(shallow, "not a result")


def test_result_view_shows_suppressed_cells_and_plot_gives_figures(server):
    result = server.client().train(
        xgb.XGBClassifier(n_estimators=8, max_depth=2),
        {"dataset": "breast_cancer_rules", "label": "malignant"},
    )
    figures = result.plot()
    assert list(figures) == ["learning curve", "feature importance", "confusion matrix"]
    raw = result.raw.model_copy(deep=True)
    raw.confusion_matrix.counts[0][1] = None
    texts = [t.get_text() for t in TrainResult(raw).plot()["confusion matrix"].axes[0].texts]
    assert "suppressed\n(<10)" in texts
    view = result._repr_html_()
    assert "<img" not in view and "Rows used" in view and "Metrics (eval)" in view, "figures go as a spec"
    [*_, matrix] = TrainResult(raw).charts()["hconcat"]
    shown = {
        cell["text"] if isinstance(cell["text"], str) else " ".join(cell["text"])
        for cell in matrix["data"]["values"]
    }
    assert "suppressed (<10)" in shown and len(json.dumps(TrainResult(raw).charts())) < 20_000
    buffer = io.StringIO()
    print(result, file=buffer)
    assert buffer.getvalue().startswith("TrainResult: training of a binary classifier on breast_cancer")


def test_the_figures_caption_names_the_figures_drawn(server):
    """The caption (what nbconvert's text, a terminal and a preview show) said "learning curve,
    importance, confusion matrix" whatever was drawn: a regressor has no confusion matrix."""
    InteractiveShell.instance()
    result = server.client().train(
        xgb.XGBRegressor(n_estimators=3, max_depth=2),
        {"dataset": "diabetes_rules", "label": "progression", "eval": {"fraction": 0.3}},
    )
    with capture_output() as shown:
        result._ipython_display_()
    [table, figures] = shown.outputs
    assert "remote-magic-result" in table.data["text/html"]
    assert figures.data["text/plain"] == "Figures: learning curve, feature importance"
    assert [chart["title"] for chart in figures.data[VEGALITE]["hconcat"]] == [
        "Learning curve",
        "Feature importance",
    ]


def test_dry_run_checks_derived_columns(server):
    from remote_magic import DatasetSpec
    from remote_magic.client.dryrun import dry_run

    client = server.client()
    info, mock = client.dataset("synthetic_rules"), client.mock("synthetic_rules")
    spec = DatasetSpec(
        dataset="synthetic_rules", label="label", features=["age", "bmi"], derive={"ratio": "bmi / age"}
    )
    report = dry_run(xgb.XGBClassifier(n_estimators=2), spec, info, mock)
    assert report.features == ["age", "bmi", "ratio"] and report.rounds == 2
    bad = DatasetSpec(dataset="synthetic_rules", label="label", derive={"ratio": "bmii / age"})
    with pytest.raises(
        DryRunError, match="unknown column 'bmii' in derived column 'ratio'; did you mean 'bmi'"
    ) as refused:
        dry_run(xgb.XGBClassifier(n_estimators=2), bad, info, mock)
    assert refused.value.code == "unknown_column"


def test_remote_datasets_shows_a_datasets_versions_and_a_pinned_versions_columns(shell):
    versions = shell.run_line_magic("remote_datasets", "breast_cancer --versions")
    assert versions.header == ["version", "created (UTC)", "rows", "schema", "schema change"]
    assert versions.rows[0][0] == "breast_cancer@1" and versions.rows[0][2] == "570"
    columns = shell.run_line_magic("remote_datasets", "breast_cancer@1")
    assert columns.title.startswith("breast_cancer@1: ") and columns.rows[0] == ["id", "integer", "id"]
    with pytest.raises(UsageError, match="needs a dataset"):
        shell.run_line_magic("remote_datasets", "--versions")


BOUNDED_CELL = "\nfrom xgboost import XGBClassifier\nmodel = XGBClassifier(n_estimators=2)"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (
            "%%remote_train -d synthetic -l label --importance 50",
            "--importance must be an integer from 0 to 10 (0: none)",
        ),
        (
            "%%remote_train -d synthetic -l label --importance -1",
            "--importance must be an integer from 0 to 10 (0: none)",
        ),
        (
            "%%remote_train -d synthetic -l label --curve 11",
            "--curve must be an integer from 0 to 10 (0: no curve)",
        ),
        (
            "%%remote_evaluate -d synthetic -l label --curve -2",
            "--curve must be an integer from 0 to 10 (0: no curve)",
        ),
        (
            "%%remote_train -d synthetic -l label --importance 50 --dry-run",
            "--importance must be an integer from 0",
        ),
        ("%%remote_train -d synthetic -l label --seed -1", "--seed must be an integer from 0 to 2147483647"),
        (
            "%%remote_train -d synthetic -l label --datasets a:synthetic --batch-size 0",
            "--batch-size must be an integer from 1 to 100000",
        ),
        ("%remote_jobs --limit 501", "--limit must be an integer from 1 to 500"),
    ],
)
def test_a_bounded_option_out_of_range_is_named_with_its_range_before_anything_is_sent(
    shell, server, line, message
):
    """Every bounded option of the magics says which option and what range, in one sentence (not
    pydantic's "Input should be less than or equal to 10", nor the server's), and sends nothing."""
    before = len(server.client().jobs(limit=500))
    result = shell.run_cell(line + (BOUNDED_CELL if line.startswith("%%") else ""))
    error = result.error_in_exec
    assert isinstance(error, UsageError) and str(error).startswith(message), error
    assert "Input should" not in str(error)
    assert len(server.client().jobs(limit=500)) == before
