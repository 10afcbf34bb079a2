"""A pinned zero level (``QuantSpec.pin_zero``): exactly 0.0 from attach to export."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from qareg_jax import codebook as q
from qareg_jax import compress as c
from qareg_jax import quantizers
from qareg_jax.finetune import assignments_by_path
from qareg_jax.penalty import penalty
from qareg_jax.qat import ste
from qareg_jax.regularizers import names
from qareg_jax.snap import quantized_finetune, snap

FC, CONV = "params/fc/kernel", "params/conv/kernel"


def _params(seed: int = 0, shift: float = 0.02) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "conv": {"kernel": jnp.asarray(rng.normal(shift, 0.1, (3, 3, 2, 8)), jnp.float32)},
            "fc": {"kernel": jnp.asarray(rng.normal(shift, 0.1, (40, 12)), jnp.float32)},
        }
    }


def _data(seed: int = 1) -> tuple[jax.Array, jax.Array]:
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(32, 40)), jnp.float32), jnp.asarray(
        rng.normal(size=(32, 12)), jnp.float32
    )


def _loss(tp, lam_specs=None):
    x, y = _data()
    pred = x @ tp["model"]["params"]["fc"]["kernel"]
    conv = jnp.sum(tp["model"]["params"]["conv"]["kernel"] ** 2)
    task = jnp.mean((pred - y) ** 2) + 1e-2 * conv
    return task if lam_specs is None else task + 1e-2 * penalty(tp, lam_specs)


def _has_zero(levels) -> bool:
    """Every codebook (row) holds an exact 0.0."""
    return bool(np.all(np.any(np.asarray(levels) == 0.0, axis=-1)))


@pytest.mark.parametrize("group_size", [None, 2])
@pytest.mark.parametrize("regularizer", names())
def test_zero_level_at_attach_for_every_regularizer(regularizer, group_size):
    params = _params()
    specs = q.make_specs(params, k=4, regularizer=regularizer, pin_zero=True, group_size=group_size)
    tp, resolved = q.attach(params, specs)
    for path, spec in resolved.items():
        levels = np.asarray(q.levels(tp, spec, path))
        assert _has_zero(levels)
        assert np.all(np.diff(levels, axis=-1) >= 0)  # still sorted
        if spec.dynamic:  # stored as 0.0 in the tree itself
            assert _has_zero(tp["reps"][path])


@pytest.mark.parametrize("group_size", [None, 2])
@pytest.mark.parametrize("regularizer", ["nearest", "softmin", "wells", "product"])
def test_zero_survives_training_snapping_finetuning_and_export(regularizer, group_size, tmp_path):
    params = _params()
    specs = q.make_specs(params, k=4, regularizer=regularizer, pin_zero=True, group_size=group_size)
    tp, resolved = q.attach(params, specs)
    opt = optax.adamw(1e-2, weight_decay=1e-3)
    state = opt.init(tp)
    grad = jax.jit(jax.grad(lambda t: _loss(t, resolved)))
    for _ in range(30):
        updates, state = opt.update(grad(tp), state, tp)
        tp = optax.apply_updates(tp, updates)
    start = q.attach(params, specs)[0]["reps"]
    assert all(not np.array_equal(tp["reps"][p], start[p]) for p in specs)  # free levels trained
    assert all(_has_zero(tp["reps"][p]) for p in specs)

    snapped, _ = snap(tp, resolved)
    assert all(_has_zero(snapped["reps"][p]) for p in specs)
    tx = quantized_finetune(optax.adam(1e-2), resolved)
    fstate = tx.init(snapped)
    ft_grad = jax.jit(jax.grad(_loss))
    for _ in range(10):
        updates, fstate = tx.update(ft_grad(snapped), fstate, snapped)
        snapped = optax.apply_updates(snapped, updates)
    assignments = assignments_by_path(fstate)
    quant = {}
    for p in specs:
        levels = np.asarray(snapped["reps"][p])
        assert _has_zero(levels)
        w = np.asarray(q.named_leaves(snapped["model"])[p])
        zero_idx = np.argmin(np.abs(levels), axis=-1)
        a = np.asarray(assignments[p])
        on_zero = a == (zero_idx if zero_idx.ndim == 0 else q.take_levels(zero_idx[:, None], a * 0))
        assert np.all(w[on_zero] == 0.0) and on_zero.any()
        quant[p] = (levels, a)

    info = c.save(tmp_path / "pz.qareg", snapped["model"], quant)
    assert info.payload_bytes > 0
    loaded, lq = c.load(tmp_path / "pz.qareg")
    for p in specs:
        assert _has_zero(lq[p][0])
        chex.assert_trees_all_equal(
            np.asarray(q.named_leaves(loaded)[p]), np.asarray(q.named_leaves(snapped["model"])[p])
        )


class PinnedGradientTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_pinned_level_gets_no_gradient_the_others_do(self):
        c0 = jnp.asarray([-0.3, 0.0, 0.2, 0.5], jnp.float32)
        w = jnp.asarray([-0.25, 0.04, -0.03, 0.18, 0.6], jnp.float32)

        def loss(c):
            levels = q.pin_levels(c)
            return jnp.sum((w - levels[q.assign_levels(w, jax.lax.stop_gradient(levels))]) ** 2)

        g = self.variant(jax.grad(loss))(c0)
        assert g[1] == 0.0 and np.all(np.asarray(g)[[0, 2, 3]] != 0.0)
        chex.assert_tree_all_finite(g)

    @chex.variants(with_jit=True, without_jit=True)
    def test_ste_leaves_the_pinned_level_at_zero(self):
        params = _params(3)
        tp, specs = ste.init(params, q.make_specs(params, k=3, pin_zero=True))
        grads = self.variant(jax.grad(lambda t: _loss({"model": ste.quantize(t, specs)})))(tp)
        for p in specs:
            g = np.asarray(grads["reps"][p])
            assert g[np.argmin(np.abs(np.asarray(tp["reps"][p])))] == 0.0
            assert np.any(g != 0.0)


@pytest.mark.parametrize("group_size", [None, 2])
def test_ste_recluster_keeps_the_zero_level(group_size):
    params = _params(5)
    specs = q.make_specs(params, k=4, pin_zero=True, group_size=group_size)
    tp, specs = ste.init(params, specs)
    moved = {**tp, "model": jax.tree.map(lambda x: x * 1.5 + 0.01, tp["model"])}
    again = ste.recluster(moved, specs)
    for p in specs:
        assert _has_zero(again["reps"][p]) and not np.array_equal(again["reps"][p], tp["reps"][p])


def test_pin_levels_forces_a_drifted_zero_back():
    # A user transform that adds noise to every leaf cannot move the pinned level for
    # the penalty or for snapping: both read the levels through pin_levels.
    drifted = jnp.asarray([[-0.2, 1e-7, 0.3]], jnp.float32)
    np.testing.assert_array_equal(q.pin_levels(drifted), drifted.at[0, 1].set(0.0))


def test_static_interval_shift_is_below_half_a_spacing():
    for regularizer in ("sine", "cosine"):
        spec = q.QuantSpec(k=5, regularizer=regularizer, pin_zero=True)
        params = _params(4, shift=0.05)
        _, resolved = q.attach(params, {FC: spec})
        w = np.asarray(params["params"]["fc"]["kernel"])
        plain = q.attach(params, {FC: q.QuantSpec(k=5, regularizer=regularizer)})[1][FC]
        spacing = (w.max() - w.min()) / (4 if regularizer == "sine" else 5)
        assert abs(resolved[FC].lo - plain.lo) <= spacing / 2 + 1e-9
        assert resolved[FC].hi - resolved[FC].lo == pytest.approx(plain.hi - plain.lo)


def test_kmeans_rows_pin_zero_refits_the_free_levels():
    rng = np.random.default_rng(5)
    rows = rng.normal(0.4, 1.0, (6, 500))
    pinned = quantizers.kmeans_1d_rows(rows, 4, pin_zero=True)
    naive = q.with_zero(quantizers.kmeans_1d_rows(rows, 4))

    def sse(cb):
        d2 = (rows[:, :, None] - cb[:, None, :]) ** 2
        return float(d2.min(axis=2).sum())

    assert _has_zero(pinned) and np.all(np.diff(pinned, axis=1) > 0)
    assert sse(pinned) < sse(naive)  # Lloyd around the pinned level beats moving one to 0
    all_positive = quantizers.kmeans_1d_rows(np.abs(rows) + 1.0, 3, pin_zero=True)
    np.testing.assert_array_equal(all_positive[:, 0], 0.0)


@pytest.mark.parametrize("group_size", [None, 4])
def test_quantize_tree_pin_zero_keeps_pruned_weights_at_zero(group_size):
    params = _params(6)
    w = np.asarray(params["params"]["fc"]["kernel"])
    w = np.where(np.abs(w) > np.quantile(np.abs(w), 0.6), w, 0.0).astype(np.float32)
    qp, quant = quantizers.quantize_tree(
        {"fc": w}, ["fc"], 4, "kmeans", pin_zero=True, group_size=group_size
    )
    out = np.asarray(qp["fc"])
    assert np.all(out[w == 0.0] == 0.0) and _has_zero(quant["fc"][0])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(pin_zero=1), TypeError, "pin_zero must be True or False"),
        (dict(pin_zero=True, k=1), ValueError, "pin_zero=True needs k >= 2"),
    ],
)
def test_bad_pin_zero_refused(kwargs, error, match):
    with pytest.raises(error, match=match):
        q.QuantSpec(**kwargs)


def test_quantize_tree_pin_zero_refuses_other_methods():
    with pytest.raises(ValueError, match="pin_zero supports method 'kmeans' or 'cws' only"):
        quantizers.quantize_tree({"w": np.ones((4, 4), np.float32)}, ["w"], 2, "uq", pin_zero=True)


def test_default_is_unchanged_by_the_option():
    params = _params(7)
    tp, resolved = q.attach(params, q.make_specs(params, k=4))
    tp2, resolved2 = q.attach(params, q.make_specs(params, k=4, pin_zero=False))
    chex.assert_trees_all_equal(tp, tp2)
    assert resolved == resolved2 and not any(_has_zero(r) for r in tp["reps"].values())


# ---------------------------------------------------------------- the bitmap layout


def _pruned_quant(sparsity: float, group_size: int | None, seed: int = 8):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(96, 16)).astype(np.float32)
    w = np.where(np.abs(w) > np.quantile(np.abs(w), sparsity), w, 0.0).astype(np.float32)
    _, quant = quantizers.quantize_tree(
        {"fc": w}, ["fc"], 4, "kmeans", pin_zero=True, group_size=group_size
    )
    return {"fc": w, "bias": np.ones(16, np.float32)}, quant


def _version(path) -> int:
    return int.from_bytes(path.read_bytes()[8:12], "little")


@pytest.mark.parametrize("group_size", [None, 4])
@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
def test_bitmap_layout_when_smaller_round_trips_bit_exact(tmp_path, group_size, codebook_dtype):
    params, quant = _pruned_quant(0.75, group_size)
    file = tmp_path / "sparse.qareg"
    info = c.save(file, params, quant, codebook_dtype=codebook_dtype)
    rep = c.size_report(params, quant, codebook_dtype=codebook_dtype)
    (layer,) = [ly for ly in rep.layers if ly.path == "fc"]
    assert layer.layout == "bitmap" and "(bitmap)" in str(rep)
    assert info.payload_bytes * 8 == rep.packed_bits  # the report counts what the file holds
    assert _version(file) == 2
    loaded, lq = c.load(file)
    np.testing.assert_array_equal(lq["fc"][1], quant["fc"][1])
    stored = quant["fc"][0].astype(codebook_dtype)
    np.testing.assert_array_equal(loaded["fc"], q.take_levels(stored, quant["fc"][1]))
    # against the dense packing of the same indices (codebook without a 0.0 level)
    dense = {"fc": (np.where(quant["fc"][0] == 0.0, 1e-3, quant["fc"][0]), quant["fc"][1])}
    dense_info = c.save(tmp_path / "dense.qareg", params, dense, codebook_dtype=codebook_dtype)
    n, nnz = params["fc"].size, int(np.count_nonzero(loaded["fc"]))
    assert nnz <= n // 4 + 1  # the pruned quarter kept, the rest on 0.0
    bitmap_bytes = -(-n // 8) + -(-nnz * 2 // 8)
    assert dense_info.payload_bytes - info.payload_bytes == -(-n * 2 // 8) - bitmap_bytes
    assert _version(tmp_path / "dense.qareg") == 1


@pytest.mark.parametrize("group_size", [None, 4])
@pytest.mark.parametrize("sparsity", [0.75, 0.25])  # bitmap, dense
def test_device_assignments_write_the_same_file_as_host_ones(tmp_path, group_size, sparsity):
    # the layout count and the checks reduce device arrays where they are
    params, quant = _pruned_quant(sparsity, group_size)
    host = {p: (np.asarray(cb), np.asarray(a)) for p, (cb, a) in quant.items()}
    device = {p: (jnp.asarray(cb), jnp.asarray(a)) for p, (cb, a) in host.items()}
    c.save(tmp_path / "host.qareg", params, host)
    c.save(tmp_path / "device.qareg", params, device)
    assert (tmp_path / "host.qareg").read_bytes() == (tmp_path / "device.qareg").read_bytes()
    assert c.size_report(params, device).packed_bits == c.size_report(params, host).packed_bits
    bad = {"fc": (device["fc"][0], device["fc"][1].at[0, 0].set(7))}
    with pytest.raises(ValueError, match=r"assignments must lie in \[0, 4\)"):
        c.save(tmp_path / "bad.qareg", params, bad)


def test_dense_layout_kept_when_the_bitmap_is_not_smaller(tmp_path):
    # at K = 4 a bitmap pays above 50 % zeros; here a quarter of the weights are on 0.0
    a = np.random.default_rng(9).integers(0, 4, (96, 16)).astype(np.uint8)
    params = {"fc": np.zeros((96, 16), np.float32), "bias": np.ones(16, np.float32)}
    quant = {"fc": (np.asarray([-1.0, 0.0, 0.5, 1.0], np.float32), a)}
    info = c.save(tmp_path / "a.qareg", params, quant)
    rep = c.size_report(params, quant)
    assert all(ly.layout == "dense" for ly in rep.layers)
    assert (
        b'"layout"' not in (tmp_path / "a.qareg").read_bytes()
        and _version(tmp_path / "a.qareg") == 1
    )
    assert info.payload_bytes * 8 == rep.packed_bits
