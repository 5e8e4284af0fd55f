"""The trained model as XGBoost's own JSON model format, so it loads as an ordinary `xgboost.Booster`.

A released tree carries only what the mechanism released: its public structure (columns, candidate
thresholds, level subsets, missing directions), its leaf values, and as cover the noisy hessian sums
(clipped at 0; an inner node's cover is its children's sum). Gains are 0 and inner nodes have weight 0,
so no statistic of the exact rows is in the model (TimberStrike reads such statistics back).

Text columns are categorical features: the model records each column's level list (`cats`), and a
categorical node lists the level indices that go right, as XGBoost reads them. An analyst's DataFrame
with the original strings as a pandas categorical is re-coded by XGBoost against that list, so it
predicts what the trainer computed. A level outside the list must be missing there, as it is for the
trainer: XGBoost 3.2 maps a category it does not know to a neighbouring one without a word (or fails when
it sorts after the last); `pd.Categorical(values, categories=booster.get_categories()[name])` does it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import xgboost as xgb

from ...contract.codes import Refusal
from ...contract.federated import LEAF_LIMIT
from ..xgboost.leaves import check_leaves
from .features import Features, xgboost_input
from .objectives import BINARY, MULTICLASS, Objective
from .structure import Batch

ROOT_PARENT = 2147483647


@dataclass
class Tree:
    """One released tree: its batch, its index in the batch, its leaf values and covers."""

    batch: Batch
    index: int
    values: np.ndarray  # (leaves,) float32
    cover: np.ndarray  # (leaves,) float32, >= 0

    @property
    def group(self) -> int:
        return self.index % self.batch.classes


def _floats(values: np.ndarray) -> list[float]:
    """Float32 values as the float64s that print back to exactly them (rounded to float32 first)."""
    return np.asarray(values, dtype=np.float64).astype(np.float32).astype(np.float64).tolist()


def tree_json(tree: Tree, features: Features, tree_id: int) -> dict:
    """One tree in XGBoost's JSON schema (complete, breadth-first)."""
    batch, t = tree.batch, tree.index
    depth = batch.depth
    inner, total = (1 << depth) - 1, (1 << (depth + 1)) - 1
    ids = np.arange(inner)
    level = np.floor(np.log2(ids + 1)).astype(np.int64)
    position = ids - ((1 << level) - 1)
    column = batch.feature[t, level]
    text = np.array([c.kind == "categorical" for c in features.columns], dtype=bool)[column]
    thresholds = np.zeros(inner)
    for f in np.unique(column[~text]):
        at = (column == f) & ~text
        grid = np.asarray(features.columns[f].candidates, dtype=np.float32)
        thresholds[at] = grid[batch.split[t, level[at], position[at]]]
    right = batch.right[t, level, position][text]
    cat_nodes = ids[text]
    sizes = right.sum(axis=1)
    _, cat_levels = np.nonzero(right)
    cover = np.zeros(total)
    cover[inner:] = tree.cover
    for lv in range(depth - 1, -1, -1):
        first, count = (1 << lv) - 1, 1 << lv
        children = cover[2 * first + 1 : 2 * first + 1 + 2 * count]
        cover[first : first + count] = children[0::2] + children[1::2]
    values = np.concatenate([thresholds, tree.values.astype(np.float64)])
    all_ids = np.arange(total)
    is_inner = all_ids < inner
    return {
        "base_weights": _floats(np.where(is_inner, 0.0, values)),
        "categories": cat_levels.tolist(),
        "categories_nodes": cat_nodes.tolist(),
        "categories_segments": (np.cumsum(sizes) - sizes).tolist(),
        "categories_sizes": sizes.tolist(),
        "default_left": np.concatenate(
            [batch.default_left[t, level, position].astype(np.int64), np.zeros(total - inner, np.int64)]
        ).tolist(),
        "id": tree_id,
        "left_children": np.where(is_inner, 2 * all_ids + 1, -1).tolist(),
        "loss_changes": [0.0] * total,
        "parents": [ROOT_PARENT, *((all_ids[1:] - 1) // 2).tolist()],
        "right_children": np.where(is_inner, 2 * all_ids + 2, -1).tolist(),
        "split_conditions": _floats(values),
        "split_indices": np.concatenate([column, np.zeros(total - inner, np.int64)]).tolist(),
        "split_type": np.concatenate([text.astype(np.int64), np.zeros(total - inner, np.int64)]).tolist(),
        "sum_hessian": _floats(cover),
        "tree_param": {
            "num_deleted": "0",
            "num_feature": str(len(features.columns)),
            "num_nodes": str(total),
            "size_leaf_vector": "1",
        },
    }


def _categories(features: Features) -> dict | None:
    """The category list of each text column, in XGBoost's layout (UTF-8 bytes, a sorted index)."""
    if not any(c.kind == "categorical" for c in features.columns):
        return None
    enc, segments, sorted_idx = [], [0], []
    for column in features.columns:
        if column.kind != "categorical":
            enc.append({"offsets": [], "values": []})
            segments.append(segments[-1])
            continue
        encoded = [level.encode("utf-8") for level in column.recorded_levels]
        offsets = np.concatenate([[0], np.cumsum([len(b) for b in encoded])]).astype(np.int64)
        enc.append({"offsets": offsets.tolist(), "values": list(b"".join(encoded))})
        segments.append(segments[-1] + len(encoded))
        sorted_idx.extend(sorted(range(len(encoded)), key=encoded.__getitem__))
    return {"enc": enc, "feature_segments": segments, "sorted_idx": sorted_idx}


def _objective_json(objective: Objective) -> dict:
    if objective.name == MULTICLASS:
        return {"name": MULTICLASS, "softmax_multiclass_param": {"num_class": str(objective.classes)}}
    return {"name": objective.name, "reg_loss_param": {"scale_pos_weight": "1"}}


def base_score_of(objective: Objective, margin: np.ndarray) -> np.ndarray:
    """The base_score XGBoost records for a starting margin (a probability for the logistic loss)."""
    if objective.name == BINARY:
        return np.array([1.0 / (1.0 + math.exp(-float(margin[0])))], dtype=np.float32)
    return np.asarray(margin, dtype=np.float32)


def margin_of_base_score(objective: Objective, base_score: np.ndarray) -> np.ndarray:
    """The margin XGBoost starts from for a recorded base_score."""
    score = np.asarray(base_score, dtype=np.float64)
    if objective.name == BINARY:
        return np.log(score / (1.0 - score))
    return score


def _score_text(values: np.ndarray) -> str:
    return "[" + ",".join(f"{float(v):.9E}" for v in np.asarray(values, dtype=np.float32)) + "]"


def _version() -> list[int]:
    parts = [int("".join(ch for ch in p if ch.isdigit()) or 0) for p in xgb.__version__.split(".")[:3]]
    return (parts + [0, 0, 0])[:3]


def model_json(
    features: Features,
    objective: Objective,
    base_score: np.ndarray,
    trees: list[Tree],
    base: dict | None = None,
) -> bytes:
    """The whole model: a base model's trees first (kept as they are), then the released trees."""
    new = [tree_json(tree, features, i) for i, tree in enumerate(trees)]
    info = [tree.group for tree in trees]
    per_round = objective.trees_per_round
    if base is None:
        learner = {
            "attributes": {},
            "feature_names": features.names,
            "feature_types": ["c" if c.kind == "categorical" else "float" for c in features.columns],
            "learner_model_param": {
                "base_score": _score_text(base_score),
                "boost_from_average": "0",
                "num_class": str(objective.classes if objective.name == MULTICLASS else 0),
                "num_feature": str(len(features.columns)),
                "num_target": "1",
            },
            "objective": _objective_json(objective),
        }
        old_trees, old_info, indptr = [], [], [0]
    else:
        learner = {k: v for k, v in base["learner"].items() if k != "gradient_booster"}
        learner["feature_names"] = features.names
        learner["feature_types"] = ["c" if c.kind == "categorical" else "float" for c in features.columns]
        booster = base["learner"]["gradient_booster"]["model"]
        old_trees, old_info = booster["trees"], booster["tree_info"]
        indptr = list(booster.get("iteration_indptr") or range(0, len(old_trees) + 1, per_round))
    for i, tree in enumerate(new):
        tree["id"] = len(old_trees) + i
    rounds = len(new) // per_round
    indptr = indptr + [indptr[-1] + per_round * (r + 1) for r in range(rounds)]
    model = {
        "gbtree_model_param": {"num_parallel_tree": "1", "num_trees": str(len(old_trees) + len(new))},
        "iteration_indptr": indptr,
        "tree_info": list(old_info) + info,
        "trees": list(old_trees) + new,
    }
    cats = _categories(features)
    if cats is not None:
        model = {"cats": cats, **model}
    learner["gradient_booster"] = {"model": model, "name": "gbtree"}
    return json.dumps({"learner": learner, "version": _version()}, separators=(",", ":")).encode()


def load(model: bytes | bytearray) -> xgb.Booster:
    booster = xgb.Booster()
    booster.load_model(bytearray(model))
    return booster


def parse_base(model: bytes | bytearray, features: Features, objective: Objective) -> dict:
    """A base model's JSON, checked to be one the released trees can be appended to."""
    try:
        data = json.loads(load(model).save_raw("json"))
    except (xgb.core.XGBoostError, ValueError) as exc:
        raise Refusal("invalid_model", "the base model is not an XGBoost model") from exc
    learner = data["learner"]
    booster = learner["gradient_booster"]
    if booster.get("name") != "gbtree" or booster["model"]["gbtree_model_param"].get(
        "num_parallel_tree"
    ) not in (
        "1",
        None,
    ):
        raise Refusal("unsupported_model", "a base model must be a gbtree booster with one tree per round")
    if learner["objective"]["name"] != objective.name:
        raise Refusal(
            "unsupported_model",
            f"the base model's objective {learner['objective']['name']} is not {objective.name}",
        )
    classes = int(learner["learner_model_param"].get("num_class", "0") or 0)
    if objective.name == MULTICLASS and classes != objective.classes:
        raise Refusal("unsupported_model", f"the base model has {classes} classes, not {objective.classes}")
    names = learner.get("feature_names") or []
    if names and names != features.names:
        raise Refusal("unsupported_model", "the base model's features are not the training columns in order")
    if int(learner["learner_model_param"]["num_feature"]) != len(features.columns):
        raise Refusal("unsupported_model", "the base model has another number of features")
    check_leaves(data, LEAF_LIMIT)
    recorded = base_categories(model)
    for column in features.columns:
        known = recorded.get(column.name)
        if known and list(column.levels[: len(known)]) != known:
            raise Refusal(
                "unsupported_model", f"column {column.name!r}: the levels must start with the base model's"
            )
    return data


def base_read_by(model: bytes | bytearray, features: Features, objective: Objective) -> bytes:
    """A base model recording the training's category lists (`Features.led_by`: its own first), so
    that it reads a level it never saw as the finished model will, never refusing the rows."""
    return model_json(features, objective, np.zeros(1), [], parse_base(model, features, objective))


def base_categories(model: bytes | bytearray) -> dict[str, list[str]]:
    """The level list a model records for each of its text columns (its codes' meaning)."""
    booster = load(model)
    try:
        recorded = booster.get_categories(export_to_arrow=True).to_arrow()
    except (xgb.core.XGBoostError, ValueError, TypeError):
        return {}
    return {
        str(name): [str(v) for v in array.to_pylist()] for name, array in recorded or [] if array is not None
    }


def predict_margins(model: bytes | bytearray, features: Features, table) -> np.ndarray:
    """A model's output margins on rows (an Arrow table), shape (rows, trees per round)."""
    booster = load(model)
    matrix = xgb.DMatrix(xgboost_input(features, table), enable_categorical=True)
    margins = booster.predict(matrix, output_margin=True)
    return np.asarray(margins, dtype=np.float64).reshape(table.num_rows, -1)
