"""A federated training's step inside the confined worker: one batch's per-leaf sums, noised by the parent.

The task carries no payload: the batch's structure, the public features and settings are JSON, and the
model so far is XGBoost JSON parsed here, in the sandbox. A training's first step stages and admits its
rows as a train job's (the spec's training rows; its evaluation rows stay out of the sums, kept for the
final evaluation) and the DP trainer's own per-partition set-up (`dpboost.on_parts`, the family seam)
bins both splits and predicts the model so far on them for their margins. With `order.keep` it then
leaves the training's session (binned rows, labels and margins of both splits, this batch and the class
names) in SESSION_OUT; the parent keeps the rows' admission itself. A later step carries no model but the
previous batch's leaf values (`order.leaves`): it takes the rows from the session (`order.session`),
moves the margins by those leaves on the session's batch (`Partition.apply`, as on a cluster) and tells
the parent it `Resumed` (charged as the first step's admission, without a reply to wait for); without a
session that leads to it, it is refused `federated_session_gone` before anything is charged. The final
evaluation (`order.evaluate`) does the same with the last batch's leaves on the evaluation rows only and
reports them scored as an evaluate job's worker scores them (a `TrainReport`; charged as an evaluate
job).
A training's sketch (`order.sketch`, before its first batch) stages and admits the rows as a first step
does, leaves them as staged (with `order.keep`) for the training's first step, which bins them to the
candidates the sketch gives (a session whose model so far is the public start), and reports their exact
counts over the public ranges' fine grids, followed with `order.prior` by the prior's gradient sums
(`dpboost.prior`), as one noise request (a `SketchReport`: the sketch's rho, L2 `prior.sketch_bound`),
which the parent draws and releases.
The sums are `Partition.sums`'. They go to the parent with the report, as one batch of two noise
requests (`NoiseBatch`: gradients, then hessians) at the sensitivity and cost the trainer's proof gives
for this batch (`schedule.leaf_releases`), which must be exactly the batch's share the parent charged;
the parent draws and releases its own noise, and the worker, which needs no answer, waits for none (the
session is written before the report, so a step is one message each way once the worker runs).

Why it is long: it is the worker's side of every request of a federated training (the sketch, each
step, the final evaluation), which share the staging, the admission and the session's files.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from remote_magic.contract.codes import Refusal
from remote_magic.contract.federated import LEAF_LIMIT
from remote_magic.families import scoring
from remote_magic.families.base import Part
from remote_magic.families.dpboost import Batch, Features, LeafUpdate, Partition, Settings, on_parts
from remote_magic.families.dpboost.booster import load
from remote_magic.families.dpboost.candidates import flat_counts, range_grids
from remote_magic.families.dpboost.family import check_label
from remote_magic.families.dpboost.prior import federated_prior, sketch_bound
from remote_magic.families.dpboost.schedule import leaf_releases
from remote_magic.families.dpboost.settings import federated_settings
from remote_magic.families.partitions import InProcess
from remote_magic.families.xgboost.leaves import check_booster

from ..protocol import (
    SESSION_IN,
    SESSION_OUT,
    Confusion,
    EvalStats,
    FederatedOrder,
    NoiseBatch,
    NoiseRequest,
    Resumed,
    RoundsReport,
    SketchReport,
    SumsReport,
    Task,
    TrainReport,
)
from ..runner import model_job
from ..runner.channel import Channel
from . import staging

HERE = Path(".")


def settings_of(order: dict) -> Settings:
    """The trainer's settings of a federated training (`federated_settings`), or a refusal."""
    try:
        return federated_settings(order)
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


def _staged(
    task: Task,
    channel: Channel,
    con: duckdb.DuckDBPyConnection | None,
    features: Features,
    settings: Settings,
    model: bytes,
) -> tuple[Partition, Partition, list[str]] | None:
    """Stage and admit the spec's rows, and their margins from the model so far: the training rows, the
    evaluation rows (a session scores the final model on them) and the class names (None: stopped)."""
    admitted = _admitted(task, channel, con, settings)
    if admitted is None:
        return None
    parts, classes = admitted
    part = parts.parts[0]
    parts.map(on_parts.set_up, features, settings, model)
    return part.state[on_parts.STATE], on_parts.binned(part, "eval", features, settings, model), classes


def _admitted(
    task: Task, channel: Channel, con: duckdb.DuckDBPyConnection | None, settings: Settings
) -> tuple[InProcess, list[str]] | None:
    """Stage and admit the spec's rows as a train job's, and their class names (None: stopped)."""
    assert task.staging is not None
    classifier = settings.objective != "reg:squarederror"
    expected = settings.num_class if settings.objective == "multi:softprob" else 2
    if classifier:  # the classes are the owner's declared ones, before any row is read
        check_label(True, None, task.staging.label_levels, expected, label=task.staging.label)
    channel.stage("staging")
    parts = InProcess([staging.stage(task, con=con)])
    admitted = model_job.admit(task, parts, channel, HERE, classifier)
    if admitted is None:
        return None
    classes = admitted[0]
    if classifier and len(classes) != expected:
        raise Refusal("invalid_request", f"the training rows have {len(classes)} classes, not {expected}")
    return parts, classes


