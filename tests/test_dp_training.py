"""Mode dp trains with the DP trainer: a job on the real server (HTTP) returns what training cost, the
release desk answers its noise with OpenDP at the scale the proof says, the accountant's total is what
the ledger charged, and a worker that asks past its training budget, or for anything but the next
release of the plan it declared (the trainer's own settings), ends its job."""

from __future__ import annotations

import math
import multiprocessing
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import xgboost as xgb
from pyroaring import BitMap
from sklearn.pipeline import make_pipeline

from remote_magic import package_model
from remote_magic.client.errors import RemoteError, RemoteMagicError
from remote_magic.contract.codes import Refusal
from remote_magic.families.dpboost import Column, Coordinator, Features, Partition, local
from remote_magic.families.dpboost.family import SKETCH_SHARE
from remote_magic.families.dpboost.schedule import releases
from remote_magic.families.dpboost.settings import DEFAULT_ROUNDS, LARGE_ROUNDS
from remote_magic.families.dpboost.settings import Settings as TrainerSettings
from remote_magic_server.audit import AuditLog
from remote_magic_server.config.settings import DatasetConfig, Settings
from remote_magic_server.jobs.conversation import Conversation, drive
from remote_magic_server.jobs.local_executor import LocalExecution
from remote_magic_server.privacy import dp
from remote_magic_server.protocol import (
    Admission,
    Decision,
    Failure,
    NoiseAnswer,
    NoiseAnswers,
    NoiseBatch,
    NoiseRequest,
    SplitCounts,
    TrainingPlan,
    noise_frame,
)
from remote_magic_server.release.desk import ReleaseDesk, Request
from remote_magic_server.release.ledger import Ledger
from remote_magic_server.runner.channel import Channel
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


def admitted(desk: ReleaseDesk, folder: Path, job: str = "j1", **request_fields):
    sets = {"training": BitMap(range(4000)), "evaluation": BitMap(range(4000, 5000))}
    for role, bits in sets.items():
        (folder / f"{role}.roaring").write_bytes(bits.serialize())
    admission = Admission(counts=COUNTS, row_sets={r: f"{r}.roaring" for r in sets}, table_rows=10_000)
    fields = {"user": "alice", "spec": {"dataset": "d", "label": "y"}, **request_fields}
    request = Request(dataset="d", kind="train", job_id=job, **fields)
    return request, desk.admit(request, admission, folder)


COUNTS = {
    "train": SplitCounts(rows=4000, classes={"0": 2000, "1": 2000}),
    "eval": SplitCounts(rows=1000, classes={"0": 500, "1": 500}),
}
# No intercept and no split selection: the plan's releases are each round's gradient and hessian sums.
LEAVES_ONLY = TrainerSettings(rounds=50, max_depth=6, split_share=0.0, intercept_share=0.0)


def plan_of(settings: TrainerSettings, **more) -> TrainingPlan:
    """A training plan as the worker's channel declares it."""
    fields = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(settings).items()}
    return TrainingPlan(settings=fields, **more)


def test_the_desks_leaf_noise_has_the_sd_the_proof_configures(desk, tmp_path):
    request, state = admitted(desk, tmp_path)
    policy = desk.policy("d")
    assert state.train_rho == pytest.approx(policy.dp_rho_train)
    assert desk.ledger.spent("alice", "d") == pytest.approx(policy.dp_rho_job + policy.dp_rho_train)
    desk.plan_training(request, state, plan_of(LEAVES_ONLY))
    scales = LEAVES_ONLY.scales(policy.dp_rho_train)
    g = LEAVES_ONLY.objective_().gradient_bound  # the logistic loss's clip
    rho_g = g**2 / (2 * scales.sigma_g**2)  # one round's leaf gradients
    leaves = np.full(2000, 37.0)  # many leaves' sums at once: one draw per leaf
    answer = desk.noise(
        request, state, NoiseRequest(kind="gaussian", values=list(leaves), bound=g, rho=rho_g)
    )
    noise = np.asarray(answer.values) - leaves
    assert abs(noise.std() / scales.sigma_g - 1) < 0.1 and abs(noise.mean()) < 4 * scales.sigma_g / math.sqrt(
        2000
    )
    assert state.train_spent == pytest.approx(rho_g)


