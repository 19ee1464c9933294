"""What a run reports about label hierarchies and the learned tree: Recall@K at every level of
the evaluation set's hierarchy (each evaluation), dendrogram purity of the final model's
embeddings and the Poincaré-disk picture ``disk.png`` (after the last epoch)."""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..evaluation import dendrogram_purity, level_accuracies
from ..models import Geometry, geometry_of
from .builders import build_loss_terms, build_tester, config_geometry, resolve_device
from .config import ConfigError
from .evaluate import load_checkpoint_model

DISK_PLOT = "disk.png"
# samples drawn on the disk (UMAP on more is slow and unreadable)
DISK_MAX_POINTS = 2000


def dataset_hierarchy(dataset) -> tuple[tuple[str, ...], np.ndarray, Any] | None:
    """``(level names, (N, L) hierarchy, base dataset)`` of ``dataset``, through subset wrappers
    that have ``dataset`` and ``indices`` attributes; ``None`` without a hierarchy of at least
    two levels (or when the dataset cannot provide it)."""
    chain = []
    base = dataset
    while not hasattr(base, "hierarchy_levels") and hasattr(base, "dataset"):
        chain.append(np.asarray(base.indices))
        base = base.dataset
    levels = tuple(getattr(base, "hierarchy_levels", ()))
    if len(levels) < 2:
        return None
    try:
        hierarchy = np.asarray(base.hierarchy)
    except ValueError:  # the dataset's coarse labels are unavailable (its message says why)
        return None
    for indices in reversed(chain):
        hierarchy = hierarchy[indices]
    if len(hierarchy) != len(dataset):
        raise ValueError(
            f"{type(dataset).__name__}: hierarchy has {len(hierarchy)} rows for "
            f"{len(dataset)} items"
        )
    return levels, hierarchy, base


def run_hierarchy(config: dict, eval_sets: dict) -> tuple[tuple[str, ...], dict, dict] | None:
    """``(levels, {split: hierarchy}, {split: base dataset})`` of the evaluation sets when
    ``eval.hierarchy`` is on and every evaluation set has the same hierarchy, else ``None``."""
    if not config["eval"]["hierarchy"]:
        return None
    found = {split: dataset_hierarchy(dataset) for split, dataset in eval_sets.items()}
    if any(f is None for f in found.values()):
        return None
    levels = {f[0] for f in found.values()}
    if len(levels) != 1:
        return None
    return (
        levels.pop(),
        {s: f[1] for s, f in found.items()},
        {s: f[2] for s, f in found.items()},
    )


def purity_level(config: dict, levels: tuple[str, ...]) -> str:
    """``eval.purity_level``, by default the second level (the first coarse one)."""
    name = config["eval"]["purity_level"]
    if name is None:
        return levels[1]
    if name not in levels:
        raise ConfigError(
            f"eval.purity_level {name!r} is not a level of the evaluation set; its levels are "
            f"{', '.join(levels)}"
        )
    return name


def wants_disk_plot(config: dict, geometry: Geometry) -> bool:
    """Whether a run draws ``disk.png``: ``output.disk_plot`` and a model in the ball."""
    return bool(config["output"]["disk_plot"]) and geometry.hyperbolic


