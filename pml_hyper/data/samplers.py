"""Class-balanced batches for metric learning, with a distributed split (docs/hier.md#data,
docs/hist.md#data, docs/pml.md#trainers)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


class UniqueClassSampler(torch.utils.data.Sampler[int]):
    """HIER's sampler: every batch holds ``batch_size / images_per_class`` distinct classes with
    ``images_per_class`` images each, and the ranks of a distributed run share one global batch
    of distinct classes.

    For each global batch, ``batch_size · num_replicas / images_per_class`` classes are drawn
    (without replacement when there are that many classes, else with replacement); rank r takes
    the r-th slice of them. Each class then contributes ``images_per_class`` images, drawn with
    replacement as in HIER and HIST's ``BalancedSampler`` (two views may be the same file), or
    without replacement (``replacement=False``; every class needs ``images_per_class`` images).
    Indices come out class by class; an epoch is ``len(labels) // (batch_size · num_replicas)``
    batches. The draws come from a ``torch.Generator`` seeded with ``seed + epoch``, so every
    rank computes the same global batches; call :meth:`set_epoch` each epoch.

    Use it as ``DataLoader(dataset, batch_size=batch_size, sampler=sampler)`` (no shuffle), with
    the per-rank ``batch_size`` (HIER: 90 per rank on 2 GPUs, 2 images per class).

    PML's ``MPerClassSampler(labels, m, batch_size, length_before_new_iter)`` gives the same batch
    structure in a single process (m images per class, drawn without replacement when a class
    has m images) with numpy's global RNG; it has no rank split, so under DDP each rank would
    draw its own, possibly overlapping, classes. Use it for single-process PML trainers; use this
    sampler for the papers' recipes and for distributed training.

    Args:
        labels: ``(N,)`` integer labels of the dataset (e.g. ``dataset.labels``).
        batch_size: images per batch on this rank; a multiple of ``images_per_class``.
        images_per_class: images of each class in a batch (IPC; 2 in HIER).
        num_replicas: number of ranks; ``None`` = the initialised process group's size, or 1.
        rank: this rank; ``None`` = the process group's rank, or 0.
        seed: base seed, identical on every rank.
        replacement: draw a class's images with replacement (the papers) or without.
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        images_per_class: int = 2,
        num_replicas: int | None = None,
        rank: int | None = None,
        seed: int = 0,
        replacement: bool = True,
    ):
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu()
        else:
            labels = torch.as_tensor(np.asarray(labels))
        if labels.ndim != 1 or labels.is_floating_point() or labels.is_complex():
            raise ValueError(
                f"labels must be a 1-D integer array, got {labels.dtype} {tuple(labels.shape)}"
            )
        if images_per_class < 1 or batch_size < 1 or batch_size % images_per_class:
            raise ValueError(
                f"batch_size ({batch_size}) must be a positive multiple of images_per_class "
                f"({images_per_class})"
            )
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if num_replicas is None:
            num_replicas = torch.distributed.get_world_size() if distributed else 1
        if rank is None:
            rank = torch.distributed.get_rank() if distributed else 0
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.batch_size = batch_size
        self.images_per_class = images_per_class
        self.num_replicas = num_replicas
        self.rank = rank
        self.seed = seed
        self.replacement = replacement
        self.epoch = 0
        self.num_batches = len(labels) // (batch_size * num_replicas)
        if self.num_batches == 0:
            raise ValueError(
                f"{len(labels)} samples make no batch of {batch_size} × {num_replicas} ranks"
            )
        self._order = torch.argsort(labels, stable=True)
        _, self._counts = torch.unique_consecutive(labels[self._order], return_counts=True)
        self._starts = torch.cumsum(self._counts, 0) - self._counts
        if not replacement and int(self._counts.min()) < images_per_class:
            raise ValueError(
                f"replacement=False needs {images_per_class} images in every class; the "
                f"smallest class has {int(self._counts.min())}"
            )

    def set_epoch(self, epoch: int) -> None:
        """Draw the batches of ``epoch`` (the same on every rank)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches * self.batch_size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        num_classes = len(self._counts)
        per_rank = self.batch_size // self.images_per_class
        per_batch = per_rank * self.num_replicas
        for _ in range(self.num_batches):
            if num_classes >= per_batch:
                classes = torch.randperm(num_classes, generator=generator)[:per_batch]
            else:
                classes = torch.randint(num_classes, (per_batch,), generator=generator)
            counts = self._counts[classes]
            if self.replacement:
                draws = torch.rand(
                    per_batch, self.images_per_class, generator=generator, dtype=torch.float64
                )
                offsets = (draws * counts[:, None]).long()
            else:
                keys = torch.rand(per_batch, int(counts.max()), generator=generator)
                keys[torch.arange(keys.shape[1]) >= counts[:, None]] = 2.0
                offsets = keys.argsort(dim=1)[:, : self.images_per_class]
            positions = self._starts[classes, None] + offsets
            mine = positions[self.rank * per_rank : (self.rank + 1) * per_rank]
            yield from self._order[mine.reshape(-1)].tolist()
