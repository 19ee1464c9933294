"""CUB-200-2011 in its official archive layout (docs/hist.md#data, docs/hier.md#data)."""

from __future__ import annotations

import re
from pathlib import Path

from .base_image_dataset import BaseImageDataset


class CUB200(BaseImageDataset):
    """Caltech-UCSD Birds-200-2011 with the metric-learning split: classes 1–100 train,
    101–200 test (5,864 / 5,924 images in the full archive).

    Reads the archive's ``images.txt`` (``image_id path``) and ``image_class_labels.txt``
    (``image_id class_id``); its ``train_test_split.txt`` (the classification split) is ignored.
    Label = class id − 1, so train labels are 0..99 and test labels 100..199 (not re-indexed, as
    in the papers' code). Items are sorted by path (class folder, then file name), the order of
    the ``ImageFolder`` that the papers' code uses; ``images.txt`` lists a class's images in
    another order. Files not listed in ``images.txt`` (e.g. macOS ``._*``) are never read.

    Hierarchy: none. CUB has no official class hierarchy, so the dataset stays flat
    (``hierarchy_levels == ("class",)``; ``labels="hierarchy"`` yields one-level labels).
    """

    SPLITS = ("train", "test")
    NUM_CLASSES = 200
    LAYOUT = (
        "  <root>/CUB_200_2011/images.txt  ('<image_id> <NNN.Class_name>/<image>.jpg' per line)\n"
        "  <root>/CUB_200_2011/image_class_labels.txt  ('<image_id> <class_id>', ids 1..200)\n"
        "  <root>/CUB_200_2011/images/<NNN.Class_name>/<image>.jpg\n"
        "  (200 class folders, 001.Black_footed_Albatross ... 200.Common_Yellowthroat)"
    )
    _IMAGE_LINE = re.compile(r"(\d+)\s+(\S+)")
    _LABEL_LINE = re.compile(r"(\d+)\s+(\d+)")

    def _load_split(self) -> tuple[list[Path], list[int]]:
        folder = self.root / "CUB_200_2011"
        image_file, label_file = folder / "images.txt", folder / "image_class_labels.txt"
        images = self._read_ids(image_file, self._IMAGE_LINE, "<image_id> <path>")
        classes = self._read_ids(label_file, self._LABEL_LINE, "<image_id> <class_id>")
        image_folder = self._require(folder / "images")
        unlabelled = sorted(images.keys() - classes.keys())
        if unlabelled:
            raise ValueError(
                f"CUB200: {label_file} has no label for {len(unlabelled)} image ids of "
                f"{image_file} (e.g. {unlabelled[:5]})"
            )
        unlisted = sorted(classes.keys() - images.keys())
        if unlisted:
            raise ValueError(
                f"CUB200: {label_file} labels {len(unlisted)} image ids that {image_file} does "
                f"not list (e.g. {unlisted[:5]})"
            )
        half = self.NUM_CLASSES // 2
        rows = []
        for image_id, path in images.items():
            class_id = int(classes[image_id])
            if not 1 <= class_id <= self.NUM_CLASSES:
                raise ValueError(
                    f"CUB200: {label_file} gives image id {image_id} the class id {class_id}, "
                    f"expected 1..{self.NUM_CLASSES}"
                )
            if (class_id <= half) == (self.split == "train"):
                rows.append((path.split("/"), class_id - 1))
        rows.sort()
        return [image_folder.joinpath(*parts) for parts, _ in rows], [label for _, label in rows]

    def _read_ids(self, path: Path, line: re.Pattern[str], form: str) -> dict[int, str]:
        """``{image_id: value}`` of a file with one ``<image_id> <value>`` line per image."""
        table: dict[int, str] = {}
        for number, text in enumerate(self._require(path).read_text().splitlines(), start=1):
            if not text.strip():
                continue
            match = line.fullmatch(text.strip())
            if match is None:
                raise ValueError(f"CUB200: {path} line {number} is not {form!r}: {text!r}")
            image_id = int(match.group(1))
            if image_id in table:
                raise ValueError(f"CUB200: {path} line {number} repeats image id {image_id}")
            table[image_id] = match.group(2)
        return table
