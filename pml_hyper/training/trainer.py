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

    ``loss_funcs["metric_loss"]`` may be a :class:`DistributedLossWrapper`; its loss-parameter
    gradients are averaged over ranks after every backward. ``sampler.set_epoch(epoch)`` is
    called at the start of each epoch when the sampler has it, and every epoch starts a fresh
    data iterator, so a run resumed at an epoch boundary sees the same batches.

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
        **kwargs,
    ):
        if amp is not None and amp not in AMP_DTYPES:
            raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)} or None, got {amp!r}")
        if warmup_epochs < 0:
            raise ValueError(f"warmup_epochs must be >= 0, got {warmup_epochs}")
        self.amp = amp
        self.channels_last = channels_last
        self.warmup_epochs = warmup_epochs
        self.warmup_modules = list(warmup_modules)
        self.grad_clamp = grad_clamp
        self.grad_norm_clip = grad_norm_clip
        self.progress_bar = progress_bar
        self._frozen_flags: list[tuple[torch.nn.Parameter, bool]] = []
        self.epoch = 0
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
        """Build the DataLoader; iterators are created per epoch in :meth:`train`."""
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
        """Train epochs ``start_epoch..num_epochs`` (1-based, warm-up epochs included)."""
        self.initialize_dataloader()
        for self.epoch in range(start_epoch, num_epochs + 1):
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(self.epoch)
            self.dataloader_iter = iter(self.dataloader)
            self.set_warmup(self.epoch <= self.warmup_epochs)
            self.set_to_train()
            c_f.LOGGER.info("TRAINING EPOCH %d", self.epoch)
            bar = tqdm.tqdm(
                range(self.iterations_per_epoch),
                desc=f"epoch {self.epoch}/{num_epochs}",
                disable=not self.progress_bar,
                leave=False,
            )
            for self.iteration in bar:
                self.forward_and_backward()
                self.end_of_iteration_hook(self)
                if self.progress_bar:  # reading the loss waits for the device
                    bar.set_postfix(loss=f"{self._loss_value('total_loss'):.4f}")
                self.step_lr_schedulers(end_of_epoch=False)
            self.step_lr_schedulers(end_of_epoch=True)
            self.zero_losses()
            if self.end_of_epoch_hook(self) is False:
                break
        self.set_warmup(False)

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
            self.data_device.type, dtype=AMP_DTYPES.get(self.amp), enabled=self.amp is not None
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
        """Everything a resumed run needs, after the epoch ``self.epoch`` finished."""
        return {
            "epoch": self.epoch,
            "models": {k: unwrap(v).state_dict() for k, v in self.models.items()},
            "loss_funcs": {k: unwrap(v).state_dict() for k, v in self.loss_funcs.items()},
            "optimizers": {k: v.state_dict() for k, v in self.optimizers.items()},
            "lr_schedulers": {k: v.state_dict() for k, v in self.lr_schedulers.items()},
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def load_state_dict(self, state: dict) -> int:
        """Restore :meth:`state_dict`; returns the epoch to continue from."""
        for group in ("models", "loss_funcs"):
            for key, module in getattr(self, group).items():
                unwrap(module).load_state_dict(state[group][key])
        for group in ("optimizers", "lr_schedulers"):
            for key, obj in getattr(self, group).items():
                obj.load_state_dict(state[group][key])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.epoch = state["epoch"]
        return self.epoch + 1

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
