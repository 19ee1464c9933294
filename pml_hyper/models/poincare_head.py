"""HIER's and Hyp's embedding head into the Poincaré ball (docs/hier.md#head)."""

from __future__ import annotations

import torch

from ..layers.to_poincare import ToPoincare
from .geometry import Geometry


class PoincareHead(torch.nn.Module):
    """LayerNorm(F) without affine → Linear(F → D) → :class:`~pml_hyper.layers.ToPoincare`:
    ``(B, F) -> (B, D)`` points of the Poincaré ball of curvature −c.

    The Linear weight is orthogonal (gain 1) and its bias 0, as in the official code. With
    LayerNorm the tangent norm is ≈ √D ≫ ``clip_r`` at initialisation, so every embedding starts
    clipped. HIER's head (``head="hier"``) is the default; Hyp's (Ermolov et al.,
    ``head="hyp"``) is ``layer_norm=False, riemannian=False``.

    Args:
        in_features: F (2048 for ResNet-50, 384 for ViT-S/DeiT-S/DINO).
        embedding_size: D.
        c: curvature magnitude (0.1).
        clip_r: feature-clipping radius in the tangent space (2.3); ``None`` disables it.
        riemannian: rescale gradients to Riemannian ones in ``ToPoincare`` (HIER: True).
        layer_norm: the leading LayerNorm (HIER's ``--use_lastnorm``, always on in its scripts).
    """

    def __init__(
        self,
        in_features: int,
        embedding_size: int,
        c: float = 0.1,
        clip_r: float | None = 2.3,
        riemannian: bool = True,
        layer_norm: bool = True,
    ):
        super().__init__()
        self.norm = (
            torch.nn.LayerNorm(in_features, elementwise_affine=False)
            if layer_norm
            else torch.nn.Identity()
        )
        self.linear = torch.nn.Linear(in_features, embedding_size)
        torch.nn.init.orthogonal_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)
        # Explicit: HIER's head rescales gradients (its default), Hyp's passes False.
        self.to_poincare = ToPoincare(c=c, clip_r=clip_r, riemannian=riemannian)

    @property
    def geometry(self) -> Geometry:
        """The Poincaré ball of the head's curvature c."""
        return Geometry.poincare(self.to_poincare.c)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.to_poincare(self.linear(self.norm(features)))
