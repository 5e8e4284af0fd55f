"""The public description of the feature columns, and the compact codes a partition bins its rows into.

Everything a `Column` holds is public: its name, its kind and its split candidates (numeric thresholds
or text levels), which come from the data owner's declarations or from a charged DP mechanism
(`candidates`), never from the rows directly. A partition bins each column once into one byte per row:

- numeric and boolean columns: code `k` = how many candidates are <= the value, compared in float32 as
  XGBoost compares (so "value < candidate[k]" is exactly "code <= k"); a missing value has code `Q + 1`;
- text columns: code = the level's index in `levels` (the category list the released model records);
  a missing value, and a level outside the list, have code `L`. XGBoost 3.2 re-codes a DataFrame's
  categories against the model's list and maps a level it does not know to a neighbouring level (or
  fails), so a level outside the list must reach XGBoost as a missing value too: `xgboost_input` does
  that, and so does `pd.Categorical(values, categories=levels)` in the analyst's notebook.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

Kind = Literal["numeric", "boolean", "categorical"]
MAX_CODES = 256  # one byte per row and column
MAX_CANDIDATES = MAX_CODES - 2  # a numeric column's Q candidates make Q + 1 bins, then the missing code
NO_LEVEL = "(no level released)"  # `Column.recorded_levels` of a text column with no public level
COMPARE_MAX = 128  # thresholds up to which `count_at_most` compares with each, not a binary search


@dataclass(frozen=True)
class Column:
    """One feature column as the trainer may know it: nothing here comes from a row."""

    name: str
    kind: Kind
    candidates: tuple[float, ...] = ()
    levels: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind == "categorical":
            if len(self.levels) > MAX_CANDIDATES or len(set(self.levels)) != len(self.levels):
                raise ValueError(f"column {self.name!r}: at most {MAX_CANDIDATES} distinct levels")
            return
        values = np.asarray(self.candidates, dtype=np.float64)
        if len(values) > MAX_CANDIDATES or not np.all(np.isfinite(values)):
            raise ValueError(f"column {self.name!r}: at most {MAX_CANDIDATES} finite candidates")
        if np.any(values.astype(np.float32) != values) or np.any(np.diff(values) <= 0):
            raise ValueError(f"column {self.name!r}: candidates must be increasing float32 values")

    @property
    def recorded_levels(self) -> tuple[str, ...]:
        """The category list the model records and its rows are read by: the levels, or, where none was
        declared nor cleared the sketch's threshold, the one public placeholder `NO_LEVEL` (XGBoost reads
        no column by an empty list, so such a training once failed at scoring, charged). No split uses
        it, and every row of the column reads as missing either way."""
        return self.levels or (NO_LEVEL,)

    @property
    def splits(self) -> int:
        """How many different splits a node on this column can draw from (0: the column is unusable)."""
        return len(self.levels) if self.kind == "categorical" else len(self.candidates)

    @property
    def missing_code(self) -> int:
        """The last code: after the Q + 1 bins of a numeric column, after the L levels of a text column."""
        return self.splits if self.kind == "categorical" else self.splits + 1

    @property
    def width(self) -> int:
        return self.missing_code + 1

    @classmethod
    def boolean(cls, name: str) -> Column:
        return cls(name, "boolean", (0.5,))

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "kind": self.kind,
            "candidates": list(self.candidates),
            "levels": list(self.levels),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Column:
        return cls(
            str(data["name"]),
            data["kind"],
            tuple(float(v) for v in data.get("candidates", ())),
            tuple(str(v) for v in data.get("levels", ())),
        )


def float32_grid(values: Iterable[float]) -> tuple[float, ...]:
    """Values as distinct, increasing float32 numbers (split thresholds as XGBoost stores them)."""
    numbers = values if isinstance(values, np.ndarray) else list(values)
    array = np.unique(np.asarray(numbers, dtype=np.float64).astype(np.float32))
    return tuple(float(v) for v in array[np.isfinite(array)])


@dataclass(frozen=True)
class Features:
    """The ordered feature columns of a model: the model's feature order and category lists."""

    columns: tuple[Column, ...]

    def __post_init__(self) -> None:
        names = [c.name for c in self.columns]
        if len(set(names)) != len(names):
            raise ValueError("feature names must be distinct")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @cached_property
    def width(self) -> int:
        """The widest column's number of codes (the routing tables' width)."""
        return max((c.width for c in self.columns), default=2)

    @cached_property
    def splits(self) -> np.ndarray:
        """Each column's `Column.splits`, as an array a level's columns index (kept: every level asks)."""
        return _read_only(np.array([c.splits for c in self.columns], dtype=np.int64))

    @cached_property
    def missing_codes(self) -> np.ndarray:
        """Each column's `Column.missing_code`."""
        return _read_only(np.array([c.missing_code for c in self.columns], dtype=np.int64))

    @cached_property
    def text(self) -> np.ndarray:
        """Whether each column is a text (categorical) column."""
        return _read_only(np.array([c.kind == "categorical" for c in self.columns], dtype=bool))

    def usable(self) -> np.ndarray:
        """The indices of the columns a split may use: a numeric column with a candidate, a text column
        with two public levels. One level splits nothing but missing rows off (a filter on a Parquet
        `year=` folder leaves one), and its level subsets held no level, which XGBoost refused to load.
        Where no column has that, a text column with one level (its level against missing rows), so a
        job on such columns alone still trains, rather than fail after it was charged."""
        found = np.flatnonzero(self.splits >= np.where(self.text, 2, 1))
        return found if len(found) else np.flatnonzero(self.splits > 0)

    def led_by(self, recorded: dict[str, list[str]]) -> Features:
        """The columns with a continued base model's category lists first: its trees' codes keep their
        meaning, and a declared or released level it never saw comes after them. From the public lists
        alone: with the rows' levels, whether the job failed turned on one row's level."""
        columns = []
        for column in self.columns:
            known = recorded.get(column.name)
            if column.kind == "categorical" and known:
                column = replace(column, levels=(*known, *(v for v in column.levels if v not in known)))
            columns.append(column)
        return Features(tuple(columns))

    def to_dict(self) -> dict:
        return {"columns": [c.to_dict() for c in self.columns]}

    @classmethod
    def from_dict(cls, data: dict) -> Features:
        return cls(tuple(Column.from_dict(c) for c in data["columns"]))


