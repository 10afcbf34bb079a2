"""Run an experiment config (or a chosen subset of it) and write its result table.

    python -m experiments.run_table experiments/configs/digits_small.py
    python -m experiments.run_table experiments/configs/alexnet_cifar10.py \\
        --regularizers nearest sine --ks 2 4 --baselines kmeans --name alexnet_k2_k4
    python -m experiments.run_table experiments/configs/cifar10_jpeg_vgg.py \\
        --seeds 0 1 2 --pretrained-from runs/cifar10_jpeg_vgg_fp --name vgg_k2_k4
    python -m experiments.run_table experiments/configs/paper_alexnet.py \\
        --stage reg-softmin-ste1-k2 --pretrained-from runs/alexnet_fp

The run lives in ``--workdir`` (default ``runs/<name>``, git-ignored; ``--resume``
continues it). The table goes to ``experiments/results/<name>/``: ``table.md`` (with a
header naming the command, date, machine and git commit), ``table.csv``,
``results.json`` (rows + the same provenance + the full config) and the PNG plots
(accuracy vs bits, training curves, and the weight histograms of the first K), and
``stages/``, the stage records. ``--stage`` runs one row of a table alone, with the
numbers it has in the whole run. ``--partial`` writes the same files from the stages
finished so far (a run of hours in progress, or stopped), marked as partial; if a run
directory is lost, ``--pretrained-from`` its full-precision model and ``--stages-from``
the results folder rebuild it, training only the stages not recorded there.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from qareg_jax import cli, pipeline, provenance, report, train
from qareg_jax.pipeline import planned_stages
from qareg_jax.pipeline.workdir import (
    WorkdirError,
    copy_record,
    prepare_workdir,
    seed_dirs,
    stage_ids,
)

ROOT = pathlib.Path(__file__).resolve().parent.parent


def add_source_arguments(parser: argparse.ArgumentParser, earlier: str) -> None:
    """``--pretrained-from`` and ``--stages-from``; ``earlier`` says what DIR may be."""
    parser.add_argument(
        "--pretrained-from",
        metavar="RUNDIR",
        nargs="+",
        help="start from the full-precision models of these runs (same pretraining settings)",
    )
    parser.add_argument(
        "--stages-from",
        metavar="DIR",
        nargs="+",
        help=f"read the finished stages recorded in DIR/stages instead of training them: "
        f"{earlier} (several: each stage from the first that records it)",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="experiments/configs/<name>.py")
    parser.add_argument("--name", help="results name (default: the config file's stem)")
    parser.add_argument("--regularizers", nargs="*", help="subset of the config's regularizers")
    parser.add_argument("--ks", nargs="*", type=int, help="subset of the config's K values")
    parser.add_argument("--baselines", nargs="*", help="subset of the config's baselines")
    parser.add_argument("--qat", nargs="*", help="subset of the config's QAT baselines")
    parser.add_argument(
        "--stage",
        help="run this one stage of the config alone, e.g. reg-softmin-ste1-k2 (the names "
        "of a results table's rows; default name: <config>_<stage>)",
    )
    parser.add_argument("--seeds", nargs="+", type=int, help="run these seeds (mean +- std)")
    add_source_arguments(parser, "an earlier run of this config or its results folder")
    parser.add_argument("--workdir", help="run directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in --workdir")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="write the results of the stages finished so far in --workdir; no training",
    )
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    return parser


def _config(parser: argparse.ArgumentParser, args: argparse.Namespace) -> tuple[Any, str]:
    """The config of ``args`` (its subsets, seeds or one stage) and the results name."""
    if args.partial and (args.resume or args.overwrite or args.pretrained_from or args.stages_from):
        parser.error("--partial reads the run in --workdir: no --resume, --overwrite, "
                     "--pretrained-from or --stages-from")  # fmt: skip
    config = train.load_config(args.config)
    changes = {}
    for field in ("regularizers", "ks", "baselines", "qat"):
        chosen = getattr(args, field)
        if chosen is not None:
            extra = [c for c in chosen if c not in getattr(config, field)]
            if extra:
                parser.error(f"--{field} {extra} are not in the config's {field}")
            changes[field] = tuple(chosen)
    if args.seeds:
        changes["seeds"] = tuple(args.seeds)
    config = config.replace(**changes)
    name = args.name or pathlib.Path(args.config).stem
    if args.stage:
        if set(changes) - {"seeds"}:
            parser.error("--stage runs one stage: no --regularizers, --ks, --baselines, --qat")
        try:
            config = pipeline.config_for_stage(config, args.stage)
        except ValueError as e:
            parser.error(f"--stage: {e}")
        name = args.name or f"{name}_{args.stage}"
    return config, name


def results_of(args: argparse.Namespace, config: train.Config, workdir: pathlib.Path) -> dict:
    """The results: of the whole run (training what is not finished) or, with
    ``--partial``, of the stages finished so far. WorkdirError before any work."""
    if args.partial:
        return partial_results(config, workdir)
    return train.train_and_evaluate(
        config,
        workdir,
        resume=args.resume,
        overwrite=args.overwrite,
        pretrained_from=args.pretrained_from,
        stages_from=args.stages_from,
    )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    config, name = _config(parser, args)
    workdir = pathlib.Path(args.workdir or ROOT / "runs" / name)
    start, commit = time.perf_counter(), provenance.git_commit()
    try:
        results = results_of(args, config, workdir)
    except WorkdirError as e:  # a run directory or a source that cannot serve
        parser.error(f"{'--partial: ' if args.partial else ''}{e}")
    if args.partial and not results["rows"]:
        parser.error(f"--partial: no stage of {str(workdir)!r} has finished yet")
    dest = pathlib.Path(args.results) / name
    settings = pathlib.Path(args.config)
    if settings.resolve().is_relative_to(ROOT):
        settings = settings.resolve().relative_to(ROOT)
    began = None if args.partial else start
    table, record = write_results(config, workdir, results, dest, began, commit, settings)
    print(table)
    took = f" in {record['wall_s']:.0f} s" if "wall_s" in record else ""
    print(f"\nwritten to {dest}{took}")
    return 0


def write_results(
    config: train.Config,
    workdir: pathlib.Path,
    results: dict[str, Any],
    dest: pathlib.Path,
    start: float | None,
    commit: str | None = None,
    config_file: str | os.PathLike | None = None,
) -> tuple[str, dict[str, Any]]:
    """Write the report of the run in ``workdir`` to ``dest``: ``table.md`` (provenance
    header; marked partial when ``results`` is :func:`partial_results`'), ``table.csv``,
    ``results.json``, the PNG plots (histograms of the first K only, or of the budget
    stages when ``config.ks`` is empty) and ``stages/``, the stage records that rebuild the
    run with ``--stages-from`` if its directory is lost. ``start``:
    ``time.perf_counter()`` when the run began (None: no ``wall_s``, e.g. for a report of
    a run in progress); ``commit``: the git commit the run started
    from (default: the current one), since a run of hours may outlive several commits;
    ``config_file``: the file of ``config``, to print each row's command (:func:`row_commands`).

    Returns ``(markdown table, provenance record)``.
    """
    out = report.write_report(workdir, results["rows"])
    record = provenance.record()
    record = {**record, "git_commit": commit or record["git_commit"]}
    if start is not None:
        record["wall_s"] = time.perf_counter() - start
    record["workdir"] = str(workdir)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "results.json").write_text(json.dumps({**record, **results}, indent=1) + "\n")
    header = "\n".join(f"- {key}: `{value}`" for key, value in record.items())
    label = config.dataset_label or config.dataset
    rows = row_commands(results["rows"], config_file, config) if config_file else ""
    partial = (
        f"# Partial: {results['partial']} finished; the run goes on\n\n"
        if "partial" in results
        else ""
    )
    (dest / "table.md").write_text(
        f"{partial}# {config.model} on {label}\n\n{header}\n\n{out['table']}\n{rows}"
    )
    copy_stage_records(results["rows"], workdir, dest)
    shutil.copy(workdir / "table.csv", dest / "table.csv")
    # Histograms of the first K only; a budget-only config (ks=()) has those of its plans.
    hists = f"-k{min(config.ks)}" if config.ks else "-budget"
    for png in sorted((workdir / "plots").glob("*.png")):
        if not png.name.startswith("hist_") or png.stem.endswith(hists):
            shutil.copy(png, dest / png.name)
    return out["table"], record


def partial_results(config: train.Config, workdir: pathlib.Path) -> dict[str, Any]:
    """The results of the stages finished so far by the run of ``config`` in ``workdir``,
    without training: its pretraining row, the finished planned stages' rows and
    ``"partial"``: ``"<n> of <m> stages"``.

    Raises:
      WorkdirError: ``workdir`` holds no run, or a run of another config.
    """
    if not (workdir / "config.json").is_file():
        raise WorkdirError(f"workdir {str(workdir)!r} holds no run; nothing to report")
    prepare_workdir(workdir, config, resume=True)  # the same config; writes nothing
    seeds, subs = config.seed_list, seed_dirs(config.to_dict())
    planned = stage_ids(config, (stage.name for stage in planned_stages(config)))
    rows = [r for r in report.stage_rows(workdir) if r["stage"] in planned]
    fp_file = workdir / "stages" / subs[seeds[0]] / "pretrain.json"
    return {
        "config": config.to_dict(),
        "pretrain": json.loads(fp_file.read_text()) if fp_file.is_file() else None,
        "seeds": list(seeds),
        "rows": sorted(rows, key=lambda r: planned.index(r["stage"])),
        "partial": f"{len(rows)} of {len(planned)} stages",
    }


def copy_stage_records(
    rows: Sequence[dict[str, Any]], workdir: pathlib.Path, dest: pathlib.Path
) -> None:
    """Copy the records of ``rows``' stages and of the pretraining (``stages/**.json``)
    and their training metrics (``metrics/**.jsonl``, for the training plots) to ``dest``:
    with the full-precision model, they rebuild the run if its directory is lost
    (``--stages-from dest``: read back instead of trained, once checked to come from the
    same model)."""
    names = [r["stage"] for r in rows] + [
        str(p.relative_to(workdir / "stages").with_suffix(""))
        for p in (workdir / "stages").rglob("pretrain.json")
    ]
    for name in names:
        copy_record(workdir, name, dest)


def row_commands(
    rows: list[dict[str, Any]], config_file: str | os.PathLike, config: train.Config
) -> str:
    """A markdown section: per row, the command that trains that row alone (``--stage``)
    from the full-precision run ``RUNDIR``."""
    lines = [
        "",
        "## Each row alone",
        "",
        "Each row trains alone, with the settings and seeds it had here (on the same kind of",
        "machine, the same numbers), by its command below; `RUNDIR` is the full-precision run",
        "the table started from (without `--pretrained-from` that model is trained first).",
        "",
        "| method | K | seed | command |",
        "|---|---:|---:|---|",
    ]
    for row in rows:
        stage = row["stage"].split("/")[-1]  # "seed-1/reg-nearest-k4" in a run of seeds
        seeds = f" --seeds {row['seed']}" if config.seeds is not None else ""
        command = (
            f"python -m experiments.run_table {config_file} --stage {stage}{seeds} "
            "--pretrained-from RUNDIR"
        )
        k = row["k"] if row["k"] is not None else "budget"
        lines.append(f"| {row['method']} | {k} | {row.get('seed')} | `{command}` |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(cli.interruptible(main))
