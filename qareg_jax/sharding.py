"""Multi-device training with ``jax.sharding``: a device mesh, placement rules, sharded steps.

Data parallelism over a ``"data"`` mesh axis, optionally with large kernels split over a
``"model"`` axis; every step is one ``jax.jit`` with explicit in/out shardings (no pmap)::

    mesh = make_mesh(model=2)                       # 8 devices -> data 4 x model 2
    layout = Layout(mesh, min_size=1 << 16)         # kernels >= 64Ki weights split on "model"
    tp = shard(train_params, layout)                # {"model": params, "reps": {...}}
    state = init_opt_state(tx, tp, layout)          # optimizer moments sharded like the weights
    step = make_train_step(task_loss, tx, specs, layout, tp, state)
    for i, batch in enumerate(batches):
        tp, state, metrics = step(tp, state, shard_batch(batch, mesh), i)
    snapped, assignments = snap_sharded(tp, specs, layout)
    ft = quantized_finetune(optax.sgd(1e-3, momentum=0.9), specs)
    ft_state = init_opt_state(ft, snapped, layout)
    ft_step = make_train_step(task_loss, ft, None, layout, snapped, ft_state)

Models with BatchNorm and dropout (``model_state = {"batch_stats": ...}`` outside the
train tree, as in :mod:`qareg_jax.pipeline`)::

    ms = shard(model_state, layout)
    step = make_train_step(task_loss, tx, specs, layout, tp, state, model_state=ms, rng=True)
    key = jax.random.PRNGKey(seed)                  # dropout key of step i: fold_in(key, i)
    for i, batch in enumerate(batches):
        tp, state, ms, metrics = step(tp, state, ms, shard_batch(batch, mesh), i, key)

The penalty, snapping and the fine-tuning update run under ``jit`` on the arrays
where they live: no leaf is fetched to the host or to one device, XLA inserts
the cross-device reductions, and the outputs keep their placement. (Today the
per-representative sums in the backward pass of the "nearest" penalty and in the
fine-tuning update ravel the weights, so XLA all-gathers each split kernel inside
those steps; see ``test_no_whole_kernel_is_gathered`` in ``tests/test_sharding.py``.)
The ``(K,)`` representatives and other small leaves are replicated. Packing
(``compress.size_report`` / ``compress.save``) is host-side: it fetches one leaf
at a time to host memory with ``np.asarray``.

Multi-host (TPU pods, several GPU hosts): call ``jax.distributed.initialize()``
on every process before anything else touches JAX (on Cloud TPU it takes no
arguments; elsewhere pass ``coordinator_address``, ``num_processes`` and
``process_id``). Then ``jax.devices()`` lists the devices of all hosts and
:func:`make_mesh` spans them; every process runs the same program, builds the
same ``Layout``, loads its own share of each global batch (e.g. shuffled with the
same seed and sliced by ``jax.process_index()``) and passes that process-local
part to :func:`shard_batch`, which assembles the global array with
``jax.make_array_from_process_local_data``. Parameters are initialised with the
same seed everywhere. Host-side steps (``attach``'s interval and k-means
initialisation, packing, saving) need whole leaves: fetch them with
``jax.experimental.multihost_utils.process_allgather`` and write files from
process 0 only.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AbstractMesh, AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from .codebook import QuantSpec
from .paths import map_named
from .snap import snap

DATA_AXIS = "data"
MODEL_AXIS = "model"
Rule = tuple[str, P]

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "Layout",
    "init_opt_state",
    "make_mesh",
    "make_train_step",
    "shard",
    "shard_batch",
    "snap_sharded",
    "tree_shardings",
]


def make_mesh(model: int | None = None, *, devices: Sequence[Any] | None = None) -> Mesh:
    """A mesh over ``devices`` (default: ``jax.devices()``, all hosts' devices).

    Args:
      model: ``None`` for a 1-D ``("data",)`` mesh; an int ``m >= 1`` for a 2-D
        ``("data", "model")`` mesh of shape ``(n // m, m)``.
      devices: the devices to use, e.g. ``jax.devices()[:1]`` for a one-device reference.

    Raises:
      ValueError: ``model`` is not a positive divisor of the number of devices.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    if model is None:
        return jax.make_mesh((n,), (DATA_AXIS,), (AxisType.Auto,), devices=devices)
    if isinstance(model, bool) or not isinstance(model, int) or model < 1 or n % model:
        raise ValueError(f"model must be a positive divisor of the {n} devices, got {model!r}")
    return jax.make_mesh(
        (n // model, model), (DATA_AXIS, MODEL_AXIS), (AxisType.Auto,) * 2, devices=devices
    )


# Grouped representatives (QuantSpec.group_size) in a train tree or optimizer state.
_GROUPED_REPS = re.compile(r"(^|/)reps/")


def _entry_axes(entry: Any) -> tuple[str, ...]:
    """Mesh axis names of one PartitionSpec entry (None, a name, or a tuple of names)."""
    if entry is None or entry is P.UNCONSTRAINED:
        return ()
    return tuple(entry) if isinstance(entry, tuple) else (entry,)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where every array of a training run lives: a mesh and the rules placing each leaf.

    A leaf's ``PartitionSpec`` is the spec of the first rule whose pattern is
    ``re.search``-ed in its '/'-path and whose spec has at most the leaf's rank
    entries; without such a rule, the default: split the last dimension over the
    model axis when the leaf has >= 2 dims, at least ``min_size`` elements and a
    last dimension divisible by the axis size; otherwise replicate. Rules match
    paths of any tree (train tree, optimizer state, fine-tuning assignments), so
    one rule such as ``("fc1/kernel", P(None, "model"))`` places a weight, its
    optimizer moments and its assignments alike, while the ``(K,)``
    representatives stored under the same path stay replicated (so do grouped
    ``(G, K)`` ones, rank-2 leaves under a ``reps/`` segment). Batches are split
    over ``"data"``.

    Attributes:
      mesh: from :func:`make_mesh` (or any mesh with a ``"data"`` axis; an
        ``AbstractMesh`` suffices for :meth:`spec`).
      rules: ``(regex, PartitionSpec)`` pairs, first match wins.
      min_size: the default rule's size threshold (elements).
      model_axis: the axis of the default rule; ``None`` means ``"model"`` when the
        mesh has it, else no default splitting.

    Raises:
      ValueError: the mesh has no ``"data"`` axis, or a rule or ``model_axis``
        names an axis the mesh does not have.
    """

    mesh: Mesh | AbstractMesh
    rules: Sequence[Rule] = ()
    min_size: int = 1 << 16
    model_axis: str | None = None

    def __post_init__(self) -> None:
        known = tuple(self.mesh.axis_names)
        if DATA_AXIS not in known:
            raise ValueError(f"the mesh needs a {DATA_AXIS!r} axis; its axes are {known}")
        explicit = [
            a for a, t in zip(known, self.mesh.axis_types, strict=True) if t != AxisType.Auto
        ]
        if explicit:
            # The per-representative scatter-adds do not take sharding-in-types yet.
            raise ValueError(
                f"mesh axis_types must be AxisType.Auto (as make_mesh builds them); axes "
                f"{explicit} are {[str(self.mesh.axis_types[known.index(a)]) for a in explicit]}"
            )
        object.__setattr__(self, "rules", tuple((str(r), P(*s)) for r, s in self.rules))
        for pattern, spec in self.rules:
            re.compile(pattern)
            for axis in (a for entry in spec for a in _entry_axes(entry)):
                if axis not in known:
                    raise ValueError(
                        f"rule {pattern!r} -> {spec} names mesh axis {axis!r}, but the mesh "
                        f"has only the axes {known}"
                    )
        if self.model_axis is not None and self.model_axis not in known:
            raise ValueError(
                f"model_axis {self.model_axis!r} is not a mesh axis; the mesh has {known}"
            )
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, int):
            raise ValueError(f"min_size must be an int, got {self.min_size!r}")

    @property
    def batch_sharding(self) -> NamedSharding:
        """Leading (batch) dimension split over ``"data"``, the rest replicated."""
        return NamedSharding(self.mesh, P(DATA_AXIS))

    @property
    def replicated(self) -> NamedSharding:
        """A full copy on every device (scalars such as ``step`` and the metrics)."""
        return NamedSharding(self.mesh, P())

    def tree_shardings(self, tree: Any) -> Any:
        """:func:`tree_shardings` of ``tree`` under this layout."""
        return tree_shardings(tree, self)

    def spec(self, path: str, shape: Sequence[int]) -> P:
        """The ``PartitionSpec`` of a leaf of this path and shape.

        Raises:
          ValueError: a matching rule splits a dimension that its mesh axes do not divide.
        """
        if len(shape) == 2 and _GROUPED_REPS.search(path):
            # (G, K) grouped representatives share their kernel's path: a kernel rule
            # would split K. They are small (K per group); every device keeps them.
            return P()
        for pattern, spec in self.rules:
            if len(spec) <= len(shape) and re.search(pattern, path):
                for dim, entry in zip(shape, spec, strict=False):
                    names = _entry_axes(entry)
                    size = int(np.prod([self.mesh.shape[a] for a in names]))
                    if dim % size:
                        raise ValueError(
                            f"rule {pattern!r} -> {spec} does not fit leaf {path!r} of shape "
                            f"{tuple(shape)}: {dim} is not divisible by {names} of size {size}"
                        )
                return spec
        axis = self.model_axis
        if axis is None and MODEL_AXIS in self.mesh.axis_names:
            axis = MODEL_AXIS
        size = self.mesh.shape[axis] if axis is not None else 1
        if size > 1 and len(shape) >= 2 and np.prod(shape) >= self.min_size:
            if shape[-1] % size == 0:
                return P(*([None] * (len(shape) - 1)), axis)
        return P()


def tree_shardings(tree: Any, layout: Layout) -> Any:
    """``tree`` with each leaf (array or ``jax.ShapeDtypeStruct``) replaced by its
    ``NamedSharding`` under ``layout``; usable as jit ``in_shardings``/``out_shardings``."""
    return map_named(
        lambda path, leaf: NamedSharding(layout.mesh, layout.spec(path, np.shape(leaf))), tree
    )


def shard(tree: Any, layout: Layout) -> Any:
    """A copy of ``tree`` placed on the mesh by ``layout``.

    ``jax.device_put`` may alias the source buffers (it does on CPU), so the placed
    tree is copied once more on the mesh: the result can be donated to a step
    while ``tree`` stays valid.
    """
    shardings = tree_shardings(tree, layout)
    placed = jax.device_put(tree, shardings)
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(placed)


def _local_data_positions(mesh: Mesh) -> set[int]:
    """The indices along ``"data"`` of the mesh positions this process's devices hold."""
    axis = mesh.axis_names.index(DATA_AXIS)
    me = jax.process_index()
    return {
        pos[axis] for pos in np.ndindex(mesh.devices.shape) if mesh.devices[pos].process_index == me
    }


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """A process-local batch as global arrays split over the ``"data"`` axis.

    Args:
      batch: pytree of arrays with a common leading batch dimension ``B_local``;
        on one host, the whole global batch.
      mesh: the mesh (``Layout.mesh``).

    Returns:
      The same tree of ``jax.Array`` of global batch ``B_local * n_data / n_local``
      (``n_local``: the positions on ``"data"`` this process's devices hold), each
      device holding ``B / n_data`` rows.

    Raises:
      ValueError: the global batch is not divisible by the number of devices on
        ``"data"``, or the leaves disagree on the batch size.
    """
    if DATA_AXIS not in mesh.axis_names:
        raise ValueError(f"the mesh needs a {DATA_AXIS!r} axis; its axes are {mesh.axis_names}")
    leaves = jax.tree.leaves(batch)
    sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"batch leaves must share a leading batch dimension, got sizes {sizes}")
    n_data = mesh.shape[DATA_AXIS]
    # Processes may share rows (a "model" axis across processes): this process feeds the
    # rows of the data positions its own devices hold, not 1 / process_count of them.
    n_local = len(_local_data_positions(mesh))
    global_batch = sizes.pop() * n_data // n_local
    if global_batch % n_data:
        raise ValueError(
            f"the global batch size {global_batch} is not divisible by the {n_data} devices on "
            f"the {DATA_AXIS!r} mesh axis; use a multiple of {n_data}"
        )
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)


def _jit_placed(fn: Callable[[Any], Any], tree: Any, layout: Layout) -> Any:
    """``fn(tree)`` jitted with ``tree`` and the result placed by ``layout``."""
    out = tree_shardings(jax.eval_shape(fn, tree), layout)
    return jax.jit(fn, in_shardings=(tree_shardings(tree, layout),), out_shardings=out)(tree)


def init_opt_state(tx: optax.GradientTransformation, train_params: Any, layout: Layout) -> Any:
    """``tx.init(train_params)`` computed on the mesh, each state leaf placed by ``layout``
    (moments like their weights), without building the state on one device first."""
    return _jit_placed(tx.init, train_params, layout)


def snap_sharded(
    train_params: Mapping[str, Any],
    specs: Mapping[str, QuantSpec],
    layout: Layout,
    *,
    index_dtype: Any = None,
) -> tuple[dict[str, Any], dict[str, jax.Array]]:
    """:func:`qareg_jax.snap` on the mesh: snapped weights and their assignments
    (the weights' shapes) come out placed by ``layout``, as the weights were."""
    fn = functools.partial(snap, specs=specs, index_dtype=index_dtype)
    return _jit_placed(fn, train_params, layout)


def make_train_step(
    task_loss: Callable[..., Any],
    tx: optax.GradientTransformation,
    specs: Mapping[str, QuantSpec] | None,
    layout: Layout,
    train_params: Any,
    opt_state: Any,
    *,
    model_state: Any = None,
    rng: bool = False,
    donate: bool = True,
) -> Callable[..., tuple[Any, ...]]:
    """A jitted, sharded train step: :func:`qareg_jax.pipeline.train_step_fn`'s body with
    the train tree, optimizer state and model state as separate arguments.

    ``qareg_jax.pipeline.make_train_step(model_or_loss, tx, specs, layout=layout)`` is
    the same step over a whole ``TrainState``.

    Signatures (bracketed parts only with ``model_state`` / ``rng``)::

        task_loss(model_params, [model_state,] batch, [rng]) -> loss | (loss, new_model_state)
        step(train_params, opt_state, [model_state,] batch, step, [key])
            -> (train_params, opt_state, [model_state,] metrics)

    The loss is ``task_loss(train_params["model"], ...) + penalty(train_params, specs,
    step)`` (no penalty when ``specs`` is None, e.g. with a ``quantized_finetune``
    optimizer); its gradient with respect to the whole train tree (weights and
    representatives) goes through ``tx`` and ``optax.apply_updates``. As in
    :func:`qareg_jax.pipeline.make_train_step`, mutable collections (BatchNorm
    ``batch_stats``) live outside the differentiated tree: ``task_loss`` gets them and
    returns their new values next to the loss, and the dropout key is
    ``jax.random.fold_in(key, step)``, so a run is a function of ``key`` and the
    batches whatever the mesh. The step is one program over the global batch, so
    BatchNorm statistics are those of the global batch (unlike ``pmap``'s per-device
    statistics) and 1 and 8 devices compute the same step up to summation order.

    In/out shardings are explicit: the train tree, the optimizer state and the model
    state keep the placement ``layout`` gives them (taken from the shapes of the
    examples), the batch is split over ``"data"``, ``step``, ``key`` and the metrics
    are replicated.

    Args:
      task_loss: the mean loss over the global batch (a float scalar), with the
        signature above.
      tx: the optimizer of the whole train tree.
      specs: resolved specs (static), or None for no penalty.
      layout: the placement rules.
      train_params, opt_state: examples (arrays or ``jax.ShapeDtypeStruct``) fixing
        the structure and shapes.
      model_state: an example of the mutable collections (e.g. ``{"batch_stats":
        ...}``), or None when the model has none.
      rng: pass ``task_loss`` a per-step key (dropout), drawn from the step's ``key``
        argument (e.g. ``jax.random.PRNGKey(seed)``, the same every step).
      donate: donate the train tree, optimizer state and model state buffers.

    Returns:
      The jitted step; ``metrics`` holds ``"loss"``, ``"task_loss"`` and ``"penalty"``
      (float32 scalars; the penalty at ``step``).
    """
    # Imported here: the pipeline package imports orbax, which ``import qareg_jax`` avoids.
    from .pipeline.steps import TrainState, empty_window, train_step_fn

    stateful = model_state is not None
    trees = (train_params, opt_state) + ((model_state,) if stateful else ())
    tree_specs = tuple(tree_shardings(t, layout) for t in trees)
    n_state = len(trees) - 2

    def loss(tp: Any, state: Any, batch: Any, key: jax.Array, _step: Any) -> tuple[Any, Any]:
        inputs = ((state,) if stateful else ()) + (batch,) + ((key,) if rng else ())
        out = task_loss(tp["model"], *inputs)
        return out if stateful else (out, state)

    body = train_step_fn(loss, tx, specs)

    def train_step(tp: Any, opt: Any, *args: Any) -> tuple[Any, ...]:
        """``args``: ``[model_state,] batch, step, [key]``."""
        batch, step = args[n_state : n_state + 2]
        state = TrainState(
            params=tp,
            opt_state=opt,
            model_state=args[0] if stateful else {},
            key=args[-1] if rng else jax.random.PRNGKey(0),  # unused without rng
            step=jnp.asarray(step, jnp.int32),
            window=empty_window(),
            bad_step=jnp.full((), -1, jnp.int32),
        )
        new, metrics = body(state, batch)
        return (new.params, new.opt_state) + ((new.model_state,) if stateful else ()) + (metrics,)

    scalars = (layout.replicated,) * (2 if rng else 1)
    return jax.jit(
        train_step,
        in_shardings=(*tree_specs, layout.batch_sharding, *scalars),
        out_shardings=(*tree_specs, layout.replicated),
        donate_argnums=tuple(range(len(trees))) if donate else (),
    )
