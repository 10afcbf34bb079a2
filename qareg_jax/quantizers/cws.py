"""CWS: k-means weight sharing, each weight replaced by its nearest 1-D k-means centroid."""

from __future__ import annotations

from typing import Any

import numpy as np

from .kmeans_core import kmeans_1d


def cws(w: Any, k: int, **kw: Any) -> tuple[np.ndarray, np.ndarray]:
    """CWS (k-means weight sharing): each weight becomes its nearest k-means centroid."""
    res = kmeans_1d(w, k, **kw)
    return res.codebook, res.assignments
