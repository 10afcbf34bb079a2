"""Tests for qareg_jax.data: sources (tfds, image folders, digits), caching, batching."""

from __future__ import annotations

import io
import os
import pathlib
import shutil
import subprocess
import sys
import tarfile
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from experiments.configs import data_paths
from qareg_jax import data

# Where the configs find it: $QAREG_CIFAR10_JPEG, else beside the repository.
SHARED_TARBALL = pathlib.Path(data_paths.cifar10_jpeg().removeprefix("folder:"))


# ----------------------------------------------------------------------------- helpers


def _write_folder(root: pathlib.Path, counts: dict, size=(6, 5), mode="RGB", ext="png") -> dict:
    """Writes root/<split>/<class>/<i>.<ext>; each image is filled with its own value.

    counts: {split: {class: n}}. Returns {split: {class: sorted fill values}}.
    """
    fills: dict = {}
    value = 0
    for split, classes in counts.items():
        for cls, n in classes.items():
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                value += 5
                color = value if mode == "L" else (value, 255 - value, value // 2)
                Image.new(mode, size, color).save(root / split / cls / f"{i:03d}.{ext}")
                fills.setdefault(split, {}).setdefault(cls, []).append(value)
    return fills


def _tar_gz(src: pathlib.Path, dest: pathlib.Path, prefix: str = "") -> pathlib.Path:
    with tarfile.open(dest, "w:gz") as tar:
        for p in sorted(src.rglob("*")):
            tar.add(p, arcname=prefix + str(p.relative_to(src)), recursive=False)
    return dest


def _write_prepared_cifar10(data_dir: pathlib.Path, counts: dict) -> None:
    """A real (tiny) array_record `cifar10/3.0.2`, written without TensorFlow.

    Image i of a split is filled with the value i and labelled i % 10.
    """
    from array_record.python.array_record_module import ArrayRecordWriter
    from tensorflow_datasets.proto import tf_example_pb2

    builder = tfds.builder("cifar10", data_dir=os.fspath(data_dir), file_format="array_record")
    os.makedirs(builder.data_dir)
    split_infos = []
    for split, n in counts.items():
        writer = ArrayRecordWriter(
            f"{builder.data_dir}/cifar10-{split}.array_record-00000-of-00001", "group_size:1"
        )
        for i in range(n):
            png = io.BytesIO()
            Image.fromarray(np.full((32, 32, 3), i, np.uint8)).save(png, format="PNG")
            example = tf_example_pb2.Example()
            example.features.feature["image"].bytes_list.value.append(png.getvalue())
            example.features.feature["label"].int64_list.value.append(i % 10)
            example.features.feature["id"].bytes_list.value.append(f"{split}_{i}".encode())
            writer.write(example.SerializeToString())
        writer.close()
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_dir,
            template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name="cifar10",
            split=split,
            filetype_suffix="array_record",
        )
        split_infos.append(
            tfds.core.SplitInfo(
                name=split, shard_lengths=[n], num_bytes=0, filename_template=template
            )
        )
    builder.info.set_splits(tfds.core.SplitDict(split_infos))
    builder.info.write_to_directory(builder.data_dir)


def _tiny_dataset(n_train=10, n_test=7, shape=(32, 32, 3)) -> data.Dataset:
    """Image i is filled with value i (train) or 100 + i (test); label i % 3."""
    train = (
        np.ones((n_train, *shape), np.uint8)
        * np.arange(n_train, dtype=np.uint8)[:, None, None, None]
    )
    test = (
        np.ones((n_test, *shape), np.uint8)
        * (100 + np.arange(n_test, dtype=np.uint8))[:, None, None, None]
    )
    return data.Dataset(
        name="tiny",
        train_images=train,
        train_labels=np.arange(n_train, dtype=np.int32) % 3,
        test_images=test,
        test_labels=np.arange(n_test, dtype=np.int32) % 3,
        class_names=("a", "b", "c"),
        mean=np.zeros(shape[-1], np.float32),
        std=np.full(shape[-1], 1 / 255, np.float32),  # normalize() then returns raw values
    )


# ----------------------------------------------------------------------------- cifar10


