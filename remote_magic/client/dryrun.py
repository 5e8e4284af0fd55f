"""`%%remote_train --dry-run`: the same model and spec, checked and run here on the dataset's mock rows.

Mistakes that would otherwise cost a remote job (a misspelt feature, a filter on a column that does not
exist or outside the grammar, a label that is not one, a model beyond the server's bounds, a base model
that does not fit the features) show up locally, before anything is submitted. Nothing here imitates the
server: the spec is resolved by `specs.resolve`, the model's bytes are scanned by `payload.scan` (the
server's own rules), the rows are admitted by the server's staging query
(`query.staging_query`) run by DuckDB in memory over the mock rows, and the model is canonicalised,
bounded and fitted by its model family's own code. Mock values are not real, so admitted-row counts say
nothing about the hidden data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import html
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
from sqlglot import exp

from ..contract.codes import Refusal
from ..contract.query import EVAL_FLAG, ROW_ID, staging_query
from ..contract.rows import prepare
from ..contract.specs import Resolved, with_model_classes
from ..contract.types import TIME, continuous_label_hint, kind_of
from ..contract.wire import CostEstimate, DatasetInfo, DatasetSpec, MockData, is_dp
from ..display.cost import cost_lines
from ..families.aggregates import evaluate
from ..families.base import (
    Run,
    Split,
    encode_labels,
    is_classifier_task,
)
from ..families.partitions import one_machine
from .errors import DryRunError
from .model_checks import check_model
from .spec_input import as_spec

DRY_ROUNDS = 5
MOCK_TABLE = "remote_magic_mock_rows"
MOCK_ROW_NUMBER = "__remote_magic_mock_row"
FAMILY_LOG = "remote_magic.families.xgboost"  # logs XGBoost's own words when a fit fails (for servers)


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
        elif kind_of(c.dtype) == TIME:  # sent as ISO text; a time again, so derive's year() and hour() work
            frame[c.name] = pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601")
    frame.attrs = {
        "dataset": mock.dataset,
        "source": mock.source,
        "roles": {c.name: c.role for c in mock.columns},
    }
    return frame


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    """Drop the family's log records during a local fit: the DryRunError says XGBoost's words already,
    and with no handler configured Python would print them again on the notebook's stderr."""
    logger, drop = logging.getLogger(name), lambda _record: False
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _owner_shows_two_values(mock: pd.DataFrame, label: str) -> bool:
    """Whether the data owner's own mock rows show the label taking at most two values (a 0/1 label
    stored as decimals); synthesised rows know only the type, so they show nothing."""
    return mock.attrs.get("source") == "file" and label in mock and mock[label].dropna().nunique() <= 2


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
    cost: CostEstimate | None = None

    def __repr__(self) -> str:
        source = "a file from the data owner" if self.source == "file" else "synthesised from the schema"
        warned = self.cost is not None and bool(self.cost.warnings)
        lines = [
            f"Dry run of {'evaluation' if self.kind == 'evaluate' else 'training'} on {self.dataset}: "
            f"spec and model {'pass every check, but see the warnings' if warned else 'are fine'}; nothing "
            "was sent to the server.",
            f"mock rows: {self.mock_rows} ({source}); admitted by the filter: {self.admitted}; "
            f"train {self.train_rows}, eval {self.eval_rows}",
            f"label: {self.label}; features ({len(self.features)}): {', '.join(self.features)}",
        ]
        if self.kind == "train":
            lines.append(f"fitted {self.rounds} round(s) on the mock rows")
        return "\n".join(lines + self.notes + self._cost_lines())

    def _cost_lines(self) -> list[str]:
        return [] if self.cost is None else cost_lines(self.cost)

    def _repr_html_(self) -> str:
        lines = html.escape(repr(self)).split("\n")
        return (
            "<div class='remote-magic-dryrun'><b>" + lines[0] + "</b><br>" + "<br>".join(lines[1:]) + "</div>"
        )


def admit(
    spec: DatasetSpec,
    resolved: Resolved,
    mock: pd.DataFrame,
    kind: str,
    min_count: int = 10,
    label_levels: list[str] | None = None,
) -> pa.Table:
    """The mock rows the server's staging query admits, with its evaluation flag and their row numbers
    (with the owner's declared classes of the label, only rows of those classes, as on the server)."""
    rows = mock.assign(**{MOCK_ROW_NUMBER: np.arange(len(mock))})
    if resolved.id_column and resolved.id_column not in rows.columns:
        rows[resolved.id_column] = np.arange(len(mock))
    con = duckdb.connect(":memory:")
    try:
        con.register(MOCK_TABLE, rows)
        sql, params = staging_query(
            spec,
            resolved,
            exp.table_(MOCK_TABLE, quoted=True),
            exp.column(MOCK_ROW_NUMBER, quoted=True),
            kind,
            label_levels,
        )
        table = con.sql(sql, params=params).to_arrow_table()
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise DryRunError(f"the spec could not be run on the mock rows: {first}") from None
    finally:
        con.close()
    return prepare(table, resolved.all_features, min_count)


