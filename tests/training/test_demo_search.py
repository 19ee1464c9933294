"""The demo's search: every candidate loads through the config loader, and the cached-feature
training takes the asked number of steps and lowers the loss."""

import numpy as np
import pytest
import torch

from pml_hyper.training.demo import RECIPES, demo_config
from pml_hyper.training.demo_search import (
    SEARCH_SPACE,
    candidates,
    fresh_head,
    validation_recall,
)


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_candidate_loads_through_the_config_loader(recipe):
    grid = candidates(recipe)
    sizes = [len(v) for v in SEARCH_SPACE[recipe].values()]
    assert len(grid) == int(np.prod(sizes)) == len(set(grid))
    for overrides in grid:
        config = demo_config(recipe, overrides=overrides)
        for item in overrides:
            key, value = item.split("=")
            node = config
            for part in key.split("."):
                node = node[int(part)] if part.isdigit() else node[part]
            assert node == float(value), item


@pytest.mark.parametrize("recipe", ["PA+HIER", "HIST", "Hyp"])
def test_train_head_on_cached_features_lowers_the_loss(recipe):
    torch.manual_seed(0)
    centres = 0.5 * torch.randn(24, 1280)  # noisier than the centres are apart
    labels = np.repeat(np.arange(24), 2)
    features = centres[labels] + torch.randn(48, 1280)
    config = demo_config(recipe, max_classes=24, seed=0)
    head, losses = fresh_head(config, features, labels, 25)
    assert len(losses) == 25
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    metrics = validation_recall(config, head, features, labels)
    assert set(metrics) == {"recall_at_1", "recall_at_2", "recall_at_4", "recall_at_8"}
    assert all(0.0 <= v <= 1.0 for v in metrics.values())
    assert metrics["recall_at_8"] >= metrics["recall_at_1"]
