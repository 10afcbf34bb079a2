"""Quantize the selected leaves of a parameter tree with one baseline, layer by layer."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ..codebook import assign_levels, groups_for, take_levels, to_groups
from ..paths import named_leaves, replace_leaves
from ..validation import check_k_fits
from .binary import binary_ls
from .common import check_k, host_float, index_dtype
from .cws import cws
from .ecsq import ecsq
from .kmeans_core import kmeans_1d_rows
from .pws import PWS_SEED_MSG, pws
from .uq import uq

QUANTIZERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "kmeans": cws,
    "cws": cws,
    "uniform": uq,
    "uq": uq,
    "pws": pws,
    "ecsq": ecsq,
    "binary": binary_ls,
}


def _layer_seed(seed: Any, path: str) -> int:
    """Independent per-layer seed from a global seed and the layer's path (order-free)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    ss = np.random.SeedSequence([int(seed), zlib.crc32(path.encode())])
    return int(ss.generate_state(1)[0])


def quantize_tree(
    params: Any,
    paths: Sequence[str],
    k: int | Mapping[str, int],
    method: str | Callable[..., tuple[np.ndarray, np.ndarray]] = "kmeans",
    *,
    group_size: int | None = None,
    pin_zero: bool = False,
    **kw: Any,
) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Quantize the leaves named in ``paths`` with one method, layer by layer.

    ``k`` is one int or a {path: int} dict covering every path. ``method`` is a key
    of :data:`QUANTIZERS` or a callable ``(w, k, **kw) -> (codebook, assignments)``.
    For ``"pws"`` the ``seed`` is combined with each path into an independent layer
    seed. Everything is validated before any layer is quantized: a leaf that is not
    float, empty, holds NaN/inf, or has fewer weights than its k is refused by name.

    Returns ``(quantized_params, {path: (codebook (k,), assignments leaf.shape)})``:
    quantized leaves are ``codebook[assignments]`` in the leaf's dtype (jax arrays
    for jax leaves), others are untouched.

    ``group_size`` (methods "kmeans"/"cws" only): one codebook per ``group_size``
    consecutive output channels (the leaf's last axis, as ``QuantSpec.group_size``):
    codebooks of shape ``(G, k)`` from :func:`kmeans_1d_rows` (all groups of a leaf at
    once), assignments the index into the weight's own group's codebook, as
    ``snap.snap`` assigns them (``codebook.assign_levels``).

    ``pin_zero`` (methods "kmeans"/"cws" only): one level of each codebook is exactly 0.0
    and the others are k-means around it (``kmeans_1d_rows(..., pin_zero=True)``): after
    magnitude pruning, the pruned weights keep their 0 (sHAM's order: prune, then share).
    """
    fn = _quantizer(method)
    paths, leaves, ks = _paths_and_ks(params, paths, k)
    _check_method_options(fn, method, kw, group_size, pin_zero)
    groups = _check_layers(leaves, paths, ks, group_size)
    if group_size is not None or pin_zero:
        return _quantize_groups(params, leaves, groups, ks, pin_zero=pin_zero, **kw)

    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    new: dict[str, Any] = {}
    for p in paths:
        layer_kw = {**kw, "seed": _layer_seed(kw["seed"], p)} if fn is pws else kw
        codebook, assignments = fn(leaves[p], ks[p], **layer_kw)
        out[p] = (codebook, assignments)
        leaf = leaves[p]
        snapped = codebook.astype(leaf.dtype)[assignments]
        new[p] = jnp.asarray(snapped) if isinstance(leaf, jax.Array) else snapped
    return replace_leaves(params, new), out


def _quantizer(method: str | Callable[..., Any]) -> Callable[..., Any]:
    if isinstance(method, str):
        if method not in QUANTIZERS:
            raise ValueError(f"unknown method {method!r}; choose one of {sorted(QUANTIZERS)}")
        return QUANTIZERS[method]
    if callable(method):
        return method
    raise TypeError(f"method must be a name or a callable, got {type(method).__name__}")


def _paths_and_ks(
    params: Any, paths: Sequence[str], k: int | Mapping[str, int]
) -> tuple[list[str], dict[str, Any], dict[str, int]]:
    """``(paths, named leaves, {path: K})``, checked: no duplicates, every path a leaf,
    every path a valid K."""
    if isinstance(paths, str):
        raise TypeError("paths must be a list of path strings, not one string")
    paths = list(paths)
    if len(set(paths)) != len(paths):
        raise ValueError("paths contains duplicates")
    leaves = named_leaves(params)
    missing = [p for p in paths if p not in leaves]
    if missing:
        raise ValueError(f"paths not in the tree: {missing}")
    if not isinstance(k, Mapping):
        return paths, leaves, dict.fromkeys(paths, check_k(k))
    absent = [p for p in paths if p not in k]
    if absent:
        raise ValueError(f"k has no entry for paths {absent}")
    return paths, leaves, {p: check_k(k[p]) for p in paths}


def _check_method_options(
    fn: Callable[..., Any], method: Any, kw: Mapping[str, Any], group_size: Any, pin_zero: Any
) -> None:
    if fn is pws and kw.get("seed") is None:
        raise ValueError(PWS_SEED_MSG)
    if group_size is not None and fn is not cws:
        raise ValueError(
            f"group_size (grouped codebooks) supports method 'kmeans' or 'cws' only, got {method!r}"
        )
    if not isinstance(pin_zero, bool):
        raise TypeError(f"pin_zero must be True or False, got {pin_zero!r}")
    if pin_zero and fn is not cws:
        raise ValueError(f"pin_zero supports method 'kmeans' or 'cws' only, got {method!r}")


def _check_layers(
    leaves: Mapping[str, Any], paths: list[str], ks: Mapping[str, int], group_size: int | None
) -> dict[str, int | None]:
    """``{path: number of groups or None}``, after the dtype / empty / finite / k <= size
    checks of every layer, before any work."""
    groups = {}
    for p in paths:
        host_float(leaves[p], f"leaf {p!r}")
        groups[p] = groups_for(group_size, np.shape(leaves[p]), p)
        per = int(np.size(leaves[p])) // (groups[p] or 1)
        check_k_fits(ks[p], per, p if groups[p] is None else f"{p} (each of {groups[p]} groups)")
    return groups


def _quantize_groups(
    params: Any,
    leaves: Mapping[str, Any],
    groups: Mapping[str, int],
    ks: Mapping[str, int],
    pin_zero: bool = False,
    **kw: Any,
) -> tuple[Any, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """:func:`quantize_tree` with a k-means codebook (G, k) per group of each leaf (a
    leaf without groups, ``g`` None: one (k,) codebook, for ``pin_zero``)."""
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    new: dict[str, Any] = {}
    for p, g in groups.items():
        leaf = leaves[p]
        host = host_float(leaf, f"leaf {p!r}")
        rows = host.reshape(1, -1) if g is None else to_groups(host, g)
        codebook = kmeans_1d_rows(rows, ks[p], pin_zero=pin_zero, **kw).astype(np.float32)
        codebook = codebook[0] if g is None else codebook
        a = assign_levels(jnp.asarray(host), jnp.asarray(codebook), index_dtype=index_dtype(ks[p]))
        assignments = np.asarray(a)
        out[p] = (codebook, assignments)
        snapped = take_levels(codebook.astype(leaf.dtype), assignments)
        new[p] = jnp.asarray(snapped) if isinstance(leaf, jax.Array) else snapped
    return replace_leaves(params, new), out
