"""One DP model over three data owners' servers: real servers on loopback, each its own config, token,
table and ledger (tests/federated_servers.py); the client's coordinator talks to them over HTTP."""

from __future__ import annotations

import itertools
import math
import secrets
import subprocess
import sys
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import requests
import xgboost as xgb
from sklearn.metrics import roc_auc_score

import remote_magic
from remote_magic import FederatedError
from remote_magic.client import federated
from remote_magic.client.federated_checks import (
    check_agreement,
    public_features,
    servers_of,
    settings_of,
)
from remote_magic.contract.wire import DatasetSpec, FederatedStepRequest
from remote_magic.families.dpboost import Coordinator, Features, Settings
from remote_magic.families.dpboost.candidates import SKETCH_SHARE, quantile_candidates, range_grids
from remote_magic.families.dpboost.prior import column_weights, federated_prior, sketch_bound
from remote_magic_server.jobs.sessions import Session, Sessions
from tests.federated_servers import RANGES, owners, split_table

RHO_TRAIN = 0.5
RHO_JOB = 0.01  # the evaluation's releases (the policy's default dp_rho_job)
ROUNDS, BATCH = 12, 4
POLICY = f"dp_rho_train = {RHO_TRAIN}"
SPEC = {"dataset": "visits", "label": "label"}


@pytest.fixture(scope="module")
def table_and_parts():
    return split_table(9000)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, table_and_parts):
    """Owners a, b, c (mode dp, same schema); d in mode rules; e whose `visits` column is text."""
    _, parts = table_and_parts
    more = dict(parts)
    more["d"] = parts["c"]
    more["e"] = parts["c"].assign(visits=parts["c"]["visits"].astype(str))
    root = tmp_path_factory.mktemp("owners")
    config = {name: {"extra": POLICY} for name in more}
    config["d"]["privacy"] = "rules"
    with owners(root, more, **config) as started:
        yield started


def clients(servers, *names):
    return {name: servers[name].client() for name in names}


def charges(server) -> Counter:
    """How many charges of each kind the analyst has on the server's `visits` (a ledger lists charges
    made in the same second in no particular order, so tests compare counts and sums)."""
    report = server.client().budget().report
    return Counter(c.kind for d in report.datasets if d.dataset == "visits" for c in d.charges)


def priced(server) -> Counter:
    """How many charges of each kind and rho (to 6 places) the analyst has on the server's `visits`."""
    report = server.client().budget().report
    return Counter(
        (c.kind, round(c.rho, 6)) for d in report.datasets if d.dataset == "visits" for c in d.charges
    )


def evaluated(server) -> tuple[int, set[str]]:
    """The analyst's evaluate charges on the server's `visits`: how many name no job (a training's final
    evaluation from its session), and the jobs of the others (evaluate jobs)."""
    report = server.client().budget().report
    found = [
        c.job_id for d in report.datasets if d.dataset == "visits" for c in d.charges if c.kind == "evaluate"
    ]
    return found.count(None), {job for job in found if job is not None}


def spent(server) -> float:
    report = server.client().budget().report
    return sum(d.rho_spent for d in report.datasets if d.dataset == "visits")


def model(seed: int = 3) -> xgb.XGBClassifier:
    """The analyst's model; a new `seed` draws a new structure (the same request again is answered from
    the ledger, at no cost)."""
    return xgb.XGBClassifier(n_estimators=ROUNDS, max_depth=4, learning_rate=0.3, random_state=seed)


