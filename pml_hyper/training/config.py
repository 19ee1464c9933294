"""YAML run configurations: shared bases (``defaults:``), schema defaults, validation (unknown
keys are errors) and ``--set`` overrides.

A recipe shows only what differs from its family's base: ``defaults: <path or list of paths>``
(relative to the recipe file) names the base files it starts from. Bases are read recursively
(a base may have its own ``defaults``) and deep-merged in order, later files winning and the
recipe itself last: mappings merge key by key, lists and scalars replace. A base need not be a
complete recipe; a cycle or a missing base is a :class:`ConfigError` naming the files. The merged
recipe then takes the ``--set`` overrides, and :data:`SCHEMA`'s defaults fill in what no file
sets. Paper
recipes: benchmarks/paper/*.yaml on benchmarks/paper/_base/; demo recipes:
pml_hyper/training/demo_recipes/*.yaml on ``_base.yaml``. Files named ``_base*`` are bases, not
recipes (:func:`recipe_files` skips them); ``pml-hyper train RECIPE --print-config`` prints the
resolved recipe."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """An invalid configuration: the message names the offending key."""


class _Free(dict):
    """Marks a free-form mapping in :data:`SCHEMA` (keyword arguments, paper numbers)."""


FREE = _Free()

LOSS_TERM: dict[str, Any] = {
    "type": "ProxyAnchorLoss",  # a class of pml_hyper.losses or pytorch_metric_learning.losses
    "weight": 1.0,  # weight in the sum of terms (MultipleLosses)
    "kwargs": FREE,  # constructor arguments; {"type": ..., ...} values build objects (distances)
    "param_groups": FREE,  # arguments of the loss's param_groups(lr=..., ...) helper, if it has one
    "lr_scale": 1.0,  # lr factor of the loss's parameters when it has no param_groups helper
}

SCHEMA: dict[str, Any] = {
    "name": "run",
    "description": "",
    "seed": 1,
    "paper": FREE,  # the published figures and their source, for the results table
    "data": {
        "dataset": "emoji",  # cub200, cars196, sop, inshop, emoji, synthetic
        "root": None,  # dataset folder; --data-root overrides it
        "max_classes": None,  # keep the first N classes of each split (demo, CI)
        "image_size": 224,
        "eval_crop_pct": 0.875,
        "interpolation": None,  # None = the backbone recipe's
        "train_augmentation": True,  # false: train on the evaluation transform (no crop, no flip)
        "batch_size": 32,  # per process
        "sampler": "random",  # random (shuffled, drop_last) or unique_class (HIER)
        "images_per_class": 2,
        # unique_class: true = a class's images with replacement (HIER), false = without,
        # when_short = without unless the class has fewer than images_per_class (Hyp)
        "replacement": True,
        "num_workers": 4,
        "eval_batch_size": 64,
        "synthetic": FREE,  # SyntheticImages arguments when dataset is synthetic
    },
    "model": {
        "backbone": "resnet50",  # a pml_hyper.models.BACKBONES or MODELS key ("tiny_cnn": tests)
        "pretrained": True,
        "checkpoint_path": None,
        "embedding_size": 512,
        "head": "hist",  # hist (Linear+LayerNorm), hier (LN+Linear+ToPoincare), hyp (no LN)
        "head_kwargs": FREE,  # PoincareHead arguments (c, clip_r, riemannian, layer_norm)
        "freeze_bn_stats": True,
        "freeze_bn_affine": False,
        "freeze_patch_embed": None,
    },
    "loss": {"terms": [LOSS_TERM]},
    "optimizer": {
        "name": "adam",  # adam (coupled L2 decay, HIST), adamw (HIER, Hyp), sgd
        "lr": 1.0e-4,
        "weight_decay": 0.0,
        "eps": 1.0e-8,
        "backbone_lr_scale": 1.0,
        "head_lr_scale": 1.0,
    },
    "schedule": {
        "epochs": 10,  # total, warm-up epochs included
        "warmup_epochs": 0,
        "warmup_freeze": "requires_grad",  # requires_grad (HIST) or lr (HIER: backbone lr 0)
        "lr_decay": "step",  # step, cosine or constant
        "step_epochs": 10,
        "gamma": 0.5,
        "min_lr_scale": 0.1,  # cosine floor
        "decay_counts_warmup": False,  # HIER's schedule counts warm-up epochs, HIST's does not
        "iterations_per_epoch": None,  # None = one pass of the sampler
        "head_warmup_steps": 0,  # steps on cached backbone features before epoch 1 (head_warmup)
    },
    "precision": {
        "amp": None,  # bf16, fp16 or null
        "channels_last": False,
    },
    "gradients": {
        "clamp": None,  # element-wise clamp to ±value (HIER: 10)
        "max_norm": None,  # global-norm clip (Hyp: 3)
    },
    "eval": {
        "every": 1,
        "start_epoch": 1,
        "k_values": [1, 2, 4, 8],
        "primary_metric": "recall_at_1",
        # when the evaluation set has a label hierarchy: Recall@K at every level
        # ("<level>/recall_at_K") and, after the last epoch, dendrogram purity
        "hierarchy": True,
        "purity_level": None,  # level of the dendrogram purity; None = the second level
    },
    "distributed": {
        # None = exact single-process gradients at any world size. P = the released HIER/Hyp
        # runs on P GPUs: the model gets 1/P of the full-batch gradient, loss parameters all of
        # it (DistributedLossWrapper(paper_world_size=P)); also with a single process.
        "paper_world_size": None,
    },
    "output": {
        "dir": "runs/{name}",
        "plots": True,
        "disk_plot": True,  # disk.png (Poincaré disk, UMAP) at the end of hyperbolic-head runs
        "progress_bar": True,
        "log_freq": 50,
        # also write last.pt every N iterations within an epoch (null = at epoch ends only); a
        # resumed run continues at the next iteration with the same batches and weights
        "checkpoint_every_iterations": None,
    },
}

# config keys a resumed run may change without --allow-config-change (prefixes of dotted keys)
RESUME_SAFE_KEYS = (
    "schedule.epochs",
    "output.progress_bar",
    "output.plots",
    "output.disk_plot",
    "output.checkpoint_every_iterations",
    "eval.hierarchy",  # hierarchy metrics are reported, never trained on
    "eval.purity_level",
    "output.log_freq",
    "output.dir",
    "data.num_workers",
    "data.root",
    "data.eval_batch_size",
)

# keys (regular expressions) whose change could not take effect in a resumed run, even allowed
FIXED_ON_RESUME = {
    r"optimizer\.name": "the checkpoint's optimizer state belongs to its optimizer",
    r"schedule\.iterations_per_epoch": "the lr schedules count the checkpoint's iterations",
    r"loss\.terms\.\d+\.type": "the checkpoint's loss parameters belong to its loss terms",
    r"model\.(backbone|head|embedding_size|pretrained|checkpoint_path)": (
        "the model's weights come from the checkpoint"
    ),
}

# boolean keys that also take these strings
_BOOL_CHOICES: dict[str, tuple[str, ...]] = {"data.replacement": ("when_short",)}

_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-4`` (no dot) as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML syntax (``1e-4``, ``true``, ``[1, 2]``, ``null``, strings)."""
    return yaml.load(text, Loader=_Loader)


