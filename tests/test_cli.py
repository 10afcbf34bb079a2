"""The ``qareg`` command, in process: demo --fast, report, and the error paths."""

from __future__ import annotations

import concurrent.futures
import json
import os
import pathlib
import random
import shutil
import signal
import subprocess
import sys
import time
from unittest import mock

import pytest
from PIL import Image

from qareg_jax import cli, data, pipeline


@pytest.mark.slow
def test_demo_fast_writes_table_and_plots_then_report_works(tmp_path, capsys):
    workdir = tmp_path / "demo"
    assert cli.main(["demo", "--fast", "--workdir", str(workdir), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "| small | digits | nearest | 2 |" in out and "| small | digits | kmeans | 2 |" in out
    pngs = {
        "accuracy_vs_bits.png",
        "accuracy_vs_size.png",
        "training_k2.png",
        "hist_reg-nearest-k2.png",
        "hist_reg-sine-k2.png",
    }
    assert {p.name for p in (workdir / "plots").glob("*.png")} == pngs
    for name in pngs:
        assert str(workdir / "plots" / name) in out
        assert (workdir / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (workdir / "table.md").read_text().count("| small | digits |") == 3
    csv_lines = (workdir / "table.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and "acc_post" in csv_lines[0]

    (workdir / "table.md").unlink()
    assert cli.main(["report", str(workdir)]) == 0
    assert (workdir / "table.md").exists()
    assert "hist_reg-sine-k2.png" in capsys.readouterr().out
    # A second demo finds the finished run and only prints it again.
    assert cli.main(["demo", "--fast", "--workdir", str(workdir), "--no-progress"]) == 0
    capsys.readouterr()
    assert cli.main(["export-pretrained", str(workdir), str(tmp_path / "fp")]) == 0
    assert f"seeds [0] written to {tmp_path / 'fp'}" in capsys.readouterr().out
    assert (tmp_path / "fp/stages/pretrain.json").is_file()
    assert cli.main(["export-pretrained", str(workdir), str(tmp_path / "fp")]) == 1
    assert "exists; give a new directory" in capsys.readouterr().err


def _run(tmp_path, *args):
    return ["run", "--workdir", str(tmp_path / "run"), "--no-progress", *args]


def _images(root: pathlib.Path, sizes: dict) -> None:
    for split, size in sizes.items():
        for cls in ("a", "b"):
            (root / split / cls).mkdir(parents=True)
            Image.new("RGB", size).save(root / split / cls / "0.png")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "resnet"], "unknown model 'resnet'; allowed: alexnet, vgg16, cifar_vgg, sm"),
        (["--dataset", "mnist"], "unknown dataset 'mnist'; allowed: cifar10, digits, folder:PATH"),
        (["--regularizer", "l2"], "allowed: sine, cosine, nearest, softmin, product, wells"),
        (["--baseline", "gptq"], "allowed: kmeans, uniform, pws, ecsq, binary"),
        (["--k", "2", "300", "--index-dtype", "uint8"], "K=300 does not fit the index dtype"),
        (["--k", "1"], "integer >= 2"),
        (["--k", "two"], "--k takes integers"),
        (["--qat", "foo"], "unknown qat 'foo'; allowed: ste, dkm"),
        (["--seeds", "0", "x"], "--seeds takes integers, got 0 x"),
        (["--val-fraction", "1.5"], "val_fraction must be a number in [0, 1), got 1.5"),
        (["--ste-recluster-every", "0"], "ste_recluster_every must be a positive int, got 0"),
        (
            ["--model", "alexnet"],  # the default dataset: digits, 8x8 pixels
            "--model alexnet does not fit --dataset digits: model 'alexnet' needs images of "
            "at least 15x15 pixels, got 8x8",
        ),
        (["--config", "missing.py"], "config file 'missing.py' does not exist"),
        (["--budget", "1XB"], "cannot parse budget '1XB': give bytes ('250000', '500kB', '1MB'"),
        (
            ["--budget", "16x", "--budget-ks", "2", "x"],
            "--budget-ks takes integers (numbers of levels), got 2 x",
        ),
        (["--k", "none"], "ks is empty: give at least one number of levels K, or a budget"),
        (
            ["--budget", "1kB"],  # checked against the model's size before any training
            "budget '1kB' (1,000 bytes) is below the smallest packed small model",
        ),
    ],
)
def test_bad_names_and_values_exit_nonzero_with_a_message(tmp_path, capsys, args, message):
    assert cli.main(_run(tmp_path, *args)) == 1
    err = capsys.readouterr().err
    assert err.startswith("qareg: error: ") and message in err
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before creating anything


