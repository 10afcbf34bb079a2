"""The code in docs/usage.md runs as written (with a small model and batch supplied)."""

from __future__ import annotations

import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from qareg_jax.paths import named_leaves

USAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "usage.md"


def _python_block(section: str) -> str:
    """The first ```python block after the heading ``section`` of docs/usage.md."""
    text = USAGE.read_text()
    start = text.index(section)
    match = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"no python block under {section!r}"
    return match.group(1)


class MyModel(nnx.Module):
    """A small MLP standing in for the snippet's ``MyModel``."""

    def __init__(self, *, rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(8, 16, rngs=rngs)
        self.fc2 = nnx.Linear(16, 3, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(nnx.relu(self.fc1(x)))


def test_nnx_snippet_runs_and_keeps_the_train_tree():
    ns: dict = {"MyModel": MyModel}
    exec(compile(_python_block("## Flax NNX"), str(USAGE), "exec"), ns)  # noqa: S102
    tp, specs, step = ns["tp"], ns["specs"], ns["step"]
    assert set(specs) == {"fc1/kernel", "fc2/kernel"}
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)
    y = jnp.asarray(rng.integers(0, 3, 16))
    tp2, _ = step(tp, ns["opt_state"], x, y)
    assert np.isfinite(np.asarray(tp2["model"]["fc1"]["kernel"])).all()
    # The model holds the snapped kernels; the train tree keeps its own (unsnapped) ones.
    model_leaves = named_leaves(nnx.split(ns["model"], nnx.Param)[1])
    train_leaves = named_leaves(tp["model"])
    for path in specs:
        assert np.unique(np.asarray(model_leaves[path])).size <= 4
        assert np.unique(np.asarray(train_leaves[path])).size > 4, f"{path} was overwritten"


def test_budget_pipeline_snippet_lists_the_budget_stages():
    ns: dict = {}
    block = _python_block("### A budget in the pipeline and the CLI")
    exec(compile(block, str(USAGE), "exec"), ns)  # noqa: S102
    expected = ["reg-nearest-k2", "ptq-kmeans-k2", "reg-nearest-budget", "ptq-kmeans-budget"]
    assert ns["stages"] == expected
    assert f"# {expected}" in block  # the comment shows what the code gives


def test_grouped_snippet_runs():
    ns: dict = {}
    exec(compile(_python_block("## Grouped codebooks"), str(USAGE), "exec"), ns)  # noqa: S102
    tp, specs, snapped = ns["tp"], ns["specs"], ns["snapped"]
    assert tp["reps"]["params/fc1/kernel"].shape == (64, 4)
    for path in specs:
        w = np.asarray(named_leaves(snapped["model"])[path])
        for g in range(w.shape[-1]):  # group_size=1: each channel holds <= 4 values
            assert np.unique(w[..., g]).size <= 4


def test_pin_zero_and_pruning_snippet_runs():
    ns: dict = {}
    exec(compile(_python_block("## A pinned zero level"), str(USAGE), "exec"), ns)  # noqa: S102
    snapped, specs = ns["snapped"], ns["specs"]
    for path in specs:
        w = np.asarray(named_leaves(snapped["model"])[path])
        assert np.mean(w == 0.0) >= np.floor(0.75 * w.size) / w.size
        assert np.unique(w).size <= 4 and np.any(np.asarray(snapped["reps"][path]) == 0.0)
