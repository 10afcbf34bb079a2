"""Train-step cost of every pipeline method relative to the plain step, measured in one run.

For a CIFAR-shaped model (``cifar_vgg`` by default, batch 128, random data, Adam as the
pipeline builds it: ``pipeline.optim.make_optimizer``) it jit-compiles one training step
per method and K, each built with the functions the pipeline's stages use
(``qareg_jax.pipeline.stages``):

- ``plain``: the pretraining step, ``make_train_step(model, tx)``;
- every regularizer entry (``--regularizers``): the regularized phase's step,
  ``recipe_step(model, tx, specs)`` with the specs of ``stages._reg_specs``;
  an entry ``NAME[:REDUCTION[:NORMALIZE]]`` sets ``Config.reduction`` and
  ``Config.penalty_normalize`` (default: nearest with the scale-free ``sum`` /
  ``spacing``, nearest with the defaults, softmin with the defaults);
- with ``--table-recipe``, every regularizer entry is timed only as the paper tables run it
  (STE with the penalty beside it, below), not as the penalty alone nor as the hybrid;
- the hybrid's STE part (first regularizer entry, ``ste_last`` 0.2): the same
  ``recipe_step`` with ``switch``, its state moved to the switch step, so the STE
  forward net is on (and lambda is 0, as in the pipeline without ``ste_keep_lam``);
- STE with the penalty beside it (first regularizer entry, ``ste_last=1`` with
  ``ste_keep_lam``, the recipe's damped STE): the same ``recipe_step`` from step 0;
- ``ste``: ``make_train_step(ste_loss(model, specs), tx)`` on ``ste.init``'s k-means
  levels (the optional re-clustering hook, ``ste_recluster_every``, is not timed);
- ``dkm``: ``make_train_step(dkm_loss(model, dkm_taus(centroids, 0.3), 3), tx)`` on
  ``dkm_init``'s k-means centroids.

All steps are timed in turn, round after round (the order rotated each round), so that
machine noise hits all of them; in each round a step is called once untimed, then timed
``--calls`` times, so that a step's time is its steady cost in a training loop, not the
first call after another method's; ``time_ratio`` is the method's median over the plain
step's median, and ``memory_ratio`` the compiled peak-memory ratio. Results go to
``results/method_cost_<model>.json``.

    python -m benchmarks.method_cost                     # cifar_vgg, batch 128, K 2 and 4
    python -m benchmarks.method_cost --model alexnet --ks 2
    python -m benchmarks.method_cost --model alexnet --table-recipe  # the paper table's
    python -m benchmarks.method_cost --smoke             # seconds, for tests
"""

from __future__ import annotations

import argparse
import dataclasses
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from qareg_jax.codebook import attach
from qareg_jax.contrib import dkm
from qareg_jax.models import MODELS, get_model
from qareg_jax.pipeline.config import Config
from qareg_jax.pipeline.optim import make_optimizer
from qareg_jax.pipeline.recipe import recipe_step, ste_switch
from qareg_jax.pipeline.records import Stage
from qareg_jax.pipeline.stages import (
    _paths,
    _reg_specs,
    dkm_loss,
    dkm_taus,
    stage_name,
    ste_loss,
)
from qareg_jax.pipeline.steps import init_variables, make_init_fn, make_train_step
from qareg_jax.qat import ste

REGULARIZERS = "nearest:sum:spacing,nearest,softmin"
# The paper tables' regularizers at their scale (reduction "sum", penalty_normalize "unit").
TABLE_REGULARIZERS = ",".join(
    f"{r}:sum:unit" for r in ("sine", "cosine", "nearest", "softmin", "product", "wells")
)
STE_LAST = 0.2
DKM_TAU_FRAC = 0.3
DKM_ITERS = 3
# The phase length the schedules (cosine learning rate, lambda ramp, the hybrid's switch)
# are built for; a step's cost does not depend on it.
TOTAL_STEPS = 10_000


def parse_entry(entry: str) -> tuple[str, dict[str, Any], str]:
    """``"nearest:sum:spacing"`` -> ``("nearest", Config fields, "nearest (sum, spacing)")``."""
    name, *opts = entry.split(":")
    if len(opts) > 2:
        raise ValueError(f"regularizer entry {entry!r}: NAME[:REDUCTION[:NORMALIZE]]")
    fields: dict[str, Any] = {}
    if opts:
        fields["reduction"] = opts[0]
    if len(opts) == 2:
        fields["penalty_normalize"] = opts[1]
    label = f"{name} ({', '.join(opts)})" if opts else name
    return name, fields, label


