"""Differential privacy measurements, all OpenDP's (no hand-written noise), accounted in zCDP.

The privacy unit is one row added or removed. A release is a vector of sums in which one row moves the
entries by at most `l2` in Euclidean norm (its clipped contributions); the Gaussian mechanism with
scale `l2 / sqrt(2 rho)` then costs exactly `rho`, which OpenDP checks (`map`). zCDP costs add up over
releases, and rho converts to (epsilon, delta)-DP by Canonne, Kamath and Steinke's conversion (`epsilon`, the
DP trainer's, so that a cost preview and a result show the same epsilon).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from opendp import domains, measurements, measures, metrics
from opendp.mod import Measurement, enable_features

from remote_magic.families.dpboost.accounting import epsilon as epsilon  # the server's too

# opendp.prelude would also import OpenDP's scikit-learn extras, which the API process must not load.
enable_features("contrib")

_SCALE_STEP = 1.0 + 1e-9


def sigma(l2: float, rho: float) -> float:
    """The noise standard deviation that makes a release with L2 sensitivity `l2` cost `rho`."""
    return l2 / math.sqrt(2 * rho)


# A float release's noise is a multiple of 2^k (OpenDP's discretization), 2^-40 of its sensitivity:
# far below any value's meaning, and about four times faster to draw than the exact default (2^-1074).
_GRANULARITY_BITS = 40


def _granularity(l2: float) -> int:
    return math.floor(math.log2(l2)) - _GRANULARITY_BITS


@functools.lru_cache(maxsize=256)
def _measurement(kind: type, l2: float, rho: float, size: int | None = None):
    """OpenDP's Gaussian mechanism over vectors (of `size` entries: floats need it, integers take any
    length), at the smallest scale (from the formula, nudged up) whose privacy map meets `rho`, which
    covers the discretization too; kept, as a DP training asks for the same ones hundreds of times."""
    if kind is float:
        space = domains.vector_domain(domains.atom_domain(T=float, nan=False), size=size)
        k = _granularity(l2)
    else:
        space, k = domains.vector_domain(domains.atom_domain(T=kind)), None
    metric = metrics.l2_distance(T=float)

    def make(scale: float) -> Measurement:
        return measurements.make_gaussian(space, metric, scale=scale, k=k)

    return _smallest(make, float(l2), rho, sigma(l2, rho))


def _smallest(make: Callable[[float], Measurement], d_in: float, rho: float, scale: float):
    """`make(scale)` and its scale, from `scale` (the closed form of its privacy map) nudged up until
    OpenDP's own map of `d_in` meets `rho`: OpenDP checks every cost; the formula saves only a search."""
    for _ in range(50):
        measurement = make(scale)
        if measurement.map(d_in) <= rho:
            return measurement, scale
        scale *= _SCALE_STEP
    raise ValueError("OpenDP could not meet the budget of one release")


# A long release (a DP training's sketch: thousands of counts) is drawn in up to `_PIECES` pieces of at
# least `_PIECE_MIN` entries, in threads (OpenDP's sampler, about 20 us an entry, runs without the
# GIL), so the cores share it. Each entry's noise is independent of the others' and every piece has
# the whole release's scale and granularity, so the pieces together are the very same release, at the
# same rho.
_PIECE_MIN = 1024
_PIECES = 4


@functools.cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=_PIECES, thread_name_prefix="dp-noise")


@functools.lru_cache(maxsize=256)
def _piece(l2: float, rho: float, scale: float, size: int):
    """The whole release's mechanism (its `scale` and granularity) over `size` of its entries; its
    privacy map must meet `rho` too (a shorter vector's discretization adds less)."""
    space = domains.vector_domain(domains.atom_domain(T=float, nan=False), size=size)
    metric = metrics.l2_distance(T=float)
    measurement = measurements.make_gaussian(space, metric, scale=scale, k=_granularity(l2))
    if measurement.map(float(l2)) > rho:
        raise ValueError("a piece of a release must not cost more than the release")
    return measurement


