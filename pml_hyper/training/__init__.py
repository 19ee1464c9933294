"""Training: a PML trainer for the papers' recipes, a distributed loss wrapper, configs, runner."""

from .config import ConfigError, build_config, load_config
from .distributed_loss_wrapper import DistributedLossWrapper
from .runner import Runner
from .synthetic_images import SyntheticImages
from .tiny_cnn import TinyCNN
from .trainer import MetricLossTrainer, NonFiniteLossError

__all__ = [
    "ConfigError",
    "DistributedLossWrapper",
    "MetricLossTrainer",
    "NonFiniteLossError",
    "Runner",
    "SyntheticImages",
    "TinyCNN",
    "build_config",
    "load_config",
]
