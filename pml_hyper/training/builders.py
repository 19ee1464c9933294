"""Build the parts of a run from its config, each from a name: datasets, model, losses, tester."""

from __future__ import annotations

import functools
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses

from .. import distances as hyper_distances
from .. import losses as hyper_losses
from ..data import (
    CUB200,
    SOP,
    Cars196,
    EmojiVendors,
    InShop,
    SyntheticImages,
    UniqueClassSampler,
    eval_transform,
    train_transform,
)
from ..evaluation import RecallAtK, recall_metric_names
from ..models import MODELS, EmbeddingModel, Geometry, build_head, geometry_of
from ..utils.geometry import retrieval_settings
from ..utils.registry import lookup
from .config import ConfigError
from .finite_embedding_tester import FiniteEmbeddingTester

DATASETS = {"cub200": CUB200, "cars196": Cars196, "sop": SOP, "inshop": InShop}


# losses that need two images of a class in a batch (no proxies)
PAIR_LOSSES = (
    "ContrastiveLoss",
    "TripletMarginLoss",
    "MultiSimilarityLoss",
    "NTXentLoss",
    "SupConLoss",
    "CircleLoss",
    "MarginLoss",
    "LiftedStructureLoss",
    "GeneralizedLiftedStructureLoss",
    "FastAPLoss",
    "NCALoss",
    "SignalToNoiseRatioContrastiveLoss",
    "TupletMarginLoss",
    "IntraPairVarianceLoss",
    "AngularLoss",
    "NPairsLoss",
    "PNPLoss",
)


def check_meaningful(config: dict) -> None:
    """Config errors for runs that would train nothing or learn nothing."""
    if config["schedule"]["epochs"] < 1:
        raise ConfigError(f"schedule.epochs must be >= 1, got {config['schedule']['epochs']}")
    data = config["data"]
    if data["sampler"] == "unique_class" and data["images_per_class"] < 2:
        pair = [t["type"] for t in config["loss"]["terms"] if t["type"] in PAIR_LOSSES]
        if pair:
            raise ConfigError(
                f"data.images_per_class is {data['images_per_class']}: {', '.join(pair)} "
                "needs at least 2 images of a class per batch (its loss would be 0)"
            )


class Labelled(torch.utils.data.Subset):
    """A subset that keeps the ``labels`` array PML samplers and testers read."""

    def __init__(self, dataset: torch.utils.data.Dataset, indices: np.ndarray):
        super().__init__(dataset, indices.tolist())
        self.labels = np.asarray(dataset.labels)[indices]


def first_classes(dataset: torch.utils.data.Dataset, max_classes: int | None):
    """``dataset`` restricted to its ``max_classes`` smallest labels (all when ``None``)."""
    if max_classes is None:
        return dataset
    labels = np.asarray(dataset.labels)
    keep = np.unique(labels)[:max_classes]
    return Labelled(dataset, np.flatnonzero(np.isin(labels, keep)))


def build_datasets(config: dict, data_root: str | Path | None = None) -> tuple[Any, dict, list]:
    """Train dataset, tester ``dataset_dict`` and ``splits_to_eval`` of ``config["data"]``."""
    data, backbone = config["data"], config["model"]["backbone"]
    name = data["dataset"]
    root = data_root if data_root is not None else data["root"]
    if name == "synthetic":
        splits = {s: SyntheticImages(s, **data["synthetic"]) for s in ("train", "test")}
        return splits["train"], {"test": splits["test"]}, [("test", ["test"])]
    tf_backbone = getattr(MODELS.get(backbone), "transform_backbone", backbone)
    size, interp = data["image_size"], data["interpolation"]
    eval_tf = eval_transform(tf_backbone, size, data["eval_crop_pct"], interp)
    train_tf = train_transform(tf_backbone, size, interp) if data["train_augmentation"] else eval_tf
    if name == "emoji":
        make = functools.partial(EmojiVendors, root)
    elif name in DATASETS:
        if root is None:
            raise ValueError(f"dataset {name!r} needs a data root: pass --data-root DIR")
        if not Path(root).expanduser().is_dir():
            raise FileNotFoundError(f"data root {root} does not exist")
        make = functools.partial(DATASETS[name], root)
    else:
        raise ValueError(
            f"unknown dataset {name!r}; one of synthetic, emoji, {', '.join(DATASETS)}"
        )
    limit = data["max_classes"]
    train = first_classes(make("train", train_tf), limit)
    if name == "inshop":
        evals = {s: first_classes(make(s, eval_tf), limit) for s in ("query", "gallery")}
        return train, evals, [("query", ["gallery"])]
    return train, {"test": first_classes(make("test", eval_tf), limit)}, [("test", ["test"])]


def _random_sampler(config: dict, train_set: Any, world_size: int) -> Any:
    """PML's shuffled loader (``None``); a ``DistributedSampler`` across processes."""
    if world_size > 1:
        return torch.utils.data.DistributedSampler(
            train_set, shuffle=True, seed=config["seed"], drop_last=True
        )
    return None


def _unique_class_sampler(config: dict, train_set: Any, world_size: int) -> UniqueClassSampler:
    """HIER's batches of distinct classes, ``images_per_class`` images each."""
    data = config["data"]
    return UniqueClassSampler(
        train_set.labels,
        batch_size=data["batch_size"],
        images_per_class=data["images_per_class"],
        seed=config["seed"],
        replacement=data["replacement"],
    )


SAMPLERS: dict[str, Callable[[dict, Any, int], Any]] = {
    "random": _random_sampler,
    "unique_class": _unique_class_sampler,
}
"""Training samplers by ``data.sampler``, called as ``(config, train_set, world_size)``."""


