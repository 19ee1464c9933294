"""Helpers to write tiny dataset fixtures in the official on-disk formats."""

from pathlib import Path

import pytest
from PIL import Image

COLOURS = {"RGB": (200, 30, 40), "L": 90, "CMYK": (0, 255, 255, 0)}


@pytest.fixture
def write_image():
    """``write_image(path, mode="RGB")``: a 6×4 JPEG in ``mode`` (RGB, L = grey, CMYK)."""

    def write(path: Path, mode: str = "RGB") -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new(mode, (6, 4), COLOURS[mode]).save(path, format="JPEG")
        return path

    return write
