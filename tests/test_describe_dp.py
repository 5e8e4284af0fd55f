"""Describe in mode dp shows nothing chosen from exact values: histogram edges from the owner's declared
range or a DP sketch, categories from declared levels or a stable histogram (noisy counts over a
threshold). The worker's choice on its own with the desk's real OpenDP noise, then the real server."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from remote_magic.contract.rows import RARE_LEVEL
from remote_magic.families.dpboost.candidates import WIDE_GRID
from remote_magic_server.privacy import dp
from remote_magic_server.protocol import DescribeOptions
from remote_magic_server.worker.describe_task import nice_edges, nice_grid, public_choices, range_grid
from tests.serverproc import DEMO_NAMES, dataset_table, running

RHO = 0.002
DRAWS = 300


class ParentNoise:
    """The parent's side of `Channel.noise`: OpenDP's Gaussian, as the desk draws it; remembers asks."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, float, float]] = []

    def noise(self, values: list[float], l2: float, rho: float) -> list[float]:
        self.asked.append((len(values), l2, rho))
        return dp.gaussian(values, l2, rho)[0]


def options(**more) -> DescribeOptions:
    return DescribeOptions(max_categories=5, private=True, sketch_rho=RHO, delta=1e-6, **more)


def neighbours() -> tuple[pd.Series, pd.Series]:
    """A column and the same column with one more (far) row, whose exact 95th percentile moves the
    exact edges across a grid step."""
    values = np.round(np.random.default_rng(29).normal(50, 15, 2000), 1)
    return pd.Series(values), pd.Series(np.append(values, 1000.0))


def test_exact_edges_tell_one_row_but_the_sketched_edges_have_one_distribution():
    table, plus_one = neighbours()
    assert nice_edges(table.to_numpy()) != nice_edges(plus_one.to_numpy())  # what mode rules shows
    drawn = []
    for column in (table, plus_one):
        parent = ParentNoise()
        edges = [tuple(public_choices(options(), {"x": column}, parent)[0]["x"]) for _ in range(DRAWS)]
        assert parent.asked == [(len(WIDE_GRID) + 1, 1.0, RHO)] * DRAWS  # one release, charged RHO
        drawn.append(Counter(edges))
    outcomes = set(drawn[0]) | set(drawn[1])
    distance = sum(abs(drawn[0][e] - drawn[1][e]) for e in outcomes) / (2 * DRAWS)
    assert distance < 0.25, (distance, drawn)  # about 0.1 from sampling alone
    typical = drawn[0].most_common(1)[0][0]
    assert typical[0] <= 30 and typical[-1] >= 70  # the sketch still finds the middle of the values


def test_a_declared_range_gives_its_grid_whatever_the_rows_at_no_cost():
    table, plus_one = neighbours()
    for column in (table, plus_one):
        parent = ParentNoise()
        edges, _ = public_choices(options(ranges={"x": (0.0, 100.0)}), {"x": column}, parent)
        assert edges["x"] == nice_grid(0.0, 100.0) == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
        assert parent.asked == []


def test_a_declared_range_is_its_own_grid_from_end_to_end():
    """Found by review (rev9 #8): age declared [18, 90] showed `< 10`, `[10, 20)` and `>= 90`."""
    assert range_grid(18.0, 90.0) == [18, 20, 30, 40, 50, 60, 70, 80, 90]
    assert range_grid(0.0, 100.0) == nice_grid(0.0, 100.0)
    edges, _ = public_choices(options(ranges={"x": (18.0, 90.0)}), {"x": neighbours()[0]}, ParentNoise())
    assert edges["x"] == range_grid(18.0, 90.0)


def test_a_level_few_rows_hold_is_not_shown_and_declared_levels_are_shown_as_declared():
    text = pd.Series(["a"] * 3000 + ["b"] * 2000 + ["rare"] * 1)
    shown = Counter()
    for _ in range(100):
        _, levels = public_choices(options(levels={"u": ["p", "q"]}), {"t": text, "u": text}, ParentNoise())
        shown.update(levels["t"])
        assert levels["u"] == ["p", "q"]
    assert shown == {"a": 100, "b": 100}


