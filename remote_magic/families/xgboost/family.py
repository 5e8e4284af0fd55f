"""The XGBoost family: XGBClassifier, XGBRegressor, Booster, a params dict, or a Pipeline ending in one.

Whatever was sent becomes one `Plan`: XGBoost params as JSON, a number of new rounds, an optional base
Booster (as UBJSON bytes), and for a Pipeline the preprocessors in canonical form. Resource parameters
are checked against the server's bounds and refused, never clipped. Training continues from the base
booster on the admitted rows with a progress callback; scoring is `scoring.score` (sklearn.metrics).

Why it is long: it is the whole of one model family (recognising, canonicalising and bounding every
form a model may arrive in, then training, scoring, leaf facts and export), which is meant to be read
and audited in one place; splitting it would scatter XGBoost's knowledge over several modules again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import xgboost as xgb
from sklearn.pipeline import Pipeline

from ...contract.codes import Refusal
from ...contract.rows import is_text
from ...contract.wire import ModelBounds
from .. import preprocessors, scoring
from ..base import Batches, Labels, Plan, Report, Split, check_kind
from . import bounds as xgboost_bounds

log = logging.getLogger("remote_magic.families.xgboost")

_SCALARS = (str, int, float, bool, type(None))
_DROPPED_PARAMS = {"callbacks", "early_stopping_rounds", "feature_types", "feature_weights", "missing"}
_MEMORY_SIGNS = (
    "bad_alloc",
    "bad_malloc",
    "failed to allocate",
    "out of memory",
    "cannot allocate memory",
    "resource temporarily unavailable",
)
DEFAULT_BOOSTER_ROUNDS = 10
DEFAULT_MAX_DEPTH = 6
DEFAULT_MAX_BIN = 256
LEAF_TABLE_CELLS = 16_000_000  # rows x trees of leaf ids predicted at once (64 MiB)
DEFAULT_MIN_CHILD_WEIGHT = 1.0


@dataclass
class Trained:
    """A booster with what it was trained and scored on (matrices stay in this process)."""

    booster: xgb.Booster
    deval: xgb.DMatrix
    labels: Labels
    task: str
    params: dict
    base_rounds: int
    dtrain: xgb.DMatrix | None = None
    history: dict = field(default_factory=dict)
    categorical: bool = False
    front: object | None = None
    names: list[str] | None = None
    threads: int = 1
    categories: dict[str, pa.Array] = field(default_factory=dict)


def add_leaf_counts(
    totals: list[np.ndarray], booster: xgb.Booster, matrix: xgb.DMatrix, start: int, stop: int
) -> None:
    """Add the rows of `matrix` reaching each leaf of the trees of rounds start..stop to `totals` (one
    array of counts per tree, by leaf id), a slice of trees at a time so the row-by-tree table of leaf
    ids is never whole in memory. Counts from several matrices (batches, partitions) add up."""
    n = matrix.num_row()
    if not n or stop <= start:
        return
    step = max(1, LEAF_TABLE_CELLS // n)
    for first in range(start, stop, step):
        last = min(stop, first + step)
        # pred_leaf takes only ranges from round 0: slice the model instead
        leaves = booster[first:last].predict(matrix, pred_leaf=True).reshape(n, -1)
        offset = (first - start) * (leaves.shape[1] // (last - first))
        for t in range(leaves.shape[1]):
            _add_counts(totals, offset + t, leaves[:, t])


def fewest_in_a_leaf(totals: list[np.ndarray]) -> int | None:
    """The fewest rows in any leaf that rows reach, over the counted trees; None when none were counted."""
    counted = [c[c > 0] for c in totals if (c > 0).any()]
    return int(min(c.min() for c in counted)) if counted else None


def _add_counts(totals: list[np.ndarray], tree: int, leaf_ids: np.ndarray) -> None:
    """Add the rows reaching each leaf of one tree (leaf ids are node ids) to its running counts."""
    counts = np.bincount(leaf_ids.astype(np.int64))
    while len(totals) <= tree:
        totals.append(np.zeros(0, dtype=np.int64))
    if len(counts) > len(totals[tree]):
        totals[tree] = np.pad(totals[tree], (0, len(counts) - len(totals[tree])))
    totals[tree][: len(counts)] += counts


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


def _categories(plan: Plan, splits: list[Split]) -> dict[str, pa.Array]:
    values: dict[str, set[str]] = {}
    for part in splits:
        for name, found in part.x.text_values().items():
            values.setdefault(name, set()).update(found)
    for name in splits[0].x.column_names:
        if is_text(_value_type(splits[0].x.schema.field(name).type)):
            values.setdefault(name, set())
    return category_lists(plan, values)


def category_lists(plan: Plan, values: dict[str, set[str]]) -> dict[str, pa.Array]:
    """The category list of each text column: the base model's own list first (XGBoost trains on codes,
    so continuing a model fitted in a notebook must keep its codes), then the values it has not seen,
    sorted; without a base model, the sorted values, as pandas orders a notebook's categoricals."""
    known = _base_categories(_load(plan.base)) if values else {}
    out = {}
    for name, found in values.items():
        first = known.get(name, [])
        out[name] = pa.array(first + sorted(found - set(first)), pa.string())
    return out


