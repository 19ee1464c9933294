"""Build a run from a config (datasets, model, losses, optimizers, schedules, tester), train it
with evaluation and checkpoints, and write its results JSON and plots."""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_metric_learning.utils import logging_presets

from . import hierarchy_report
from .bookkeeper import RunBookkeeper
from .builders import (
    build_datasets,
    build_loss_terms,
    build_model_on,
    build_sampler,
    build_tester,
    check_meaningful,
    combine_losses,
    resolve_device,
)
from .config import RESUME_SAFE_KEYS, ConfigError, dump_config, resume_changes
from .distributed_loss_wrapper import DistributedLossWrapper, init_distributed
from .evaluate import evaluate_recall
from .head_warmup import warm_up_head
from .optim import build_optimizers
from .results import build_record_keeper, check_output_dir
from .run_lock import RunLock
from .trainer import LAST, CheckpointError, MetricLossTrainer, load_checkpoint, seed_everything

__all__ = ["RESUME_SAFE_KEYS", "Runner"]


class Runner:
    """One training run of a config: ``Runner(config, data_root).run()``.

    Output folder (``output.dir``, ``{name}`` filled in): ``config.yaml`` when the run starts,
    ``last.pt`` after every epoch (and every ``output.checkpoint_every_iterations``
    iterations), ``best.pt`` (a copy of ``last.pt``) at the best
    ``eval.primary_metric``, ``results.json`` after every epoch, ``curves.png`` (loss and
    Recall@K per epoch), PML record-keeper logs. Under ``torchrun`` (``WORLD_SIZE`` > 1) it runs
    DDP (NCCL on GPU, gloo on CPU) with :class:`DistributedLossWrapper`; rank 0 evaluates and
    writes. The per-epoch bookkeeping (history, best, checkpoints, results) is
    :attr:`bookkeeper`'s (:class:`~pml_hyper.training.bookkeeper.RunBookkeeper`).

    Args:
        config: a validated config (:func:`~pml_hyper.training.config.load_config`).
        data_root: overrides ``data.root``.
        resume: continue from ``last.pt`` in the output folder; the config must equal the
            checkpoint's except for ``RESUME_SAFE_KEYS`` and ``allow_config_change``.
        allow_config_change: dotted keys (or prefixes) a resumed run may change; the changes
            take effect (optimizer hyperparameters and lr schedules from the new config) and
            are recorded in ``results.json`` (``resume_config_changes``); keys that could not
            take effect mid-run (``config.FIXED_ON_RESUME``) are refused.
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
        self.out_dir = Path(config["output"]["dir"].format(name=config["name"]))
        check_meaningful(config)
        self.rank, self.world_size = init_distributed()
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
        self.trainer = self._build_trainer()

    def _build_datasets(self, data_root: str | Path | None) -> tuple[Any, dict, list]:
        """Train set, evaluation sets and splits to evaluate (subclasses may choose others)."""
        return build_datasets(self.config, data_root)

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
        sampler = build_sampler(config, self.train_set, self.world_size)
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
        self.bookkeeper = RunBookkeeper(
            config, self.out_dir, self.evaluate, self.hooks, self.rank, self.world_size
        )
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
            end_of_iteration_hook=self.bookkeeper.end_of_iteration,
            end_of_step_hook=self.bookkeeper.end_of_step,
            end_of_epoch_hook=self.bookkeeper.end_of_epoch,
            amp=config["precision"]["amp"],
            channels_last=config["precision"]["channels_last"],
            warmup_epochs=schedule["warmup_epochs"],
            warmup_modules=warmup_modules,
            grad_clamp=config["gradients"]["clamp"],
            grad_norm_clip=config["gradients"]["max_norm"],
            progress_bar=config["output"]["progress_bar"] and self.rank == 0,
        )

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
            steps = self.config["schedule"]["head_warmup_steps"]
            if steps and not self.resume:
                losses = warm_up_head(self)
                if self.rank == 0:
                    print(
                        f"head warm-up: {steps} steps on cached features, loss "
                        f"{losses[0]:.4f} -> {np.mean(losses[-10:]):.4f}",
                        flush=True,
                    )
            if self.rank == 0:
                (self.out_dir / "config.yaml").write_text(dump_config(self.config))
            if start <= self.config["schedule"]["epochs"]:
                self.trainer.train(start, self.config["schedule"]["epochs"])
            if self.rank == 0:
                hierarchy_report.finish(self)
            return self.bookkeeper.write_results("finished") if self.rank == 0 else {}
        except BaseException as error:
            if self.rank == 0 and not isinstance(error, ConfigError | CheckpointError):
                self.bookkeeper.fail(error)
            raise
        finally:
            self.lock.release()

    def _resume(self) -> int:
        """Load ``last.pt`` (trainer and bookkeeper); returns the epoch to continue from."""
        path = self.out_dir / LAST
        if not path.is_file():
            raise FileNotFoundError(f"--resume: no checkpoint {path} to resume from")
        state = load_checkpoint(path, self.device)
        if not isinstance(state.get("config"), dict):
            raise CheckpointError(f"{path} is not a pml-hyper run checkpoint: it has no config")
        changes = resume_changes(state["config"], self.config, self.allow_config_change, path)
        try:
            start = self.trainer.load_state_dict(state)
        except (RuntimeError, ValueError, KeyError) as error:
            if not changes:
                raise
            raise ConfigError(
                f"--resume: {path} does not fit the changed config ({', '.join(changes)}): {error}"
            ) from None
        # checkpoints before the bookkeeper kept its state at the top level
        self.bookkeeper.load_state_dict(state.get("bookkeeper", state))
        self.bookkeeper.resume_config_changes = changes
        return start
