"""A few-layer CNN with the interface of :class:`pml_hyper.models.EmbeddingModel`, for tests."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .geometry import Geometry, geometry_of
from .heads import build_head


class TinyCNN(torch.nn.Module):
    """Two 16-channel conv–BN–ReLU blocks, GAP + GMP pooling and a named head (default
    HIST's): ``(B, 3, H, W) -> (B, D)``; ``backbone``, ``head``, ``num_features`` and
    ``geometry`` attributes as in ``EmbeddingModel``.
    """

    transform_backbone = "tf_efficientnet_lite0"
    """The backbone whose input transform (normalisation, interpolation) TinyCNN's data use."""

    def __init__(
        self,
        embedding_size: int,
        head: str = "hist",
        head_kwargs: Mapping[str, Any] | None = None,
    ):
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
        self.head = build_head(head, width, embedding_size, head_kwargs)

    @property
    def geometry(self) -> Geometry:
        """The head's geometry."""
        return geometry_of(self.head)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        x = self.backbone(images)
        return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
