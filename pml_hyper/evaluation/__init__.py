"""Paper-protocol evaluation: Recall@K for PML's AccuracyCalculator and testers."""

from .dendrogram_purity import PurityResult, dendrogram_purity
from .level_accuracies import level_accuracies
from .recall_at_k import (
    CUB_CARS_K_VALUES,
    INSHOP_K_VALUES,
    SOP_K_VALUES,
    RecallAtK,
    recall_metric_names,
)

__all__ = [
    "CUB_CARS_K_VALUES",
    "INSHOP_K_VALUES",
    "PurityResult",
    "SOP_K_VALUES",
    "RecallAtK",
    "dendrogram_purity",
    "level_accuracies",
    "recall_metric_names",
]