def gaussian(values: list[float], l2: float, rho: float) -> tuple[list[float], float]:
    """Noisy sums at a cost of `rho`, and the noise's standard deviation."""
    measurement, scale = _measurement(float, l2, rho, len(values))
    array = _floats(values)
    pieces = min(_PIECES, len(array) // _PIECE_MIN)
    if pieces <= 1:
        return [float(v) for v in measurement(array)], scale

    def draw(part: np.ndarray) -> list[float]:
        return [float(v) for v in _piece(l2, rho, scale, len(part))(part)]

    return [v for drawn in _pool().map(draw, np.array_split(array, pieces)) for v in drawn], scale


_BOUND_UP = 1.0 + 1e-9


def gaussians(releases: list[tuple[list[float], float, float]]) -> list[list[float]]:
    """Several Gaussian releases `(values, l2, rho)` drawn by one OpenDP measurement (a call costs about
    0.2 ms besides its 15-25 us a value: a batch's two leaf releases, 0.17 ms less). Each release's
    values are divided by its own scale `sigma(l2, rho)` (public), so one row moves the joint vector by
    at most sqrt(sum 2 rho) in L2 norm; OpenDP's Gaussian at the joint rho, the sum of theirs, has
    scale 1 (just above: its map checked as every release's is), and each part multiplied back has the
    noise its release alone would have: sd `sigma(l2, rho)`, independent of the others', at the same
    total cost."""
    if len(releases) == 1:
        values, l2, rho = releases[0]
        return [gaussian(values, l2, rho)[0]]
    scales = [sigma(l2, rho) for _, l2, rho in releases]
    parts = [_floats(values) / scale for (values, _, _), scale in zip(releases, scales, strict=True)]
    rho = math.fsum(rho for _, _, rho in releases)
    # sqrt(2 rho) up to the rounding of each l2 / scale: rounded up, never down, by far more than that.
    bound = math.sqrt(math.fsum((l2 / scale) ** 2 for (_, l2, _), scale in zip(releases, scales))) * _BOUND_UP
    noisy = np.asarray(gaussian(list(np.concatenate(parts)), bound, rho)[0])
    ends = np.cumsum([len(part) for part in parts])
    return [
        [float(v) for v in drawn * scale]
        for drawn, scale in zip(np.split(noisy, ends[:-1]), scales, strict=True)
    ]


def gaussian_counts(counts: list[int], l2: float, rho: float) -> tuple[list[int], float]:
    """Noisy counts (the discrete Gaussian) at a cost of `rho`, and the noise's standard deviation."""
    measurement, scale = _measurement(int, l2, rho)
    return [int(n) for n in measurement([int(n) for n in counts])], scale


def top_k(scores: list[float], k: int, linf: float, rho: float) -> list[int]:
    """The indices of (about) the k highest scores, chosen by OpenDP's noisy top-k at a cost of `rho`."""
    measurement = _top_k(min(k, len(scores)), float(linf), float(rho))
    return [int(i) for i in measurement(_floats(scores))]


def _floats(values: list[float]) -> np.ndarray:
    """Values as OpenDP reads a vector of floats fastest (a NumPy array: one copy, not one check each)."""
    return np.asarray(values, dtype=np.float64)


@functools.lru_cache(maxsize=256)
def _top_k(k: int, linf: float, rho: float):
    """OpenDP's noisy top-k at the smallest scale that meets `rho`, kept for the next call with the same
    numbers (a DP training selects splits hundreds of times). Its privacy map for scores that may move
    either way by `linf` is rho = k linf^2 / (2 scale^2), so the scale starts there (`_smallest`), not
    at OpenDP's binary search, which built 40 to 230 ms of measurements on the path of the first
    selection of every job with a new rho (another depth, round count or budget)."""
    domain = domains.vector_domain(domains.atom_domain(T=float, nan=False))
    metric = metrics.linf_distance(T=float, monotonic=False)

    def make(scale: float) -> Measurement:
        return measurements.make_noisy_top_k(
            domain, metric, measures.zero_concentrated_divergence(), k=k, scale=scale
        )

    return _smallest(make, linf, rho, sigma(linf, rho / k))[0]
