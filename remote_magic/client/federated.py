"""One DP model over several data owners' servers: the coordinator runs here, every row stays home.

Each data owner runs their own server on their own table (same columns), with their own policy, tokens,
budget and audit log. The DP trainer's coordinator (`dpboost.Coordinator`, as it is) runs in this
process: it draws each batch's structure from public split candidates, and its `sums` are the sum of
every server's answer to one `POST /v1/federated/sums` per batch, asked of all servers at once. Each
server computes its exact per-leaf sums with the trainer's own per-partition code, noises them through
its own release desk and charges its own ledger, so the coordinator's `noise` is the identity: the sum
of noisy sums is what it gets, and nothing else. Random splits (no per-level round trips) and no
released intercept (a public `base_score` may set it) keep it to one round trip per batch of trees.
A training has a random id: its first step sends each server the model so far and the server keeps the
staged rows and margins as the training's session; each later step sends only the previous batch's
leaf values. A server whose session is gone (`federated_session_gone`) is sent that step again with the
whole model; the final evaluation ends the sessions (docs/federated.md, "Sessions").

Before anything is spent: every server's catalog (public) must show the same feature columns and label of
the same kinds, in mode dp, with declared bounds for every feature (the text candidates are the intersection
of the declared levels), and each analyst budget must cover its training and its evaluation. Then every
server draws a DP sketch of its training rows over the fine grids of the intersected numeric ranges (`POST
/v1/federated/sketch`, `SKETCH_SHARE` of its rho, on its own ledger), and the numeric candidates are the
quantiles of their sum; the same release's gradient sums at the start weigh the columns the structure
draws (`dpboost.prior`); the sketch's rows are the training's first session there, so its first step sends no
model and stages nothing. At the end each server scores the final model on its own evaluation rows under DP
from the training's session (its sketch or first step staged them; each step moved their margins), released
and charged as an evaluate job's result, which ends the session; a server whose session is gone runs an
ordinary evaluate job instead. The result pools them, weighted by the noisy row counts.
"""

from __future__ import annotations

import functools
import math
import secrets
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from ..contract.codes import Refusal
from ..contract.federated import check_columns
from ..contract.query import DEFAULT_TRAIN_EVAL
from ..contract.wire import (
    DatasetSpec,
    FederatedColumn,
    FederatedEvaluateRequest,
    FederatedSketchRequest,
    FederatedSketchUse,
    FederatedStepRequest,
    FederatedSums,
)
from ..display.federated import FederatedResult, OwnerResult
from ..display.model import estimator_for
from ..display.result import TrainResult
from .errors import FederatedError, RemoteError, RemoteMagicError
from .spec_input import as_spec

if TYPE_CHECKING:
    from ..contract.wire import FederatedSettings
    from ..families.dpboost import Coordinator
import contextlib

from .federated_checks import (
    Owner,
    Server,
    check_agreement,
    check_budgets,
    public_features,
    servers_of,
    settings_of,
    shared_range,
)

DEFAULT_BATCH = 10
STEP_TIMEOUT = 600.0


def _post_step(server: Server, body: FederatedStepRequest, model: Callable[[], str]) -> FederatedSums:
    """One step on one server; a step with the previous batch's leaves that finds no session there
    (restarted, idle too long) is sent again with the whole model, at no cost for the first."""
    try:
        return server.client.federated_sums(body, STEP_TIMEOUT)
    except RemoteError as error:
        if error.code != "federated_session_gone":
            raise
    whole = body.model_copy(update={"model": model(), "leaves": None, "trees": None})
    return server.client.federated_sums(whole, STEP_TIMEOUT)


