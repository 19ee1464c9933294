"""Build a run from a config (datasets, model, losses, optimizers, schedules, tester), train it
with evaluation and checkpoints, and write its results JSON and plots."""

from __future__ import annotations

import datetime
import functools
import importlib.util
import inspect
import json
import math
import os
import platform
import shutil
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pytorch_metric_learning import distances as pml_distances
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets

from .. import distances as hyper_distances
from .. import losses as hyper_losses
from ..data import (
    CUB200,
    SOP,
    Cars196,
    EmojiVendors,
    InShop,
    UniqueClassSampler,
    eval_transform,
    train_transform,
)
from ..evaluation import RecallAtK, recall_metric_names
from ..knn import CosineKNN, HyperbolicKNN
from ..models import EmbeddingModel, HIERHead
from . import hierarchy_report
from .config import ConfigError, build_config, dump_config
from .distributed_loss_wrapper import DistributedLossWrapper, is_distributed
from .finite_embedding_tester import FiniteEmbeddingTester
from .run_lock import RunLock
from .synthetic_images import SyntheticImages
from .tiny_cnn import TinyCNN
from .trainer import (
    CheckpointError,
    MetricLossTrainer,
    load_checkpoint,
    seed_everything,
    write_atomically,
)

DATASETS = {"cub200": CUB200, "cars196": Cars196, "sop": SOP, "inshop": InShop}
HYPERBOLIC_HEADS = ("hier", "hyp")
LAST, BEST = "last.pt", "best.pt"
# config keys a resumed run may change without --allow-config-change (prefixes of dotted keys)
RESUME_SAFE_KEYS = (
    "schedule.epochs",
    "output.progress_bar",
    "output.plots",
    "output.disk_plot",
    "eval.hierarchy",  # hierarchy metrics are reported, never trained on
    "eval.purity_level",
    "output.log_freq",
    "output.dir",
    "data.num_workers",
    "data.root",
    "data.eval_batch_size",
)
# keys that define a checkpoint's model and geometry: never overridden when evaluating it
CHECKPOINT_MODEL_KEYS = ("model",)
# an epoch loss this many times its best so far is warned about
LOSS_BLOWUP_FACTOR = 100.0
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


def flatten_config(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{dotted.key: leaf}`` of a nested config (list items by index)."""
    if isinstance(value, dict) and value:
        items = value.items()
    elif isinstance(value, list) and value:
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return {prefix: value}
    flat = {}
    for key, item in items:
        flat.update(flatten_config(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def _matches(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(old: dict, new: dict) -> dict[str, dict]:
    """``{key: {"checkpoint": old, "now": new}}`` for every dotted key that differs."""
    a, b = flatten_config(old), flatten_config(new)
    return {
        k: {"checkpoint": a.get(k), "now": b.get(k)}
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    }


def check_output_dir(folder: Path) -> None:
    """Create ``folder`` and check that files can be written in it, with a clear error."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise ConfigError(
            f"output folder {folder} cannot be used: {reason} ({error.filename or folder}); "
            "set output.dir to a writable folder"
        ) from None


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
    tf_backbone = "tf_efficientnet_lite0" if backbone == "tiny_cnn" else backbone
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


def build_model(config: dict) -> torch.nn.Module:
    """The embedding model of ``config["model"]`` (``backbone`` and ``head`` attributes)."""
    m = config["model"]
    head_kwargs = dict(m["head_kwargs"])
    if m["head"] == "hyp":
        head_kwargs = {"layer_norm": False, "riemannian": False, **head_kwargs}
    elif m["head"] not in ("hist", "hier"):
        raise ValueError(f"model.head must be hist, hier or hyp, got {m['head']!r}")
    if m["head"] == "hist" and head_kwargs:
        raise ValueError("model.head_kwargs applies to the hier and hyp heads only")
    if m["backbone"] == "tiny_cnn":
        model = TinyCNN(m["embedding_size"])
    else:
        model = EmbeddingModel(
            m["backbone"],
            m["embedding_size"],
            head="hist",
            pretrained=m["pretrained"],
            checkpoint_path=m["checkpoint_path"],
            freeze_bn_stats=m["freeze_bn_stats"],
            freeze_bn_affine=m["freeze_bn_affine"],
            freeze_patch_embed=m["freeze_patch_embed"],
        )
    if m["head"] != "hist":
        model.head = HIERHead(model.num_features, m["embedding_size"], **head_kwargs)
    return model


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


