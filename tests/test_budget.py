"""budget: per-layer sensitivities, exact packed sizes, the exact knapsack planner."""

from __future__ import annotations

import itertools
import math
import pathlib
import re

import jax
import numpy as np
import optax
import pytest

import qareg_jax as q
from qareg_jax import budget, compress
from qareg_jax.paths import named_leaves
from qareg_jax.quantizers import quantize_tree

USAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "usage.md"
KERNELS = ["params/conv1/kernel", "params/conv2/kernel", "params/fc1/kernel", "params/fc2/kernel"]


# ----------------------------------------------------------------------------- helpers


def _random_instance(seed: int) -> tuple[dict, dict]:
    """A random multiple-choice knapsack: 2-5 layers, 1-4 Ks each, some ties, some
    negative costs."""
    rng = np.random.default_rng(seed)
    sens, sizes = {}, {}
    for layer in range(int(rng.integers(2, 6))):
        ks = sorted(rng.choice([2, 4, 8, 16, 32], size=int(rng.integers(1, 5)), replace=False))
        sens[f"l{layer}"] = {int(k): float(rng.normal()) for k in ks}
        sizes[f"l{layer}"] = {int(k): int(rng.integers(1, 40)) for k in ks}
    return sens, sizes


def _brute_force(sens: dict, sizes: dict, budget_bytes: int) -> float | None:
    """The least summed cost over every K combination that fits (None: none fits)."""
    paths = list(sens)
    best = None
    for combo in itertools.product(*(sorted(sens[p]) for p in paths)):
        if sum(sizes[p][k] for p, k in zip(paths, combo, strict=True)) <= budget_bytes:
            cost = sum(sens[p][k] for p, k in zip(paths, combo, strict=True))
            best = cost if best is None else min(best, cost)
    return best


def _any_levels(w, k):
    """A valid (codebook, assignments) of K levels without k-means (sizes need no fit)."""
    n = np.size(w)
    return np.linspace(-1, 1, k, dtype=np.float32), (np.arange(n) % k).reshape(np.shape(w))


def _save(tmp_path, params, ks, codebook_dtype="float32", name="m.qareg") -> compress.SaveInfo:
    _, quantized = quantize_tree(params, list(ks), dict(ks), method=_any_levels)
    info = compress.save(tmp_path / name, params, quantized, codebook_dtype=codebook_dtype)
    assert info.file_bytes == (tmp_path / name).stat().st_size
    return info


@pytest.fixture(scope="module")
def trained(digits_dataset, small_cnn):
    """``(model, params, loss_fn)``: the SmallCNN after 100 full-batch Adam steps on 1024
    digits training images (test loss ~0.08); ``loss_fn`` is the mean cross-entropy on
    256 test images."""
    model, params = small_cnn
    ds = digits_dataset
    x, y = ds.normalize(ds.train_images[:1024]), ds.train_labels[:1024]
    xv, yv = ds.normalize(ds.test_images[:256]), ds.test_labels[:256]

    def loss(p, x, y):
        logits = model.apply(p, x, train=False)
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    tx = optax.adam(3e-3)

    @jax.jit
    def step(p, st):
        g = jax.grad(loss)(p, x, y)
        u, st = tx.update(g, st, p)
        return optax.apply_updates(p, u), st

    st = tx.init(params)
    for _ in range(100):
        params, st = step(params, st)
    return model, params, lambda p: loss(p, xv, yv)


# ----------------------------------------------------------------------------- planner


@pytest.mark.parametrize("seed", range(8))
def test_plan_equals_brute_force(seed):
    sens, sizes = _random_instance(seed)
    lo = sum(min(v.values()) for v in sizes.values())
    hi = sum(max(v.values()) for v in sizes.values())
    for b in sorted({lo, hi, *np.random.default_rng(seed).integers(lo, hi + 1, 6).tolist()}):
        plan = budget.plan_bits(sens, sizes, int(b))
        best = _brute_force(sens, sizes, int(b))
        assert plan.total_bytes <= b
        assert plan.total_bytes == sum(sizes[p][k] for p, k in plan.ks.items())
        assert plan.total_sensitivity == pytest.approx(best, abs=1e-12)
        assert plan.total_sensitivity == pytest.approx(
            sum(sens[p][k] for p, k in plan.ks.items()), abs=1e-12
        )
    with pytest.raises(ValueError, match="budget_bytes"):
        budget.plan_bits(sens, sizes, lo - 1) if lo > 1 else budget.plan_bits(sens, sizes, 0)


