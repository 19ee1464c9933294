"""timm backbones with the papers' embedding heads and BatchNorm freezing."""

from .backbones import BACKBONES, BackboneSpec, create_backbone
from .embedding_model import EmbeddingModel
from .hier_head import HIERHead
from .hist_head import HISTHead

__all__ = ["BACKBONES", "BackboneSpec", "EmbeddingModel", "HIERHead", "HISTHead", "create_backbone"]
