"""HIER: hierarchical proxies in hyperbolic space (Kim, Jeong, Kwak, CVPR 2023) as a PML loss.

S. Kim, B. Jeong, S. Kwak, "HIER: Metric Learning Beyond Class Labels via Hierarchical
Regularization", CVPR 2023. Anchors (#mining) refer to ``docs/hier.md``, which states what the
authors' code computes.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.reducers import DoNothingReducer, MeanReducer
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from ..distances.poincare_distance import PoincareDistance
from ..layers.to_poincare import ToPoincare
from ..manifolds.poincare import PoincareBall, full_precision
from ..miners.reciprocal_triplet_miner import ReciprocalTripletMiner
from ..utils.checks import check_generator_device
from .param_groups import with_remaining_params

CHUNK_ELEMENTS = 1 << 20
"""Triplets are processed in chunks of about this many (triplet, proxy) elements: the T×M
temporaries of a chunk (4 MiB each in float32) stay in a CPU's last-level cache, and the number
of kernel launches per step stays small."""


class HIERPart(NamedTuple):
    """Result of :func:`hier_triplet_loss` for T triplets.

    Attributes:
        loss: () mean over all T triplets of the masked three-term hinge (#hinge steps 7-9).
        lca_ij: (T,) index of the proxy chosen as the LCA of (i, j), ρ_ij.
        lca_ijk: (T,) index of the proxy chosen as the LCA of (i, j, k), ρ_ijk.
    """

    loss: torch.Tensor
    lca_ij: torch.Tensor
    lca_ijk: torch.Tensor


def _max_share(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Share of the gradient of max(a, b) that goes to ``a``: 1 where a > b, 0 where a < b and
    0.5 on ties, as in ``torch.maximum``'s backward."""
    return torch.heaviside(a - b, torch.tensor(0.5, dtype=a.dtype, device=a.device))


def _rows_sum(index: torch.Tensor, src: torch.Tensor, num_rows: int) -> torch.Tensor:
    """out[r] = Σ_{t: index[t] = r} src[t]: ``(T,), (T, M) -> (num_rows, M)``.

    A sparse one-hot (num_rows, T) matrix times ``src``: several times faster than
    ``index_add_`` on the CPU, and deterministic there.
    """
    positions = torch.arange(len(index), device=index.device)
    one_hot = torch.sparse_coo_tensor(
        torch.stack([index, positions]),
        torch.ones(len(index), dtype=src.dtype, device=src.device),
        (num_rows, len(index)),
        check_invariants=False,
    )
    return torch.sparse.mm(one_hot, src)


class _LCAHinge(torch.autograd.Function):
    """Fused LCA selection and hinge with a chunked, memory-lean straight-through backward.

    Forward values equal the autograd graph of #hinge (gathers, two maxima, two hard Gumbel-softmax
    draws, six weighted sums, hinge, collision mask, mean) up to one ulp in the weighted sums,
    which the one-hot weights turn into gathers. The backward applies, per
    triplet, the chain rule that autograd would: the direct path adds ±1 at the chosen LCAs, the
    straight-through path goes through both softmax Jacobians and the two ``torch.maximum``
    (ties split 0.5/0.5) into the rows i, j, k of ``dist`` (#hinge). Only the softmax outputs
    (2 × T×M) are kept for the backward, and only triplets with an active hinge term are
    revisited there. On the CPU the result is deterministic; on CUDA the row sums use atomics.
    """

    @staticmethod
    def forward(ctx, dist, triplets, noise_ij, noise_ijk, tau, margin):
        n_triplets, num_proxies = len(triplets), dist.shape[1]
        chunk = max(1, CHUNK_ELEMENTS // num_proxies)
        # Logits -s/τ: dividing by -τ turns max into min exactly (rounding is monotone).
        logits = dist.div(-tau)
        y_ij = torch.empty(n_triplets, num_proxies, dtype=dist.dtype, device=dist.device)
        y_ijk = torch.empty_like(y_ij)
        for s in range(0, n_triplets, chunk):
            rows = slice(s, s + chunk)
            l_i, l_j, l_k = (logits.index_select(0, x) for x in triplets[rows].unbind(1))
            l_ij = torch.minimum(l_i, l_j)
            torch.softmax(torch.add(l_ij, noise_ij[rows], out=l_i), dim=1, out=y_ij[rows])
            l_ijk = torch.minimum(l_k, l_ij, out=l_ij)
            torch.softmax(l_ijk.add_(noise_ijk[rows]), dim=1, out=y_ijk[rows])
        lca_ij, lca_ijk = y_ij.argmax(dim=1), y_ijk.argmax(dim=1)
        i, j, k = triplets.unbind(1)
        terms = torch.stack(
            [
                dist[i, lca_ij] - dist[i, lca_ijk] + margin,
                dist[j, lca_ij] - dist[j, lca_ijk] + margin,
                dist[k, lca_ijk] - dist[k, lca_ij] + margin,
            ],
            dim=1,
        )
        keep = lca_ij != lca_ijk
        loss = (terms.clamp_min(0).sum(1) * keep).mean()
        ctx.active = (terms > 0) & keep.unsqueeze(1)
        ctx.tau, ctx.chunk = tau, chunk
        ctx.mark_non_differentiable(lca_ij, lca_ijk)
        if ctx.needs_input_grad[0]:
            ctx.save_for_backward(dist, triplets, y_ij, y_ijk, lca_ij, lca_ijk)
        return loss, lca_ij, lca_ijk

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss, _grad_lca_ij, _grad_lca_ijk):
        dist, triplets, y_ij, y_ijk, lca_ij, lca_ijk = ctx.saved_tensors
        n, num_proxies = dist.shape
        # h[:, 0..2]: gradient of the loss w.r.t. each active hinge term of each triplet.
        h = ctx.active.to(dist.dtype) * (grad_loss.to(dist.dtype) / len(triplets))

        # Direct path: +h / -h on the distances from i, j, k to the two chosen LCAs.
        i, j, k = triplets.unbind(1)
        flat = torch.cat(
            [i * num_proxies + lca_ij, i * num_proxies + lca_ijk]
            + [j * num_proxies + lca_ij, j * num_proxies + lca_ijk]
            + [k * num_proxies + lca_ijk, k * num_proxies + lca_ij]
        )
        values = torch.cat([h[:, 0], -h[:, 0], h[:, 1], -h[:, 1], h[:, 2], -h[:, 2]])
        grad = torch.zeros(n * num_proxies, dtype=dist.dtype, device=dist.device)
        grad = grad.index_add_(0, flat, values).view(n, num_proxies)

        # Straight-through path, for the triplets with at least one active term.
        active = ctx.active.any(1).nonzero().squeeze(1)
        h_tau = h / ctx.tau
        with torch.autocast(device_type=dist.device.type, enabled=False):
            for s in range(0, len(active), ctx.chunk):
                rows = active[s : s + ctx.chunk]
                i, j, k = triplets[rows].unbind(1)
                d_i, d_j, d_k = (dist.index_select(0, x) for x in (i, j, k))
                h_i, h_j, h_k = h_tau[rows].unsqueeze(2).unbind(1)
                # τ·dL/dπ_ij = Σ_x ±h_x D_x, and dL/dπ_ijk = -dL/dπ_ij.
                g_pi = torch.mul(d_i, h_i).addcmul_(d_j, h_j).addcmul_(d_k, h_k, value=-1)
                y1, y2 = y_ij[rows], y_ijk[rows]
                # Softmax Jacobians y ⊙ (g - <y, g>), times d(logit)/ds = -1/τ.
                g_s_ij = torch.sub(torch.linalg.vecdot(y1, g_pi).unsqueeze(1), g_pi).mul_(y1)
                g_s_ijk = g_pi.sub_(torch.linalg.vecdot(y2, g_pi).unsqueeze(1)).mul_(y2)
                # Through s_ijk = max(D_k, s_ij), then s_ij = max(D_i, D_j), into rows i, j, k.
                g_rows = torch.empty(
                    3 * len(rows), num_proxies, dtype=dist.dtype, device=dist.device
                )
                g_d_i, g_d_j, g_d_k = g_rows.chunk(3)
                torch.mul(_max_share(d_k, torch.maximum(d_i, d_j)), g_s_ijk, out=g_d_k)
                g_s_ij.add_(g_s_ijk).sub_(g_d_k)
                torch.mul(_max_share(d_i, d_j), g_s_ij, out=g_d_i)
                torch.sub(g_s_ij, g_d_i, out=g_d_j)
                grad += _rows_sum(torch.cat([i, j, k]), g_rows, n)
        return grad, None, None, None, None, None


def hier_triplet_loss(
    dist: torch.Tensor,
    triplets: torch.Tensor,
    noise_ij: torch.Tensor,
    noise_ijk: torch.Tensor,
    tau: float = 0.1,
    margin: float = 0.1,
    *,
    check_indices: bool = True,
) -> HIERPart:
    """One part of L_HIER: LCA choice by hard Gumbel-softmax and the three-term hinge (#hinge).

    For each triplet (i, j, k) with rows D_i, D_j, D_k of ``dist``:

    - s_ij = max(D_i, D_j), π_ij = STGumbelHard(−s_ij/τ, ``noise_ij``);
    - s_ijk = max(D_k, s_ij), π_ijk = STGumbelHard(−s_ijk/τ, ``noise_ijk``);
    - D̃_x,ij = Σ_m D_x,m π_ij,m and D̃_x,ijk likewise, for x ∈ {i, j, k};
    - ℓ = [D̃_i,ij − D̃_i,ijk + δ]₊ + [D̃_j,ij − D̃_j,ijk + δ]₊ + [D̃_k,ijk − D̃_k,ij + δ]₊,
      zeroed where ρ_ij = ρ_ijk (collision), averaged over all T triplets.

    STGumbelHard(a, g) is one-hot(argmax softmax(a + g)) in the forward pass and has the
    gradient of softmax(a + g) (straight-through; Gumbel-softmax temperature 1, τ enters only
    through the logits). ``noise_*`` are the Gumbel samples themselves, g = −log(e) with
    e ~ Exp(1), so recorded draws can be replayed (the parity tests do).

    Computed in float32 (float64 for float64 input) with autocast disabled.

    Args:
        dist: (n, M) distances from the n points to the M candidate LCAs (proxies): the
            sample-proxy block for the sample part, the proxy-proxy block for the proxy part.
        triplets: (T, 3) integer indices (i, j, k) into the rows of ``dist``, T ≥ 1.
        noise_ij, noise_ijk: (T, M) independent Gumbel noise for the two LCA choices.
        tau: temperature τ of the logits −s/τ.
        margin: hinge margin δ.
        check_indices: raise ``ValueError`` for triplet indices outside ``[0, n)`` (one
            device-to-host sync); ``False`` for triplets valid by construction (mined ones).

    Returns:
        :class:`HIERPart` (loss, lca_ij, lca_ijk). The loss is differentiable w.r.t. ``dist``.
    """
    if dist.ndim != 2:
        raise ValueError(f"dist must be (n, M), got shape {tuple(dist.shape)}")
    if triplets.ndim != 2 or triplets.shape[1] != 3 or len(triplets) == 0:
        raise ValueError(f"triplets must be (T, 3) with T >= 1, got shape {tuple(triplets.shape)}")
    if triplets.dtype.is_floating_point or triplets.dtype == torch.bool:
        raise ValueError(f"triplets must hold integer indices, got {triplets.dtype}")
    expected = (len(triplets), dist.shape[1])
    for name, noise in (("noise_ij", noise_ij), ("noise_ijk", noise_ijk)):
        if tuple(noise.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(noise.shape)}")
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    triplets = triplets.to(device=dist.device, dtype=torch.long)
    if check_indices and ((triplets < 0) | (triplets >= len(dist))).any():
        raise ValueError(f"triplet indices must lie in [0, {len(dist)})")
    noise_ij, noise_ijk = noise_ij.to(dist.device), noise_ijk.to(dist.device)
    with full_precision(dist, noise_ij, noise_ijk) as (dist, noise_ij, noise_ijk):
        return HIERPart(*_LCAHinge.apply(dist, triplets, noise_ij, noise_ijk, float(tau), margin))


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
        self.to_poincare = ToPoincare(c, clip_r=clip_r, riemannian=True, official=official)
        self.ball = PoincareBall(c, official=official)
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