def _tree_count(model: bytes, features: Features) -> int:
    """The model's trees; before any row is read, a model that cannot be used is refused at no cost."""
    try:
        usable = load(model).feature_names == features.names
        trees = json.loads(model)["learner"]["gradient_booster"]["model"]["trees"]
    except Exception:  # XGBoost's parser on bytes from the request
        usable = False
    if not usable or not isinstance(trees, list):
        raise Refusal("invalid_request", "the model so far does not load over the features")
    check_booster(model, LEAF_LIMIT)
    return len(trees)


def _resumed(
    features: Features, settings: Settings, leaves: list[float], trees: int, again: bool, splits: tuple
) -> tuple[list[Partition], list[str]] | None:
    """The session's rows of `splits` (train, eval) with their margins moved by the previous batch's leaf
    values (`again`: the step that left the session, asked again: they are there already), and the class
    names; None when the session does not lead to a model of `trees` trees with these leaves."""
    folder = HERE / SESSION_IN
    state = json.loads((folder / "state.json").read_text())
    if state["pending"] is None:  # a sketch's session: the admitted rows as staged, at the public start
        if trees != 0 or leaves or again:
            return None
        return [_unbinned(folder, split, features, settings) for split in splits], state["classes"]
    pending = Batch.from_dict(state["pending"])
    values = np.asarray(leaves, dtype=np.float64)
    if again:
        leads = trees == state["trees"]
    else:
        leads = trees == state["trees"] + pending.trees and values.size == pending.trees * pending.leaves
    if not leads:
        return None
    partitions = []
    for split in splits:
        arrays = [np.load(folder / f"{split}_{name}.npy") for name in ("codes", "labels", "margins")]
        partition = Partition.held(features, settings.objective_(), *arrays)
        if not again:
            partition.apply(LeafUpdate(pending, values.reshape(pending.trees, pending.leaves)))
        partitions.append(partition)
    return partitions, state["classes"]


def _unbinned(folder: Path, split: str, features: Features, settings: Settings) -> Partition:
    """A split's rows a sketch's session kept, binned to the step's candidates, at the public start."""
    with pa.memory_map(str(folder / f"{split}_rows.arrow")) as source:
        rows = pa.ipc.open_file(source).read_all()
    labels = np.load(folder / f"{split}_labels.npy")
    return Partition(features, rows, labels, settings.objective_(), None, settings.base_margin)


def _keep_rows(part: Part, classes: list[str]) -> None:
    """A sketch's session: the admitted rows of both splits as staged (Arrow) and their labels, which the
    training's first step bins to the candidates the sketch gives, and the class names."""
    folder = HERE / SESSION_OUT
    folder.mkdir()
    for split in ("train", "eval"):
        batches = list(on_parts.rows(part, split))
        schema = batches[0].schema if batches else part.split(split).x.schema
        with (
            pa.OSFile(str(folder / f"{split}_rows.arrow"), "wb") as sink,
            pa.ipc.new_file(sink, schema) as out,
        ):
            for batch in batches:
                out.write_batch(batch)
        np.save(folder / f"{split}_labels.npy", part.y(split))
    (folder / "state.json").write_text(json.dumps({"trees": 0, "pending": None, "classes": classes}))


def _keep(partitions: dict[str, Partition], trees: int, batch: dict, classes: list[str]) -> None:
    """The session after this step: the rows of each split, their margins at the model so far, this
    batch, whose leaf values the next step's model adds, and the class names."""
    folder = HERE / SESSION_OUT
    folder.mkdir()
    for split, partition in partitions.items():
        for name, array in (
            ("codes", partition.codes),
            ("labels", partition.labels),
            ("margins", partition.margins),
        ):
            np.save(folder / f"{split}_{name}.npy", array)
    state = {"trees": trees, "pending": batch, "classes": classes}
    (folder / "state.json").write_text(json.dumps(state))


