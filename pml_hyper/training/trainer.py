"""PML's ``MetricLossOnly`` with what the papers' recipes need (docs/pml.md#trainers, #amp;
docs/hist.md#recipe; docs/hier.md#optimizer)."""

from __future__ import annotations

import functools
import os
import pickle
import random
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import tqdm
from pytorch_metric_learning.trainers import MetricLossOnly
from pytorch_metric_learning.utils import common_functions as c_f

from ..utils.registry import lookup
from .distributed_loss_wrapper import DistributedLossWrapper

LAST, BEST = "last.pt", "best.pt"
"""File names of a run's latest and best checkpoints."""

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


CHECKPOINT_KEYS = ("epoch", "models")


class CheckpointError(ValueError):
    """A checkpoint file that is corrupt, truncated, or not a trainer checkpoint."""


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; nothing was stepped with it."""


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP / ``DistributedLossWrapper`` wrappers (what checkpoints hold)."""
    while isinstance(module, torch.nn.parallel.DistributedDataParallel | DistributedLossWrapper):
        module = module.module if hasattr(module, "module") else module.loss
    return module


class MetricLossTrainer(MetricLossOnly):
    """``MetricLossOnly`` plus mixed precision, channels_last, backbone warm-up, gradient
    clamping, NaN detection and full checkpoints; PML's hooks, testers and record-keeper logging
    work unchanged.

    Additions to ``MetricLossOnly``'s arguments (all keyword-only):

    Args:
        amp: ``"bf16"`` (autocast), ``"fp16"`` (autocast + ``GradScaler``) or ``None``. Only the
            models run under autocast: the embeddings are cast to float32 and the loss runs with
            autocast off, so proxies and prototypes stay float32 (PML's ``cast_types`` would turn
            them into half precision in place, docs/pml.md#parameters, #amp).
        channels_last: feed 4-D image batches in ``channels_last`` memory format.
        warmup_epochs: the first ``warmup_epochs`` epochs train with the parameters of
            ``warmup_modules`` frozen (``requires_grad=False``, docs/hist.md#warm-up); their
            previous ``requires_grad`` flags come back afterwards. HIER's variant (backbone lr 0,
            docs/hier.md#optimizer) is a learning-rate schedule instead: see ``optim.lr_lambdas``.
        warmup_modules: the modules frozen during warm-up (the backbone).
        grad_clamp: clamp every gradient element of the models and losses to ±value after
            unscaling (HIER's ``clip_gradients_value``, docs/hier.md#optimizer).
        grad_norm_clip: clip the global gradient norm of the models and losses (Hyp: 3).
        progress_bar: show a tqdm bar per epoch.
        end_of_step_hook: called with the trainer after each iteration's lr-scheduler step
            (where :meth:`state_dict` is a consistent mid-epoch checkpoint).

    ``loss_funcs["metric_loss"]`` may be a :class:`DistributedLossWrapper`; its loss-parameter
    gradients are averaged over ranks after every backward. ``sampler.set_epoch(epoch)`` is
    called at the start of each epoch when the sampler has it, and every epoch starts a fresh
    data iterator, so a run resumed at an epoch boundary, or within an epoch from a checkpoint
    taken in ``end_of_step_hook``, sees the same batches.

    A non-finite loss raises :class:`NonFiniteLossError` before anything is stepped.
    """

    def __init__(
        self,
        *args,
        amp: str | None = None,
        channels_last: bool = False,
        warmup_epochs: int = 0,
        warmup_modules: Sequence[torch.nn.Module] = (),
        grad_clamp: float | None = None,
        grad_norm_clip: float | None = None,
        progress_bar: bool = True,
        end_of_step_hook: Callable | None = None,
        **kwargs,
    ):
        self.amp_dtype = None if amp is None else lookup(AMP_DTYPES, amp, "amp")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.amp = amp
        self.channels_last = channels_last
        self.warmup_epochs = warmup_epochs
        self.warmup_modules = list(warmup_modules)
        self.grad_clamp = grad_clamp
        self.grad_norm_clip = grad_norm_clip
        self.progress_bar = progress_bar
        self.end_of_step_hook = end_of_step_hook or c_f.return_input
        self._frozen_flags: list[tuple[torch.nn.Parameter, bool]] = []
        self.epoch = 0
        self.iterations_done: int | None = None  # of self.epoch; None before training
        self._resume_position: dict | None = None
        self._batches_drawn = 0  # from the current data iterator
        super().__init__(*args, **kwargs)
        self.data_device = torch.device(self.data_device)
        self.scaler = torch.amp.GradScaler(self.data_device.type, enabled=amp == "fp16")

    def modify_schema(self) -> None:
        """Expect an optimizer only for models that have trainable parameters (no warning for
        an ``Identity`` embedder)."""
        self.schema["optimizers"].important = [
            f"{key}_optimizer"
            for key, model in self.models.items()
            if any(p.requires_grad for p in model.parameters())
        ]

    # ---------------------------------------------------------------- training loop
    def initialize_dataloader(self) -> None:
        """Build the DataLoader; iterators are created per epoch in :meth:`start_epoch`."""
        self.dataloader = c_f.get_train_dataloader(
            self.dataset,
            self.batch_size,
            self.sampler,
            self.dataloader_num_workers,
            self.collate_fn,
        )
        if not self.iterations_per_epoch:
            self.iterations_per_epoch = len(self.dataloader)

    def train(self, start_epoch: int = 1, num_epochs: int = 1) -> None:
        """Train epochs ``start_epoch..num_epochs`` (1-based, warm-up epochs included); after
        :meth:`load_state_dict` of a mid-epoch checkpoint, ``start_epoch`` continues at the
        checkpoint's next iteration.

        PML's ``BaseTrainer.train`` runs the same iteration (``forward_and_backward``,
        ``end_of_iteration_hook``, ``step_lr_schedulers``) but cannot be reused: it starts every
        epoch at iteration 0 (no mid-epoch resume), and its tqdm bar can neither be turned off
        nor avoid reading the loss (a device synchronisation) every iteration.
        """
        self.initialize_dataloader()
        for self.epoch in range(start_epoch, num_epochs + 1):
            first = self.start_epoch()
            bar = tqdm.tqdm(
                range(first, self.iterations_per_epoch),
                desc=f"epoch {self.epoch}/{num_epochs}",
                initial=first,
                total=self.iterations_per_epoch,
                disable=not self.progress_bar,
                leave=False,
            )
            for self.iteration in bar:
                self.forward_and_backward()
                self.end_of_iteration_hook(self)
                if self.progress_bar:  # reading the loss waits for the device
                    bar.set_postfix(loss=f"{self._loss_value('total_loss'):.4f}")
                self.step_lr_schedulers(end_of_epoch=False)
                self.iterations_done = self.iteration + 1
                self.end_of_step_hook(self)
            self.step_lr_schedulers(end_of_epoch=True)
            self.zero_losses()
            if self.end_of_epoch_hook(self) is False:
                break
        self.set_warmup(False)

    def start_epoch(self) -> int:
        """Set up ``self.epoch``: ``sampler.set_epoch``, a fresh data iterator (so an epoch's
        batches depend on the epoch alone), warm-up freezing, train mode; returns the first
        iteration (0, or a mid-epoch checkpoint's next one)."""
        position, self._resume_position = self._resume_position, None
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.set_warmup(self.epoch <= self.warmup_epochs)
        self.set_to_train()
        c_f.LOGGER.info("TRAINING EPOCH %d", self.epoch)
        self.iterations_done = 0
        if position is None:
            self._start_pass(0)
            return 0
        # the checkpoint's pass over the data again, from the RNG state it began with (the same
        # sampler order, shuffling and worker seeds), less the batches it had consumed; then
        # the RNG state of the checkpoint, for the next batch's augmentation and the model
        set_rng_state(position["pass_rng"])
        self._start_pass(position["pass_iteration"])
        for _ in range(position["iteration"] - position["pass_iteration"]):
            next(self.dataloader_iter)
            self._batches_drawn += 1
        set_rng_state(position["rng"])
        self.iterations_done = position["iteration"]
        return position["iteration"]

    def _start_pass(self, iteration: int) -> None:
        """A new iterator over the DataLoader, remembering the RNG state it starts from."""
        self._pass = {"pass_iteration": iteration, "pass_rng": rng_state()}
        self.dataloader_iter = iter(self.dataloader)
        self._batches_drawn = 0

    def get_batch(self):
        if self._batches_drawn == len(self.dataloader):  # PML would start a new pass: record it
            self._start_pass(self.iteration)
        self._batches_drawn += 1
        return super().get_batch()

    def set_warmup(self, active: bool) -> None:
        """Freeze (``active``) or restore the parameters of ``warmup_modules``."""
        if active and not self._frozen_flags:
            params = [p for m in self.warmup_modules for p in m.parameters()]
            self._frozen_flags = [(p, p.requires_grad) for p in params]
            for p in params:
                p.requires_grad_(False)
        elif not active and self._frozen_flags:
            for p, flag in self._frozen_flags:
                p.requires_grad_(flag)
            self._frozen_flags = []

    # ---------------------------------------------------------------- one iteration
    def get_trunk_output(self, data: torch.Tensor) -> torch.Tensor:
        data = c_f.to_device(data, device=self.data_device, dtype=self.dtype)
        if self.channels_last and data.ndim == 4:
            data = data.contiguous(memory_format=torch.channels_last)
        return self.models["trunk"](data)

    def compute_embeddings(self, data: torch.Tensor) -> torch.Tensor:
        """Embeddings under autocast (when ``amp``), returned in float32 (or float64)."""
        with torch.autocast(
            self.data_device.type, dtype=self.amp_dtype, enabled=self.amp is not None
        ):
            embeddings = super().compute_embeddings(data)
        return embeddings if embeddings.dtype == torch.float64 else embeddings.float()

    def maybe_get_metric_loss(self, embeddings, labels, indices_tuple):
        if not bool(torch.isfinite(embeddings).all()):
            raise NonFiniteLossError(
                f"non-finite training embeddings at epoch {self.epoch}, iteration "
                f"{self.iteration}: the run diverged; training stopped before stepping, the last "
                "good checkpoint is kept. Lower the learning rates, enable a gradient clamp, or "
                "train in float32 (amp: null)."
            )
        with torch.autocast(self.data_device.type, enabled=False):
            return super().maybe_get_metric_loss(embeddings, labels, indices_tuple)

    def backward(self) -> None:
        total = self.losses["total_loss"]
        if not torch.isfinite(torch.as_tensor(total)).all():
            raise NonFiniteLossError(
                f"non-finite training loss {self._loss_value('total_loss')} at epoch "
                f"{self.epoch}, iteration {self.iteration} (losses: {self._loss_summary()}); "
                "training stopped before stepping, the last good checkpoint is kept. Lower the "
                "learning rates, enable a gradient clamp, or train in float32 (amp: null)."
            )
        self.scaler.scale(total).backward()
        for loss in self.loss_funcs.values():
            if isinstance(loss, DistributedLossWrapper):
                loss.synchronize_gradients()

    def _loss_value(self, name: str) -> float:
        return float(torch.as_tensor(self.losses[name]).detach())

    def _loss_summary(self) -> str:
        return ", ".join(f"{k}={self._loss_value(k):.4g}" for k in self.losses)

    def clip_gradients(self) -> None:
        if self.scaler.is_enabled():
            for optimizer in self._active_optimizers():
                self.scaler.unscale_(optimizer)
        super().clip_gradients()
        if self.grad_clamp is None and self.grad_norm_clip is None:
            return
        params = [p for p in self._trainable_parameters() if p.grad is not None]
        if self.grad_clamp is not None:
            torch.nn.utils.clip_grad_value_(params, self.grad_clamp)
        if self.grad_norm_clip is not None:
            torch.nn.utils.clip_grad_norm_(params, self.grad_norm_clip)

    def step_optimizers(self) -> None:
        if not self.scaler.is_enabled():
            super().step_optimizers()
            return
        for optimizer in self._active_optimizers():
            self.scaler.step(optimizer)
        self.scaler.update()

    def _active_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            v
            for k, v in self.optimizers.items()
            if c_f.regex_replace("_optimizer$", "", k) not in self.freeze_these
        ]

    def _trainable_parameters(self) -> list[torch.nn.Parameter]:
        modules = [*self.models.values(), *self.loss_funcs.values()]
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        """Everything a resumed run needs, after the epoch ``self.epoch`` finished, or within it
        (``position``: the iterations done, and where and with which RNG state the current
        pass over the data began)."""
        done = self.iterations_done
        within = done is not None and done < self.iterations_per_epoch
        return {
            "epoch": self.epoch,
            "position": {**self._pass, "iteration": done, "rng": rng_state()} if within else None,
            "iterations_per_epoch": self.iterations_per_epoch,
            "models": {k: unwrap(v).state_dict() for k, v in self.models.items()},
            "loss_funcs": {k: unwrap(v).state_dict() for k, v in self.loss_funcs.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "lr_schedulers": {k: v.state_dict() for k, v in self.lr_schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore :meth:`state_dict`; returns the epoch to continue from (the checkpoint's own
        when it was taken within an epoch: :meth:`train` then starts at its next iteration).

        The optimizers' hyperparameters and the ``LambdaLR`` base lrs stay those this trainer
        was built with (a resumed run's config: a changed ``optimizer.lr`` takes effect); the
        checkpoint gives the optimizer states (moments) and the schedules' positions.
        """
        saved = state.get("iterations_per_epoch")
        if saved is not None and saved != self.iterations_per_epoch:
            raise ValueError(
                f"the checkpoint's epochs have {saved} iterations, this run's "
                f"{self.iterations_per_epoch}: its lr schedules and position count the former"
            )
        for group in ("models", "loss_funcs"):
            for key, module in getattr(self, group).items():
                unwrap(module).load_state_dict(state[group][key])
        built = {
            key: [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            for key, opt in self.optimizers.items()
        }
        base_lrs = {key: list(s.base_lrs) for key, s in self.lr_schedulers.items()}
        for group in ("optimizers", "lr_schedulers"):
            for key, obj in getattr(self, group).items():
                obj.load_state_dict(state[group][key])
        for key, optimizer in self.optimizers.items():
            for group, hyperparameters in zip(optimizer.param_groups, built[key], strict=True):
                group.update(hyperparameters)
        for key, scheduler in self.lr_schedulers.items():
            if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
                scheduler.base_lrs = base_lrs[key]
                groups = scheduler.optimizer.param_groups
                for group, base, factor in zip(
                    groups, scheduler.base_lrs, scheduler.lr_lambdas, strict=True
                ):
                    group["lr"] = base * factor(scheduler.last_epoch)
                scheduler._last_lr = [g["lr"] for g in groups]
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        self._resume_position = state.get("position")
        return self.epoch if self._resume_position else self.epoch + 1

    def save_checkpoint(self, path: str | Path, **extra) -> None:
        """Write :meth:`state_dict` (plus ``extra`` entries) atomically to ``path``."""
        write_atomically(path, functools.partial(torch.save, {**self.state_dict(), **extra}))

    def load_checkpoint(self, path: str | Path) -> int:
        """Load a :meth:`save_checkpoint` file; returns the epoch to continue from."""
        return self.load_state_dict(load_checkpoint(path, self.data_device))


def write_atomically(path: str | Path, write: Callable[[Path], object]) -> None:
    """Call ``write`` on a temporary file unique to this call (``<path>.<pid>.<random>.partial``),
    then rename it to ``path`` (an interrupted write never leaves a truncated ``path``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.partial")
    try:
        write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def load_checkpoint(path: str | Path, map_location: torch.device | str = "cpu") -> dict:
    """Read a checkpoint written by :meth:`MetricLossTrainer.save_checkpoint`, with
    ``weights_only=True`` (tensors and plain Python containers only, never arbitrary objects).

    Raises:
        FileNotFoundError: ``path`` is missing, or a folder.
        CheckpointError: ``path`` is empty, truncated, not a torch file, or a torch file that is
            not a trainer checkpoint (e.g. a bare ``state_dict``).
    """
    path = Path(path)
    if path.is_dir():
        raise FileNotFoundError(f"checkpoint {path} is a folder: pass a .pt file")
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes), not a pml-hyper checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain containers, so it "
            f"is not a pml-hyper checkpoint and is not loaded ({error.__class__.__name__})"
        ) from None
    except Exception as error:  # truncated or random bytes fail anywhere in the unpickler
        raise CheckpointError(
            f"checkpoint {path} is truncated or not a torch checkpoint file ({error})"
        ) from None
    missing = [k for k in CHECKPOINT_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(
            f"{path} is not a pml-hyper trainer checkpoint: no {', '.join(missing)} "
            "(a bare state_dict or another program's file?)"
        )
    return state


def rng_state() -> dict:
    """Python, numpy and torch (CPU and CUDA) RNG states, in a ``weights_only``-safe form.

    numpy's legacy global state is included because PML's samplers (``MPerClassSampler``) and
    user transforms draw from it.
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    """Restore :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    legacy = (kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached)
    np.random.set_state(legacy)  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 (PML's samplers use the global state)
    torch.manual_seed(seed)
