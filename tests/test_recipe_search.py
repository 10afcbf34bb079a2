"""experiments/recipe_search.py and the CPU-scale CIFAR configs: the search config's
variants are valid, a tiny search runs end to end and is read back, and the default
``cifar10_jpeg_vgg`` config runs on mock 32x32 data."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from unittest import mock

import numpy as np
import pytest

from experiments import recipe_search
from qareg_jax import data, pipeline
from qareg_jax.pipeline import stages

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"

TINY_SEARCH = """
from qareg_jax.train import Config

def get_config():
    return Config(pretrain_epochs=1, reg_epochs=1, finetune_epochs=1, train_subset=256,
                  batch_size=64, val_fraction=0.2, ks=(2,), regularizers=("nearest",),
                  baselines=(), log_every=2)

def get_variants():
    return {"a": {}, "b": dict(lam=1.0, reduction="sum", penalty_normalize="spacing")}
"""


def test_the_search_config_and_its_variants_are_valid():
    base, variants = recipe_search.load_search(str(CONFIGS / "cifar10_jpeg_vgg_search.py"))
    assert base.val_fraction > 0 and base.model == "cifar_vgg"
    assert {"old", "qat"} <= set(variants)


SEARCHES = sorted(p for p in CONFIGS.glob("*.py") if "def get_variants" in p.read_text())


@pytest.mark.parametrize("path", SEARCHES, ids=lambda p: p.stem)
def test_every_search_config_has_valid_variants(path):
    base, variants = recipe_search.load_search(str(path))
    fields = {f.name for f in dataclasses.fields(base)}
    assert variants
    for name, v in variants.items():
        assert set(v) <= fields, (name, set(v) - fields)
        base.replace(**v)  # the values pass Config's checks


def test_the_static_interval_variants_put_both_penalties_on_the_same_levels():
    """sine and cosine share one level set per K, at a Gaussian's optimal points (K = 2:
    the k-means centroids +- 0.8 std; K = 4: the uniform grid +- 0.5, +- 1.5 std), set
    by hand (``std``) or fitted (``mse``)."""
    from qareg_jax import codebook, regularizers

    w = np.random.default_rng(0).normal(0.0, 0.05, 200_000)
    base, variants = recipe_search.load_search(str(CONFIGS / "paper_alexnet_static_interval.py"))
    expected = {2: np.array([-0.8, 0.8]), 4: np.array([-1.5, -0.5, 0.5, 1.5])}
    for name, changes in variants.items():
        if name == "minmax":
            continue
        cfg = base.replace(**changes)
        (reg,), (k,) = cfg.regularizers, cfg.ks
        spec = codebook.QuantSpec(
            regularizer=reg, k=k, interval=cfg.interval, interval_param=cfg.interval_param
        )
        lo, hi = codebook.resolve_interval(w, spec)
        levels = regularizers.static_levels(reg, k, lo, hi)
        # "mse" fits a sample: a uniform grid's error is flat in its offset near the optimum
        atol = 0.03 if cfg.interval == "mse" else 0.02
        np.testing.assert_allclose(levels / w.std(), expected[k], atol=atol, err_msg=name)


def test_a_bad_variant_is_named(tmp_path):
    (tmp_path / "bad_search.py").write_text(TINY_SEARCH.replace('"a": {}', '"a": dict(ks=(1,))'))
    with pytest.raises(ValueError, match="variant 'a'"):
        recipe_search.load_search(str(tmp_path / "bad_search.py"))


def test_a_tiny_search_runs_marks_the_best_on_validation_and_reads_back(tmp_path, capsys):
    (tmp_path / "tiny_search.py").write_text(TINY_SEARCH)
    argv = [str(tmp_path / "tiny_search.py"), "--workdir", str(tmp_path / "runs")]
    argv += ["--results", str(tmp_path / "results")]
    assert recipe_search.main(argv) == 0
    out = json.loads((tmp_path / "results/tiny_search/search.json").read_text())
    rows = out["rows"]
    assert [(r["variant"], r["method"], r["k"]) for r in rows] == [
        ("a", "nearest", 2),
        ("b", "nearest", 2),
    ]
    for row in rows:  # regularized stages: distance to the levels in spacing units
        assert 0 <= row["dist_mean"] <= row["dist_max"] < 1
    best = max(rows, key=lambda r: r["acc_val_post"])
    table = (tmp_path / "results/tiny_search/search.md").read_text()
    assert table.count(" * |") == 1 and f"| **{best['variant']}** * |" in table
    # A second call reads the finished variants back: same rows, no training.
    before = {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("*.json")}
    assert recipe_search.main(argv) == 0
    assert json.loads((tmp_path / "results/tiny_search/search.json").read_text())["rows"] == rows
    assert before == {p: p.stat().st_mtime for p in (tmp_path / "runs").rglob("*.json")}
    with pytest.raises(SystemExit):
        recipe_search.main([*argv, "--only", "c"])
    assert "not in the variants (a, b)" in capsys.readouterr().err
    # --reuse: a new search reads variant a's rows from the first search's run, training
    # only b (a's run directory gets a's records and models; it pretrains, no more).
    argv2 = [str(tmp_path / "tiny_search.py"), "--workdir", str(tmp_path / "runs2")]
    argv2 += ["--results", str(tmp_path / "results2"), "--reuse", "a", str(tmp_path / "runs/a")]
    (tmp_path / "runs/a/stages/reg-wells-k9.json").write_text("{}")  # not planned: left there
    assert recipe_search.main(argv2) == 0
    rows2 = json.loads((tmp_path / "results2/tiny_search/search.json").read_text())["rows"]
    strip = ("wall_s", "step_s", "step_rel")  # timings
    assert [{k: v for k, v in r.items() if k not in strip} for r in rows2] == [
        {k: v for k, v in r.items() if k not in strip} for r in rows
    ]
    assert not (tmp_path / "runs2/a/checkpoints/reg-nearest-k2").exists()
    assert (tmp_path / "runs2/b/checkpoints/reg-nearest-k2").is_dir()
    assert (tmp_path / "runs2/a/models/reg-nearest-k2.qareg").is_file()
    assert not (tmp_path / "runs2/a/stages/reg-wells-k9.json").exists()
    out = capsys.readouterr().out
    assert "its config differs in: nothing" in out
    # The run directories lost, --stages-from the results folder rebuilds the search: both
    # variants read back from their records (no regularized phase trains again).
    assert sorted(p.name for p in (tmp_path / "results/tiny_search/a/stages").iterdir()) == [
        "pretrain.json", "reg-nearest-k2.json"
    ]  # fmt: skip
    argv3 = [str(tmp_path / "tiny_search.py"), "--workdir", str(tmp_path / "runs3")]
    argv3 += ["--results", str(tmp_path / "results3")]
    assert recipe_search.main([*argv3, "--stages-from", str(tmp_path / "results/tiny_search")]) == 0
    rows3 = json.loads((tmp_path / "results3/tiny_search/search.json").read_text())["rows"]
    dist = ("dist_mean", "dist_max")  # they need the models, which the records do not keep
    assert [{k: v for k, v in r.items() if k not in dist} for r in rows3] == [
        {k: v for k, v in r.items() if k not in dist} for r in rows
    ]
    assert not list((tmp_path / "runs3").rglob("checkpoints/reg-nearest-k2"))
    with pytest.raises(SystemExit):
        recipe_search.main([*argv3, "--stages-from", str(tmp_path)])
    assert "no <variant>/stages/ folder" in capsys.readouterr().err
    for bad, why in ((["c", str(tmp_path)], "not in the variants"),
                     (["a", str(tmp_path / "none")], "not a run directory")):  # fmt: skip
        with pytest.raises(SystemExit):
            recipe_search.main([*argv2, "--reuse", *bad])
        assert why in capsys.readouterr().err


def _random_images(n_train: int, n_test: int) -> data.Dataset:
    rng = np.random.default_rng(0)
    images = rng.random((n_train + n_test, 32, 32, 3), dtype=np.float32)
    labels = rng.integers(0, 10, n_train + n_test).astype(np.int32)
    return data.Dataset(
        "mock", images[:n_train], labels[:n_train], images[n_train:], labels[n_train:],
        tuple("abcdefghij"), np.full(3, 0.5, np.float32), np.full(3, 0.3, np.float32),
    )  # fmt: skip


@pytest.mark.slow
def test_the_default_cpu_scale_config_runs_on_mock_data(tmp_path):
    config = pipeline.load_config(CONFIGS / "cifar10_jpeg_vgg.py").replace(
        pretrain_epochs=1,
        reg_epochs=1,
        finetune_epochs=1,
        batch_size=32,
        qat=("ste",),
        bn_recalibrate=2,
    )
    with mock.patch.object(stages, "recalibrate", wraps=stages.recalibrate) as spy:
        results = pipeline.train_and_evaluate(
            config, tmp_path, progress=False, dataset=_random_images(80, 20)
        )
    # Fresh BatchNorm statistics for every measured net: a regularized stage's unsnapped
    # and snapped nets, the other stages' snapped one.
    calls = [c.args[1] for c in spy.call_args_list]
    measured = ("reg-nearest", "reg-nearest", "ptq-kmeans", "qat-ste")
    assert calls == [f"{m}-k{k}" for k in (2, 4) for m in measured]
    assert [(r["method"], r["k"]) for r in results["rows"]] == [
        (m, k) for k in (2, 4) for m in ("nearest", "kmeans", "ste")
    ]
    for row in results["rows"]:
        assert 0 <= row["acc_val_pre"] <= 1 and row["ratio"] > 10


@pytest.mark.parametrize(
    "levels, spacing",
    [([-1.0, 0.0, 1.0], 1.0), ([[-1.0, 1.0], [0.0, 4.0]], 3.0)],
    ids=["per-tensor", "per-channel"],
)
def test_relative_distance_reads_per_tensor_and_grouped_levels(tmp_path, levels, spacing):
    for sub in ("metrics", "stages"):
        (tmp_path / sub).mkdir()
    layers = {"a": {"distance": 0.3}, "b": {"distance": 0.6}}
    (tmp_path / "metrics" / "s.jsonl").write_text(
        json.dumps({"step": 1}) + "\n" + json.dumps({"step": 2, "layers": layers}) + "\n"
    )
    hist = {p: {"levels_after": levels} for p in layers}
    (tmp_path / "stages" / "s.json").write_text(json.dumps({"histograms": hist}))
    mean, worst = recipe_search.relative_distance(tmp_path, "s")
    np.testing.assert_allclose([mean, worst], [0.45 / spacing, 0.6 / spacing])
    assert recipe_search.relative_distance(tmp_path, "missing") is None