def test_noise_past_the_plan_is_refused_and_a_restart_gets_the_same_answers(desk, tmp_path):
    request, state = admitted(desk, tmp_path)
    settings = TrainerSettings(rounds=1, max_depth=2, split_share=0.0, intercept_share=0.0)
    desk.plan_training(request, state, plan_of(settings))
    g, h = list(releases(settings, state.train_rho, 0, 0.0, False))
    asks = [
        NoiseRequest(kind="gaussian", values=[1.0, 2.0, 3.0, 4.0], bound=g.bound, rho=g.rho),
        NoiseRequest(kind="gaussian", values=[5.0, 6.0, 7.0, 8.0], bound=h.bound, rho=h.rho),
    ]
    first = [desk.noise(request, state, ask) for ask in asks]
    assert state.train_spent == pytest.approx(state.train_rho)  # the plan spends the whole allowance
    with pytest.raises(Refusal) as past:
        desk.noise(request, state, asks[1].model_copy(update={"rho": h.rho / 100}))
    assert past.value.code == "invalid_worker_report"
    assert desk.ledger.noise_draws(request.charge) == {}, "kept together, not one commit per answer"
    desk.keep_noise(request, state)  # what the job's end does, before anything leaves
    spent = desk.ledger.spent("alice", "d")
    _, again = admitted(desk, tmp_path)  # the same job admitted again after a restart
    assert desk.ledger.spent("alice", "d") == spent, "not charged twice"
    desk.plan_training(request, again, plan_of(settings))
    replay = [desk.noise(request, again, ask) for ask in asks]
    assert replay == first, "no fresh noise for the same job"
    assert len(first[0].values) == 4


def test_a_levels_own_node_splits_are_charged_once_between_them(desk, tmp_path):
    """Each node of the last level chooses its own split (`node_share`); the nodes hold disjoint rows, so
    the desk checks each selection against the plan at its own noise but charges only the first: the
    plan spends the allowance exactly, though its releases' rhos add up to more, and nothing past it."""
    request, state = admitted(desk, tmp_path)
    settings = TrainerSettings(rounds=1, max_depth=2, intercept_share=0.0, node_share=0.5)
    desk.plan_training(request, state, plan_of(settings))
    planned = state.releases or []
    assert [r.kind for r in planned] == ["top1"] * 4 + ["gaussian"] * 2
    assert sum(r.rho for r in planned) > 1.1 * state.train_rho
    for r in planned:
        values = [0.5, 3.0, 1.0] if r.kind == "top1" else [1.0, 2.0, 3.0, 4.0]
        desk.noise(request, state, NoiseRequest(kind=r.kind, values=values, bound=r.bound, rho=r.rho))
    assert state.train_spent == pytest.approx(state.train_rho)
    last = planned[0]
    with pytest.raises(Refusal) as past:
        desk.noise(
            request, state, NoiseRequest(kind="top1", values=[1.0, 2.0], bound=last.bound, rho=last.rho)
        )
    assert past.value.code == "invalid_worker_report"