DEFAULTS_KEY = "defaults"
"""The top-level key naming a recipe's base files (not part of the resolved config)."""


def load_config(path: str | Path, overrides: Iterable[str] = ()) -> dict:
    """Read a YAML config and its bases (``defaults:``, see the module docstring), apply
    ``key=value`` overrides (dotted keys, list indices as numbers: ``loss.terms.1.weight=0.5``),
    fill in the schema's defaults and validate.

    Raises:
        ConfigError: unknown key, wrong type, bad override, a missing base file or a cycle of
            ``defaults``, naming the key or the files.
        FileNotFoundError: ``path`` does not exist.
    """
    return build_config(load_recipe(path), overrides)


def load_recipe(path: str | Path) -> dict:
    """The recipe at ``path`` merged onto its bases (``defaults:``, recursively), without the
    schema's defaults, overrides or validation; the ``defaults`` key is removed.

    Raises:
        ConfigError: invalid YAML, a top level that is not a mapping, a bad ``defaults`` value,
            a missing base file or a cycle, naming the files.
        FileNotFoundError: ``path`` does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    return _resolve(path, ())


def recipe_chain(path: str | Path) -> list[Path]:
    """The files that make the recipe at ``path``, in merge order: its bases (depth first, each
    after its own bases) and the recipe itself last."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    chain: list[Path] = []

    def visit(file: Path, stack: tuple[Path, ...]) -> None:
        for base in _bases(file, _read(file), stack):
            visit(base, (*stack, file))
        if file not in chain:
            chain.append(file)

    visit(path.resolve(), ())
    return chain