def test_three_servers_train_one_model_and_each_ledger_is_charged_exactly_its_share(
    servers, table_and_parts, monkeypatch
):
    """Server a restarts after the first batch: its session is gone, its next step stages again, and
    the training ends as if nothing happened. Server c restarts after the last batch: its final
    evaluation runs as an evaluate job, where a's and b's come from their sessions, charged the same."""
    table, _ = table_and_parts
    staged: dict[str, list[bool]] = {name: [] for name in "abc"}
    last = {}
    post = federated._post_step

    def spied(server, body, whole):
        answer = post(server, body, whole)
        staged[server.name].append(answer.staged)
        last[server.name] = body
        return answer

    def restart_a(done: int, rounds: int) -> None:
        for server, after in (("a", BATCH), ("c", ROUNDS)):
            if done == after:
                servers[server].stop()
                servers[server].start()

    monkeypatch.setattr(federated, "_post_step", spied)
    before = {name: (charges(servers[name]), spent(servers[name])) for name in "abc"}
    before_evaluated = {name: evaluated(servers[name]) for name in "abc"}
    before_priced = {name: priced(servers[name]) for name in "abc"}
    result = remote_magic.federated_train(
        model(), SPEC, clients(servers, "a", "b", "c"), batch_size=BATCH, on_batch=restart_a
    )

    assert result.trees == ROUNDS and result.round_trips == math.ceil(ROUNDS / BATCH) == 3
    # A training's sketch stages its rows, and its first step bins them to the sketch's candidates; the
    # next ones send only the previous batch's leaves and take its session; a restart drops it, and the
    # client sends that step again with the whole model, which stages.
    assert staged == {"a": [False, True, False], "b": [False, False, False], "c": [False, False, False]}
    # The model is a DP release the analyst holds: it predicts the whole table far better than chance.
    frame = table.drop(columns=["id", "label"]).assign(region=lambda f: f["region"].astype("category"))
    booster = result.estimator.get_booster()
    levels = booster.get_categories(export_to_arrow=True).to_arrow()
    frame["region"] = frame["region"].cat.set_categories([str(v) for v in dict(levels)["region"].to_pylist()])
    scores = result.estimator.predict_proba(frame)[:, 1]
    assert roc_auc_score(table["label"], scores) > 0.7
    # Each server paid for its own sketch (SKETCH_SHARE of the training's rho) and each batch its share
    # of the rest: the training's rho exactly, and the evaluation's.
    share = round((1 - SKETCH_SHARE) * RHO_TRAIN * BATCH / ROUNDS, 6)
    sketch = round(SKETCH_SHARE * RHO_TRAIN, 6)
    for name in "abc":
        counted, was = before[name]
        assert charges(servers[name]) - counted == Counter(sums=result.round_trips + 1, evaluate=1)
        assert priced(servers[name]) - before_priced[name] == Counter(
            {("sums", sketch): 1, ("sums", share): result.round_trips, ("evaluate", RHO_JOB): 1}
        )
        assert spent(servers[name]) - was == pytest.approx(RHO_TRAIN + RHO_JOB, abs=1e-5)
    # a and b scored the final model from their sessions (a charge of no job); c, whose session the
    # restart dropped, with an evaluate job: the same kind and rho on every ledger.
    after = {name: evaluated(servers[name]) for name in "abc"}
    assert [after[name][0] - before_evaluated[name][0] for name in "abc"] == [1, 1, 0]
    jobs = {name: after[name][1] - before_evaluated[name][1] for name in "abc"}
    assert jobs == {"a": set(), "b": set(), "c": {result.owners[2].evaluation.job_id}}
    assert [o.evaluation.job_id.startswith("federated-") for o in result.owners] == [True, True, False]
    owners_out = {o.name: o for o in result.owners}
    assert set(owners_out) == {"a", "b", "c"}
    for owner in owners_out.values():
        assert owner.batches == result.round_trips and owner.rho_train == pytest.approx(RHO_TRAIN, abs=1e-5)
        assert "auc" in owner.evaluation.metrics and owner.rows and owner.rows > 0
        assert owner.rho_left is not None and owner.rho_left < 50.0
    value, half = result.pooled["auc"]
    assert 0.5 < value <= 1.0 and half > 0
    assert "pooled" in repr(result) and "remote-magic-federated" in result._repr_html_()
    # The client ended the training on every server: its last step, sent again, finds no session.
    again = servers["b"].post("/federated/sums", json=last["b"].model_dump(mode="json"))
    assert again.status_code == 409 and again.json()["error"]["code"] == "federated_session_gone"


def test_a_server_in_mode_rules_is_refused_by_name_before_anything_is_spent(servers):
    before = {name: charges(servers[name]) for name in "ab"}
    with pytest.raises(FederatedError, match=r"^d: .*mode rules") as refused:
        remote_magic.federated_train(model(), SPEC, clients(servers, "a", "b", "d"), batch_size=BATCH)
    assert refused.value.connection == "d"
    assert {name: charges(servers[name]) for name in "ab"} == before


