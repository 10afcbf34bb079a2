"""Fixtures shared by the test files: the digits dataset, a SmallCNN, random kernels,
and attached (``make_specs`` + ``attach``) trees.

Session-scoped fixtures hand out read-only numpy arrays or immutable jax arrays, so a
test cannot change what the next one sees.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import tempfile

# One persistent compilation cache for the whole session, subprocesses included (the
# CLI tests): the pipeline tests compile the same train steps again and again (a
# sample of them ran in 80 % of the time). Fresh per session; a user's own setting wins.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE = tempfile.mkdtemp(prefix="qareg-test-jax-cache-")
    atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import jax  # noqa: E402  (after the cache settings it reads)
import jax.numpy as jnp
import numpy as np
import pytest

import qareg_jax as q
from qareg_jax import data
from qareg_jax.models import get_model


def _read_only(ds: data.Dataset) -> data.Dataset:
    for name in ("train_images", "train_labels", "test_images", "test_labels", "mean", "std"):
        getattr(ds, name).setflags(write=False)
    return ds


@pytest.fixture
def default_sigint():
    """Python's own Ctrl-C handler, whatever the runner inherited: a shell starts background
    jobs with SIGINT ignored, and ``deferred_interrupts`` then (rightly) changes nothing."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(scope="session")
def digits_dataset() -> data.Dataset:
    """``data.load_dataset("digits")``, loaded once (its arrays are read-only)."""
    return _read_only(data.load_dataset("digits"))


@pytest.fixture(scope="session")
def digits(digits_dataset):
    """``(x_train, y_train, x_test, y_test)``: the first 256 normalized training images and
    their labels, and the whole normalized test split; float32 NHWC (8, 8, 1)."""
    ds = digits_dataset
    return (
        ds.normalize(ds.train_images[:256]),
        ds.train_labels[:256],
        ds.normalize(ds.test_images),
        ds.test_labels,
    )


@pytest.fixture(scope="session")
def small_cnn():
    """``(model, variables)``: a 10-class linen SmallCNN initialised with key 0 on
    (1, 8, 8, 1) inputs (flax initialisers see only the input's shape)."""
    model = get_model("small", 10)
    variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)), train=False)
    return model, variables


@pytest.fixture(scope="session")
def random_kernel():
    """``random_kernel(shape, seed=0, scale=0.1, dtype=jnp.float32)``: normal weights
    ``N(0, scale^2)`` from ``np.random.default_rng(seed)``, as a jax array."""

    def make(shape, seed: int = 0, scale: float = 0.1, dtype=jnp.float32) -> jax.Array:
        return jnp.asarray(np.random.default_rng(seed).normal(0, scale, shape), dtype)

    return make


@pytest.fixture(scope="session")
def attached():
    """``attached(params, **spec_kwargs) -> (train_params, specs)``: ``make_specs`` with
    ``spec_kwargs`` (``include``, ``overrides``, ``QuantSpec`` fields), then ``attach``."""

    def make(params, **spec_kwargs):
        return q.attach(params, q.make_specs(params, **spec_kwargs))

    return make