def test_cifar10_mock_data_through_data_source(tmp_path):
    # mock_data fakes the records but not DatasetBuilder.is_prepared, which load_dataset
    # checks first to never trigger a download.
    with (
        tfds.testing.mock_data(num_examples=13),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
    ):
        ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_images.shape == (13, 32, 32, 3) and ds.train_images.dtype == np.uint8
    assert ds.test_images.shape == (13, 32, 32, 3)
    assert ds.train_labels.dtype == np.int32 and ds.train_labels.shape == (13,)
    assert ds.train_labels.min() >= 0 and ds.train_labels.max() < 10
    assert ds.num_classes == 10 and ds.image_shape == (32, 32, 3)
    assert ds.class_names[0] == "airplane" and ds.class_names[-1] == "truck"
    np.testing.assert_allclose(ds.mean, data.CIFAR10_MEAN)
    batch = next(data.train_batches(ds, 4, seed=0))
    assert batch["image"].shape == (4, 32, 32, 3) and batch["image"].dtype == np.float32


def test_cifar10_reads_a_real_array_record_directory(tmp_path):
    _write_prepared_cifar10(tmp_path, {"train": 12, "test": 5})
    ds = data.load_dataset("cifar10", data_dir=tmp_path)
    assert ds.train_images.shape == (12, 32, 32, 3) and ds.test_images.shape == (5, 32, 32, 3)
    # Records come back in order, pixels and labels intact.
    np.testing.assert_array_equal(ds.train_images[:, 0, 0, 0], np.arange(12))
    np.testing.assert_array_equal(ds.train_labels, np.arange(12) % 10)
    np.testing.assert_array_equal(ds.test_images[:, 5, 7, 2], np.arange(5))


