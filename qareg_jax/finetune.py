"""Fine-tuning the levels with every selected weight kept exactly on its own.

After quantization-aware training, :func:`qareg_jax.snap.snap` replaces every
selected weight by its nearest level ("pre-tuning" accuracy).
:func:`quantized_finetune` then trains the levels with every selected weight kept
exactly on its level ("post-tuning"): the gradient of a level is the sum of the
gradients of the weights assigned to it (sHAM "retraining", docs/references.md section 2);
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

:func:`regularize_then_finetune` carries a whole run (training, snapping,
fine-tuning) in one transformation whose phase follows its update count, so one
jitted step serves the whole run.
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
from .codebook import (
    QuantSpec,
    assign_levels,
    check_tree,
    level_sums,
    pin_levels,
    pin_mask,
    spec_static_levels,
    take_levels,
)
from .nearest_level import assign
from .paths import map_named, named_leaves, replace_leaves

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
    """Validate; return the model's named leaves and the ``(K,)`` levels of each selected leaf
    (``(G, K)`` for a grouped spec).

    A static leaf uses its reps when the tree has them (a snapped tree), else
    its static levels in the weight's dtype; ``need_reps`` makes the latter an error.

    Raises:
      ValueError: the tree does not match the specs, or ``need_reps`` and a static
        leaf has no reps.
      TypeError: a selected weight or its reps is not floating point, or their dtypes
        differ.
    """
    reps = train_params.get("reps") if isinstance(train_params, Mapping) else None
    reps = reps if isinstance(reps, Mapping) else {}
    with_reps = {p for p, s in specs.items() if not s.dynamic and p in reps}
    leaves = check_tree(train_params, {**specs, **finetune_specs({p: specs[p] for p in with_reps})})
    levels: dict[str, Array] = {}
    for path, spec in specs.items():
        w = R.check_float(leaves[path], f'selected weight train_params["model"] {path!r}')
        if path in reps:
            c = R.check_float(reps[path], f'train_params["reps"][{path!r}]')
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
            c = jnp.asarray(spec_static_levels(spec, w.shape, path), w.dtype)
        levels[path] = pin_levels(c) if spec.pin_zero else c
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
      assignments: shaped like ``params["model"]``: at each selected leaf the index
        of each weight's representative (the weight's shape, an unsigned dtype), at
        every other leaf ``optax.MaskedNode()`` (as in ``optax.masked`` states), so
        it shards, maps and checkpoints like the params. Fixed at init.
        :func:`assignments_by_path` gives ``{path: indices}``.
      inner_state: the inner optimizer's state.
    """

    assignments: Any
    inner_state: optax.OptState


def _assignment_tree(model: Any, assignments: Mapping[str, Array]) -> Any:
    """``model``'s tree with ``assignments[path]`` at selected leaves, ``MaskedNode`` elsewhere."""
    return map_named(lambda path, _: assignments.get(path, optax.MaskedNode()), model)


def assignments_by_path(state: optax.OptState) -> dict[str, Array]:
    """``{path: indices}`` of the one :class:`QuantizedFinetuneState` inside ``state``.

    Args:
      state: a :class:`QuantizedFinetuneState`, or any optimizer state holding
        exactly one (an ``optax.chain``'s tuple, a :class:`RegularizeThenFinetuneState`).

    Returns:
      The assignments keyed by the selected leaves' paths, each of its weight's shape.

    Raises:
      ValueError: ``state`` holds no or several fine-tuning states.
    """

    def is_ft(x: Any) -> bool:
        return isinstance(x, QuantizedFinetuneState)

    found = [s for s in jax.tree.leaves(state, is_leaf=is_ft) if is_ft(s)]
    if len(found) != 1:
        raise ValueError(f"state must hold exactly one QuantizedFinetuneState, found {len(found)}")
    return named_leaves(found[0].assignments)


def _checked_updates(params: Any, updates: Any, specs: Mapping[str, QuantSpec]) -> Any:
    """``updates`` in the structure of ``params``, refused (ValueError) when its top-level
    keys differ or it lacks a reps entry of a selected leaf."""
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
    return updates


def _rep_grads(
    specs: Mapping[str, QuantSpec],
    grads: Mapping[str, Array],
    reps: Mapping[str, Array],
    assignments: Mapping[str, Array],
    levels: Mapping[str, Array],
    rep_grad: str,
) -> dict[str, Array]:
    """Each rep's own gradient plus the sum (or mean) of its weights' gradients."""
    out = dict(reps)
    for path in specs:
        g, a = grads[path], assignments[path].astype(jnp.int32)
        cd = jnp.promote_types(g.dtype, jnp.float32)
        # Scatter-add with N-d indices: no ravel, so a kernel sharded over a mesh
        # axis is not gathered onto every device. A grouped leaf sums per group.
        shape = levels[path].shape
        total = level_sums(g.astype(cd), a, shape)
        if rep_grad == "mean":
            count = level_sums(jnp.ones(a.shape, cd), a, shape)
            total = total / jnp.maximum(count, 1)
        r = out[path]
        total = (r.astype(cd) + total).astype(r.dtype)
        # A pinned zero level gets no gradient, so the inner optimizer leaves it at 0.
        out[path] = jnp.where(pin_mask(levels[path]), 0, total) if specs[path].pin_zero else total
    return out


