import re
import shutil

import numpy as np
import pytest
from torchvision.datasets import ImageFolder

from pml_hyper.data import CUB200

# images.txt order, as in the archive: by class, but not by file name within a class. Class ids
# (the folders' NNN) 1..100 are train, 101..200 test.
IMAGES = [
    "001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg",
    "001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
    "001.Black_footed_Albatross/Black_Footed_Albatross_0002_55.jpg",
    "002.Laysan_Albatross/Laysan_Albatross_0002_1027.jpg",
    "100.Brown_Pelican/Brown_Pelican_0122_94022.jpg",
    "100.Brown_Pelican/Brown_Pelican_0062_94965.jpg",
    "101.White_Pelican/White_Pelican_0025_97604.jpg",
    "150.Sage_Thrasher/Sage_Thrasher_0090_155545.jpg",
    "150.Sage_Thrasher/Sage_Thrasher_0029_796453.jpg",
    "200.Common_Yellowthroat/Common_Yellowthroat_0055_190967.jpg",
]


@pytest.fixture
def root(tmp_path, write_cub):
    write_cub(tmp_path, IMAGES)
    return tmp_path


def in_split(path: str, split: str) -> bool:
    return (int(path[:3]) <= 100) == (split == "train")


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_class_id_minus_one_split_at_100_in_path_order(root, split):
    dataset = CUB200(root, split=split)
    listed = [path for path in IMAGES if in_split(path, split)]
    expected = sorted(listed)  # class folder, then file name
    assert expected != listed  # images.txt order is not the papers' order
    assert dataset.paths == [root / "CUB_200_2011" / "images" / path for path in expected]
    assert dataset.labels.dtype == np.int64
    assert dataset.labels.tolist() == [int(path[:3]) - 1 for path in expected]
    assert all(dataset[i][0].size == (6, 4) for i in range(len(dataset)))


def test_order_and_labels_are_those_of_image_folder(root):
    """The papers' code reads CUB with ImageFolder; class folder k holds class id k."""
    folder = ImageFolder(str(root / "CUB_200_2011" / "images"))
    train, test = CUB200(root, split="train"), CUB200(root, split="test")
    assert [str(p) for p in train.paths + test.paths] == [path for path, _ in folder.samples]
    idx_to_class_id = {i: int(name[:3]) for name, i in folder.class_to_idx.items()}
    labels = [idx_to_class_id[i] - 1 for _, i in folder.samples]
    assert [*train.labels, *test.labels] == labels


def test_files_not_in_images_txt_are_ignored(root, write_image):
    images = root / "CUB_200_2011" / "images" / "001.Black_footed_Albatross"
    write_image(images / "Black_Footed_Albatross_0001_796111.jpg")
    (images / "._Black_Footed_Albatross_0046_18.jpg").write_bytes(b"macOS metadata")
    assert len(CUB200(root)) == sum(in_split(path, "train") for path in IMAGES)


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt", "images"])
def test_missing_file_names_it_and_the_layout(root, name):
    path = root / "CUB_200_2011" / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(f"{path} not found")) as info:
        CUB200(root, split="test")
    assert "CUB_200_2011/image_class_labels.txt" in str(info.value)
    assert "CUB_200_2011/images/<NNN.Class_name>/<image>.jpg" in str(info.value)


@pytest.mark.parametrize(
    "name, line",
    [
        ("images.txt", "x 001.Bird_1/a.jpg"),
        ("images.txt", "11"),
        ("image_class_labels.txt", "11 one"),
        ("image_class_labels.txt", "11 1 2"),
    ],
)
def test_line_that_does_not_parse_names_file_and_line(root, name, line):
    path = root / "CUB_200_2011" / name
    path.write_text(path.read_text() + line + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} line 11 is not")):
        CUB200(root)


@pytest.mark.parametrize("name", ["images.txt", "image_class_labels.txt"])
def test_repeated_image_id_is_an_error(root, name):
    path = root / "CUB_200_2011" / name
    path.write_text(path.read_text() + path.read_text().splitlines()[2] + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} line 11 repeats image id 3")):
        CUB200(root)


def test_image_id_without_label_is_an_error(root):
    path = root / "CUB_200_2011" / "image_class_labels.txt"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:3] + lines[4:]) + "\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} has no label for 1 image ids")):
        CUB200(root)


def test_label_of_unlisted_image_is_an_error(root):
    path = root / "CUB_200_2011" / "image_class_labels.txt"
    path.write_text(path.read_text() + "99 1\n")
    with pytest.raises(ValueError, match=re.escape(f"{path} labels 1 image ids")) as info:
        CUB200(root)
    assert "[99]" in str(info.value)


def test_class_id_out_of_range_is_an_error(root):
    path = root / "CUB_200_2011" / "image_class_labels.txt"
    path.write_text(path.read_text().replace("10 200\n", "10 201\n"))
    with pytest.raises(ValueError, match=re.escape(f"{path} gives image id 10 the class id 201")):
        CUB200(root, split="test")
