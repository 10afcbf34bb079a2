"""Related methods, implemented for comparison with the quantization-aware penalties.

- :mod:`.gradient_l1`: gradient l1 regularization (Alizadeh et al., ICLR 2020);
- :mod:`.range_reg`: R2 range regularization (Kundu et al., 2023);
- :mod:`.dkm`: differentiable k-means weight clustering (Cho et al., ICLR 2022),
  with its blocked numeric core in :mod:`.dkm_core`.
"""

from . import dkm, gradient_l1, range_reg

__all__ = ["dkm", "gradient_l1", "range_reg"]
