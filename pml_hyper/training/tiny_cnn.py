"""A few-layer CNN with the interface of :class:`pml_hyper.models.EmbeddingModel`, for tests."""

from __future__ import annotations

import torch

from ..models import HIERHead, HISTHead


class TinyCNN(torch.nn.Module):
    """Two conv–BN–ReLU blocks, GAP + GMP pooling and an embedding head: ``(B, 3, H, W) ->
    (B, D)``; ``backbone`` and ``head`` attributes as in ``EmbeddingModel``.

    Args:
        embedding_size: D.
        head: ``"hist"``, ``"hier"`` or a module mapping ``(B, 16)`` to ``(B, D)``.
        width: channels of the conv layers (the feature size ``num_features``).
    """

    def __init__(self, embedding_size: int, head: str | torch.nn.Module = "hist", width: int = 16):
        super().__init__()
        self.num_features = width
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
        )
        heads = {"hist": HISTHead, "hier": HIERHead}
        self.head = heads[head](width, embedding_size) if isinstance(head, str) else head

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone(images)
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