def recipe_files(folder: str | Path) -> list[Path]:
    """The recipes of a folder: its ``*.yaml`` files, sorted, without bases (``_base*``)."""
    return sorted(p for p in Path(folder).glob("*.yaml") if not p.name.startswith("_base"))


def _read(path: Path) -> dict:
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return raw


def _bases(path: Path, raw: dict, stack: tuple[Path, ...]) -> list[Path]:
    """The base files ``raw`` names in ``defaults:``, checked for existence and cycles."""
    entries = raw.get(DEFAULTS_KEY)
    if entries is None:
        return []
    if isinstance(entries, str):
        entries = [entries]
    if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
        raise ConfigError(
            f"{path}: {DEFAULTS_KEY} must be a file path or a list of file paths, got {entries!r}"
        )
    bases = []
    for entry in entries:
        base = (path.parent / entry).resolve()
        if not base.is_file():
            raise ConfigError(f"{path}: base file {entry!r} ({base}) does not exist")
        if base in (*stack, path):
            cycle = [*stack[stack.index(base) :], path, base] if base in stack else [path, base]
            raise ConfigError(f"{DEFAULTS_KEY} cycle: {' -> '.join(str(p) for p in cycle)}")
        bases.append(base)
    return bases


def _resolve(path: Path, stack: tuple[Path, ...]) -> dict:
    path = path.resolve()
    raw = _read(path)
    merged: dict = {}
    for base in _bases(path, raw, stack):
        merged = deep_merge(merged, _resolve(base, (*stack, path)))
    own = {key: value for key, value in raw.items() if key != DEFAULTS_KEY}
    return deep_merge(merged, own)


def deep_merge(base: dict, update: dict) -> dict:
    """``update`` merged onto ``base`` (new dict, inputs unchanged): mappings key by key,
    recursively; lists, scalars and ``null`` in ``update`` replace what ``base`` has."""
    merged = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def build_config(raw: dict, overrides: Iterable[str] = ()) -> dict:
    """Defaults + ``raw`` + ``overrides``, validated (see :func:`load_config`). ``raw`` is a
    resolved recipe: its ``defaults:`` bases are files, which :func:`load_config` reads."""
    if DEFAULTS_KEY in raw:
        raise ConfigError(
            f"{DEFAULTS_KEY!r} names base files relative to a recipe file: use load_config(path)"
            " or load_recipe(path), not build_config"
        )
    config = _merge(SCHEMA, copy.deepcopy(raw), "")
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        _set(config, key.strip(), parse_value(text))
    config = _merge(SCHEMA, config, "")
    every = config["output"]["checkpoint_every_iterations"]
    if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
        raise ConfigError(
            f"output.checkpoint_every_iterations must be a positive integer or null, got {every!r}"
        )
    steps = config["schedule"]["head_warmup_steps"]
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ConfigError(f"schedule.head_warmup_steps must be an integer >= 0, got {steps!r}")
    return config


