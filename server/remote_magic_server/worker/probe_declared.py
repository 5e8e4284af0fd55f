"""The doctor's check of what the owner declared (`exclude_columns`, `column_levels`, `column_ranges`,
`label_ranges`) against the table itself, run in the probe process (worker/probe.py), which reads the
rows as the owner.

A declaration that misses the data costs analysts, not the owner: classes that match no row make every
job on the label fail after it is charged, rows of an undeclared class are left out of every job, and a
range or level list that covers part of a column hides the rest. The owner sees their own rows, so
these counts cost no privacy; they go to the doctor's output and the server's log only, never to an
analyst. An excluded name that is no column is fatal, not a warning: the owner meant to hide a column,
and a misspelt name leaves it a feature every analyst can train on. A declared level that matches the
rows only when case is ignored is named (a declaration is matched exactly), and in mode dp the features
with no declared range or levels are an `info` line: each job that uses one pays for a DP sketch. Rows
are matched as a job matches them (`declared_label`, `missing_label`).
"""

from __future__ import annotations

from remote_magic.contract.query import declared_label, missing_label
from remote_magic.contract.types import NUMBER, TEXT, kind_of
from remote_magic.contract.wire import unknown_column_message

Finding = dict[str, str]


def _finding(level: str, name: str, message: str) -> Finding:
    return {"level": level, "check": f"dataset {name}", "message": message}


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.2g}% of rows ({part} of {whole})"


def _counts(con, path: str, expressions: list) -> tuple[int, ...]:
    """One pass over the file: `count_if` of each expression."""
    from sqlglot import exp

    select = exp.select(*(exp.func("count_if", e) for e in expressions)).from_(
        exp.func("read_parquet", exp.Placeholder())
    )
    return tuple(con.execute(select.sql(dialect="duckdb", identify=True), [path]).fetchone())


def _absent(name: str, ds: dict, dtypes: dict[str, str]) -> list[Finding]:
    """Declarations for columns the table lacks, and ranges on columns that hold no numbers."""
    found = [
        _finding(
            "fatal",
            name,
            f"{unknown_column_message(column, dtypes, 'exclude_columns')}: no column is hidden by it, so "
            "the column you meant stays a feature; fix the name (or remove it if the column left the "
            "source)",
        )
        for column in ds["exclude_columns"]
        if column not in dtypes
    ]
    for key in ("column_levels", "column_ranges", "label_ranges"):
        for column in ds[key]:
            if column not in dtypes:
                found.append(
                    _finding(
                        "warn",
                        name,
                        f"{unknown_column_message(column, dtypes, key)}: the declaration is unused; "
                        "fix the name",
                    )
                )
            elif key != "column_levels" and kind_of(dtypes[column]) != NUMBER:
                found.append(
                    _finding(
                        "warn",
                        name,
                        f"{key}.{column}: {column!r} holds {dtypes[column]}, and a range bounds numbers: it "
                        f"is unused; declare column_levels.{column} (its classes or levels) instead",
                    )
                )
    return found


def _case_only(con, path: str, column: str, dtype: str, levels: list) -> str:
    """`; ...` naming the declared levels of a text column that match its values only when case is
    ignored (`North` declared, `north` in the rows), else "": a level matches exactly, and without this
    the owner hears only that rows lie outside. Names the declared levels only, never a value."""
    from sqlglot import exp

    if kind_of(dtype) != TEXT:
        return ""
    expressions = []
    for level in levels:
        column_sql, text = exp.column(column, quoted=True), exp.Literal.string(str(level))
        expressions += [
            exp.EQ(this=column_sql, expression=text),
            exp.EQ(this=exp.Lower(this=column_sql.copy()), expression=exp.Lower(this=text.copy())),
        ]
    counts = _counts(con, path, expressions)
    cased = [str(level) for i, level in enumerate(levels) if not counts[2 * i] and counts[2 * i + 1]]
    if not cased:
        return ""
    named = ", ".join(repr(level) for level in cased)
    return (
        f"; the declared level(s) {named} match the column only when case is ignored: a level matches "
        "exactly, so write each as the data does, case included"
    )


