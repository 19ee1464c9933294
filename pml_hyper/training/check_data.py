"""Open every image of a config's datasets once, to find corrupt files before a long run."""

from __future__ import annotations

from pathlib import Path

import torch
import tqdm

from ..data.base_image_dataset import BaseImageDataset, CorruptImageError
from .builders import build_datasets


def _image_datasets(dataset) -> tuple[BaseImageDataset, list[int]] | None:
    """The image dataset under ``dataset`` (a subset or not) and the indices it uses."""
    indices = None
    while isinstance(dataset, torch.utils.data.Subset):
        indices = [dataset.indices[i] for i in indices] if indices else list(dataset.indices)
        dataset = dataset.dataset
    if not isinstance(dataset, BaseImageDataset):
        return None
    return dataset, indices if indices is not None else list(range(len(dataset)))


def check_data(
    config: dict, data_root: str | Path | None = None, progress_bar: bool = True
) -> dict[str, list[str]]:
    """``{split: [error, ...]}`` of every unreadable image of ``config``'s datasets."""
    train, evals, _ = build_datasets(config, data_root)
    bad: dict[str, list[str]] = {}
    for split, dataset in {"train": train, **evals}.items():
        found = _image_datasets(dataset)
        if found is None:
            continue
        images, indices = found
        errors = bad.setdefault(split, [])
        for i in tqdm.tqdm(indices, desc=f"checking {split}", disable=not progress_bar):
            try:
                images._read_image(Path(images.paths[i]))
            except (CorruptImageError, FileNotFoundError) as error:
                errors.append(str(error))
    return bad
