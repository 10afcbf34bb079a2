"""What the input pipeline costs a training step: CIFAR-sized batches (uint8 images held
in memory, as ``qareg_jax.data`` caches the decoded JPEG copy) shuffled, cropped, flipped
and normalized by ``data.train_batches``, against the plain train step of a model
(AlexNet by default, batch 128; the step the pipeline's pretraining uses).

Three numbers, all measured in one run:

- ``batch (one thread, no prefetch)``: the time to make one batch on the caller's
  thread: the whole cost if nothing overlapped it;
- ``step (fixed batch)``: the train step alone, on a batch already made;
- ``step + loader``: the train step fed by ``train_batches`` as the pipeline's loop
  feeds it (``num_threads=2, prefetch=4``), so that batches are made while steps run.

``fraction_of_step`` is each time over the fixed-batch step's; the loader's real cost
is ``step + loader``'s fraction minus 1. The images are random (the cost does not depend
on their content); decoding the archive is a one-time cost (``qareg_jax.data``'s cache)
and is not timed.

    python -m benchmarks.input_pipeline                    # AlexNet, batch 128
    python -m benchmarks.input_pipeline --model cifar_vgg
    python -m benchmarks.input_pipeline --smoke            # seconds, for tests
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from benchmarks import common
from benchmarks.method_cost import TOTAL_STEPS, compile_step
from qareg_jax import data
from qareg_jax.models import MODELS, get_model
from qareg_jax.pipeline.config import Config
from qareg_jax.pipeline.optim import make_optimizer
from qareg_jax.pipeline.steps import init_variables, make_init_fn, make_train_step

CASES = ("batch (one thread, no prefetch)", "step (fixed batch)", "step + loader")


def synthetic_dataset(n: int, shape: tuple[int, int, int], seed: int = 0) -> data.Dataset:
    """``n`` random uint8 training images of ``shape`` (and 10 test ones), 10 classes."""
    rng = np.random.default_rng(seed)
    c = shape[-1]
    return data.Dataset(
        name="synthetic",
        train_images=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        train_labels=rng.integers(0, 10, n).astype(np.int32),
        test_images=rng.integers(0, 256, (10, *shape), dtype=np.uint8),
        test_labels=rng.integers(0, 10, 10).astype(np.int32),
        class_names=tuple(str(i) for i in range(10)),
        mean=np.full(c, 0.5, np.float32),
        std=np.full(c, 0.25, np.float32),
    )


def run(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(int(s) for s in args.image_shape.split(","))
    ds = synthetic_dataset(args.examples, shape)
    model = get_model(args.model, num_classes=10)
    variables = dict(init_variables(model, shape, 0))
    params = variables.pop("params")
    config = Config(model=args.model, dataset="cifar10", batch_size=args.batch)
    tx = make_optimizer(config, config.pretrain_lr, TOTAL_STEPS)
    state = make_init_fn(tx)({"model": params, "reps": {}}, variables, np.uint32(0))
    first = next(data.train_batches(ds, args.batch, num_threads=0, prefetch=0))
    step, _ = compile_step(make_train_step(model, tx), state, first)

    sync = data.train_batches(ds, args.batch, epoch=1, num_threads=0, prefetch=0)
    fed = data.train_batches(ds, args.batch, epoch=2, num_threads=2, prefetch=4)
    next(fed)  # the threads start, as in the pipeline's loop after its first batch
    times: dict[str, list[float]] = {case: [] for case in CASES}
    calls = {
        CASES[0]: lambda: next(sync),
        CASES[1]: step,
        CASES[2]: lambda: step(next(fed)),
    }
    for _ in range(args.steps):  # in turn, so that machine noise hits all three
        for case in CASES:
            times[case].append(common.time_call(calls[case]))
    step_t = times[CASES[1]]
    step_ms = 1e3 * common.median(step_t)
    rows = []
    for case, t in times.items():
        ms = 1e3 * common.median(t)
        rows.append({"case": case, "ms": ms, "fraction_of_step": ms / step_ms})
        print(f"{case:34s} {ms:9.2f} ms  {ms / step_ms:.3f} of a step", flush=True)
    return {
        "benchmark": "input_pipeline",
        "machine": common.machine_info(),
        "config": {
            "model": args.model,
            "batch": args.batch,
            "image_shape": shape,
            "examples": args.examples,
            "calls": args.steps,
            "data": "random uint8 images in memory (the decoded cache's layout)",
            "augment": "random crop (4-pixel padding) + horizontal flip, then normalize",
            "timing": "median over calls; the loader's first batch is made before timing",
        },
        "rows": rows,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", choices=tuple(MODELS), default="alexnet")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--image-shape", default="32,32,3", help="H,W,C")
    p.add_argument("--examples", type=int, default=45_000, help="training images in memory")
    p.add_argument("--steps", type=int, default=20, help="timed calls of each case")
    p.add_argument("--out", help="default: results/input_pipeline_MODEL.json")
    p.add_argument(
        "--smoke", action="store_true", help="for tests: the small CNN, batch 8, 3 calls"
    )
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.batch, args.image_shape, args.examples, args.steps = (
            "small",
            8,
            "8,8,1",
            64,
            3,
        )
    args.out = args.out or str(common.RESULTS / f"input_pipeline_{args.model}.json")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return common.main(parse, run, argv)


if __name__ == "__main__":
    main()
