import numpy as np
import pytest
import torch

from pml_hyper.layers import ToPoincare
from pml_hyper.models import (
    COSINE,
    HEADS,
    Geometry,
    HISTHead,
    PoincareHead,
    TinyCNN,
    build_head,
    geometry_of,
)


def test_geometry_is_a_frozen_value():
    ball = Geometry.poincare(0.05)
    assert ball == Geometry("poincare", 0.05) and ball.hyperbolic and ball.c == 0.05
    assert Geometry("cosine") == COSINE and not COSINE.hyperbolic and COSINE.c is None
    assert isinstance(Geometry.poincare(np.float64(0.2)).c, float)
    assert Geometry.poincare(1).c == 1.0 and isinstance(Geometry.poincare(1).c, float)
    with pytest.raises(AttributeError):
        ball.c = 0.1
    assert len({ball, Geometry.poincare(0.05), COSINE}) == 2


@pytest.mark.parametrize(
    ("kind", "c", "match"),
    [
        ("euclidean", None, "kind must be one of"),
        ("cosine", 0.1, "no curvature"),
        ("poincare", None, "positive finite c"),
        ("poincare", 0.0, "positive finite c"),
        ("poincare", -0.1, "positive finite c"),
        ("poincare", float("inf"), "positive finite c"),
        ("poincare", True, "positive finite c"),
    ],
)
def test_invalid_geometry(kind, c, match):
    with pytest.raises(ValueError, match=match):
        Geometry(kind, c)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_each_head_provides_its_geometry_in_any_dtype(dtype):
    assert HISTHead(8, 4).to(dtype).geometry == COSINE
    assert PoincareHead(8, 4).to(dtype).geometry == Geometry.poincare(0.1)
    head = build_head("hyp", 8, 4, {"c": 0.05}).to(dtype)
    assert head.geometry == Geometry.poincare(0.05)
    out = head(torch.randn(3, 8, dtype=dtype))
    assert out.dtype == dtype and (0.05 * out.pow(2).sum(-1) < 1).all()


def test_named_heads_and_their_defaults():
    assert set(HEADS) == {"hist", "hier", "hyp"}
    hier, hyp = build_head("hier", 8, 4), build_head("hyp", 8, 4)
    assert type(hier) is PoincareHead and type(hyp) is PoincareHead
    assert isinstance(hier.norm, torch.nn.LayerNorm) and hier.to_poincare.riemannian
    assert isinstance(hyp.norm, torch.nn.Identity) and not hyp.to_poincare.riemannian
    for head in (hier, hyp):
        assert (head.to_poincare.c, head.to_poincare.clip_r) == (0.1, 2.3)
    custom = build_head("hyp", 8, 4, {"c": 0.2, "clip_r": None, "riemannian": True})
    assert (custom.to_poincare.c, custom.to_poincare.clip_r, custom.to_poincare.riemannian) == (
        0.2,
        None,
        True,
    )
    assert isinstance(custom.norm, torch.nn.Identity)  # the hyp default that was not overridden
    assert type(build_head("hist", 8, 4)) is HISTHead
    # the state-dict keys checkpoints hold: only the Linear has parameters
    assert list(hier.state_dict()) == list(hyp.state_dict()) == ["linear.weight", "linear.bias"]


def test_unknown_head_or_arguments_raise():
    with pytest.raises(ValueError, match="unknown head 'proxy'; choose from hist, hier, hyp"):
        build_head("proxy", 8, 4)
    with pytest.raises(ValueError, match=r"\['c'\] do not apply to the 'hist' head"):
        build_head("hist", 8, 4, {"c": 0.1})
    with pytest.raises(ValueError, match="do not apply to the 'hier' head"):
        build_head("hier", 8, 4, {"curvature": 0.1})


def test_geometry_of_models():
    ball = torch.nn.Sequential(torch.nn.Linear(4, 4), ToPoincare(c=0.2))
    assert geometry_of(ball) == Geometry.poincare(0.2)
    assert geometry_of(torch.nn.Linear(4, 4)) == COSINE
    assert geometry_of() == COSINE and geometry_of(None, None) == COSINE
    # trunk then embedder: the ball of whichever maps into it
    assert geometry_of(TinyCNN(4), PoincareHead(4, 4, c=0.05)) == Geometry.poincare(0.05)
    assert geometry_of(TinyCNN(4, "hier", {"c": 0.3}), None) == Geometry.poincare(0.3)
    assert geometry_of(torch.nn.DataParallel(TinyCNN(4, "hyp"))) == Geometry.poincare(0.1)
    with pytest.raises(ValueError, match="different c"):
        geometry_of(torch.nn.Sequential(ToPoincare(c=0.1), ToPoincare(c=0.2)))
    with pytest.raises(ValueError, match="different c"):
        geometry_of(TinyCNN(4, "hier"), PoincareHead(4, 4, c=0.2))

    class Pooled(torch.nn.Module):  # declares cosine although it holds a hyperbolic model
        geometry = COSINE

        def __init__(self):
            super().__init__()
            self.model = TinyCNN(4, "hier")

    assert geometry_of(Pooled()) == COSINE
