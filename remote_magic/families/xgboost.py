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
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import xgboost as xgb
from sklearn.pipeline import Pipeline

from ..codes import Refusal
from ..wire import ModelBounds
from . import preprocessors, scoring, xgboost_bounds
from .base import Labels, Plan, Report, Split, check_kind

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
    def _final_params(plan: Plan, labels: Labels, threads: int) -> tuple[dict, str]:
        params = dict(plan.params)
        params.pop("n_estimators", None)
        params.pop("n_jobs", None)
        params["nthread"] = min(int(params.get("nthread") or threads), threads)
        params.setdefault("device", "cpu")
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
        plan: Plan, train: Split | None, eval: Split, labels: Labels, threads: int
    ) -> tuple[xgb.DMatrix | None, xgb.DMatrix, bool, object | None, list[str] | None]:
        x_eval = frame_of(eval.x)
        categorical = any(str(t) == "category" for t in x_eval.dtypes)
        if train is None:
            return (
                None,
                xgb.DMatrix(x_eval, label=labels.eval, enable_categorical=True, nthread=threads),
                categorical,
                None,
                None,
            )
        x_train = frame_of(train.x)
        if plan.preprocess is None:
            return (
                xgb.DMatrix(x_train, label=labels.train, enable_categorical=True, nthread=threads),
                xgb.DMatrix(x_eval, label=labels.eval, enable_categorical=True, nthread=threads),
                categorical,
                None,
                None,
            )
        a, b, names, front = preprocessors.fit_transform(plan.preprocess, x_train, x_eval)
        base = _load(plan.base)
        if base is not None and base.feature_names and len(base.feature_names) == len(names):
            names = list(base.feature_names)
        return (
            xgb.DMatrix(a, label=labels.train, feature_names=names, nthread=threads),
            xgb.DMatrix(b, label=labels.eval, feature_names=names, nthread=threads),
            False,
            front,
            names,
        )

    def train(
        self, plan: Plan, train: Split, eval: Split, labels: Labels, threads: int, report: Report
    ) -> Trained:
        params, task = self._final_params(plan, labels, threads)
        history: dict = {}
        with _xgboost_errors():
            dtrain, deval, categorical, front, names = self._matrices(plan, train, eval, labels, threads)
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
            categorical,
            front,
            names,
            threads,
        )

    def score(self, plan: Plan, eval: Split, labels: Labels, threads: int) -> Trained:
        check_kind("evaluate", plan.base is not None, plan.preprocess is not None)
        params, task = self._final_params(plan, labels, threads)
        with _xgboost_errors():
            booster = _load(plan.base)
            assert booster is not None
            booster.set_param({"nthread": threads})
            _, deval, categorical, _, _ = self._matrices(plan, None, eval, labels, threads)
        return Trained(
            booster, deval, labels, task, params, plan.base_rounds, categorical=categorical, threads=threads
        )

    def _matrix(self, trained: Trained, rows: Split) -> xgb.DMatrix:
        """Other rows as the trained model reads them (through a Pipeline's fitted front, if any)."""
        frame = frame_of(rows.x)
        if trained.front is not None:
            return xgb.DMatrix(
                preprocessors.transform(trained.front, frame),
                feature_names=trained.names,
                nthread=trained.threads,
            )
        return xgb.DMatrix(frame, enable_categorical=True, nthread=trained.threads)

    def predict(self, trained: Trained, rows: Split | None = None, rounds: int | None = None) -> np.ndarray:
        """Predictions on the evaluation rows (or on `rows`), using the first `rounds` rounds (or all)."""
        with _xgboost_errors():
            matrix = trained.deval if rows is None else self._matrix(trained, rows)
            return trained.booster.predict(matrix, iteration_range=(0, rounds or 0))

    def smallest_leaf(
        self, trained: Trained, rows: Split | None = None, rounds: tuple[int, int | None] = (0, None)
    ) -> int | None:
        """The fewest rows (training rows, or `rows`) reaching any non-empty leaf of the trees of
        `rounds` (start, stop; stop None: the last); None when there are no such trees or rows."""
        booster = trained.booster
        start, stop = rounds[0], rounds[1] if rounds[1] is not None else booster.num_boosted_rounds()
        with _xgboost_errors():
            matrix = trained.dtrain if rows is None else self._matrix(trained, rows)
            if matrix is None or stop <= start or not matrix.num_row():
                return None
            # pred_leaf takes only ranges from round 0: slice the model instead
            leaves = booster[start:stop].predict(matrix, pred_leaf=True)
        leaves = leaves.reshape(matrix.num_row(), -1)
        return int(min(np.unique(leaves[:, t], return_counts=True)[1].min() for t in range(leaves.shape[1])))

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
        total = trained.booster.num_boosted_rounds()
        smallest = self.smallest_leaf(trained, rounds=(trained.base_rounds, None))
        params = trained.params
        return {
            "categorical": trained.categorical,
            "min_leaf_rows": smallest,
            "max_depth": params["max_depth"] if params.get("max_depth") is not None else DEFAULT_MAX_DEPTH,
            "n_estimators": total - trained.base_rounds,
            "min_child_weight": params["min_child_weight"]
            if params.get("min_child_weight") is not None
            else DEFAULT_MIN_CHILD_WEIGHT,
        }

    def export(self, trained: Trained, folder: Path) -> None:
        """The model in one format, XGBoost JSON (the only one a released model ever leaves in), and the
        parameters it was trained with."""
        trained.booster.save_model(str(folder / "model.json"))
        (folder / "params.json").write_text(json.dumps(trained.params))


FAMILY = XGBoostFamily()
