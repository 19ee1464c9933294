"""The demo's budget study on validation classes: epochs against image size, with the backbone
fine-tuned (``python -m pml_hyper.training.demo_budget``).

Each budget (``EPOCHSxSIZE``) trains every recipe exactly as ``pml-hyper demo`` does (the
recipe YAMLs, the same sampler, batch, optimiser and backbone), but on the training classes
less the validation classes, and scores it by Recall@K on the validation classes; the test
classes are never loaded. The wall time of each run is recorded, so a budget can be chosen that
fits the demo's time limit. This complements :mod:`~pml_hyper.training.demo_search`, which
ranks head and loss settings on frozen features and cannot see fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import re
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from .demo import RECIPES, DemoRunner, demo_config, pretrained_baseline
from .results import machine

BUDGETS = ("10x96", "20x96", "30x64", "10x96v4")
"""Budgets tried by default (epochs × image size in px, optionally ``v`` augmented views per
class): the demo's budget, twice its epochs, 1.5× its wall time at 64 px, and 4 augmented views
per class at the demo's budget."""

NO_PICTURES = ("output.plots=false", "output.disk_plot=false")


def parse_budget(text: str) -> tuple[int, int, int | None]:
    """``"EPOCHSxSIZE"`` or ``"EPOCHSxSIZEvVIEWS"`` → ``(epochs, size, views)``. ``VIEWS`` > 2
    images per class per batch are augmented views (the training augmentation on, a class's
    two drawings drawn with replacement); ``None`` keeps the recipe's two unaugmented ones."""
    match = re.fullmatch(r"(\d+)x(\d+)(?:v(\d+))?", text)
    if (
        not match
        or int(match[1]) < 1
        or int(match[2]) < 8
        or (match[3] is not None and int(match[3]) < 2)
    ):
        raise ValueError(
            "a budget is EPOCHSxSIZE[vVIEWS] with epochs >= 1, size >= 8 and views >= 2, "
            f"got {text!r}"
        )
    return int(match[1]), int(match[2]), None if match[3] is None else int(match[3])


def view_overrides(views: int | None) -> tuple[str, ...]:
    """Config overrides for ``views`` augmented images per class per batch."""
    if views is None:
        return ()
    return (
        f"data.images_per_class={views}",
        "data.train_augmentation=true",
        "data.replacement=when_short",
    )


def run_budgets(
    recipes: Sequence[str],
    budgets: Sequence[str] = BUDGETS,
    seeds: int = 1,
    max_classes: int | None | str = "recipe",
    output: str | Path = "benchmarks/results/demo_search_budget.json",
    overrides: Sequence[str] = (),
) -> dict:
    """Train every recipe for each budget and seed on the training classes, score it on the
    validation classes, write and return the results (rewritten after every run).
    ``overrides`` (``key=value``) apply to every run."""
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    parsed = [parse_budget(b) for b in budgets]
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    report: dict = {
        "complete": False,
        "what": (
            "Demo budget study on validation classes only (class-disjoint from the train and "
            "test classes): each recipe trained as in pml-hyper demo, backbone fine-tuned, for "
            "each epochs x image-size budget. Test classes were not loaded."
        ),
        "budgets": list(budgets),
        "overrides": list(overrides),
        "seeds": seeds,
        "machine": machine() | {"threads": torch.get_num_threads()},
        "date": time.strftime("%Y-%m-%d"),
        "pretrained_val": {},
        "results": [],
    }

    def write() -> None:
        report["total_seconds"] = time.perf_counter() - started
        output.write_text(json.dumps(report, indent=1) + "\n")

    with tempfile.TemporaryDirectory() as scratch:
        for text, (epochs, size, views) in zip(budgets, parsed, strict=True):
            base = demo_config(
                recipes[0], max_classes=max_classes, image_size=size, overrides=tuple(overrides)
            )
            if str(size) not in report["pretrained_val"]:
                report["pretrained_val"][str(size)] = pretrained_baseline(base, "val")
            for recipe in recipes:
                runs = []
                for seed in range(seeds):
                    config = demo_config(
                        recipe,
                        scratch,
                        epochs,
                        max_classes,
                        size,
                        seed,
                        progress_bar=False,
                        overrides=(*NO_PICTURES, *view_overrides(views), *overrides),
                    )
                    t0 = time.perf_counter()
                    runner = DemoRunner(config, evaluate_on="val")
                    results = runner.run()
                    runs.append(
                        {
                            "seed": seed,
                            "val": results["last"],
                            "seconds": time.perf_counter() - t0,
                        }
                    )
                r1 = [r["val"]["recall_at_1"] for r in runs]
                report["results"].append(
                    {
                        "recipe": recipe,
                        "budget": text,
                        "epochs": epochs,
                        "image_size": size,
                        "images_per_class": config["data"]["images_per_class"],
                        "steps": epochs * runner.trainer.iterations_per_epoch,
                        "val_recall_at_1_mean": float(np.mean(r1)),
                        "val_recall_at_1_std": float(np.std(r1, ddof=1)) if seeds > 1 else 0.0,
                        "seconds_mean": float(np.mean([r["seconds"] for r in runs])),
                        "runs": runs,
                    }
                )
                print(
                    f"{recipe:9s} {text:7s} val R@1 {100 * np.mean(r1):5.1f} "
                    f"({report['results'][-1]['seconds_mean']:.0f} s)",
                    flush=True,
                )
                write()
    report["complete"] = True
    write()
    print(f"wrote {output}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--budgets", nargs="+", default=list(BUDGETS), help="EPOCHSxSIZE[vVIEWS]")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--max-classes", type=int, default=None)
    parser.add_argument("--output", default="benchmarks/results/demo_search_budget.json")
    parser.add_argument(
        "--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides for every run"
    )
    args = parser.parse_args(argv)
    try:
        for budget in args.budgets:
            parse_budget(budget)
        if args.seeds < 1:
            raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    except ValueError as error:
        parser.error(str(error))
    max_classes = "recipe" if args.max_classes is None else args.max_classes
    run_budgets(args.recipes, args.budgets, args.seeds, max_classes, args.output, args.set)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
