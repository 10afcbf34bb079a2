"""experiments/paper_table.py: the paper configs (AlexNet reuses the full-precision run's
pretraining), the claim's ratios, clear argument errors, and ``--tiny`` end to end on a
fake CIFAR-10 JPEG tarball (the real one is never needed)."""

from __future__ import annotations

import json
import pathlib
import tarfile

import numpy as np
import pytest
from PIL import Image

from experiments import paper_table
from qareg_jax import data
from qareg_jax.pipeline import load_config
from qareg_jax.pipeline.run import _training_indices
from qareg_jax.pipeline.workdir import PRETRAIN_FIELDS

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
METHODS = dict(
    regularizers=("sine", "cosine", "nearest", "softmin", "product", "wells"),
    freeze_reps=(False, True),
    qat=("ste", "dkm"),
    baselines=("kmeans", "uniform", "pws", "ecsq", "binary"),
    ks=(2, 4, 8),
)


@pytest.mark.parametrize("model", paper_table.MODELS)
def test_the_paper_configs_run_every_method_with_shortened_phases(model):
    config = paper_table.load(model)
    assert {f: getattr(config, f) for f in METHODS} == METHODS
    assert config.dataset.startswith("folder:") and config.dataset.endswith("jpeg75.tar.gz")
    shorten = paper_table.shorten_factor(paper_table.config_path(model))
    base = load_config(CONFIGS / f"{model}_cifar10.py")
    assert shorten and config.reg_epochs == base.reg_epochs // shorten >= 1
    assert config.finetune_epochs == base.finetune_epochs // shorten >= 1


def test_alexnet_pretrains_as_the_full_precision_run():
    fp, table = load_config(CONFIGS / "alexnet_cifar10_jpeg_fp.py"), paper_table.load("alexnet")
    assert {f: getattr(table, f) for f in PRETRAIN_FIELDS} == {
        f: getattr(fp, f) for f in PRETRAIN_FIELDS
    }
    # The table's validation split leaves the FP run's 45,000 training images of 50,000.
    assert table.val_fraction == 0.1
    same = [np.array_equal(*(_training_indices(c.to_dict(), 0, 50_000) for c in (fp, table)))]
    assert same == [True]


def _row(method: str, kind: str, k: int, acc_pre: float) -> dict:
    return dict(model="m", dataset="d", method=method, kind=kind, k=k, acc_pre=acc_pre)


def test_claim_lines_give_every_ratio_and_say_whether_the_paper_is_reached():
    rows = [
        _row("nearest", "regularizer", 2, 0.40),
        _row("sine", "regularizer", 2, 0.20),
        _row("kmeans", "baseline", 2, 0.10),
        _row("binary", "baseline", 2, 0.25),
        _row("ste", "qat", 2, 0.50),
        _row("nearest", "regularizer", 4, 0.60),
        _row("kmeans", "baseline", 4, 0.50),
    ]
    lines = paper_table.claim_lines(rows, "alexnet")
    assert "| 2 | nearest | kmeans | 40.00 | 10.00 | 4.00x |" in lines
    assert "| 2 | sine | binary | 20.00 | 25.00 | 0.80x |" in lines
    assert "| 4 | nearest | kmeans | 60.00 | 50.00 | 1.20x |" in lines
    assert sum(line.startswith("| 2 |") for line in lines) == 4  # no QAT in the ratios
    k2, k4 = (next(x for x in lines if x.startswith(f"At K = {k} ")) for k in (2, 4))
    assert "4.00x (nearest over kmeans), which reaches the paper's 3x" in k2
    assert "best baseline (binary, 25.00 %) is 1.60x" in k2
    assert "does not reach the paper's 3x" in k4
    assert "does not reach the paper's 6x" in "\n".join(paper_table.claim_lines(rows, "vgg16"))
    # Where QAT ran, the best regularizer is set against it in plain words.
    (qat,) = [x for x in lines if x.startswith("Against quantization-aware training")]
    assert qat.endswith("ste 50.00 % (the best regularizer 10.00 points under it).")
    rows.append(_row("dkm", "qat", 4, 0.55))
    four = [x for x in paper_table.claim_lines(rows, "alexnet") if "dkm" in x]
    assert len(four) == 1 and "dkm 55.00 % (the best regularizer 5.00 points above it)" in four[0]


