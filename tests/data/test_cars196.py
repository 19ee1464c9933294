import re

import numpy as np
import pytest
from scipy.io import savemat

from pml_hyper.data import Cars196

# (image, class id 1..196, mode); classes 1..98 are train, 99..196 test.
ANNOTATIONS = [
    ("car_ims/000001.jpg", 1, "RGB"),
    ("car_ims/000002.jpg", 99, "L"),
    ("car_ims/000003.jpg", 98, "CMYK"),
    ("car_ims/000004.jpg", 196, "RGB"),
    ("car_ims/000005.jpg", 5, "RGB"),
]


def write_annotations(path, rows, names=("relative_im_path", "class")):
    fields = [*names, "bbox_x1", "test"]
    table = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (image, class_id, _) in enumerate(rows):
        table[0, i] = (image, np.array([[class_id]], dtype=np.uint8), np.array([[1]]), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": table, "class_names": np.array(["a car"], dtype=object)})


@pytest.fixture
def root(tmp_path, write_image):
    folder = tmp_path / "cars196"
    write_annotations(folder / "cars_annos.mat", ANNOTATIONS)
    for image, _, mode in ANNOTATIONS:
        write_image(folder / image, mode)
    return tmp_path


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_class_minus_one_split_at_98(root, split):
    dataset = Cars196(root, split=split)
    rows = [r for r in ANNOTATIONS if (r[1] <= 98) == (split == "train")]
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [class_id - 1 for _, class_id, _ in rows]
    assert [p.relative_to(root / "cars196").as_posix() for p in dataset.paths] == [
        image for image, _, _ in rows
    ]


def test_grey_and_cmyk_become_rgb(root):
    for split in ("train", "test"):
        dataset = Cars196(root, split=split)
        assert all(dataset[i][0].mode == "RGB" for i in range(len(dataset)))


def test_single_annotation(tmp_path, write_image):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", ANNOTATIONS[:1])
    write_image(tmp_path / "cars196" / ANNOTATIONS[0][0])
    assert Cars196(tmp_path).labels.tolist() == [0]


def test_missing_mat_file_names_path_and_layout(tmp_path):
    (tmp_path / "cars196").mkdir()
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "cars196"))) as info:
        Cars196(tmp_path)
    assert "cars_annos.mat" in str(info.value) and "car_ims" in str(info.value)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Cars196(tmp_path / "nowhere")


def test_wrong_fields_are_an_error(tmp_path):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", ANNOTATIONS, ("fname", "label"))
    with pytest.raises(ValueError, match="relative_im_path"):
        Cars196(tmp_path)


def test_class_out_of_range_is_an_error(tmp_path):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", [("car_ims/1.jpg", 197, "RGB")])
    with pytest.raises(ValueError, match="expected 1..196"):
        Cars196(tmp_path)


def test_missing_image_names_it(root):
    dataset = Cars196(root, split="test")
    dataset.paths[1].unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(dataset.paths[1]))):
        dataset[1]