def _find_class(name: str, modules: tuple, what: str) -> type:
    for module in modules:
        if hasattr(module, name):
            return getattr(module, name)
    raise ValueError(f"unknown {what} {name!r}: not in {', '.join(m.__name__ for m in modules)}")


def _instantiate(spec: dict) -> Any:
    """Objects from ``{"type": Name, ...kwargs}`` (distances inside loss kwargs)."""
    kwargs = dict(spec)
    cls = _find_class(kwargs.pop("type"), (hyper_distances, pml_distances), "distance")
    return cls(**kwargs)


def build_loss_terms(config: dict, num_classes: int) -> list[torch.nn.Module]:
    """One loss module per ``config["loss"]["terms"]`` entry; ``num_classes`` and
    ``embedding_size`` are passed to constructors that take them unless given."""
    terms = []
    for i, term in enumerate(config["loss"]["terms"]):
        cls = _find_class(term["type"], (hyper_losses, pml_losses), f"loss (loss.terms.{i}.type)")
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


def build_tester(config: dict, end_of_testing_hook: Callable | None = None, device=None):
    """``GlobalEmbeddingSpaceTester`` with :class:`RecallAtK`: Poincaré kNN for the hier/hyp
    heads (no normalisation), cosine kNN otherwise."""
    hyperbolic = config["model"]["head"] in HYPERBOLIC_HEADS
    if hyperbolic:
        c = config["model"]["head_kwargs"].get("c", 0.1)
        knn = HyperbolicKNN(c=c, backend="torch")
    else:
        knn = CosineKNN()
    k_values = config["eval"]["k_values"]
    calculator = RecallAtK(
        k_values,
        include=recall_metric_names(k_values),
        k=max(k_values),
        knn_func=knn,
        device=device,
    )
    return FiniteEmbeddingTester(
        normalize_embeddings=not hyperbolic,
        batch_size=config["data"]["eval_batch_size"],
        dataloader_num_workers=config["data"]["num_workers"],
        accuracy_calculator=calculator,
        data_device=device,
        end_of_testing_hook=end_of_testing_hook,
    )


def evaluate_recall(
    tester: testers.GlobalEmbeddingSpaceTester,
    eval_sets: dict,
    splits_to_eval: list,
    model: torch.nn.Module,
    epoch: int = 0,
) -> dict[str, float]:
    """Recall@K of ``model`` on the first query split of ``splits_to_eval``, by increasing K
    (``tester`` from :func:`build_tester`)."""
    accuracies = tester.test(eval_sets, epoch, model, torch.nn.Identity(), splits_to_eval)
    query = accuracies[splits_to_eval[0][0]]
    names = tester.accuracy_calculator.recall_metric_names()
    return {name: float(query[f"{name}_level0"]) for name in names}