def test_best_histograms_pick_the_best_trained_method_on_validation_per_k(tmp_path):
    (tmp_path / "plots").mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()

    def row(stage, k, kind, val, test, seed=0):
        (tmp_path / "plots" / f"hist_{stage}.png").write_bytes(stage.encode())
        return dict(stage=stage, method=stage, k=k, kind=kind, seed=seed,
                    acc_val_post=val, acc_post=test)  # fmt: skip

    rows = [
        row("a-k2", 2, "regularizer", 0.60, 0.70),  # best on test, not on validation
        row("b-k2", 2, "qat", 0.65, 0.60),
        row("b-k2-seed1", 2, "qat", 0.99, 0.99, seed=1),  # another seed: not compared
        row("c-k4", 4, "regularizer", 0.80, 0.80),
        row("d-k4", 4, "baseline", 0.90, 0.90),  # post-training: not a trained method
    ]
    lines = paper_table.best_histograms(rows, tmp_path, dest, ks=(2, 4, 8))
    assert (dest / "hist_best_k2.png").read_bytes() == b"b-k2"
    assert (dest / "hist_best_k4.png").read_bytes() == b"c-k4"
    assert not (dest / "hist_best_k8.png").exists() and len(lines) == 2
    assert "b-k2 (the best trained method on the validation accuracy" in lines[0]


def test_the_recipe_note_names_ste_only_when_it_runs():
    config = paper_table.load("alexnet")
    assert "STE" in paper_table.recipe_note(config)
    assert paper_table.recipe_note(config.replace(ste_last=0.0, ste_keep_lam=False)) == ""


def test_argument_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "resnet"])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "alexnet", "--resume", "--workdir", str(tmp_path / "no")])
    assert "nothing to continue" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "alexnet", "--tiny", "--pretrained-from", str(tmp_path)])
    err = capsys.readouterr().err
    assert "holds no run" in err and "--tiny pretrains its own" in err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "vgg16", "--resume", "--overwrite"])
    assert "give --resume or --overwrite, not both" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "alexnet", "--partial", "--resume"])
    assert "--partial reads the run in --workdir" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "alexnet", "--partial", "--workdir", str(tmp_path / "no")])
    err = capsys.readouterr().err
    assert "--partial: workdir" in err and "holds no run; nothing to report" in err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "alexnet", "--partial", "--stages-from", str(tmp_path)])
    assert "no --resume, --overwrite, --pretrained-from or --stages-from" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_table.main(["--model", "alexnet", "--tiny", "--stages-from", str(tmp_path / "no")])
    assert "--stages-from: " in (err := capsys.readouterr().err) and "no stages/ folder" in err
    assert not (tmp_path / "no").exists()


def _fake_cifar_tarball(root: pathlib.Path, train: int = 30, test: int = 5) -> pathlib.Path:
    """A CIFAR-10-shaped JPEG tarball: ``train`` / ``test`` 32x32 noise images per class."""
    rng = np.random.default_rng(0)
    tarball = root / "cifar10-jpeg75.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        for split, n in (("train", train), ("test", test)):
            for cls in data.CIFAR10_CLASSES:
                folder = root / "imgs" / split / cls
                folder.mkdir(parents=True)
                for i in range(n):
                    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=75)
        tar.add(root / "imgs", arcname=".")
    return tarball


@pytest.fixture
def fake_cifar(tmp_path, monkeypatch):
    monkeypatch.setenv("QAREG_CIFAR10_JPEG", str(_fake_cifar_tarball(tmp_path)))
    monkeypatch.setenv("QAREG_CACHE_DIR", str(tmp_path / "cache"))


def _run_tiny(model: str, tmp_path: pathlib.Path) -> pathlib.Path:
    argv = ["--model", model, "--tiny", "--workdir", str(tmp_path / "run")]
    assert paper_table.main([*argv, "--results", str(tmp_path / "results")]) == 0
    return tmp_path / "results" / f"paper_{model}_tiny"


def _check_outputs(dest: pathlib.Path) -> None:
    table = (dest / "table.md").read_text()
    for key in ("command", "date", "machine", "git_commit"):
        assert f"- {key}: `" in table
    results = json.loads((dest / "results.json").read_text())
    assert (dest / "accuracy_vs_bits.png").is_file()
    assert (dest / "hist_best_k2.png").is_file() and "- K = 2: [hist_best_k2.png]" in table
    claim = (dest / "claim.md").read_text()
    assert "the paper's" in claim and paper_table.PAPER_STATEMENT in claim
    assert "STE on their levels for the last 100% of the phase" in claim
    rows = results["rows"]
    regs = {r["method"] for r in rows if r["kind"] == "regularizer"}
    bases = {r["method"] for r in rows if r["kind"] == "baseline"}
    # The regularizers run with the recipe (STE beside the penalty for the whole phase).
    assert regs == {"sine + ste1", "nearest + ste1"} and bases == {"kmeans", "binary"}
    ratio_lines = [x for x in claim.splitlines() if x.startswith("| 2 |")]
    pairs = {tuple(c.strip() for c in x.split("|")[2:4]) for x in ratio_lines}
    assert len(ratio_lines) == len(pairs) == len(regs) * len(bases)
    assert pairs == {(r, b) for r in regs for b in bases}
    assert sum(x.startswith("At K = 2 our largest ratio") for x in claim.splitlines()) == 1
    assert "not a result" in claim


