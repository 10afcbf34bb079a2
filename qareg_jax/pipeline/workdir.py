"""The run directory policy: a workdir holds one run, continued only with the same config."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Iterable, Mapping
from typing import Any

from .config import Config

FORMAT = 1  # bump when the workdir layout changes


class WorkdirError(ValueError):
    """The workdir holds another run (or other files) and neither resume nor overwrite is set."""


def check_resumable(workdir: str | os.PathLike) -> pathlib.Path:
    """``workdir`` as a path if it holds a run to continue; cheap, so callers check it
    before loading data (a mistyped ``--resume --workdir`` must not start hours of work).

    Raises:
      WorkdirError: ``workdir`` does not exist or holds no ``config.json``.
    """
    path = pathlib.Path(workdir)
    if not (path / "config.json").is_file():
        why = "does not exist" if not path.exists() else "holds no run (no config.json)"
        raise WorkdirError(
            f"--resume: workdir {str(path)!r} {why}; nothing to continue. Check the path, "
            "or leave out --resume to start a new run there"
        )
    return path


def prepare_workdir(
    workdir: str | os.PathLike, config: Config, *, resume: bool = False, overwrite: bool = False
) -> pathlib.Path:
    """Create ``workdir`` or check that it may be used; writes ``config.json``.

    A workdir holding a run continues only with ``resume`` (and the same config) and is
    emptied only with ``overwrite``; a non-empty directory that holds no run is refused,
    and so is ``resume`` without a run to continue (:func:`check_resumable`).
    A stored config that lacks fields added since it was written counts as having their
    defaults, so new fields do not make an old run "a different run".

    Raises:
      WorkdirError: with the reason and the flag to use.
    """
    if resume and overwrite:
        raise WorkdirError("give resume or overwrite, not both")
    if resume:
        check_resumable(workdir)
    path = pathlib.Path(workdir)
    cfg_file = path / "config.json"
    wanted = {"format": FORMAT, "config": config.to_dict()}
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
        elif (stored := _with_defaults(stored)) != wanted:
            diff = config_diff(stored.get("config", {}), wanted["config"])
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


def _with_defaults(stored: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` (a config.json) with the current defaults of the fields it lacks."""
    config = stored.get("config")
    if not isinstance(config, Mapping):
        return dict(stored)
    return {**stored, "config": {**Config().to_dict(), **config}}


def config_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """``"key: old -> new; ..."`` for the keys whose values differ (sorted), for error
    messages and search notes; ``"format differs"`` when no key does."""
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys) or "format differs"


# The fields that decide what pretraining computes (and so whether a run may reuse it),
# besides the training examples, which train_and_evaluate compares once the data is loaded
# (a validation split may leave the same training subset as an explicit train_subset).
PRETRAIN_FIELDS = (
    "model", "dataset", "data_dir", "test_subset", "dropout_rate", "batch_size",
    "optimizer", "weight_decay", "pretrain_epochs", "pretrain_lr",
)  # fmt: skip


def _same_pretraining_field(key: str, stored: Any, wanted: Any) -> bool:
    """Whether a :data:`PRETRAIN_FIELDS` value of a source run matches the config's. A
    ``"folder:PATH"`` dataset is identified by its file name, so that a run (or an export
    committed with a repository) serves on a machine that keeps the data elsewhere."""
    if key == "dataset" and all(isinstance(v, str) for v in (stored, wanted)):
        if stored.startswith("folder:") and wanted.startswith("folder:"):
            return pathlib.PurePath(stored[7:]).name == pathlib.PurePath(wanted[7:]).name
    return stored == wanted


def seed_dirs(config: Mapping[str, Any]) -> dict[int, str]:
    """``{seed: subdir}`` of a stored or current config dict (see ``Context.subdir``):
    ``""`` for a one-seed run, ``"seed-S"`` for each seed of a run of several."""
    seeds = config.get("seeds") or [config.get("seed", 0)]
    return {int(s): (f"seed-{s}" if len(seeds) > 1 else "") for s in seeds}


def stage_id(sub: str, stage: str) -> str:
    """``stage``'s id under a seed's subdirectory ``sub`` (see :func:`seed_dirs`), as
    stage records, metrics and checkpoints are named: ``"seed-1/qat-ste-k2"``, or the
    bare ``stage`` in a one-seed run (``sub == ""``)."""
    return f"{sub}/{stage}" if sub else stage


