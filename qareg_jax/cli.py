"""The ``qareg`` command: demo, run, report, prepare-data.

    qareg demo [--fast] [--workdir DIR] [--overwrite]
    qareg run --model small --dataset digits --regularizer nearest sine --k 2 4 \\
        [--baseline kmeans uniform] [--qat ste dkm] [--seeds 0 1 2] [--val-fraction F] \\
        [--budget 1MB | --budget 16x] [--budget-ks 2 4 8 16 32] \\
        [--group-size C] [--pin-zero] [--prune S] \\
        [--lambda X] [--epochs N] [--config FILE.py] \\
        [--workdir DIR] [--data-dir DIR] [--resume | --overwrite]
    qareg report WORKDIR
    qareg prepare-data cifar10 [--data-dir DIR]

Bad input (unknown names, K out of range, a workdir holding another run, missing or
malformed data, a diverging loss) ends with ``qareg: error: <message>`` on stderr and a
non-zero exit status, before any training where it can be checked before. ``run`` and
``demo`` print their plan (stages, steps per phase) first and a time estimate after the
first timed steps. Ctrl-C stops at the next step, after any checkpoint save in progress,
with ``qareg: interrupted; continue with --resume`` and exit status 130.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from tqdm.auto import tqdm

from . import data, pipeline, report
from . import regularizers as R
from .models import MODELS
from .pipeline.loop import deferred_interrupts, interrupt_requested

# The README's main job: the embedded digits set, SmallCNN, three regularizers and two
# baselines at K = 2 and 4 (about a minute on a 2-core CPU, mostly XLA compilation).
DEMO = pipeline.Config(
    regularizers=("nearest", "softmin", "sine"),
    ks=(2, 4),
    baselines=("kmeans", "uniform"),
)
# ``--fast`` / QAREG_DEMO_FAST=1 (CI and tests): fewer methods and epochs.
DEMO_FAST = DEMO.replace(
    pretrain_epochs=6,
    reg_epochs=4,
    finetune_epochs=1,
    regularizers=("nearest", "sine"),
    ks=(2,),
    baselines=("kmeans",),
)
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
INTERRUPTED = "qareg: interrupted; continue with --resume"
# `qareg run --help`: what each phase is and which flags size it.
RUN_EPILOG = """\
phases, in order (the plan with the steps of each is printed before training starts):
  pretrain   full-precision training from random init: --epochs epochs
  reg        every --regularizer at every --k, from the pretrained model: --epochs epochs
             (QAT methods, --qat, train this long too)
  finetune   after snapping to K levels, every method (also each --baseline, which is
             post-training quantization of the pretrained model): --finetune-epochs epochs
  --baseline none and --qat none leave those methods out; --regularizer none leaves only
  the baselines. --budget adds a run of every method at one K per layer, planned after
  pretraining to fit the packed file in the budget (rows with K "budget"; the plan is
  printed first); --k none keeps only those. A time estimate follows the first timed
  pretraining steps; Ctrl-C stops after the current step (or checkpoint) and --resume
  continues.
