"""Which leaves are quantized, how (``QuantSpec``), and their representatives.

The trainable tree is one pytree::

    train_params = {"model": params, "reps": {"params/Conv_0/kernel": c (K,), ...}}

``params`` is any pytree (a linen variables dict, an ``nnx.State``, nested
dicts); leaves are named by their '/'-joined key path (see ``paths.py``).
Dynamic regularizers get a ``(K,)`` representatives vector in ``"reps"``, with
the weight's dtype, updated by the same optax step as the weights. Static
regularizers (sine, cosine) have fixed levels and no entry.

Grouped codebooks (``QuantSpec.group_size``): one codebook per group of
``group_size`` consecutive output channels (the LAST axis of a flax kernel: Dense
``(in, out)``, Conv ``(h, w, in, out)``), so a leaf with ``out`` channels has
``G = out / group_size`` groups and reps of shape ``(G, K)``; static specs get
per-group ``lo``/``hi`` tuples of length G. :func:`to_groups` views a leaf as
``(G, N / G)`` rows (row g: the weights of group g), :func:`assign_levels` and
:func:`take_levels` map weights to their own group's levels.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .nearest_level import assign
from .paths import leaves_naming, named_leaves
from .regularizers import registry, static_levels
from .regularizers.common import from_groups, to_groups
from .validation import (
    check_choice,
    check_group_size,
    check_interval,
    check_k,
    check_k_fits,
    check_lam,
    check_patterns,
    check_positive,
    check_schedule,
)

Schedule = Callable[[Any], Any]
INTERVALS = ("minmax", "percentile", "std", "mse")
# Weights per row that the "mse" interval fits on (a fixed random subsample beyond it).
MSE_SAMPLE = 1 << 17
INITS = ("grid", "quantile", "kmeans")
REDUCTIONS = ("mean", "sum")
# Per-layer penalty divisors fixed at attach time (QuantSpec.normalize).
NORMALIZE = ("unit", "variance", "spacing")
# "unit": the penalty halfway between two adjacent levels after the division, the value
# of (distance / spacing)^2 there, so nearest's unit penalty is (distance / spacing)^2.
UNIT_BARRIER = 0.25
# Norm statistics and scales, and biases, are never quantized by the default rule.
_NEVER = re.compile(r"(^|/)(batch_stats|bias|scale|mean|var)(/|$)")


# Above this K, a spec whose penalty is O(N K) warns (softmin was 2.1x the plain
# AlexNet step at K = 16 and 19x at K = 256 on a 2-core CPU).
ALL_REPS_WARN_K = 32


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How one leaf is regularized and quantized.

    Attributes:
      k: number of levels (>= 2).
      regularizer: a registered name (``regularizers.names()``).
      lam: lambda >= 0, a float or a schedule ``step -> float`` (e.g. an optax schedule);
        None (default): the regularizer's registry ``default_lam``. With the default
        ``reduction="sum"`` and ``normalize="unit"`` it is the same scale for every
        regularizer and layer: the penalty of a layer is the sum over its weights of
        their cost in squared level spacings (a weight halfway between two levels
        costs 0.25), so lambda 1 weighs one such weight as a 0.25 rise of the task loss.
        The registry defaults (~1) are for regularizing a trained network; from a random
        start use ~1e-3, or the weights stay pinned to their initial levels.
      interval: how ``[lo, hi]`` is chosen when attached: "minmax" (the leaf's
        min and max), "percentile" (``[p, 100 - p]`` percentiles, ``p =
        interval_param``, default 1.0) or "std" (``mean +- s * std``, ``s =
        interval_param``, default 3.0, clipped to min/max) or "mse" (the interval whose
        K evenly spaced levels, placed as the regularizer places them, snap the leaf's
        weights with the least squared error: see :func:`mse_grid`; for a static
        penalty its levels then sit where the weights are, not on the outliers).
      interval_param: the ``p`` or ``s`` above (unused by "minmax" and "mse").
      lo, hi: explicit interval; when set, ``interval`` is ignored. Filled in by ``attach``.
      init: representatives' start for dynamic regularizers: "grid" (K points on
        ``[lo, hi]`` including the ends), "quantile" (quantiles ``(j + 1/2) / K``
        of the weights) or "kmeans" (1-D k-means of the weights).
      reduction: "sum" (default: the pull on each weight is independent of its layer's
        size) or "mean" (over the layer's weights: a large layer's weights are pulled
        less).
      tau: softmin temperature; default ``(spacing / 4)^2`` with ``spacing =
        (max c - min c) / (K - 1)`` of the initial representatives (``(hi - lo) /
        (K - 1)`` for static specs), filled in by ``attach``.
      sigma: wells width; default ``spacing / 2``, filled in by ``attach``.
      wells_mode: "max" or "mean" (see ``regularizers.wells``).
      normalize: divide the layer's reduced penalty by a constant of the layer, fixed at
        attach time, so one lambda fits every layer: "unit" (the penalty is measured in
        squared level spacings whatever the regularizer: divided by its mean value
        halfway between adjacent starting levels, over ``UNIT_BARRIER`` = 0.25, the value
        of ``(distance / spacing)^2`` there), "variance" (of its weights) or "spacing"
        (squared mean spacing of its levels, meant for the squared-distance penalties);
        None: no division. Default "unit".
      norm: that divisor (> 0), filled in by ``attach`` when ``normalize`` is set.
      group_size: None (default): one codebook for the whole leaf. An int C >= 1: one
        codebook per C consecutive output channels (the leaf's last axis; C = 1: per
        channel), which C must divide: reps of shape ``(G, K)``, ``G = channels / C``.
        A number of channels rather than of groups, so one spec fits layers of any
        width (``make_specs(params, group_size=1)``). ``lo``/``hi`` are then per group
        (tuples of G floats after ``attach``; a scalar given applies to every group);
        ``tau``, ``sigma`` and ``norm`` stay one number per leaf, from the mean over
        groups of the per-group level spacing (``norm="variance"``: the whole leaf's).
      pin_zero: keep one level at exactly 0.0 (per codebook), for pruned and near-zero
        weights. Dynamic specs: the starting level nearest 0 is moved to 0 (k-means:
        refitted around it) and gets no gradient, in the penalty, STE and fine-tuning,
        so it stays 0.0 through training, snapping and export. Static specs: the
        interval is shifted (by less than half a level spacing) so that the level
        nearest 0 is at 0. The other ``k - 1`` levels stay free.
    """

    k: int = 4
    regularizer: str = "nearest"
    lam: float | Schedule | None = None
    interval: str = "minmax"
    interval_param: float | None = None
    lo: float | None = None
    hi: float | None = None
    init: str = "kmeans"
    reduction: str = "sum"
    tau: float | None = None
    sigma: float | None = None
    wells_mode: str = "max"
    normalize: str | None = "unit"
    norm: float | None = None
    group_size: int | None = None
    pin_zero: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.pin_zero, bool):
            raise TypeError(f"pin_zero must be True or False, got {self.pin_zero!r}")
        if self.pin_zero and isinstance(self.k, int) and self.k < 2:
            raise ValueError(
                f"pin_zero=True needs k >= 2 (zero and at least one free level), got k={self.k}"
            )
        check_k(self.k)
        check_choice("regularizer", self.regularizer, registry.names())
        check_choice("interval", self.interval, INTERVALS)
        check_choice("init", self.init, INITS)
        check_choice("reduction", self.reduction, REDUCTIONS)
        check_choice("wells_mode", self.wells_mode, ("max", "mean"))
        if self.normalize is not None:
            check_choice("normalize", self.normalize, NORMALIZE)
        if self.lam is not None:  # None: the registry's default_lam, read in lam_at
            check_lam(self.lam)
        if (self.lo is None) != (self.hi is None):
            raise ValueError("lo and hi must be given together (or neither)")
        if self.group_size is not None:
            check_group_size(self.group_size)
        if self.lo is not None:
            _check_bounds(self.lo, self.hi, self.group_size)
        for name in ("tau", "sigma", "interval_param", "norm"):
            if getattr(self, name) is not None:
                check_positive(getattr(self, name), name)
        if self.k > ALL_REPS_WARN_K and self.all_reps:
            warnings.warn(
                f"regularizer {self.regularizer!r}"
                + (" (wells_mode='mean')" if self.regularizer == "wells" else "")
                + f" evaluates all k={self.k} representatives for every weight: O(N k) "
                "time per step (README, 'Regularizer overhead'). 'nearest', or 'wells' "
                "with wells_mode='max', costs O(N log k).",
                stacklevel=3,
            )

    @property
    def all_reps(self) -> bool:
        """Whether the penalty sums over all K representatives for every weight (O(N K))."""
        return registry.get(self.regularizer).cost_of(self) == "O(N K)"

    @property
    def dynamic(self) -> bool:
        """Whether the regularizer has trainable representatives."""
        return registry.get(self.regularizer).dynamic

    def lam_at(self, step: Any = None) -> Any:
        """Lambda at ``step`` (a schedule needs a step).

        A schedule's value that is negative or not finite raises ``ValueError`` when
        it is concrete; under ``jax.jit`` (traced step) it is returned as it is and
        ``penalty`` adds :func:`lam_guard` (NaN for a bad value), so the penalty turns
        NaN and a NaN detector stops the run rather than training on with a wrong
        lambda. ``check_schedules`` catches it before training.
        """
        if self.lam is None:
            return registry.get(self.regularizer).default_lam
        if not callable(self.lam):
            return self.lam
        if step is None:
            raise ValueError("step is required when lam is a schedule")
        value = self.lam(step)
        if isinstance(value, jax.core.Tracer):
            return value
        if not 0 <= float(value) < np.inf:
            raise ValueError(
                f"lam schedule gives {float(value)} at step {step}; lambda must be finite "
                "and >= 0 (check the schedule with check_schedules(specs, steps))"
            )
        return value