def stage_ids(config: Config, names: Iterable[str]) -> list[str]:
    """The ids of the stages ``names`` for every seed of ``config``, seed by seed."""
    names = list(names)
    return [stage_id(sub, name) for sub in seed_dirs(config.to_dict()).values() for name in names]


def stored_config(source: str | os.PathLike) -> dict[str, Any]:
    """The config (with today's defaults for missing fields) of the run in ``source``."""
    return _with_defaults(json.loads((pathlib.Path(source) / "config.json").read_text()))["config"]


def check_pretrained_source(source: str | os.PathLike, config: Config) -> dict[int, str]:
    """``{seed: subdir in source}`` for the seeds of ``config`` whose finished pretraining
    the run in ``source`` holds; cheap (no data), so callers check before any work (the
    training examples are compared once the data is loaded).

    Raises:
      WorkdirError: ``source`` holds no run, its pretraining differs from ``config``'s
        (the fields of :data:`PRETRAIN_FIELDS`), or it finished none of ``config``'s seeds.
    """
    path = pathlib.Path(source)
    if not (path / "config.json").is_file():
        raise WorkdirError(f"--pretrained-from: {str(path)!r} holds no run (no config.json)")
    stored = stored_config(path)
    wanted = config.to_dict()
    differ = {
        k: v
        for k, v in wanted.items()
        if k in PRETRAIN_FIELDS and not _same_pretraining_field(k, stored.get(k), v)
    }
    if differ:
        diff = config_diff({k: stored.get(k) for k in differ}, differ)
        raise WorkdirError(
            f"--pretrained-from: the run in {str(path)!r} pretrained differently ({diff})"
        )
    found = {
        seed: sub
        for seed, sub in seed_dirs(stored).items()
        if seed in config.seed_list and (path / "stages" / sub / "pretrain.json").is_file()
    }
    if not found:
        raise WorkdirError(
            f"--pretrained-from: {str(path)!r} holds no finished pretraining for seeds "
            f"{list(config.seed_list)}"
        )
    return found


def import_pretrained(source: str | os.PathLike, dest: pathlib.Path, config: Config) -> list[int]:
    """Copy the finished pretraining of ``config``'s seeds from the run in ``source`` into
    the run directory ``dest`` (its last checkpoint, its result row and its metrics), so
    the run starts from those full-precision models; the seeds copied, in order.

    Seeds ``dest`` already holds (a resumed run) and seeds ``source`` lacks are left alone:
    the latter pretrain as usual.
    """
    src, copied = pathlib.Path(source), []
    dest_dirs = seed_dirs(config.to_dict())
    for seed, sub in check_pretrained_source(src, config).items():
        to = dest_dirs[seed]
        ckpt = dest / "checkpoints" / to / "pretrain"
        if ckpt.exists():
            continue
        _copy_pretraining(src, sub, dest, to)
        copied.append(seed)
    return copied


def _copy_pretraining(src: pathlib.Path, sub: str, dest: pathlib.Path, to: str) -> None:
    """Copy one seed's finished pretraining (last checkpoint, result row, metrics) from
    the run ``src``'s seed directory ``sub`` to the run ``dest``'s ``to``."""
    phase = src / "checkpoints" / sub / "pretrain" / "train"
    _copy_last_checkpoint(phase, dest / "checkpoints" / to / "pretrain" / "train")
    copy_record(src, stage_id(sub, "pretrain"), dest, stage_id(to, "pretrain"))


def copy_record(src: pathlib.Path, name: str, dest: pathlib.Path, to: str | None = None) -> bool:
    """Copy the stage record ``src/stages/<name>.json`` to ``dest/stages/<to>.json`` (``to``
    defaults to ``name``) with its training metrics ``metrics/<name>.jsonl`` where ``src``
    has them. Returns False, copying nothing, when ``src`` has no such record."""
    to = name if to is None else to
    if not (src / "stages" / f"{name}.json").is_file():
        return False
    for kind, suffix in (("stages", ".json"), ("metrics", ".jsonl")):
        file = src / kind / f"{name}{suffix}"
        if file.is_file():
            (dest / kind / f"{to}{suffix}").parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, dest / kind / f"{to}{suffix}")
    return True


def _copy_last_checkpoint(phase: pathlib.Path, to: pathlib.Path) -> None:
    """Copy an orbax manager directory keeping only its last step (a finished phase)."""
    steps = [p for p in phase.iterdir() if p.name.isdigit()] if phase.is_dir() else []
    if not steps:
        raise WorkdirError(f"--pretrained-from: no checkpoint in {str(phase)!r}")
    last = max(steps, key=lambda p: int(p.name))
    to.mkdir(parents=True)
    for item in phase.iterdir():
        if item == last:
            shutil.copytree(item, to / item.name)
        elif item.is_file():
            shutil.copy2(item, to / item.name)