def _merge(schema: Any, value: Any, where: str) -> Any:
    """``value`` checked against ``schema``, with the schema's defaults filled in."""
    if isinstance(schema, _Free):
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if isinstance(schema, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where or 'the config'} must be a mapping, got {value!r}")
        unknown = sorted(set(value) - set(schema))
        if unknown:
            name = f"{where}.{unknown[0]}" if where else unknown[0]
            raise ConfigError(
                f"unknown config key {name!r}; allowed under {where or 'the top level'}: "
                f"{', '.join(schema)}"
            )
        return {
            key: _merge(default, value.get(key, copy.deepcopy(default)), _join(where, key))
            for key, default in schema.items()
        }
    if isinstance(schema, list) and schema and isinstance(schema[0], dict):
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{where} must be a non-empty list, got {value!r}")
        return [_merge(schema[0], item, f"{where}.{i}") for i, item in enumerate(value)]
    return _check_scalar(schema, value, where)


def _check_scalar(default: Any, value: Any, where: str) -> Any:
    if default is None or value is None:
        return value
    if isinstance(default, bool):
        choices = _BOOL_CHOICES.get(where, ())
        if not isinstance(value, bool) and value not in choices:
            allowed = " or ".join(("true", "false", *choices))
            raise ConfigError(f"{where} must be {allowed}, got {value!r}")
    elif isinstance(default, int | float):
        if isinstance(value, str) and _FLOAT.match(value):
            value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and value != int(value):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return type(default)(value) if isinstance(default, int) else float(value)
    elif isinstance(default, str) and not isinstance(value, str):
        raise ConfigError(f"{where} must be a string, got {value!r}")
    elif isinstance(default, list) and not isinstance(value, list):
        raise ConfigError(f"{where} must be a list, got {value!r}")
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _set(config: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node: Any = config
    schema: Any = SCHEMA
    for i, part in enumerate(parts):
        last = i == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {dotted!r}: {part!r} is not an index of a list")
            index: int | str = int(part)
            schema = schema[0]
        else:
            if not isinstance(schema, _Free) and part not in schema:
                raise ConfigError(f"unknown config key {'.'.join(parts[: i + 1])!r}")
            index = part
            schema = FREE if isinstance(schema, _Free) else schema[part]
        if last:
            node[index] = value
        else:
            node = node.setdefault(index, {}) if isinstance(node, dict) else node[index]


def dump_config(config: dict) -> str:
    """The config as YAML (what a results file records)."""
    return yaml.safe_dump(config, sort_keys=False)


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


def matches_prefix(key: str, prefixes: Iterable[str]) -> bool:
    """Whether dotted ``key`` is one of ``prefixes`` or inside one."""
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def config_changes(old: dict, new: dict) -> dict[str, dict]:
    """``{key: {"checkpoint": old, "now": new}}`` for every dotted key that differs."""
    a, b = flatten_config(old), flatten_config(new)
    return {
        k: {"checkpoint": a.get(k), "now": b.get(k)}
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    }


def resume_changes(old: dict, new: dict, allowed: Iterable[str], path: str | Path) -> dict:
    """The changes of a resumed run's config ``new`` from its checkpoint's ``old`` that are
    not :data:`RESUME_SAFE_KEYS` (what ``results.json`` records).

    Raises:
        ConfigError: a change neither safe nor ``allowed``, or one in :data:`FIXED_ON_RESUME`.
    """
    changes = config_changes(old, new)
    recorded = {k: v for k, v in changes.items() if not matches_prefix(k, RESUME_SAFE_KEYS)}
    listed = ", ".join(
        f"{k} ({v['checkpoint']!r} -> {v['now']!r})"
        for k, v in recorded.items()
        if not matches_prefix(k, allowed)
    )
    if listed:
        raise ConfigError(
            f"--resume: the config differs from the one {path} was trained with: {listed}. "
            "Restore it, or pass --allow-config-change KEY... to accept the change"
        )
    for key in recorded:
        for pattern, reason in FIXED_ON_RESUME.items():
            if re.fullmatch(pattern, key):
                raise ConfigError(
                    f"--resume: {key} cannot change in a resumed run ({reason}); restore it, "
                    "or start a new run"
                )
    return recorded