def _evaluation(
    order: FederatedOrder, features: Features, settings: Settings, channel: Channel
) -> TrainReport:
    """The final model on the session's evaluation rows: their margins moved by the last batch's leaves,
    scored as an evaluate job's worker scores them (`scoring`), reported for the parent's DP release."""
    assert order.leaves is not None and order.trees is not None
    resumed = (
        _resumed(features, settings, order.leaves, order.trees, False, ("eval",)) if order.session else None
    )
    if resumed is None:
        raise Refusal("federated_session_gone", "this server holds no session that leads to this model")
    channel.send(Resumed())  # charged as an evaluate job on the session's evaluation rows; no reply
    (evaluation,), classes = resumed
    channel.stage("evaluating")
    task = "multiclass" if settings.objective == "multi:softprob" else "binary"
    pred, y = evaluation.objective.predictions(evaluation.margins), evaluation.labels
    try:
        scored = scoring.score(task, y, pred, len(classes))
    except ValueError as exc:
        raise Refusal(
            "evaluation_failed", "the model's predictions could not be scored on the evaluation rows"
        ) from exc
    stats = scoring.stats(task, y, pred, len(classes), None, scored=scored)
    rounds = order.trees // settings.objective_().trees_per_round
    return TrainReport(
        task=task,
        metrics=scored["metrics"],
        confusion=Confusion(labels=classes, counts=scored["confusion"]),
        feature_importance={},
        rounds=RoundsReport(base=0, new=rounds, total=rounds),
        stats=EvalStats(**stats),
    )


def _sketch(
    task: Task,
    channel: Channel,
    con: duckdb.DuckDBPyConnection | None,
    order: FederatedOrder,
    settings: Settings,
) -> SketchReport | None:
    """The training's sketch: the spec's training rows staged and admitted as a step's, counted over the
    public ranges' fine grids (`sketch_counts`, the DP trainer's own), with the prior's sums after them,
    one noise request at the sketch's rho and L2 `sketch_bound`: each row adds one to one bin of each
    range, and at most 1 (L2) to one prior bin of each scored column (None: stopped)."""
    assert order.sketch is not None
    admitted = _admitted(task, channel, con, settings)
    if admitted is None:
        return None
    parts, classes = admitted
    request = range_grids(order.sketch)
    found = parts.map(on_parts.sketch, request)[0]
    counts = flat_counts(request, on_parts.counts_of(found))
    prior = federated_prior(order.sketch, order.features, order.settings, order.prior)
    if prior is not None:  # the prior's sums follow the counts, in the same release
        counts += on_parts.sum_of(parts.map(on_parts.prior, prior, settings)).tolist()
    if order.keep:
        _keep_rows(parts.parts[0], classes)
    ask = NoiseRequest(
        kind="gaussian", values=counts, bound=sketch_bound(order.sketch, prior), rho=order.step_rho
    )
    return SketchReport(noise=NoiseBatch(requests=[ask]))


def run(
    task: Task, channel: Channel, con: duckdb.DuckDBPyConnection | None = None
) -> SumsReport | SketchReport | TrainReport | None:
    """One batch's sums, noised by the parent, or the final evaluation from the training's session;
    None when the parent stopped it at admission."""
    order = task.federated
    assert order is not None and task.spec is not None
    try:
        features = Features.from_dict({"columns": order.features})
    except (KeyError, TypeError, ValueError) as exc:
        raise Refusal("invalid_request", f"the features are not usable: {exc}") from None
    settings = settings_of(order.settings)
    if order.sketch is not None:
        return _sketch(task, channel, con, order, settings)
    if order.evaluate:
        return _evaluation(order, features, settings, channel)
    assert order.batch is not None
    batch = batch_of(order.batch, features, settings)
    g, h = leaf_releases(settings, settings.scales(order.rho), batch.rounds)
    if not math.isclose(g.rho + h.rho, order.step_rho, rel_tol=1e-9):
        raise Refusal("invalid_request", "the batch's rho is not its share of the training's rho")
    if order.leaves is not None:  # the training's session, if the parent found one that leads here
        assert order.trees is not None
        resumed = (
            _resumed(features, settings, order.leaves, order.trees, order.again, ("train", "eval"))
            if order.session
            else None
        )
        if resumed is None:
            raise Refusal("federated_session_gone", "this server holds no session that leads to this step")
        channel.send(Resumed())  # the session's rows, charged as the parent admitted them; no reply
        (partition, evaluation), classes = resumed
        trees = order.trees
    else:
        model = (HERE / order.model_file).read_bytes()
        trees = _tree_count(model, features)
        staged = _staged(task, channel, con, features, settings, model)
        if staged is None:
            return None
        partition, evaluation, classes = staged
    sums = partition.sums(batch)
    if order.keep:
        _keep({"train": partition, "eval": evaluation}, trees, order.batch, classes)
    asks = [
        NoiseRequest(kind="gaussian", values=[float(v) for v in values.ravel()], bound=r.bound, rho=r.rho)
        for values, r in ((sums[..., 0], g), (sums[..., 1], h))
    ]
    return SumsReport(
        trees=batch.trees, leaves=batch.leaves, staged=order.leaves is None, noise=NoiseBatch(requests=asks)
    )
