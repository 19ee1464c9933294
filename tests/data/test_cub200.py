import re

import numpy as np
import pytest
import torch

from pml_hyper.data import CUB200

# class id -> modes of its images; ids 1..100 are train, 101..200 test.
CLASSES = {1: ["RGB", "L"], 2: ["CMYK"], 100: ["RGB"] * 2, 101: ["L"], 150: ["RGB"], 200: ["RGB"]}


@pytest.fixture
def root(tmp_path, write_image):
    images = tmp_path / "CUB_200_2011" / "images"
    for class_id, modes in CLASSES.items():
        folder = images / f"{class_id:03d}.Bird_{class_id}"
        for i, mode in enumerate(modes):
            write_image(folder / f"Bird_{class_id}_{i:04d}.jpg", mode)
        (folder / f"._Bird_{class_id}_0000.jpg").write_bytes(b"macOS metadata")
        (folder / "notes.txt").write_text("not an image")
    return tmp_path


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_class_id_minus_one_split_at_100(root, split):
    dataset = CUB200(root, split=split)
    expected = [
        class_id - 1
        for class_id, modes in CLASSES.items()
        for _ in modes
        if (class_id <= 100) == (split == "train")
    ]
    assert dataset.labels.dtype == np.int64 and dataset.labels.ndim == 1
    assert dataset.labels.tolist() == expected
    assert len(dataset) == len(expected)
    assert [p.parent.name[:3] for p in dataset.paths] == [f"{y + 1:03d}" for y in expected]


def test_items_are_rgb_images_and_labels(root):
    dataset = CUB200(root, split="train")
    modes = [m for class_id, ms in CLASSES.items() if class_id <= 100 for m in ms]
    assert "L" in modes and "CMYK" in modes
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.mode == "RGB" and image.size == (6, 4)
        assert label == dataset.labels[i] and isinstance(label, int)


def test_transform_is_applied(root):
    dataset = CUB200(root, split="test", transform=lambda im: torch.zeros(3, im.height, im.width))
    image, label = dataset[0]
    assert image.shape == (3, 4, 6) and label == 100


def test_missing_root_names_path_and_layout(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))) as info:
        CUB200(missing)
    assert "CUB_200_2011/images/<NNN.Class_name>" in str(info.value)


def test_missing_images_folder_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "CUB_200_2011"))):
        CUB200(tmp_path)


def test_missing_image_file_names_it(root):
    dataset = CUB200(root, split="train")
    dataset.paths[0].unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(dataset.paths[0]))) as info:
        dataset[0]
    assert "Expected layout" in str(info.value)


def test_unexpected_class_folder_is_an_error(root):
    (root / "CUB_200_2011" / "images" / "birds").mkdir()
    with pytest.raises(ValueError, match="unexpected class folder"):
        CUB200(root)


def test_bad_split_is_an_error(root):
    with pytest.raises(ValueError, match="split must be one of"):
        CUB200(root, split="val")


def test_empty_split_is_an_error(tmp_path, write_image):
    write_image(tmp_path / "CUB_200_2011" / "images" / "001.Bird" / "a.jpg")
    with pytest.raises(RuntimeError, match="holds no image"):
        CUB200(tmp_path, split="test")