def export_pretrained(source: str | os.PathLike, dest: str | os.PathLike) -> list[int]:
    """Write to the new directory ``dest`` only what ``pretrained_from`` reads of the run
    in ``source``: its config and, per seed whose pretraining finished, the last
    pretraining checkpoint, result row and metrics. ``dest`` then serves as
    ``--pretrained-from`` exactly as ``source`` does, without its other checkpoints
    (e.g. to keep a run's full-precision models when the run directory cannot be kept).
    Returns the seeds written, in order.

    Raises:
      WorkdirError: ``source`` holds no run or no finished pretraining, or ``dest``
        exists (nothing is overwritten).
    """
    src, out = pathlib.Path(source), pathlib.Path(dest)
    if not (src / "config.json").is_file():
        raise WorkdirError(f"export: {str(src)!r} holds no run (no config.json)")
    if out.exists():
        raise WorkdirError(f"export: {str(out)!r} exists; give a new directory")
    seeds = {
        seed: sub
        for seed, sub in seed_dirs(stored_config(src)).items()
        if (src / "stages" / sub / "pretrain.json").is_file()
    }
    if not seeds:
        raise WorkdirError(f"export: {str(src)!r} holds no finished pretraining")
    try:
        for sub in seeds.values():
            _copy_pretraining(src, sub, out, sub)
        shutil.copy2(src / "config.json", out / "config.json")
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # no half-written source for later runs
        raise
    return sorted(seeds)


def _fp_digest(stages: pathlib.Path, sub: str) -> str | None:
    """The full-precision model's digest recorded in ``stages/<sub>/pretrain.json``."""
    file = stages / sub / "pretrain.json"
    return json.loads(file.read_text()).get("digest") if file.is_file() else None


def check_stage_source(
    source: str | os.PathLike,
    config: Config,
    pretrained: Mapping[str | os.PathLike, Mapping[int, str]] | None = None,
) -> pathlib.Path:
    """``source`` as a path if its ``stages/`` can serve ``config``'s run (cheap: before
    the data). ``pretrained`` maps each ``--pretrained-from`` run, in order, to what
    :func:`check_pretrained_source` returned for it (``{seed: subdir}``). Where both
    ``source`` and such a run record a seed's full-precision model, the two digests must
    agree: records written from another model would be refused only after the model is
    restored.

    Raises:
      WorkdirError: ``source`` holds no ``stages/`` folder, or its records come from
        another full-precision model than ``pretrained``'s.
    """
    path = pathlib.Path(source)
    if not (path / "stages").is_dir():
        raise WorkdirError(
            f"--stages-from: {str(path)!r} holds no stage records (no stages/ folder); give "
            "a run directory or a results folder such as experiments/results/paper_alexnet"
        )
    for seed, sub in seed_dirs(config.to_dict()).items():
        recorded = _fp_digest(path / "stages", sub)
        for run, subs in (pretrained or {}).items():
            src_sub = subs.get(seed)
            model = None if src_sub is None else _fp_digest(pathlib.Path(run) / "stages", src_sub)
            if None not in (recorded, model) and recorded != model:
                raise WorkdirError(
                    f"--stages-from: {str(path)!r} records seed {seed}'s full-precision model "
                    f"{recorded}, but --pretrained-from {str(run)!r} holds {model}: its "
                    "stages would not be this run's"
                )
            if src_sub is not None:
                break  # the seed's model comes from the first run that holds it
    return path


def import_stage_records(
    source: str | os.PathLike, dest: pathlib.Path, names: Iterable[str]
) -> list[str]:
    """Copy ``source/stages/<name>.json`` into the run directory ``dest`` for each stage
    ``name`` (e.g. ``"reg-nearest-k4"``, ``"seed-1/qat-ste-k2"``) that ``source`` holds
    and ``dest`` lacks, with its training metrics (``metrics/<name>.jsonl``) where
    ``source`` keeps them: the run reads them back instead of training those stages (each
    checked against the run's full-precision model). Returns the names copied, in order.
    """
    source = pathlib.Path(source)
    return [
        name
        for name in names
        if not (dest / "stages" / f"{name}.json").exists() and copy_record(source, name, dest)
    ]