@pytest.fixture(scope="module")
def described(tmp_path_factory):
    folder = tmp_path_factory.mktemp("describe_dp")
    rng = np.random.default_rng(1)
    rows = 4000
    table = pd.DataFrame(
        {
            "id": np.arange(rows),
            "x": rng.normal(50, 15, rows).round(1),
            "z": rng.lognormal(3, 1, rows).round(2),
            "t": rng.choice(["a", "b", "c"], rows),
            "y": rng.integers(0, 2, rows),
            "b": pd.array(np.where(np.arange(rows) % 10 == 0, None, rng.random(rows) < 0.3), dtype="boolean"),
        }
    )
    table.loc[0, "t"] = "only_one"
    path = folder / "described.parquet"
    table.to_parquet(path)
    declared = "column_ranges = { x = [0.0, 100.0], z = [0.0, 200.0] }\n"
    declared += 'column_levels = { t = ["a", "b", "c"], y = ["0", "1"], b = ["false", "true"] }\n'
    tables = dataset_table("half_declared", path, "y", column_ranges="{ x = [0.0, 100.0] }")
    tables += dataset_table("all_declared", path, "y") + declared
    tables += dataset_table("exact", path, "y", privacy="rules")
    users = {"alice": [*DEMO_NAMES, "half_declared", "all_declared", "exact"]}
    with running(folder, folder / "server.log", users, extra_datasets="\n" + tables) as server:
        yield server


def test_over_http_edges_are_the_declared_grid_and_the_sketch_is_charged(described):
    client = described.client()
    got = client.describe({"dataset": "half_declared", "label": "y"})
    grid = set(nice_grid(0.0, 100.0))
    bounds = {b.lower for b in got.columns["x"].histogram} | {b.upper for b in got.columns["x"].histogram}
    assert bounds - {None} <= grid and len(bounds - {None}) >= 3
    assert {c.value for c in got.columns["t"].categories} <= {"a", "b", "c"}
    assert got.privacy["rho"] == 0.004
    free = client.describe({"dataset": "all_declared", "label": "y"})
    assert free.privacy["rho"] == 0.002
    charges = {b.dataset: [c.rho for c in b.charges] for b in client.budget().report.datasets}
    assert charges["half_declared"] == [0.004] and charges["all_declared"] == [0.002]


def test_without_a_paid_sketch_an_undeclared_column_shows_one_bin_and_no_name():
    unpaid = DescribeOptions(max_categories=5, private=True)
    parent = ParentNoise()
    edges, levels = public_choices(unpaid, {"x": neighbours()[0], "t": pd.Series(["a"] * 500)}, parent)
    assert edges == {"x": []} and levels == {"t": []} and parent.asked == []


def test_a_derived_column_defined_otherwise_is_another_question(described):
    """The stored answer is the answer to the request as written: `w` as `x * 1000` and `w` as `z` are
    two questions, charged and answered each for itself, not the first's histogram repeated."""
    client = described.client()
    spec = {"dataset": "all_declared", "label": "y", "features": ["x"]}
    first = client.describe({**spec, "derive": {"w": "x * 1000"}})
    second = client.describe({**spec, "derive": {"w": "z"}})
    assert first.privacy["repeated"] is False and second.privacy["repeated"] is False
    assert second.privacy["rho"] > 0

    def edges(answer):
        return {b.upper for b in answer.columns["w"].histogram} - {None}

    assert max(edges(first)) > 10 * max(edges(second))
    again = client.describe({**spec, "derive": {"w": "x * 1000"}})
    assert again.privacy["repeated"] is True and edges(again) == edges(first)


