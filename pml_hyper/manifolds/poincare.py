"""Poincaré-ball geometry of curvature -c (``docs/hyperbolic.md``).

All operations are row-wise over the last dimension of ``(..., n)`` tensors, except
``pairwise_dist`` which returns an ``(N, M)`` matrix. They run in float32 (or float64 when an input
is float64) with autocast disabled: half-precision inputs are computed, and returned, in float32,
because 1 - 1e-5 rounds to 1 in float16/bfloat16 (docs/hyperbolic.md#half-precision).

Two numerical modes:

- ``official=False`` (default): the exact formulas. c is used as given, no epsilon is added to the
  Möbius denominator, artanh is ``atanh`` of an argument clamped to ``1 - max(1e-5, 4 eps)``.
- ``official=True``: the formulas of the papers' ``hyptorch`` code, for golden parity tests only:
  c rounded to float32, +1e-5 in the Möbius denominator, norms floored at 1e-5, the tanh argument
  clamped to ±15, and artanh with a straight-through clamp (gradient evaluated at the clamped
  argument, docs/hyperbolic.md#operations).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

from ..utils.checks import check_finite, check_in_ball

__all__ = ["PoincareBall", "check_finite", "full_precision", "working_dtype"]

PROJECTION_EPS = 1e-3
"""Relative distance to the boundary kept by :meth:`PoincareBall.project` (docs/hyperbolic.md)."""

OFFICIAL_EPS = 1e-5
"""The papers' epsilon: norm floors, Möbius denominator, artanh clamp."""

TANH_MAX = 15.0


def working_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """float64 if any input is float64, float32 otherwise (also for half-precision inputs)."""
    if any(t.dtype == torch.float64 for t in tensors):
        return torch.float64
    return torch.float32


@contextlib.contextmanager
def full_precision(*tensors: torch.Tensor) -> Iterator[list[torch.Tensor]]:
    """Disable autocast on the tensors' device and yield them cast to :func:`working_dtype`."""
    dtype = working_dtype(*tensors)
    with torch.autocast(device_type=tensors[0].device.type, enabled=False):
        yield [t.to(dtype) for t in tensors]


def artanh_max(dtype: torch.dtype) -> float:
    """Largest artanh argument allowed in ``dtype`` (docs/hyperbolic.md#half-precision, rule 2)."""
    return 1.0 - max(OFFICIAL_EPS, 4 * torch.finfo(dtype).eps)


class _StraightThroughArtanh(torch.autograd.Function):
    """Official artanh: clamp to ±(1 - 1e-5), backward g / (1 - x²) at the clamped x."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-1 + OFFICIAL_EPS, 1 - OFFICIAL_EPS)
        ctx.save_for_backward(x)
        return 0.5 * (torch.log1p(x) - torch.log1p(-x))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad / (1 - x**2)


class _RiemannianGradient(torch.autograd.Function):
    """Identity forward; backward scales the gradient of row z by (1 - c‖z‖²)² / 4 = 1/λ_z²."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, c: float) -> torch.Tensor:
        ctx.save_for_backward(z)
        ctx.c = c
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (z,) = ctx.saved_tensors
        scale = (1 - ctx.c * z.pow(2).sum(-1, keepdim=True)) ** 2 / 4
        return grad * scale, None