def check(config: dict, eval_sets: dict) -> None:
    """Errors before training: a ``purity_level`` the evaluation set lacks, a disk plot
    without ``umap-learn``/``matplotlib``."""
    if config["eval"]["purity_level"] is not None:
        found = run_hierarchy(config, eval_sets)
        if found is None:
            raise ConfigError(
                f"eval.purity_level is {config['eval']['purity_level']!r}, but the evaluation "
                "set has no label hierarchy (or eval.hierarchy is false)"
            )
        purity_level(config, found[0])
    if wants_disk_plot(config, config_geometry(config)):
        missing = [m for m in ("umap", "matplotlib") if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(
                f"output.disk_plot needs {' and '.join(missing)}: pip install 'pml-hyper[demo]', "
                "or pass --set output.disk_plot=false"
            )


def level_metrics(config: dict, tester, eval_sets: dict, splits_to_eval: list) -> dict:
    """``{"<level>/recall_at_K": value}`` for every coarse level (the finest level is the
    tester's own Recall@K), from the embeddings of the tester's latest ``test`` call."""
    found = run_hierarchy(config, eval_sets)
    embedded = getattr(tester, "last_embeddings", None)
    if found is None or embedded is None:
        return {}
    levels, hierarchy, _ = found
    query, references = splits_to_eval[0]
    if list(references) == [query]:
        reference = reference_labels = None
    else:
        reference = torch.cat([embedded[r][0] for r in references])
        reference_labels = np.concatenate([hierarchy[r][:, 1:] for r in references])
    calculator = tester.accuracy_calculator
    accuracies = level_accuracies(
        calculator,
        embedded[query][0],
        hierarchy[query][:, 1:],
        reference,
        reference_labels,
        level_names=levels[1:],
    )
    names = calculator.recall_metric_names()
    return {f"{level}/{m}": float(values[m]) for level, values in accuracies.items() for m in names}


def hier_proxies(loss_terms) -> torch.Tensor | None:
    """The points of the ball of every :class:`~pml_hyper.losses.HIERLoss` term's proxies,
    stacked; ``None`` without one."""
    from ..losses import HIERLoss

    proxies = []
    with torch.no_grad():
        for term in loss_terms:
            if isinstance(term, HIERLoss):
                proxies.append(term.to_poincare(term.lcas.float()).detach().cpu())
    return torch.cat(proxies) if proxies else None


def checkpoint_proxies(config: dict, state: dict) -> torch.Tensor | None:
    """:func:`hier_proxies` of a run checkpoint: its HIER terms rebuilt from the config, their
    proxy parameters (``lcas``) read from the checkpoint's loss state in term order."""

    terms = [t for t in config["loss"]["terms"] if t["type"] == "HIERLoss"]
    if not terms:
        return None
    loss_state = state.get("loss_funcs", {}).get("metric_loss", {})
    saved = [v for k, v in loss_state.items() if k == "lcas" or k.endswith(".lcas")]
    if len(saved) != len(terms):
        raise ValueError(
            f"the checkpoint's config has {len(terms)} HIERLoss term(s) but its loss state "
            f"holds {len(saved)} proxy tensor(s)"
        )
    built = build_loss_terms({**config, "loss": {"terms": terms}}, num_classes=1)
    for loss, lcas in zip(built, saved, strict=True):
        loss.lcas.data = lcas.detach().to("cpu", torch.float32)
    return hier_proxies(built)


def disk_figure(
    config: dict,
    geometry: Geometry,
    embeddings: torch.Tensor,
    labels: np.ndarray,
    proxies: torch.Tensor | None,
    level_names=None,
):
    """:func:`~pml_hyper.visualization.poincare_disk` of a run's embeddings (the curvature of
    the model's ``geometry``, at most ``DISK_MAX_POINTS`` samples, seeded with the run's seed)."""
    from ..visualization import poincare_disk

    return poincare_disk(
        embeddings.detach().cpu(),
        labels,
        proxies=proxies,
        c=geometry.c,
        level_names=level_names,
        max_points=DISK_MAX_POINTS,
        seed=config["seed"],
    )


def colour_labels(found, split: str, level: str | None, labels) -> tuple[np.ndarray, Any]:
    """Labels (and their names, when the dataset has them) of ``level`` of ``split``;
    the class labels when there is no hierarchy and no level is asked for."""
    if found is None:
        if level is not None:
            raise ValueError(f"level {level!r} asked for, but the {split} split has no hierarchy")
        return np.asarray(torch.as_tensor(labels).cpu()).reshape(-1), None
    levels, hierarchy, bases = found
    if level not in levels:
        raise ValueError(f"the {split} split has no level {level!r}; its levels are {levels}")
    names = getattr(bases[split], "level_names", {})
    names = names.get(level) if isinstance(names, dict) else None
    return hierarchy[split][:, levels.index(level)], names


def purity_metrics(
    config: dict, geometry: Geometry, found, split: str, embeddings: torch.Tensor
) -> dict:
    """``{"<purity level>/dendrogram_purity": value}`` of ``split``'s embeddings under the
    model's ``geometry`` (Poincaré distance in the ball, cosine otherwise); ``{}`` without a
    hierarchy (``found`` from :func:`run_hierarchy`)."""
    if found is None:
        return {}
    levels, hierarchy, _ = found
    level = purity_level(config, levels)
    column = hierarchy[split][:, levels.index(level)]
    if geometry.hyperbolic:
        purity = dendrogram_purity(embeddings, column, distance="poincare", c=geometry.c)
    else:
        purity = dendrogram_purity(embeddings, column, distance="cosine")
    return {f"{level}/dendrogram_purity": purity}


def finish(runner) -> None:
    """After the last epoch: ``<level>/dendrogram_purity`` of the final model's query
    embeddings into the last epoch's metrics (when it was evaluated), and ``disk.png`` in the
    run folder for a model in the Poincaré ball (``output.disk_plot``)."""
    config = runner.config
    geometry = geometry_of(runner.model)
    found = run_hierarchy(config, runner.eval_sets)
    disk = wants_disk_plot(config, geometry)
    history = runner.bookkeeper.history
    if not history or (found is None and not disk):
        return
    query = runner.splits_to_eval[0][0]
    entry = history[-1]
    embedded = runner.tester.last_embeddings if "metrics" in entry else None
    if embedded is None:  # the final model was not evaluated in this process
        embeddings, labels = runner.tester.get_all_embeddings(runner.eval_sets[query], runner.model)
    else:
        embeddings, labels = embedded[query]
    level = None
    if found is not None:
        level = purity_level(config, found[0])
        ((name, purity),) = purity_metrics(config, geometry, found, query, embeddings).items()
        if "metrics" in entry:
            entry["metrics"][name] = purity
        else:
            warnings.warn(
                f"{config['name']}: the last epoch was not evaluated; its dendrogram purity "
                f"({level}) {purity:.4f} is not in results.json",
                RuntimeWarning,
                stacklevel=2,
            )
    if disk:
        colours, names = colour_labels(found, query, level, labels)
        figure = disk_figure(
            config, geometry, embeddings, colours, hier_proxies(runner.loss_terms), names
        )
        figure.savefig(Path(runner.out_dir) / DISK_PLOT, dpi=150)


def visualize_checkpoint(
    path: str | Path,
    out: str | Path,
    split: str | None = None,
    level: str | None = None,
    data_root: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Path:
    """Draw a checkpoint's embeddings of ``split`` (default: its config's query split) on the
    Poincaré disk, coloured by hierarchy ``level`` (default: the purity level when the split
    has a hierarchy, else the classes), with HIER's proxies when the run has a HIERLoss term;
    writes the PNG ``out`` and returns its path.

    Raises:
        ValueError: a Euclidean (``hist``) head, a split or level the checkpoint's data lacks.
    """

    device = resolve_device(device)
    config, state, model, eval_sets, splits = load_checkpoint_model(path, data_root, (), device)
    geometry = geometry_of(model)
    if not geometry.hyperbolic:
        raise ValueError(
            f"{path} has a {config['model']['head']!r} head (cosine geometry): the Poincaré "
            "disk needs a hyperbolic head (hier or hyp)"
        )
    split = splits[0][0] if split is None else split
    if split not in eval_sets:
        raise ValueError(
            f"the checkpoint's data has no split {split!r}; its evaluation splits are "
            f"{', '.join(eval_sets)}"
        )
    found = run_hierarchy({**config, "eval": {**config["eval"], "hierarchy": True}}, eval_sets)
    if level is None and found is not None:
        level = purity_level(config, found[0])
    print(f"embedding the {split} split ({len(eval_sets[split])} images)", flush=True)
    embeddings, labels = build_tester(config, model, device=device).get_all_embeddings(
        eval_sets[split], model
    )
    colours, names = colour_labels(found, split, level, labels)
    figure = disk_figure(
        config, geometry, embeddings, colours, checkpoint_proxies(config, state), names
    )
    out = Path(out)
    figure.savefig(out, dpi=150)
    return out
