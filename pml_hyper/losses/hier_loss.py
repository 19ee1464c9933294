"""HIER: hierarchical proxies in hyperbolic space (Kim, Jeong, Kwak, CVPR 2023) as a PML loss.

S. Kim, B. Jeong, S. Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical
Regularization", CVPR 2023. Anchors (#mining) refer to ``docs/hier.md``, which states what the
authors' code computes.
"""

from __future__ import annotations

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import DoNothingReducer, MeanReducer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..distances.poincare_distance import PoincareDistance
from ..layers.to_poincare import ToPoincare
from ..manifolds.poincare import full_precision
from ..miners.reciprocal_triplet_miner import ReciprocalTripletMiner
from ..utils.checks import check_generator_device
from .hier_triplet import hier_triplet_loss
from .param_groups import with_remaining_params


class HIERLoss(BaseMetricLossFunction):
    """L_HIER of Kim et al. (CVPR 2023): hierarchical proxies in the Poincaré ball (docs/hier.md).

    M learnable proxies θ (M, D) live in the tangent space at the origin and are mapped into
    the ball by ``ToPoincare(c, clip_r, riemannian=True)``: P = ToPoincare(θ). For embeddings z
    (B, D), already in the ball (e.g. the output of a ``ToPoincare`` head):

    - sample part: triplets mined on z by :class:`ReciprocalTripletMiner` (mutual top-k of
      exp(−d) + 1[same label] on a detached B×B distance matrix), or taken from
      ``indices_tuple``; LCAs chosen among P with the B×M distances d(z, P);
    - proxy part: triplets mined on the proxies (exp(−d), no labels) with the M×M distances
      d(P, P), which also serve for the LCA choice;
    - each part is :func:`hier_triplet_loss`; L_HIER = sample part + proxy part (#hinge).

    The paper's objective is L_metric + λ2·L_HIER with λ2 = 0.5, e.g. ``MultipleLosses(
    {"pa": ProxyAnchorLoss(C, D, margin=0.1, alpha=32), "hier": HIERLoss(D)},
    weights={"pa": 1, "hier": 0.5})`` (the dict form works with PML's logging presets).
    HIER's released scripts train θ with AdamW at 50× the base learning rate
    (:meth:`param_groups`).

    Only B×M, M×M and a detached B×B distance matrix are built (O(N·M) memory each,
    #pairwise-distance in docs/hyperbolic.md), not the (B+M)²×D tensor; mining is vectorised on the
    device. The hyperbolic math runs in float32 (float64 if the embeddings or θ are float64)
    with autocast disabled, and θ stays float32 under autocast (it is only cast locally). All
    randomness (triplet draws, Gumbel noise) comes from ``generator``.

    Args:
        embedding_size: D, the width of the embeddings.
        num_proxies: M, the number of hierarchical proxies (512).
        margin: δ, the hinge margin (0.1).
        tau: τ, the temperature of the LCA logits −s/τ (0.1).
        c: curvature magnitude of the ball (0.1).
        clip_r: tangent clipping radius of the proxies' ``ToPoincare`` (2.3); θ is initialised
            as N(0, I)/√D · 0.9·clip_r (#proxies).
        topk: k of the mutual top-k mining, for samples and proxies (20 in the scripts).
        triplets_per_anchor: triplets drawn per qualifying anchor (50).
        generator: ``torch.Generator`` on the embeddings' device, used for θ's initialisation
            (drawn on its device, stored on the CPU), the triplet draws and the Gumbel noise;
            ``None`` uses the global torch RNG. The object is shared with the internal miner:
            reseed it in place (``generator.manual_seed``) rather than replacing it.
        official: the papers' numerical epsilons in the maps and distances (golden parity only;
            see :class:`~pml_hyper.manifolds.PoincareBall`).
        anchor_as_negative: keep each anchor in its own negative set, as the official code does
            (#quirks item 1); off by default.
        check_inputs: raise ``ValueError`` naming embedding rows that are non-finite or not
            inside the ball (one host sync per call).
        **kwargs: passed to ``BaseMetricLossFunction`` (``embedding_regularizer``,
            ``collect_stats``, ...). ``distance`` is refused (the Poincaré distance is part of the
            method); a ``reducer`` other than PML's default ``MeanReducer`` (or
            ``DoNothingReducer``) raises ``ValueError``, since it would see already-reduced
            values and have no effect.

    Reducer input:
        sample_triplet_loss: the sample part, reduction_type "already_reduced".
        proxy_triplet_loss: the proxy part, reduction_type "already_reduced".
        Each is the mean over all mined triplets, collision-masked ones included (#hinge step 9).
        A part without any qualifying anchor is a zero that keeps the graph. PML sums the parts.

    indices_tuple: triplets (or pairs, converted with ``lmu.convert_to_triplets``) replacing the
    sample miner; the proxy part is always mined. Without ``indices_tuple`` labels are required.
    ``ref_emb`` is not supported.

    Statistics (``collect_stats=True``): ``num_sample_triplets``, ``num_proxy_triplets``,
    ``num_sample_collisions``, ``num_proxy_collisions``.
    """

    SUB_LOSS_NAMES = ("sample_triplet_loss", "proxy_triplet_loss")

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
        check_inputs: bool = True,
        **kwargs,
    ):
        if kwargs.get("distance") is not None:
            raise ValueError("HIERLoss uses the Poincaré distance of its ball; drop distance=")
        reducer = kwargs.get("reducer")
        if reducer is not None and type(reducer) not in (MeanReducer, DoNothingReducer):
            raise ValueError(
                f"HIERLoss ignores reducer={type(reducer).__name__}: both parts are already "
                "reduced (means over the mined triplets), so PML reducers return them "
                "unchanged. Drop reducer= (DoNothingReducer, to get the parts, is accepted)"
            )
        # Read by get_default_distance, which BaseMetricLossFunction.__init__ calls.
        self._distance_args = {"c": c, "official": official}
        super().__init__(**kwargs)
        for name, value in (("embedding_size", embedding_size), ("num_proxies", num_proxies)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not tau > 0:
            raise ValueError(f"tau must be positive, got {tau!r}")
        if clip_r is None or not clip_r > 0:
            raise ValueError(
                f"clip_r must be positive, got {clip_r!r}: HIER relies on feature clipping to "
                "keep its proxies away from the boundary of the ball"
            )
        self.embedding_size = embedding_size
        self.num_proxies = num_proxies
        self.margin = margin
        self.tau = tau
        self.c = c
        self.clip_r = clip_r
        self.topk = topk
        self.triplets_per_anchor = triplets_per_anchor
        self.official = official
        self.anchor_as_negative = anchor_as_negative
        self.generator = generator
        self.add_to_recordable_attributes(
            list_of_names=[
                "embedding_size",
                "num_proxies",
                "margin",
                "tau",
                "c",
                "clip_r",
                "topk",
                "triplets_per_anchor",
            ],
            is_stat=False,
        )
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_sample_triplets",
                "num_proxy_triplets",
                "num_sample_collisions",
                "num_proxy_collisions",
            ],
            is_stat=True,
        )
        init_device = generator.device if generator is not None else None
        lcas = torch.randn(num_proxies, embedding_size, generator=generator, device=init_device)
        self.lcas = torch.nn.Parameter(lcas.cpu() / embedding_size**0.5 * (0.9 * clip_r))
        self.ball = self.distance.ball  # one ball for the distance, the proxies and the checks
        self.to_poincare = ToPoincare(
            c, clip_r=clip_r, riemannian=True, official=official, ball=self.ball
        )
        self.check_inputs = check_inputs
        self.miner = ReciprocalTripletMiner(
            topk=topk,
            triplets_per_anchor=triplets_per_anchor,
            same_class_bonus=1.0,
            distance=self.distance,
            anchor_as_negative=anchor_as_negative,
            generator=generator,
        )

    def _sub_loss_names(self) -> list[str]:
        return list(self.SUB_LOSS_NAMES)

    def get_default_distance(self) -> PoincareDistance:
        """The Poincaré distance of the loss's ball (inputs are validated by the loss)."""
        return PoincareDistance(**self._distance_args, check_inputs=False)

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_or_indices_tuple_required(labels, indices_tuple)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        return self.hier_losses(embeddings, labels, indices_tuple)

    def hier_losses(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple[torch.Tensor, ...] | None = None,
    ) -> dict:
        """The loss dict of :meth:`compute_loss`, with labels optional (then the sample miner
        ranks by exp(−d) alone, as in :class:`~pml_hyper.regularizers.HIERRegularizer`).

        embeddings: (B, D) points in the ball; labels: (B,) or ``None``; indices_tuple: sample
        triplets or pairs, or ``None`` to mine them.
        """
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"HIERLoss expects embeddings of shape (batch, {self.embedding_size}), got "
                f"{tuple(embeddings.shape)}; flatten (classes, views, D) batches to "
                f"(classes·views, D)"
            )
        check_generator_device(self.generator, embeddings.device)
        if self.check_inputs:
            self.ball.check_point(embeddings, "HIERLoss embeddings")
        with full_precision(embeddings, self.lcas) as (z, theta):
            proxies = self.to_poincare(theta)
            sample_proxy = self.ball.pairwise_dist(z, proxies)
            proxy_proxy = self.ball.pairwise_dist(proxies)
            with torch.no_grad():
                if indices_tuple is None:
                    sample_triplets = self.miner.mine(z, labels, z, labels)
                else:
                    sample_triplets = lmu.convert_to_triplets(indices_tuple, labels)
                proxy_triplets = self.mine_proxy_triplets(proxy_proxy)
            sample_part = self._part(
                sample_proxy,
                torch.stack(sample_triplets, dim=1),
                "sample",
                indices_tuple is not None,
            )
            proxy_part = self._part(proxy_proxy, torch.stack(proxy_triplets, dim=1), "proxy", False)
        return dict(zip(self.SUB_LOSS_NAMES, (sample_part, proxy_part), strict=True))

    def mine_proxy_triplets(
        self, proxy_dist: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Proxy triplets from the (M, M) proxy distances (mutual top-k, no labels, #mining)."""
        return self.miner.mine_from_distances(proxy_dist)

    def gumbel_noise(self, shape: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """Standard Gumbel noise −log(e) with e = −log(u) ~ Exp(1), u ~ U[0, 1) drawn from
        ``generator`` (u = 0 gives −∞: that proxy cannot be chosen for that triplet)."""
        u = torch.rand(shape, generator=self.generator, dtype=like.dtype, device=like.device)
        return u.log_().neg_().log_().neg_()

    def _part(
        self, dist: torch.Tensor, triplets: torch.Tensor, name: str, check_indices: bool
    ) -> dict:
        """Noise draws and :func:`hier_triplet_loss` for one part, as a PML loss-dict entry;
        ``check_indices`` for triplets that did not come from this loss's own miner."""
        if len(triplets) == 0:
            self._record_part(name, 0, 0)
            return self.zero_loss()
        shape = (len(triplets), dist.shape[1])
        noise_ij = self.gumbel_noise(shape, dist)
        noise_ijk = self.gumbel_noise(shape, dist)
        part = hier_triplet_loss(
            dist, triplets, noise_ij, noise_ijk, self.tau, self.margin, check_indices=check_indices
        )
        self._record_part(name, len(triplets), part.lca_ij == part.lca_ijk)
        return {"losses": part.loss, "indices": None, "reduction_type": "already_reduced"}

    def _record_part(self, name: str, num_triplets: int, collisions) -> None:
        if self.collect_stats:
            setattr(self, f"num_{name}_triplets", num_triplets)
            setattr(self, f"num_{name}_collisions", int(torch.as_tensor(collisions).sum()))

    def param_groups(
        self, lr: float, proxy_lr_factor: float = 50.0, weight_decay: float | None = None
    ) -> list[dict]:
        """Optimizer parameter groups with HIER's learning-rate rule (#optimizer).

        Returns ``[{lcas; lr·proxy_lr_factor}]``, plus a group at ``lr`` for any other parameter
        of the loss (e.g. a learnable embedding regularizer). ``weight_decay``, if given, is set
        on every group (HIER's AdamW decays all of them). Each group has a ``name`` key.
        """
        groups = [{"name": "lcas", "params": [self.lcas], "lr": lr * proxy_lr_factor}]
        return with_remaining_params(self, groups, lr, weight_decay)
