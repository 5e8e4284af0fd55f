"""Resolve a dataset spec against a table's columns: the one check that the server and the dry run share.

Pure: it takes the columns with their roles (from the Parquet footer and the data owner's config on the
server, from `GET /v1/datasets/{name}` in the dry run) and returns what a staging query needs, or raises a
`Refusal` with the code the server would answer. Because both sides call this function and the grammar
module, a spec the dry run calls fine is a spec the server accepts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .codes import Refusal
from .grammar import check_declared_levels, check_derive, filter_columns, parse_filter
from .types import BOOLEAN, FEATURE_KINDS, NUMBER, TEXT, TIME, check_derived, check_filter, kind_of
from .wire import ColumnInfo, DatasetInfo, DatasetSpec, is_dp, unknown_column_message

# The roles of the columns a filter or a derived column may not use, in words for a refusal.
ROLES = {"id": "the id column", "label": "a label column", "excluded": "excluded by the data owner"}


@dataclass(frozen=True)
class Resolved:
    """What a spec selects from a table, by column name."""

    features: list[str]
    filter_columns: list[str]
    derive_columns: list[str]
    derived: list[str]
    id_column: str
    label_dtype: str = ""

    @property
    def all_features(self) -> list[str]:
        """The dataset's chosen feature columns, then the derived ones (the model's inputs, in order)."""
        return [*self.features, *self.derived]


def resolve(
    spec: DatasetSpec, columns: Sequence[ColumnInfo], levels: Mapping[str, Sequence[str]] | None = None
) -> Resolved:
    """Check a spec against the columns and their roles, and its filters' text against the owner's
    declared `levels` of text columns (public); raise Refusal naming what is wrong."""
    roles = {c.name: c.role for c in columns}
    names = [c.name for c in columns]
    usable = [c for c in names if roles[c] in ("feature", "label")]
    ids = [c for c in names if roles[c] == "id"]
    if spec.label not in roles:
        labels = [c for c in names if roles[c] == "label"]  # suggest only columns that can be a label
        raise Refusal("unknown_column", unknown_column_message(spec.label, labels, "label"))
    if roles[spec.label] != "label":
        labels = ", ".join(repr(c) for c in names if roles[c] == "label")
        raise Refusal("invalid_spec", f"{spec.label!r} is not a label column; labels: {labels}")
    kinds = {c.name: kind_of(c.dtype) for c in columns}
    if spec.features is None:  # times and other values are never features by default (derive uses times)
        features = [c for c in names if roles[c] == "feature" and kinds[c] in FEATURE_KINDS]
    else:
        features = []
        for name in spec.features:
            if name in (spec.derive or {}) and name not in roles:
                raise Refusal(
                    "invalid_spec",
                    f"{name!r} is a derived column, and derived columns are always features: leave it out "
                    "of features",
                )
            if name not in roles:
                raise Refusal("unknown_column", unknown_column_message(name, usable, "features"))
            if roles[name] != "feature":
                raise Refusal("invalid_spec", f"column {name!r} cannot be used as a feature")
            if kinds[name] == TIME:
                raise Refusal(
                    "invalid_spec",
                    f"column {name!r} holds times, which are not features; derive them, e.g. "
                    f"{{'{name}_hour': 'hour({name})'}} (year, month, day, dayofweek, hour, epoch)",
                )
            if kinds[name] not in FEATURE_KINDS:
                raise Refusal("invalid_spec", f"column {name!r} holds values that cannot be features")
            if name not in features:
                features.append(name)
    if not features and not spec.derive:
        raise Refusal("invalid_spec", "the spec selects no features")
    for text, what in ((spec.where, "filter"), (getattr(spec.eval, "where", None), "eval filter")):
        if text is None:
            continue
        tree = parse_filter(text, usable, what, {c: ROLES[roles[c]] for c in names if c not in usable})
        if spec.label in filter_columns(tree):
            # A refusal or an answer that depends on which rows carry which label would tell the label.
            raise Refusal(
                "invalid_filter", f"the label {spec.label!r} may not appear in a {what}; filter on features"
            )
        check_filter(tree, kinds, what)
        check_declared_levels(tree, {c: v for c, v in (levels or {}).items() if kinds.get(c) == TEXT}, what)
    derive_columns = [c for c in names if roles[c] == "feature"]
    derive = spec.derive or {}
    if derive:
        others = {c: ROLES[roles[c]] for c in names if c not in derive_columns}
        for name, tree in check_derive(derive, derive_columns, names, others).items():
            check_derived(tree, kinds, f"derived column {name!r}")
    return Resolved(
        features=features,
        filter_columns=usable,
        derive_columns=derive_columns,
        derived=list(derive),
        id_column=ids[0] if ids else "",
        label_dtype=next(c.dtype for c in columns if c.name == spec.label),
    )


def class_values(classes: Sequence[str], dtype: str) -> set[object]:
    """Classes as the values of a label of this Arrow type, to compare two lists: numbers as numbers
    ("1" and "1.0" alike), booleans as true/false, anything else as text; raise Refusal naming a class
    that no value of the type can be, or one named twice. Judged on the public schema alone."""
    kind, found = kind_of(dtype), []
    for text in classes:
        if kind == NUMBER:
            try:
                value: object = float(text)
            except ValueError:
                value = None
            if value is None or not math.isfinite(value) or (dtype.startswith(("int", "uint")) and value % 1):
                raise Refusal("invalid_spec", f"class {text!r} is not a value of the label's type ({dtype})")
        elif kind == BOOLEAN:
            if text.lower() not in ("true", "false"):
                raise Refusal("invalid_spec", f"class {text!r} is not a value of a true/false label")
            value = text.lower() == "true"
        else:
            value = text
        found.append(value)
    if len(set(found)) < len(found):
        raise Refusal("invalid_spec", f"the classes {list(classes)} name one value twice")
    return set(found)


def with_model_classes(model: object, spec: DatasetSpec, dataset: DatasetInfo) -> DatasetSpec:
    """The spec of a job with a fitted classifier, with that model's classes as its classes, where the
    dataset is in a noisy mode and its owner declared none: there the server takes a classifier's
    classes only from the declaration or the spec, never from the rows. An XGBoost classifier's
    `classes_` are its codes 0 .. k-1, so they name the label's values only for a label of numbers (k
    codes: the classes 0 .. k-1) or of true/false (two: false, true); for a text label, or a model that
    is not a fitted classifier, the spec is left as it is (the server then asks for `classes`)."""
    private = dataset.policy is not None and is_dp(dataset.policy.privacy)
    if spec.classes is not None or not private or spec.label in dataset.column_levels:
        return spec
    try:
        k = len(model.classes_)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # not a classifier, or not fitted (a Pipeline raises)
        return spec
    kind = kind_of(next((c.dtype for c in dataset.columns if c.name == spec.label), ""))
    if kind == NUMBER:
        classes = [str(code) for code in range(k)]
    elif kind == BOOLEAN and k == 2:
        classes = ["false", "true"]
    else:
        return spec
    return spec.model_copy(update={"classes": classes})
