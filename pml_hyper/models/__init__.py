"""timm backbones with the papers' embedding heads and BatchNorm freezing."""

from .backbones import BACKBONES, BackboneSpec, create_backbone
from .embedding_model import EmbeddingModel
from .geometry import COSINE, Geometry, geometry_of
from .heads import HEADS, build_head
from .hist_head import HISTHead
from .poincare_head import PoincareHead
from .tiny_cnn import TinyCNN

MODELS = {"tiny_cnn": TinyCNN}
"""Non-timm models a config can name as ``model.backbone`` (test doubles), by name."""

__all__ = [
    "BACKBONES",
    "MODELS",
    "COSINE",
    "HEADS",
    "BackboneSpec",
    "EmbeddingModel",
    "Geometry",
    "HISTHead",
    "PoincareHead",
    "TinyCNN",
    "build_head",
    "create_backbone",
    "geometry_of",
]
