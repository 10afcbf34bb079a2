"""The whole pipeline as functions: pretrain, regularize, snap, fine-tune, baselines, sizes.

``train_and_evaluate(config, workdir)`` (flax-examples style) runs, for one model and
dataset:

1. **pretrain** a full-precision model (the reference accuracy, and the start of the
   baselines and of the regularized runs when ``config.from_pretrained``);
2. per regularizer, K and ``freeze_reps`` value, a **regularized** run: attach
   representatives (``codebook.attach``), train with ``task loss + penalty`` (lambda
   ramped up linearly), snap every selected weight to its nearest level and evaluate
   ("pre-tuning"), fine-tune with weights kept on their levels (``snap.quantized_finetune``)
   and evaluate ("post-tuning"), then pack (``compress.size_report`` / ``compress.save``);
3. per baseline quantizer and K, the same on the pretrained model: ``quantize_tree``
   ("pre-tuning"), then the codebooks become representatives and the same fine-tuning runs.

Every phase checkpoints with orbax every ``checkpoint_every`` steps and at its end;
a finished stage writes ``stages/<stage>.json``. Rerunning with ``resume=True`` skips
finished stages and continues an interrupted phase from its last checkpoint: the data
order is a function of (seed, phase, epoch) and the dropout key of (seed, phase, step),
so the resumed run computes exactly what the uninterrupted one would have.

Workdir layout::

    config.json                 the Config of the run (a different one is refused)
    checkpoints/<stage>/<phase> orbax CheckpointManager directories
    metrics/<stage>.jsonl       every log_every steps: task loss, penalty, per-layer
                                penalty / lambda / mean distance to the levels
    stages/<stage>.json         result row (+ weight histograms for regularized runs)
    models/<stage>.qareg        the final quantized model (compress.save)
    results.json, table.md      all rows (written at the end)
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib.util
import itertools
import json
import os
import pathlib
import platform
import shutil
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from . import compress, data, quantizers, report
from . import regularizers as R
from ._tree import named_leaves
from .codebook import INITS, INTERVALS, QuantSpec, attach, levels, make_specs
from .models import MODELS, get_model
from .penalty import penalty, penalty_stats
from .snap import QuantizedFinetuneState, finetune_specs, quantized_finetune, snap

BASELINES = ("kmeans", "uniform", "pws", "ecsq", "binary")
OPTIMIZERS = ("adam", "sgd")
# Lambda per regularizer when Config.lam does not name it. The penalties live on
# different scales (nearest/softmin/product in squared weight units, sine/cosine/wells
# in [0, 1]) and per-layer *means* are small, so lambda is large. Chosen on the digits
# default (SmallCNN, Adam 3e-3, 10 regularized epochs, lambda ramped over the first
# half) from sweeps over factors of 10: weaker values snap about as badly as k-means PTQ.
DEFAULT_LAM: dict[str, float] = {
    "nearest": 1e5,
    "softmin": 1e5,
    "product": 1e4,
    "sine": 300.0,
    "cosine": 100.0,
    "wells": 300.0,
}
_HIST_BINS = 80
_FORMAT = 1  # bump when the workdir layout changes


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the stage, phase and step."""


