"""Neural-network layers."""

from .to_poincare import ToPoincare

__all__ = ["ToPoincare"]
