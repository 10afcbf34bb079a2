"""Multi-process (multi-host) training, really run: a launcher and the worker it starts.

Every process runs the same program (JAX's multi-controller model): it joins the
others with ``jax.distributed.initialize``, builds one global mesh over all
processes' devices, feeds its own rows of each global batch, and runs

1. ``steps`` regularized steps: the pipeline's one train step,
   ``qareg_jax.pipeline.make_train_step(loss, tx, specs, layout=layout)``;
2. ``sharding.snap_sharded`` (snapping on the mesh);
3. ``ft_steps`` fine-tuning steps with ``quantized_finetune`` (the same core step);
4. ``multihost_utils.process_allgather`` of the results, then process 0 alone packs
   and saves them (``compress.save``) and writes ``result.npz``.

On one machine (what ``tests/test_multihost.py`` runs; CPU devices, gloo collectives,
everything on 127.0.0.1)::

    python -m experiments.multihost --processes 2 --local-devices 2 --model 2 --out /tmp/mh

starts two workers, prints which process died (exit code or signal) and exits 1 as
soon as any worker fails, stops the others, and never waits longer than
``--timeout`` seconds. ``--reference`` runs the same computation in this one process
without ``jax.distributed`` (the single-process result to compare with).

On a real cluster, copy this file and start one worker per host yourself (or from
your scheduler; ``qareg_jax`` must be installed everywhere)::

    python multihost.py --worker --coordinator HOST0:PORT --processes N --process-id RANK \\
        --local-devices 0 --out /shared/out

``HOST0`` is the address of process 0 (the coordinator listens there on ``PORT``),
``RANK`` is 0..N-1 (e.g. ``$SLURM_PROCID``), ``--local-devices 0`` uses the host's own
devices (GPUs/TPUs: drop ``JAX_PLATFORMS=cpu`` from the environment; gloo is only
for CPU collectives). Replace :func:`build_problem` with your model and data; keep
the rest: same seed everywhere, each process loads only the rows
:func:`local_rows` names, gather before anything host-side, write from process 0.
If a host dies, JAX's coordination service aborts the others (SIGABRT) after at
most ``--heartbeat-timeout`` seconds; your scheduler should then fail the job.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# Nothing may touch a JAX backend before jax.distributed.initialize (the CPU client
# is created with the distributed client's collectives), so JAX is imported lazily
# inside the worker functions; the launcher never imports it.

LOOPBACK = "127.0.0.1"
POLL_S = 0.1  # how often the launcher looks at its workers
GRACE_S = 5.0  # SIGTERM -> SIGKILL delay when stopping the survivors
DIE_EXIT = "killed"


# ------------------------------------------------------------------------------ worker


def build_problem(seed: int, global_batch: int) -> dict[str, Any]:
    """A tiny MLP problem, identical on every process (host-side, fixed seeds).

    Returns:
      ``{"model", "train_params", "specs", "data"}``; ``data`` is the whole global
      batch as numpy (a real job would load only :func:`local_rows` of it).
    """
    import flax.linen as nn
    import jax
    import numpy as np
    import optax

    import qareg_jax as q

    class MLP(nn.Module):
        """(B, 16) -> (B, 10) with a 16 x 32 hidden layer (512 weights: split over
        ``"model"`` by ``Layout(min_size=256)``)."""

        @nn.compact
        def __call__(self, x: jax.Array) -> jax.Array:
            x = nn.relu(nn.Dense(32, name="fc1")(x))
            return nn.Dense(10, name="fc2")(x)

    model = MLP()
    rng = np.random.default_rng(seed)
    data = {
        "x": rng.normal(size=(global_batch, 16)).astype(np.float32),
        "y": rng.integers(0, 10, global_batch).astype(np.int32),
    }
    # Initialised on the host's first local device and fetched: every process gets
    # the same numbers from the same key (no cross-process traffic needed).
    variables = jax.device_get(model.init(jax.random.PRNGKey(seed), data["x"][:1]))
    # The raw penalty scale (mean over the layer, weight units), because the steps below
    # are plain SGD at lr 0.1: under the default unit scale the pull on a weight grows as
    # lambda * distance / spacing^2 and SGD overshoots (README, "Choosing lambda").
    specs = q.make_specs(
        variables,
        k=4,
        lam=optax.linear_schedule(0.0, 0.5, 4),
        reduction="mean",
        normalize=None,
    )
    train_params, specs = q.attach(variables, specs)
    return {"model": model, "train_params": train_params, "specs": specs, "data": data}


def local_rows(mesh: Any, global_batch: int) -> slice:
    """The rows of the global batch that this process's devices hold under ``P("data")``.

    Read from the sharding rather than assumed to be ``process_index() * B_local``:
    the mesh decides which global rows each device holds.

    Raises:
      RuntimeError: this process's rows are not one contiguous block (a mesh whose
        ``"data"`` axis interleaves processes), which ``make_array_from_process_local_data``
        cannot take.
    """
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sharding = NamedSharding(mesh, P("data"))
    index_map = sharding.addressable_devices_indices_map((global_batch,))
    spans = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
    start, stop = spans[0][0], spans[-1][1]
    if sum(b - a for a, b in spans) != stop - start:
        raise RuntimeError(f"this process's rows {spans} are not contiguous")
    return slice(start, stop)


def placed_state(params: Any, opt_state: Any, layout: Any, seed: int) -> Any:
    """A ``TrainState`` at step 0 built on the mesh: ``params`` and ``opt_state``
    already placed, the scalars placed (replicated) from host values."""
    import jax
    import numpy as np

    from qareg_jax.pipeline.steps import TrainState
    from qareg_jax.sharding import shard

    scalars = shard(
        {
            "key": np.asarray(jax.random.PRNGKey(seed)),
            "step": np.zeros((), np.int32),
            "window": {
                "task_loss": np.zeros((), np.float32),
                "penalty": np.zeros((), np.float32),
                "count": np.zeros((), np.int32),
            },
            "bad_step": np.full((), -1, np.int32),
        },
        layout,
    )
    return TrainState(params=params, opt_state=opt_state, model_state={}, **scalars)


def run(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """The training run of one process (a worker, or ``--reference`` alone).

    Returns:
      ``{name: numpy array}``: every leaf of the regularized, snapped and fine-tuned
      trees, the assignments and the loss window, gathered onto this host.
    """
    import jax
    import numpy as np
    import optax
    from jax.experimental import multihost_utils

    from qareg_jax import compress
    from qareg_jax.finetune import assignments_by_path
    from qareg_jax.paths import named_leaves
    from qareg_jax.pipeline import make_train_step
    from qareg_jax.sharding import (
        Layout,
        init_opt_state,
        make_mesh,
        shard,
        shard_batch,
        snap_sharded,
    )
    from qareg_jax.snap import quantized_finetune

    pid = jax.process_index()
    problem = build_problem(args.seed, args.global_batch)
    model, specs = problem["model"], problem["specs"]
    mesh = make_mesh(args.model)  # all processes' devices
    layout = Layout(mesh, min_size=256)
    rows = local_rows(mesh, args.global_batch)
    # This process's share only: shard_batch assembles the global array from it.
    local = {k: v[rows] for k, v in problem["data"].items()}
    log(f"mesh {dict(mesh.shape)} over {jax.device_count()} devices; rows {rows.start}:{rows.stop}")

    def loss(params: Any, model_state: Any, batch: Any, rng: Any, step: Any) -> tuple[Any, Any]:
        logits = model.apply(params["model"], batch["x"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
        return ce, model_state

    def gather(tree: Any) -> Any:
        """Whole values on every host (a collective: all processes must call it)."""
        return jax.tree.map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))

    tx = optax.sgd(0.1, momentum=0.9)
    tp = shard(problem["train_params"], layout)
    state = placed_state(tp, init_opt_state(tx, tp, layout), layout, args.seed)
    step = make_train_step(loss, tx, specs, layout=layout)
    batch = shard_batch(local, mesh)
    for i in range(args.steps):
        if args.die is not None and args.die == (pid, i):
            log(f"--die: killing myself (SIGKILL) before step {i}")
            os.kill(os.getpid(), signal.SIGKILL)
        state = step(state, batch)
    # One gather per phase (each is a compiled collective), before fine-tuning
    # donates the snapped buffers.
    snapped, assignments = snap_sharded(state.params, specs, layout)
    regularized, snapped_host, assignments_host, window = gather(
        (state.params, snapped, assignments, state.window)
    )
    mean = window["task_loss"] / window["count"]
    log(f"{args.steps} regularized steps and snap, mean task loss {mean:.6f}")

    ft = quantized_finetune(optax.sgd(0.05, momentum=0.9), specs)
    # ``snapped`` stays on the mesh: the fine-tuning state is built where it lives.
    ft_state = placed_state(snapped, init_opt_state(ft, snapped, layout), layout, args.seed)
    ft_step = make_train_step(loss, ft, None, layout=layout)
    for _ in range(args.ft_steps):
        ft_state = ft_step(ft_state, batch)
    tuned, tuned_assignments = gather((ft_state.params, assignments_by_path(ft_state.opt_state)))
    log(f"{args.ft_steps} fine-tuning steps")

    out: dict[str, Any] = {}
    for prefix, tree in (
        ("regularized", regularized),
        ("snapped", snapped_host),
        ("assignments", assignments_host),
        ("tuned", tuned),
        ("tuned_assignments", tuned_assignments),
        ("window", window),
    ):
        out.update({f"{prefix}/{p}": v for p, v in named_leaves(tree).items()})
    if pid == 0:  # host-side packing and files: one writer
        quantized = {p: (tuned["reps"][p], tuned_assignments[p]) for p in specs}
        path = Path(args.out) / "model.qareg"
        info = compress.save(path, tuned["model"], quantized, overwrite=True)
        np.savez(Path(args.out) / "result.npz", **out)
        log(f"wrote {info.path} ({info.file_bytes} bytes) and result.npz")
    return out


def distributed_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """``jax.distributed.initialize`` arguments, the timeout ones only where this JAX
    has them (``heartbeat_timeout_seconds``/``shutdown_timeout_seconds``: JAX >= 0.5)."""
    import inspect

    import jax

    kw: dict[str, Any] = {
        "coordinator_address": args.coordinator,
        "num_processes": args.processes,
        "process_id": args.process_id,
        "initialization_timeout": args.init_timeout,
        "heartbeat_timeout_seconds": args.heartbeat_timeout,
        "shutdown_timeout_seconds": args.heartbeat_timeout,
    }
    if args.bind:
        kw["coordinator_bind_address"] = args.bind
    accepted = inspect.signature(jax.distributed.initialize).parameters
    return {k: v for k, v in kw.items() if k in accepted}


def watch_parent(parent: int) -> None:
    """Exit (status 1) within a second once process ``parent`` (the launcher) is gone,
    so that a launcher killed with SIGKILL leaves no worker behind."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        print("launcher gone: exiting", file=sys.stderr, flush=True)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def worker(args: argparse.Namespace) -> None:
    """One process: join the others, run, leave."""
    if args.parent_pid is not None:
        watch_parent(args.parent_pid)
    import jax

    start = time.monotonic()

    def log(msg: str) -> None:
        print(f"[process {args.process_id} {time.monotonic() - start:5.1f} s] {msg}", flush=True)

    if not args.reference:
        # Cross-process collectives on CPU: gloo over TCP (the default in JAX 0.10;
        # set explicitly so that older versions, which default to none, work too).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(**distributed_kwargs(args))
    log(f"{jax.process_count()} processes, local devices {jax.local_devices()}")
    run(args, log)
    if not args.reference:
        jax.distributed.shutdown()  # a barrier, bounded by shutdown_timeout_seconds
    log("done")


