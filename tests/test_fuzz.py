"""Fuzzing: the live API against its own OpenAPI schema, and properties of the filter grammar and specs.

schemathesis sends generated requests (valid and invalid, with a valid token) to the session's real
server and checks that no answer is a 5xx, that every answer matches the schema and that every status
is documented. hypothesis checks the grammar and the spec checks as functions: valid input is
accepted, anything else is refused with a fixed code, and nothing else ever escapes.
"""

from __future__ import annotations

import duckdb
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from schemathesis import GenerationMode
from schemathesis.config import SchemathesisConfig
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlglot import exp

from remote_magic.contract.codes import Refusal
from remote_magic.contract.grammar import compile_filter, parse_filter
from remote_magic.contract.wire import DatasetSpec
from remote_magic_server.data.versions import Versions
from remote_magic_server.intake.catalog import check_spec

FUZZ = settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None
)
PROPERTY = settings(FUZZ, max_examples=200)
CHECKED_BEYOND_SCHEMA = {"POST /v1/jobs", "POST /v1/recipes", "POST /v1/webhooks", "POST /v1/cost"}


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_api_matches_its_schema_and_never_fails(server, mode):
    config = SchemathesisConfig.from_dict(
        {
            # Requests carry a valid token wherever the schema asks for one (and none where a case tests
            # that a missing token is refused).
            "auth": {"openapi": {"HTTPBearer": {"bearer": server.tokens["alice"]}}},
            # Unknown query parameters are ignored, as HTTP APIs commonly do; not a finding.
            "generation": {"allow-extra-parameters": False},
        }
    )
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", config=config)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 8

    for operation in operations:
        if mode == GenerationMode.NEGATIVE and not (
            operation.path_parameters or operation.query or operation.body
        ):
            continue  # nothing to get wrong in a request without parameters
        # A submission is schema-valid with any bytes as the model (or any text as a recipe's JSON), but
        # only a real pickled model is accepted, and a webhook only for an allowlisted URL; a job or a
        # cost of kind evaluate may not ask for a curve (one field's rule depending on another, which the
        # schema cannot say): there, a schema-valid request answered 422 (documented) is right, not a
        # finding.
        excluded = [positive_data_acceptance] if operation.label in CHECKED_BEYOND_SCHEMA else []

        @given(case=operation.as_strategy(mode))
        @FUZZ
        def check(case):
            case.call_and_validate(excluded_checks=excluded)

        check()


# The filter grammar: a strategy that builds filters only from the grammar's allowed forms.
NUMERIC = {"age": "DOUBLE", "bmi": "DOUBLE", "visits": "INTEGER"}
TEXT = {"region": "VARCHAR"}
COLUMNS = {**NUMERIC, **TEXT}

numbers = st.one_of(
    st.integers(-1000, 1000), st.floats(-1e6, 1e6, allow_nan=False).map(lambda x: round(x, 3))
)
words = st.text(alphabet=st.characters(codec="ascii", categories=["L", "N"]), max_size=8)
quoted = words.map(lambda w: "'" + w + "'")
number_text = numbers.map(str)


@st.composite
def comparisons(draw) -> str:
    if draw(st.booleans()):
        column = draw(st.sampled_from(sorted(NUMERIC)))
        literal, values = number_text, number_text
    else:
        column = draw(st.sampled_from(sorted(TEXT)))
        literal, values = quoted, quoted
    form = draw(st.sampled_from(["cmp", "in", "between", "null"]))
    if form == "cmp":
        return f"{column} {draw(st.sampled_from(['=', '<>', '!=', '<', '<=', '>', '>=']))} {draw(literal)}"
    if form == "in":
        items = draw(st.lists(values, min_size=1, max_size=5))
        return f"{column} {draw(st.sampled_from(['IN', 'NOT IN']))} ({', '.join(items)})"
    if form == "between":
        low, high = draw(literal), draw(literal)
        return f"{column} BETWEEN {low} AND {high}"
    return f"{column} IS {draw(st.sampled_from(['', 'NOT ']))}NULL"


filters = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["AND", "OR"]), inner).map(lambda t: f"({t[0]}) {t[1]} ({t[2]})"),
        inner.map(lambda f: f"NOT ({f})"),
    ),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def table():
    con = duckdb.connect()
    con.execute(f"CREATE TABLE t ({', '.join(f'{c} {t}' for c, t in COLUMNS.items())})")
    con.execute("INSERT INTO t VALUES (40, 27.5, 3, 'north'), (NULL, NULL, NULL, NULL)")
    yield con
    con.close()


