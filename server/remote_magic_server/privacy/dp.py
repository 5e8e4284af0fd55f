"""Differential privacy for describe counts, with OpenDP's vetted mechanisms (no hand-written noise).

One release is one vector of counts; a row changes at most `sensitivity` of them by one each, so the
L1 distance between neighbouring datasets is `sensitivity`, and the discrete Laplace scale is found by
OpenDP so that the release costs exactly `epsilon`.
"""

from __future__ import annotations

from collections.abc import Callable

import opendp.prelude as dp

dp.enable_features("contrib")


def laplace_counts(sensitivity: int, epsilon: float) -> Callable[[list[int]], list[int]]:
    """A mechanism that adds discrete Laplace noise to a vector of counts at a cost of `epsilon`."""
    space = dp.vector_domain(dp.atom_domain(T=int)), dp.l1_distance(T=int)
    measurement = dp.binary_search_chain(
        lambda scale: dp.m.make_laplace(*space, scale=scale), d_in=sensitivity, d_out=epsilon
    )
    if measurement.map(sensitivity) > epsilon:
        raise ValueError("OpenDP could not meet the epsilon of one release")
    return lambda counts: [int(n) for n in measurement(list(counts))]
