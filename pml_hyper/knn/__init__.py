"""kNN functions for PML's AccuracyCalculator, testers and InferenceModel."""

from .hyperbolic_knn import HyperbolicKNN

__all__ = ["HyperbolicKNN"]
