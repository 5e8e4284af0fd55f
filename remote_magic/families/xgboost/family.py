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
import pyarrow as pa
import xgboost as xgb
from scipy.special import expit
from sklearn.pipeline import Pipeline

from ...contract.codes import Refusal
from ...contract.rows import is_text
from ...contract.wire import ModelBounds
from .. import MODEL_FILE, PARAMS_FILE, partials, preprocessors
from ..base import PROGRESS_EVERY_S, Labels, Part, Partitions, Plan, Report, Run, Split, check_kind
from . import bounds as xgboost_bounds
from .inputs import RowBatches, frame_of, model_input
from .known import check_estimator, check_known
from .leaves import MARGIN_LEAF_LIMIT, check_booster

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
STATE = "xgboost"  # a partition's state: the matrices of its rows, by split
DEFAULT_MIN_CHILD_WEIGHT = 1.0
SMALL_MATRIX_CELLS = 2_000_000  # rows x features up to which a split becomes a plain DMatrix (16 MB)


@dataclass
class Trained:
    """A booster with what it needs to read rows as it was trained on. It pickles: on a cluster it goes
    to the partitions; the matrices of a partition's rows stay in that partition's state."""

    booster: xgb.Booster
    task: str
    params: dict
    base_rounds: int
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
            partials.add_leaves(totals, offset + t, leaves[:, t])


def text_values(part: Part, splits: tuple[str, ...] = ("train", "eval")) -> dict[str, set[str]]:
    """A partition's text columns (from the schema), each with its levels in `splits` (a text column
    without any value there has none)."""
    values: dict[str, set[str]] = {}
    for split in (part.train, part.eval):
        for name in split.x.column_names:
            if is_text(_value_type(split.x.schema.field(name).type)):
                values.setdefault(name, set())
    for split in (part.split(name) for name in splits):
        for name, found in split.x.text_values().items():
            values.setdefault(name, set()).update(found)
    return values


def _categories(plan: Plan, parts: Partitions, public_levels: bool = False) -> dict[str, pa.Array]:
    """The category list of each text column for a training. With `public_levels` (the noisy modes) the
    evaluation rows' levels take no part: a level that only they hold would shift other levels' codes
    and change the model, exactly when a row is there; they read as missing. A continued base model
    there keeps its own list alone: a training row's level it has not seen made XGBoost refuse the
    rows, exactly when that row was in."""
    base = _load(plan.base) if public_levels else None
    if base is not None:
        return _recorded_categories(base, parts)
    values: dict[str, set[str]] = {}
    for found in parts.map(text_values, ("train",) if public_levels else ("train", "eval")):
        for name, levels in found.items():
            values.setdefault(name, set()).update(levels)
    return category_lists(plan, values)


def _recorded_categories(booster: xgb.Booster, parts: Partitions) -> dict[str, pa.Array]:
    """The category list of each text column for scoring a fixed model in the noisy modes: the model's
    own record and nothing from the rows, whose levels it has not seen read as missing (from the rows,
    one row's level would shift other rows' codes, or make XGBoost refuse the rows, exactly when that
    row is there). `unrecorded_categories` refused a model without a record before any row was read."""
    known = _base_categories(booster)
    names = {name for found in parts.map(text_values, ()) for name in found}
    return {name: pa.array(known.get(name, []), pa.string()) for name in sorted(names)}


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


def ready_to_score(
    booster: xgb.Booster,
    plan: Plan,
    parts: Partitions,
    task: str,
    params: dict,
    categories: dict[str, pa.Array],
    threads: int,
    kind: type[Trained] = Trained,
    **more: object,
) -> Trained:
    """A finished booster as a `Trained` (or `kind`, with `more`), set to score with the threads of a
    cluster's workers on a cluster, else the job's: how a fixed model and a DP-trained one both end."""
    if parts.dask is not None:
        from .on_dask import threads_on

        threads = threads_on(parts, threads)
    booster.set_param({"nthread": threads})
    return kind(
        booster,
        task,
        params,
        plan.base_rounds,
        categorical=bool(categories),
        threads=threads,
        categories=categories,
        **more,  # type: ignore[arg-type]
    )


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


