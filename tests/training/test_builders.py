"""The model, its geometry, the tester and the other parts the builders make from a config."""

import dataclasses

import numpy as np
import pytest
import torch

from pml_hyper.data import SyntheticImages
from pml_hyper.knn import CosineKNN, HyperbolicKNN
from pml_hyper.models import COSINE, Geometry, HISTHead, PoincareHead, TinyCNN
from pml_hyper.training import build_config
from pml_hyper.training.builders import (
    DATASETS,
    build_datasets,
    build_loss_terms,
    build_model,
    build_sampler,
    build_tester,
    config_geometry,
)
from pml_hyper.training.optim import lr_lambdas, make_optimizer
from pml_hyper.training.trainer import MetricLossTrainer
from pml_hyper.utils import make_inference_model, make_tester, retrieval_settings


def tiny_config(head: str, head_kwargs: dict | None = None) -> dict:
    model = {"backbone": "tiny_cnn", "embedding_size": 8, "head": head}
    if head_kwargs is not None:
        model["head_kwargs"] = head_kwargs
    return build_config({"model": model, "eval": {"k_values": [1, 2]}})


@pytest.mark.parametrize(
    ("head", "head_kwargs", "geometry"),
    [
        ("hist", None, COSINE),
        ("hier", None, Geometry.poincare(0.1)),
        ("hyp", None, Geometry.poincare(0.1)),
        ("hier", {"c": 0.05}, Geometry.poincare(0.05)),
        ("hyp", {"c": 0.05, "clip_r": 1.5}, Geometry.poincare(0.05)),
    ],
)
def test_build_model_builds_the_named_head(head, head_kwargs, geometry):
    config = tiny_config(head, head_kwargs)
    model = build_model(config)
    assert isinstance(model, TinyCNN)
    assert type(model.head) is (HISTHead if head == "hist" else PoincareHead)
    assert model.geometry == geometry == config_geometry(config)
    if head != "hist":
        assert model.head.to_poincare.riemannian is (head == "hier")
        assert model.head.to_poincare.clip_r == (head_kwargs or {}).get("clip_r", 2.3)


def test_unknown_head_names_the_choices():
    with pytest.raises(ValueError, match="unknown head 'proxy'; choose from hist, hier, hyp"):
        build_model(tiny_config("proxy"))
    with pytest.raises(ValueError, match="do not apply to the 'hist' head"):
        build_model(tiny_config("hist", {"c": 0.1}))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    ("head", "head_kwargs", "c"),
    [
        ("hist", None, None),
        ("hier", None, 0.1),
        ("hier", {"c": 0.05}, 0.05),
        ("hyp", {"c": 0.3}, 0.3),
    ],
)
def test_tester_follows_the_models_geometry(head, head_kwargs, c, dtype):
    config = tiny_config(head, head_kwargs)
    model = build_model(config).to(dtype).eval()
    # the runner's tester and the public helper take their kNN from the same place
    for tester in (build_tester(config, model), make_tester(model)):
        knn = tester.accuracy_calculator.knn_func
        if c is None:
            assert isinstance(knn, CosineKNN) and tester.normalize_embeddings is True
        else:
            assert isinstance(knn, HyperbolicKNN) and knn.c == c
            assert tester.normalize_embeddings is False
    assert build_tester(config, model).accuracy_calculator.knn_func.backend == (
        "auto" if c is None else "torch"
    )
    index = make_inference_model(model)
    assert index.normalize_embeddings is (c is None)
    assert isinstance(index.knn_func, CosineKNN if c is None else HyperbolicKNN)
    # the model's embeddings go through its tester's kNN in either dtype
    g = torch.Generator().manual_seed(0)
    images = torch.rand(12, 3, 16, 16, generator=g, dtype=dtype)
    labels = torch.arange(6).repeat_interleave(2)
    with torch.no_grad():
        embeddings = model(images)
    assert embeddings.dtype == dtype
    tester = build_tester(config, model)
    if tester.normalize_embeddings:
        embeddings = torch.nn.functional.normalize(embeddings, dim=1)
    recall = tester.accuracy_calculator.get_accuracy(embeddings, labels)
    assert set(recall) == {"recall_at_1", "recall_at_2"}
    assert all(0 <= v <= 1 for v in recall.values())