@pytest.mark.parametrize("count", [4000.0, 1e6])
def test_rounds_left_to_the_row_count_follow_the_count_the_desk_released(desk, tmp_path, count):
    """The plan ends at the intercept until it is answered; then the desk lists the rest from the count
    its own answer gives, so a worker that knows the exact count cannot choose the rounds."""
    request, state = admitted(desk, tmp_path)
    settings = TrainerSettings(rounds=LARGE_ROUNDS, max_depth=2, split_share=0.0, rounds_from_count=True)
    desk.plan_training(request, state, plan_of(settings))
    (intercept,) = state.releases or []
    sums = NoiseRequest(kind="gaussian", values=[count, count / 2], bound=intercept.bound, rho=intercept.rho)
    answer = desk.noise(request, state, sums)
    released = settings.objective_().count(answer.values)
    rounds = settings.for_count(released, state.train_rho).rounds
    assert rounds == (LARGE_ROUNDS if count > 1e5 else DEFAULT_ROUNDS)  # 4,000 rows: a small sample here
    assert state.releases == list(releases(settings, state.train_rho, 0, 0.0, False, released))
    assert len(state.releases) == 1 + 2 * rounds
    assert sum(r.rho for r in state.releases) == pytest.approx(state.train_rho)
    other = LARGE_ROUNDS + DEFAULT_ROUNDS - rounds  # the leaves' noise of the rounds not chosen
    g = releases(replace(settings, rounds=other, rounds_from_count=False), state.train_rho, 0, 0.0, False)
    asked = list(g)[1]
    with pytest.raises(Refusal) as refused:
        desk.noise(
            request, state, NoiseRequest(kind="gaussian", values=[1.0], bound=asked.bound, rho=asked.rho)
        )
    assert refused.value.code == "invalid_worker_report"


@pytest.mark.parametrize(
    "ask",
    [
        {"bound": 0.25},  # the gradient sums stated with the hessian's smaller bound: less noise
        {"rho": 1e-3},  # another rho than the plan's
        {"kind": "top1"},
    ],
)
def test_a_request_that_is_not_the_plans_next_release_is_refused(desk, tmp_path, ask):
    request, state = admitted(desk, tmp_path)
    desk.plan_training(request, state, plan_of(LEAVES_ONLY))
    g = next(releases(LEAVES_ONLY, state.train_rho, 0, 0.0, False))
    honest = NoiseRequest(kind="gaussian", values=[3.0] * 64, bound=g.bound, rho=g.rho)
    with pytest.raises(Refusal) as refused:
        desk.noise(request, state, honest.model_copy(update=ask))
    assert refused.value.code == "invalid_worker_report"
    assert state.train_spent == 0.0 and state.noise_asked == 0, "nothing drawn"


def test_noise_before_a_plan_and_a_plan_that_does_not_fit_the_job_are_refused(desk, tmp_path):
    request, state = admitted(desk, tmp_path)
    g = next(releases(LEAVES_ONLY, state.train_rho, 0, 0.0, False))
    with pytest.raises(Refusal, match="plan does not make"):
        desk.noise(request, state, NoiseRequest(kind="gaussian", values=[1.0], bound=g.bound, rho=g.rho))
    regression = TrainerSettings(objective="reg:squarederror", label_range=(0.0, 1.0), rounds=5)
    sketching = {"sketched": ["not_a_feature"], "sketch_rho": 0.01}
    for plan in (
        plan_of(regression),
        plan_of(LEAVES_ONLY, **sketching),
        plan_of(LEAVES_ONLY, continuing=True),
    ):
        if plan.continuing:  # a valid plan: the second one for the same job is refused
            desk.plan_training(request, state, plan)
        with pytest.raises(Refusal) as refused:
            desk.plan_training(request, state, plan)
        assert refused.value.code == "invalid_worker_report"


