"""The model registry over the real server: register, continue on the server, lineage, aliases moved
only when their condition holds, evaluation of a registered version, and who may see what."""

from __future__ import annotations

import hashlib
import time

import pandas as pd
import pytest
import xgboost as xgb
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from remote_magic import package_model
from remote_magic.client.errors import BadRequest, ModelRejected, NotFound, RemoteError
from tests.serverproc import running

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
    job.result()
    status = client.status(job.id)
    assert status.registration.state == "skipped" and status.registration.version is None
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
        assert client.status(loose.job_id).model_file == "kept"
        time.sleep(1.5)
        server.stop()
        server.start()  # pruning runs at start, then hourly
        deadline = time.monotonic() + 20
        while client.status(loose.job_id).model_file != "pruned" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert client.status(loose.job_id).model_file == "pruned"
        assert client.status(kept.job_id).model_file == "registered"
        assert not any((server.settings.jobs_dir / loose.job_id).glob("model*"))
        assert client.evaluate(None, SPEC, model_ref="kept_one@1").metrics["auc"] == kept.metrics["auc"]
        assert client.result(loose.job_id).metrics == loose.raw.metrics  # the released result stays
