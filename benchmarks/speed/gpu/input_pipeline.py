"""Section ``input_pipeline``: JPEG decoding + training transform on the CPU and on the device."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pml_hyper.data import BaseImageDataset, train_transform
from pml_hyper.data.transforms import INTERPOLATIONS
from pml_hyper.models.backbones import backbone_spec

from ..common import sync, time_calls

BACKBONE = "resnet50"
"""The input pipeline's transform (the HIST and HIER ResNet-50 recipes)."""


class JpegFolder(BaseImageDataset):
    """Every ``*.jpg`` under ``root``, label 0: decoding through the datasets' own image reader."""

    LAYOUT = "ROOT/*.jpg"

    def _load_split(self):
        paths = sorted(self.root.glob("*.jpg"))
        return paths, [0] * len(paths)


def write_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int) -> None:
    """``count`` photo-like JPEGs (smooth colour fields plus grain) of ``size`` (W, H), quality
    90: CUB's and SOP's images are about 500 × 375."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), dtype=np.float32)
        grain = rng.normal(0.0, 12.0, smooth.shape)
        pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:05d}.jpg", quality=90)


def device_decode_step(
    encoded: list[torch.Tensor], backbone: str, image_size: int, device: torch.device
):
    """One batch decoded by ``decode_jpeg`` on ``device`` (nvJPEG on CUDA), then
    ``backbone``'s training crop, flip and normalisation there (``transforms.v2`` on tensors)."""
    from torchvision.io import decode_jpeg
    from torchvision.transforms import v2

    spec = backbone_spec(backbone)
    crop = v2.RandomResizedCrop(
        image_size, scale=spec.train_scale, interpolation=INTERPOLATIONS[spec.interpolation]
    )
    flip = v2.RandomHorizontalFlip()
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1)

    def step() -> torch.Tensor:
        images = decode_jpeg(encoded, device=device)
        batch = torch.stack([flip(crop(image)) for image in images]).float().div_(255)
        return (batch - mean) / std

    return step


def cpu_decode_rate(
    dataset: torch.utils.data.Dataset, batch_size: int, workers: int, device: torch.device
) -> float:
    """Images/s of a ``DataLoader`` with ``workers`` processes, batches copied to ``device``;
    timed over two passes after one that starts the workers and warms the page cache."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=True,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
    passes = 3
    start = 0.0
    for i in range(passes):
        if i == 1:
            sync(device)
            start = time.perf_counter()
        for images, _ in loader:
            images.to(device, non_blocking=True)
    sync(device)
    return (passes - 1) * len(loader) * batch_size / (time.perf_counter() - start)


def input_pipeline_section(args, device: torch.device, training: list[dict]) -> dict:
    from torchvision.io import read_file

    count = 64 if args.tiny else 1024
    size = (64, 48) if args.tiny else (500, 375)
    image_size = 32 if args.tiny else 224
    batch_size = 8 if args.tiny else 64
    workers = os.cpu_count() or 1
    result = {
        "images": count,
        "jpeg_size": list(size),
        "image_size": image_size,
        "batch_size": batch_size,
        "transform": f"train_transform({BACKBONE!r}): RandomResizedCrop, flip, ToTensor, Normalize",
    }
    with tempfile.TemporaryDirectory() as folder:
        write_jpegs(Path(folder), count, size, args.seed)
        dataset = JpegFolder(folder, transform=train_transform(BACKBONE, image_size))
        result["cpu"] = {
            "workers": workers,
            "images_per_s": cpu_decode_rate(dataset, batch_size, workers, device),
        }
        encoded = [read_file(str(p)) for p in dataset.paths]
        batches = [encoded[i : i + batch_size] for i in range(0, count, batch_size)]
        steps = [device_decode_step(b, BACKBONE, image_size, device) for b in batches]
        measured = time_calls(lambda: [s() for s in steps], device, 1, 3)
        result["device_decode"] = {
            **measured,
            "decoder": "nvJPEG" if device.type == "cuda" else "libjpeg, one process",
            "images_per_s": count / measured["median_s"],
            "note": "file bytes read once beforehand; decode_jpeg on the device in batches, "
            "then crop, flip and normalisation there",
        }
    consumed = {r["recipe"]: r["variants"]["ours"]["images_per_s"] for r in training}
    result["training_images_per_s"] = consumed
    if consumed:
        fastest = max(consumed.values())
        result["cpu_covers_fastest_training_row"] = result["cpu"]["images_per_s"] >= fastest
    return result
