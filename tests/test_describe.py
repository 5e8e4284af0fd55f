"""`POST /v1/describe`, `Client.describe` and `%remote_describe` against the session's real server."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from IPython.core.error import UsageError

from remote_magic.client.errors import SpecError


def rounded(n: int) -> int:
    return 5 * math.floor(n / 5 + 0.5)


def test_describe_releases_only_checked_aggregates(server):
    data = pd.read_parquet(server.settings.datasets["synthetic_rules"].path)
    admitted = data[data["visits"] >= 2]
    got = server.client().describe({"dataset": "synthetic_rules", "label": "label", "where": "visits >= 2"})
    counts = admitted["label"].value_counts()
    assert got.classes == {str(k): rounded(n) for k, n in counts.items()}
    assert got.rows == sum(got.classes.values())
    assert got.privacy is None
    age = got.columns["age"]
    assert age.kind == "numeric" and age.missing == rounded(admitted["age"].isna().sum())
    assert abs(age.missing_rate - age.missing / got.rows) < 1e-3
    bins = age.histogram
    assert bins[0].lower is None and bins[-1].upper is None
    assert all(b.count >= 10 and b.count % 5 == 0 for b in bins)
    assert admitted["age"].min() not in {b.lower for b in bins} | {b.upper for b in bins}
    assert all(lo.upper == hi.lower for lo, hi in zip(bins, bins[1:]))
    region = got.columns["region"]
    assert {c.value for c in region.categories} == {"north", "south", "east", "west"}
    assert "Description of synthetic" in repr(got) and "<table" in got._repr_html_()


def test_describe_refuses_a_bad_spec_before_running(server):
    with pytest.raises(SpecError, match="agee"):
        server.client().describe({"dataset": "synthetic_rules", "label": "label", "where": "agee > 3"})
    response = server.post("/describe", user="bob", json={"dataset": "synthetic_rules", "label": "label"})
    assert response.status_code == 404


def test_remote_describe_magic(server, shell, monkeypatch):
    monkeypatch.setenv("REMOTE_MAGIC_TOKEN", server.tokens["alice"])
    shell.run_line_magic("remote_connect", server.url)
    out = shell.run_line_magic(
        "remote_describe", "--dataset breast_cancer_rules --label malignant --features mean_radius -o desc"
    )
    assert shell.user_ns["desc"] is out
    assert list(out.columns) == ["mean_radius"]
    assert out.histogram("mean_radius").min() >= 10
    with pytest.raises(UsageError, match="--label"):
        shell.run_line_magic("remote_describe", "--dataset breast_cancer_rules")