# ---------------------------------------------------------------------------- launcher


def free_port() -> int:
    """A TCP port free on the loopback address now (the coordinator binds it next)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def describe(returncode: int) -> str:
    """An exit status in words: ``exit code 3`` or ``killed by SIGKILL``."""
    if returncode in (-signal.SIGABRT, 128 + signal.SIGABRT):
        # JAX's coordination service (or gloo) aborts a process whose peer died.
        return f"aborted (SIGABRT, status {returncode}): JAX stops a process whose peer died"
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit code {returncode}"


def tail(path: Path, lines: int = 15) -> str:
    """The last ``lines`` lines of a log file."""
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join("    " + line for line in text[-lines:])


def stop(procs: Sequence[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker still running, SIGKILL those alive ``GRACE_S`` later."""
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + GRACE_S
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=GRACE_S)


def launch(args: argparse.Namespace, worker_argv: Sequence[str]) -> int:
    """Start ``args.processes`` workers on 127.0.0.1 and watch them.

    Returns:
      0 when every worker exited 0; 1 (after stopping the others) as soon as one
      fails, or when ``args.timeout`` seconds pass.
    """
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONUNBUFFERED": "1"}
    flags = env.get("XLA_FLAGS", "")
    if args.local_devices:
        flags += f" --xla_force_host_platform_device_count={args.local_devices}"
    env["XLA_FLAGS"] = flags.strip()
    procs, logs = [], []
    for i in range(args.processes):
        cmd = [sys.executable, "-m", "experiments.multihost", *worker_argv, "--worker"]
        cmd += ["--coordinator", f"{LOOPBACK}:{port}", "--bind", f"{LOOPBACK}:{port}"]
        cmd += ["--process-id", str(i), "--parent-pid", str(os.getpid())]
        logs.append(out / f"process-{i}.log")
        with logs[-1].open("wb") as f:  # a file, not a pipe: a full pipe would block it
            procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env))
    print(f"launched {args.processes} processes on {LOOPBACK}:{port}; logs in {out}", flush=True)
    start = time.monotonic()

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)  # runs the ``finally`` below: the workers are stopped

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        while time.monotonic() - start < args.timeout:
            codes = [p.poll() for p in procs]
            failed = [i for i, c in enumerate(codes) if c not in (None, 0)]
            if failed:
                i = failed[0]
                print(
                    f"FAILED: process {i} died ({describe(codes[i])}) after "
                    f"{time.monotonic() - start:.1f} s; stopping the others.\n"
                    f"  its log ({logs[i]}):\n{tail(logs[i])}",
                    file=sys.stderr,
                    flush=True,
                )
                stop(procs)
                others = [f"process {j}: {describe(p.returncode)}" for j, p in enumerate(procs)]
                print("  exit statuses: " + "; ".join(others), file=sys.stderr, flush=True)
                return 1
            if all(c == 0 for c in codes):
                print(
                    f"all {args.processes} processes finished in {time.monotonic() - start:.1f} s"
                )
                return 0
            time.sleep(POLL_S)
        running = [i for i, p in enumerate(procs) if p.poll() is None]
        print(
            f"FAILED: timeout after {args.timeout} s; processes {running} still running; "
            "stopping them.",
            file=sys.stderr,
            flush=True,
        )
        return 1
    finally:
        stop(procs)


