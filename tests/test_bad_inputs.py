"""Every input the library refuses, in one table: (what, call, exception type, message part).

The rule (``qareg_jax/validation.py``): the wrong type is a ``TypeError``; the right
type with a bad value is a ``ValueError``; messages name the argument (or the leaf)
and what is allowed. Add a row when you add a refusal. The pipeline and CLI
(``qareg_jax.pipeline``, ``qareg_jax.cli``) refuse their own inputs in their tests.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable

import jax.numpy as jnp
import numpy as np
import optax
import pytest

import qareg_jax as q
from qareg_jax import codebook, compress, validation
from qareg_jax import quantizers as Q
from qareg_jax import regularizers as R
from qareg_jax.finetune import quantized_finetune
from qareg_jax.penalty import elementwise
from qareg_jax.regularizers import Regularizer
from qareg_jax.snap import assign, check_snappable, snap

_RNG = np.random.default_rng(0)
W = jnp.asarray(_RNG.normal(size=(6, 6)), jnp.float32)  # 36 weights
# Layers named so that substrings and case mistakes are easy to make.
TREE = {name: {"kernel": W + i, "bias": jnp.zeros(6)} for i, name in enumerate(("fc1", "fc10"))}
NAN_W = W.at[2, 3].set(jnp.nan)
SPECS = q.make_specs(TREE, k=3, regularizer="nearest")
TP, RSPECS = q.attach(TREE, SPECS)
STATIC = {"fc1/kernel": q.QuantSpec(k=3, regularizer="sine")}  # no interval yet
SNAN = {"fc1/kernel": q.QuantSpec(k=3, lam=lambda s: jnp.where(s < 7, 1.0, jnp.nan))}
RAMP = optax.linear_schedule(1.0, -1.0, 10)  # negative from step 6
NOWHERE = "/nonexistent-qareg-dir/m.qareg"  # a save that got past validation fails here
PARAMS = {"a": {"kernel": np.asarray(W)}, "a2": {"bias": np.ones(3, np.float32)}}
CB = np.array([-1.0, 0.0, 1.0], np.float32)
A = np.zeros((6, 6), np.uint8)
QUANT = {"a/kernel": (CB, A)}
TOY = dict(elementwise=lambda w, reps, spec: w * 0, dynamic=True, default_lam=1.0)
Row = tuple[str, Callable[[], object], type[BaseException], str]

ROWS: list[Row] = [
    # ------------------------------------------------------------------ QuantSpec fields
    ("k below 2", lambda: q.QuantSpec(k=1), ValueError, "k must be an integer >= 2"),
    ("k a float", lambda: q.QuantSpec(k=3.0), TypeError, "k must be an integer >= 2"),
    ("k a bool", lambda: q.QuantSpec(k=True), TypeError, "k must be an integer >= 2"),
    ("k above 2**32", lambda: q.QuantSpec(k=2**32 + 1), ValueError, "k must be <= 2**32"),
    (
        "unknown regularizer",
        lambda: q.QuantSpec(regularizer="cubic"),
        ValueError,
        "unknown regularizer 'cubic'; allowed: sine, cosine, ",
    ),
    (
        "regularizer not a str",
        lambda: q.QuantSpec(regularizer=None),
        TypeError,
        "regularizer must be a str",
    ),
    ("negative lam", lambda: q.QuantSpec(lam=-1.0), ValueError, "lam must be a finite number >= 0"),
    ("NaN lam", lambda: q.QuantSpec(lam=float("nan")), ValueError, "lam must be a finite"),
    ("lam a str", lambda: q.QuantSpec(lam="big"), TypeError, "lam must be"),
    (
        "schedule negative at step 0",
        lambda: q.QuantSpec(lam=optax.constant_schedule(-2.0)),
        ValueError,
        "lam schedule must be >= 0",
    ),
    (
        "schedule NaN at step 0",
        lambda: q.QuantSpec(lam=lambda s: jnp.nan),
        ValueError,
        "lam schedule must be >= 0 and finite",
    ),
    ("lo >= hi", lambda: q.QuantSpec(lo=1.0, hi=0.5), ValueError, "lo < hi"),
    ("lo without hi", lambda: q.QuantSpec(lo=0.0), ValueError, "lo and hi must be given together"),
    ("tau 0", lambda: q.QuantSpec(tau=0.0), ValueError, "tau must be a finite number > 0"),
    ("negative sigma", lambda: q.QuantSpec(sigma=-1.0), ValueError, "sigma must be"),
    (
        "unknown init",
        lambda: q.QuantSpec(init="random"),
        ValueError,
        "unknown init 'random'; allowed: grid, quantile, kmeans",
    ),
    ("unknown interval", lambda: q.QuantSpec(interval="iqr"), ValueError, "unknown interval 'iqr'"),
    (
        "unknown reduction",
        lambda: q.QuantSpec(reduction="max"),
        ValueError,
        "unknown reduction 'max'",
    ),
    (
        "unknown wells_mode",
        lambda: q.QuantSpec(wells_mode="min"),
        ValueError,
        "unknown wells_mode 'min'",
    ),
    # ------------------------------------------------------------- lambda over the run
    (
        "schedule negative later",
        lambda: validation.check_schedule(RAMP, 20),
        ValueError,
        "at step 6",
    ),
    (
        "schedule NaN later, by leaf",
        lambda: codebook.check_schedules(SNAN, 100),
        ValueError,
        "lam of 'fc1/kernel' is nan at step 7",
    ),
    ("steps 0", lambda: validation.check_schedule(1.0, 0), ValueError, "steps must be an int >= 1"),
    ("steps a float", lambda: validation.check_schedule(1.0, 2.5), TypeError, "steps must be"),
    (
        "penalty at a concrete bad step",
        lambda: q.penalty(*q.attach(TREE, SNAN), 8),
        ValueError,
        "lam schedule gives nan at step 8",
    ),
    (
        "schedule without a step",
        lambda: q.penalty(*q.attach(TREE, SNAN)),
        ValueError,
        "step is required",
    ),
    # ----------------------------------------------------------------------- selection
    (
        "include matches nothing",
        lambda: q.select(TREE, include="nothing_here"),
        ValueError,
        "matches no leaf",
    ),
    (
        "selected integer leaf",
        lambda: q.select({"kernel": jnp.ones((2, 2), jnp.int32)}),
        TypeError,
        "must be floating point",
    ),
    (
        "include a set",
        lambda: q.select(TREE, include={"fc1"}),
        TypeError,
        "include must be a regex str or a list/tuple of regex str",
    ),
    (
        "include an empty list",
        lambda: q.select(TREE, include=[]),
        ValueError,
        "include is an empty list",
    ),
    (
        "include an invalid regex",
        lambda: q.select(TREE, include="fc1["),
        ValueError,
        "include holds an invalid regex",
    ),
    ("exclude an int", lambda: q.select(TREE, exclude=5), TypeError, "exclude must be a regex str"),
    (
        "predicate not callable",
        lambda: q.select(TREE, predicate=3),
        TypeError,
        "predicate must be a callable",
    ),
    (
        "paths one string",
        lambda: codebook.resolve_paths(TREE, "fc1/kernel"),
        TypeError,
        "not one string",
    ),
    ("paths empty", lambda: codebook.resolve_paths(TREE, []), ValueError, "paths is empty"),
    (
        "paths naming a missing leaf",
        lambda: codebook.resolve_paths(TREE, ["fc2/kernel"]),
        ValueError,
        "paths name leaves that params does not have",
    ),
    # ----------------------------------------------------------------------- overrides
    (
        "override key in the wrong case",
        lambda: q.make_specs(TREE, overrides={"FC1": {}}),
        ValueError,
        "['FC1'] match no selected leaf",
    ),
    (
        "override key a substring",
        lambda: q.make_specs(TREE, overrides={"fc": {}}),
        ValueError,
        "the selected paths are: fc1/kernel, fc10/kernel",
    ),
    (
        "override key of an unselected leaf",
        lambda: q.make_specs(TREE, overrides={"fc1/bias": {}}),
        ValueError,
        "match no selected leaf",
    ),
    (
        "overrides skip everything",
        lambda: q.make_specs(TREE, overrides={"kernel": None}),
        ValueError,
        "skipped every selected leaf",
    ),
    (
        "override key not a str",
        lambda: q.make_specs(TREE, overrides={1: {}}),
        TypeError,
        "overrides keys must be path strings",
    ),
    (
        "override key empty",
        lambda: q.make_specs(TREE, overrides={"/": {}}),
        ValueError,
        "at least one path segment",
    ),
    (
        "override change not a dict",
        lambda: q.make_specs(TREE, overrides={"fc1": 3}),
        TypeError,
        "overrides['fc1'] must be a dict of QuantSpec fields or None",
    ),
    (
        "overrides a list",
        lambda: q.make_specs(TREE, overrides=[("fc1", {})]),
        TypeError,
        "overrides must be a dict",
    ),
    ("unknown spec field", lambda: q.make_specs(TREE, colour=1), TypeError, "colour"),
    # ------------------------------------------------------------- k vs the leaf's size
    (
        "k above the leaf size (make_specs)",
        lambda: q.make_specs(TREE, k=64),
        ValueError,
        "k=64 levels for leaf 'fc1/kernel', which has only 36 weights",
    ),
    (
        "k above the leaf size (override)",
        lambda: q.make_specs(TREE, overrides={"fc10": dict(k=37)}),
        ValueError,
        "k=37 levels for leaf 'fc10/kernel'",
    ),
    (
        "k above the leaf size (attach)",
        lambda: q.attach(TREE, {"fc1/kernel": q.QuantSpec(k=37)}),
        ValueError,
        "k=37 levels for leaf 'fc1/kernel'",
    ),
    (
        "k above the leaf size (quantize_tree)",
        lambda: Q.quantize_tree(PARAMS, ["a/kernel"], 64),
        ValueError,
        "k=64 levels for leaf 'a/kernel'",
    ),
    # -------------------------------------------------------------------------- attach
    (
        "attach a NaN leaf",
        lambda: q.attach({"w": {"kernel": NAN_W}}, {"w/kernel": q.QuantSpec()}),
        ValueError,
        "leaf 'w/kernel' holds NaN or inf",
    ),
    (
        "attach a missing leaf",
        lambda: q.attach(TREE, {"fc9/kernel": q.QuantSpec()}),
        ValueError,
        "specs name leaves that params does not have",
    ),
    ("attach no specs", lambda: q.attach(TREE, {}), ValueError, "specs is empty"),
    (
        "attach a constant leaf",
        lambda: q.attach({"c": {"kernel": jnp.ones((3, 3))}}, {"c/kernel": q.QuantSpec()}),
        ValueError,
        "interval of leaf 'c/kernel' is empty",
    ),
    (
        "attach an integer leaf",
        lambda: q.attach({"i": jnp.ones((3, 3), jnp.int32)}, {"i": q.QuantSpec()}),
        TypeError,
        "leaf 'i' must be floating point",
    ),
    (
        "percentile out of (0, 50)",
        lambda: q.attach(
            TREE, {"fc1/kernel": q.QuantSpec(interval="percentile", interval_param=60.0)}
        ),
        ValueError,
        "interval_param (percentile) must be in (0, 50)",
    ),
    # ------------------------------------------------------------ penalty / tree checks
    (
        "reps of the wrong shape",
        lambda: q.penalty({**TP, "reps": {**TP["reps"], "fc1/kernel": jnp.zeros(4)}}, RSPECS),
        ValueError,
        "expected (3,)",
    ),
    (
        "reps missing",
        lambda: q.penalty({**TP, "reps": {}}, RSPECS),
        ValueError,
        "no representatives for",
    ),
    (
        "reps without a spec",
        lambda: q.penalty({**TP, "reps": {**TP["reps"], "x": jnp.zeros(3)}}, RSPECS),
        ValueError,
        "without a dynamic spec",
    ),
    ("not a train tree", lambda: q.penalty(TREE, RSPECS), ValueError, 'keys "model" and "reps"'),
    (
        "static spec without interval",
        lambda: q.penalty({"model": TREE, "reps": {}}, STATIC),
        ValueError,
        "has no interval; resolve it with attach()",
    ),
    (
        "dynamic penalty without reps",
        lambda: elementwise(W, RSPECS["fc1/kernel"]),
        ValueError,
        "needs representatives",
    ),
    # -------------------------------------------------------------------- regularizers
    ("sine k 1", lambda: R.sine(W, 1, 0.0, 1.0), ValueError, "k must be an integer >= 2"),
    ("sine k a float", lambda: R.sine(W, 2.0, 0.0, 1.0), TypeError, "k must be an integer >= 2"),
    ("cosine lo > hi", lambda: R.cosine(W, 3, 1.0, 0.0), ValueError, "lo < hi"),
    ("softmin tau 0", lambda: R.softmin(W, CB, 0.0), ValueError, "tau must be"),
    ("wells sigma < 0", lambda: R.wells(W, CB, -1.0), ValueError, "sigma must be"),
    (
        "wells unknown mode",
        lambda: R.wells(W, CB, 0.1, mode="min"),
        ValueError,
        "unknown mode 'min'; allowed: max, mean",
    ),
    (
        "integer weights",
        lambda: R.nearest(jnp.arange(3), CB),
        TypeError,
        "w must be a floating-point array",
    ),
    (
        "integer reps",
        lambda: R.nearest(W, jnp.array([0, 1])),
        TypeError,
        "reps must be a floating-point array",
    ),
    ("2-D reps", lambda: R.nearest(W, jnp.ones((2, 2))), ValueError, "reps must have shape (K,)"),
    ("one rep", lambda: R.softmin(W, jnp.ones(1), 0.1), ValueError, "K >= 2"),
    (
        "unknown all-reps kind",
        lambda: R.all_reps_total(W, CB, "cubic", 0.1),
        ValueError,
        "unknown kind 'cubic'",
    ),
    (
        "static levels of a dynamic name",
        lambda: R.static_levels("nearest", 3, 0.0, 1.0),
        ValueError,
        "unknown static regularizer 'nearest'",
    ),
    ("unknown registry name", lambda: R.get("nope"), ValueError, "unknown regularizer 'nope'"),
    (
        "unregister an unknown name",
        lambda: R.unregister("nope"),
        ValueError,
        "unknown regularizer 'nope'",
    ),
    (
        "register a taken name",
        lambda: R.register(Regularizer(name="nearest", cost="O(N)", **TOY)),
        ValueError,
        "'nearest' is already registered",
    ),
    ("register a non-entry", lambda: R.register("toy"), TypeError, "must be a Regularizer"),
    (
        "entry with an unknown cost",
        lambda: Regularizer(name="x", cost="O(1)", **TOY),
        ValueError,
        "unknown cost 'O(1)'",
    ),
    (
        "static entry without levels",
        lambda: Regularizer(name="x", cost="O(N)", **{**TOY, "dynamic": False}),
        ValueError,
        "a static entry needs levels",
    ),
    (
        "entry without a name",
        lambda: Regularizer(name="", cost="O(N)", **TOY),
        TypeError,
        "name must be a non-empty str",
    ),
    # ---------------------------------------------------------------------------- snap
    (
        "snap NaN weights",
        lambda: snap({**TP, "model": {**TREE, "fc1": {**TREE["fc1"], "kernel": NAN_W}}}, RSPECS),
        ValueError,
        "selected weight leaf 'fc1/kernel' holds 1 NaN/inf",
    ),
    (
        "snap NaN levels",
        lambda: snap({**TP, "reps": {**TP["reps"], "fc10/kernel": jnp.full(3, jnp.inf)}}, RSPECS),
        ValueError,
        "levels (reps) of leaf 'fc10/kernel' holds 3 NaN/inf",
    ),
    (
        "check_snappable NaN weights",
        lambda: check_snappable({**TP, "model": {**TREE, "fc10": {"kernel": NAN_W}}}, RSPECS),
        ValueError,
        "'fc10/kernel' holds 1 NaN/inf",
    ),
    (
        "snap reps of another dtype",
        lambda: snap(
            {
                **TP,
                "reps": {**TP["reps"], "fc1/kernel": TP["reps"]["fc1/kernel"].astype(jnp.bfloat16)},
            },
            RSPECS,
        ),
        TypeError,
        "has dtype bfloat16 but its weight has dtype float32",
    ),
    (
        "index dtype too small",
        lambda: snap(
            {"model": TREE, "reps": {}},
            {"fc1/kernel": q.QuantSpec(k=300, regularizer="sine", lo=0.0, hi=1.0)},
            index_dtype=jnp.uint8,
        ),
        ValueError,
        "cannot hold index 299",
    ),
    (
        "assign a float index dtype",
        lambda: assign(W, CB, index_dtype=jnp.float32),
        TypeError,
        "integer dtype",
    ),
    (
        "assign 2-D levels",
        lambda: assign(W, jnp.zeros((2, 2))),
        ValueError,
        "levels must have shape (K,)",
    ),
    (
        "assign integer weights",
        lambda: assign(jnp.ones(3, jnp.int32), CB),
        TypeError,
        "w must be a floating",
    ),
    (
        "finetune unknown rep_grad",
        lambda: quantized_finetune(optax.sgd(0.1), RSPECS, rep_grad="median"),
        ValueError,
        "rep_grad",
    ),
    # ---------------------------------------------------------------------- compress
    (
        "pack an index >= k",
        lambda: compress.pack_indices(np.array([0, 4]), 4),
        ValueError,
        "assignments must lie in [0, 4)",
    ),
    (
        "pack a negative index",
        lambda: compress.pack_indices(np.array([-1, 0]), 4),
        ValueError,
        "[0, 4)",
    ),
    (
        "pack float indices",
        lambda: compress.pack_indices(np.array([0.0, 1.0]), 4),
        TypeError,
        "assignments must be integers",
    ),
    (
        "pack k 1",
        lambda: compress.pack_indices(np.array([0]), 1),
        ValueError,
        "k must be an integer >= 2",
    ),
    (
        "unpack the wrong byte count",
        lambda: compress.unpack_indices(b"\x00\x00", 4, 9),
        ValueError,
        "cannot hold exactly",
    ),
    (
        "unpack an index >= k",
        lambda: compress.unpack_indices(b"\x03", 3, 1),
        ValueError,
        "index >= k",
    ),
    (
        "negative Huffman counts",
        lambda: compress.huffman_code_lengths(np.array([1, -1])),
        ValueError,
        "counts must be >= 0",
    ),
    (
        "float Huffman counts",
        lambda: compress.huffman_code_lengths(np.array([1.5, 2.0])),
        ValueError,
        "1-D integer",
    ),
    (
        "save over an existing file",
        lambda: compress.save(__file__, PARAMS, QUANT),
        FileExistsError,
        "pass overwrite=True",
    ),
    (
        "save into a missing directory",
        lambda: compress.save(NOWHERE, PARAMS, QUANT),
        FileNotFoundError,
        f"cannot save {NOWHERE}",
    ),
    (
        "save a path not in params",
        lambda: compress.save(NOWHERE, PARAMS, {"b/kernel": (CB, A)}),
        ValueError,
        "quantized paths not in params",
    ),
    (
        "save assignments of the wrong shape",
        lambda: compress.save(NOWHERE, PARAMS, {"a/kernel": (CB, A[:3])}),
        ValueError,
        "assignments shape",
    ),
    (
        "save an integer codebook dtype",
        lambda: compress.save(NOWHERE, PARAMS, QUANT, codebook_dtype="int8"),
        ValueError,
        "codebook_dtype must be one of",
    ),
    (
        "save a codebook overflowing float16",
        lambda: compress.save(
            NOWHERE, PARAMS, {"a/kernel": (CB * 1e6, A)}, codebook_dtype="float16"
        ),
        ValueError,
        "codebook is not finite in float16",
    ),
    (
        "save a NaN codebook",
        lambda: compress.save(NOWHERE, PARAMS, {"a/kernel": (CB * np.nan, A)}),
        ValueError,
        "a/kernel: codebook is not finite",
    ),
    (
        "save NaN raw weights",
        lambda: compress.save(
            NOWHERE, {**PARAMS, "a2": {"bias": np.full(3, np.nan, np.float32)}}, QUANT
        ),
        ValueError,
        "leaf 'a2/bias' holds NaN or inf",
    ),
    (
        "save an index out of the codebook",
        lambda: compress.save(NOWHERE, PARAMS, {"a/kernel": (CB, A + 3)}),
        ValueError,
        "assignments must lie in [0, 3)",
    ),
    (
        "save an integer leaf quantized",
        lambda: compress.save(
            NOWHERE, {"n": np.zeros(2, np.int32)}, {"n": (CB, np.zeros(2, np.uint8))}
        ),
        ValueError,
        "only float leaves can be quantized",
    ),
    (
        "save clashing paths",
        lambda: compress.save(NOWHERE, {"a": np.ones(2), "a/b": np.ones(2)}, {}),
        ValueError,
        "runs through",
    ),
    ("save nothing", lambda: compress.save(NOWHERE, {}, {}), ValueError, "params has no leaves"),
    (
        "load a file that is not ours",
        lambda: compress.load(__file__),
        ValueError,
        "not a qareg_jax file",
    ),
    # -------------------------------------------------------------------- quantizers
    (
        "quantize_tree a NaN leaf",
        lambda: Q.quantize_tree({"a": np.asarray(NAN_W)}, ["a"], 4),
        ValueError,
        "leaf 'a' contains NaN or inf",
    ),
    (
        "quantize_tree k missing a path",
        lambda: Q.quantize_tree(PARAMS, ["a/kernel"], {"x": 4}),
        ValueError,
        "k has no entry for paths ['a/kernel']",
    ),
    (
        "quantize_tree a missing path",
        lambda: Q.quantize_tree(PARAMS, ["c"], 4),
        ValueError,
        "paths not in the tree: ['c']",
    ),
    (
        "quantize_tree duplicate paths",
        lambda: Q.quantize_tree(PARAMS, ["a/kernel"] * 2, 4),
        ValueError,
        "paths contains duplicates",
    ),
    (
        "quantize_tree paths one string",
        lambda: Q.quantize_tree(PARAMS, "a/kernel", 4),
        TypeError,
        "list of path strings",
    ),
    (
        "quantize_tree pws without seed",
        lambda: Q.quantize_tree(PARAMS, ["a/kernel"], 4, "pws"),
        ValueError,
        "pws needs an explicit seed",
    ),
    (
        "quantize_tree unknown method",
        lambda: Q.quantize_tree(PARAMS, ["a/kernel"], 4, "lloyd"),
        ValueError,
        "unknown method 'lloyd'",
    ),
    (
        "quantize_tree method an int",
        lambda: Q.quantize_tree(PARAMS, ["a/kernel"], 4, 3),
        TypeError,
        "method must be a name or a callable",
    ),
    (
        "cws NaN",
        lambda: Q.cws(np.array([0.0, np.nan], np.float32), 2),
        ValueError,
        "w contains NaN or inf",
    ),
    ("cws empty", lambda: Q.cws(np.zeros(0, np.float32), 2), ValueError, "w is empty"),
    ("cws integers", lambda: Q.cws(np.arange(10), 2), TypeError, "w must be a float array"),
    ("cws k 1", lambda: Q.cws(np.asarray(W), 1), ValueError, "k must be an integer >= 2"),
    ("cws k a str", lambda: Q.cws(np.asarray(W), "2"), TypeError, "k must be an int"),
    (
        "pws seed None",
        lambda: Q.pws(np.asarray(W), 4, seed=None),
        ValueError,
        "pws needs an explicit seed",
    ),
    (
        "pws seed a float",
        lambda: Q.pws(np.asarray(W), 4, seed=1.5),
        TypeError,
        "seed must be an int",
    ),
    (
        "kmeans unknown init",
        lambda: Q.kmeans_1d(np.asarray(W), 4, init="random"),
        ValueError,
        "unknown init",
    ),
    (
        "kmeans init of the wrong shape",
        lambda: Q.kmeans_1d(np.asarray(W), 4, init=[0.0, 1.0]),
        ValueError,
        "shape (4,)",
    ),
    (
        "kmeans max_iter 0",
        lambda: Q.kmeans_1d(np.asarray(W), 4, max_iter=0),
        ValueError,
        "max_iter",
    ),
    (
        "kmeans max_iter a float",
        lambda: Q.kmeans_1d(np.asarray(W), 4, max_iter=10.0),
        TypeError,
        "max_iter",
    ),
    (
        "kmeans negative tol",
        lambda: Q.kmeans_1d(np.asarray(W), 4, tol=-1.0),
        ValueError,
        "tol must be >= 0",
    ),
    (
        "ecsq negative mu",
        lambda: Q.ecsq(np.asarray(W), 4, mu=-1.0),
        ValueError,
        "mu must be a finite number >= 0",
    ),
    ("binary with 3 levels", lambda: Q.binary_ls(np.asarray(W), 3), ValueError, "exactly 2 levels"),
    (
        "weighted k-means weights of the wrong shape",
        lambda: Q.kmeans_1d_weighted(np.asarray(W), np.ones(3), 4),
        ValueError,
        "weights shape",
    ),
    (
        "weighted k-means negative weights",
        lambda: Q.kmeans_1d_weighted(np.asarray(W).ravel(), -np.ones(36), 4),
        ValueError,
        "weights must be >= 0",
    ),
    (
        "assign to an unsorted codebook",
        lambda: Q.assign_nearest(np.asarray(W), [1.0, 0.0]),
        ValueError,
        "sorted ascending",
    ),
]


def test_the_table_has_one_row_per_refusal():
    names = [row[0] for row in ROWS]
    assert len(names) == len(set(names)), "duplicate descriptions"
    for _, _, error, part in ROWS:
        assert error in (TypeError, ValueError, FileExistsError, FileNotFoundError) and part


@pytest.mark.parametrize(("what", "call", "error", "part"), ROWS, ids=[row[0] for row in ROWS])
def test_refused(what: str, call: Callable[[], object], error: type, part: str):
    with pytest.raises(error) as info:
        call()
    assert type(info.value) is error, f"{what}: {type(info.value).__name__}, not {error.__name__}"
    assert part in str(info.value), f"{what}: {info.value}"


def test_nothing_was_written_by_the_refused_saves():
    assert not pathlib.Path(NOWHERE).parent.exists()
