"""The behaviour every dataset inherits from BaseImageDataset, on a tiny subclass."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pml_hyper.data import BaseImageDataset

WHITE, RED, BLUE = (255, 255, 255), (255, 0, 0), (0, 0, 255)


class Listed(BaseImageDataset):
    """``<root>/list.txt``: one ``<file> <label> <split>`` line per image in ``<root>/images``."""

    LAYOUT = "  <root>/list.txt ('<file> <label> <split>' per line)\n  <root>/images/<file>"

    def _load_split(self) -> tuple[list[Path], list[int]]:
        lines = self._require(self.root / "list.txt").read_text().splitlines()
        rows = [line.split() for line in lines if line.split()[2] == self.split]
        return [self.root / "images" / name for name, _, _ in rows], [int(y) for _, y, _ in rows]


class Mismatched(Listed):
    """Returns one label fewer than images."""

    def _load_split(self) -> tuple[list[Path], list[int]]:
        paths, labels = super()._load_split()
        return paths, labels[:-1]


def write_listed(root: Path, images: dict[str, Image.Image], rows: list[str]) -> Path:
    """Save ``images`` (file name → image) under ``<root>/images`` and ``rows`` as list.txt."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for name, image in images.items():
        image.save(root / "images" / name)
    (root / "list.txt").write_text("".join(row + "\n" for row in rows))
    return root


@pytest.fixture
def root(tmp_path):
    images = {f"{i}.png": Image.new("RGB", (6, 4), (10 * i, 0, 0)) for i in range(4)}
    rows = ["0.png 3 train", "1.png 5 train", "2.png 3 train", "3.png 7 test"]
    return write_listed(tmp_path, images, rows)


def test_items_are_rgb_images_and_int_labels_in_order(root):
    dataset = Listed(root)
    assert len(dataset) == 3 and dataset.paths == [root / "images" / f"{i}.png" for i in range(3)]
    assert dataset.labels.dtype == np.int64 and dataset.labels.tolist() == [3, 5, 3]
    for i in range(3):
        image, label = dataset[i]
        assert image.mode == "RGB" and image.getpixel((0, 0)) == (10 * i, 0, 0)
        assert type(label) is int and label == dataset.labels[i]


def test_transform_is_applied(root):
    dataset = Listed(root, split="test", transform=lambda im: torch.zeros(3, im.height, im.width))
    image, label = dataset[0]
    assert image.shape == (3, 4, 6) and label == 7


def row(mode: str, pixels: list, transparency: int | tuple | None = None) -> Image.Image:
    """A 1-row image of ``pixels``; mode ``P`` has the palette 0 = red, 1 = blue.

    ``transparency``: the transparent palette index or colour key, saved in the PNG's tRNS chunk.
    """
    image = Image.new(mode, (len(pixels), 1))
    if mode == "P":
        image.putpalette([*RED, *BLUE])
    image.putdata(pixels)
    if transparency is not None:
        image.info["transparency"] = transparency
    return image


GREY = (127, 127, 127)  # half-transparent black on white
CASES = [  # (file name, image, RGB pixels read back)
    ("grey.png", row("L", [0, 90, 255]), [(0, 0, 0), (90, 90, 90), WHITE]),
    ("grey.jpg", Image.new("L", (2, 1), 90), [(90, 90, 90)] * 2),
    ("cmyk.jpg", Image.new("CMYK", (2, 1), (0, 255, 255, 0)), [RED] * 2),
    ("palette.png", row("P", [0, 1]), [RED, BLUE]),
    ("palette_transparent.png", row("P", [0, 1, 0], transparency=1), [RED, WHITE, RED]),
    ("rgba.png", row("RGBA", [(*RED, 255), (*BLUE, 0), (0, 0, 0, 128)]), [RED, WHITE, GREY]),
    ("grey_alpha.png", row("LA", [(90, 255), (0, 0), (0, 128)]), [(90,) * 3, WHITE, GREY]),
    ("rgb_colour_key.png", row("RGB", [BLUE, RED], transparency=BLUE), [WHITE, RED]),
]


@pytest.mark.parametrize("name, image, expected", CASES, ids=[case[0] for case in CASES])
def test_images_become_rgb_with_transparency_on_white(tmp_path, name, image, expected):
    write_listed(tmp_path, {name: image}, [f"{name} 0 train"])
    with Image.open(tmp_path / "images" / name) as saved:
        assert saved.mode == image.mode
    read = Listed(tmp_path)[0][0]
    assert read.mode == "RGB" and read.size == image.size
    pixels = np.asarray(read, dtype=int)[0]
    np.testing.assert_allclose(pixels, np.array(expected), atol=3 if name.endswith("jpg") else 1)


def test_missing_root_names_it_and_the_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(f"root {missing} does not exist")) as e:
        Listed(missing)
    assert Listed.LAYOUT in str(e.value)


def test_missing_index_file_names_it_and_the_layout(root):
    (root / "list.txt").unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{root / 'list.txt'} not found")) as e:
        Listed(root)
    assert Listed.LAYOUT in str(e.value)


def test_missing_image_names_it_and_the_layout(root):
    dataset = Listed(root)
    dataset.paths[1].unlink()
    dataset[0]
    with pytest.raises(FileNotFoundError, match=re.escape(f"{dataset.paths[1]} not found")) as e:
        dataset[1]
    assert Listed.LAYOUT in str(e.value)


def test_root_is_user_expanded(root, monkeypatch):
    monkeypatch.setenv("HOME", str(root.parent))
    assert Listed(f"~/{root.name}").root == root


def test_bad_split_lists_the_splits(root):
    with pytest.raises(ValueError, match=re.escape("split must be one of ('train', 'test'), got")):
        Listed(root, split="val")


def test_empty_split_is_an_error(root):
    write_listed(root, {}, ["0.png 3 train"])
    with pytest.raises(RuntimeError, match="the 'test' split .* holds no image") as e:
        Listed(root, split="test")
    assert Listed.LAYOUT in str(e.value)


def test_path_label_count_mismatch_is_an_error(root):
    with pytest.raises(RuntimeError, match="3 images but 2 labels"):
        Mismatched(root)


def test_repr(root):
    assert repr(Listed(root)) == f"Listed(root={str(root)!r}, split='train', images=3, classes=2)"
