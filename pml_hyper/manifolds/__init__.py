"""Pure tensor geometry (no module state)."""

from .poincare import PoincareBall

__all__ = ["PoincareBall"]
