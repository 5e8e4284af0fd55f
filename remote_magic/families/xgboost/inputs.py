"""How XGBoost reads a job's rows: Arrow record batches, text as codes into fixed category lists.

The same on one machine (a `DataIter` over a partition's batches) and on a cluster (each partition's
rows as a DataFrame, families/xgboost/on_dask.py); a Pipeline's preprocessors read pandas (`frame_of`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xgboost as xgb

from ...contract.codes import Refusal
from ...contract.rows import is_text
from ..base import Batches


class RowBatches(xgb.DataIter):
    """Feeds one split's record batches to XGBoost, a batch at a time, with its labels alongside and
    text columns as categories with fixed codes; `cache` makes it an external-memory source."""

    def __init__(self, batches: Batches, labels: np.ndarray, categories: dict[str, pa.Array]):
        super().__init__(cache_prefix=batches.cache, release_data=True)
        self.batches = batches
        self.labels = labels
        self.categories = categories
        self._batches: Iterator[pa.RecordBatch] | None = None
        self._done = 0

    def next(self, input_data: Callable) -> bool:
        if self._batches is None:
            self._batches = iter(self.batches)
        batch = next(self._batches, None)
        if batch is None:
            return False
        end = self._done + batch.num_rows
        input_data(data=model_input(batch, self.categories), label=self.labels[self._done : end])
        self._done = end
        return True

    def reset(self) -> None:
        self._batches = None
        self._done = 0


def model_input(batch: pa.RecordBatch, categories: dict[str, pa.Array]) -> pa.Table:
    """A batch as XGBoost reads it: text as dictionary codes into the fixed category list of its column,
    decimals as floats; a column of another type (dates, bytes) is refused, naming it."""
    columns = []
    for name, column in zip(batch.schema.names, batch.columns):
        if pa.types.is_dictionary(column.type):
            column = column.dictionary_decode()
        if is_text(column.type):
            dictionary = categories[name]
            column = pa.DictionaryArray.from_arrays(pc.index_in(column, value_set=dictionary), dictionary)
        elif pa.types.is_decimal(column.type):
            column = column.cast(pa.float64())
        elif pa.types.is_float16(column.type):
            column = column.cast(pa.float32())
        elif not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)) and not (
            pa.types.is_boolean(column.type)
        ):
            raise Refusal(
                "training_failed", f"feature {name!r} is of type {column.type}, which XGBoost cannot use"
            )
        columns.append(column)
    return pa.Table.from_arrays(columns, names=batch.schema.names)


def frame_of(table: pa.Table) -> pd.DataFrame:
    """Arrow columns as the DataFrame XGBoost and scikit-learn expect: text as sorted categoricals,
    decimals as floats."""
    casts = {
        f.name: pa.float64()
        for f in table.schema
        if pa.types.is_decimal(f.type) or pa.types.is_float16(f.type)
    }
    if casts:
        table = table.select(table.column_names).cast(
            pa.schema([pa.field(f.name, casts.get(f.name, f.type)) for f in table.schema])
        )
    frame = table.to_pandas()
    for col in frame.columns:
        if frame[col].dtype == object or pd.api.types.is_string_dtype(frame[col].dtype):
            frame[col] = frame[col].astype("category")
    return frame