class WorkdirError(ValueError):
    """The workdir holds another run (or other files) and neither resume nor overwrite is set."""


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after`` hook of :func:`train_and_evaluate` (tests, debugging)."""


@dataclasses.dataclass(frozen=True)
class Config:
    """One experiment: model, data, the three training phases, methods and K values.

    Attributes:
      model: "alexnet", "vgg16" or "small".
      dataset: "cifar10", "digits" or "folder:PATH" (see ``data.load_dataset``).
      dataset_label: how tables name the dataset (default: ``dataset``).
      data_dir: tensorflow-datasets directory for "cifar10".
      train_subset, test_subset: use only this many examples (a fixed random subset).
      dropout_rate: passed to models that have dropout (alexnet, vgg16); None: their default.
      seed: initialisation, data order, dropout and PWS rounding.
      batch_size, eval_batch_size: examples per step / per evaluation batch.
      optimizer: "adam" (AdamW) or "sgd" (momentum 0.9, nesterov) for pretraining and
        regularizing.
      weight_decay: decoupled weight decay on the model's kernels (not on representatives).
      pretrain_epochs, pretrain_lr: full-precision phase (cosine-decayed learning rate).
      regularizers: the quantization-aware penalties to run (``regularizers.REGULARIZERS``).
      ks: numbers of levels.
      freeze_reps: run each dynamic regularizer once per value: ``(False, True)`` adds the
        frozen-representatives ablation (reps keep their initial values while regularizing).
      from_pretrained: start the regularized runs from the pretrained weights (True) or
        from the same random initialisation as pretraining (False).
      reg_epochs, reg_lr: regularized phase (cosine-decayed learning rate).
      lam: lambda for every regularizer, or a ``{regularizer: lambda}`` dict (missing
        names take ``DEFAULT_LAM``).
      lam_warmup: fraction of the regularized phase over which lambda ramps linearly up
        from 0 (0: constant lambda).
      interval, interval_param, init, reduction: ``QuantSpec`` fields of every layer.
      tau, sigma: softmin temperature / wells width of every layer; None: from the spread
        of each layer's initial representatives (see ``codebook.QuantSpec``).
      include, exclude: path regexes selecting the quantized leaves (default: every conv
        and dense kernel).
      finetune_epochs, finetune_lr, finetune_optimizer: quantized fine-tuning (constant rate).
      baselines: post-training quantizers, ``BASELINES``; "binary" runs at K=2 only.
      index_dtype: dtype of the stored indices (e.g. "uint8"); None: the smallest per K.
      codebook_dtype: "float32" or "float16" codebooks in the packed model.
      log_every, checkpoint_every: steps between metric records / checkpoints.
    """

    model: str = "small"
    dataset: str = "digits"
    dataset_label: str | None = None
    data_dir: str | None = None
    train_subset: int | None = None
    test_subset: int | None = None
    dropout_rate: float | None = None
    seed: int = 0
    batch_size: int = 32
    eval_batch_size: int = 500
    optimizer: str = "adam"
    weight_decay: float = 0.0
    pretrain_epochs: int = 15
    pretrain_lr: float = 3e-3
    regularizers: tuple[str, ...] = ("nearest", "softmin", "sine")
    ks: tuple[int, ...] = (2, 4)
    freeze_reps: tuple[bool, ...] = (False,)
    from_pretrained: bool = True
    reg_epochs: int = 10
    reg_lr: float = 3e-3
    lam: float | Mapping[str, float] = dataclasses.field(default_factory=dict)
    lam_warmup: float = 0.5
    interval: str = "minmax"
    interval_param: float | None = None
    init: str = "kmeans"
    reduction: str = "mean"
    tau: float | None = None
    sigma: float | None = None
    include: str | None = None
    exclude: str | None = None
    finetune_epochs: int = 3
    finetune_lr: float = 1e-3
    finetune_optimizer: str = "adam"
    baselines: tuple[str, ...] = ("kmeans", "uniform")
    index_dtype: str | None = None
    codebook_dtype: str = "float32"
    log_every: int = 20
    checkpoint_every: int = 200

    def __post_init__(self) -> None:
        # Lists (from JSON or the CLI) become tuples so configs compare and hash by value.
        for name in ("regularizers", "ks", "freeze_reps", "baselines"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if isinstance(self.lam, Mapping):
            object.__setattr__(self, "lam", dict(self.lam))
        self.validate()

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first bad field and its allowed values."""
        _choice("model", self.model, tuple(MODELS))
        if self.dataset not in ("cifar10", "digits") and not (
            self.dataset.startswith("folder:") and len(self.dataset) > len("folder:")
        ):
            raise ValueError(
                f"unknown dataset {self.dataset!r}; allowed: {', '.join(data.DATASET_NAMES)}"
            )
        for name in self.regularizers:
            _choice("regularizer", name, R.REGULARIZERS)
        for name in self.baselines:
            _choice("baseline", name, BASELINES)
        if not self.regularizers and not self.baselines:
            raise ValueError("nothing to run: give at least one regularizer or baseline")
        if not self.ks:
            raise ValueError("ks is empty: give at least one number of levels K")
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks has duplicates: {list(self.ks)}")
        for k in self.ks:
            _check_k(k, self.index_dtype)
        if not self.freeze_reps or not all(isinstance(f, bool) for f in self.freeze_reps):
            raise ValueError(
                f"freeze_reps must be a non-empty tuple of bools, got {self.freeze_reps}"
            )
        _choice("optimizer", self.optimizer, OPTIMIZERS)
        _choice("finetune_optimizer", self.finetune_optimizer, OPTIMIZERS)
        _choice("interval", self.interval, INTERVALS)
        _choice("init", self.init, INITS)
        _choice("reduction", self.reduction, ("mean", "sum"))
        _choice("codebook_dtype", self.codebook_dtype, ("float32", "float16"))
        for name in ("batch_size", "eval_batch_size", "log_every", "checkpoint_every"):
            _positive_int(name, getattr(self, name))
        for name in ("pretrain_epochs", "reg_epochs", "finetune_epochs"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if self.pretrain_epochs == 0 and (self.baselines or self.from_pretrained):
            raise ValueError(
                "pretrain_epochs is 0 but the baselines or from_pretrained need a pretrained model"
            )
        for name in ("train_subset", "test_subset"):
            if getattr(self, name) is not None:
                _positive_int(name, getattr(self, name))
        for name in ("pretrain_lr", "reg_lr", "finetune_lr"):
            R.check_positive(getattr(self, name), name)
        for name in ("tau", "sigma"):
            if getattr(self, name) is not None:
                R.check_positive(getattr(self, name), name)
        if not (np.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.lam_warmup <= 1:
            raise ValueError(f"lam_warmup must be in [0, 1], got {self.lam_warmup!r}")
        lams = self.lam.values() if isinstance(self.lam, Mapping) else [self.lam]
        for value in lams:
            if isinstance(value, bool) or not np.isfinite(value) or value < 0:
                raise ValueError(f"lambda must be a finite number >= 0, got {value!r}")
        if isinstance(self.lam, Mapping):
            for name in self.lam:
                _choice("lam key", name, R.REGULARIZERS)

    def lam_for(self, regularizer: str) -> float:
        """The (final) lambda of ``regularizer``."""
        if isinstance(self.lam, Mapping):
            return float(self.lam.get(regularizer, DEFAULT_LAM[regularizer]))
        return float(self.lam)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    def replace(self, **changes: Any) -> Config:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)


def _choice(name: str, value: object, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(allowed)}")


def _positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")


def _check_k(k: object, index_dtype: str | None) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ValueError(f"K must be an integer >= 2 (the number of levels), got {k!r}")
    if index_dtype is None:
        if k > quantizers.MAX_K:
            raise ValueError(f"K={k} is too large: indices are at most uint32 (K <= 2**32)")
        return
    try:
        dtype = np.dtype(index_dtype)
    except TypeError:
        raise ValueError(f"index_dtype {index_dtype!r} is not a numpy dtype") from None
    if not np.issubdtype(dtype, np.unsignedinteger):
        raise ValueError(f"index_dtype must be an unsigned integer dtype, got {dtype}")
    if k - 1 > np.iinfo(dtype).max:
        raise ValueError(
            f"K={k} does not fit the index dtype {dtype} (K <= {np.iinfo(dtype).max + 1})"
        )


def load_config(path: str | os.PathLike) -> Config:
    """The ``Config`` returned by ``get_config()`` in the Python file ``path``."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"qareg_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config file {str(path)!r} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, Config):
        raise ValueError(f"get_config() in {str(path)!r} must return a qareg_jax.train.Config")
    return config


# ------------------------------------------------------------------------------- context


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage needs; built once by :func:`train_and_evaluate`.

    Attributes:
      config: the run's configuration.
      workdir: the run directory.
      model: the flax module.
      ds: the dataset in memory.
      progress: show tqdm bars.
      stop_after: raise :class:`TrainingInterrupted` after this many optimizer steps in
        this process (simulates a crash; nothing is saved at that point).
      counter: a one-element list counting optimizer steps for ``stop_after``.
      compiled: jitted functions shared by the stages of the run (the evaluation, the
        fine-tuning step per K), so each compiles once: compiling, not stepping, dominates
        small runs on a CPU.
    """

    config: Config
    workdir: pathlib.Path
    model: nn.Module
    ds: data.Dataset
    progress: bool = True
    stop_after: int | None = None
    counter: list[int] = dataclasses.field(default_factory=lambda: [0])
    compiled: dict[Any, Any] = dataclasses.field(default_factory=dict)

    def initial_variables(self) -> dict[str, Any]:
        """The model's random initialisation for ``config.seed`` (computed once per run:
        compiling the initializers' random number generation takes seconds on a CPU)."""
        if "init" not in self.compiled:
            self.compiled["init"] = init_variables(
                self.model, self.ds.image_shape, self.config.seed
            )
        return self.compiled["init"]

    def accuracy(self, params: Any, model_state: Mapping[str, Any]) -> float:
        """Test accuracy of ``params`` (the "params" collection) with ``model_state``."""
        if "eval" not in self.compiled:
            self.compiled["eval"] = make_eval_fn(self.model)
        return self.compiled["eval"](
            _variables(params, model_state), self.ds, self.config.eval_batch_size
        )


def device_name() -> str:
    """E.g. ``"cpu: 2 cores, Intel(R) Xeon(R) ..."`` or ``"gpu: NVIDIA H100 80GB HBM3"``."""
    dev = jax.devices()[0]
    if dev.platform != "cpu":
        return f"{dev.platform}: {dev.device_kind}"
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass  # not Linux: keep platform's name
    return f"cpu: {os.cpu_count()} cores, {model}"


def subset(ds: data.Dataset, train: int | None, test: int | None, seed: int = 0) -> data.Dataset:
    """``ds`` restricted to a fixed random subset of ``train`` / ``test`` examples (sorted)."""

    def pick(n: int, m: int | None, salt: int) -> np.ndarray:
        if m is None or m >= n:
            return np.arange(n)
        return np.sort(np.random.default_rng([seed, salt]).permutation(n)[:m])

    tr = pick(len(ds.train_labels), train, 0)
    te = pick(len(ds.test_labels), test, 1)
    return dataclasses.replace(
        ds,
        train_images=ds.train_images[tr],
        train_labels=ds.train_labels[tr],
        test_images=ds.test_images[te],
        test_labels=ds.test_labels[te],
    )


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


def _phase_seed(seed: int, name: str) -> int:
    """A data/dropout seed per (seed, phase name), independent of the order phases run in."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


# ---------------------------------------------------------------------------- optimizers


def _optimizer(
    name: str, lr: optax.ScalarOrSchedule, weight_decay: float = 0.0, mask: Any = None
) -> optax.GradientTransformation:
    """Adam(W) or SGD (momentum 0.9, nesterov); decoupled weight decay on ``mask``."""
    if name == "adam":
        return optax.adamw(lr, weight_decay=weight_decay, mask=mask)
    tx = optax.sgd(lr, momentum=0.9, nesterov=True)
    if weight_decay:  # for SGD, L2 on the gradient is the decoupled decay
        tx = optax.chain(optax.add_decayed_weights(weight_decay, mask=mask), tx)
    return tx


def _kernels(tree: dict[str, Any]) -> dict[str, Any]:
    """Weight-decay mask of a ``{"model", "reps"}`` tree: the model's kernels only."""
    return {
        "model": jax.tree_util.tree_map_with_path(
            lambda kp, _: str(getattr(kp[-1], "key", "")) == "kernel", tree["model"]
        ),
        "reps": jax.tree.map(lambda _: False, tree["reps"]),
    }


def make_optimizer(
    config: Config, lr: float, total_steps: int, *, freeze_reps: bool = False
) -> optax.GradientTransformation:
    """The optimizer of a pretraining / regularized phase over a ``{"model", "reps"}`` tree.

    ``config.optimizer`` with a cosine-decayed ``lr`` and ``config.weight_decay`` on the
    model's kernels only; with ``freeze_reps`` the representatives get zero updates
    (``optax.partition`` + ``set_to_zero``).
    """
    schedule = optax.cosine_decay_schedule(lr, max(total_steps, 1))
    tx = _optimizer(config.optimizer, schedule, config.weight_decay, _kernels)
    if freeze_reps:

        def labels(tree: Any) -> Any:
            return {
                "model": jax.tree.map(lambda _: "train", tree["model"]),
                "reps": jax.tree.map(lambda _: "frozen", tree["reps"]),
            }

        tx = optax.partition({"train": tx, "frozen": optax.set_to_zero()}, labels)
    return tx


def lam_schedule(lam: float, warmup: float, total_steps: int) -> float | optax.Schedule:
    """Lambda over the regularized phase: linear ramp from 0 over ``warmup * total_steps``."""
    ramp = int(round(warmup * total_steps))
    if ramp == 0 or lam == 0:
        return lam
    return optax.linear_schedule(0.0, lam, ramp)


# ------------------------------------------------------------------------- train / eval


def _task_loss(
    model: nn.Module, params: Any, model_state: dict[str, Any], batch: data.Batch, rng: jax.Array
) -> tuple[jax.Array, dict[str, Any]]:
    """Mean cross-entropy of a training batch and the updated model state (batch stats)."""
    variables = {"params": params, **model_state}
    kw = {"train": True, "rngs": {"dropout": rng}}
    if model_state:
        logits, new_state = model.apply(variables, batch["image"], mutable=list(model_state), **kw)
    else:
        logits, new_state = model.apply(variables, batch["image"], **kw), model_state
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, new_state


def make_train_step(
    model: nn.Module,
    tx: optax.GradientTransformation,
    specs: Mapping[str, QuantSpec] | None = None,
) -> Callable[[dict[str, Any], data.Batch], dict[str, Any]]:
    """A jitted ``step(state, batch) -> state`` (the state is donated).

    ``state`` (see :func:`make_init_fn`) ``= {"params": {"model", "reps"}, "opt_state",
    "model_state", "key", "step" int32, "window": {"task_loss", "penalty", "count"},
    "bad_step" int32}``. The loss is the task loss plus ``penalty(params, specs, step)``
    when ``specs`` is given; the dropout key is ``fold_in(key, step)``. ``window`` sums
    the losses since the last log; ``bad_step`` is the first step with a non-finite
    loss (-1 while none): the host reads both only every ``log_every`` steps.
    """

    def loss_fn(params, model_state, batch, rng, step):
        task, new_state = _task_loss(model, params["model"], model_state, batch, rng)
        pen = penalty(params, specs, step) if specs else jnp.zeros((), jnp.float32)
        return task + pen, (task, pen, new_state)

    def step_fn(state: dict[str, Any], batch: data.Batch) -> dict[str, Any]:
        step = state["step"]
        rng = jax.random.fold_in(state["key"], step)
        grads, (task, pen, model_state) = jax.grad(loss_fn, has_aux=True)(
            state["params"], state["model_state"], batch, rng, step
        )
        updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
        window = state["window"]
        finite = jnp.isfinite(task + pen)
        return {
            "params": optax.apply_updates(state["params"], updates),
            "opt_state": opt_state,
            "model_state": model_state,
            "key": state["key"],
            "step": step + 1,
            "window": {
                "task_loss": window["task_loss"] + task,
                "penalty": window["penalty"] + pen,
                "count": window["count"] + 1,
            },
            "bad_step": jnp.where((state["bad_step"] < 0) & ~finite, step, state["bad_step"]),
        }

    return jax.jit(step_fn, donate_argnums=0)


def _empty_window() -> dict[str, jax.Array]:
    return {
        "task_loss": jnp.zeros((), jnp.float32),
        "penalty": jnp.zeros((), jnp.float32),
        "count": jnp.zeros((), jnp.int32),
    }


def make_init_fn(
    tx: optax.GradientTransformation,
) -> Callable[[dict[str, Any], dict[str, Any], int], dict[str, Any]]:
    """A jitted ``init(params, model_state, seed) -> state`` for :func:`make_train_step`.

    The state starts at step 0 with the dropout key ``PRNGKey(seed)`` and holds copies
    of ``params`` and ``model_state``: the train step donates its state, and the
    caller's arrays (e.g. the pretrained weights every stage starts from) must survive.
    One jitted call: eager optimizer initialisation would compile every ``zeros_like``
    (and ``quantized_finetune``'s assignment) op by op.
    """

    @jax.jit
    def init(params: dict[str, Any], model_state: dict[str, Any], seed: Any) -> dict[str, Any]:
        return {
            "params": jax.tree.map(jnp.copy, params),
            "opt_state": tx.init(params),
            "model_state": jax.tree.map(jnp.copy, model_state),
            "key": jax.random.PRNGKey(seed),
            "step": jnp.zeros((), jnp.int32),
            "window": _empty_window(),
            "bad_step": jnp.full((), -1, jnp.int32),
        }

    return init


def make_eval_fn(model: nn.Module) -> Callable[[dict[str, Any], data.Dataset, int], float]:
    """``accuracy(variables, ds, batch_size)`` on the test split (jitted per batch shape)."""

    @jax.jit
    def correct(variables: dict[str, Any], batch: data.Batch) -> jax.Array:
        logits = model.apply(variables, batch["image"], train=False)
        return jnp.sum(jnp.argmax(logits, -1) == batch["label"])

    def accuracy(variables: dict[str, Any], ds: data.Dataset, batch_size: int) -> float:
        total = jnp.zeros((), jnp.int32)
        for batch in data.eval_batches(ds, batch_size):
            total = total + correct(variables, batch)
        return float(total) / len(ds.test_labels)  # one host read per evaluation

    return accuracy


def _batches_from(ds: data.Dataset, batch_size: int, seed: int, start: int) -> Iterator[data.Batch]:
    """Training batches from global step ``start`` on, epoch after epoch.

    The order depends only on (seed, epoch), so a resumed phase replays it: the batches of
    the interrupted epoch before ``start`` are skipped (built and dropped, a fraction of an
    epoch of host work, because grain's iterator offers no cheaper seek for this pipeline).
    """
    spe = data.steps_per_epoch(ds, batch_size)
    epoch, offset = divmod(start, spe)
    for e in itertools.count(epoch):
        it = data.train_batches(ds, batch_size, seed=seed, epoch=e)
        if e == epoch and offset:
            it = itertools.islice(it, offset, None)
        yield from it


# ---------------------------------------------------------------------------- phases


def _checkpoint_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def _rewrite_metrics(path: pathlib.Path, phase: str, after: int) -> None:
    """Drop the records of ``phase`` past step ``after`` (a resumed phase logs them again)."""
    if not path.exists():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    kept = [r for r in records if not (r["phase"] == phase and r["step"] > after)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def run_phase(
    ctx: Context,
    stage: str,
    phase: str,
    state: dict[str, Any],
    step_fn: Callable[[dict[str, Any], data.Batch], dict[str, Any]],
    epochs: int,
    *,
    specs: Mapping[str, QuantSpec] | None = None,
) -> dict[str, Any]:
    """Train ``state`` for ``epochs`` epochs with checkpoints, logging and NaN detection.

    Restores the latest checkpoint of ``checkpoints/<stage>/<phase>`` if there is one
    (a finished phase then returns at once). Every ``log_every`` steps appends the mean
    task loss and penalty since the last record, and ``penalty_stats`` per layer when
    ``specs`` is given, to ``metrics/<stage>.jsonl``.

    Raises:
      TrainingDivergedError: a non-finite loss; the last good checkpoint is kept.
      TrainingInterrupted: the ``ctx.stop_after`` hook fired.
    """
    cfg = ctx.config
    total = epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    mngr = _checkpoint_manager(ctx.workdir / "checkpoints" / stage / phase)
    metrics_path = ctx.workdir / "metrics" / f"{stage}.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    start = mngr.latest_step() or 0
    if start:
        state = mngr.restore(start, args=ocp.args.StandardRestore(state))
    if start >= total:
        mngr.close()
        return state
    _rewrite_metrics(metrics_path, phase, start)
    stats_fn = jax.jit(lambda p, s: penalty_stats(p, specs, s)) if specs else None
    batches = _batches_from(
        ctx.ds, cfg.batch_size, _phase_seed(cfg.seed, f"{stage}/{phase}"), start
    )
    bar = tqdm(
        total=total, initial=start, desc=f"{stage} {phase}", disable=not ctx.progress, leave=False
    )
    try:
        for step in range(start + 1, total + 1):
            state = step_fn(state, next(batches))
            bar.update()
            ctx.counter[0] += 1
            if ctx.stop_after is not None and ctx.counter[0] >= ctx.stop_after:
                raise TrainingInterrupted(f"stopped after {ctx.counter[0]} steps ({stage} {phase})")
            log, save = step % cfg.log_every == 0, step % cfg.checkpoint_every == 0
            if not (log or save or step == total):
                continue
            bad = int(state["bad_step"])  # host sync, only at log / checkpoint steps
            if bad >= 0:
                last = mngr.latest_step()
                raise TrainingDivergedError(
                    f"the loss became NaN or infinite at step {bad} of {stage} {phase}; "
                    f"stopped. The last good checkpoint is step {last} in "
                    f"{ctx.workdir / 'checkpoints' / stage / phase}. Lower the learning rate "
                    "or lambda."
                )
            if log or step == total:
                record = _metrics_record(phase, step, state, stats_fn)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                state = {**state, "window": _empty_window()}
                bar.set_postfix(loss=f"{record['task_loss']:.3f}", refresh=False)
            if save or step == total:
                mngr.save(step, args=ocp.args.StandardSave(state))
    finally:
        bar.close()
        mngr.close()
    return state


def _metrics_record(
    phase: str, step: int, state: dict[str, Any], stats_fn: Callable | None
) -> dict[str, Any]:
    window = jax.device_get(state["window"])
    count = max(int(window["count"]), 1)
    record: dict[str, Any] = {
        "phase": phase,
        "step": step,
        "task_loss": float(window["task_loss"]) / count,
        "penalty": float(window["penalty"]) / count,
    }
    if stats_fn is not None:
        # The schedule's lambda at the last step taken (step - 1).
        stats = jax.device_get(stats_fn(state["params"], step - 1))
        record["layers"] = {p: {k: float(v) for k, v in s.items()} for p, s in stats.items()}
    return record


# ---------------------------------------------------------------------------- stages


def _variables(params: Any, model_state: Mapping[str, Any]) -> dict[str, Any]:
    return {"params": params, **model_state}


def pretrain(ctx: Context) -> tuple[dict[str, Any], dict[str, Any]]:
    """The full-precision phase; returns ``(variables, row)`` with the test accuracy."""
    cfg = ctx.config
    t0 = time.perf_counter()
    variables = ctx.initial_variables()
    params, model_state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    total = cfg.pretrain_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    tx = make_optimizer(cfg, cfg.pretrain_lr, total)
    seed = _phase_seed(cfg.seed, "pretrain/train")
    state = make_init_fn(tx)({"model": params, "reps": {}}, model_state, np.uint32(seed))
    state = run_phase(
        ctx, "pretrain", "train", state, make_train_step(ctx.model, tx), cfg.pretrain_epochs
    )
    variables = _variables(state["params"]["model"], state["model_state"])
    acc = ctx.accuracy(state["params"]["model"], state["model_state"])
    return variables, {"acc_fp": acc, "wall_s": time.perf_counter() - t0}


def _histograms(
    before: Mapping[str, Any], after: Mapping[str, Any], specs: Mapping[str, QuantSpec]
) -> dict[str, Any]:
    """Per layer: weight histograms before/after regularizing on common bins, and levels."""
    out = {}
    for path, spec in specs.items():
        wb = np.asarray(before["model"][path], np.float64).ravel()
        wa = np.asarray(after["model"][path], np.float64).ravel()
        lb = np.asarray(levels(before["tree"], spec, path), np.float64)
        la = np.asarray(levels(after["tree"], spec, path), np.float64)
        lo = min(wb.min(), wa.min(), lb.min(), la.min())
        hi = max(wb.max(), wa.max(), lb.max(), la.max())
        edges = np.linspace(lo, hi, _HIST_BINS + 1)
        out[path] = {
            "edges": edges.tolist(),
            "before": np.histogram(wb, edges)[0].tolist(),
            "after": np.histogram(wa, edges)[0].tolist(),
            "levels_before": np.sort(lb).tolist(),
            "levels_after": np.sort(la).tolist(),
        }
    return out


def _named(tree: dict[str, Any], specs: Mapping[str, QuantSpec]) -> dict[str, Any]:
    leaves = named_leaves(tree["model"])
    return {"model": {p: jax.device_get(leaves[p]) for p in specs}, "tree": jax.device_get(tree)}


def finetune(
    ctx: Context,
    stage: str,
    snapped: dict[str, Any],
    model_state: dict[str, Any],
    specs: Mapping[str, QuantSpec],
) -> tuple[dict[str, Any], dict[str, Any], dict[str, jax.Array]]:
    """Quantized fine-tuning of a snapped tree; ``(tree, model_state, assignments)``.

    Every selected weight stays exactly on its representative; the representatives move
    with the summed gradients of their weights (``snap.quantized_finetune``).
    """
    cfg = ctx.config
    # quantized_finetune reads only each spec's K: the same step serves every stage with
    # the same K (one compilation), the stage enters through the dropout seed in the state.
    ks = tuple(sorted({(p, s.k) for p, s in specs.items()}))
    if ("finetune", ks) not in ctx.compiled:
        plain = {p: QuantSpec(k=k, regularizer="nearest", lam=0.0) for p, k in ks}
        tx = quantized_finetune(
            _optimizer(cfg.finetune_optimizer, cfg.finetune_lr), plain, index_dtype=cfg.index_dtype
        )
        ctx.compiled["finetune", ks] = (tx, make_init_fn(tx), make_train_step(ctx.model, tx))
    tx, init_fn, step_fn = ctx.compiled["finetune", ks]
    state = init_fn(snapped, model_state, np.uint32(_phase_seed(cfg.seed, f"{stage}/finetune")))
    state = run_phase(ctx, stage, "finetune", state, step_fn, cfg.finetune_epochs)
    opt_state: QuantizedFinetuneState = state["opt_state"]
    return state["params"], state["model_state"], opt_state.assignments


def _pack(
    ctx: Context,
    stage: str,
    tree: dict[str, Any],
    model_state: dict[str, Any],
    assignments: Mapping[str, Any],
) -> dict[str, Any]:
    """Size report and ``compress.save`` of the final quantized model; row fields."""
    variables = jax.device_get(_variables(tree["model"], model_state))
    quantized = {
        f"params/{p}": (np.asarray(jax.device_get(tree["reps"][p]), np.float32), np.asarray(a))
        for p, a in jax.device_get(assignments).items()
    }
    report = compress.size_report(variables, quantized, ctx.config.codebook_dtype)
    out = ctx.workdir / "models" / f"{stage}.qareg"
    out.parent.mkdir(parents=True, exist_ok=True)
    info = compress.save(
        out, variables, quantized, codebook_dtype=ctx.config.codebook_dtype, overwrite=True
    )
    return {
        "original_bytes": report.original_bits / 8,
        "packed_bytes": report.packed_bits / 8,
        "huffman_bytes": report.huffman_bits / 8,
        "ratio": 1.0 / report.psi_packed,
        "huffman_ratio": 1.0 / report.psi_huffman,
        "file_bytes": info.file_bytes,
        "model_file": os.fspath(out.relative_to(ctx.workdir)),
    }


def regularized_stage(
    ctx: Context,
    fp_variables: dict[str, Any],
    regularizer: str,
    k: int,
    *,
    freeze_reps: bool = False,
) -> dict[str, Any]:
    """One regularized run: attach, regularize, snap (pre-tuning), fine-tune (post-tuning).

    Returns the result row (accuracies after regularizing, snapping and fine-tuning; sizes)
    with ``"histograms"`` of every quantized layer before and after regularizing.
    """
    cfg = ctx.config
    t0 = time.perf_counter()
    stage = stage_name(regularizer, k, freeze_reps)
    start = fp_variables if cfg.from_pretrained else ctx.initial_variables()
    params, model_state = start["params"], {k_: v for k_, v in start.items() if k_ != "params"}
    total = cfg.reg_epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    specs = make_specs(
        params,
        include=cfg.include,
        exclude=cfg.exclude,
        k=k,
        regularizer=regularizer,
        lam=lam_schedule(cfg.lam_for(regularizer), cfg.lam_warmup, total),
        interval=cfg.interval,
        interval_param=cfg.interval_param,
        init=cfg.init,
        reduction=cfg.reduction,
        tau=cfg.tau,
        sigma=cfg.sigma,
    )
    tree, specs = attach(params, specs)
    before = _named(tree, specs)
    tx = make_optimizer(cfg, cfg.reg_lr, total, freeze_reps=freeze_reps)
    state = make_init_fn(tx)(tree, model_state, np.uint32(_phase_seed(cfg.seed, f"{stage}/reg")))
    step_fn = make_train_step(ctx.model, tx, specs)
    state = run_phase(ctx, stage, "reg", state, step_fn, cfg.reg_epochs, specs=specs)
    tree, model_state = state["params"], state["model_state"]
    del state
    acc_reg = ctx.accuracy(tree["model"], model_state)
    histograms = _histograms(before, _named(tree, specs), specs)
    # One compilation instead of one per eager op.
    snapped, _ = jax.jit(lambda t: snap(t, specs, index_dtype=cfg.index_dtype))(tree)
    acc_pre = ctx.accuracy(snapped["model"], model_state)
    ft_specs = finetune_specs(specs)
    tree, model_state, assignments = finetune(ctx, stage, snapped, model_state, ft_specs)
    acc_post = ctx.accuracy(tree["model"], model_state)
    for path, hist in histograms.items():
        hist["levels_final"] = np.sort(np.asarray(tree["reps"][path], np.float64)).tolist()
    row = {
        "method": method_name(regularizer, freeze_reps),
        "kind": "regularizer",
        "regularizer": regularizer,
        "freeze_reps": freeze_reps,
        "k": k,
        "lam": cfg.lam_for(regularizer),
        "acc_reg": acc_reg,
        "acc_pre": acc_pre,
        "acc_post": acc_post,
        **_pack(ctx, stage, tree, model_state, assignments),
        "wall_s": time.perf_counter() - t0,
    }
    return {**row, "histograms": histograms}


def baseline_stage(
    ctx: Context, fp_variables: dict[str, Any], method: str, k: int
) -> dict[str, Any]:
    """Post-training quantization of the pretrained model (pre-tuning), then the same
    quantized fine-tuning as the regularized runs with the codebooks as representatives."""
    cfg = ctx.config
    t0 = time.perf_counter()
    stage = f"ptq-{method}-k{k}"
    params = fp_variables["params"]
    model_state = {k_: v for k_, v in fp_variables.items() if k_ != "params"}
    paths = list(make_specs(params, include=cfg.include, exclude=cfg.exclude, k=k))
    kw = {"seed": cfg.seed} if method == "pws" else {}
    qparams, quantized = quantizers.quantize_tree(params, paths, k, method, **kw)
    acc_pre = ctx.accuracy(qparams, model_state)
    # The baseline's codebooks become representatives: the same fine-tuning transform.
    specs = {p: QuantSpec(k=k, regularizer="nearest", lam=0.0) for p in paths}
    leaves = named_leaves(qparams)
    reps = {p: jnp.asarray(cb, leaves[p].dtype) for p, (cb, _) in quantized.items()}
    tree = {"model": qparams, "reps": reps}
    tree, model_state, assignments = finetune(ctx, stage, tree, dict(model_state), specs)
    acc_post = ctx.accuracy(tree["model"], model_state)
    return {
        "method": method,
        "kind": "baseline",
        "regularizer": None,
        "freeze_reps": None,
        "k": k,
        "lam": None,
        "acc_reg": None,
        "acc_pre": acc_pre,
        "acc_post": acc_post,
        **_pack(ctx, stage, tree, model_state, assignments),
        "wall_s": time.perf_counter() - t0,
    }


def method_name(regularizer: str, freeze_reps: bool) -> str:
    """Table name of a regularized run, e.g. ``"nearest"`` or ``"nearest (frozen reps)"``."""
    return f"{regularizer} (frozen reps)" if freeze_reps else regularizer


def stage_name(regularizer: str, k: int, freeze_reps: bool) -> str:
    """Directory-safe stage name, e.g. ``"reg-nearest-k4"`` or ``"reg-nearest-frozen-k4"``."""
    return f"reg-{regularizer}{'-frozen' if freeze_reps else ''}-k{k}"


def planned_stages(config: Config) -> list[tuple[str, str, int, bool | None]]:
    """``(stage, method kind, K, freeze_reps)`` in run order, after "pretrain"."""
    out: list[tuple[str, str, int, bool | None]] = []
    for k in config.ks:
        for reg in config.regularizers:
            # Static penalties have no representatives to freeze: they run once.
            for frozen in (False,) if reg in R.STATIC else config.freeze_reps:
                out.append((stage_name(reg, k, frozen), reg, k, frozen))
        for method in config.baselines:
            if method == "binary" and k != 2:
                continue
            out.append((f"ptq-{method}-k{k}", method, k, None))
    return out


# ---------------------------------------------------------------------------- workdir


def prepare_workdir(
    workdir: str | os.PathLike, config: Config, *, resume: bool = False, overwrite: bool = False
) -> pathlib.Path:
    """Create ``workdir`` or check that it may be used; writes ``config.json``.

    A workdir holding a run continues only with ``resume`` (and the same config) and is
    emptied only with ``overwrite``; a non-empty directory that holds no run is refused.

    Raises:
      WorkdirError: with the reason and the flag to use.
    """
    if resume and overwrite:
        raise WorkdirError("give resume or overwrite, not both")
    path = pathlib.Path(workdir)
    cfg_file = path / "config.json"
    wanted = {"format": _FORMAT, "config": config.to_dict()}
    if path.exists() and not path.is_dir():
        raise WorkdirError(f"workdir {str(path)!r} exists and is not a directory")
    if cfg_file.exists():
        stored = json.loads(cfg_file.read_text())
        if overwrite:
            shutil.rmtree(path)
        elif not resume:
            raise WorkdirError(
                f"workdir {str(path)!r} already holds a run; pass --resume to continue it "
                "(same config) or --overwrite to delete it and start again"
            )
        elif stored != wanted:
            diff = _config_diff(stored.get("config", {}), wanted["config"])
            raise WorkdirError(
                f"workdir {str(path)!r} holds a different run ({diff}); use another workdir "
                "or --overwrite to delete it"
            )
    elif path.exists() and any(path.iterdir()):
        raise WorkdirError(
            f"workdir {str(path)!r} is not empty and holds no qareg run; choose another "
            "(nothing is deleted)"
        )
    path.mkdir(parents=True, exist_ok=True)
    if not cfg_file.exists():
        cfg_file.write_text(json.dumps(wanted, indent=1) + "\n")
    return path


def _config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "format differs"


# ------------------------------------------------------------------------------- main


def load_data(config: Config) -> data.Dataset:
    """The config's dataset, restricted to its subsets (errors before any training)."""
    ds = data.load_dataset(config.dataset, config.data_dir)
    return subset(ds, config.train_subset, config.test_subset, config.seed)


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    dataset: data.Dataset | None = None,
) -> dict[str, Any]:
    """Run every stage of ``config`` in ``workdir``; returns the results dict.

    Args:
      config: the experiment.
      workdir: run directory (see the module docstring); refused if it holds another run.
      resume: continue the run in ``workdir`` (same config): finished stages are read
        back, an interrupted phase restarts from its last checkpoint.
      overwrite: delete the run in ``workdir`` first.
      progress: tqdm bars and one line per finished stage.
      stop_after: raise :class:`TrainingInterrupted` after this many optimizer steps.
      dataset: use this dataset instead of loading ``config.dataset`` (tests).

    Returns:
      ``{"rows": [...], "pretrain": {...}, "config", "device", "date", "wall_s"}``, also
      written to ``results.json`` (histograms go to ``stages/*.json`` only) and
      ``table.md``.
    """
    t0 = time.perf_counter()
    ds = dataset if dataset is not None else load_data(config)
    data.steps_per_epoch(ds, config.batch_size)  # batch size vs dataset, before any work
    model_kw = {} if config.dropout_rate is None else {"dropout_rate": config.dropout_rate}
    model = get_model(config.model, ds.num_classes, **model_kw)
    path = prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
    ctx = Context(config, path, model, ds, progress, stop_after)
    stages_dir = path / "stages"
    stages_dir.mkdir(exist_ok=True)
    device = device_name()
    label = config.dataset_label or config.dataset
    common = {"model": config.model, "dataset": label, "device": device}

    fp_variables, fp = pretrain(ctx)
    fp_file = stages_dir / "pretrain.json"
    if fp_file.exists():
        fp = json.loads(fp_file.read_text())  # keep the first run's wall time
    else:
        fp_file.write_text(json.dumps(fp) + "\n")
    _say(ctx, f"pretrain: full-precision accuracy {fp['acc_fp']:.4f}")
    rows = []
    for stage, method, k, frozen in planned_stages(config):
        stage_file = stages_dir / f"{stage}.json"
        if stage_file.exists():
            row = json.loads(stage_file.read_text())
        else:
            if frozen is None:
                row = baseline_stage(ctx, fp_variables, method, k)
            else:
                row = regularized_stage(ctx, fp_variables, method, k, freeze_reps=frozen)
            row = {**common, "stage": stage, "acc_fp": fp["acc_fp"], **row}
            tmp = stage_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(row) + "\n")
            os.replace(tmp, stage_file)
        row.pop("histograms", None)
        rows.append(row)
        _say(
            ctx,
            f"{stage}: pre-tuning {row['acc_pre']:.4f}, post-tuning {row['acc_post']:.4f}, "
            f"1/psi {row['ratio']:.1f} ({row['wall_s']:.1f} s)",
        )
    results = {
        "config": config.to_dict(),
        "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pretrain": fp,
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    (path / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (path / "table.md").write_text(report.markdown_table(rows) + "\n")
    return results


def _say(ctx: Context, message: str) -> None:
    if ctx.progress:
        tqdm.write(message)
