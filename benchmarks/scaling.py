"""Weak scaling of the sharded regularized train step over 1, 2, 4, 8 host devices.

For each device count n a fresh process is started with
``XLA_FLAGS=--xla_force_host_platform_device_count=n`` (the flag must be set before JAX
starts). It builds a ``("data",)`` mesh (or ``("data", "model")`` with ``--model-axis``),
places the train tree ``{"model": params, "reps": ...}`` with ``sharding.Layout``,
jit-compiles ``sharding.make_train_step`` (Adam on task loss + the "nearest" penalty over
every conv/dense kernel) and times it on random data with a fixed per-device batch, so
the global batch grows with n (weak scaling). Reported per n: median step time, examples
per second, weak-scaling efficiency ``t(1) / t(n)`` and the compiled per-device memory.

Host "devices" are slices of the same CPU: on a machine with few cores they share those
cores, so this measures the overhead of partitioning and collectives, not a speed-up.

    python -m benchmarks.scaling              # AlexNet, 16 images per device, n = 1, 2, 4, 8
    python -m benchmarks.scaling --smoke      # SmallCNN on 8x8 inputs, n = 1, 2 (seconds)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks import common


def worker(args: argparse.Namespace) -> dict[str, Any]:
    """One device count: runs in a process whose XLA flags give it ``args.worker`` devices."""
    import jax
    import jax.numpy as jnp
    import optax

    import qareg_jax as q
    from qareg_jax.models import get_model
    from qareg_jax.sharding import (
        Layout,
        init_opt_state,
        make_mesh,
        make_train_step,
        shard,
        shard_batch,
    )

    n = jax.device_count()
    if n != args.worker:
        raise RuntimeError(f"expected {args.worker} devices, JAX sees {n}")
    shape = tuple(int(s) for s in args.image_shape.split(","))
    kwargs = {"dropout_rate": 0.0} if args.model == "alexnet" else {}
    model = get_model(args.model, 10, **kwargs)
    key = jax.random.PRNGKey(0)
    batch_size = args.worker_batch or args.per_device_batch * n
    batch = {
        "image": jax.random.normal(key, (batch_size, *shape), jnp.float32),
        "label": jax.random.randint(key, (batch_size,), 0, 10),
    }
    variables = model.init(key, batch["image"][:1], train=False)
    specs = q.make_specs(variables, k=args.k, init="quantile", lam=1e-3)
    train_params, specs = q.attach(variables, specs)

    def task_loss(params: Any, b: dict[str, jax.Array]) -> jax.Array:
        logits = model.apply(params, b["image"], train=True)
        return optax.softmax_cross_entropy_with_integer_labels(logits, b["label"]).mean()

    model_axis = args.model_axis if args.model_axis and n % args.model_axis == 0 else None
    layout = Layout(make_mesh(model=model_axis), min_size=args.min_size)
    tx = optax.adam(1e-3)
    tp = shard(train_params, layout)
    state = init_opt_state(tx, tp, layout)
    step = make_train_step(task_loss, tx, specs, layout, tp, state)
    batch = shard_batch(jax.device_get(batch), layout.mesh)
    compiled = step.lower(tp, state, batch, 0).compile()
    holder = {"tp": tp, "state": state}

    def call() -> jax.Array:
        holder["tp"], holder["state"], metrics = compiled(holder["tp"], holder["state"], batch, 0)
        return metrics["loss"]

    for _ in range(args.warmup):
        common.time_call(call)
    times = [common.time_call(call) for _ in range(args.repeats)]
    step_s = common.median(times)
    return {
        "devices": n,
        "mesh": dict(layout.mesh.shape),
        "global_batch": batch_size,
        "step_ms": 1e3 * step_s,
        "step_ms_all": [1e3 * t for t in times],
        "examples_per_s": batch_size / step_s,
        "compiled_bytes_per_device": common.compiled_bytes(compiled),
        "params": int(sum(x.size for x in jax.tree.leaves(variables))),
    }


def run_device_count(n: int, argv: list[str]) -> dict[str, Any]:
    """Runs the worker for ``n`` devices in a fresh process; returns its row."""
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}"
    env = {**os.environ, "XLA_FLAGS": flags.strip(), "JAX_PLATFORMS": "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        row_file = Path(tmp) / "row.json"
        cmd = [sys.executable, "-m", "benchmarks.scaling", *argv, "--worker", str(n)]
        cmd += ["--row-out", str(row_file)]
        proc = subprocess.run(
            cmd, env=env, capture_output=True, text=True, check=False, cwd=common.REPO
        )
        if proc.returncode:
            raise RuntimeError(f"worker for {n} devices failed:\n{proc.stderr[-4000:]}")
        return json.loads(row_file.read_text())


def run(args: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    load_before = os.getloadavg()[0]
    rows = []
    for n in (int(s) for s in args.devices.split(",")):
        rows.append(run_device_count(n, argv))
    for row in rows:
        row["weak_scaling_efficiency"] = rows[0]["step_ms"] / row["step_ms"]
    # The largest global batch on one device: the same work without partitioning.
    last = rows[-1]
    reference = run_device_count(1, [*argv, "--worker-batch", str(last["global_batch"])])
    last["time_ratio_vs_one_device_same_batch"] = last["step_ms"] / reference["step_ms"]
    for row in rows:
        print(
            f"{row['devices']} device(s) {row['mesh']}: global batch {row['global_batch']:4d}, "
            f"{row['step_ms']:8.1f} ms/step, {row['examples_per_s']:8.1f} examples/s, "
            f"weak-scaling efficiency {row['weak_scaling_efficiency']:.2f}",
            flush=True,
        )
    ratio = last["time_ratio_vs_one_device_same_batch"]
    print(
        f"1 device, global batch {reference['global_batch']}: {reference['step_ms']:.1f} ms/step; "
        f"{last['devices']} devices take {ratio:.2f}x as long",
        flush=True,
    )
    machine = common.machine_info()
    machine.pop("device_count")  # this parent process's; each row has its own "devices"
    return {
        "benchmark": "scaling",
        "machine": machine,
        "config": {
            "model": args.model,
            "image_shape": args.image_shape,
            "per_device_batch": args.per_device_batch,
            "k": args.k,
            "regularizer": "nearest on all conv/dense kernels, lam=1e-3, quantile init",
            "optimizer": "adam(1e-3) on weights and representatives",
            "model_axis": args.model_axis,
            "min_size": args.min_size,
            "warmup": args.warmup,
            "repeats": args.repeats,
            "timing": "median of per-step wall times (compiled step, results awaited)",
            "weak_scaling_efficiency": "t(first device count) / t(n) at a fixed per-device "
            "batch; 1.0 is perfect weak scaling",
            "time_ratio_vs_one_device_same_batch": "last row's step time over one device's "
            "at the same global batch (one_device_same_batch_as_last_row): the cost of "
            "partitioning the same work",
            "smoke": args.smoke,
            "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
            "note": f"host devices (--xla_force_host_platform_device_count) are slices of one "
            f"CPU with {machine['cpu_count']} cores; they share those cores, so these numbers "
            "measure partitioning and collective overhead, not a speed-up",
        },
        "rows": rows,
        "one_device_same_batch_as_last_row": reference,
    }


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--devices", default="1,2,4,8", help="comma-separated host device counts")
    p.add_argument("--model", default="alexnet", choices=("alexnet", "small"))
    p.add_argument("--image-shape", default="32,32,3")
    p.add_argument("--per-device-batch", type=int, default=16)
    p.add_argument("--k", type=int, default=16)
    p.add_argument(
        "--model-axis",
        type=int,
        default=0,
        help="size of a 'model' mesh axis where it divides n (0: data parallel only)",
    )
    p.add_argument("--min-size", type=int, default=1 << 16, help="Layout.min_size")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", help="JSON path (default results/scaling.json, or scaling_smoke.json)")
    p.add_argument("--smoke", action="store_true", help="SmallCNN, 8x8 inputs, n = 1, 2")
    p.add_argument("--worker", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--row-out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--worker-batch", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.image_shape, args.per_device_batch = "small", "8,8,1", 4
        args.devices, args.warmup, args.repeats = "1,2", 1, 2
    if args.out is None:
        args.out = str(common.RESULTS / f"scaling{'_smoke' if args.smoke else ''}.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse(argv)
    if args.worker:
        Path(args.row_out).write_text(json.dumps(worker(args)))
        return None
    result = run(args, argv)
    print(f"wrote {common.write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
