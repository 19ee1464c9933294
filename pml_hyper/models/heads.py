"""The embedding heads a model or config names, and how one is built from its name."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from typing import Any

import torch

from ..utils.registry import lookup
from .hist_head import HISTHead
from .poincare_head import PoincareHead

HEADS: dict[str, Callable[..., torch.nn.Module]] = {
    "hist": HISTHead,  # Linear → LayerNorm, cosine
    "hier": PoincareHead,  # LayerNorm → Linear → ToPoincare(riemannian=True), the ball
    "hyp": functools.partial(PoincareHead, layer_norm=False, riemannian=False),
}
"""Head constructors by name, each called as ``(in_features, embedding_size, **head_kwargs)``;
``head_kwargs`` override the defaults (``"hyp"``: ``PoincareHead`` without LayerNorm and
without the Riemannian gradient rescale). Every head provides ``geometry``."""


def build_head(
    name: str,
    in_features: int,
    embedding_size: int,
    head_kwargs: Mapping[str, Any] | None = None,
) -> torch.nn.Module:
    """The head ``HEADS[name](in_features, embedding_size, **head_kwargs)``.

    Raises:
        ValueError: an unknown ``name`` (the message lists :data:`HEADS`), or ``head_kwargs``
            the head does not take.
    """
    factory = lookup(HEADS, name, "head")
    kwargs = dict(head_kwargs or {})
    try:
        inspect.signature(factory).bind(in_features, embedding_size, **kwargs)
    except TypeError as error:
        raise ValueError(
            f"head_kwargs {sorted(kwargs)} do not apply to the {name!r} head ({error})"
        ) from None
    return factory(in_features, embedding_size, **kwargs)