@pytest.mark.parametrize(
    "settings",
    [
        TrainerSettings(rounds=7, max_depth=3, batch_size=3),
        TrainerSettings(rounds=4, max_depth=3, node_splits=True),
        TrainerSettings(rounds=3, max_depth=3, node_share=0.5),
        TrainerSettings(objective="multi:softprob", num_class=3, rounds=3, max_depth=2, batch_size=2),
        TrainerSettings(objective="reg:squarederror", label_range=(0.0, 4.0), rounds=3, split_share=0.0),
    ],
)
@pytest.mark.parametrize("batched", [False, True])
def test_the_coordinator_asks_exactly_the_releases_its_schedule_lists(settings, batched):
    """The parent's check rests on this: the schedule (from settings alone) is what training asks,
    in the same order whether a batch's gradient and hessian sums go in one message or two."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=600)
    y = (
        rng.integers(0, max(2, settings.num_class), 600)
        if settings.label_range is None
        else rng.uniform(0, 4, 600)
    )
    features = Features((Column("x", "numeric", tuple(np.linspace(-2, 2, 9, dtype=np.float32).tolist())),))
    asked: list[tuple[str, float, float]] = []

    def noise(values, l2, rho):
        asked.append(("gaussian", l2, rho))
        return values

    def select(scores, linf, rho):
        asked.append(("top1", linf, rho))
        return 0

    batches: list[int] = []

    def noise_many(asks):
        batches.append(len(asks))
        return [noise(*ask) for ask in asks]

    partition = Partition(features, pa.table({"x": x}), y, settings.objective_())
    coordinator = Coordinator(features, settings, 0.5, noise, None, select, noise_many if batched else None)
    released = coordinator.run(*local([partition]))
    planned = [(r.kind, r.bound, r.rho) for r in releases(settings, 0.5, 0, 0.0, False)]
    assert len(asked) == len(planned) and released.rho == pytest.approx(0.5)
    batched_rounds = -(-settings.rounds // settings.batch_size)
    assert batches == ([2] * batched_rounds if batched else []), "one message per batch's leaves"
    for (kind, bound, rho), (want_kind, want_bound, want_rho) in zip(asked, planned):
        assert kind == want_kind and bound == pytest.approx(want_bound) and rho == pytest.approx(want_rho)


class Recorded:
    """An execution that records what the parent sends it and whether it was stopped."""

    def __init__(self):
        self.sent: list = []
        self.killed = False

    def reply(self, message) -> None:
        self.sent.append(message)

    def kill(self) -> None:
        self.killed = True


def talking(desk: ReleaseDesk, folder: Path, job: str, settings: TrainerSettings):
    """A job's conversation with the desk, its rows admitted and its training plan declared."""
    request, _ = admitted(desk, folder, job)
    execution = Recorded()
    talk = Conversation(desk, request, folder, execution)
    sets = {"training": "training.roaring", "evaluation": "evaluation.roaring"}
    assert talk.handle(Admission(counts=COUNTS, row_sets=sets, table_rows=10_000)) is None
    assert talk.handle(plan_of(settings)) is None
    return request, execution, talk


def test_a_worker_that_asks_past_its_plan_ends_its_job(desk, tmp_path):
    request, execution, talk = talking(desk, tmp_path, "j9", LEAVES_ONLY)
    g = next(releases(LEAVES_ONLY, desk.policy("d").dp_rho_train, 0, 0.0, False))
    assert talk.handle(NoiseRequest(kind="gaussian", values=[5.0], bound=g.bound, rho=g.rho)) is None
    final = talk.handle(NoiseRequest(kind="gaussian", values=[5.0], bound=0.01, rho=g.rho))
    assert final is not None and final.error is not None and final.error[0] == "invalid_worker_report"
    assert execution.killed
    assert isinstance(execution.sent[0], Decision) and isinstance(execution.sent[1], NoiseAnswer)
    assert len(execution.sent) == 2, "no answer to a request off the plan"
    assert desk.ledger.noise_draws(request.charge).keys() == {0}, "the answer given is kept at the end"


