"""The privacy budget end to end, as a user meets it in mode dp: an identical repeat is answered at the
cap, every charge is said (a cancelled job's too), `%remote_budget` shows spent and left with the jobs
that spent it, and the data owner lists and raises a user's budget from the CLI, audited."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import xgboost as xgb
from IPython.utils.capture import capture_output

from remote_magic.client.errors import BudgetExhausted
from remote_magic.contract.wire import BudgetCharge, BudgetReport, DatasetBudget
from remote_magic.display.budget import Budget
from tests.serverproc import dataset_table, running

TINY_MODEL = xgb.XGBClassifier(n_estimators=2, max_depth=2, min_child_weight=3)
LONG_DP = (
    "from xgboost import XGBClassifier\n"
    "model = XGBClassifier(n_estimators=2000, max_depth=10, learning_rate=0.01, min_child_weight=3)"
)


def spec(seed: int) -> dict:
    return {"dataset": "tiny", "label": "malignant", "eval": {"fraction": 0.4, "seed": seed}}


@pytest.fixture(scope="module")
def tiny(server, tmp_path_factory):
    """A server whose dataset `tiny` (mode dp_eval_only) pays for two jobs: rho 0.025, each job 0.01.
    Shared by the file's tests, each as a user of its own (eve, frank, grace, hana): budgets are per user."""
    path = server.settings.datasets["breast_cancer"].path
    table = dataset_table(
        "tiny",
        path,
        "malignant",
        privacy="dp_eval_only",
        policy="{ dp_rho_cap = 0.025 }",
        column_levels='{ malignant = ["0", "1"] }',  # the noisy modes take a classifier's classes public
    )
    base = tmp_path_factory.mktemp("tiny")
    users = dict.fromkeys(("eve", "frank", "grace", "hana"), ["tiny", "synthetic"])
    with running(base / "data", base / "log", users, table) as small:
        yield small


