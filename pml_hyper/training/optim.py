"""Optimizer parameter groups, the optimizer factory and the per-iteration lr schedules."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..utils.registry import lookup

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": lambda groups, opt, **kwargs: torch.optim.Adam(groups, eps=opt["eps"], **kwargs),
    "adamw": lambda groups, opt, **kwargs: torch.optim.AdamW(groups, eps=opt["eps"], **kwargs),
    "sgd": lambda groups, opt, **kwargs: torch.optim.SGD(groups, momentum=0.9, **kwargs),
}
"""Optimizer factories by ``optimizer.name``, called as ``(groups, optimizer config, lr=...,
weight_decay=..., fused=...)``."""


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
    factory = lookup(OPTIMIZERS, opt["name"], "optimizer.name")
    return factory(groups, opt, lr=opt["lr"], weight_decay=opt["weight_decay"], fused=fused or None)


def _step_decay(s: dict, per_epoch: int, start: int) -> Callable[[int], float]:
    """× ``gamma`` every ``step_epochs`` epochs after epoch ``start``."""
    return lambda iteration: (
        s["gamma"] ** (max(iteration // per_epoch - start, 0) // s["step_epochs"])
    )


def _cosine_decay(s: dict, per_epoch: int, start: int) -> Callable[[int], float]:
    """Half a cosine from 1 at epoch ``start`` to ``min_lr_scale`` at the last epoch."""
    total = max(s["epochs"] - start, 1) * per_epoch
    floor = s["min_lr_scale"]

    def factor(iteration: int) -> float:
        progress = min(max(iteration - start * per_epoch, 0) / total, 1.0)
        return floor + (1 - floor) * (1 + math.cos(math.pi * progress)) / 2

    return factor


def _constant(s: dict, per_epoch: int, start: int) -> Callable[[int], float]:
    return lambda iteration: 1.0


LR_DECAYS: dict[str, Callable[[dict, int, int], Callable[[int], float]]] = {
    "step": _step_decay,
    "cosine": _cosine_decay,
    "constant": _constant,
}
"""lr factor schedules by ``schedule.lr_decay``, called as ``(schedule config, iterations per
epoch, first decay epoch)``."""


def _zero_lr_during_warmup(
    factor: Callable[[int], float], per_epoch: int, warmup: int
) -> Callable[[int], float]:
    return lambda iteration: 0.0 if iteration // per_epoch < warmup else factor(iteration)


WARMUP_FREEZES: dict[str, Callable[..., Callable[[int], float]]] = {
    # the trainer freezes the backbone's parameters; its lr follows the schedule
    "requires_grad": lambda factor, per_epoch, warmup: factor,
    "lr": _zero_lr_during_warmup,
}
"""The ``backbone`` group's lr factor by ``schedule.warmup_freeze``, called as ``(factor,
iterations per epoch, warm-up epochs)``."""


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
    factor = lookup(LR_DECAYS, s["lr_decay"], "schedule.lr_decay")(s, iterations_per_epoch, start)
    freeze = lookup(WARMUP_FREEZES, s["warmup_freeze"], "schedule.warmup_freeze")
    backbone_factor = freeze(factor, iterations_per_epoch, warmup)
    return [backbone_factor if n == "backbone" else factor for n in group_names]


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