def test_a_noise_batch_is_checked_and_charged_as_its_requests_one_by_one(desk, tmp_path, monkeypatch):
    """...and drawn by one OpenDP call (`dp.gaussians`), each request with its own sd."""
    settings = TrainerSettings(rounds=2, max_depth=2, split_share=0.0, intercept_share=0.0)
    request, execution, talk = talking(desk, tmp_path, "j10", settings)
    g, h, *_ = releases(settings, desk.policy("d").dp_rho_train, 0, 0.0, False)
    asks = [
        NoiseRequest(kind="gaussian", values=[1.0, 2.0, 3.0, 4.0], bound=g.bound, rho=g.rho),
        NoiseRequest(kind="gaussian", values=[5.0, 6.0, 7.0, 8.0], bound=h.bound, rho=h.rho),
    ]
    calls = []
    gaussian = dp.gaussian
    monkeypatch.setattr(dp, "gaussian", lambda *args: calls.append(args[1:]) or gaussian(*args))
    assert talk.handle(NoiseBatch(requests=asks)) is None
    ((bound, rho),) = calls  # one draw, at the batch's rho, its bound sqrt(2 rho) rounded up
    assert rho == pytest.approx(g.rho + h.rho, rel=1e-12)
    assert math.sqrt(2 * rho) <= bound == pytest.approx(math.sqrt(2 * rho), rel=1e-8)
    (answers,) = execution.sent[1:]
    assert isinstance(answers, NoiseAnswers) and [len(a.values) for a in answers.answers] == [4, 4]
    assert talk.admitted is not None and talk.admitted.noise_asked == 2
    assert talk.admitted.train_spent == pytest.approx(g.rho + h.rho)
    assert talk.admitted.sigmas == [dp.sigma(g.bound, g.rho), dp.sigma(h.bound, h.rho)]
    # The next batch states the hessian sums with less noise than the plan's: the job ends, unanswered.
    final = talk.handle(NoiseBatch(requests=[asks[0], asks[1].model_copy(update={"bound": 0.01})]))
    assert final is not None and final.error is not None and final.error[0] == "invalid_worker_report"
    assert execution.killed and len(execution.sent) == 2, "no answer to a batch with a request off the plan"
    assert len(calls) == 1, "nothing of a batch with a request off the plan is drawn"
    assert desk.ledger.noise_draws(request.charge).keys() == {0, 1}, "every answer drawn is kept"


# One split per round (depth 1, no intercept): the plan's releases are a top-1, then the leaves' sums.
SELECTING = TrainerSettings(rounds=1, max_depth=1, intercept_share=0.0)


def _one_frame(size: int, values: list[float], kind: str = "top1") -> bytes:
    """A noise frame whose header says `size` values (or, with kind "two", two requests unbatched)."""
    select = next(releases(SELECTING, 1.0, 0, 0.0, False))
    frame = noise_frame([("top1", values, select.bound, select.rho)], batch=False)
    header_end = 5 + int.from_bytes(frame[1:5], "little")
    header = frame[5:header_end].replace(b'"size":%d' % len(values), b'"size":%d' % size)
    if kind == "two":
        another = b'{"kind":"top1","size":1,"bound":1.0,"rho":1.0},'
        header = header.replace(b'"requests":[', b'"requests":[' + another)
    return frame[:1] + len(header).to_bytes(4, "little") + header + frame[header_end:]


MALFORMED = {
    "values short of the header": lambda: _one_frame(4, [1.0, 2.0, 3.0]),
    "values past the header": lambda: _one_frame(2, [1.0, 2.0, 3.0]),
    "a value not a number": lambda: _one_frame(3, [1.0, float("nan"), 3.0]),
    "an infinite value": lambda: _one_frame(3, [1.0, float("inf"), 3.0]),
    "two requests not batched": lambda: _one_frame(4, [1.0, 2.0, 3.0], kind="two"),
    "a header cut short": lambda: _one_frame(3, [1.0, 2.0, 3.0])[:9],
}


def _converse(desk: ReleaseDesk, request: Request, folder: Path, target, args: tuple):
    """Run `target(conn, admission, *args)` as a forked worker talking to a real `Conversation` with the
    desk; (its final, the conversation, the worker process)."""
    sets = {"training": "training.roaring", "evaluation": "evaluation.roaring"}
    rows = Admission(counts=COUNTS, row_sets=sets, table_rows=10_000)
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe(duplex=True)
    worker = context.Process(target=target, args=(theirs, rows, *args))
    worker.start()
    theirs.close()
    execution = LocalExecution(worker, ours)
    talk = Conversation(desk, request, folder, execution)
    try:
        final = drive(execution, talk.handle, time.monotonic() + 60, 60)
    finally:
        execution.close()
    return final, talk, worker


