"""What a DP training job costs in zCDP, and the noise scales a training budget buys.

Privacy unit: one row added to or removed from the training rows (the project's unit, as in the server's
`privacy/dp.py`). Every noisy number is a Gaussian mechanism: a vector release whose entries one row moves
by at most `D` in L2 norm, with noise of standard deviation `s` per entry, is `D^2 / (2 s^2)`-zCDP
(Bun and Steinke 2016, Prop. 1.6), and zCDP costs add up under adaptive composition (their Lemma 2.3).

**Public before any row is read.** The feature columns and their split candidates (`Features`: owner
declared bounds and levels, or the sketch below), the objective, the number of classes, the owner's label
range for a regression, the trainer's settings and its structure seed, and a base model if one is
continued (fixed before the rows are touched; its margins are a function of each row's own features). The
structure of every tree (`structure.draw`: columns, thresholds, level subsets, missing directions) comes
from the seed and the public candidates only, so it costs nothing and may be published.

**1. The sketch (optional, `candidates`).** For the numeric columns whose candidates come from the data,
counts of rows per bin of a public grid (a missing value has a bin of its own); for the text columns whose
levels come from the data, counts of rows per level (a missing value counts nowhere). One row is in one bin
of each such column, so the whole vector of counts moves by at most `D_s = sqrt(c)` for `c` sketched
columns; one Gaussian at scale `s_s` costs `rho_s = c / (2 s_s^2)`. Only levels whose noisy count exceeds a
threshold `tau` are kept (and only their names are used). A level only the added row holds has count 1 in
one world and no entry in the other: it is kept with probability `P(1 + N(0, s_s^2) > tau)`, so the level
selection is `delta_s`-approximately `rho_s`-zCDP with `delta_s = t * Phibar((tau - 1) / s_s)` for `t`
selected text columns (we pick `tau` from `delta_s`). Candidates are quantiles of the noisy counts
(post-processing).

**2. The intercept (optional; not when continuing a base model).** Label sums (`Objective.label_sums`):
binary `(n, sum y)`, one row moves them by `(1, y)`, `D_0 = sqrt(2)`; multiclass, the count of each class,
`D_0 = 1`; regression `(r n, sum (y - mid))` with `r` the label range's half-width and labels clipped to it,
`D_0 = sqrt(2) r`. One Gaussian at scale `s_0`: `rho_0 = D_0^2 / (2 s_0^2)`.

**3. The leaves.** Round `t` (one tree, or one tree per class for a multiclass model) releases, for every leaf
`j` of its trees, the sums `G_j = sum g_i` and `H_j = sum h_i` over the rows in the leaf, of gradients and
hessians computed from the margins before the round's batch (a function of the row's own features and label
and of earlier releases only). The structure is public (drawn from the seed, or released by the selections of
part 4) and every tree is complete, so a row lies in exactly one leaf of each tree. Its contributions are
clipped (`Objective`): over the trees of one round its gradients have L2 norm at most `g` and its hessians at
most `h` (binary: `g = 0.85`, each row's `p - y` clipped to +-0.85 (`BINARY_GRADIENT_CLIP`), `h = 1/4`;
multiclass: `g = sqrt(2)`, `h = 1/2`; regression: `g` = an eighth of the label range's width unless set
otherwise, `h = 1`). So the round's vector of leaf gradient sums moves by at most `g` in L2 norm, its vector
of hessian sums by at most `h`; with Gaussian noise of scales `s_g` and `s_h` the round costs
`g^2 / (2 s_g^2) + h^2 / (2 s_h^2)`. A batch of `B` rounds fitted on the same gradients is released as one
vector (`D = sqrt(B) g`), which costs exactly the same as its `B` rounds one at a time; the batch size and
the depth do not enter the cost. Leaf values `-(G + noise) / (max(H + noise, 0) + lambda + k s_g / u)`
(`k` = `Settings.noise_lambda`; `s_g` and `u`, `Settings.leaf_unit`, are public), clipped and scaled by
the learning rate, and the model built from them are post-processing.

**4. Split selection (optional, `selection.py`).** Instead of a random split, each level of each tree chooses
its split by the exponential mechanism, as report-noisy-max with Gumbel noise of scale `b`, on scores that one
row moves by at most `D_x = g_t` (`g_t` bounds one row's gradient in one tree: `g` = 0.85 for the logistic
loss (the clip), 1 for the softmax loss, `g` for the squared error). The candidates are public, and so is the
prior offset added to each score (`b ln(1/k)` for a column of `k` candidates, plus `2 b ln(6 + c)` for a
column that `c` earlier levels of the training chose: a function of public candidates and of splits already
released, fixed before the selection reads a row, so it moves no score by a row); by
OpenDP's map for noisy top-1 (non-monotonic scores) one selection costs `D_x^2 / (2 b^2)` (the exponential
mechanism at `eps = 2 D_x / b` is `eps^2 / 8`-zCDP). With a split per node, a level first chooses its column
(one selection), then each node its split on it: the nodes of a level hold disjoint rows and a row's node
depends only on its own features and the public or released structure above, so the nodes' selections together
cost one selection (parallel composition). A round has `n_x = depth * classes` selections (one per level of
each tree), or `2 * depth * classes` with a split per node. Level `l`'s selections each get the share
`w_l = depth q^l / sum_k q^k` of a mean selection's rho (Gumbel scale `b / sqrt(w_l)`; `q` =
`Settings.level_growth`, public, 1 or, where the released count says the sample is large, 2): the
shares' mean is 1, so a round's selections cost `n_x D_x^2 / (2 b^2)` whatever `q`. Where the same
count is larger still (`Settings.node_share`, `NODE_SAMPLE`), the last level's selection rho is split:
`1 - c` for the level's split, `c` for each node's own split on its column (the nodes' disjoint rows:
together one selection at `c`), so the level costs the same. Where the trees
recentre (`Settings.recentres`: the same count), each tree's nodes at depth 3 release their `(G, H)` sums as
the leaves do (a row is in one node: the same bounds `g`, `h`) with a share `c` of the round's leaf rho and
the leaves with `1 - c` (`schedule.leaf_releases`), so a round's leaf term below is unchanged.

**Total.** For `R` rounds,
`rho = rho_s + rho_0 + R (g^2 / (2 s_g^2) + h^2 / (2 s_h^2) + n_x D_x^2 / (2 b^2))`
(the last term only with split selection, `n_x` per round as above), and with a
text-level selection the job is `delta_s`-approximately `rho`-zCDP, i.e.
`(epsilon(rho, delta), delta + delta_s)`-DP for any `delta > 0` (`epsilon`: Canonne, Kamath and Steinke's
conversion). The evaluation's charge adds
to this one (a row is in the training or the evaluation rows, so the sum is an upper bound).

**Rounds from the released count.** Settings that leave the rounds to the data (`rounds_from_count`) take
`R` from the count that part 2's release gives (`Objective.count`, `Settings.for_count`): post-processing
of a release already paid for. Parts 3 and 4 are then spread over that `R` as below, so the total is the
same `rho` for any `R`.

`noise_scales` inverts this. A training budget `rho_train` (intercept, selections and leaves; the sketch is
charged when it runs) gives `rho_0 = intercept_share * rho_train`; the rest is spread evenly over the
rounds, `rho_r = (rho_train - rho_0) / R`, a share `split_share` of it to the round's `n_x` selections and
of the rest a share `grad_share` to the gradients:

    b   = D_x / sqrt(2 split_share rho_r / n_x)     (level l's: b / sqrt(w_l))
    s_g = g / sqrt(2 grad_share (1 - split_share) rho_r)
    s_h = h / sqrt(2 (1 - grad_share) (1 - split_share) rho_r)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

# Halvings of a bisection: far past double precision for any interval it starts from.
_BISECTIONS = 200


def gaussian_rho(l2: float, sigma: float) -> float:
    """The zCDP cost of one Gaussian release with L2 sensitivity `l2` at noise scale `sigma`."""
    return l2 * l2 / (2.0 * sigma * sigma)


def gaussian_sigma(l2: float, rho: float) -> float:
    """The noise scale that makes a release with L2 sensitivity `l2` cost `rho`."""
    if rho <= 0:
        raise ValueError("a release needs a positive rho")
    return l2 / math.sqrt(2.0 * rho)


@dataclass(frozen=True)
class Scales:
    """The noise of a training job: per leaf sum (gradients, hessians) and for the intercept."""

    sigma_g: float
    sigma_h: float
    sigma_intercept: float | None  # None: no intercept is released (a base model gives the margins)
    sigma_select: float | None = None  # the Gumbel scale of a split selection; None: random splits


def total_rho(
    rounds: int,
    g_bound: float,
    h_bound: float,
    sigma_g: float,
    sigma_h: float,
    intercept_bound: float = 0.0,
    sigma_intercept: float | None = None,
    sketch_rho: float = 0.0,
    select_bound: float = 0.0,
    sigma_select: float | None = None,
    selections_per_round: int = 0,
) -> float:
    """The zCDP cost of a whole training job (module docstring, "Total")."""
    per_round = gaussian_rho(g_bound, sigma_g) + gaussian_rho(h_bound, sigma_h)
    if sigma_select is not None:
        per_round += selections_per_round * gaussian_rho(select_bound, sigma_select)
    intercept = gaussian_rho(intercept_bound, sigma_intercept) if sigma_intercept is not None else 0.0
    return sketch_rho + intercept + rounds * per_round


def noise_scales(
    rho_train: float,
    rounds: int,
    g_bound: float,
    h_bound: float,
    grad_share: float,
    intercept_share: float = 0.0,
    intercept_bound: float = 0.0,
    split_share: float = 0.0,
    select_bound: float = 0.0,
    selections_per_round: int = 0,
) -> Scales:
    """The noise scales that spend exactly `rho_train` on the intercept (if any), the split selections
    (if any) and the leaves."""
    if not (0.0 < grad_share < 1.0) or not (0.0 <= intercept_share < 1.0) or not (0.0 <= split_share < 1.0):
        raise ValueError("grad_share must be in (0, 1), intercept_share and split_share in [0, 1)")
    if rounds < 1 or rho_train <= 0:
        raise ValueError("training needs at least one round and a positive rho")
    rho_intercept = intercept_share * rho_train
    per_round = (rho_train - rho_intercept) / rounds
    leaves = (1.0 - split_share) * per_round
    selecting = split_share > 0 and selections_per_round > 0
    return Scales(
        sigma_g=gaussian_sigma(g_bound, grad_share * leaves),
        sigma_h=gaussian_sigma(h_bound, (1.0 - grad_share) * leaves),
        sigma_intercept=gaussian_sigma(intercept_bound, rho_intercept) if intercept_share > 0 else None,
        sigma_select=gaussian_sigma(select_bound, split_share * per_round / selections_per_round)
        if selecting
        else None,
    )


def selection_threshold(sigma: float, delta: float, columns: int) -> float:
    """The noisy count a data-chosen text level must exceed so that `columns` selections together add at
    most `delta` (module docstring, "The sketch")."""
    if columns == 0:
        return math.inf
    return 1.0 - sigma * NormalDist().inv_cdf(delta / columns)


def selection_delta(sigma: float, threshold: float, columns: int) -> float:
    """The delta a level selection at `threshold` adds (the inverse of `selection_threshold`)."""
    return columns * NormalDist().cdf((1.0 - threshold) / sigma) if columns else 0.0


def epsilon(rho: float, delta: float) -> float:
    """zCDP as (epsilon, delta)-DP: Canonne, Kamath and Steinke's conversion (2020, Corollary 13; OpenDP's
    `make_zCDP_to_approxDP`, which tests/test_dpboost.py checks it against), the infimum over alpha > 1 of
    `alpha rho + (ln(1/delta) + (alpha - 1) ln(1 - 1/alpha) - ln alpha) / (alpha - 1)`. Any alpha gives a
    valid bound; the best solves `rho (alpha - 1)^2 = ln(1/delta) - ln alpha` (the derivative's zero),
    found by bisection. Tighter than Bun and Steinke's `rho + 2 sqrt(rho ln(1/delta))` (3.57 against 4.00
    at rho 0.254, delta 1e-6). Plain Python: the client shows it without OpenDP."""
    log_term = math.log(1.0 / delta)
    if rho <= 0 or log_term <= 0:
        return 0.0
    low, high = 1.0, 1.0 + math.sqrt(log_term / rho)  # the derivative is < 0 at low, >= 0 at high
    for _ in range(_BISECTIONS):
        alpha = 0.5 * (low + high)
        if rho * (alpha - 1.0) ** 2 < log_term - math.log(alpha):
            low = alpha
        else:
            high = alpha
    alpha = high
    a1 = alpha - 1.0
    bound = alpha * rho + (log_term + a1 * math.log1p(-1.0 / alpha) - math.log(alpha)) / a1
    return max(0.0, bound)  # below 0 where delta alone covers so small a rho


def rho_for_epsilon(eps: float, delta: float) -> float:
    """The largest rho whose `epsilon(rho, delta)` is at most `eps` (the conversion's inverse, by
    bisection: epsilon grows with rho)."""
    low, high = 0.0, max(eps, 1.0)
    while epsilon(high, delta) <= eps:
        low, high = high, 2.0 * high
    for _ in range(_BISECTIONS):
        middle = 0.5 * (low + high)
        if epsilon(middle, delta) <= eps:
            low = middle
        else:
            high = middle
    return low
