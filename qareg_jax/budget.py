"""K per layer for a size budget: sensitivities, exact packed sizes, an exact planner.

Three steps, each usable alone::

    sens = budget.layer_sensitivity(loss_fn, params, paths, ks=(2, 4, 8, 16, 32))
    sizes = budget.packed_bytes_per_choice(params, paths, ks=(2, 4, 8, 16, 32))
    plan = budget.plan_bits(sens, sizes, budget.parse_budget("16x", sizes.float32_bytes))
    print(plan.table()); specs = budget.specs_for_plan(plan, q.QuantSpec(regularizer="nearest"))

- :func:`layer_sensitivity`: the loss increase when one layer alone is quantized
  (k-means by default, with :func:`qareg_jax.quantizers.quantize_tree`) at each K.
- :func:`packed_bytes_per_choice`: each layer's bytes at each K exactly as
  :func:`qareg_jax.compress.save` writes them (codebook + ``ceil(n * bits / 8)``
  packed indices, and by default the layer's metadata entry), plus the fixed bytes
  (leaves stored raw, header, JSON skeleton, checksum).
- :func:`plan_bits`: the multiple-choice knapsack (one K per layer, summed
  sensitivity minimal, total bytes <= budget), solved exactly over Pareto frontiers.

A K larger than a layer's number of weights is not a choice for that layer
(``compress`` and the quantizers refuse it); it is dropped from that layer's table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from .codebook import QuantSpec, resolve_paths
from .compress import _CODEBOOK_DTYPES, _DIGEST_BYTES, _HEAD_BYTES, bits_per_index
from .paths import named_leaves, replace_leaves
from .quantizers import quantize_tree
from .validation import check_k

__all__ = [
    "DEFAULT_KS",
    "LayerBytes",
    "Plan",
    "layer_sensitivity",
    "packed_bytes_per_choice",
    "parse_budget",
    "plan_bits",
    "specs_for_plan",
]

DEFAULT_KS = (2, 4, 8, 16, 32)
Ks = Sequence[int] | Mapping[str, Sequence[int]]
Table = Mapping[str, Mapping[int, float]]


def _candidates(leaves: Mapping[str, Any], paths: Sequence[str], ks: Ks) -> dict[str, list[int]]:
    """{path: sorted distinct Ks <= the leaf's size}; ``ks`` shared or per path."""
    if isinstance(ks, Mapping):
        absent = [p for p in paths if p not in ks]
        if absent:
            raise ValueError(f"ks has no entry for paths {absent}")
        extra = [p for p in ks if p not in paths]
        if extra:
            raise ValueError(f"ks names paths that are not selected: {extra}")
    out = {}
    for p in paths:
        raw = ks[p] if isinstance(ks, Mapping) else ks
        if isinstance(raw, (str, int)):
            raise TypeError(f"ks must be a sequence of ints (or {{path: sequence}}), got {raw!r}")
        chosen = sorted({check_k(k, "each K in ks") for k in raw})
        n = int(np.size(leaves[p]))
        fits = [k for k in chosen if k <= n]
        if not fits:
            raise ValueError(
                f"no K in {chosen} fits leaf {p!r} of {n} weights (K must be <= the number "
                "of weights); add a smaller K or leave the leaf out of paths"
            )
        out[p] = fits
    return out


# --------------------------------------------------------------------------- sensitivity


def layer_sensitivity(
    loss_fn: Callable[[Any], Any],
    params: Any,
    paths: Sequence[str] | None = None,
    ks: Ks = DEFAULT_KS,
    *,
    method: str | Callable[..., tuple[np.ndarray, np.ndarray]] = "kmeans",
    vectorize: bool = False,
    **quantizer_kw: Any,
) -> dict[str, dict[int, float]]:
    """Loss increase when ONLY one layer is quantized at K: ``{path: {K: delta_loss}}``.

    ``delta_loss = loss_fn(params with leaf path quantized at K) - loss_fn(params)``,
    every other leaf untouched. The quantization is
    :func:`qareg_jax.quantizers.quantize_tree` with ``method`` (default k-means
    weight sharing) and ``quantizer_kw``. A delta may be slightly negative (the
    quantized layer happens to fit the batches better); it is kept as measured.

    Args:
      loss_fn: ``params -> scalar``, e.g. the mean loss over a few fixed validation
        batches (closed over). Jitted once here; every evaluation reuses it.
      params: the model's parameter pytree (leaves named by '/'-paths).
      paths: leaves to measure; None: the default selection (conv and dense kernels).
      ks: candidate K values, shared or ``{path: Ks}``; K > a leaf's size is dropped.
      vectorize: evaluate all Ks of a layer in one ``vmap`` call (one compile per
        layer, activations times ``len(ks)`` in memory) instead of one call per K.

    Returns:
      ``{path: {K: float}}`` in ``paths`` order, Ks ascending.

    Raises:
      ValueError: the unquantized loss is not a finite scalar, a path is missing, no K
        fits a leaf; quantizer errors (NaN weights, ...) before any loss evaluation.
    """
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be a callable params -> scalar, got {loss_fn!r}")
    paths = resolve_paths(params, paths)
    leaves = named_leaves(params)
    cands = _candidates(leaves, paths, ks)
    jitted = jax.jit(loss_fn)
    base = jitted(params)
    if np.shape(base) != ():
        raise ValueError(f"loss_fn must return a scalar, got shape {np.shape(base)}")
    base = float(base)
    if not math.isfinite(base):
        raise ValueError(f"loss_fn(params) is {base}; the unquantized loss must be finite")

    def stacked(p: Any, path: str, ws: jax.Array) -> jax.Array:
        return jax.vmap(lambda w: loss_fn(replace_leaves(p, {path: w})))(ws)

    many = jax.jit(stacked, static_argnums=1)
    out: dict[str, dict[int, float]] = {}
    for path in paths:
        variants = [
            quantize_tree(params, [path], k, method, **quantizer_kw)[0] for k in cands[path]
        ]
        if vectorize:
            ws = np.stack([np.asarray(named_leaves(v)[path]) for v in variants])
            losses = [float(x) for x in np.asarray(many(params, path, ws))]
        else:
            losses = [float(jitted(v)) for v in variants]
        out[path] = {k: loss - base for k, loss in zip(cands[path], losses, strict=True)}
    return out


# --------------------------------------------------------------------------- sizes


def _json_len(obj: Any) -> int:
    """Bytes of ``obj`` in the metadata encoding of ``compress.save`` (compact, ASCII)."""
    return len(json.dumps(obj, separators=(",", ":")).encode())


def _digits(x: int) -> int:
    return len(str(int(x)))


@dataclasses.dataclass(frozen=True)
class LayerBytes:
    """Bytes of a packed file per (layer, K) and fixed bytes (see :func:`packed_bytes_per_choice`).

    Attributes:
      choices: ``{path: {K: bytes}}``, the layer's bytes in the file at K (payload,
        plus its metadata entry when ``include_overhead``).
      payload: ``{path: {K: bytes}}``, the layer's payload only (codebook + indices).
      raw_payload: bytes of the leaves stored raw.
      overhead: container bytes no K changes (header, checksum, JSON skeleton, the raw
        leaves' entries) without the digits of the total payload; 0 without overhead.
      n: ``{path: number of weights}`` of the planned layers.
      float32_bytes: 4 bytes per element of every leaf (the reference of "16x").
      codebook_dtype: the codebook dtype the sizes assume.
      include_overhead: whether the container (header, JSON metadata, checksum) counts.
      max_payload: the payload at every layer's largest K.
    """

    choices: dict[str, dict[int, int]]
    payload: dict[str, dict[int, int]]
    raw_payload: int
    overhead: int
    n: dict[str, int]
    float32_bytes: int
    codebook_dtype: str
    include_overhead: bool
    max_payload: int

    def fixed_bytes(self, budget_bytes: int | None = None) -> int:
        """Bytes that no K changes.

        With the overhead this includes the decimal width of the JSON's total payload
        P, which depends on every K. It is bounded by the width of an upper bound on P:
        ``max_payload`` and, under a budget B, ``B - overhead - (every layer's shortest
        metadata entry) - 1`` (the rest of a file that fits). So the model is exact
        unless a power of ten lies between the real P and that bound; then it is over
        by a byte or two, never under, and a plan can only be that much conservative.
        """
        if not self.include_overhead:
            return self.raw_payload
        bound = self.max_payload
        if budget_bytes is not None:
            meta = sum(min(c[k] - self.payload[p][k] for k in c) for p, c in self.choices.items())
            bound = min(bound, budget_bytes - self.overhead - meta - 1)
        return self.raw_payload + self.overhead + _digits(max(bound, 0))

    def payload_bytes(self, ks: Mapping[str, int]) -> int:
        """The file's payload (codebooks, packed indices, raw leaves) at ``ks``."""
        self._check_ks(ks)
        return self.raw_payload + sum(self.payload[p][k] for p, k in ks.items())

    def file_bytes(self, ks: Mapping[str, int]) -> int:
        """Exact size of the ``compress.save`` file at ``ks`` ({path: K}) with the
        overhead; the exact payload without it."""
        if not self.include_overhead:
            return self.payload_bytes(ks)
        total = self.raw_payload + self.overhead + sum(self.choices[p][k] for p, k in ks.items())
        return total + _digits(self.payload_bytes(ks))

    def _check_ks(self, ks: Mapping[str, int]) -> None:
        if set(ks) != set(self.choices):
            raise ValueError(
                f"ks must give a K for exactly the planned paths {list(self.choices)}, "
                f"got {list(ks)}"
            )
        bad = {p: k for p, k in ks.items() if k not in self.choices[p]}
        if bad:
            raise ValueError(f"K values without a size: {bad}")


def packed_bytes_per_choice(
    params: Any,
    paths: Sequence[str] | None = None,
    ks: Ks = DEFAULT_KS,
    *,
    codebook_dtype: str = "float32",
    include_overhead: bool = True,
) -> LayerBytes:
    """Exact bytes of each layer at each K in the packed format, and the fixed bytes.

    A layer of n weights at K takes ``K * codebook itemsize + ceil(n * ceil(log2 K) / 8)``
    payload bytes (as :func:`qareg_jax.compress.save` writes it); every other leaf
    is stored raw (``n * itemsize``). With ``include_overhead`` (default) the sizes
    are of the whole file: each layer also carries its JSON metadata entry (its K,
    bits and byte count are written in decimal, so the entry's length depends on K),
    and the fixed part holds the 52-byte header and checksum, the JSON skeleton and
    the raw leaves' entries; :meth:`LayerBytes.file_bytes` is then the exact file
    size. Without it, the sizes are the payload only.

    Args:
      params: the model's pytree (only shapes and dtypes are read).
      paths: the layers to plan; None: the default selection.
      ks: candidate Ks, shared or ``{path: Ks}``; K > a leaf's size is dropped.
      codebook_dtype: "float32" or "float16", as passed to ``compress.save``.
    """
    if codebook_dtype not in _CODEBOOK_DTYPES:
        raise ValueError(
            f"codebook_dtype must be one of {_CODEBOOK_DTYPES}, got {codebook_dtype!r}"
        )
    paths = resolve_paths(params, paths)
    leaves = named_leaves(params)
    cands = _candidates(leaves, paths, ks)
    cb = np.dtype(codebook_dtype).itemsize
    choices: dict[str, dict[int, int]] = {}
    payload: dict[str, dict[int, int]] = {}
    n_of: dict[str, int] = {}
    raw_payload = raw_entries = 0
    float32_bytes = 0
    for name, leaf in leaves.items():
        shape = tuple(int(s) for s in np.shape(leaf))
        dtype = np.dtype(leaf.dtype) if hasattr(leaf, "dtype") else np.asarray(leaf).dtype
        n = math.prod(shape)
        float32_bytes += 4 * n
        entry: dict[str, Any] = {"path": name, "shape": list(shape), "dtype": dtype.name}
        if name not in cands:
            raw_payload += n * dtype.itemsize
            raw_entries += _json_len({**entry, "nbytes": n * dtype.itemsize})
            continue
        n_of[name] = n
        payload[name], choices[name] = {}, {}
        for k in cands[name]:
            bits = bits_per_index(k)
            nbytes = k * cb + -(-n * bits // 8)
            payload[name][k] = nbytes
            meta = _json_len({**entry, "k": k, "bits": bits, "nbytes": nbytes})
            choices[name][k] = nbytes + (meta if include_overhead else 0)
    # The JSON: {"codebook_dtype":..,"payload_nbytes":<P>,"leaves":[e1,e2,...]}; the
    # skeleton with an empty list and no P digits, plus one comma between entries.
    skeleton = _json_len({"codebook_dtype": codebook_dtype, "payload_nbytes": 0, "leaves": []})
    overhead = _HEAD_BYTES + _DIGEST_BYTES + skeleton - 1 + raw_entries + len(leaves) - 1
    max_payload = raw_payload + sum(max(v.values()) for v in payload.values())
    return LayerBytes(
        choices=choices,
        payload=payload,
        raw_payload=raw_payload,
        overhead=overhead if include_overhead else 0,
        n=n_of,
        float32_bytes=float32_bytes,
        codebook_dtype=codebook_dtype,
        include_overhead=include_overhead,
        max_payload=max_payload,
    )


# --------------------------------------------------------------------------- planning


@dataclasses.dataclass(frozen=True)
class Plan:
    """One K per layer, chosen by :func:`plan_bits`.

    Attributes:
      ks: ``{path: K}`` in layer order.
      total_bytes: bytes of the model at ``ks`` (the exact file size when the sizes
        came from :func:`packed_bytes_per_choice` with the overhead).
      total_sensitivity: the summed sensitivity of the chosen (layer, K) pairs.
      budget_bytes: the budget it was planned for.
      layer_bytes, layer_sensitivity: per layer at its K (bytes as in the sizes table:
        with :func:`packed_bytes_per_choice`'s default, payload + metadata entry).
      fixed_bytes: bytes no K changes (raw leaves, container).
      n: ``{path: number of weights}`` (None when the sizes did not say).
    """

    ks: dict[str, int]
    total_bytes: int
    total_sensitivity: float
    budget_bytes: int
    layer_bytes: dict[str, int]
    layer_sensitivity: dict[str, float]
    fixed_bytes: int
    n: dict[str, int | None]

    def table(self) -> str:
        """A printable text table: layer, params, K, bits, bytes, sensitivity; totals."""
        rows = [("layer", "params", "K", "bits", "bytes", "sensitivity")]
        for p, k in self.ks.items():
            n = self.n.get(p)
            rows.append(
                (
                    p,
                    "-" if n is None else f"{n:,}",
                    str(k),
                    str(bits_per_index(k)),
                    f"{self.layer_bytes[p]:,}",
                    f"{self.layer_sensitivity[p]:.4g}",
                )
            )
        rows.append(("fixed (raw leaves, container)", "", "", "", f"{self.fixed_bytes:,}", ""))
        rows.append(("total", "", "", "", f"{self.total_bytes:,}", f"{self.total_sensitivity:.4g}"))
        rows.append(("budget", "", "", "", f"{self.budget_bytes:,}", ""))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

        def fmt(r: tuple[str, ...]) -> str:
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )

        rule = "  ".join("-" * w for w in widths)
        return "\n".join([fmt(rows[0]), rule, *map(fmt, rows[1:-3]), rule, *map(fmt, rows[-3:])])

    def __str__(self) -> str:
        return self.table()


def _check_int_bytes(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int number of bytes, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0 bytes, got {value}")
    return int(value)


def plan_bits(
    sensitivity: Table,
    sizes: LayerBytes | Mapping[str, Mapping[int, int]],
    budget_bytes: int,
) -> Plan:
    """The K per layer minimising the summed sensitivity with total bytes <= ``budget_bytes``.

    A multiple-choice knapsack, solved exactly by dynamic programming over layers on
    Pareto frontiers: after layer l the state is the set of (bytes, cost) pairs of
    the first l layers' choices that no other pair beats in both (fewer or equal
    bytes and strictly lower cost). Any optimal full choice extends a frontier pair
    (replacing a dominated prefix by its dominator keeps the rest feasible and no
    worse), so the optimum is the cheapest final pair within the budget; pairs that
    cannot fit even with every later layer at its smallest size are dropped. No byte
    discretisation, so no rounding; the frontier has at most one pair per distinct
    byte total (it stays small in practice: ~|Ks| x layers for tens of layers).
    Ties in cost go to fewer bytes.

    Args:
      sensitivity: ``{path: {K: cost}}`` (e.g. :func:`layer_sensitivity`); the
        choices are these (path, K) pairs.
      sizes: a :class:`LayerBytes` (then the fixed bytes count, and ``total_bytes``
        is the exact file size) or a plain ``{path: {K: bytes}}`` (no fixed bytes).
        It must have a size for every (path, K) of ``sensitivity`` and no other path.
      budget_bytes: the budget (an int > 0); see :func:`parse_budget`.

    Raises:
      ValueError: naming ``budget_bytes`` and the minimum feasible size when nothing
        fits; mismatched tables, NaN or infinite costs, negative sizes.
    """
    budget = _check_int_bytes(budget_bytes, "budget_bytes")
    table = sizes.choices if isinstance(sizes, LayerBytes) else sizes
    fixed = sizes.fixed_bytes(budget) if isinstance(sizes, LayerBytes) else 0
    paths = list(sensitivity)
    if not paths:
        raise ValueError("sensitivity is empty: nothing to plan")
    if set(table) != set(paths):
        raise ValueError(
            f"sizes and sensitivity must cover the same paths; only in sizes: "
            f"{sorted(set(table) - set(paths))}, only in sensitivity: "
            f"{sorted(set(paths) - set(table))}"
        )
    ks_of, cost_of, bytes_of = _choice_arrays(sensitivity, table)

    smallest = fixed + sum(int(bytes_of[p].min()) for p in paths)
    if smallest > budget:
        raise ValueError(
            f"budget_bytes={budget:,} is below the smallest possible model: {smallest:,} "
            f"bytes (every layer at its cheapest K, {fixed:,} fixed bytes); raise the "
            "budget or offer smaller Ks"
        )
    picks, total_cost = _pareto_knapsack(paths, ks_of, cost_of, bytes_of, budget - fixed)
    ks = {p: picks[p] for p in paths}
    layer_bytes = {p: int(table[p][k]) for p, k in ks.items()}
    if isinstance(sizes, LayerBytes):
        total = sizes.file_bytes(ks)
        fixed = total - sum(layer_bytes.values())
        n: dict[str, int | None] = {p: sizes.n[p] for p in paths}
    else:
        total = sum(layer_bytes.values())
        n = dict.fromkeys(paths)
    if total > budget:  # cannot happen: the fixed bytes above are an upper bound
        raise RuntimeError(f"plan of {total} bytes exceeds budget_bytes={budget}")
    return Plan(
        ks=ks,
        total_bytes=total,
        total_sensitivity=total_cost,
        budget_bytes=budget,
        layer_bytes=layer_bytes,
        layer_sensitivity={p: float(sensitivity[p][k]) for p, k in ks.items()},
        fixed_bytes=fixed,
        n=n,
    )


def _choice_arrays(
    sensitivity: Table, table: Mapping[str, Mapping[int, int]]
) -> tuple[dict[str, list[int]], dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Per path: its sorted Ks, their costs (float64) and byte sizes (int64), validated."""
    ks_of, cost_of, bytes_of = {}, {}, {}
    for p in sensitivity:
        ks = sorted(sensitivity[p])
        if not ks:
            raise ValueError(f"sensitivity[{p!r}] has no K")
        missing = [k for k in ks if k not in table[p]]
        if missing:
            raise ValueError(f"sizes[{p!r}] has no size for K={missing}")
        c = np.array([float(sensitivity[p][k]) for k in ks], np.float64)
        b = np.array([int(table[p][k]) for k in ks], np.int64)
        if not np.isfinite(c).all():
            raise ValueError(
                f"sensitivity[{p!r}] holds NaN or inf: {dict(zip(ks, c, strict=True))}"
            )
        if (b < 0).any():
            raise ValueError(f"sizes[{p!r}] holds negative byte counts")
        ks_of[p], cost_of[p], bytes_of[p] = ks, c, b
    return ks_of, cost_of, bytes_of


def _pareto_knapsack(
    paths: list[str],
    ks_of: Mapping[str, list[int]],
    cost_of: Mapping[str, np.ndarray],
    bytes_of: Mapping[str, np.ndarray],
    budget: int,
) -> tuple[dict[str, int], float]:
    """``({path: K}, summed cost)`` of the cheapest choice within ``budget`` bytes, by
    dynamic programming over layers on (bytes, cost) Pareto frontiers (see
    :func:`plan_bits`); the caller has checked that the smallest choice fits."""
    # rest[l]: the fewest bytes layers l.. can take.
    rest = np.cumsum([int(bytes_of[p].min()) for p in paths][::-1])[::-1].tolist() + [0]
    fb = np.zeros(1, np.int64)  # frontier bytes, ascending
    fc = np.zeros(1, np.float64)  # frontier costs, strictly descending
    parents: list[tuple[np.ndarray, np.ndarray]] = []  # per layer: (prev index, choice)
    for layer, p in enumerate(paths):
        cb = (fb[:, None] + bytes_of[p][None, :]).ravel()
        cc = (fc[:, None] + cost_of[p][None, :]).ravel()
        prev = np.repeat(np.arange(fb.size), bytes_of[p].size)
        choice = np.tile(np.arange(bytes_of[p].size), fb.size)
        ok = cb + rest[layer + 1] <= budget
        cb, cc, prev, choice = cb[ok], cc[ok], prev[ok], choice[ok]
        order = np.lexsort((cc, cb))  # bytes ascending, then cost ascending
        cb, cc, prev, choice = cb[order], cc[order], prev[order], choice[order]
        best_before = np.concatenate([[np.inf], np.minimum.accumulate(cc)[:-1]])
        keep = cc < best_before
        fb, fc = cb[keep], cc[keep]
        parents.append((prev[keep], choice[keep]))
    i = int(np.argmin(fc))  # last frontier pair = cheapest; argmin for clarity
    total_cost = float(fc[i])
    picks: dict[str, int] = {}
    for layer in range(len(paths) - 1, -1, -1):
        prev, choice = parents[layer]
        picks[paths[layer]] = ks_of[paths[layer]][int(choice[i])]
        i = int(prev[i])
    return picks, total_cost


# --------------------------------------------------------------------------- helpers

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}
_BUDGET = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")


def parse_budget(spec: str | int, original_bytes: int | None = None) -> int:
    """A budget in bytes from ``"1MB"``, ``"500kB"``, ``"1.5MiB"``, ``"16x"`` or an int.

    Units (case-insensitive): B, kB = 1000, MB = 10**6, GB = 10**9, KiB = 1024, MiB,
    GiB; no unit means bytes. ``"<r>x"`` is a compression ratio against
    ``original_bytes`` (use :attr:`LayerBytes.float32_bytes`, the float32 model):
    ``floor(original_bytes / r)``. Fractions of a byte are floored.

    Raises:
      ValueError: an unparsable string, an unknown unit, a budget or ratio <= 0, a
        ratio without ``original_bytes``, or a result below 1 byte.
      TypeError: ``spec`` neither a str nor an int.
    """
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
        return _check_int_bytes(spec, "budget")
    if not isinstance(spec, str):
        raise TypeError(f"budget must be a str like '1MB' or '16x', or an int, got {spec!r}")
    m = _BUDGET.fullmatch(spec)
    unit = m.group(2).lower() if m else ""
    if not m or (unit not in _UNITS and unit != "x"):
        raise ValueError(
            f"cannot parse budget {spec!r}: give bytes ('250000', '500kB', '1MB', '1.5MiB') "
            "or a compression ratio against float32 ('16x')"
        )
    value = float(m.group(1))
    if value <= 0:
        raise ValueError(f"budget {spec!r} must be > 0")
    if unit == "x":
        if original_bytes is None:
            raise ValueError(
                f"budget {spec!r} is a ratio: original_bytes (the float32 size) is needed"
            )
        out = math.floor(_check_int_bytes(original_bytes, "original_bytes") / value)
    else:
        out = math.floor(value * _UNITS[unit])
    if out < 1:
        raise ValueError(f"budget {spec!r} is below 1 byte")
    return out


def specs_for_plan(
    plan: Plan | Mapping[str, int], base_spec: QuantSpec | None = None
) -> dict[str, QuantSpec]:
    """``{path: base_spec with k = the planned K}``, ready for ``attach`` (like
    ``make_specs`` output). ``base_spec`` defaults to ``QuantSpec()``."""
    base = QuantSpec() if base_spec is None else base_spec
    if not isinstance(base, QuantSpec):
        raise TypeError(f"base_spec must be a QuantSpec, got {base!r}")
    ks = plan.ks if isinstance(plan, Plan) else plan
    return {p: dataclasses.replace(base, k=int(k)) for p, k in ks.items()}
