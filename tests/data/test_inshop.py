import re

import pytest

from pml_hyper.data import InShop

HEADER = "image_name item_id evaluation_status"
# (image name, item id, status)
ROWS = [
    ("img/WOMEN/Dresses/id_00000005/01_1_front.jpg", "id_00000005", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_1_front.jpg", "id_00000001", "train"),
    ("img/WOMEN/Dresses/id_00000001/01_2_side.jpg", "id_00000001", "train"),
    ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "query"),
    ("img/MEN/Denim/id_00000002/01_1_front.jpg", "id_00000002", "query"),
    ("img/MEN/Denim/id_00000002/01_2_side.jpg", "id_00000002", "gallery"),
    ("img/MEN/Denim/id_00000003/01_1_front.jpg", "id_00000003", "gallery"),
    ("img/MEN/Denim/id_00000007/01_2_side.jpg", "id_00000007", "gallery"),
]


def write_partition(path, rows, count=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [str(len(rows) if count is None else count), HEADER]
    lines += [f"{name}   {item}   {status}" for name, item, status in rows]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def root(tmp_path, write_image):
    folder = tmp_path / "Inshop_Clothes"
    write_partition(folder / "Eval" / "list_eval_partition.txt", ROWS)
    for name, _, _ in ROWS:
        write_image(folder / "Img" / name)
    return tmp_path


def test_train_labels_from_sorted_item_ids(root):
    dataset = InShop(root, split="train")
    assert dataset.labels.tolist() == [1, 0, 0]  # id_00000001 -> 0, id_00000005 -> 1
    assert dataset.paths[0] == root / "Inshop_Clothes" / "Img" / ROWS[0][0]


def test_query_and_gallery_share_item_labels(root):
    query, gallery = InShop(root, split="query"), InShop(root, split="gallery")
    # test items over query ∪ gallery: id_00000002 -> 0, id_00000003 -> 1, id_00000007 -> 2
    assert query.labels.tolist() == [2, 0]
    assert gallery.labels.tolist() == [0, 1, 2]
    images = root / "Inshop_Clothes" / "Img"
    assert query.paths == [images / name for name, _, status in ROWS if status == "query"]
    for dataset in (query, gallery):
        assert all(dataset[i][0].size == (6, 4) for i in range(len(dataset)))


def test_missing_partition_names_path_and_layout(tmp_path):
    (tmp_path / "Inshop_Clothes").mkdir()
    partition = tmp_path / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{partition} not found")) as info:
        InShop(tmp_path, split="query")
    assert "Inshop_Clothes/Img/img/WOMEN" in str(info.value)


def test_count_mismatch_is_an_error(root):
    write_partition(root / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt", ROWS, 99)
    with pytest.raises(ValueError, match="announces 99 images, lists 8"):
        InShop(root)


def test_bad_status_is_an_error(root):
    rows = [*ROWS, ("img/x.jpg", "id_00000009", "val")]
    write_partition(root / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt", rows)
    with pytest.raises(ValueError, match="line 11"):
        InShop(root)


def test_bad_split_lists_the_splits(root):
    with pytest.raises(ValueError, match=re.escape("('train', 'query', 'gallery')")):
        InShop(root, split="test")


def test_hierarchy_is_item_category_gender(root):
    query = InShop(root, split="query", labels="hierarchy")
    assert query.hierarchy_levels == ("item", "category", "gender")
    assert query.category_names == ["MEN/Denim", "WOMEN/Dresses"]
    assert query.gender_names == ["MEN", "WOMEN"]
    assert query.hierarchy[:, 1:].tolist() == [[0, 0], [0, 0]]
    assert (query.hierarchy[:, 0] == query.labels).all()
    train = InShop(root, split="train", labels="category")
    assert [train[i][1] for i in range(3)] == [1, 1, 1]
    assert train.level("gender").tolist() == [1, 1, 1]
    with pytest.raises(ValueError, match="no hierarchy level 'make'"):
        train.level("make")


def test_hierarchy_needs_the_path_layout(tmp_path, write_image):
    rows = [("flat.jpg", "id_00000001", "train")]
    write_partition(tmp_path / "Inshop_Clothes" / "Eval" / "list_eval_partition.txt", rows)
    write_image(tmp_path / "Inshop_Clothes" / "Img" / "flat.jpg")
    assert InShop(tmp_path).labels.tolist() == [0]
    with pytest.raises(ValueError, match="img/<gender>/<category>"):
        InShop(tmp_path, labels="hierarchy")