@pytest.mark.parametrize("seed", range(4))
def test_bigger_budget_never_costs_more(seed):
    sens, sizes = _random_instance(100 + seed)
    lo = sum(min(v.values()) for v in sizes.values())
    hi = sum(max(v.values()) for v in sizes.values())
    costs = []
    for b in range(lo, hi + 2):
        plan = budget.plan_bits(sens, sizes, b)
        assert plan.total_bytes <= b
        costs.append(plan.total_sensitivity)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(costs))
    best_anywhere = sum(min(v.values()) for v in sens.values())
    assert costs[-1] == pytest.approx(best_anywhere, abs=1e-12)


def test_plan_table_and_specs(small_cnn):
    _, params = small_cnn
    sizes = budget.packed_bytes_per_choice(params, KERNELS, ks=(2, 4, 8))
    sens = {p: {2: 3.0, 4: 1.0, 8: 0.0} for p in KERNELS}
    plan = budget.plan_bits(sens, sizes, sizes.file_bytes(dict.fromkeys(KERNELS, 4)))
    text = plan.table()
    for p in KERNELS:
        assert p in text
    assert "32,768" in text and "total" in text and "budget" in text
    specs = budget.specs_for_plan(plan, q.QuantSpec(regularizer="softmin", lam=2.0))
    assert {p: s.k for p, s in specs.items()} == plan.ks
    assert all(s.regularizer == "softmin" and s.lam == 2.0 for s in specs.values())
    tp, _ = q.attach(params, specs)
    assert {p: r.shape for p, r in tp["reps"].items()} == {p: (k,) for p, k in plan.ks.items()}


def test_plan_rejects_bad_tables():
    sens = {"a": {2: 0.1, 4: 0.0}}
    with pytest.raises(ValueError, match="same paths"):
        budget.plan_bits(sens, {"b": {2: 1, 4: 2}}, 10)
    with pytest.raises(ValueError, match="no size for K"):
        budget.plan_bits(sens, {"a": {2: 1}}, 10)
    with pytest.raises(ValueError, match="NaN"):
        budget.plan_bits({"a": {2: float("nan")}}, {"a": {2: 1}}, 10)
    with pytest.raises(TypeError, match="budget_bytes"):
        budget.plan_bits(sens, {"a": {2: 1, 4: 2}}, 10.0)
    with pytest.raises(ValueError, match="budget_bytes"):
        budget.plan_bits(sens, {"a": {2: 1, 4: 2}}, 0)


# ----------------------------------------------------------------------------- sizes


@pytest.mark.parametrize("codebook_dtype", ["float32", "float16"])
def test_sizes_match_the_real_file(tmp_path, small_cnn, codebook_dtype):
    _, params = small_cnn
    ks = (2, 3, 4, 16, 256, 1024)  # 256 and 1024 exceed conv1's 144 weights: dropped there
    sizes = budget.packed_bytes_per_choice(params, KERNELS, ks, codebook_dtype=codebook_dtype)
    payload_only = budget.packed_bytes_per_choice(
        params, KERNELS, ks, codebook_dtype=codebook_dtype, include_overhead=False
    )
    assert sorted(sizes.choices["params/conv1/kernel"]) == [2, 3, 4, 16]
    assert sizes.float32_bytes == 4 * sum(np.size(v) for v in named_leaves(params).values())
    rng = np.random.default_rng(0)
    combos = [dict.fromkeys(KERNELS, 2), {p: max(sizes.choices[p]) for p in KERNELS}]
    combos += [{p: int(rng.choice(list(sizes.choices[p]))) for p in KERNELS} for _ in range(3)]
    for i, ks_plan in enumerate(combos):
        info = _save(tmp_path, params, ks_plan, codebook_dtype, name=f"m{i}.qareg")
        assert sizes.file_bytes(ks_plan) == info.file_bytes  # exact, container included
        assert payload_only.file_bytes(ks_plan) == info.payload_bytes
        # the container: 52 bytes of header and checksum + the JSON metadata
        assert info.file_bytes - info.payload_bytes == info.overhead_bytes
        modelled = sizes.fixed_bytes() + sum(sizes.choices[p][k] for p, k in ks_plan.items())
        assert 0 <= modelled - info.file_bytes <= 1  # the payload's digit count bound


