"""Element-wise quantization-aware penalties, and the registry that names them.

Every penalty maps a weight array ``w`` (any shape, float32 / bfloat16 / float16 /
float64) to an array of the same shape and dtype holding the per-weight penalty;
callers choose the reduction (``penalty.py`` takes the mean per layer by default).
All are pure, jit-able and differentiable, and none materialises an ``N x K`` array.

Modules, one per family (each registers its entries in :mod:`.registry`):

- ``periodic``: static ``sine``, ``cosine`` (fixed minima on ``[lo, hi]``), O(N);
- ``nearest_sq``: ``nearest`` = ``min_k (w - c_k)^2``, O(N log K);
- ``all_reps``: ``softmin``, ``product`` (and wells' mean), O(N K);
- ``gaussian_wells``: ``wells``, ``mode="max"`` O(N log K) or ``"mean"`` O(N K);
- ``registry``: :class:`Regularizer`, :func:`register`, :func:`get`, :func:`names`;
- ``common``: dtypes, sorted reps, blocks and per-representative sums they share.

``REGULARIZERS`` / ``STATIC`` / ``DYNAMIC`` are the registered names (all / static /
dynamic), read from the registry on each access, so later registrations show up.
"""

from __future__ import annotations

from ..nearest_level import nearest_index
from ..validation import check_float_array as check_float
from ..validation import check_interval, check_k, check_positive

# isort: off
# Registration order is the order of REGULARIZERS: static first, then dynamic.
from .periodic import cosine, sine
from .nearest_sq import grouped_nearest_total, nearest, nearest_total
from .all_reps import all_reps_total, product, softmin
from .gaussian_wells import wells, wells_total

# isort: on
from .registry import Regularizer, get, names, register, static_levels, unregister

_DERIVED = {
    "REGULARIZERS": lambda: names(),
    "STATIC": lambda: names(dynamic=False),
    "DYNAMIC": lambda: names(dynamic=True),
}


def __getattr__(name: str) -> tuple[str, ...]:
    if name in _DERIVED:
        return _DERIVED[name]()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DYNAMIC",
    "REGULARIZERS",
    "STATIC",
    "Regularizer",
    "all_reps_total",
    "check_float",
    "check_interval",
    "check_k",
    "check_positive",
    "cosine",
    "get",
    "grouped_nearest_total",
    "names",
    "nearest",
    "nearest_index",
    "nearest_total",
    "product",
    "register",
    "sine",
    "softmin",
    "static_levels",
    "unregister",
    "wells",
    "wells_total",
]
