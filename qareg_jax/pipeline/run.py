"""``train_and_evaluate(config, workdir)``: pretrain, then every planned stage, then tables.

Workdir layout::

    config.json                 the Config of the run (a different one is refused)
    checkpoints/<stage>/<phase> orbax CheckpointManager directories
    metrics/<stage>.jsonl       every log_every steps: task loss, penalty, per-layer
                                penalty / lambda / mean distance to the levels
    stages/<stage>.json         result row (+ weight histograms for regularized runs)
    models/<stage>.qareg        the final quantized model (compress.save)
    budget/plan.json            with Config.budget: the K per layer of the budget stages,
                                their sensitivities and sizes (budget_plan.make_plan)
    results.json, table.md      all rows (written at the end)

With several ``config.seeds`` every seed runs the whole pipeline (its own pretrained
model) and its stages live one folder deeper, e.g. ``checkpoints/seed-1/<stage>/<phase>``,
``stages/seed-1/<stage>.json``, ``budget/seed-1/plan.json``; the row's ``stage`` is then
``"seed-1/<stage>"``. With one seed the layout is as above.

Rerunning with ``resume=True`` skips finished stages and continues an interrupted phase
from its last checkpoint: the data order is a function of (seed, phase, epoch) and the
dropout key of (seed, phase, step), so the resumed run computes exactly what the
uninterrupted one would have. The budget plan is read back, not measured again.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import time
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from .. import data, report
from ..codebook import make_specs
from ..models import check_input_size, get_model
from ..provenance import device_name
from . import budget_plan
from .config import Config
from .loop import Context, check_interrupt
from .stages import Pretrained, Stage, StageResult, planned_stages, pretrain, run_stage
from .steps import init_variables
from .workdir import (
    WorkdirError,
    check_pretrained_source,
    check_resumable,
    check_stage_source,
    import_pretrained,
    import_stage_records,
    prepare_workdir,
    seed_dirs,
    stage_id,
    stage_ids,
    stored_config,
)


def split_indices(
    n: int, train: int | None, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """``(training indices, validation indices)`` into ``n`` training examples, sorted.

    Without validation: the first ``train`` entries of ``default_rng([seed, 0])``'s
    permutation (all examples when ``train`` is None). With ``val_fraction = f``: the same
    permutation's last ``round(f * n)`` entries are validation and the training subset
    its first ``train`` entries (default: all the others), so both are disjoint and, for
    ``train = n - round(f * n)``, the training subset is the one without validation.

    Raises:
      ValueError: ``f * n`` rounds to 0, or training and validation do not both fit.
    """
    if not val_fraction:
        if train is None or train >= n:
            return np.arange(n), np.arange(0)
        return np.sort(np.random.default_rng([seed, 0]).permutation(n)[:train]), np.arange(0)
    n_val = int(round(val_fraction * n))
    if n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} of {n} training examples is 0 examples")
    pool = n - n_val
    if train is not None and train > pool:
        raise ValueError(
            f"train_subset={train} and val_fraction={val_fraction} ({n_val} examples) need "
            f"more than the {n} training examples"
        )
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(perm[: pool if train is None else train]), np.sort(perm[pool:])


def subset(
    ds: data.Dataset,
    train: int | None,
    test: int | None,
    seed: int = 0,
    *,
    val_fraction: float = 0.0,
) -> data.Dataset:
    """``ds`` restricted to fixed random subsets of ``train`` / ``test`` examples (sorted),
    with a validation split of ``val_fraction`` of the training set (:func:`split_indices`)."""
    tr, val = split_indices(len(ds.train_labels), train, val_fraction, seed)
    n_test = len(ds.test_labels)
    te = np.arange(n_test)
    if test is not None and test < n_test:
        te = np.sort(np.random.default_rng([seed, 1]).permutation(n_test)[:test])
    return dataclasses.replace(
        ds,
        train_images=ds.train_images[tr],
        train_labels=ds.train_labels[tr],
        test_images=ds.test_images[te],
        test_labels=ds.test_labels[te],
        val_images=ds.train_images[val] if val_fraction else None,
        val_labels=ds.train_labels[val] if val_fraction else None,
    )


def seed_data(full: data.Dataset, config: Config) -> data.Dataset:
    """The data of the run with ``config.seed``: with a validation split every subset is
    drawn with ``config.data_seed`` (the same data for every seed), else with the seed."""
    seed = config.data_seed if config.val_fraction else config.seed
    return subset(
        full, config.train_subset, config.test_subset, seed, val_fraction=config.val_fraction
    )


def _training_indices(fields: dict[str, Any], seed: int, n: int) -> np.ndarray:
    """The training indices :func:`seed_data` draws for ``seed`` under config ``fields``."""
    split_seed = fields["data_seed"] if fields["val_fraction"] else seed
    return split_indices(n, fields["train_subset"], fields["val_fraction"], split_seed)[0]


def check_same_training_data(source: str | os.PathLike, config: Config, n: int) -> None:
    """Refuse (WorkdirError) a ``pretrained_from`` run that trained any of the seeds it
    holds for ``config`` on other examples of the ``n`` training examples (other subsets
    or split)."""
    stored, mine = stored_config(source), config.to_dict()
    for seed in check_pretrained_source(source, config):
        if not np.array_equal(_training_indices(stored, seed, n), _training_indices(mine, seed, n)):
            keys = ("train_subset", "val_fraction", "data_seed")
            diff = "; ".join(f"{k}: {stored[k]!r} -> {mine[k]!r}" for k in keys)
            raise WorkdirError(
                f"--pretrained-from: the run in {str(source)!r} trained seed {seed} on other "
                f"examples ({diff})"
            )


def _sources(pretrained_from: Any) -> list[str | os.PathLike]:
    if pretrained_from is None:
        return []
    if isinstance(pretrained_from, (str, os.PathLike)):
        return [pretrained_from]
    return list(pretrained_from)


def load_data(config: Config) -> data.Dataset:
    """The config's dataset, restricted to its subsets (errors before any training)."""
    return seed_data(data.load_dataset(config.dataset, config.data_dir), config)


