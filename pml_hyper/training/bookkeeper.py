"""A run's per-epoch bookkeeping, as the trainer's hooks: evaluation schedule, history and best
epoch, the loss blow-up warning, ``last.pt``/``best.pt`` and ``results.json``."""

from __future__ import annotations

import datetime
import functools
import json
import math
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .results import machine, plot_curves
from .trainer import BEST, LAST, MetricLossTrainer, write_atomically

# an epoch loss this many times its best so far is warned about
LOSS_BLOWUP_FACTOR = 100.0


class RunBookkeeper:
    """The end-of-iteration, end-of-step and end-of-epoch hooks of a run's trainer.

    After every epoch it evaluates (``eval.every``, from ``eval.start_epoch``, on rank 0),
    appends the epoch's loss, lrs and metrics to :attr:`history`, keeps :attr:`best` (by
    ``eval.primary_metric``), writes ``last.pt`` (with :meth:`state_dict` as ``bookkeeper``),
    copies it to ``best.pt`` at a new best, and writes ``results.json`` (status ``running``).
    Every ``output.checkpoint_every_iterations`` iterations within an epoch it writes
    ``last.pt`` too. A non-finite loss stops the trainer before it steps
    (:class:`~pml_hyper.training.trainer.NonFiniteLossError`); :meth:`fail` then records it.

    Args:
        config: the run's config.
        out_dir: the run folder.
        evaluate: ``evaluate(epoch)`` → metrics of the current model.
        logging_hooks: PML's ``HookContainer`` of the record keeper (rank 0), or ``None``.
        rank, world_size: of this process in a distributed run.
    """

    def __init__(
        self,
        config: dict,
        out_dir: str | Path,
        evaluate: Callable[[int], dict[str, float]],
        logging_hooks: Any = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        self.evaluate = evaluate
        self.logging_hooks = logging_hooks
        self.rank, self.world_size = rank, world_size
        self.history: list[dict] = []
        self.best: dict | None = None
        self.resume_config_changes: dict[str, dict] = {}
        # kept on the device: converted once per epoch, not synchronised every iteration
        self._epoch_losses: list[torch.Tensor] = []

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """History, best epoch and the losses of the epoch in progress (for a resume)."""
        losses = torch.stack(self._epoch_losses) if self._epoch_losses else torch.zeros(0)
        return {"history": self.history, "best": self.best, "epoch_losses": losses}

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = state["history"], state["best"]
        self._epoch_losses = list(state.get("epoch_losses", torch.zeros(0)))

    # ------------------------------------------------------------------ hooks
    def end_of_iteration(self, trainer: MetricLossTrainer) -> None:
        if self.logging_hooks is not None:
            self.logging_hooks.end_of_iteration_hook(trainer)
        self._epoch_losses.append(torch.as_tensor(trainer.losses["total_loss"]).detach())

    def end_of_step(self, trainer: MetricLossTrainer) -> None:
        """``last.pt`` every ``output.checkpoint_every_iterations`` iterations of an epoch."""
        every, done = self.config["output"]["checkpoint_every_iterations"], trainer.iterations_done
        if every and self.rank == 0 and done % every == 0 and done < trainer.iterations_per_epoch:
            self.save(trainer)

    def end_of_epoch(self, trainer: MetricLossTrainer) -> bool:
        epoch, ev = trainer.epoch, self.config["eval"]
        loss = float(torch.stack(self._epoch_losses).double().mean())
        self.warn_loss_blowup(epoch, loss)
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
            metrics, primary = entry.get("metrics"), ev["primary_metric"]
            is_best = metrics is not None and (
                self.best is None or metrics[primary] > self.best["metrics"][primary]
            )
            if is_best:
                self.best = {"epoch": epoch, "metrics": metrics}
            self.save(trainer)
            if is_best:
                copy = functools.partial(shutil.copyfile, self.out_dir / LAST)
                write_atomically(self.out_dir / BEST, copy)
            self.write_results("running")
        if self.world_size > 1:
            dist.barrier()
        return True

    def save(self, trainer: MetricLossTrainer) -> None:
        """``last.pt``: the trainer's state, this bookkeeper's and the config."""
        trainer.save_checkpoint(
            self.out_dir / LAST, bookkeeper=self.state_dict(), config=self.config
        )

    def warn_loss_blowup(self, epoch: int, loss: float) -> None:
        losses = [h["loss"] for h in self.history if math.isfinite(h["loss"])]
        best = min(losses, default=None)
        if best is not None and best > 0 and loss > LOSS_BLOWUP_FACTOR * best:
            message = (
                f"{self.config['name']}: epoch {epoch} loss {loss:.4g} is {loss / best:.0f}x its "
                f"best {best:.4g}: the run may be diverging (lower the learning rate)"
            )
            warnings.warn(message, RuntimeWarning, stacklevel=2)

    # ------------------------------------------------------------------ results
    def write_results(self, status: str, error: str | None = None) -> dict:
        """Write ``results.json`` (and ``curves.png``); returns the results dict."""
        config, history = self.config, self.history
        last = next((h["metrics"] for h in reversed(history) if "metrics" in h), None)
        results = {
            "name": config["name"],
            "status": status,
            "error": error,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "backbone": config["model"]["backbone"],
            "pretrained": config["model"]["pretrained"],
            "dataset": config["data"]["dataset"],
            "epochs_completed": history[-1]["epoch"] if history else 0,
            "best": self.best,
            "last": last,
            "history": history,
            "paper": config["paper"],
            "machine": machine(),
            "world_size": self.world_size,
            "resume_config_changes": self.resume_config_changes,
            "config": config,
        }
        self.out_dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(results, indent=2)
        write_atomically(self.out_dir / "results.json", lambda p: p.write_text(text))
        if config["output"]["plots"] and history:
            plot_curves(history, self.out_dir / "curves.png", config["name"])
        return results

    def fail(self, error: BaseException) -> None:
        """``results.json`` with status ``failed`` and the error (a write error only warns)."""
        try:
            self.write_results("failed", f"{type(error).__name__}: {error}")
        except Exception as write_error:  # keep the original error
            warnings.warn(
                f"could not write results.json: {write_error}", RuntimeWarning, stacklevel=2
            )
