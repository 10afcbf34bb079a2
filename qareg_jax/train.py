"""``qareg_jax.train`` is :mod:`qareg_jax.pipeline` under its former name.

Experiment configs (``from qareg_jax.train import Config``), scripts and existing
workdirs use it; new code imports from :mod:`qareg_jax.pipeline`.
"""

from .pipeline import *  # noqa: F403
from .pipeline import __all__  # noqa: F401
