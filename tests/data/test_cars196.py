import re

import numpy as np
import pytest
from scipy.io import savemat

from pml_hyper.data import Cars196

# (image, class id 1..196); classes 1..98 are train, 99..196 test.
ANNOTATIONS = [
    ("car_ims/000001.jpg", 1),
    ("car_ims/000002.jpg", 99),
    ("car_ims/000003.jpg", 98),
    ("car_ims/000004.jpg", 196),
    ("car_ims/000005.jpg", 5),
]


# class_names: 196 names, "Make Model Year"; the make is the first word.
CLASS_NAMES = [f"{'BMW' if i % 2 else 'Audi'} Model{i} 2012" for i in range(1, 197)]


def write_annotations(path, rows, names=("relative_im_path", "class"), class_names=CLASS_NAMES):
    fields = [*names, "bbox_x1", "test"]
    table = np.zeros((1, len(rows)), dtype=[(f, "O") for f in fields])
    for i, (image, class_id) in enumerate(rows):
        table[0, i] = (image, np.array([[class_id]], dtype=np.uint8), np.array([[1]]), 0)
    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(path, {"annotations": table, "class_names": np.array(class_names, dtype=object)})


@pytest.fixture
def root(tmp_path, write_image):
    folder = tmp_path / "cars196"
    write_annotations(folder / "cars_annos.mat", ANNOTATIONS)
    for image, _ in ANNOTATIONS:
        write_image(folder / image)
    return tmp_path


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_class_minus_one_split_at_98(root, split):
    dataset = Cars196(root, split=split)
    rows = [r for r in ANNOTATIONS if (r[1] <= 98) == (split == "train")]
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [class_id - 1 for _, class_id in rows]
    assert dataset.paths == [root / "cars196" / image for image, _ in rows]
    assert all(dataset[i][0].size == (6, 4) for i in range(len(dataset)))


def test_single_annotation(tmp_path, write_image):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", ANNOTATIONS[:1])
    write_image(tmp_path / "cars196" / ANNOTATIONS[0][0])
    assert Cars196(tmp_path).labels.tolist() == [0]


def test_missing_mat_file_names_path_and_layout(tmp_path):
    (tmp_path / "cars196").mkdir()
    mat_file = tmp_path / "cars196" / "cars_annos.mat"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{mat_file} not found")) as info:
        Cars196(tmp_path)
    assert "<root>/cars196/car_ims/000001.jpg" in str(info.value)


def test_wrong_fields_are_an_error(tmp_path):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", ANNOTATIONS, ("fname", "label"))
    with pytest.raises(ValueError, match="relative_im_path"):
        Cars196(tmp_path)


def test_class_out_of_range_is_an_error(tmp_path):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", [("car_ims/1.jpg", 197)])
    with pytest.raises(ValueError, match="expected 1..196"):
        Cars196(tmp_path)


def test_hierarchy_is_model_then_make(root):
    dataset = Cars196(root, split="train", labels="hierarchy")
    assert dataset.hierarchy_levels == ("model", "make")
    assert dataset.make_names == ["Audi", "BMW"]
    # train classes 1, 98, 5: BMW (odd), Audi (even), BMW
    assert dataset.hierarchy.tolist() == [[0, 1], [97, 0], [4, 1]]
    assert dataset[1][1].tolist() == [97, 0]
    assert Cars196(root, split="test", labels="make").level("make").tolist() == [1, 0]


def test_hierarchy_needs_class_names(tmp_path, write_image):
    write_annotations(tmp_path / "cars196" / "cars_annos.mat", ANNOTATIONS[:1], class_names=["x"])
    write_image(tmp_path / "cars196" / ANNOTATIONS[0][0])
    assert Cars196(tmp_path).labels.tolist() == [0]
    with pytest.raises(ValueError, match="class_names.*196"):
        Cars196(tmp_path, labels="make")
