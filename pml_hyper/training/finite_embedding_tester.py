"""PML's global embedding-space tester that refuses non-finite embeddings."""

from __future__ import annotations

import torch
from pytorch_metric_learning import testers

from .trainer import NonFiniteLossError


class NonFiniteEmbeddingsError(NonFiniteLossError):
    """The model produced NaN or infinite embeddings: the run diverged."""


class FiniteEmbeddingTester(testers.GlobalEmbeddingSpaceTester):
    """``GlobalEmbeddingSpaceTester`` that raises :class:`NonFiniteEmbeddingsError` when any
    computed embedding is NaN or infinite, before the kNN and accuracies see it.

    ``last_embeddings`` keeps the ``{split: (embeddings, labels)}`` of the latest
    :meth:`test` (PML deletes its own copy), for metrics computed from the same embeddings.
    """

    last_embeddings: dict | None = None

    def get_all_embeddings_for_all_splits(self, *args, **kwargs):
        self.last_embeddings = super().get_all_embeddings_for_all_splits(*args, **kwargs)
        return self.last_embeddings

    def get_all_embeddings(self, *args, **kwargs):
        embeddings, labels = super().get_all_embeddings(*args, **kwargs)
        finite = torch.isfinite(torch.as_tensor(embeddings)).all(dim=1)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise NonFiniteEmbeddingsError(
                f"non-finite embeddings ({bad} of {len(finite)} rows) before evaluation: "
                "the run diverged; training stopped, the "
                "last good checkpoint is kept. Lower the learning rate or clip gradients "
                "(gradients.max_norm)"
            )
        return embeddings, labels
