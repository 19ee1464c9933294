"""Accuracy per hierarchy level, as PML testers compute it with ``label_hierarchy_level``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator


def _as_levels(labels, n: int, what: str) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(labels))
    if labels.dim() == 1:
        labels = labels[:, None]
    if labels.dim() != 2:
        raise ValueError(f"{what} labels must be (N,) or (N, L), got {tuple(labels.shape)}")
    if len(labels) != n:
        raise ValueError(f"{what}: {len(labels)} labels for {n} embeddings")
    return labels


def level_accuracies(
    calculator: AccuracyCalculator,
    query: torch.Tensor,
    query_labels,
    reference: torch.Tensor | None = None,
    reference_labels=None,
    level_names: Sequence[str] | None = None,
    **kwargs,
) -> dict[str, dict[str, float]]:
    """``calculator.get_accuracy`` at every level of multi-level labels.

    Args:
        calculator: e.g. :class:`~pml_hyper.evaluation.RecallAtK`.
        query: ``(Nq, D)`` embeddings; query_labels ``(Nq, L)`` (or ``(Nq,)``, one level).
        reference: ``(Nr, D)`` or ``None`` (all-vs-all, self-matches excluded by index);
            reference_labels ``(Nr, L)``.
        level_names: ``L`` names (e.g. a dataset's ``hierarchy_levels``); default
            ``"level0"``, ``"level1"``, ...
        **kwargs: passed to ``get_accuracy`` (``include``, ``exclude``).

    Returns:
        ``{level name: {metric: value}}``, finest level first.
    """
    query_labels = _as_levels(query_labels, len(query), "query")
    if (reference is None) != (reference_labels is None):
        raise ValueError("give reference and reference_labels together")
    if reference is not None:
        reference_labels = _as_levels(reference_labels, len(reference), "reference")
        if reference_labels.shape[1] != query_labels.shape[1]:
            raise ValueError(
                f"query labels have {query_labels.shape[1]} levels, reference labels "
                f"{reference_labels.shape[1]}"
            )
    num_levels = query_labels.shape[1]
    if level_names is None:
        level_names = [f"level{i}" for i in range(num_levels)]
    level_names = list(level_names)
    if len(level_names) != num_levels:
        raise ValueError(f"{len(level_names)} level names for {num_levels} label levels")
    results = {}
    for i, name in enumerate(level_names):
        ref_labels = None if reference is None else reference_labels[:, i]
        results[name] = calculator.get_accuracy(
            query, query_labels[:, i], reference, ref_labels, **kwargs
        )
    return results