def parse_die(text: str) -> tuple[int, int]:
    """``PROCESS:STEP`` -> ``(process, step)``."""
    process, step = text.split(":")
    return int(process), int(step)


def parser() -> argparse.ArgumentParser:
    """The command line of the launcher, the worker and the reference run."""
    p = argparse.ArgumentParser(
        prog="python -m experiments.multihost", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--processes", type=int, default=2, help="number of processes")
    p.add_argument(
        "--local-devices",
        type=int,
        default=1,
        help="CPU devices per process (XLA_FLAGS device count); 0: the host's own devices",
    )
    p.add_argument("--model", type=int, default=None, help='size of the "model" mesh axis')
    p.add_argument("--steps", type=int, default=3, help="regularized steps")
    p.add_argument("--ft-steps", type=int, default=2, help="fine-tuning steps")
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="multihost_out", help="logs, result.npz, model.qareg")
    p.add_argument("--timeout", type=float, default=300.0, help="launcher: whole-run limit (s)")
    p.add_argument("--init-timeout", type=int, default=60, help="initialization_timeout (s)")
    p.add_argument(
        "--heartbeat-timeout",
        type=int,
        default=10,
        help="heartbeat/shutdown timeout (s): a dead peer is noticed within this",
    )
    p.add_argument(
        "--die",
        type=parse_die,
        default=None,
        metavar="PROCESS:STEP",
        help="testing: that process SIGKILLs itself before that regularized step",
    )
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--worker", action="store_true", help="run one process (see --process-id)")
    mode.add_argument(
        "--reference", action="store_true", help="the same run in this one process, no cluster"
    )
    p.add_argument("--coordinator", default=None, help="worker: HOST:PORT of process 0")
    p.add_argument("--bind", default=None, help="worker: coordinator_bind_address")
    p.add_argument("--process-id", type=int, default=0, help="worker: this process's rank")
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Launcher (default), ``--worker`` or ``--reference``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    if args.worker or args.reference:
        if args.worker and not args.coordinator:
            parser().error("--worker needs --coordinator HOST:PORT")
        if args.reference:
            args.processes, args.process_id = 1, 0
            Path(args.out).mkdir(parents=True, exist_ok=True)
            if args.local_devices:  # before JAX starts, as in a worker
                flags = os.environ.get("XLA_FLAGS", "")
                count = f"--xla_force_host_platform_device_count={args.local_devices}"
                os.environ["XLA_FLAGS"] = f"{flags} {count}".strip()
                os.environ.setdefault("JAX_PLATFORMS", "cpu")
        worker(args)
        return 0
    return launch(args, argv)


if __name__ == "__main__":
    sys.exit(main())
