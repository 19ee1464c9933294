"""Metric-learning losses (subclasses of PML's BaseMetricLossFunction)."""

from .hier_loss import HIERLoss
from .hist_loss import HISTLoss
from .hyp_loss import HypLoss

__all__ = ["HIERLoss", "HISTLoss", "HypLoss"]
