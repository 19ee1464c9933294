"""The papers' train/eval transforms, pinned per backbone (they come partly from timm's configs)."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

from pml_hyper.data import eval_transform, train_transform
from pml_hyper.models import BACKBONES

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
BILINEAR, BICUBIC = InterpolationMode.BILINEAR, InterpolationMode.BICUBIC
# backbone: ((mean, std), interpolation, train scale) of the papers' released training code
RECIPES = {
    "resnet50": (IMAGENET, BILINEAR, (0.08, 1.0)),
    "deit_small_distilled_patch16_224": (IMAGENET, BICUBIC, (0.2, 1.0)),
    "vit_small_patch16_224": (HALF, BICUBIC, (0.2, 1.0)),
    "vit_small_patch16_224.dino": (IMAGENET, BICUBIC, (0.2, 1.0)),
    "tf_efficientnet_lite0": (HALF, BICUBIC, (0.08, 1.0)),
}


def test_every_backbone_is_pinned():
    assert list(BACKBONES) == list(RECIPES)


def kinds(transform: T.Compose) -> list[type]:
    return [type(t) for t in transform.transforms]


@pytest.mark.parametrize("backbone", list(RECIPES))
def test_train_transform_is_pinned(backbone):
    (mean, std), interpolation, scale = RECIPES[backbone]
    train = train_transform(backbone)
    assert kinds(train) == [T.RandomResizedCrop, T.RandomHorizontalFlip, T.ToTensor, T.Normalize]
    crop, flip, _, normalize = train.transforms
    assert (crop.size, crop.scale, crop.ratio) == ((224, 224), scale, (3 / 4, 4 / 3))
    assert crop.interpolation == interpolation and crop.antialias is True
    assert flip.p == 0.5
    assert (tuple(normalize.mean), tuple(normalize.std)) == (mean, std)
    crop = train_transform(backbone, 112, interpolation="bilinear").transforms[0]
    assert crop.size == (112, 112) and crop.interpolation == BILINEAR


@pytest.mark.parametrize("backbone", list(RECIPES))
def test_eval_transform_is_pinned(backbone):
    (mean, std), interpolation, _ = RECIPES[backbone]
    evaluate = eval_transform(backbone)
    expected = [T.Resize, T.CenterCrop, T.ToTensor, T.Normalize]
    assert all(issubclass(got, want) for got, want in zip(kinds(evaluate), expected, strict=True))
    resize, centre, _, normalize = evaluate.transforms
    assert (resize.size, resize.max_size, resize.antialias) == (256, None, True)
    assert resize.interpolation == interpolation and centre.size == (224, 224)
    assert (tuple(normalize.mean), tuple(normalize.std)) == (mean, std)
    resize, centre, _, _ = eval_transform(backbone, 112, 1.0, interpolation="bicubic").transforms
    assert resize.size == 112 and centre.size == (112, 112) and resize.interpolation == BICUBIC


def test_outputs_are_3_by_s_by_s():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), np.uint8))
    assert train_transform("resnet50")(image).shape == (3, 224, 224)
    assert eval_transform("resnet50")(image).shape == (3, 224, 224)


def test_bad_arguments():
    with pytest.raises(ValueError, match="crop_pct"):
        eval_transform("resnet50", crop_pct=0)
    with pytest.raises(
        ValueError, match="unknown interpolation 'nearest'; choose from bilinear, bicubic"
    ):
        train_transform("resnet50", interpolation="nearest")
    with pytest.raises(ValueError, match="unknown backbone"):
        eval_transform("resnet18")


@pytest.mark.parametrize("backbone", list(RECIPES))
def test_eval_transform_equals_the_torchvision_pipeline(backbone):
    (mean, std), interpolation, _ = RECIPES[backbone]
    image = Image.fromarray(np.random.default_rng(1).integers(0, 255, (300, 260, 3), np.uint8))
    reference = T.Compose(
        [
            T.Resize(256, interpolation=interpolation),
            T.CenterCrop(224),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    assert torch.equal(eval_transform(backbone)(image), reference(image))
