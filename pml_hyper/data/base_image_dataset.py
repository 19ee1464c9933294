"""Common logic of the image datasets: split check, labels, image loading (hist.md §5.6)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image


class CorruptImageError(ValueError):
    """An image file of a dataset that is truncated or not an image."""


class BaseImageDataset(torch.utils.data.Dataset):
    """A list of image files with one integer label each; items are ``(image, label)``.

    Subclasses set ``SPLITS`` and ``LAYOUT`` and implement :meth:`_load_split`, which returns the
    split's image paths and labels in order. Images are returned as RGB ``PIL.Image``s (grey,
    CMYK and palette images are converted; transparent images are composited onto white) and
    passed through ``transform`` when one is given.

    Attributes:
        root: the dataset root folder.
        split: the split name.
        paths: the image files, one per item.
        labels: ``(N,)`` int64 numpy array of the items' labels, in order (what PML samplers and
            testers need).

    Args:
        root: folder holding the dataset in its official layout (``LAYOUT``).
        split: one of ``SPLITS``.
        transform: callable applied to each PIL image (e.g. :func:`pml_hyper.data.eval_transform`).
    """

    SPLITS: tuple[str, ...] = ("train", "test")
    LAYOUT: str = ""

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
    ):
        if split not in self.SPLITS:
            raise ValueError(
                f"{type(self).__name__}: split must be one of {self.SPLITS}, got {split!r}"
            )
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        paths, labels = self._load_split()
        self.paths: list[Path] = list(paths)
        self.labels: np.ndarray = np.asarray(labels, dtype=np.int64).reshape(-1)
        if len(self.paths) != len(self.labels):
            raise RuntimeError(
                f"{type(self).__name__}: {len(self.paths)} images but {len(self.labels)} labels"
            )
        if len(self.paths) == 0:
            raise RuntimeError(
                f"{type(self).__name__}: the {split!r} split under {self.root} holds no image"
                f"; expected layout:\n{self.LAYOUT}"
            )

    def _load_split(self) -> tuple[Sequence[Path], Sequence[int]]:
        """Return the split's image paths and labels, in order."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, "
            f"images={len(self)}, classes={len(np.unique(self.labels))})"
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        image = self._read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        return image, int(self.labels[index])

    def _missing(self, path: Path) -> FileNotFoundError:
        """The error for a missing file or folder: names it and the expected layout."""
        if not self.root.is_dir():
            what = f"dataset root {self.root} does not exist"
        else:
            what = f"{path} not found"
        return FileNotFoundError(
            f"{type(self).__name__}: {what}. Expected layout under root:\n{self.LAYOUT}"
        )

    def _require(self, path: Path) -> Path:
        """Return ``path`` if it exists, else raise the :meth:`_missing` error."""
        if not path.exists():
            raise self._missing(path)
        return path

    def _read_image(self, path: Path) -> Image.Image:
        """Open ``path`` as an RGB image (transparent pixels become white)."""
        try:
            with Image.open(path) as image:
                if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
                    rgba = image.convert("RGBA")
                    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                    return Image.alpha_composite(white, rgba).convert("RGB")
                return image.convert("RGB")
        except FileNotFoundError:
            raise self._missing(path) from None
        except (OSError, SyntaxError, ValueError) as error:  # truncated, junk (Unidentified...)
            raise CorruptImageError(
                f"{type(self).__name__}: cannot read image {path} ({error}); "
                "replace or remove the file"
            ) from None
