"""The read-only GraphQL view over the real server: the lineage query, REST's visibility exactly, the
depth, alias, token and cost limits refusing abusive queries, the token required (introspection too),
and a fuzzer's generated queries never answered with a 500."""

from __future__ import annotations

import time

import requests
import xgboost as xgb
from graphql import get_introspection_query
from hypothesis import HealthCheck, given, settings
from hypothesis_graphql import queries

from remote_magic_server.api.graphql_view import SCHEMA

SPEC = {"dataset": "breast_cancer_rules", "label": "malignant", "eval": {"fraction": 0.3, "seed": 5}}


def ask(server, query: str, user: str | None = "alice", variables: dict | None = None) -> requests.Response:
    headers = {"Authorization": f"Bearer {server.tokens[user]}"} if user else {}
    return requests.post(
        f"{server.url}/v1/graphql",
        json={"query": query, "variables": variables or {}},
        headers=headers,
        timeout=30,
    )


def data(server, query: str, user: str = "alice") -> dict:
    body = ask(server, query, user).json()
    assert "errors" not in body, body
    return body["data"]


def errors(server, query: str, user: str = "alice") -> list[str]:
    response = ask(server, query, user)
    assert response.status_code in (200, 400), response.status_code
    return [e["message"] for e in response.json()["errors"]]


def test_the_lineage_of_everything_trained_on_a_dataset_in_one_request(server):
    client = server.client()
    client.train(xgb.XGBClassifier(n_estimators=3, max_depth=2), SPEC, register="gql")
    second = client.train(
        xgb.XGBClassifier(n_estimators=2, max_depth=2), SPEC, register="gql", base_model="gql@1"
    )
    version = data(server, "{ datasets { name version versions { number schemaHash } } }")["datasets"]
    listed = next(d for d in version if d["name"] == "breast_cancer_rules")
    current = listed["version"]
    assert current == str(listed["versions"][-1]["number"]) and listed["versions"][-1]["schemaHash"]
    found = data(
        server,
        f'{{ trainedOn(dataset: "breast_cancer_rules", sinceVersion: "{current}") {{ ref datasetVersion '
        "lineage { ref origin metrics { name value } } parent { ref } job { id state } } }",
    )["trainedOn"]
    gql = next(v for v in found if v["ref"] == "gql@2")
    assert [v["ref"] for v in gql["lineage"]] == ["gql@2", "gql@1"]
    assert [v["origin"] for v in gql["lineage"]] == ["version", "fresh"]
    assert gql["parent"] == {"ref": "gql@1"} and gql["job"] == {"id": second.job_id, "state": "succeeded"}
    auc = {m["name"]: m["value"] for m in gql["lineage"][0]["metrics"]}["auc"]
    assert auc == second.metrics["auc"] and gql["datasetVersion"] == current


def test_graphql_shows_exactly_what_rest_shows(server):
    alice_job = server.client("alice").train(xgb.XGBClassifier(n_estimators=2), SPEC, register="gql_private")
    bob = server.client("bob")
    bob_job = bob.train(xgb.XGBClassifier(n_estimators=2), SPEC)
    seen = data(
        server,
        "{ jobs(limit: 100) { id } models { name } datasets { name } recipes { name } webhooks { id } }",
        "bob",
    )
    assert {j["id"] for j in seen["jobs"]} == {j.id for j in bob.jobs(limit=100)}
    assert bob_job.job_id in {j["id"] for j in seen["jobs"]} and alice_job.job_id not in {
        j["id"] for j in seen["jobs"]
    }
    assert {m["name"] for m in seen["models"]} == {m.name for m in bob.models().models}
    assert "gql_private" not in {m["name"] for m in seen["models"]}
    assert [d["name"] for d in seen["datasets"]] == ["breast_cancer", "breast_cancer_rules"]
    assert errors(server, f'{{ job(id: "{alice_job.job_id}") {{ id }} }}', "bob") == ["no such job"]
    assert "no model version" in errors(server, '{ modelVersion(ref: "gql_private@1") { ref } }', "bob")[0]
    assert "no dataset named" in errors(server, '{ dataset(name: "synthetic") { name } }', "bob")[0]
    assert "no dataset named" in errors(server, '{ trainedOn(dataset: "synthetic") { ref } }', "bob")[0]


