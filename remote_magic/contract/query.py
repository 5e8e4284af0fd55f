"""The staging query of a resolved spec, built by sqlglot from checked trees: never from user text.

One builder for the server's worker (which reads the dataset's Parquet file) and the client's dry run
(which reads the mock rows registered in an in-memory DuckDB), so both admit rows by the same SQL. The
train/eval split is a hash of the id column and the seed, so it is the same on every run; each admitted
row also carries its row number, which the differencing guard remembers. Rows stream in file order.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from sqlglot import exp

from .grammar import parse_derive, parse_filter
from .rows import FLOAT32_MAX
from .specs import Resolved
from .types import BOOLEAN, kind_of
from .wire import DatasetSpec

SPLIT_BUCKETS = 1_000_000
EVAL_FLAG = "__remote_magic_is_eval"
MISSING_FLAG = "__remote_magic_missing_label"
ROW_ID = "__remote_magic_row_id"
DEFAULT_TRAIN_EVAL = {"fraction": 0.2, "seed": 0}
DECIMAL = re.compile(r"(half)?float\d*|double")
NUMERIC = re.compile(r"u?int\d*|(half)?float\d*|double|decimal.*")


def default_eval(kind: str) -> dict | None:
    """Without an `eval` in the spec, training holds out 20% (seed 0); evaluation scores every row."""
    return DEFAULT_TRAIN_EVAL if kind == "train" else None


def finite_or_null(expression: exp.Expression) -> exp.Expression:
    """A derived value as a DOUBLE, NULL where it overflows, divides by zero, is not finite, lies beyond
    float32's range (XGBoost reads it as inf and refuses the rows) or does not read as a number, so that
    no failure depends on the values of some row (the cast inside the TRY: a failed cast is a failure
    too)."""
    value = exp.func("try", exp.Cast(this=exp.paren(expression), to=exp.DataType.build("double")))
    in_range = exp.LTE(this=exp.func("abs", value.copy()), expression=exp.Literal.number(repr(FLOAT32_MAX)))
    return exp.Case(
        ifs=[exp.If(this=exp.and_(exp.func("isfinite", value.copy()), in_range), true=value.copy())]
    )


def derive_query(derive: dict[str, str], columns: Sequence[str], source: exp.Expression) -> str:
    """The SELECT of derived columns over `source`, each checked against the derive grammar over
    `columns` and computed as the staging query computes it (`finite_or_null`): how a downloaded model
    gives your rows the columns the server derived for it, by the same parser and allow-list, never by
    splicing the expression's text into SQL."""
    values = [
        exp.alias_(finite_or_null(parse_derive(name, text, columns)), name, quoted=True)
        for name, text in derive.items()
    ]
    return exp.select(*values).from_(source).sql(dialect="duckdb", identify=True)


def admitting(condition: exp.Expression) -> exp.Expression:
    """A checked filter as the query applies it: a row it cannot be evaluated on (a cast or an overflow
    that fails on that row's values) is left out, like a row it is false for. Never a failure of the
    whole query, which would say that some row holds such a value (in mode dp, exactly whether a
    chosen person is in the table, at no cost)."""
    return exp.func("coalesce", exp.func("try", exp.paren(condition)), exp.false())