def first_step(
    servers, names, rho: float = RHO_TRAIN, seed: int = 5, candidates: dict | None = None
) -> FederatedStepRequest:
    """The first step's request as the coordinator would send it, built from the servers' catalogs
    (`candidates`: some numeric columns' in place of the declared ranges')."""
    spec = DatasetSpec.model_validate(SPEC)
    found = servers_of(clients(servers, *names), spec)
    columns = public_features(found, *check_agreement(found, spec))
    chosen = candidates or {}
    columns = [c.model_copy(update={"candidates": list(chosen.get(c.name, c.candidates))}) for c in columns]
    settings = settings_of(model(seed), BATCH)
    trainer = Settings(**settings.model_dump(exclude={"base_margin"}), split_share=0.0, intercept_share=0.0)
    coordinator = Coordinator(
        Features.from_dict({"columns": [c.model_dump() for c in columns]}), trainer, rho, lambda v, l2, r: v
    )
    batch = next(iter(coordinator.requests()))
    body = {
        "spec": spec,
        "features": columns,
        "settings": settings,
        "batch": batch.to_dict(),
        "model": coordinator.model().decode(),
        "rho": rho,
    }
    return FederatedStepRequest.model_validate(body)


def two_steps(servers, training: str, seed: int = 9, count: int = 2) -> list[dict]:
    """A training's first steps on server a: the first with the model, the next ones each with the
    previous batch's leaves (any finite values: the server cannot tell)."""
    spec = DatasetSpec.model_validate(SPEC)
    found = servers_of(clients(servers, "a", "b"), spec)
    columns = public_features(found, *check_agreement(found, spec))
    settings = settings_of(model(seed), BATCH)
    trainer = Settings(**settings.model_dump(exclude={"base_margin"}), split_share=0.0, intercept_share=0.0)
    features = Features.from_dict({"columns": [c.model_dump() for c in columns]})
    coordinator = Coordinator(features, trainer, RHO_TRAIN, lambda v, l2, r: v)
    requests_ = coordinator.requests()
    batch = next(requests_)
    common = {
        "spec": SPEC,
        "features": [c.model_dump() for c in columns],
        "settings": settings.model_dump(),
        "rho": RHO_TRAIN,
        "training": training,
    }
    steps = [{**common, "batch": batch.to_dict(), "model": coordinator.model().decode()}]
    while len(steps) < count:
        update = coordinator.release(batch, np.ones((batch.trees, batch.leaves, 2)))
        leaves = update.values.ravel().tolist()
        batch = next(requests_)
        steps.append({**common, "batch": batch.to_dict(), "leaves": leaves, "trees": len(coordinator.trees)})
    return steps


def test_a_server_in_mode_rules_refuses_a_step_itself(servers):
    step = first_step(servers, ["a", "b"])
    answer = servers["d"].post("/federated/sums", json=step.model_dump(mode="json"))
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "federated_needs_dp"


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"rho": 2 * RHO_TRAIN}, "parameter_out_of_bounds"),
        ({"model": "not json"}, "invalid_model"),
        ({"model": '{"learner": {"gradient_booster": 1}}'}, "invalid_request"),
        ({"model": None}, "invalid_request"),
        ({"leaves": [0.0], "trees": 4}, "invalid_request"),
        ({"model": None, "leaves": [1e308, 1e308], "trees": 4, "training": "t" * 32}, "invalid_request"),
        (
            {
                "settings": {
                    "rounds": 100_000,
                    "max_depth": 4,
                    "learning_rate": 0.3,
                    "reg_lambda": 1.0,
                    "batch_size": 4,
                    "grad_share": 0.8,
                    "max_leaf": 2.0,
                }
            },
            "parameter_out_of_bounds",
        ),
    ],
    ids=[
        "rho past the owner's",
        "a model that is not JSON",
        "a model XGBoost cannot load",
        "neither the model nor leaves",
        "both the model and leaves",
        "leaves whose sum is no number",
        "rounds past the bounds",
    ],
)
def test_a_server_checks_a_step_itself_and_charges_nothing_for_a_refused_one(servers, change, code):
    before = charges(servers["a"])
    body = first_step(servers, ["a", "b"]).model_dump(mode="json")
    answer = servers["a"].post("/federated/sums", json={**body, **change})
    assert answer.status_code in (413, 422) and answer.json()["error"]["code"] == code
    assert charges(servers["a"]) == before


def test_a_structure_outside_the_features_or_the_declared_range_is_refused_at_no_cost(servers):
    before = charges(servers["a"])
    body = first_step(servers, ["a", "b"]).model_dump(mode="json")
    wide = [dict(c) for c in body["features"]]
    wide[0]["candidates"] = [-1000.0, *wide[0]["candidates"][1:]]
    answer = servers["a"].post("/federated/sums", json={**body, "features": wide})
    assert answer.json()["error"]["code"] == "invalid_request" and "declared range" in answer.text
    batch = dict(body["batch"])
    batch["feature"] = (np.asarray(batch["feature"]) + 100).tolist()
    answer = servers["a"].post("/federated/sums", json={**body, "batch": batch})
    assert answer.json()["error"]["code"] == "invalid_request"
    assert charges(servers["a"]) == before