def test_bad_data_exits_nonzero_before_training(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert cli.main(_run(tmp_path, "--dataset", f"folder:{tmp_path / 'empty'}")) == 1
    assert "no images" in capsys.readouterr().err
    _images(tmp_path / "mixed", {"train": (8, 8), "test": (9, 8)})
    assert cli.main(_run(tmp_path, "--dataset", f"folder:{tmp_path / 'mixed'}")) == 1
    assert "all images must have the same size" in capsys.readouterr().err
    assert cli.main(_run(tmp_path, "--dataset", "cifar10", "--data-dir", str(tmp_path))) == 1
    assert "qareg prepare-data cifar10" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_workdir_with_another_run_needs_resume_or_overwrite(tmp_path, capsys):
    pipeline.prepare_workdir(tmp_path / "run", pipeline.Config())
    assert cli.main(_run(tmp_path)) == 1
    assert "already holds a run; pass --resume" in capsys.readouterr().err
    assert cli.main(_run(tmp_path, "--resume", "--k", "8")) == 1
    assert "holds a different run (ks: [2, 4] -> [8])" in capsys.readouterr().err
    assert cli.main(_run(tmp_path, "--resume", "--overwrite")) == 2  # mutually exclusive
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resume_of_a_missing_workdir_stops_before_loading_data(tmp_path, capsys):
    typo = tmp_path / "rnu"
    with mock.patch.object(data, "load_dataset", side_effect=AssertionError("data loaded")):
        assert cli.main(["run", "--resume", "--workdir", str(typo), "--no-progress"]) == 1
        err = capsys.readouterr().err
        assert err.startswith("qareg: error: --resume: workdir") and str(typo) in err
        assert "does not exist" in err and not typo.exists()
        typo.mkdir()  # an existing directory without a run: nothing to continue either
        assert cli.main(["run", "--resume", "--workdir", str(typo), "--no-progress"]) == 1
        assert "holds no run (no config.json)" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_nan_loss_exits_nonzero_naming_the_step(tmp_path, capsys):
    # From scratch without baselines needs no pretraining: only the regularized step runs.
    config = tmp_path / "cfg.py"
    config.write_text(
        "from qareg_jax.train import Config\n\n\ndef get_config():\n"
        "    return Config(pretrain_epochs=0, from_pretrained=False, baselines=(), reg_epochs=1)\n"
    )
    args = ["--config", str(config), "--regularizer", "nearest", "--k", "2"]
    # inf in float32; constant (a ramp from 0 to it is refused as NaN at step 0).
    args += ["--lambda", "1e39", "--lam-warmup", "0"]
    assert cli.main(_run(tmp_path, *args)) == 1
    err = capsys.readouterr().err
    assert "NaN or infinite at step 0 of reg-nearest-k2 reg" in err and "Traceback" not in err


def test_prepare_data_without_tensorflow_names_the_extra(tmp_path, capsys):
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorFlow is installed: prepare-data would download CIFAR-10")
    assert cli.main(["prepare-data", "cifar10", "--data-dir", str(tmp_path)]) == 1
    assert "qareg_jax[prepare]" in capsys.readouterr().err


def test_report_and_usage_errors(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path)]) == 1
    assert "holds no qareg run" in capsys.readouterr().err
    assert cli.main(["frobnicate"]) == 2
    assert cli.main([]) == 2
    assert cli.main(["prepare-data", "imagenet"]) == 2


def test_plan_is_printed_before_training_and_ctrl_c_gives_one_line(tmp_path, capsys):
    # The run stops where the first stage would start: the plan must already be out.
    with mock.patch.object(pipeline.run, "_run_seed", side_effect=KeyboardInterrupt):
        status = cli.main(_run(tmp_path, "--epochs", "2", "--k", "2", "--baseline", "none"))
    assert status == cli.EXIT_INTERRUPTED == 130
    out, err = capsys.readouterr()
    assert out.splitlines()[:3] == [
        "plan: 3 stages after pretraining, 1 seed; 44 steps per epoch (1,437 examples, "
        "batch 32); 748 optimizer steps in all",
        "  pretrain: train 88 steps (2 epochs)",
        "  reg-nearest-k2: reg 88 (2 epochs) + finetune 132 (3 epochs)",
    ]
    assert err == cli.INTERRUPTED + "\n"


