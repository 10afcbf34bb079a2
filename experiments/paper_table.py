"""The paper's table in one command: AlexNet or VGG16-BN on CIFAR-10 (JPEG-75 copy), every
regularizer, STE, DKM and post-training baseline at K = 2, 4, 8, and the paper's claim
tested.

    python -m experiments.paper_table --model alexnet --pretrained-from runs/alexnet_fp
    python -m experiments.paper_table --model vgg16          # one GPU, < 10 min
    python -m experiments.paper_table --model alexnet --tiny # a few methods, CPU, ~1 min

The settings are ``experiments/configs/paper_<model>.py`` (phases shortened by its
``SHORTEN``); ``--tiny`` replaces them with a tiny setting of the same code path. The run
lives in ``--workdir`` (default ``runs/paper_<model>``; ``--resume`` continues it). As
``run_table``, it writes ``experiments/results/paper_<model>/`` (``_tiny`` with
``--tiny``): ``table.md`` (command, date, machine, git commit), ``table.csv``,
``results.json`` and the plots, plus ``claim.md``: per K, the ratio of each regularizer's
pre-tuning accuracy to each post-training baseline's, next to the paper's statement, and
``hist_best_k{2,4}.png``: the per-layer weight histograms with their levels of the best
trained method at K = 2 and 4 (chosen on the validation split). ``--method-cost JSON``
adds the per-step time ratios of one ``benchmarks.method_cost`` run under the table.
``--partial`` writes the same files from the stages finished so far, without training
(a run of hours in progress, or stopped), marked as partial. ``stages/`` keeps the stage
records, from which a run whose directory was lost is rebuilt: ``--pretrained-from`` the
same full-precision model and ``--stages-from experiments/results/paper_<model>``.
"""

from __future__ import annotations

import argparse
import ast
import json
import pathlib
import shutil
import sys
import time
from collections.abc import Sequence
from typing import Any

from experiments import combine, run_table
from qareg_jax import cli, provenance, report, train
from qareg_jax.pipeline.workdir import WorkdirError

ROOT = pathlib.Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "experiments" / "configs"
MODELS = ("alexnet", "vgg16")
# The paper's statement (arXiv 2602.03614), quoted in claim.md as the paper's.
PAPER = "arXiv 2602.03614"
PAPER_STATEMENT = (
    "the paper reports pre-tuning accuracy up to 3x (AlexNet) / 6x (VGG16) that of the "
    "post-training baselines"
)
PAPER_RATIO = {"alexnet": 3.0, "vgg16": 6.0}
# --tiny: the same code path in about a minute on two CPU cores (not a result).
TINY = dict(
    dataset_label="CIFAR-10 (JPEG-75 copy; tiny: 256 train / 200 test)",
    train_subset=256,
    test_subset=200,
    batch_size=32,
    eval_batch_size=200,
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    ks=(2,),
    regularizers=("sine", "nearest"),
    freeze_reps=(False,),
    qat=("ste",),
    baselines=("kmeans", "binary"),
    log_every=4,
    checkpoint_every=8,
)


def config_path(model: str) -> pathlib.Path:
    """``experiments/configs/paper_<model>.py``."""
    return CONFIGS / f"paper_{model}.py"


