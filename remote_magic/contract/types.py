"""Column kinds, and the type check of filter and derive trees against them: shared by the server's spec
check and the dry run, so `month = 'December'` on a number column is refused before any job exists,
with a message that names the column's kind, on both sides.

A column's kind comes from its Arrow type name (the schema the catalog shows): number, boolean, text,
time (timestamps, dates, times of day, durations) or other (bytes, lists, structs). Only numbers,
booleans and text are features by default; a time is used through `derive` (`year(t)`, `month(t)`,
`day(t)`, `dayofweek(t)`, `hour(t)`, `epoch(t)`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime

from sqlglot import exp

from .codes import Refusal

NUMBER, BOOLEAN, TEXT, TIME, OTHER = "number", "boolean", "text", "time", "other"
FEATURE_KINDS = (NUMBER, BOOLEAN, TEXT)
_KINDS = (
    (r"u?int\d*|(half)?float\d*|double|decimal\d*\(.*\)", NUMBER),
    (r"bool", BOOLEAN),
    (r"(large_)?(string|utf8)(_view)?|dictionary<.*>", TEXT),
    (r"timestamp\[.*\]|date\d+(\[.*\])?", TIME),
)
_WORDS = {NUMBER: "numbers", BOOLEAN: "true/false values", TEXT: "text", TIME: "times", OTHER: "values"}
_TIME_PARTS = (exp.Year, exp.Month, exp.Day, exp.DayOfWeek, exp.Hour, exp.TimeToUnix)
_ARITHMETIC = (exp.Add, exp.Sub, exp.Mul, exp.Div, exp.Neg, exp.Ln, exp.Exp, exp.Abs)
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)
# A date or timestamp as DuckDB reads one from text (Python's ISO parser also takes '20200101' and
# '2020-W01-3', which DuckDB refuses).
_TIME_TEXT = re.compile(r"\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?)?")


def kind_of(dtype: str) -> str:
    """The kind of an Arrow type name."""
    return next((kind for pattern, kind in _KINDS if re.fullmatch(pattern, dtype)), OTHER)


def continuous_label_hint(label: str, dtype: str) -> str:
    """What to say when a classifier meets a label of decimal numbers: each distinct value became a
    class, so the refusal is about a class being small when the real cause is the model's kind. Judged
    on the schema alone (public in the catalog), never on the values, so the hint tells nothing new."""
    if re.fullmatch(r"(half)?float\d*|double|decimal\d*\(.*\)", dtype):
        return (
            f"the label {label!r} holds decimal numbers and a classifier makes each distinct value a "
            "class: fine for a 0/1 label, but if it is continuous use XGBRegressor"
        )
    return ""


def text_label_hint(label: str, dtype: str) -> str:
    """What to say when a regressor meets a text label (from the schema alone, as above): asking the
    data owner for a numeric range of it would be the wrong advice."""
    if kind_of(dtype) == TEXT:
        return f"the label {label!r} is text, and a regressor needs numbers: use XGBClassifier"
    return ""


def _literal_kind(node: exp.Expression) -> str | None:
    if isinstance(node, exp.Literal):
        return TEXT if node.is_string else NUMBER
    if isinstance(node, exp.Boolean):
        return BOOLEAN
    if isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal):
        return NUMBER
    return None


def _compatible(a: str, b: str) -> bool:
    if a == b:
        return True
    pair = {a, b}
    # a boolean column compares with 0/1; a time with an ISO date or timestamp written as text
    return pair in ({NUMBER, BOOLEAN}, {TIME, TEXT})


class _Checker:
    def __init__(self, kinds: Mapping[str, str], what: str):
        self.kinds = kinds
        self.what = what

    def kind(self, node: exp.Expression) -> str | None:
        """The kind a node yields, checking it on the way; None when anything goes (NULL)."""
        while isinstance(node, exp.Paren):
            node = node.this
        literal = _literal_kind(node)
        if literal is not None:
            return literal
        if isinstance(node, exp.Null):
            return None
        if isinstance(node, exp.Column):
            return self.kinds.get(node.name, OTHER)
        if isinstance(node, _TIME_PARTS):
            self.expect(node.this, TIME, f"{node.sql_name().lower()}()")
            return NUMBER
        if isinstance(node, _ARITHMETIC):
            for operand in (node.this, node.args.get("expression")):
                if operand is not None:
                    self.expect(operand, NUMBER, "arithmetic")
            return NUMBER
        if isinstance(node, (exp.Least, exp.Greatest)):
            for operand in [node.this, *node.expressions]:
                self.expect(operand, NUMBER, f"{node.sql_name().lower()}()")
            return NUMBER
        if isinstance(node, exp.Coalesce):
            return self.one_kind(node, [node.this, *node.expressions], "coalesce()")
        if isinstance(node, exp.Case):
            self.check(node)
            results = [i.args.get("true") for i in node.args.get("ifs", [])] + [node.args.get("default")]
            return self.one_kind(node, [r for r in results if r is not None], "CASE")
        if isinstance(node, exp.If):  # IF(c, a, b) and IIF: the branches are its `true` and `false`
            self.check(node)
            results = [node.args.get("true"), node.args.get("false")]
            return self.one_kind(node, [r for r in results if r is not None], "IF")
        self.check(node)
        return BOOLEAN

    def one_kind(self, node: exp.Expression, parts: list[exp.Expression], use: str) -> str | None:
        """The kind of a choice among `parts`, which must all be of one kind (numbers and true/false
        count as one). Mixed, DuckDB would cast one to the other, and that cast fails on some values
        only: a failure that would say which values a row holds."""
        kinds = {k for k in (self.kind(part) for part in parts) if k is not None}
        if len(kinds) <= 1:
            return kinds.pop() if kinds else None
        if kinds == {NUMBER, BOOLEAN}:
            return NUMBER
        words = " and ".join(sorted(_WORDS[k] for k in kinds))
        raise Refusal(
            self._code(), f"{self._name(node)} gives {words}; the values of {use} must be of one kind"
        )

    def expect(self, node: exp.Expression, wanted: str, use: str) -> None:
        got = self.kind(node)
        if got is None or got == wanted or (wanted == NUMBER and got == BOOLEAN):
            return
        raise Refusal(self._code(), f"{self._name(node)} holds {_WORDS[got]}; {use} needs {_WORDS[wanted]}")

    def _code(self) -> str:
        return "invalid_derive" if self.what.startswith("derived") else "invalid_filter"

    @staticmethod
    def _name(node: exp.Expression) -> str:
        while isinstance(node, exp.Paren):
            node = node.this
        return f"column {node.name!r}" if isinstance(node, exp.Column) else f"{node.sql(dialect='duckdb')!r}"

    def compare(self, left: exp.Expression, right: exp.Expression) -> None:
        a, b = self.kind(left), self.kind(right)
        if {a, b} == {TIME, TEXT}:
            self._time_text(right if b == TEXT else left)
        if a is None or b is None or _compatible(a, b):
            return
        column, value = (left.unnest(), right.unnest())
        if not isinstance(column, exp.Column):
            column, value = value, column
        if isinstance(column, exp.Column) and _literal_kind(value) is not None:
            kind = self.kinds.get(column.name, OTHER)
            shown = value.sql(dialect="duckdb")
            hints = {
                TEXT: f"text takes single quotes: {column.name} = '{value.name}'",
                NUMBER: f"compare it with a number, not {shown}",
                BOOLEAN: f"compare it with true or false, not {shown}",
                TIME: f"compare it with a date or timestamp in quotes, such as '2013-06-30', not {shown}",
            }
            hint = hints.get(kind, "it cannot be compared with a value")
            raise Refusal(self._code(), f"column {column.name!r} holds {_WORDS[kind]}; {hint}")
        raise Refusal(
            self._code(),
            f"{self._name(left)} ({_WORDS[a]}) and {self._name(right)} ({_WORDS[b]}) cannot be compared",
        )

    def _time_text(self, node: exp.Expression) -> None:
        """Text compared with a time must be a value that reads as a date or timestamp as DuckDB reads
        one; a text column would be cast on each row, and fail on some rows only."""
        node = node.unnest()
        if not (isinstance(node, exp.Literal) and node.is_string):
            raise Refusal(
                self._code(),
                f"{self._name(node)} holds text; a time compares with a date or timestamp written as a "
                "value, such as '2013-06-30'",
            )
        try:
            if not _TIME_TEXT.fullmatch(node.name):
                raise ValueError(node.name)
            datetime.fromisoformat(node.name)
        except ValueError:
            raise Refusal(
                self._code(),
                f"{node.name!r} is not a date or time; write it as '2013-06-30' or '2013-06-30 14:05'",
            ) from None

    def check(self, tree: exp.Expression) -> None:
        """Check every comparison in a condition tree."""
        for node in tree.walk():
            if isinstance(node, _COMPARISONS):
                self.compare(node.this, node.expression)
            elif isinstance(node, exp.In):
                for value in node.expressions:
                    self.compare(node.this, value)
            elif isinstance(node, exp.Between):
                self.compare(node.this, node.args["low"])
                self.compare(node.this, node.args["high"])


def check_filter(tree: exp.Expression, kinds: Mapping[str, str], what: str) -> None:
    """Refuse a filter that compares a column with a value of another kind, or negates a column (a
    filter compares columns with values; arithmetic is `derive`'s)."""
    for node in tree.find_all(exp.Neg):
        if not isinstance(node.this.unnest(), exp.Literal):
            raise Refusal(
                "invalid_filter",
                f"{node.sql(dialect='duckdb')!r} computes with a column, which a {what} cannot; derive it",
            )
    _Checker(kinds, what).check(tree)


def check_derived(tree: exp.Expression, kinds: Mapping[str, str], what: str) -> None:
    """Refuse a derived expression that computes with values of the wrong kind, or whose value is not a
    number or true/false: the staging query makes it a DOUBLE (`query.finite_or_null`)."""
    got = _Checker(kinds, what).kind(tree)
    if got not in (None, NUMBER, BOOLEAN):
        hint = {
            TEXT: "compare the text with a value instead, such as region = 'north'",
            TIME: "take a number from the time, such as year(t), hour(t) or epoch(t)",
        }.get(got, "")
        raise Refusal(
            "invalid_derive",
            f"the {what} gives {_WORDS[got]}; a derived column is a number or true/false"
            + (f": {hint}" if hint else ""),
        )
