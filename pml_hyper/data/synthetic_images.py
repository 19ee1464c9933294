"""A generated image dataset that runs anywhere, for smoke tests (config ``dataset: synthetic``)."""

from __future__ import annotations

import numpy as np
import torch


class SyntheticImages(torch.utils.data.Dataset):
    """Class-conditional noise images: class c is a fixed random pattern plus per-image noise.

    Items are ``(image (3, S, S) float tensor, label)``; ``labels`` is the ``(N,)`` int64 numpy
    array PML samplers and testers read. Train classes are ``0..num_classes−1``, test classes
    ``num_classes..2·num_classes−1`` (class-disjoint, like CUB). Images are generated once,
    deterministically from ``seed`` and the split.

    Args:
        split: ``"train"`` or ``"test"``.
        num_classes: classes per split.
        images_per_class: images of each class.
        image_size: S.
        noise: standard deviation of the per-image noise around the class pattern.
        seed: generator seed.
        coarse_classes: when given, a two-level hierarchy: ``hierarchy_levels`` is
            ``("class", "coarse")`` and ``hierarchy`` is ``(N, 2)``, the coarse label of class
            c being ``c // coarse_classes`` (classes grouped in runs of ``coarse_classes``).
    """

    def __init__(
        self,
        split: str = "train",
        num_classes: int = 8,
        images_per_class: int = 8,
        image_size: int = 32,
        noise: float = 0.5,
        seed: int = 0,
        coarse_classes: int | None = None,
    ):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        generator = torch.Generator().manual_seed(seed + (split == "test"))
        patterns = torch.randn(num_classes, 3, image_size, image_size, generator=generator)
        labels = torch.arange(num_classes).repeat_interleave(images_per_class)
        self.images = patterns[labels] + noise * torch.randn(
            len(labels), 3, image_size, image_size, generator=generator
        )
        offset = num_classes if split == "test" else 0
        self.labels: np.ndarray = (labels + offset).numpy().astype(np.int64)
        if coarse_classes is not None:
            if isinstance(coarse_classes, bool) or not isinstance(coarse_classes, int):
                raise ValueError(f"coarse_classes must be a positive int, got {coarse_classes!r}")
            if coarse_classes < 1:
                raise ValueError(f"coarse_classes must be a positive int, got {coarse_classes!r}")
            self.hierarchy_levels = ("class", "coarse")
            self.hierarchy = np.stack([self.labels, self.labels // coarse_classes], axis=1)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.images[index], int(self.labels[index])
