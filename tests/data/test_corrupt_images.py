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


def test_check_data_lists_bad_files(tmp_path, write_cub, capsys):
    import yaml

    from pml_hyper.cli import main

    paths = ["001.A/a1.jpg", "001.A/a2.jpg", "002.B/b1.jpg", "101.C/c1.jpg", "102.D/d1.jpg"]
    folder = write_cub(tmp_path, paths)
    (folder / "images" / "002.B" / "b1.jpg").write_bytes(b"junk")
    config = {
        "name": "check",
        "data": {"dataset": "cub200", "image_size": 16, "num_workers": 0},
        "model": {"backbone": "tiny_cnn", "pretrained": False, "embedding_size": 8},
    }
    config_file = tmp_path / "c.yaml"
    config_file.write_text(yaml.safe_dump(config))
    assert main(["check-data", str(config_file), "--data-root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "b1.jpg" in out and "a1.jpg" not in out and "1 bad image(s) in total" in out
