"""A truncated or junk image names the file and the dataset."""

import io

import pytest
from PIL import Image

from pml_hyper.data.base_image_dataset import BaseImageDataset


class _Folder(BaseImageDataset):
    """Just enough of a dataset to read images."""

    def __init__(self, root):
        self.root = root


@pytest.mark.parametrize("kind", ["truncated", "junk"])
def test_corrupt_image_error_names_file_and_dataset(tmp_path, kind):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buffer, format="JPEG")
    data = buffer.getvalue()
    path = tmp_path / "bad.jpg"
    path.write_bytes(data[: len(data) // 2] if kind == "truncated" else b"not an image" * 10)
    with pytest.raises(ValueError, match=r"_Folder: cannot read image .*bad\.jpg"):
        _Folder(tmp_path)._read_image(path)
