"""The token lifecycle on a real server: create, list, revoke, rotate, expire; all through the data
owner's CLI, each change in the audit log, each refusal at the very next request."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import pytest
import requests
import xgboost as xgb

from remote_magic import Client, package_model
from remote_magic.client.errors import AuthError
from remote_magic_server.audit import read_head, verify
from remote_magic_server.tokens import parse_expiry
from tests.serverproc import running, wait_until


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    base = tmp_path_factory.mktemp("tokens")
    with running(base / "data", base / "server.log", {"alice": ["breast_cancer_rules"]}) as server:
        yield server


def cli(server, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "remote_magic_server", "token", *args, "--config", str(server.config)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def create(server, *args: str) -> tuple[str, str]:
    """Create a token with the CLI; return (secret, id)."""
    done = cli(server, "create", *args)
    assert done.returncode == 0, done.stderr
    token_id = done.stderr.split()[1]
    return done.stdout.strip(), token_id


def whoami(server, secret: str):
    return server.get("/whoami", user=None, headers={"Authorization": f"Bearer {secret}"})


def test_list_shows_every_token_but_never_a_secret(live):
    secret, token_id = create(live, "--user", "carol", "--datasets", "diabetes_rules", "--note", "laptop")
    listed = cli(live, "list")
    assert listed.returncode == 0
    row = next(line for line in listed.stdout.splitlines() if line.startswith(token_id))
    assert "carol" in row and "diabetes_rules" in row and "laptop" in row and "active" in row
    assert listed.stdout.splitlines()[0].split()[:4] == ["id", "user", "datasets", "created"]
    assert secret not in listed.stdout and "rm_" not in listed.stdout
    assert live.tokens["alice"] not in listed.stdout
    assert whoami(live, secret).json() == {"user": "carol", "datasets": ["diabetes_rules"]}

    def last_used() -> str:  # written beside the request: wait for it
        listed = cli(live, "list", "--user", "carol").stdout.splitlines()
        return next(line for line in listed if token_id in line).split()[5]  # created date, time, last used

    wait_until(lambda: last_used() != "-", 300, "the token's last use to be written")


def test_a_revoked_token_is_refused_at_the_next_request(live):
    secret, token_id = create(live, "--user", "dave", "--datasets", "breast_cancer_rules")
    assert whoami(live, secret).status_code == 200
    assert cli(live, "revoke", token_id).returncode == 0
    refused = whoami(live, secret)
    assert refused.status_code == 401 and "revoked" in refused.json()["error"]["message"]
    with pytest.raises(AuthError, match="revoked"):
        Client(live.url, secret).whoami()
    again = cli(live, "revoke", token_id)
    assert again.returncode == 1 and "already revoked" in again.stderr
    assert "revoked" in next(line for line in cli(live, "list").stdout.splitlines() if token_id in line)


def test_an_expired_token_is_refused_at_the_next_request(live):
    # A few seconds ahead; on a machine too busy to create and use the token within them, twice as many.
    margin = 2.0
    while True:
        soon = datetime.now(timezone.utc) + timedelta(seconds=margin)
        args = ("--user", "erin", "--datasets", "breast_cancer_rules", "--expires", soon.isoformat())
        done = cli(live, "create", *args)
        if done.returncode == 0:
            secret, token_id = done.stdout.strip(), done.stderr.split()[1]
            answer = whoami(live, secret)
            if datetime.now(timezone.utc) < soon:
                assert answer.status_code == 200, answer.text  # used before it expired: accepted
                break
        else:
            assert "is not in the future" in done.stderr, done.stderr
        margin *= 2
    wait_until(lambda: datetime.now(timezone.utc) > soon, 600, "the token's expiry")
    refused = whoami(live, secret)
    assert refused.status_code == 401 and "expired" in refused.json()["error"]["message"]
    assert "expired" in next(line for line in cli(live, "list").stdout.splitlines() if token_id in line)


def test_rotate_gives_a_new_secret_and_the_old_one_fails(live):
    old, token_id = create(live, "--user", "fay", "--datasets", "breast_cancer_rules", "--expires", "90d")
    rotated = cli(live, "rotate", token_id)
    assert rotated.returncode == 0 and token_id in rotated.stderr
    new = rotated.stdout.strip()
    assert new.startswith("rm_") and new != old
    assert whoami(live, old).status_code == 401
    assert whoami(live, new).json()["user"] == "fay"
    assert cli(live, "revoke", token_id).returncode == 0
    assert cli(live, "rotate", token_id).returncode == 1  # a revoked token stays revoked


def test_the_old_token_form_still_creates_a_token(live):
    done = subprocess.run(
        [sys.executable, "-m", "remote_magic_server", "token", "--config", str(live.config)]
        + ["--user", "gus", "--datasets", "breast_cancer_rules"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert whoami(live, done.stdout.strip()).json()["user"] == "gus"
    unknown = cli(live, "create", "--user", "gus", "--datasets", "nope")
    assert unknown.returncode == 2 and "unknown dataset" in unknown.stderr


def test_jobs_and_budgets_belong_to_the_user_not_the_token(live):
    first, first_id = create(live, "--user", "hal", "--datasets", "breast_cancer_rules")
    second, _ = create(live, "--user", "hal", "--datasets", "breast_cancer_rules")
    job = Client(live.url, first).submit(
        xgb.XGBClassifier(n_estimators=2, max_depth=2, min_child_weight=3),
        {"dataset": "breast_cancer_rules", "label": "malignant"},
    )
    assert cli(live, "revoke", first_id).returncode == 0
    assert [j.id for j in Client(live.url, second).jobs()] == [job.id]
    assert Client(live.url, second).job(job.id).wait(timeout=120).state == "succeeded"


def test_grants_change_only_through_the_config_or_the_cli(live):
    paths = requests.get(f"{live.url}/openapi.json", timeout=30).json()["paths"]
    assert not [p for p in paths if any(word in p for word in ("token", "grant", "user"))]
    secret, token_id = create(live, "--user", "ivy", "--datasets", "breast_cancer_rules")
    assert whoami(live, secret).json()["datasets"] == ["breast_cancer_rules"]
    submitted = live.submit_raw(
        package_model(xgb.XGBClassifier(n_estimators=2)),
        {"dataset": "diabetes_rules", "label": "progression"},
        user=None,
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert submitted.status_code == 404 and submitted.json()["error"]["code"] == "unknown_dataset"


def test_every_change_is_audited_and_no_secret_is(live):
    secret, token_id = create(live, "--user", "jo", "--datasets", "breast_cancer_rules")
    new = cli(live, "rotate", token_id).stdout.strip()
    cli(live, "revoke", token_id)
    entries = [json.loads(line) for line in live.settings.audit_path.read_text().splitlines()]
    changes = [(e["event"], e["user"]) for e in entries if e.get("token") == token_id]
    assert changes == [("token_created", "jo"), ("token_rotated", "jo"), ("token_revoked", "jo")]
    text = live.settings.audit_path.read_text()
    assert secret not in text and new not in text
    verdict = verify(live.settings.audit_path, read_head(live.settings.db_path))
    assert verdict.ok, verdict.problem


def test_expiry_parsing():
    at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_expiry("90d", at).startswith("2026-04-01T00:00")
    assert parse_expiry("12h", at).startswith("2026-01-01T12:00")
    assert parse_expiry("2027-01-31", at).startswith("2027-01-31T00:00")
    from remote_magic_server.config.settings import ConfigError

    for bad in ("soon", "-3d", "2025-01-01"):
        with pytest.raises(ConfigError):
            parse_expiry(bad, at)


def scrape(server, secret: str | None) -> requests.Response:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    return requests.get(f"{server.url}/metrics", headers=headers, timeout=30)


def test_metrics_need_a_metrics_token_and_that_token_reads_nothing_else(live):
    """As JupyterHub's `authenticate_prometheus`: no token, an analyst's token or a bad one gets no
    metrics (they name every dataset); the owner's scraper token reads them and nothing else."""
    nobody = scrape(live, None)
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "unauthorized"
    assert "remote_magic" not in nobody.text
    analyst = scrape(live, live.tokens["alice"])
    assert analyst.status_code == 403 and analyst.json()["error"]["code"] == "forbidden"
    assert scrape(live, "rm_not-a-token").status_code == 401
    assert cli(live, "create", "--metrics", "--datasets", "diabetes_rules").returncode != 0

    secret, token_id = create(live, "--metrics", "--note", "prometheus")
    scraped = scrape(live, secret)
    assert scraped.status_code == 200 and "remote_magic_store_up 1.0" in scraped.text
    elsewhere = whoami(live, secret)
    assert elsewhere.status_code == 403 and elsewhere.json()["error"]["code"] == "forbidden"
    row = next(line for line in cli(live, "list").stdout.splitlines() if line.startswith(token_id))
    assert row.split()[1:3] == ["metrics", "(/metrics)"]
    cli(live, "revoke", token_id)
    assert scrape(live, secret).status_code == 401


def test_the_config_can_open_metrics_to_any_scraper(tmp_path):
    with running(
        tmp_path / "data", tmp_path / "server.log", {}, extra="metrics_without_token = true"
    ) as server:
        scraped = scrape(server, None)
        assert scraped.status_code == 200 and "remote_magic_store_up 1.0" in scraped.text
