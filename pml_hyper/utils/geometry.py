"""Testers and ``InferenceModel`` built from a model's geometry.

A model whose output goes through :class:`~pml_hyper.layers.ToPoincare` embeds into the Poincaré
ball: retrieval must use :class:`~pml_hyper.knn.HyperbolicKNN` with the layer's curvature and
``normalize_embeddings=False`` (PML's default L2 normalisation would move every point onto the
unit sphere). Any other model gets PML's defaults (normalised embeddings, cosine/L2 kNN).
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.testers import GlobalEmbeddingSpaceTester
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import InferenceModel

from ..knn.hyperbolic_knn import HyperbolicKNN
from ..layers.to_poincare import ToPoincare


def model_curvature(*models: torch.nn.Module | None) -> float | None:
    """Curvature c of the ball the models embed into (from their ``ToPoincare`` layers), or
    ``None`` for a Euclidean/cosine model. Raises ``ValueError`` for layers with different c."""
    curvatures = {
        m.c
        for model in models
        if model is not None
        for m in model.modules()
        if isinstance(m, ToPoincare)
    }
    if len(curvatures) > 1:
        raise ValueError(f"the model holds ToPoincare layers of different c: {sorted(curvatures)}")
    return curvatures.pop() if curvatures else None


def make_inference_model(
    trunk: torch.nn.Module, embedder: torch.nn.Module | None = None, **kwargs
) -> InferenceModel:
    """PML ``InferenceModel`` whose ``knn_func`` and ``normalize_embeddings`` follow the model:
    ``HyperbolicKNN(c)`` without normalisation for a hyperbolic model, PML's defaults otherwise.
    ``kwargs`` go to ``InferenceModel`` (``match_finder``, ``data_device``, ...)."""
    c = model_curvature(trunk, embedder)
    if c is not None:
        _reject_normalization(kwargs, "InferenceModel")
        kwargs.setdefault("knn_func", HyperbolicKNN(c=c))
        kwargs["normalize_embeddings"] = False
    return InferenceModel(trunk, embedder=embedder, **kwargs)


def make_tester(
    *models: torch.nn.Module | None,
    accuracy_calculator: AccuracyCalculator | None = None,
    **kwargs,
) -> GlobalEmbeddingSpaceTester:
    """PML ``GlobalEmbeddingSpaceTester`` for the geometry of ``models`` (trunk, embedder).

    Hyperbolic: ``normalize_embeddings=False`` and an ``AccuracyCalculator`` whose ``knn_func``
    is ``HyperbolicKNN(c)``; a given calculator must already use a ``HyperbolicKNN`` of that c.
    Euclidean: PML's defaults. ``kwargs`` go to the tester (``batch_size``,
    ``dataloader_num_workers``, ...)."""
    c = model_curvature(*models)
    if c is not None:
        _reject_normalization(kwargs, "GlobalEmbeddingSpaceTester")
        if accuracy_calculator is None:
            accuracy_calculator = AccuracyCalculator(knn_func=HyperbolicKNN(c=c))
        knn = accuracy_calculator.knn_func
        if not isinstance(knn, HyperbolicKNN) or knn.c != c:
            raise ValueError(
                f"the model embeds into the Poincaré ball of c={c}, but the accuracy calculator "
                f"uses knn_func={knn!r}; pass knn_func=HyperbolicKNN(c={c})"
            )
        kwargs["normalize_embeddings"] = False
    return GlobalEmbeddingSpaceTester(accuracy_calculator=accuracy_calculator, **kwargs)


def _reject_normalization(kwargs: dict, what: str) -> None:
    if kwargs.get("normalize_embeddings"):
        raise ValueError(
            f"{what}(normalize_embeddings=True) would move hyperbolic embeddings onto the unit "
            "sphere; leave it out for a model that ends in ToPoincare"
        )
