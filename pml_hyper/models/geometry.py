"""The space a model embeds into, which decides how its embeddings are compared."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

from ..layers.to_poincare import ToPoincare

KINDS = ("cosine", "poincare")


@dataclass(frozen=True)
class Geometry:
    """How a model's embeddings are compared: ``"cosine"`` (Euclidean output, L2-normalised for
    retrieval) or ``"poincare"`` (points of the Poincaré ball of curvature −c: hyperbolic
    distance, no normalisation).

    Every head provides one as its ``geometry`` (``HISTHead``: cosine, ``PoincareHead``: the
    ball of its ``c``), and :class:`~pml_hyper.models.EmbeddingModel` exposes its head's.

    Attributes:
        kind: ``"cosine"`` or ``"poincare"``.
        c: curvature magnitude of the ball; ``None`` for cosine.
    """

    kind: str
    c: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"geometry kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == "cosine" and self.c is not None:
            raise ValueError(f"the cosine geometry has no curvature, got c={self.c}")
        if self.kind == "poincare":
            c = self.c
            if isinstance(c, bool) or not isinstance(c, numbers.Real) or not 0 < c < math.inf:
                raise ValueError(f"the Poincaré ball needs a positive finite c, got {c!r}")
            object.__setattr__(self, "c", float(c))

    @classmethod
    def poincare(cls, c: float) -> Geometry:
        """The Poincaré ball of curvature −c."""
        return cls("poincare", c)

    @property
    def hyperbolic(self) -> bool:
        """Whether embeddings are points of the Poincaré ball."""
        return self.kind == "poincare"


COSINE = Geometry("cosine")
"""The geometry of Euclidean embeddings compared by cosine similarity."""


def geometry_of(*models: torch.nn.Module | None) -> Geometry:
    """The geometry that ``models`` (e.g. trunk and embedder, applied in turn) embed into.

    A model's own ``geometry`` attribute decides (``EmbeddingModel``, the heads, ``TinyCNN``);
    a module without one is hyperbolic when it holds :class:`~pml_hyper.layers.ToPoincare`
    layers (of their c), cosine otherwise. ``DistributedDataParallel`` / ``DataParallel``
    wrappers are looked through; ``None`` entries are skipped.

    Raises:
        ValueError: the models embed into balls of different curvatures.
    """
    balls = set()
    for model in models:
        while isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        if model is None:
            continue
        own = getattr(model, "geometry", None)
        if isinstance(own, Geometry):
            found = {own}
        else:
            found = {Geometry.poincare(m.c) for m in model.modules() if isinstance(m, ToPoincare)}
        balls |= {g for g in found if g.hyperbolic}
    if len(balls) > 1:
        curvatures = sorted(g.c for g in balls)
        raise ValueError(f"the models embed into Poincaré balls of different c: {curvatures}")
    return balls.pop() if balls else COSINE