@given(text=filters)
@PROPERTY
def test_every_filter_in_the_grammar_is_accepted_and_runs_in_duckdb(table, text):
    tree = parse_filter(text, COLUMNS)
    assert {c.name for c in tree.find_all(exp.Column)} <= set(COLUMNS)
    sql = compile_filter(text, COLUMNS)
    assert compile_filter(sql, COLUMNS) == sql, "compiling is not stable"
    table.execute(f"SELECT count(*) FROM t WHERE {sql}").fetchone()


@given(st.text(max_size=300))
@PROPERTY
def test_any_text_as_a_filter_is_accepted_or_refused_with_a_code(text):
    try:
        parse_filter(text, COLUMNS)
    except Refusal as exc:
        assert exc.code in {"invalid_filter", "unknown_column"}
        assert exc.message and "Traceback" not in exc.message


dangerous = st.sampled_from(
    [
        "read_parquet('x') IS NULL",
        "age > (SELECT 1)",
        "age IN (SELECT age FROM t)",
        "lower(region) = 'a'",
        "age + 1 > 2",
        "t.age > 1",
        "id = 1",
        "age > 1; DROP TABLE t",
        "region LIKE '%a'",
        "CAST(age AS VARCHAR) = '1'",
        "*",
        "age",
    ]
)


@given(filters, dangerous, st.sampled_from(["AND", "OR"]))
@PROPERTY
def test_a_forbidden_form_anywhere_in_a_filter_is_refused(good, bad, joiner):
    with pytest.raises(Refusal):
        parse_filter(f"({good}) {joiner} ({bad})", COLUMNS)


# Spec validation: the API's checks run before anything is queued.
@pytest.fixture(scope="module")
def demo(server):
    return server.settings


@pytest.fixture(scope="module")
def versions(server):
    return Versions(server.settings.snapshots_dir)


def columns_of(versions: Versions, name: str) -> list[str]:
    return [c for c, _ in versions.latest(name).columns]


@given(data=st.data())
@PROPERTY
def test_valid_specs_are_accepted(demo, versions, data):
    name = "breast_cancer_rules"
    dataset = demo.datasets[name]
    features = [c for c in columns_of(versions, name) if c not in (dataset.id_column, *dataset.label_columns)]
    chosen = data.draw(st.none() | st.lists(st.sampled_from(features), min_size=1, max_size=5))
    column = data.draw(st.sampled_from(features))
    where = data.draw(st.none() | number_text.map(lambda n: f"{column} > {n}"))
    split = data.draw(
        st.none()
        | st.builds(lambda f, s: {"fraction": f, "seed": s}, st.floats(0.01, 0.99), st.integers(0, 2**31 - 1))
        | st.just({"where": f"{column} IS NOT NULL"})
    )
    raw = {
        "dataset": data.draw(st.sampled_from([name, f"{name}@1"])),
        "label": dataset.label_columns[0],
        "features": chosen,
        "where": where,
        "eval": split,
    }
    spec, plan = check_spec(demo, versions, [name], DatasetSpec.model_validate(raw))
    assert plan.features == (list(dict.fromkeys(chosen)) if chosen else features)
    assert spec.dataset == name and plan.dataset_version == 1


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
spec_like = st.fixed_dictionaries(
    {},
    optional={
        "dataset": st.sampled_from(
            [
                "breast_cancer_rules",
                "breast_cancer_rules@1",
                "breast_cancer_rules@7",
                "breast_cancer_rules@0",
                "synthetic_rules",
                "x@",
                "",
            ]
        )
        | json_values,
        "label": st.sampled_from(["malignant", "label", "mean_radius", "id", ""]) | json_values,
        "features": st.lists(st.sampled_from(["mean_radius", "id", "malignant", "nope"]), max_size=3)
        | json_values,
        "where": filters | st.text(max_size=50) | json_values,
        "eval": st.fixed_dictionaries({"fraction": st.floats(-1, 2)})
        | st.fixed_dictionaries({"where": filters})
        | json_values,
        "surprise": json_values,
    },
)


@given(spec_like)
@PROPERTY
def test_any_spec_is_accepted_or_refused_with_a_4xx(demo, versions, raw):
    try:
        spec = DatasetSpec.model_validate(raw)
        check_spec(demo, versions, ["breast_cancer_rules"], spec)
    except ValidationError:
        return  # the API answers 422 invalid_spec
    except Refusal as refused:
        assert 400 <= refused.status < 500
        assert refused.code in {
            "unknown_dataset",
            "unknown_version",
            "unknown_column",
            "invalid_spec",
            "invalid_filter",
        }
