"""Label-free HIER as a PML embedding regularizer (docs/pml.md#regularizers)."""

from __future__ import annotations

import torch
from pytorch_metric_learning.regularizers import BaseRegularizer

from ..losses.hier_loss import HIERLoss


class HIERRegularizer(BaseRegularizer):
    """HIER's hierarchical-proxy loss (Kim et al., CVPR 2023) for any PML loss's
    ``embedding_regularizer=`` slot, e.g.
    ``TripletMarginLoss(distance=PoincareDistance(), embedding_regularizer=HIERRegularizer(D),
    embedding_reg_weight=0.5)``.

    **Label-free variant, not in the paper.** PML regularizers only see the embeddings, so the
    sample triplets are mined with the similarity exp(−d) alone, without HIER's +1 same-class
    bonus: with two images per class the same-class partner is then no longer guaranteed to be a
    mutual neighbour. Everything else (proxies, proxy mining, LCA choice, hinge) is
    :class:`~pml_hyper.losses.HIERLoss`, which this module wraps as ``hier``. Use ``HIERLoss``
    in ``MultipleLosses`` for the paper's label-using form.

    The learnable proxies are ``hier.lcas`` (also reachable as :attr:`lcas`); inside a loss they
    appear in ``loss.parameters()`` as ``embedding_regularizer.hier.lcas``, so the loss's
    optimizer must include them (:meth:`param_groups` gives HIER's 50× learning rate).

    Embeddings: (B, D) points in the Poincaré ball of curvature −c.

    Args:
        embedding_size, num_proxies, margin, tau, c, clip_r, topk, triplets_per_anchor,
        generator, official, anchor_as_negative: as in :class:`~pml_hyper.losses.HIERLoss`.
        **kwargs: passed to ``BaseRegularizer`` (``collect_stats``, ``reducer``); ``distance``
            is refused.

    Reducer input: ``sample_triplet_loss`` and ``proxy_triplet_loss``, both "already_reduced";
    their sum is the regularization loss (before the host loss's ``embedding_reg_weight``).
    """

    def __init__(
        self,
        embedding_size: int,
        num_proxies: int = 512,
        margin: float = 0.1,
        tau: float = 0.1,
        c: float = 0.1,
        clip_r: float = 2.3,
        topk: int = 20,
        triplets_per_anchor: int = 50,
        generator: torch.Generator | None = None,
        official: bool = False,
        anchor_as_negative: bool = False,
        **kwargs,
    ):
        if kwargs.get("distance") is not None:
            raise ValueError("HIERRegularizer uses the Poincaré distance of its ball; drop it")
        super().__init__(**kwargs)
        self.hier = HIERLoss(
            embedding_size,
            num_proxies=num_proxies,
            margin=margin,
            tau=tau,
            c=c,
            clip_r=clip_r,
            topk=topk,
            triplets_per_anchor=triplets_per_anchor,
            generator=generator,
            official=official,
            anchor_as_negative=anchor_as_negative,
            collect_stats=self.collect_stats,
        )

    def sub_loss_names(self) -> list[str]:
        return list(HIERLoss.SUB_LOSS_NAMES)

    @property
    def lcas(self) -> torch.nn.Parameter:
        """The (M, D) tangent-space proxies θ."""
        return self.hier.lcas

    def compute_loss(self, x: torch.Tensor) -> dict:
        return self.hier.hier_losses(x)

    def param_groups(
        self, lr: float, proxy_lr_factor: float = 50.0, weight_decay: float | None = None
    ) -> list[dict]:
        """See :meth:`HIERLoss.param_groups <pml_hyper.losses.HIERLoss.param_groups>`."""
        return self.hier.param_groups(lr, proxy_lr_factor, weight_decay)