def test_plan_fits_the_real_file_and_min_budget(tmp_path, small_cnn):
    _, params = small_cnn
    sizes = budget.packed_bytes_per_choice(params, KERNELS, ks=(2, 4, 8, 16))
    sens = {p: {k: 1.0 / k for k in (2, 4, 8, 16)} for p in KERNELS}
    smallest = sizes.file_bytes(dict.fromkeys(KERNELS, 2))  # the smallest real file
    with pytest.raises(ValueError, match=rf"budget_bytes={smallest - 1:,}.*{smallest:,} bytes"):
        budget.plan_bits(sens, sizes, smallest - 1)
    uniform4 = _save(tmp_path, params, dict.fromkeys(KERNELS, 4), name="u4.qareg").file_bytes
    for i, b in enumerate([smallest, uniform4, uniform4 + 3000]):
        plan = budget.plan_bits(sens, sizes, b)
        info = _save(tmp_path, params, plan.ks, name=f"p{i}.qareg")
        assert plan.total_bytes == info.file_bytes <= b
    assert budget.plan_bits(sens, sizes, smallest).ks == dict.fromkeys(KERNELS, 2)


# ----------------------------------------------------------------------------- sensitivity


def test_sensitivity_on_trained_cnn(trained):
    _, params, loss_fn = trained
    leaves = named_leaves(params)
    ks = {p: (2, 16, int(np.size(leaves[p]))) for p in KERNELS}  # K = n: exact
    sens = budget.layer_sensitivity(loss_fn, params, KERNELS, ks)
    assert list(sens) == KERNELS
    for p in KERNELS:
        n = int(np.size(leaves[p]))
        assert abs(sens[p][n]) < 1e-6, (p, sens[p])
        assert sens[p][2] > sens[p][16], (p, sens[p])
    # one vmap per layer gives the same table
    vec = budget.layer_sensitivity(loss_fn, params, KERNELS[-1:], (2, 16), vectorize=True)
    for p in KERNELS[-1:]:
        for k in (2, 16):
            assert vec[p][k] == pytest.approx(sens[p][k], abs=1e-5)


def test_sensitivity_bad_inputs(small_cnn):
    _, params = small_cnn
    with pytest.raises(ValueError, match="no K in"):
        budget.layer_sensitivity(lambda p: 0.0, params, ["params/conv1/kernel"], (256,))
    with pytest.raises(ValueError, match="scalar"):
        budget.layer_sensitivity(lambda p: jax.numpy.zeros(2), params, KERNELS, (2,))
    with pytest.raises(ValueError, match="finite"):
        budget.layer_sensitivity(lambda p: jax.numpy.nan, params, KERNELS, (2,))
    with pytest.raises(ValueError, match="no entry"):
        budget.layer_sensitivity(lambda p: 0.0, params, KERNELS, {KERNELS[0]: (2,)})


# ----------------------------------------------------------------------------- parse_budget


@pytest.mark.parametrize(
    ("spec", "want"),
    [
        (1234, 1234),
        ("1234", 1234),
        ("500kB", 500_000),
        ("1MB", 1_000_000),
        (" 1.5 MiB ", 1_572_864),
        ("2KiB", 2048),
        ("10b", 10),
        ("16x", 1_000),
        ("3x", 5_333),
        ("1gb", 10**9),
    ],
)
def test_parse_budget_good(spec, want):
    assert budget.parse_budget(spec, 16_000) == want


@pytest.mark.parametrize(
    ("spec", "original", "err", "match"),
    [
        ("", 100, ValueError, "cannot parse"),
        ("MB", 100, ValueError, "cannot parse"),
        ("1 TB", 100, ValueError, "cannot parse"),
        ("-1MB", 100, ValueError, "cannot parse"),
        ("0kB", 100, ValueError, "> 0"),
        ("0x", 100, ValueError, "> 0"),
        ("16x", None, ValueError, "original_bytes"),
        ("1000x", 100, ValueError, "below 1 byte"),
        ("0.5", 100, ValueError, "below 1 byte"),
        (0, 100, ValueError, "> 0"),
        (True, 100, TypeError, "budget"),
        (1.5, 100, TypeError, "budget"),
    ],
)
def test_parse_budget_bad(spec, original, err, match):
    with pytest.raises(err, match=match):
        budget.parse_budget(spec, original)


# ----------------------------------------------------------------------------- docs


def test_usage_snippet_runs():
    text = USAGE.read_text()
    start = text.index("## Choosing K per layer for a size budget")
    block = re.compile(r"```python\n(.*?)```", re.S).search(text, start)
    assert block is not None
    ns: dict = {}
    exec(compile(block.group(1), str(USAGE), "exec"), ns)  # noqa: S102
    plan = ns["plan"]
    assert plan.total_bytes <= plan.budget_bytes
    assert math.isfinite(plan.total_sensitivity)
