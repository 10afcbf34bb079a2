"""Least-squares binary quantization: ``alpha * sign(w)``."""

from __future__ import annotations

from typing import Any

import numpy as np

from .common import check_k, host_float


def binary_ls(w: Any, k: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares binary quantization: w -> alpha * sign(w), alpha = mean |w|.

    Returns codebook ``[-alpha, alpha]`` and assignments ``w >= 0`` (zeros map to
    +alpha). ``k`` exists for the common signature and must be 2.
    """
    if check_k(k) != 2:
        raise ValueError(f"binary_ls quantizes to exactly 2 levels, got k={k}")
    arr = host_float(w)
    alpha = np.float32(np.mean(np.abs(arr), dtype=np.float64))
    return np.asarray([-alpha, alpha], np.float32), (arr >= 0).astype(np.uint8)
