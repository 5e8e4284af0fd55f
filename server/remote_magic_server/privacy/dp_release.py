"""Release a train or evaluate job's numbers under differential privacy (mode dp). Pure, like policy.py.

Every number computed from hidden rows is an OpenDP draw (dp.py) on clipped per-row contributions:
the row counts of each split (drawn when the rows are admitted, before anything value-dependent runs),
then the metrics as noisy sums divided by the noisy count (log loss, accuracy, RMSE, MAE, R2), AUC with
noise calibrated to 1/(smallest class), and the opt-in extras (confusion matrix, an eval learning curve
at K checkpoints as one vector query, a permutation-importance ranking by noisy top-k). A job's budget
is split evenly over its count vector and its metrics; the extras have their own price. Rounding and
suppression follow as post-processing. Training-side numbers (gain, the training curve) and exact values
are never released. Each value carries a 95% interval computed from the noise model alone. Training rows
are protected by structure, decided before training: every new leaf holds `min_leaf_rows` rows.

Why it is long: each released number's sensitivity, clipping and interval are written next to each
other, so the whole accounting of a job can be checked in one file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import ConfusionMatrix, History, JobResult, ReleaseOptions, Rounds, Summary

from ..config.settings import Policy
from ..protocol import SplitCounts, Structure, TrainReport
from . import dp
from .policy import dropped_rows, release_count, round_metric, split_summary

METRICS = {"binary": ("auc", "log_loss", "accuracy"), "multiclass": ("log_loss", "accuracy")}
REGRESSION_METRICS = ("rmse", "mae", "r2")
LOWER_BOUND_SIGMAS = 3.0  # the smallest class is taken as its noisy count less 3 sigma (AUC sensitivity)
# r2 is released when the labels' noisy spread is this many of its noise's sd above 0. Near the line, a
# released r2 is one whose spread drew high noise: at 3 sd, on 2,839 costs in a range of 20,000, a
# constant prediction (r2 -2.0) had r2 released 29 times of 400, +1.8 off, its interval covering r2 18
# times; at 5 sd never. At 5, r2 of 4,000 gamma labels in a range of 400 comes out every time (its
# interval covering r2 190 times of 200), of 2,000 about half the time.
R2_SIGMAS = 5.0
DRAWS = 4000
LABEL_SDS = 6.0  # a cost preview takes a regression label's declared range as 6 of its sd wide (+-3 sd)
Z95 = 1.959964
# The most one row adds to a clipped log-loss sum, as the worker clips it (families/scoring.LOSS_CLIP,
# not imported: it would bring scikit-learn into the API process; a test holds the two equal).
LOSS_CLIP = math.log(100)


def task_of(counts: Mapping[str, SplitCounts]) -> str:
    """binary, multiclass or regression, from the admitted counts (classes are counted for classifiers)."""
    classes = counts["eval"].classes
    if classes is None:
        return "regression"
    return "binary" if len(classes) <= 2 else "multiclass"


def metric_names(task: str) -> tuple[str, ...]:
    return REGRESSION_METRICS if task == "regression" else METRICS[task]


def job_cost(policy: Policy, options: ReleaseOptions) -> float:
    """The zCDP cost of a job: its default releases, plus the extras it asked for."""
    cost = policy.dp_rho_job
    cost += policy.dp_rho_confusion if options.confusion else 0.0
    cost += policy.dp_rho_curve if options.curve else 0.0
    cost += policy.dp_rho_importance if options.importance else 0.0
    return cost


def share(policy: Policy, task: str) -> float:
    """Each default measurement's part of the job's budget: the count vector and one per metric."""
    return policy.dp_rho_job / (1 + len(metric_names(task)))


def expected_half_widths(
    policy: Policy, eval_rows: int, smallest_share: float = 0.5, classes: int = 2
) -> dict[str, float]:
    """The 95% half-widths a classifier's default metrics should get on `eval_rows` rows whose smaller
    class is `smallest_share` of them, computed as `release_dp` computes them: AUC's sensitivity is
    1 / (the smaller class's noisy count less 3 sigma), as the release uses it (binary only)."""
    task = "binary" if classes <= 2 else "multiclass"
    rho = share(policy, task)
    n = max(eval_rows, 1)
    count_sigma = dp.sigma(math.sqrt(2), rho)
    bound = smallest_share * n - LOWER_BOUND_SIGMAS * count_sigma
    widths = {
        "rows": round(Z95 * count_sigma, 1),
        "log_loss": round_metric(Z95 * dp.sigma(LOSS_CLIP, rho) / n),
        "accuracy": round_metric(Z95 * dp.sigma(1.0, rho) / n),
    }
    if task == "binary" and bound >= policy.min_class_rows:
        widths["auc"] = round_metric(Z95 * dp.sigma(1.0 / bound, rho))
    return dict(sorted(widths.items(), key=lambda item: item[0] != "rows"))


def expected_regression_half_widths(
    policy: Policy, eval_rows: int, label_range: tuple[float, float]
) -> dict[str, float]:
    """The 95% half-widths a regression's metrics should get on `eval_rows` rows with the owner's label
    range, from the noise `release_dp` adds: MAE's exactly; RMSE's at most (sqrt of the mean squared
    error's half-width, however small the error); R2's for labels whose sd is a sixth of the range (the
    range spans them +-3 sd), left out where such labels' spread would not stand clear of its noise."""
    rho = share(policy, "regression")
    n = max(eval_rows, 1)
    r = label_range[1] - label_range[0]
    unit = dp.sigma(1.0, rho)
    widths = {
        "rows": round(Z95 * unit, 1),
        "rmse": round_metric(math.sqrt(Z95 * r**2 * unit / n)),
        "mae": round_metric(Z95 * r * unit / n),
    }
    # The spread's noise is the sum of squares' (sqrt 2 over h^2, h = r / 2), as the release draws it.
    spread, spread_sigma = n * (r / LABEL_SDS) ** 2, dp.sigma(math.sqrt(2), rho) * r**2 / 4
    if spread > R2_SIGMAS * spread_sigma:
        widths["r2"] = round_metric(Z95 * math.hypot(r**2 * unit, spread_sigma) / spread)
    return widths


@dataclass
class NoisyCounts:
    """The admitted counts as released: drawn once, when the rows are admitted."""

    splits: dict[str, SplitCounts]
    sigma: float
    missing_label: int | None = None

    def to_json(self) -> dict:
        splits = {k: v.model_dump() for k, v in self.splits.items()}
        return {"splits": splits, "sigma": self.sigma, "missing_label": self.missing_label}

    @classmethod
    def from_json(cls, data: Mapping) -> NoisyCounts:
        return cls(
            {k: SplitCounts.model_validate(v) for k, v in data["splits"].items()},
            float(data["sigma"]),
            data.get("missing_label"),
        )


def draw_counts(
    counts: Mapping[str, SplitCounts], policy: Policy, missing_label: int | None = None
) -> NoisyCounts:
    """Noisy rows and class counts of every split, and the rows left out for a missing label, in one
    vector: a row is in one split and one class, or (label missing) in the left-out count alone, so one
    row moves at most two entries by one and the sensitivity is that of the counts without it."""
    task = task_of(counts)
    vector: list[int] = []
    for split in sorted(counts):
        vector.append(counts[split].rows)
        vector += [counts[split].classes[c] for c in sorted(counts[split].classes or {})]
    if missing_label is not None:
        vector.append(missing_label)
    noisy, scale = dp.gaussian_counts(
        vector, math.sqrt(2) if task != "regression" else 1.0, share(policy, task)
    )
    values = iter(max(0, n) for n in noisy)
    splits = {}
    for split in sorted(counts):
        rows = next(values)
        classes = (
            {c: next(values) for c in sorted(counts[split].classes or {})} if counts[split].classes else None
        )
        splits[split] = SplitCounts(rows=rows, classes=classes)
    return NoisyCounts(splits, scale, next(values) if missing_label is not None else None)


def check_cohort(noisy: NoisyCounts, policy: Policy) -> None:
    """The cohort minimums, judged on the noisy counts: a refusal is then a DP release like any other."""
    for split, counts in noisy.splits.items():
        if counts.rows < policy.min_rows:
            raise Refusal(
                "cohort_too_small",
                f"the {split} set has fewer than {policy.min_rows} rows (noisy count); admit more rows "
                "(a wider filter, or another evaluation split)",
            )
        small = [name for name, n in (counts.classes or {}).items() if n < policy.min_class_rows]
        if (
            small
        ):  # the classes are public in the noisy modes (declared, or the spec's): naming them tells nothing
            raise Refusal(
                "class_too_small",
                f"class {', '.join(map(repr, small))} has fewer than {policy.min_class_rows} rows in the "
                f"{split} set (noisy count)",
            )


def structure_flags(structure: Structure, policy: Policy) -> list[str]:
    """What a data owner should look at: a leaf or a prediction of the model that singles out fewer rows
    than the rules ask. Never a refusal in mode dp: whether a model singles out rows depends on the rows,
    so refusing would answer a question about them for free. The guarantee does not rest on these:
    released numbers are DP in the evaluation rows whatever the model is, and every new leaf holds at
    least `min_leaf_rows` training rows by the min_child_weight bound set before training."""
    flags = []
    for name in ("base_smallest_leaf", "trained_smallest_leaf"):
        value = getattr(structure, name)
        if value is not None and 0 < value < policy.min_leaf_rows:
            flags.append(f"{name} {value}")
    for name in ("base_isolated", "trained_isolated"):
        value = getattr(structure, name)
        if value is not None and 0 < value < policy.min_count:
            flags.append(f"{name} {value}")
    return flags


class _Draws:
    """Noisy values with their standard deviations, and intervals by resampling the noise model."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)
        self.value: dict[str, float] = {}
        self.sigma: dict[str, float] = {}

    def add(self, name: str, value: float, sigma: float) -> None:
        self.value[name], self.sigma[name] = value, sigma

    def interval(
        self, metric: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    ) -> tuple[float, float, float]:
        """The metric of the released values, and its 95% interval under the noise that was added: the
        metric's 2.5th and 97.5th percentiles over the released values redrawn with that noise. For a
        metric monotone in one noisy sum (RMSE, MAE, log loss, accuracy, AUC) that is the metric at each
        end of the sum's own 95% interval. Reflected about the point instead, as it was, an RMSE whose
        noisy sum fell below 0 (shown 0) got the interval (0, 0), which missed it."""
        point = float(metric({k: np.asarray(v) for k, v in self.value.items()}))
        samples = {k: v + self.rng.normal(0.0, self.sigma[k], DRAWS) for k, v in self.value.items()}
        low, high = np.nanpercentile(np.asarray(metric(samples), dtype=float), [2.5, 97.5])
        return point, float(low), float(high)

    def noise(self, metric: Callable[[Mapping[str, np.ndarray]], np.ndarray]) -> float:
        """The standard deviation of a metric of the released values under the noise that was added."""
        samples = {k: v + self.rng.normal(0.0, self.sigma[k], DRAWS) for k, v in self.value.items()}
        return float(np.nanstd(np.asarray(metric(samples), dtype=float)))


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "big")


def _rounded(
    point: float, low: float, high: float, floor: float, ceiling: float
) -> tuple[float, list[float]]:
    clip = lambda x: min(max(x, floor), ceiling)  # noqa: E731
    return round_metric(clip(point)), [round_metric(clip(low)), round_metric(clip(high))]


def _curve_point(key: str, metric: str) -> Callable[[Mapping[str, np.ndarray]], np.ndarray]:
    """A learning-curve point from its noisy loss sum: mean log loss, or RMSE."""
    if metric == "rmse":
        return lambda v: np.sqrt(np.maximum(v[key], 0) / np.maximum(v["n"], 1))
    return lambda v: v[key] / np.maximum(v["n"], 1)


def _swamped(metrics: dict[str, float | None], intervals: dict[str, list[float]], classes: int) -> list[str]:
    """Notes on a classifier's metrics whose 95% interval is wider than the step from a model that knows
    nothing to a perfect one (log loss ln k to 0, accuracy 1/k to 1, auc 0.5 to 1): "log_loss 0.017 [0,
    0.871]" beside accuracy 0.82 read as a near-perfect model (rev11 #6). The value stays (the analyst
    paid for it, and a federated training pools the owners' values, which narrows the interval); the note
    says it tells nothing alone. Decided on the released values and the known noise (post-processing)."""
    spans = {"log_loss": math.log(classes), "accuracy": 1 - 1 / classes, "auc": 0.5}
    notes = []
    for name, span in spans.items():
        band = intervals.get(name)
        if metrics.get(name) is not None and band is not None and band[1] - band[0] > span:
            notes.append(
                f"{name} tells nothing alone: its 95% interval is wider than the step from a model that "
                f"knows nothing to a perfect one ({span:.3g}); more evaluation rows narrow it"
            )
    return notes


def release_dp(
    report: TrainReport,
    noisy: NoisyCounts,
    policy: Policy,
    options: ReleaseOptions,
    job_id: str,
    dataset: str,
    kind: str,
) -> JobResult:
    """The job's result under DP: every number drawn, rounded, with its interval."""
    task = report.task
    stats = report.stats
    rho = share(policy, task)
    draws = _Draws(_seed(job_id, dataset))
    evaluation = noisy.splits["eval"]
    draws.add("n", max(evaluation.rows, 1), noisy.sigma)
    metrics: dict[str, float | None] = {}
    intervals: dict[str, list[float]] = {}
    notes: list[str] = []

    def put(name: str, metric: Callable, floor: float = -math.inf, ceiling: float = math.inf) -> None:
        value, interval = _rounded(*draws.interval(metric), floor, ceiling)
        metrics[name], intervals[name] = value, interval

    if task == "regression":
        if stats.residual_clip is None:
            metrics.update(dict.fromkeys(REGRESSION_METRICS))
            notes.append("rmse, mae and r2 need a label range set by the data owner (label_ranges)")
        else:
            r = stats.residual_clip
            h = stats.label_half_range or r / 2
            (sse,), s_sse = dp.gaussian([stats.sse], r**2, rho)
            (sae,), s_sae = dp.gaussian([stats.sae], r, rho)
            # One row adds y / h (in [-1, 1], y centred on the range) and (y / h)^2 (in [0, 1]) to the
            # scaled sums: one release at L2 sqrt 2. Unscaled at L2 sqrt(h^2 + h^4), the sum took the
            # sum of squares' noise, h times its own bound, and its square swamped r2's denominator.
            (sy, sy2), s_unit = dp.gaussian([stats.sum_y / h, stats.sum_y2 / h**2], math.sqrt(2), rho)
            for name, value, sigma in (
                ("sse", sse, s_sse),
                ("sae", sae, s_sae),
                ("sy", sy * h, s_unit * h),
                ("sy2", sy2 * h**2, s_unit * h**2),
            ):
                draws.add(name, value, sigma)
            mae = lambda v: np.maximum(v["sae"], 0) / np.maximum(v["n"], 1)  # noqa: E731
            put("mae", mae, 0.0)
            # RMSE is never below MAE; a noisy sum of squares swamped by its noise (clipped at 0) gave
            # "rmse 0 [0, 89.62]" beside "mae 15.91". Released as the larger of the two, in every
            # redrawn sample too, and its interval's ends no lower than MAE's (the true RMSE is at
            # least the true MAE, which MAE's low end bounds): post-processing of the released sums.
            put(
                "rmse", lambda v: np.maximum(np.sqrt(np.maximum(v["sse"], 0) / np.maximum(v["n"], 1)), mae(v))
            )
            intervals["rmse"] = [max(a, b) for a, b in zip(intervals["rmse"], intervals["mae"], strict=True)]
            # The labels' spread around their mean, from the noisy sums. One row moves sum y^2 by up to
            # h^2, so on a wide range or few rows its noise swamps the spread, and a floor on it released
            # r2 around -1e19 with an interval that missed the truth. Whether r2 comes out is decided on
            # the released values and the known noise alone (post-processing, as AUC's bound): only when
            # the spread stands R2_SIGMAS of its own noise above zero.
            total = lambda v: v["sy2"] - v["sy"] ** 2 / np.maximum(v["n"], 1)  # noqa: E731
            if float(total(draws.value)) <= R2_SIGMAS * draws.noise(total):
                metrics["r2"] = None
                notes.append(
                    "r2 needs the labels' spread clear of its noise: more rows, or a narrower label range"
                )
            else:
                put("r2", lambda v: 1 - v["sse"] / np.maximum(total(v), 1e-9), -math.inf, 1.0)
    else:
        (loss,), s_loss = dp.gaussian([stats.loss_sum or 0.0], stats.loss_clip or 0.0, rho)
        (correct,), s_correct = dp.gaussian([float(stats.correct or 0)], 1.0, rho)
        draws.add("loss", loss, s_loss)
        draws.add("correct", correct, s_correct)
        if task == "binary":
            smallest = (
                min((evaluation.classes or {"": 0}).values()) if len(evaluation.classes or {}) == 2 else 0
            )
            bound = smallest - LOWER_BOUND_SIGMAS * noisy.sigma
            # Decided on the noisy bound alone: past it, a class with no row (whose exact AUC is
            # undefined) is scored 0.5, so whether an AUC comes out never says whether one row of that
            # class exists (with public classes, the one row that would hold it).
            if bound < policy.min_class_rows:
                metrics["auc"] = None
                notes.append("auc needs both classes in the evaluation rows, each large enough")
            else:
                exact = 0.5 if stats.auc is None else stats.auc
                (auc,), s_auc = dp.gaussian([exact], 1.0 / bound, rho)
                draws.add("auc", auc, s_auc)
                put("auc", lambda v: v["auc"], 0.0, 1.0)
        put("log_loss", lambda v: v["loss"] / np.maximum(v["n"], 1), 0.0, stats.loss_clip or math.inf)
        put("accuracy", lambda v: v["correct"] / np.maximum(v["n"], 1), 0.0, 1.0)
        notes += _swamped(metrics, intervals, max(len(evaluation.classes or {}), 2))

    confusion = None
    if options.confusion and stats.confusion is not None:
        cells = [n for row in stats.confusion for n in row]
        noisy_cells, s_cells = dp.gaussian_counts(cells, 1.0, policy.dp_rho_confusion)
        size = len(stats.confusion)
        grid = [[max(0, noisy_cells[i * size + j]) for j in range(size)] for i in range(size)]
        labels = report.confusion.labels if report.confusion is not None else [str(i) for i in range(size)]
        confusion = ConfusionMatrix(
            labels=labels,
            counts=[[release_count(n, policy) for n in row] for row in grid],
        )
        for i in range(size):
            for j in range(size):
                draws.add(f"c{i}_{j}", grid[i][j], s_cells)
        if task == "binary":
            put(
                "f1", lambda v: 2 * v["c1_1"] / np.maximum(2 * v["c1_1"] + v["c0_1"] + v["c1_0"], 1), 0.0, 1.0
            )

    history = None
    if report.curve is not None:
        curve = report.curve
        sums, s_curve = dp.gaussian(
            curve.loss_sums, math.sqrt(len(curve.loss_sums)) * curve.loss_clip, policy.dp_rho_curve
        )
        points, bands = [], []
        for i, total in enumerate(sums):
            draws.add(f"k{i}", total, s_curve)
            mean = _curve_point(f"k{i}", curve.metric)
            value, band = _rounded(
                *draws.interval(mean), 0.0, math.inf if curve.metric == "rmse" else curve.loss_clip
            )
            points.append(value)
            bands.append(band)
        history = History(metric=curve.metric, eval=points, rounds=curve.rounds, eval_intervals=bands)

    ranking = None
    if report.importance_scores and options.importance:
        names = sorted(report.importance_scores)
        chosen = dp.top_k(
            [report.importance_scores[n] for n in names],
            options.importance,
            report.importance_clip or 1.0,
            policy.dp_rho_importance,
        )
        ranking = [names[i] for i in chosen]

    return JobResult(
        job_id=job_id,
        dataset=dataset,
        kind=kind,  # type: ignore[arg-type]
        task=task,
        metrics=metrics,
        intervals=intervals,
        history=history,
        importance_ranking=ranking,
        summary=Summary(
            train=split_summary(noisy.splits["train"], policy) if "train" in noisy.splits else None,
            eval=split_summary(evaluation, policy),
            dropped=dropped_rows(noisy.missing_label, policy),
        ),
        confusion_matrix=confusion,
        rounds=Rounds(**report.rounds.model_dump()),
        policy=policy.in_effect(),
        notes=notes,
    )
