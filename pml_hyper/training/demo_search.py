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
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .builders import (
    build_loss_terms,
    build_model,
    build_model_on,
    build_tester,
    combine_losses,
    resolve_device,
)
from .demo import RECIPES, demo_config, demo_datasets
from .head_warmup import pooled_features, train_head
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
        "loss.terms.0.param_groups.lr_hgnn_factor": [5.0, 50.0, 500.0],
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


def fresh_head(
    config: dict,
    features: torch.Tensor,
    labels: np.ndarray,
    steps: int,
) -> tuple[torch.nn.Module, list[float]]:
    """A fresh head and loss of ``config``, seeded by ``config["seed"]``, trained on cached
    ``features`` for ``steps`` steps (:func:`~pml_hyper.training.head_warmup.train_head`);
    returns the head in eval mode and the loss per step."""
    seed_everything(config["seed"])
    head_config = {**config, "model": {**config["model"], "pretrained": False}}
    head = build_model(head_config).head.to(features.device)
    terms = [t.to(features.device) for t in build_loss_terms(config, int(labels.max()) + 1)]
    losses = train_head(config, head, combine_losses(config, terms), terms, features, labels, steps)
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
    backbone = build_model_on(base, device)
    batch_size = base["data"]["eval_batch_size"]
    train_x = pooled_features(backbone, train, batch_size)
    val_x = pooled_features(backbone, val, batch_size)
    del backbone
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
                    head, losses = fresh_head(config, train_x, train.labels, budget)
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