def _asking(conn, admission: Admission, plan: TrainingPlan, select: tuple[float, float], bad: bytes) -> None:
    """A worker that is admitted, declares its plan, asks its first selection as a channel does, then
    sends `bad` and waits on the pipe until the parent stops it (no answer may come)."""
    channel = Channel(conn)
    channel.admit(admission)
    channel.send(plan)
    channel.select([0.5, 3.0, 1.0], *select)
    conn.send_bytes(bad)
    conn.poll(60)


@pytest.mark.parametrize("bad", list(MALFORMED))
def test_a_malformed_noise_frame_ends_the_job_unanswered_and_uncharged(desk, tmp_path, bad):
    """A noise frame crosses the pipe as raw float64 after a JSON header: the parent reads it as strictly as
    a JSON request (the values' length is the header's, every value finite, one request unless batched),
    and one that is not well formed ends the job with `invalid_worker_report`, nothing drawn for it."""
    request, _ = admitted(desk, tmp_path, "j11")
    select = next(releases(SELECTING, desk.policy("d").dp_rho_train, 0, 0.0, False))
    args = (plan_of(SELECTING), (select.bound, select.rho), MALFORMED[bad]())
    final, talk, worker = _converse(desk, request, tmp_path, _asking, args)
    assert final.error is not None and final.error[0] == "invalid_worker_report"
    assert worker.exitcode == -9, "the worker was stopped"
    assert talk.admitted is not None and talk.admitted.noise_asked == 1, "the well-formed selection only"
    assert talk.admitted.train_spent == pytest.approx(select.rho)


def _nodes_together(conn, admission: Admission, plan: TrainingPlan, asks: list) -> None:
    """A worker whose last level's node selections go in one `select_many`, as a large sample's do; it
    reports the indices it got as a failure's message, which the test reads."""
    channel = Channel(conn)
    channel.admit(admission)
    channel.send(plan)
    top1 = [r for r in asks if r.kind == "top1"]
    scores = [np.array([0.5, 3.0, 1.0])] * len(top1)
    chosen = [channel.select(scores[0], top1[0].bound, top1[0].rho)]
    chosen.append(channel.select(scores[1], top1[1].bound, top1[1].rho))
    chosen += channel.select_many([(s, r.bound, r.rho) for s, r in zip(scores[2:], top1[2:], strict=True)])
    channel.noise_many([([1.0, 2.0, 3.0, 4.0], r.bound, r.rho) for r in asks if r.kind == "gaussian"])
    channel.send(Failure(code="unsupported_model", message=" ".join(map(str, chosen))))
    conn.poll(60)


def test_a_levels_node_selections_asked_together_are_checked_and_charged_as_one_by_one(desk, tmp_path):
    """The channel's `select_many` sends a level's node selections in one batch; the parent checks each
    against the plan as if it came alone, answers each with an index, and charges the nodes once."""
    request, _ = admitted(desk, tmp_path, "j12")
    settings = TrainerSettings(rounds=1, max_depth=2, intercept_share=0.0, node_share=0.5)
    planned = list(releases(settings, desk.policy("d").dp_rho_train, 0, 0.0, False))
    final, talk, _ = _converse(desk, request, tmp_path, _nodes_together, (plan_of(settings), planned))
    assert final.error is not None and final.error[0] == "unsupported_model", final.error
    assert [int(i) in range(3) for i in final.error[1].split()] == [True] * 4
    assert talk.admitted is not None and talk.admitted.noise_asked == len(planned) == 6
    assert talk.admitted.train_spent == pytest.approx(talk.admitted.train_rho)


def _sending(conn, frame: bytes) -> None:
    conn.send_bytes(frame)
    conn.close()


