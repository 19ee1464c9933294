"""Hyperparameter search for the demo recipes on validation classes only, on cached
frozen-backbone features (``python -m pml_hyper.training.demo_search``).

The pretrained backbone's pooled features of the demo's train and validation classes are
computed once; each candidate (a set of ``key=value`` overrides of a recipe YAML) then trains only
the head and the loss's parameters (proxies, HIST's hypergraph network) for a given number of
optimiser steps, batches drawn as in the demo, and is scored by Recall@K on the validation
classes. The test classes are never loaded. This ranks head and loss settings cheaply; it does not
measure backbone fine-tuning. The results file lists every candidate, the budget and the scores.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import UniqueClassSampler
from .builders import (
    build_loss_terms,
    build_model,
    build_model_on,
    build_tester,
    combine_losses,
    resolve_device,
)
from .demo import RECIPES, demo_config, demo_datasets
from .optim import loss_param_groups, make_optimizer
from .trainer import seed_everything

SEARCH_SPACE: dict[str, dict[str, list]] = {
    "PA": {"loss.terms.0.lr_scale": [100.0, 1000.0, 10000.0]},
    "PA+HIER": {
        "loss.terms.0.lr_scale": [100.0, 1000.0],
        "loss.terms.1.param_groups.proxy_lr_factor": [50.0, 500.0],
    },
    "HIST": {
        "loss.terms.0.kwargs.tau": [16.0, 32.0],
        "loss.terms.0.param_groups.lr_ds": [0.1, 1.0],
    },
    "Hyp": {"loss.terms.0.kwargs.temperature": [0.1, 0.2]},
    "Hyp+HIER": {"loss.terms.1.weight": [0.5, 1.0]},
}
"""Recipe → config key → values tried (the full grid of each recipe is searched)."""


def candidates(recipe: str) -> list[tuple[str, ...]]:
    """Every combination of :data:`SEARCH_SPACE` values of ``recipe`` as overrides."""
    space = SEARCH_SPACE[recipe]
    keys = list(space)
    return [
        tuple(f"{k}={v}" for k, v in zip(keys, values, strict=True))
        for values in itertools.product(*(space[k] for k in keys))
    ]


@torch.no_grad()
def pooled_features(config: dict, dataset, device: torch.device) -> torch.Tensor:
    """The pretrained backbone's pooled features of every item of ``dataset``."""
    model = build_model_on(config, device).eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=config["data"]["eval_batch_size"])
    return torch.cat([model.features(images.to(device)).cpu() for images, _ in loader])


