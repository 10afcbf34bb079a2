"""Cost of the grouped nearest penalty (one codebook per output channel) vs the per-tensor one.

On AlexNet's fc1 kernel (the CIFAR model's, shape read from ``qareg_jax.models``:
(1024, 4096)), float32 weights ``N(0, 1 / fan_in)``, K = 4 quantile-initialised
representatives: the jitted value and gradient (weights and representatives) of
``penalty`` with one codebook for the tensor, and with ``group_size`` channels per
codebook (default 1: 4096 groups, reps (4096, 4)). The two are timed alternately so
that machine noise hits both; the ratio of medians and the compiled peak-memory
ratio go to JSON (``results/grouped_penalty.json``). Target: time ratio <= 1.25.

    python -m benchmarks.grouped_penalty                 # fc1, K = 4, 4096 groups
    python -m benchmarks.grouped_penalty --smoke         # a (64, 256) kernel, seconds
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

import qareg_jax as q
from benchmarks import common
from qareg_jax.models import get_model
from qareg_jax.paths import named_leaves

LEAF = "params/fc1/kernel"


def fc1_shape() -> tuple[int, ...]:
    """The shape of AlexNet's fc1 kernel on 32 x 32 x 3 inputs (abstract init, no compute)."""
    model = get_model("alexnet", 10)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
    )
    return tuple(named_leaves(shapes)[LEAF].shape)


def step_of(params: Any, **spec_kwargs: Any) -> tuple[Callable[[], Any], int | None, dict]:
    """A zero-argument call of the compiled value-and-grad of the penalty, its compiled
    peak bytes, and the reps' shape."""
    specs = q.make_specs(params, include=[LEAF], init="quantile", **spec_kwargs)
    tp, specs = q.attach(params, specs)
    fn = jax.jit(jax.value_and_grad(lambda t: q.penalty(t, specs)))
    compiled = fn.lower(tp).compile()
    jax.block_until_ready(compiled(tp))  # warm-up
    info = {"reps_shape": list(tp["reps"][LEAF].shape)}
    return (lambda: compiled(tp)), common.compiled_bytes(compiled), info


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=1, help="output channels per codebook")
    parser.add_argument("--repeats", type=int, default=21, help="timed calls of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a (64, 256) kernel, 3 repeats")
    parser.add_argument("--out", default=str(common.RESULTS / "grouped_penalty.json"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    shape = (64, 256) if args.smoke else fc1_shape()
    repeats = 3 if args.smoke else args.repeats
    rng = np.random.default_rng(args.seed)
    w = rng.standard_normal(shape, dtype=np.float32) / np.float32(np.sqrt(shape[0]))
    params = {"params": {"fc1": {"kernel": jnp.asarray(w)}}}

    cases = {
        "per_tensor": step_of(params, k=args.k),
        "grouped": step_of(params, k=args.k, group_size=args.group_size),
    }
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):  # alternate, so load on the shared machine hits both
        for name, (call, _, _) in cases.items():
            times[name].append(common.time_call(call))
    base = common.median(times["per_tensor"])
    base_mem = cases["per_tensor"][1]
    rows = []
    for name, (_, mem, info) in cases.items():
        med = common.median(times[name])
        rows.append(
            {
                "case": name,
                "groups": info["reps_shape"][0] if len(info["reps_shape"]) == 2 else 1,
                "k": args.k,
                **info,
                "median_ms": 1e3 * med,
                "min_ms": 1e3 * min(times[name]),
                "max_ms": 1e3 * max(times[name]),
                "time_ratio": med / base,
                "peak_bytes": mem,
                "memory_ratio": None if mem is None or not base_mem else mem / base_mem,
            }
        )
        print(rows[-1], flush=True)
    payload = {
        "benchmark": "grouped_penalty",
        "machine": common.machine_info(),
        "config": {
            "leaf": LEAF,
            "shape": list(shape),
            "k": args.k,
            "group_size": args.group_size,
            "weights": "float32 standard normal / sqrt(fan_in)",
            "init": "quantile (per group for the grouped case)",
            "timed": "jax.jit(jax.value_and_grad(penalty)) over {model, reps}",
            "repeats": repeats,
            "smoke": args.smoke,
            "target_time_ratio": 1.25,
            "load_average_1_5_15min_at_end": list(os.getloadavg()),
        },
        "rows": rows,
    }
    print(common.write_json(payload, args.out))
    return payload


if __name__ == "__main__":
    main()