def lam_guard(lam: Any) -> Any:
    """0.0 where ``lam`` is finite and >= 0, else NaN (a float32 scalar).

    Added to the penalty rather than folded into lambda: ``lam * R`` and its gradient
    stay the same graph, so a valid schedule trains bit for bit as without the guard
    (folding a ``where`` into lambda changed XLA's fusion of the train step).
    """
    lam = jnp.asarray(lam, jnp.float32)
    return jnp.where((lam >= 0) & jnp.isfinite(lam), 0.0, jnp.nan).astype(jnp.float32)


def _check_bounds(lo: Any, hi: Any, group_size: int | None) -> None:
    """Scalar bounds: ``check_interval``; per-group ones (sequences, grouped specs only):
    equal lengths, finite, ``lo < hi`` in every group."""
    if np.ndim(lo) == 0 and np.ndim(hi) == 0:
        check_interval(lo, hi)
        return
    if group_size is None:
        raise ValueError(
            "lo and hi must be numbers; per-group sequences need group_size (grouped codebooks)"
        )
    lo_, hi_ = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    if lo_.ndim != 1 or lo_.shape != hi_.shape or not lo_.size:
        raise ValueError(
            f"per-group lo and hi must be two equal-length 1-D sequences, got "
            f"shapes {lo_.shape} and {hi_.shape}"
        )
    bad = np.flatnonzero(~(np.isfinite(lo_) & np.isfinite(hi_) & (lo_ < hi_)))
    if bad.size:
        g = int(bad[0])
        raise ValueError(
            f"per-group interval must satisfy finite lo < hi in every group; group {g} has "
            f"lo={lo_[g]}, hi={hi_[g]} ({bad.size} bad groups)"
        )


