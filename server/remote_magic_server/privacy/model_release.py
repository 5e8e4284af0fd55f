"""Whether a trained model may leave the server at all, before a data owner looks at it.

Every family's trees keep one rule, and each family has its own beside it (`FAMILY_RULES`). For
XGBoost (privacy.md 4.2, rules 8, 9 and 12): every leaf of the trees trained here holds at least
`min_leaf_rows` training rows, counted by routing the training rows through the trees
(`pred_leaf=True`; `min_child_weight` is a hessian sum, not a row count), and the hyperparameters are
outside SACRO-ML's XGBoost "unnecessary risk" region, mined from a large membership-inference study.
A model with categorical inputs is refused outright: XGBoost stores the category names it saw, and a
rare one is a row's value. Passing all this only makes a model eligible; a data owner still has to approve it.

A model the DP trainer trained is different (`may_leave`): the trainer's noise covers every training row,
so the model is a DP release already paid for from the analyst's budget, and handing it over is
post-processing. It leaves at once, to the job's owner, whatever `allow_model_release` says.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import cast

from remote_magic.contract.codes import Refusal
from remote_magic.contract.wire import DPTraining, ModelReleaseState

from ..config.settings import Policy
from ..protocol import ModelFacts


def unnecessary_risk(max_depth: float, n_estimators: float, min_child_weight: float) -> bool:
    """SACRO-ML's rule (structural_attack.py): deep trees with weak leaf constraints are risky."""
    if max_depth <= 3.5:
        return False
    return (
        (3.5 < n_estimators <= 12.5 and min_child_weight <= 1.5)
        or (n_estimators > 12.5 and min_child_weight <= 3)
        or (n_estimators > 62.5 and 3 < min_child_weight <= 6)
    )


NOT_ALLOWED = (
    "model release is off for this dataset: models stay on the server; register the model on the server "
    "(`--register NAME`, `register=`) to score it later by reference (`--model-ref NAME@1`, `model_ref=`)"
)


def dp_model_message(training: DPTraining) -> str:
    """What a DP model cost, said where its release state is shown."""
    return (
        f"a DP release: the DP trainer trained its {training.trees} trees at epsilon {training.epsilon:.3g} "
        f"(zCDP rho {training.rho:.3g}), already charged to your budget; download it now, at no further cost"
    )


def outside_proof(custom_code: bool, base: tuple[str, bool] | None) -> str | None:
    """Why a model the DP trainer trained in a job is still not a DP release, or None when it is.
    `custom_code`: the job ran owner-approved notebook code, which ran beside the rows in the process
    that wrote the model file, so the proof would rest on code the server did not write. `base`: the
    registered version the job continued (its reference, and whether it was a DP release itself when
    the job was accepted); one that was not (trained in mode rules, or approved by an owner for its
    owner only) has its trees in the file, and the proof covers only the new ones. A base the analyst
    uploaded is their own bytes, not the rows'."""
    if custom_code:
        return "the job ran notebook code"
    if base is not None and not base[1]:
        return f"its base model {base[0]} was not a DP release"
    return None


def may_leave(
    training: DPTraining | None, allowed: bool, decided: tuple[str, str] | None, outside: str | None = None
) -> tuple[ModelReleaseState, str]:
    """Whether a job's trained model may leave now, and why: a DP-trained model at once (`dp_model`),
    unless something in it is `outside` the proof (`outside_proof`); any other only where the dataset
    allows release, as the release rules and the data owner decided (`decided`: the ledger's state and
    message; None when nothing was decided)."""
    if training is not None and outside is None:
        return "dp_model", dp_model_message(training)
    if not allowed or decided is None:
        if outside is not None:
            return "not_allowed", f"no DP release ({outside}): models stay on the server"
        return "not_allowed", NOT_ALLOWED
    state, message = decided
    return cast(ModelReleaseState, state), message


def check_model_release(raw: ModelFacts, policy: Policy) -> None:
    """Raise Refusal naming the rule that keeps this model on the server: its family's own, then the
    leaf floor every family's trees keep."""
    FAMILY_RULES[raw.family](raw.facts)
    smallest = raw.min_leaf_rows
    if smallest is None or smallest < policy.min_leaf_rows:
        raise Refusal(
            "model_release_refused",
            f"a leaf holds fewer than {policy.min_leaf_rows} training rows; regularise the model "
            "(shallower trees, a larger min_child_weight)",
        )


def _xgboost(facts: dict) -> None:
    """XGBoost: no categorical inputs (it keeps their names), nothing in SACRO-ML's risk region."""
    if facts["categorical"]:
        raise Refusal(
            "model_release_refused",
            "the model uses categorical features (text columns), and XGBoost keeps their category names "
            "from the data in the model file; leave the text columns out of `features`, or derive numbers "
            'from them (`"derive": {"north": "region = \'north\'"}`), and train again',
        )
    depth = float(facts["max_depth"]) or math.inf
    if unnecessary_risk(depth, float(facts["n_estimators"]), float(facts["min_child_weight"])):
        raise Refusal(
            "model_release_refused",
            "the hyperparameters fall in SACRO-ML's XGBoost risk region (max_depth > 3 with a small "
            "min_child_weight); use max_depth <= 3 or a larger min_child_weight",
        )


def _xgboost_passed(facts: dict) -> list[str]:
    return [
        "no categorical features",
        f"outside SACRO-ML's XGBoost risk region (max_depth {facts['max_depth']}, n_estimators "
        f"{facts['n_estimators']}, min_child_weight {facts['min_child_weight']})",
    ]


# Each family's own release rule, by the family's name (families.MANIFESTS): a new family adds one, and
# the words that say, to the data owner reviewing a model that passed, what it checked.
FAMILY_RULES: dict[str, Callable[[dict], None]] = {"xgboost": _xgboost}
FAMILY_PASSED: dict[str, Callable[[dict], list[str]]] = {"xgboost": _xgboost_passed}


def checks_passed(raw: ModelFacts, policy: Policy) -> list[str]:
    """What `check_model_release` checked of a model that passed it, for the owner's review."""
    return [
        *FAMILY_PASSED[raw.family](raw.facts),
        f"every leaf holds at least {policy.min_leaf_rows} training rows (the smallest holds "
        f"{raw.min_leaf_rows})",
    ]