def test_a_cosine_wrapper_of_a_hyperbolic_model_gets_the_cosine_tester():
    """The demo's pretrained baseline: pooled backbone features of a hier model."""

    class Pooled(torch.nn.Module):
        geometry = COSINE

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, images):
            return self.model.features(images)

    config = tiny_config("hier", {"c": 0.05})
    model = build_model(config)
    assert isinstance(build_tester(config, model).accuracy_calculator.knn_func, HyperbolicKNN)
    tester = build_tester(config, Pooled(model))
    assert isinstance(tester.accuracy_calculator.knn_func, CosineKNN)
    assert tester.normalize_embeddings is True


@pytest.mark.parametrize("c", [0.05, 0.1, 1.0])
def test_retrieval_settings(c):
    knn, normalize = retrieval_settings(Geometry.poincare(c), ball_backend="torch")
    assert isinstance(knn, HyperbolicKNN) and knn.c == c and knn.backend == "torch"
    assert normalize is False
    knn, normalize = retrieval_settings(COSINE)
    assert isinstance(knn, CosineKNN) and normalize is True


@pytest.mark.parametrize(
    ("override", "build", "message"),
    [
        ("optimizer.name=lamb", lambda c: make_optimizer(c, []), "optimizer.name 'lamb'"),
        ("schedule.lr_decay=linear", lambda c: lr_lambdas(c, 1, []), "schedule.lr_decay 'linear'"),
        ("schedule.warmup_freeze=x", lambda c: lr_lambdas(c, 1, []), "schedule.warmup_freeze 'x'"),
        (
            "data.sampler=m_per_class",
            lambda c: build_sampler(c, None),
            "data.sampler 'm_per_class'",
        ),
        (
            "loss.terms.0.type=NoLoss",
            lambda c: build_loss_terms(c, 2),
            "loss.terms.0.type 'NoLoss'",
        ),
        (
            "loss.terms.0.kwargs.distance.type=NoDistance",
            lambda c: build_loss_terms(c, 2),
            "distance 'NoDistance'",
        ),
    ],
)
def test_unknown_config_names_list_the_choices(override, build, message):
    config = build_config({}, [override])
    with pytest.raises(ValueError, match=f"^unknown {message}; choose from "):
        build(config)


def test_unknown_amp_lists_the_choices():
    with pytest.raises(ValueError, match="^unknown amp 'fp8'; choose from bf16, fp16$"):
        MetricLossTrainer(amp="fp8")


def test_synthetic_dataset_needs_no_root_or_transform():
    config = build_config({"data": {"dataset": "synthetic", "synthetic": {"num_classes": 3}}})
    train, evals, splits = build_datasets(config, data_root="/nowhere")
    assert type(train) is SyntheticImages and set(np.unique(train.labels)) == {0, 1, 2}
    assert list(evals) == ["test"] and type(evals["test"]) is SyntheticImages
    assert splits == [("test", ["test"])]


class FakeSplit:
    def __init__(self, root, split, transform):
        self.root, self.split, self.transform = root, split, transform
        self.labels = np.array([0, 0, 1, 1, 2, 2])


def test_a_dataset_entry_gives_its_splits_root_and_transforms(monkeypatch, tmp_path):
    monkeypatch.setitem(DATASETS, "inshop", dataclasses.replace(DATASETS["inshop"], make=FakeSplit))
    config = build_config(
        {"data": {"dataset": "inshop", "max_classes": 2}, "model": {"backbone": "tiny_cnn"}}
    )
    train, evals, splits = build_datasets(config, data_root=tmp_path)
    assert splits == [("query", ["gallery"])] and list(evals) == ["query", "gallery"]
    assert [d.dataset.split for d in (train, *evals.values())] == ["train", "query", "gallery"]
    assert {d.dataset.root for d in (train, *evals.values())} == {tmp_path}
    assert train.dataset.transform is not evals["query"].dataset.transform is not None
    assert all(list(d.labels) == [0, 0, 1, 1] for d in (train, *evals.values()))
    with pytest.raises(
        ValueError, match="dataset 'inshop' needs a data root: pass --data-root DIR"
    ):
        build_datasets(config)
    with pytest.raises(FileNotFoundError, match=f"data root {tmp_path / 'no'} does not exist"):
        build_datasets(config, data_root=tmp_path / "no")


def test_unknown_dataset_lists_the_choices():
    config = build_config({"data": {"dataset": "mnist"}})
    choices = "synthetic, emoji, cub200, cars196, sop, inshop"
    with pytest.raises(ValueError, match=f"^unknown dataset 'mnist'; choose from {choices}$"):
        build_datasets(config)
