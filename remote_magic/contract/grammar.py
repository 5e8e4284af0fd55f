"""The filter and derive grammars of dataset specs: parsed with sqlglot and checked node by node.

Pure and shared: the server's spec check, the worker's staging query and the client's dry run all call
this one module, so they cannot disagree about what a filter means. A derive expression is the filter
grammar plus arithmetic, CASE WHEN and the functions ln, exp, abs, least, greatest and coalesce, and
year, month, day, dayofweek, hour and epoch of a time; it may use the dataset's feature columns only
(never the label, the id or excluded columns), and derived columns may not refer to each other.
Nothing a user writes is ever spliced into SQL as text: the checked tree is re-emitted by sqlglot with
every identifier quoted. A text is at most `MAX_LENGTH` characters and nests at most `MAX_NESTING` deep
(parsing.py).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

from sqlglot import exp

from .codes import Refusal
from .parsing import parsed
from .wire import unknown_column_message

MAX_LENGTH = 2000
MAX_DEPTH = 40
MAX_IN_LIST = 200

_ALLOWED_NODES: tuple[type[exp.Expression], ...] = (
    exp.Column,
    exp.Identifier,
    exp.Literal,
    exp.Boolean,
    exp.Null,
    exp.Paren,
    exp.Neg,
    exp.EQ,
    exp.NEQ,
    exp.GT,
    exp.GTE,
    exp.LT,
    exp.LTE,
    exp.And,
    exp.Or,
    exp.Not,
    exp.In,
    exp.Between,
    exp.Is,
    exp.Tuple,
)

_DERIVE_NODES: tuple[type[exp.Expression], ...] = (
    *_ALLOWED_NODES,
    exp.Add,
    exp.Sub,
    exp.Mul,
    exp.Div,
    exp.Case,
    exp.If,
    exp.Ln,
    exp.Exp,
    exp.Abs,
    exp.Least,
    exp.Greatest,
    exp.Coalesce,
    exp.Year,
    exp.Month,
    exp.Day,
    exp.DayOfWeek,
    exp.Hour,
    exp.TimeToUnix,
)
MAX_DERIVED = 50
MAX_DERIVE_TEXT = 8000

_NODE_WORDS = {
    "Subquery": "subquery",
    "Select": "subquery",
    "Union": "UNION",
    "Star": "*",
    "Like": "LIKE",
    "ILike": "ILIKE",
    "Cast": "CAST",
    "Add": "arithmetic",
    "Sub": "arithmetic",
    "Mul": "arithmetic",
    "Div": "arithmetic",
}


ALLOWED_FUNCTIONS = "ln, exp, abs, least, greatest, coalesce, if, year, month, day, dayofweek, hour, epoch"
_TIME_PARTS = "year(t), month(t), day(t), dayofweek(t), hour(t) or epoch(t)"
# What a derive writes instead of a function it may not use, by sqlglot's node (sqlglot reads log10 and
# log2 as Log, pow and ** as Pow) or, for a function sqlglot does not know, by the name the user typed.
_EQUIVALENTS: dict[str, str] = {
    "Log": "ln(x), the natural log (log10(x) is ln(x) / ln(10))",
    "Pow": "exp(y * ln(x)) for x to the power y (x * x for a square)",
    "Sqrt": "exp(0.5 * ln(x))",
    "Min": "least(a, b, ...)",
    "Max": "greatest(a, b, ...)",
    "Extract": _TIME_PARTS,
    "date_part": _TIME_PARTS,
    "datepart": _TIME_PARTS,
    "weekday": "dayofweek(t)",
    "dow": "dayofweek(t)",
    "log1p": "ln(1 + x)",
    "expm1": "exp(x) - 1",
    "isnull": "x IS NULL",
}


def _describe(node: exp.Expression) -> str:
    name = type(node).__name__
    if isinstance(node, exp.Anonymous):
        return f"function {node.name}()"  # the name as the user wrote it
    if isinstance(node, exp.Func) and name not in _NODE_WORDS:
        return f"function {node.sql_name() if hasattr(node, 'sql_name') else name}()"
    return _NODE_WORDS.get(name, name)


def _instead(node: exp.Expression, allowed: tuple[type[exp.Expression], ...]) -> str:
    """For a function a derive refuses: its allowed equivalent (`; use ln(x)`) where one exists, and the
    functions a derive has; a filter has none."""
    if not isinstance(node, exp.Func) or isinstance(node, (exp.Cast, exp.Case)):
        return ""
    if allowed is not _DERIVE_NODES:
        return "; a filter calls no functions: it compares dataset columns with values"
    key = node.name.lower() if isinstance(node, exp.Anonymous) else type(node).__name__
    hint = f"; use {_EQUIVALENTS[key]}" if key in _EQUIVALENTS else ""
    return f"{hint}; a derive's functions are {ALLOWED_FUNCTIONS}"


def _compared_with_a_column(node: exp.Column, columns: Collection[str]) -> bool:
    """Whether an unknown name stands where a value would (`region = north`): then it is most likely
    text that lost its quotes."""
    parent = node.parent
    if isinstance(parent, (exp.EQ, exp.NEQ)):
        other = parent.expression if parent.this is node else parent.this
        return isinstance(other, exp.Column) and other.name in columns
    return False


def _depth(node: exp.Expression) -> int:
    depth, current = 0, node
    while current.parent is not None:
        depth, current = depth + 1, current.parent
    return depth


def _checked_tree(
    text: str,
    columns: Collection[str],
    allowed: tuple[type[exp.Expression], ...],
    code: str,
    what: str,
    unusable: Mapping[str, str] | None = None,
) -> exp.Expression:
    if not text or not text.strip():
        raise Refusal(code, f"the {what} is empty")
    if len(text) > MAX_LENGTH:
        raise Refusal(code, f"the {what} is longer than {MAX_LENGTH} characters")
    statements = [s for s in parsed(text, code, what) if s is not None]
    if len(statements) != 1:
        raise Refusal(code, f"the {what} must be a single expression")
    tree = statements[0]
    for node in tree.walk():
        if not isinstance(node, allowed):
            raise Refusal(code, f"{_describe(node)} is not allowed in a {what}{_instead(node, allowed)}")
        if _depth(node) > MAX_DEPTH:
            raise Refusal(code, f"the {what} is nested too deeply")
        if isinstance(node, exp.Column):
            if node.table or node.args.get("db") or node.args.get("catalog"):
                raise Refusal(code, "qualified column names are not allowed")
            role = (unusable or {}).get(node.name)
            if role is not None and node.name not in columns:
                raise Refusal(code, f"column {node.name!r} is {role}, which a {what} cannot use")
            if node.name not in columns:
                message = unknown_column_message(node.name, columns, what)
                quoted = isinstance(node.this, exp.Identifier) and node.this.quoted
                if quoted or _compared_with_a_column(node, columns):
                    message += f"; text takes single quotes: '{node.name}'"
                raise Refusal("unknown_column", message)
        if isinstance(node, exp.In):
            if node.args.get("query") or node.args.get("unnest") or node.args.get("field"):
                raise Refusal(code, "IN takes a list of literals only")
            values = node.expressions
            if len(values) > MAX_IN_LIST:
                raise Refusal(code, f"IN lists are limited to {MAX_IN_LIST} values")
            if any(not isinstance(v, (exp.Literal, exp.Boolean, exp.Null, exp.Neg)) for v in values):
                raise Refusal(code, "IN takes a list of literals only")
        if isinstance(node, exp.Identifier) and not isinstance(node.parent, exp.Column):
            raise Refusal(code, "a bare identifier is not allowed here")
    return tree


def parse_filter(
    text: str, columns: Collection[str], what: str = "filter", unusable: Mapping[str, str] | None = None
) -> exp.Expression:
    """Parse and check a filter against the grammar and the usable columns; raise Refusal. `unusable`
    says what the dataset's other columns are (`the id column`), so a filter naming one is told so, not
    that the column is unknown."""
    tree = _checked_tree(text, columns, _ALLOWED_NODES, "invalid_filter", what, unusable)
    for node in tree.walk():
        if isinstance(node, (exp.And, exp.Or, exp.Not)) and any(
            _is_value(operand) for operand in node.args.values() if isinstance(operand, exp.Expression)
        ):
            raise Refusal("invalid_filter", "AND, OR and NOT combine conditions, such as age >= 18")
    if _is_value(tree):
        raise Refusal("invalid_filter", f"the {what} must be a condition, such as age >= 18")
    return tree


def _is_value(node: exp.Expression) -> bool:
    """A column or a literal where a condition belongs (DuckDB would cast it, or fail at run time)."""
    while isinstance(node, exp.Paren):
        node = node.this
    return isinstance(node, (exp.Column, exp.Literal, exp.Null, exp.Tuple, exp.Neg))


def filter_columns(tree: exp.Expression) -> set[str]:
    """The columns a checked filter tree names."""
    return {c.name for c in tree.find_all(exp.Column)}


def compile_filter(text: str, columns: Collection[str]) -> str:
    """The checked filter re-emitted as DuckDB SQL with quoted identifiers."""
    return parse_filter(text, columns).sql(dialect="duckdb", identify=True)


def parse_derive(
    name: str, text: str, columns: Collection[str], unusable: Mapping[str, str] | None = None
) -> exp.Expression:
    """Parse and check one derived column `name = text` against the derive grammar; raise Refusal.

    `columns` are the dataset's feature columns, `unusable` what its others are; the name must be new."""
    if name in columns:
        raise Refusal("invalid_derive", f"derived column {name!r} has the name of a dataset column")
    return _checked_tree(text, columns, _DERIVE_NODES, "invalid_derive", f"derived column {name!r}", unusable)