def test_tiny_end_to_end_on_fake_data_then_resume(tmp_path, fake_cifar, monkeypatch):
    # The alexnet code path with the SmallCNN in its place, to stay within a minute on two
    # CPU cores; the real models run in the slow tests below.
    monkeypatch.setitem(paper_table.TINY, "model", "small")
    dest = _run_tiny("alexnet", tmp_path)
    _check_outputs(dest)
    # --resume reads the finished run back and rewrites the same claim.
    before = (dest / "claim.md").read_text().split("**The paper's")[1]
    argv = ["--model", "alexnet", "--tiny", "--workdir", str(tmp_path / "run"), "--resume"]
    cost = _method_cost_json(tmp_path / "cost.json", "small")
    argv += ["--method-cost", str(cost)]
    assert paper_table.main([*argv, "--results", str(tmp_path / "results")]) == 0
    assert (dest / "claim.md").read_text().split("**The paper's")[1] == before
    table = (dest / "table.md").read_text()
    assert "Time per step relative to the plain step" in table and "| ste | 2 | 1.30 | - |" in table
    # --partial: the stages finished so far of a run in progress, without training.
    run = tmp_path / "run"
    (run / "results.json").unlink()
    for stage in ("qat-ste-k2", "ptq-binary-k2"):
        (run / "stages" / f"{stage}.json").unlink()
    argv = ["--model", "alexnet", "--tiny", "--workdir", str(run), "--partial"]
    assert paper_table.main([*argv, "--results", str(tmp_path / "partial")]) == 0
    dest = tmp_path / "partial/paper_alexnet_tiny"
    assert (dest / "table.md").read_text().startswith("# Partial: 3 of 5 stages finished")
    results = json.loads((dest / "results.json").read_text())
    assert [r["stage"] for r in results["rows"]] == [
        "reg-sine-ste1-k2", "reg-nearest-ste1-k2", "ptq-kmeans-k2"
    ]  # fmt: skip
    assert results["partial"] == "3 of 5 stages" and "wall_s" not in results
    assert "**Partial: the 3 of 5 stages finished so far" in (dest / "claim.md").read_text()
    assert not (run / "stages/qat-ste-k2.json").exists()  # nothing trained
    kept = sorted(p.name for p in (dest / "stages").iterdir())
    assert kept == ["pretrain.json", "ptq-kmeans-k2.json", "reg-nearest-ste1-k2.json",
                    "reg-sine-ste1-k2.json"]  # fmt: skip
    assert (dest / "stages/ptq-kmeans-k2.json").read_text() == (
        run / "stages/ptq-kmeans-k2.json"
    ).read_text()


def _method_cost_json(path: pathlib.Path, model: str) -> pathlib.Path:
    machine = {"date": "2026-12-05T00:00:00+00:00", "machine": "test", "git_commit": "abc"}
    rows = [
        {"method": "plain", "time_ratio": 1.0, "memory_ratio": 1.0},
        {"method": "ste", "k": 2, "time_ratio": 1.3, "memory_ratio": None},
    ]
    payload = {"benchmark": "method_cost", "machine": machine, "config": {"model": model}}
    path.write_text(json.dumps({**payload, "rows": rows}))
    return path


def test_method_cost_of_another_model_or_file_is_refused_before_any_training(tmp_path, capsys):
    cost = _method_cost_json(tmp_path / "cost.json", "cifar_vgg")
    argv = ["--model", "alexnet", "--workdir", str(tmp_path / "run")]
    with pytest.raises(SystemExit):
        paper_table.main([*argv, "--method-cost", str(cost)])
    assert "times model 'cifar_vgg', the table is 'alexnet'" in capsys.readouterr().err
    (tmp_path / "other.json").write_text(json.dumps({"benchmark": "hist"}))
    with pytest.raises(SystemExit):
        paper_table.main([*argv, "--method-cost", str(tmp_path / "other.json")])
    assert "not a benchmarks.method_cost result" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        paper_table.main([*argv, "--method-cost", str(tmp_path / "missing.json")])
    assert "--method-cost" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.parametrize("model", ["alexnet", "vgg16"])
def test_tiny_real_model_one_method_each_end_to_end(tmp_path, fake_cifar, monkeypatch, model):
    # The real models compile slowly on a CPU: one regularizer and one baseline cover their
    # path (every method runs in the SmallCNN test above, through the same code).
    monkeypatch.setitem(paper_table.TINY, "regularizers", ("nearest",))
    monkeypatch.setitem(paper_table.TINY, "qat", ())
    monkeypatch.setitem(paper_table.TINY, "baselines", ("kmeans",))
    dest = _run_tiny(model, tmp_path)
    rows = json.loads((dest / "results.json").read_text())["rows"]
    methods = [(r["model"], r["method"]) for r in rows]
    assert methods == [(model, "nearest + ste1"), (model, "kmeans")]
    claim = (dest / "claim.md").read_text()
    first = [x for x in claim.splitlines() if x.startswith("| 2 |")][0]
    assert first.startswith("| 2 | nearest + ste1 | kmeans")
    assert (dest / "accuracy_vs_bits.png").is_file()
