"""Build the parts of a run from its config, each from a name: datasets, model, losses, tester."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True)
class DatasetEntry:
    """How the splits of a ``data.dataset`` name are built and evaluated.

    Attributes:
        make: ``make(root, split, transform, **options)``, the dataset of one split.
        needs_root: the data root must be given and be an existing folder.
        generated: tensors made in memory: no image transforms (``transform`` is ``None``) and
            every class (``data.max_classes`` does not apply).
        options: the ``data`` key whose mapping holds ``make``'s further keywords, if any.
        query: the evaluation split whose embeddings are queried.
        references: the splits it retrieves from.
    """

    make: Callable[..., Any]
    needs_root: bool = False
    generated: bool = False
    options: str | None = None
    query: str = "test"
    references: tuple[str, ...] = ("test",)


def _synthetic(
    root: str | Path | None, split: str, transform: None, **options: Any
) -> SyntheticImages:
    """:class:`SyntheticImages` of ``split`` (no files, no transform)."""
    return SyntheticImages(split, **options)


DATASETS: dict[str, DatasetEntry] = {
    "synthetic": DatasetEntry(_synthetic, generated=True, options="synthetic"),
    "emoji": DatasetEntry(EmojiVendors),  # root None: the default render cache
    "cub200": DatasetEntry(CUB200, needs_root=True),
    "cars196": DatasetEntry(Cars196, needs_root=True),
    "sop": DatasetEntry(SOP, needs_root=True),
    "inshop": DatasetEntry(InShop, needs_root=True, query="query", references=("gallery",)),
}
"""Datasets by ``data.dataset``."""


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


def _image_transforms(config: dict) -> tuple[Callable, Callable]:
    """``(train, eval)`` transforms of the backbone's recipe; without ``train_augmentation``
    the train split also gets the evaluation transform."""
    data, backbone = config["data"], config["model"]["backbone"]
    tf_backbone = getattr(MODELS.get(backbone), "transform_backbone", backbone)
    size, interp = data["image_size"], data["interpolation"]
    eval_tf = eval_transform(tf_backbone, size, data["eval_crop_pct"], interp)
    train_tf = train_transform(tf_backbone, size, interp) if data["train_augmentation"] else eval_tf
    return train_tf, eval_tf


def _check_root(name: str, root: str | Path | None) -> None:
    if root is None:
        raise ValueError(f"dataset {name!r} needs a data root: pass --data-root DIR")
    if not Path(root).expanduser().is_dir():
        raise FileNotFoundError(f"data root {root} does not exist")


def build_datasets(config: dict, data_root: str | Path | None = None) -> tuple[Any, dict, list]:
    """Train dataset, tester ``dataset_dict`` and ``splits_to_eval`` of ``config["data"]``
    (``data_root`` overrides ``data.root``), from its :data:`DATASETS` entry."""
    data = config["data"]
    entry = lookup(DATASETS, data["dataset"], "dataset")
    root = data_root if data_root is not None else data["root"]
    options = data[entry.options] if entry.options else {}
    if entry.generated:
        train_tf = eval_tf = limit = None
    else:
        train_tf, eval_tf = _image_transforms(config)
        limit = data["max_classes"]
    if entry.needs_root:
        _check_root(data["dataset"], root)

    def make(split: str, transform: Callable | None) -> Any:
        return first_classes(entry.make(root, split, transform, **options), limit)

    train = make("train", train_tf)
    evals = {s: make(s, eval_tf) for s in dict.fromkeys((entry.query, *entry.references))}
    return train, evals, [(entry.query, list(entry.references))]


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
