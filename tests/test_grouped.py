"""Grouped codebooks (``QuantSpec.group_size``): one codebook per group of output channels."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized
from helpers import bits
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from qareg_jax import codebook as q
from qareg_jax import compress as c
from qareg_jax import quantizers
from qareg_jax.finetune import assignments_by_path, regularize_then_finetune
from qareg_jax.penalty import elementwise, penalty, penalty_stats, reduced
from qareg_jax.qat import ste
from qareg_jax.regularizers import grouped_nearest_total, nearest_total
from qareg_jax.sharding import Layout
from qareg_jax.snap import quantized_finetune, snap

PATH = "params/fc/kernel"
CONV = "params/conv/kernel"
REGULARIZERS = [
    ("nearest", "max"),
    ("softmin", "max"),
    ("product", "max"),
    ("wells", "max"),
    ("wells", "mean"),
    ("sine", "max"),
    ("cosine", "max"),
]
# The raw penalty scale (mean over the leaf, weight units), as tests/test_sharding.py RAW:
# the tests that compare grouped against per-tensor (or jit against no jit) hold float32
# cancellation noise to an absolute tolerance set at this scale. The unit scale (sum over
# the leaf, / a norm ~ spacing^2) multiplies it by ~N / norm (~1e4 on the conv kernel: the
# nearest reps gradients at the k-means start, ~0 in exact arithmetic, read 1e-4).
RAW = dict(reduction="mean", normalize=None)


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "conv": {"kernel": jnp.asarray(rng.normal(0, 0.1, (3, 3, 2, 8)), jnp.float32)},
            "fc": {
                "kernel": jnp.asarray(rng.normal(0, 0.1, (40, 12)), jnp.float32),
                "bias": jnp.zeros(12, jnp.float32),
            },
        }
    }


def _slice(w: jax.Array, g: int, size: int) -> jax.Array:
    return w[..., g * size : (g + 1) * size]


def _sse(w, codebook) -> float:
    """k-means cost of ``w`` with ``codebook`` (nearest level), float64."""
    w = np.asarray(w, np.float64).ravel()
    return float(np.sum(np.min((w[:, None] - np.asarray(codebook, np.float64)) ** 2, axis=1)))


def _per_tensor_spec(spec: q.QuantSpec, g: int) -> q.QuantSpec:
    """The per-tensor spec of group g of a resolved grouped spec."""
    return dataclasses.replace(spec, group_size=None, lo=spec.lo[g], hi=spec.hi[g])


# ------------------------------------------------------------------ codebook


def test_attach_shapes_and_per_group_init():
    params = _params()
    tp, specs = q.attach(params, q.make_specs(params, k=3, group_size=2, init="quantile"))
    assert tp["reps"][PATH].shape == (6, 3) and tp["reps"][CONV].shape == (4, 3)
    w = np.asarray(params["params"]["fc"]["kernel"], np.float64)
    for g in range(6):
        want = np.quantile(_slice(w, g, 2).ravel(), (np.arange(3) + 0.5) / 3)
        np.testing.assert_allclose(np.asarray(tp["reps"][PATH][g]), want, rtol=1e-6)
        assert specs[PATH].lo[g] == pytest.approx(_slice(w, g, 2).min())
    assert isinstance(specs[PATH].tau, float) and isinstance(specs[PATH].sigma, float)
    q.check_tree(tp, specs)


def test_kmeans_init_matches_kmeans_1d_per_group():
    params = _params()
    tp, _ = q.attach(params, q.make_specs(params, include=["fc/kernel"], k=3, group_size=4))
    w = np.asarray(params["params"]["fc"]["kernel"])
    for g in range(3):
        ref = np.sort(quantizers.kmeans_1d(_slice(w, g, 4), 3).codebook)
        got = np.asarray(tp["reps"][PATH][g])
        wg = _slice(w, g, 4)
        assert _sse(wg, got) <= _sse(wg, ref) * 1.02  # Lloyd from 2 starts vs best of 4


def test_static_levels_per_group():
    params = _params()
    tp, specs = q.attach(
        params, q.make_specs(params, include=["fc/kernel"], k=4, group_size=3, regularizer="sine")
    )
    lv = np.asarray(q.levels(tp, specs[PATH], PATH))
    assert lv.shape == (4, 4)
    w = np.asarray(params["params"]["fc"]["kernel"])
    for g in range(4):
        np.testing.assert_allclose(lv[g, [0, -1]], [_slice(w, g, 3).min(), _slice(w, g, 3).max()])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(group_size=5), ValueError, r"group_size=5 must divide the 12 output channels"),
        (dict(group_size=0), ValueError, r"group_size must be None or an int >= 1"),
        (dict(group_size=-2), ValueError, r"group_size must be None or an int >= 1"),
        (dict(group_size=1.0), TypeError, r"group_size must be None or an int >= 1"),
        (dict(group_size=True), TypeError, r"group_size must be None or an int >= 1"),
        (dict(group_size="channel"), TypeError, r"group_size must be None or an int >= 1"),
        (dict(group_size=1, k=41), ValueError, r"each of its 12 groups .* has only 40 weights"),
        (dict(lo=(0.0, 1.0), hi=(1.0, 2.0)), ValueError, r"per-group sequences need group_size"),
        (dict(group_size=6, lo=(0.0, 1.0), hi=(1.0, 0.5)), ValueError, r"group 1 has lo=1.0"),
        (dict(group_size=6, lo=(0.0,), hi=(1.0, 2.0)), ValueError, r"equal-length"),
    ],
)
def test_bad_inputs_refused(kwargs, error, match):
    params = _params()
    with pytest.raises(error, match=match):
        q.make_specs(params, include=["fc/kernel"], **{"k": 4, **kwargs})


def test_bad_trees_and_levels_refused():
    params = _params()
    tp, specs = q.attach(params, q.make_specs(params, include=["fc/kernel"], k=3, group_size=4))
    with pytest.raises(ValueError, match=r"expected \(3, 3\)"):
        q.check_tree({**tp, "reps": {PATH: tp["reps"][PATH][:2]}}, specs)
    bad = {PATH: dataclasses.replace(specs[PATH], group_size=5)}
    with pytest.raises(ValueError, match="must divide the 12 output channels"):
        penalty(tp, bad)
    with pytest.raises(ValueError, match="group_size=5 must divide"):
        quantizers.quantize_tree(params, [PATH], 4, group_size=5)
    with pytest.raises(ValueError, match="supports method 'kmeans' or 'cws' only"):
        quantizers.quantize_tree(params, [PATH], 4, "uq", group_size=4)
    with pytest.raises(ValueError, match=r"levels must have shape \(K,\), or \(G, K\)"):
        ste.quantize_leaf(params["params"]["fc"]["kernel"], jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match=r"\(G, k\) with G dividing"):
        c.size_report(params, {PATH: (np.zeros((5, 3), np.float32), np.zeros((40, 12), np.uint8))})


def test_constant_group_refused_naming_it():
    params = _params()
    w = params["params"]["fc"]["kernel"].at[:, 4:6].set(0.5)
    params["params"]["fc"]["kernel"] = w
    with pytest.raises(ValueError, match=r"group 2 of leaf 'params/fc/kernel' is empty"):
        q.attach(params, q.make_specs(params, include=["fc/kernel"], k=2, group_size=2))


# ------------------------------------------------------------------ penalty


@pytest.mark.parametrize(("regularizer", "mode"), REGULARIZERS)
def test_one_group_equals_per_tensor(regularizer, mode):
    params = _params()
    kw = dict(include=["fc/kernel", "conv/kernel"], k=3, regularizer=regularizer, wells_mode=mode)
    tp, specs = q.attach(params, q.make_specs(params, **kw, **RAW))
    grouped = {
        p: dataclasses.replace(s, group_size=12 if p == PATH else 8) for p, s in specs.items()
    }
    grouped = {
        p: dataclasses.replace(s, lo=(s.lo,), hi=(s.hi,)) if not s.dynamic else s
        for p, s in grouped.items()
    }
    tp1 = {**tp, "reps": {p: r[None] for p, r in tp["reps"].items()}}
    want = jax.value_and_grad(penalty)(tp, specs)
    got = jax.value_and_grad(penalty)(tp1, grouped)
    got = (got[0], {**got[1], "reps": {p: r[0] for p, r in got[1]["reps"].items()}})
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-7)
    chex.assert_trees_all_close(penalty_stats(tp1, grouped), penalty_stats(tp, specs), rtol=1e-5)


@pytest.mark.parametrize(("regularizer", "mode"), REGULARIZERS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_grouped_penalty_equals_loop_over_slices(regularizer, mode, reduction):
    params = _params(1)
    # Grid starts: reps off the k-means fixed point, where their gradients cancel to ~0.
    kw = dict(k=3, group_size=4, regularizer=regularizer, wells_mode=mode, reduction=reduction)
    kw.update(init="grid", normalize=None)  # the raw scale (RAW), at either reduction
    tp, specs = q.attach(params, q.make_specs(params, include=["fc/kernel"], **kw))
    spec, w = specs[PATH], tp["model"]["params"]["fc"]["kernel"]

    def loop(w, reps):  # the reference: one per-tensor penalty per slice
        total = 0.0
        for g in range(3):
            r = None if reps is None else reps[g]
            wg = _slice(w, g, 4)
            value = reduced(wg, _per_tensor_spec(spec, g), r)
            total = total + (value * wg.size / w.size if reduction == "mean" else value)
        return total

    reps = tp["reps"].get(PATH)
    want = jax.value_and_grad(loop, argnums=(0, 1) if spec.dynamic else 0)(w, reps)
    got = jax.value_and_grad(reduced, argnums=(0, 2) if spec.dynamic else 0)(w, spec, reps)
    # nearest's reps gradients are differences of threshold sums (float32 cancellation).
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=1e-5)
    values = elementwise(w, spec, reps)
    for g in range(3):
        r = None if reps is None else reps[g]
        want_g = elementwise(_slice(w, g, 4), _per_tensor_spec(spec, g), r)
        chex.assert_trees_all_close(_slice(values, g, 4), want_g, rtol=1e-6)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize(("regularizer", "mode"), REGULARIZERS)
def test_one_group_unit_penalty_equals_per_tensor(regularizer, mode, dtype):
    # The default scale (reduction="sum", normalize="unit"), both specs attached: one group
    # of every channel (G = 1) gets the per-tensor norm, measured on the reps as stored
    # (bfloat16: rounded), and an unattached spec measures the same norm lazily. Quantile
    # starts are the same per tensor and per group (k-means ones come from another solver).
    params = jax.tree.map(lambda x: x.astype(dtype), _params())
    kw = dict(include=["fc/kernel", "conv/kernel"], k=3, regularizer=regularizer, wells_mode=mode)
    kw["init"] = "quantile"
    whole = {"fc/kernel": dict(group_size=12), "conv/kernel": dict(group_size=8)}
    tp, specs = q.attach(params, q.make_specs(params, **kw))
    tp1, grouped = q.attach(params, q.make_specs(params, **kw, overrides=whole))
    chex.assert_trees_all_equal(tp1["reps"], {p: r[None] for p, r in tp["reps"].items()})
    for p, s in grouped.items():
        assert (s.reduction, s.normalize, s.group_size) == ("sum", "unit", 12 if p == PATH else 8)
        assert s.norm == pytest.approx(specs[p].norm, rel=1e-6)
        assert float(q.unit_norm(s, tp1["reps"].get(p))) == pytest.approx(s.norm, rel=1e-6)
    want = jax.value_and_grad(penalty)(tp, specs)
    got = jax.value_and_grad(penalty)(tp1, grouped)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5)
    lazy = {p: dataclasses.replace(s, norm=None) for p, s in grouped.items()}
    np.testing.assert_allclose(penalty(tp1, lazy), want[0], rtol=1e-5)
    if dtype == jnp.float32:
        # Reps gradients are differences of sums up to ~200 (float32 cancellation: atol).
        got = (got[1]["model"], {p: r[0] for p, r in got[1]["reps"].items()})
        chex.assert_trees_all_close(got, (want[1]["model"], want[1]["reps"]), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize(("regularizer", "mode"), REGULARIZERS)
def test_grouped_unit_norm_puts_each_groups_midpoints_at_the_barrier(regularizer, mode):
    # G = 3 groups with one spread, shifted apart: grid levels with the same spacing in
    # every group. The layer's one norm then puts the mean element-wise penalty at each
    # group's adjacent-level midpoints (per-tensor form, the group's own levels) at 0.25.
    base = np.random.default_rng(10).normal(0, 0.1, (40, 4))
    w = np.concatenate([base + shift for shift in (-0.5, 0.0, 0.75)], axis=-1)
    params = {"params": {"fc": {"kernel": jnp.asarray(w, jnp.float32)}}}
    kw = dict(k=3, group_size=4, regularizer=regularizer, wells_mode=mode, init="grid")
    tp, specs = q.attach(params, q.make_specs(params, **kw))
    spec = specs[PATH]
    lv = np.asarray(q.levels(tp, spec, PATH), np.float64)
    assert lv.shape == (3, 3)
    np.testing.assert_allclose(np.diff(lv, axis=1), np.diff(lv[:1], axis=1).repeat(3, 0), 1e-5)
    units = []
    for g in range(3):
        mids = jnp.asarray((lv[g, :-1] + lv[g, 1:]) / 2, jnp.float32)
        reps = tp["reps"][PATH][g] if spec.dynamic else None
        height = jnp.mean(elementwise(mids, _per_tensor_spec(spec, g), reps))
        units.append(float(height) / spec.norm)
    assert np.mean(units) == pytest.approx(q.UNIT_BARRIER, rel=1e-5)
    np.testing.assert_allclose(units, q.UNIT_BARRIER, rtol=1e-4)
    assert float(q.unit_norm(spec, tp["reps"].get(PATH))) == pytest.approx(spec.norm, rel=1e-6)


# K = 40 (above the threshold kernel's 32: the vmapped fallback) on the smallest leaf only:
# its per-group reference loop is slow eagerly.
CASES = [((40, 12), 3), ((3, 3, 4, 8), 8), ((7, 6), 2)]


@pytest.mark.parametrize(
    ("k", "shape", "groups"),
    [(k, *case) for k in (2, 4, 5) for case in CASES] + [(40, *CASES[-1])],
)
def test_grouped_nearest_total_equals_per_group_totals(k, shape, groups):
    rng = np.random.default_rng(k)
    w = jnp.asarray(rng.normal(size=shape), jnp.float32)
    reps = jnp.asarray(rng.normal(size=(groups, k)), jnp.float32)
    size = shape[-1] // groups

    def loop(w, reps):
        return jnp.stack([nearest_total(_slice(w, g, size), reps[g]) for g in range(groups)])

    def weighted(fn):  # a non-uniform cotangent per group
        return lambda w, r: jnp.sum(fn(w, r) * jnp.arange(1.0, groups + 1))

    got = jax.value_and_grad(weighted(grouped_nearest_total), argnums=(0, 1))(w, reps)
    want = jax.value_and_grad(weighted(loop), argnums=(0, 1))(w, reps)
    # Reps gradients are differences of threshold sums: float32 cancellation at the
    # scale of the largest sum (~200 here).
    chex.assert_trees_all_close(got, want, rtol=1e-5, atol=2e-4)
    assert grouped_nearest_total(w, reps).shape == (groups,)
    with pytest.raises(ValueError, match=r"reps must have shape \(G, K\)"):
        grouped_nearest_total(w, reps[:, :1])


def test_penalty_stats_distance_per_group():
    params = _params()
    tp, specs = q.attach(params, q.make_specs(params, include=["fc/kernel"], k=2, group_size=6))
    stats = penalty_stats(tp, specs, step=0)[PATH]
    w, reps = np.asarray(tp["model"]["params"]["fc"]["kernel"]), np.asarray(tp["reps"][PATH])
    d = [np.abs(_slice(w, g, 6)[..., None] - reps[g]).min(-1) for g in range(2)]
    np.testing.assert_allclose(float(stats["distance"]), np.mean(d), rtol=1e-5)
    assert set(stats) == {"penalty", "lambda", "distance"}


# ------------------------------------------------------------------ snap, fine-tuning, STE


@pytest.mark.parametrize("regularizer", ["nearest", "cosine"])
def test_snap_puts_each_weight_on_its_groups_nearest_level(regularizer):
    params = _params(2)
    specs = q.make_specs(params, k=3, group_size=2, regularizer=regularizer)
    tp, specs = q.attach(params, specs)
    snapped, assignments = snap(tp, specs)
    for path, name in ((PATH, "fc"), (CONV, "conv")):
        w = np.asarray(tp["model"]["params"][name]["kernel"])
        s = np.asarray(snapped["model"]["params"][name]["kernel"])
        lv = np.asarray(snapped["reps"][path])
        size = 2
        for g in range(lv.shape[0]):
            wg, sg = _slice(w, g, size), _slice(s, g, size)
            near = lv[g][np.abs(wg[..., None] - lv[g]).argmin(-1)]
            np.testing.assert_array_equal(bits(sg), bits(near))
            assert len(np.unique(sg)) <= 3
            np.testing.assert_array_equal(
                bits(sg), bits(lv[g][_slice(np.asarray(assignments[path]), g, size)])
            )
    again, _ = snap(snapped, specs)  # idempotent
    chex.assert_trees_all_equal(again["model"], snapped["model"])


def test_quantized_finetune_keeps_weights_on_their_groups_levels():
    params = _params(3)
    tp, specs = q.attach(params, q.make_specs(params, k=3, group_size=4))
    snapped, assignments = snap(tp, specs)
    tx = quantized_finetune(optax.adam(1e-2), specs)
    state = tx.init(snapped)

    def loss(t):
        fc = t["model"]["params"]["fc"]
        return jnp.sum(jnp.tanh(fc["kernel"] * 3.0) * jnp.arange(12.0)) + jnp.sum(
            t["model"]["params"]["conv"]["kernel"] ** 3
        )

    @jax.jit
    def step(t, state):
        updates, state = tx.update(jax.grad(loss)(t), state, t)
        return optax.apply_updates(t, updates), state

    tree = snapped
    for _ in range(4):
        tree, state = step(tree, state)
    for path, name in ((PATH, "fc"), (CONV, "conv")):
        w = tree["model"]["params"][name]["kernel"]
        on = q.take_levels(tree["reps"][path], assignments[path])
        np.testing.assert_array_equal(bits(w), bits(on))
        assert not np.array_equal(np.asarray(tree["reps"][path]), np.asarray(snapped["reps"][path]))


def test_regularize_then_finetune_grouped_ends_on_levels():
    params = _params(9)
    tp, specs = q.attach(params, q.make_specs(params, include=["fc/kernel"], k=3, group_size=2))
    tx = regularize_then_finetune(optax.sgd(1e-2), optax.sgd(1e-2), specs, snap_at=2)
    state = tx.init(tp)

    def loss(t):
        return jnp.sum(jnp.sin(t["model"]["params"]["fc"]["kernel"])) + penalty(t, specs)

    @jax.jit
    def step(t, state):
        updates, state = tx.update(jax.grad(loss)(t), state, t)
        return optax.apply_updates(t, updates), state

    for _ in range(6):
        tp, state = step(tp, state)
    a = assignments_by_path(state)[PATH]
    w = tp["model"]["params"]["fc"]["kernel"]
    np.testing.assert_array_equal(bits(w), bits(q.take_levels(tp["reps"][PATH], a)))


def test_finetune_rep_gradient_is_per_group_sum():
    params = _params(4)
    tp, specs = q.attach(params, q.make_specs(params, include=["fc/kernel"], k=2, group_size=6))
    snapped, a = snap(tp, specs)
    tx = quantized_finetune(optax.sgd(1.0), specs)
    g = jax.tree.map(jnp.zeros_like, snapped)
    g_w = jnp.asarray(np.random.default_rng(0).normal(size=(40, 12)), jnp.float32)
    g["model"]["params"]["fc"]["kernel"] = g_w
    updates, _ = tx.update(g, tx.init(snapped), snapped)
    a = np.asarray(a[PATH])
    want = [
        [-np.sum(_slice(g_w, gr, 6)[_slice(a, gr, 6) == j]) for j in range(2)] for gr in range(2)
    ]
    np.testing.assert_allclose(np.asarray(updates["reps"][PATH]), want, rtol=1e-5)


class SteTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(True, False)
    def test_ste_forward_is_snap_and_level_grads_per_group(self, active):
        params = _params(5)
        tp, specs = ste.init(params, None, k=3, group_size=4)
        snapped, a = snap(tp, specs)

        def loss(t, on):
            model = ste.quantize(t, specs, active=on)
            return jnp.sum(model["params"]["fc"]["kernel"] * jnp.arange(12.0))

        value, grads = self.variant(jax.value_and_grad(loss))(tp, jnp.asarray(active))
        w = snapped["model"] if active else tp["model"]
        want = jnp.sum(w["params"]["fc"]["kernel"] * jnp.arange(12.0))
        np.testing.assert_allclose(value, want, rtol=1e-5)
        a = np.asarray(a[PATH])
        gw = np.broadcast_to(np.arange(12.0), (40, 12))
        want_c = [
            [np.sum(_slice(gw, g, 4)[_slice(a, g, 4) == j]) for j in range(3)] for g in range(3)
        ]
        np.testing.assert_allclose(
            grads["reps"][PATH], want_c if active else 0 * np.asarray(want_c)
        )
        np.testing.assert_allclose(grads["model"]["params"]["fc"]["kernel"], gw)

    def test_recluster_grouped(self):
        params = _params(5)
        tp, specs = ste.init(params, None, k=3, group_size=4)
        new = ste.recluster(tp, specs)
        assert new["reps"][PATH].shape == (3, 3)
        with self.assertRaisesRegex(ValueError, "does not support group_size"):
            ste.recluster(tp, specs, warm_start=True)


class PenaltyJitTest(chex.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    def test_penalty_jit_and_no_jit_agree(self):
        params = _params()
        tp, specs = q.attach(params, q.make_specs(params, k=3, group_size=2, **RAW))
        got = self.variant(jax.value_and_grad(lambda t: penalty(t, specs)))(tp)
        want = jax.jit(jax.value_and_grad(lambda t: penalty(t, specs)))(tp)
        chex.assert_trees_all_close(got, want, rtol=1e-6, atol=1e-8)
        # The unit scale of an unattached spec (norm None): unit_norm of the traced reps.
        unit = {
            p: dataclasses.replace(s, reduction="sum", normalize="unit") for p, s in specs.items()
        }
        got = self.variant(lambda t: penalty(t, unit))(tp)
        np.testing.assert_allclose(got, jax.jit(lambda t: penalty(t, unit))(tp), rtol=1e-6)


def test_layout_keeps_grouped_reps_replicated():
    # A rule for the kernel matches its (G, K) reps' path too; it must not split K.
    layout = Layout(AbstractMesh((4, 2), ("data", "model")), rules=[("fc1", P(None, "model"))])
    assert layout.spec("model/params/fc1/kernel", (64, 8)) == P(None, "model")
    assert layout.spec("reps/params/fc1/kernel", (8, 3)) == P()
    assert layout.spec("0/mu/reps/params/fc1/kernel", (8, 3)) == P()


# ------------------------------------------------------------------ PTQ and export


def test_quantize_tree_per_group_kmeans():
    params = _params(6)
    qp, quant = quantizers.quantize_tree(params, [PATH, CONV], 3, "kmeans", group_size=2)
    codebook, a = quant[PATH]
    assert codebook.shape == (6, 3) and codebook.dtype == np.float32 and a.shape == (40, 12)
    w = np.asarray(params["params"]["fc"]["kernel"])
    out = np.asarray(qp["params"]["fc"]["kernel"])
    for g in range(6):
        np.testing.assert_array_equal(_slice(out, g, 2), codebook[g][_slice(a, g, 2)])
        ref = quantizers.kmeans_1d(_slice(w, g, 2), 3).codebook
        wg = _slice(w, g, 2)
        assert _sse(wg, codebook[g]) <= _sse(wg, ref) * 1.02


@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
def test_compress_round_trip_bit_exact_and_counts_every_codebook(tmp_path, codebook_dtype):
    params = _params(7)
    qp, quant = quantizers.quantize_tree(params, [PATH, CONV], 4, "kmeans", group_size=2)
    path = tmp_path / "grouped.qareg"
    info = c.save(path, params, quant, codebook_dtype=codebook_dtype)
    loaded, lq = c.load(path)
    for p, name in ((PATH, "fc"), (CONV, "conv")):
        cb, a = quant[p]
        stored = cb.astype(codebook_dtype).astype(np.float32)
        np.testing.assert_array_equal(lq[p][0], stored)
        np.testing.assert_array_equal(lq[p][1], a)
        want = (
            q.take_levels(stored, a)
            if codebook_dtype == "float16"
            else qp["params"][name]["kernel"]
        )
        np.testing.assert_array_equal(bits(loaded["params"][name]["kernel"]), bits(want))
    rep = c.size_report(params, quant, codebook_dtype=codebook_dtype)
    cb_bits = 32 if codebook_dtype == "float32" else 16
    layer = {ly.path: ly for ly in rep.layers}
    assert layer[PATH].groups == 6 and layer[PATH].k == 4
    assert layer[PATH].packed_bits == 2 * 480 + 6 * 4 * cb_bits
    assert layer[CONV].packed_bits == 2 * 144 + 4 * 4 * cb_bits
    assert 0 <= info.payload_bytes * 8 - rep.packed_bits < 8 * 2
    assert "| params/fc/kernel | 480 | 4 x 6 |" in str(rep)


def test_per_tensor_files_unchanged_by_the_grouped_format(tmp_path):
    params = _params(8)
    _, quant = quantizers.quantize_tree(params, [PATH], 4, "kmeans")
    c.save(tmp_path / "a.qareg", params, quant)
    raw = (tmp_path / "a.qareg").read_bytes()
    assert b'"groups"' not in raw