def test_every_request_needs_the_token_and_introspection_is_for_signed_in_users(server):
    for query in ("{ whoami }", "{ __schema { queryType { name } } }"):
        response = ask(server, query, user=None)
        assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized"
    assert data(server, "{ __schema { queryType { name } } }")["__schema"]["queryType"]["name"] == "Query"
    assert data(server, "{ whoami }", "bob") == {"whoami": "bob"}
    assert requests.get(f"{server.url}/v1/graphql", timeout=10).status_code in (401, 404, 405)
    mutation = ask(server, "mutation { whoami }")
    assert mutation.status_code in (200, 400) and "errors" in mutation.json()


def test_abusive_queries_are_refused_before_they_run(server):
    deep = '{ modelVersion(ref: "gql@1") { ' + "lineage { " * 9 + "ref" + " }" * 9 + " } }"
    assert any("depth" in m for m in errors(server, deep))
    costly = (
        "{ jobs(limit: 100) { id } models(limit: 100) { versions { lineage { lineage { ref "
        + "metrics { name } } } } } }"
    )
    assert any("would cost" in m for m in errors(server, costly))
    fragment = (
        "query { models(limit: 100) { ...V } } fragment V on Model { versions { lineage { ...L } } } "
        "fragment L on ModelVersion { lineage { ref } }"
    )
    assert any("would cost" in m for m in errors(server, fragment))
    aliases = "{ " + " ".join(f"a{i}: whoami" for i in range(40)) + " }"
    assert any("alias" in m.lower() for m in errors(server, aliases))
    tokens = "{ whoami " + "__typename " * 3000 + "}"
    assert any("token" in m.lower() for m in errors(server, tokens))


def test_introspection_is_priced_and_asked_once_an_operation(server):
    """Red-team rev10 #2c: introspection was free, so one request could hold twenty aliased full
    introspections (the alias cap), a 350 KB answer, and two such requests held /v1/health 2.9 s. Now
    an operation introspects once; a client's full introspection still answers."""
    full = data(server, get_introspection_query())["__schema"]
    assert "Query" in {t["name"] for t in full["types"]} and full["queryType"]["name"] == "Query"
    deep = "types { name fields { name args { name } type { name kind ofType { name kind } } } }"
    twenty = "{ " + " ".join(f"a{i}: __schema {{ {deep} }}" for i in range(20)) + " }"
    spread = (
        "query { ...S ...T } fragment S on Query { __schema { queryType { name } } } "
        'fragment T on Query { __type(name: "Query") { name } }'
    )
    twice = "{ a: __schema { queryType { name } } b: __schema { queryType { name } } }"
    for query in (twenty, twice, spread):
        assert any("at most 1 __schema or __type field" in m for m in errors(server, query)), query
    at_the_limit = "{ jobs(limit: 100) { " + "id " * 99 + "} }"  # 100 jobs of 1 + 99 fields: 10,000
    assert "jobs" in data(server, at_the_limit)
    over = at_the_limit.replace("{ id ", "{ __typename id ")  # __typename costs 1 a job, as any field
    assert any("would cost 10100" in m for m in errors(server, over))


def test_fragments_spread_twice_over_and_over_are_refused_at_once(server):
    """Twenty fragments that each spread the next twice (700 characters) are 2**20 fields: the cost rule
    and strawberry's depth and alias limits walked every spread, 37 s of the event loop's time. Counted
    once a fragment, the document is refused before validation, and an honest reuse still answers."""
    chain = " ".join(f"fragment F{i} on Query {{ ...F{i + 1} ...F{i + 1} }}" for i in range(20))
    started = time.monotonic()
    refused = errors(server, "query { ...F0 } " + chain + " fragment F20 on Query { whoami }")
    assert time.monotonic() - started < 5 and any("more than 10000 fields" in m for m in refused), refused
    reused = "query { ...W ...W jobs { id } } fragment W on Query { whoami }"
    assert data(server, reused)["whoami"] == "alice"


@settings(
    max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
@given(query=queries(SCHEMA.as_str()))
def test_generated_queries_never_get_a_500(server, query):
    response = ask(server, query)
    assert response.status_code in (200, 400), (response.status_code, query)
    body = response.json()
    assert "data" in body or "errors" in body
    assert "Traceback" not in response.text and "/work/" not in response.text
