"""HIST: hypergraph-induced semantic tuplet loss (Lim et al., CVPR 2022) as a PML loss.

Lim, Yun, Park, Choi, "Hypergraph-Induced Semantic Tuplet Loss for Deep Metric Learning",
CVPR 2022. Anchors such as (#hgnn) refer to ``docs/hist.md``, which states what the authors' code
computes and how it relates to the paper's equations (as restated by the [Re] reproduction).
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
from pytorch_metric_learning.losses import BaseMetricLossFunction
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from .param_groups import with_remaining_params


class HISTOutputs(NamedTuple):
    """Intermediates of one HIST forward pass (B samples, C classes, E classes in the batch).

    Attributes:
        dist: (B, C) squared diagonal Mahalanobis distances d_ic (#distances).
        dist_losses: (B,) per-sample distribution loss -log P_i (#distribution-loss).
        kept: (B,) bool mask of the samples kept by the official underflow mask, or ``None``
            when the mask is off (every sample counts).
        classes: (E,) the distinct batch labels in ascending order: the hyperedges (#hypergraph).
        H: (B, E) soft incidence matrix of the semantic tuplets (#hypergraph).
        G: (B, B) hypergraph propagation matrix Dv^-1/2 H De^-1 H^T Dv^-1/2 (#hypergraph).
        hgnn_logits: (B, C) HGNN class scores (#hgnn).
        hgnn_losses: (B,) per-sample cross-entropy of ``hgnn_logits`` (#hgnn), before λ_s.
    """

    dist: torch.Tensor
    dist_losses: torch.Tensor
    kept: torch.Tensor | None
    classes: torch.Tensor
    H: torch.Tensor
    G: torch.Tensor
    hgnn_logits: torch.Tensor
    hgnn_losses: torch.Tensor


class _HGNN(nn.Module):
    """Two-layer hypergraph neural network (Feng et al., AAAI 2019) as used by HIST (#hgnn).

    ``G (LeakyReLU_0.1(BN(G (x Θ1^T + b1))) Θ2^T + b2)``, the same G in both layers. BatchNorm
    always normalises with the batch statistics, as the official code never evaluates the HGNN;
    in training mode the running statistics of ``bn1`` are updated like ``nn.BatchNorm1d`` does,
    in eval mode they are left untouched. Parameters are cast to the input's dtype locally.
    """

    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.theta1 = nn.Linear(in_features, hidden_size)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.theta2 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        """x: (B, D) raw embeddings, G: (B, B) propagation matrix -> (B, C) logits."""
        dtype = x.dtype
        a = G @ F.linear(x, self.theta1.weight.to(dtype), self.theta1.bias.to(dtype))
        z = F.leaky_relu(self._batch_norm(a), negative_slope=0.1)
        return G @ F.linear(z, self.theta2.weight.to(dtype), self.theta2.bias.to(dtype))

    def _batch_norm(self, a: torch.Tensor) -> torch.Tensor:
        """``F.batch_norm`` with batch statistics; running statistics updated in training mode
        through copies in ``a``'s dtype (autograd keeps the copies, so later updates of the
        buffers do not invalidate a pending backward)."""
        bn = self.bn1
        stats = [None, None]
        if self.training:
            stats = [bn.running_mean.to(a.dtype, copy=True), bn.running_var.to(a.dtype, copy=True)]
        out = F.batch_norm(
            a,
            *stats,
            bn.weight.to(a.dtype),
            bn.bias.to(a.dtype),
            training=True,
            momentum=bn.momentum,
            eps=bn.eps,
        )
        if self.training:
            with torch.no_grad():
                bn.running_mean.copy_(stats[0])
                bn.running_var.copy_(stats[1])
                bn.num_batches_tracked.add_(1)
        return out


class HISTLoss(BaseMetricLossFunction):
    """Hypergraph-induced semantic tuplet loss, L = L_D + λ_s·L_CE (Lim et al., CVPR 2022).

    Each of the C training classes has a learnable diagonal Gaussian (``means`` μ and
    ``log_vars`` s, both (C, D)). For raw embeddings F (B, D) and labels y (B,):

    - d_ic = Σ_k (x̂_ik − μ̂_ck)² / σ²_ck with x̂, μ̂ L2-normalised and σ² = exp(relu6(s))
      (#distances), computed as two matrix products, never as a (B, C, D) tensor;
    - L_D = mean_i −log softmax_c(−τ·d_i)[y_i] over all C classes (#distribution-loss);
    - H_ij = 1 if y_i = e_j else exp(−α·d_i,e_j) over the E in-batch classes (#hypergraph),
      not detached, and G = Dv^-1/2 H De^-1 H^T Dv^-1/2 (#hypergraph);
    - L_CE = mean_i CE(HGNN(F, G)_i, y_i) with the two-layer HGNN ``hgnn`` on the *raw* F
      (#hgnn).

    Args:
        num_classes: C, the number of training classes; labels must lie in [0, C).
        embedding_size: D, the width of the embeddings passed to the loss.
        hidden_size: h, the HGNN hidden width.
        tau: τ, temperature of the distribution loss.
        alpha: α, sharpness of the soft hyperedge membership.
        lambda_s: λ_s, weight of the HGNN cross-entropy, folded into ``hgnn_loss``.
        official_underflow_mask: if True, reproduce the authors' code, which drops from L_D the
            samples whose softmax probability of the true class underflows to exactly 0 in the
            compute dtype (only possible in float32, with τ·Δd > ~104) and averages over the
            others. A ValueError is raised if every sample would be dropped (the official code
            returns NaN). The default (False) is the mathematically correct log-softmax over all
            samples, which is finite where float32 softmax underflows.
        **kwargs: passed to ``BaseMetricLossFunction`` (``reducer``, ``embedding_regularizer``,
            ...). ``distance`` is refused: HIST's Mahalanobis distance is part of the method.

    Reducer input:
        dist_loss: per-sample −log P_i, reduction_type "element" (only the kept samples when
            ``official_underflow_mask`` is on).
        hgnn_loss: per-sample λ_s·CE, reduction_type "element".
        The default reducer is a ``MeanReducer`` per sub-loss and PML sums the sub-losses, which
        gives exactly the paper code's L_D + λ_s·L_CE.

    indices_tuple: a miner's output is used as per-sample weights (count / max count, through
    ``lmu.convert_to_weights``), as in PML's proxy losses. Samples that are in no tuple get
    weight 0 in both sub-losses, but they still shape the hypergraph H and G of the others.

    ``ref_emb`` is not supported; labels are required. The loss needs B ≥ 2 (BatchNorm over the
    batch). It is a training-only object: in eval mode the HGNN still normalises with the batch
    statistics but leaves its running statistics untouched.

    dtype: the loss computes in float32 (float64 if the embeddings are float64) with autocast
    disabled, casting only local copies of the parameters, which therefore stay in their dtype
    (float32) under AMP. PML's reducer returns the loss in the embeddings' dtype (e.g. bf16).
    The parameters need an optimizer; see ``param_groups``.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        hidden_size: int = 512,
        tau: float = 32.0,
        alpha: float = 0.9,
        lambda_s: float = 1.0,
        official_underflow_mask: bool = False,
        **kwargs,
    ):
        if kwargs.get("distance") is not None:
            raise ValueError(
                "HISTLoss computes its own Mahalanobis distance; the distance argument is not "
                "supported"
            )
        for name, value in (
            ("num_classes", num_classes),
            ("embedding_size", embedding_size),
            ("hidden_size", hidden_size),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.hidden_size = int(hidden_size)
        self.tau = float(tau)
        self.alpha = float(alpha)
        self.lambda_s = float(lambda_s)
        self.official_underflow_mask = bool(official_underflow_mask)
        self.means = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        self.log_vars = nn.Parameter(torch.empty(self.num_classes, self.embedding_size))
        nn.init.kaiming_normal_(self.means, mode="fan_out")
        nn.init.kaiming_normal_(self.log_vars, mode="fan_out")
        self.hgnn = _HGNN(self.embedding_size, self.hidden_size, self.num_classes)
        self.add_to_recordable_attributes(
            list_of_names=[
                "num_classes",
                "embedding_size",
                "hidden_size",
                "tau",
                "alpha",
                "lambda_s",
            ],
            is_stat=False,
        )

    def _sub_loss_names(self) -> list[str]:
        return ["dist_loss", "hgnn_loss"]

    def compute_loss(self, embeddings, labels, indices_tuple, ref_emb, ref_labels):
        c_f.labels_required(labels)
        c_f.ref_not_supported(embeddings, labels, ref_emb, ref_labels)
        out = self.compute_outputs(embeddings, labels)
        weights = lmu.convert_to_weights(indices_tuple, labels, dtype=out.dist.dtype)
        indices = c_f.torch_arange_from_size(embeddings)
        dist_losses, dist_indices = out.dist_losses * weights, indices
        if out.kept is not None:
            dist_losses, dist_indices = dist_losses[out.kept], indices[out.kept]
        return {
            "dist_loss": {
                "losses": dist_losses,
                "indices": dist_indices,
                "reduction_type": "element",
            },
            "hgnn_loss": {
                "losses": self.lambda_s * out.hgnn_losses * weights,
                "indices": indices,
                "reduction_type": "element",
            },
        }

    def compute_outputs(self, embeddings: torch.Tensor, labels: torch.Tensor) -> HISTOutputs:
        """Run the HIST forward pass and return every intermediate (see ``HISTOutputs``).

        ``compute_loss`` builds its loss dict from this. embeddings: (B, D) raw, labels: (B,)
        integers in [0, C). Updates the HGNN BatchNorm running statistics in training mode.
        """
        x = self._prepare_embeddings(embeddings)
        labels = self._check_labels(labels, x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            dist = self._mahalanobis_distance(x)
            logits = -self.tau * dist
            dist_losses = F.cross_entropy(logits, labels, reduction="none")
            kept = self._underflow_keep_mask(logits, labels)
            classes = torch.unique(labels)
            own_class = labels.unsqueeze(1) == classes.unsqueeze(0)
            H = torch.where(own_class, 1.0, torch.exp(-self.alpha * dist[:, classes]))
            G = self._propagation_matrix(H)
            hgnn_logits = self.hgnn(x, G)
            hgnn_losses = F.cross_entropy(hgnn_logits, labels, reduction="none")
        return HISTOutputs(dist, dist_losses, kept, classes, H, G, hgnn_logits, hgnn_losses)

    def _mahalanobis_distance(self, x: torch.Tensor) -> torch.Tensor:
        """Squared diagonal Mahalanobis distances (B, C) of x (B, D) to the class distributions.

        d = (x̂∘x̂) Λ^T − 2 x̂ (μ̂∘Λ)^T + 1 (Σ_k μ̂²_·k Λ_·k)^T with Λ = exp(−relu6(s)) (#distances), in
        x's dtype. μ̂ = μ·r with r_c = 1/max(‖μ_c‖, 1e-12) is never materialised: r scales the
        columns of the cross term and the constant, which saves (C, D) passes at SOP scale.
        relu6 passes no gradient at exactly 0 and 6, like the official code.
        """
        x_hat = F.normalize(x, p=2, dim=1)
        means = self.means.to(x.dtype)
        precision = torch.exp(-F.relu6(self.log_vars.to(x.dtype)))
        inv_norm = torch.linalg.vector_norm(means, dim=1).clamp_min(1e-12).reciprocal()
        weighted = means * precision
        const = inv_norm.square() * torch.linalg.vecdot(means, weighted)
        dist = torch.addmm(const.unsqueeze(0), x_hat.square(), precision.t())
        return torch.addcmul(dist, x_hat @ weighted.t(), inv_norm, value=-2.0)

    @staticmethod
    def _propagation_matrix(H: torch.Tensor) -> torch.Tensor:
        """G = Dv^-1/2 H De^-1 H^T Dv^-1/2 (B, B) for an incidence matrix H (B, E) (#hypergraph).

        Computed as Ĥ Ĥ^T with Ĥ_ij = H_ij / sqrt(Dv_i De_j), without diagonal matrices.
        """
        H_hat = H * H.sum(dim=1, keepdim=True).rsqrt() * H.sum(dim=0, keepdim=True).rsqrt()
        return H_hat @ H_hat.t()

    def get_logits(self, embeddings: torch.Tensor) -> torch.Tensor:
        """Class logits −τ·d (B, C) from the class distributions alone (no HGNN, no labels)."""
        x = self._prepare_embeddings(embeddings, min_batch=1)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return -self.tau * self._mahalanobis_distance(x)

    def param_groups(
        self,
        lr: float,
        lr_ds: float = 0.1,
        lr_hgnn_factor: float = 10.0,
        weight_decay: float | None = None,
    ) -> list[dict]:
        """Optimizer parameter groups with the paper's learning-rate rules (#recipe).

        Returns ``[{means, log_vars; lr_ds}, {HGNN; lr·lr_hgnn_factor}]``, plus a group at ``lr``
        for any other parameter of the loss (e.g. a learnable embedding regularizer). ``lr_ds``
        is an absolute learning rate. ``weight_decay``, if given, is set on every group (the
        paper uses Adam's coupled decay on all of them). Each group has a ``name`` key.
        """
        groups = [
            {"name": "prototypes", "params": [self.means, self.log_vars], "lr": lr_ds},
            {"name": "hgnn", "params": list(self.hgnn.parameters()), "lr": lr * lr_hgnn_factor},
        ]
        return with_remaining_params(self, groups, lr, weight_decay)

    def _prepare_embeddings(self, embeddings: torch.Tensor, min_batch: int = 2) -> torch.Tensor:
        """Validate (B, D) embeddings and cast them to the compute dtype (float32 or float64)."""
        if embeddings.ndim != 2:
            raise ValueError(
                f"HISTLoss expects 2-D embeddings (batch, {self.embedding_size}), "
                f"got shape {tuple(embeddings.shape)}"
            )
        if embeddings.shape[1] != self.embedding_size:
            raise ValueError(
                f"HISTLoss was built for embedding_size={self.embedding_size}, "
                f"got embeddings of width {embeddings.shape[1]}"
            )
        if embeddings.shape[0] < min_batch:
            raise ValueError(
                f"HISTLoss needs at least {min_batch} samples per batch (its HGNN BatchNorm "
                f"normalises over the batch), got {embeddings.shape[0]}"
            )
        if not torch.isfinite(embeddings).all():
            raise ValueError("HISTLoss received embeddings containing NaN or inf")
        dtype = torch.float64 if embeddings.dtype == torch.float64 else torch.float32
        return embeddings.to(dtype)

    def _check_labels(self, labels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Validate (B,) class ids in [0, C) and return them as int64 on x's device."""
        if labels.shape != (len(x),):
            raise ValueError(f"labels must have shape ({len(x)},), got {tuple(labels.shape)}")
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
        if ((labels < 0) | (labels >= self.num_classes)).any():
            raise ValueError(
                f"labels must be contiguous class ids in [0, num_classes={self.num_classes}), "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )
        return labels.to(device=x.device, dtype=torch.long)

    def _underflow_keep_mask(
        self, logits: torch.Tensor, labels: torch.Tensor
    ) -> torch.Tensor | None:
        """The official float32 mask P_i ≠ 0 (#distribution-loss), or None if the option is off."""
        if not self.official_underflow_mask:
            return None
        with torch.no_grad():
            p_true = torch.softmax(logits, dim=1).gather(1, labels.unsqueeze(1)).squeeze(1)
            kept = p_true != 0
        if not kept.any():
            raise ValueError(
                "official_underflow_mask: the true-class probability of every sample underflows "
                "to 0, so the official distribution loss is undefined (NaN)"
            )
        return kept