def owner(server, *args: str) -> subprocess.CompletedProcess:
    """The data owner's CLI on the server's own config."""
    command = [sys.executable, "-m", "remote_magic_server", *args, "--config", str(server.config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture()
def frank_shell(tiny, shell_as):
    """A real IPython shell with the extension loaded, signed in to `tiny`'s server as frank."""
    return shell_as(tiny, "frank")


def test_at_the_cap_an_identical_repeat_is_answered_and_the_owner_raises_the_budget(tiny):
    client = tiny.client("eve")
    first = client.train(TINY_MODEL, spec(1), timeout=120)
    client.train(TINY_MODEL, spec(2), timeout=120)
    with pytest.raises(BudgetExhausted, match="budget set eve tiny") as refused:
        client.submit(TINY_MODEL, spec(3))
    assert refused.value.message.endswith("budget set eve tiny RHO --config FILE)"), "no --demo here"

    again = client.train(TINY_MODEL, spec(1), timeout=120)
    assert again.privacy["repeated"] and again.metrics == first.metrics, "the stored answer, at no cost"
    assert client.budget()["tiny"].rho_spent == pytest.approx(0.02)

    listed = owner(tiny, "budget", "list")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith("eve") and " tiny " in line)
    assert row.split()[2:5] == ["0.02", "0.025", "0.005"] and row.split()[-1] == "2"

    raised = owner(tiny, "budget", "set", "eve", "tiny", "0.05", "--by", "owner-test")
    assert raised.returncode == 0, raised.stderr
    assert "0.025 -> 0.05" in raised.stdout and "note:" not in raised.stderr
    typo = owner(tiny, "budget", "set", "evee", "tiny", "1e9", "--by", "owner-test")
    assert typo.returncode == 0 and "no active token of 'evee' grants 'tiny'" in typo.stderr
    assert "rho 1e+09 is epsilon" in typo.stderr and "says little about one person" in typo.stderr
    result = client.train(TINY_MODEL, spec(3), timeout=120)
    assert result.privacy["rho_cap"] == 0.05 and result.privacy["rho_remaining"] == pytest.approx(0.02)
    assert client.budget()["tiny"].raised

    audit = owner(tiny, "audit")
    assert "budget_set" in audit.stdout and '"set_by": "owner-test"' in audit.stdout
    refused = owner(tiny, "budget", "set", "eve", "no_such", "1")
    assert refused.returncode == 2 and "not a dataset served in mode dp" in refused.stderr
    assert owner(tiny, "budget", "set", "eve", "tiny", "-1").returncode == 2
    lowered = owner(tiny, "budget", "set", "eve", "tiny", "0.01", "--by", "owner-test")
    assert lowered.returncode == 0 and "0.05 -> 0.01" in lowered.stdout
    assert "'eve' has already spent rho 0.03 on 'tiny', more than 0.01" in lowered.stderr, "found by rev9"


def test_the_owner_sees_why_a_request_was_refused_in_the_audit_log_and_the_server_log(tiny):
    """Found by review (rev9 #5): a budget or spec refusal's audit entry read only `status 422`, and the
    server log had no code. Now both carry the registered code (never the message), and `audit` keeps
    one user's or one kind's entries."""
    client = tiny.client("hana")
    client.train(TINY_MODEL, spec(11), timeout=120)
    client.train(TINY_MODEL, spec(12), timeout=120)
    with pytest.raises(BudgetExhausted):
        client.submit(TINY_MODEL, spec(13))
    bad = tiny.post(
        "/describe", user="hana", json={"dataset": "tiny", "label": "malignant", "where": "nosuch > 1"}
    )
    assert bad.status_code == 422, bad.text
    listed = owner(tiny, "audit", "--user", "hana", "--kind", "request")
    lines = listed.stdout.splitlines()
    assert (
        listed.returncode == 0 and lines and all(" request " in line and " hana " in line for line in lines)
    )
    codes = [json.loads(line[line.index("{") :]).get("code") for line in lines]
    assert codes.count("privacy_budget_exhausted") == 1 and bad.json()["error"]["code"] in codes, lines
    assert "nosuch" not in listed.stdout  # the code, never the message that quotes the request
    others = owner(tiny, "audit", "--kind", "budget_set").stdout.splitlines()
    assert others and all(" budget_set " in line for line in others) and "hana" not in "".join(others)
    logged = [
        json.loads(line) for line in tiny.log_path.read_text().splitlines() if "request_refused" in line
    ]
    assert {"privacy_budget_exhausted", bad.json()["error"]["code"]} <= {
        e["code"] for e in logged if e["user"] == "hana"
    }
    assert owner(tiny, "audit", "--verify").returncode == 0


def test_remote_budget_lists_each_charge_and_a_cancelled_job_says_it_was_charged(tiny, frank_shell):
    client = tiny.client("frank")
    done = client.train(TINY_MODEL, spec(1), timeout=120)
    job = frank_shell.run_cell("%%remote_train -d synthetic -l label --no-wait\n" + LONG_DP).result
    deadline = time.monotonic() + 120
    while not any(c.job_id == job.id for c in client.budget()["synthetic"].charges):
        assert time.monotonic() < deadline, "the long job was never admitted"
        time.sleep(0.05)
    with capture_output() as said:
        frank_shell.run_line_magic("remote_cancel", job.id)
    # synthetic is in mode dp: a train job is charged the evaluation's 0.01 and the DP trainer's 0.05
    assert f"Job {job.id}: cancelled; its rows were admitted, so it was charged rho 0.06" in said.stdout
    status = client.job(job.id).status
    assert status.state == "cancelled" and "charged rho 0.06" in status.error.message

    budget = frank_shell.run_line_magic("remote_budget", "")
    text = repr(budget)
    assert "tiny: spent rho 0.01 of 0.025; left 0.015" in text
    assert "synthetic: spent rho 0.06 of 50" in text
    assert done.job_id in text and job.id in text
    assert job.id in budget._repr_html_()
    frame = budget.to_pandas()
    assert set(frame["job_id"]) == {done.job_id, job.id} and frame["rho"].sum() == pytest.approx(0.07)
    assert "synthetic" not in repr(frank_shell.run_line_magic("remote_budget", "tiny"))
    assert repr(client.budget("tiny")) == repr(frank_shell.run_line_magic("remote_budget", "tiny"))
    with pytest.raises(KeyError, match="not a mode-dp dataset"):
        client.budget("breast_cancer_rules")
    with pytest.raises(Exception, match="not a mode-dp dataset"):
        frank_shell.run_line_magic("remote_budget", "breast_cancer_rules")


def test_a_job_refused_after_its_rows_were_admitted_says_what_it_was_charged(tiny):
    client = tiny.client("grace")
    empty = {**spec(1), "where": "mean_radius > 1000"}  # admits no row: refused on its noisy counts
    with pytest.raises(Exception, match="so it was charged rho 0.01 of your privacy budget") as refused:
        client.train(TINY_MODEL, empty, timeout=120)
    assert refused.value.job_id is not None
    assert [c.job_id for c in client.budget()["tiny"].charges] == [refused.value.job_id]


def test_a_charge_without_a_job_is_named_by_its_kind():
    """A describe's charge and a federated batch's (`sums`) have no job: each row says which it was."""
    charges = [
        BudgetCharge(kind="describe", rho=0.004, at="2026-12-06T10:00:00"),
        BudgetCharge(kind="sums", rho=0.01, at="2026-12-06T10:01:00"),
        BudgetCharge(job_id="abc", kind="train", rho=0.06, at="2026-12-06T10:02:00"),
    ]
    budget = DatasetBudget(dataset="d", rho_cap=1.0, rho_spent=0.074, rho_remaining=0.926, charges=charges)
    rows = [line.split()[0] for line in repr(Budget(BudgetReport(user="u", datasets=[budget]))).splitlines()]
    assert {"(describe)", "(sums)", "abc"} <= set(rows)
