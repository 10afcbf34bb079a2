"""Bit packing, Huffman sizes, size accounting and the save/load file format."""

from __future__ import annotations

import json
import os
import pickle
import stat
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qareg_jax import compress as c
from qareg_jax import quantizers as q

# --------------------------------------------------------------------------- packing


@settings(max_examples=150, deadline=None)
@given(k=st.integers(2, 70000), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(k, n, seed):
    a = np.random.default_rng(seed).integers(0, k, n).astype(q.index_dtype(k))
    packed = c.pack_indices(a, k)
    b = c.bits_per_index(k)
    assert b == int(np.ceil(np.log2(k)))
    assert packed.dtype == np.uint8 and packed.size == -(-n * b // 8)
    out = c.unpack_indices(packed.tobytes(), k, n)
    assert out.dtype == q.index_dtype(k)
    np.testing.assert_array_equal(out, a)


def test_pack_bit_order_is_little_endian():
    # 2 bits each: 1, 2, 3, 0 -> 0b00_11_10_01 = 57; then 1 -> 0b01, zero padded.
    np.testing.assert_array_equal(c.pack_indices(np.array([1, 2, 3, 0, 1]), 4), [57, 1])
    # 3 bits each (k=5): 4, 1, 3 -> bits 100 | 001 | 011 (LSB first) = 0b0_011_001_100 = 204, 0
    np.testing.assert_array_equal(c.pack_indices(np.array([4, 1, 3]), 5), [0b11001100, 0])
    # 9 bits (k=512): 257 = 0x101 -> bytes 0x01, 0x01 (bit 8 in the 2nd byte)
    np.testing.assert_array_equal(c.pack_indices(np.array([257]), 512), [1, 1])
    np.testing.assert_array_equal(c.pack_indices(np.array([258]), 65536), [2, 1])


@pytest.mark.parametrize("k", [2, 3, 16, 200, 4097, 2**17])
def test_pack_large_arrays_chunked(k):
    a = np.random.default_rng(k).integers(0, k, 3 * (1 << 21) + 5)  # several chunks + tail
    packed = c.pack_indices(a, k)
    np.testing.assert_array_equal(c.unpack_indices(packed, k, a.size), a)


def test_pack_errors():
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        c.pack_indices(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        c.pack_indices(np.array([-1, 0]), 4)
    with pytest.raises(TypeError, match="integers"):
        c.pack_indices(np.array([0.0, 1.0]), 4)
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        c.pack_indices(np.array([0]), 1)
    with pytest.raises(ValueError, match="cannot hold exactly"):
        c.unpack_indices(b"\x00\x00", 4, 9)
    with pytest.raises(ValueError, match="index >= k"):
        c.unpack_indices(b"\x03", 3, 1)  # 2 bits hold 3, but k=3 allows 0..2
    with pytest.raises(ValueError, match="index >= k"):
        c.unpack_indices(b"\xff", 200, 1)


# --------------------------------------------------------------------------- Huffman


@settings(max_examples=150, deadline=None)
@given(counts=st.lists(st.integers(0, 10_000), min_size=1, max_size=300))
def test_huffman_kraft_equality_and_beats_fixed_length(counts):
    counts = np.asarray(counts, np.int64)
    lengths = c.huffman_code_lengths(counts)
    used = counts > 0
    assert np.all(lengths[~used] == 0)
    if used.sum() >= 2:
        assert np.all(lengths[used] >= 1)
        assert sum(2.0 ** -int(x) for x in lengths[used]) == 1.0  # Kraft, with equality
        fixed = int(np.ceil(np.log2(used.sum())))
        assert int(counts @ lengths) <= fixed * counts.sum()
    elif used.sum() == 1:
        assert lengths[used][0] == 1


def test_huffman_known_example_and_errors():
    lengths = c.huffman_code_lengths(np.array([45, 13, 12, 16, 9, 5]))  # CLRS 16.3
    assert int(np.array([45, 13, 12, 16, 9, 5]) @ lengths) == 224
    assert lengths[0] == 1
    np.testing.assert_array_equal(c.huffman_code_lengths(np.array([0, 0])), [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        c.huffman_code_lengths(np.array([1, -1]))
    with pytest.raises(ValueError, match="1-D integer"):
        c.huffman_code_lengths(np.array([1.5, 2.0]))


# --------------------------------------------------------------------------- sizes


def _params():
    rng = np.random.default_rng(0)
    return {
        "params": {
            "Conv_0": {
                "kernel": jnp.asarray(rng.normal(size=(3, 3, 1, 8)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=8), jnp.float32),
            },
            "Dense_0": {
                "kernel": jnp.asarray(rng.normal(size=(8 * 6 * 6, 5)), jnp.float32),
                "bias": jnp.asarray(rng.normal(size=5), jnp.float32),
            },
        },
        "batch_stats": {"count": jnp.asarray([3, 1], jnp.int32)},
        "ema": {"scale": jnp.asarray(rng.normal(size=4), jnp.bfloat16)},
    }


PATHS = ["params/Conv_0/kernel", "params/Dense_0/kernel"]


def test_size_report_by_hand():
    w = np.linspace(-1, 1, 100, dtype=np.float32)
    params = {"w": w, "b": np.zeros(3, np.float16)}
    codebook = np.array([-1.0, 0.0, 0.5, 1.0], np.float32)
    assignments = np.repeat(np.array([0, 1, 1, 2], np.uint8), 25)  # counts 25, 50, 25, 0
    rep = c.size_report(params, {"w": (codebook, assignments)})
    layer = {ly.path: ly for ly in rep.layers}
    assert layer["w"].original_bits == 3200
    assert layer["w"].packed_bits == 2 * 100 + 4 * 32
    assert layer["w"].huffman_bits == 25 * 2 + 50 * 1 + 25 * 2 + 4 * 32
    assert layer["b"].original_bits == layer["b"].packed_bits == layer["b"].huffman_bits == 48
    assert rep.original_bits == 3248 and rep.packed_bits == 328 + 48
    assert rep.psi_packed == pytest.approx(376 / 3248)
    d = rep.to_dict()
    assert d["inv_psi_huffman"] == pytest.approx(3248 / (278 + 48))
    json.dumps(d)
    table = str(rep)
    assert table.startswith("| leaf |") and "**total**" in table and "| w | 100 | 4 |" in table
    half = c.size_report(params, {"w": (codebook, assignments)}, codebook_dtype="float16")
    assert {ly.path: ly for ly in half.layers}["w"].packed_bits == 200 + 4 * 16


# --------------------------------------------------------------------------- save / load


def _quantized(params, k=(4, 3)):
    ks = dict(zip(PATHS, k, strict=True))
    return q.quantize_tree(params, PATHS, ks, "kmeans")


@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
def test_save_load_bit_exact(tmp_path, codebook_dtype):
    params = _params()
    snapped, quant = _quantized(params)
    path = tmp_path / "model.qz"
    info = c.save(path, params, quant, codebook_dtype=codebook_dtype)
    loaded, lq = c.load(path)

    assert jax.tree_util.tree_structure(loaded) == jax.tree_util.tree_structure(
        jax.tree.map(np.asarray, snapped)
    )
    for p in PATHS:
        codebook, assignments = quant[p]
        stored = codebook.astype(codebook_dtype).astype(np.float32)
        np.testing.assert_array_equal(lq[p][0], stored)
        np.testing.assert_array_equal(lq[p][1], assignments)
        leaf = loaded["params"][p.split("/")[1]]["kernel"]
        assert leaf.dtype == np.float32
        np.testing.assert_array_equal(leaf.view(np.uint32), stored[assignments].view(np.uint32))
    if codebook_dtype == "float32":  # bit-exact equal to the snapped params
        for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(snapped), strict=True):
            assert a.dtype == b.dtype
            np.testing.assert_array_equal(a.view(np.uint8), np.asarray(b).view(np.uint8))
    for raw in ("bias",):
        np.testing.assert_array_equal(
            loaded["params"]["Conv_0"][raw], params["params"]["Conv_0"][raw]
        )
    assert loaded["ema"]["scale"].dtype == jnp.bfloat16
    assert loaded["batch_stats"]["count"].dtype == np.int32

    # File size = accounted packed size (rounded up to bytes per section) + bounded overhead.
    rep = c.size_report(params, quant, codebook_dtype=codebook_dtype)
    size = os.path.getsize(path)
    assert size == info.file_bytes == info.payload_bytes + info.overhead_bytes
    assert 0 <= info.payload_bytes * 8 - rep.packed_bits < 8 * len(PATHS)
    n_leaves = len(jax.tree.leaves(params))
    assert info.overhead_bytes <= 64 + 128 * n_leaves + sum(len(p) for p in PATHS) * 2


def test_inference_from_loaded_params(tmp_path):
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(8, (3, 3), padding="VALID")(x))
            return nn.Dense(5)(x.reshape(x.shape[0], -1))

    net = Net()
    x = jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    variables = net.init(jax.random.PRNGKey(0), x)
    snapped, quant = _quantized(variables, k=(4, 16))
    c.save(tmp_path / "net.qz", variables, jax.tree.map(jnp.asarray, quant))  # device arrays
    loaded, _ = c.load(tmp_path / "net.qz")
    apply = jax.jit(net.apply)
    np.testing.assert_array_equal(apply(loaded, x), apply(snapped, x))
    assert not np.array_equal(apply(loaded, x), apply(variables, x))  # it was quantized


def test_save_overwrite_protection_and_no_temp_files(tmp_path):
    params = _params()
    _, quant = _quantized(params)
    path = tmp_path / "m.qz"
    c.save(path, params, quant)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        c.save(path, params, quant, codebook_dtype="float16")
    assert path.read_bytes() == before
    c.save(path, params, quant, codebook_dtype="float16", overwrite=True)
    assert path.read_bytes() != before
    assert os.listdir(tmp_path) == ["m.qz"]


def test_load_rejects_truncated_and_corrupted_files(tmp_path):
    params = _params()
    _, quant = _quantized(params)
    path = tmp_path / "m.qz"
    c.save(path, params, quant)
    data = path.read_bytes()
    bad = tmp_path / "bad.qz"
    for cut in (0, 5, 19, 30, len(data) // 2, len(data) - 32, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="truncated|not a qareg_jax"):
            c.load(bad)
    for pos in (0, 9, 25, 60, len(data) // 2, len(data) - 40, len(data) - 1):
        flipped = bytearray(data)
        flipped[pos] ^= 0x10
        bad.write_bytes(bytes(flipped))
        # Whichever check sees the flip first, the message says the file is damaged.
        with pytest.raises(
            ValueError, match="corrupted|truncated|not a qareg_jax|unsupported|bad "
        ):
            c.load(bad)
    bad.write_bytes(data + b"\x00")
    with pytest.raises(ValueError, match="padded"):
        c.load(bad)


def test_save_errors(tmp_path):
    params = _params()
    _, quant = _quantized(params)
    path = tmp_path / "m.qz"
    with pytest.raises(ValueError, match="not in params"):
        c.save(path, params, {"params/Nope/kernel": quant[PATHS[0]]})
    with pytest.raises(ValueError, match="assignments shape"):
        c.save(path, params, {PATHS[0]: quant[PATHS[1]]})
    with pytest.raises(ValueError, match="codebook_dtype"):
        c.save(path, params, quant, codebook_dtype="int8")
    cb, a = quant[PATHS[0]]
    with pytest.raises(ValueError, match="not finite in float16"):
        c.save(path, params, {PATHS[0]: (cb * 1e6, a)}, codebook_dtype="float16")
    with pytest.raises(ValueError, match="only float leaves"):
        c.save(path, params, {"batch_stats/count": (cb, np.zeros(2, np.uint8))})
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        c.save(path, params, {PATHS[0]: (cb[:2], a)})
    with pytest.raises(ValueError, match="runs through|prefix"):
        c.save(path, {"a": np.ones(2), "a/b": np.ones(2)}, {})
    assert not path.exists() and os.listdir(tmp_path) == []


# ----------------------------------------------------- killed saves, modes, errors, NaN


def test_a_killed_save_leaves_a_temp_named_after_its_target_removed_next_time(tmp_path):
    params = _params()
    _, quant = _quantized(params)
    target = tmp_path / "model.qareg"
    # A save killed half-way (os._exit while packing: no cleanup can run).
    code = (
        "import os, sys, pickle\n"
        "from qareg_jax import compress as c\n"
        "params, quant, target = pickle.load(sys.stdin.buffer)\n"
        "c.pack_indices = lambda *a: os._exit(9)\n"
        "c.save(target, params, quant)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(c.__file__)))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    payload = pickle.dumps((jax.device_get(params), quant, str(target)))
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env)
    proc.communicate(payload, timeout=300)
    assert proc.returncode == 9
    leftover = os.listdir(tmp_path)
    assert leftover == [f".model.qareg.tmp-{proc.pid}"], leftover
    assert not target.exists()
    other = tmp_path / ".other.qareg.tmp-1"  # another target's temp file is left alone
    other.write_bytes(b"")
    c.save(target, params, quant)
    assert sorted(os.listdir(tmp_path)) == sorted(["model.qareg", other.name])


def test_saved_file_mode_follows_the_umask(tmp_path):
    params = _params()
    _, quant = _quantized(params)
    for umask, mode in ((0o022, 0o644), (0o077, 0o600), (0o002, 0o664)):
        old = os.umask(umask)
        try:
            path = tmp_path / f"m{umask:o}.qareg"
            c.save(path, params, quant)
        finally:
            os.umask(old)
        assert stat.S_IMODE(path.stat().st_mode) == mode


def test_save_errors_name_the_target_not_the_temp_file(tmp_path):
    params = _params()
    _, quant = _quantized(params)
    target = tmp_path / "missing_dir" / "model.qareg"
    with pytest.raises(FileNotFoundError, match=f"cannot save {target}") as err:
        c.save(target, params, quant)
    assert ".tmp" not in str(err.value) and err.value.filename == str(target)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_save_refuses_non_finite_raw_leaves_naming_them(tmp_path, bad):
    params = _params()
    _, quant = _quantized(params)
    params["params"]["Dense_0"]["bias"] = params["params"]["Dense_0"]["bias"].at[2].set(bad)
    with pytest.raises(ValueError, match=r"leaf 'params/Dense_0/bias' holds NaN or inf"):
        c.save(tmp_path / "m.qareg", params, quant)
    assert os.listdir(tmp_path) == []
    c.save(tmp_path / "m.qareg", params, quant, check_finite=False)  # opted out
    cb, a = quant[PATHS[0]]
    cb = np.array(cb)
    cb[0] = bad
    with pytest.raises(ValueError, match=f"{PATHS[0]}: codebook is not finite"):
        c.save(tmp_path / "n.qareg", params, {PATHS[0]: (cb, a)})