def evaluate_checkpoint(
    path: str | Path,
    data_root: str | Path | None = None,
    overrides: Iterable[str] = (),
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Recall@K of the model weights of a checkpoint (``last.pt``, ``best.pt``) on its config's
    evaluation split(s), with ``key=value`` config overrides. Only the weights are read: no
    optimizer, scheduler or RNG state, and no pretrained backbone weights."""
    device = resolve_device(device)
    config, state, model, eval_sets, splits_to_eval = load_checkpoint_model(
        path, data_root, overrides, device
    )
    tester = build_tester(config, device=device)
    return evaluate_recall(tester, eval_sets, splits_to_eval, model, state["epoch"])


def load_checkpoint_model(
    path: str | Path,
    data_root: str | Path | None = None,
    overrides: Iterable[str] = (),
    device: str | torch.device | None = None,
) -> tuple[dict, dict, torch.nn.Module, dict, list]:
    """``(config, state, model, eval_sets, splits_to_eval)`` of a checkpoint file or run folder
    (its ``best.pt``): the model with the checkpoint's weights (see :func:`evaluate_checkpoint`)."""
    path = Path(path)
    if path.is_dir():
        if not (path / BEST).is_file():
            raise FileNotFoundError(f"run folder {path} has no {BEST}: pass a checkpoint file")
        path = path / BEST
    overrides = list(overrides)
    fixed = [o for o in overrides if _matches(o.split("=", 1)[0].strip(), CHECKPOINT_MODEL_KEYS)]
    if fixed:
        raise ConfigError(
            f"cannot override {', '.join(fixed)} when evaluating {path}: the checkpoint's "
            "model (backbone, head, geometry) is fixed by its config"
        )
    state = load_checkpoint(path)
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path} is not a pml-hyper run checkpoint: it has no config")
    config = build_config(state["config"], overrides)
    device = resolve_device(device)
    _, eval_sets, splits_to_eval = build_datasets(config, data_root)
    weights_only = dict(config["model"], pretrained=False, checkpoint_path=None)
    model = build_model_on({**config, "model": weights_only}, device)
    model.load_state_dict(state["models"]["trunk"])
    return config, state, model, eval_sets, splits_to_eval


def build_record_keeper(folder: Path):
    """PML's record keeper (CSV/SQLite, TensorBoard when installed); without tensorboard PML's
    preset returns nothing, so the record keeper is built directly (docs/pml.md#logging)."""
    record_keeper, _, _ = logging_presets.get_record_keeper(
        str(folder / "logs"), str(folder / "tensorboard")
    )
    if record_keeper is None:
        import record_keeper as rk

        record_keeper = rk.RecordKeeper(
            tensorboard_writer=None,
            record_writer=rk.RecordWriter(str(folder / "logs")),
            attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
        )
    return record_keeper


def machine() -> dict:
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


