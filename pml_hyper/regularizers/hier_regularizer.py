"""Label-free HIER (Kim, Jeong, Kwak, CVPR 2023) as a PML embedding regularizer."""

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
        hier: the :class:`~pml_hyper.losses.HIERLoss` to wrap, or its ``embedding_size``; in the
            latter case the other keywords (``num_proxies``, ``margin``, ``tau``, ``c``, ``clip_r``,
            ``topk``, ``triplets_per_anchor``, ``generator``, ...) build it, with HIERLoss's
            paper defaults.
        collect_stats: PML's statistics flag, for the regularizer and the HIERLoss it builds.
        **kwargs: ``reducer`` goes to ``BaseRegularizer``, everything else to ``HIERLoss``;
            ``distance`` is refused.

    Reducer input: ``sample_triplet_loss`` and ``proxy_triplet_loss``, both "already_reduced";
    their sum is the regularization loss (before the host loss's ``embedding_reg_weight``).
    """

    def __init__(
        self,
        hier: HIERLoss | int,
        collect_stats: bool | None = None,
        **kwargs,
    ):
        if kwargs.get("distance") is not None:
            raise ValueError("HIERRegularizer uses the Poincaré distance of its ball; drop it")
        kwargs.pop("distance", None)
        base_kwargs = {"reducer": kwargs.pop("reducer")} if "reducer" in kwargs else {}
        if collect_stats is not None:
            base_kwargs["collect_stats"] = collect_stats
        super().__init__(**base_kwargs)
        if isinstance(hier, HIERLoss):
            if kwargs:
                raise TypeError(
                    "HIERRegularizer(hier=HIERLoss(...)) takes no HIERLoss keywords, got "
                    f"{sorted(kwargs)}; set them on the HIERLoss"
                )
            self.hier = hier
        elif isinstance(hier, int) and not isinstance(hier, bool):
            self.hier = HIERLoss(hier, collect_stats=self.collect_stats, **kwargs)
        else:
            raise TypeError(
                f"hier must be a HIERLoss or an embedding size (int), got {type(hier).__name__}"
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