def _read_only(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False
    return array


def _is_text(type_: pa.DataType) -> bool:
    if pa.types.is_dictionary(type_):
        type_ = type_.value_type
    return pa.types.is_string(type_) or pa.types.is_large_string(type_) or pa.types.is_string_view(type_)


def float32_values(column: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A numeric or boolean column as float32, missing values as NaN (XGBoost's view of it)."""
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (
        pa.types.is_integer(column.type)
        or pa.types.is_floating(column.type)
        or pa.types.is_boolean(column.type)
        or pa.types.is_decimal(column.type)
    ):
        raise TypeError(f"a column of type {column.type} cannot be a numeric feature")
    values = pc.cast(column, pa.float64()).to_numpy(zero_copy_only=False)
    return np.asarray(values, dtype=np.float64).astype(np.float32)


def text_values(column: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_dictionary(column.type):
        column = column.dictionary_decode()
    if not _is_text(column.type):
        raise TypeError(f"a column of type {column.type} cannot be a text feature")
    return column


def bin_column(column: Column, values: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """One column's codes (uint8), as the module docstring defines them."""
    if column.kind == "categorical":
        text = text_values(values)
        found = pc.index_in(text, value_set=pa.array(column.levels, pa.string()))
        return found.fill_null(column.missing_code).to_numpy(zero_copy_only=False).astype(np.uint8)
    numbers = float32_values(values)
    codes = count_at_most(np.asarray(column.candidates, dtype=np.float32), numbers)
    codes[np.isnan(numbers)] = column.missing_code
    return codes


def count_at_most(thresholds: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """For each number, how many of the increasing thresholds are <= it (uint8; 0 for NaN). Up to
    `COMPARE_MAX` thresholds, by one vectorised comparison with each: a binary search per number
    mispredicts about half its branches, and took 3x to 7x the time with 32 thresholds (8,000 rows),
    about the same with 200."""
    if len(thresholds) > COMPARE_MAX:
        codes = np.searchsorted(thresholds, numbers, side="right").astype(np.uint8)
        codes[np.isnan(numbers)] = 0
        return codes
    codes = np.zeros(len(numbers), np.uint8)
    for threshold in thresholds:
        np.add(codes, numbers >= threshold, out=codes)
    return codes


def bin_table(features: Features, data: pa.Table | Iterable[pa.RecordBatch]) -> np.ndarray:
    """Codes of every column, shape (columns, rows), one byte each; batches are binned one at a time."""
    batches = data.to_batches() if isinstance(data, pa.Table) else data
    parts = []
    for batch in batches:
        missing = [c.name for c in features.columns if c.name not in batch.schema.names]
        if missing:
            raise KeyError(f"feature columns not in the rows: {missing}")
        parts.append(
            np.stack([bin_column(c, batch.column(c.name)) for c in features.columns])
            if features.columns
            else np.zeros((0, batch.num_rows), np.uint8)
        )
    if not parts:
        return np.zeros((len(features.columns), 0), np.uint8)
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


def xgboost_input(features: Features, data: pa.Table) -> pa.Table:
    """The rows as XGBoost reads them: text as dictionary columns over the column's level list (a level
    outside it missing), numbers as float32."""
    arrays = []
    for column in features.columns:
        values = data.column(column.name)
        if column.kind == "categorical":
            dictionary = pa.array(column.recorded_levels, pa.string())
            indices = pc.index_in(text_values(values), value_set=dictionary)
            arrays.append(pa.DictionaryArray.from_arrays(indices, dictionary))
        else:
            arrays.append(pa.array(float32_values(values), pa.float32(), from_pandas=True))
    return pa.Table.from_arrays(arrays, names=features.names)


def candidates_between(lo: float, hi: float, count: int, scale: str = "linear") -> tuple[float, ...]:
    """`count` thresholds spread over the public range (lo, hi): evenly, or evenly in log(1 + x - lo)
    for a column the owner says is skewed (incomes, counts, durations)."""
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo) or count < 1:
        raise ValueError("bounds need lo < hi (finite) and at least one candidate")
    steps = np.arange(1, count + 1) / (count + 1)
    if scale == "log":
        values = lo + np.expm1(steps * np.log1p(hi - lo))
    elif scale == "linear":
        values = lo + steps * (hi - lo)
    else:
        raise ValueError(f"unknown scale {scale!r} (linear or log)")
    return float32_grid(values)