# ------------------------------------------------------------------ grouped codebooks


def num_groups(spec: QuantSpec, shape: Sequence[int], path: str = "") -> int | None:
    """G, the number of codebooks of a leaf of ``shape`` under ``spec``; None per tensor.

    Raises:
      ValueError: ``spec.group_size`` does not divide the last axis (output channels).
    """
    return groups_for(spec.group_size, shape, path)


def groups_for(group_size: int | None, shape: Sequence[int], path: str = "") -> int | None:
    """G = output channels / ``group_size`` for a leaf of ``shape``; None when ``group_size``
    is None. Raises ValueError (naming ``path``) when it does not divide the last axis."""
    if group_size is None:
        return None
    group_size = check_group_size(group_size)
    channels = int(shape[-1]) if len(shape) else 1
    if not len(shape) or channels % group_size:
        raise ValueError(
            f"group_size={group_size} must divide the {channels} output channels (last "
            f"axis) of leaf {path!r} of shape {tuple(shape)}; allowed: a divisor of "
            f"{channels} (1: one codebook per channel), or None for one per leaf"
        )
    return channels // group_size


def _group_of_channel(groups: int, channels: int, xp: Any = jnp) -> Any:
    """``(channels,)`` group index of each output channel (``xp``: numpy or jax.numpy)."""
    return xp.arange(channels) // (channels // groups)


def take_levels(levels: Any, a: Any) -> Any:
    """The level of each index: ``levels[a]`` for ``(K,)`` levels; for ``(G, K)`` levels,
    ``levels[group of the weight's channel, a]`` (a gather, no transpose). Shape of ``a``."""
    if levels.ndim == 1:
        return levels[a]
    xp = np if isinstance(levels, np.ndarray) else jnp
    return levels[_group_of_channel(levels.shape[0], a.shape[-1], xp), a]


def level_sums(values: jax.Array, a: jax.Array, shape: tuple[int, ...]) -> jax.Array:
    """Per-level sums of ``values`` over the weights with index ``a``: shape ``shape``
    ((K,) or (G, K), each weight counted in its own group), a scatter-add on the
    arrays' own shapes (no ravel: a sharded kernel is not gathered)."""
    out = jnp.zeros(shape, values.dtype)
    if len(shape) == 1:
        return out.at[a].add(values)
    return out.at[_group_of_channel(shape[0], a.shape[-1]), a].add(values)


def assign_levels(w: jax.Array, levels: jax.Array, *, index_dtype: Any = None) -> jax.Array:
    """``nearest_level.assign`` with ``(K,)`` levels, or each weight against its own
    group's levels for ``(G, K)`` ones (vmapped over the groups). Shape of ``w``."""
    if levels.ndim == 1:
        return assign(w, levels, index_dtype=index_dtype)
    rows = jax.vmap(lambda r, c: assign(r, c, index_dtype=index_dtype))(
        to_groups(w, levels.shape[0]), levels
    )
    return from_groups(rows, w.shape)


