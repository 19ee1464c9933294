"""Recall@K as a PML accuracy calculator (docs/hist.md#evaluation, docs/hier.md#evaluation,
docs/pml.md#evaluation)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import torch
from pytorch_metric_learning.utils.accuracy_calculator import (
    AccuracyCalculator,
    maybe_get_avg_of_avgs,
    nan_accuracy,
    try_getting_not_lone_labels,
)

from ..knn.cosine_knn import CosineKNN

CUB_CARS_K_VALUES = (1, 2, 4, 8)
"""CUB-200-2011 and Cars-196: all-vs-all over the test split."""
SOP_K_VALUES = (1, 10, 100, 1000)
"""Stanford Online Products: all-vs-all over the test split."""
INSHOP_K_VALUES = (1, 10, 20, 30)
"""In-shop: query split against gallery split (``splits_to_eval=[("query", ["gallery"])]``)."""


def recall_metric_names(k_values: Iterable[int]) -> list[str]:
    """The metric names ``recall_at_<K>`` of ``k_values``, in their order."""
    return [f"recall_at_{k}" for k in k_values]


class RecallAtK(AccuracyCalculator):
    """PML's ``AccuracyCalculator`` plus ``recall_at_<K>`` for each K in ``k_values``.

    recall_at_K = the fraction of queries with at least one same-label reference among their K
    nearest neighbours, the R@K of the papers; ``recall_at_1`` equals PML's ``precision_at_1``
    when no query is lone. PML's own metrics (``precision_at_1``, MAP@R, R-precision, NMI, ...)
    are still computed unless ``include``/``exclude`` say otherwise.

    - Self-match: with ``reference=None`` (or ``ref_includes_query``), each query's own index
      is removed from its neighbours by the ``knn_func``, by index as PML and HIER do (HIST's
      code drops the first neighbour instead, which differs only under exact ties).
      Any PML ``knn_func`` works: :class:`~pml_hyper.knn.HyperbolicKNN` for Poincaré-ball
      embeddings, ``FaissKNN`` / ``CustomKNN`` for Euclidean ones. The default is the exact
      cosine :class:`~pml_hyper.knn.CosineKNN` (PML's ``FaissKNN()`` L2 default ranks
      normalised embeddings the same way, but needs faiss).
    - Lone queries (no same-label item in the reference set): the papers count every query, so
      by default a lone query counts as a miss; PML's metrics drop lone queries instead
      (``exclude_lone_queries=True`` makes recall do the same). On CUB, Cars, SOP and In-shop
      no query is lone and both agree.
    - Neighbours: ``k`` (of PML) is raised to ``max(k_values)`` and capped at the reference size
      (R@K for K above it is the recall over the whole reference set).
    - Testers: ``GlobalEmbeddingSpaceTester(normalize_embeddings=False,
      accuracy_calculator=RecallAtK(...))``; keep ``normalize_embeddings=False`` for hyperbolic
      embeddings.
    - Hierarchies: with multi-level labels (a dataset's ``labels="hierarchy"``), the tester's
      ``label_hierarchy_level="all"`` gives ``recall_at_<K>_level<L>`` per level: a hit is a
      neighbour sharing that level's label (self-matches still excluded by index). Without a
      tester, :func:`pml_hyper.evaluation.level_accuracies` does the same.
    - Embeddings with NaN or inf entries are an error naming their rows, whatever the kNN.

    Args:
        k_values: the Ks; see ``CUB_CARS_K_VALUES``, ``SOP_K_VALUES``, ``INSHOP_K_VALUES``.
        exclude_lone_queries: drop lone queries from the recall, as PML's metrics do.
        official_inshop_mask: reproduce the HIER query/gallery quirk (docs/hier.md#evaluation,
            quirk 14): for query i, the unrelated reference item at position i is also
            removed. For parity tests only; it changes every kNN metric of the calculator.
        **accuracy_calculator_kwargs: ``AccuracyCalculator`` arguments (``include``,
            ``exclude``, ``knn_func``, ``device``, ...). ``k`` defaults to ``"max_bin_count"``
            (what MAP@R and R-precision need); an int below ``max(k_values)`` is an error.
    """

    def __init__(
        self,
        k_values: Iterable[int] = CUB_CARS_K_VALUES,
        exclude_lone_queries: bool = False,
        official_inshop_mask: bool = False,
        **accuracy_calculator_kwargs,
    ):
        k_values = tuple(k_values)
        if (
            not k_values
            or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in k_values)
            or len(set(k_values)) != len(k_values)
        ):
            raise ValueError(f"k_values must be distinct positive ints, got {k_values}")
        self.k_values = tuple(sorted(k_values))
        self.exclude_lone_queries = exclude_lone_queries
        self.official_inshop_mask = official_inshop_mask
        if accuracy_calculator_kwargs.get("knn_func") is None:
            accuracy_calculator_kwargs["knn_func"] = CosineKNN()
        k = accuracy_calculator_kwargs.setdefault("k", "max_bin_count")
        if isinstance(k, int) and k < self.k_values[-1]:
            raise ValueError(f"k={k} is below max(k_values)={self.k_values[-1]}")
        for k_value, name in zip(self.k_values, recall_metric_names(self.k_values), strict=True):
            setattr(self, f"calculate_{name}", functools.partial(self._recall, k_value))
        super().__init__(**accuracy_calculator_kwargs)
        if official_inshop_mask:
            self.knn_func = _OfficialQueryIndexMask(self.knn_func)

    def get_accuracy(self, query, query_labels, reference=None, reference_labels=None, *args, **kw):
        """PML's ``get_accuracy``, after checking that the embeddings are finite."""
        for name, x in (("query", query), ("reference", reference)):
            if x is None:
                continue
            x = torch.as_tensor(x)
            if x.dim() != 2:
                raise ValueError(f"RecallAtK: {name} embeddings must be 2-D, got {tuple(x.shape)}")
            bad = torch.nonzero(~torch.isfinite(x).all(dim=1)).flatten().tolist()
            if bad:
                shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
                raise ValueError(
                    f"RecallAtK: {len(bad)} {name} embedding rows hold NaN or inf (rows {shown})"
                )
        return super().get_accuracy(query, query_labels, reference, reference_labels, *args, **kw)

    def recall_metric_names(self) -> list[str]:
        """This calculator's ``recall_at_<K>`` names, by increasing K."""
        return recall_metric_names(self.k_values)

    def requires_knn(self) -> list[str]:
        return super().requires_knn() + self.recall_metric_names()

    def determine_k(
        self, bin_counts: torch.Tensor, num_reference_embeddings: int, ref_includes_query: bool
    ) -> int:
        k = super().determine_k(bin_counts, num_reference_embeddings, ref_includes_query)
        if set(self.recall_metric_names()) & set(self.get_curr_metrics()):
            k = max(k, self.k_values[-1])
        return min(k, num_reference_embeddings - int(ref_includes_query))

    def _recall(
        self,
        k: int,
        knn_labels: torch.Tensor,
        query_labels: torch.Tensor,
        not_lone_query_mask: torch.Tensor,
        label_counts: tuple[torch.Tensor, torch.Tensor],
        **kwargs,
    ) -> float | list[float]:
        """R@k from ``knn_labels`` (Nq, k_searched) and ``query_labels`` (Nq,)."""
        if self.exclude_lone_queries:
            knn_labels, query_labels = try_getting_not_lone_labels(
                knn_labels, query_labels, not_lone_query_mask
            )
            if knn_labels is None:
                return nan_accuracy(label_counts[0], self.return_per_class)
        gt_labels = query_labels[:, None]
        hits = self.label_comparison_fn(gt_labels, knn_labels[:, :k]).any(dim=1)
        return maybe_get_avg_of_avgs(
            hits.to(torch.float64), gt_labels, self.avg_of_avgs, self.return_per_class
        )


class _OfficialQueryIndexMask:
    """Wraps a ``knn_func``: with a separate reference set, query i also loses the reference at
    position i (HIER's ``get_recall`` compares query and gallery dataset indices)."""

    def __init__(self, knn_func: Callable):
        self.knn_func = knn_func

    def __call__(
        self,
        query: torch.Tensor,
        k: int,
        reference: torch.Tensor,
        ref_includes_query: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if ref_includes_query:
            return self.knn_func(query, k, reference, ref_includes_query)
        distances, indices = self.knn_func(query, min(k + 1, len(reference)), reference, False)
        masked = indices == torch.arange(len(indices), device=indices.device)[:, None]
        order = torch.argsort(masked.to(torch.int8), dim=1, stable=True)[:, :k]
        return distances.gather(1, order), indices.gather(1, order)
