"""Imported once by the forkserver, so that every worker forked from it starts with these loaded.

Only imports: no thread pool of OpenMP or DuckDB may run in the forkserver, or a forked child can hang.
"""

import duckdb  # noqa: F401
import numpy  # noqa: F401
import pandas  # noqa: F401
import pyarrow.compute  # noqa: F401
import pyarrow.pandas_compat  # noqa: F401 - XGBoost's Arrow input loads it on first use
import sklearn.compose  # noqa: F401
import sklearn.impute  # noqa: F401
import sklearn.metrics  # noqa: F401
import sklearn.pipeline  # noqa: F401
import sklearn.preprocessing  # noqa: F401
import sqlglot  # noqa: F401
import xgboost  # noqa: F401

from remote_magic.families import xgboost as xgboost_family  # noqa: F401

from . import describe, launch, main, model_task, staging, unpickle  # noqa: F401
