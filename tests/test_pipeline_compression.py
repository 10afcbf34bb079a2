"""The pipeline with grouped codebooks, a pinned zero and pruning (``Config.group_size``,
``pin_zero``, ``prune_sparsity``): a tiny digits run whose packed files hold what the
config asked for, and the config's refusals."""

from __future__ import annotations

import numpy as np
import pytest

from qareg_jax import compress, pipeline

SPARSITY = 0.5
# 128 training examples, 4 steps of 32 per epoch.
PRUNED = pipeline.Config(
    pretrain_epochs=1,
    reg_epochs=2,
    finetune_epochs=1,
    regularizers=("nearest",),
    baselines=("kmeans",),
    ks=(4,),
    pin_zero=True,
    prune_sparsity=SPARSITY,
    ste_last=0.5,  # the hybrid recipe's STE part runs on the pruned, pinned levels
    group_size=2,
    batch_size=32,
    train_subset=128,
    log_every=2,
    checkpoint_every=3,
)


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("pruned") / "run"
    return workdir, pipeline.train_and_evaluate(PRUNED, workdir, progress=False)


def test_packed_files_are_pruned_grouped_and_keep_zero(pruned_run):
    workdir, results = pruned_run
    rows = {r["stage"]: r for r in results["rows"]}
    assert rows["reg-nearest-ste0.5-k4"]["method"] == "nearest + ste0.5 + prune 50%"
    assert rows["ptq-kmeans-k4"]["method"] == "prune 50% then kmeans"
    for row in rows.values():
        params, quantized = compress.load(workdir / row["model_file"])
        for codebook, assignments in quantized.values():
            assert codebook.ndim == 2 and codebook.shape[1] == 4  # (groups, K)
            assert np.all(np.any(codebook == 0.0, axis=1))  # every group kept its zero
            zero_idx = np.argmin(np.abs(codebook), axis=1)
            group = np.arange(assignments.shape[-1]) // (assignments.shape[-1] // len(codebook))
            on_zero = assignments == zero_idx[group]
            # every layer at least as sparse as the target (fine-tuning keeps zeros at 0)
            assert on_zero.mean() >= np.floor(SPARSITY * on_zero.size) / on_zero.size
        assert 0 < row["acc_post"] <= 1


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        (dict(prune_sparsity=0.5), "prune_sparsity needs pin_zero=True"),
        (dict(pin_zero=True, prune_sparsity=1.0), r"prune_sparsity must be a number in \(0, 1\)"),
        (dict(pin_zero=True, prune_sparsity=0.5, qat=("ste",)), "remove \\['ste'\\] from qat"),
        (dict(pin_zero=True, baselines=("kmeans", "uniform")), "remove \\['uniform'\\]"),
        (dict(group_size=4, qat=("dkm",)), "remove \\['dkm'\\]"),
        (dict(group_size=0), "group_size must be a positive int"),
        (dict(group_size=2, budget="8x"), "group_size with a budget is not supported"),
        (dict(pin_zero=True, prune_sparsity=0.5, prune_ramp=2.0), "prune_ramp must be"),
    ],
)
def test_bad_compression_fields_refused(changes, match):
    base = dict(regularizers=("nearest",), baselines=("kmeans",), ks=(4,))
    with pytest.raises(ValueError, match=match):
        pipeline.Config(**{**base, **changes})


def test_group_size_not_dividing_a_layer_refused_before_training(tmp_path):
    config = PRUNED.replace(group_size=4)  # SmallCNN's fc2 has 10 output channels
    with pytest.raises(ValueError, match="group_size=4 must divide the 10 output channels"):
        pipeline.train_and_evaluate(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "stages").exists()


def test_pin_zero_must_be_a_bool():
    with pytest.raises(TypeError, match="pin_zero must be True or False"):
        pipeline.Config(pin_zero="yes", baselines=("kmeans",))
