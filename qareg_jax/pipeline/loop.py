"""One training phase: checkpoints (orbax), metrics (jsonl), NaN detection and resume."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import itertools
import json
import pathlib
import signal
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from .. import data
from ..budget import Plan
from ..codebook import QuantSpec
from ..penalty import penalty_stats
from .config import Config
from .steps import StepFn, TrainState, empty_window, init_variables, make_eval_fn
from .workdir import stage_id as _stage_id


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the message names the stage, phase and step."""


class TrainingInterrupted(RuntimeError):
    """Raised by the ``stop_after`` hook of ``train_and_evaluate`` (tests, debugging)."""


# Steps the host may dispatch before the oldest of them has run. JAX dispatches
# asynchronously: unbounded, the loop queues every step up to its next host sync
# (``log_every`` steps), so a Ctrl-C waits for all of them to run (minutes for a slow
# step) and the progress bar counts steps not yet computed. Two keep the device busy.
MAX_STEPS_AHEAD = 2


def _bound_steps_ahead(pending: collections.deque, state: TrainState) -> None:
    """Record ``state``'s step as dispatched; wait for the oldest one beyond
    :data:`MAX_STEPS_AHEAD`.

    The marker is a copy of a scalar of ``state``: the next step donates the state's
    buffers, and a copy outlives them.
    """
    pending.append(state.window["count"] + 0)
    while len(pending) > MAX_STEPS_AHEAD:
        pending.popleft().block_until_ready()


# Set by the SIGINT handler of :func:`deferred_interrupts`; read by :func:`check_interrupt`.
_INTERRUPT = threading.Event()


@contextlib.contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Within the block, a first Ctrl-C (SIGINT) only sets a flag, and the pipeline raises
    ``KeyboardInterrupt`` at its next safe point (:func:`check_interrupt`: between steps,
    never inside a checkpoint save); a second Ctrl-C raises at once.

    Python's default handler raises wherever the main thread is, e.g. inside orbax's save
    (a traceback and a half-written step) or a gc callback (the interrupt is swallowed and
    the run goes on). Outside the main thread, or with a non-default handler installed
    (e.g. by the caller), the block changes nothing.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if _INTERRUPT.is_set():
            raise KeyboardInterrupt
        _INTERRUPT.set()

    _INTERRUPT.clear()
    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _INTERRUPT.clear()  # a stale request must not stop a later run of this process


def interrupt_requested() -> bool:
    """Whether a Ctrl-C arrived in the current :func:`deferred_interrupts` block."""
    return _INTERRUPT.is_set()


def check_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if a Ctrl-C arrived (see :func:`deferred_interrupts`)."""
    if _INTERRUPT.is_set():
        raise KeyboardInterrupt


@dataclasses.dataclass(frozen=True)
class Context:
    """What every stage needs; built once by ``train_and_evaluate``.

    Attributes:
      config: the run's configuration.
      workdir: the run directory.
      model: the flax module.
      ds: the dataset in memory.
      device: the accelerator's name, recorded in every result row.
      progress: show tqdm bars.
      stop_after: raise :class:`TrainingInterrupted` after this many optimizer steps in
        this process (simulates a crash; nothing is saved at that point).
      counter: a one-element list counting optimizer steps for ``stop_after``.
      compiled: jitted functions shared by the stages of the run (the evaluation, the
        fine-tuning step per K), so each compiles once: compiling, not stepping, dominates
        small runs on a CPU.
      subdir: "" (one seed) or e.g. "seed-1": the directory every stage's checkpoints,
        metrics, result and model go under (see :meth:`stage_id`).
      step_times: ``{(stage_id, phase): median seconds per step}`` of the phases trained
        in this process (None: too few steps to time; see :func:`run_phase`).
      on_timed: called with ``(stage_id, phase, seconds per step)`` at the first timed
        interval of every phase trained in this process (the run's time estimate).
      plan: this seed's K per layer for the budget stages (``Config.budget``; set after
        pretraining by ``budget_plan.budget_plan``, file paths ``"params/..."``); None
        without a budget.
    """

    config: Config
    workdir: pathlib.Path
    model: nn.Module
    ds: data.Dataset
    device: str = ""
    progress: bool = True
    stop_after: int | None = None
    counter: list[int] = dataclasses.field(default_factory=lambda: [0])
    compiled: dict[Any, Any] = dataclasses.field(default_factory=dict)
    subdir: str = ""
    step_times: dict[tuple[str, str], float | None] = dataclasses.field(default_factory=dict)
    on_timed: Callable[[str, str, float], None] | None = None
    plan: Plan | None = None

    def stage_id(self, stage: str) -> str:
        """``stage`` under this seed's subdirectory, e.g. ``"seed-1/reg-nearest-k4"``.

        Paths use it; data-order and dropout seeds use the bare ``stage`` (with
        ``config.seed``), so a seed of a multi-seed run computes what a one-seed run would.
        """
        return _stage_id(self.subdir, stage)

    def initial_variables(self) -> dict[str, Any]:
        """The model's random initialisation for ``config.seed`` (computed once per run:
        compiling the initializers' random number generation takes seconds on a CPU)."""
        key = ("init", self.config.seed)  # ``compiled`` is shared by the seeds of a run
        if key not in self.compiled:
            self.compiled[key] = init_variables(self.model, self.ds.image_shape, self.config.seed)
        return self.compiled[key]

    def accuracy(self, params: Any, model_state: Mapping[str, Any], split: str = "test") -> float:
        """Accuracy of ``params`` (the "params" collection) with ``model_state`` on the
        "test" or "val" split."""
        if "eval" not in self.compiled:
            self.compiled["eval"] = make_eval_fn(self.model)
        return self.compiled["eval"](
            variables(params, model_state), self.ds, self.config.eval_batch_size, split
        )

    def val_accuracy(self, params: Any, model_state: Mapping[str, Any]) -> float | None:
        """Validation accuracy, or None when the dataset has no validation split."""
        if self.ds.val_labels is None:
            return None
        return self.accuracy(params, model_state, "val")

    def say(self, message: str) -> None:
        """One line above the progress bars (nothing without ``progress``)."""
        if self.progress:
            tqdm.write(message)


