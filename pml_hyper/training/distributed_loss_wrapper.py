"""All-gather wrapper for metric losses under DDP, with single-process gradients (or the papers'
model-to-loss gradient ratio, see ``docs/distributed.md``)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from pytorch_metric_learning.losses import CrossBatchMemory


def is_distributed() -> bool:
    """True when a default process group is initialised."""
    return dist.is_available() and dist.is_initialized()


def init_distributed() -> tuple[int, int]:
    """``(rank, world_size)``; under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is
    initialised first (NCCL on GPU, gloo on CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size > 1 and not is_distributed():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend)
    return (dist.get_rank(), world_size) if world_size > 1 else (0, 1)


class _GatherWithLocalGradient(torch.autograd.Function):
    """All-gather (N_r, ...) slices in rank order; the backward returns the gradient of the local
    slice multiplied by ``scale`` (``world_size`` for the exact gradient: DDP's averaging of
    the model gradients then gives back the sum over ranks, the single-process gradient)."""

    @staticmethod
    def forward(ctx, local: torch.Tensor, sizes: list[int], scale: float) -> torch.Tensor:
        ctx.rank, ctx.sizes, ctx.scale = dist.get_rank(), sizes, scale
        return _all_gather_variable(local, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start : start + ctx.sizes[ctx.rank]] * ctx.scale, None, None


class _ScaleGradient(torch.autograd.Function):
    """Identity in the forward; multiplies the gradient by ``scale`` in the backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


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

    ``loss`` may be any module called as PML calls losses,
    ``loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)``: a PML
    ``BaseMetricLossFunction``, ``MultipleLosses`` (which PML's wrapper rejects), HISTLoss,
    HIERLoss; or a PML ``CrossBatchMemory``, called as ``loss(embeddings, labels,
    indices_tuple, enqueue_mask)``. Randomised losses must draw the same numbers on every rank
    to give the single-process result (same seed, or a seeded ``generator``). Outside a process
    group (or with one rank) the wrapper calls ``loss`` unchanged (up to ``paper_world_size``).

    The arguments are PML's wrapper's: ``ref_emb``/``ref_labels`` are gathered like the
    embeddings (the reference embeddings' gradient flows into the local slice in the same
    way); ``enqueue_mask`` (``CrossBatchMemory`` only) is gathered, so every rank enqueues
    the same global batch and the memories stay identical. ``indices_tuple``: local indices
    are gathered and shifted to the global batch: anchors by this rank's offset in the
    embeddings, the positives and negatives by its offset in ``ref_emb`` when one is given
    (pairs ``(a1, p, a2, n)`` or triplets ``(a, p, n)``).

    Args:
        loss: the loss module.
        paper_world_size: ``None`` (default) = the exact single-process gradient. An integer P
            reproduces the released HIER / Hyp training, where every one of P ranks computes
            the loss on the gathered batch and DDP averages the model gradients: the model
            (through the embeddings) gets 1/P of the full-batch gradient, while the loss's
            parameters (proxies) get the full gradient. This holds at any actual world size,
            including a single process standing in for the papers' 2 GPUs.
    """

    def __init__(self, loss: torch.nn.Module, paper_world_size: int | None = None):
        super().__init__()
        if not isinstance(loss, torch.nn.Module):
            raise TypeError(f"loss must be a torch.nn.Module, got {type(loss).__name__}")
        if paper_world_size is not None and (
            isinstance(paper_world_size, bool)
            or not isinstance(paper_world_size, int)
            or paper_world_size < 1
        ):
            raise ValueError(
                f"paper_world_size must be None or a positive integer, got {paper_world_size!r}"
            )
        self.loss = loss
        self.paper_world_size = paper_world_size

    @property
    def embedding_gradient_scale(self) -> float:
        """Factor on the embeddings' gradient relative to the single-process gradient."""
        return 1.0 if self.paper_world_size is None else 1.0 / self.paper_world_size

    def forward(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor | None = None,
        indices_tuple: tuple[torch.Tensor, ...] | None = None,
        ref_emb: torch.Tensor | None = None,
        ref_labels: torch.Tensor | None = None,
        enqueue_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        memory = isinstance(self.loss, CrossBatchMemory)
        if memory and (ref_emb is not None or ref_labels is not None):
            raise ValueError("CrossBatchMemory takes no ref_emb or ref_labels")
        if not memory and enqueue_mask is not None:
            raise ValueError("enqueue_mask is only for a CrossBatchMemory loss")
        if ref_labels is not None and ref_emb is None:
            raise ValueError("ref_labels given without ref_emb")
        scale = self.embedding_gradient_scale
        if not is_distributed() or dist.get_world_size() == 1:
            if scale != 1.0:
                embeddings = _ScaleGradient.apply(embeddings, scale)
                if ref_emb is not None:
                    ref_emb = _ScaleGradient.apply(ref_emb, scale)
            return self._call(embeddings, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask)
        world_size, rank = dist.get_world_size(), dist.get_rank()
        device = embeddings.device
        sizes = _gather_sizes(len(embeddings), device)
        all_embeddings = _GatherWithLocalGradient.apply(embeddings, sizes, world_size * scale)
        all_labels = self._gather_labels(labels, sizes, device)
        all_ref = all_ref_labels = None
        ref_offset = offset = sum(sizes[:rank])
        if ref_emb is not None:
            ref_sizes = _gather_sizes(len(ref_emb), device)
            all_ref = _GatherWithLocalGradient.apply(ref_emb, ref_sizes, world_size * scale)
            all_ref_labels = self._gather_labels(ref_labels, ref_sizes, device)
            ref_offset = sum(ref_sizes[:rank])
        if indices_tuple is not None:
            if memory:
                raise ValueError(
                    "indices_tuple with CrossBatchMemory is not supported under DDP (its "
                    "indices refer to the memory, which the ranks share)"
                )
            indices_tuple = self._shift_indices(indices_tuple, offset, ref_offset, device)
        if enqueue_mask is not None:
            enqueue_mask = _all_gather_variable(torch.as_tensor(enqueue_mask, device=device), sizes)
        return self._call(
            all_embeddings, all_labels, indices_tuple, all_ref, all_ref_labels, enqueue_mask
        )

    def _call(self, embeddings, labels, indices_tuple, ref_emb, ref_labels, enqueue_mask):
        if isinstance(self.loss, CrossBatchMemory):
            return self.loss(embeddings, labels, indices_tuple, enqueue_mask)
        if ref_emb is None:
            return self.loss(embeddings, labels, indices_tuple)
        return self.loss(embeddings, labels, indices_tuple, ref_emb, ref_labels)

    @staticmethod
    def _gather_labels(labels, sizes: list[int], device: torch.device):
        if labels is None:
            return None
        return _all_gather_variable(torch.as_tensor(labels, device=device), sizes)

    @classmethod
    def _shift_indices(cls, indices_tuple, offset: int, ref_offset: int, device):
        if len(indices_tuple) not in (3, 4):
            raise ValueError(
                f"indices_tuple must be pairs (a1, p, a2, n) or triplets (a, p, n), got "
                f"{len(indices_tuple)} tensors"
            )
        anchors = (0, 2) if len(indices_tuple) == 4 else (0,)
        return tuple(
            cls._gather_indices(idx.to(device) + (offset if i in anchors else ref_offset))
            for i, idx in enumerate(indices_tuple)
        )

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
