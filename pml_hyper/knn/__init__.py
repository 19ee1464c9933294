"""kNN functions for PML's AccuracyCalculator, testers and InferenceModel."""

from .cosine_knn import CosineKNN
from .hyperbolic_knn import HyperbolicKNN

__all__ = ["CosineKNN", "HyperbolicKNN"]
