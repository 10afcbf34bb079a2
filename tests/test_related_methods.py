"""experiments/related_methods.py: the --dataset option and the --smoke runs (no files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from experiments import related_methods


def _tiny_folder(root: Path, classes=("a", "b"), per_class=(6, 2)) -> Path:
    """root/<split>/<class>/<i>.png, 8x8 RGB noise images, ``per_class`` = (train, test)."""
    rng = np.random.default_rng(0)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(root / split / c / f"{i}.png")
    return root


def test_default_is_digits_with_the_old_output_names():
    args = related_methods.parse([])
    assert args.dataset == "digits" and args.data_path is None
    assert args.train_subset is None and args.test_subset is None
    assert related_methods.output_stem(args) == "related_methods"
    args = related_methods.parse(["--dataset", "cifar10_jpeg", "--data-path", "x.tar.gz"])
    assert related_methods.output_stem(args) == "related_methods_cifar10_jpeg"


def test_absent_or_wrong_data_fails_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QAREG_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(SystemExit, match="needs --data-path"):
        related_methods.main(["--smoke", "--dataset", "cifar10_jpeg"])
    with pytest.raises(SystemExit, match="does not exist.*default --dataset digits needs no"):
        related_methods.main(
            ["--smoke", "--dataset", "cifar10_jpeg", "--data-path", str(tmp_path / "no.tar.gz")]
        )
    folder = _tiny_folder(tmp_path / "imgs")
    with pytest.raises(SystemExit, match="not the ten CIFAR-10 classes"):
        related_methods.main(["--smoke", "--dataset", "cifar10_jpeg", "--data-path", str(folder)])
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:  # argparse: digits takes no --data-path
        related_methods.parse(["--data-path", str(folder)])
    assert info.value.code == 2 and "--data-path" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        related_methods.parse(["--dataset", "folder", "--train-subset", "0"])
    assert info.value.code == 2 and "--train-subset" in capsys.readouterr().err


@pytest.mark.slow
def test_smoke_on_an_image_folder_subset(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QAREG_CACHE_DIR", str(tmp_path / "cache"))
    folder = _tiny_folder(tmp_path / "imgs")
    out = tmp_path / "out"
    result = related_methods.main(
        ["--smoke", "--dataset", "folder", "--data-path", str(folder)]
        + ["--train-subset", "10", "--test-subset", "3", "--out-dir", str(out)]
    )
    cfg = result["config"]
    assert cfg["dataset_name"] == "folder"
    assert "8x8x3, 10 train / 3 test (fixed random subset, seed 0)" in cfg["dataset"]
    assert "fc 2;" in cfg["model"] and "not tuned on this dataset" in cfg["tuning"]
    assert {r["method"] for r in result["gradient_l1"]} == {"none", "gradient_l1"}
    for row in result["range"]:
        assert set(row["cws"]) == set(row["dkm"]) == {"2", "4"}
        assert all(acc in (0, 1 / 3, 2 / 3, 1) for acc in row["cws"].values())
    assert {(r["method"], r["k"]) for r in result["dkm_vs_nearest"]} == {
        (m, k) for m in ("dkm", "nearest") for k in (2, 4)
    }
    printed = capsys.readouterr().out
    assert "# Related methods on folder (SmallCNN)" in printed
    assert f"Data: image folder {folder}, 8x8x3" in printed
    assert not out.exists()  # --smoke writes no files
