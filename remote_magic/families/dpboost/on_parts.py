"""The DP family's steps that run where a partition's rows are, and the merge of what they return.

Each step returns a small dict (a cluster gathers nothing else): the rows' schema (public), a sketch's
exact counts, a request's exact sums; `set_up` keeps the partition's `Partition` (its binned training
rows and margins) in `Part.state` for the calls that follow, `finish` drops it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import xgboost as xgb

from ..base import Part
from .booster import load
from .candidates import SketchCounts, SketchRequest, sketch_counts
from .features import Features, xgboost_input
from .partition import Partition, Request, Update
from .prior import PriorRequest, prior_sums
from .settings import Settings

STATE = "dpboost"  # a partition's state: its `Partition` (binned training rows, margins)


def schema(part: Part) -> dict:
    return {"schema": part.train.x.schema}


def sketch(part: Part, request: SketchRequest) -> dict:
    counts = sketch_counts(request, rows(part))
    return {"bins": counts.bins, "levels": {name: dict(found) for name, found in counts.levels.items()}}


def prior(part: Part, request: PriorRequest, settings: Settings) -> dict:
    """The training rows' prior sums at the public start (`prior.py`)."""
    objective = settings.objective_()
    return {"sums": prior_sums(request, rows(part), part.y("train"), objective, settings.base_margin)}


def counts_of(found: dict) -> SketchCounts:
    return SketchCounts(found["bins"], {name: Counter(levels) for name, levels in found["levels"].items()})


def rows(part: Part, split: str = "train") -> Iterator[pa.RecordBatch]:
    """A partition's rows of one split with no rare-level merge: the candidates are public levels, and
    the merge (decided by exact counts) would let one row change other rows' values."""
    for each in (part.train, part.eval):
        each.x.rare = {}
    return iter(part.split(split).x)


def set_up(part: Part, features: Features, settings: Settings, base: bytes | None, threads: int = 1) -> dict:
    part.state[STATE] = binned(part, "train", features, settings, base, threads)
    return {}


def binned(
    part: Part, split: str, features: Features, settings: Settings, base: bytes | None, threads: int = 1
) -> Partition:
    """A split's rows binned, with their margins at the model `base` (None: the public start): the
    training rows the trainer sums (in `threads` threads), or the evaluation rows a federated session
    scores at the end."""
    objective = settings.objective_()
    margins = None
    if base is not None:
        booster = load(base)
        chunks = [
            booster.predict(
                xgb.DMatrix(xgboost_input(features, pa.Table.from_batches([b])), enable_categorical=True),
                output_margin=True,
            ).reshape(b.num_rows, -1)
            for b in rows(part, split)
        ]
        margins = np.concatenate(chunks) if chunks else np.zeros((0, objective.trees_per_round))
    return Partition(
        features, rows(part, split), part.y(split), objective, margins, settings.base_margin, threads=threads
    )


def sums(part: Part, request: Request) -> dict:
    return {"sums": part.state[STATE].sums(request)}


def sum_of(found: list[dict]) -> np.ndarray:
    return np.sum([f["sums"] for f in found], axis=0)


def apply_update(part: Part, update: Update) -> dict:
    part.state[STATE].apply(update)
    return {}


def finish(part: Part) -> dict:
    part.state.pop(STATE, None)
    return {}
