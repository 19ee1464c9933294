"""timm backbones with the papers' embedding heads and BatchNorm freezing."""

from .backbones import BACKBONES, BackboneSpec, create_backbone
from .embedding_model import EmbeddingModel
from .hier_head import HIERHead
from .hist_head import HISTHead
from .tiny_cnn import TinyCNN

MODELS = {"tiny_cnn": TinyCNN}
"""Non-timm models a config can name as ``model.backbone`` (test doubles), by name."""

__all__ = [
    "BACKBONES",
    "MODELS",
    "BackboneSpec",
    "EmbeddingModel",
    "HIERHead",
    "HISTHead",
    "TinyCNN",
    "create_backbone",
]
