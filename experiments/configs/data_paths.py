"""Where the configs find data that is not installed with the package.

The CIFAR-10 JPEG-75 copy is read from ``$QAREG_CIFAR10_JPEG`` when set, else from
``shared/data/cifar10-jpeg75.tar.gz`` beside the repository (this workplace's layout).
No config writes a machine's absolute path.
"""

import os
import pathlib

_BESIDE_REPO = pathlib.Path(__file__).resolve().parents[3] / "shared/data/cifar10-jpeg75.tar.gz"


def cifar10_jpeg() -> str:
    """The ``folder:PATH`` dataset name of the CIFAR-10 JPEG-75 copy."""
    return "folder:" + os.environ.get("QAREG_CIFAR10_JPEG", str(_BESIDE_REPO))
