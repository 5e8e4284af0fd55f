"""Imported once by the forkserver, so that every worker forked from it starts with these loaded.

Imports, and one call of the metric functions on a few made-up numbers (scikit-learn's first call
loads and caches what its input checks use; about 8 ms a job) and of `pyarrow.scalar` (its first call
imports a module: about 1 ms of staging's `fill_null` in every worker). Nothing else runs: no thread pool of
OpenMP, DuckDB or Arrow may exist in the forkserver, or a forked child can hang.
"""

import importlib

import duckdb  # noqa: F401
import numpy  # noqa: F401
import pandas  # noqa: F401
import pyarrow
import pyarrow.compute  # noqa: F401
import pyarrow.pandas_compat  # noqa: F401 - a model library's Arrow input loads it on first use
import sklearn.compose  # noqa: F401
import sklearn.impute  # noqa: F401
import sklearn.metrics  # noqa: F401
import sklearn.pipeline  # noqa: F401
import sklearn.preprocessing  # noqa: F401
import sqlglot  # noqa: F401

from remote_magic.families import MANIFESTS, scoring

from ..runner import launch  # noqa: F401
from . import describe_task, main, model_task, staging, sums_task, unpickle  # noqa: F401

for manifest in MANIFESTS:  # each family's code, and the model library it imports
    importlib.import_module(manifest.module)


def _warm_metrics() -> None:
    """Score made-up predictions of each task once (numpy and scikit-learn only, single-threaded)."""
    y = numpy.arange(6) % 3
    shares = numpy.full((6, 3), 1 / 3).ravel()
    scoring.score("binary", y % 2, numpy.linspace(0.1, 0.9, 6), 2)
    scoring.score("multiclass", y, shares, 3)
    scoring.score("regression", y.astype(float), numpy.linspace(0.0, 2.0, 6), 1)


_warm_metrics()
pyarrow.scalar(False, type=pyarrow.bool_())
