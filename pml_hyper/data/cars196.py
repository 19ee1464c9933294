"""Stanford Cars-196 in its official archive layout (docs/hist.md#data, docs/hier.md#data)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.io import loadmat

from .base_image_dataset import BaseImageDataset


class Cars196(BaseImageDataset):
    """Stanford Cars with the metric-learning split: classes 1–98 train, 99–196 test
    (8,054 / 8,131 images in the full archive).

    Reads ``cars_annos.mat`` (the ``annotations`` struct array; its ``relative_im_path`` and
    ``class`` fields) with ``scipy.io.loadmat``; the ``test`` field of the car-classification
    split is ignored. Label = ``class`` − 1 (train 0..97, test 98..195, not re-indexed). Images
    are in annotation order.

    Hierarchy: ``("model", "make")``; make = the first word of the class's name in the
    ``class_names`` array of ``cars_annos.mat`` (e.g. ``"BMW"`` for ``"BMW M3 Coupe 2012"``),
    numbered in sorted order over all 196 classes (names in :attr:`make_names`).
    """

    SPLITS = ("train", "test")
    NUM_CLASSES = 196
    HIERARCHY_LEVELS = ("model", "make")
    LAYOUT = (
        "  <root>/cars196/cars_annos.mat   (struct array 'annotations' with fields\n"
        "                                   'relative_im_path' and 'class' (1..196))\n"
        "  <root>/cars196/car_ims/000001.jpg ... 016185.jpg"
    )

    def _load_split(self) -> tuple[list[Path], list[int]]:
        folder = self.root / "cars196"
        mat_file = self._require(folder / "cars_annos.mat")
        mat = loadmat(mat_file, squeeze_me=True)
        annotations = mat.get("annotations")
        fields = () if annotations is None else (annotations.dtype.names or ())
        if not {"relative_im_path", "class"} <= set(fields):
            raise ValueError(
                f"Cars196: {mat_file} has no 'annotations' struct array with fields "
                f"'relative_im_path' and 'class' (found fields {fields}); expected layout:\n"
                f"{self.LAYOUT}"
            )
        annotations = np.atleast_1d(annotations)
        classes = np.asarray(annotations["class"], dtype=np.int64)
        if classes.min() < 1 or classes.max() > self.NUM_CLASSES:
            raise ValueError(
                f"Cars196: {mat_file} has class ids in [{classes.min()}, {classes.max()}], "
                f"expected 1..{self.NUM_CLASSES}"
            )
        labels = classes - 1
        keep = (labels < self.NUM_CLASSES // 2) == (self.split == "train")
        paths = [folder / str(p) for p in annotations["relative_im_path"][keep]]
        names = np.atleast_1d(mat.get("class_names", np.array([], dtype=object)))
        names = [str(n).strip() for n in names.reshape(-1)]
        if len(names) != self.NUM_CLASSES or not all(names):
            self._coarse_missing = (
                f"{mat_file} must hold 'class_names' with {self.NUM_CLASSES} non-empty names "
                f"(found {len(names)}) to give the makes"
            )
        else:
            makes = [n.split()[0] for n in names]
            self.make_names = sorted(set(makes))
            make_id = np.array([self.make_names.index(m) for m in makes], dtype=np.int64)
            self._coarse = make_id[labels[keep]]
        return paths, labels[keep].tolist()
