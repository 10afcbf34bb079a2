"""qareg_jax.batch_stats: re-estimated BatchNorm statistics match the weights they are
computed with; models without BatchNorm and the caller's variables are left alone; the
pipeline's ``bn_recalibrate`` option."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qareg_jax import pipeline
from qareg_jax.batch_stats import recalibrate_batch_stats
from qareg_jax.models import CifarVGG, SmallCNN


def test_statistics_follow_the_new_weights():
    model = CifarVGG(num_classes=3, widths=(4, 8, 8, 8))
    x = jax.random.normal(jax.random.key(1), (32, 16, 16, 3))
    variables = model.init(jax.random.key(0), x, train=False)
    # Rescaled kernels (as after snapping to far-off levels): the old statistics are stale.
    params = jax.tree.map(lambda w: 3.0 * w if w.ndim == 4 else w, variables["params"])
    stale = {**variables, "params": params}
    train_out, _ = model.apply(stale, x, train=True, mutable=["batch_stats"])
    assert not np.allclose(model.apply(stale, x, train=False), train_out, atol=1e-2)
    fresh = recalibrate_batch_stats(model, stale, [{"image": x}] * 100)
    # With the batch's own statistics as running averages, eval mode computes train mode.
    np.testing.assert_allclose(model.apply(fresh, x, train=False), train_out, atol=2e-3)
    chex.assert_trees_all_equal(fresh["params"], params)
    chex.assert_trees_all_equal(stale["batch_stats"], variables["batch_stats"])  # untouched


def test_a_model_without_batchnorm_is_returned_as_is(small_cnn):
    model, variables = small_cnn
    assert isinstance(model, SmallCNN)
    out = recalibrate_batch_stats(model, variables, [{"image": jnp.zeros((2, 8, 8, 1))}])
    assert out == dict(variables)


@pytest.mark.parametrize("bad", [-1, 1.5, True])
def test_bn_recalibrate_must_be_a_count(bad):
    with pytest.raises(ValueError, match="bn_recalibrate must be an int >= 0"):
        pipeline.Config(bn_recalibrate=bad)