def test_a_repeated_step_is_answered_with_the_same_draws_at_no_cost(servers):
    body = first_step(servers, ["a", "b"], seed=6).model_dump(mode="json")
    before = charges(servers["a"])
    first = servers["a"].post("/federated/sums", json=body).json()
    again = servers["a"].post("/federated/sums", json=body).json()
    assert first["gradients"] == again["gradients"] and first["hessians"] == again["hessians"]
    assert charges(servers["a"]) - before == Counter(sums=1)
    assert first["privacy"]["rho"] > 0 and not first["privacy"]["repeated"]
    assert again["privacy"]["rho"] == 0 and again["privacy"]["repeated"]  # what the client adds up


def test_a_server_sketches_its_rows_and_takes_only_the_sketchs_quantiles_as_candidates(servers):
    """The training's sketch on one server: ranges past the owner's declared ones are refused at no
    cost; the same request again is answered with the same draws at no cost; a step naming the sketch
    whose candidates are not its counts' quantiles is refused at no cost, and the first step whose are
    takes the rows the sketch staged, at its batch's share of the training's rho less the sketch's."""
    a = servers["a"]
    declared = first_step(servers, ["a", "b"], seed=7).model_dump(mode="json")
    ranges = {c["name"]: list(RANGES[c["name"]]) for c in declared["features"] if c["kind"] == "numeric"}
    training = secrets.token_urlsafe(24)
    body = {k: declared[k] for k in ("spec", "features", "settings", "rho")}
    body.update(ranges=ranges, training=training)
    before = priced(a)
    wide = a.post("/federated/sketch", json={**body, "ranges": {**ranges, "age": [0, 90]}})
    assert wide.status_code == 422 and "declared range" in wide.json()["error"]["message"]
    assert priced(a) == before
    first = a.post("/federated/sketch", json=body).json()
    again = a.post("/federated/sketch", json=body).json()
    assert first["counts"] == again["counts"] and first["privacy"]["rho"] == pytest.approx(
        SKETCH_SHARE * RHO_TRAIN
    )
    assert again["privacy"]["repeated"] and again["privacy"]["rho"] == 0
    assert len(first["counts"]) == sum(len(g) + 2 for g in range_grids(ranges).grids.values())
    assert priced(a) - before == Counter({("sums", round(SKETCH_SHARE * RHO_TRAIN, 6)): 1})
    quantiles = quantile_candidates(ranges, first["counts"])
    assert quantiles["age"] != tuple(c["candidates"] for c in declared["features"] if c["name"] == "age")[0]
    use = {"ranges": ranges, "counts": first["counts"]}
    # The first step continues the sketch's session (no model: the rows it staged, at the public start);
    # another training's finds none, at no cost.
    opening = {"sketch": use, "model": None, "leaves": [], "trees": 0, "training": training}
    for candidates, status, more in (
        ({**quantiles, "bmi": (20.0, 30.0)}, 422, {}),
        (quantiles, 409, {"training": secrets.token_urlsafe(24)}),
        (quantiles, 200, {}),
    ):
        step = first_step(servers, ["a", "b"], seed=7, candidates=candidates).model_dump(mode="json")
        answer = a.post("/federated/sums", json={**step, **opening, **more})
        assert answer.status_code == status, answer.text
        if status == 422:
            assert (
                "'bmi': its candidates are not the quantiles of the sketch"
                in answer.json()["error"]["message"]
            )
    assert answer.json()["staged"] is False
    share = round((1 - SKETCH_SHARE) * RHO_TRAIN * BATCH / ROUNDS, 6)
    assert answer.json()["privacy"]["rho"] == pytest.approx(share)
    assert priced(a) - before == Counter(
        {("sums", round(SKETCH_SHARE * RHO_TRAIN, 6)): 1, ("sums", share): 1}
    )


