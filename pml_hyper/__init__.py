"""pml_hyper: HIST, HIER and Poincaré-ball geometry for pytorch-metric-learning.

Sub-packages are imported on first attribute access, so ``import pml_hyper`` stays light.
"""

import importlib

__version__ = "0.1.0"

_SUBPACKAGES = (
    "data",
    "distances",
    "evaluation",
    "knn",
    "layers",
    "losses",
    "manifolds",
    "miners",
    "models",
    "regularizers",
    "training",
    "utils",
)


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES))