def shorten_factor(path: pathlib.Path) -> int | None:
    """The module constant ``SHORTEN`` of a config file (None if it has none)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "SHORTEN" for t in node.targets
        ):
            return int(ast.literal_eval(node.value))
    return None


def load(model: str, tiny: bool = False) -> train.Config:
    """The paper config of ``model``, or its tiny variant."""
    config = train.load_config(config_path(model))
    return config.replace(**TINY) if tiny else config


def _pct(value: float) -> str:
    return f"{100 * value:.2f}"


def _seeds(n: int) -> str:
    return "1 seed" if n == 1 else f"{n} seeds"


def claim_lines(rows: Sequence[dict[str, Any]], model: str) -> list[str]:
    """The body of ``claim.md``: per K a table with one line per (regularizer, baseline)
    of pre-tuning accuracies (mean over seeds; each method names its seeds where their
    number differs) and their ratio, and one plain sentence saying whether our largest
    ratio reaches the paper's."""
    target = PAPER_RATIO[model]
    aggs = report.aggregate(rows)
    if len({a["n_seeds"] for a in aggs}) > 1:  # rows of several seeds beside single ones
        aggs = [{**a, "method": f"{a['method']} ({_seeds(a['n_seeds'])})"} for a in aggs]
    lines: list[str] = []
    for k in sorted({a["k"] for a in aggs}):
        regs = [a for a in aggs if a["k"] == k and a.get("kind") == "regularizer"]
        bases = [a for a in aggs if a["k"] == k and a.get("kind") == "baseline"]
        lines += [f"## K = {k}", ""]
        if not regs or not bases:
            lines += [f"No regularizer or no post-training baseline ran at K = {k}.", ""]
            continue
        lines += [
            "| K | regularizer | baseline | regularizer acc pre % | baseline acc pre % | ratio |",
            "|---:|---|---|---:|---:|---:|",
        ]
        ratios: list[tuple[float, str, str]] = []
        for reg in regs:
            for base in bases:
                r, b = reg["acc_pre_mean"], base["acc_pre_mean"]
                ratio = r / b if b > 0 else float("inf")
                ratios.append((ratio, reg["method"], base["method"]))
                lines.append(
                    f"| {k} | {reg['method']} | {base['method']} | {_pct(r)} | {_pct(b)} | "
                    f"{ratio:.2f}x |"
                )
        best, reg_name, base_name = max(ratios)
        verdict = "reaches" if best >= target else "does not reach"
        top_reg = max(regs, key=lambda a: a["acc_pre_mean"])
        top_base = max(bases, key=lambda a: a["acc_pre_mean"])
        fair = top_reg["acc_pre_mean"] / top_base["acc_pre_mean"] if top_base["acc_pre_mean"] else 0
        lines += [
            "",
            f"At K = {k} our largest ratio is {best:.2f}x ({reg_name} over {base_name}), which "
            f"{verdict} the paper's {target:g}x for {model}; the best regularizer "
            f"({top_reg['method']}, {_pct(top_reg['acc_pre_mean'])} %) over the best "
            f"baseline ({top_base['method']}, {_pct(top_base['acc_pre_mean'])} %) is "
            f"{fair:.2f}x.",
            "",
            *_against_qat([a for a in aggs if a["k"] == k and a.get("kind") == "qat"], top_reg),
        ]
    return lines


def _against_qat(qats: Sequence[dict[str, Any]], top_reg: dict[str, Any]) -> list[str]:
    """One sentence: the best regularizer against the QAT baselines (which the paper's
    claim leaves out), with the points between them."""
    if not qats:
        return []
    best = top_reg["acc_pre_mean"]
    parts = [
        f"{q['method']} {_pct(q['acc_pre_mean'])} % (the best regularizer "
        f"{abs(100 * (best - q['acc_pre_mean'])):.2f} points "
        f"{'above' if best >= q['acc_pre_mean'] else 'under'} it)"
        for q in qats
    ]
    return [
        "Against quantization-aware training from the same model and steps, which the paper's "
        f"ratio leaves out, pre-tuning: {'; '.join(parts)}.",
        "",
    ]


def claim_head(
    title: str, provenance: Sequence[str], seeds: str, source: str, more: str = ""
) -> list[str]:
    """The head of ``claim.md``: title, provenance lines, the paper's statement (labelled as
    the paper's) and what our ratio measures (``seeds``: whose mean; ``source``: which
    full-precision model; ``more``: sentences that follow)."""
    ours = (
        "**Ours**: the ratio of each regularizer's pre-tuning accuracy (snapped, before "
        f"fine-tuning; test split, mean over {seeds}) to each post-training baseline's, from "
        f"{source}. {more}"
    )
    return [
        f"# The paper's claim, tested: {title}",
        "",
        *provenance,
        "",
        f"**The paper's statement** ({PAPER}): {PAPER_STATEMENT}.",
        "",
        ours.rstrip(),
        "",
    ]


