"""``train_and_evaluate(config, workdir)``: pretrain, then every planned stage, then tables.

Workdir layout::

    config.json                 the Config of the run (a different one is refused)
    checkpoints/<stage>/<phase> orbax CheckpointManager directories
    metrics/<stage>.jsonl       every log_every steps: task loss, penalty, per-layer
                                penalty / lambda / mean distance to the levels
    stages/<stage>.json         result row (+ weight histograms for regularized runs)
    models/<stage>.qareg        the final quantized model (compress.save)
    results.json, table.md      all rows (written at the end)

Rerunning with ``resume=True`` skips finished stages and continues an interrupted phase
from its last checkpoint: the data order is a function of (seed, phase, epoch) and the
dropout key of (seed, phase, step), so the resumed run computes exactly what the
uninterrupted one would have.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pathlib
import time
from typing import Any

import numpy as np

from .. import data, report
from ..models import get_model
from ..provenance import device_name
from .config import Config
from .loop import Context
from .stages import Pretrained, StageResult, planned_stages, pretrain, run_stage
from .workdir import prepare_workdir


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


def load_data(config: Config) -> data.Dataset:
    """The config's dataset, restricted to its subsets (errors before any training)."""
    ds = data.load_dataset(config.dataset, config.data_dir)
    return subset(ds, config.train_subset, config.test_subset, config.seed)


def _write_atomic(path: pathlib.Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _pretrained(ctx: Context, stages_dir: pathlib.Path) -> Pretrained:
    """Pretraining (restored from its checkpoint when finished), with the first run's row."""
    fp = pretrain(ctx)
    fp_file = stages_dir / "pretrain.json"
    if fp_file.exists():  # keep the first run's wall time
        stored = json.loads(fp_file.read_text())
        fp = dataclasses.replace(fp, acc_fp=stored["acc_fp"], wall_s=stored["wall_s"])
    else:
        fp_file.write_text(json.dumps(fp.to_json()) + "\n")
    return fp


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
      stop_after: raise ``TrainingInterrupted`` after this many optimizer steps.
      dataset: use this dataset instead of loading ``config.dataset`` (tests).

    Returns:
      ``{"rows": [StageResult.to_json()...], "pretrain": {...}, "config", "device", "date",
      "wall_s"}``, also written to ``results.json`` (histograms go to ``stages/*.json``
      only) and ``table.md``.
    """
    t0 = time.perf_counter()
    ds = dataset if dataset is not None else load_data(config)
    data.steps_per_epoch(ds, config.batch_size)  # batch size vs dataset, before any work
    model_kw = {} if config.dropout_rate is None else {"dropout_rate": config.dropout_rate}
    model = get_model(config.model, ds.num_classes, **model_kw)
    path = prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
    device = device_name()
    ctx = Context(config, path, model, ds, device, progress, stop_after)
    stages_dir = path / "stages"
    stages_dir.mkdir(exist_ok=True)
    fp = _pretrained(ctx, stages_dir)
    ctx.say(f"pretrain: full-precision accuracy {fp.acc_fp:.4f}")
    rows = []
    for stage in planned_stages(config):
        stage_file = stages_dir / f"{stage.name}.json"
        if stage_file.exists():
            result = StageResult.from_json(json.loads(stage_file.read_text()))
        else:
            result = run_stage(ctx, fp, stage)
            _write_atomic(stage_file, json.dumps(result.to_json()) + "\n")
        rows.append(result.to_json(histograms=False))
        ctx.say(
            f"{stage.name}: pre-tuning {result.acc_pre:.4f}, post-tuning {result.acc_post:.4f}"
            f", 1/psi {result.ratio:.1f} ({result.wall_s:.1f} s)"
        )
    results = {
        "config": config.to_dict(),
        "device": device,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "pretrain": fp.to_json(),
        "rows": rows,
        "wall_s": time.perf_counter() - t0,
    }
    (path / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (path / "table.md").write_text(report.markdown_table(rows) + "\n")
    return results
