"""What must hold on every server before a federated training spends anything, checked on the public
catalogs: the same feature columns and label of the same kinds, mode dp everywhere, a declared range or
levels for every feature on every server (the split candidates are their intersection), settings the DP
trainer honours, and a budget left on each server for its training and its evaluation. Each failure
names the connection at fault. The servers' catalogs, then their budgets, are asked at once (threads);
of several failures, the first in the owners' order is reported."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from ..contract.codes import Refusal
from ..contract.federated import trainer_kind
from ..contract.wire import DatasetInfo, DatasetSpec, FederatedColumn, FederatedSettings
from .api import Client
from .errors import FederatedError, RemoteError

Owner = Client | tuple[Client, str]
T = TypeVar("T")


@dataclass
class Server:
    """One data owner's server as the coordinator sees it: a client, its dataset, its public catalog."""

    name: str
    client: Client
    spec: DatasetSpec
    info: DatasetInfo
    rho: float = 0.0
    spent: float = 0.0
    left: float | None = None
    steps: int = 0


def servers_of(owners: Mapping[str, Owner], spec: DatasetSpec) -> list[Server]:
    if len(owners) < 2:
        raise FederatedError(None, "a federated training needs at least two servers")
    found = [(name, *(o if isinstance(o, tuple) else (o, spec.dataset))) for name, o in owners.items()]
    infos = _each([lambda c=client, d=dataset: c.dataset(d) for _, client, dataset in found])
    servers = []
    for (name, client, dataset), info in zip(found, infos):
        if isinstance(info, RemoteError):
            raise FederatedError(name, str(info))
        servers.append(Server(name, client, spec.model_copy(update={"dataset": dataset}), info))
    return servers


def _each(calls: list[Callable[[], T]]) -> list[T | RemoteError]:
    """Every call's result (or its RemoteError), all at once, in order."""

    def attempt(call: Callable[[], T]) -> T | RemoteError:
        try:
            return call()
        except RemoteError as error:
            return error

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(attempt, calls))


def _features(spec: DatasetSpec, info: DatasetInfo) -> list[str]:
    """The spec's feature columns on one server, as its catalog resolves them (all features by default)."""
    if spec.features:
        return list(spec.features)
    return [c.name for c in info.columns if c.role == "feature" and c.name != spec.label]


def check_agreement(servers: list[Server], spec: DatasetSpec) -> tuple[list[str], dict[str, str]]:
    """The feature columns and their types, the same on every server, in mode dp; else refuse by name."""
    first = servers[0]
    names = _features(spec, first.info)
    dtypes = {c.name: c.dtype for c in first.info.columns}
    for server in servers:
        policy = server.info.policy
        if policy is None or policy.privacy != "dp":
            mode = policy.privacy if policy is not None else "unknown"
            raise FederatedError(
                server.name,
                f"dataset {server.spec.dataset!r} is in privacy mode {mode}; only mode dp takes part in a "
                "federated training",
            )
        theirs = {c.name: c.dtype for c in server.info.columns}
        if spec.label not in theirs:
            raise FederatedError(server.name, f"dataset {server.spec.dataset!r} has no label {spec.label!r}")
        columns = _features(spec, server.info)
        if columns != names:
            missing = sorted(set(names) ^ set(columns))
            raise FederatedError(
                server.name,
                f"its feature columns differ from {first.name}'s ({', '.join(missing) or 'their order'}); "
                "every server must have the same columns",
            )
        for column in [*names, spec.label]:
            if trainer_kind(theirs.get(column, "")) != trainer_kind(dtypes.get(column, "")):
                raise FederatedError(
                    server.name,
                    f"column {column!r} is {theirs.get(column)} there and {dtypes.get(column)} on "
                    f"{first.name}; the schemas must agree",
                )
    return names, dtypes