def _label_classes(con, name: str, ds: dict, label: str, dtype: str) -> list[Finding]:
    from sqlglot import exp

    levels = ds["column_levels"][label]
    present = exp.Not(this=exp.paren(missing_label(label, dtype)))
    each = [exp.and_(present.copy(), declared_label(label, dtype, [level])) for level in levels]
    rows, matched, *per_level = _counts(
        con, ds["path"], [present, exp.and_(present.copy(), declared_label(label, dtype, levels)), *each]
    )
    if rows and not matched:
        return [
            _finding(
                "fatal",
                name,
                f"no row's label {label!r} ({dtype}) is one of column_levels.{label} = {levels}: every job "
                "on it would be refused for too few rows (in the noisy modes after it is charged); declare "
                "the values the column holds (numbers and true/false may be written bare: [0, 1], "
                f"[true, false]){_case_only(con, ds['path'], label, dtype, levels)}",
            )
        ]
    found = []
    empty = [level for level, count in zip(levels, per_level) if not count]
    if empty:
        found.append(
            _finding(
                "warn",
                name,
                f"class(es) {empty} of column_levels.{label} match no row: classifier jobs on {label!r} are "
                "refused class_too_small (in the noisy modes after they are charged); remove them"
                f"{_case_only(con, ds['path'], label, dtype, empty)}",
            )
        )
    if matched < rows:
        found.append(
            _finding(
                "warn",
                name,
                f"{_share(rows - matched, rows)} have a label {label!r} that is none of "
                f"column_levels.{label}: every job leaves them out; declare their classes, or leave them "
                "out knowingly",
            )
        )
    return found


def _coverage(con, name: str, ds: dict, dtypes: dict[str, str]) -> list[Finding]:
    """Feature levels and ranges (and label ranges) that leave part of their column's values out."""
    from sqlglot import exp

    checks = []
    for column, levels in ds["column_levels"].items():
        if column in dtypes and column not in ds["label_columns"]:
            checks.append((f"column_levels.{column}", column, declared_label(column, dtypes[column], levels)))
    for key in ("column_ranges", "label_ranges"):
        for column, (lo, hi) in ds[key].items():
            if column in dtypes and kind_of(dtypes[column]) == NUMBER:
                value = exp.Cast(this=exp.column(column, quoted=True), to=exp.DataType.build("double"))
                inside = exp.Between(this=value, low=exp.Literal.number(lo), high=exp.Literal.number(hi))
                checks.append((f"{key}.{column} = [{lo:g}, {hi:g}]", column, inside))
    if not checks:
        return []
    expressions = []
    for _, column, inside in checks:
        present = exp.Not(this=exp.paren(missing_label(column, dtypes[column])))
        expressions += [present, exp.and_(present.copy(), inside)]
    counts = _counts(con, ds["path"], expressions)
    found = []
    for i, (declared, column, _) in enumerate(checks):
        rows, covered = counts[2 * i], counts[2 * i + 1]
        if covered < rows:
            fate = "jobs clip them to its ends" if "ranges" in declared else "jobs know only those levels"
            levels = ds["column_levels"][column] if "levels" in declared else []
            cased = _case_only(con, ds["path"], column, dtypes[column], levels) if levels else ""
            found.append(
                _finding(
                    "warn",
                    name,
                    f"{_share(rows - covered, rows)} of {column!r} lie outside {declared}: {fate}; widen "
                    f"the declaration if they should count{cased}",
                )
            )
    return found


def _undeclared_features(name: str, ds: dict, dtypes: dict[str, str]) -> list[Finding]:
    """In mode dp, the number and text columns a job may use as features without a declared range or
    levels: each job that uses one pays for a DP sketch of it, so declaring them saves budget."""
    if ds.get("privacy") != "dp":
        return []
    skip = {ds["id_column"], *ds["label_columns"], *ds["exclude_columns"], *ds["column_ranges"]}
    bare = [
        f"{column} ({kind_of(dtype)})"
        for column, dtype in dtypes.items()
        if column not in skip | set(ds["column_levels"]) and kind_of(dtype) in (NUMBER, TEXT)
    ]
    if not bare:
        return []
    return [
        _finding(
            "info",
            name,
            f"mode dp: feature column(s) {', '.join(bare)} have no declared range or levels: a training that "
            "uses one pays for a DP sketch of it from its budget (split candidates of numbers, levels of "
            "text chosen by noisy counts), and a describe that shows one pays dp_rho_describe_sketch more; "
            "declare column_ranges (numbers) and column_levels (text) to save that budget",
        )
    ]


def declared_findings(con, name: str, ds: dict, dtypes: dict[str, str]) -> list[Finding]:
    """Every check of the owner's declarations for one readable table (`dtypes`: its Arrow types)."""
    found = _absent(name, ds, dtypes)
    for label in ds["label_columns"]:
        if label in ds["column_levels"] and label in dtypes:
            found += _label_classes(con, name, ds, label, dtypes[label])
    return found + _coverage(con, name, ds, dtypes) + _undeclared_features(name, ds, dtypes)