def test_time_estimate_is_printed_once():
    said = []
    on_timed = pipeline.run._estimator(10_000, said.append)
    on_timed("pretrain", "train", 0.03)
    on_timed("reg-sine-k2", "reg", 0.5)
    assert said == [
        "estimate: 30.0 ms per step (pretrain train) x 10,000 steps = ~5 min of training for "
        "the whole run (plus compilation and evaluation; regularized and QAT steps can be slower)"
    ]


def _run_help(capsys) -> str:
    """``qareg run --help`` with whitespace runs collapsed to one space."""
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["run", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_help_says_what_each_phase_and_flag_covers(capsys):
    out = _run_help(capsys)
    assert "--epochs N epochs of pretraining and of each regularized / QAT phase" in out
    assert "--finetune-epochs N epochs of fine-tuning on the K levels" in out
    assert "post-training quantization baselines: kmeans" in out and ", or none" in out
    assert "pretrain full-precision training from random init: --epochs epochs" in out


def test_run_flags_for_qat_seeds_and_validation():
    args = cli.build_parser().parse_args(
        ["run", "--qat", "ste", "dkm", "--seeds", "0,1", "2", "--val-fraction", "0.1"]
        + ["--data-seed", "3", "--ste-recluster-every", "50", "--dkm-tau-frac", "0.5"]
        + ["--dkm-iters", "2"]
    )
    config = cli.config_from_args(args)
    assert (config.qat, config.seeds, config.val_fraction, config.data_seed) == (
        ("ste", "dkm"), (0, 1, 2), 0.1, 3,
    )  # fmt: skip
    assert (config.ste_recluster_every, config.dkm_tau_frac, config.dkm_iters) == (50, 0.5, 2)
    none = cli.config_from_args(cli.build_parser().parse_args(["run", "--qat", "none"]))
    assert none.qat == () and none.seeds is None and none.seed_list == (0,)


def test_run_flags_for_a_budget(capsys):
    def config(*argv):
        return cli.config_from_args(cli.build_parser().parse_args(["run", *argv]))

    assert (config().budget, config().budget_ks) == (None, (2, 4, 8, 16, 32))
    both = config("--budget", "16x", "--budget-ks", "2,4", "8")
    assert (both.budget, both.budget_ks, both.ks) == ("16x", (2, 4, 8), (2, 4))
    only = config("--budget", "1.5MiB", "--k", "none")
    assert (only.budget, only.ks) == ("1.5MiB", ())
    out = _run_help(capsys)
    assert "--budget SIZE also run every method at one K per layer" in out
    assert "(250000, 500kB, 1MB, 1.5MiB; kB/MB = 1000s, KiB/MiB = 1024s)" in out
    assert "ratio against float32 (16x)" in out and "--k none keeps only those" in out


def test_run_flags_for_groups_zero_and_pruning(capsys):
    def config(*argv):
        return cli.config_from_args(cli.build_parser().parse_args(["run", *argv]))

    plain = config()
    assert (plain.group_size, plain.pin_zero, plain.prune_sparsity) == (None, False, None)
    both = config("--group-size", "1", "--pin-zero", "--prune", "0.75", "--baseline", "kmeans")
    assert (both.group_size, both.pin_zero, both.prune_sparsity) == (1, True, 0.75)
    with pytest.raises(ValueError, match="prune_sparsity needs pin_zero=True"):
        config("--prune", "0.5", "--baseline", "kmeans")
    out = _run_help(capsys)
    assert "--group-size C one codebook per C output channels" in out
    assert "--prune S magnitude-prune every quantized layer" in out


# A child of a background job inherits SIGINT ignored (Python then never raises
# KeyboardInterrupt): the child gives itself the default disposition, as a terminal would,
# then execs the command. (preexec_fn would do it between fork and exec, and a fork of
# this multithreaded JAX process can deadlock there.)
_SIGINT_DEFAULT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
)


def _python_with_ctrl_c(*args: str) -> list[str]:
    """``python ARGS`` with SIGINT at its default disposition, whatever this process has."""
    return [sys.executable, "-c", _SIGINT_DEFAULT, *args]