def _epochs(n: int) -> str:
    return f"{n} epoch{'s' if n != 1 else ''}"


def _stage_phases(config: Config, stage: Stage, spe: int) -> list[tuple[str, int, int]]:
    """``(phase, epochs, steps)`` of ``stage``: PTQ stages only fine-tune; the others
    (regularizers, STE, DKM, and any new kind) train ``reg_epochs`` first."""
    tune = ("finetune", config.finetune_epochs, config.finetune_epochs * spe)
    if stage.kind == "ptq":
        return [tune]
    phase = {"regularizer": "reg"}.get(stage.kind, stage.kind)
    return [(phase, config.reg_epochs, config.reg_epochs * spe), tune]


def plan(
    config: Config, ds: data.Dataset, copied: Sequence[int] = (), recorded: Collection[str] = ()
) -> tuple[str, int]:
    """``(text, steps)``: the run's stages with the optimizer steps of each phase, and the
    steps left to run (every seed; the seeds in ``copied`` do not pretrain, and the stage
    ids in ``recorded``, e.g. ``"seed-1/qat-ste-k2"``, are read back), printed before any
    work."""
    spe = data.steps_per_epoch(ds, config.batch_size)
    dirs = seed_dirs(config.to_dict())
    seeds = len(dirs)

    def todo(name: str, skip: Collection[int] = ()) -> int:  # the seeds still to run it
        return sum(s not in skip and stage_id(d, name) not in recorded for s, d in dirs.items())

    pre = config.pretrain_epochs * spe
    fresh = todo("pretrain", skip=copied)
    lines = [f"  pretrain: train {pre} steps ({_epochs(config.pretrain_epochs)})"]
    if copied:
        lines[0] += f"; copied for seeds {sorted(copied)}, not trained again"
    elif fresh < seeds:
        lines[0] += " (finished: restored from its checkpoint)"
    steps, done = pre * fresh, 0
    for stage in planned_stages(config):
        phases = _stage_phases(config, stage, spe)
        left = todo(stage.name)
        steps += sum(n for _, _, n in phases) * left
        parts = " + ".join(f"{p} {n} ({_epochs(e)})" for p, e, n in phases)
        done += seeds - left
        mark = (
            "" if left == seeds else " (recorded: read back)" if not left else " (partly recorded)"
        )
        lines.append(f"  {stage.name}: {parts}{mark}")
    total = f"{steps:,} optimizer steps " + (f"left ({done} recorded stages)" if done else "in all")
    head = (
        f"plan: {len(lines) - 1} stages after pretraining, {seeds} seed{'s' if seeds > 1 else ''}"
        f"; {spe} steps per epoch ({len(ds.train_labels):,} examples, batch "
        f"{config.batch_size}); {total}"
    )
    if config.budget is not None:
        lines.append(
            f"  (*-budget stages: K per layer from {list(config.budget_ks)} for budget "
            f"{config.budget!r}, planned after pretraining)"
        )
    if seeds > 1:
        lines.append(f"  (every stage once per seed: {', '.join(map(str, config.seed_list))})")
    return "\n".join([head, *lines]), steps