def check_derive(
    derive: dict[str, str],
    columns: Collection[str],
    taken: Collection[str],
    unusable: Mapping[str, str] | None = None,
) -> dict[str, exp.Expression]:
    """Check every derived column and return its tree; `taken` holds all dataset column names (no derived
    name may reuse one). The text is bounded in all, not only per column: parsing is the API's CPU."""
    if len(derive) > MAX_DERIVED:
        raise Refusal("invalid_derive", f"at most {MAX_DERIVED} derived columns are allowed")
    if sum(len(text) for text in derive.values()) > MAX_DERIVE_TEXT:
        raise Refusal("invalid_derive", f"derived columns are limited to {MAX_DERIVE_TEXT} characters in all")
    trees = {}
    for name, text in derive.items():
        if name in taken:
            raise Refusal("invalid_derive", f"derived column {name!r} has the name of a dataset column")
        trees[name] = parse_derive(name, text, columns, unusable)
    return trees


def check_declared_levels(tree: exp.Expression, levels: Mapping[str, Collection[str]], what: str) -> None:
    """Refuse a filter that compares a column whose levels the data owner declared (public, in the catalog)
    with text that is none of them (`grade = 'F'`, `grade IN ('A', 'F')`). Judged on the declaration
    alone, before any row is read or any budget charged; the message names the analyst's own literal and
    the declaration's key, no other value."""
    for node in tree.find_all(exp.EQ, exp.NEQ, exp.In):
        sides = [node.this, *node.expressions] if isinstance(node, exp.In) else [node.this, node.expression]
        sides = [side.unnest() for side in sides]
        column = next((s for s in sides if isinstance(s, exp.Column) and s.name in levels), None)
        if column is None:
            continue
        declared = set(levels[column.name])
        for side in sides:
            if isinstance(side, exp.Literal) and side.is_string and side.this not in declared:
                raise Refusal(
                    "invalid_filter",
                    f"{side.this!r} is not one of the levels the data owner declared for {column.name!r} "
                    f"(`column_levels.{column.name}`, in `client.dataset(name).column_levels`): a {what} "
                    "compares such a column only with its declared levels; refused before any charge",
                )
