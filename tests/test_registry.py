"""The model registry over the real server: register, continue on the server, lineage, aliases moved
only when their condition holds, evaluation of a registered version, and who may see what."""

from __future__ import annotations

import hashlib
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import xgboost as xgb
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from remote_magic import package_model
from remote_magic.client.errors import BadRequest, ModelRejected, NotFound, RemoteError, SpecError
from tests.serverproc import running, wait_until

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.3, "seed": 1}}


def small(rounds: int = 4, depth: int = 2) -> xgb.XGBClassifier:
    return xgb.XGBClassifier(n_estimators=rounds, max_depth=depth, learning_rate=0.3)


def test_three_generations_continue_on_the_server_and_keep_their_lineage(server):
    client = server.client()
    first = client.train(small(), SPEC, register="gen")
    second = client.train(small(), SPEC, register="gen", base_model="gen@latest")
    third = client.train(small(3), SPEC, register="gen", base_model="gen@2")
    assert (first.rounds["total"], second.rounds, third.rounds) == (
        4,
        {"base": 4, "new": 4, "total": 8},
        {"base": 8, "new": 3, "total": 11},
    )
    chain = client.lineage("gen@latest").versions
    assert [v.ref for v in chain] == ["gen@3", "gen@2", "gen@1"]
    assert [v.lineage.origin for v in chain] == ["version", "version", "fresh"]
    assert [v.lineage.parent for v in chain] == ["gen@2", "gen@1", None]
    assert chain[0].metrics["auc"] == third.metrics["auc"] and chain[2].rounds == 4
    assert chain[0].lineage.params["max_depth"] == 2 and chain[0].lineage.user == "alice"
    assert chain[0].lineage.spec.model_dump(exclude_none=True) == SPEC
    assert len({v.lineage.dataset_version for v in chain}) == 1 and chain[0].lineage.dataset_version
    statuses = {s.id: s for s in client.jobs(limit=10)}
    assert statuses[third.job_id].base_model == "gen@2"
    assert statuses[third.job_id].registration.version == "gen@3"
    assert statuses[third.job_id].model_file == "registered"
    assert [n for n in third.raw.notes if n.startswith("registered")] == ["registered as gen@3"]


def test_an_uploaded_base_model_is_recorded_with_its_hash(server):
    data = pd.read_parquet(server.settings.datasets["breast_cancer"].path)
    features = [c for c in data.columns if c not in ("id", "malignant")]
    local = small(3).fit(data[features].head(150), data["malignant"].head(150))
    client = server.client()
    client.train(local, SPEC, register="uploaded")
    version = client.model("uploaded@1")
    assert version.lineage.origin == "uploaded" and version.rounds == 6
    assert version.lineage.base_sha256 == hashlib.sha256(package_model(local)).hexdigest()


def test_the_alias_moves_only_when_the_released_metric_improves_enough(server):
    client = server.client()
    client.train(small(8, 3), SPEC, register={"name": "champ", "alias": "champion"})
    assert client.model("champ@champion").number == 1
    when = {"metric": "auc", "min_improvement": 0.002}
    job = client.submit(small(1, 1), SPEC, register={"name": "champ", "alias": "champion", "when": when})
    result = job.result()
    status = client.status(job.id)
    assert status.registration.state == "skipped" and status.registration.version is None
    assert [n for n in result.raw.notes if n.startswith("not registered")] == [status.registration.message]
    assert "does not improve on champ@1" in status.registration.message
    assert status.model_file == "kept"
    assert client.model("champ@champion").number == 1 and client.model("champ@latest").number == 1
    better = client.submit(
        small(30, 3),
        SPEC,
        register={
            "name": "champ",
            "alias": "champion",
            "when": {"metric": "log_loss", "min_improvement": 0.0},
        },
    )
    better.result()
    assert client.status(better.id).registration.version == "champ@2"
    assert client.model("champ@champion").number == 2
    moved = client.set_alias("champ", "champion", 1)
    assert moved.aliases == ["champion"]


def test_evaluate_scores_a_registered_version_without_it_leaving(server):
    client = server.client()
    trained = client.train(small(6), SPEC, register={"name": "scored", "alias": "prod"})
    scored = client.evaluate(None, SPEC, model_ref="scored@prod")
    assert scored.kind == "evaluate" and scored.rounds == {"base": 6, "new": 0, "total": 6}
    assert scored.metrics["auc"] == trained.metrics["auc"]
    with pytest.raises(RemoteError) as refused:
        client.download_model(trained.job_id)
    assert refused.value.code == "model_not_released"


def test_other_users_see_a_model_only_when_the_owner_granted_it(server):
    alice, bob = server.client("alice"), server.client("bob")
    alice.train(small(), SPEC, register="private_one")
    alice.train(small(), SPEC, register="shared_with_bob")
    assert {m.name for m in bob.models().models} == {"shared_with_bob"}
    for ref in ("private_one@1", "private_one@latest", "nope@1"):
        with pytest.raises(NotFound) as missing:
            bob.model(ref)
        assert missing.value.code == "unknown_model"
    with pytest.raises(NotFound):
        bob.train(small(), SPEC, base_model="private_one@1")
    continued = bob.train(small(), SPEC, base_model="shared_with_bob@1")
    assert continued.rounds["base"] == 4
    with pytest.raises(RemoteError) as forbidden:
        bob.set_alias("shared_with_bob", "mine", 1)
    assert forbidden.value.code == "forbidden"
    with pytest.raises(RemoteError) as taken:
        bob.submit(small(), SPEC, register="shared_with_bob")
    assert taken.value.code == "forbidden" and "another user" in str(taken.value)