def _estimator(steps: int, say: Callable[[str], None]) -> Callable[[str, str, float], None]:
    """The ``on_timed`` callback printing one time estimate, at the first timed interval."""
    done: list[bool] = []

    def on_timed(stage: str, phase: str, seconds: float) -> None:
        if done:
            return
        done.append(True)
        total = seconds * steps
        say(
            f"estimate: {seconds * 1e3:.1f} ms per step ({stage} {phase}) x {steps:,} steps = "
            f"{_duration(total)} of training for the whole run (plus compilation and "
            "evaluation; regularized and QAT steps can be slower)"
        )

    return on_timed


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"~{seconds:.0f} s"
    if seconds < 7200:
        return f"~{seconds / 60:.0f} min"
    return f"~{seconds / 3600:.1f} h"


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pretrained(ctx: Context, stages_dir: pathlib.Path) -> Pretrained:
    """Pretraining (restored from its checkpoint when finished), with the first run's row.

    Raises WorkdirError when the row records another model's digest than the checkpoint's.
    """
    fp = pretrain(ctx)
    fp_file = stages_dir / f"{ctx.stage_id('pretrain')}.json"
    if fp_file.exists():  # keep the first run's wall and step times
        stored = json.loads(fp_file.read_text())
        if stored.get("digest", fp.digest) != fp.digest:
            raise WorkdirError(
                f"{str(fp_file)!r} records the full-precision model {stored['digest']}, but "
                f"the checkpoint beside it holds {fp.digest}: the run directory mixes two runs"
            )
        fp = dataclasses.replace(
            fp, acc_fp=stored["acc_fp"], wall_s=stored["wall_s"], step_s=stored.get("step_s")
        )
        if "digest" not in stored:  # a row written before digests: record the checkpoint's
            _write_atomic(fp_file, json.dumps({**stored, "digest": fp.digest}) + "\n")
    else:
        fp_file.parent.mkdir(parents=True, exist_ok=True)
        fp_file.write_text(json.dumps(fp.to_json()) + "\n")
    return fp


def _check_same_fp(stage_file: pathlib.Path, result: StageResult, fp: Pretrained) -> None:
    """Refuse (WorkdirError) a stage record written from another full-precision model than
    ``fp`` (e.g. copied from a run whose pretraining differs): by digest, or by accuracy
    for records written before digests."""
    by_digest = result.fp_digest is not None and fp.digest is not None
    recorded, mine = (result.fp_digest, fp.digest) if by_digest else (result.acc_fp, fp.acc_fp)
    if recorded != mine:
        what = "digest" if by_digest else "test accuracy"
        raise WorkdirError(
            f"{str(stage_file)!r} was written from another full-precision model than this "
            f"run's ({what} {recorded} vs {mine}): move it out of the run directory and the "
            "stage trains again from this run's model"
        )


def _check_before_training(config: Config, model: Any, ds: data.Dataset, compiled: dict) -> None:
    """Refuse (ValueError) a budget below the smallest packed model, or a ``group_size``
    that does not divide a selected layer's output channels, before any training.

    The sizes need the model's shapes: its initialisation for the first seed, kept in
    ``compiled`` where ``Context.initial_variables`` finds it (no second compilation).
    """
    if config.budget is None and config.group_size is None:
        return
    seed = config.seed_list[0]
    variables = compiled.setdefault(("init", seed), init_variables(model, ds.image_shape, seed))
    if config.group_size is not None:  # G must divide every selected layer's channels
        make_specs(
            variables["params"], include=config.include, exclude=config.exclude,
            k=max(config.ks, default=2), group_size=config.group_size,
        )  # fmt: skip
    if config.budget is not None:
        budget_plan.check_budget(config, budget_plan.layer_bytes(config, variables))


