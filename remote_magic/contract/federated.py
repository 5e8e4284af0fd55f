"""What a federated training's features must be on every server: the rules both sides apply.

The analyst's client builds the features (columns and public split candidates) from the servers'
catalogs before anything is spent; each server checks them again against its own schema and its
owner's declarations before it admits a row. One function, so the two checks cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .codes import Refusal
from .types import BOOLEAN, NUMBER, TEXT, kind_of
from .wire import FederatedColumn

TRAINER_KIND = {NUMBER: "numeric", BOOLEAN: "boolean", TEXT: "categorical"}
# The largest leaf of a model the rows are predicted by (a DP training's base model, a federated training's
# model so far or its batch's leaves): far above any margin a model needs, and float32 sums of such leaves
# stay finite, so no row's margin turns NaN where the analyst aimed a leaf.
LEAF_LIMIT = 1e6


def trainer_kind(dtype: str) -> str | None:
    """The DP trainer's kind of a column of this Arrow type (None: it cannot be a feature)."""
    return TRAINER_KIND.get(kind_of(dtype))


def check_columns(
    features: Sequence[FederatedColumn],
    names: Sequence[str],
    dtypes: Mapping[str, str],
    ranges: Mapping[str, tuple[float, float]],
    levels: Mapping[str, Sequence[str]],
) -> None:
    """Refuse features that are not the spec's feature columns `names` in order, of their kinds, with
    candidates inside the owner's declared range and levels among the declared ones."""
    if [f.name for f in features] != list(names):
        raise Refusal("invalid_request", "the features are not the spec's feature columns in order")
    for f in features:
        kind = trainer_kind(dtypes.get(f.name, ""))
        if kind != f.kind:
            raise Refusal("invalid_request", f"column {f.name!r} is {dtypes.get(f.name)}, not {f.kind}")
        if f.name in ranges and f.candidates:
            lo, hi = ranges[f.name]
            if min(f.candidates) < lo or max(f.candidates) > hi:
                raise Refusal("invalid_request", f"column {f.name!r}: a candidate outside its declared range")
        if f.name in levels and not set(f.levels) <= set(levels[f.name]):
            raise Refusal("invalid_request", f"column {f.name!r}: a level outside its declared levels")