def compile_step(
    step_fn: Callable, state: Any, batch: Any
) -> tuple[Callable[..., Any], int | None]:
    """A call of ``step_fn`` (a jitted, state-donating train step) carrying its state,
    after one warm-up call, on ``batch`` or the batch it is given; and the compiled step's
    peak bytes."""
    compiled = step_fn.lower(state, batch).compile()
    mem = common.compiled_bytes(compiled)
    holder = {"state": compiled(state, batch)}  # warm-up
    jax.block_until_ready(holder["state"])

    def call(other: Any = None) -> Any:
        holder["state"] = compiled(holder["state"], batch if other is None else other)
        return holder["state"].step

    return call, mem


def build_steps(
    args: argparse.Namespace, model: Any, params: Any, model_state: Any, batch: Any
) -> list[dict[str, Any]]:
    """Every method's ``{"method", "kind", "k"?, "step", "state"}``, built as the stages
    build them."""
    entries = [parse_entry(e) for e in args.regularizers.split(",")]
    base = Config(
        model=args.model,
        dataset="cifar10",  # only validated: no data is loaded
        batch_size=args.batch,
        regularizers=tuple(dict.fromkeys(name for name, _, _ in entries)),
        ks=tuple(args.ks),
        qat=("ste", "dkm"),
        dkm_iters=DKM_ITERS,
        dkm_tau_frac=DKM_TAU_FRAC,
    )
    total = TOTAL_STEPS
    seed = np.uint32(0)
    cases = []

    # Pretraining (stages.pretrain).
    tx = make_optimizer(base, base.pretrain_lr, total)
    state = make_init_fn(tx)({"model": params, "reps": {}}, model_state, seed)
    cases.append({"method": "plain", "kind": "pretrain", "step": make_train_step(model, tx)})
    cases[-1]["state"] = state

    for k in args.ks:
        # Regularized phases and the hybrid's STE part (stages.regularized_stage).
        for i, (name, fields, label) in enumerate(entries):
            # The first entry also as the hybrid and as STE with the penalty kept beside it.
            hybrids = ((0.0, False), (STE_LAST, False), (1.0, True)) if i == 0 else ((0.0, False),)
            if args.table_recipe:  # what the paper tables run: every penalty beside STE
                hybrids = ((1.0, True),)
            for ste_last, keep in hybrids:
                cfg = dataclasses.replace(base, ste_last=ste_last, ste_keep_lam=keep, **fields)
                ctx = types.SimpleNamespace(config=cfg)  # _reg_specs reads ctx.config only
                stage = Stage(stage_name(name, k, False, ste_last), "regularizer", name, k, False)
                tree, specs = attach(params, _reg_specs(ctx, params, stage, total))
                tx = make_optimizer(
                    cfg, cfg.reg_lr, total, freeze_reps=False, reps_lr=cfg.reps_lr,
                    name=cfg.reg_optimizer,
                )  # fmt: skip
                state = make_init_fn(tx)(tree, model_state, seed)
                switch = ste_switch(cfg, total)
                step = recipe_step(model, tx, specs, switch=switch, anneal=None)
                if keep:  # STE from step 0, the penalty's lambda nonzero throughout
                    method, kind = f"{label} + ste1 (penalty kept)", "STE + penalty"
                elif switch is not None:  # time the STE part: the step counter past the switch
                    state = state.replace(step=jnp.asarray(switch, jnp.int32))
                    method, kind = f"{label} + ste{ste_last:g}", "hybrid STE part"
                else:
                    method, kind = label, "regularizer"
                cases.append({"method": method, "kind": kind, "k": k, "step": step})
                cases[-1]["state"] = state

        # STE (stages.train_ste; no edge_layers_k).
        tree, specs = ste.init(params, _paths(base, params, k), k=k)
        tx = make_optimizer(base, base.reg_lr, total, reps_lr=base.reps_lr, name=base.reg_optimizer)
        state = make_init_fn(tx)(tree, model_state, seed)
        step = make_train_step(ste_loss(model, specs), tx)
        cases.append({"method": "ste", "kind": "qat", "k": k, "step": step, "state": state})

        # DKM (stages.dkm_stage).
        cents = dkm.dkm_init(params, _paths(base, params, k), k, init="kmeans")
        tx = make_optimizer(base, base.reg_lr, total, name=base.reg_optimizer)
        tree, dkm_state = {"model": params, "reps": {}}, {**model_state, "dkm": cents}
        state = make_init_fn(tx)(tree, dkm_state, seed)
        loss = dkm_loss(model, dkm_taus(cents, base.dkm_tau_frac), base.dkm_iters)
        step = make_train_step(loss, tx)
        cases.append({"method": "dkm", "kind": "qat", "k": k, "step": step, "state": state})
    return cases


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(int(s) for s in args.image_shape.split(","))
    model = get_model(args.model, num_classes=10)
    key = jax.random.PRNGKey(0)
    batch = {
        "image": jax.random.normal(key, (args.batch, *shape), jnp.float32),
        "label": jax.random.randint(key, (args.batch,), 0, 10),
    }
    variables = dict(init_variables(model, shape, 0))
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    n_params = sum(x.size for x in jax.tree.leaves(params))
    cases = build_steps(args, model, params, model_state, batch)
    for case in cases:
        case["call"], case["bytes"] = compile_step(case.pop("step"), case.pop("state"), batch)
        print(f"compiled {case['method']} K={case.get('k', '-')}", flush=True)
    times: list[list[float]] = [[] for _ in cases]
    for r in range(args.repeats):  # every step in turn, so that noise hits all of them
        order = list(range(len(cases)))
        order = order[r % len(order) :] + order[: r % len(order)]
        for i in order:
            # Untimed first: a step's first call after another method's pays for that
            # method's memory (after DKM's large temporaries ~30 % on AlexNet).
            jax.block_until_ready(cases[i]["call"]())
            times[i] += [common.time_call(cases[i]["call"]) for _ in range(args.calls)]
    plain_t, plain_mem = common.median(times[0]), cases[0]["bytes"]
    rows = []
    for case, t in zip(cases, times, strict=True):
        row = {"method": case["method"], "kind": case["kind"]}
        if "k" in case:
            row["k"] = case["k"]
        med = common.median(t)
        row |= {
            "step_ms": 1e3 * med,
            "step_ms_min": 1e3 * min(t),
            "step_ms_max": 1e3 * max(t),
            "time_ratio": med / plain_t,
            "bytes": case["bytes"],
            "memory_ratio": (case["bytes"] / plain_mem) if plain_mem and case["bytes"] else None,
        }
        rows.append(row)
        print(
            f"{row['method']:28s} K={row.get('k', '-')!s:<3s} {row['step_ms']:8.1f} ms  ratio "
            f"{row['time_ratio']:.3f}  mem {row['memory_ratio'] or float('nan'):.3f}",
            flush=True,
        )
    return {
        "benchmark": "method_cost",
        "machine": common.machine_info(),
        "config": {
            "model": args.model,
            "params": int(n_params),
            "batch": args.batch,
            "image_shape": shape,
            "data": "random normal images, random labels",
            "regularizers": args.regularizers.split(","),
            "ks": list(args.ks),
            "repeats": args.repeats,
            "calls": args.calls,
            "optimizer": "adam (pipeline.optim.make_optimizer, cosine schedule, Config defaults)",
            "schedule_steps": TOTAL_STEPS,
            "hybrid": "not timed (--table-recipe)"
            if args.table_recipe
            else f"first regularizer entry, ste_last={STE_LAST}, timed after the switch",
            "damped ste": ("every" if args.table_recipe else "first")
            + " regularizer entry, ste_last=1 with ste_keep_lam",
            "ste": "k-means levels (ste.init); re-clustering hook not timed",
            "dkm": {"iters": DKM_ITERS, "tau": f"dkm_taus(centroids, {DKM_TAU_FRAC})"},
            "selection": "all conv/dense kernels (default rule)",
            "timing": (
                f"median over rounds that call every step once untimed, then {args.calls}"
                " times timed (order rotated each round), after one warm-up call each;"
                " time_ratio = median / plain median"
            ),
            "memory": "compiled memory_analysis: arguments + outputs + temps - aliases",
        },
        "rows": rows,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=tuple(MODELS), default="cifar_vgg")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-shape", default="32,32,3", help="H,W,C")
    p.add_argument("--ks", default="2,4", help="comma-separated K")
    p.add_argument(
        "--regularizers",
        help=f"comma-separated NAME[:REDUCTION[:NORMALIZE]] (default: {REGULARIZERS}; with"
        f" --table-recipe {TABLE_REGULARIZERS}); the first also gives the hybrid",
    )
    p.add_argument(
        "--table-recipe",
        action="store_true",
        help="time every regularizer entry only as the paper tables run it: STE from step 0"
        " with the penalty kept beside it (ste_last=1, ste_keep_lam)",
    )
    p.add_argument("--repeats", type=int, default=10, help="timing rounds")
    p.add_argument(
        "--calls", type=int, default=2, help="timed calls per step per round (after an untimed one)"
    )
    p.add_argument("--out", help="default: results/method_cost_MODEL.json")
    p.add_argument(
        "--smoke", action="store_true", help="for tests: the small CNN, batch 8, K 2, 2 rounds"
    )
    args = p.parse_args(argv)
    for name in ("repeats", "calls"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.smoke:
        args.model, args.batch, args.image_shape, args.ks, args.repeats = (
            "small",
            8,
            "8,8,1",
            "2",
            2,
        )
    if args.regularizers is None:
        args.regularizers = TABLE_REGULARIZERS if args.table_recipe else REGULARIZERS
    args.ks = [int(s) for s in str(args.ks).split(",")]
    args.out = args.out or str(common.RESULTS / f"method_cost_{args.model}.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main(parse, run, argv)


if __name__ == "__main__":
    main()