def test_a_sketch_with_the_prior_releases_its_gradient_sums_in_the_same_release_at_the_same_rho(servers):
    """The prior's sums follow the counts in the sketch's one Gaussian release: the same rho, a noise sd
    grown as the L2 sensitivity (one count per range, one scaled gradient per scored column), and the
    sums show where the signal is (age drives the label)."""
    a = servers["a"]
    declared = first_step(servers, ["a", "b"], seed=7).model_dump(mode="json")
    ranges = {c["name"]: list(RANGES[c["name"]]) for c in declared["features"] if c["kind"] == "numeric"}
    body = {k: declared[k] for k in ("spec", "features", "settings", "rho")}
    body["ranges"] = ranges
    before = priced(a)
    plain, prior = (
        a.post("/federated/sketch", json={**body, "training": secrets.token_urlsafe(24), **more}).json()
        for more in ({}, {"prior": True})
    )
    asked = federated_prior(ranges, declared["features"], declared["settings"], True)
    counted = sum(len(g) + 2 for g in range_grids(ranges).grids.values())
    assert len(plain["counts"]) == counted and len(prior["counts"]) == counted + asked.size
    assert priced(a) - before == Counter({("sums", round(SKETCH_SHARE * RHO_TRAIN, 6)): 2})
    grown = sketch_bound(ranges, asked) / sketch_bound(ranges, None)
    assert grown == pytest.approx(math.sqrt((len(ranges) + asked.columns) / len(ranges)))
    assert prior["sigma"] == pytest.approx(plain["sigma"] * grown)
    features = Features.from_dict({"columns": declared["features"]})
    weights = column_weights(features, asked, prior["counts"][counted:], prior["sigma"])
    assert weights[features.names.index("age")] == 1.0


def test_a_sketch_answer_without_its_prior_ends_the_training_naming_the_server(servers, monkeypatch):
    """A server whose sketch answer lacks the prior's sums (or has any other length) is named, and no
    step is sent to any server."""
    owners_ = clients(servers, "a", "b", "c")
    asked = owners_["b"].federated_sketch

    def short(body, timeout):
        answer = asked(body, timeout)
        return answer.model_copy(update={"counts": answer.counts[:-1]})

    monkeypatch.setattr(owners_["b"], "federated_sketch", short)
    before = {name: charges(servers[name]) for name in "abc"}
    with pytest.raises(FederatedError, match="its sketch has") as stopped:
        remote_magic.federated_train(model(31), SPEC, owners_, batch_size=BATCH)
    assert stopped.value.connection == "b"
    for name in "abc":  # each paid for its sketch, and nothing after it
        assert charges(servers[name]) - before[name] == Counter(sums=1)


def test_schemas_that_disagree_are_refused_by_name_before_any_cost(servers):
    before = {name: charges(servers[name]) for name in "ab"}
    with pytest.raises(FederatedError, match=r"^e: column 'visits'") as refused:
        remote_magic.federated_train(model(), SPEC, clients(servers, "a", "b", "e"), batch_size=BATCH)
    assert refused.value.connection == "e"
    with pytest.raises(FederatedError, match="needs at least two"):
        remote_magic.federated_train(model(), SPEC, clients(servers, "a"))
    assert {name: charges(servers[name]) for name in "ab"} == before


def test_a_server_stopped_mid_training_ends_it_naming_the_server_charged_only_for_batches_that_ran(servers):
    before = {name: (charges(servers[name]), spent(servers[name])) for name in "abc"}
    stopped = servers["c"]

    def stop_after_first(done: int, rounds: int) -> None:
        if done == BATCH:
            stopped.stop()

    try:
        with pytest.raises(FederatedError, match=r"^c: cannot reach") as ended:
            remote_magic.federated_train(
                model(seed=4),
                SPEC,
                clients(servers, "a", "b", "c"),
                batch_size=BATCH,
                on_batch=stop_after_first,
            )
        assert "c 1" in str(ended.value) and "a 2" in str(ended.value)
    finally:
        stopped.start()
    share = (1 - SKETCH_SHARE) * RHO_TRAIN * BATCH / ROUNDS
    for name, ran in (("a", 2), ("b", 2), ("c", 1)):
        counted, was = before[name]
        # its sketch, then the batches it answered
        assert charges(servers[name]) - counted == Counter(sums=1 + ran), (
            name,
            counted,
            charges(servers[name]),
        )
        assert spent(servers[name]) - was == pytest.approx(SKETCH_SHARE * RHO_TRAIN + ran * share, abs=1e-5)


