"""Every error code is listed once (remote_magic.codes) with its HTTP status; the client maps each to an
exception class by its kind; every code the code base raises is registered."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from remote_magic.client.errors import (
    AuthError,
    BadRequest,
    BudgetExhausted,
    Busy,
    DisclosureRefused,
    JobCancelled,
    JobFailed,
    ModelRejected,
    NotFound,
    RemoteError,
    ServerError,
    SpecError,
    error_for,
)
from remote_magic.contract.codes import CODES, Refusal

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = {
    "request": BadRequest,
    "auth": AuthError,
    "not_found": NotFound,
    "spec": SpecError,
    "model": ModelRejected,
    "disclosure": DisclosureRefused,
    "budget": BudgetExhausted,
    "busy": Busy,
    "cancelled": JobCancelled,
    "job": JobFailed,
    "server": ServerError,
}


@pytest.mark.parametrize("code", sorted(CODES))
def test_every_code_maps_to_its_class_and_only_job_codes_are_job_failures(code):
    entry = CODES[code]
    assert 400 <= entry.status < 600
    error = error_for(code, "msg")
    assert type(error) is EXPECTED[entry.kind] and error.code == code
    if entry.kind != "job":
        assert not isinstance(error, JobFailed), "a refusal before a job exists is never JobFailed"
    assert len(error._render_traceback_()) <= 2


def test_unknown_codes_are_server_errors_outside_a_job_and_job_failures_inside_one():
    assert type(error_for("brand_new_code", "m")) is ServerError
    assert type(error_for("brand_new_code", "m", job_id="j")) is JobFailed
    assert type(error_for("internal_error", "m", job_id="j")) is JobFailed
    assert isinstance(error_for("privacy_budget_exhausted", "m"), DisclosureRefused)


def test_a_refusal_needs_a_registered_code():
    assert Refusal("invalid_spec", "m").status == 422
    with pytest.raises(ValueError):
        Refusal("not_a_code", "m")


def _raised_codes() -> set[str]:
    """The first argument of every `Refusal(...)` and `Failure(code=...)` with a literal code."""
    found = set()
    for path in [*ROOT.joinpath("remote_magic").rglob("*.py"), *ROOT.joinpath("server").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = getattr(node.func, "id", getattr(node.func, "attr", ""))
            if name in ("Refusal", "failed") and node.args and isinstance(node.args[0], ast.Constant):
                found.add(node.args[0].value)
            for keyword in node.keywords:
                if name == "Failure" and keyword.arg == "code" and isinstance(keyword.value, ast.Constant):
                    found.add(keyword.value.value)
    return found


def test_every_code_the_code_base_raises_is_registered():
    raised = _raised_codes()
    assert len(raised) > 20
    assert raised <= set(CODES), sorted(raised - set(CODES))


def test_the_client_classes_are_remote_errors():
    for cls in EXPECTED.values():
        assert issubclass(cls, RemoteError)
