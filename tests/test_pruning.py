"""Magnitude pruning (``qareg_jax.pruning``) alone and combined with a pinned zero level."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from absl.testing import parameterized

from qareg_jax import codebook as q
from qareg_jax.penalty import penalty
from qareg_jax.pruning import cubic_sparsity, magnitude_mask, prune, sparsity_of
from qareg_jax.snap import quantized_finetune, snap

FC, CONV = "params/fc/kernel", "params/conv/kernel"


def _params(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "params": {
            "conv": {"kernel": jnp.asarray(rng.normal(0, 0.1, (3, 3, 2, 8)), jnp.float32)},
            "fc": {"kernel": jnp.asarray(rng.normal(0, 0.1, (40, 12)), jnp.float32)},
        }
    }


def _loss(tp, specs=None):
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(32, 40)), jnp.float32)
    y = jnp.asarray(rng.normal(size=(32, 12)), jnp.float32)
    task = jnp.mean((x @ tp["model"]["params"]["fc"]["kernel"] - y) ** 2)
    task = task + jnp.mean(tp["model"]["params"]["conv"]["kernel"] ** 2)
    return task if specs is None else task + 1e-2 * penalty(tp, specs)


def test_cubic_schedule_shape():
    s = cubic_sparsity(0.8, 10, 110)
    values = np.asarray([float(s(t)) for t in range(0, 130, 5)])
    assert values[0] == 0.0 and float(s(10)) == 0.0 and float(s(110)) == pytest.approx(0.8)
    assert float(s(500)) == pytest.approx(0.8)
    assert np.all(np.diff(values) >= 0)
    assert float(s(35)) > 0.8 * 0.25  # fast at first: more than linear at a quarter
    one_shot = cubic_sparsity(0.5, 7, 7)
    assert float(one_shot(6)) == 0.0 and float(one_shot(7)) == 0.5


class MaskTest(parameterized.TestCase):
    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters(0.0, 0.25, 0.5, 0.9)
    def test_magnitude_mask_drops_exactly_the_smallest(self, sparsity):
        w = jnp.asarray(np.random.default_rng(2).normal(size=(17, 9)), jnp.float32)
        mask = np.asarray(self.variant(magnitude_mask)(w, sparsity))
        drop = int(np.floor(sparsity * w.size))
        assert mask.shape == w.shape and (~mask).sum() == drop
        if 0 < drop < w.size:
            assert np.abs(w)[~mask].max() <= np.abs(w)[mask].min()


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.75, 0.999])
def test_magnitude_mask_equals_a_stable_sort_with_ties(sparsity):
    # Rounded values: many ties, zeros and both signs of a magnitude.
    rng = np.random.default_rng(4)
    w = np.round(rng.normal(size=(33, 21)), 1).astype(np.float32)
    drop = int(np.floor(np.float32(sparsity) * w.size))
    order = np.argsort(np.abs(w).ravel(), kind="stable")
    want = np.ones(w.size, bool)
    want[order[:drop]] = False
    got = np.asarray(jax.jit(magnitude_mask)(jnp.asarray(w), sparsity))
    np.testing.assert_array_equal(got.ravel(), want)


@pytest.mark.parametrize("update_every", [1, 5])
def test_prune_reaches_the_target_and_pruned_weights_stay_zero(update_every):
    params = _params()
    tp, specs = q.attach(params, q.make_specs(params, k=4, pin_zero=True))
    schedule = cubic_sparsity(0.75, 0, 40)
    tx = optax.chain(optax.adam(1e-2), prune(specs, schedule, update_every=update_every))
    state = tx.init(tp)
    grad = jax.jit(jax.grad(lambda t: _loss(t, specs)))
    masks_before = None
    for _ in range(60):
        updates, state = tx.update(grad(tp), state, tp)
        tp = optax.apply_updates(tp, updates)
        masks = state[1].masks
        if masks_before is not None:  # masks only grow
            for p in specs:
                assert not np.any(np.asarray(masks[p]) & ~np.asarray(masks_before[p]))
        masks_before = masks
        for p in specs:
            w = np.asarray(q.named_leaves(tp["model"])[p])
            assert np.all(w[~np.asarray(masks[p])] == 0.0)
    for p in specs:
        w = q.named_leaves(tp["model"])[p]
        assert sparsity_of(w) == pytest.approx(np.floor(0.75 * w.size) / w.size)


def test_prune_with_pinned_zero_then_snap_and_finetune_keeps_the_sparsity():
    params = _params(3)
    tp, specs = q.attach(params, q.make_specs(params, k=4, pin_zero=True))
    tx = optax.chain(optax.adam(1e-2), prune(specs, {FC: 0.5, CONV: cubic_sparsity(0.25, 0, 10)}))
    state = tx.init(tp)
    grad = jax.jit(jax.grad(lambda t: _loss(t, specs)))
    for _ in range(30):
        updates, state = tx.update(grad(tp), state, tp)
        tp = optax.apply_updates(tp, updates)
    pruned = {p: np.asarray(q.named_leaves(tp["model"])[p]) == 0.0 for p in specs}
    snapped, _ = snap(tp, specs)
    ft = quantized_finetune(optax.adam(1e-2), specs)
    fstate = ft.init(snapped)
    for _ in range(10):
        updates, fstate = ft.update(jax.grad(_loss)(snapped), fstate, snapped)
        snapped = optax.apply_updates(snapped, updates)
    for p, target in ((FC, 0.5), (CONV, 0.25)):
        w = np.asarray(q.named_leaves(snapped["model"])[p])
        assert np.all(w[pruned[p]] == 0.0)  # every pruned weight is still exactly 0
        assert sparsity_of(w) >= np.floor(target * w.size) / w.size
        assert len(np.unique(w)) <= 4


@pytest.mark.parametrize(
    ("build", "error", "match"),
    [
        (lambda: prune([FC], 1.0), ValueError, r"sparsity must be in \[0, 1\)"),
        (lambda: prune([FC], -0.1), ValueError, r"sparsity must be in \[0, 1\)"),
        (lambda: prune([FC], "half"), TypeError, "sparsity must be a number"),
        (lambda: prune([FC], {CONV: 0.5}), ValueError, "one entry per pruned path"),
        (lambda: prune([], 0.5), ValueError, "paths is empty"),
        (lambda: prune([FC], 0.5, update_every=0), ValueError, "update_every must be"),
        (lambda: prune([FC], lambda t: 1.5), ValueError, r"sparsity\(0\) must be in"),
        (lambda: cubic_sparsity(0.5, 10, 5), ValueError, "end_step"),
        (lambda: cubic_sparsity(1.2, 0, 5), ValueError, r"target must be in \[0, 1\)"),
        (lambda: cubic_sparsity(0.5, 0, 5, power=0), ValueError, "power must be"),
    ],
)
def test_bad_pruning_inputs_refused(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_prune_refuses_a_missing_path_and_a_bare_tree():
    params = _params()
    with pytest.raises(ValueError, match="paths not in params"):
        prune(["params/nope/kernel"], 0.5).init({"model": params, "reps": {}})
    with pytest.raises(ValueError, match='"model", "reps"'):
        prune([FC], 0.5).init(params)