def test_a_true_false_column_is_counted_as_true_and_false(described):
    """It was binned as a number, with bins like [0.2, 0.6) that no value can fall in. Its levels are
    its type's, in every mode: counted, noised and suppressed as any category's, never chosen from the
    rows (mode dp still sketches an undeclared one, as the parent charged)."""
    client = described.client()
    rows = pd.read_parquet(described.settings.datasets["exact"].path)["b"]
    for dataset in ("exact", "all_declared", "half_declared"):
        column = client.describe({"dataset": dataset, "label": "y"}).raw.columns
        [b] = [c for c in column if c.name == "b"]
        assert b.kind == "categorical" and b.histogram is None
        assert [c.value for c in b.categories] == ["False", "True"]
        counts = {c.value: c.count for c in b.categories}
        exact = {"False": int((rows == False).sum()), "True": int((rows == True).sum())}  # noqa: E712
        for level in exact:
            assert abs(counts[level] - exact[level]) <= (10 if dataset == "exact" else 150), (dataset, counts)
        assert b.missing is not None and abs(b.missing - int(rows.isna().sum())) <= 150


def test_a_declared_ranges_bins_stay_inside_it_and_missing_counts_say_their_noise(described):
    """Found by review (rev9 #8): bins reached outside the declared range (values outside it are
    clipped to its ends, as a job clips them, so the open outer bins are empty whatever the rows and
    their noise is dropped), and a noisy missing count of a column without missing values read as a
    fact ("missing 35"): it now carries its noise, as the row count does."""
    got = described.client().describe({"dataset": "all_declared", "label": "y"})
    for column, (low, high) in {"x": (0.0, 100.0), "z": (0.0, 200.0)}.items():
        bins = got.columns[column].histogram
        assert bins[0].lower == low and bins[-1].upper == high, bins
        assert all(b.lower is not None and b.upper is not None for b in bins), bins
        assert all(low <= b.lower < b.upper <= high for b in bins), bins
    half = got.raw.count_half_width
    assert half and f"missing {got.columns['b'].missing:,} +/- {half:.0f}" in repr(got)


def test_a_column_of_a_hundred_thousand_levels_shows_at_most_max_categories_and_says_so(tmp_path):
    """As pandas-profiling and JupySQL show a text column's top k: 10**5 distinct values plus 60 common
    ones. Mode dp shows at most `max_categories` (40) of the levels a noisy count selects (sketched) or
    of the declared ones, the largest by noisy count; mode rules the largest by exact count; all three
    say that more were cut (`categories_cut`) and count the rest in `other`. No rare value is named."""

    rng = np.random.default_rng(5)
    common = [f"common{i:02d}" for i in range(60)]
    codes = np.concatenate([np.repeat(common, 500), [f"rare{i:06d}" for i in range(100_000)]])
    table = pd.DataFrame({"id": np.arange(len(codes)), "code": rng.permutation(codes)})
    table["y"] = rng.integers(0, 2, len(table))
    path = tmp_path / "codes.parquet"
    table.to_parquet(path)
    levels = "column_levels = { code = [" + ", ".join(f'"{c}"' for c in common[:50]) + "] }\n"
    tables = dataset_table("sketched", path, "y") + dataset_table("declared", path, "y") + levels
    tables += dataset_table("exact", path, "y", privacy="rules")
    users = {"alice": ["sketched", "declared", "exact"]}
    with running(tmp_path, tmp_path / "server.log", users, extra_datasets="\n" + tables) as server:
        for dataset in ("sketched", "declared", "exact"):
            response = server.post("/describe", json={"dataset": dataset, "label": "y", "features": ["code"]})
            assert response.status_code == 200, response.text
            [column] = [c for c in response.json()["columns"] if c["name"] == "code"]
            names = [c["value"] for c in column["categories"]]
            # Mode rules merges the levels under `min_count` into one, `(rare)`, before describe sees them.
            assert len(names) == 40 and set(names) <= {*common, RARE_LEVEL}, (dataset, names)
            assert column["categories_cut"] is True and column["other"] > 9_000, dataset
            if dataset == "declared":
                assert set(names) <= set(common[:50])
            assert "rare0" not in response.text
        described = server.client().describe({"dataset": "exact", "label": "y", "features": ["code"]})
        assert "the 40 largest shown; more are in other" in repr(described)
