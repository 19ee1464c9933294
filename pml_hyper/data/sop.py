"""Stanford Online Products in its official layout (docs/hist.md#data, docs/hier.md#data)."""

from __future__ import annotations

from pathlib import Path

from .base_image_dataset import BaseImageDataset


class SOP(BaseImageDataset):
    """Stanford Online Products with the official split files: ``Ebay_train.txt`` (classes
    1–11,318, 59,551 images) and ``Ebay_test.txt`` (classes 11,319–22,634, 60,502 images).

    Each file has a header line, then ``image_id class_id super_class_id path`` per image.
    Label = ``class_id`` − 1 (train 0..11317, test 11318..22633, not re-indexed); images are in
    file order and ``path`` is relative to ``Stanford_Online_Products/``.

    Hierarchy: ``("class", "super_class")``; super_class = ``super_class_id`` − 1 (12
    super-classes, e.g. bicycle, toaster, shared by both splits).
    """

    SPLITS = ("train", "test")
    LAYOUT = (
        "  <root>/Stanford_Online_Products/Ebay_train.txt, Ebay_test.txt\n"
        "      (header 'image_id class_id super_class_id path', then one line per image)\n"
        "  <root>/Stanford_Online_Products/<category>_final/<image>.JPG"
    )
    HEADER = ("image_id", "class_id", "super_class_id", "path")
    HIERARCHY_LEVELS = ("class", "super_class")

    def _load_split(self) -> tuple[list[Path], list[int]]:
        folder = self.root / "Stanford_Online_Products"
        list_file = self._require(folder / f"Ebay_{self.split}.txt")
        lines = list_file.read_text().splitlines()
        if not lines or tuple(lines[0].split()) != self.HEADER:
            raise ValueError(
                f"SOP: {list_file} must start with the header line {' '.join(self.HEADER)!r}"
            )
        paths, labels, super_classes = [], [], []
        for number, line in enumerate(lines[1:], start=2):
            if not line.strip():
                continue
            fields = line.split()
            if len(fields) != 4 or not (fields[1].isdigit() and fields[2].isdigit()):
                raise ValueError(
                    f"SOP: {list_file} line {number} is not 'image_id class_id super_class_id "
                    f"path': {line!r}"
                )
            paths.append(folder / fields[3])
            labels.append(int(fields[1]) - 1)
            super_classes.append(int(fields[2]) - 1)
        self._coarse = super_classes
        return paths, labels
