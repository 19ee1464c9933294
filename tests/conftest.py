"""Shared test fixtures: golden reference files, dtypes and devices."""

import os
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
GOLDEN_DIR = Path(os.environ.get("PML_HYPER_GOLDEN", REPO_ROOT.parent / "shared" / "golden"))

DTYPES = [torch.float32, torch.float64]
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
    ),
]


def load_golden(name: str) -> dict:
    """Load ``$PML_HYPER_GOLDEN/<name>`` or skip the calling test with the reason."""
    path = GOLDEN_DIR / name
    if not path.is_file():
        pytest.skip(
            f"golden file {path} not found; set PML_HYPER_GOLDEN to the folder holding {name}"
        )
    return torch.load(path, weights_only=True)


@pytest.fixture(scope="session")
def hier_golden() -> dict:
    return load_golden("hier_golden.pt")


@pytest.fixture(scope="session")
def hist_golden() -> dict:
    return load_golden("hist_golden.pt")


@pytest.fixture(params=DTYPES, ids=lambda d: str(d).removeprefix("torch."))
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    return torch.device(request.param)