def test_cifar10_missing_raises_without_downloading_and_explains(tmp_path):
    never = AssertionError("load_dataset must never download")
    with (
        mock.patch.object(tfds.core.DatasetBuilder, "download_and_prepare", side_effect=never),
        pytest.raises(data.DataNotFoundError) as info,
    ):
        data.load_dataset("cifar10", data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert "qareg prepare-data cifar10" in message
    assert "qareg_jax[prepare]" in message
    assert os.fspath(tmp_path / "cifar10" / "3.0.2") in message
    assert "--data-dir" in message


def test_prepare_cifar10_without_tensorflow_names_the_extra(tmp_path):
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("TensorFlow is installed; the error path cannot be exercised")
    with pytest.raises(ImportError, match=r"qareg_jax\[prepare\]"):
        data.prepare_cifar10(tmp_path)


# ------------------------------------------------------------------------ image folders


def test_image_folder_loads_labels_and_pixels(tmp_path):
    fills = _write_folder(
        tmp_path / "imgs",
        {"train": {"zebra": 3, "ant": 2}, "test": {"ant": 1, "zebra": 2}},
    )
    ds = data.load_dataset(f"folder:{tmp_path / 'imgs'}", cache_dir=tmp_path / "cache")
    assert ds.class_names == ("ant", "zebra")  # sorted, not the order written
    assert ds.image_shape == (5, 6, 3) and ds.train_images.dtype == np.uint8
    np.testing.assert_array_equal(ds.train_labels, [0, 0, 1, 1, 1])
    np.testing.assert_array_equal(ds.test_labels, [0, 1, 1])
    # Lossless PNG: red channel is the fill value; images sorted by class, then file.
    np.testing.assert_array_equal(
        ds.train_images[:, 2, 3, 0], fills["train"]["ant"] + fills["train"]["zebra"]
    )
    train = ds.train_images.reshape(-1, 3) / 255.0
    np.testing.assert_allclose(ds.mean, train.mean(0), atol=1e-6)
    np.testing.assert_allclose(ds.std, train.std(0), atol=1e-6)


def test_image_folder_cifar_class_names_use_cifar_order(tmp_path):
    # The standard CIFAR-10 label order happens to be alphabetical: sorting gives it.
    counts = {"train": {c: 1 for c in reversed(data.CIFAR10_CLASSES)}, "test": {"truck": 1}}
    _write_folder(tmp_path, counts)
    ds = data.load_dataset(f"folder:{tmp_path}", cache_dir=tmp_path / "cache")
    assert ds.class_names == data.CIFAR10_CLASSES
    np.testing.assert_array_equal(ds.test_labels, [9])


def test_image_folder_grayscale_gives_one_channel(tmp_path):
    _write_folder(tmp_path / "g", {"train": {"a": 2}, "test": {"a": 1}}, mode="L", ext="jpg")
    ds = data.load_dataset(f"folder:{tmp_path / 'g'}", cache_dir=tmp_path / "cache")
    assert ds.image_shape == (5, 6, 1) and ds.mean.shape == (1,)


def test_image_folder_tarball_matches_folder_and_caches(tmp_path, capsys):
    _write_folder(tmp_path / "imgs", {"train": {"x": 2, "y": 3}, "test": {"x": 1, "y": 1}})
    tarball = _tar_gz(tmp_path / "imgs", tmp_path / "imgs.tar.gz", prefix="wrapper/")
    cache = tmp_path / "cache"
    from_dir = data.read_image_folder(tmp_path / "imgs", cache_dir=cache)
    # Decoding says what and where it caches, once (a CIFAR archive: ~30 s, ~177 MB).
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("decoding 7 images in ")
    assert str(cache) in out[0] and "QAREG_CACHE_DIR" in out[0]
    from_tar = data.read_image_folder(tarball, cache_dir=cache)
    assert capsys.readouterr().out.startswith(f"decoding the archive {str(tarball)!r} once")
    assert from_tar.class_names == from_dir.class_names == ("x", "y")
    for split in ("train", "test"):
        for a, b in zip(from_tar.split(split), from_dir.split(split), strict=True):
            np.testing.assert_array_equal(a, b)
    assert len(list(cache.glob("*.npz"))) == 2

    # The second load reads the cache: decoding is never called.
    with mock.patch.object(data, "_decode_image", side_effect=AssertionError("decoded")):
        cached = data.read_image_folder(tarball, cache_dir=cache)
    assert capsys.readouterr().out == ""  # read from the cache: nothing to say
    np.testing.assert_array_equal(cached.split("train")[0], from_tar.split("train")[0])
    np.testing.assert_array_equal(cached.stats["train"][1], from_tar.stats["train"][1])

    # An archive is keyed by its bytes: the same archive elsewhere, with another mtime
    # (a fresh checkout of a shared data folder), reads the same cache.
    moved = tmp_path / "moved" / tarball.name
    moved.parent.mkdir()
    shutil.copyfile(tarball, moved)
    os.utime(moved, ns=(1, 1))
    with mock.patch.object(data, "_decode_image", side_effect=AssertionError("decoded")):
        data.read_image_folder(moved, cache_dir=cache)
    assert capsys.readouterr().out == ""

    # Changing the folder changes the key: the new image is seen.
    _write_folder(tmp_path / "imgs", {"test": {"z": 1}})
    assert data.read_image_folder(tmp_path / "imgs", cache_dir=cache).class_names[-1] == "z"
    # ... and so does changing an archive's bytes.
    capsys.readouterr()
    _tar_gz(tmp_path / "imgs", tarball, prefix="wrapper/")
    assert data.read_image_folder(tarball, cache_dir=cache).class_names[-1] == "z"
    assert capsys.readouterr().out.startswith("decoding the archive")


def test_image_folder_errors(tmp_path):
    cache = tmp_path / "cache"
    (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
    (tmp_path / "empty" / "train" / "a" / "notes.txt").write_text("not an image")
    with pytest.raises(ValueError, match="no images"):
        data.read_image_folder(tmp_path / "empty", cache_dir=cache)

    _write_folder(tmp_path / "mixed", {"train": {"a": 2}})
    Image.new("RGB", (9, 9)).save(tmp_path / "mixed" / "train" / "a" / "odd.png")
    with pytest.raises(ValueError, match=r"odd\.png.*same size"):
        data.read_image_folder(tmp_path / "mixed", cache_dir=cache)

    (tmp_path / "bad" / "train" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(ValueError, match=r"broken\.jpg"):
        data.read_image_folder(tmp_path / "bad", cache_dir=cache)

    _write_folder(tmp_path / "notest", {"train": {"a": 1}, "val": {"a": 1}})
    with pytest.raises(ValueError, match=r"unknown split 'test'.*\['train', 'val'\]"):
        data.load_dataset(f"folder:{tmp_path / 'notest'}", cache_dir=cache)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        data.read_image_folder(tmp_path / "nowhere", cache_dir=cache)
    # Only the decodable folder was cached; failed decodes leave nothing behind.
    assert [p.name.split("-")[0] for p in cache.iterdir()] == ["notest"]


def test_default_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("QAREG_CACHE_DIR", os.fspath(tmp_path))
    assert data.default_cache_dir() == tmp_path
    monkeypatch.delenv("QAREG_CACHE_DIR")
    assert data.default_cache_dir() == pathlib.Path.home() / ".cache" / "qareg_jax"


@pytest.mark.skipif(not SHARED_TARBALL.exists(), reason="shared CIFAR-10 JPEG copy absent")
def test_shared_cifar_tarball_members_decode(tmp_path):
    # Repacks the first images only: decoding all 60k (~8 s) is left to the experiments.
    subset = tmp_path / "subset.tar.gz"
    with tarfile.open(SHARED_TARBALL) as src, tarfile.open(subset, "w:gz") as dst:
        for _, member in zip(range(60), src, strict=False):
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
    folder = data.read_image_folder(subset, cache_dir=tmp_path / "cache")
    images, labels = folder.split(next(iter(folder.splits)))
    assert images.shape[1:] == (32, 32, 3) and images.dtype == np.uint8
    assert len(images) == len(labels) > 10
    assert set(folder.class_names) <= set(data.CIFAR10_CLASSES)


# ----------------------------------------------------------------------------- digits


def test_digits_shapes_and_deterministic_split(digits_dataset):
    a, b = digits_dataset, data.load_dataset("digits")  # the shared copy and a fresh one
    assert a.train_images.shape == (1437, 8, 8, 1) and a.test_images.shape == (360, 8, 8, 1)
    assert a.train_images.dtype == np.float32 and a.train_labels.dtype == np.int32
    assert 0.0 <= a.train_images.min() and a.train_images.max() <= 1.0
    assert a.num_classes == 10 and a.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(a.train_labels, b.train_labels)
    np.testing.assert_array_equal(a.test_images, b.test_images)
    assert set(np.unique(a.test_labels)) == set(range(10))  # stratified
    # Standardized with train statistics.
    x = a.normalize(a.train_images)
    assert abs(float(x.mean())) < 1e-4 and abs(float(x.std()) - 1.0) < 1e-4


def test_unknown_dataset_name_lists_allowed():
    for bad in ("mnist", "folder:", None):
        with pytest.raises(ValueError, match=r"allowed: cifar10, digits, folder:PATH"):
            data.load_dataset(bad)


# ---------------------------------------------------------------------------- batching


def _ids(batch: dict) -> np.ndarray:
    """The fill value of each image in a batch from _tiny_dataset (normalize is identity)."""
    _, h, w, _ = batch["image"].shape
    return batch["image"][:, h // 2, w // 2, 0].round().astype(int)  # centre survives a crop


def test_train_batches_deterministic_given_seed_and_epoch():
    ds = _tiny_dataset(n_train=50, shape=(32, 32, 3))

    def epoch(seed, ep, threads=2):
        return list(data.train_batches(ds, 8, seed=seed, epoch=ep, num_threads=threads))

    first, again, single = epoch(0, 0), epoch(0, 0), epoch(0, 0, threads=0)
    assert len(first) == data.steps_per_epoch(ds, 8) == 6
    for a, b, c in zip(first, again, single, strict=True):
        np.testing.assert_array_equal(a["image"], b["image"])
        np.testing.assert_array_equal(a["image"], c["image"])
    order = np.concatenate([_ids(b) for b in first])
    assert len(set(order)) == 48  # a permutation, last 2 examples dropped
    assert not np.array_equal(order, np.concatenate([_ids(b) for b in epoch(0, 1)]))
    assert not np.array_equal(order, np.concatenate([_ids(b) for b in epoch(1, 0)]))
    for b in first:  # labels stay attached to their images
        np.testing.assert_array_equal(b["label"], _ids(b) % 3)


def test_augmentation_preserves_shape_dtype_and_content():
    rng = np.random.default_rng(0)
    images = rng.integers(1, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    out = data.augment_batch(images, np.random.default_rng(1))
    assert out.shape == images.shape and out.dtype == images.dtype
    again = data.augment_batch(images, np.random.default_rng(1))
    np.testing.assert_array_equal(out, again)
    assert not np.array_equal(out, images)
    # Every output is a crop of its zero-padded input, mirrored or not (pixels are >= 1, so
    # the zero border pins the offset down); offsets and flips vary over the batch.
    found = []
    for x, y in zip(images, out, strict=True):
        padded = np.pad(x, ((4, 4), (4, 4), (0, 0)))
        matches = [
            (t, s, flip)
            for t in range(9)
            for s in range(9)
            for flip in (False, True)
            if np.array_equal(
                y,
                padded[t : t + 32, s : s + 32][:, ::-1] if flip else padded[t : t + 32, s : s + 32],
            )
        ]
        assert len(matches) == 1
        found += matches
    tops, lefts, flips = zip(*found, strict=True)
    assert len(set(tops)) > 3 and len(set(lefts)) > 3 and 0 < sum(flips) < len(flips)


def test_augment_default_on_for_cifar_shape_only():
    rgb = _tiny_dataset(n_train=16, shape=(32, 32, 3))
    gray = _tiny_dataset(n_train=16, shape=(8, 8, 1))
    rgb.train_images[:] = np.random.default_rng(0).integers(0, 256, rgb.train_images.shape)
    gray.train_images[:] = np.random.default_rng(0).integers(0, 256, gray.train_images.shape)

    def changed(ds, augment):
        """Whether some batch image is not one of the (normalized) stored images."""
        (batch,) = data.train_batches(ds, 16, seed=0, augment=augment)
        stored = ds.normalize(ds.train_images)
        return not all(any(np.array_equal(y, x) for x in stored) for y in batch["image"])

    assert changed(rgb, None) and changed(gray, True)
    assert not changed(rgb, False) and not changed(gray, None)


def test_eval_batches_cover_test_split_once_in_order():
    ds = _tiny_dataset(n_test=23)
    batches = list(data.eval_batches(ds, 5))
    assert [len(b["label"]) for b in batches] == [5, 5, 5, 5, 3]  # last partial batch kept
    ids = np.concatenate([_ids(b) for b in batches])
    np.testing.assert_array_equal(ids, 100 + np.arange(23))
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), ds.test_labels)
    assert all(b["image"].dtype == np.float32 and b["label"].dtype == np.int32 for b in batches)


def test_batch_size_errors_raise_before_work():
    ds = _tiny_dataset(n_train=10)
    for bad in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match=r"batch_size must be an int in \[1, 10\]"):
            data.train_batches(ds, bad)
    with pytest.raises(ValueError, match="batch_size"):
        data.steps_per_epoch(ds, 0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        data.eval_batches(ds, 0)
    with pytest.raises(ValueError, match="num_threads"):
        data.eval_batches(ds, 2, num_threads=-1)


def test_everything_but_cifar10_works_without_tensorflow_datasets():
    # An accelerator host may lack tfds: the package, the pipeline, the CLI, the digits and
    # image folders must not need it; "cifar10" says what to install or use instead.
    code = (
        "import sys; sys.modules['tensorflow_datasets'] = None\n"
        "import qareg_jax, qareg_jax.pipeline, qareg_jax.cli\n"
        "from qareg_jax import data\n"
        "assert len(data.load_dataset('digits').train_labels) > 0\n"
        "try:\n"
        "    data.load_dataset('cifar10')\n"
        "except ImportError as e:\n"
        "    assert 'folder:PATH' in str(e), e\n"
        "else:\n"
        "    raise AssertionError('cifar10 loaded without tfds')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
