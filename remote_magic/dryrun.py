"""`%%remote_train --dry-run`: the same model and spec, run here on the dataset's mock rows.

Mistakes that would otherwise cost a remote job (a misspelt feature, a filter on a column that does not
exist or outside the grammar, a label that is not one, a base model that does not fit the features) show
up locally, before anything is submitted. The filter is parsed with sqlglot and evaluated over pandas with
SQL's three-valued logic (a row is admitted only where the condition is true), the same grammar the
server enforces. Mock values are not real, so admitted-row counts say nothing about the hidden data.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import sqlglot
import xgboost as xgb
from sqlglot import exp

from .errors import DryRunError
from .wire import DatasetSpec, MockData, unknown_column_message

DRY_ROUNDS = 5


def mock_frame(mock: MockData) -> pd.DataFrame:
    """The mock rows as a DataFrame with the schema's types; `.attrs` keeps the roles and the source."""
    names = [c.name for c in mock.columns]
    frame = pd.DataFrame(mock.rows, columns=names)
    for c in mock.columns:
        column = frame[c.name]
        if c.dtype.startswith(("int", "uint")):
            frame[c.name] = column.astype("int64" if column.notna().all() else "float64")
        elif c.dtype in ("double", "float", "halffloat"):
            frame[c.name] = column.astype("float64")
        elif "string" in c.dtype:
            frame[c.name] = column.astype("object")
    frame.attrs = {
        "dataset": mock.dataset,
        "source": mock.source,
        "roles": {c.name: c.role for c in mock.columns},
    }
    return frame


class _Filter:
    """Evaluates a checked filter tree over a frame, with SQL NULL semantics (pandas nullable booleans)."""

    def __init__(self, frame: pd.DataFrame, columns: Sequence[str], where: str):
        self.frame = frame.convert_dtypes()
        self.columns = list(columns)
        self.where = where

    def mask(self, text: str) -> pd.Series:
        try:
            statements = [s for s in sqlglot.parse(text, dialect="duckdb") if s is not None]
        except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
            raise DryRunError(f"the {self.where} could not be parsed as a boolean expression") from None
        if len(statements) != 1:
            raise DryRunError(f"the {self.where} must be a single expression")
        value = self._eval(statements[0])
        if not isinstance(value, pd.Series):
            raise DryRunError(f"the {self.where} must be a condition on columns, such as age >= 18")
        return value.astype("boolean").fillna(False).astype(bool)

    def _eval(self, node: exp.Expression) -> object:
        if isinstance(node, exp.Paren):
            return self._eval(node.this)
        if isinstance(node, exp.Column):
            if node.table:
                raise DryRunError(f"qualified column names are not allowed in the {self.where}")
            if node.name not in self.columns:
                raise DryRunError(unknown_column_message(node.name, self.columns, self.where))
            return self.frame[node.name]
        if isinstance(node, exp.Literal):
            if node.is_string:
                return node.this
            number = float(node.this)
            return int(number) if number.is_integer() and "." not in node.this else number
        if isinstance(node, exp.Boolean):
            return bool(node.this)
        if isinstance(node, exp.Null):
            return pd.NA
        if isinstance(node, exp.Neg):
            return -self._eval(node.this)  # type: ignore[operator]
        comparisons = {
            exp.EQ: lambda a, b: a == b,
            exp.NEQ: lambda a, b: a != b,
            exp.GT: lambda a, b: a > b,
            exp.GTE: lambda a, b: a >= b,
            exp.LT: lambda a, b: a < b,
            exp.LTE: lambda a, b: a <= b,
        }
        for kind, op in comparisons.items():
            if type(node) is kind:
                return self._compare(op, self._eval(node.this), self._eval(node.expression))
        if isinstance(node, (exp.And, exp.Or)):
            left, right = self._bool(node.this), self._bool(node.expression)
            return left & right if isinstance(node, exp.And) else left | right
        if isinstance(node, exp.Not):
            return ~self._bool(node.this)
        if isinstance(node, exp.Is) and isinstance(node.expression, exp.Null):
            return self._series(self._eval(node.this)).isna().astype("boolean")
        if isinstance(node, exp.Between):
            this = self._eval(node.this)
            low, high = self._eval(node.args["low"]), self._eval(node.args["high"])
            return self._compare(lambda a, b: a >= b, this, low) & self._compare(
                lambda a, b: a <= b, this, high
            )
        if isinstance(node, exp.In) and not (node.args.get("query") or node.args.get("unnest")):
            this = self._series(self._eval(node.this))
            values = [self._eval(v) for v in node.expressions]
            if any(isinstance(v, pd.Series) for v in values):
                raise DryRunError(f"IN takes a list of literals only, in the {self.where}")
            found = this.isin([v for v in values if v is not pd.NA]).astype("boolean")
            return found.mask(this.isna(), pd.NA)
        raise DryRunError(f"{type(node).__name__} is not allowed in the {self.where}")

    def _series(self, value: object) -> pd.Series:
        if isinstance(value, pd.Series):
            return value
        return pd.Series([value] * len(self.frame), index=self.frame.index)

    def _bool(self, node: exp.Expression) -> pd.Series:
        return self._series(self._eval(node)).astype("boolean")

    def _compare(self, op, a: object, b: object) -> pd.Series:
        try:
            return self._series(op(self._series(a), b if not isinstance(b, pd.Series) else b)).astype(
                "boolean"
            )
        except TypeError:
            raise DryRunError(f"a comparison in the {self.where} mixes text and numbers") from None