def _run_seed(
    ctx: Context, stages_dir: pathlib.Path, say: Callable[[str], None]
) -> tuple[Pretrained, list[dict[str, Any]], dict[str, Any] | None]:
    """Pretraining, the budget plan (``say`` prints it) and every planned stage of
    ``ctx.config`` (one seed); ``(fp, rows, the plan's plan.json record or None)``."""
    where = f"{ctx.subdir}/" if ctx.subdir else ""
    fp = _pretrained(ctx, stages_dir)
    ctx.say(f"{where}pretrain: full-precision accuracy {fp.acc_fp:.4f}")
    record = None
    if ctx.config.budget is not None:
        plan, record, stored = budget_plan.budget_plan(ctx, fp)
        ctx = dataclasses.replace(ctx, plan=plan)
        say(budget_plan.describe(plan, record, stored, where))
    rows = []
    for stage in planned_stages(ctx.config):
        check_interrupt()  # between stages too: PTQ stages may not train
        stage_file = stages_dir / f"{ctx.stage_id(stage.name)}.json"
        if stage_file.exists():
            result = StageResult.from_json(json.loads(stage_file.read_text()))
            _check_same_fp(stage_file, result, fp)
        else:
            result = run_stage(ctx, fp, stage)
            _write_atomic(stage_file, json.dumps(result.to_json()) + "\n")
        rows.append(result.to_json(histograms=False))
        ctx.say(
            f"{result.stage}: pre-tuning {result.acc_pre:.4f}, post-tuning {result.acc_post:.4f}"
            f", 1/psi {result.ratio:.1f} ({result.wall_s:.1f} s)"
        )
    return fp, rows, record


def _load_and_check(
    config: Config,
    first_config: Config,
    dataset: data.Dataset | None,
    sources: list[str | os.PathLike],
) -> tuple[data.Dataset, data.Dataset, Any, dict[Any, Any]]:
    """``(full dataset, first seed's data, model, compiled steps)``, after every check
    that needs the data (split sizes, batch size, pretrained sources' training examples,
    model vs image size, the first step's compilation) and before the workdir is touched."""
    full = dataset if dataset is not None else data.load_dataset(config.dataset, config.data_dir)
    first = seed_data(full, first_config)  # split sizes vs dataset, before any work
    for source in sources:
        check_same_training_data(source, config, len(full.train_labels))
    data.steps_per_epoch(first, config.batch_size)  # batch size vs dataset
    model_kw = {} if config.dropout_rate is None else {"dropout_rate": config.dropout_rate}
    model = get_model(config.model, first.num_classes, **model_kw)
    try:
        check_input_size(config.model, first.image_shape)
    except ValueError as e:
        raise ValueError(
            f"--model {config.model} does not fit --dataset {config.dataset}: {e}; choose a "
            "model for small images (small) or a dataset with larger images"
        ) from None
    compiled: dict[Any, Any] = {}
    _check_before_training(config, model, first, compiled)
    return full, first, model, compiled