def test_the_magic_trains_over_named_connections(servers, monkeypatch):
    from IPython.core.error import UsageError

    from remote_magic.display.federated import FederatedResult
    from tests.serverproc import magic_shell

    with magic_shell(servers["a"], "alice", monkeypatch, url=False) as ip:
        for name in "abc":
            monkeypatch.setenv(f"TOKEN_{name.upper()}", servers[name].tokens["alice"])
            ip.run_line_magic(
                "remote_connect", f"{servers[name].url} --name {name} --token-env TOKEN_{name.upper()}"
            )
        with pytest.raises(UsageError, match="no connection named 'z'"):
            ip.run_cell_magic("remote_train", "--datasets a:visits,z:visits --label label", "m = 1")
        cell = (
            "import xgboost as xgb\nmodel = xgb.XGBClassifier(n_estimators=8, max_depth=3, random_state=11)"
        )
        shown = ip.run_cell_magic(
            "remote_train", "--datasets a:visits,b:visits,c:visits --label label --batch-size 4 -o fed", cell
        )
        assert isinstance(shown, FederatedResult) and ip.user_ns["fed"] is shown
        assert shown.round_trips == 2 and shown.trees == 8
        assert [o.name for o in shown.owners] == ["a", "b", "c"]


def end(server, training: str, user: str = "alice") -> int:
    headers = {"Authorization": f"Bearer {server.tokens[user]}"}
    url = f"{server.url}/v1/federated/sessions/{training}"
    return requests.delete(url, headers=headers, timeout=30).status_code


def test_a_session_is_the_analysts_own_and_ends_with_the_training(servers):
    training = secrets.token_urlsafe(24)
    first, second, third = two_steps(servers, training, count=3)
    final = {key: value for key, value in third.items() if key != "batch"}  # the evaluation after second
    a = servers["a"]

    def step(body: dict, user: str = "alice") -> requests.Response:
        return a.post("/federated/sums", user=user, json=body)

    def gone(answer: requests.Response) -> bool:
        return answer.status_code == 409 and answer.json()["error"]["code"] == "federated_session_gone"

    before = charges(a)
    answer = step(first)
    assert answer.status_code == 200 and answer.json()["staged"]  # the first step stages the rows
    assert gone(step(second, "bob"))  # another analyst with the same id gets no session of alice's
    assert end(a, training, "bob") == 204  # nor ends hers
    answer = step(second)
    assert answer.status_code == 200 and not answer.json()["staged"]  # the leaves alone, on her session
    assert charges(a) - before == Counter(sums=2)  # bob's refusals cost nothing
    assert gone(a.post("/federated/evaluate", user="bob", json=final))
    assert gone(a.post("/federated/evaluate", json={**final, "trees": final["trees"] + 1}))  # not its model
    assert charges(a) - before == Counter(sums=2)
    # That refusal ended the session too (a final evaluation ends it, whatever its outcome).
    assert gone(step(second)) and gone(a.post("/federated/evaluate", json=final))
    assert step(first).status_code == 200 and step(second).status_code == 200  # asked again: no cost
    assert charges(a) - before == Counter(sums=2)
    scored = a.post("/federated/evaluate", json=final)
    assert scored.status_code == 200, scored.text
    result = scored.json()
    assert result["kind"] == "evaluate" and result["summary"]["eval"]["rows"] > 0
    assert set(result["metrics"]) == {"auc", "log_loss", "accuracy"} and result["summary"]["train"] is None
    assert result["privacy"]["rho"] == pytest.approx(RHO_JOB) and not result["privacy"]["repeated"]
    assert charges(a) - before == Counter(sums=2, evaluate=1)  # charged as an evaluate job
    assert gone(step(third)) and gone(a.post("/federated/evaluate", json=final))  # the training is over
    assert end(a, training) == 204 and end(a, training) == 204  # ended; ending twice is no error
    assert gone(step(second))
    assert step({**second, "training": "short"}).status_code == 422 and end(a, "short") == 422


def test_a_session_step_sent_again_after_it_succeeded_is_answered_with_its_draws_at_no_cost(servers):
    """Its answer lost on the way, the analyst sends the step again: her session is one batch on already,
    and the step is that batch's question again, not a new one (nor a restage with the whole model)."""
    training = secrets.token_urlsafe(24)
    first, second, third = two_steps(servers, training, seed=11, count=3)
    a = servers["a"]
    before = charges(a)
    assert a.post("/federated/sums", json=first).status_code == 200
    answer = a.post("/federated/sums", json=second).json()
    again = a.post("/federated/sums", json=second).json()
    assert not again["staged"] and again["privacy"]["repeated"] and again["privacy"]["rho"] == 0
    assert again["gradients"] == answer["gradients"] and again["hessians"] == answer["hessians"]
    assert charges(a) - before == Counter(sums=2)
    after = a.post("/federated/sums", json=third)  # and the training goes on from it
    assert after.status_code == 200 and not after.json()["staged"] and not after.json()["privacy"]["repeated"]
    assert charges(a) - before == Counter(sums=3)
    assert end(a, training) == 204