class Runner:
    """One training run of a config: ``Runner(config, data_root).run()``.

    Output folder (``output.dir``, ``{name}`` filled in): ``config.yaml`` when the run starts,
    ``last.pt`` after every epoch, ``best.pt`` (a copy of ``last.pt``) at the best
    ``eval.primary_metric``, ``results.json`` after every epoch, ``curves.png`` (loss and
    Recall@K per epoch), PML record-keeper logs. Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs
    DDP (NCCL on GPU, gloo on CPU) with :class:`DistributedLossWrapper`; rank 0 evaluates and
    writes.

    Args:
        config: a validated config (:func:`~pml_hyper.training.config.load_config`).
        data_root: overrides ``data.root``.
        resume: continue from ``last.pt`` in the output folder; the config must equal the
            checkpoint's except for ``RESUME_SAFE_KEYS`` and ``allow_config_change``.
        allow_config_change: dotted keys (or prefixes) a resumed run may change; the changes
            are recorded in ``results.json`` (``resume_config_changes``).
        device: default CUDA when available.

    The run folder is locked (``.lock`` with the pid) from construction to the end of
    :meth:`run`; a second run into it fails at once.
    """

    def __init__(
        self,
        config: dict,
        data_root: str | Path | None = None,
        resume: bool = False,
        device: str | torch.device | None = None,
        allow_config_change: Sequence[str] = (),
    ):
        if config["output"]["plots"] and importlib.util.find_spec("matplotlib") is None:
            raise ImportError(
                "output.plots needs matplotlib: pip install matplotlib (or 'pml-hyper[demo]'), "
                "or pass --set output.plots=false"
            )
        self.config = config
        self.data_root = data_root
        self.resume = resume
        self.allow_config_change = tuple(allow_config_change)
        self.resume_config_changes: dict[str, dict] = {}
        self.out_dir = Path(config["output"]["dir"].format(name=config["name"]))
        self._check_meaningful()
        self.rank, self.world_size = self._init_distributed()
        self.device = resolve_device(device)
        self.lock = RunLock(self.out_dir)
        if self.rank == 0:
            check_output_dir(self.out_dir)
            self.lock.acquire()
        try:
            self._build()
        except BaseException:
            self.lock.release()
            raise

    def _check_meaningful(self) -> None:
        """Config errors for runs that would train nothing or learn nothing."""
        config = self.config
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

    def _build(self) -> None:
        config = self.config
        seed_everything(config["seed"])
        self.train_set, self.eval_sets, self.splits_to_eval = self._build_datasets(self.data_root)
        self.num_classes = int(np.max(self.train_set.labels)) + 1
        for split, dataset in {"train": self.train_set, **self.eval_sets}.items():
            found = len(np.unique(np.asarray(dataset.labels)))
            if found < 2:
                raise ValueError(
                    f"the {split} split of dataset {config['data']['dataset']!r} has {found} "
                    "class; metric learning and Recall@K need at least 2"
                )
        hierarchy_report.check(config, self.eval_sets)
        self.model = build_model_on(config, self.device)
        self.loss_terms = [t.to(self.device) for t in build_loss_terms(config, self.num_classes)]
        self.loss = combine_losses(config, self.loss_terms)
        self.history: list[dict] = []
        self.best: dict | None = None
        self.trainer = self._build_trainer()

    def _build_datasets(self, data_root: str | Path | None) -> tuple[Any, dict, list]:
        """Train set, evaluation sets and splits to evaluate (subclasses may choose others)."""
        return build_datasets(self.config, data_root)

    @staticmethod
    def _init_distributed() -> tuple[int, int]:
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        if world_size > 1 and not is_distributed():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if torch.cuda.is_available():
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
            dist.init_process_group(backend)
        return (dist.get_rank(), world_size) if world_size > 1 else (0, 1)

    def _sampler(self):
        data = self.config["data"]
        if data["sampler"] == "unique_class":
            return UniqueClassSampler(
                self.train_set.labels,
                batch_size=data["batch_size"],
                images_per_class=data["images_per_class"],
                seed=self.config["seed"],
                replacement=data["replacement"],
            )
        if data["sampler"] != "random":
            raise ValueError(
                f"data.sampler must be random or unique_class, got {data['sampler']!r}"
            )
        if self.world_size > 1:
            return torch.utils.data.DistributedSampler(
                self.train_set, shuffle=True, seed=self.config["seed"], drop_last=True
            )
        return None

    def _build_trainer(self) -> MetricLossTrainer:
        config, schedule = self.config, self.config["schedule"]
        trunk: torch.nn.Module = self.model
        loss: torch.nn.Module = self.loss
        paper_world_size = config["distributed"]["paper_world_size"]
        if self.world_size > 1:
            unused = schedule["warmup_epochs"] > 0 and schedule["warmup_freeze"] == "requires_grad"
            trunk = torch.nn.parallel.DistributedDataParallel(trunk, find_unused_parameters=unused)
        if self.world_size > 1 or paper_world_size is not None:
            loss = DistributedLossWrapper(loss, paper_world_size=paper_world_size)
        sampler = self._sampler()
        batch_size = config["data"]["batch_size"]
        iterations = schedule["iterations_per_epoch"] or (
            len(sampler) // batch_size if sampler is not None else len(self.train_set) // batch_size
        )
        if iterations < 1:
            raise ValueError(f"{len(self.train_set)} training images make no batch of {batch_size}")
        optimizers, schedulers = build_optimizers(config, self.model, self.loss_terms, iterations)
        self.record_keeper = build_record_keeper(self.out_dir) if self.rank == 0 else None
        self.hooks = (
            logging_presets.get_hook_container(
                self.record_keeper,
                primary_metric=config["eval"]["primary_metric"],
                validation_split_name=self.splits_to_eval[0][0],
                save_models=False,
                log_freq=config["output"]["log_freq"],
            )
            if self.record_keeper is not None
            else None
        )
        self.tester = build_tester(
            config, self.hooks.end_of_testing_hook if self.hooks else None, self.device
        )
        warmup_modules = (
            [self.model.backbone] if schedule["warmup_freeze"] == "requires_grad" else []
        )
        self._epoch_losses: list[torch.Tensor] = []
        return MetricLossTrainer(
            models={"trunk": trunk, "embedder": torch.nn.Identity()},
            optimizers=optimizers,
            batch_size=batch_size,
            loss_funcs={"metric_loss": loss},
            dataset=self.train_set,
            iterations_per_epoch=iterations,
            data_device=self.device,
            sampler=sampler,
            lr_schedulers=schedulers,
            dataloader_num_workers=config["data"]["num_workers"],
            end_of_iteration_hook=self._end_of_iteration,
            end_of_epoch_hook=self._end_of_epoch,
            amp=config["precision"]["amp"],
            channels_last=config["precision"]["channels_last"],
            warmup_epochs=schedule["warmup_epochs"],
            warmup_modules=warmup_modules,
            grad_clamp=config["gradients"]["clamp"],
            grad_norm_clip=config["gradients"]["max_norm"],
            progress_bar=config["output"]["progress_bar"] and self.rank == 0,
        )

    # ------------------------------------------------------------------ hooks
    def _end_of_iteration(self, trainer: MetricLossTrainer) -> None:
        if self.hooks is not None:
            self.hooks.end_of_iteration_hook(trainer)
        # kept on the device: converted once per epoch, not synchronised every iteration
        self._epoch_losses.append(torch.as_tensor(trainer.losses["total_loss"]).detach())

    def _end_of_epoch(self, trainer: MetricLossTrainer) -> bool:
        epoch, ev = trainer.epoch, self.config["eval"]
        loss = float(torch.stack(self._epoch_losses).double().mean())
        self._warn_loss_blowup(epoch, loss)
        entry: dict[str, Any] = {
            "epoch": epoch,
            "loss": loss,
            # every group's lr (PML's record keeper logs only the first group of each optimizer)
            "lr": {
                group.get("name", f"{key}.{i}"): group["lr"]
                for key, optimizer in trainer.optimizers.items()
                for i, group in enumerate(optimizer.param_groups)
            },
        }
        self._epoch_losses = []
        if self.rank == 0 and epoch >= ev["start_epoch"] and epoch % ev["every"] == 0:
            entry["metrics"] = self.evaluate(epoch)
        self.history.append(entry)
        if self.rank == 0:
            metrics = entry.get("metrics")
            primary = ev["primary_metric"]
            is_best = metrics is not None and (
                self.best is None or metrics[primary] > self.best["metrics"][primary]
            )
            if is_best:
                self.best = {"epoch": epoch, "metrics": metrics}
            extra = {"history": self.history, "best": self.best, "config": self.config}
            trainer.save_checkpoint(self.out_dir / LAST, **extra)
            if is_best:
                write_atomically(
                    self.out_dir / BEST, functools.partial(shutil.copyfile, self.out_dir / LAST)
                )
            self.write_results("running")
        if self.world_size > 1:
            dist.barrier()
        return True

    def _warn_loss_blowup(self, epoch: int, loss: float) -> None:
        losses = [h["loss"] for h in self.history if math.isfinite(h["loss"])]
        best = min(losses, default=None)
        if best is not None and best > 0 and loss > LOSS_BLOWUP_FACTOR * best:
            message = (
                f"{self.config['name']}: epoch {epoch} loss {loss:.4g} is {loss / best:.0f}x its "
                f"best {best:.4g}: the run may be diverging (lower the learning rate)"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    def evaluate(self, epoch: int) -> dict[str, float]:
        """Recall@K of the current model on the evaluation split(s), at every hierarchy level."""
        tester, sets, splits = self.tester, self.eval_sets, self.splits_to_eval
        metrics = evaluate_recall(tester, sets, splits, self.model, epoch)
        return {**metrics, **hierarchy_report.level_metrics(self.config, tester, sets, splits)}

    # ------------------------------------------------------------------ run
    def run(self) -> dict:
        """Train (resuming when asked); returns the results dict also written as JSON.

        Raises:
            NonFiniteLossError: the loss or the evaluation embeddings became NaN; ``last.pt``
                keeps the last good epoch. On this and any other error ``results.json`` says
                ``failed`` with the reason.
            ConfigError: ``resume`` with a config that differs from the checkpoint's.
        """
        try:
            start = self._resume() if self.resume else 1
            if self.rank == 0:
                (self.out_dir / "config.yaml").write_text(dump_config(self.config))
            if start <= self.config["schedule"]["epochs"]:
                self.trainer.train(start, self.config["schedule"]["epochs"])
            if self.rank == 0:
                hierarchy_report.finish(self)
            return self.write_results("finished") if self.rank == 0 else {}
        except BaseException as error:
            if self.rank == 0 and not isinstance(error, ConfigError | CheckpointError):
                try:
                    self.write_results("failed", f"{type(error).__name__}: {error}")
                except Exception as write_error:  # keep the original error
                    warnings.warn(
                        f"could not write results.json: {write_error}", RuntimeWarning, stacklevel=2
                    )
            raise
        finally:
            self.lock.release()

    def _resume(self) -> int:
        path = self.out_dir / LAST
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {path} to resume from")
        state = load_checkpoint(path, self.device)
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"{path} is not a pml-hyper run checkpoint: it has no config")
        changes = config_changes(state["config"], self.config)
        refused = [k for k in changes if not _matches(k, RESUME_SAFE_KEYS)]
        refused = [k for k in refused if not _matches(k, self.allow_config_change)]
        if refused:
            listed = ", ".join(
                f"{k} ({changes[k]['checkpoint']!r} -> {changes[k]['now']!r})" for k in refused
            )
            raise ConfigError(
                f"--resume: the config differs from the one {path} was trained with: {listed}. "
                "Restore it, or pass --allow-config-change KEY... to accept the change"
            )
        self.resume_config_changes = {
            k: v for k, v in changes.items() if not _matches(k, RESUME_SAFE_KEYS)
        }
        start = self.trainer.load_state_dict(state)
        self.history, self.best = state["history"], state["best"]
        return start

    def write_results(self, status: str, error: str | None = None) -> dict:
        """Write ``results.json`` (and ``curves.png``); returns the results dict."""
        last = next((h["metrics"] for h in reversed(self.history) if "metrics" in h), None)
        results = {
            "name": self.config["name"],
            "status": status,
            "error": error,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backbone": self.config["model"]["backbone"],
            "pretrained": self.config["model"]["pretrained"],
            "dataset": self.config["data"]["dataset"],
            "epochs_completed": self.history[-1]["epoch"] if self.history else 0,
            "best": self.best,
            "last": last,
            "history": self.history,
            "paper": self.config["paper"],
            "machine": machine(),
            "world_size": self.world_size,
            "resume_config_changes": self.resume_config_changes,
            "config": self.config,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=2)
        write_atomically(self.out_dir / "results.json", lambda p: p.write_text(text))
        if self.config["output"]["plots"] and self.history:
            plot_curves(self.history, self.out_dir / "curves.png", self.config["name"])
        return results


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    """Training loss and Recall@K per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_recall) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot([h["epoch"] for h in history], [h["loss"] for h in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title=title)
    evaluated = [h for h in history if "metrics" in h]
    for metric in dict.fromkeys(m for h in evaluated for m in h["metrics"]):
        found = [h for h in evaluated if metric in h["metrics"]]
        values = [100 * h["metrics"][metric] for h in found]
        ax_recall.plot([h["epoch"] for h in found], values, marker="o", label=metric)
    ax_recall.set(xlabel="epoch", ylabel="%", title="Recall@K (test)")
    if evaluated:
        ax_recall.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
