"""Choose the recipe on the validation split: run named variants of a config from the
same full-precision models and tabulate their validation (and test) accuracies.

    python -m experiments.recipe_search experiments/configs/cifar10_jpeg_vgg_search.py \\
        --pretrained-from runs/cifar10_jpeg_vgg_fp [--resume] [--only hybrid ste]

The search config defines ``get_config()`` (the base) and ``get_variants()``, a dict
``{name: {field: value}}`` of changes. Each variant runs in ``<workdir>/<name>`` (default
workdir ``runs/<config stem>``) from the models of ``--pretrained-from`` (or its own
pretraining); a finished variant is read back, an interrupted one continues with
``--resume``. After every variant, ``experiments/results/<name>/search.md`` and
``search.json`` are rewritten: one line per (variant, method, K), the best line per K by
validation accuracy after fine-tuning marked with ``*``. Choices are made on the
validation columns only; the test columns are there for the report.

``--reuse VARIANT RUNDIR`` reads VARIANT's finished stages from another run of the same
settings (``RUNDIR/stages/*.json``, e.g. the paper table's rows) instead of training them:
those the variant plans are copied into its run directory, which then resumes; config fields that
differ from RUNDIR's are printed. The results folder keeps each variant's stage records
(``<variant>/stages/``); ``--stages-from`` that folder rebuilds a search whose run
directories were lost (each variant reads back the stages recorded there, checked against
its full-precision model; the distance columns need the models, so they read ``-``).
"""

from __future__ import annotations

import argparse
import importlib
import json
import pathlib
import shutil
import sys
from typing import Any

import numpy as np

from experiments import run_table
from qareg_jax import cli, provenance, train
from qareg_jax.pipeline import stages
from qareg_jax.pipeline import workdir as workdirs

ROOT = pathlib.Path(__file__).resolve().parent.parent
COLUMNS = (
    ("variant", "variant"), ("method", "method"), ("k", "K"), ("seed", "seed"),
    ("acc_val_pre", "val pre"), ("acc_val_post", "val post"), ("acc_reg", "test unsnapped"),
    ("acc_pre", "test pre"), ("acc_post", "test post"), ("step_rel", "step / plain"),
    ("dist_mean", "dist / spacing (mean)"), ("dist_max", "(worst layer)"),
)  # fmt: skip


def load_search(path: str) -> tuple[train.Config, dict[str, dict[str, Any]]]:
    """``(base config, variants)`` of a search config file (validated: every variant
    must make a valid config)."""
    file = pathlib.Path(path).resolve()
    if str(file.parent) not in sys.path:
        sys.path.insert(0, str(file.parent))
    module = importlib.import_module(file.stem)
    base = train.load_config(str(file))
    variants = dict(module.get_variants())
    for name, changes in variants.items():
        try:
            base.replace(**changes)
        except (TypeError, ValueError) as e:
            raise ValueError(f"variant {name!r}: {e}") from None
    return base, variants


