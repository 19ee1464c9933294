"""GPU performance suite: training throughput, input pipeline, loss cost and SOP-scale evaluation,
pml_hyper against the papers' formulations, and every row against the device's own limit.

    python benchmarks/speed/gpu_suite.py                       # on a GPU, the papers' sizes
    python benchmarks/speed/gpu_suite.py --device cpu --tiny   # end to end at tiny sizes
    python benchmarks/speed/gpu_suite.py --render benchmarks/results/gpu_<device>_<date>.json

One command runs everything and writes ``benchmarks/results/gpu_<device>_<date>.json``,
``benchmarks/RESULTS.md`` (GPU runs at full size; ``--results-md`` elsewhere) and prints the
tables. ``--render`` rebuilds the Markdown from a JSON file without running anything.

Sections (``--sections`` runs a subset; the ceilings are always measured):

1. ``training``: images/s of one training step at 224² on device-resident synthetic batches, for
   the paper recipes in ``benchmarks/paper/`` (HIST ResNet-50 B=32 with C=100 and 11,318; PA+HIER
   ResNet-50 B=180, M=512 with C=100 and 11,318; PA+HIER ViT-S/16 B=180, D=384), three ways:
   ``reference`` (fp32, NCHW, the papers' loss formulations from ``reference/``, a for-loop
   optimizer as in the PyTorch 1.x the papers used), ``ours`` (``MetricLossTrainer``'s step with
   bf16 autocast, channels_last and the fused optimizer) and ``backbone_only`` (the same trainer
   step with a trivial loss): loss overhead = ours / backbone_only − 1, speed-up = reference /
   ours.
2. ``input_pipeline``: decoded JPEG images/s of the training transform with every CPU core,
   against what the training rows consume, and batched JPEG decoding on the device (nvJPEG on a
   GPU) with the same crop there.
3. ``loss``: the loss alone, forward + backward, fp32 and bf16, ours vs reference
   (``loss_speed.py``).
4. ``evaluation``: Recall@1/10/100/1000 of 60,502 × 512 embeddings (SOP's test split), cosine and
   hyperbolic, the runner's evaluation path against a dense chunked N×N reference.
5. ``ceilings``: measured matmul rates (bf16, tf32, fp32) and copy bandwidth; every row gets its
   FLOPs (``torch.utils.flop_counter``) and minimal bytes, the floor max(FLOPs / matmul rate,
   bytes / bandwidth), and measured ÷ floor.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import inspect
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import loss_speed
import numpy as np
import torch
import torch.nn.functional as F
from common import RESULTS_DIR, machine_info, sync, time_calls, utc_now, versions, write_results
from knn_speed import make_clustered
from PIL import Image
from reference.hier_reference import HIERReference
from reference.hist_reference import HISTReference
from torch.utils.flop_counter import FlopCounterMode

from pml_hyper.data import BaseImageDataset, train_transform
from pml_hyper.data.transforms import INTERPOLATIONS
from pml_hyper.layers import ToPoincare
from pml_hyper.models.backbones import backbone_spec
from pml_hyper.training.config import load_config
from pml_hyper.training.runner import (
    build_loss_terms,
    build_model,
    build_optimizers,
    build_tester,
    combine_losses,
)
from pml_hyper.training.trainer import MetricLossTrainer

HERE = Path(__file__).resolve().parent
PAPER_DIR = HERE.parent / "paper"
RESULTS_MD = HERE.parent / "RESULTS.md"
SECTIONS = ("training", "input_pipeline", "loss", "evaluation")

BACKBONE = "resnet50"
"""The input pipeline's transform (the HIST and HIER ResNet-50 recipes)."""
TRAIN_CLASSES = {"cub200": 100, "cars196": 98, "sop": 11318, "inshop": 3997}
"""Training classes of each dataset (C of the class-based losses)."""
TRAINING_RECIPES = {
    "hist_cub_r50": 0.05,
    "hist_sop_r50": 0.15,
    "hier_cub_r50": 0.05,
    "hier_sop_r50": 0.15,
    "hier_cub_vit384": 0.05,
}
"""Recipe → the largest loss overhead allowed (5 % at CUB/Cars size, 15 % at SOP size)."""
TARGET_SPEEDUP = 2.0
TARGET_EVAL_S = {"cosine": 2.0, "hyperbolic": 3.0}
ADAM_BYTES_PER_PARAM = 10 * 4
"""fp32 bytes per trainable parameter and step, at least: read in the forward and the backward,
gradient written, then Adam reads parameter, gradient and two moments and writes three."""