def staging_query(
    spec: DatasetSpec,
    resolved: Resolved,
    source: exp.Expression,
    row_number: exp.Expression,
    kind: str,
    label_levels: Sequence[str] | None = None,
    flag_missing: bool = False,
) -> tuple[str, list]:
    """The SELECT of admitted rows with `?` placeholders, and the parameters of the split.

    `source` is what the rows are read from (it may hold placeholders of its own, after these) and
    `row_number` the expression that numbers a row in it. `label_levels`: the label's public classes
    (the owner's `column_levels`, else the spec's `classes`); a row whose label is none of them
    (`declared_label`) is not admitted, so the classes are public before any row is read. With
    `flag_missing`, the rows the filter admits with a missing label come too, marked in a `MISSING_FLAG`
    column, so that the server's staging counts and drops them in its one pass over the file (not in a
    second query)."""
    cols: list[exp.Expression] = [exp.column(c, quoted=True) for c in [*resolved.features, spec.label]]
    cols += [
        exp.alias_(finite_or_null(parse_derive(name, text, resolved.derive_columns)), name, quoted=True)
        for name, text in (spec.derive or {}).items()
    ]
    split = spec.eval.model_dump() if spec.eval is not None else default_eval(kind)
    params: list = []
    if split is None:
        flag: exp.Expression = exp.true()
    elif "where" in split:
        flag = admitting(parse_filter(split["where"], resolved.filter_columns))
    else:
        bucket = exp.Mod(
            this=exp.func("hash", exp.column(resolved.id_column, quoted=True), exp.Placeholder()),
            expression=exp.Literal.number(SPLIT_BUCKETS),
        )
        flag = exp.LT(this=exp.paren(bucket), expression=exp.Placeholder())
        params += [int(split.get("seed", 0)), int(round(float(split["fraction"]) * SPLIT_BUCKETS))]
    select = exp.select(
        *cols, exp.alias_(flag, EVAL_FLAG, quoted=True), exp.alias_(row_number, ROW_ID, quoted=True)
    ).from_(source)
    # Rows without a label (NULL, or NaN in a decimal column) are not admitted: they could neither train
    # nor be scored, and a failure that depended on them would tell where missing labels are.
    missing = missing_label(spec.label, resolved.label_dtype)
    declared = (
        None if label_levels is None else declared_label(spec.label, resolved.label_dtype, label_levels)
    )
    if flag_missing:
        select = select.select(exp.alias_(exp.paren(missing), MISSING_FLAG, quoted=True))
        if declared is not None:
            select = select.where(exp.or_(missing.copy(), declared))
    else:
        select = select.where(exp.Not(this=exp.paren(missing)))
        if declared is not None:
            select = select.where(declared)
    if spec.where:
        select = select.where(admitting(parse_filter(spec.where, resolved.filter_columns)))
    # No ORDER BY: rows come in the snapshot's own order (DuckDB preserves insertion order), which is
    # fixed for a dataset version, so the same spec trains the same trees; and a sort would make DuckDB
    # hold, or spill, every admitted row before the first batch streams out (a 4 GiB table did not fit
    # its 512 MiB of sort memory).
    return select.sql(dialect="duckdb", identify=True), params


def declared_label(label: str, dtype: str, levels: Sequence[str]) -> exp.Expression:
    """Whether a row's label is one of the declared classes: as a number for a numeric label (so "1"
    declares 1 and 1.0 alike), else as text (a boolean as `true` / `false`)."""
    if NUMERIC.fullmatch(dtype):
        numbers = [float(v) for v in levels if is_number(v)]
        value = exp.Cast(this=exp.column(label, quoted=True), to=exp.DataType.build("double"))
        return exp.In(this=value, expressions=[exp.Literal.number(repr(v)) for v in numbers] or [exp.null()])
    text = exp.Cast(this=exp.column(label, quoted=True), to=exp.DataType.build("varchar"))
    if kind_of(dtype) == BOOLEAN:  # DuckDB writes true / false; a class may be written True or TRUE
        levels = [v.lower() for v in levels]
    return exp.In(this=text, expressions=[exp.Literal.string(v) for v in levels])


def is_number(text: str) -> bool:
    """Whether a declared level reads as a finite number."""
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def missing_label(label: str, dtype: str) -> exp.Expression:
    """Whether a row's label is missing: NULL, or in a column of decimal numbers NaN, an infinity or a
    number beyond float32's range (XGBoost and scikit-learn refuse them: a failure exactly when such a
    row is in). NaN is found by its text: DuckDB 2.0 folds `isnan(label)` to false from a Parquet file's
    statistics, which leave NaN out."""
    column = exp.column(label, quoted=True)
    null = exp.Is(this=column, expression=exp.Null())
    if not DECIMAL.fullmatch(dtype):
        return null
    text = exp.Cast(this=column.copy(), to=exp.DataType.build("varchar"))
    named = [exp.Literal.string(v) for v in ("nan", "-nan", "inf", "-inf")]
    huge = exp.GT(this=exp.func("abs", column.copy()), expression=exp.Literal.number(repr(FLOAT32_MAX)))
    return exp.or_(null, exp.In(this=text, expressions=named), huge)


def missing_label_query(spec: DatasetSpec, resolved: Resolved, source: exp.Expression) -> str:
    """The count of rows the spec's filter admits but whose label is missing (left out of every split),
    so a result can say how many rows it lost and why."""
    select = exp.select(exp.func("count", exp.Star())).from_(source)
    select = select.where(missing_label(spec.label, resolved.label_dtype))
    if spec.where:
        select = select.where(admitting(parse_filter(spec.where, resolved.filter_columns)))
    return select.sql(dialect="duckdb", identify=True)