def _write_results(
    path: pathlib.Path,
    config: Config,
    device: str,
    pretrains: dict[str, Any],
    rows: list[dict[str, Any]],
    plans: dict[str, Any],
    sources: list[str | os.PathLike],
    t0: float,
) -> dict[str, Any]:
    """The results record of :func:`train_and_evaluate`, written to ``results.json``
    and ``table.md`` in ``path``."""
    results = {
        "config": config.to_dict(),
        "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pretrain": pretrains[str(config.seed_list[0])],
        "seeds": list(config.seed_list),
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    if sources:
        results["pretrained_from"] = [str(s) for s in sources]
    if len(config.seed_list) > 1:
        results["pretrain_by_seed"] = pretrains
    if config.budget is not None:
        results["budget_plans"] = plans
    (path / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (path / "table.md").write_text(report.markdown_table(rows) + "\n")
    return results


def _import_stages(
    source: str | os.PathLike, path: pathlib.Path, config: Config, say: Callable[[str], None]
) -> None:
    """Copy into ``path`` the records of ``config``'s planned stages (every seed) that
    ``source`` holds and ``path`` lacks, and say which."""
    names = stage_ids(config, (st.name for st in planned_stages(config)))
    read = import_stage_records(source, path, names)
    say(
        f"{len(read)} finished stages copied from {str(source)!r}"
        + (": " if read else "")
        + ", ".join(read)
    )


def train_and_evaluate(
    config: Config,
    workdir: str | os.PathLike,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    dataset: data.Dataset | None = None,
    say: Callable[[str], None] | None = None,
    pretrained_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    stages_from: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
) -> dict[str, Any]:
    """Run every stage of ``config`` (for every seed) in ``workdir``; returns the results.

    Args:
      config: the experiment.
      workdir: run directory (see the module docstring); refused if it holds another run.
      resume: continue the run in ``workdir`` (same config): finished stages are read
        back, an interrupted phase restarts from its last checkpoint; the ``results.json``
        and ``table.md`` of an earlier end are removed (written again when the run ends).
      overwrite: delete the run in ``workdir`` first.
      progress: tqdm bars and one line per finished stage.
      stop_after: raise ``TrainingInterrupted`` after this many optimizer steps.
      dataset: use this dataset (before subsets and validation split) instead of loading
        ``config.dataset`` (tests).
      say: prints the plan (:func:`plan`, before any training) and one time estimate
        (after the first timed steps); default: ``tqdm.write`` with ``progress``, else
        nothing.
      pretrained_from: a run directory, or several, whose finished full-precision models
        (same pretraining fields, ``workdir.PRETRAIN_FIELDS``, and training examples) this
        run starts from instead of pretraining; each seed comes from the first directory
        holding it, seeds none holds pretrain as usual.
      stages_from: a folder with the ``stages/`` records of an earlier run of the same
        config (its run directory, or the results folder it wrote), or several (each stage
        from the first that records it): the stages they hold and ``workdir`` lacks are
        read back instead of trained, each checked to come from this run's full-precision
        model. With ``pretrained_from``, this rebuilds a run whose directory was lost.

    Returns:
      ``{"rows": [StageResult.to_json()...], "pretrain": {...}, "config", "device", "date",
      "wall_s", "seeds"}`` (+ ``"pretrain_by_seed"`` with several seeds, ``"budget_plans"``
      ``{seed: budget/plan.json record}`` with a budget), also written to
      ``results.json`` (histograms go to ``stages/*.json`` only) and ``table.md`` (mean
      +- std over seeds with several); ``"pretrained_from"`` names the source run.

    Raises:
      WorkdirError: ``resume`` without a run in ``workdir`` (before loading data), a
        workdir holding another run, or a ``pretrained_from`` or ``stages_from`` that
        cannot serve.
      ValueError: ``config.budget`` below the smallest packed model (before any training).
    """
    t0 = time.perf_counter()
    if resume:
        check_resumable(workdir)  # before the data: a mistyped workdir must not start a run
    sources = _sources(pretrained_from)
    held = {source: check_pretrained_source(source, config) for source in sources}
    kept = _sources(stages_from)
    for source in kept:
        check_stage_source(source, config, held)
    configs = [config.replace(seed=s, seeds=None) for s in config.seed_list]
    full, first, model, compiled = _load_and_check(config, configs[0], dataset, sources)
    path = prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
    # An earlier end's results no longer describe a run that trains again; until this one
    # ends, readers (report.load_rows) fall back to the stage records.
    for written_at_end in ("results.json", "table.md"):
        (path / written_at_end).unlink(missing_ok=True)
    if say is None:
        say = tqdm.write if progress else lambda message: None
    copied: list[int] = []
    for source in sources:
        seeds = import_pretrained(source, path, config)
        copied += seeds
        if seeds:
            say(f"pretrained models of seeds {seeds} copied from {str(source)!r}")
    for source in kept:
        _import_stages(source, path, config, say)
    recorded = {
        str(p.relative_to(path / "stages").with_suffix("")) for p in path.glob("stages/**/*.json")
    }
    text, steps = plan(config, first, copied, recorded)
    say(text)
    on_timed = _estimator(steps, say)
    check_interrupt()
    device = device_name()
    stages_dir = path / "stages"
    stages_dir.mkdir(exist_ok=True)
    counter, rows, pretrains, plans = [0], [], {}, {}
    for cfg in configs:
        ds = first if cfg is configs[0] else seed_data(full, cfg)
        subdir = f"seed-{cfg.seed}" if len(configs) > 1 else ""
        ctx = Context(
            cfg, path, model, ds, device, progress, stop_after,
            counter=counter, compiled=compiled, subdir=subdir, on_timed=on_timed,
        )  # fmt: skip
        fp, seed_rows, plans[str(cfg.seed)] = _run_seed(ctx, stages_dir, say)
        pretrains[str(cfg.seed)] = fp.to_json()
        rows += seed_rows
    return _write_results(path, config, device, pretrains, rows, plans, sources, t0)
