"""Partitions held in this process: the local worker's admitted rows, the dry run's mock rows, tests.

The seam itself (`Part`, `Partitions`, `Run`) is in base.py; the cluster's implementation is the
server's cluster/partitions.py, which sends each call to the machine that holds the partition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .base import Labels, Part, Split


class InProcess:
    """Partitions held in this process: `map` calls the function on each in turn."""

    dask = None

    def __init__(self, parts: Sequence[Part]):
        self.parts = list(parts)

    def __len__(self) -> int:
        return len(self.parts)

    def map(self, fn: Callable[..., Any], *args: Any) -> list[Any]:
        return [fn(part, *args) for part in self.parts]


def one_machine(train: Split, eval: Split, labels: Labels) -> InProcess:
    """Rows already split and labelled, as one partition (the dry run, tests)."""
    numbers = [np.arange(len(train.y), dtype=np.uint32), np.arange(len(eval.y), dtype=np.uint32)]
    return InProcess([Part(train, eval, numbers[0], numbers[1], labels=labels)])
