"""Fine-tuning the levels with every selected weight kept exactly on its own.

After quantization-aware training, :func:`qareg_jax.snap.snap` replaces every
selected weight by its nearest level ("pre-tuning" accuracy).
:func:`quantized_finetune` then trains the levels with every selected weight kept
exactly on its level ("post-tuning"): the gradient of a level is the sum of the
gradients of the weights assigned to it (sHAM "retraining", PAPERS.md section 2);
the assignments never change::

    snapped, assignments = snap(train_params, specs)
    tx = optax.chain(
        optax.clip_by_global_norm(1.0),
        quantized_finetune(optax.sgd(1e-3, momentum=0.9, nesterov=True), specs),  # last!
    )
    opt_state = tx.init(snapped)
    grads = jax.grad(loss)(snapped)                  # loss of snapped["model"]
    updates, opt_state = tx.update(grads, opt_state, snapped)
    snapped = optax.apply_updates(snapped, updates)  # weights still on their reps

After snapping, every selected leaf has representatives in ``"reps"``, static
(sine, cosine) ones included: their static levels become trainable. Treat the
specs as all-dynamic from then on; :func:`finetune_specs` gives such specs for
``codebook.check_tree`` / ``levels`` / ``penalty``. ``snap`` and
``quantized_finetune`` accept the training specs as they are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import regularizers as R
from ._tree import map_named, named_leaves, replace_leaves
from .codebook import QuantSpec, check_tree
from .snap import assign

Array = jax.Array
REP_GRADS = ("sum", "mean")


def _bits(x: Array) -> Array:
    """The bit pattern of a float array, for bitwise comparisons (-0.0 != 0.0)."""
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))


def _checked_index_dtype(k: int, index_dtype: Any) -> np.dtype:
    """The dtype :func:`assign` gives ``K = k`` levels (raising its errors), traced abstractly."""
    w = jax.ShapeDtypeStruct((1,), jnp.float32)
    levels = jax.ShapeDtypeStruct((k,), jnp.float32)
    return jax.eval_shape(lambda w, c: assign(w, c, index_dtype=index_dtype), w, levels).dtype


def finetune_specs(specs: Mapping[str, QuantSpec]) -> dict[str, QuantSpec]:
    """The specs of a snapped tree: static (sine, cosine) specs become "nearest".

    A snapped tree holds trainable representatives for every selected leaf; with
    these specs ``codebook.check_tree``, ``levels`` and ``penalty`` read them.
    """
    return {
        path: spec if spec.dynamic else dataclasses.replace(spec, regularizer="nearest")
        for path, spec in specs.items()
    }


def leaves_and_levels(
    train_params: Any, specs: Mapping[str, QuantSpec], *, need_reps: bool
) -> tuple[dict[str, Any], dict[str, Array]]:
    """Validate; return the model's named leaves and the ``(K,)`` levels of each selected leaf.

    A static leaf uses its reps when the tree has them (a snapped tree), else
    its static levels in the weight's dtype; ``need_reps`` makes the latter an error.

    Raises:
      ValueError: the tree does not match the specs, or ``need_reps`` and a static
        leaf has no reps.
      TypeError: a leaf's reps and weight dtypes differ.
    """
    reps = train_params.get("reps") if isinstance(train_params, Mapping) else None
    reps = reps if isinstance(reps, Mapping) else {}
    with_reps = {p for p, s in specs.items() if not s.dynamic and p in reps}
    leaves = check_tree(train_params, {**specs, **finetune_specs({p: specs[p] for p in with_reps})})
    levels: dict[str, Array] = {}
    for path, spec in specs.items():
        w = R.check_float(leaves[path], f"selected leaf {path!r}")
        if path in reps:
            c = reps[path]
            if c.dtype != w.dtype:
                raise TypeError(
                    f"reps[{path!r}] has dtype {c.dtype} but its weight has dtype {w.dtype}; "
                    "they must match (attach() creates reps in the weight's dtype: cast "
                    "params before attaching, or cast the reps with the weights)"
                )
        elif need_reps:
            raise ValueError(
                f"no representatives for the static ({spec.regularizer}) leaf {path!r}: "
                "call snap() first and fine-tune the tree it returns"
            )
        else:
            c = jnp.asarray(R.static_levels(spec.regularizer, spec.k, spec.lo, spec.hi), w.dtype)
        levels[path] = c
    return leaves, levels


def _like(params: Any, updates: Any) -> Any:
    """``updates`` rebuilt with the pytree containers of ``params`` (optax's convention).

    ``nnx.Optimizer`` passes ``nnx.State`` trees, whose nodes flatten as plain dicts;
    the update is assembled from dicts and re-containered here. Trees whose leaf
    names differ are returned as they are, for the key checks to report.
    """
    p_def, u_def = jax.tree.structure(params), jax.tree.structure(updates)
    if p_def == u_def:
        return updates
    named = named_leaves(updates)
    names = list(named_leaves(params))
    if set(named) != set(names):
        return updates
    return jax.tree.unflatten(p_def, [named[name] for name in names])


class QuantizedFinetuneState(NamedTuple):
    """State of :func:`quantized_finetune`.

    Attributes:
      assignments: ``{path: indices}``, each of its weight's shape; fixed at init.
      inner_state: the inner optimizer's state.
    """

    assignments: dict[str, Array]
    inner_state: optax.OptState


def quantized_finetune(
    inner: optax.GradientTransformation,
    specs: Mapping[str, QuantSpec],
    *,
    rep_grad: str = "sum",
    train_unselected: bool = True,
    index_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """Fine-tune the representatives with every selected weight kept exactly on its own.

    Wraps ``inner`` (any optax transformation over the ``{"model", "reps"}``
    tree: schedules, ``optax.chain``, ``optax.partition`` / ``optax.masked`` to
    give reps and weights different settings; extra args are passed through).
    ``init`` assigns each selected weight to its nearest representative; the
    assignments never change. Each ``update``:

    1. adds to the gradient of representative ``k`` the sum (``rep_grad="mean"``:
       the mean) of the gradients of the weights assigned to it, and zeroes the
       selected weights' own gradients;
    2. runs ``inner`` (unselected leaves, e.g. biases and norm scales, train with
       it, or get zero updates when ``train_unselected=False``);
    3. with ``t = c + u_c`` the reps' new values after the inner update ``u_c``,
       returns ``t - c`` for the reps and ``t[a] - w`` for the selected weights:
       under ``optax.apply_updates`` a weight on its rep (``w == c[a]``, as after
       :func:`snap`) goes through the same additions and subtractions as the rep
       and lands on it bitwise. (``u_c`` and ``u_c[a]`` would not do: XLA may
       contract the rep's ``c + lr * m`` into an FMA and the weight's not.) A rep
       lands on ``t`` up to one rounding (exactly when ``|u_c| <= |c|``). If a
       leaf has weights off their reps (``init`` got an unsnapped tree), its reps
       hold still and its weights move onto them; exact after one or two updates
       (a few more for levels far below the weights' scale). Call :func:`snap`
       first to train the reps from the first update.

    Must be the LAST transformation of an ``optax.chain`` (anything after it that
    changes the updates breaks exactness) and its updates must be applied with
    ``optax.apply_updates``. The inner optimizer also keeps state for the
    selected weights (their gradients are zero); mask them out of it with
    ``optax.masked`` to save memory.

    Args:
      inner: the optimizer of the representatives and of the unselected leaves.
      specs: the resolved specs of the selected leaves (training specs as they
        are, or :func:`finetune_specs`); static Python data.
      rep_grad: "sum" (the sHAM rule) or "mean" over each representative's weights.
      train_unselected: whether leaves without a spec are trained (also those under
        top-level keys other than "model" and "reps").
      index_dtype: dtype of the stored assignments; default the smallest unsigned one.

    Returns:
      An ``optax.GradientTransformationExtraArgs``; its state is a
      :class:`QuantizedFinetuneState`. ``init`` and ``update`` need a tree with
      representatives for every selected leaf (from :func:`snap`); ``update``
      needs ``params``.
    """
    if rep_grad not in REP_GRADS:
        raise ValueError(f"rep_grad must be one of {list(REP_GRADS)}, got {rep_grad!r}")
    specs = dict(specs)
    index_dtypes = {path: _checked_index_dtype(spec.k, index_dtype) for path, spec in specs.items()}
    inner = optax.with_extra_args_support(inner)

    def init_fn(params: Any) -> QuantizedFinetuneState:
        leaves, levels = leaves_and_levels(params, specs, need_reps=True)
        assignments = {
            path: assign(leaves[path], levels[path], index_dtype=index_dtypes[path])
            for path in specs
        }
        return QuantizedFinetuneState(assignments, inner.init(params))

    def update_fn(
        updates: Any, state: QuantizedFinetuneState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, QuantizedFinetuneState]:
        if params is None:
            raise ValueError("quantized_finetune needs params: call update(updates, state, params)")
        leaves, levels = leaves_and_levels(params, specs, need_reps=True)
        if not isinstance(updates, Mapping) or set(updates) != set(params):
            raise ValueError(
                f"updates must have the top-level keys of params {sorted(params)}, got "
                f"{sorted(updates) if isinstance(updates, Mapping) else type(updates)}"
            )
        updates = _like(params, updates)
        missing = [path for path in specs if path not in updates["reps"]]
        if missing:
            raise ValueError(
                f"updates have no reps entries for {missing}: take gradients with respect "
                "to the whole snapped tree"
            )
        grads = named_leaves(updates["model"])
        rep_grads = dict(updates["reps"])
        for path, spec in specs.items():
            g, a = grads[path], state.assignments[path].astype(jnp.int32)
            cd = jnp.promote_types(g.dtype, jnp.float32)
            # Scatter-add with N-d indices: no ravel, so a kernel sharded over a mesh
            # axis is not gathered onto every device.
            total = jnp.zeros(spec.k, cd).at[a].add(g.astype(cd))
            if rep_grad == "mean":
                count = jnp.zeros(spec.k, cd).at[a].add(jnp.ones(a.shape, cd))
                total = total / jnp.maximum(count, 1)
            r = rep_grads[path]
            rep_grads[path] = (r.astype(cd) + total).astype(r.dtype)

        def zero_fixed(key: str, tree: Any) -> Any:
            """Top-level entry ``key`` with its selected (and frozen) leaves zeroed."""

            def leaf(path: str, u: Array) -> Array:
                keep = train_unselected and not (key == "model" and path in specs)
                return u if keep else jnp.zeros_like(u)

            return map_named(leaf, tree)

        # Top-level entries besides "model" (e.g. range-regularizer parameters) count as
        # unselected leaves.
        inner_grads = {key: zero_fixed(key, tree) for key, tree in updates.items()}
        inner_grads["reps"] = rep_grads
        inner_grads = _like(params, inner_grads)
        inner_updates, inner_state = inner.update(
            inner_grads, state.inner_state, params, **extra_args
        )
        # New rep values t = c + u_c as optax.apply_updates would compute them. Reps get
        # t - c and weights t[a] - w: only subtractions and additions of the same
        # values, so a weight on its rep (w == c[a]) lands bitwise where the rep does
        # however XLA fuses them. Returning u_c and u_c[a] instead breaks when XLA
        # contracts ``c + lr * m`` into an FMA in one place and not the other.
        # A leaf with weights off their reps (not snapped) holds its reps still and
        # moves those weights onto them: t - w is exact once w is near t, so this
        # takes one or two updates (a few for levels far below the weights' scale).
        rep_updates, weight_updates = {}, {}
        for path in specs:
            w, c, u_c = leaves[path], levels[path], inner_updates["reps"][path]
            a = state.assignments[path]
            off = jnp.any(_bits(w) != _bits(c[a]))
            t = jnp.where(off, c, jnp.asarray(c + u_c).astype(c.dtype))
            rep_updates[path] = t - c
            weight_updates[path] = t[a] - w

        out = {key: zero_fixed(key, tree) for key, tree in inner_updates.items()}
        out["model"] = replace_leaves(out["model"], weight_updates)
        out["reps"] = rep_updates
        return _like(params, out), QuantizedFinetuneState(state.assignments, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