@dataclass
class DryRun:
    """What a dry run did on the mock rows. Deterministic, so a notebook can check it."""

    kind: str
    dataset: str
    source: str
    label: str
    features: list[str]
    mock_rows: int
    admitted: int
    train_rows: int
    eval_rows: int
    rounds: int
    notes: list[str] = field(default_factory=list)

    def __repr__(self) -> str:
        source = "a file from the data owner" if self.source == "file" else "synthesised from the schema"
        lines = [
            f"Dry run of {'evaluation' if self.kind == 'evaluate' else 'training'} on {self.dataset}: "
            "spec and model are fine; nothing was sent to the server.",
            f"mock rows: {self.mock_rows} ({source}); admitted by the filter: {self.admitted}; "
            f"train {self.train_rows}, eval {self.eval_rows}",
            f"label: {self.label}; features ({len(self.features)}): {', '.join(self.features)}",
        ]
        if self.kind == "train":
            lines.append(f"fitted {self.rounds} round(s) on the mock rows")
        return "\n".join(lines + self.notes)

    def _repr_html_(self) -> str:
        lines = html.escape(repr(self)).split("\n")
        return (
            "<div class='remote-magic-dryrun'><b>" + lines[0] + "</b><br>" + "<br>".join(lines[1:]) + "</div>"
        )


def check_spec(spec: DatasetSpec, roles: dict[str, str]) -> list[str]:
    """The features the spec selects; raise DryRunError for an unknown or misused column."""
    usable = list(roles)
    if spec.label not in roles:
        raise DryRunError(unknown_column_message(spec.label, usable, "label"))
    if roles[spec.label] != "label":
        labels = ", ".join(repr(c) for c, r in roles.items() if r == "label")
        raise DryRunError(f"{spec.label!r} is not a label column; labels: {labels}")
    if spec.features is None:
        return [c for c, r in roles.items() if r == "feature"]
    features: list[str] = []
    for name in spec.features:
        if name not in roles:
            raise DryRunError(unknown_column_message(name, usable, "features"))
        if roles[name] != "feature":
            raise DryRunError(f"column {name!r} cannot be used as a feature")
        if name not in features:
            features.append(name)
    if not features:
        raise DryRunError("the spec selects no features")
    return features


def _derived(spec: DatasetSpec, roles: dict[str, str]) -> list[str]:
    """Names of the spec's derived columns, after checking that each uses only feature columns."""
    derive = getattr(spec, "derive", None) or {}
    feature_columns = [c for c, r in roles.items() if r == "feature"]
    for name, text in derive.items():
        if name in roles:
            raise DryRunError(f"derived column {name!r} has the name of a dataset column")
        try:
            tree = sqlglot.parse_one(text, dialect="duckdb")
        except (sqlglot.errors.ParseError, sqlglot.errors.TokenError):
            raise DryRunError(f"derived column {name!r}: the expression could not be parsed") from None
        for column in tree.find_all(exp.Column):
            if column.name not in feature_columns:
                raise DryRunError(
                    unknown_column_message(column.name, feature_columns, f"derived column {name!r}")
                )
    return list(derive)


def _plan(model: object) -> tuple[dict, int, xgb.Booster | None, bool | None]:
    """XGBoost params, rounds, base booster and whether it classifies (None: from the objective)."""
    if isinstance(model, (xgb.XGBClassifier, xgb.XGBRegressor)):
        try:
            base = model.get_booster()
        except Exception:  # noqa: BLE001 - an unfitted estimator raises NotFitted
            base = None
        params = {k: v for k, v in model.get_xgb_params().items() if v is not None and k != "missing"}
        return (
            params,
            int(model.get_params().get("n_estimators") or 100),
            base,
            isinstance(model, xgb.XGBClassifier),
        )
    if isinstance(model, xgb.Booster):
        return {}, 10, model, None
    if isinstance(model, dict) and isinstance(model.get("params"), dict):
        return dict(model["params"]), int(model.get("num_boost_round", 10)), model.get("booster"), None
    raise DryRunError(
        "the model is not an XGBClassifier, XGBRegressor, Booster or {'params': ..., 'num_boost_round': N}"
    )


