"""Build a run from a config (datasets, model, losses, optimizers, schedules, tester), train it
with evaluation and checkpoints, and write its results JSON and plots."""

from __future__ import annotations

import datetime
import functools
import importlib.util
import json
import math
import os
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from pytorch_metric_learning.utils import logging_presets

from ..data import (
    UniqueClassSampler,
)
from . import hierarchy_report
from .builders import (
    build_datasets,
    build_loss_terms,
    build_model_on,
    build_tester,
    combine_losses,
    resolve_device,
)
from .config import ConfigError, config_changes, dump_config, matches_prefix
from .distributed_loss_wrapper import DistributedLossWrapper, is_distributed
from .evaluate import evaluate_recall
from .optim import build_optimizers
from .results import build_record_keeper, check_output_dir, machine, plot_curves
from .run_lock import RunLock
from .trainer import (
    BEST,
    LAST,
    CheckpointError,
    MetricLossTrainer,
    load_checkpoint,
    seed_everything,
    write_atomically,
)

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
            config, self.model, self.hooks.end_of_testing_hook if self.hooks else None, self.device
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
        refused = [k for k in changes if not matches_prefix(k, RESUME_SAFE_KEYS)]
        refused = [k for k in refused if not matches_prefix(k, self.allow_config_change)]
        if refused:
            listed = ", ".join(
                f"{k} ({changes[k]['checkpoint']!r} -> {changes[k]['now']!r})" for k in refused
            )
            raise ConfigError(
                f"--resume: the config differs from the one {path} was trained with: {listed}. "
                "Restore it, or pass --allow-config-change KEY... to accept the change"
            )
        self.resume_config_changes = {
            k: v for k, v in changes.items() if not matches_prefix(k, RESUME_SAFE_KEYS)
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
