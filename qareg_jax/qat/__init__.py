"""Quantization-aware training baselines that train through quantized weights.

``ste``: straight-through estimator with trainable levels (tfmot-style weight
clustering) over the library's ``{"model": params, "reps": {...}}`` tree, so it
composes with ``qareg_jax.penalty`` on the same tree (see ``ste``'s docstring).
"""

from . import ste

__all__ = ["ste"]
