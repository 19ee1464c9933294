"""All-gather wrapper for metric losses under DDP, with single-process gradients
(docs/pml.md#distributed)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


class _GatherWithLocalGradient(torch.autograd.Function):
    """All-gather (N_r, ...) slices in rank order; the backward returns the gradient of the local
    slice multiplied by ``world_size``, so that DDP's averaging of the model gradients gives
    back the sum over ranks (the single-process gradient)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
        ctx.rank, ctx.world_size, ctx.sizes = dist.get_rank(), dist.get_world_size(), sizes
        return _all_gather_variable(local, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * ctx.world_size, None


def _all_gather_variable(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every rank's ``local`` (rank order); first dimensions may differ."""
    longest = max(sizes)
    padded = local.new_zeros((longest, *local.shape[1:]))
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, torch.tensor([n], dtype=torch.int64, device=device))
    return [int(s) for s in sizes]


class DistributedLossWrapper(torch.nn.Module):
    """Computes ``loss`` on the batch all-gathered from every rank, with the gradients of a
    single process that sees the concatenated batch.

    Every rank gathers the embeddings and labels of all ranks in rank order and evaluates the
    loss on that same global batch, so:

    - the returned loss is the single-process value on the global batch (PML's wrapper returns
      ``world_size`` times it);
    - the loss's own parameters (proxies, HIST distributions and HGNN, HIER proxies) get exactly
      the single-process gradient on every rank. PML's wrapper multiplies them by
      ``world_size`` (its loss is scaled so that model gradients survive DDP's averaging);
    - the embeddings' gradient flows only into the local slice, multiplied by ``world_size``:
      after DDP averages the model gradients over ranks, the model gets the single-process
      gradient too. **The model must therefore be wrapped in DDP; the loss must not be** (its
      gradients are already complete; averaging identical gradients would only cost a
      collective). Call :meth:`synchronize_gradients` after ``backward`` to average the loss
      parameters' gradients anyway: it keeps the ranks bit-identical when random draws (e.g.
      HIER's mining with differently seeded ranks) or non-deterministic kernels make them
      differ.

    ``loss`` may be any module called as ``loss(embeddings, labels, indices_tuple)``: a PML
    ``BaseMetricLossFunction``, ``MultipleLosses`` (which PML's wrapper rejects), HISTLoss,
    HIERLoss. Randomised losses must draw the same numbers on every rank to give the
    single-process result (same seed, or a seeded ``generator``). Outside a process group (or
    with one rank) the wrapper calls ``loss`` unchanged.

    indices_tuple: local indices (into this rank's batch) are gathered and shifted to the global
    batch; any miner output format (pairs or triplets) works.
    """

    def __init__(self, loss: torch.nn.Module):
        super().__init__()
        if not isinstance(loss, torch.nn.Module):
            raise TypeError(f"loss must be a torch.nn.Module, got {type(loss).__name__}")
        self.loss = loss

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple[torch.Tensor, ...] | None = None,
    ) -> torch.Tensor:
        if not is_distributed() or dist.get_world_size() == 1:
            return self.loss(embeddings, labels, indices_tuple)
        sizes = _gather_sizes(len(embeddings), embeddings.device)
        all_embeddings = _GatherWithLocalGradient.apply(embeddings, sizes)
        all_labels = None
        if labels is not None:
            labels = torch.as_tensor(labels, device=embeddings.device)
            all_labels = _all_gather_variable(labels, sizes)
        if indices_tuple is not None:
            offset = sum(sizes[: dist.get_rank()])
            indices_tuple = tuple(
                self._gather_indices(idx.to(embeddings.device) + offset) for idx in indices_tuple
            )
        return self.loss(all_embeddings, all_labels, indices_tuple)

    @staticmethod
    def _gather_indices(indices: torch.Tensor) -> torch.Tensor:
        return _all_gather_variable(indices, _gather_sizes(len(indices), indices.device))

    @torch.no_grad()
    def synchronize_gradients(self) -> None:
        """Average the loss parameters' gradients over ranks.

        A gradient missing on some ranks counts as 0 there; a parameter without a gradient on
        every rank keeps ``grad=None``. Every rank must call it after ``backward``. A no-op
        outside a process group.
        """
        if not is_distributed() or dist.get_world_size() == 1:
            return
        params = [p for p in self.loss.parameters() if p.requires_grad]
        if not params:
            return
        has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.float32)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        flat = torch.cat([has_grad.to(grads[0].device), *(g.reshape(-1) for g in grads)])
        dist.all_reduce(flat)
        counts, flat = flat[: len(params)], flat[len(params) :] / dist.get_world_size()
        chunks = flat.split([p.numel() for p in params])
        for param, count, chunk in zip(params, counts, chunks, strict=True):
            if count > 0:
                param.grad = chunk.view_as(param).to(param.dtype).clone()