def federated_train(
    model: object,
    spec: DatasetSpec | dict,
    owners: Mapping[str, Owner],
    batch_size: int = DEFAULT_BATCH,
    on_batch: Callable[[int, int], None] | None = None,
    sketch: bool = True,
) -> FederatedResult:
    """Train one DP model over every owner's rows, then evaluate it on each owner's evaluation rows.

    `owners` maps a connection's name to its `Client` (the spec's dataset on it) or to `(client,
    dataset)`. `batch_size` trees share one round trip. A server that refuses or stops ends the training
    with a `FederatedError` naming it; each server has then been charged only for the batches it
    answered. `on_batch(done, rounds)` is called after each batch (a progress line). With `sketch` (the
    default) the numeric columns' candidates are the quantiles of every server's DP sketch of its
    training rows, each server paying `SKETCH_SHARE` of its training rho for its own; without, they are
    spread evenly over the declared ranges, at no cost."""
    from ..families.dpboost import Coordinator, Features
    from ..families.dpboost.candidates import SKETCH_SHARE
    from ..families.dpboost.settings import federated_settings

    spec = as_spec(spec)
    started = time.monotonic()
    servers = servers_of(owners, spec)
    names, dtypes = check_agreement(servers, spec)
    columns = public_features(servers, names, dtypes)
    for server in servers:  # the same check each server makes itself
        try:
            check_columns(columns, names, dtypes, server.info.column_ranges, server.info.column_levels)
        except Refusal as refused:
            raise FederatedError(server.name, refused.message) from None
    settings = settings_of(model, batch_size)
    check_budgets(servers)
    with ThreadPoolExecutor(max_workers=2 * len(servers)) as pool:
        ranges = {c.name: shared_range(servers, c.name) for c in columns if c.kind == "numeric"}
        training = secrets.token_urlsafe(24)
        drawn, weights = (
            _sketch(servers, columns, settings, ranges, training, pool) if sketch and ranges else (None, None)
        )
        if drawn is not None:
            columns = _sketched(columns, drawn)
        features = Features.from_dict({"columns": [c.model_dump() for c in columns]})
        trainer = federated_settings(settings.model_dump())
        share = 1 - SKETCH_SHARE if drawn is not None else 1.0
        rho = share * min(s.rho for s in servers)  # what the leaves spend
        coordinator = Coordinator(features, trainer, rho, lambda values, l2, rho: values, weights=weights)
        common = {"features": columns, "settings": settings, "training": training, "sketch": drawn}
        try:
            round_trips, leaves = _train(servers, common, coordinator, pool, on_batch)
        except FederatedError as stopped:  # the server that stopped it keeps its session until it expires
            list(pool.map(lambda s: _end(s, training), [s for s in servers if s.name != stopped.connection]))
            raise
        final = {**common, "leaves": leaves}
        bodies = [
            FederatedEvaluateRequest(**final, spec=s.spec, rho=s.rho, trees=len(coordinator.trees))
            for s in servers
        ]
        task = "multiclass" if settings.objective == "multi:softprob" else "binary"
        built = pool.submit(_built, coordinator, task)  # beside the evaluations
        evaluated = [pool.submit(_evaluate, s, b, lambda: built.result()[1]) for s, b in zip(servers, bodies)]
        trained, estimator = built.result()
        evaluations = [e.result() for e in evaluated]
    owners_out = [
        OwnerResult(
            s.name, s.spec.dataset, result, s.spent, s.steps, s.info.policy.rho_cap if s.info.policy else None
        )
        for s, result in zip(servers, evaluations)
    ]
    return FederatedResult(
        model=trained,
        estimator=estimator,
        owners=owners_out,
        trees=len(coordinator.trees),
        round_trips=round_trips,
        seconds=time.monotonic() - started,
    )


def _sketch(
    servers: list[Server],
    columns: list[FederatedColumn],
    settings: FederatedSettings,
    ranges: dict[str, tuple[float, float]],
    training: str,
    pool: ThreadPoolExecutor,
) -> tuple[FederatedSketchUse, np.ndarray]:
    """Every server's DP sketch of its training rows over the ranges' public grids, with the prior's
    sums (`dpboost.prior`), at once, added up; each server charges its own ledger for its own. The
    candidates' counts, and the column weights the random structure is drawn by."""
    from ..families.dpboost import Features
    from ..families.dpboost.candidates import range_grids
    from ..families.dpboost.prior import column_weights, federated_prior

    bodies = [
        FederatedSketchRequest(
            spec=s.spec,
            features=columns,
            settings=settings,
            ranges=ranges,
            rho=s.rho,
            training=training,
            prior=True,
        )
        for s in servers
    ]
    dumped = [c.model_dump() for c in columns]
    prior = federated_prior(ranges, dumped, settings.model_dump(), True)
    assert prior is not None
    counted = sum(len(grid) + 2 for grid in range_grids(ranges).grids.values())
    futures = [pool.submit(s.client.federated_sketch, b, STEP_TIMEOUT) for s, b in zip(servers, bodies)]
    total, variance = np.zeros(counted + prior.size), 0.0
    for server, future in zip(servers, futures):
        try:
            answer = future.result()
        except RemoteMagicError as error:
            raise FederatedError(server.name, f"its sketch failed: {error}") from None
        server.spent += answer.privacy.rho
        server.left = answer.privacy.rho_remaining
        counts = np.asarray(answer.counts, dtype=np.float64)
        if len(counts) != len(total) or not np.all(np.isfinite(counts)):
            raise FederatedError(server.name, f"its sketch has {len(counts)} values, not {len(total)} finite")
        if not (answer.sigma > 0 and math.isfinite(answer.sigma)):
            raise FederatedError(server.name, "its sketch says no noise was drawn")
        total += counts
        variance += answer.sigma**2
    features = Features.from_dict({"columns": dumped})
    weights = column_weights(features, prior, total[counted:], math.sqrt(variance))
    return FederatedSketchUse(ranges=ranges, counts=[float(v) for v in total[:counted]]), weights