def group_bounds(spec: QuantSpec, groups: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` of a grouped spec as ``(G,)`` float64 arrays (scalars broadcast)."""
    if spec.lo is None:
        raise ValueError("spec has no interval; resolve it with attach()")
    lo, hi = np.asarray(spec.lo, np.float64), np.asarray(spec.hi, np.float64)
    if lo.ndim and lo.size != groups:
        raise ValueError(f"spec has {lo.size} per-group bounds for a leaf of {groups} groups")
    return np.broadcast_to(lo, (groups,)), np.broadcast_to(hi, (groups,))


def check_k_fits_groups(spec: QuantSpec, shape: Sequence[int], path: str) -> int | None:
    """``num_groups`` after checking that ``spec.k`` levels fit the leaf, or each group."""
    n = int(np.prod(shape))
    groups = num_groups(spec, shape, path)
    if groups is None:
        check_k_fits(spec.k, n, path)
    elif spec.k > n // groups:
        raise ValueError(
            f"k={spec.k} levels per group for leaf {path!r}: each of its {groups} groups "
            f"(group_size={spec.group_size}) has only {n // groups} weights; k must be <= "
            "that (raise group_size or lower k)"
        )
    return groups


def check_schedules(specs: Mapping[str, QuantSpec], steps: int) -> None:
    """Raise unless every spec's lambda is finite and >= 0 at steps ``0 .. steps - 1``.

    ``QuantSpec`` checks a schedule at step 0 only (it cannot know the run's length);
    call this once before training with the planned number of steps.

    Raises:
      ValueError: naming the leaf and the first bad step (``validation.check_schedule``).
    """
    for path, spec in specs.items():
        check_schedule(spec.lam_at(0) if spec.lam is None else spec.lam, steps, f"lam of {path!r}")


def resolve_paths(params: Any, paths: Sequence[str] | None) -> list[str]:
    """``paths`` checked against ``params``, or the default selection when None."""
    if paths is None:
        return select(params)
    if isinstance(paths, str):
        raise TypeError("paths must be a sequence of path strings, not one string")
    paths = list(paths)
    if not paths:
        raise ValueError("paths is empty: select at least one leaf (or pass None for the default)")
    leaves_naming(params, paths, "paths")
    return paths


# ----------------------------------------------------------------------- selection


def default_rule(path: str, leaf: Any) -> bool:
    """Conv and dense kernels: leaves named ``kernel`` with >= 2 dims, outside norm stats."""
    return path.split("/")[-1] == "kernel" and np.ndim(leaf) >= 2 and not _NEVER.search(path)


Patterns = str | Sequence[str]


def _empty_str(value: object) -> bool:
    return isinstance(value, str) and not value


def override_matches(key: str, path: str) -> bool:
    """Whether ``overrides`` key ``key`` selects leaf ``path``.

    The key's '/'-separated segments must equal consecutive whole segments of the
    path; each key segment may be a glob (``*``, ``?``, ``[01]``, case-sensitive).
    For ``params/fc1/kernel``: ``"fc1"``, ``"fc1/kernel"``, ``"f*1"`` match;
    ``"fc"``, ``"c1"``, ``"fc1/bias"`` do not, and ``"fc1"`` does not match ``fc10``.
    """
    want = [part for part in key.split("/") if part]
    have = path.split("/")
    return any(
        all(fnmatch.fnmatchcase(h, w) for h, w in zip(have[i : i + len(want)], want, strict=True))
        for i in range(len(have) - len(want) + 1)
    )


def select(
    params: Any,
    include: Patterns | None = None,
    exclude: Patterns | None = None,
    predicate: Callable[[str, Any], bool] | None = None,
) -> list[str]:
    """Paths of the leaves to quantize.

    Args:
      params: any pytree of arrays.
      include: a regex searched in each '/'-joined path, or a list/tuple of them
        (a path is included if any matches); replaces the default rule (conv and
        dense kernels) when given.
      exclude: a regex or a list/tuple of them; matching paths are dropped.
      predicate: ``(path, leaf) -> bool``; must also hold.

    Returns:
      The selected paths, in flattening order.

    Raises:
      ValueError: nothing is selected, or an invalid regex.
      TypeError: a selected leaf is not floating point; include/exclude not a str or
        a list/tuple of str; predicate not callable.
    """
    # "" keeps its old meaning: no pattern.
    inc = check_patterns(None if _empty_str(include) else include, "include")
    exc = check_patterns(None if _empty_str(exclude) else exclude, "exclude")
    if predicate is not None and not callable(predicate):
        raise TypeError(f"predicate must be a callable (path, leaf) -> bool, got {predicate!r}")
    leaves = named_leaves(params)
    out = []
    for path, leaf in leaves.items():
        ok = any(p.search(path) for p in inc) if inc else default_rule(path, leaf)
        ok = ok and not (exc and any(p.search(path) for p in exc))
        ok = ok and (predicate is None or predicate(path, leaf))
        if ok:
            out.append(path)
    if not out:
        shown = ", ".join(list(leaves)[:8]) + (" ..." if len(leaves) > 8 else "")
        raise ValueError(
            f"the selection (include={include!r}, exclude={exclude!r}, predicate="
            f"{'given' if predicate else None}) matches no leaf; paths are: {shown}"
        )
    for path in out:
        dtype = jnp.asarray(leaves[path]).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"selected leaf {path!r} must be floating point, got dtype {dtype}")
    return out


def make_specs(
    params: Any,
    *,
    include: str | None = None,
    exclude: str | None = None,
    predicate: Callable[[str, Any], bool] | None = None,
    overrides: Mapping[str, Mapping[str, Any] | None] | None = None,
    **spec_kwargs: Any,
) -> dict[str, QuantSpec]:
    """One ``QuantSpec`` per selected leaf (``include``/``exclude``/``predicate``: see ``select``).

    ``spec_kwargs`` are ``QuantSpec`` fields shared by every layer. ``overrides``
    maps a key to field changes for the matching layers, or to ``None`` to skip
    them: ``overrides={"Conv_0": dict(k=16), "Dense_2": None}``. A key matches a
    leaf when its '/'-separated segments are consecutive whole segments of the
    leaf's path, each segment optionally a glob (``override_matches``): ``"fc1"``
    and ``"fc1/kernel"`` match ``params/fc1/kernel``, but ``"fc1"`` does not match
    ``fc10`` and ``"Conv1"`` does not match ``conv1``. Overrides apply in order;
    later ones win.

    Raises:
      ValueError: an overrides key matches no selected leaf (the selected paths are
        listed), every leaf is skipped, or a leaf has fewer weights than its ``k``.
      TypeError: an overrides key is not a str, or a change is not a dict or None.
      (An empty key is a ValueError.)
    """
    base = QuantSpec(**spec_kwargs)
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides must be a dict {{key: changes or None}}, got {overrides!r}")
    for key, change in overrides.items():
        if not isinstance(key, str):
            raise TypeError(f"overrides keys must be path strings, got {key!r}")
        if not key.strip("/"):
            raise ValueError(f"overrides keys must name at least one path segment, got {key!r}")
        if change is not None and not isinstance(change, Mapping):
            raise TypeError(
                f"overrides[{key!r}] must be a dict of QuantSpec fields or None, got {change!r}"
            )
    leaves = named_leaves(params)
    selected = select(params, include, exclude, predicate)
    unmatched = [k for k in overrides if not any(override_matches(k, p) for p in selected)]
    if unmatched:
        raise ValueError(
            f"overrides keys {unmatched} match no selected leaf (keys match whole "
            "'/'-separated path segments, case-sensitive, globs allowed: 'fc1', "
            f"'fc1/kernel', 'Conv_*'); the selected paths are: {', '.join(selected)}"
        )
    specs: dict[str, QuantSpec] = {}
    for path in selected:
        spec: QuantSpec | None = base
        for key, change in overrides.items():
            if spec is not None and override_matches(key, path):
                spec = None if change is None else dataclasses.replace(spec, **change)
        if spec is not None:
            check_k_fits_groups(spec, np.shape(leaves[path]), path)
            specs[path] = spec
    if not specs:
        raise ValueError("overrides skipped every selected leaf; nothing is left to quantize")
    return specs


# ------------------------------------------------------------------ representatives


def resolve_interval(w: np.ndarray, spec: QuantSpec, path: str = "") -> tuple[float, float]:
    """``[lo, hi]`` for a leaf under ``spec`` (explicit bounds win); ``path`` names the
    leaf in errors."""
    if spec.lo is not None:
        return float(spec.lo), float(spec.hi)
    flat = np.asarray(w, np.float64).ravel()
    if spec.interval == "minmax":
        lo, hi = flat.min(), flat.max()
    elif spec.interval == "percentile":
        p = 1.0 if spec.interval_param is None else spec.interval_param
        if not 0 < p < 50:
            raise ValueError(f"interval_param (percentile) must be in (0, 50), got {p}")
        lo, hi = np.percentile(flat, [p, 100 - p])
    elif spec.interval == "mse":
        lo, hi = (float(b[0]) for b in _mse_intervals(flat[None], spec))
    else:
        s = 3.0 if spec.interval_param is None else spec.interval_param
        mu, sd = flat.mean(), flat.std()
        lo, hi = max(mu - s * sd, flat.min()), min(mu + s * sd, flat.max())
    if not lo < hi:
        leaf = f"leaf {path!r}" if path else "a leaf"
        raise ValueError(
            f"the {spec.interval!r} interval of {leaf} is empty (lo={lo}, hi={hi}): the leaf "
            "is constant; give lo/hi explicitly (e.g. overrides={path: dict(lo=..., hi=...)})"
        )
    return float(lo), float(hi)


def mse_grid(rows: np.ndarray, k: int, iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """``(first, spacing)`` (G,) of the K evenly spaced levels ``first + j * spacing``
    that snap each row of ``rows`` (G, n) with the least squared error (a local minimum).

    Lloyd's iteration constrained to a uniform grid (:func:`_uniform_lloyd`), started
    from the min-max grid and from ``mean +- 2 std``; the better end point per row is
    kept. Rows longer than ``MSE_SAMPLE`` are fitted on a fixed random subsample.
    """
    x = np.asarray(rows, np.float64)
    if x.shape[1] > MSE_SAMPLE:
        keep = np.random.default_rng(0).choice(x.shape[1], MSE_SAMPLE, replace=False)
        x = x[:, np.sort(keep)]
    mu, sd = x.mean(axis=1), x.std(axis=1)
    lo, hi = x.min(axis=1), x.max(axis=1)
    # A constant row keeps step 0 (its NaNs fail every test in the fit), so the caller
    # sees an empty interval and says so.
    err, first, step = _uniform_lloyd(x, lo, (hi - lo) / (k - 1), k, iters)
    a, b = np.maximum(mu - 2 * sd, lo), np.minimum(mu + 2 * sd, hi)
    err2, first2, step2 = _uniform_lloyd(x, a, (b - a) / (k - 1), k, iters)
    better = err2 < err
    return np.where(better, first2, first), np.where(better, step2, step)


def _uniform_lloyd(
    x: np.ndarray, first: np.ndarray, step: np.ndarray, k: int, iters: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(mean squared error, first, step)`` (G,) after alternating: each weight to its
    nearest of the K levels, then ``(first, step)`` refitted by least squares on
    ``w ~ first + j * step``. Neither step raises the error."""

    def levels_of(first, step):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.clip(np.rint((x - first[:, None]) / step[:, None]), 0, k - 1)

    n = x.shape[1]
    sx = x.sum(axis=1)
    for _ in range(iters):
        j = levels_of(first, step)
        sj = j.sum(axis=1)
        den = n * (j * j).sum(axis=1) - sj * sj
        with np.errstate(divide="ignore", invalid="ignore"):
            new_step = (n * (j * x).sum(axis=1) - sj * sx) / den
        # All weights on one level (den 0), or a flipped fit: keep that row's grid.
        ok = (den > 0) & (new_step > 0)
        new_step = np.where(ok, new_step, step)
        new_first = np.where(ok, (sx - new_step * sj) / n, first)
        if np.array_equal(new_first, first) and np.array_equal(new_step, step):
            break
        first, step = new_first, new_step
    err = ((x - first[:, None] - levels_of(first, step) * step[:, None]) ** 2).mean(axis=1)
    return err, first, step


def _mse_intervals(rows: np.ndarray, spec: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` (G,) whose levels under ``spec``'s regularizer are :func:`mse_grid`'s:
    a static penalty's own layout of K levels on ``[lo, hi]`` (sine: both ends; cosine:
    bin centres), otherwise K points including the ends (``init="grid"``)."""
    first, step = mse_grid(rows, spec.k)
    entry = registry.get(spec.regularizer)
    if entry.levels is None:
        return first, first + (spec.k - 1) * step
    unit = entry.levels(spec.k, 0.0, 1.0)
    width = step / (unit[1] - unit[0])  # the levels are affine in (lo, hi)
    lo = first - unit[0] * width
    return lo, lo + width


def init_representatives(
    w: Any, k: int, method: str, lo: float, hi: float, *, pin_zero: bool = False
) -> np.ndarray:
    """``(k,)`` sorted float64 starting representatives for weights ``w``; with
    ``pin_zero`` one of them is exactly 0.0 (see ``QuantSpec.pin_zero``)."""
    k = check_k(k)
    check_choice("init", method, INITS)
    if method == "grid":  # the weights themselves are not needed
        return with_zero(np.linspace(lo, hi, k)) if pin_zero else np.linspace(lo, hi, k)
    flat = np.asarray(w, np.float64).ravel()
    if method == "kmeans" and pin_zero:
        from .quantizers import kmeans_1d_rows  # host-side, one-off

        return kmeans_1d_rows(flat[None], k, pin_zero=True)[0]
    if method == "quantile":
        c = np.quantile(flat, (np.arange(k) + 0.5) / k)
    else:
        from .quantizers import kmeans_1d  # host-side, one-off

        c = np.sort(np.asarray(kmeans_1d(flat, k)[0], np.float64))
    return with_zero(c) if pin_zero else c


def with_zero(c: np.ndarray) -> np.ndarray:
    """Sorted levels ``c`` (..., K) with each row's level nearest 0 set to exactly 0.0 (the
    rows stay sorted). Host-side."""
    c = np.array(c, np.float64)
    np.put_along_axis(c, np.argmin(np.abs(c), axis=-1)[..., None], 0.0, axis=-1)
    return c


def zero_on_level(regularizer: str, k: int, lo: Any, hi: Any) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi]`` (scalars or (G,) arrays) shifted so that the static ``regularizer``'s
    level nearest 0 is at 0: its levels move by less than half a spacing (by their
    lowest or highest one when 0 is outside them). Returns float64 ``(lo, hi)``."""
    lo, hi = np.asarray(lo, np.float64), np.asarray(hi, np.float64)
    c = registry.get(regularizer).levels(k, lo[..., None], hi[..., None])
    shift = np.take_along_axis(c, np.argmin(np.abs(c), axis=-1)[..., None], axis=-1)[..., 0]
    return lo - shift, hi - shift