def _demo_process(workdir: pathlib.Path) -> subprocess.Popen:
    """``qareg demo --fast`` in a child; faulthandler prints the stacks of a crash."""
    cmd = _python_with_ctrl_c("-m", "qareg_jax.cli", "demo", "--fast", "--workdir", str(workdir))
    return subprocess.Popen(
        [*cmd, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )


def test_interruptible_defers_a_ctrl_c_to_the_end_and_returns_130(capsys, default_sigint):
    def work() -> int:
        os.kill(os.getpid(), signal.SIGINT)  # deferred: the function still finishes
        done.append(True)
        return 0

    done: list[bool] = []
    assert cli.interruptible(work) == cli.EXIT_INTERRUPTED and done == [True]
    assert capsys.readouterr().err == cli.INTERRUPTED + "\n"
    assert cli.interruptible(lambda: 3) == 3


@pytest.mark.slow
def test_experiment_script_ctrl_c_prints_one_line_not_a_traceback(tmp_path):
    root = pathlib.Path(__file__).resolve().parent.parent
    cmd = _python_with_ctrl_c("-m", "experiments.run_table", "experiments/configs/digits_small.py")
    proc = subprocess.Popen(
        [*cmd, "--workdir", str(tmp_path / "run"), "--results", str(tmp_path / "results")],
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = proc.stdout.readline()  # the plan: start-up is over, training begins
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert first.startswith("plan:"), first + err
    assert proc.returncode == cli.EXIT_INTERRUPTED, err
    assert "Traceback" not in err and err.rstrip().endswith(cli.INTERRUPTED), err


def _rows(workdir: pathlib.Path) -> list[dict]:
    rows = json.loads((workdir / "results.json").read_text())["rows"]
    return [{k: v for k, v in r.items() if k not in ("wall_s", "step_s", "step_rel")} for r in rows]


@pytest.mark.slow
def test_ctrl_c_at_random_points_exits_cleanly_and_resume_gives_the_same_rows(tmp_path):
    # Interrupts at random points after start-up (the plan line; a Ctrl-C during Python's
    # imports is Python's own traceback), so some land in checkpoint saves: the old code
    # printed orbax tracebacks, lost interrupts in gc callbacks, or crashed (SIGSEGV).
    # The uninterrupted run first: its duration bounds the interrupt points, so the first
    # interrupt always lands however fast the machine is.
    whole = _demo_process(tmp_path / "whole")
    first = whole.stdout.readline()
    start = time.monotonic()
    # Read on through the same buffer (communicate() would drop what readline() buffered),
    # stderr beside it in a thread so that neither pipe can fill and stall the child.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        err_read = pool.submit(whole.stderr.read)
        out = first + whole.stdout.read()
        err = err_read.result()
    duration = time.monotonic() - start
    assert whole.wait() == 0 and out.startswith("plan:") and "\nestimate: " in out, err

    seed = random.randrange(2**32)
    rng, workdir, interrupted = random.Random(seed), tmp_path / "interrupted", 0
    for i in range(10):
        proc = _demo_process(workdir)
        first = proc.stdout.readline()  # blocks until start-up is done
        try:
            proc.wait(rng.uniform(0.0, 0.7 * duration))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        where = f"interrupt {i} (seed {seed}): rc {proc.returncode}, stderr:\n{err}"
        assert first.startswith("plan:") or proc.returncode == 0, where
        # Finished before the interrupt, or it came at exit, where Ctrl-C is ignored: a
        # machine that sped up since the timed run. Without an interrupt yet, start again.
        if proc.returncode == 0:
            if interrupted:
                break
            shutil.rmtree(workdir)
            continue
        assert proc.returncode == cli.EXIT_INTERRUPTED and err == cli.INTERRUPTED + "\n", where
        interrupted += 1
        # Saves are never cut: no partial (temporary) checkpoint directories are left.
        assert not list(workdir.glob("checkpoints/**/*.orbax-checkpoint-tmp*")), where
    assert interrupted, f"no run was interrupted (seed {seed}, run {duration:.1f} s)"
    proc = _demo_process(workdir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0 and "Traceback" not in err, err
    assert "| small | digits | kmeans | 2 |" in out
    assert _rows(workdir) == _rows(tmp_path / "whole")
