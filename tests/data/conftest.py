"""Helpers to write tiny dataset fixtures in the official on-disk formats."""

from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def write_image():
    """``write_image(path)``: a 6×4 RGB JPEG at ``path``, parent folders created."""

    def write(path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (6, 4), (200, 30, 40)).save(path, format="JPEG")
        return path

    return write


@pytest.fixture
def write_cub(write_image):
    """``write_cub(root, paths)``: ``<root>/CUB_200_2011`` as the official archive has it.

    ``paths`` are ``"<NNN.Class_name>/<file>.jpg"`` in ``images.txt`` order; image ids are
    1, 2, … in that order and an image's class id is its folder's ``NNN``. Writes the images under
    ``images/``, ``images.txt`` (``<image_id> <path>``), ``image_class_labels.txt``
    (``<image_id> <class_id>``), ``classes.txt`` (``<class_id> <NNN.Class_name>``) and
    ``train_test_split.txt`` (the classification split, which CUB200 ignores). Returns the
    ``CUB_200_2011`` folder.
    """

    def write(root: Path, paths: list[str]) -> Path:
        folder = root / "CUB_200_2011"
        for path in paths:
            write_image(folder / "images" / path)
        class_folders = sorted({path.split("/")[0] for path in paths})
        tables = {
            "images.txt": [f"{i} {path}" for i, path in enumerate(paths, start=1)],
            "image_class_labels.txt": [f"{i} {int(p[:3])}" for i, p in enumerate(paths, start=1)],
            "classes.txt": [f"{int(name[:3])} {name}" for name in class_folders],
            "train_test_split.txt": [f"{i} {i % 2}" for i in range(1, len(paths) + 1)],
        }
        for file_name, lines in tables.items():
            (folder / file_name).write_text("".join(line + "\n" for line in lines))
        return folder

    return write
