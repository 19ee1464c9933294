"""Poincaré-ball distance for PML (docs/hyperbolic.md#pairwise-distance, docs/pml.md#distances)."""

from __future__ import annotations

import torch
from pytorch_metric_learning.distances import BaseDistance

from ..manifolds.poincare import PoincareBall


class PoincareDistance(BaseDistance):
    """d_c(x, y) = (2/√c) artanh(√c ‖(-x) ⊕_c y‖), usable wherever PML takes a ``distance=``.

    ``compute_mat`` returns the (N, M) matrix with O(N·M) memory, exact at zero distance and with
    finite gradients there (docs/hyperbolic.md#pairwise-distance); ``pairwise_distance``: (N,).
    The math runs in float32 or float64 with autocast disabled; half-precision input gives a
    float32 matrix.

    Unlike PML's distances, ``normalize_embeddings`` defaults to ``False``: normalising would move
    every point to radius 1. Points must already be inside the ball (see
    :class:`~pml_hyper.layers.ToPoincare`); points on or outside it raise ``ValueError``.

    Args:
        c: curvature magnitude (0.1 in HIER and Hyp).
        official: the papers' epsilons (+1e-5 in the Möbius denominator, c rounded to float32,
            straight-through artanh clamp), for golden parity only. Differs from the exact
            distance by up to ~2.4e-5 relative (docs/hyperbolic.md#official-distance).
        check_inputs: validate finiteness and ball membership (one host sync per call).
        **kwargs: passed to ``BaseDistance`` (``power``, ``collect_stats``, ...).
    """

    def __init__(self, c: float = 0.1, official: bool = False, check_inputs: bool = True, **kwargs):
        kwargs.setdefault("normalize_embeddings", False)
        if kwargs.setdefault("is_inverted", False):
            raise ValueError("PoincareDistance is a distance: is_inverted must be False")
        super().__init__(**kwargs)
        self.ball = PoincareBall(c, official=official, check_inputs=check_inputs)
        self.c = c
        self.official = official
        self.add_to_recordable_attributes(list_of_names=["c"], is_stat=False)

    def compute_mat(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        """``(N, n), (M, n) -> (N, M)`` matrix of hyperbolic distances."""
        return self.ball.pairwise_dist(query_emb, None if ref_emb is query_emb else ref_emb)

    def pairwise_distance(self, query_emb: torch.Tensor, ref_emb: torch.Tensor) -> torch.Tensor:
        """``(N, n), (N, n) -> (N,)`` distances between matching rows."""
        return self.ball.dist(query_emb, ref_emb)
