"""The regularizer registry: one :class:`Regularizer` entry per penalty name.

``penalty.py`` and ``codebook.QuantSpec`` dispatch through it, so adding a
regularizer is one module defining its forms plus one :func:`register` call::

    register(Regularizer(
        name="abs", elementwise=lambda w, reps, spec: ..., dynamic=True,
        cost="O(N log K)", default_lam=1.0,
    ))

after which ``make_specs(params, regularizer="abs")``, ``attach`` and ``penalty`` use it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import jax
import numpy as np

from ..validation import check_choice, check_interval, check_k

if TYPE_CHECKING:
    from ..codebook import QuantSpec

Array = jax.Array
COSTS = ("O(N)", "O(N log K)", "O(N K)")


@dataclasses.dataclass(frozen=True)
class Regularizer:
    """A registered penalty.

    Attributes:
      name: the ``QuantSpec.regularizer`` string.
      elementwise: ``(w, reps, spec) -> like w``, the per-weight penalty (``reps`` (K,)
        for dynamic entries, None for static ones).
      total: ``(w, reps, spec) -> float32 scalar``, the sum of ``elementwise`` computed
        more cheaply; None: ``penalty`` sums ``elementwise``.
      levels: ``(k, lo, hi) -> (k,) float64`` minima of a static entry; None if dynamic.
        (Grouped specs call it with ``(G, 1)`` arrays ``lo``, ``hi``: ``(G, k)`` minima.)
      grouped_total: ``(w, reps (G, K), spec) -> (G,) float32``, the ``total`` of each
        group of a grouped spec computed in the kernel's own layout; None: ``penalty``
        vmaps ``total`` (or ``elementwise``) over the ``(G, N / G)`` rows of
        ``codebook.to_groups``, a transpose of the kernel.
      dynamic: whether the levels are trainable representatives (``reps``).
      cost: time per weight and step, one of ``COSTS``, or ``spec -> cost`` when it
        depends on the spec (wells' mode). ``QuantSpec`` warns on "O(N K)" at large K.
      default_lam: lambda when a spec or config gives none, in the scale of the default
        unit penalty (``QuantSpec`` ``reduction="sum"``, ``normalize="unit"``: squared
        level spacings summed over the weights); the built-in values were chosen on the
        digits validation split (``experiments/configs/digits_lambda_scale.py``).
      params: the ``QuantSpec`` fields the forms read (e.g. ``("tau",)``).
    """

    name: str
    elementwise: Callable[[Array, Array | None, QuantSpec], Array]
    dynamic: bool
    cost: str | Callable[[QuantSpec], str]
    default_lam: float
    total: Callable[[Array, Array | None, QuantSpec], Array] | None = None
    levels: Callable[[int, float, float], np.ndarray] | None = None
    params: tuple[str, ...] = ()
    grouped_total: Callable[[Array, Array, QuantSpec], Array] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise TypeError(f"name must be a non-empty str, got {self.name!r}")
        if not isinstance(self.cost, str) and not callable(self.cost):
            raise TypeError(f"cost must be a str or a callable, got {self.cost!r}")
        if isinstance(self.cost, str):
            check_choice("cost", self.cost, COSTS)
        if self.dynamic == (self.levels is not None):
            raise ValueError(
                f"regularizer {self.name!r}: a static entry needs levels, a dynamic one has none"
            )

    def cost_of(self, spec: QuantSpec) -> str:
        """The cost class (one of ``COSTS``) under ``spec``."""
        return self.cost(spec) if callable(self.cost) else self.cost


_REGISTRY: dict[str, Regularizer] = {}


def register(entry: Regularizer, *, overwrite: bool = False) -> Regularizer:
    """Add ``entry`` under ``entry.name``; a taken name needs ``overwrite=True`` (ValueError)."""
    if not isinstance(entry, Regularizer):
        raise TypeError(f"entry must be a Regularizer, got {type(entry).__name__}")
    if entry.name in _REGISTRY and not overwrite:
        raise ValueError(
            f"regularizer {entry.name!r} is already registered; pass overwrite=True to replace it"
        )
    _REGISTRY[entry.name] = entry
    return entry


def unregister(name: str) -> Regularizer:
    """Remove and return the entry ``name`` (ValueError listing the names if unknown)."""
    get(name)
    return _REGISTRY.pop(name)


def get(name: str) -> Regularizer:
    """The entry registered as ``name``; ValueError listing the registered names if none."""
    check_choice("regularizer", name, tuple(_REGISTRY))
    return _REGISTRY[name]


def names(*, dynamic: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order; only dynamic (or static) ones if given."""
    return tuple(n for n, e in _REGISTRY.items() if dynamic is None or e.dynamic == dynamic)


def static_levels(kind: str, k: int, lo: float, hi: float) -> np.ndarray:
    """The ``k`` minima of the static regularizer ``kind`` (e.g. "sine"), shape (k,) float64."""
    check_choice("static regularizer", kind, names(dynamic=False))
    k = check_k(k)
    check_interval(lo, hi)
    return get(kind).levels(k, lo, hi)
