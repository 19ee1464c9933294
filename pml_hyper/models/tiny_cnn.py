"""A few-layer CNN with the interface of :class:`pml_hyper.models.EmbeddingModel`, for tests."""

from __future__ import annotations

import torch

from .hist_head import HISTHead


class TinyCNN(torch.nn.Module):
    """Two 16-channel conv–BN–ReLU blocks, GAP + GMP pooling and a HIST head:
    ``(B, 3, H, W) -> (B, D)``; ``backbone``, ``head`` and ``num_features`` attributes as in
    ``EmbeddingModel`` (the runner swaps in the head its config asks for).
    """

    transform_backbone = "tf_efficientnet_lite0"
    """The backbone whose input transform (normalisation, interpolation) TinyCNN's data use."""

    def __init__(self, embedding_size: int):
        super().__init__()
        width = 16
        self.num_features = width
        self.backbone = torch.nn.Sequential(
            torch.nn.Conv2d(3, width, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
            torch.nn.Conv2d(width, width, 3, stride=2, padding=1),
            torch.nn.BatchNorm2d(width),
            torch.nn.ReLU(),
        )
        self.head = HISTHead(width, embedding_size)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone(images)
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
