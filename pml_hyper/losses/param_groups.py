"""Optimizer parameter groups shared by the losses' ``param_groups`` helpers."""

import torch


def with_remaining_params(
    module: torch.nn.Module, groups: list[dict], lr: float, weight_decay: float | None
) -> list[dict]:
    """Append a group ``"other"`` at ``lr`` for the parameters of ``module`` not in ``groups``
    (e.g. a learnable embedding regularizer) and set ``weight_decay`` on every group if given."""
    grouped = {id(p) for group in groups for p in group["params"]}
    others = [p for p in module.parameters() if id(p) not in grouped]
    if others:
        groups.append({"name": "other", "params": others, "lr": lr})
    if weight_decay is not None:
        for group in groups:
            group["weight_decay"] = weight_decay
    return groups
