"""Metric-learning losses (subclasses of PML's BaseMetricLossFunction)."""

from .hist_loss import HISTLoss

__all__ = ["HISTLoss"]