def relative_distance(workdir: pathlib.Path, stage: str) -> tuple[float, float] | None:
    """``(mean, max)`` over the layers of a regularized stage of the mean distance of the
    weights to their nearest level at the end of the phase, in units of the layer's mean
    level spacing (0: on the levels; 0.25: as spread as uniform weights); None for other
    stages."""
    metrics, result = workdir / "metrics" / f"{stage}.jsonl", workdir / "stages" / f"{stage}.json"
    if not metrics.exists() or not result.exists():
        return None
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    last = [r for r in records if r.get("layers")]
    histograms = json.loads(result.read_text()).get("histograms") or {}
    if not last or not histograms:
        return None
    ratios = []
    for path, stats in last[-1]["layers"].items():
        # (K,) per tensor or (groups, K) with grouped codebooks: the mean group's spacing.
        levels = np.asarray(histograms[path]["levels_after"], dtype=float)
        k = levels.shape[-1]
        spacing = float(np.mean(levels.max(-1) - levels.min(-1))) / max(k - 1, 1)
        ratios.append(stats["distance"] / spacing if spacing > 0 else float("nan"))
    return float(sum(ratios) / len(ratios)), float(max(ratios))


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key.startswith("acc"):
        return f"{100 * value:.2f}"
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def search_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per row, ``*`` on the best validation-post line of each K."""
    best: dict[int, dict[str, Any]] = {}
    for row in rows:
        if row.get("acc_val_post") is not None:
            if row["k"] not in best or row["acc_val_post"] > best[row["k"]]["acc_val_post"]:
                best[row["k"]] = row
    lines = [
        "| " + " | ".join(title for _, title in COLUMNS) + " |",
        "|" + "|".join("---" if k in ("variant", "method") else "---:" for k, _ in COLUMNS) + "|",
    ]
    for row in sorted(rows, key=lambda r: (r["k"], r["variant"], r["method"])):
        cells = [_fmt(key, row.get(key)) for key, _ in COLUMNS]
        if best.get(row["k"]) is row:
            cells[0] = f"**{cells[0]}** *"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def reuse_stages(workdir: pathlib.Path, config: train.Config, rundir: pathlib.Path) -> list[str]:
    """Make ``workdir`` a run of ``config`` holding ``rundir``'s finished stages that
    ``config`` plans (record, metrics and model; none it already has), so that resuming it
    reads them back. Returns the copied stage names; prints the config fields where
    ``rundir`` differs."""
    stored, new = workdirs.stored_config(rundir), config.to_dict()
    diff = workdirs.config_diff(stored, new) if stored != new else "nothing"
    print(f"reusing {rundir}/stages; its config differs in: {diff}", flush=True)
    resume = (workdir / "config.json").exists()
    workdirs.prepare_workdir(workdir, config, resume=resume)
    (workdir / "stages").mkdir(exist_ok=True)
    planned, copied = {s.name for s in stages.planned_stages(config)}, []
    for src in sorted((rundir / "stages").glob("*.json")):
        dst = workdir / "stages" / src.name
        if src.stem not in planned or dst.exists():
            continue
        model = json.loads(src.read_text()).get("model_file")
        for rel in (f"metrics/{src.stem}.jsonl", model):
            if rel and (rundir / rel).is_file():
                (workdir / rel).parent.mkdir(exist_ok=True)
                shutil.copy2(rundir / rel, workdir / rel)
        shutil.copy2(src, dst)  # last: a stage counts as finished once its record is there
        copied.append(src.stem)
    return copied


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a search config: get_config() and get_variants()")
    parser.add_argument(
        "--pretrained-from", metavar="RUNDIR", nargs="+", help="full-precision runs"
    )
    parser.add_argument("--workdir", help="parent of the variants' run directories")
    parser.add_argument("--name", help="results name (default: the config file's stem)")
    parser.add_argument("--only", nargs="+", help="run only these variants")
    parser.add_argument("--resume", action="store_true", help="continue interrupted variants")
    parser.add_argument(
        "--reuse",
        nargs=2,
        action="append",
        default=[],
        metavar=("VARIANT", "RUNDIR"),
        help="read VARIANT's finished stages from RUNDIR (a run of the same settings)",
    )
    parser.add_argument(
        "--stages-from",
        metavar="DIR",
        type=pathlib.Path,
        help="an earlier search's results folder: each variant reads back the stages recorded "
        "in DIR/<variant>/stages instead of training them",
    )
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    args = parser.parse_args(argv)
    args.base, args.variants = load_search(args.config)
    unknown = sorted(set(args.only or ()) - set(args.variants))
    if unknown:
        parser.error(f"--only {unknown}: not in the variants ({', '.join(args.variants)})")
    args.reuse = {v: pathlib.Path(d) for v, d in args.reuse}
    for variant, rundir in args.reuse.items():
        if variant not in args.variants:
            parser.error(f"--reuse {variant}: not in the variants ({', '.join(args.variants)})")
        if not (rundir / "config.json").is_file() or not (rundir / "stages").is_dir():
            parser.error(f"--reuse {variant} {rundir}: not a run directory (config.json, stages/)")
    if args.stages_from and not any(
        (args.stages_from / v / "stages").is_dir() for v in args.variants
    ):
        parser.error(
            f"--stages-from {args.stages_from}: no <variant>/stages/ folder of these variants"
        )
    return args


def run_variant(args: argparse.Namespace, variant: str, workdir: pathlib.Path) -> dict[str, Any]:
    """The results of one variant: read back if it finished, else trained (resumed, or
    from the stages of ``--reuse``)."""
    done = workdir / "results.json"
    if done.exists():
        return json.loads(done.read_text())
    changes = args.variants[variant]
    print(f"== {variant}: {changes}", flush=True)
    config = args.base.replace(**changes)
    resume = args.resume and (workdir / "config.json").exists()
    if variant in args.reuse:
        print(f"read back: {reuse_stages(workdir, config, args.reuse[variant])}", flush=True)
        resume = True
    kept = args.stages_from and args.stages_from / variant
    return train.train_and_evaluate(
        config,
        workdir,
        resume=resume,
        pretrained_from=args.pretrained_from,
        stages_from=kept if kept and (kept / "stages").is_dir() else None,
    )


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    variants = args.variants
    name = args.name or pathlib.Path(args.config).stem
    parent = pathlib.Path(args.workdir or ROOT / "runs" / name)
    dest = pathlib.Path(args.results) / name
    dest.mkdir(parents=True, exist_ok=True)
    record = provenance.record()
    rows: list[dict[str, Any]] = []
    for variant in variants:
        workdir = parent / variant
        if args.only and variant not in args.only and not (workdir / "results.json").exists():
            continue
        results = run_variant(args, variant, workdir)
        run_table.copy_stage_records(results["rows"], workdir, dest / variant)
        for row in results["rows"]:
            dist = relative_distance(workdir, row["stage"])
            rows.append({**row, "variant": variant, "dist_mean": dist and dist[0],
                         "dist_max": dist and dist[1]})  # fmt: skip
        (dest / "search.md").write_text(
            f"# Recipe search: {name}\n\n"
            + "\n".join(f"- {k}: `{v}`" for k, v in record.items())
            + f"\n- variants: `{json.dumps(variants)}`\n\n{search_table(rows)}\n"
        )
        (dest / "search.json").write_text(
            json.dumps({**record, "variants": variants, "rows": rows}, indent=1) + "\n"
        )
    print(search_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(cli.interruptible(main))
