"""Assertions several test modules share (plain functions; fixtures live in conftest.py)."""

import numpy as np


def bits(x):
    """The bit pattern of a float array (bitwise comparisons: -0.0 != 0.0)."""
    x = np.asarray(x)
    return x.view(np.dtype(f"uint{8 * x.dtype.itemsize}"))


def assert_on_reps(w, c, a):
    """``w`` is bitwise ``c[a]``: <= K distinct values, all members of ``c``."""
    w, c, a = np.asarray(w), np.asarray(c), np.asarray(a)
    np.testing.assert_array_equal(bits(w), bits(c)[a])
    assert len(np.unique(bits(w))) <= c.shape[0]
    assert np.isin(bits(w), bits(c)).all()
