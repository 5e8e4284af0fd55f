"""Noise a data scientist can work with, in mode dp, in a real IPython shell against a real server:
compare tables and `%remote_jobs` carry 95% intervals and a ranking does not order runs within the noise;
describe counts carry +/- and say they are noisy; the best-round note fires only beyond the noise; the
cost preview's interval is the released one's (a 16%-positive label) and says when the cap would pass."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from remote_magic import TrainResult, compare
from remote_magic.contract.wire import JobResult
from tests.serverproc import dataset_table, running
from tests.test_magics import run

ROWS = 20_000
POSITIVE = 0.16


def table(path, rows: int = ROWS, positive: float = POSITIVE) -> None:
    """Five features and a binary label, `positive` of it 1, with a moderate signal (AUC about 0.8)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(rows, 5))
    score = x[:, 0] + 0.5 * x[:, 1] + rng.normal(scale=1.2, size=rows)
    y = (score > np.quantile(score, 1 - positive)).astype(np.int64)
    frame = pd.DataFrame(x, columns=[f"x{i}" for i in range(5)]).assign(y=y)
    frame.insert(0, "id", np.arange(1, rows + 1, dtype=np.int64))
    frame.to_parquet(path)


def classes(label: str) -> str:
    """A label's declared classes (mode dp trains a classifier only on declared ones)."""
    return f'{{ {label} = ["0", "1"] }}'


@pytest.fixture(scope="module")
def noisy(server, tmp_path_factory):
    """Mode dp: `small` (the breast-cancer table), `even` (3,000 rows, two even classes: intervals
    about +/- 0.07 on AUC); and in mode dp_eval_only (jobs of the evaluation's cost alone) `rare` (16%
    positive, rho cap 0.025: a describe and two jobs fit, a third does not)."""
    base = tmp_path_factory.mktemp("noisy")
    table(base / "rare.parquet")
    table(base / "even.parquet", rows=3000, positive=0.5)
    tables = (
        dataset_table(
            "small",
            server.settings.datasets["breast_cancer"].path,
            "malignant",
            column_levels=classes("malignant"),
        )
        + dataset_table("even", base / "even.parquet", "y", column_levels=classes("y"))
        + dataset_table(
            "rare",
            base / "rare.parquet",
            "y",
            privacy="dp_eval_only",
            policy="{ dp_rho_cap = 0.025 }",
            column_levels=classes("y"),
        )
    )
    with running(base / "data", base / "log", {"eve": ["small", "even", "rare"]}, tables) as served:
        yield served


@pytest.fixture()
def eve(noisy, shell_as):
    return shell_as(noisy, "eve")


def model(depth: int) -> str:
    return (
        "\nfrom xgboost import XGBClassifier\n"
        f"model = XGBClassifier(n_estimators=10, max_depth={depth}, min_child_weight=3)\n"
    )