def write_claim(
    rows: Sequence[dict[str, Any]],
    model: str,
    config: train.Config,
    record: dict[str, Any],
    dest: pathlib.Path,
    *,
    tiny: bool = False,
    shorten: int | None = None,
    partial: str | None = None,
) -> pathlib.Path:
    """Write ``dest/claim.md`` (provenance header, the paper's statement labelled as the
    paper's, then :func:`claim_lines`); ``partial``: "<n> of <m> stages" of a run in
    progress."""
    head = claim_head(
        f"{model} on {config.dataset_label or config.dataset}",
        [f"- {key}: `{value}`" for key, value in record.items()],
        f"seeds {', '.join(map(str, config.seed_list))}",
        "the same full-precision model",
        f"{phases_note(config, shorten)}{recipe_note(config)}",
    )
    if tiny:
        head += ["**Tiny setting (`--tiny`): a test of the code path, not a result.**", ""]
    if partial:
        head += [f"**Partial: the {partial} finished so far; the run goes on.**", ""]
    path = dest / "claim.md"
    path.write_text("\n".join(head + claim_lines(rows, model)).rstrip() + "\n")
    return path


def recipe_note(config: train.Config) -> str:
    """One sentence (with a leading space) saying the regularized rows train beside STE,
    or "" when they run the penalty alone."""
    if not config.ste_last:
        return ""
    return (
        f" The regularizers run with the recipe: STE on their levels for the last "
        f"{config.ste_last:.0%} of the phase, the penalty beside it, so these rows test our "
        "reading of the method, not the penalty alone."
    )


def phases_note(config: train.Config, shorten: int | None) -> str:
    """One sentence naming the phases' lengths and the shortening factor."""
    cut = (
        f"; the table's phases are the base config's divided by SHORTEN = {shorten}"
        if shorten
        else ""
    )
    train_n = f"{config.train_subset:,}" if config.train_subset else "all"
    return (
        f"Phases: pretraining {config.pretrain_epochs}, regularized / QAT {config.reg_epochs}, "
        f"fine-tuning {config.finetune_epochs} epochs of {train_n} training images at batch "
        f"{config.batch_size}{cut}."
    )


def _hist(workdir: pathlib.Path, row: dict[str, Any]) -> pathlib.Path:
    return workdir / "plots" / f"hist_{row['stage'].replace('/', '_')}.png"


def best_histograms(
    rows: Sequence[dict[str, Any]],
    workdir: pathlib.Path,
    dest: pathlib.Path,
    ks: Sequence[int] = (2, 4),
) -> list[str]:
    """Copy the per-layer weight histograms (with their levels) of the best trained method
    at each K of ``ks`` to ``dest/hist_best_k<K>.png``; best: the highest validation
    accuracy after fine-tuning (test accuracy only when the run has no validation split),
    first seed. Returns one markdown line per K for the table."""
    lines = []
    for k in ks:
        trained = [r for r in rows if r["k"] == k and r.get("kind") in ("regularizer", "qat")]
        first = min((r.get("seed", 0) for r in trained), default=0)
        trained = [r for r in trained if r.get("seed", 0) == first and _hist(workdir, r).is_file()]
        if not trained:
            continue
        val = all(r.get("acc_val_post") is not None for r in trained)
        key = "acc_val_post" if val else "acc_post"
        best = max(trained, key=lambda r: r[key])
        shutil.copy(_hist(workdir, best), dest / f"hist_best_k{k}.png")
        split = "validation" if val else "test (no validation split)"
        lines.append(
            f"- K = {k}: [hist_best_k{k}.png](hist_best_k{k}.png), {best['method']} (the best "
            f"trained method on the {split} accuracy after fine-tuning, {_pct(best[key])} %)"
        )
    return lines


