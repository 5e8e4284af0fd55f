"""A trained model brought home from the server: the Booster, the scikit-learn estimator that wraps it,
and what it cost.

A model the server's DP trainer trained is a DP release: it leaves at once and its cost was charged when
it was trained, so taking it home costs nothing more. Any other model leaves only after the data owner
approved it. The one-line summary says which, with the cost and the budget left, and no job id, so a
saved notebook reads the same each run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..contract.wire import DPTraining

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import xgboost

TASK_NAMES = {"binary": "binary classifier", "multiclass": "multiclass classifier", "regression": "regressor"}


def task_of(booster: xgboost.Booster) -> str:
    """The task a saved model was trained for, read from its objective (`binary:`, `multi:`, else a
    regression)."""
    import json

    objective = json.loads(booster.save_config())["learner"]["objective"]["name"]
    if objective.startswith("binary:"):
        return "binary"
    return "multiclass" if objective.startswith("multi:") else "regression"


def estimator_for(data: bytes, task: str) -> xgboost.XGBModel:
    """An XGBClassifier or XGBRegressor with the saved model loaded, so `predict_proba` and `predict`
    work on a DataFrame with the model's feature names (and its categorical columns as `category`)."""
    import xgboost

    estimator = xgboost.XGBClassifier() if task in ("binary", "multiclass") else xgboost.XGBRegressor()
    estimator.load_model(bytearray(data))
    types = estimator.get_booster().feature_types or []
    if "c" in types:
        estimator.set_params(enable_categorical=True)
    return estimator


