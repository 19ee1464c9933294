"""Euclidean features into the Poincaré ball (docs/hyperbolic.md#topoincare, docs/hier.md#head)."""

from __future__ import annotations

import torch

from ..manifolds.poincare import OFFICIAL_EPS, PoincareBall, full_precision
from ..utils.checks import check_finite


class ToPoincare(torch.nn.Module):
    """Feature clipping, exponential map at 0, projection and the Riemannian gradient rescale.

    z = project(expmap0(clip_r(u))), with clip_r(u) = u · min(1, r/‖u‖) (Guo et al. 2021).

    By default (``riemannian=False``) the backward pass is the plain gradient of whatever loss
    follows, so the layer is safe in front of any PML loss (Hyp uses it this way). With
    ``riemannian=True`` the backward multiplies the gradient of each output row by
    (1 - c‖z‖²)²/4 = 1/λ_z², turning Euclidean gradients into Riemannian ones, as HIER's code
    does; the model then no longer receives the loss's gradient. HIER's head
    (:class:`~pml_hyper.models.PoincareHead`, ``head="hier"``) opts in explicitly.

    Shapes: ``(..., n) -> (..., n)``. Computes in float32 (float64 for float64 input) with autocast
    disabled, and returns that dtype.

    Args:
        c: curvature magnitude (HIER/Hyp: 0.1).
        clip_r: clipping radius in the tangent space (2.3 in HIER/Hyp); ``None`` disables it.
        riemannian: rescale gradients by 1/λ_z² in the backward pass (HIER: True; default False,
            the loss's own gradient).
        official: the papers' epsilons (clip factor r/(‖u‖ + 1e-5), c rounded to float32, ...)
            for golden parity tests only; see :class:`~pml_hyper.manifolds.PoincareBall`.
        check_inputs: raise ``ValueError`` naming input rows with NaN or inf (one host sync).
        ball: a ``PoincareBall(c, official=official)`` to share with another owner (e.g. a
            loss's distance); by default the layer makes its own.
    """

    def __init__(
        self,
        c: float = 0.1,
        clip_r: float | None = 2.3,
        riemannian: bool = False,
        official: bool = False,
        check_inputs: bool = True,
        ball: PoincareBall | None = None,
    ):
        super().__init__()
        if clip_r is not None and not clip_r > 0:
            raise ValueError(f"clip_r must be positive or None, got {clip_r}")
        if ball is None:
            ball = PoincareBall(c, official=official)
        elif (ball.c_raw, ball.official) != (float(c), official):
            raise ValueError(f"ball={ball!r} differs from c={c}, official={official}")
        self.ball = ball
        self.check_inputs = check_inputs
        self.c = c
        self.clip_r = clip_r
        self.riemannian = riemannian
        self.official = official

    def extra_repr(self) -> str:
        return (
            f"c={self.c}, clip_r={self.clip_r}, riemannian={self.riemannian}, "
            f"official={self.official}"
        )

    def clip(self, u: torch.Tensor) -> torch.Tensor:
        """u · min(1, r/‖u‖); the zero vector stays zero (official: r/(‖u‖ + 1e-5))."""
        if self.clip_r is None:
            return u
        norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
        if self.official:
            return u * torch.clamp(self.clip_r / (norm + OFFICIAL_EPS), max=1)
        return u * (self.clip_r / torch.clamp(norm, min=self.clip_r))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.check_inputs:
            check_finite(u, "ToPoincare input")
        with full_precision(u) as (u,):
            z = self.ball.project(self.ball.expmap0(self.clip(u)))
            if self.riemannian:
                z = self.ball.riemannian_gradient(z)
            return z
