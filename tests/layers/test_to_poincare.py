"""ToPoincare: clipping bound, Riemannian rescale, precision, bad input."""

import math

import pytest
import torch

from pml_hyper.layers import ToPoincare
from pml_hyper.manifolds import PoincareBall


def test_clipped_outputs_bounded_by_clip_radius(dtype):
    u = torch.randn(100, 32, dtype=dtype) * 10
    z = ToPoincare(c=0.1, clip_r=2.3)(u)
    assert z.dtype == dtype
    bound = math.tanh(math.sqrt(0.1) * 2.3) / math.sqrt(0.1)
    assert bound == pytest.approx(1.9651, abs=1e-4)
    torch.testing.assert_close(z.norm(dim=1), torch.full((100,), bound, dtype=dtype))
    torch.testing.assert_close(PoincareBall(0.1).dist0(z), torch.full((100,), 4.6, dtype=dtype))


def test_exact_clip_factor_and_zero_vector(dtype):
    layer = ToPoincare(c=0.1, clip_r=2.3)
    u = torch.zeros(3, 4, dtype=dtype)
    u[1, 0] = 1.0  # below the clip radius: untouched
    u[2, 0] = 4.6  # above: scaled by exactly r/‖u‖ = 0.5
    clipped = layer.clip(u)
    assert torch.equal(clipped[0], torch.zeros(4, dtype=dtype))
    assert torch.equal(clipped[1], u[1])
    torch.testing.assert_close(clipped[2], u[2] * 0.5)
    assert torch.equal(layer(torch.zeros(2, 4, dtype=dtype)), torch.zeros(2, 4, dtype=dtype))


def test_no_clip_equals_projected_expmap():
    u = torch.randn(20, 8, dtype=torch.float64) * 3
    ball = PoincareBall(0.1)
    torch.testing.assert_close(ToPoincare(clip_r=None)(u), ball.project(ball.expmap0(u)))


def test_riemannian_rescale_of_gradient():
    """The gradient w.r.t. z is scaled row-wise by (1 - c‖z‖²)²/4 = 1/λ_z²."""
    u = torch.randn(10, 6, dtype=torch.float64)
    w = torch.randn(10, 6, dtype=torch.float64)
    grads = {}
    for riemannian in (True, False):
        uu = u.clone().requires_grad_()
        z = ToPoincare(c=0.1, clip_r=None, riemannian=riemannian)(uu)
        (z * w).sum().backward()
        grads[riemannian] = uu.grad
    z = ToPoincare(c=0.1, clip_r=None, riemannian=True)(u)
    scale = (1 - 0.1 * z.pow(2).sum(1, keepdim=True)) ** 2 / 4
    _, vjp = torch.autograd.functional.vjp(
        lambda x: ToPoincare(c=0.1, clip_r=None, riemannian=False)(x), u, w * scale
    )
    torch.testing.assert_close(grads[True], vjp)
    assert not torch.allclose(grads[True], grads[False])


def test_origin_rescale_is_a_quarter():
    u = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    ToPoincare(c=0.1, riemannian=True)(u).sum().backward()
    torch.testing.assert_close(u.grad, torch.full_like(u, 0.25))


@pytest.mark.parametrize("half", [torch.bfloat16, torch.float16])
def test_half_precision_input_gives_float32_ball_points(half):
    u = torch.randn(16, 8) * 5
    ref = ToPoincare()(u.to(half).float())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = ToPoincare()(u.to(half))
    assert z.dtype == torch.float32
    torch.testing.assert_close(z, ref)


def test_gradient_flows_under_autocast():
    linear = torch.nn.Linear(8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = ToPoincare()(linear(torch.randn(4, 8)))
    z.sum().backward()
    assert z.dtype == torch.float32
    assert torch.isfinite(linear.weight.grad).all()


def test_non_finite_input_rows_are_named():
    u = torch.randn(5, 3)
    u[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"ToPoincare input rows \[3\] contain NaN or inf"):
        ToPoincare()(u)


def test_invalid_clip_radius():
    with pytest.raises(ValueError, match="clip_r"):
        ToPoincare(clip_r=0.0)


def test_default_is_the_plain_gradient_of_a_pml_loss():
    """Finite differences through ``ContrastiveLoss(PoincareDistance)`` agree with the default
    layer's backward; the Riemannian rescale (opt-in) does not."""
    from pytorch_metric_learning import losses

    from pml_hyper.distances import PoincareDistance

    g = torch.Generator().manual_seed(0)
    u = torch.randn(8, 5, dtype=torch.float64, generator=g).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    loss_fn = losses.ContrastiveLoss(pos_margin=0, neg_margin=3.0, distance=PoincareDistance())
    assert ToPoincare().riemannian is False

    def loss_of(x, riemannian=False):
        return loss_fn(ToPoincare(c=0.1, clip_r=2.3, riemannian=riemannian)(x), labels)

    assert torch.autograd.gradcheck(loss_of, (u,), eps=1e-6, atol=1e-7)
    (plain,) = torch.autograd.grad(loss_of(u), u)
    (riem,) = torch.autograd.grad(loss_of(u, riemannian=True), u)
    assert not torch.allclose(plain, riem, rtol=0.1)


def test_shares_a_given_ball_of_its_curvature():
    ball = PoincareBall(0.05, official=True)
    assert ToPoincare(c=0.05, official=True, ball=ball).ball is ball
    with pytest.raises(ValueError, match="differs from c=0.1, official=True"):
        ToPoincare(c=0.1, official=True, ball=ball)
    with pytest.raises(ValueError, match="differs from c=0.05, official=False"):
        ToPoincare(c=0.05, ball=ball)