def pin_levels(c: jax.Array) -> jax.Array:
    """Levels ``c`` ((K,) or (G, K)) as a ``pin_zero`` spec trains them: each codebook's
    level nearest 0 (its pinned level, stored as 0.0) is exactly 0.0 and gets no gradient,
    so a gradient-based optimizer leaves it at 0."""
    c = jnp.asarray(c)
    return jnp.where(pin_mask(jax.lax.stop_gradient(c)), jnp.zeros((), c.dtype), c)


def pin_mask(c: jax.Array) -> jax.Array:
    """Boolean mask, shape of ``c``, of the pinned zero level of each codebook: the level
    nearest 0 of each row of ``c`` ((K,) or (G, K))."""
    c = jnp.asarray(c)
    return jax.nn.one_hot(jnp.argmin(jnp.abs(c), axis=-1), c.shape[-1], dtype=jnp.bool_)


def attach(
    params: Any, specs: Mapping[str, QuantSpec]
) -> tuple[dict[str, Any], dict[str, QuantSpec]]:
    """Build the trainable tree ``{"model": params, "reps": {...}}`` and resolve the specs.

    Each spec gets concrete ``lo``/``hi`` (and ``tau``/``sigma``) from its leaf;
    dynamic specs get representatives initialised by ``spec.init``. ``params`` is
    not modified. A grouped spec (``group_size``) gets them per group, for all
    groups at once: ``(G, K)`` reps, ``lo``/``hi`` tuples of G floats (see
    ``QuantSpec``).

    Raises:
      ValueError: a spec names a missing leaf, a leaf holds NaN/inf, is constant (no
        interval) or has fewer weights than its ``k``, or the specs are empty; for a
        grouped spec, ``group_size`` does not divide the leaf's last axis, a group is
        constant or has fewer weights than ``k``.
      TypeError: a selected leaf is not floating point.
    """
    if not specs:
        raise ValueError("specs is empty: select at least one leaf (see make_specs)")
    leaves = leaves_naming(params, specs, "specs")
    resolved: dict[str, QuantSpec] = {}
    reps: dict[str, jax.Array] = {}
    for path, spec in specs.items():
        leaf = leaves[path]
        dtype = jnp.asarray(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"leaf {path!r} must be floating point, got dtype {dtype}")
        host = np.asarray(jax.device_get(leaf), np.float64)
        if not np.isfinite(host).all():
            raise ValueError(f"leaf {path!r} holds NaN or inf values; cannot attach")
        if check_k_fits_groups(spec, host.shape, path) is not None:
            resolved[path], c = _attach_groups(host, spec, path, dtype)
            if c is not None:
                reps[path] = c
            continue
        lo, hi = resolve_interval(host, spec, path)
        if spec.pin_zero and not spec.dynamic:
            lo, hi = (float(b) for b in zero_on_level(spec.regularizer, spec.k, lo, hi))
        spacing = (hi - lo) / (spec.k - 1)
        if spec.dynamic:
            c = init_representatives(host, spec.k, spec.init, lo, hi, pin_zero=spec.pin_zero)
            reps[path] = jnp.asarray(c, dtype)
            # Widths follow the reps' own spread: k-means/quantile starts sit much
            # closer than the interval's grid, and softmin wells sized from the
            # interval merge into one minimum between them (every weight is then
            # pulled to the middle: 10% accuracy on digits at K=2).
            if c.max() > c.min():
                spacing = float(c.max() - c.min()) / (spec.k - 1)
        spec = dataclasses.replace(
            spec,
            lo=lo,
            hi=hi,
            tau=spec.tau if spec.tau is not None else (spacing / 4) ** 2,
            sigma=spec.sigma if spec.sigma is not None else spacing / 2,
        )
        resolved[path] = dataclasses.replace(
            spec, norm=_norm(spec, host, spacing, path, reps.get(path))
        )
    return {"model": params, "reps": reps}, resolved


