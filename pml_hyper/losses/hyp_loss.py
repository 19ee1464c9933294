"""Hyp: the multi-view hyperbolic contrastive loss of Ermolov et al. (CVPR 2022) as a PML loss.

Ermolov, Mirvakhabova, Khrulkov, Sebe, Oseledets, "Hyperbolic Vision Transformers: Combining
Improvements in Metric Learning", CVPR 2022, Eq. 4 (the pair loss), summed over ordered view pairs
as the authors' training code does. See ``docs/hyp_loss.md``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f

from ..distances.poincare_distance import PoincareDistance


class HypLoss(BaseMetricLossFunction):
    """Hyp's contrastive loss for a batch of n classes × V views.

    The v-th occurrence of a label in the batch is view v of that class; every class must occur
    equally often (V >= 2 times). With x = views i and x' = views j (each ``(n, D)``), the
    logits of anchor a are ``[-d(x_a, x'_b)/τ for b] ++ [-d(x_a, x_b)/τ - 1e9·[b = a] for b]``,
    shifted by their (detached) row maximum, with target b = a. The loss is the mean
    cross-entropy over anchors, **summed** over the V·(V-1) ordered view pairs (i ≠ j).

    For V = 2 it equals ``2 · NTXentLoss(temperature, PoincareDistance(c))``; for V > 2 the
    two differ (NTXent's negatives come from all views and it averages over positive pairs).

    ``c = 0`` is the "spherical" variant: logits are dot products of L2-normalised embeddings
    divided by τ.

    Args:
        temperature: τ (0.2 in Hyp).
        c: curvature of the Poincaré ball (0.1 in Hyp); 0 for the spherical variant.
        official: use the authors' distance epsilons (golden parity only).
        **kwargs: passed to ``BaseMetricLossFunction``; the loss is already reduced, so any
            ``reducer`` is ignored.

    Shapes: embeddings ``(B, D)`` (points in the ball when c > 0), labels ``(B,)``; returns a
    scalar.
    """

    def __init__(self, temperature: float = 0.2, c: float = 0.1, official: bool = False, **kwargs):
        super().__init__(**kwargs)
        if not temperature > 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        if not c >= 0:
            raise ValueError(f"c must be >= 0, got {c}")
        self.temperature = float(temperature)
        self.c = float(c)
        self.official = official
        self.poincare = PoincareDistance(c=c, official=official) if c > 0 else None
        self.add_to_recordable_attributes(list_of_names=["temperature", "c"], is_stat=False)

    @staticmethod
    def views(labels: torch.Tensor) -> torch.Tensor:
        """``(n, V)`` batch indices: row = class (ascending label), column v = its v-th
        occurrence. Raises ``ValueError`` unless every class occurs V >= 2 times."""
        if labels.ndim != 1 or labels.is_floating_point():
            raise ValueError(
                f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}"
            )
        order = torch.argsort(labels, stable=True)
        classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
        low, high = int(counts.min()), int(counts.max())
        if low != high:
            raise ValueError(
                "HypLoss needs every class to appear equally often in the batch (one "
                f"occurrence per view); counts range from {low} to {high}"
            )
        if low < 2:
            raise ValueError(f"HypLoss needs at least 2 views per class, got {low}")
        return order.view(len(classes), low)

    def _logit_matrix(self, z: torch.Tensor) -> torch.Tensor:
        """``(B', D) -> (B', B')`` logits -d/τ (or cosine/τ for c = 0)."""
        if self.poincare is None:
            z = F.normalize(z.float() if z.dtype == torch.float16 else z, dim=1)
            return z @ z.T / self.temperature
        return -self.poincare(z) / self.temperature

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        if labels is None:
            raise ValueError("HypLoss needs labels (the v-th occurrence of a label is view v)")
        if indices_tuple is not None:
            raise ValueError("HypLoss does not take indices_tuple (no miner)")
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        views = self.views(labels.to(embeddings.device))
        n, num_views = views.shape
        sim = self._logit_matrix(embeddings[views.reshape(-1)])  # class-major, view-minor
        sim = sim.view(n, num_views, n, num_views)
        eye = torch.eye(n, dtype=torch.bool, device=sim.device)
        target = torch.arange(n, device=sim.device)
        total = sim.new_zeros(())
        for i in range(num_views):
            same = sim[:, i, :, i] - 1e9 * eye
            for j in range(num_views):
                if i == j:
                    continue
                logits = torch.cat([sim[:, i, :, j], same], dim=1)
                logits = logits - logits.max(dim=1, keepdim=True).values.detach()
                total = total + F.cross_entropy(logits, target)
        return {"loss": {"losses": total, "indices": None, "reduction_type": "already_reduced"}}