def variables(params: Any, model_state: Mapping[str, Any]) -> dict[str, Any]:
    """Flax variables from the "params" collection and the other collections."""
    return {"params": params, **model_state}


def phase_seed(seed: int, name: str) -> int:
    """A data/dropout seed per (seed, phase name), independent of the order phases run in."""
    return int(np.random.SeedSequence([seed, zlib.crc32(name.encode())]).generate_state(1)[0])


def batches_from(ds: data.Dataset, batch_size: int, seed: int, start: int) -> Iterator[data.Batch]:
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


def checkpoint_manager(directory: pathlib.Path) -> ocp.CheckpointManager:
    """The orbax manager of one phase's directory (two checkpoints kept, synchronous)."""
    options = ocp.CheckpointManagerOptions(max_to_keep=2, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory.absolute(), options=options)


def restore_state(mngr: ocp.CheckpointManager, step: int, like: TrainState) -> TrainState:
    """Checkpoint ``step`` restored into the structure (and placement) of ``like``.

    Checkpoints hold the state as a plain dict (:meth:`TrainState.as_dict`), the layout
    format-1 workdirs were written with, so both old and new checkpoints restore.
    """
    restored = mngr.restore(step, args=ocp.args.StandardRestore(like.as_dict()))
    return TrainState(**restored)


def save_state(mngr: ocp.CheckpointManager, step: int, state: TrainState) -> None:
    """Checkpoint ``state`` as step ``step`` (see :func:`restore_state`)."""
    mngr.save(step, args=ocp.args.StandardSave(state.as_dict()))


def _rewrite_metrics(path: pathlib.Path, phase: str, after: int) -> None:
    """Drop the records of ``phase`` past step ``after`` (a resumed phase logs them again)."""
    if not path.exists():
        return
    records = [json.loads(line) for line in path.read_text().splitlines() if line]
    kept = [r for r in records if not (r["phase"] == phase and r["step"] > after)]
    path.write_text("".join(json.dumps(r) + "\n" for r in kept))


def _check_finite(
    state: TrainState, mngr: ocp.CheckpointManager, where: str, directory: pathlib.Path
) -> None:
    bad = int(state.bad_step)  # host sync, only at log / checkpoint steps
    if bad >= 0:
        last = mngr.latest_step()
        kept = (
            f"The last good checkpoint is step {last} in {directory}"
            if last is not None
            else f"No checkpoint of {where} was written before it"
        )
        raise TrainingDivergedError(
            f"the loss became NaN or infinite at step {bad} of {where}; stopped. {kept}. "
            "Lower the learning rate or lambda."
        )


class StepTimer:
    """Median seconds per optimizer step between host syncs, from the second sync on.

    The first interval holds the compilation; the time spent at a sync point (metrics,
    checkpoints, hooks) is excluded, so phases with more logging are not slower per step.
    """

    def __init__(self, start: int) -> None:
        self.step, self.t, self.syncs, self.per_step = start, time.perf_counter(), 0, []

    def sync(self, step: int) -> None:
        """At a sync point, once the state of ``step`` is computed (before the host work)."""
        if self.syncs:  # not the compiling interval
            self.per_step.append((time.perf_counter() - self.t) / (step - self.step))
        self.step, self.syncs = step, self.syncs + 1

    def resume(self) -> None:
        """After the host work of a sync point: the next interval starts now."""
        self.t = time.perf_counter()

    def median(self) -> float | None:
        return float(np.median(self.per_step)) if self.per_step else None