def _group_intervals(rows: np.ndarray, spec: QuantSpec, path: str) -> tuple[np.ndarray, ...]:
    """Per-group ``(lo, hi)`` (G,) of ``rows`` (G, n) under ``spec``, as
    :func:`resolve_interval` per row (vectorised)."""
    if spec.lo is not None:
        return group_bounds(spec, len(rows))
    if spec.interval == "minmax":
        lo, hi = rows.min(axis=1), rows.max(axis=1)
    elif spec.interval == "percentile":
        p = 1.0 if spec.interval_param is None else spec.interval_param
        if not 0 < p < 50:
            raise ValueError(f"interval_param (percentile) must be in (0, 50), got {p}")
        lo, hi = np.percentile(rows, [p, 100 - p], axis=1)
    elif spec.interval == "mse":
        lo, hi = _mse_intervals(rows, spec)
    else:
        s = 3.0 if spec.interval_param is None else spec.interval_param
        mu, sd = rows.mean(axis=1), rows.std(axis=1)
        lo = np.maximum(mu - s * sd, rows.min(axis=1))
        hi = np.minimum(mu + s * sd, rows.max(axis=1))
    bad = np.flatnonzero(~(lo < hi))
    if bad.size:
        raise ValueError(
            f"the {spec.interval!r} interval of group {int(bad[0])} of leaf {path!r} is empty "
            f"({bad.size} of {len(rows)} groups are constant, e.g. a dead channel); give lo/hi "
            "explicitly or a larger group_size"
        )
    return lo, hi


