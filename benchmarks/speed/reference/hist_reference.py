"""HIST in the original broadcast formulation (docs/hist.md#forward-pass): speed baseline.

Written from the specification, not from the authors' code. It reproduces their cost structure:

- the Mahalanobis distance from a (B, C, D) difference tensor, squared and divided by the
  variances (several (B, C, D) tensors are kept for backward);
- a dense one-hot over all C classes, the softmax probability of the true class, then its log,
  averaged over the samples whose probability is not exactly 0 (the official underflow mask);
- G from dense diagonal degree matrices and a five-matrix product;
- the HGNN as ordinary ``nn.Linear`` / ``nn.BatchNorm1d`` modules.

Parameter names match ``pml_hyper.losses.HISTLoss`` so that one state dict serves both.
"""

import torch
import torch.nn.functional as F
from torch import nn


class _ReferenceHGNN(nn.Module):
    def __init__(self, in_features: int, hidden_size: int, num_classes: int):
        super().__init__()
        self.theta1 = nn.Linear(in_features, hidden_size)
        self.bn1 = nn.BatchNorm1d(hidden_size)
        self.theta2 = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        a = self.bn1(G.matmul(self.theta1(x)))
        return G.matmul(self.theta2(F.leaky_relu(a, negative_slope=0.1)))


class HISTReference(nn.Module):
    """L = L_D + λ_s·L_CE for raw embeddings (B, D) and labels (B,), broadcast formulation."""

    def __init__(
        self,
        num_classes: int,
        embedding_size: int,
        hidden_size: int = 512,
        tau: float = 32.0,
        alpha: float = 0.9,
        lambda_s: float = 1.0,
    ):
        super().__init__()
        self.num_classes, self.tau, self.alpha, self.lambda_s = num_classes, tau, alpha, lambda_s
        self.means = nn.Parameter(torch.empty(num_classes, embedding_size))
        self.log_vars = nn.Parameter(torch.empty(num_classes, embedding_size))
        nn.init.kaiming_normal_(self.means, mode="fan_out")
        nn.init.kaiming_normal_(self.log_vars, mode="fan_out")
        self.hgnn = _ReferenceHGNN(embedding_size, hidden_size, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x_hat = F.normalize(x, p=2, dim=-1)
        mu_hat = F.normalize(self.means, p=2, dim=-1)
        variances = torch.exp(F.relu6(self.log_vars))
        diff = x_hat.unsqueeze(1) - mu_hat.unsqueeze(0)  # (B, C, D)
        dist = (diff.pow(2) / variances.unsqueeze(0)).sum(dim=-1)  # (B, C)

        one_hot = F.one_hot(labels, self.num_classes).to(x.dtype)
        p_true = (F.softmax(-self.tau * dist, dim=1) * one_hot).sum(dim=1)
        kept = p_true != 0
        dist_loss = -torch.log(p_true[kept]).mean()

        classes = torch.nonzero(one_hot.sum(dim=0)).squeeze(1)
        in_batch = one_hot[:, classes]
        H = in_batch + torch.exp(-self.alpha * dist[:, classes]) * (1 - in_batch)
        dv_inv_sqrt = torch.diag(H.sum(dim=1).pow(-0.5))
        de_inv = torch.diag(H.sum(dim=0).pow(-1))
        W = torch.eye(len(classes), dtype=H.dtype, device=H.device)
        G = torch.linalg.multi_dot([dv_inv_sqrt, H, W, de_inv, H.t(), dv_inv_sqrt])

        ce_loss = F.cross_entropy(self.hgnn(x, G), labels)
        return dist_loss + self.lambda_s * ce_loss
