import re

import numpy as np
import pytest

from pml_hyper.data import SOP

HEADER = "image_id class_id super_class_id path"
# (class_id, super_class_id, path)
TRAIN = [
    (1, 1, "bicycle_final/111085122871_0.JPG"),
    (1, 1, "bicycle_final/111085122871_1.JPG"),
    (11318, 12, "toaster_final/1_0.JPG"),
]
TEST = [
    (11319, 1, "bicycle_final/2_0.JPG"),
    (22634, 12, "toaster_final/3_0.JPG"),
    (22634, 12, "toaster_final/3_1.JPG"),
]


def write_list(path, rows, header=HEADER):
    lines = [header] + [f"{i} {c} {s} {p}" for i, (c, s, p) in enumerate(rows, start=1)]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def root(tmp_path, write_image):
    folder = tmp_path / "Stanford_Online_Products"
    for split, rows in (("train", TRAIN), ("test", TEST)):
        for _, _, path in rows:
            write_image(folder / path)
        write_list(folder / f"Ebay_{split}.txt", rows)
    return tmp_path


@pytest.mark.parametrize("split, rows", [("train", TRAIN), ("test", TEST)])
def test_labels_are_class_id_minus_one(root, split, rows):
    dataset = SOP(root, split=split)
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [c - 1 for c, _, _ in rows]
    folder = root / "Stanford_Online_Products"
    assert dataset.paths == [folder / p for _, _, p in rows]
    assert all(dataset[i][0].size == (6, 4) for i in range(len(dataset)))


def test_missing_list_file_names_path_and_layout(root):
    list_file = root / "Stanford_Online_Products" / "Ebay_test.txt"
    list_file.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{list_file} not found")) as info:
        SOP(root, split="test")
    assert "Ebay_train.txt, Ebay_test.txt" in str(info.value)


def test_bad_header_is_an_error(root):
    write_list(root / "Stanford_Online_Products" / "Ebay_train.txt", TRAIN, header="id path")
    with pytest.raises(ValueError, match="header"):
        SOP(root)


def test_bad_line_is_an_error(root):
    list_file = root / "Stanford_Online_Products" / "Ebay_train.txt"
    list_file.write_text(list_file.read_text() + "4 x 1 a.JPG\n")
    with pytest.raises(ValueError, match="line 5"):
        SOP(root)


def test_hierarchy_is_class_then_super_class(root):
    dataset = SOP(root, split="test", labels="hierarchy")
    assert dataset.hierarchy_levels == ("class", "super_class")
    assert dataset.hierarchy.tolist() == [[c - 1, s - 1] for c, s, _ in TEST]
    assert dataset[0][1].tolist() == [11318, 0]
    assert SOP(root, split="test", labels="super_class")[2][1] == 11
    with pytest.raises(ValueError, match="hierarchy levels.*'gender'"):
        SOP(root, labels="gender")