def overlap(a, b) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def test_a_sweep_compared_carries_intervals_and_is_not_ranked_within_the_noise(eve):
    flags = "-d even -l y --eval-fraction 0.3 --seed 1"
    runs = {f"depth {d}": run(eve, f"%%remote_train {flags}" + model(d)) for d in (2, 3, 4)}
    table = compare(runs)
    text = repr(table)
    for name, result in runs.items():
        low, high = result.intervals["auc"]
        assert result._metric_text("auc") in text and "[" in result._metric_text("auc")
        assert table.intervals.loc[name, ("auc", "low")] == low
        assert table.intervals.loc[name, ("auc", "high")] == high
        # the review's 10: `.table` holds the intervals the README promises, and the dataset's version
        assert (table.table.loc[name, "auc low"], table.table.loc[name, "auc high"]) == (low, high)
        version = result.raw.dataset_version
        assert version is not None and table.table.loc[name, "dataset"] == f"even@{version}"
    ranking = table.ranking()
    order = ranking.split(": ", 1)[1].split("\n")[0]
    names = [n.strip() for n in order.replace("~", ">").split(">")]
    assert sorted(names) == sorted(runs)
    symbols = [s for s in order.split() if s in ("~", ">")]
    for (a, b), symbol in zip(zip(names, names[1:]), symbols):
        joined = overlap(runs[a].intervals["auc"], runs[b].intervals["auc"])
        assert symbol == ("~" if joined else ">"), ranking
    assert "~" in symbols, "on 900 evaluation rows these three models are within the noise of each other"
    assert "do not choose on it" in text and "differential-privacy noise" in text
    assert "do not choose on it" in table._repr_html_()
    figure = metric_chart(table)
    drawn = {row["run"]: row for row in figure["data"]["values"]}
    for name, result in runs.items():
        assert [drawn[name]["low"], drawn[name]["high"]] == list(result.intervals["auc"])
    assert "errorbar" in marks(figure) and figure["encoding"]["y"]["scale"] == {"zero": False}
    verdicts = table.versus_best()
    best = max(runs, key=lambda name: runs[name].metrics["auc"])
    for name, result in runs.items():
        expected = "best" if name == best else None
        if name != best:
            tied = overlap(result.intervals["auc"], runs[best].intervals["auc"])
            expected = "within the noise" if tied else "beyond the noise"
        assert verdicts[name] == drawn[name]["versus best"] == expected

    jobs = eve.run_line_magic("remote_jobs", "-n 3")
    metric = {row[0]: dict(zip(jobs.header, row))["main metric"] for row in jobs.rows}
    for result in runs.values():
        low, high = result.intervals["auc"]
        assert metric[result.job_id].startswith("auc ") and f"[{low:g}, {high:g}]" in metric[result.job_id]


def metric_chart(comparison) -> dict:
    """The main metric's chart of the comparison's Vega-Lite figure (the last of the panel)."""
    return comparison.charts()["hconcat"][-1]


def marks(chart: dict) -> list[str]:
    return [
        layer["mark"] if isinstance(layer["mark"], str) else layer["mark"]["type"] for layer in chart["layer"]
    ]


def error_bars(fig):
    """The error bars drawn on the bars of a comparison's matplotlib figure, or None."""
    from matplotlib.container import BarContainer

    return next(c for c in fig.axes[1].containers if isinstance(c, BarContainer)).errorbar


def _scored(auc: float, band: list[float] | None) -> TrainResult:
    """A result with this eval AUC and, in mode dp, this 95% interval (mode rules: none)."""
    raw = {
        "job_id": "j",
        "dataset": "d",
        "kind": "train",
        "task": "binary",
        "metrics": {"auc": auc},
        "summary": {"eval": {"rows": 1000}},
        "rounds": {"base": 0, "new": 10, "total": 10},
    }
    return TrainResult(JobResult.model_validate({**raw, "intervals": {"auc": band} if band else {}}))


def test_the_compare_figure_draws_each_interval_and_marks_runs_not_told_from_the_best():
    runs = {
        "depth 2": _scored(0.9459, [0.9159, 0.9759]),
        "depth 4": _scored(0.9282, [0.8982, 0.9582]),
        "depth 6": _scored(0.8010, [0.7810, 0.8210]),
    }
    comparison = compare(runs)
    figure = metric_chart(comparison)
    drawn = {row["run"]: row for row in figure["data"]["values"]}
    for name, result in runs.items():
        assert (drawn[name]["low"], drawn[name]["high"]) == result.intervals["auc"]
    assert [drawn[name]["versus best"] for name in runs] == ["best", "within the noise", "beyond the noise"]
    assert marks(figure) == ["rect", "point", "errorbar", "text"]
    band = figure["layer"][0]["data"]["values"]
    assert band == [{"low": 0.9159, "high": 0.9759}], "the grey band is the best run's interval"
    assert "not told from the best" in " ".join(figure["title"]["subtitle"])
    fig = comparison.plot()
    faded = [patch.get_alpha() for patch in fig.axes[1].patches]
    assert faded == [1.0, 1.0, 0.35] and error_bars(fig) is not None


