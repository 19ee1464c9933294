"""Testers and ``InferenceModel`` built from a model's geometry.

A model's :class:`~pml_hyper.models.Geometry` (its ``geometry`` attribute, or the ball of its
:class:`~pml_hyper.layers.ToPoincare` layers; see :func:`~pml_hyper.models.geometry_of`) alone
decides how its embeddings are retrieved (:func:`retrieval_settings`): in the Poincaré ball,
:class:`~pml_hyper.knn.HyperbolicKNN` with the ball's curvature and ``normalize_embeddings=False``
(PML's default L2 normalisation would move every point onto the unit sphere); otherwise
:class:`~pml_hyper.knn.CosineKNN` on L2-normalised embeddings.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import InferenceModel

from ..knn.base_knn import BaseKNN
from ..knn.cosine_knn import CosineKNN
from ..knn.hyperbolic_knn import HyperbolicKNN
from ..models.geometry import Geometry, geometry_of


def retrieval_settings(geometry: Geometry, ball_backend: str = "auto") -> tuple[BaseKNN, bool]:
    """``(knn_func, normalize_embeddings)`` for embeddings of ``geometry``:
    ``(HyperbolicKNN(c=geometry.c, backend=ball_backend), False)`` in the Poincaré ball,
    ``(CosineKNN(), True)`` for cosine. Every tester and ``InferenceModel`` builder of
    pml_hyper takes its kNN from here."""
    if geometry.hyperbolic:
        return HyperbolicKNN(c=geometry.c, backend=ball_backend), False
    return CosineKNN(), True


def model_curvature(*models: torch.nn.Module | None) -> float | None:
    """Curvature c of the ball the models embed into, or ``None`` for a cosine model (see
    :func:`~pml_hyper.models.geometry_of`). Raises ``ValueError`` for balls of different c."""
    return geometry_of(*models).c


def make_inference_model(
    trunk: torch.nn.Module, embedder: torch.nn.Module | None = None, **kwargs
) -> InferenceModel:
    """PML ``InferenceModel`` whose ``knn_func`` and ``normalize_embeddings`` follow the model's
    geometry (:func:`retrieval_settings`). Hyperbolic: ``normalize_embeddings=True`` is
    rejected; a given ``knn_func`` is kept. Cosine: a given ``knn_func`` or
    ``normalize_embeddings`` is kept. ``kwargs`` go to ``InferenceModel`` (``match_finder``,
    ``data_device``, ...)."""
    geometry = geometry_of(trunk, embedder)
    if geometry.hyperbolic:
        _reject_normalization(kwargs, "InferenceModel")
    knn, normalize = retrieval_settings(geometry)
    kwargs.setdefault("knn_func", knn)
    kwargs.setdefault("normalize_embeddings", normalize)
    return InferenceModel(trunk, embedder=embedder, **kwargs)


def make_tester(
    *models: torch.nn.Module | None,
    accuracy_calculator: AccuracyCalculator | None = None,
    **kwargs,
) -> GlobalEmbeddingSpaceTester:
    """PML ``GlobalEmbeddingSpaceTester`` for the geometry of ``models`` (trunk, embedder).

    Without ``accuracy_calculator``, an ``AccuracyCalculator`` whose ``knn_func`` is that of
    :func:`retrieval_settings`; ``normalize_embeddings`` also comes from there. Hyperbolic: a
    given calculator must already use a ``HyperbolicKNN`` of the ball's c, and
    ``normalize_embeddings=True`` is rejected. ``kwargs`` go to the tester (``batch_size``,
    ``dataloader_num_workers``, ...)."""
    geometry = geometry_of(*models)
    knn, normalize = retrieval_settings(geometry)
    if geometry.hyperbolic:
        _reject_normalization(kwargs, "GlobalEmbeddingSpaceTester")
        kwargs["normalize_embeddings"] = False
        if accuracy_calculator is not None:
            given = accuracy_calculator.knn_func
            if not isinstance(given, HyperbolicKNN) or given.c != geometry.c:
                raise ValueError(
                    f"the model embeds into the Poincaré ball of c={geometry.c}, but the "
                    f"accuracy calculator uses knn_func={given!r}; pass "
                    f"knn_func=HyperbolicKNN(c={geometry.c})"
                )
    kwargs.setdefault("normalize_embeddings", normalize)
    if accuracy_calculator is None:
        accuracy_calculator = AccuracyCalculator(knn_func=knn)
    return GlobalEmbeddingSpaceTester(accuracy_calculator=accuracy_calculator, **kwargs)


def _reject_normalization(kwargs: dict, what: str) -> None:
    if kwargs.get("normalize_embeddings"):
        raise ValueError(
            f"{what}(normalize_embeddings=True) would move hyperbolic embeddings onto the unit "
            "sphere; leave it out for a model that embeds into the Poincaré ball"
        )