def test_bad_registry_requests_get_clear_refusals(server):
    client = server.client()
    with pytest.raises(BadRequest):
        client.model("no-at-sign")
    with pytest.raises(ModelRejected, match="Pipeline"):
        client.submit(Pipeline([("s", StandardScaler()), ("m", small())]), SPEC, register="piped")
    with pytest.raises(BadRequest, match="only a training job"):
        client.submit(small(), SPEC, kind="evaluate", register="evaluated")
    with pytest.raises(ValueError):
        client.submit(small(), SPEC, register={"name": "x", "alias": "latest"})
    trained = client.train(small(), SPEC, register="deleted_one")
    client.delete_version("deleted_one@1")
    with pytest.raises(NotFound):
        client.model("deleted_one@1")
    with pytest.raises(NotFound):
        client.evaluate(None, SPEC, model_ref="deleted_one@latest")
    status = client.status(trained.job_id)
    assert status.model_file == "kept"  # no longer registered: pruned after keep_unregistered like others


def test_unregistered_models_are_pruned_after_keep_unregistered_and_registered_ones_kept(tmp_path):
    extra = '[registry]\nkeep_unregistered = "1s"\n\n[automation]\npoll_s = 0.2\n'
    with running(
        tmp_path / "data", tmp_path / "server.log", {"alice": ["breast_cancer_rules"]}, extra=extra
    ) as server:
        client = server.client()
        kept = client.train(small(), SPEC, register="kept_one")
        loose = client.train(small(), SPEC)
        status = client.status(loose.job_id)
        assert status.model_file == "kept"
        server.stop()
        # The model must be older than keep_unregistered when the restarted server looks: wait on the clock.
        finished = datetime.fromisoformat(status.finished_at)
        wait_until(
            lambda: datetime.now(timezone.utc) - finished > timedelta(seconds=1), 60, "the model to age"
        )
        server.start()  # pruning runs at start (whatever the machine's uptime), then hourly
        wait_until(lambda: "models_pruned" in server.log_path.read_text(), 120, "the pruning's log line")
        assert client.status(loose.job_id).model_file == "pruned"
        assert client.status(kept.job_id).model_file == "registered"
        assert not any((server.settings.jobs_dir / loose.job_id).glob("model*"))
        assert client.evaluate(None, SPEC, model_ref="kept_one@1").metrics["auc"] == kept.metrics["auc"]
        assert client.result(loose.job_id).metrics == loose.raw.metrics  # the released result stays


def test_in_mode_dp_an_alias_condition_holds_only_beyond_the_noise():
    from remote_magic.contract.automation_wire import Condition
    from remote_magic_server.registry.records import VersionRow
    from remote_magic_server.registry.registrar import improvement

    def version(auc: float, band: list[float] | None) -> VersionRow:
        result = {"metrics": {"auc": auc}, **({"intervals": {"auc": band}} if band else {})}
        return VersionRow("m", 1, "j", "alice", "d", None, "fresh", None, None, {}, {}, result, "")

    condition = Condition(metric="auc", min_improvement=0.002)
    new = {"metrics": {"auc": 0.9459}, "intervals": {"auc": [0.9159, 0.9759]}}
    held, said = improvement(condition, new, version(0.9282, [0.8982, 0.9582]))
    assert not held and "beyond the noise (their 95% intervals overlap)" in said
    clear = {"metrics": {"auc": 0.9459}, "intervals": {"auc": [0.9400, 0.9518]}}
    assert improvement(condition, clear, version(0.9282, [0.9220, 0.9344]))[0]
    assert improvement(condition, {"metrics": {"auc": 0.9459}}, version(0.9282, None))[0], "mode rules"


def test_a_registered_version_is_refused_on_other_features_before_any_budget_is_spent(server):
    client = server.client()
    features = ["age", "income", "bmi", "smoker"]
    spec = {"dataset": "synthetic", "label": "label", "features": features}
    client.train(small(2), spec, register="four_features")
    spent = client.budget().report.model_dump()
    jobs = [j.id for j in client.jobs(limit=5)]
    for other, missing, extra in (
        (["age", "income", "bmi"], "smoker", None),
        ([*features, "visits"], None, "visits"),
        (["age", "income", "bmi", "visits"], "smoker", "visits"),
    ):
        for submit in (
            lambda s: client.evaluate(None, s, model_ref="four_features@1"),
            lambda s: client.submit(small(1), s, base_model="four_features@1"),
        ):
            with pytest.raises(SpecError) as refused:
                submit({**spec, "features": other})
            assert refused.value.code == "feature_mismatch"
            message = str(refused.value)
            assert "four_features@1" in message and "age, income, bmi, smoker" in message
            assert (f"lacks {missing}" in message) == (missing is not None)
            assert (f"adds {extra}" in message) == (extra is not None)
            assert str(server.data_dir) not in message and "Traceback" not in message
    assert client.budget().report.model_dump() == spent and [j.id for j in client.jobs(limit=5)] == jobs
    reordered = client.evaluate(None, {**spec, "features": features[::-1]}, model_ref="four_features@1")
    assert reordered.rounds["base"] == 2