def _as_predicted(booster: xgb.Booster | None) -> xgb.Booster | None:
    """The trees an early-stopped estimator predicts with on the analyst's machine (XGBoost's sklearn
    `predict` stops at `best_iteration`): the server evaluates, and continues, that model."""
    best = booster.attr("best_iteration") if booster is not None else None
    if best is None or int(best) + 1 >= booster.num_boosted_rounds():  # type: ignore[union-attr]
        return booster
    return booster[: int(best) + 1]  # type: ignore[index]


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
        if now - self.last >= PROGRESS_EVERY_S:
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
            # Decoded from the analyst's bytes: `steps` may be anything (a dict made this an internal error).
            steps = model.steps
            last = steps[-1] if isinstance(steps, (list, tuple)) and steps else None
            return (
                isinstance(last, (list, tuple))
                and len(last) == 2
                and isinstance(last[1], (xgb.XGBClassifier, xgb.XGBRegressor))
            )
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
            xgboost_bounds.check_whole_numbers(raw)
            check_estimator(model)  # a misspelt keyword XGBoost would only warn about
            params = _scalar_params(model.get_xgb_params())
            task = _task_of(params.get("objective"), isinstance(model, xgb.XGBClassifier))
            booster, base_rounds = _raw(_as_predicted(base))
            plan = Plan(
                family=self.name,
                params=params,
                rounds=int(raw.get("n_estimators") or 100),
                task=task,
                base=booster,
                base_rounds=base_rounds,
                stops_early=raw.get("early_stopping_rounds") is not None,
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
            check_known(params, set(params), [])
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
        """Refuse parameters beyond the server's bounds, naming the parameter and its bound, and a base
        model whose leaves no prediction survives (`leaves.py`), before any row is read."""
        if plan.preprocess is not None:
            preprocessors.check_bounds(plan.preprocess)
        xgboost_bounds.check(plan, bounds)
        if plan.base is not None:
            check_booster(plan.base, MARGIN_LEAF_LIMIT)

    def check_columns(self, plan: Plan, columns: list[str]) -> None:
        """A fitted bare model scores only the columns it was fitted on, in their order: refused here, before
        any row is read, rather than by XGBoost after admission (charged, and `not_released` saying
        nothing of the cause). The names are the model's own and the spec's, both the analyst's."""
        if plan.base is None or plan.preprocess is not None:
            return
        with _xgboost_errors():
            booster = _load(plan.base)
        assert booster is not None
        names = list(booster.feature_names or [])
        if names and names != list(columns):
            raise Refusal(
                "feature_mismatch",
                f"the model was fitted on the features {', '.join(names)}; this job's features are "
                f"{', '.join(columns)}. Set the spec's features to the model's, in that order",
            )
        if not names and booster.num_features() != len(columns):
            raise Refusal(
                "feature_mismatch",
                f"the model was fitted on {booster.num_features()} features; this job has {len(columns)}",
            )

    def unrecorded_categories(self, plan: Plan) -> list[str]:
        """A fitted model's categorical features that come without their categories (a model fitted on
        codes, or by an XGBoost before 3.1): in the noisy modes nothing else may say what its codes
        mean (`_recorded_categories`), so such an evaluation is refused before any row is read."""
        if plan.base is None or plan.preprocess is not None:
            return []
        with _xgboost_errors():
            booster = _load(plan.base)
        assert booster is not None
        types = list(booster.feature_types or [])
        names = list(booster.feature_names or [f"f{i}" for i in range(len(types))])
        known = _base_categories(booster)
        return [name for name, kind in zip(names, types) if kind == "c" and not known.get(name)]

    def predicted_classes(self, plan: Plan) -> int | None:
        with _xgboost_errors():
            booster = _load(plan.base)
        if booster is None:
            return None
        learner = json.loads(booster.save_config())["learner"]
        if str(learner["objective"]["name"]).startswith("multi:"):
            return int(learner["learner_model_param"]["num_class"])
        return 2

    @staticmethod
    def final_params(plan: Plan, classes: list[str], threads: int) -> tuple[dict, str]:
        """The XGBoost parameters a plan trains with on these classes, and the task it turns out to be
        (a classifier is binary or multiclass by its classes); the same on one machine or a cluster."""
        params = dict(plan.params)
        params.pop("n_estimators", None)
        params.pop("n_jobs", None)
        params["nthread"] = min(int(params.get("nthread") or threads), threads)
        params.setdefault("device", "cpu")
        params["max_bin"] = int(params.get("max_bin") or DEFAULT_MAX_BIN)  # quantile matrices need it
        task = plan.task
        if task == "classification":
            n_classes = len(classes)
            if n_classes > 2:
                params["objective"] = "multi:softprob"
                params["num_class"] = n_classes
            elif not str(params.get("objective", "")).startswith("binary:"):
                params["objective"] = "binary:logistic"
            task = "multiclass" if n_classes > 2 else "binary"
        return params, task

    @staticmethod
    def _matrices(
        plan: Plan, train: Split, eval: Split, labels: Labels, params: dict, categories: dict[str, pa.Array]
    ) -> tuple[xgb.DMatrix, xgb.DMatrix, object | None, list[str] | None]:
        """The training and evaluation matrices, fed batch by batch (no copy of the whole table):

        - a base model to continue: `DMatrix`, exact values, because the base model's split points need
          not lie on this data's bins and a quantile matrix would shift its predictions;
        - a split of at most `SMALL_MATRIX_CELLS` held in memory: `DMatrix` of its rows as one Arrow
          table (the trees are the same: training bins it with the same cuts), since a quantile matrix's
          own passes cost a small job more than they save (about 40 ms of 100 on 10k rows);
        - otherwise `QuantileDMatrix` (the evaluation rows binned by the training rows' cuts, `ref=`),
          or `ExtMemQuantileDMatrix` with its pages in the job folder when the rows were spilled there;
        - a Pipeline: its preprocessors need every training row at once, as pandas (refitted here).
        Also a Pipeline's fitted front and output names."""
        threads = params["nthread"]
        if plan.preprocess is not None:
            return XGBoostFamily._pipeline_matrices(plan, train, eval, labels, threads)

        def matrix(part: Split, y: np.ndarray, ref: xgb.DMatrix | None = None) -> xgb.DMatrix:
            if part.x.cache is None and 0 < len(y) * len(part.x.schema) <= SMALL_MATRIX_CELLS:
                whole = pa.concat_tables([model_input(batch, categories) for batch in part.x])
                return xgb.DMatrix(whole.combine_chunks(), label=y, nthread=threads, enable_categorical=True)
            rows = RowBatches(part.x, y, categories)
            if plan.base is not None:
                return xgb.DMatrix(rows, nthread=threads, enable_categorical=True)
            quantile = xgb.ExtMemQuantileDMatrix if part.x.cache is not None else xgb.QuantileDMatrix
            return quantile(
                rows, max_bin=params["max_bin"], ref=ref, nthread=threads, enable_categorical=True
            )

        dtrain = matrix(train, labels.train)
        return dtrain, matrix(eval, labels.eval, dtrain), None, None

    @staticmethod
    def _pipeline_matrices(
        plan: Plan, train: Split, eval: Split, labels: Labels, threads: int
    ) -> tuple[xgb.DMatrix, xgb.DMatrix, object, list[str]]:
        a, b, names, front = preprocessors.fit_transform(
            plan.preprocess, frame_of(train.x.table()), frame_of(eval.x.table())
        )
        base = _load(plan.base)
        if base is not None and base.feature_names and len(base.feature_names) == len(names):
            names = list(base.feature_names)
        return (
            xgb.DMatrix(a, label=labels.train, feature_names=names, nthread=threads),
            xgb.DMatrix(b, label=labels.eval, feature_names=names, nthread=threads),
            front,
            names,
        )

    def train(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Trained:
        """Train with `xgb.train` on every row in this process, or with `xgboost.dask` on a cluster's
        partitions (on_dask.py)."""
        params, task = self.final_params(plan, classes, run.threads)
        categories = {} if plan.preprocess is not None else _categories(plan, parts, run.public_levels)
        front, names, threads = None, None, run.threads
        if parts.dask is not None:
            from .on_dask import train_on_dask

            booster, history, threads = train_on_dask(plan, parts, params, task, categories, run)
        else:
            booster, history, front, names = self._train_here(plan, parts, params, categories, run)
        return Trained(
            booster,
            task,
            params,
            plan.base_rounds,
            history,
            bool(categories),
            front,
            names,
            threads,
            categories,
        )

    def _train_here(
        self, plan: Plan, parts: Partitions, params: dict, categories: dict[str, pa.Array], run: Run
    ) -> tuple[xgb.Booster, dict, object | None, list[str] | None]:
        held = parts.map(_itself)  # in this process: the partitions themselves
        train, evaluation, labels = _together(held)
        history: dict = {}
        with _xgboost_errors():
            dtrain, deval, front, names = self._matrices(plan, train, evaluation, labels, params, categories)
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
                callbacks=[_Progress(run.report, plan.base_rounds)],
            )
        if len(held) == 1:  # the matrices read that partition's rows as the model does: keep them
            held[0].state[STATE] = {"train": [dtrain], "eval": [deval]}
        return booster, history, front, names

    def score(self, plan: Plan, parts: Partitions, classes: list[str], run: Run) -> Trained:
        check_kind("evaluate", plan.base is not None, plan.preprocess is not None)
        params, task = self.final_params(plan, classes, run.threads)
        with _xgboost_errors():
            booster = _load(plan.base)
        assert booster is not None
        categories = _recorded_categories(booster, parts) if run.public_levels else _categories(plan, parts)
        return ready_to_score(booster, plan, parts, task, params, categories, run.threads)

    def _read(self, trained: Trained, part: Part, split: str) -> list[xgb.DMatrix]:
        """A partition's rows of a split as the trained model reads them: the matrices its training
        left in the partition's state, or new ones, a batch at a time with exact values (through a
        Pipeline's fitted front, if any), kept while the rows are in memory. No rows: one empty matrix."""
        kept = part.state.setdefault(STATE, {})
        if split in kept:
            return kept[split]
        rows = part.split(split)
        batches = list(rows.x) if not rows.x.files else None
        source = batches if batches is not None else rows.x
        matrices = [self._batch_matrix(trained, batch) for batch in source]
        if not matrices:
            matrices = [self._batch_matrix(trained, pa.RecordBatch.from_pylist([], schema=rows.x.schema))]
        if batches is not None:
            kept[split] = matrices
        return matrices

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

    def predict(self, trained: Trained, part: Part, split: str, rounds: int | None = None) -> np.ndarray:
        """Predictions on a partition's rows of `split`, using the first `rounds` rounds (or all). A
        `binary:logitraw` model predicts margins; its probabilities are their logistic, as the
        `binary:logistic` model of the same trees would predict, so every score reads probabilities."""
        span = (0, rounds or 0)
        with _xgboost_errors():
            pred = np.concatenate(
                [trained.booster.predict(m, iteration_range=span) for m in self._read(trained, part, split)]
            )
        return expit(pred) if trained.params.get("objective") == "binary:logitraw" else pred

    def leaf_counts(self, trained: Trained, part: Part, split: str, rounds: tuple[int, int]) -> list:
        """Rows of a partition's `split` in each leaf of the trees of rounds (start, stop), per tree.

        Counted over batches of rows and slices of trees, so the row-by-tree leaf table is never whole
        in memory. The training matrix serves for the trees trained on it (their splits lie on its
        bins); other rows are read with exact values."""
        totals: list[np.ndarray] = []
        with _xgboost_errors():
            for matrix in self._read(trained, part, split):
                add_leaf_counts(totals, trained.booster, matrix, *rounds)
        return totals

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

    def training(self, trained: Trained) -> None:
        """None: XGBoost trains without DP."""
        return None

    def release_facts(self, trained: Trained) -> dict:
        """What XGBoost's release rule reads: categorical inputs, and the hyperparameters."""
        params = trained.params
        return {
            "categorical": trained.categorical,
            "max_depth": params["max_depth"] if params.get("max_depth") is not None else DEFAULT_MAX_DEPTH,
            "n_estimators": trained.booster.num_boosted_rounds() - trained.base_rounds,
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
        trained.booster.save_model(str(folder / MODEL_FILE))
        (folder / PARAMS_FILE).write_text(json.dumps(trained.params))


def _itself(part: Part) -> Part:
    return part


def _together(held: list[Part]) -> tuple[Split, Split, Labels]:
    """Every partition's rows as one training and one evaluation split (one partition: its own, so a
    spilled one keeps its external-memory pages)."""
    if len(held) == 1:
        (part,) = held
        assert part.labels is not None
        return part.train, part.eval, part.labels
    train = Split(
        x=sum((p.train.x for p in held[1:]), held[0].train.x), y=np.concatenate([p.train.y for p in held])
    )
    evaluation = Split(
        x=sum((p.eval.x for p in held[1:]), held[0].eval.x), y=np.concatenate([p.eval.y for p in held])
    )
    labels = Labels(
        np.concatenate([p.y("train") for p in held]),
        np.concatenate([p.y("eval") for p in held]),
        held[0].labels.classes if held[0].labels is not None else [],
    )
    return train, evaluation, labels


FAMILY = XGBoostFamily()
