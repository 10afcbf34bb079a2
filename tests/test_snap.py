"""Snapping to the nearest level and fine-tuning with weights kept exactly on their reps."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_on_reps, bits
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qareg_jax import codebook
from qareg_jax.codebook import QuantSpec
from qareg_jax.quantizers import index_dtype
from qareg_jax.regularizers import static_levels
from qareg_jax.snap import assign, check_snappable, finetune_specs, snap

BF16 = jnp.bfloat16
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Few distinct K (one compilation each): the compare chain (K <= 32) and the binary search.
KS = (2, 3, 5, 32, 33, 40)


def nearest_oracle(w, levels):
    """Exact nearest level (rational arithmetic); ties to the lower value, then first index."""
    ls = [Fraction(float(v)) for v in levels]
    out = []
    for x in np.ravel(w):
        d = [abs(Fraction(float(x)) - v) for v in ls]
        best = min(d)
        cands = [j for j in range(len(ls)) if d[j] == best]
        out.append(min(cands, key=lambda j: (ls[j], j)))
    return np.array(out).reshape(np.shape(w))


floats32 = st.floats(-8, 8, width=32, allow_subnormal=False).filter(
    lambda x: x == 0 or abs(x) > 1e-30
)


def tiny_tree(w, reps, static=None):
    """Model with a dynamic "d/kernel", a bias and optionally a static "s/kernel" leaf."""
    model = {"d": {"kernel": w, "bias": jnp.zeros(w.shape[-1:], w.dtype)}}
    specs = {"d/kernel": QuantSpec(k=reps.shape[0], regularizer="nearest", lo=-1.0, hi=1.0)}
    if static is not None:
        kind, ws, k = static
        model["s"] = {"kernel": ws}
        specs["s/kernel"] = QuantSpec(k=k, regularizer=kind, lo=-0.5, hi=1.5)
    return {"model": model, "reps": {"d/kernel": reps}}, specs


# ----------------------------------------------------------------------- assign / snap


@st.composite
def levels_and_weights(draw):
    k = draw(st.sampled_from(KS))
    pool = draw(st.lists(floats32, min_size=1, max_size=k))  # duplicate levels too
    levels = np.array(
        draw(st.lists(st.sampled_from(pool) | floats32, min_size=k, max_size=k)), np.float32
    )
    s = np.sort(levels)
    mids = (s[:-1] + s[1:]) / np.float32(2)  # rounded float midpoints, and their neighbours
    special = np.concatenate([levels, mids, np.nextafter(mids, 9), np.nextafter(mids, -9)])
    w = draw(st.lists(st.sampled_from(special.tolist()) | floats32, min_size=24, max_size=24))
    return np.array(w, np.float32), levels


@settings(max_examples=60, **SETTINGS)
@given(levels_and_weights())
def test_assign_is_the_exact_nearest_level_with_ties_to_the_lower(data):
    w, levels = data
    a = jax.jit(assign)(jnp.asarray(w), jnp.asarray(levels))
    assert a.dtype == index_dtype(levels.shape[0])
    np.testing.assert_array_equal(np.asarray(a), nearest_oracle(w, levels))


def test_assign_ties_adjacent_levels_and_duplicates():
    # Exact ties go to the lower level, whatever the stored order.
    assert assign(jnp.float32([0.5, 0.25, 0.75]), jnp.float32([1.0, 0.0])).tolist() == [1, 1, 0]
    # Adjacent floats: the float midpoint rounds up to b, yet b is nearest to itself.
    a = np.float32(1.0)
    b = np.nextafter(a, np.float32(2))
    assert assign(jnp.asarray([a, b]), jnp.asarray([b, a])).tolist() == [1, 0]
    # Equal levels: the first of them; K = 40 takes the binary search path.
    levels = jnp.linspace(-1, 1, 40).at[7].set(0.5).at[30].set(0.5)
    i = int(assign(jnp.float32([0.5001]), levels)[0])
    assert i == 7
    assert assign(jnp.float32([0.5001]), levels, index_dtype=jnp.int32).dtype == jnp.int32


@st.composite
def snap_cases(draw):
    dtype = draw(st.sampled_from([jnp.float32, BF16]))
    shape = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)))
    k = draw(st.sampled_from(KS))
    seed = draw(st.integers(0, 2**16))
    kind = draw(st.sampled_from(["sine", "cosine"]))
    ks = draw(st.integers(2, 8))
    rng = np.random.default_rng(seed)
    w = jnp.asarray(rng.normal(size=shape), dtype)
    reps = jnp.asarray(rng.permutation(rng.normal(size=k)), dtype)  # unsorted
    ws = jnp.asarray(rng.uniform(-1, 2, size=(3, 4)), dtype)
    return tiny_tree(w, reps, static=(kind, ws, ks))


@settings(max_examples=10, **SETTINGS)
@given(snap_cases())
def test_snap_puts_every_weight_on_a_rep_and_is_idempotent(case):
    tp, specs = case
    snapped, assignments = jax.jit(lambda t: snap(t, specs))(tp)
    assert set(snapped["reps"]) == set(specs)
    np.testing.assert_array_equal(bits(snapped["reps"]["d/kernel"]), bits(tp["reps"]["d/kernel"]))
    s = specs["s/kernel"]
    dtype = tp["model"]["s"]["kernel"].dtype
    static = jnp.asarray(static_levels(s.regularizer, s.k, s.lo, s.hi), dtype)
    np.testing.assert_array_equal(bits(snapped["reps"]["s/kernel"]), bits(static))
    assert snapped["reps"]["s/kernel"].dtype == dtype
    for path, a in assignments.items():
        w = codebook.check_tree(snapped, finetune_specs(specs))[path]
        assert a.shape == w.shape and a.dtype == index_dtype(specs[path].k)
        assert_on_reps(w, snapped["reps"][path], a)
        # Each weight went to its nearest level (exact oracle).
        original = np.asarray(codebook.check_tree(tp, specs)[path], np.float32)
        np.testing.assert_array_equal(
            np.asarray(a), nearest_oracle(original, np.asarray(snapped["reps"][path], np.float32))
        )
    np.testing.assert_array_equal(
        bits(snapped["model"]["d"]["bias"]), bits(tp["model"]["d"]["bias"])
    )
    again, assignments2 = jax.jit(lambda t: snap(t, specs))(snapped)
    for x, y in zip(jax.tree.leaves(again), jax.tree.leaves(snapped), strict=True):
        np.testing.assert_array_equal(bits(x), bits(y))
    for path in specs:
        np.testing.assert_array_equal(assignments2[path], assignments[path])


# --------------------------------------------------------------------------- errors


def test_errors():
    w = jnp.ones((3, 2), jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([0.0, 1.0]))
    with pytest.raises(ValueError, match='keys "model" and "reps"'):
        snap({"model": tp["model"]}, specs)
    with pytest.raises(ValueError, match="no representatives"):
        snap({"model": tp["model"], "reps": {}}, specs)
    with pytest.raises(ValueError, match="does not have"):
        snap(tp, {**specs, "x/kernel": specs["d/kernel"]})
    with pytest.raises(ValueError, match="shape"):
        snap({**tp, "reps": {"d/kernel": jnp.zeros(3)}}, specs)
    with pytest.raises(TypeError, match="dtype"):
        snap({**tp, "reps": {"d/kernel": jnp.zeros(2, BF16)}}, specs)
    big = {"d/kernel": QuantSpec(k=300, regularizer="sine", lo=0.0, hi=1.0)}
    with pytest.raises(ValueError, match="cannot hold index 299"):
        snap({"model": tp["model"], "reps": {}}, big, index_dtype=jnp.uint8)
    assert snap({"model": tp["model"], "reps": {}}, big)[1]["d/kernel"].dtype == jnp.uint16
    with pytest.raises(TypeError, match="integer dtype"):
        assign(w, jnp.float32([0.0, 1.0]), index_dtype=jnp.float32)
    with pytest.raises(ValueError, match=r"levels must have shape \(K,\)"):
        assign(w, jnp.zeros((2, 2)))
    with pytest.raises(TypeError, match="w must be a floating"):
        assign(jnp.ones(3, jnp.int32), jnp.float32([0.0, 1.0]))


# ------------------------------------------------------------- non-finite weights


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_snap_refuses_non_finite_weights_naming_the_leaf(bad):
    # Training diverged after attach: a NaN weight used to land on level 0, finite.
    w = jnp.asarray([[0.1, 0.7], [bad, -0.4], [0.9, 0.2]], jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([0.0, 0.5, 1.0]))
    with pytest.raises(ValueError, match=r"selected weight leaf 'd/kernel' holds 1 NaN/inf"):
        snap(tp, specs)
    with pytest.raises(ValueError, match=r"'d/kernel' holds 1 NaN/inf"):
        check_snappable(tp, specs)
    # Opted out (or traced under jit, where values are unknown): the old behaviour.
    _, a = snap(tp, specs, check_finite=False)
    assert a["d/kernel"].shape == w.shape
    _, a_jit = jax.jit(lambda t: snap(t, specs))(tp)
    np.testing.assert_array_equal(a_jit["d/kernel"], a["d/kernel"])


def test_snap_refuses_non_finite_levels():
    w = jnp.asarray([[0.1, 0.7], [0.3, -0.4]], jnp.float32)
    tp, specs = tiny_tree(w, jnp.float32([0.0, np.nan, 1.0]))
    with pytest.raises(ValueError, match=r"levels \(reps\) of leaf 'd/kernel' holds 1 NaN/inf"):
        snap(tp, specs)