def build_sampler(config: dict, train_set: Any, world_size: int = 1):
    """The training sampler of ``data.sampler`` (``None``: PML's shuffled loader)."""
    make = lookup(SAMPLERS, config["data"]["sampler"], "data.sampler")
    return make(config, train_set, world_size)


def build_model(config: dict) -> torch.nn.Module:
    """The embedding model of ``config["model"]`` with its named head (``backbone``, ``head``
    and ``geometry`` attributes)."""
    m = config["model"]
    if m["backbone"] in MODELS:
        return MODELS[m["backbone"]](m["embedding_size"], m["head"], m["head_kwargs"])
    return EmbeddingModel(
        m["backbone"],
        m["embedding_size"],
        head=m["head"],
        head_kwargs=m["head_kwargs"],
        pretrained=m["pretrained"],
        checkpoint_path=m["checkpoint_path"],
        freeze_bn_stats=m["freeze_bn_stats"],
        freeze_bn_affine=m["freeze_bn_affine"],
        freeze_patch_embed=m["freeze_patch_embed"],
    )


def config_geometry(config: dict) -> Geometry:
    """The geometry of ``config["model"]``'s head, known before the model is built (the head
    alone is built, on a one-feature input)."""
    m = config["model"]
    return build_head(m["head"], 1, m["embedding_size"], m["head_kwargs"]).geometry


def build_model_on(config: dict, device: torch.device) -> torch.nn.Module:
    """:func:`build_model` on ``device``, in ``channels_last`` format when the config asks."""
    model = build_model(config).to(device)
    if config["precision"]["channels_last"]:
        model = model.to(memory_format=torch.channels_last)
    return model


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``; by default this process's CUDA device (``LOCAL_RANK``) when CUDA is
    available, else the CPU."""
    if device is None:
        cuda = torch.cuda.is_available()
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if cuda else "cpu"
    return torch.device(device)


def _classes(*modules) -> dict[str, type]:
    """The classes of ``modules`` by name (on a clash, the first module's)."""
    found: dict[str, type] = {}
    for module in modules:
        for name, obj in vars(module).items():
            if isinstance(obj, type):
                found.setdefault(name, obj)
    return found


LOSSES = _classes(hyper_losses, pml_losses)
"""Loss classes a ``loss.terms.N.type`` names: pml_hyper's, then PML's."""
DISTANCES = _classes(hyper_distances, pml_distances)
"""Distance classes a ``{"type": ...}`` loss argument names: pml_hyper's, then PML's."""


def _instantiate(spec: dict) -> Any:
    """Objects from ``{"type": Name, ...kwargs}`` (distances inside loss kwargs)."""
    kwargs = dict(spec)
    cls = lookup(DISTANCES, kwargs.pop("type"), "distance")
    return cls(**kwargs)


def build_loss_terms(config: dict, num_classes: int) -> list[torch.nn.Module]:
    """One loss module per ``config["loss"]["terms"]`` entry; ``num_classes`` and
    ``embedding_size`` are passed to constructors that take them unless given."""
    terms = []
    for i, term in enumerate(config["loss"]["terms"]):
        cls = lookup(LOSSES, term["type"], f"loss.terms.{i}.type")
        kwargs = {
            k: _instantiate(v) if isinstance(v, dict) and "type" in v else v
            for k, v in term["kwargs"].items()
        }
        params = inspect.signature(cls).parameters
        if "num_classes" in params:
            kwargs.setdefault("num_classes", num_classes)
        if "embedding_size" in params:
            kwargs.setdefault("embedding_size", config["model"]["embedding_size"])
        terms.append(cls(**kwargs))
    return terms


def combine_losses(config: dict, terms: list[torch.nn.Module]) -> torch.nn.Module:
    """A single term with weight 1 as is, otherwise PML's ``MultipleLosses`` in its dict form,
    keyed by term type (``proxyanchorloss``, ``hierloss``, a ``_2`` suffix for repeats): PML's
    record-keeper turns the list form's keys ``0``, ``1`` into invalid SQLite table names."""
    weights = [term["weight"] for term in config["loss"]["terms"]]
    if len(terms) == 1 and weights[0] == 1.0:
        return terms[0]
    types = [term["type"].lower() for term in config["loss"]["terms"]]
    names = [
        t if types[:i].count(t) == 0 else f"{t}_{types[:i].count(t) + 1}"
        for i, t in enumerate(types)
    ]
    return pml_losses.MultipleLosses(
        dict(zip(names, terms, strict=True)), weights=dict(zip(names, weights, strict=True))
    )


def build_tester(
    config: dict,
    model: torch.nn.Module,
    end_of_testing_hook: Callable | None = None,
    device=None,
):
    """``GlobalEmbeddingSpaceTester`` with :class:`RecallAtK` for ``model``'s geometry
    (:func:`~pml_hyper.utils.retrieval_settings`): Poincaré kNN (torch backend) without
    normalisation in the ball, cosine kNN on normalised embeddings otherwise."""
    knn, normalize = retrieval_settings(geometry_of(model), ball_backend="torch")
    k_values = config["eval"]["k_values"]
    calculator = RecallAtK(
        k_values,
        include=recall_metric_names(k_values),
        k=max(k_values),
        knn_func=knn,
        device=device,
    )
    return FiniteEmbeddingTester(
        normalize_embeddings=normalize,
        batch_size=config["data"]["eval_batch_size"],
        dataloader_num_workers=config["data"]["num_workers"],
        accuracy_calculator=calculator,
        data_device=device,
        end_of_testing_hook=end_of_testing_hook,
    )