def train_head(
    config: dict,
    features: torch.Tensor,
    labels: np.ndarray,
    steps: int,
    device: torch.device,
) -> tuple[torch.nn.Module, list[float]]:
    """Train a fresh head and the loss's parameters on cached features for ``steps`` optimiser
    steps (cosine decay to ``schedule.min_lr_scale``); returns the head and the loss per step."""
    seed_everything(config["seed"])
    head_config = {**config, "model": {**config["model"], "pretrained": False}}
    head = build_model(head_config).head.to(device).train()
    num_classes = int(labels.max()) + 1
    terms = [t.to(device) for t in build_loss_terms(config, num_classes)]
    loss_fn = combine_losses(config, terms)
    opt = config["optimizer"]
    groups = [
        {"name": "head", "params": list(head.parameters()), "lr": opt["lr"] * opt["head_lr_scale"]},
        *loss_param_groups(config, terms),
    ]
    optimizer = make_optimizer(config, groups)
    floor = config["schedule"]["min_lr_scale"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda i: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(i, steps) / steps)),
    )
    data = config["data"]
    sampler = UniqueClassSampler(
        labels,
        data["batch_size"],
        data["images_per_class"],
        seed=config["seed"],
        replacement=data["replacement"],
    )
    batch, epoch, losses = data["batch_size"], 0, []
    targets = torch.as_tensor(labels)
    while len(losses) < steps:
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order) - batch + 1, batch):
            index = torch.as_tensor(order[start : start + batch])
            loss = loss_fn(head(features[index].to(device)), targets[index].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config["gradients"]["max_norm"] is not None:
                params = [p for g in groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, config["gradients"]["max_norm"])
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            if len(losses) == steps:
                break
        epoch += 1
    return head.eval(), losses


@torch.no_grad()
def validation_recall(
    config: dict, embed: torch.nn.Module, features: torch.Tensor, labels: np.ndarray
) -> dict[str, float]:
    """Recall@K of ``embed(features)`` among the validation items (self-matches excluded), in
    ``embed``'s geometry."""
    tester = build_tester(config, embed)
    embeddings = embed(features)
    if tester.normalize_embeddings:
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    accuracy = tester.accuracy_calculator.get_accuracy(embeddings, torch.as_tensor(labels))
    return {k: float(v) for k, v in accuracy.items()}


def run_search(
    recipes: Sequence[str],
    steps: Sequence[int],
    seeds: int = 1,
    max_classes: int | None | str = "recipe",
    image_size: int | None = None,
    output: str | Path = "benchmarks/results/demo_search.json",
) -> dict:
    """Score every candidate of ``recipes`` for each step budget and seed on the validation
    classes; write and return the results (``best`` per recipe and step budget by mean R@1)."""
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 2)))
    device = resolve_device()
    base = demo_config(recipes[0], max_classes=max_classes, image_size=image_size)
    started = time.perf_counter()
    train, val_sets, _, split = demo_datasets(base, evaluate_on="val")
    val = val_sets["val"]
    train_x = pooled_features(base, train, device)
    val_x = pooled_features(base, val, device)
    feature_seconds = time.perf_counter() - started
    pretrained = validation_recall(base, torch.nn.Identity(), val_x, val.labels)
    data = base["data"]
    per_batch = data["batch_size"] // data["images_per_class"]
    steps_per_epoch = len(train) // data["batch_size"]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    report: dict = {}
    results: list[dict] = []

    def write(complete: bool) -> None:
        nonlocal report
        report = {
            "complete": complete,
            "what": (
                "Demo hyperparameter search on validation classes only (class-disjoint from the "
                "train and test classes), frozen pretrained backbone, cached pooled features; only "
                "the head and the loss parameters train. Test classes were not loaded."
            ),
            "search_space": {r: SEARCH_SPACE[r] for r in recipes},
            "budget": {
                "steps": list(steps),
                "demo_steps": steps_per_epoch * base["schedule"]["epochs"],
                "steps_per_epoch": steps_per_epoch,
                "batch_size": data["batch_size"],
                "images_per_class": data["images_per_class"],
                "classes_per_batch": per_batch,
                "image_size": data["image_size"],
                "backbone": base["model"]["backbone"],
                "seeds": seeds,
            },
            "classes": {
                "train": len(split.train),
                "val": len(split.val),
                "train_groups": dict(split.group_counts("train")),
                "val_groups": dict(split.group_counts("val")),
            },
            "pretrained_val": pretrained,
            "feature_seconds": feature_seconds,
            "total_seconds": time.perf_counter() - started,
            "machine": {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "device": str(device),
                "threads": torch.get_num_threads(),
            },
            "results": results,
            "best": _best(results),
        }
        output.write_text(json.dumps(report, indent=1) + "\n")

    for recipe in recipes:
        for overrides in candidates(recipe):
            for budget in steps:
                runs = []
                for seed in range(seeds):
                    config = demo_config(
                        recipe,
                        max_classes=max_classes,
                        image_size=image_size,
                        seed=seed,
                        overrides=overrides,
                    )
                    t0 = time.perf_counter()
                    head, losses = train_head(config, train_x, train.labels, budget, device)
                    metrics = validation_recall(config, head, val_x, val.labels)
                    runs.append(
                        {
                            "seed": seed,
                            "val": metrics,
                            "first_loss": losses[0],
                            "last_loss": float(np.mean(losses[-10:])),
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                r1 = [r["val"]["recall_at_1"] for r in runs]
                results.append(
                    {
                        "recipe": recipe,
                        "overrides": list(overrides),
                        "steps": budget,
                        "updates_per_class": budget * per_batch / len(split.train),
                        "val_recall_at_1_mean": float(np.mean(r1)),
                        "val_recall_at_1_std": float(np.std(r1, ddof=1)) if seeds > 1 else 0.0,
                        "runs": runs,
                    }
                )
                print(
                    f"{recipe:9s} steps {budget:4d} {' '.join(overrides):70s} "
                    f"val R@1 {100 * np.mean(r1):5.1f}",
                    flush=True,
                )
                write(complete=False)
    write(complete=True)
    print(f"wrote {output}")
    return report


def _best(results: list[dict]) -> dict:
    """The candidate of highest mean validation R@1 per recipe and step budget."""
    best = {}
    for recipe, budget in dict.fromkeys((r["recipe"], r["steps"]) for r in results):
        rows = [r for r in results if r["recipe"] == recipe and r["steps"] == budget]
        top = max(rows, key=lambda r: r["val_recall_at_1_mean"])
        best[f"{recipe} @ {budget} steps"] = {
            "overrides": top["overrides"],
            "val_recall_at_1_mean": top["val_recall_at_1_mean"],
        }
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--steps", nargs="+", type=int, default=[120, 600])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max-classes", type=int, default=None)
    parser.add_argument("--image-size", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/demo_search.json")
    args = parser.parse_args(argv)
    if args.seeds < 1 or any(s < 1 for s in args.steps):
        parser.error("--seeds and --steps must be positive")
    run_search(
        args.recipes,
        args.steps,
        args.seeds,
        "recipe" if args.max_classes is None else args.max_classes,
        args.image_size,
        args.output,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
