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
(accuracy vs bits, training curves, and the weight histograms of the first K).
``--stage`` runs one row of a table alone, with the numbers it has in the whole run.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import time
from typing import Any

from qareg_jax import cli, pipeline, provenance, report, train

ROOT = pathlib.Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument(
        "--pretrained-from",
        metavar="RUNDIR",
        nargs="+",
        help="start from the full-precision models of these runs (same pretraining settings)",
    )
    parser.add_argument(
        "--stages-from",
        metavar="DIR",
        help="read the finished stages recorded in DIR/stages (an earlier run of this config, "
        "or the results folder it wrote) instead of training them",
    )
    parser.add_argument("--workdir", help="run directory (default: runs/<name>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in --workdir")
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)

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
    workdir = pathlib.Path(args.workdir or ROOT / "runs" / name)

    start, commit = time.perf_counter(), provenance.git_commit()
    results = train.train_and_evaluate(
        config,
        workdir,
        resume=args.resume,
        overwrite=args.overwrite,
        pretrained_from=args.pretrained_from,
        stages_from=args.stages_from,
    )
    dest = pathlib.Path(args.results) / name
    settings = pathlib.Path(args.config)
    if settings.resolve().is_relative_to(ROOT):
        settings = settings.resolve().relative_to(ROOT)
    table, record = write_results(config, workdir, results, dest, start, commit, settings)
    print(table)
    print(f"\nwritten to {dest} in {record['wall_s']:.0f} s")
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
    """Write the report of the finished run in ``workdir`` to ``dest``: ``table.md``
    (provenance header), ``table.csv``, ``results.json`` and the PNG plots (histograms of
    the first K only, or of the budget stages when ``config.ks`` is empty). ``start``:
    ``time.perf_counter()`` when the run began (None: no ``wall_s``, e.g. for a report of
    a run in progress); ``commit``: the git commit the run started
    from (default: the current one), since a run of hours may outlive several commits;
    ``config_file``: the file of ``config``, to print each row's command (:func:`row_commands`).

    Returns ``(markdown table, provenance record)``.
    """
    out = report.write_report(workdir)
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
    (dest / "table.md").write_text(
        f"# {config.model} on {label}\n\n{header}\n\n{out['table']}\n{rows}"
    )
    shutil.copy(workdir / "table.csv", dest / "table.csv")
    # Histograms of the first K only; a budget-only config (ks=()) has those of its plans.
    hists = f"-k{min(config.ks)}" if config.ks else "-budget"
    for png in sorted((workdir / "plots").glob("*.png")):
        if not png.name.startswith("hist_") or png.stem.endswith(hists):
            shutil.copy(png, dest / png.name)
    return out["table"], record


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
