"""Mode dp trains with the DP trainer: a job on the real server (HTTP) returns what training cost, the
release desk answers its noise with OpenDP at the scale the proof says, the accountant's total is what
the ledger charged, and a worker that asks past its training budget ends its job."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import xgboost as xgb
from pyroaring import BitMap

from remote_magic.contract.codes import Refusal
from remote_magic.families.dpboost.family import SKETCH_SHARE
from remote_magic.families.dpboost.settings import Settings as TrainerSettings
from remote_magic_server.audit import AuditLog
from remote_magic_server.config.settings import DatasetConfig, Settings
from remote_magic_server.jobs.conversation import Conversation
from remote_magic_server.protocol import Admission, Decision, NoiseAnswer, NoiseRequest, SplitCounts
from remote_magic_server.release.desk import ReleaseDesk, Request
from remote_magic_server.release.ledger import Ledger
from tests.accountant import accountant_total

QUICK = {"dataset": "synthetic", "label": "label", "eval": {"fraction": 0.2, "seed": 42}}


def test_a_dp_job_trains_with_the_dp_trainer_and_the_ledger_charged_what_the_accountant_says(server):
    client = server.client()
    policy = server.settings.policy_for("synthetic")
    job = client.submit(xgb.XGBClassifier(n_estimators=12, max_depth=4), QUICK)
    result = job.result(timeout=600)
    training = result.raw.training
    assert training is not None and training.trees == 12
    assert training.rho == pytest.approx(policy.dp_rho_train, rel=1e-9)
    assert result.privacy["rho"] == pytest.approx(policy.dp_rho_job + policy.dp_rho_train)
    assert result.metrics["auc"] > 0.75, "the DP model learns the demo's signal"

    # The accountant (the proof's formula) gives back exactly what the ledger charged for the job.
    trainer = TrainerSettings(rounds=12, max_depth=4)
    sketch = SKETCH_SHARE * policy.dp_rho_train  # the demo declares no ranges: its columns are sketched
    scales = trainer.scales(policy.dp_rho_train - sketch)
    assert training.sigma_gradient == pytest.approx(scales.sigma_g)
    assert training.sigma_hessian == pytest.approx(scales.sigma_h)
    accountant = accountant_total(trainer, scales, sketch)
    ledger = Ledger(server.settings.ledger_path)
    try:
        charged = ledger.rho_of(f"job:{job.id}")
    finally:
        ledger.close()
    assert charged == pytest.approx(policy.dp_rho_job + accountant, rel=1e-9)


def test_an_evaluation_of_any_model_still_works_in_mode_dp(server):
    client = server.client()
    frame = client.mock("synthetic")
    x = frame.drop(columns=["label"])
    x["region"] = x["region"].astype("category")
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, enable_categorical=True).fit(x, frame["label"])
    result = client.evaluate(model, {"dataset": "synthetic", "label": "label"})
    assert result.raw.training is None and result.privacy["rho"] == pytest.approx(0.01)


# the release desk's answers to noise requests (unit: one real desk, ledger and audit log)


@pytest.fixture()
def desk(tmp_path) -> ReleaseDesk:
    (tmp_path / "t.parquet").touch()
    config = DatasetConfig(path=tmp_path / "t.parquet", id_column="id", label_columns=["y"])
    settings = Settings(datasets={"d": config})
    return ReleaseDesk(settings, Ledger(tmp_path / "ledger.sqlite"), AuditLog(tmp_path / "audit.log"))


def admitted(desk: ReleaseDesk, folder: Path, job: str = "j1"):
    sets = {"training": BitMap(range(4000)), "evaluation": BitMap(range(4000, 5000))}
    for role, bits in sets.items():
        (folder / f"{role}.roaring").write_bytes(bits.serialize())
    counts = {
        "train": SplitCounts(rows=4000, classes={"0": 2000, "1": 2000}),
        "eval": SplitCounts(rows=1000, classes={"0": 500, "1": 500}),
    }
    admission = Admission(counts=counts, row_sets={r: f"{r}.roaring" for r in sets}, table_rows=10_000)
    request = Request(
        user="alice", dataset="d", kind="train", spec={"dataset": "d", "label": "y"}, job_id=job
    )
    return request, desk.admit(request, admission, folder)


def test_the_desks_leaf_noise_has_the_sd_the_proof_configures(desk, tmp_path):
    request, state = admitted(desk, tmp_path)
    policy = desk.policy("d")
    assert state.train_rho == pytest.approx(policy.dp_rho_train)
    assert desk.ledger.spent("alice", "d") == pytest.approx(policy.dp_rho_job + policy.dp_rho_train)
    trainer = TrainerSettings(rounds=50, max_depth=6, split_share=0.0)
    scales = trainer.scales(policy.dp_rho_train)
    rho_g = 1.0**2 / (2 * scales.sigma_g**2)  # one round's leaf gradients, L2 bound 1 (the logistic loss)
    leaves = np.full(2000, 37.0)  # many leaves' sums at once: one draw per leaf
    answer = desk.noise(
        request, state, NoiseRequest(kind="gaussian", values=list(leaves), bound=1.0, rho=rho_g)
    )
    noise = np.asarray(answer.values) - leaves
    assert abs(noise.std() / scales.sigma_g - 1) < 0.1 and abs(noise.mean()) < 4 * scales.sigma_g / math.sqrt(
        2000
    )
    assert state.train_spent == pytest.approx(rho_g)


def test_noise_past_the_training_budget_is_refused_and_a_restart_gets_the_same_answers(desk, tmp_path):
    request, state = admitted(desk, tmp_path)
    half = state.train_rho / 2
    ask = NoiseRequest(kind="gaussian", values=[1.0, 2.0], bound=1.0, rho=half)
    first = [
        desk.noise(request, state, ask),
        desk.noise(request, state, ask.model_copy(update={"kind": "top1"})),
    ]
    with pytest.raises(Refusal) as past:
        desk.noise(request, state, ask.model_copy(update={"rho": half / 100}))
    assert past.value.code == "invalid_worker_report"
    spent = desk.ledger.spent("alice", "d")
    _, again = admitted(desk, tmp_path)  # the same job admitted again after a restart
    assert desk.ledger.spent("alice", "d") == spent, "not charged twice"
    replay = [
        desk.noise(request, again, ask),
        desk.noise(request, again, ask.model_copy(update={"kind": "top1"})),
    ]
    assert replay == first, "no fresh noise for the same job"
    assert first[1].index in (0, 1) and len(first[0].values) == 2


class Recorded:
    """An execution that records what the parent sends it and whether it was stopped."""

    def __init__(self):
        self.sent: list = []
        self.killed = False

    def reply(self, message) -> None:
        self.sent.append(message)

    def kill(self) -> None:
        self.killed = True


def test_a_worker_that_asks_past_its_budget_ends_its_job(desk, tmp_path):
    request, _ = admitted(desk, tmp_path, "j9")
    execution = Recorded()
    talk = Conversation(desk, request, tmp_path, execution)
    sets = {"training": "training.roaring", "evaluation": "evaluation.roaring"}
    counts = {
        "train": SplitCounts(rows=4000, classes={"0": 2000, "1": 2000}),
        "eval": SplitCounts(rows=1000, classes={"0": 500, "1": 500}),
    }
    assert talk.handle(Admission(counts=counts, row_sets=sets, table_rows=10_000)) is None
    rho = desk.policy("d").dp_rho_train
    assert talk.handle(NoiseRequest(kind="gaussian", values=[5.0], bound=1.0, rho=rho * 0.9)) is None
    final = talk.handle(NoiseRequest(kind="gaussian", values=[5.0], bound=1.0, rho=rho * 0.2))
    assert final is not None and final.error is not None and final.error[0] == "invalid_worker_report"
    assert execution.killed
    assert isinstance(execution.sent[0], Decision) and isinstance(execution.sent[1], NoiseAnswer)
    assert len(execution.sent) == 2, "no answer past the budget"