def _sketched(columns: list[FederatedColumn], sketch: FederatedSketchUse) -> list[FederatedColumn]:
    """The columns with the sketch's quantiles as the numeric columns' candidates (the servers check
    them against the same counts)."""
    from ..families.dpboost.candidates import quantile_candidates

    try:
        found = quantile_candidates(sketch.ranges, sketch.counts)
    except ValueError as exc:
        raise FederatedError(None, f"the servers' sketches do not add up: {exc}") from None
    return [
        c.model_copy(update={"candidates": list(found[c.name])}) if c.name in found else c for c in columns
    ]


def _train(
    servers: list[Server],
    common: dict,
    coordinator: Coordinator,
    pool: ThreadPoolExecutor,
    on_batch: Callable[[int, int], None] | None,
) -> tuple[int, list[float]]:
    """Every batch: one step on every server at once, their sums added up; the round trips made and the
    last batch's leaf values (each server's session adds them for the final evaluation)."""
    settings: FederatedSettings = common["settings"]
    round_trips = done = 0
    # The previous batch's leaves, which each server's session adds; none before the first batch, whose
    # step continues the sketch's session (the rows it staged) where there was a sketch.
    leaves: list[float] | None = [] if common["sketch"] is not None else None
    for batch in coordinator.requests():
        model = functools.cache(lambda: coordinator.model().decode())
        step = {**common, "spec": None, "batch": batch.to_dict()}  # type: ignore[union-attr]
        if leaves is None:
            step["model"] = model()
        else:
            step.update(leaves=leaves, trees=len(coordinator.trees))
        bodies = [FederatedStepRequest(**{**step, "spec": s.spec, "rho": s.rho}) for s in servers]
        futures = [pool.submit(_post_step, s, b, model) for s, b in zip(servers, bodies)]
        answers, failed = [], None
        for server, future in zip(servers, futures):
            try:
                answer = future.result()
            except RemoteMagicError as error:
                failed = failed or (server, error)
                continue
            server.steps += 1
            server.spent += answer.privacy.rho
            server.left = answer.privacy.rho_remaining
            answers.append(answer)
        round_trips += 1
        if failed is not None:
            server, error = failed
            ran = ", ".join(f"{s.name} {s.steps}" for s in servers)
            raise FederatedError(
                server.name,
                f"{error} (the training stopped at batch {round_trips} of "
                f"{math.ceil(settings.rounds / settings.batch_size)}; batches each server answered "
                f"and was charged for: {ran})",
            )
        shape = (batch.trees, batch.leaves)  # type: ignore[union-attr]
        g = np.sum([np.reshape(a.gradients, shape) for a in answers], axis=0)
        h = np.sum([np.reshape(a.hessians, shape) for a in answers], axis=0)
        update = coordinator.release(batch, np.stack([g, h], axis=-1))
        leaves = [float(v) for v in update.values.ravel()]  # type: ignore[union-attr]
        done += batch.rounds  # type: ignore[union-attr]
        if on_batch is not None:
            on_batch(done, settings.rounds)
    assert leaves is not None
    return round_trips, leaves


def _built(coordinator: Coordinator, task: str) -> tuple[bytes, object]:
    """The final model as XGBoost JSON, and an estimator that predicts with it."""
    model = coordinator.model()
    return model, estimator_for(model, task)


def _end(server: Server, training: str) -> None:
    """Drop the training's session on the server; one that cannot be reached drops it on its own."""
    with contextlib.suppress(RemoteMagicError):
        server.client.end_federated(training)


def _evaluate(server: Server, body: FederatedEvaluateRequest, estimator: Callable[[], object]) -> TrainResult:
    """The final model on the server's evaluation rows (the held-out split its steps left out), scored
    from the training's session, which it ends; a server whose session is gone (restarted, idle too
    long) scores the same rows with an evaluate job, charged the same."""
    try:
        try:
            return server.client.federated_evaluate(body, STEP_TIMEOUT)
        except RemoteError as error:
            if error.code != "federated_session_gone":
                raise
        spec = server.spec.model_dump(mode="json", exclude_none=True)
        spec.setdefault("eval", DEFAULT_TRAIN_EVAL)
        return server.client.evaluate(estimator().get_booster(), spec)  # type: ignore[attr-defined]
    except RemoteMagicError as error:
        raise FederatedError(server.name, f"the final evaluation failed: {error}") from None