def _attach_groups(
    host: np.ndarray, spec: QuantSpec, path: str, dtype: Any
) -> tuple[QuantSpec, jax.Array | None]:
    """The resolved grouped spec of one leaf and its ``(G, K)`` starting reps in ``dtype``
    (the leaf's; None if static).

    Intervals and starts are per group, computed for all groups at once (k-means:
    ``quantizers.kmeans_1d_rows``). ``tau``/``sigma``/``norm="spacing"`` use the mean
    over groups of each group's level spacing; ``norm="unit"`` is measured on the reps
    as stored (rounded to ``dtype``), as per tensor, so it equals the lazy ``unit_norm``
    of a spec left unattached.
    """
    rows = to_groups(host, num_groups(spec, host.shape, path))
    lo, hi = _group_intervals(rows, spec, path)
    if spec.pin_zero and not spec.dynamic:
        lo, hi = zero_on_level(spec.regularizer, spec.k, lo, hi)
    spacing = (hi - lo) / (spec.k - 1)
    c = None
    if spec.dynamic:
        if spec.init == "grid":
            c = lo[:, None] + (hi - lo)[:, None] * np.linspace(0.0, 1.0, spec.k)
        elif spec.init == "quantile":
            c = np.quantile(rows, (np.arange(spec.k) + 0.5) / spec.k, axis=1).T
        else:
            from .quantizers import kmeans_1d_rows  # host-side, one-off

            c = kmeans_1d_rows(rows, spec.k, pin_zero=spec.pin_zero)
        if spec.pin_zero:
            c = with_zero(c)
        # As per tensor: widths follow the reps' own spread where a group has one.
        spread = (c.max(axis=1) - c.min(axis=1)) / (spec.k - 1)
        spacing = np.where(spread > 0, spread, spacing)
    mean_spacing = float(np.mean(spacing))
    resolved = dataclasses.replace(
        spec,
        lo=tuple(float(v) for v in lo),
        hi=tuple(float(v) for v in hi),
        tau=spec.tau if spec.tau is not None else (mean_spacing / 4) ** 2,
        sigma=spec.sigma if spec.sigma is not None else mean_spacing / 2,
    )
    stored = None if c is None else jnp.asarray(c, dtype)
    resolved = dataclasses.replace(resolved, norm=_norm(resolved, host, mean_spacing, path, stored))
    return resolved, stored


def _norm(
    spec: QuantSpec, host: np.ndarray, spacing: float, path: str, reps: Any = None
) -> float | None:
    """``spec.norm`` or, for ``spec.normalize``, the divisor it names (see ``QuantSpec``):
    the unit barrier, the weights' variance or the squared mean spacing of the initial
    levels (``spacing``). ``spec`` has its interval, tau and sigma resolved."""
    if spec.norm is not None or spec.normalize is None:
        return spec.norm
    if spec.normalize == "unit":
        value = _unit_barrier(spec, reps)
    elif spec.normalize == "variance":
        value = float(host.var())
    else:
        value = float(spacing) ** 2
    if not (np.isfinite(value) and value > 0):
        raise ValueError(
            f"normalize={spec.normalize!r} of leaf {path!r} divides by {value}; give norm "
            "explicitly (e.g. overrides={path: dict(norm=...)}) or normalize=None"
        )
    return value


def _unit_barrier(spec: QuantSpec, reps: Any) -> float:
    """``unit_norm`` of the starting levels as a Python float (fixed at attach time)."""
    return float(unit_norm(spec, None if reps is None else jnp.asarray(reps)))


def unit_norm(spec: QuantSpec, reps: jax.Array | None = None) -> jax.Array:
    """The divisor of ``normalize="unit"``: the mean element-wise penalty at the midpoints
    of adjacent levels (``reps`` (K,), or the static minima of ``spec``'s interval) over
    ``UNIT_BARRIER``; a float32 scalar, without gradient. Generic in the regularizer, so
    a registered one gets the same scale. ``attach`` fixes it from the starting levels;
    ``penalty`` calls it on the current levels for a spec that was not attached."""
    entry = registry.get(spec.regularizer)
    if spec.dynamic and reps is None:
        raise ValueError(f"regularizer {spec.regularizer!r} needs representatives")
    if spec.group_size is not None:
        return jnp.mean(_grouped_unit_heights(spec, reps)) / UNIT_BARRIER
    if spec.dynamic:
        c = jnp.sort(jax.lax.stop_gradient(reps).astype(jnp.float32))
        rep_arg = c
    else:
        if spec.lo is None:
            raise ValueError("spec has no interval; resolve it with attach()")
        c = jnp.asarray(static_levels(spec.regularizer, spec.k, spec.lo, spec.hi), jnp.float32)
        rep_arg = None
    heights = entry.elementwise((c[:-1] + c[1:]) / 2, rep_arg, spec).astype(jnp.float32)
    return jnp.mean(heights) / UNIT_BARRIER