def _value_type(type_: pa.DataType) -> pa.DataType:
    return type_.value_type if pa.types.is_dictionary(type_) else type_


def _base_categories(booster: xgb.Booster | None) -> dict[str, list[str]]:
    """The categories a base model recorded per feature (XGBoost >= 3.1 keeps them with the model)."""
    if booster is None or not hasattr(booster, "get_categories"):
        return {}
    try:
        recorded = booster.get_categories(export_to_arrow=True).to_arrow()
    except (xgb.core.XGBoostError, ValueError, TypeError):
        return {}
    return {
        str(name): [str(v) for v in array.to_pylist()] for name, array in recorded or [] if array is not None
    }


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


def _task_of(objective: str | None, classifier: bool | None) -> str:
    if classifier is True:
        return "classification"
    if classifier is False:
        return "regression"
    objective = objective or "reg:squarederror"
    if objective.startswith("binary:"):
        return "binary"
    if objective.startswith("multi:"):
        return "multiclass"
    if objective.startswith(("rank:", "survival:")):
        raise Refusal("unsupported_model", f"objective {objective!r} is not supported remotely")
    return "regression"


def _scalar_params(params: dict) -> dict:
    clean = {}
    for key, value in params.items():
        if key in _DROPPED_PARAMS or value is None:
            continue
        if isinstance(value, np.generic):
            value = value.item()
        if not isinstance(value, _SCALARS):
            raise Refusal("unsupported_model", f"parameter {key!r} must be a plain number or string")
        clean[key] = value
    return clean


def _booster_params(booster: xgb.Booster) -> dict:
    config = json.loads(booster.save_config())
    learner = config["learner"]
    objective = learner["objective"]["name"]
    params: dict = {"objective": objective}
    tree = learner.get("gradient_booster", {}).get("tree_train_param", {})
    for key in ("max_depth", "eta", "min_child_weight", "subsample", "reg_lambda", "reg_alpha", "max_bin"):
        if key in tree:
            params[key] = float(tree[key]) if "." in str(tree[key]) else int(tree[key])
    if objective.startswith("multi:"):
        params["num_class"] = int(learner["learner_model_param"]["num_class"])
    return params


def _raw(booster: xgb.Booster | None) -> tuple[bytes | None, int]:
    if booster is None:
        return None, 0
    return bytes(booster.save_raw("ubj")), booster.num_boosted_rounds()


def _load(raw: bytes | None) -> xgb.Booster | None:
    if raw is None:
        return None
    booster = xgb.Booster()
    booster.load_model(bytearray(raw))
    return booster


@contextlib.contextmanager
def _xgboost_errors() -> Iterator[None]:
    """XGBoost's failures as fixed codes: allocation failures are out of memory, the rest a refusal.
    XGBoost's own text goes to the log only."""
    try:
        yield
    except xgb.core.XGBoostError as exc:
        log.warning("xgboost failed: %s", str(exc).splitlines()[0][:300])
        if any(sign in str(exc).lower() for sign in _MEMORY_SIGNS):
            raise MemoryError("XGBoost ran out of memory") from exc
        raise Refusal(
            "training_failed",
            "XGBoost refused the model and data; check that the base model's features and "
            "objective match the spec",
        ) from exc