class PoincareBall:
    """The Poincaré ball {x : c‖x‖² < 1} of curvature -c (docs/hyperbolic.md, anchors below).

    Args:
        c: curvature magnitude (> 0). HIER and Hyp use 0.1 (radius 3.1623).
        official: reproduce the papers' epsilons (parity tests only; see module docstring).

    The maths does not validate its inputs (no host syncs): the public entry points
    (``PoincareDistance``, ``ToPoincare``, ``HIERLoss``, ``HyperbolicKNN``) do, under their own
    ``check_inputs`` flag, with :meth:`check_point` / :func:`pml_hyper.utils.check_finite`. Points
    on or outside the ball give clamped (finite but meaningless) distances.
    """

    def __init__(self, c: float = 0.1, official: bool = False):
        c = float(c)
        if not math.isfinite(c) or c <= 0:
            raise ValueError(f"curvature c must be a finite positive number, got {c}")
        self.c_raw = c
        self.official = official
        # The official code casts the Python float to a float32 tensor, even in float64 math.
        self.c = float(torch.tensor(c, dtype=torch.float32)) if official else c
        self.sqrt_c = math.sqrt(self.c)

    def __repr__(self) -> str:
        return f"PoincareBall(c={self.c_raw}, official={self.official})"

    @property
    def radius(self) -> float:
        return 1.0 / math.sqrt(self.c_raw)

    # ------------------------------------------------------------------ helpers
    def _norm_floor(self, dtype: torch.dtype) -> float:
        return OFFICIAL_EPS if self.official else torch.finfo(dtype).tiny

    def _artanh(self, x: torch.Tensor) -> torch.Tensor:
        if self.official:
            return _StraightThroughArtanh.apply(x)
        bound = artanh_max(x.dtype)
        return torch.atanh(x.clamp(-bound, bound))

    def check_point(self, x: torch.Tensor, name: str = "x") -> None:
        """Raise ``ValueError`` naming rows that are non-finite or not strictly inside the ball
        (one device-to-host sync). Explicit: the maths below never calls it."""
        check_in_ball(x, self.c_raw, name)

    # ------------------------------------------------------------------ row-wise maps
    def mobius_add(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """x ⊕_c y (docs/hyperbolic.md#operations), row-wise: ``(..., n), (..., n) -> (..., n)``."""
        with full_precision(x, y) as (x, y):
            c = self.c
            xy = (x * y).sum(-1, keepdim=True)
            x2 = x.pow(2).sum(-1, keepdim=True)
            y2 = y.pow(2).sum(-1, keepdim=True)
            num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
            den = 1 + 2 * c * xy + c**2 * x2 * y2
            if self.official:
                den = den + OFFICIAL_EPS
            return num / den

    def expmap0(self, u: torch.Tensor) -> torch.Tensor:
        """Exponential map at the origin, tanh(√c‖u‖) u / (√c‖u‖) (#operations): ``(..., n)``."""
        with full_precision(u) as (u,):
            norm = torch.linalg.vector_norm(u, dim=-1, keepdim=True)
            arg = self.sqrt_c * norm.clamp_min(self._norm_floor(u.dtype))
            if self.official:
                return torch.tanh(arg.clamp(-TANH_MAX, TANH_MAX)) * u / arg
            return u * (torch.tanh(arg) / arg)

    def logmap0(self, y: torch.Tensor) -> torch.Tensor:
        """Logarithmic map at the origin, artanh(√c‖y‖) y / (√c‖y‖) (#operations): ``(..., n)``."""
        with full_precision(y) as (y,):
            arg = self.sqrt_c * torch.linalg.vector_norm(y, dim=-1, keepdim=True).clamp_min(
                self._norm_floor(y.dtype)
            )
            return y * (self._artanh(arg) / arg)

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale rows with ‖x‖ > (1 - 1e-3)/√c onto that radius (#operations): ``(..., n)``."""
        with full_precision(x) as (x,):
            norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min(
                self._norm_floor(x.dtype)
            )
            max_norm = (1 - PROJECTION_EPS) / self.sqrt_c
            return torch.where(norm > max_norm, x / norm * max_norm, x)

    def riemannian_gradient(self, z: torch.Tensor) -> torch.Tensor:
        """Identity whose backward rescales row gradients by 1/λ_z² (#topoincare).

        Uses the curvature exactly as given, also in official mode (the originals do the same).
        """
        return _RiemannianGradient.apply(z, self.c_raw)

    # ------------------------------------------------------------------ distances
    def _distance_from_parts(self, diff_norm: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        """d = (2/√c) artanh(√c e / √den), with the official +1e-5 variant (#pairwise-distance)."""
        if self.official:
            ratio = diff_norm * den.sqrt() / (den + OFFICIAL_EPS)
        else:
            ratio = diff_norm / den.sqrt()
        return 2 / self.sqrt_c * self._artanh(self.sqrt_c * ratio)

    def _denominator(self, inner: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor) -> torch.Tensor:
        """den(x, y) = 1 - 2c⟨x,y⟩ + c²‖x‖²‖y‖², denominator of (-x) ⊕_c y (#pairwise-distance)."""
        c = self.c
        return 1 - 2 * c * inner + c**2 * x2 * y2

    def _stable_denominator(
        self, diff_norm: torch.Tensor, x2: torch.Tensor, y2: torch.Tensor
    ) -> torch.Tensor:
        """den(x, y) = (1 - c‖x‖²)(1 - c‖y‖²) + c‖x - y‖², the same quantity as
        :meth:`_denominator` without its cancellation near the boundary: every term is
        non-negative inside the ball, so √c e/√den < 1 and coincident points give exactly 0."""
        c = self.c
        return (1 - c * x2) * (1 - c * y2) + c * diff_norm.pow(2)

    def dist_from_inner(
        self, inner: torch.Tensor, x_sqnorm: torch.Tensor, y_sqnorm: torch.Tensor
    ) -> torch.Tensor:
        """Distances from ⟨x,y⟩, ‖x‖² and ‖y‖² (broadcast), with e² = ‖x‖² + ‖y‖² - 2⟨x,y⟩.

        The Gram expansion cancels near zero distance (absolute error ~sqrt(eps) there, and an
        infinite derivative), so this is for no-grad float64 search only: use
        :meth:`pairwise_dist` for losses. No input checks.
        """
        e = (x_sqnorm + y_sqnorm - 2 * inner).clamp_min(0).sqrt()
        return self._distance_from_parts(e, self._denominator(inner, x_sqnorm, y_sqnorm))

    def dist(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Row-wise distance d_c(x_i, y_i) (#pairwise-distance): ``(..., n), (..., n) -> (...)``."""
        with full_precision(x, y) as (x, y):
            e = torch.linalg.vector_norm(x - y, dim=-1)
            x2, y2 = x.pow(2).sum(-1), y.pow(2).sum(-1)
            if self.official:
                den = self._denominator((x * y).sum(-1), x2, y2)
            else:
                den = self._stable_denominator(e, x2, y2)
            return self._distance_from_parts(e, den)

    def dist0(self, x: torch.Tensor) -> torch.Tensor:
        """Distance to the origin, (2/√c) artanh(√c‖x‖) (#operations): ``(..., n) -> (...)``."""
        with full_precision(x) as (x,):
            return 2 / self.sqrt_c * self._artanh(self.sqrt_c * torch.linalg.vector_norm(x, dim=-1))

    def pairwise_dist(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Distance matrix D[i, j] = d_c(x_i, y_j): ``(N, n), (M, n) -> (N, M)``.

        O(N·M) memory: e = ‖x_i - y_j‖ from ``torch.cdist`` without the matrix-multiply
        expansion (exact 0 and a zero gradient at coincident points), and
        den = (1 - c‖x‖²)(1 - c‖y‖²) + c e², which has no cancellation, so distances stay finite
        and self-distances exact up to the boundary (official mode: the papers' Gram form).
        ``y=None`` means ``y = x``.
        """
        y = x if y is None else y
        if x.ndim != 2 or y.ndim != 2:
            raise ValueError(
                "pairwise_dist expects 2-D tensors (N, n) and (M, n), got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}"
            )
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"dimension mismatch: x has {x.shape[1]} columns, y {y.shape[1]}")
        with full_precision(x, y) as (x, y):
            e = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
            x2, y2 = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1).unsqueeze(0)
            if self.official:
                den = self._denominator(x @ y.T, x2, y2)
            else:
                den = self._stable_denominator(e, x2, y2)
            return self._distance_from_parts(e, den)

    # ------------------------------------------------------------------ Lorentz lift
    def to_lorentz(self, x: torch.Tensor, sq_norm: torch.Tensor | None = None) -> torch.Tensor:
        """Lift to the unit hyperboloid: ``(..., n) -> (..., n + 1)`` (#exact-knn).

        X₀ = (1 + c‖x‖²)/(1 - c‖x‖²), X_i = 2√c x_i/(1 - c‖x‖²), so that
        cosh(√c d_c(x, y)) = X₀Y₀ - Σ X_iY_i. Negating X₀ of the queries turns nearest
        neighbours into a max-inner-product search (#exact-knn). ``sq_norm`` (``(...)``, optional)
        is ‖x‖² when the caller already has it.
        """
        with full_precision(x) as (x,):
            sq_norm = x.pow(2).sum(-1) if sq_norm is None else sq_norm.to(x.dtype)
            c_x2 = self.c * sq_norm.unsqueeze(-1)
            scale = 1 / (1 - c_x2)
            lifted = torch.empty(*x.shape[:-1], x.shape[-1] + 1, dtype=x.dtype, device=x.device)
            torch.mul(x, (2 * self.sqrt_c) * scale, out=lifted[..., 1:])
            lifted[..., :1] = (1 + c_x2) * scale
            return lifted

    def lorentz_to_dist(self, minkowski_neg: torch.Tensor) -> torch.Tensor:
        """d = arcosh(max(s, 1))/√c from s = X₀Y₀ - Σ X_iY_i (= cosh(√c d))."""
        return torch.acosh(minkowski_neg.clamp_min(1)) / self.sqrt_c
