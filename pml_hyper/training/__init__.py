"""Training: a PML trainer for the papers' recipes, a distributed loss wrapper, configs, runner."""

from .config import ConfigError, build_config, load_config
from .distributed_loss_wrapper import DistributedLossWrapper
from .runner import Runner
from .trainer import MetricLossTrainer, NonFiniteLossError

__all__ = [
    "ConfigError",
    "DistributedLossWrapper",
    "MetricLossTrainer",
    "NonFiniteLossError",
    "Runner",
    "build_config",
    "load_config",
]
