"""Input checks shared by pml_hyper's public entry points (distances, layers, losses, kNN).

The maths in :mod:`pml_hyper.manifolds` does not validate; the entry points call these under
their own ``check_inputs`` flag.
"""

from __future__ import annotations

import math
import warnings

import torch

UNIT_NORM_RTOL = 1e-4
"""Relative tolerance of :func:`all_unit_norm` (float32 normalisation is accurate to ~1e-6)."""


def describe_rows(mask: torch.Tensor, limit: int = 10) -> str:
    """``"[0, 3, 7]"`` (at most ``limit`` entries, then ``"and N more"``) for a boolean mask."""
    rows = mask.nonzero().tolist()
    shown = ", ".join(str(r[0] if len(r) == 1 else tuple(r)) for r in rows[:limit])
    more = f" and {len(rows) - limit} more" if len(rows) > limit else ""
    return f"[{shown}]{more}"


def check_finite(x: torch.Tensor, name: str = "x") -> None:
    """Raise ``ValueError`` naming the rows of ``x`` (over the last dim) that hold NaN or inf."""
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    bad = ~torch.isfinite(x.detach()).all(-1)
    if bad.any():
        raise ValueError(f"{name} rows {describe_rows(bad)} contain NaN or inf")


def check_in_ball(x: torch.Tensor, c: float, name: str = "x") -> None:
    """Raise ``ValueError`` naming the rows of ``x`` (``(..., n)``) that are non-finite or not
    strictly inside the Poincaré ball {c‖x‖² < 1}. One device-to-host sync."""
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    # One reduction: a non-finite coordinate makes the squared norm NaN or inf.
    sq_norm = torch.linalg.vector_norm(x.detach(), dim=-1).pow(2)
    bad = ~(c * sq_norm < 1)
    if not bad.any():
        return
    check_finite(x, name)
    raise ValueError(
        f"{name} rows {describe_rows(bad)} lie on or outside the Poincaré ball of "
        f"curvature -{c} (need c·‖x‖² < 1, i.e. ‖x‖ < {1 / math.sqrt(c):.6g}); "
        "map Euclidean features into the ball with pml_hyper.layers.ToPoincare"
    )


def all_unit_norm(x: torch.Tensor) -> bool:
    """Whether ``x`` (N, n), N ≥ 2, has every row of norm 1 within :data:`UNIT_NORM_RTOL`."""
    if x.ndim != 2 or len(x) < 2:
        return False
    norms = torch.linalg.vector_norm(x.detach().float(), dim=-1)
    return bool(((norms - 1).abs() <= UNIT_NORM_RTOL).all())


def warn_if_unit_normalized(owner: object, x: torch.Tensor, c: float) -> None:
    """Warn once per ``owner`` when every row of ``x`` has norm 1 and c ≠ 1.

    That is the signature of PML's default ``normalize_embeddings=True`` (testers,
    ``InferenceModel``, distances) applied to hyperbolic embeddings: it moves every point onto
    the unit sphere, which for c < 1 is still inside the ball, so nothing else complains.
    """
    if c == 1 or getattr(owner, "_warned_unit_norm", False) or not all_unit_norm(x):
        return
    owner._warned_unit_norm = True
    warnings.warn(
        f"{type(owner).__name__}(c={c}): every input row has norm 1. These look like "
        "L2-normalised embeddings (PML's default normalize_embeddings=True), which moves "
        "hyperbolic embeddings onto the unit sphere and gives wrong neighbours and distances. "
        "Pass normalize_embeddings=False to the tester, InferenceModel or distance, or build "
        "them with pml_hyper.utils.make_tester / make_inference_model.",
        UserWarning,
        stacklevel=3,
    )


def check_generator_device(generator: torch.Generator | None, device: torch.device) -> None:
    """Raise ``ValueError`` if ``generator`` cannot draw tensors on ``device``."""
    if generator is not None and generator.device.type != torch.device(device).type:
        raise ValueError(
            f"the generator is on {generator.device} but the tensors are on {device}; "
            f"pass torch.Generator(device={str(device)!r})"
        )