class _Progress(xgb.callback.TrainingCallback):
    """Reports the round and the latest metrics at most five times a second."""

    def __init__(self, report: Report, base_rounds: int):
        super().__init__()
        self.report = report
        self.base_rounds = base_rounds
        self.last = 0.0

    def after_iteration(self, model: xgb.Booster, epoch: int, evals_log: dict) -> bool:
        now = time.monotonic()
        if now - self.last >= 0.2:
            self.last = now
            latest = {
                split: {m: vals[-1] for m, vals in by_metric.items()}
                for split, by_metric in evals_log.items()
            }
            self.report(model.num_boosted_rounds() - self.base_rounds, latest)
        return False


class XGBoostFamily:
    name = "xgboost"

    def recognises(self, model: object) -> bool:
        if isinstance(model, Pipeline):
            return bool(model.steps) and isinstance(model.steps[-1][1], (xgb.XGBClassifier, xgb.XGBRegressor))
        if isinstance(model, (xgb.XGBClassifier, xgb.XGBRegressor, xgb.Booster)):
            return True
        return isinstance(model, dict) and "params" in model

    def canonical(self, model: object, custom_code: bool = False) -> Plan:
        """The canonical form of a decoded model. A model whose decoded state is incomplete (built
        without state, or with state of the wrong shape) is refused as invalid; only an owner-approved
        payload (`custom_code`) may bring a custom objective or metric function."""
        try:
            return self._canonical(model, custom_code)
        except Refusal:
            raise
        except (AttributeError, TypeError, ValueError, KeyError, IndexError, xgb.core.XGBoostError) as exc:
            raise Refusal("invalid_model", "the model's decoded state is incomplete or corrupt") from exc

    def _canonical(self, model: object, custom_code: bool) -> Plan:
        if isinstance(model, Pipeline):
            if not self.recognises(model):
                raise Refusal(
                    "unsupported_model", "a Pipeline must end in an XGBClassifier or an XGBRegressor"
                )
            plan = self._canonical(model.steps[-1][1], custom_code)
            plan.preprocess = preprocessors.canonical_front(model)
            return plan
        if isinstance(model, (xgb.XGBClassifier, xgb.XGBRegressor)):
            try:
                base = model.get_booster()
            except Exception:  # noqa: BLE001 - an unfitted estimator raises NotFitted
                base = None
            raw = model.get_params()
            params = _scalar_params(model.get_xgb_params())
            task = _task_of(params.get("objective"), isinstance(model, xgb.XGBClassifier))
            booster, base_rounds = _raw(base)
            plan = Plan(
                family=self.name,
                params=params,
                rounds=int(raw.get("n_estimators") or 100),
                task=task,
                base=booster,
                base_rounds=base_rounds,
            )
            self._custom_functions(plan, raw, custom_code)
            return plan
        if isinstance(model, xgb.Booster):
            params = _booster_params(model)
            booster, base_rounds = _raw(model)
            return Plan(
                family=self.name,
                params=params,
                rounds=DEFAULT_BOOSTER_ROUNDS,
                task=_task_of(params["objective"], None),
                base=booster,
                base_rounds=base_rounds,
            )
        if isinstance(model, dict):
            params = model.get("params")
            if not isinstance(params, dict):
                raise Refusal("unsupported_model", "'params' must be a dict of XGBoost parameters")
            booster = model.get("booster")
            if booster is not None and not isinstance(booster, xgb.Booster):
                raise Refusal("unsupported_model", "'booster' must be an xgboost.Booster or None")
            rounds = model.get("num_boost_round", DEFAULT_BOOSTER_ROUNDS)
            if not isinstance(rounds, int) or isinstance(rounds, bool):
                raise Refusal("unsupported_model", "'num_boost_round' must be an integer")
            params = _scalar_params(params)
            raw_booster, base_rounds = _raw(booster)
            return Plan(
                family=self.name,
                params=params,
                rounds=rounds,
                task=_task_of(params.get("objective"), None),
                base=raw_booster,
                base_rounds=base_rounds,
            )
        raise Refusal("unsupported_model", "the model is not a supported XGBoost model")

    @staticmethod
    def _custom_functions(plan: Plan, raw: dict, custom_code: bool) -> None:
        objective, metric = raw.get("objective"), raw.get("eval_metric")
        if not (callable(objective) or callable(metric)):
            return
        if not custom_code:
            raise Refusal("custom_code_refused", "custom objective and metric functions need approval")
        from xgboost.sklearn import _metric_decorator, _objective_decorator

        plan.objective = _objective_decorator(objective) if callable(objective) else None
        plan.metric = _metric_decorator(metric) if callable(metric) else None

    def continued(self, plan: Plan | None, saved: bytes) -> Plan:
        """Continue a booster saved by `export` (XGBoost JSON) with the plan's parameters; without a plan,
        the booster's own parameters (evaluation, or continuing with XGBoost's defaults)."""
        try:
            with _xgboost_errors():
                booster = xgb.Booster()
                booster.load_model(bytearray(saved))
        except Refusal as exc:
            raise Refusal("base_model_unavailable", "the registered model could not be read") from exc
        if plan is None:
            return self.canonical(booster)
        if plan.base is not None or plan.preprocess is not None:
            raise Refusal("unsupported_model", "with a registered base model, send an unfitted XGBoost model")
        plan.base, plan.base_rounds = _raw(booster)
        return plan

    def check_bounds(self, plan: Plan, bounds: ModelBounds) -> None:
        """Refuse parameters beyond the server's bounds, naming the parameter and its bound."""
        if plan.preprocess is not None:
            preprocessors.check_bounds(plan.preprocess)
        xgboost_bounds.check(plan, bounds)

    @staticmethod
    def final_params(plan: Plan, labels: Labels, threads: int) -> tuple[dict, str]:
        """The XGBoost parameters a plan trains with on these labels, and the task it turns out to be
        (a classifier is binary or multiclass by its classes); the same on one machine or a cluster."""
        params = dict(plan.params)
        params.pop("n_estimators", None)
        params.pop("n_jobs", None)
        params["nthread"] = min(int(params.get("nthread") or threads), threads)
        params.setdefault("device", "cpu")
        params["max_bin"] = int(params.get("max_bin") or DEFAULT_MAX_BIN)  # quantile matrices need it
        task = plan.task
        if task == "classification":
            n_classes = len(labels.classes)
            if n_classes > 2:
                params["objective"] = "multi:softprob"
                params["num_class"] = n_classes
            elif not str(params.get("objective", "")).startswith("binary:"):
                params["objective"] = "binary:logistic"
            task = "multiclass" if n_classes > 2 else "binary"
        return params, task

    @staticmethod
    def _matrices(
        plan: Plan, train: Split | None, eval: Split, labels: Labels, params: dict
    ) -> tuple[xgb.DMatrix | None, xgb.DMatrix, dict[str, pa.Array], object | None, list[str] | None]:
        """The training and evaluation matrices, fed batch by batch (no copy of the whole table):

        - a base model to continue or score: `DMatrix`, exact values, because the base model's split
          points need not lie on this data's bins and a quantile matrix would shift its predictions;
        - otherwise `QuantileDMatrix` (the evaluation rows binned by the training rows' cuts, `ref=`),
          or `ExtMemQuantileDMatrix` with its pages in the job folder when the rows were spilled there;
        - a Pipeline: its preprocessors need every training row at once, as pandas (refitted here).
        Also the category list of each text column, and a Pipeline's fitted front and output names."""
        threads = params["nthread"]
        if plan.preprocess is not None:
            assert train is not None
            return XGBoostFamily._pipeline_matrices(plan, train, eval, labels, threads)
        splits = [part for part in (train, eval) if part is not None]
        categories = _categories(plan, splits)

        def matrix(part: Split, y: np.ndarray, ref: xgb.DMatrix | None = None) -> xgb.DMatrix:
            rows = RowBatches(part.x, y, categories)
            if plan.base is not None:
                return xgb.DMatrix(rows, nthread=threads, enable_categorical=True)
            quantile = xgb.ExtMemQuantileDMatrix if part.x.cache is not None else xgb.QuantileDMatrix
            return quantile(
                rows, max_bin=params["max_bin"], ref=ref, nthread=threads, enable_categorical=True
            )

        dtrain = matrix(train, labels.train) if train is not None else None
        return dtrain, matrix(eval, labels.eval, dtrain), categories, None, None

    @staticmethod
    def _pipeline_matrices(
        plan: Plan, train: Split, eval: Split, labels: Labels, threads: int
    ) -> tuple[xgb.DMatrix, xgb.DMatrix, dict[str, pa.Array], object, list[str]]:
        a, b, names, front = preprocessors.fit_transform(
            plan.preprocess, frame_of(train.x.table()), frame_of(eval.x.table())
        )
        base = _load(plan.base)
        if base is not None and base.feature_names and len(base.feature_names) == len(names):
            names = list(base.feature_names)
        return (
            xgb.DMatrix(a, label=labels.train, feature_names=names, nthread=threads),
            xgb.DMatrix(b, label=labels.eval, feature_names=names, nthread=threads),
            {},
            front,
            names,
        )

    def train(
        self, plan: Plan, train: Split, eval: Split, labels: Labels, threads: int, report: Report
    ) -> Trained:
        params, task = self.final_params(plan, labels, threads)
        history: dict = {}
        with _xgboost_errors():
            dtrain, deval, categories, front, names = self._matrices(plan, train, eval, labels, params)
            booster = xgb.train(
                params,
                dtrain,
                num_boost_round=plan.rounds,
                evals=[(dtrain, "train"), (deval, "eval")],
                evals_result=history,
                xgb_model=_load(plan.base),
                obj=plan.objective,
                custom_metric=plan.metric,
                verbose_eval=False,
                callbacks=[_Progress(report, plan.base_rounds)],
            )
        return Trained(
            booster,
            deval,
            labels,
            task,
            params,
            plan.base_rounds,
            dtrain,
            history,
            bool(categories),
            front,
            names,
            threads,
            categories,
        )

    def score(self, plan: Plan, eval: Split, labels: Labels, threads: int) -> Trained:
        check_kind("evaluate", plan.base is not None, plan.preprocess is not None)
        params, task = self.final_params(plan, labels, threads)
        with _xgboost_errors():
            booster = _load(plan.base)
            assert booster is not None
            booster.set_param({"nthread": threads})
            _, deval, categories, _, _ = self._matrices(plan, None, eval, labels, params)
        return Trained(
            booster,
            deval,
            labels,
            task,
            params,
            plan.base_rounds,
            categorical=bool(categories),
            threads=threads,
            categories=categories,
        )

    def _matrices_of(self, trained: Trained, rows: Split) -> Iterator[xgb.DMatrix]:
        """Other rows as the trained model reads them, a batch at a time, with exact values (through a
        Pipeline's fitted front, if any); an empty set of rows is one empty matrix."""
        batches = iter(rows.x)
        first = next(batches, None)
        for batch in [pa.RecordBatch.from_pylist([], schema=rows.x.schema)] if first is None else [first]:
            yield self._batch_matrix(trained, batch)
        for batch in batches:
            yield self._batch_matrix(trained, batch)

    @staticmethod
    def _batch_matrix(trained: Trained, batch: pa.RecordBatch) -> xgb.DMatrix:
        if trained.front is not None:
            return xgb.DMatrix(
                preprocessors.transform(trained.front, frame_of(pa.Table.from_batches([batch]))),
                feature_names=trained.names,
                nthread=trained.threads,
            )
        return xgb.DMatrix(
            model_input(batch, trained.categories), enable_categorical=True, nthread=trained.threads
        )

    def predict(self, trained: Trained, rows: Split | None = None, rounds: int | None = None) -> np.ndarray:
        """Predictions on the evaluation rows (or on `rows`, a batch at a time), using the first `rounds`
        rounds (or all)."""
        span = (0, rounds or 0)
        with _xgboost_errors():
            if rows is None:
                return trained.booster.predict(trained.deval, iteration_range=span)
            return np.concatenate(
                [trained.booster.predict(m, iteration_range=span) for m in self._matrices_of(trained, rows)]
            )

    def smallest_leaf(
        self, trained: Trained, rows: Split | None = None, rounds: tuple[int, int | None] = (0, None)
    ) -> int | None:
        """The fewest rows (training rows, or `rows`) reaching any non-empty leaf of the trees of
        `rounds` (start, stop; stop None: the last); None when there are no such trees or rows.

        Leaf counts are summed over batches of rows and over slices of trees, so the row-by-tree leaf
        table is never whole in memory. The training matrix serves for the trees trained on it (their
        splits lie on its bins); other rows are read batch by batch with exact values."""
        booster = trained.booster
        start, stop = rounds[0], rounds[1] if rounds[1] is not None else booster.num_boosted_rounds()
        if stop <= start or (rows is None and trained.dtrain is None):
            return None
        matrices = [trained.dtrain] if rows is None else self._matrices_of(trained, rows)
        totals: list[np.ndarray] = []
        with _xgboost_errors():
            for matrix in matrices:
                add_leaf_counts(totals, booster, matrix, start, stop)
        return fewest_in_a_leaf(totals)

    def evaluate(self, trained: Trained) -> dict:
        """Exact metrics and confusion counts on the evaluation rows (sklearn.metrics)."""
        try:
            return scoring.score(
                trained.task, trained.labels.eval, self.predict(trained), len(trained.labels.classes)
            )
        except ValueError as exc:
            raise Refusal(
                "evaluation_failed", "the model's predictions could not be scored on the evaluation rows"
            ) from exc

    def history(self, trained: Trained) -> dict | None:
        if not trained.history:
            return None
        metric = next(iter(trained.history["eval"]))
        return {
            "metric": metric,
            "train": list(trained.history["train"][metric]),
            "eval": list(trained.history["eval"][metric]),
        }

    def importance(self, trained: Trained) -> dict[str, float]:
        """Average gain per split of each feature (XGBoost's `gain`)."""
        if not trained.booster.num_boosted_rounds():
            return {}
        return {str(k): float(v) for k, v in trained.booster.get_score(importance_type="gain").items()}

    def rounds(self, trained: Trained) -> dict[str, int]:
        total = trained.booster.num_boosted_rounds()
        return {"base": trained.base_rounds, "new": total - trained.base_rounds, "total": total}

    def task(self, trained: Trained) -> str:
        return trained.task

    def leaf_facts(self, trained: Trained) -> dict:
        """The fewest training rows in a leaf of the trees trained here, and the hyperparameters."""
        smallest = self.smallest_leaf(trained, rounds=(trained.base_rounds, None))
        new = trained.booster.num_boosted_rounds() - trained.base_rounds
        return self.release_facts(trained.params, new, trained.categorical, smallest)

    @staticmethod
    def release_facts(params: dict, new_rounds: int, categorical: bool, smallest: int | None) -> dict:
        """What the model-release rules read, from the training parameters and the leaf count (the same
        whether the leaves were counted here or on a cluster)."""
        return {
            "categorical": categorical,
            "min_leaf_rows": smallest,
            "max_depth": params["max_depth"] if params.get("max_depth") is not None else DEFAULT_MAX_DEPTH,
            "n_estimators": new_rounds,
            "min_child_weight": params["min_child_weight"]
            if params.get("min_child_weight") is not None
            else DEFAULT_MIN_CHILD_WEIGHT,
        }

    def portable_base(self, plan: Plan) -> bytes:
        """The plan's base booster as XGBoost JSON, written by XGBoost from the parsed model: the form
        a cluster gets (never the payload's own bytes)."""
        booster = _load(plan.base)
        assert booster is not None
        return bytes(booster.save_raw("json"))

    def export(self, trained: Trained, folder: Path) -> None:
        """The model in one format, XGBoost JSON (the only one a released model ever leaves in), and the
        parameters it was trained with."""
        trained.booster.save_model(str(folder / "model.json"))
        (folder / "params.json").write_text(json.dumps(trained.params))


FAMILY = XGBoostFamily()