def _splits(table: pa.Table, features: list[str], label: str) -> tuple[Split, Split]:
    is_eval = table.column(EVAL_FLAG).to_numpy(zero_copy_only=False).astype(bool)
    data = table.drop_columns([EVAL_FLAG, ROW_ID])
    parts = []
    for mask in (~is_eval, is_eval):
        part = data.filter(pa.array(mask))
        parts.append(Split(x=part.select(features), y=part.column(label).to_numpy(zero_copy_only=False)))
    return parts[0], parts[1]


def _too_few(label: str, classes: list[str] | None, mock_rows: int) -> str:
    """Why the mock rows cannot fit a model, said in one line, rather than XGBoost's words on no rows."""
    if classes is not None:
        return (
            f"no mock row has a declared class of {label!r} ({', '.join(map(str, classes))}), so the model "
            "cannot be fitted on the mock rows; the spec and the model passed every other check. The data "
            f"owner's declared classes (`column_levels.{label}`) or a mock file would give it some"
        )
    return (
        f"the {mock_rows} mock row(s) are too few to fit the model on; the spec and the model passed "
        "every other check"
    )


def dry_run(
    model: object, spec: DatasetSpec | dict, dataset: DatasetInfo, mock: pd.DataFrame, kind: str = "train"
) -> DryRun:
    """Check the spec (a `DatasetSpec` or a dict, as `Client.train` takes) and the model as the server
    would, admit mock rows, and fit (or score) the model."""
    spec = with_model_classes(model, as_spec(spec), dataset)
    try:
        resolved, family, plan = check_model(model, spec, dataset, kind)
    except Refusal as refusal:
        raise DryRunError(refusal.message, code=refusal.code) from None
    features = resolved.all_features
    min_count = dataset.policy.min_count if dataset.policy is not None else 10
    classes = dataset.column_levels.get(spec.label, spec.classes)
    table = admit(spec, resolved, mock, kind, min_count, classes)
    train, evaluation = _splits(table, features, spec.label)
    n_admitted, n_eval = table.num_rows, len(evaluation.y)
    hint = continuous_label_hint(spec.label, resolved.label_dtype) if is_classifier_task(plan.task) else ""
    if hint and _owner_shows_two_values(mock, spec.label):
        hint = ""  # the owner's mock rows show a 0/1 label stored as decimals: a binary classifier, as there
    notes = [f"note: {hint}"] if hint else []
    if n_admitted < 2 or (kind == "train" and n_admitted - n_eval < 2):
        notes.append(
            "note: the filters admit (almost) none of the mock rows, which is expected when they test "
            "values that mock data does not have; the model was fitted on all mock rows instead"
        )
        everything = spec.model_copy(update={"where": None, "eval": None})
        train, evaluation = _splits(
            admit(everything, resolved, mock, "evaluate", min_count, classes), features, spec.label
        )
        train = evaluation
        if len(train.y) < 2:
            raise DryRunError(_too_few(spec.label, classes, len(mock)))
    fitted = 0
    try:
        with _quiet(FAMILY_LOG):
            labels = encode_labels(train.y, evaluation.y, spec.label, plan.task)
            parts = one_machine(train, evaluation, labels)
            noisy = dataset.policy is not None and is_dp(dataset.policy.privacy)
            run = Run(1, lambda _done, _latest: None, public_levels=noisy)
            if kind == "train":
                fitted = min(plan.rounds, DRY_ROUNDS)
                trial = dataclasses.replace(plan, rounds=fitted)
                family.train(trial, parts, labels.classes, run)
            else:
                evaluate(family, family.score(plan, parts, labels.classes, run), parts, len(labels.classes))
    except Refusal as refusal:
        # Here, unlike on the server, the library's own words may be shown: they are about mock rows.
        cause = str(refusal.__cause__ or "").strip().splitlines()
        detail = f" ({cause[0][:300]})" if cause else ""
        also = f"; {hint}" if hint else ""
        raise DryRunError(
            f"the model could not be {'scored' if kind == 'evaluate' else 'fitted'} on the mock rows: "
            f"{refusal.message}{detail}{also}",
            refusal.code,
        ) from None
    except (ValueError, TypeError) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        also = f"; {hint}" if hint else ""
        raise DryRunError(f"XGBoost refused the model on the mock rows: {first}{also}") from None
    return DryRun(
        kind=kind,
        dataset=dataset.name,
        source=str(mock.attrs.get("source", "synthetic")),
        label=spec.label,
        features=features,
        mock_rows=len(mock),
        admitted=n_admitted,
        train_rows=0 if kind == "evaluate" else n_admitted - n_eval,
        eval_rows=n_eval,
        rounds=fitted,
        notes=notes,
    )
