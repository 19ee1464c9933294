"""Head warm-up on cached backbone features (``schedule.head_warmup_steps``).

With the backbone frozen, a warm-up step changes only the embedding head and the loss's own
parameters (proxies, HIST's hypergraph network), so the backbone's pooled features of the
training images can be computed once and every warm-up step costs a head's forward and backward
pass. Proxy losses profit most: with C classes and P classes per batch, each proxy is in only
``steps · P / C`` batches of a short run, far too few for it to settle before the backbone
starts to move. The demo's search (:mod:`~pml_hyper.training.demo_search`) uses the same
functions to rank head and loss settings on validation classes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import tqdm

from ..data import UniqueClassSampler
from .config import ConfigError
from .optim import loss_param_groups, make_optimizer


@torch.no_grad()
def pooled_features(
    model: torch.nn.Module, dataset, batch_size: int, progress_bar: bool = False
) -> torch.Tensor:
    """``model.features`` (the pooled backbone features) of every item of ``dataset`` in
    order, with ``model`` in eval mode (restored afterwards): ``(N, num_features)`` on the
    model's device."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    batches = tqdm.tqdm(loader, desc="features", disable=not progress_bar, leave=False)
    features = torch.cat([model.features(images.to(device)) for images, _ in batches])
    model.train(was_training)
    return features


def train_head(
    config: dict,
    head: torch.nn.Module,
    loss_fn: torch.nn.Module,
    terms: Sequence[torch.nn.Module],
    features: torch.Tensor,
    labels: np.ndarray,
    steps: int,
) -> list[float]:
    """Train ``head`` and the parameters of the loss ``terms`` (combined as ``loss_fn``) on
    cached ``features`` ``(N, F)`` with ``labels`` ``(N,)`` for ``steps`` optimiser steps; returns
    the loss of each step.

    The optimiser is ``config["optimizer"]`` with the head at ``lr · head_lr_scale`` and the
    losses' parameter groups as in training, its learning rates decayed by a cosine to
    ``schedule.min_lr_scale`` over the ``steps``; batches are drawn as in training
    (``data.batch_size``, ``images_per_class``, ``replacement``, with :class:`UniqueClassSampler`
    seeded by ``config["seed"]``); ``gradients.max_norm`` clips as in training.
    """
    device = features.device
    opt = config["optimizer"]
    groups = [
        {"name": "head", "params": list(head.parameters()), "lr": opt["lr"] * opt["head_lr_scale"]},
        *loss_param_groups(config, list(terms)),
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
    max_norm = config["gradients"]["max_norm"]
    params = [p for g in groups for p in g["params"]]
    batch, epoch, losses = data["batch_size"], 0, []
    targets = torch.as_tensor(np.asarray(labels), device=device)
    head.train()
    while len(losses) < steps:
        sampler.set_epoch(epoch)
        order = list(sampler)
        for start in range(0, len(order) - batch + 1, batch):
            index = torch.as_tensor(order[start : start + batch], device=device)
            loss = loss_fn(head(features[index]), targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if max_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, max_norm)
            optimizer.step()
            scheduler.step()
            losses.append(loss.detach())  # read once at the end: no host sync per step
            if len(losses) == steps:
                break
        epoch += 1
    return torch.stack(losses).tolist()


def warm_up_head(runner) -> list[float]:
    """``schedule.head_warmup_steps`` steps of :func:`train_head` on the runner's model head
    and loss terms, on the cached features of one pass over its training set (before epoch 1;
    with augmentation on, one random view per image)."""
    config = runner.config
    model = runner.model
    if not callable(getattr(model, "features", None)) or not hasattr(model, "head"):
        raise ConfigError(
            "schedule.head_warmup_steps needs a model with features() and a head "
            f"(EmbeddingModel or TinyCNN), not {type(model).__name__}"
        )
    features = pooled_features(
        model, runner.train_set, config["data"]["eval_batch_size"], config["output"]["progress_bar"]
    )
    return train_head(
        config,
        model.head,
        runner.loss,
        runner.loss_terms,
        features,
        np.asarray(runner.train_set.labels),
        config["schedule"]["head_warmup_steps"],
    )
