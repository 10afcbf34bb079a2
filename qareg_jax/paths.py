"""Path helpers shared by every module: a leaf is named by its '/'-joined key path.

``{"params": {"Conv_0": {"kernel": w}}}`` names ``w`` as ``"params/Conv_0/kernel"``.
Flax NNX states wrap leaves in ``Variable`` objects whose flattening adds a
trailing ``value`` key; it is dropped so that linen and NNX trees give the same
names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax

_WRAPPER_KEYS = ("value", "raw_value")


def _key_str(key: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_str(keypath: tuple[Any, ...]) -> str:
    """'/'-joined name of a key path from ``jax.tree_util.tree_flatten_with_path``."""
    parts = [_key_str(k) for k in keypath]
    while len(parts) > 1 and parts[-1] in _WRAPPER_KEYS:
        parts.pop()
    return "/".join(parts)


def named_leaves(tree: Any) -> dict[str, Any]:
    """All leaves of ``tree`` keyed by their path string, in flattening order."""
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out: dict[str, Any] = {}
    for keypath, leaf in flat:
        name = path_str(keypath)
        if name in out:
            raise ValueError(f"two leaves share the path name {name!r}; rename one of them")
        out[name] = leaf
    return out


def leaves_naming(tree: Any, paths: Any, what: str) -> dict[str, Any]:
    """``named_leaves(tree)``, after checking that every path in ``paths`` is among them
    (else a ``ValueError`` listing the missing ones, ``what`` naming the argument)."""
    leaves = named_leaves(tree)
    missing = [p for p in paths if p not in leaves]
    if missing:
        raise ValueError(f"{what} name leaves that params does not have: {missing}")
    return leaves


def replace_leaves(tree: Any, new: Mapping[str, Any]) -> Any:
    """A copy of ``tree`` with the leaves named in ``new`` replaced (others kept)."""
    unknown = set(new) - set(named_leaves(tree))
    if unknown:
        raise ValueError(f"paths not in the tree: {sorted(unknown)}")
    return jax.tree_util.tree_map_with_path(lambda kp, leaf: new.get(path_str(kp), leaf), tree)


def map_named(fn: Callable[[str, Any], Any], tree: Any) -> Any:
    """``tree_map`` whose function also receives the leaf's path string."""
    return jax.tree_util.tree_map_with_path(lambda kp, leaf: fn(path_str(kp), leaf), tree)