def _split(admitted: pd.DataFrame, spec: DatasetSpec, kind: str, filt: _Filter) -> pd.Series:
    """Which admitted rows are evaluation rows: the spec's split, or the server's defaults."""
    if spec.eval is not None and hasattr(spec.eval, "where"):
        return filt.mask(spec.eval.where).loc[admitted.index]
    if spec.eval is None and kind == "evaluate":
        return pd.Series(True, index=admitted.index)
    fraction, seed = (spec.eval.fraction, spec.eval.seed) if spec.eval is not None else (0.2, 0)
    rng = np.random.default_rng(seed)
    return pd.Series(rng.random(len(admitted)) < fraction, index=admitted.index)


def dry_run(model: object, spec: DatasetSpec, mock: pd.DataFrame, kind: str = "train") -> DryRun:
    """Check the spec against the mock schema, apply its filters, and fit (or score) the model."""
    roles: dict[str, str] = mock.attrs["roles"]
    features = check_spec(spec, roles)
    filt = _Filter(mock, list(roles), "filter")
    notes: list[str] = []
    admitted = mock
    if spec.where is not None:
        admitted = mock[filt.mask(spec.where)]
    eval_filter = _Filter(mock, list(roles), "eval filter")
    is_eval = _split(admitted, spec, kind, eval_filter) if len(admitted) else pd.Series(dtype=bool)
    n_admitted, n_eval = len(admitted), int(is_eval.sum())
    derived = _derived(spec, roles)
    if derived:
        rng = np.random.default_rng(0)
        mock = mock.assign(**{name: np.round(rng.normal(size=len(mock)), 3) for name in derived})
        admitted = mock.loc[admitted.index]
        features = features + derived
        notes.append(
            "note: derived columns (" + ", ".join(derived) + ") were checked for the columns they use; "
            "their dry-run values are placeholders"
        )
    params, rounds, base, classifier = _plan(model)
    if kind == "evaluate" and base is None:
        raise DryRunError("evaluation needs a fitted model; fit it first")
    if n_admitted < 2 or (kind == "train" and n_admitted - n_eval < 2):
        notes.append(
            "note: the filters admit (almost) none of the mock rows, which is expected when they test "
            "values that mock data does not have; the model was fitted on all mock rows instead"
        )
        admitted, is_eval = mock, pd.Series(False, index=mock.index)
    rows = admitted[~is_eval] if kind == "train" else admitted[is_eval] if n_eval else admitted
    x = rows[features].copy()
    for name in features:
        if x[name].dtype == object:
            x[name] = x[name].astype("category")
    params, y = _target(params, rows[spec.label], classifier, base)
    fitted = 0
    try:
        if kind == "train":
            fitted = min(rounds, DRY_ROUNDS)
            dtrain = xgb.DMatrix(x, label=y, enable_categorical=True)
            xgb.train({**params, "nthread": 1}, dtrain, num_boost_round=fitted, xgb_model=base)
        else:
            base.predict(xgb.DMatrix(x, enable_categorical=True), validate_features=True)  # type: ignore[union-attr]
    except (xgb.core.XGBoostError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise DryRunError(f"XGBoost refused the model on the mock rows: {first}") from None
    return DryRun(
        kind=kind,
        dataset=str(mock.attrs["dataset"]),
        source=str(mock.attrs["source"]),
        label=spec.label,
        features=features,
        mock_rows=len(mock),
        admitted=n_admitted,
        train_rows=0 if kind == "evaluate" else n_admitted - n_eval,
        eval_rows=n_eval if kind == "train" or n_eval else n_admitted,
        rounds=fitted,
        notes=notes,
    )


def _target(params: dict, label: pd.Series, classifier: bool | None, base: xgb.Booster | None):
    """Encode the label as the server does: classes as 0..k-1, with a matching objective."""
    objective = str(params.get("objective") or "")
    if classifier is None:
        classifier = objective.startswith(("binary:", "multi:"))
    if not classifier:
        return params, pd.to_numeric(label, errors="coerce").to_numpy(dtype=float)
    classes = sorted(label.dropna().unique().tolist(), key=str)
    codes = label.map({c: i for i, c in enumerate(classes)}).to_numpy(dtype=float)
    params = dict(params)
    if len(classes) > 2:
        params.update(objective="multi:softprob", num_class=len(classes))
    elif not objective.startswith("binary:"):
        params["objective"] = "binary:logistic"
    params.setdefault("base_score", 0.5)
    return params, codes
