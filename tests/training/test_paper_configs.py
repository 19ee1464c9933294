"""Every recipe in benchmarks/paper/ loads, records the paper's numbers and builds its model,
losses, optimizers, schedules and tester without data or weights."""

from functools import cache
from pathlib import Path

import pytest
import torch

from pml_hyper.evaluation import recall_metric_names
from pml_hyper.knn import CosineKNN, HyperbolicKNN
from pml_hyper.models import COSINE
from pml_hyper.training import load_config
from pml_hyper.training.builders import build_loss_terms, build_model, build_tester, combine_losses
from pml_hyper.training.config import recipe_chain, recipe_files
from pml_hyper.training.optim import (
    loss_param_groups,
    lr_lambdas,
    make_optimizer,
    model_param_groups,
)

PAPER_DIR = Path(__file__).resolve().parents[2] / "benchmarks" / "paper"
CONFIGS = recipe_files(PAPER_DIR)  # without the bases (_base/)
TRAIN_CLASSES = {"cub200": 100, "cars196": 98, "sop": 11318, "inshop": 3997}


@cache
def _model(backbone: str, embedding_size: int, head: str, head_kwargs: tuple):
    config = {
        "model": {
            "backbone": backbone,
            "pretrained": False,
            "checkpoint_path": None,
            "embedding_size": embedding_size,
            "head": head,
            "head_kwargs": dict(head_kwargs),
            "freeze_bn_stats": True,
            "freeze_bn_affine": False,
            "freeze_patch_embed": None,
        }
    }
    return build_model(config)


def test_every_published_recipe_has_a_file():
    names = {path.stem for path in CONFIGS}
    assert {"hist_cub_r50", "hist_cars_r50", "hist_sop_r50"} <= names
    for dataset in ("cub", "cars", "sop", "inshop"):
        assert f"hier_{dataset}_r50" in names
        for arch in ("deit", "vit", "dino"):
            for dim in (128, 384):
                assert {f"hier_{dataset}_{arch}{dim}", f"hyp_{dataset}_{arch}{dim}"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_builds(path):
    config = load_config(path)
    assert config["name"] == path.stem
    assert config["paper"]["metrics"] and config["paper"]["source"]
    m = config["model"]
    model = _model(m["backbone"], m["embedding_size"], m["head"], tuple(m["head_kwargs"].items()))
    terms = build_loss_terms(config, TRAIN_CLASSES[config["data"]["dataset"]])
    combine_losses(config, terms)
    for groups in (model_param_groups(config, model), loss_param_groups(config, terms)):
        if not groups:  # a loss without parameters (Hyp's NTXent)
            continue
        optimizer = make_optimizer(config, groups)
        lambdas = lr_lambdas(config, 10, [g["name"] for g in groups])
        torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
    knn = build_tester(config, model).accuracy_calculator.knn_func
    if m["head"] == "hist":
        assert isinstance(knn, CosineKNN) and model.geometry == COSINE
    else:  # the recipe's curvature, through the head's geometry
        assert isinstance(knn, HyperbolicKNN) and knn.c == m["head_kwargs"].get("c", 0.1)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_paper_metrics_are_evaluated(path):
    config = load_config(path)
    evaluated = recall_metric_names(config["eval"]["k_values"])
    assert set(config["paper"]["metrics"]) <= set(evaluated)
    assert config["eval"]["primary_metric"] in evaluated


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_sampling_follows_each_familys_released_sampler(path):
    data = load_config(path)["data"]
    family = path.stem.split("_")[0]
    if family == "hyp":  # hyp_metric's safe_random_choice
        assert data["replacement"] == "when_short"
    elif data["sampler"] == "unique_class":  # HIER's sampler draws with replacement
        assert data["replacement"] is True


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.stem.startswith("hyp_")], ids=lambda p: p.stem
)
def test_hyp_recipes_use_hyps_loss(path):
    config = load_config(path)
    (term,) = config["loss"]["terms"]
    if config["data"]["images_per_class"] > 2:  # NTXent differs from Hyp beyond 2 views
        assert term["type"] == "HypLoss" and term["weight"] == 1.0
        assert term["kwargs"] == {"temperature": 0.2, "c": 0.1}
    else:
        assert (term["type"], term["weight"]) in {("NTXentLoss", 2.0), ("HypLoss", 1.0)}
    assert not any("same optimum" in file.read_text() for file in recipe_chain(path))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_records_selection_batch_and_gradient_ratio(path):
    config = load_config(path)
    family = path.stem.split("_")[0]
    assert config["paper"]["selection"] == ("last" if family == "hyp" else "best")
    if family == "hist":
        return
    header = "".join(  # the recipe's header comments and its bases'
        line
        for file in recipe_chain(path)
        for line in file.read_text().splitlines(True)
        if line.startswith("#")
    )
    batch = config["data"]["batch_size"]
    assert f"global {batch}" in header and "--nproc_per_node N" in header
    assert f"data.batch_size={batch}/N" in header
    expected = 2 if family == "hier" else 1
    assert config["distributed"]["paper_world_size"] == expected


@pytest.mark.parametrize(
    "path", [p for p in CONFIGS if p.stem.startswith("hier_inshop_")], ids=lambda p: p.stem
)
def test_hier_inshop_evaluates_every_epoch(path):
    assert load_config(path)["eval"]["every"] == 1  # every released In-shop script
