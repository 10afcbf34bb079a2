"""The training core: one train state, one task loss, one train step, one evaluation.

Every training loop of the project (the pipeline's phases, ``sharding.make_train_step``,
the related-methods experiment, the overhead benchmark) runs :func:`make_train_step`'s
step body, so a change here changes all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax import struct

from .. import data
from ..codebook import QuantSpec
from ..penalty import penalty

if TYPE_CHECKING:
    from ..sharding import Layout

# ``loss(params, model_state, batch, rng, step) -> (scalar loss, new model_state)`` over
# the whole train tree (``params = {"model", "reps", ...}``); ``step`` is the int32
# optimizer step (for losses that change over a phase, e.g. STE switched on late).
LossFn = Callable[
    [Any, dict[str, Any], Any, jax.Array, jax.Array], tuple[jax.Array, dict[str, Any]]
]
# ``penalty_fn(params, step) -> float32 scalar``: replaces ``penalty(params, specs, step)``.
PenaltyFn = Callable[[Any, jax.Array], jax.Array]
StepFn = Callable[["TrainState", Any], "TrainState"]


class TrainState(struct.PyTreeNode):
    """Everything a phase carries from step to step (and checkpoints).

    Attributes:
      params: the differentiated train tree, ``{"model": flax params, "reps": {path: (K,)}}``.
      opt_state: the optimizer state of ``params``.
      model_state: mutable collections outside the gradient (``{"batch_stats": ...}``;
        ``{}`` for models without any).
      key: the phase's dropout key; step ``i`` uses ``fold_in(key, i)``.
      step: int32 scalar, optimizer steps taken.
      window: ``{"task_loss", "penalty"}`` float32 sums and ``"count"`` int32 since the
        last log (the host reads them only every ``log_every`` steps).
      bad_step: int32, the first step with a non-finite loss (-1 while none).
    """

    params: Any
    opt_state: Any
    model_state: dict[str, Any]
    key: jax.Array
    step: jax.Array
    window: dict[str, jax.Array]
    bad_step: jax.Array

    def as_dict(self) -> dict[str, Any]:
        """The state as the plain dict checkpoints hold (the layout of format-1 workdirs)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def empty_window() -> dict[str, jax.Array]:
    """A zeroed loss window."""
    return {
        "task_loss": jnp.zeros((), jnp.float32),
        "penalty": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }


def task_loss(
    model: nn.Module,
    params: Any,
    model_state: Mapping[str, Any],
    batch: data.Batch,
    rng: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, Any]]:
    """Mean cross-entropy of a training batch and the updated model state (batch stats).

    Args:
      model: the flax module, applied with ``train=True``.
      params: its "params" collection.
      model_state: its other collections (updated when not empty).
      batch: ``{"image": (B, H, W, C), "label": int (B,)}``.
      rng: the dropout key; None for models without dropout.
    """
    variables = {"params": params, **model_state}
    kw: dict[str, Any] = {"train": True}
    if rng is not None:
        kw["rngs"] = {"dropout": rng}
    if model_state:
        logits, new_state = model.apply(variables, batch["image"], mutable=list(model_state), **kw)
    else:
        logits, new_state = model.apply(variables, batch["image"], **kw), model_state
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, new_state


def as_loss_fn(model_or_loss: nn.Module | LossFn) -> LossFn:
    """A module becomes :func:`task_loss` on ``params["model"]``; a callable stays as is."""
    if isinstance(model_or_loss, nn.Module):
        model = model_or_loss
        return lambda params, state, batch, rng, step: task_loss(
            model, params["model"], state, batch, rng
        )
    return model_or_loss