# --------------------------------------------------------------------------------- timing
def timed_with_memory(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int):
    """:func:`time_calls` plus the peak device memory of the calls (GPU only)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    result = time_calls(fn, device, warmup, repeats)
    result["peak_mem_bytes"] = (
        torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    )
    return result


def count_flops(fn: Callable[[], object]) -> int:
    """Matrix-multiply and convolution FLOPs of one call of ``fn`` (forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


# --------------------------------------------------------------------------------- ceilings
def measure_ceilings(device: torch.device, tiny: bool) -> dict:
    """Matmul FLOP/s per precision and device-memory copy bandwidth (bytes read + written)."""
    n = 256 if tiny else 8192
    precisions = [("bf16", torch.bfloat16, "highest"), ("fp32", torch.float32, "highest")]
    if device.type == "cuda":
        precisions.append(("tf32", torch.float32, "high"))
    ceilings = {"matmul_size": n}
    saved = torch.get_float32_matmul_precision()
    try:
        for name, dtype, matmul_precision in precisions:
            torch.set_float32_matmul_precision(matmul_precision)
            a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
            seconds = time_calls(lambda a=a, b=b: a @ b, device, 3, 10)["median_s"]
            ceilings[f"{name}_matmul_flops_per_s"] = 2 * n**3 / seconds
            del a, b
    finally:
        torch.set_float32_matmul_precision(saved)
    src = torch.randn((2**24 if tiny else 2**31) // 4, device=device)  # 16 MiB or 2 GiB
    dst = torch.empty_like(src)
    seconds = time_calls(lambda: dst.copy_(src), device, 3, 10)["median_s"]
    ceilings["copy_bytes"] = 2 * src.numel() * src.element_size()
    ceilings["copy_bytes_per_s"] = ceilings["copy_bytes"] / seconds
    return ceilings


def floor(flops: float, nbytes: float, precision: str, ceilings: dict) -> dict:
    """The fastest this work can run on the device: max(FLOPs / matmul rate of ``precision``,
    bytes / copy bandwidth); tf32 falls back to fp32 where it was not measured."""
    rate = ceilings.get(f"{precision}_matmul_flops_per_s") or ceilings["fp32_matmul_flops_per_s"]
    compute_s, memory_s = flops / rate, nbytes / ceilings["copy_bytes_per_s"]
    return {
        "flops": flops,
        "bytes": nbytes,
        "floor_precision": precision,
        "floor_s": max(compute_s, memory_s),
        "bound": "compute" if compute_s >= memory_s else "memory",
    }


def with_floor(measured: dict, work: dict) -> dict:
    """``measured`` plus the floor of ``work`` and measured ÷ floor."""
    return {**measured, **work, "measured_over_floor": measured["median_s"] / work["floor_s"]}


# --------------------------------------------------------------------------------- training
class BackboneOnlyLoss(torch.nn.Module):
    """A trivial loss (mean square of the embeddings): the trainer step without a metric loss."""

    def forward(self, embeddings: torch.Tensor, labels=None, indices_tuple=None) -> torch.Tensor:
        return embeddings.square().mean()


def recipe_config(recipe: str, tiny: bool) -> dict:
    """The recipe's config; ``tiny`` swaps in TinyCNN at 32² and small batches and proxy sets."""
    config = load_config(PAPER_DIR / f"{recipe}.yaml", ["model.pretrained=false"])
    if tiny:
        hier = config["data"]["sampler"] == "unique_class"
        config["model"].update(backbone="tiny_cnn", embedding_size=32)
        config["data"].update(image_size=32, batch_size=24 if hier else 8)
        for term in config["loss"]["terms"]:
            if term["type"] == "HIERLoss":
                term["kwargs"]["num_proxies"] = 32
    return config


def num_classes_of(config: dict, tiny: bool) -> int:
    classes = TRAIN_CLASSES[config["data"]["dataset"]]
    return min(classes, 20) if tiny else classes


def synthetic_batch(config: dict, num_classes: int, device: torch.device, seed: int):
    """Random images (B, 3, S, S) and labels as the recipe's sampler draws them: B/m classes × m
    images for the unique-class sampler, uniform labels otherwise."""
    data = config["data"]
    g = torch.Generator().manual_seed(seed)
    if data["sampler"] == "unique_class":
        per = data["images_per_class"]
        labels = torch.randperm(num_classes, generator=g)[: data["batch_size"] // per]
        labels = labels.repeat_interleave(per)
    else:
        labels = torch.randint(0, num_classes, (data["batch_size"],), generator=g)
    size = data["image_size"]
    images = torch.randn(len(labels), 3, size, size, generator=g)
    return images.to(device), labels.to(device)


class ReferenceLoss(torch.nn.Module):
    """The recipe's weighted sum of loss terms with HISTLoss / HIERLoss replaced by their
    original formulations (same constructor arguments); PML losses stay as they are."""

    def __init__(self, config: dict, num_classes: int):
        super().__init__()
        dim = config["model"]["embedding_size"]
        terms = build_loss_terms(config, num_classes)
        originals = {
            "HISTLoss": (HISTReference, num_classes, dim),
            "HIERLoss": (HIERReference, dim),
        }
        for i, spec in enumerate(config["loss"]["terms"]):
            if spec["type"] in originals:
                cls, *args = originals[spec["type"]]
                accepted = inspect.signature(cls).parameters
                kwargs = {k: v for k, v in spec["kwargs"].items() if k in accepted}
                terms[i] = cls(*args, **kwargs)
        self.terms = torch.nn.ModuleList(terms)
        self.weights = [spec["weight"] for spec in config["loss"]["terms"]]

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return sum(w * t(embeddings, labels) for w, t in zip(self.weights, self.terms, strict=True))


def reference_step(config: dict, num_classes: int, device: torch.device, batch) -> Callable:
    """A training step written like the papers' code: fp32, NCHW, original loss formulations,
    ``foreach=False`` Adam/AdamW (the per-tensor loop of PyTorch 1.x), HIER's value clamp."""
    model = build_model(config).to(device).train()
    loss = ReferenceLoss(config, num_classes).to(device).train()
    params = [p for m in (model, loss) for p in m.parameters() if p.requires_grad]
    opt = config["optimizer"]
    optimizer_class = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[opt["name"]]
    optimizer = optimizer_class(
        params, lr=opt["lr"], weight_decay=opt["weight_decay"], eps=opt["eps"], foreach=False
    )
    clamp = config["gradients"]["clamp"]
    images, labels = batch

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss(model(images), labels).backward()
        if clamp is not None:
            torch.nn.utils.clip_grad_value_(params, clamp)
        optimizer.step()

    return step


def trainer_step(
    config: dict,
    loss_terms: list[torch.nn.Module],
    loss: torch.nn.Module,
    device: torch.device,
    batch,
) -> tuple[Callable, int]:
    """``MetricLossTrainer.forward_and_backward`` plus the per-iteration lr schedulers, with bf16
    autocast, channels_last and the runner's optimizers; returns the step and the number of
    trainable parameters."""
    model = build_model(config).to(device, memory_format=torch.channels_last)
    loss_terms = [t.to(device) for t in loss_terms]
    loss = loss.to(device)
    optimizers, schedulers = build_optimizers(config, model, loss_terms, iterations=1000)
    images, labels = batch
    trainer = MetricLossTrainer(
        models={"trunk": model, "embedder": torch.nn.Identity()},
        optimizers=optimizers,
        batch_size=len(labels),
        loss_funcs={"metric_loss": loss},
        dataset=torch.utils.data.TensorDataset(images, labels),
        data_device=device,
        lr_schedulers=schedulers,
        amp="bf16",
        channels_last=True,
        grad_clamp=config["gradients"]["clamp"],
        grad_norm_clip=config["gradients"]["max_norm"],
        progress_bar=False,
    )
    trainer.get_batch = lambda: (images, labels)
    trainer.set_to_train()

    def step() -> None:
        trainer.forward_and_backward()
        trainer.step_lr_schedulers(end_of_epoch=False)

    modules = [model, *loss_terms]
    n_params = sum(p.numel() for m in modules for p in m.parameters() if p.requires_grad)
    return step, n_params


def training_section(args, device: torch.device, ceilings: dict) -> list[dict]:
    rows, backbone_cache = [], {}
    for recipe, max_overhead in TRAINING_RECIPES.items():
        config = recipe_config(recipe, args.tiny)
        classes = num_classes_of(config, args.tiny)
        batch = synthetic_batch(config, classes, device, args.seed)
        batch_size, model = len(batch[1]), config["model"]
        image_bytes = batch[0].numel() * 4
        row = {
            "recipe": recipe,
            "backbone": model["backbone"],
            "batch": batch_size,
            "classes": classes,
            "embedding_size": model["embedding_size"],
            "image_size": config["data"]["image_size"],
            "losses": [t["type"] for t in config["loss"]["terms"]],
        }
        print(f"training {recipe}: ours ...", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        terms = build_loss_terms(config, classes)
        step, n_params = trainer_step(config, terms, combine_losses(config, terms), device, batch)
        measured = timed_with_memory(step, device, args.warmup, args.repeats)
        flops = count_flops(step)
        work = floor(flops, image_bytes + ADAM_BYTES_PER_PARAM * n_params, "bf16", ceilings)
        variants = {"ours": with_floor(measured, work)}
        del step

        key = (model["backbone"], batch_size, model["embedding_size"], model["head"])
        if key not in backbone_cache:
            print(f"training {recipe}: backbone only ...", file=sys.stderr, flush=True)
            trivial_config = copy.deepcopy(config)
            trivial_config["loss"]["terms"] = [{"param_groups": {}, "lr_scale": 1.0}]
            trivial = BackboneOnlyLoss()
            step, n_model = trainer_step(trivial_config, [trivial], trivial, device, batch)
            measured = timed_with_memory(step, device, args.warmup, args.repeats)
            bytes_bb = image_bytes + ADAM_BYTES_PER_PARAM * n_model
            backbone_cache[key] = with_floor(
                measured, floor(count_flops(step), bytes_bb, "bf16", ceilings)
            )
            del step
        variants["backbone_only"] = backbone_cache[key]

        print(f"training {recipe}: reference ...", file=sys.stderr, flush=True)
        torch.manual_seed(args.seed)
        step = reference_step(config, classes, device, batch)
        measured = timed_with_memory(step, device, args.warmup, args.repeats)
        variants["reference"] = with_floor(measured, floor(flops, work["bytes"], "tf32", ceilings))
        del step
        for variant in variants.values():
            variant["images_per_s"] = batch_size / variant["median_s"]
        row["variants"] = variants
        row["speedup"] = variants["reference"]["median_s"] / variants["ours"]["median_s"]
        row["loss_overhead"] = (
            variants["ours"]["median_s"] / variants["backbone_only"]["median_s"] - 1
        )
        row["targets"] = {
            "speedup_min": TARGET_SPEEDUP,
            "speedup_met": row["speedup"] >= TARGET_SPEEDUP,
            "loss_overhead_max": max_overhead,
            "loss_overhead_met": row["loss_overhead"] <= max_overhead,
        }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------- input pipeline
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


# --------------------------------------------------------------------------------- loss alone
def loss_section(args, device: torch.device, ceilings: dict) -> list[dict]:
    sizes = {
        "hist": ["tiny:8x20x32"] if args.tiny else ["SOP:32x11318x512", "SOP:180x11318x512"],
        "hier": ["tiny:24x32x32"] if args.tiny else ["B180-M512-D512:180x512x512"],
    }
    rows = []
    for name, loss_sizes in sizes.items():
        argv = ["--loss", name, "--device", str(device), "--sizes", *loss_sizes]
        argv += ["--precisions", "fp32", "bf16", "--repeats", str(args.repeats)]
        argv += ["--reference-repeats", str(max(args.repeats // 2, 2)), "--seed", str(args.seed)]
        print(f"loss {name} ...", file=sys.stderr, flush=True)
        result = loss_speed.benchmark(loss_speed.parse_args(argv))
        for case in result["cases"]:
            size = loss_speed.Size.parse(case["size"])
            work = loss_work(name, size, device, args.seed)
            for impl in ("ours", "reference"):
                measured = case[impl]
                if "median_s" in measured:
                    precision = "bf16" if case["precision"] == "bf16" else "fp32"
                    case[impl] = with_floor(
                        measured, floor(work["flops"], work["bytes"], precision, ceilings)
                    )
            rows.append({"loss": name, **case})
    return rows


def loss_work(name: str, size, device: torch.device, seed: int) -> dict:
    """FLOPs of ours' forward + backward and the bytes any implementation must move: inputs
    read, parameters read twice, their gradients written."""
    module, (embeddings, labels) = loss_speed.LOSSES[name].setup("ours", size, device, seed)
    x = embeddings.detach().requires_grad_()
    flops = count_flops(lambda: module(x, labels).backward())
    params = sum(p.numel() for p in module.parameters() if p.requires_grad)
    nbytes = embeddings.numel() * 4 * 2 + labels.numel() * 8 + params * 4 * 3
    return {"flops": flops, "bytes": nbytes}


# --------------------------------------------------------------------------------- evaluation
def dense_recall(
    x: torch.Tensor, labels: torch.Tensor, k_values, metric: str, chunk: int, c: float = 0.1
) -> dict[str, float]:
    """Recall@K from a dense similarity matrix, ``chunk`` query rows × all N at a time, as the
    papers' evaluation code does (HIST: cosine of L2-normalised embeddings, 10,001-row chunks;
    HIER: Poincaré distance, 5,000-row chunks); self-matches excluded by index. The Poincaré
    distance uses its closed form on a Gram matrix (cheaper than the official Möbius form, so
    the comparison flatters the reference)."""
    n, k_max = len(x), max(k_values)
    if metric == "cosine":
        x = x / torch.sqrt((x * x).sum(dim=1, keepdim=True) + 1e-12)
    sq = (x * x).sum(dim=1)
    hits = torch.zeros(len(k_values), dtype=torch.int64, device=x.device)
    for start in range(0, n, chunk):
        q = x[start : start + chunk]
        rows = torch.arange(len(q), device=x.device)
        gram = q @ x.T
        if metric == "cosine":
            sim = gram
        else:
            d2 = (sq[start : start + chunk, None] + sq[None] - 2 * gram).clamp_min_(0)
            denom = (1 - c * sq[start : start + chunk, None]) * (1 - c * sq[None])
            sim = -torch.acosh(1 + 2 * c * d2 / denom)
        sim[rows, start + rows] = -torch.inf
        neighbours = labels[sim.topk(min(k_max, n - 1), dim=1).indices]
        same = neighbours == labels[start : start + chunk, None]
        hits += torch.stack([same[:, :k].any(dim=1).sum() for k in k_values])
    return {f"recall_at_{k}": h / n for k, h in zip(k_values, hits.tolist(), strict=True)}


def evaluation_section(args, device: torch.device, ceilings: dict) -> list[dict]:
    n, dim = (3000, 32) if args.tiny else (60502, 512)
    features, labels = make_clustered(n, dim, args.seed)
    labels = labels.to(device)
    rows = []
    # the SOP recipes' testers; the papers' evaluation chunks (HIST 10,001 rows, HIER 5,000)
    cases = (("cosine", "hist_sop_r50", 10001), ("hyperbolic", "hier_sop_r50", 5000))
    for metric, recipe, chunk in cases:
        config = recipe_config(recipe, tiny=False)
        k_values = config["eval"]["k_values"]
        if metric == "cosine":
            x = features.to(device)
        else:
            head = config["model"]["head_kwargs"]
            ball = ToPoincare(c=head["c"], clip_r=head["clip_r"], riemannian=False)
            x = ball(features).to(device)
        calculator = build_tester(config, device=device).accuracy_calculator

        def ours(metric=metric, x=x, calculator=calculator) -> dict:
            embeddings = F.normalize(x, dim=1) if metric == "cosine" else x
            return {k: float(v) for k, v in calculator.get_accuracy(embeddings, labels).items()}

        def reference(metric=metric, x=x, chunk=chunk, k_values=k_values) -> dict:
            return dense_recall(x, labels, k_values, metric, chunk)

        print(f"evaluation {metric} ...", file=sys.stderr, flush=True)
        repeats = 2 if args.tiny else 3
        work = floor(2 * n * n * dim, n * dim * 4 + n * max(k_values) * 8, "fp32", ceilings)
        row = {"metric": metric, "N": n, "dim": dim, "k_values": k_values}
        for impl, fn in (("ours", ours), ("reference", reference)):
            recalls = fn()
            measured = timed_with_memory(fn, device, 0, repeats)
            row[impl] = {**with_floor(measured, work), "recalls": recalls}
        row["speedup"] = row["reference"]["median_s"] / row["ours"]["median_s"]
        row["max_abs_recall_diff"] = max(
            abs(row["ours"]["recalls"][k] - row["reference"]["recalls"][k])
            for k in row["reference"]["recalls"]
        )
        if device.type == "cuda" and not args.tiny:
            row["targets"] = {
                "seconds_max": TARGET_EVAL_S[metric],
                "met": row["ours"]["median_s"] <= TARGET_EVAL_S[metric],
            }
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


# --------------------------------------------------------------------------------- report
def _ms(seconds: float | None) -> str:
    return "—" if seconds is None else f"{1e3 * seconds:.1f}"


def _ratio(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}×"


def _met(flag: bool | None) -> str:
    return "—" if flag is None else ("yes" if flag else "**no**")


def _floor_cells(entry: dict) -> str:
    return (
        f"{entry['flops'] / 1e9:.4g} | {entry['bytes'] / 1e6:.4g} | {1e3 * entry['floor_s']:.3g} "
        f"({entry['floor_precision']}, {entry['bound']}) | {entry['measured_over_floor']:.1f}"
    )


def render_markdown(result: dict, source: str) -> str:
    """The tables of a suite result, with the device, versions, date and a short reading."""
    ceil = result["ceilings"]
    lines = [
        "# Performance results",
        "",
        f"Generated by `python benchmarks/speed/gpu_suite.py --render {source}`; do not edit by "
        "hand.",
        "",
        f"- device: {result['device_name']} ({result['device']}), {result['date']}"
        + (" — **tiny sizes, a smoke run, not a measurement**" if result["tiny"] else ""),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in result["versions"].items()),
        "- ceilings measured in the same run: "
        + ", ".join(
            f"{p} matmul {ceil[f'{p}_matmul_flops_per_s'] / 1e12:.1f} TFLOP/s"
            for p in ("bf16", "tf32", "fp32")
            if f"{p}_matmul_flops_per_s" in ceil
        )
        + f" ({ceil['matmul_size']}³), copy {ceil['copy_bytes_per_s'] / 1e9:.0f} GB/s "
        "(read + write)",
        "",
    ]
    training = result.get("training", [])
    if training:
        lines += [
            "## 1. Training step (images/s, synthetic device-resident batches)",
            "",
            "| recipe | backbone | B | C | reference fp32 | ours bf16 | backbone alone | "
            "speed-up | loss overhead | targets met |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in training:
            v, t = r["variants"], r["targets"]
            lines.append(
                f"| {r['recipe']} | {r['backbone']} | {r['batch']} | {r['classes']} | "
                f"{v['reference']['images_per_s']:.0f} | {v['ours']['images_per_s']:.0f} | "
                f"{v['backbone_only']['images_per_s']:.0f} | {_ratio(r['speedup'])} | "
                f"{100 * r['loss_overhead']:+.1f} % (≤ {100 * t['loss_overhead_max']:.0f} %) | "
                f"speed-up {_met(t['speedup_met'])}, overhead {_met(t['loss_overhead_met'])} |"
            )
        lines.append("")
    pipe = result.get("input_pipeline")
    if pipe:
        decode = pipe["device_decode"]
        lines += [
            "## 2. Input pipeline (decoded JPEG images/s)",
            "",
            f"{pipe['images']} JPEGs of {pipe['jpeg_size'][0]}×{pipe['jpeg_size'][1]} → "
            f"{pipe['image_size']}², batch {pipe['batch_size']}; {pipe['transform']}.",
            "",
            "| path | images/s |",
            "|---|---|",
            f"| CPU, {pipe['cpu']['workers']} DataLoader workers | "
            f"{pipe['cpu']['images_per_s']:.0f} |",
            f"| decode_jpeg + crop on the device ({decode['decoder']}) | "
            f"{decode['images_per_s']:.0f} |",
        ]
        lines += [
            f"| training consumes ({recipe}) | {ips:.0f} |"
            for recipe, ips in pipe["training_images_per_s"].items()
        ]
        lines.append("")
    losses = result.get("loss", [])
    if losses:
        lines += [
            "## 3. Loss alone (forward + backward, ms)",
            "",
            "| loss | size (B×C×D) | precision | reference | ours | speed-up | memory ratio |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in losses:
            ref = r["reference"]
            ref_ms = _ms(ref["median_s"]) if "median_s" in ref else ref.get("skipped", "failed")
            lines.append(
                f"| {r['loss']} | {r['size']} | {r['precision']} | {ref_ms} | "
                f"{_ms(r['ours'].get('median_s'))} | {_ratio(r.get('speedup'))} | "
                f"{_ratio(r.get('memory_ratio'))} |"
            )
        lines.append("")
    evaluation = result.get("evaluation", [])
    if evaluation:
        lines += [
            "## 4. Evaluation: Recall@1/10/100/1000 (s)",
            "",
            "| metric | N × D | reference (dense) | ours | speed-up | target | max recall diff |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in evaluation:
            target = r.get("targets")
            target_cell = (
                f"≤ {target['seconds_max']:.0f} s: {_met(target['met'])}" if target else "—"
            )
            lines.append(
                f"| {r['metric']} | {r['N']} × {r['dim']} | {r['reference']['median_s']:.3f} | "
                f"{r['ours']['median_s']:.3f} | {_ratio(r['speedup'])} | {target_cell} | "
                f"{r['max_abs_recall_diff']:.1e} |"
            )
        lines.append("")
    lines += [
        "## 5. The limit: measured ÷ floor",
        "",
        "Floor = max(FLOPs / matmul rate, bytes / copy bandwidth) with the rates measured above; "
        "FLOPs are the matrix products and convolutions of the step (`torch.utils.flop_counter`), "
        "bytes the least any implementation must move (training: the input batch and 40 bytes "
        "per trainable parameter for Adam; loss: inputs, parameters and their gradients; "
        "evaluation: the embeddings and the k-NN indices).",
        "",
        "| row | GFLOP | MB | floor ms (precision, bound) | measured ÷ floor |",
        "|---|---|---|---|---|",
    ]
    for r in training:
        for name, v in r["variants"].items():
            lines.append(f"| training {r['recipe']} {name} | {_floor_cells(v)} |")
    for r in losses:
        for impl in ("ours", "reference"):
            if "floor_s" in r[impl]:
                lines.append(
                    f"| loss {r['loss']} {r['size']} {r['precision']} {impl} | "
                    f"{_floor_cells(r[impl])} |"
                )
    for r in evaluation:
        for impl in ("ours", "reference"):
            lines.append(f"| evaluation {r['metric']} {impl} | {_floor_cells(r[impl])} |")
    lines += ["", "## Reading", "", *reading(result), ""]
    return "\n".join(lines)


def reading(result: dict) -> list[str]:
    """Where the time goes, in sentences computed from the numbers."""
    out = []
    for r in result.get("training", []):
        v = r["variants"]
        out.append(
            f"- {r['recipe']}: ours runs {r['speedup']:.2f}× the reference's throughput; the loss "
            f"adds {100 * r['loss_overhead']:+.1f} % to the backbone step; ours is "
            f"{v['ours']['measured_over_floor']:.1f}× its floor and the backbone alone "
            f"{v['backbone_only']['measured_over_floor']:.1f}×."
        )
    pipe = result.get("input_pipeline")
    if pipe and pipe["training_images_per_s"]:
        fastest = max(pipe["training_images_per_s"].items(), key=lambda kv: kv[1])
        covered = pipe["cpu_covers_fastest_training_row"]
        out.append(
            f"- Input: {pipe['cpu']['workers']} CPU workers decode "
            f"{pipe['cpu']['images_per_s']:.0f} images/s; the fastest training row "
            f"({fastest[0]}) consumes {fastest[1]:.0f}: data loading "
            + ("keeps up." if covered else "is the bottleneck there.")
        )
    for r in result.get("evaluation", []):
        out.append(
            f"- Evaluation {r['metric']}: {r['ours']['median_s']:.3f} s, "
            f"{r['ours']['measured_over_floor']:.1f}× the all-pairs GEMM floor, "
            f"{r['speedup']:.1f}× faster than the dense reference."
        )
    return out


# --------------------------------------------------------------------------------- main
def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device).lower().removeprefix("nvidia ")
    return "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


def run_suite(args) -> dict:
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    result = {
        "benchmark": "gpu_suite",
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU",
        "tiny": args.tiny,
        "date": utc_now(),
        "machine": machine_info(str(device)),
        "versions": versions(),
        "settings": {"warmup": args.warmup, "repeats": args.repeats, "seed": args.seed},
    }
    print("ceilings ...", file=sys.stderr, flush=True)
    result["ceilings"] = ceilings = measure_ceilings(device, args.tiny)
    training = training_section(args, device, ceilings) if "training" in args.sections else []
    result["training"] = training
    if "input_pipeline" in args.sections:
        result["input_pipeline"] = input_pipeline_section(args, device, training)
    if "loss" in args.sections:
        result["loss"] = loss_section(args, device, ceilings)
    if "evaluation" in args.sections:
        result["evaluation"] = evaluation_section(args, device, ceilings)
    return result


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run anywhere")
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before timing")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps (median)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="JSON path (default: results/)")
    parser.add_argument(
        "--results-md", type=Path, default=None, help="Markdown path (default: RESULTS.md on GPU)"
    )
    parser.add_argument("--render", type=Path, default=None, help="only render this JSON")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.render is not None:
        result, source = json.loads(args.render.read_text()), args.render
    else:
        result = run_suite(args)
        device = torch.device(args.device)
        date = datetime.date.today().isoformat()
        source = args.out or RESULTS_DIR / f"gpu_{device_slug(device)}_{date}.json"
        write_results(result, source)
        print(f"wrote {source}", file=sys.stderr)
    markdown = render_markdown(result, _relative(source))
    md_path = args.results_md
    full_gpu_run = result["device"].startswith("cuda") and not result["tiny"]
    if md_path is None and (args.render is not None or full_gpu_run):
        md_path = RESULTS_MD
    if md_path is not None:
        md_path.write_text(markdown + "\n")
        print(f"wrote {md_path}", file=sys.stderr)
    print(markdown)


def _relative(path: Path) -> str:
    path = Path(path).resolve()
    root = HERE.parent.parent
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


if __name__ == "__main__":
    main()