def test_in_mode_rules_the_compare_figure_has_no_intervals():
    comparison = compare({"shallow": _scored(0.91, None), "deep": _scored(0.93, None)})
    figure = metric_chart(comparison)
    assert marks(figure) == ["bar", "text"] and figure["title"] == "auc (eval)"
    assert all(row["low"] is None and row["high"] is None for row in figure["data"]["values"])
    assert comparison.versus_best() == {"shallow": None, "deep": "best"}
    assert error_bars(comparison.plot()) is None


def test_describe_counts_carry_their_noise(eve):
    shown = repr(run(eve, "%remote_describe -d small -l malignant"))
    assert "every count is noisy (differential privacy): within +/- " in shown
    assert " rows" in shown.splitlines()[0] and "+/-" in shown.splitlines()[0]


def test_the_preview_interval_is_the_released_one_and_the_cap_is_said(eve):
    # tells eve the class balance (0.002); `--classes` may name the owner's declared classes again
    assert sorted(run(eve, "%remote_describe -d rare -l y --classes 0,1").classes) == ["0", "1"]
    preview = run(eve, "%%remote_train --dry-run -d rare -l y --seed 1" + model(3))
    expected = preview.cost.expected["auc"]
    assert "smaller class 16% of the rows" in repr(preview)
    result = run(eve, "%%remote_train -d rare -l y --seed 1" + model(3))
    low, high = result.intervals["auc"]
    released = (high - low) / 2
    assert abs(expected - released) <= 0.25 * released, (expected, released)

    run(eve, "%%remote_train -d rare -l y --seed 2" + model(3))  # 0.022 of 0.025 spent
    over = run(eve, "%%remote_train --dry-run -d rare -l y --seed 3" + model(3))
    assert over.cost.over_cap and "it would pass your budget's cap and be refused" in repr(over)
    assert "this would pass your budget's cap" in repr(over)


def _result(values: list[float], bands: list[list[float]]) -> TrainResult:
    """A mode-dp result whose eval curve has these checkpoint values and intervals."""
    raw = JobResult.model_validate(
        {
            "job_id": "j",
            "dataset": "d",
            "kind": "train",
            "task": "binary",
            "metrics": {"log_loss": values[-1]},
            "intervals": {"log_loss": bands[-1]},
            "history": {
                "metric": "logloss",
                "eval": values,
                "rounds": [10 * (i + 1) for i in range(len(values))],
                "eval_intervals": bands,
            },
            "summary": {"eval": {"rows": 1000}},
            "rounds": {"base": 0, "new": 10 * len(values), "total": 10 * len(values)},
        }
    )
    return TrainResult(raw)


def test_the_best_round_note_fires_only_beyond_the_noise():
    values = [0.30, 0.25, 0.20, 0.1637, 0.17, 0.18, 0.19, 0.20, 0.21, 0.2292]
    wide = [[v - 0.04, v + 0.04] for v in values]
    assert _result(values, wide).past_best_note() is None, "0.1637 and 0.2292 are within each other's noise"
    narrow = [[v - 0.01, v + 0.01] for v in values]
    note = _result(values, narrow).past_best_note()
    assert "best at round 40" in note and "set n_estimators near 40" in note
    assert "early stopping" not in note, "the server refuses early_stopping_rounds in every mode"


def test_empty_fields_in_mode_dp_say_which_extra_fills_them(eve):
    flags = "-d even -l y --eval-fraction 0.3 --seed 1"
    plain = run(eve, f"%%remote_train {flags}" + model(2))  # the sweep's stored answer: no new cost
    assert plain.history.empty and plain.confusion_matrix is None
    shown = repr(plain)
    assert "result.history (--curve K" in shown and "result.confusion_matrix (--confusion)" in shown
    assert "--importance K" in shown and "empty in mode dp until asked for" in plain._repr_html_()
