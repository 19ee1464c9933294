"""CUB-200-2011 in its official archive layout (hist.md §5.6, hier.md §9)."""

from __future__ import annotations

import re
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS

from .base_image_dataset import BaseImageDataset


class CUB200(BaseImageDataset):
    """Caltech-UCSD Birds-200-2011 with the metric-learning split: classes 1–100 train,
    101–200 test (5,864 / 5,924 images in the full archive).

    Label = official class id − 1, from the ``NNN.`` prefix of the class folder, so train labels
    are 0..99 and test labels 100..199 (not re-indexed, as in the papers' code). This equals the
    sorted-folder order of ``ImageFolder`` that the official code uses. Images are read in folder,
    then file-name order; files starting with ``._`` (macOS metadata) are skipped.
    """

    SPLITS = ("train", "test")
    NUM_CLASSES = 200
    LAYOUT = (
        "  <root>/CUB_200_2011/images/<NNN.Class_name>/<image>.jpg\n"
        "  (200 class folders, 001.Black_footed_Albatross ... 200.Common_Yellowthroat)"
    )
    _FOLDER = re.compile(r"^(\d{3})\.")

    def _load_split(self) -> tuple[list[Path], list[int]]:
        images = self._require(self.root / "CUB_200_2011" / "images")
        half = self.NUM_CLASSES // 2
        paths, labels = [], []
        for folder in sorted(p for p in images.iterdir() if p.is_dir()):
            match = self._FOLDER.match(folder.name)
            if match is None or not 1 <= int(match.group(1)) <= self.NUM_CLASSES:
                raise ValueError(
                    f"CUB200: unexpected class folder {folder}; expected layout:\n{self.LAYOUT}"
                )
            label = int(match.group(1)) - 1
            if (label < half) != (self.split == "train"):
                continue
            files = sorted(
                f
                for f in folder.iterdir()
                if f.suffix.lower() in IMG_EXTENSIONS and not f.name.startswith("._")
            )
            paths += files
            labels += [label] * len(files)
        return paths, labels
