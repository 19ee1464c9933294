"""PML regularizers."""

from .hier_regularizer import HIERRegularizer

__all__ = ["HIERRegularizer"]