"""


def _list(values: Sequence[str] | None) -> list[str] | None:
    """``["a,b", "c"]`` -> ``["a", "b", "c"]``: both spellings of a list are accepted."""
    if values is None:
        return None
    return [v for value in values for v in value.split(",") if v]


def _ints(
    values: Sequence[str] | None, flag: str = "--k", what: str = "integers (numbers of levels)"
) -> tuple[int, ...] | None:
    items = _list(values)
    if items is None:
        return None
    try:
        return tuple(int(v) for v in items)
    except ValueError:
        raise ValueError(f"{flag} takes {what}, got {' '.join(items)}") from None


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``qareg``."""
    parser = argparse.ArgumentParser(
        prog="qareg", description="Quantization-aware regularization: train, snap, compare."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the whole pipeline on the embedded digits set")
    demo.add_argument("--fast", action="store_true", help="tiny settings (also QAREG_DEMO_FAST=1)")
    demo.add_argument("--workdir", help="default: qareg_demo (or qareg_demo_fast) here")
    demo.add_argument("--overwrite", action="store_true", help="delete a previous demo run")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")

    run = sub.add_parser(
        "run",
        help="one experiment (flags override --config)",
        description="One experiment: pretrain, then regularize / quantize, fine-tune, compare.",
        epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_run_methods(run)
    _add_run_training(run)
    _add_run_workdir(run)

    rep = sub.add_parser("report", help="tables and plots of a run directory")
    rep.add_argument("workdir")

    exp = sub.add_parser(
        "export-pretrained",
        help="copy only the full-precision models of a run (for --pretrained-from)",
    )
    exp.add_argument("workdir", help="a run directory whose pretraining finished")
    exp.add_argument("dest", help="a new directory; later runs take --pretrained-from DEST")

    prep = sub.add_parser("prepare-data", help="download and prepare a dataset (needs internet)")
    prep.add_argument("dataset", choices=("cifar10",))
    prep.add_argument("--data-dir", help="tensorflow-datasets directory")
    return parser


def _add_run_methods(run: argparse.ArgumentParser) -> None:
    """``qareg run``: config, model, data, and the methods and K to compare."""
    run.add_argument("--config", help="Python file defining get_config() -> pipeline.Config")
    run.add_argument("--model", help=f"one of {', '.join(MODELS)}")
    run.add_argument("--dataset", help=f"one of {', '.join(data.DATASET_NAMES)}")
    run.add_argument("--dataset-label", help="name of the dataset in tables")
    run.add_argument("--data-dir", help="tensorflow-datasets directory (cifar10)")
    run.add_argument(
        "--regularizer",
        nargs="+",
        help=f"one or more of {', '.join(R.REGULARIZERS)}, or none (no regularized phase)",
    )
    run.add_argument(
        "--k",
        nargs="+",
        help="numbers of levels, e.g. --k 2 4 8; none: only the --budget runs",
    )
    run.add_argument(
        "--budget",
        metavar="SIZE",
        help="also run every method at one K per layer chosen so the packed file fits SIZE: "
        "bytes (250000, 500kB, 1MB, 1.5MiB; kB/MB = 1000s, KiB/MiB = 1024s) or a compression "
        "ratio against float32 (16x)",
    )
    run.add_argument(
        "--budget-ks",
        nargs="+",
        metavar="K",
        help="the K values the budget planner may give a layer (default 2 4 8 16 32)",
    )
    run.add_argument(
        "--group-size",
        type=int,
        metavar="C",
        help="one codebook per C output channels (1: per channel) instead of per layer; "
        "regularizers, STE and the kmeans baseline",
    )
    run.add_argument(
        "--pin-zero",
        action="store_true",
        default=None,
        help="keep one level of every codebook at exactly 0.0",
    )
    run.add_argument(
        "--prune",
        type=float,
        metavar="S",
        help="magnitude-prune every quantized layer to this fraction of zeros (needs "
        "--pin-zero): gradually while regularizing, one-shot before the kmeans baseline",
    )
    run.add_argument(
        "--baseline",
        nargs="+",
        help=f"post-training quantization baselines: {', '.join(pipeline.BASELINES)}, or none "
        "(each: snap the pretrained model, then fine-tune)",
    )
    run.add_argument(
        "--qat",
        nargs="+",
        metavar="METHOD",
        help=f"quantization-aware training baselines: {', '.join(pipeline.QAT_METHODS)}, or none "
        "(trained for the regularized phase's epochs and learning rate, then fine-tuned)",
    )
    run.add_argument(
        "--ste-recluster-every",
        type=int,
        metavar="N",
        help="re-fit the STE levels by k-means every N steps",
    )
    run.add_argument(
        "--dkm-tau-frac",
        type=float,
        metavar="F",
        help="DKM temperature: (this * mean level spacing)^2 per layer (default 0.3)",
    )
    run.add_argument(
        "--dkm-iters", type=int, metavar="N", help="DKM k-means iterations per step (default 3)"
    )


def _add_run_training(run: argparse.ArgumentParser) -> None:
    """``qareg run``: seeds, splits, lambda, phases and the other training settings."""
    run.add_argument(
        "--seeds",
        nargs="+",
        metavar="SEED",
        help="run every seed (e.g. --seeds 0 1 2); tables: mean ± std",
    )
    run.add_argument(
        "--val-fraction",
        type=float,
        metavar="F",
        help="hold out this fraction of the training set as validation (reported beside test)",
    )
    run.add_argument(
        "--data-seed", type=int, metavar="SEED", help="seed of the validation split (default 0)"
    )
    run.add_argument(
        "--lambda",
        dest="lam",
        type=float,
        help="lambda of every regularizer, in the unit-penalty scale (per weight, in squared "
        "level spacings; README 'Choosing lambda'); default: each regularizer's own (0.1-10)",
    )
    run.add_argument("--lam-warmup", type=float, help="fraction of the phase ramping lambda up")
    run.add_argument(
        "--epochs",
        type=int,
        metavar="N",
        help="epochs of pretraining and of each regularized / QAT phase (see phases below)",
    )
    run.add_argument(
        "--finetune-epochs",
        type=int,
        metavar="N",
        help="epochs of fine-tuning on the K levels, after every method and baseline",
    )
    run.add_argument("--batch-size", type=int)
    run.add_argument("--seed", type=int)
    run.add_argument("--train-subset", type=int, help="use this many training examples")
    run.add_argument("--index-dtype", help="dtype of the packed indices, e.g. uint8")
    run.add_argument(
        "--from-scratch", action="store_true", help="regularize from random init, not pretrained"
    )
    run.add_argument(
        "--freeze-reps",
        choices=("no", "yes", "both"),
        help="keep representatives at their initial values (both: also run the ablation)",
    )


def _add_run_workdir(run: argparse.ArgumentParser) -> None:
    """``qareg run``: the run directory, resume / overwrite, pretrained sources."""
    run.add_argument("--workdir", default="qareg_run", help="run directory (default: qareg_run)")
    group = run.add_mutually_exclusive_group()
    group.add_argument("--resume", action="store_true", help="continue the run in --workdir")
    group.add_argument("--overwrite", action="store_true", help="delete the run in --workdir")
    run.add_argument(
        "--pretrained-from",
        metavar="RUNDIR",
        nargs="+",
        help="start from the full-precision models of these earlier runs (same model, data, "
        "split and pretraining settings) instead of pretraining",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> pipeline.Config:
    """The ``pipeline.Config`` of ``qareg run``: ``--config`` (or the defaults) plus the flags."""
    config = pipeline.load_config(args.config) if args.config else pipeline.Config()
    changes: dict[str, Any] = {}
    for flag, field in (
        ("model", "model"),
        ("dataset", "dataset"),
        ("dataset_label", "dataset_label"),
        ("data_dir", "data_dir"),
        ("lam", "lam"),
        ("lam_warmup", "lam_warmup"),
        ("finetune_epochs", "finetune_epochs"),
        ("batch_size", "batch_size"),
        ("seed", "seed"),
        ("train_subset", "train_subset"),
        ("index_dtype", "index_dtype"),
        ("ste_recluster_every", "ste_recluster_every"),
        ("dkm_tau_frac", "dkm_tau_frac"),
        ("dkm_iters", "dkm_iters"),
        ("val_fraction", "val_fraction"),
        ("data_seed", "data_seed"),
        ("group_size", "group_size"),
        ("pin_zero", "pin_zero"),
        ("prune", "prune_sparsity"),
    ):
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
    if args.epochs is not None:
        changes.update(pretrain_epochs=args.epochs, reg_epochs=args.epochs)
    if args.regularizer is not None:
        changes["regularizers"] = tuple(r for r in _list(args.regularizer) if r != "none")
    if args.baseline is not None:
        changes["baselines"] = tuple(b for b in _list(args.baseline) if b != "none")
    if args.qat is not None:
        changes["qat"] = tuple(q for q in _list(args.qat) if q != "none")
    if args.k is not None:
        changes["ks"] = () if _list(args.k) == ["none"] else _ints(args.k)
    if args.budget is not None:
        changes["budget"] = args.budget
    if args.budget_ks is not None:
        changes["budget_ks"] = _ints(args.budget_ks, "--budget-ks")
    if args.seeds is not None:
        changes["seeds"] = _ints(args.seeds, "--seeds", "integers")
    if args.from_scratch:
        changes["from_pretrained"] = False
    if args.freeze_reps is not None:
        changes["freeze_reps"] = {"no": (False,), "yes": (True,), "both": (False, True)}[
            args.freeze_reps
        ]
    return config.replace(**changes)


def _say(message: str) -> None:
    """The plan and the time estimate: printed even with --no-progress, above any bar."""
    tqdm.write(message)
    sys.stdout.flush()


def _finish(workdir: str, results: dict[str, Any], start: float) -> None:
    out = report.write_report(workdir)
    print(out["table"])
    print(f"\nwall time {time.perf_counter() - start:.1f} s on {results['device']}")
    print("files:")
    for path in out["files"]:
        print(f"  {path}")


def _demo(args: argparse.Namespace) -> None:
    fast = args.fast or os.environ.get("QAREG_DEMO_FAST", "") not in ("", "0")
    config = DEMO_FAST if fast else DEMO
    workdir = args.workdir or ("qareg_demo_fast" if fast else "qareg_demo")
    start = time.perf_counter()
    # A finished or interrupted demo with the same settings is continued, not refused.
    resume = not args.overwrite and os.path.exists(os.path.join(workdir, "config.json"))
    results = pipeline.train_and_evaluate(
        config,
        workdir,
        resume=resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        say=_say,
    )
    _finish(workdir, results, start)


def _run(args: argparse.Namespace) -> None:
    config = config_from_args(args)
    start = time.perf_counter()
    results = pipeline.train_and_evaluate(
        config,
        args.workdir,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        say=_say,
        pretrained_from=args.pretrained_from,
    )
    _finish(args.workdir, results, start)


def _report(args: argparse.Namespace) -> None:
    out = report.write_report(args.workdir)
    print(out["table"])
    print("files:")
    for path in out["files"]:
        print(f"  {path}")


def _export(args: argparse.Namespace) -> None:
    seeds = pipeline.export_pretrained(args.workdir, args.dest)
    size = sum(f.stat().st_size for f in pathlib.Path(args.dest).rglob("*") if f.is_file())
    print(f"full-precision models of seeds {seeds} written to {args.dest} ({size:,} B)")


def _prepare(args: argparse.Namespace) -> None:
    print(f"prepared {data.prepare_cifar10(args.data_dir)}")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qareg`` console script; returns the exit status.

    Expected failures print ``qareg: error: <message>`` (no traceback) and return 1;
    usage errors return 2; a Ctrl-C prints :data:`INTERRUPTED` and returns 130.
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse has printed the usage error
        return EXIT_USAGE if e.code else 0
    commands = {
        "demo": _demo,
        "run": _run,
        "report": _report,
        "export-pretrained": _export,
        "prepare-data": _prepare,
    }

    def command() -> int:
        try:
            commands[args.command](args)
        except (
            ValueError,
            TypeError,  # a config file's field of the wrong type (validation)
            OSError,  # FileNotFoundError, DataNotFoundError, FileExistsError
            ImportError,
            pipeline.TrainingDivergedError,
        ) as e:
            print(f"qareg: error: {e}", file=sys.stderr)
            return EXIT_ERROR
        return 0

    return interruptible(command)


def interruptible(fn: Callable[[], int]) -> int:
    """``fn()``'s exit status, with Ctrl-C acted on between training steps (never inside
    a checkpoint save; see ``pipeline.loop.deferred_interrupts``): an interrupt prints
    :data:`INTERRUPTED` instead of a traceback and returns :data:`EXIT_INTERRUPTED`.
    The experiment scripts' ``__main__`` use it too."""
    try:
        with deferred_interrupts():
            status = fn()
            if interrupt_requested():  # arrived after the last step: still an interrupt
                raise KeyboardInterrupt
    except KeyboardInterrupt:
        print(INTERRUPTED, file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
    return status


def console_main() -> int:
    """The ``qareg`` console script: :func:`main`, then Ctrl-C ignored while the process
    exits. The work is done and written by then; CPython resets its SIGINT handler to the
    OS default at shutdown, so a late Ctrl-C would kill the process with no message."""
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return status


if __name__ == "__main__":
    sys.exit(console_main())
