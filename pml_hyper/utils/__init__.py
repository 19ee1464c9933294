"""Shared input checks and geometry-aware PML testers / inference models.

The geometry helpers are imported on first access, so the low-level modules can import the
checks without importing the kNN and layers.
"""

from .checks import (
    check_finite,
    check_generator_device,
    check_in_ball,
    describe_rows,
    warn_if_unit_normalized,
)

_GEOMETRY = ("make_inference_model", "make_tester", "model_curvature", "retrieval_settings")

__all__ = [
    "check_finite",
    "check_generator_device",
    "check_in_ball",
    "describe_rows",
    "warn_if_unit_normalized",
    *_GEOMETRY,
]


def __getattr__(name: str):
    if name in _GEOMETRY:
        from . import geometry

        return getattr(geometry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
