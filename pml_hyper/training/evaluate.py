"""Recall@K of a model on its config's evaluation split(s), and of a saved checkpoint."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import torch
from pytorch_metric_learning import testers

from .builders import build_datasets, build_model_on, build_tester, resolve_device
from .config import ConfigError, build_config, matches_prefix
from .trainer import (
    BEST,
    CheckpointError,
    load_checkpoint,
)

# keys that define a checkpoint's model and geometry: never overridden when evaluating it
CHECKPOINT_MODEL_KEYS = ("model",)


def evaluate_recall(
    tester: testers.GlobalEmbeddingSpaceTester,
    eval_sets: dict,
    splits_to_eval: list,
    model: torch.nn.Module,
    epoch: int = 0,
) -> dict[str, float]:
    """Recall@K of ``model`` on the first query split of ``splits_to_eval``, by increasing K
    (``tester`` from :func:`build_tester`)."""
    accuracies = tester.test(eval_sets, epoch, model, torch.nn.Identity(), splits_to_eval)
    query = accuracies[splits_to_eval[0][0]]
    names = tester.accuracy_calculator.recall_metric_names()
    return {name: float(query[f"{name}_level0"]) for name in names}


def evaluate_checkpoint(
    path: str | Path,
    data_root: str | Path | None = None,
    overrides: Iterable[str] = (),
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K of the model weights of a checkpoint (``last.pt``, ``best.pt``) on its config's
    evaluation split(s), with ``key=value`` config overrides. Only the weights are read: no
    optimizer, scheduler or RNG state, and no pretrained backbone weights."""
    device = resolve_device(device)
    config, state, model, eval_sets, splits_to_eval = load_checkpoint_model(
        path, data_root, overrides, device
    )
    tester = build_tester(config, model, device=device)
    return evaluate_recall(tester, eval_sets, splits_to_eval, model, state["epoch"])


def load_checkpoint_model(
    path: str | Path,
    data_root: str | Path | None = None,
    overrides: Iterable[str] = (),
    device: str | torch.device | None = None,
) -> tuple[dict, dict, torch.nn.Module, dict, list]:
    """``(config, state, model, eval_sets, splits_to_eval)`` of a checkpoint file or run folder
    (its ``best.pt``): the model with the checkpoint's weights (see :func:`evaluate_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).is_file():
            raise FileNotFoundError(f"run folder {path} has no {BEST}: pass a checkpoint file")
        path = path / BEST
    overrides = list(overrides)
    fixed = [
        o for o in overrides if matches_prefix(o.split("=", 1)[0].strip(), CHECKPOINT_MODEL_KEYS)
    ]
    if fixed:
        raise ConfigError(
            f"cannot override {', '.join(fixed)} when evaluating {path}: the checkpoint's "
            "model (backbone, head, geometry) is fixed by its config"
        )
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} is not a pml-hyper run checkpoint: it has no config")
    config = build_config(state["config"], overrides)
    device = resolve_device(device)
    _, eval_sets, splits_to_eval = build_datasets(config, data_root)
    weights_only = dict(config["model"], pretrained=False, checkpoint_path=None)
    model = build_model_on({**config, "model": weights_only}, device)
    model.load_state_dict(state["models"]["trunk"])
    return config, state, model, eval_sets, splits_to_eval
