"""A federated training's step inside the confined worker: one batch's per-leaf sums, noised by the parent.

The task carries no payload: the batch's structure, the public features and settings are JSON, and the
model so far is XGBoost JSON parsed here, in the sandbox. The rows are staged and admitted as a train
job's (the spec's training rows; its evaluation rows stay out for the final evaluation). Then the DP
trainer's own per-partition steps (`dpboost.on_parts`, the family seam) run on the one partition: the
margins are the model's predictions on the rows, the sums those of `Partition.sums`. The sums go to the
parent as two noise requests at the sensitivity and cost the trainer's proof gives for this batch
(docs/privacy.md), which must be exactly the batch's share the parent charged; the parent releases its
own draws.
"""

from __future__ import annotations

import math
from pathlib import Path

import duckdb
import numpy as np

from remote_magic.contract.codes import Refusal
from remote_magic.families.dpboost import Batch, Features, Settings, on_parts
from remote_magic.families.dpboost.booster import load
from remote_magic.families.partitions import InProcess

from ..protocol import SumsReport, Task
from ..runner import model_job
from ..runner.channel import Channel
from . import staging

HERE = Path(".")


def settings_of(order: dict) -> Settings:
    """The trainer's settings of a federated training: random splits and no released intercept (one
    round trip per batch)."""
    known = {k: v for k, v in order.items() if k != "base_margin"}
    margin = order.get("base_margin")
    try:
        return Settings(
            **known,
            split_share=0.0,
            intercept_share=0.0,
            base_margin=tuple(margin) if margin else None,
        )
    except (TypeError, ValueError) as exc:
        raise Refusal("invalid_request", f"the training's settings are not usable: {exc}") from None


def batch_of(data: dict, features: Features, settings: Settings) -> Batch:
    """The batch's structure, checked against the public features and settings: every index in range."""
    try:
        batch = Batch.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise Refusal("invalid_request", f"the batch's structure is not readable: {exc}") from None
    objective = settings.objective_()
    trees, depth = batch.rounds * objective.trees_per_round, settings.max_depth
    nodes = 1 << (depth - 1)
    splits = np.array([c.splits for c in features.columns], dtype=np.int64)
    ok = (
        1 <= batch.rounds <= settings.batch_size
        and batch.classes == objective.trees_per_round
        and batch.feature.shape == (trees, depth)
        and batch.split.shape == (trees, depth, nodes)
        and batch.default_left.shape == (trees, depth, nodes)
        and batch.right.ndim == 4
        and batch.right.shape[:3] == (trees, depth, nodes)
        and batch.feature.size > 0
        and batch.feature.min() >= 0
        and batch.feature.max() < len(features.columns)
    )
    if ok:
        limit = splits[batch.feature][..., None]
        ok = bool((batch.split >= 0).all() and (batch.split < np.maximum(limit, 1)).all())
    if not ok:
        raise Refusal("invalid_request", "the batch's structure does not fit the features and settings")
    return batch


def step_cost(settings: Settings, rho: float, rounds: int) -> tuple[float, float, float, float]:
    """The batch's gradient and hessian releases: (l2, rho) each, as the trainer's accountant gives them
    for a training of `rho` over `settings.rounds` rounds (coordinator._leaves does the same)."""
    objective = settings.objective_()
    scales = settings.scales(rho)
    g, h = objective.gradient_bound, objective.hessian_bound
    scale = math.sqrt(rounds)
    return (
        g * scale,
        rounds * g * g / (2 * scales.sigma_g**2),
        h * scale,
        rounds * h * h / (2 * scales.sigma_h**2),
    )


def run(task: Task, channel: Channel, con: duckdb.DuckDBPyConnection | None = None) -> SumsReport | None:
    """One batch's sums, noised by the parent; None when the parent stopped it at admission."""
    order = task.federated
    assert order is not None and task.spec is not None
    try:
        features = Features.from_dict({"columns": order.features})
    except (KeyError, TypeError, ValueError) as exc:
        raise Refusal("invalid_request", f"the features are not usable: {exc}") from None
    settings = settings_of(order.settings)
    batch = batch_of(order.batch, features, settings)
    g_l2, g_rho, h_l2, h_rho = step_cost(settings, order.rho, batch.rounds)
    if not math.isclose(g_rho + h_rho, order.step_rho, rel_tol=1e-9):
        raise Refusal("invalid_request", "the batch's rho is not its share of the training's rho")
    model = (HERE / order.model_file).read_bytes()
    try:  # before any row is read: a model that cannot be used is refused at no cost
        booster = load(model)
        usable = booster.feature_names == features.names
    except Exception:  # XGBoost's parser on bytes from the request
        usable = False
    if not usable:
        raise Refusal("invalid_request", "the model so far does not load over the features")
    channel.stage("staging")
    parts = InProcess([staging.stage(task, con=con)])
    classes = model_job.admit(task, parts, channel, HERE, settings.objective != "reg:squarederror")
    if classes is None:
        return None
    expected = settings.num_class if settings.objective == "multi:softprob" else 2
    if settings.objective != "reg:squarederror" and len(classes) != expected:
        raise Refusal("invalid_request", f"the training rows have {len(classes)} classes, not {expected}")
    channel.stage("training", 0, batch.rounds)
    parts.map(on_parts.set_up, features, settings, model)
    sums = on_parts.sum_of(parts.map(on_parts.sums, batch))
    parts.map(on_parts.finish)
    channel.noise([float(v) for v in sums[..., 0].ravel()], g_l2, g_rho)
    channel.noise([float(v) for v in sums[..., 1].ravel()], h_l2, h_rho)
    return SumsReport(trees=batch.trees, leaves=batch.leaves)
