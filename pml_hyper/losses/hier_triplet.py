"""HIER's functional core (Kim, Jeong, Kwak, CVPR 2023): LCA choice among the proxies by hard
Gumbel-softmax and the three-term hinge, one part (samples or proxies) at a time.

:class:`~pml_hyper.losses.HIERLoss` mines the triplets, draws the noise and calls
:func:`hier_triplet_loss` for each part. Anchors (#hinge) refer to ``docs/hier.md``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ..manifolds.poincare import full_precision

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
