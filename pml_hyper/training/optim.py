"""Optimizer parameter groups, the optimizer factory and the per-iteration lr schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch


def loss_param_groups(config: dict, terms: list[torch.nn.Module]) -> list[dict]:
    """Optimizer groups of the losses: each loss's ``param_groups`` helper (HIST, HIER) with
    the term's ``param_groups`` arguments, else all its parameters at ``lr · lr_scale``."""
    lr, groups = config["optimizer"]["lr"], []
    for term, loss in zip(config["loss"]["terms"], terms, strict=True):
        if hasattr(loss, "param_groups"):
            found = loss.param_groups(lr=lr, **term["param_groups"])
            groups += [{**g, "name": f"{type(loss).__name__}.{g['name']}"} for g in found]
        elif term["param_groups"]:
            raise ValueError(f"{type(loss).__name__} has no param_groups helper")
        else:
            params = [p for p in loss.parameters() if p.requires_grad]
            if params:
                name = f"{type(loss).__name__}.params"
                groups.append({"name": name, "params": params, "lr": lr * term["lr_scale"]})
    return groups


def model_param_groups(config: dict, model: torch.nn.Module) -> list[dict]:
    """``backbone`` and ``head`` groups (frozen parameters left out)."""
    opt = config["optimizer"]
    groups = []
    for name in ("backbone", "head"):
        params = [p for p in getattr(model, name).parameters() if p.requires_grad]
        if params:
            groups.append(
                {"name": name, "params": params, "lr": opt["lr"] * opt[f"{name}_lr_scale"]}
            )
    return groups


def make_optimizer(config: dict, groups: list[dict]) -> torch.optim.Optimizer:
    """``config["optimizer"]`` over ``groups``; the fused CUDA implementation when every
    parameter is on a CUDA device (one kernel for all parameters instead of one per tensor)."""
    opt = config["optimizer"]
    fused = all(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"lr": opt["lr"], "weight_decay": opt["weight_decay"], "fused": fused or None}
    if opt["name"] == "adam":
        return torch.optim.Adam(groups, eps=opt["eps"], **kwargs)
    if opt["name"] == "adamw":
        return torch.optim.AdamW(groups, eps=opt["eps"], **kwargs)
    if opt["name"] == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, **kwargs)
    raise ValueError(f"optimizer.name must be adam, adamw or sgd, got {opt['name']!r}")


def lr_lambdas(
    config: dict, iterations_per_epoch: int, group_names: list[str]
) -> list[Callable[[int], float]]:
    """Per-group lr factors by iteration (for ``LambdaLR``, stepped every iteration).

    Step decay multiplies by ``gamma`` every ``step_epochs`` epochs, cosine decays to
    ``min_lr_scale``; both count epochs from the end of warm-up (HIST), or from the first
    epoch with ``decay_counts_warmup`` (HIER). With ``warmup_freeze: lr`` the ``backbone``
    group has lr 0 during warm-up (HIER).
    """
    s = config["schedule"]
    warmup = s["warmup_epochs"]
    start = 0 if s["decay_counts_warmup"] else warmup
    decay_epochs = max(s["epochs"] - start, 1)
    if s["lr_decay"] not in ("step", "cosine", "constant"):
        raise ValueError(
            f"schedule.lr_decay must be step, cosine or constant, got {s['lr_decay']!r}"
        )

    def factor(iteration: int) -> float:
        epoch = iteration // iterations_per_epoch
        if s["lr_decay"] == "step":
            return s["gamma"] ** (max(epoch - start, 0) // s["step_epochs"])
        if s["lr_decay"] == "cosine":
            progress = max(iteration - start * iterations_per_epoch, 0)
            progress = min(progress / (decay_epochs * iterations_per_epoch), 1.0)
            return (
                s["min_lr_scale"] + (1 - s["min_lr_scale"]) * (1 + math.cos(math.pi * progress)) / 2
            )
        return 1.0

    def backbone_factor(iteration: int) -> float:
        return 0.0 if iteration // iterations_per_epoch < warmup else factor(iteration)

    frozen_by_lr = s["warmup_freeze"] == "lr"
    if s["warmup_freeze"] not in ("lr", "requires_grad"):
        raise ValueError(
            f"schedule.warmup_freeze must be lr or requires_grad, got {s['warmup_freeze']!r}"
        )
    return [backbone_factor if frozen_by_lr and n == "backbone" else factor for n in group_names]


def build_optimizers(
    config: dict, model: torch.nn.Module, loss_terms: list[torch.nn.Module], iterations: int
) -> tuple[dict, dict]:
    """The trainer's ``optimizers`` and per-iteration ``lr_schedulers`` dicts: one optimizer
    (with its ``LambdaLR``) for the model and one for the losses' parameters, when they have
    any; ``iterations`` is the number of iterations per epoch."""
    optimizers, schedulers = {}, {}
    for key, groups in (
        ("trunk", model_param_groups(config, model)),
        ("metric_loss", loss_param_groups(config, loss_terms)),
    ):
        if groups:
            optimizer = make_optimizer(config, groups)
            optimizers[f"{key}_optimizer"] = optimizer
            lambdas = lr_lambdas(config, iterations, [g["name"] for g in groups])
            schedulers[f"{key}_scheduler_by_iteration"] = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambdas
            )
    return optimizers, schedulers
