"""Sorted 1-D data with blocked float64 prefix sums: the data structure of 1-D k-means.

A cluster of sorted 1-D data is an index range [s, e); its weight, mean and SSE
come from prefix sums in O(1) block look-ups, so a Lloyd iteration costs
O(K log N) after one O(N log N) sort.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .assignment import round_down_sum
from .common import PIECE

BLOCK = 64  # prefix sums are stored every BLOCK sorted elements


def _sorted_blocks(
    values: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
    """(x, xb, w, wb): sorted ``values`` and their ``weights`` in (n // BLOCK + 1, BLOCK)
    blocks ``xb`` / ``wb`` (padded with max(x) / +inf); ``x``, ``w`` are flat views."""
    values = values.ravel()
    n, nb = values.size, values.size // BLOCK
    xb = np.empty((nb + 1, BLOCK), values.dtype)
    x = xb.reshape(-1)[:n]
    wb = w = None
    if weights is None:
        x[...] = values
        x.sort()  # in the input dtype (float32: half the bytes)
    else:
        order = np.argsort(values, kind="stable")
        np.take(values, order, out=x)
        wb = np.full((nb + 1, BLOCK), np.inf)
        w = wb.reshape(-1)[:n]
        np.take(weights.ravel(), order, out=w)
    xb.reshape(-1)[n:] = x[-1]
    return x, xb, w, wb


def _median_shift(x: np.ndarray) -> float:
    """The median of sorted ``x``, or 0.0 when subtracting it would merge distinct values."""
    shift = float(x[x.size // 2])
    # Centring is monotone but can merge values far smaller than the shift;
    # then sum the raw values (distinct values must stay distinct).
    if not (x.dtype == np.float32 and _centring_exact(x)):
        centred = x.astype(np.float64) - shift
        if np.count_nonzero(np.diff(centred)) != np.count_nonzero(np.diff(x)):
            shift = 0.0
    return shift


def _centring_exact(x: np.ndarray) -> bool:
    """True when sorted float32 ``x`` minus any of its values is exact in float64: all
    are multiples of the float32 spacing at the smallest nonzero |x|, and the
    differences stay below 2**53 such steps.
    """
    zero = x.dtype.type(0)
    pos = np.searchsorted(x, zero, side="right")
    small = [float(x[pos])] if pos < x.size else []
    if pos > 0 and x[pos - 1] < 0:
        small.append(-float(x[pos - 1]))
    neg = np.searchsorted(x, zero, side="left")
    if neg > 0:
        small.append(-float(x[neg - 1]))
    if not small:  # all zero
        return True
    step = float(np.spacing(np.float32(min(abs(v) for v in small))))
    return 2.0 * max(abs(float(x[0])), abs(float(x[-1]))) / step < 2.0**53


def _block_prefix_sums(xb: np.ndarray, wb: np.ndarray | None, shift: float) -> np.ndarray:
    """(3, nb + 1) cumulative (weight, weight * d, weight * d**2) before each block,
    ``d = x - shift``, over the nb = ``len(xb) - 1`` full blocks."""
    nb = xb.shape[0] - 1
    sums = np.zeros((3, nb + 1))
    step = PIECE // BLOCK
    for s in range(0, nb, step):
        rows = slice(s + 1, min(s + step, nb) + 1)
        d = xb[s : min(s + step, nb)].astype(np.float64)
        d -= shift
        if wb is None:
            sums[1, rows] = d.sum(axis=1)
            d *= d
            sums[2, rows] = d.sum(axis=1)
        else:
            wts = wb[s : min(s + step, nb)]
            sums[0, rows] = wts.sum(axis=1)
            wd = wts * d
            sums[1, rows] = wd.sum(axis=1)
            wd *= d
            sums[2, rows] = wd.sum(axis=1)
    np.cumsum(sums, axis=1, out=sums)
    if wb is None:
        sums[0] = np.arange(nb + 1) * float(BLOCK)
    return sums


@dataclass(frozen=True)
class PrefixSums:
    """Sorted 1-D data with float64 prefix sums stored every ``BLOCK`` elements.

    Sums are of ``d = x - shift``, the values shifted by their median (unless that
    merges distinct values), so the per-segment SSE ``Q - S**2 / W`` suffers little
    cancellation; the prefix at any index is its block's stored prefix plus a direct
    sum over < ``BLOCK`` elements. No N-sized float64 array is built. Segments are
    index ranges [s, e); centroids and thresholds are shifted coordinates.
    """

    x: np.ndarray  # (n,) sorted, input dtype (float32 or float64): a view of xb
    xb: np.ndarray  # (n // BLOCK + 1, BLOCK) x in blocks, padded with its maximum
    shift: float
    w: np.ndarray | None  # (n,) float64 weights in sorted order (a view of wb); None: all 1
    wb: np.ndarray | None  # (n // BLOCK + 1, BLOCK) w in blocks, padded with +inf
    bw: np.ndarray  # (n // BLOCK + 1,) cumulative weight before each block
    b1: np.ndarray  # (n // BLOCK + 1,) cumulative weight * d before each block
    b2: np.ndarray  # (n // BLOCK + 1,) cumulative weight * d**2 before each block

    @classmethod
    def build(cls, values: np.ndarray, weights: np.ndarray | None) -> PrefixSums:
        """Sort ``values`` (any shape; with optional same-shape ``weights``) and sum."""
        x, xb, w, wb = _sorted_blocks(values, weights)
        shift = _median_shift(x)
        sums = _block_prefix_sums(xb, wb, shift)
        return cls(x, xb, shift, w, wb, sums[0], sums[1], sums[2])

    @property
    def n(self) -> int:
        return self.x.size

    @property
    def total(self) -> float:
        """Total weight."""
        return float(self.n) if self.w is None else float(self.cum(np.asarray(self.n))[0])

    def centred(self, i: Any) -> np.ndarray:
        """Values at indices ``i`` in shifted coordinates (float64)."""
        return self.x[i].astype(np.float64) - self.shift

    def cum(
        self, i: np.ndarray, squares: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Prefix (weight, weight * d, weight * d**2) sums of ``x[:i]``, integer ``i``;
        the last is None unless ``squares``."""
        i = np.asarray(i, np.int64)
        blk, rest = np.divmod(i, BLOCK)
        live = np.arange(BLOCK) < rest[..., None]
        d = self.xb[blk].astype(np.float64)
        d -= self.shift
        d *= live
        if self.wb is None:
            cw, wd = i.astype(np.float64), d
        else:
            wt = np.where(live, self.wb[blk], 0.0)
            cw, wd = self.bw[blk] + wt.sum(-1), wt * d
        c2 = self.b2[blk] + np.einsum("...j,...j->...", wd, d) if squares else None
        return cw, self.b1[blk] + wd.sum(-1), c2

    def rank(self, t: np.ndarray, side: str = "left") -> np.ndarray:
        """``np.searchsorted(cw, t, side)`` on the cumulative weights ``cw`` (n + 1,)."""
        t = np.asarray(t, np.float64)
        if self.wb is None:  # cw[i] = i
            r = np.ceil(t) if side == "left" else np.floor(t) + 1
            return np.clip(r, 0, self.n + 1).astype(np.int64)
        after = np.searchsorted(self.bw, t, side)  # block starts before t: the answer follows
        blk = np.maximum(after, 1) - 1
        cw = self.bw[blk][..., None] + np.cumsum(self.wb[blk], axis=-1)  # +inf past n
        before = cw < t[..., None] if side == "left" else cw <= t[..., None]
        return np.where(after == 0, 0, blk * BLOCK + 1 + np.count_nonzero(before, axis=-1))

    def sums(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-segment (weight, weighted sum, weighted sum of squares) of ``d``."""
        cw, c1, c2 = self.cum(edges)
        return np.diff(cw), np.diff(c1), np.diff(c2)

    def sse(self, edges: np.ndarray) -> np.ndarray:
        wsum, s1, s2 = self.sums(edges)
        with np.errstate(invalid="ignore", divide="ignore"):
            out = s2 - np.where(wsum > 0, s1 * s1 / wsum, 0.0)
        return np.maximum(out, 0.0)

    def means(self, edges: np.ndarray) -> np.ndarray:
        cw, c1, _ = self.cum(edges, squares=False)
        return np.diff(c1) / np.diff(cw)

    def levels(self, edges: np.ndarray) -> np.ndarray:
        """Final float32 levels (data units) of a partition without empty segments.

        Direct O(N) sums of the raw values per segment: prefix-sum differences lose
        digits when |x| spans many orders of magnitude. Sorted, as rounding could
        swap close means.
        """
        s = edges[:-1]
        if self.w is None:
            means = np.add.reduceat(self.x, s, dtype=np.float64) / np.diff(edges)
        else:
            means = np.add.reduceat(self.w * self.x, s) / np.add.reduceat(self.w, s)
        return np.sort(means.astype(np.float32))

    def cut(self, thresholds: np.ndarray) -> np.ndarray:
        """Thresholds (shifted) as values ``c`` of the data dtype: x - shift > t iff x > c."""
        return round_down_sum(np.asarray(thresholds, np.float64), self.shift, self.x.dtype)

    def count_le(self, thresholds: np.ndarray) -> np.ndarray:
        """Number of values with x - shift <= t, for each (shifted) threshold t."""
        return np.searchsorted(self.x, self.cut(thresholds), side="right")

    def edges_for(self, thresholds: np.ndarray) -> np.ndarray:
        """Segment edges (..., m + 2) of sorted thresholds (..., m): x - shift <=
        thresholds[..., j] goes left of edge j + 1 (ties lower)."""
        edges = np.empty(thresholds.shape[:-1] + (thresholds.shape[-1] + 2,), np.int64)
        edges[..., 0], edges[..., -1] = 0, self.n
        edges[..., 1:-1] = self.count_le(thresholds)
        return edges