def run_phase(
    ctx: Context,
    stage: str,
    phase: str,
    state: TrainState,
    step_fn: StepFn,
    epochs: int,
    *,
    specs: Mapping[str, QuantSpec] | None = None,
    hook: Callable[[TrainState], TrainState] | None = None,
    hook_every: int | None = None,
) -> TrainState:
    """Train ``state`` for ``epochs`` epochs with checkpoints, logging and NaN detection.

    Restores the latest checkpoint of ``checkpoints/<stage>/<phase>`` if there is one
    (a finished phase then returns at once). Every ``log_every`` steps appends the mean
    task loss and penalty since the last record, and ``penalty_stats`` per layer when
    ``specs`` is given, to ``metrics/<stage>.jsonl``. With ``hook``, every ``hook_every``
    steps (not after the last) ``state = hook(state)`` runs on the host between jitted
    steps, before that step's checkpoint (so a resumed phase replays it). The median
    seconds per step go to ``ctx.step_times[stage_id, phase]``.

    Raises:
      TrainingDivergedError: a non-finite loss; the last good checkpoint is kept.
      TrainingInterrupted: the ``ctx.stop_after`` hook fired.
    """
    if hook is not None and not hook_every:
        raise ValueError("run_phase: a hook needs hook_every (steps between its calls)")
    cfg, sid = ctx.config, ctx.stage_id(stage)
    total = epochs * data.steps_per_epoch(ctx.ds, cfg.batch_size)
    directory = ctx.workdir / "checkpoints" / sid / phase
    mngr = checkpoint_manager(directory)
    metrics_path = ctx.workdir / "metrics" / f"{sid}.jsonl"
    metrics_path.parent.mkdir(parents=True, exist_ok=True)
    start = mngr.latest_step() or 0
    if start:
        state = restore_state(mngr, start, state)
    if start >= total:
        mngr.close()
        return state
    _rewrite_metrics(metrics_path, phase, start)
    stats_fn = jax.jit(lambda p, s: penalty_stats(p, specs, s)) if specs else None
    batches = batches_from(ctx.ds, cfg.batch_size, phase_seed(cfg.seed, f"{stage}/{phase}"), start)
    desc, timer = f"{sid} {phase}", StepTimer(start)
    bar = tqdm(total=total, initial=start, desc=desc, disable=not ctx.progress, leave=False)
    pending: collections.deque = collections.deque()
    try:
        for step in range(start + 1, total + 1):
            # Here, not inside the save below: a Ctrl-C waits for a save to complete.
            check_interrupt()
            state = step_fn(state, next(batches))
            _bound_steps_ahead(pending, state)
            bar.update()
            ctx.counter[0] += 1
            if ctx.stop_after is not None and ctx.counter[0] >= ctx.stop_after:
                raise TrainingInterrupted(f"stopped after {ctx.counter[0]} steps ({desc})")
            log, save = step % cfg.log_every == 0, step % cfg.checkpoint_every == 0
            due = hook is not None and step % hook_every == 0 and step < total
            if not (log or save or due or step == total):
                continue
            _check_finite(state, mngr, desc, directory)  # a host sync
            timer.sync(step)
            if ctx.on_timed is not None and len(timer.per_step) == 1:
                ctx.on_timed(sid, phase, timer.per_step[0])
            if due:
                state = hook(state)
            if log or step == total:
                record = _metrics_record(phase, step, state, stats_fn)
                with open(metrics_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                state = state.replace(window=empty_window())
                bar.set_postfix(loss=f"{record['task_loss']:.3f}", refresh=False)
            if save or step == total:
                save_state(mngr, step, state)
            timer.resume()
    finally:
        bar.close()
        mngr.close()
        # Stops grain's prefetch threads now, not at interpreter exit after an interrupt.
        batches.close()
    ctx.step_times[sid, phase] = timer.median()
    return state


def _metrics_record(
    phase: str, step: int, state: TrainState, stats_fn: Callable | None
) -> dict[str, Any]:
    window = jax.device_get(state.window)
    count = max(int(window["count"]), 1)
    record: dict[str, Any] = {
        "phase": phase,
        "step": step,
        "task_loss": float(window["task_loss"]) / count,
        "penalty": float(window["penalty"]) / count,
    }
    if stats_fn is not None:
        # The schedule's lambda at the last step taken (step - 1).
        stats = jax.device_get(stats_fn(state.params, step - 1))
        record["layers"] = {p: {k: float(v) for k, v in s.items()} for p, s in stats.items()}
    return record
