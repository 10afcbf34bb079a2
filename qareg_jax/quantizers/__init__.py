"""Post-training quantization baselines, one array (layer) at a time, with K levels.

Every quantizer maps a float array ``w`` (any shape) and ``k`` to
``(codebook, assignments)``:

- ``codebook``: shape ``(k,)``, float32, sorted ascending;
- ``assignments``: shape ``w.shape``, dtype :func:`index_dtype` ``(k)``, with
  ``codebook[assignments]`` the quantized array.

Padding: when a method ends with fewer than ``k`` levels (``w`` has <= k distinct
values, which every method then returns exactly; PWS with tied quantiles; UQ when
the grid step leaves fewer levels), the codebook is padded by repeating its largest
level, and ``assignments`` never point at the padding. ECSQ instead keeps levels
that lost all their weights at their last position, unused.

These are one-off host steps (numpy); jax arrays are accepted and copied to the
host. No function builds an N x K array: the 1-D structure (sorted data, sorted
levels) turns every nearest-level search into k - 1 comparisons (k <= 64) or a
search of the sorted midpoints. In :func:`assign_nearest` (so k-means and CWS) and
the ECSQ regions, a weight exactly on a boundary goes to the lower level, as in
:func:`qareg_jax.snap.assign`; UQ rounds half to even, binary maps 0 to +alpha.

Errors are raised before any compute: ``k`` not an int (``TypeError``), ``k < 2``
or ``k > 2**32``, empty ``w``, NaN/inf in ``w`` (``ValueError``), non-float ``w``
(``TypeError``), unknown method names, ``pws`` without a seed (``ValueError``).

Layout: :mod:`.common` (checks, index dtype, padding), :mod:`.assignment` (nearest
level, inertia), :mod:`.prefix` and :mod:`.kmeans_core` (1-D k-means), one module
per baseline (:mod:`.cws`, :mod:`.uq`, :mod:`.pws`, :mod:`.ecsq`, :mod:`.binary`)
and :mod:`.tree` (:func:`quantize_tree`, :data:`QUANTIZERS`).
"""

from .assignment import assign_nearest, inertia
from .binary import binary_ls
from .common import MAX_K, check_k, index_dtype
from .cws import cws
from .ecsq import ecsq
from .kmeans_core import KMEANS_INITS, KMeansResult, kmeans_1d, kmeans_1d_rows, kmeans_1d_weighted
from .pws import pws
from .tree import QUANTIZERS, quantize_tree
from .uq import uq

__all__ = [
    "KMEANS_INITS",
    "MAX_K",
    "QUANTIZERS",
    "KMeansResult",
    "assign_nearest",
    "binary_ls",
    "check_k",
    "cws",
    "ecsq",
    "index_dtype",
    "inertia",
    "kmeans_1d",
    "kmeans_1d_rows",
    "kmeans_1d_weighted",
    "pws",
    "quantize_tree",
    "uq",
]
