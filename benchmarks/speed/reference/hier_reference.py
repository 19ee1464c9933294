"""HIER in the original formulation (docs/hier.md#distances, #hinge): the speed benchmark baseline.

Written from the specification, not from the authors' code. It reproduces their cost structure:

- one (B+M)×(B+M) distance matrix of cat(z, P) with itself through the broadcast Möbius
  addition, i.e. (B+M)²×D tensors kept for backward, of which only three blocks are used;
- mutual top-k mining with a Python loop over the B + M anchors, two ``nonzero`` host syncs
  and two ``RandomState.choice`` draws per anchor;
- the LCA choice with ``F.gumbel_softmax(hard=True)`` on the global torch RNG, and the hinge as
  weighted sums over all M candidates.

With ``numpy.random.RandomState(seed + 1)`` and ``torch.manual_seed(seed + 1)`` it draws exactly
the official triplets and noise (as in the golden HIER records). The parameter name ``lcas`` matches
``pml_hyper.losses.HIERLoss`` so that one state dict serves both.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-5


class _Artanh(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        x = x.clamp(-1 + EPS, 1 - EPS)
        ctx.save_for_backward(x)
        return 0.5 * (torch.log1p(x) - torch.log1p(-x))

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad / (1 - x**2)


class _RiemannianGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, c):
        ctx.save_for_backward(z)
        ctx.c = c
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return grad * ((1 - ctx.c * z.pow(2).sum(-1, keepdim=True)) ** 2 / 4), None


def to_poincare(u: torch.Tensor, c: float, clip_r: float) -> torch.Tensor:
    """Clip, expmap0, project and Riemannian rescale, with the official epsilons."""
    c_f = torch.as_tensor(c, dtype=torch.float32).type_as(u)
    u = u * torch.clamp(clip_r / (u.norm(dim=-1, keepdim=True) + EPS), max=1)
    norm = u.norm(dim=-1, keepdim=True).clamp_min(EPS)
    z = torch.tanh((c_f.sqrt() * norm).clamp(-15, 15)) * u / (c_f.sqrt() * norm)
    max_norm = (1 - 1e-3) / c_f.sqrt()
    norm = z.norm(dim=-1, keepdim=True).clamp_min(EPS)
    z = torch.where(norm > max_norm, z / norm * max_norm, z)
    return _RiemannianGradient.apply(z, c)


def dist_matrix(x: torch.Tensor, y: torch.Tensor, c: float) -> torch.Tensor:
    """(N, M) Poincaré distances through the (N, M, D) Möbius sum (-x_i) ⊕ y_j."""
    c = torch.as_tensor(c, dtype=torch.float32).type_as(x)
    x = -x
    xy = torch.einsum("ij,kj->ik", x, y)
    x2 = x.pow(2).sum(-1, keepdim=True)
    y2 = y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2.T).unsqueeze(2) * x.unsqueeze(1)
    num = num + (1 - c * x2).unsqueeze(2) * y
    den = 1 + 2 * c * xy + c**2 * x2 * y2.T
    mobius = num / (den.unsqueeze(2) + EPS)
    return 2 / c.sqrt() * _Artanh.apply(c.sqrt() * mobius.norm(dim=2))


def mine_triplets(sim: torch.Tensor, topk: int, t: int, rng: np.random.RandomState) -> torch.Tensor:
    """(T, 3) mutual top-k triplets, anchor loop, per-anchor host syncs (docs/hier.md#mining)."""
    n = len(sim)
    top = torch.zeros(n, n, device=sim.device).scatter_(1, sim.topk(topk, dim=1).indices, 1)
    relation = (top + top.T) / 2
    relation.fill_diagonal_(-1)
    triplets = []
    for a in range(n):
        positives = torch.nonzero(relation[a] == 1).squeeze(1).cpu().numpy()
        negatives = torch.nonzero(relation[a] < 1).squeeze(1).cpu().numpy()
        if len(positives) <= 1:
            continue
        p = rng.choice(positives, t, replace=True)
        neg = rng.choice(negatives, t, replace=True)
        triplets.append(np.stack([np.full(t, a), p, neg], axis=1))
    return torch.as_tensor(np.concatenate(triplets), device=sim.device)


def lca_hinge(dist: torch.Tensor, triplets: torch.Tensor, tau: float, margin: float):
    """One part of L_HIER with F.gumbel_softmax(hard=True) (docs/hier.md#hinge)."""
    d_i, d_j, d_k = dist[triplets[:, 0]], dist[triplets[:, 1]], dist[triplets[:, 2]]
    s_ij = torch.maximum(d_i, d_j)
    pi_ij = F.gumbel_softmax(-s_ij / tau, hard=True)
    pi_ijk = F.gumbel_softmax(-torch.maximum(d_k, s_ij) / tau, hard=True)
    loss = (
        F.relu((d_i * pi_ij).sum(1) - (d_i * pi_ijk).sum(1) + margin)
        + F.relu((d_j * pi_ij).sum(1) - (d_j * pi_ijk).sum(1) + margin)
        + F.relu((d_k * pi_ijk).sum(1) - (d_k * pi_ij).sum(1) + margin)
    )
    return (loss * (pi_ij.argmax(1) != pi_ijk.argmax(1))).mean()


class HIERReference(nn.Module):
    """L_HIER(z, y) for ball points z (B, D) and labels y (B,), original formulation."""

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
        seed: int = 0,
    ):
        super().__init__()
        lcas = torch.randn(num_proxies, embedding_size) / embedding_size**0.5 * clip_r * 0.9
        self.lcas = nn.Parameter(lcas)
        self.margin, self.tau, self.c, self.clip_r = margin, tau, c, clip_r
        self.topk, self.triplets_per_anchor = topk, triplets_per_anchor
        self.rng = np.random.RandomState(seed)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        batch = len(z)
        proxies = to_poincare(self.lcas, self.c, self.clip_r)
        everything = torch.cat([z, proxies])
        dist = dist_matrix(everything, everything, self.c)
        same = (labels.unsqueeze(1) == labels.unsqueeze(0)).float()
        sample_sim = torch.exp(-dist[:batch, :batch].detach()) + same
        proxy_sim = torch.exp(-dist[batch:, batch:].detach())
        t = self.triplets_per_anchor
        sample_triplets = mine_triplets(sample_sim, self.topk, t, self.rng)
        proxy_triplets = mine_triplets(proxy_sim, self.topk, t, self.rng)
        return lca_hinge(dist[:batch, batch:], sample_triplets, self.tau, self.margin) + lca_hinge(
            dist[batch:, batch:], proxy_triplets, self.tau, self.margin
        )