def method_cost_section(path: str, model: str) -> str:
    """The time ratios of a ``benchmarks.method_cost`` result as markdown, checked to be
    of ``model`` (a ``ValueError`` otherwise): the table's step / plain column comes from
    its own, possibly shared, machine; this one from one benchmark run."""
    bench = json.loads(pathlib.Path(path).read_text())
    if bench.get("benchmark") != "method_cost":
        raise ValueError("not a benchmarks.method_cost result")
    if bench["config"]["model"] != model:
        raise ValueError(f"it times model {bench['config']['model']!r}, the table is {model!r}")
    return combine.cost_table(path)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, choices=MODELS)
    parser.add_argument("--workdir", help="run directory (default: runs/paper_<model>)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    parser.add_argument("--overwrite", action="store_true", help="delete the run in --workdir")
    run_table.add_source_arguments(
        parser, "an earlier run of this table or experiments/results/paper_<model>"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny setting (tests, CPU)")
    parser.add_argument(
        "--partial",
        action="store_true",
        help="write the results of the stages finished so far in --workdir; no training",
    )
    parser.add_argument(
        "--method-cost",
        metavar="JSON",
        help="a benchmarks.method_cost result for this model (e.g. benchmarks/results/"
        "method_cost_alexnet_table.json): its per-step time ratios go under the table",
    )
    parser.add_argument("--results", default=str(ROOT / "experiments" / "results"))
    return parser


def write_outputs(
    args: argparse.Namespace,
    config: train.Config,
    workdir: pathlib.Path,
    results: dict[str, Any],
    start: float,
    commit: str,
    cost: str | None,
) -> pathlib.Path:
    """Write ``table.md`` (with its notes), ``table.csv``, ``results.json``, the plots and
    ``claim.md`` to ``--results/paper_<model>[_tiny]``; print the table and the claim.
    ``start``: when the run began (``time.perf_counter()``); ``commit``: its git commit."""
    dest = pathlib.Path(args.results) / (f"paper_{args.model}" + ("_tiny" if args.tiny else ""))
    began = None if args.partial else start
    table, record = run_table.write_results(config, workdir, results, dest, began, commit)
    shorten = None if args.tiny else shorten_factor(config_path(args.model))
    hists = best_histograms(results["rows"], workdir, dest)
    settings = config_path(args.model).relative_to(ROOT)
    with open(dest / "table.md", "a") as f:
        f.write(f"\n{phases_note(config, shorten)} Settings: `{settings}`.\n")
        if hists:
            f.write(
                "\nPer-layer weight histograms with their levels:\n\n" + "\n".join(hists) + "\n"
            )
        if cost:
            f.write(f"\n{cost}\n")
        if not args.tiny:  # no file holds the --tiny settings
            f.write(run_table.row_commands(results["rows"], settings, config))
    claim = write_claim(
        results["rows"], args.model, config, record, dest,
        tiny=args.tiny, shorten=shorten, partial=results.get("partial"),
    )  # fmt: skip
    print(table)
    print("\n" + claim.read_text())
    took = f" in {record['wall_s']:.0f} s" if "wall_s" in record else ""
    print(f"written to {dest}{took}")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.resume and args.overwrite:
        parser.error("give --resume or --overwrite, not both")
    if args.partial and (args.resume or args.overwrite or args.pretrained_from or args.stages_from):
        parser.error("--partial reads the run in --workdir: no --resume, --overwrite, "
                     "--pretrained-from or --stages-from")  # fmt: skip
    config = load(args.model, args.tiny)
    cost = None
    if args.method_cost:
        try:
            cost = method_cost_section(args.method_cost, config.model)
        except (OSError, ValueError, KeyError) as e:
            parser.error(f"--method-cost {args.method_cost}: {e}")
    name = f"paper_{args.model}" + ("_tiny" if args.tiny else "")
    workdir = pathlib.Path(args.workdir or ROOT / "runs" / name)
    start, commit = time.perf_counter(), provenance.git_commit()
    try:
        results = run_table.results_of(args, config, workdir)
    except WorkdirError as e:  # raised before any data is read or any training
        hint = (
            " (--tiny pretrains its own tiny model)" if args.tiny and args.pretrained_from else ""
        )
        parser.error(f"{'--partial: ' if args.partial else ''}{e}{hint}")
    if args.partial and not results["rows"]:
        parser.error(f"--partial: no stage of {str(workdir)!r} has finished yet")
    write_outputs(args, config, workdir, results, start, commit, cost)
    return 0


if __name__ == "__main__":
    sys.exit(cli.interruptible(main))
