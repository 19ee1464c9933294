"""Train and eval image transforms of the papers' recipes, per backbone (the released code).

backbone                            mean / std  interpolation  train scale  source
resnet50                            ImageNet    bilinear       (0.08, 1)    HIST
deit_small_distilled_patch16_224    ImageNet    bicubic        (0.2, 1)     HIER
vit_small_patch16_224               0.5         bicubic        (0.2, 1)     HIER
vit_small_patch16_224.dino          ImageNet    bicubic        (0.2, 1)     HIER (dino_vits16)
tf_efficientnet_lite0               0.5         bicubic        (0.08, 1)    timm data config

Mean/std and interpolation come from timm's pretrained config of each backbone and the scale from
:data:`pml_hyper.models.backbones.BACKBONES` (see :class:`~pml_hyper.models.BackboneSpec`). timm's
``crop_pct`` (0.9 for the ViTs) is not used: every recipe evaluates at Resize(256) →
CenterCrop(224).

Train: RandomResizedCrop(size, scale) → RandomHorizontalFlip → ToTensor → Normalize.
Eval: Resize(size / crop_pct) on the shorter side → CenterCrop(size) → ToTensor → Normalize
(Resize(256) → CenterCrop(224) at the default ``crop_pct`` 0.875). HIER's ResNet-50 recipe used
bicubic resizing: pass ``interpolation="bicubic"``. Images must already be RGB (the datasets
convert them).

The eval pipeline is timm's ``create_transform(is_training=False)``, which builds exactly this.
The train pipeline stays torchvision's: timm's ``RandomResizedCropAndInterpolation`` draws its crops
from Python's ``random`` module instead of torch's generator, so the crops would no longer follow
``torch.manual_seed`` and the runner's bit-identical resume (and timm adds colour jitter by default,
which none of the papers used).
"""

from __future__ import annotations

from timm.data import create_transform
from torchvision import transforms as T

from ..models.backbones import backbone_spec
from ..utils.registry import lookup

INTERPOLATIONS = {
    "bilinear": T.InterpolationMode.BILINEAR,
    "bicubic": T.InterpolationMode.BICUBIC,
}


def _interpolation(backbone: str, interpolation: str | None) -> T.InterpolationMode:
    name = backbone_spec(backbone).interpolation if interpolation is None else interpolation
    return lookup(INTERPOLATIONS, name, "interpolation")


def _normalize(backbone: str) -> T.Normalize:
    spec = backbone_spec(backbone)
    return T.Normalize(mean=spec.mean, std=spec.std)


def train_transform(
    backbone: str, image_size: int = 224, interpolation: str | None = None
) -> T.Compose:
    """The training augmentation of ``backbone``'s recipe: PIL RGB image → ``(3, S, S)`` tensor.

    Args:
        backbone: a key of :data:`~pml_hyper.models.backbones.BACKBONES`.
        image_size: S, the crop size.
        interpolation: ``"bilinear"`` or ``"bicubic"``; ``None`` = the recipe's.
    """
    return T.Compose(
        [
            T.RandomResizedCrop(
                image_size,
                scale=backbone_spec(backbone).train_scale,
                interpolation=_interpolation(backbone, interpolation),
            ),
            T.RandomHorizontalFlip(),
            T.ToTensor(),
            _normalize(backbone),
        ]
    )


def eval_transform(
    backbone: str,
    image_size: int = 224,
    crop_pct: float = 0.875,
    interpolation: str | None = None,
) -> T.Compose:
    """The evaluation transform of ``backbone``'s recipe: PIL RGB image → ``(3, S, S)`` tensor.

    Args:
        backbone: a key of :data:`~pml_hyper.models.backbones.BACKBONES`.
        image_size: S, the centre-crop size.
        crop_pct: S / resize size (0.875: Resize(256) for S = 224); 1.0 resizes the shorter side
            to S, which keeps a square image whole.
        interpolation: ``"bilinear"`` or ``"bicubic"``; ``None`` = the recipe's.
    """
    if not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
    _interpolation(backbone, interpolation)  # validates the name
    spec = backbone_spec(backbone)
    return create_transform(
        image_size,
        is_training=False,
        crop_pct=crop_pct,
        interpolation=spec.interpolation if interpolation is None else interpolation,
        mean=spec.mean,
        std=spec.std,
    )
