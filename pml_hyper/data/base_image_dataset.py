"""Common logic of the image datasets: split check, labels, label hierarchies, image loading."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

LABEL_MODES = ("class", "hierarchy")


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
        hierarchy_levels: the label levels, finest first (``HIERARCHY_LEVELS``; ``("class",)``
            for a dataset without a hierarchy).
        hierarchy: ``(N, L)`` int64 numpy array, one column per level; column 0 equals
            ``labels``. Coarse ids are numbered over the whole dataset (all splits), so a coarse
            class has the same id in every split.

    Args:
        root: folder holding the dataset in its official layout (``LAYOUT``).
        split: one of ``SPLITS``.
        transform: callable applied to each PIL image (e.g. :func:`pml_hyper.data.eval_transform`).
        labels: what an item's label is: ``"class"`` (an int, the default), ``"hierarchy"``
            (an ``(L,)`` int64 tensor, every level, for PML testers with
            ``label_hierarchy_level``) or one level name of ``hierarchy_levels`` (that level's
            int). ``.labels`` stays the class labels whatever this is.
    """

    SPLITS: tuple[str, ...] = ("train", "test")
    LAYOUT: str = ""
    HIERARCHY_LEVELS: tuple[str, ...] = ("class",)

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Callable[[Image.Image], Any] | None = None,
        labels: str = "class",
    ):
        if split not in self.SPLITS:
            raise ValueError(
                f"{type(self).__name__}: split must be one of {self.SPLITS}, got {split!r}"
            )
        if not isinstance(labels, str) or (
            labels not in LABEL_MODES and labels not in self.HIERARCHY_LEVELS
        ):
            raise ValueError(
                f"{type(self).__name__}: labels must be 'class', 'hierarchy' or one of its "
                f"hierarchy levels {self.HIERARCHY_LEVELS}, got {labels!r}"
            )
        self.label_mode = labels
        self.hierarchy_levels = self.HIERARCHY_LEVELS
        self._coarse: Any = None
        self._coarse_missing = ""
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
        self._hierarchy: np.ndarray | None = None
        if len(self.HIERARCHY_LEVELS) == 1:
            self._hierarchy = self.labels[:, None].copy()
        elif self._coarse is not None:
            coarse = np.asarray(self._coarse, dtype=np.int64).reshape(len(self.labels), -1)
            if coarse.shape[1] != len(self.HIERARCHY_LEVELS) - 1:
                raise RuntimeError(
                    f"{type(self).__name__}: {coarse.shape[1]} coarse levels for "
                    f"{self.HIERARCHY_LEVELS}"
                )
            self._hierarchy = np.column_stack([self.labels, coarse])
        del self._coarse
        if self.label_mode != "class":
            self.hierarchy  # noqa: B018 - fails early when the hierarchy is unavailable

    @property
    def hierarchy(self) -> np.ndarray:
        """``(N, L)`` int64 labels, one column per level of ``hierarchy_levels``."""
        if self._hierarchy is None:
            raise ValueError(
                f"{type(self).__name__}: the label hierarchy {self.HIERARCHY_LEVELS} is not "
                f"available: {self._coarse_missing}"
            )
        return self._hierarchy

    def level(self, name: str) -> np.ndarray:
        """``(N,)`` int64 labels of the hierarchy level ``name``."""
        if name not in self.hierarchy_levels:
            raise ValueError(
                f"{type(self).__name__} has no hierarchy level {name!r}; its levels are "
                f"{self.hierarchy_levels}"
            )
        return self.hierarchy[:, self.hierarchy_levels.index(name)]

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

    def __getitem__(self, index: int) -> tuple[Any, int | torch.Tensor]:
        image = self._read_image(self.paths[index])
        if self.transform is not None:
            image = self.transform(image)
        if self.label_mode == "class":
            return image, int(self.labels[index])
        if self.label_mode == "hierarchy":
            return image, torch.from_numpy(self.hierarchy[index].copy())
        return image, int(self.hierarchy[index, self.hierarchy_levels.index(self.label_mode)])

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
