"""Tiny synthetic configs for the training tests (CPU, seconds per run)."""

import copy

import pytest

from pml_hyper.training.demo import demo_config

_DEMO_HYP = demo_config("Hyp")
SYNTHETIC = {"num_classes": 6, "images_per_class": 8, "image_size": 16}

RECIPES = {
    "hist": {
        "model": {"head": "hist"},
        "loss": {
            "terms": [
                {
                    "type": "HISTLoss",
                    "kwargs": {"hidden_size": 16, "alpha": 1.1},
                    "param_groups": {"lr_ds": 0.01, "lr_hgnn_factor": 5},
                }
            ]
        },
        "optimizer": {"name": "adam", "lr": 1.0e-3},
        "schedule": {"warmup_epochs": 1, "lr_decay": "step", "step_epochs": 1},
    },
    "pa_hier": {
        "model": {"head": "hier"},
        "data": {"sampler": "unique_class"},
        "loss": {
            "terms": [
                {"type": "ProxyAnchorLoss", "lr_scale": 100.0},
                {
                    "type": "HIERLoss",
                    "weight": 0.5,
                    "kwargs": {"num_proxies": 8, "topk": 3, "triplets_per_anchor": 5},
                    "param_groups": {"proxy_lr_factor": 50.0},
                },
            ]
        },
        "optimizer": {"name": "adamw", "lr": 1.0e-3},
        "schedule": {"warmup_epochs": 1, "warmup_freeze": "lr", "decay_counts_warmup": True},
        "gradients": {"clamp": 10.0},
    },
    "hyp": {  # the demo's head, loss and gradient clip
        "model": {"head": _DEMO_HYP["model"]["head"]},
        "loss": _DEMO_HYP["loss"],
        "gradients": _DEMO_HYP["gradients"],
        "data": {"sampler": "unique_class"},
        "optimizer": {"name": "adamw", "lr": 1.0e-3},
        "schedule": {"lr_decay": "cosine"},
    },
}


def recipe_config(recipe: str, out_dir, epochs: int = 3) -> dict:
    """A raw config (before defaults) of ``recipe`` on synthetic data with the tiny CNN."""
    raw = {
        "name": f"smoke_{recipe}",
        "seed": 0,
        "data": {
            "dataset": "synthetic",
            "synthetic": dict(SYNTHETIC),
            "batch_size": 12,
            "num_workers": 0,
            "eval_batch_size": 48,
        },
        "model": {"backbone": "tiny_cnn", "pretrained": False, "embedding_size": 16},
        "schedule": {"epochs": epochs},
        "eval": {"k_values": [1, 2, 4]},
        "output": {
            "dir": str(out_dir / "{name}"),
            "progress_bar": False,
            "plots": False,
            "disk_plot": False,
        },
    }
    for section, values in copy.deepcopy(RECIPES[recipe]).items():
        raw.setdefault(section, {}).update(values)
    return raw


@pytest.fixture
def make_config(tmp_path):
    return lambda recipe, **kwargs: recipe_config(recipe, tmp_path, **kwargs)
