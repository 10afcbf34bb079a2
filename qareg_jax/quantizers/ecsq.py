"""ECSQ: entropy-constrained scalar quantization (Chou-Lookabaugh-Gray) from k-means."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import check_k, check_max_iter, few_distinct, host_float, index_dtype
from .kmeans_core import KMEANS_MAX_ITER, kmeans_sorted
from .prefix import PrefixSums


def _envelope(c: np.ndarray, cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lower envelope of the parabolas (x - c_j)**2 + cost_j, c ascending.

    Equal curvature makes each pair cross once, at
    t_ij = (c_i + c_j)/2 + (cost_j - cost_i) / (2 (c_j - c_i)); a convex-hull stack
    keeps the levels that are optimal somewhere. Returns (their indices into c,
    the breakpoints between consecutive kept levels), so assignment is a searchsorted.
    """
    hull: list[int] = []
    breaks: list[float] = []
    for j in range(c.size):
        while hull:
            i = hull[-1]
            if c[j] <= c[i]:  # equal centres (rounding): only the cheaper one can win
                if cost[j] >= cost[i]:
                    break
                hull.pop()
                if breaks:
                    breaks.pop()
                continue
            t = 0.5 * (c[i] + c[j]) + (cost[j] - cost[i]) / (2.0 * (c[j] - c[i]))
            if breaks and t <= breaks[-1]:  # level i is never the minimum
                hull.pop()
                breaks.pop()
                continue
            breaks.append(t)
            hull.append(j)
            break
        else:
            hull.append(j)
    return np.asarray(hull), np.asarray(breaks, np.float64)


def ecsq(
    w: Any, k: int, *, mu: float | None = None, max_iter: int = 100
) -> tuple[np.ndarray, np.ndarray]:
    """Entropy-constrained scalar quantization (Chou-Lookabaugh-Gray iterations).

    Starting from the :func:`kmeans_1d` partition, alternate: assign each weight to
    argmin_j (w - c_j)**2 - mu * log p_j; set c_j to the mean of its weights and
    p_j to their fraction. Each step lowers distortion + mu * entropy (nats). On
    sorted data the assignment regions are intervals whose bounds come in closed
    form (:func:`_envelope`), so an iteration is O(K log N). Levels that lose all
    their weights stay in the codebook at their last position, unused.

    ``mu`` is in units of w**2; ``None`` uses the k-means mean squared error, a
    moderate rate/distortion trade-off independent of the scale of ``w``.
    ``mu=0`` returns the k-means solution. <= k distinct values: exact levels.
    """
    k = check_k(k)
    if mu is not None and not (np.isfinite(mu) and mu >= 0):
        raise ValueError(f"mu must be a finite number >= 0, got {mu!r}")
    check_max_iter(max_iter)
    arr = host_float(w)
    few = few_distinct(arr, k)
    if few is not None:
        return few
    p = PrefixSums.build(arr, None)
    edges, _ = kmeans_sorted(p, k, KMEANS_MAX_ITER, 0.0, "auto", 0)
    mu = float(p.sse(edges).sum()) / p.n if mu is None else float(mu)
    c = p.means(edges)  # (k,) centred coordinates, ascending
    prob = np.diff(edges) / p.n
    for _ in range(max_iter):
        live = np.flatnonzero(prob > 0)
        kept, breaks = _envelope(c[live], -mu * np.log(prob[live]))
        wsum, s1, _ = p.sums(p.edges_for(breaks))
        new_prob = np.zeros(k)
        new_prob[live[kept]] = wsum / p.n
        filled = wsum > 0
        c[live[kept][filled]] = s1[filled] / wsum[filled]  # emptied levels stay put
        # Per-level counts fix the (contiguous, ordered) partition: equal -> fixed point.
        converged = np.array_equal(new_prob, prob)
        prob = new_prob
        if converged:
            break
    live = np.flatnonzero(prob > 0)
    kept, breaks = _envelope(c[live], -mu * np.log(prob[live]))
    levels = c + p.shift
    order = np.argsort(levels, kind="stable")  # emptied levels may be out of order
    rank = np.empty(k, np.int64)
    rank[order] = np.arange(k)
    # The thresholds of p.edges_for, so the final regions match the partition.
    region = np.searchsorted(p.cut(breaks), arr.ravel(), side="left")
    assignments = rank[live[kept]][region].astype(index_dtype(k)).reshape(arr.shape)
    return levels[order].astype(np.float32), assignments