def test_a_release_larger_than_16_mib_reaches_the_parent():
    """Found by review (rev3 #2): the parent read at most 16 MiB a message, so a describe over a text
    column with more than about 2,097,136 distinct admitted values failed, exactly when one more row
    was in (10/10). The cap is now the worker's memory, which the owner sets."""
    values = np.arange(2_200_000, dtype=np.float64)  # 17.6 MB of values
    context = multiprocessing.get_context("fork")
    ours, theirs = context.Pipe(duplex=True)
    sender = context.Process(
        target=_sending, args=(theirs, noise_frame([("gaussian", values, 1.0, 0.01)], False))
    )
    sender.start()
    theirs.close()
    execution = LocalExecution(sender, ours, memory_mb=1024)
    try:
        deadline = time.monotonic() + 60
        message = None
        while message is None and time.monotonic() < deadline:
            message = execution.receive(1.0)
    finally:
        execution.close()
    assert isinstance(message, NoiseRequest) and np.array_equal(message.values, values)


def test_a_sketch_asked_again_gets_its_noisy_counts_again_and_is_charged_as_before(desk, tmp_path):
    """The sketch answers a public question (the user's spec and features on one dataset version): the
    next training that asks it is charged the same and gets the same noisy counts, not fresh noise."""
    settings = TrainerSettings(rounds=1, max_depth=2, split_share=0.0, intercept_share=0.0)
    counts = [float(n) for n in range(2048)]

    def sketch(job: str, user: str = "alice", **more) -> tuple[list[float], float]:
        fields = {"features": ("x", "z"), "dataset_version": 3, "user": user, **more}
        request, state = admitted(desk, tmp_path, job, **fields)
        plan = plan_of(settings, sketched=["x"], sketch_rho=0.1 * state.train_rho)
        desk.plan_training(request, state, plan)
        first = next(releases(settings, state.train_rho, 1, plan.sketch_rho, False))
        ask = NoiseRequest(kind="gaussian", values=counts, bound=first.bound, rho=first.rho)
        answer = desk.noise(request, state, ask).values
        assert state.train_spent == pytest.approx(first.rho) and state.sigmas == [dp.sigma(1.0, first.rho)]
        return answer, desk.ledger.rho_of(request.charge)

    drawn, charged = sketch("j1")
    again, charged_again = sketch("j2")
    assert again == drawn and charged_again == pytest.approx(charged), "the same answer, the same charge"
    assert sketch("j3", spec={"dataset": "d", "label": "y", "where": "x > 0"})[0] != drawn
    assert sketch("j4", dataset_version=4)[0] != drawn
    assert sketch("j5", user="bob")[0] != drawn, "never another analyst's answer"
    assert sketch("j6", dataset_version=None)[0] != drawn
    owner = desk.settings.datasets["d"]
    desk.settings.datasets["d"] = owner.model_copy(update={"column_ranges": {"z": (0.0, 10.0)}})
    assert sketch("j7")[0] != drawn, "the owner's declarations set the grid: a changed one is a new question"


def test_a_filter_that_leaves_a_text_column_one_level_trains_a_model_xgboost_loads(server):
    """`region` is an undeclared text column: filtered to one level, its level subsets were masked to
    that level, some empty, and XGBoost refused the model after the job was charged (`not_released`,
    advising min_child_weight), 1 job in 3 (rev11 #2). The model now loads and scores."""
    client = server.client()
    spec = {**QUICK, "where": "region = 'north'"}
    for seed in range(3):
        model = xgb.XGBClassifier(n_estimators=20, max_depth=4, random_state=seed)
        result = client.train(model, spec)
        assert result.raw.training is not None and result.raw.training.trees == 20
        assert result.metrics["auc"] > 0.6
    alone = client.train(xgb.XGBClassifier(n_estimators=4, max_depth=2), {**spec, "features": ["region"]})
    assert alone.raw.training.trees == 4, "the one-level column alone trains, not fails after charging"


