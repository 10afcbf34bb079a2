"""experiments/configs: every config loads through ``load_config``, variants derive from
their base (the sibling import works as for a script), and no config names a machine's
absolute path to the data."""

import dataclasses
import pathlib

import numpy as np
import pytest

from qareg_jax.pipeline import Config, load_config
from qareg_jax.pipeline.run import _training_indices

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "configs"
HELPERS = ("__init__.py", "data_paths.py", "legacy_lambda.py")  # imported by configs
FILES = sorted(p for p in CONFIGS.glob("*.py") if p.name not in HELPERS)


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_every_config_loads(path):
    assert isinstance(load_config(path), Config)


def _differences(a: Config, b: Config) -> set[str]:
    return {f.name for f in dataclasses.fields(Config) if getattr(a, f.name) != getattr(b, f.name)}


def test_vgg16_differs_from_its_alexnet_base_only_in_the_model():
    base, vgg = (
        load_config(CONFIGS / "alexnet_cifar10.py"),
        load_config(CONFIGS / "vgg16_cifar10.py"),
    )
    assert _differences(base, vgg) == {"model"}


def test_the_data_path_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("QAREG_CIFAR10_JPEG", str(tmp_path / "cifar.tar.gz"))
    config = load_config(CONFIGS / "cifar10_jpeg_small.py")
    assert config.dataset == f"folder:{tmp_path / 'cifar.tar.gz'}"


def test_no_config_writes_an_absolute_data_path():
    for path in FILES:
        assert "/work/" not in path.read_text(), path.name


def test_a_config_file_leaves_sys_path_as_it_was():
    import sys

    before = list(sys.path)
    load_config(CONFIGS / "vgg16_cifar10.py")
    assert sys.path == before


def test_the_seed_rows_differ_from_the_table_only_in_their_methods_seeds_and_examples():
    table = load_config(CONFIGS / "paper_alexnet.py")
    seeds = load_config(CONFIGS / "paper_alexnet_seeds.py")
    chosen = {"regularizers", "baselines", "freeze_reps", "ks", "finetune_lr", "seeds"}
    assert _differences(table, seeds) == chosen | {"val_fraction"}
    assert seeds.seeds == (1, 2) and seeds.ks == (2, 4) and seeds.lam == table.lam
    assert all(seeds.finetune_lr[m] == table.finetune_lr[m] for m in seeds.finetune_lr)


def test_each_seed_row_trains_on_its_full_precision_model_s_examples():
    fp = load_config(CONFIGS / "alexnet_cifar10_jpeg_fp.py").to_dict()
    table = load_config(CONFIGS / "paper_alexnet.py").to_dict()
    seeds = load_config(CONFIGS / "paper_alexnet_seeds.py").to_dict()
    n = 50_000  # CIFAR-10's training images

    def same(a: dict, b: dict, seed: int) -> bool:
        return np.array_equal(_training_indices(a, seed, n), _training_indices(b, seed, n))

    assert all(same(fp, seeds, seed) for seed in (0, 1, 2))
    # Seed 0 (the table's rows): the same examples under the table's validation split.
    assert same(fp, table, 0) and same(seeds, table, 0)
    assert not same(fp, table, 1)  # why the seed rows cannot take the table's split


def test_the_per_channel_ste_row_differs_from_the_table_s_ste_only_in_its_codebooks():
    table = load_config(CONFIGS / "paper_alexnet.py")
    channel = load_config(CONFIGS / "paper_alexnet_channel_ste.py")
    # lam and penalty_normalize: the penalty's, which an STE stage does not read.
    method_only = {"regularizers", "baselines", "qat", "freeze_reps", "penalty_normalize", "ks"}
    method_only |= {"lam"}
    assert _differences(table, channel) == method_only | {"finetune_lr", "group_size"}
    assert channel.qat == ("ste",) and channel.group_size == 1 and 4 in channel.ks
    assert channel.finetune_lr["ste"] == table.finetune_lr["ste"]
