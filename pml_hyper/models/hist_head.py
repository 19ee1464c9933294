"""HIST's embedding head (docs/hist.md#data)."""

from __future__ import annotations

import torch

from .geometry import COSINE, Geometry


class HISTHead(torch.nn.Module):
    """Linear(F → D) then LayerNorm(D) without affine parameters: ``(B, F) -> (B, D)``.

    The input is the pooled backbone feature (GAP + GMP summed for ResNet-50). The output norm is
    ≈ √D; HIST's loss takes it as is and its evaluation L2-normalises it. The Linear weight is
    ``kaiming_normal_(mode="fan_out")`` and its bias 0, as in the official code.

    Args:
        in_features: F, the backbone feature size (2048 for ResNet-50).
        embedding_size: D (512 in the paper).
    """

    def __init__(self, in_features: int, embedding_size: int):
        super().__init__()
        self.linear = torch.nn.Linear(in_features, embedding_size)
        torch.nn.init.kaiming_normal_(self.linear.weight, mode="fan_out")
        torch.nn.init.zeros_(self.linear.bias)
        self.norm = torch.nn.LayerNorm(embedding_size, elementwise_affine=False)

    @property
    def geometry(self) -> Geometry:
        """Cosine: HIST compares L2-normalised embeddings."""
        return COSINE

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.norm(self.linear(features))