@pytest.mark.parametrize(
    "params", [dict(max_bin=64), dict(eval_metric="aucpr"), dict(tree_method="exact"), dict(missing=-1.0)]
)
def test_a_parameter_the_dp_trainer_would_ignore_is_refused_by_name_before_anything_is_spent(
    server, shell, params
):
    """Submitted, priced (`Client.cost`) or dry-run, a model whose parameter the DP trainer has no use
    for is refused naming it and why, and the budget is untouched."""
    client = server.client()
    spent = client.budget()["synthetic"].rho_spent
    (name,) = params
    model = xgb.XGBClassifier(n_estimators=3, max_depth=2, **params)
    with pytest.raises(RemoteError, match=name) as submitted:  # eval_metric: the server's allowlist first
        client.submit(model, QUICK).result(timeout=600)
    with pytest.raises(RemoteError, match=name) as priced:  # the same check as submit's, first
        client.cost(model, QUICK)
    assert submitted.value.code == priced.value.code == "parameter_out_of_bounds"
    shell.user_ns["odd"] = model
    ran = shell.run_cell("%%remote_train -d synthetic -l label --dry-run -m odd\nodd")
    assert isinstance(ran.error_in_exec, RemoteMagicError) and name in str(ran.error_in_exec)
    assert client.budget()["synthetic"].rho_spent == spent


def test_a_misspelt_parameter_is_refused_by_name_with_the_nearest_before_any_job_exists(server, shell):
    """`XGBClassifier(n_estimator=50)` crashed with a bare KeyError in the dry run and `Client.cost`, and
    failed `internal_error` on the server after a job existed (rev11 #1). Now each refuses it by name
    with XGBoost's nearest name, before anything is spent; sent as raw bytes, the worker says the same."""
    client = server.client()
    spent, jobs = client.budget()["synthetic"].rho_spent, len(client.jobs())
    model = xgb.XGBClassifier(n_estimator=50, max_depth=3)
    near = r"n_estimator \(did you mean n_estimators\?\)"
    for attempt in (lambda: client.cost(model, QUICK), lambda: client.submit(model, QUICK)):
        with pytest.raises(RemoteError, match=near) as refused:
            attempt()
        assert refused.value.code == "parameter_out_of_bounds"
    assert len(client.jobs()) == jobs, "refused before any job exists"
    shell.user_ns["typo"] = model
    ran = shell.run_cell("%%remote_train -d synthetic -l label --dry-run -m typo\ntypo")
    assert isinstance(ran.error_in_exec, RemoteMagicError) and "did you mean n_estimators" in str(
        ran.error_in_exec
    )
    sent = server.submit_raw(package_model(model), QUICK, "alice")
    with pytest.raises(RemoteError, match=near) as failed:
        client.job(sent.json()["id"]).result(timeout=600)
    assert failed.value.code == "parameter_out_of_bounds"
    assert client.budget()["synthetic"].rho_spent == spent


def test_a_one_step_pipeline_is_priced_as_its_estimator(server):
    """`make_pipeline(XGBClassifier())` crashed (`KeyError: 'steps'`) in `Client.cost` (rev11 #1)."""
    client = server.client()
    bare = client.cost(xgb.XGBClassifier(n_estimators=3, max_depth=2), QUICK)
    piped = client.cost(make_pipeline(xgb.XGBClassifier(n_estimators=3, max_depth=2)), QUICK)
    assert piped.training == bare.training and piped.rho == bare.rho


def test_parameters_that_change_nothing_the_dp_trainer_does_are_accepted(server):
    """Harmless parameters and metrics mode dp releases anyway are priced like the bare model."""
    client = server.client()
    bare = client.cost(xgb.XGBClassifier(n_estimators=3), QUICK)
    harmless = xgb.XGBClassifier(
        n_estimators=3, eval_metric="auc", min_child_weight=50, n_jobs=1, tree_method="hist", max_bin=256
    )
    priced = client.cost(harmless, QUICK)
    assert priced.training == bare.training and priced.rho == bare.rho and priced.notes == bare.notes
