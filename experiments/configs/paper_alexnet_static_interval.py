"""The interval ``[a, b]`` of the static penalties (sine, cosine) on AlexNet, chosen on the
5,000 validation images (issue 13). The paper table places them on each layer's min and
max (``interval="minmax"``), which puts sine's two levels at K = 2 on the outliers: 18.47 %
before fine-tuning against 63.46 % for ``nearest``. The robust choice offered by
``QuantSpec`` (``interval="std"``: ``mean +- s * std``) lets the evenly spaced levels sit
where the weights are. Each variant runs one penalty at one K with the paper table's recipe,
phases and rates, from the same full-precision model::

    python -m experiments.recipe_search experiments/configs/paper_alexnet_static_interval.py \\
        --pretrained-from RUNDIR_OF_THE_FP_ALEXNET

``s`` is not searched but set once per (penalty, K) so that the levels fall where an
optimal quantizer of a Gaussian puts them (the weights are close to one): at K = 2 the two
k-means centroids ``+- 0.8 std``, at K = 4 the uniform grid ``+- 0.5, +- 1.5 std``. Sine's
levels include both ends of ``[a, b]`` and cosine's are the centres of K equal bins, so the
same levels need ``s`` = 0.8 / 1.6 (sine / cosine) at K = 2 and 1.5 / 2.0 at K = 4. The
``minmax`` variant is the table's own rows: add ``--reuse minmax RUNDIR_OF_THE_TABLE`` and
its ``reg-{sine,cosine}-ste1-k{2,4}`` stages are read back instead of trained.

The ``mse`` variants need no ``s``: ``interval="mse"`` fits, per layer, the K evenly
spaced levels that snap its weights with the least squared error
(``codebook.mse_grid``; for a Gaussian, the ``std`` variants' levels) and places the
interval so that the penalty's minima are those levels. CPU: ~20 min per new variant on
a 2-core EPYC beside another run, ~30 beside two.
"""

import paper_alexnet

from qareg_jax.train import Config

STATIC = ("sine", "cosine")
# (penalty, K) -> s of interval="std": the levels at the Gaussian's optimal K-level points.
STD_MULTIPLE = {("sine", 2): 0.8, ("cosine", 2): 1.6, ("sine", 4): 1.5, ("cosine", 4): 2.0}


def get_config() -> Config:
    return paper_alexnet.get_config().replace(
        regularizers=STATIC,
        ks=(2, 4),
        baselines=(),
        qat=(),
        finetune_lr=paper_alexnet.finetune_rates(STATIC, ()),
    )


def get_variants() -> dict[str, dict]:
    return {
        "minmax": {},
        **{
            f"{reg}-std{s:g}-k{k}": dict(
                regularizers=(reg,), ks=(k,), interval="std", interval_param=s
            )
            for (reg, k), s in STD_MULTIPLE.items()
        },
        **{
            f"{reg}-mse-k{k}": dict(regularizers=(reg,), ks=(k,), interval="mse")
            for reg, k in STD_MULTIPLE
        },
    }