def test_a_session_that_cannot_be_kept_loses_nothing_of_its_step(servers):
    """The sessions' folder cannot take the session (a full disk alike): the step, charged, is answered
    all the same, and the next one finds no session (at no cost), so the client sends the model."""
    training = secrets.token_urlsafe(24)
    first, second = two_steps(servers, training, seed=12)
    a = servers["a"]
    root = a.data_dir / "federated"
    aside = root.with_name("federated-aside")
    before = charges(a)
    root.rename(aside)
    root.write_bytes(b"")  # a file where the folder was: moving a session into it fails
    try:
        answer = a.post("/federated/sums", json=first)
    finally:
        root.unlink()
        aside.rename(root)
    assert answer.status_code == 200 and answer.json()["staged"] and answer.json()["gradients"]
    assert charges(a) - before == Counter(sums=1)
    gone = a.post("/federated/sums", json=second)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "federated_session_gone"
    assert charges(a) - before == Counter(sums=1)
    assert "federated_session_not_kept" in a.log_path.read_text()


def test_sessions_are_bounded_per_analyst_oldest_first_and_never_evict_another_analysts(tmp_path):
    ticks, later = itertools.count(), [0.0]
    sessions = Sessions(
        tmp_path / "sessions", per_analyst=2, idle_s=3600.0, clock=lambda: next(ticks) + later[0]
    )

    def left(user: str, training: str) -> Session:
        folder = tmp_path / f"{user}-{training}"
        folder.mkdir()
        (folder / "margins.npy").write_bytes(b"x")
        kept = sessions.adopt(folder)
        assert kept is not None
        return Session(kept, "f")

    for training in ("t1", "t2", "t3"):
        sessions.put("alice", training, left("alice", training), None)
    assert len(sessions) == 2 and sessions.take("alice", "t1", "f") is None  # her oldest went
    sessions.put("bob", "t1", left("bob", "t1"), None)
    sessions.put("carol", "t1", left("carol", "t1"), None)
    sessions.put("carol", "t2", left("carol", "t2"), None)
    sessions.put("carol", "t3", left("carol", "t3"), None)
    assert len(sessions) == 5  # carol's work evicted only her own oldest, nobody else's
    again = sessions.take("alice", "t2", "f")
    assert again is not None
    sessions.put("alice", "t2", None, again)
    taken = sessions.take("alice", "t3", "f")
    assert taken is not None and taken.folder.is_dir()
    assert sessions.take("alice", "t3", "f") is None  # out while its step runs
    sessions.put("alice", "t3", None, taken)  # the step failed: the session it took is back
    assert sessions.take("alice", "t3", "other") is None and not taken.folder.exists()  # staged for another
    assert sessions.drop("bob", "t1") and not sessions.drop("bob", "t1")
    running = sessions.take("carol", "t3", "f")
    assert running is not None and not sessions.drop("carol", "t3")  # ended while its step runs
    sessions.put("carol", "t3", left("carol", "t3-next"), running)
    assert sessions.take("carol", "t3", "f") is None and not running.folder.exists()  # not put back
    sessions.put("carol", "t3", None, None)
    behind = sessions.take("alice", "t2", "f")
    assert behind is not None
    sessions.put("alice", "t2", None, behind, moved_on=True)  # its step succeeded but left no session
    assert sessions.take("alice", "t2", "f") is None and not behind.folder.exists()
    sessions.put("alice", "t2", None, None)
    assert len(list((tmp_path / "sessions").iterdir())) == len(sessions) == 1
    assert sessions.expire() == 0
    later[0] = 3600.0 + 100  # an hour on, with no step and no end: the server's sweep drops it
    assert sessions.expire() == 1 and len(sessions) == 0
    assert not list((tmp_path / "sessions").iterdir())
    sessions.put("alice", "t9", left("alice", "t9"), None)
    Sessions(tmp_path / "sessions")  # a restart
    assert not list((tmp_path / "sessions").iterdir())


