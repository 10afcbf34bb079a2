"""The typed records of a run: what a stage is, and what it returns."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config import Config
    from .loop import Context


@dataclasses.dataclass(frozen=True)
class Pretrained:
    """The full-precision model every stage starts from, and its row fields.

    Attributes:
      variables: flax variables ``{"params", "batch_stats"?}`` (not serialised).
      acc_fp: test accuracy.
      wall_s: seconds the pretraining took (in the run that did it).
      step_s: median seconds per plain training step (None: not timed).
      acc_val_fp: validation accuracy (None without a validation split).
      digest: ``provenance.tree_digest`` of ``variables`` (None: not computed).
    """

    variables: dict[str, Any]
    acc_fp: float
    wall_s: float
    step_s: float | None = None
    acc_val_fp: float | None = None
    digest: str | None = None

    def to_json(self) -> dict[str, float | None]:
        """``stages/pretrain.json`` and the results' ``"pretrain"`` entry."""
        return {
            "acc_fp": self.acc_fp,
            "wall_s": self.wall_s,
            "step_s": self.step_s,
            "acc_val_fp": self.acc_val_fp,
            "digest": self.digest,
        }


@dataclasses.dataclass(frozen=True)
class Packed:
    """Sizes of a packed model (``compress.size_report``) and its file."""

    original_bytes: float
    packed_bytes: float
    huffman_bytes: float
    ratio: float
    huffman_ratio: float
    file_bytes: int
    model_file: str


@dataclasses.dataclass(frozen=True)
class StageResult:
    """One row of the results table (``stages/<stage>.json``, ``results.json``).

    Attributes:
      model, dataset, device: what ran where (``dataset`` is the table label).
      stage: the stage's path under the workdir's folders, e.g. ``"reg-nearest-k4"``
        (``"seed-1/reg-nearest-k4"`` in a run of several seeds).
      acc_fp: the pretrained model's test accuracy.
      method: the table name, e.g. ``"nearest (frozen reps)"`` or ``"kmeans"``.
      kind: "regularizer", "baseline" or "qat" (a ``STAGE_KINDS`` entry names its own).
      regularizer, freeze_reps, lam: the penalty; None for stages without one.
      k: number of levels.
      acc_reg: accuracy of the trained, unsnapped model; None for stages that do not
        train before quantizing.
      acc_pre, acc_post: accuracy after quantizing ("pre-tuning") and after fine-tuning.
      original_bytes ... model_file: :class:`Packed`.
      wall_s: seconds the stage took.
      histograms: per layer weight histograms before / after training (not a table
        column; only in ``stages/<stage>.json``).
      seed: the run's seed (None in rows written before seeds existed).
      step_s: median seconds per step of the stage's training phase (None: no such phase,
        or too short to time); step_rel: ``step_s`` over the pretraining's (plain) one.
      acc_val_fp, acc_val_pre, acc_val_post: the accuracies on the validation split (None
        without one).
      budget_bytes: a budget stage's budget (``Config.budget`` in bytes; ``file_bytes`` is
        the real packed file, never more); None in other stages.
      layer_ks: a budget stage's K per layer, ``{"params/conv1/kernel": K}`` (the packed
        file's paths, as in ``budget/plan.json``); None in other stages.
      fp_digest: the ``Pretrained.digest`` of the model the stage started from (None in
        rows written before digests existed).
    """

    model: str
    dataset: str
    device: str
    stage: str
    acc_fp: float
    method: str
    kind: str
    regularizer: str | None
    freeze_reps: bool | None
    k: int | None
    lam: float | None
    acc_reg: float | None
    acc_pre: float
    acc_post: float
    original_bytes: float
    packed_bytes: float
    huffman_bytes: float
    ratio: float
    huffman_ratio: float
    file_bytes: int
    model_file: str
    wall_s: float
    histograms: dict[str, Any] | None = dataclasses.field(default=None, repr=False)
    seed: int | None = None
    step_s: float | None = None
    step_rel: float | None = None
    acc_val_fp: float | None = None
    acc_val_pre: float | None = None
    acc_val_post: float | None = None
    budget_bytes: int | None = None
    layer_ks: dict[str, int] | None = None
    fp_digest: str | None = None

    def to_json(self, *, histograms: bool = True) -> dict[str, Any]:
        """The JSON row (field order = column order of ``table.csv``)."""
        row = dataclasses.asdict(self)
        if not histograms or self.histograms is None:
            row.pop("histograms")
        return row

    @classmethod
    def from_json(cls, row: Mapping[str, Any]) -> StageResult:
        """A row read back from ``stages/<stage>.json`` (unknown keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})


@dataclasses.dataclass(frozen=True)
class Stage:
    """One planned stage: its name, its ``STAGE_KINDS`` key, method, K and options.

    ``k`` None: a budget stage, at the budget plan's K per layer (``Context.plan``).
    """

    name: str
    kind: str
    method: str
    k: int | None
    freeze_reps: bool | None = None


@dataclasses.dataclass(frozen=True)
class StageKind:
    """A kind of method: ``plan(config, k)`` lists its stages at K (None: at the budget's
    K per layer, or none if the kind cannot), ``run`` runs one."""

    plan: Callable[[Config, int | None], list[Stage]]
    run: Callable[[Context, Pretrained, Stage], StageResult]