def public_features(servers: list[Server], names: list[str], dtypes: dict[str, str]) -> list[FederatedColumn]:
    """Split candidates every server's owner declared: the intersection of the ranges (numeric) and of
    the levels (text); a column some owner declared nothing for is refused by name."""
    from ..families.dpboost.candidates import DEFAULT_CANDIDATES
    from ..families.dpboost.features import candidates_between

    columns = []
    for name in names:
        kind = trainer_kind(dtypes[name])
        if kind is None:
            raise FederatedError(None, f"column {name!r} ({dtypes[name]}) cannot be a DP trainer's feature")
        if kind == "boolean":
            columns.append(FederatedColumn(name=name, kind="boolean", candidates=[0.5]))
            continue
        undeclared = [
            s.name
            for s in servers
            if name not in (s.info.column_ranges if kind == "numeric" else s.info.column_levels)
        ]
        if undeclared:
            what = "range" if kind == "numeric" else "levels"
            key = "column_ranges" if kind == "numeric" else "column_levels"
            raise FederatedError(
                undeclared[0],
                f"column {name!r} has no declared {what} there ({key} in the dataset's config); a "
                "federated training takes its split candidates from every owner's declarations: ask its "
                "owner, or leave the column out of --features",
            )
        if kind == "numeric":
            lo, hi = shared_range(servers, name)
            grid = candidates_between(lo, hi, DEFAULT_CANDIDATES)
            columns.append(FederatedColumn(name=name, kind="numeric", candidates=list(grid)))
        else:
            shared = [
                v
                for v in servers[0].info.column_levels[name]
                if all(v in s.info.column_levels[name] for s in servers)
            ]
            columns.append(FederatedColumn(name=name, kind="categorical", levels=shared))
    return columns


def shared_range(servers: list[Server], name: str) -> tuple[float, float]:
    """A numeric column's public range: the intersection of every owner's declared one."""
    lo = max(s.info.column_ranges[name][0] for s in servers)
    hi = min(s.info.column_ranges[name][1] for s in servers)
    if not lo < hi:
        raise FederatedError(None, f"column {name!r}: the owners' declared ranges do not overlap")
    return lo, hi


def settings_of(model: object, batch_size: int) -> FederatedSettings:
    from ..families.dpboost.params import settings_from_params

    params = model.get_params() if hasattr(model, "get_params") else dict(model)  # type: ignore[arg-type]
    try:
        settings = settings_from_params(params, classifier=None)
    except Refusal as refused:
        raise FederatedError(None, refused.message) from None
    if settings.objective == "reg:squarederror":
        raise FederatedError(None, "a federated training fits classifiers (binary:logistic, multi:softprob)")
    return FederatedSettings(
        objective=settings.objective,  # type: ignore[arg-type]
        num_class=settings.num_class,
        rounds=settings.rounds,
        max_depth=settings.max_depth,
        learning_rate=settings.learning_rate,
        reg_lambda=settings.reg_lambda,
        batch_size=min(batch_size, settings.rounds),
        grad_share=settings.grad_share,
        max_leaf=settings.max_leaf,
        seed=settings.seed,
        base_margin=list(settings.base_margin) if settings.base_margin else None,
    )


def check_budgets(servers: list[Server]) -> None:
    """Each server's training rho is its owner's (the policy's `rho_train`); refuse before anything is
    spent where the budget left cannot pay for it and the evaluation."""
    for server in servers:
        policy = server.info.policy
        assert policy is not None
        server.rho = float(policy.rho_train or 0.0)
        if server.rho <= 0:
            raise FederatedError(server.name, "its owner set no training budget (rho_train)")
    lefts = _each([lambda s=server: s.client.rho_left(s.spec.dataset) for server in servers])
    for server, left in zip(servers, lefts):
        if isinstance(left, RemoteError):
            raise FederatedError(server.name, str(left))
        server.left = left
        policy = server.info.policy
        assert policy is not None
        need = server.rho + float(policy.rho_per_job or 0.0)
        if server.left is not None and server.left + 1e-12 < need:
            raise FederatedError(
                server.name,
                f"your budget there ({server.left:.4g} left) cannot pay for the training and its evaluation "
                f"(rho {need:g}); nothing was spent on any server",
            )