@pytest.mark.parametrize("classes", [2, 3])
def test_a_sessions_final_evaluation_reports_what_an_evaluate_job_reports(tmp_path, monkeypatch, classes):
    """The worker's evaluation from a session (the evaluation rows' margins its steps moved, plus the last
    batch's leaves) reports the sums an evaluate job's worker computes from the final model's own
    predictions, rows with a missing value or a level outside the public list included; a session that
    does not lead to the final model is refused before the worker says it resumed (before any charge)."""
    from types import SimpleNamespace

    from remote_magic.contract.codes import Refusal
    from remote_magic.families import scoring
    from remote_magic.families.dpboost import Partition
    from remote_magic.families.dpboost.booster import load
    from remote_magic.families.dpboost.features import xgboost_input
    from remote_magic.families.dpboost.settings import federated_settings
    from remote_magic_server.protocol import SESSION_IN, SESSION_OUT, FederatedOrder
    from remote_magic_server.worker import sums_task
    from tests.test_dpboost import FEATURES, make_rows

    table, y = make_rows(1200, seed=4, classes=classes)
    fit, held = slice(0, 900), slice(900, 1200)
    params = {"num_class": classes, "objective": "multi:softprob"} if classes > 2 else {}
    public = settings_of(xgb.XGBClassifier(n_estimators=6, max_depth=3, random_state=1, **params), 3)
    trainer = federated_settings(public.model_dump())
    coordinator = Coordinator(FEATURES, trainer, 1.0, lambda v, l2, r: v)
    training = Partition(FEATURES, table.slice(0, 900), y[fit], trainer.objective_())
    evaluation = Partition(FEATURES, table.slice(900), y[held], trainer.objective_())
    last = None
    for batch in coordinator.requests():
        if last is not None:  # a later step moves both splits' margins by the previous batch's leaves
            training.apply(last)
            evaluation.apply(last)
        trees = len(coordinator.trees)
        last = coordinator.release(batch, training.sums(batch))
    monkeypatch.chdir(tmp_path)
    names = [str(c) for c in range(classes)]
    sums_task._keep({"train": training, "eval": evaluation}, trees, last.batch.to_dict(), names)
    (tmp_path / SESSION_OUT).rename(tmp_path / SESSION_IN)
    order = FederatedOrder(
        features=[c.to_dict() for c in FEATURES.columns],
        settings=public.model_dump(),
        model_file="model.json",
        rho=1.0,
        leaves=last.values.ravel().tolist(),
        trees=len(coordinator.trees),
        evaluate=True,
        session=True,
    )
    sent: list = []
    channel = SimpleNamespace(send=sent.append, stage=lambda *_: None)
    with pytest.raises(Refusal) as gone:
        sums_task._evaluation(order.model_copy(update={"trees": order.trees + 1}), FEATURES, trainer, channel)
    assert gone.value.code == "federated_session_gone" and sent == []
    report = sums_task._evaluation(order, FEATURES, trainer, channel)
    assert [type(m).__name__ for m in sent] == ["Resumed"]

    booster = load(coordinator.model())
    pred = booster.predict(xgb.DMatrix(xgboost_input(FEATURES, table.slice(900)), enable_categorical=True))
    task = "binary" if classes == 2 else "multiclass"
    expected = scoring.stats(
        task, y[held], pred, classes, None, scored=scoring.score(task, y[held], pred, classes)
    )
    assert report.task == task and report.stats.n == 300 and report.rounds.total == 6
    assert report.stats.correct == expected["correct"] and report.stats.confusion == expected["confusion"]
    assert report.stats.loss_sum == pytest.approx(expected["loss_sum"], rel=1e-5)
    if classes == 2:
        assert report.stats.auc == pytest.approx(expected["auc"], abs=1e-6)
    assert report.confusion is not None and report.confusion.labels == names


def test_a_step_sent_again_on_a_new_data_version_is_drawn_and_charged_afresh(servers):
    """The same step on another version of the owner's rows is another question: never the previous
    version's draws (found by review: the step's key had no version). Last here: it refreshes a's data."""
    a = servers["a"]
    body = first_step(servers, ["a", "b"], seed=9).model_dump(mode="json")
    first = a.post("/federated/sums", json=body).json()
    assert a.post("/federated/sums", json=body).json()["privacy"]["repeated"]  # the same version: replayed
    path = a.settings.datasets["visits"].path
    pd.read_parquet(path).iloc[1:].to_parquet(path, index=False)
    refresh = [sys.executable, "-m", "remote_magic_server", "dataset", "refresh", "visits", "--config"]
    subprocess.run([*refresh, str(a.config)], check=True, capture_output=True, timeout=120)
    before = charges(a)
    again = a.post("/federated/sums", json=body).json()
    assert not again["privacy"]["repeated"] and again["privacy"]["rho"] > 0
    assert charges(a) - before == Counter(sums=1)
    assert again["gradients"] != first["gradients"]