@dataclass(frozen=True)
class RemoteModel:
    """A released model: `predict_proba` / `predict` on your own rows (a DataFrame with the training
    columns, text as text), `estimator` (the XGBClassifier / XGBRegressor), `booster` (the same model as
    an `xgboost.Booster`), and its cost: `training` (the DP trainer's epsilon and rho; None for a model
    released by approval) and `budget_left` (zCDP rho left on its dataset now; None where the dataset
    has no budget)."""

    job_id: str
    dataset: str
    task: str
    release: str
    estimator: xgboost.XGBModel
    training: DPTraining | None = None
    budget_left: float | None = None
    classes: list[str] | None = None
    ref: str | None = None
    label_kind: str | None = None
    derive: dict[str, str] | None = None

    @classmethod
    def load(
        cls,
        data: bytes,
        job_id: str,
        dataset: str,
        training: DPTraining | None,
        budget_left: float | None,
        classes: list[str] | None = None,
        ref: str | None = None,
        label_kind: str | None = None,
        derive: dict[str, str] | None = None,
    ) -> RemoteModel:
        """The model from its XGBoost JSON bytes, as the server sent them; `label_kind` is the label
        column's kind in the catalog (`contract.types`), so `predict` gives values of the label's type;
        `derive` the job's derived columns (name -> expression), which `rows` computes from your rows."""
        import xgboost

        booster = xgboost.Booster()
        booster.load_model(bytearray(data))
        task = task_of(booster)
        return cls(
            job_id=job_id,
            dataset=dataset,
            task=task,
            release="dp_model" if training is not None else "approved",
            estimator=estimator_for(data, task),
            training=training,
            budget_left=budget_left,
            classes=classes,
            ref=ref,
            label_kind=label_kind,
            derive=derive or None,
        )

    @property
    def booster(self) -> xgboost.Booster:
        return self.estimator.get_booster()

    def rows(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Your rows as the model reads them: its features in its order, each text column a pandas
        categorical over the levels the model knows. A level it does not know becomes missing, as it was
        for the trainer (XGBoost alone would read it as a neighbouring level without a word). Columns the
        model does not read (an id, the label) are left out. Number and true/false columns are read as the
        server reads its rows (`contract.rows.as_pandas`): as decimals, a missing value (None, NaN, NA)
        as missing, whatever pandas dtype they came in (`[True, None]` is an object column, which
        XGBoost refuses); a column that holds no numbers is a ValueError naming it. A feature your frame
        lacks is a ValueError that names it, as XGBoost's own check would, rather than a KeyError from
        deep inside pandas. A column the job derived (`derive`) that your frame lacks is computed from
        your rows by the job's own expression, checked and run as the server ran it (DuckDB, here):
        rebuilt by hand in pandas it can differ without a word (DuckDB's `dayofweek` counts Sunday as
        0, pandas' Monday)."""
        import pandas as pd

        booster = self.booster
        names = booster.feature_names or list(frame.columns)
        missing = [name for name in names if name not in frame.columns]
        derivable = {name: text for name, text in (self.derive or {}).items() if name in missing}
        if derivable:
            frame = pd.concat([frame, derived_columns(frame, derivable)], axis=1)
            missing = [name for name in missing if name not in derivable]
        if missing:
            raise ValueError(_missing_message(missing, [c for c in frame.columns if c not in names]))
        out = frame[names].copy()
        types = booster.feature_types or ["float"] * len(names)
        numeric = [name for name, kind in zip(names, types) if kind != "c"]
        if numeric:
            out[numeric] = _as_numbers(out[numeric])
        if "c" in types:
            for name, levels in booster.get_categories(export_to_arrow=True).to_arrow():
                if levels is not None:
                    known = levels.to_pylist()
                    out[name] = pd.Categorical(out[name].where(out[name].isin(known)), categories=known)
        return out

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Class probabilities of your rows (a classifier), read as the model reads them (`rows`)."""
        return self.estimator.predict_proba(self.rows(frame))

    def predict(self, frame: pd.DataFrame) -> np.ndarray:
        """Predictions for your rows: a regressor's values, or a classifier's classes as the label holds
        them (numbers, or the text of a text label), not XGBoost's codes 0, 1, ... for the sorted classes."""
        import numpy as np

        predicted = self.estimator.predict(self.rows(frame))
        if self.task == "regression" or not self.classes:
            return predicted
        return self.classes_[np.asarray(predicted, dtype=np.int64)]

    @property
    def classes_(self) -> np.ndarray:
        """A classifier's classes as values of the label's type, in the order of `predict_proba`'s
        columns: sorted, as scikit-learn's and XGBoost's `classes_` are (the distinct labels, as
        `np.unique` orders them), not in the order the data owner declared them. A regressor has none
        (an AttributeError). `classes` holds the same classes as text."""
        import numpy as np

        if self.task == "regression":
            raise AttributeError("a regressor has no classes_ (as in scikit-learn)")
        if not self.classes:  # a result that did not say them: XGBoost's codes 0, 1, ...
            return self.estimator.classes_
        # The result lists them as text ("10" before "5"); the model's codes follow the label's values.
        return np.sort(_class_values(self.classes, self.label_kind), kind="stable")

    @property
    def dp(self) -> bool:
        """True for a DP release (trained by the server's DP trainer)."""
        return self.training is not None

    def summary(self) -> str:
        """One line: what the model is, how it was released, what it cost and the budget left."""
        what = f"{type(self.estimator).__name__} ({TASK_NAMES.get(self.task, self.task)}, "
        what += f"{self.booster.num_boosted_rounds()} rounds)"
        if self.training is None:
            return f"{what}: released with the data owner's approval; no privacy budget spent on it"
        t = self.training
        left = (
            "" if self.budget_left is None else f"; budget left on {self.dataset}: rho {self.budget_left:.3g}"
        )
        return (
            f"{what}: a DP release, trained at epsilon {t.epsilon:.3g} (rho {t.rho:.3g}), "
            f"nothing more charged to download it{left}"
        )

    def __repr__(self) -> str:
        return f"<RemoteModel {self.summary()}>"


def _class_values(classes: list[str], kind: str | None = None) -> np.ndarray:
    """The classes (their text, as results name them: `str` of each value) as values of the label's
    type, so they compare equal to the label (`accuracy_score` refuses strings against booleans):
    booleans, integers, decimals or text. Without the label's kind (a catalog that no longer has it),
    text that reads as numbers or as True/False is taken for them."""
    import numpy as np

    from ..contract.types import BOOLEAN, TEXT

    if kind == TEXT:
        return np.array(classes, dtype=object)
    if kind == BOOLEAN or (kind is None and {c.lower() for c in classes} <= {"true", "false"}):
        return np.array([c.lower() == "true" for c in classes])
    for number in (int, float):
        try:
            return np.array([number(c) for c in classes])
        except ValueError:
            continue
    return np.array(classes, dtype=object)


def _as_numbers(frame: pd.DataFrame) -> pd.DataFrame:
    """The columns as decimals, read through their Arrow type as the server reads its rows; a column
    Arrow cannot read as numbers or true/false values is a ValueError that names it."""
    import pyarrow as pa

    from ..contract.rows import as_pandas
    from ..contract.types import BOOLEAN, NUMBER, kind_of

    arrays = []
    for name in frame.columns:
        try:
            array = pa.array(frame[name], from_pandas=True)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as error:
            said = str(error).splitlines()[0]
            raise ValueError(
                f"your column {name!r} mixes values the model cannot read as numbers: {said}"
            ) from None
        if kind_of(str(array.type)) not in (NUMBER, BOOLEAN) and array.null_count < len(array):
            raise ValueError(
                f"your column {name!r} holds {array.type} values and the model reads it as numbers "
                "(numbers or True/False; None or NaN for a missing one)"
            )
        arrays.append(array.cast(pa.float64()) if array.null_count == len(array) else array)
    numbers = as_pandas(pa.Table.from_arrays(arrays, names=[str(n) for n in frame.columns]))
    return numbers.set_axis(frame.index)


def derived_columns(frame: pd.DataFrame, derive: dict[str, str]) -> pd.DataFrame:
    """The derived columns of your rows, by the staging query's own builder (`query.derive_query`: the
    derive grammar's parser and allow-list, the same NULL for a value that is not a finite number),
    run by DuckDB in memory, in UTC; an expression that your columns cannot feed is a ValueError naming
    it."""
    import duckdb
    from sqlglot import exp

    from ..contract.codes import Refusal
    from ..contract.query import derive_query

    table = "remote_magic_your_rows"
    said = "; ".join(f"{name} = {text}" for name, text in derive.items())
    columns = [str(c) for c in frame.columns if str(c) not in derive]
    con = duckdb.connect(":memory:")
    try:
        sql = derive_query(derive, columns, exp.table_(table, quoted=True))
        con.execute("SET TimeZone = 'UTC'")
        con.register(table, frame)
        values = con.sql(sql).df()
    except Refusal as exc:
        raise ValueError(
            f"your rows cannot give the model's derived column(s) {said}: {exc.message}"
        ) from None
    except duckdb.Error as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise ValueError(f"your rows cannot give the model's derived column(s) {said}: {first}") from None
    finally:
        con.close()
    return values.set_axis(frame.index)


def _missing_message(missing: list[str], unread: list[object]) -> str:
    """One line naming the features a frame lacks, and the columns it has that the model does not read
    (often the same column spelt another way)."""
    said = f"your rows lack {len(missing)} column(s) the model was trained on: {', '.join(missing)}"
    if unread:
        more = f" and {len(unread) - 5} more" if len(unread) > 5 else ""
        said += f" (it does not read your column(s) {', '.join(map(str, unread[:5]))}{more})"
    return said
