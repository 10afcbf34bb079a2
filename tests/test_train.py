"""The pipeline of qareg_jax.train: mock CIFAR-10 and digits end to end, the ordering
regularized > k-means PTQ at K=2, bit-exact resume, divergence, config and workdir checks."""

from __future__ import annotations

import dataclasses
import json
from unittest import mock

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from qareg_jax import compress, data, train

# Tiny settings: one epoch per phase, one regularizer and one baseline at K=2.
TINY = train.Config(
    pretrain_epochs=1,
    reg_epochs=1,
    finetune_epochs=1,
    regularizers=("nearest",),
    ks=(2,),
    baselines=("kmeans",),
    batch_size=16,
    log_every=2,
    checkpoint_every=3,
)


def _rows_without_time(results):
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in results["rows"]]


def test_one_epoch_on_mock_cifar10(tmp_path):
    # mock_data fakes the records, not DatasetBuilder.is_prepared, which data.load_dataset
    # checks first so that it never downloads (see tests/test_data.py).
    with (
        tfds.testing.mock_data(num_examples=48),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        config = TINY.replace(dataset="cifar10", data_dir=str(tmp_path / "tfds"))
        results = train.train_and_evaluate(config, tmp_path / "run", progress=False)
    rows = results["rows"]
    assert [(r["method"], r["k"]) for r in rows] == [("nearest", 2), ("kmeans", 2)]
    for row in rows:
        for key in ("acc_fp", "acc_pre", "acc_post"):
            assert 0.0 <= row[key] <= 1.0
        assert row["ratio"] > 10  # 1-bit indices instead of 32-bit floats
        assert row["huffman_bytes"] <= row["packed_bytes"] < row["original_bytes"]
        params, quantized = compress.load(tmp_path / "run" / row["model_file"])
        assert set(quantized) == {f"params/{p}/kernel" for p in ("conv1", "conv2", "fc1", "fc2")}
        for codebook, assignments in quantized.values():
            assert codebook.shape == (2,) and assignments.max() <= 1
    assert results["device"].startswith("cpu")
    # Per-layer regularizer logs every log_every steps (3 steps per epoch: steps 2 and 3).
    records = [json.loads(line) for line in (tmp_path / "run/metrics/reg-nearest-k2.jsonl").open()]
    reg = [r for r in records if r["phase"] == "reg"]
    assert [r["step"] for r in reg] == [2, 3]
    layer = reg[-1]["layers"]["fc1/kernel"]
    assert set(layer) == {"penalty", "lambda", "distance"} and layer["distance"] >= 0
    assert (tmp_path / "run/table.md").read_text().count("| small | cifar10 |") == 2


# The ordering test's run; the resume test interrupts and resumes the same config.
ORDERING = train.Config(
    finetune_epochs=2,
    regularizers=("nearest",),
    ks=(2,),
    baselines=("kmeans",),
    log_every=50,
    checkpoint_every=100,
)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits") / "whole"
    return workdir, train.train_and_evaluate(ORDERING, workdir, progress=False)


def test_digits_regularized_beats_kmeans_ptq_at_k2(digits_run):
    # Library defaults: strong lambda (1e5 for nearest) ramped over half the phase.
    _, results = digits_run
    reg, ptq = results["rows"]
    fp = results["pretrain"]["acc_fp"]
    assert fp > 0.95
    assert reg["acc_pre"] > ptq["acc_pre"] + 0.02, (reg, ptq)
    assert reg["acc_post"] > fp - 0.05, (reg, fp)


def test_resume_after_interruption_equals_uninterrupted_run(tmp_path, digits_run):
    whole_dir, whole = digits_run
    # 44 steps per epoch: pretrain 660, reg 440, finetune 88 (twice).
    parts = tmp_path / "parts"
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(ORDERING, parts, progress=False, stop_after=250)
    # Resumes pretraining at its step-200 checkpoint, finishes it (460 steps), then stops
    # at reg step 290 (checkpoint at 200).
    with pytest.raises(train.TrainingInterrupted):
        train.train_and_evaluate(ORDERING, parts, resume=True, progress=False, stop_after=750)
    assert train._checkpoint_manager(parts / "checkpoints/reg-nearest-k2/reg").latest_step() == 200
    resumed = train.train_and_evaluate(ORDERING, parts, resume=True, progress=False)

    assert _rows_without_time(resumed) == _rows_without_time(whole)
    for name in ("reg-nearest-k2", "ptq-kmeans-k2"):
        # Final quantized models bit-identical, and the same metrics logged.
        a = (whole_dir / "models" / f"{name}.qareg").read_bytes()
        assert a == (parts / "models" / f"{name}.qareg").read_bytes()
        a = (whole_dir / "metrics" / f"{name}.jsonl").read_text()
        assert a == (parts / "metrics" / f"{name}.jsonl").read_text()
    # A finished run resumes to the same results without training again.
    again = train.train_and_evaluate(ORDERING, parts, resume=True, progress=False, stop_after=1)
    assert _rows_without_time(again) == _rows_without_time(whole)


def test_nan_loss_stops_keeps_last_good_checkpoint_and_names_the_step(tmp_path):
    ds = data.load_dataset("digits")
    config = TINY.replace(batch_size=64, checkpoint_every=1, log_every=4)
    seed = train._phase_seed(config.seed, "pretrain/train")
    # One NaN pixel poisons the loss of the step whose batch draws that image.
    for index in range(len(ds.train_labels)):
        images = ds.train_images.copy()
        images[index, 0, 0, 0] = np.nan
        poisoned = dataclasses.replace(ds, train_images=images)
        batches = data.train_batches(poisoned, 64, seed=seed)
        bad_step = next(s for s, b in enumerate(batches) if np.isnan(b["image"]).any())
        if bad_step >= 3:
            break
    with pytest.raises(train.TrainingDivergedError, match=f"at step {bad_step} of pretrain"):
        train.train_and_evaluate(config, tmp_path, progress=False, dataset=poisoned)
    manager = train._checkpoint_manager(tmp_path / "checkpoints/pretrain/train")
    assert manager.latest_step() == bad_step  # steps 0 .. bad_step - 1, all finite
    restored = manager.restore(bad_step)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(restored["params"]))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (dict(model="resnet"), "unknown model 'resnet'; allowed: alexnet, vgg16, small"),
        (dict(dataset="mnist"), "allowed: cifar10, digits, folder:PATH"),
        (dict(regularizers=("l2",)), "allowed: sine, cosine, nearest, softmin, product, wells"),
        (dict(baselines=("gptq",)), "allowed: kmeans, uniform, pws, ecsq, binary"),
        (dict(ks=(1,)), "integer >= 2"),
        (dict(ks=(300,), index_dtype="uint8"), "K=300 does not fit the index dtype uint8"),
        (dict(ks=(2**32 + 1,)), "too large"),
        (dict(lam=-1.0), "lambda must be"),
        (dict(lam_warmup=2.0), "lam_warmup"),
        (dict(pretrain_epochs=0), "pretrain_epochs is 0"),
        (dict(freeze_reps=()), "freeze_reps"),
    ],
)
def test_bad_config_is_refused_with_allowed_values(changes, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TINY.replace(**changes)


def test_workdir_holding_another_run_is_refused(tmp_path):
    train.prepare_workdir(tmp_path / "a", TINY)
    with pytest.raises(train.WorkdirError, match="--resume.*--overwrite"):
        train.prepare_workdir(tmp_path / "a", TINY)
    with pytest.raises(train.WorkdirError, match="different run.*ks: \\[2\\] -> \\[4\\]"):
        train.prepare_workdir(tmp_path / "a", TINY.replace(ks=(4,)), resume=True)
    train.prepare_workdir(tmp_path / "a", TINY.replace(ks=(4,)), overwrite=True)
    assert json.loads((tmp_path / "a/config.json").read_text())["config"]["ks"] == [4]
    (tmp_path / "b").mkdir()
    (tmp_path / "b/notes.txt").write_text("mine")
    with pytest.raises(train.WorkdirError, match="not empty and holds no qareg run"):
        train.prepare_workdir(tmp_path / "b", TINY, overwrite=True)
    assert (tmp_path / "b/notes.txt").exists()


def test_planned_stages_skip_frozen_static_and_binary_above_k2():
    config = TINY.replace(
        regularizers=("sine", "nearest"), ks=(2, 4), freeze_reps=(False, True),
        baselines=("binary", "kmeans"),
    )  # fmt: skip
    assert [s[0] for s in train.planned_stages(config)] == [
        "reg-sine-k2", "reg-nearest-k2", "reg-nearest-frozen-k2", "ptq-binary-k2",
        "ptq-kmeans-k2", "reg-sine-k4", "reg-nearest-k4", "reg-nearest-frozen-k4",
        "ptq-kmeans-k4",
    ]  # fmt: skip
    frozen_only = config.replace(ks=(2,), baselines=(), freeze_reps=(True,))
    assert [s[0] for s in train.planned_stages(frozen_only)] == [
        "reg-sine-k2", "reg-nearest-frozen-k2",
    ]  # fmt: skip


def test_frozen_reps_keep_their_values_and_lambda_ramps():
    tree = {"model": {"w": jax.numpy.ones((3, 2))}, "reps": {"w": jax.numpy.array([0.0, 2.0])}}
    tx = train.make_optimizer(TINY, 0.1, 10, freeze_reps=True)
    grads = jax.tree.map(jax.numpy.ones_like, tree)
    updates, _ = jax.jit(tx.update)(grads, tx.init(tree), tree)
    assert np.all(np.asarray(updates["reps"]["w"]) == 0)
    assert np.all(np.asarray(updates["model"]["w"]) != 0)
    ramp = train.lam_schedule(100.0, 0.5, 10)
    assert [float(ramp(s)) for s in (0, 1, 5, 9)] == [0.0, 20.0, 100.0, 100.0]
    assert train.lam_schedule(100.0, 0.0, 10) == 100.0


def test_load_config_from_file(tmp_path):
    path = tmp_path / "cfg.py"
    path.write_text(
        "from qareg_jax.train import Config\n\ndef get_config():\n    return Config(ks=[2, 8])\n"
    )
    assert train.load_config(path).ks == (2, 8)
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="defines no get_config"):
        train.load_config(tmp_path / "bad.py")
