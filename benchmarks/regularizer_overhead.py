"""Train-step cost of each regularizer relative to the plain step, measured in one run.

For a CIFAR-size model (AlexNet by default, ~23M params, batch 128; or VGG16-BN,
~15M params; random data) it jit-compiles the plain Adam train step and, for every
regularizer and K, the same step with ``task_loss + penalty`` over all conv/dense
kernels (representatives in the param tree, updated by the same step). As in
the pipeline, the step is ``qareg_jax.pipeline.make_train_step`` (dropout masks, BatchNorm
statistics).
Plain and regularized steps are timed alternately so that machine noise hits both;
the ratio of medians and the compiled peak-memory ratio go to JSON. For softmin and
product, which sum a term over all K representatives for every weight, a row also
gets ``pairwise_floor_ratio``: the plain step plus one bare pass over those N x K
terms, a lower bound on the ratio of any implementation that evaluates each term at
least once (the backward pass needs them again). Results go to JSON
(``results/regularizer_overhead.json`` for AlexNet, ``..._<model>.json`` otherwise).

    python -m benchmarks.regularizer_overhead                            # AlexNet
    python -m benchmarks.regularizer_overhead --model vgg16 --batch 32   # VGG16-BN
    python -m benchmarks.regularizer_overhead --smoke                    # seconds, for tests
    python -m benchmarks.regularizer_overhead --smoke --model vgg16      # batch 2, nearest K=2
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

import qareg_jax as q
from benchmarks import common
from qareg_jax import regularizers as R
from qareg_jax.models import get_model
from qareg_jax.paths import named_leaves
from qareg_jax.pipeline import make_init_fn, make_train_step

REGULARIZERS = ("sine", "cosine", "nearest", "softmin", "product", "wells")
# Penalties defined as a sum over all K representatives for every weight, and the
# one transcendental each (weight, representative) pair needs: exp for softmin's
# log-sum-exp, log for product's geometric mean.
PAIRWISE = {"softmin": jnp.exp, "product": jnp.log}
MODELS = ("alexnet", "vgg16", "small")


def measure(model: Any, params: Any, specs: Any, model_state: Any, batch: Any):
    """A zero-argument call of the pipeline's compiled Adam step on ``params``
    (``{"model", "reps"}``; plain when ``specs`` is None), carrying its state, and the
    step's compiled peak bytes."""
    tx = optax.adam(1e-3)
    step = make_train_step(model, tx, specs)
    state = make_init_fn(tx)(params, model_state, 0)
    compiled = step.lower(state, batch).compile()
    mem = common.compiled_bytes(compiled)
    holder = {"state": compiled(state, batch)}  # warm-up
    jax.block_until_ready(holder["state"])

    def call():
        holder["state"] = compiled(holder["state"], batch)
        return holder["state"].step

    return call, mem


