"""Section ``training``: images/s of one training step, reference vs ours vs backbone only."""

from __future__ import annotations

import copy
import inspect
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from pml_hyper.training.builders import build_loss_terms, build_model, combine_losses
from pml_hyper.training.config import load_config
from pml_hyper.training.optim import build_optimizers
from pml_hyper.training.trainer import MetricLossTrainer

from ..reference.hier_reference import HIERReference
from ..reference.hist_reference import HISTReference
from .measure import count_flops, floor, timed_with_memory, with_floor

PAPER_DIR = Path(__file__).resolve().parents[2] / "paper"
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
ADAM_BYTES_PER_PARAM = 10 * 4
"""fp32 bytes per trainable parameter and step, at least: read in the forward and the backward,
gradient written, then Adam reads parameter, gradient and two moments and writes three."""


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