def train_step_fn(
    model_or_loss: nn.Module | LossFn,
    tx: optax.GradientTransformation,
    specs: Mapping[str, QuantSpec] | None = None,
    *,
    penalty_fn: PenaltyFn | None = None,
) -> Callable[[TrainState, Any], tuple[TrainState, dict[str, jax.Array]]]:
    """The un-jitted step body ``(state, batch) -> (state, metrics)``.

    The loss is the task loss plus ``penalty(params, specs, step)`` when ``specs`` is
    given, or plus ``penalty_fn(params, step)`` when that is (e.g. a penalty whose
    temperature is annealed); its gradient over the whole train tree (weights and
    representatives) goes through ``tx`` (which also freezes what it should, e.g.
    ``set_to_zero`` on frozen representatives). ``metrics`` holds this step's float32
    ``"loss"``, ``"task_loss"`` and ``"penalty"``.
    """
    loss = as_loss_fn(model_or_loss)
    if penalty_fn is None and specs:
        penalty_fn = lambda params, step: penalty(params, specs, step)  # noqa: E731

    def loss_fn(params, model_state, batch, rng, step):
        task, new_state = loss(params, model_state, batch, rng, step)
        task = jnp.asarray(task, jnp.float32)
        pen = penalty_fn(params, step) if penalty_fn else jnp.zeros((), jnp.float32)
        return task + pen, (task, pen, new_state)

    def step_fn(state: TrainState, batch: Any) -> tuple[TrainState, dict[str, jax.Array]]:
        step = state.step
        rng = jax.random.fold_in(state.key, step)
        grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
        (total, (task, pen, model_state)), grads = grad_fn(
            state.params, state.model_state, batch, rng, step
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        window = state.window
        finite = jnp.isfinite(task + pen)
        new = state.replace(
            params=optax.apply_updates(state.params, updates),
            opt_state=opt_state,
            model_state=model_state,
            step=step + 1,
            window={
                "task_loss": window["task_loss"] + task,
                "penalty": window["penalty"] + pen,
                "count": window["count"] + 1,
            },
            bad_step=jnp.where((state.bad_step < 0) & ~finite, step, state.bad_step),
        )
        return new, {"loss": total, "task_loss": task, "penalty": pen}

    return step_fn


def make_train_step(
    model_or_loss: nn.Module | LossFn,
    tx: optax.GradientTransformation,
    specs: Mapping[str, QuantSpec] | None = None,
    *,
    penalty_fn: PenaltyFn | None = None,
    layout: Layout | None = None,
    donate: bool = True,
) -> StepFn:
    """The jitted ``step(state, batch) -> state`` of :func:`train_step_fn`.

    Args:
      model_or_loss: a flax module (its cross-entropy, :func:`task_loss`) or a
        ``loss(params, model_state, batch, rng, step) -> (loss, new model_state)`` over
        the whole train tree.
      tx: the optimizer of the whole train tree.
      specs: resolved specs (static) adding the penalty, or None.
      penalty_fn: ``(params, step) -> scalar`` used instead of ``penalty(params, specs,
        step)``.
      layout: a ``sharding.Layout``: the state keeps the placement the layout gives its
        leaves and the batch is split over ``"data"`` (explicit in/out shardings,
        compiled at the first call); None: one device, shardings left to JAX.
      donate: donate the input state's buffers.
    """
    body = train_step_fn(model_or_loss, tx, specs, penalty_fn=penalty_fn)

    def step(state: TrainState, batch: Any) -> TrainState:
        return body(state, batch)[0]

    donate_argnums = (0,) if donate else ()
    if layout is None:
        return jax.jit(step, donate_argnums=donate_argnums)
    compiled: dict[Any, Callable] = {}

    def placed(state: TrainState, batch: Any) -> TrainState:
        shapes = jax.tree.map(jnp.shape, state)
        signature = (jax.tree.structure(state), tuple(jax.tree.leaves(shapes)))
        if signature not in compiled:
            shardings = layout.tree_shardings(state)
            compiled[signature] = jax.jit(
                step,
                in_shardings=(shardings, layout.batch_sharding),
                out_shardings=shardings,
                donate_argnums=donate_argnums,
            )
        return compiled[signature](state, batch)

    return placed


def make_init_fn(
    tx: optax.GradientTransformation,
) -> Callable[[Any, dict[str, Any], Any], TrainState]:
    """A jitted ``init(params, model_state, seed) -> TrainState`` at step 0.

    The dropout key is ``PRNGKey(seed)``. The state holds copies of ``params`` and
    ``model_state``: the train step donates its state, and the caller's arrays (e.g. the
    pretrained weights every stage starts from) must survive. One jitted call: eager
    optimizer initialisation would compile every ``zeros_like`` op by op.
    """

    @jax.jit
    def init(params: Any, model_state: dict[str, Any], seed: Any) -> TrainState:
        return TrainState(
            params=jax.tree.map(jnp.copy, params),
            opt_state=tx.init(params),
            model_state=jax.tree.map(jnp.copy, model_state),
            key=jax.random.PRNGKey(seed),
            step=jnp.zeros((), jnp.int32),
            window=empty_window(),
            bad_step=jnp.full((), -1, jnp.int32),
        )

    return init


def init_variables(model: nn.Module, image_shape: Sequence[int], seed: int) -> dict[str, Any]:
    """Flax variables (``{"params": ..., "batch_stats"?: ...}``) for (1, H, W, C) inputs.

    Drawn with the non-partitionable threefry: the partitionable one (JAX's default)
    takes 2-3x longer to compile on a CPU (4 s vs 2 s for SmallCNN, 8 s vs 3 s for
    AlexNet on 2 cores), and one process draws on one device anyway.
    """
    key = jax.random.PRNGKey(seed)
    x = jnp.zeros((1, *image_shape), jnp.float32)
    with jax.threefry_partitionable(False):
        return jax.jit(lambda k: model.init({"params": k}, x, train=False))(key)


def make_eval_fn(model: nn.Module) -> Callable[..., float]:
    """``accuracy(variables, ds, batch_size, split="test")``: the fraction of ``ds``'s test
    (or "val") split that ``model`` (eval mode) classifies right; jitted per batch shape,
    one host read."""

    @jax.jit
    def correct(variables: dict[str, Any], batch: data.Batch) -> jax.Array:
        logits = model.apply(variables, batch["image"], train=False)
        return jnp.sum(jnp.argmax(logits, -1) == batch["label"])

    def accuracy(
        variables: dict[str, Any], ds: data.Dataset, batch_size: int, split: str = "test"
    ) -> float:
        total = jnp.zeros((), jnp.int32)
        for batch in data.eval_batches(ds, batch_size, split=split):
            total = total + correct(variables, batch)
        return float(total) / len(data.eval_split(ds, split)[1])

    return accuracy
