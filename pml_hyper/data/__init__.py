"""Datasets in their official on-disk layouts, the offline emoji dataset, transforms, samplers."""

from .base_image_dataset import BaseImageDataset
from .cars196 import Cars196
from .cub200 import CUB200
from .emoji_vendors import EmojiVendors
from .inshop import InShop
from .samplers import UniqueClassSampler
from .sop import SOP
from .synthetic_images import SyntheticImages
from .transforms import eval_transform, train_transform

__all__ = [
    "BaseImageDataset",
    "CUB200",
    "Cars196",
    "EmojiVendors",
    "InShop",
    "SOP",
    "SyntheticImages",
    "UniqueClassSampler",
    "eval_transform",
    "train_transform",
]