def _exact_updates(
    specs: Mapping[str, QuantSpec],
    leaves: Mapping[str, Array],
    levels: Mapping[str, Array],
    rep_inner: Mapping[str, Array],
    assignments: Mapping[str, Array],
) -> tuple[dict[str, Array], dict[str, Array]]:
    """``(rep updates, weight updates)`` that keep every weight bitwise on its rep.

    New rep values t = c + u_c as optax.apply_updates would compute them. Reps get
    t - c and weights t[a] - w: only subtractions and additions of the same values,
    so a weight on its rep (w == c[a]) lands bitwise where the rep does however XLA
    fuses them. Returning u_c and u_c[a] instead breaks when XLA contracts
    ``c + lr * m`` into an FMA in one place and not the other. A leaf with weights
    off their reps (not snapped) holds its reps still and moves those weights onto
    them: t - w is exact once w is near t, so this takes one or two updates (a few
    for levels far below the weights' scale).
    """
    rep_updates, weight_updates = {}, {}
    for path in specs:
        w, c, u_c = leaves[path], levels[path], rep_inner[path]
        if specs[path].pin_zero:  # whatever the inner transform adds (e.g. noise)
            u_c = jnp.where(pin_mask(c), 0, u_c)
        a = assignments[path]
        off = jnp.any(_bits(w) != _bits(take_levels(c, a)))
        t = jnp.where(off, c, jnp.asarray(c + u_c).astype(c.dtype))
        rep_updates[path] = t - c
        weight_updates[path] = take_levels(t, a) - w
    return rep_updates, weight_updates


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
            path: assign_levels(leaves[path], levels[path], index_dtype=index_dtypes[path])
            for path in specs
        }
        return QuantizedFinetuneState(
            _assignment_tree(params["model"], assignments), inner.init(params)
        )

    def update_fn(
        updates: Any, state: QuantizedFinetuneState, params: Any = None, **extra_args: Any
    ) -> tuple[Any, QuantizedFinetuneState]:
        if params is None:
            raise ValueError("quantized_finetune needs params: call update(updates, state, params)")
        leaves, levels = leaves_and_levels(params, specs, need_reps=True)
        updates = _checked_updates(params, updates, specs)
        assignments = named_leaves(state.assignments)
        grads = named_leaves(updates["model"])
        rep_grads = _rep_grads(specs, grads, updates["reps"], assignments, levels, rep_grad)

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
        # t - c for the reps, t[a] - w for the weights (why: _exact_updates).
        rep_updates, weight_updates = _exact_updates(
            specs, leaves, levels, inner_updates["reps"], assignments
        )
        out = {key: zero_fixed(key, tree) for key, tree in inner_updates.items()}
        out["model"] = replace_leaves(out["model"], weight_updates)
        out["reps"] = rep_updates
        return _like(params, out), QuantizedFinetuneState(state.assignments, inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class RegularizeThenFinetuneState(NamedTuple):
    """State of :func:`regularize_then_finetune`.

    Attributes:
      count: int32 scalar, the number of updates so far.
      snapped: bool scalar, True once the snapping update has run: every gradient
        given from then on is a fine-tuning gradient (see :func:`is_finetuning`).
      train_state: ``train_tx``'s state (frozen after the switch).
      finetune_state: the :class:`QuantizedFinetuneState` of ``finetune_tx``;
        placeholder values until the switch, set there from the snapped tree.
    """

    count: Array
    snapped: Array
    train_state: optax.OptState
    finetune_state: QuantizedFinetuneState


def is_finetuning(state: optax.OptState) -> Array:
    """Whether the :func:`regularize_then_finetune` inside ``state`` has snapped.

    Use it to drop the penalty from the loss once fine-tuning starts (its
    gradient would otherwise pull the representatives)::

        lam_t = jnp.where(is_finetuning(opt_state), 0.0, lam)

    Args:
      state: a :class:`RegularizeThenFinetuneState` or any optimizer state holding
        exactly one.

    Returns:
      A bool scalar (traceable).

    Raises:
      ValueError: ``state`` holds no or several such states.
    """

    def is_rtf(x: Any) -> bool:
        return isinstance(x, RegularizeThenFinetuneState)

    found = [s for s in jax.tree.leaves(state, is_leaf=is_rtf) if is_rtf(s)]
    if len(found) != 1:
        raise ValueError(
            f"state must hold exactly one RegularizeThenFinetuneState, found {len(found)}"
        )
    return found[0].snapped


def regularize_then_finetune(
    train_tx: optax.GradientTransformation,
    finetune_tx: optax.GradientTransformation,
    specs: Mapping[str, QuantSpec],
    snap_at: int,
    *,
    rep_grad: str = "sum",
    train_unselected: bool = True,
    index_dtype: Any = None,
) -> optax.GradientTransformationExtraArgs:
    """A whole run in one transformation: train, snap at update ``snap_at``, fine-tune.

    Over the ``{"model", "reps"}`` tree of ``codebook.attach``:

    - updates ``0 .. snap_at - 1``: ``train_tx`` (regularized training; the penalty
      stays in the user's loss);
    - updates ``snap_at`` and ``snap_at + 1`` snap (their gradients are not used):
      every selected weight lands bitwise on its nearest representative, as
      :func:`qareg_jax.snap.snap` puts it; everything else holds still. One update
      cannot always do it (``w + (c - w)`` misses ``c`` by an ulp for some weights
      when ``|c| < |w| / 2``): the first moves those weights to zero instead, the
      second adds ``c`` to them. Between the two those weights read zero: evaluate
      the snapped model after update ``snap_at + 1``;
    - updates ``snap_at + 2 ..``: :func:`quantized_finetune` with ``finetune_tx``
      (weights kept exactly on their representatives, which train), its state
      initialized on the snapped tree, so its schedules count from there.

    ``snap_at + 2 + n`` updates give what ``snap_at`` steps of ``train_tx``,
    ``snap`` and ``n`` steps of ``quantized_finetune(finetune_tx)`` give: the same
    assignments, bitwise the same values op by op; compiled, within an ulp or so
    per step, as XLA fuses the ``lax.switch`` branches otherwise than separate
    steps. The phase is chosen by ``lax.switch`` on the state's counter: a jitted
    step compiles once and needs no change at the switch. The state holds both
    optimizers' states throughout.

    The loss: the transformation cannot tell the penalty's gradient from the
    task's. Scale the penalty to zero once :func:`is_finetuning` is true
    (``jnp.where(is_finetuning(opt_state), 0.0, lam)``), as the two-step path
    fine-tunes the task loss alone. (With ``"nearest"`` the penalty's gradient is
    zero on snapped weights anyway.)

    Static specs (sine, cosine) are not supported: the tree keeps its structure
    through the run, and their leaves have no representatives before snapping.
    Use ``snap`` and ``quantized_finetune`` for them.

    Must be the LAST transformation of an ``optax.chain``, its updates applied
    with ``optax.apply_updates``.

    Args:
      train_tx: the training optimizer (schedules, chains, extra args all fine).
      finetune_tx: the fine-tuning optimizer of the representatives and the
        unselected leaves (see :func:`quantized_finetune`).
      specs: the resolved specs, all dynamic; static Python data.
      snap_at: number of training updates before the snap; a Python int >= 0.
      rep_grad, train_unselected, index_dtype: as for :func:`quantized_finetune`.

    Returns:
      An ``optax.GradientTransformationExtraArgs`` whose state is a
      :class:`RegularizeThenFinetuneState`; ``update`` needs ``params``.

    Raises:
      TypeError: ``snap_at`` is not an int.
      ValueError: ``snap_at < 0``, a spec is static, or as :func:`quantized_finetune`.
    """
    snap_at = _checked_snap_at(snap_at)
    specs = _checked_dynamic(specs)
    finetune = quantized_finetune(
        finetune_tx,
        specs,
        rep_grad=rep_grad,
        train_unselected=train_unselected,
        index_dtype=index_dtype,
    )
    train_tx = optax.with_extra_args_support(train_tx)
    index_dtypes = {path: _checked_index_dtype(spec.k, index_dtype) for path, spec in specs.items()}

    def init_fn(params: Any) -> RegularizeThenFinetuneState:
        leaves_and_levels(params, specs, need_reps=True)
        # Placeholder fine-tuning state of the right shapes; the switch replaces it.
        return RegularizeThenFinetuneState(
            count=jnp.zeros([], jnp.int32),
            snapped=jnp.zeros([], bool),
            train_state=train_tx.init(params),
            finetune_state=finetune.init(params),
        )

    def snap_updates(params: Any) -> tuple[Any, Any]:
        """First snapping update (each weight onto its nearest rep, or zero); the snapped tree."""
        moves, on_levels = _snap_moves(params, specs, index_dtypes)
        snapped = {**params, "model": replace_leaves(params["model"], on_levels)}
        return _zero_but_selected(params, moves), _like(params, snapped)

    def settle_updates(params: Any, ft_state: QuantizedFinetuneState) -> Any:
        """Second snapping update: ``c[a] - w``, exact now that ``w`` is ``c[a]`` or zero."""
        leaves, levels = leaves_and_levels(params, specs, need_reps=True)
        assignments = named_leaves(ft_state.assignments)
        moves = {p: take_levels(levels[p], assignments[p]) - leaves[p] for p in specs}
        return _zero_but_selected(params, moves)

    def update_fn(
        updates: Any,
        state: RegularizeThenFinetuneState,
        params: Any = None,
        **extra_args: Any,
    ) -> tuple[Any, RegularizeThenFinetuneState]:
        if params is None:
            raise ValueError(
                "regularize_then_finetune needs params: call update(updates, state, params)"
            )

        def train(operands: tuple) -> tuple:
            grads, state, params = operands
            out, train_state = train_tx.update(grads, state.train_state, params, **extra_args)
            return out, train_state, state.finetune_state

        def snap_step(operands: tuple) -> tuple:
            _, state, params = operands
            out, snapped = snap_updates(params)
            return out, state.train_state, finetune.init(snapped)

        def settle(operands: tuple) -> tuple:
            _, state, params = operands
            out = settle_updates(params, state.finetune_state)
            return out, state.train_state, state.finetune_state

        def tune(operands: tuple) -> tuple:
            grads, state, params = operands
            out, ft_state = finetune.update(grads, state.finetune_state, params, **extra_args)
            return out, state.train_state, ft_state

        phase = jnp.clip(state.count - snap_at + 1, 0, 3)  # train, snap, settle, tune
        out, train_state, ft_state = _promoted_switch(
            phase, (train, snap_step, settle, tune), (updates, state, params)
        )
        new_state = RegularizeThenFinetuneState(
            count=optax.safe_increment(state.count),
            snapped=state.count >= snap_at,
            train_state=train_state,
            finetune_state=ft_state,
        )
        return out, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def _checked_snap_at(snap_at: Any) -> int:
    if isinstance(snap_at, bool) or not isinstance(snap_at, int | np.integer):
        raise TypeError(f"snap_at must be a Python int, got {type(snap_at).__name__}")
    if snap_at < 0:
        raise ValueError(f"snap_at must be >= 0, got {snap_at}")
    return int(snap_at)


def _checked_dynamic(specs: Mapping[str, QuantSpec]) -> dict[str, QuantSpec]:
    specs = dict(specs)
    static = sorted(path for path, spec in specs.items() if not spec.dynamic)
    if static:
        raise ValueError(
            f"regularize_then_finetune needs dynamic specs; {static} are static (sine, "
            "cosine) and have no representatives in the tree until snap() adds them: use "
            "snap() and quantized_finetune() for these"
        )
    return specs


def _zero_but_selected(params: Any, moves: Mapping[str, Array]) -> Any:
    """Zero updates for ``params``, with ``moves[path]`` at the selected weights."""
    zeros = jax.tree.map(jnp.zeros_like, params)
    return _like(params, {**zeros, "model": replace_leaves(zeros["model"], moves)})


def _snap_moves(
    params: Any, specs: Mapping[str, QuantSpec], index_dtypes: Mapping[str, Any]
) -> tuple[dict[str, Array], dict[str, Array]]:
    """Per path: the move onto the nearest representative (or to zero), and that level."""
    leaves, levels = leaves_and_levels(params, specs, need_reps=True)
    moves, on_levels = {}, {}
    for path in specs:
        w, c = leaves[path], levels[path]
        target = take_levels(c, assign_levels(w, c, index_dtype=index_dtypes[path]))
        move = target - w
        # w + (target - w) misses target by an ulp for some weights (|target| < |w| / 2
        # loses bits in the subtraction); those go to zero instead (w + -w == 0
        # exactly), from where the settling update's target - 0 lands exactly.
        lands = _bits((w + move).astype(w.dtype)) == _bits(target)
        moves[path] = jnp.where(lands, move, -w)
        on_levels[path] = target
    return moves, on_levels


def _promoted_switch(phase: Array, branches: tuple, operands: tuple) -> Any:
    """``lax.switch`` over branches whose outputs differ only in dtype.

    An optimizer's f32 updates for bf16 params, say: ``lax.switch`` needs one dtype
    per leaf, and promoting to the common one is exact.
    """
    shapes = [jax.eval_shape(branch, operands) for branch in branches]
    dtypes = jax.tree.map(lambda *s: jnp.result_type(*(x.dtype for x in s)), *shapes)

    def promoted(branch: Any) -> Any:
        return lambda operands: jax.tree.map(lambda x, d: x.astype(d), branch(operands), dtypes)

    return jax.lax.switch(phase, [promoted(b) for b in branches], operands)