def pairwise_pass(tree: Any, specs: Any, fn: Callable[[jax.Array], jax.Array]):
    """A zero-argument call of one fused pass of ``fn(-(w - c_k)^2)`` over every
    (selected weight, representative) pair, block by block as the penalty runs.

    It is a lower bound on the work of a penalty that sums a transcendental term
    over all K representatives for every weight: its forward pass alone does this;
    its backward pass needs the terms again (with O(N) memory it cannot keep them).
    """
    leaves = named_leaves(tree["model"])
    kernels = [jnp.copy(leaves[path]) for path in specs]  # the step donates ``tree``
    reps = [jnp.copy(tree["reps"][path]) for path in specs]

    def one(w, c):
        blocks = R.common.as_blocks(w)

        def block(b):
            terms = lambda acc, ck: (acc + fn(-((b - ck) ** 2)), None)  # noqa: E731
            return jax.lax.scan(terms, jnp.zeros_like(b), c)[0].sum()

        return jax.lax.map(block, blocks).sum()

    compiled = jax.jit(lambda ws, cs: sum(one(w, c) for w, c in zip(ws, cs, strict=True)))
    jax.block_until_ready(compiled(kernels, reps))  # compile and warm up
    return lambda: compiled(kernels, reps)


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(int(s) for s in args.image_shape.split(","))
    model = get_model(args.model, num_classes=10)
    key = jax.random.PRNGKey(0)
    batch = {
        "image": jax.random.normal(key, (args.batch, *shape), jnp.float32),
        "label": jax.random.randint(key, (args.batch,), 0, 10),
    }
    variables = model.init({"params": key, "dropout": key}, batch["image"], train=False)
    variables = jax.tree.map(jnp.asarray, dict(variables))
    model_state = {k: v for k, v in variables.items() if k != "params"}
    n_params = sum(x.size for x in jax.tree.leaves(variables["params"]))
    plain = {"model": variables["params"], "reps": {}}
    plain_call, plain_mem = measure(model, plain, None, model_state, batch)
    rows = []
    for reg in args.regularizers.split(","):
        for k in (int(s) for s in args.ks.split(",")):
            params = variables["params"]
            specs = q.make_specs(params, k=k, regularizer=reg, init="quantile", lam=1e-3)
            tp, specs = q.attach(params, specs)
            pass_call = pairwise_pass(tp, specs, PAIRWISE[reg]) if reg in PAIRWISE else None
            reg_call, reg_mem = measure(model, tp, specs, model_state, batch)
            plain_t, reg_t, pass_t = [], [], []
            for _ in range(args.repeats):  # alternate so that noise hits both
                plain_t.append(common.time_call(plain_call))
                reg_t.append(common.time_call(reg_call))
                if pass_call is not None:
                    pass_t.append(common.time_call(pass_call))
            row = {
                "regularizer": reg,
                "k": k,
                "plain_ms": 1e3 * common.median(plain_t),
                "regularized_ms": 1e3 * common.median(reg_t),
                "time_ratio": common.median(reg_t) / common.median(plain_t),
                "plain_bytes": plain_mem,
                "regularized_bytes": reg_mem,
                "memory_ratio": (reg_mem / plain_mem) if plain_mem and reg_mem else None,
            }
            if pass_t:
                row["pairwise_pass_ms"] = 1e3 * common.median(pass_t)
                row["pairwise_floor_ratio"] = 1 + common.median(pass_t) / common.median(plain_t)
            rows.append(row)
            floor = f"  floor {row['pairwise_floor_ratio']:.3f}" if pass_t else ""
            print(
                f"{reg:8s} K={k:<4d} plain {row['plain_ms']:8.1f} ms  reg "
                f"{row['regularized_ms']:8.1f} ms  ratio {row['time_ratio']:.3f}  mem "
                f"{row['memory_ratio'] or float('nan'):.3f}{floor}",
                flush=True,
            )
    return {
        "benchmark": "regularizer_overhead",
        "machine": common.machine_info(),
        "config": {
            "model": args.model,
            "params": int(n_params),
            "batch": args.batch,
            "image_shape": shape,
            "regularizers": args.regularizers.split(","),
            "ks": [int(s) for s in args.ks.split(",")],
            "repeats": args.repeats,
            "optimizer": "adam",
            "selection": "all conv/dense kernels (default rule)",
            "init": "quantile",
            "timing": "median over alternating plain/regularized calls after one warm-up",
            "memory": "compiled memory_analysis: arguments + outputs + temps - aliases",
            "targets": {"time_ratio": 1.10, "memory_ratio": 1.2},
            "pairwise_floor_ratio": (
                "softmin/product rows: 1 + (one fused pass of exp (softmin) or log (product)"
                " of -(w - c_k)^2 over all K representatives of every selected weight) /"
                " plain step; a lower bound on their time ratio (the penalty's forward"
                " pass does at least this; its backward pass needs the terms again)"
            ),
        },
        "rows": rows,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=MODELS, help="default: alexnet (small with --smoke)")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-shape", default="32,32,3")
    p.add_argument("--ks", default="2,4,16,256")
    p.add_argument("--regularizers", default=",".join(REGULARIZERS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", help="default: results/regularizer_overhead[_MODEL].json")
    p.add_argument(
        "--smoke",
        action="store_true",
        help="for tests: the small CNN, or the --model given at batch 2, nearest K=2 only",
    )
    args = p.parse_args(argv)
    if args.smoke and args.model in (None, "small"):
        args.model, args.batch, args.image_shape, args.ks = "small", 8, "8,8,1", "2,40"
    elif args.smoke:
        args.batch, args.ks, args.regularizers = 2, "2", "nearest"
    args.model = args.model or "alexnet"
    args.repeats = 1 if args.smoke else args.repeats
    suffix = "" if args.model == "alexnet" else f"_{args.model}"
    args.out = args.out or str(common.RESULTS / f"regularizer_overhead{suffix}.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main(parse, run, argv)


if __name__ == "__main__":
    main()