def _grouped_unit_heights(spec: QuantSpec, reps: jax.Array | None) -> jax.Array:
    """``(G, K - 1)`` element-wise penalties at the midpoints of each group's adjacent
    levels (one norm per layer: ``unit_norm`` takes their mean)."""
    entry = registry.get(spec.regularizer)
    flat = dataclasses.replace(spec, group_size=None, lo=None, hi=None)
    if spec.dynamic:
        c = jnp.sort(jax.lax.stop_gradient(reps).astype(jnp.float32), axis=-1)
        mids = (c[:, :-1] + c[:, 1:]) / 2
        return jax.vmap(lambda m, r: entry.elementwise(m, r, flat))(mids, c).astype(jnp.float32)
    if spec.lo is None:
        raise ValueError("spec has no interval; resolve it with attach()")
    lo, hi = (np.atleast_1d(np.asarray(b, np.float64)) for b in (spec.lo, spec.hi))
    c = entry.levels(spec.k, lo[:, None], hi[:, None])
    mids = jnp.asarray((c[:, :-1] + c[:, 1:]) / 2, jnp.float32)
    lo, hi = jnp.asarray(lo, jnp.float32), jnp.asarray(hi, jnp.float32)
    heights = jax.vmap(
        lambda m, a, b: entry.elementwise(m, None, dataclasses.replace(flat, lo=a, hi=b))
    )(mids, lo, hi)
    return heights.astype(jnp.float32)


def levels(train_params: Mapping[str, Any], spec: QuantSpec, path: str) -> jax.Array:
    """The ``(K,)`` (grouped: ``(G, K)``) quantization levels of leaf ``path``: its reps
    (``pin_levels`` of them for a ``pin_zero`` spec), or the static minima."""
    if spec.dynamic:
        c = train_params["reps"][path]
        return pin_levels(c) if spec.pin_zero else c
    leaf = named_leaves(train_params["model"])[path]
    return jnp.asarray(spec_static_levels(spec, np.shape(leaf), path))


def spec_static_levels(spec: QuantSpec, shape: Sequence[int], path: str = "") -> np.ndarray:
    """The float64 minima of a resolved static spec for a leaf of ``shape``: (K,), or
    (G, K) when grouped; a ``pin_zero`` spec's zero level is exactly 0.0."""
    if spec.lo is None:
        raise ValueError(f"spec for {path!r} has no interval; resolve it with attach()")
    if spec.group_size is not None:
        c = grouped_static_levels(spec, shape, path)
    else:
        c = static_levels(spec.regularizer, spec.k, spec.lo, spec.hi)
    return with_zero(c) if spec.pin_zero else c


def grouped_static_levels(spec: QuantSpec, shape: Sequence[int], path: str = "") -> np.ndarray:
    """``(G, K)`` float64 minima of a grouped static spec on a leaf of ``shape``."""
    lo, hi = group_bounds(spec, num_groups(spec, shape, path))
    return registry.get(spec.regularizer).levels(spec.k, lo[:, None], hi[:, None])


def check_tree(train_params: Any, specs: Mapping[str, QuantSpec]) -> dict[str, Any]:
    """Validate ``train_params`` against ``specs``; return the model's named leaves.

    Other top-level keys (e.g. learnable range-regularizer parameters) are allowed.
    Raises ValueError naming the first mismatch: not a dict with "model" and "reps",
    a spec without its leaf, a dynamic spec without reps of shape ``(k,)`` (grouped:
    ``(G, k)``), a ``group_size`` that does not divide the leaf's output channels, or
    reps for a path that has no dynamic spec.
    """
    if not isinstance(train_params, Mapping) or not {"model", "reps"} <= set(train_params):
        got = sorted(train_params) if isinstance(train_params, Mapping) else type(train_params)
        raise ValueError(
            f'train_params must be a dict with keys "model" and "reps" (see attach), got {got}'
        )
    if not specs:
        raise ValueError("specs is empty: select at least one leaf (see make_specs)")
    leaves = named_leaves(train_params["model"])
    reps = train_params["reps"]
    for path, spec in specs.items():
        if path not in leaves:
            raise ValueError(f"specs name a leaf that the model does not have: {path!r}")
        groups = num_groups(spec, np.shape(leaves[path]), path)
        want = (spec.k,) if groups is None else (groups, spec.k)
        if spec.dynamic:
            if path not in reps:
                raise ValueError(f"reps tree does not match specs: no representatives for {path!r}")
            if tuple(reps[path].shape) != want:
                raise ValueError(
                    f"reps tree does not match specs: reps[{path!r}] has shape "
                    f"{tuple(reps[path].shape)}, expected {want}"
                )
        elif spec.lo is None:
            raise ValueError(f"spec for {path!r} has no interval; resolve it with attach()")
        elif groups is not None:
            group_bounds(spec, groups)
    extra = [p for p in reps if p not in specs or not specs[p].dynamic]
    if extra:
        raise ValueError(
            f"reps tree does not match specs: reps for paths without a dynamic spec: {extra}"
        )
    return leaves
