"""PoincareBall: closed forms, identities, precision and input validation (docs/hyperbolic.md)."""

import math

import pytest
import torch

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.manifolds import PoincareBall


def random_ball_points(n, dim, dtype, max_rho=0.95, seed=0):
    """Points with scaled norms √c‖x‖ spread over [0, max_rho) for c = 0.1."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)
    rho = torch.rand(n, 1, generator=g, dtype=dtype) * max_rho
    return direction * rho / math.sqrt(0.1)


def arcosh_distance(x, y, c):
    """Reference: (1/√c) arcosh(1 + 2c‖x-y‖²/((1-c‖x‖²)(1-c‖y‖²))), in float64."""
    x, y = x.double(), y.double()
    num = 2 * c * (x - y).pow(2).sum(-1)
    den = (1 - c * x.pow(2).sum(-1)) * (1 - c * y.pow(2).sum(-1))
    return torch.acosh(1 + num / den) / math.sqrt(c)


def test_pairwise_dist_equals_arcosh_form(dtype):
    ball = PoincareBall(0.1)
    x, y = random_ball_points(40, 8, dtype), random_ball_points(30, 8, dtype, seed=1)
    d = ball.pairwise_dist(x, y)
    assert d.dtype == dtype and d.shape == (40, 30)
    ref = arcosh_distance(x[:, None], y[None], 0.1)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(d.double(), ref, rtol=tol, atol=tol)


def test_row_dist_and_matrix_agree(dtype):
    ball = PoincareBall(0.3)
    x, y = random_ball_points(20, 5, dtype) * 0.1**0.5 / 0.3**0.5, random_ball_points(20, 5, dtype)
    y = y * 0.1**0.5 / 0.3**0.5
    torch.testing.assert_close(ball.dist(x, y), ball.pairwise_dist(x, y).diagonal())
    ref = arcosh_distance(x, y, 0.3)
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(ball.dist(x, y).double(), ref, rtol=tol, atol=tol)


def test_dist_is_mobius_norm_and_dist0(dtype):
    ball = PoincareBall(0.1)
    x, y = random_ball_points(16, 6, dtype), random_ball_points(16, 6, dtype, seed=3)
    via_mobius = (
        2 / math.sqrt(0.1) * torch.atanh(math.sqrt(0.1) * ball.mobius_add(-x, y).norm(dim=1))
    )
    torch.testing.assert_close(ball.dist(x, y), via_mobius, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ball.dist0(x), ball.dist(torch.zeros_like(x), x))
    torch.testing.assert_close(ball.dist0(x), 2 * ball.logmap0(x).norm(dim=1))


def test_mobius_add_identities(dtype):
    ball = PoincareBall(0.1)
    x, y = random_ball_points(10, 4, dtype), random_ball_points(10, 4, dtype, seed=5)
    zero = torch.zeros_like(x)
    torch.testing.assert_close(ball.mobius_add(zero, y), y)
    torch.testing.assert_close(ball.mobius_add(x, zero), x)
    torch.testing.assert_close(ball.mobius_add(-x, x), zero, atol=1e-6, rtol=0)


def test_expmap0_logmap0_inverse_and_origin_distance(dtype):
    ball = PoincareBall(0.1)
    g = torch.Generator().manual_seed(0)
    u = torch.randn(32, 7, generator=g, dtype=dtype)
    z = ball.expmap0(u)
    torch.testing.assert_close(ball.logmap0(z), u, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ball.dist0(z), 2 * u.norm(dim=1), rtol=1e-4, atol=1e-5)
    assert torch.equal(ball.expmap0(torch.zeros(3, 7, dtype=dtype)), torch.zeros(3, 7, dtype=dtype))


def test_expmap0_gradient_finite_at_zero():
    u = torch.zeros(2, 5, dtype=torch.float64, requires_grad=True)
    PoincareBall(0.1).expmap0(u).sum().backward()
    torch.testing.assert_close(u.grad, torch.ones_like(u))


def test_project_keeps_points_strictly_inside():
    ball = PoincareBall(0.1)
    x = torch.randn(50, 4) * 100
    p = ball.project(x)
    assert (0.1 * p.pow(2).sum(1) < 1).all()
    inside = random_ball_points(5, 4, torch.float32, max_rho=0.5)
    assert torch.equal(ball.project(inside), inside)


def test_self_distances_exact_zero_with_finite_gradient(dtype):
    x = random_ball_points(64, 16, dtype).requires_grad_()
    d = PoincareBall(0.1).pairwise_dist(x)
    assert torch.equal(d.diagonal(), torch.zeros(64, dtype=dtype))
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_to_lorentz_lies_on_hyperboloid_and_gives_distances(dtype):
    ball = PoincareBall(0.1)
    x, y = random_ball_points(20, 8, dtype), random_ball_points(25, 8, dtype, seed=2)
    lx, ly = ball.to_lorentz(x), ball.to_lorentz(y)
    assert lx.shape == (20, 9)
    minkowski = -(lx[:, 0] ** 2) + lx[:, 1:].pow(2).sum(1)
    torch.testing.assert_close(minkowski, -torch.ones_like(minkowski), rtol=0, atol=1e-4)
    cosh = lx[:, :1] * ly[:, 0] - lx[:, 1:] @ ly[:, 1:].T
    torch.testing.assert_close(
        ball.lorentz_to_dist(cosh), ball.pairwise_dist(x, y), rtol=1e-3, atol=2e-3
    )


def test_bf16_autocast_computes_in_float32():
    """Points within the clip radius (√c‖x‖ ≤ 0.62), where bf16 rounding keeps them inside."""
    ball = PoincareBall(0.1)
    x = random_ball_points(32, 16, torch.float32, max_rho=0.62)
    y = random_ball_points(24, 16, torch.float32, max_rho=0.62, seed=1)
    exact = ball.pairwise_dist(x, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = ball.pairwise_dist(x, y)
        from_bf16 = ball.pairwise_dist(x.bfloat16(), y.bfloat16())
    assert under_autocast.dtype == torch.float32
    torch.testing.assert_close(under_autocast, exact)
    assert torch.isfinite(from_bf16).all()
    assert ((from_bf16 - exact).abs() / exact).max() < 1e-2


def test_official_curvature_is_float32_rounded():
    assert PoincareBall(0.1, official=True).c == pytest.approx(0.10000000149011612, abs=1e-17)
    assert PoincareBall(0.1).c == 0.1


@pytest.mark.parametrize("c", [0.0, -1.0, float("nan")])
def test_invalid_curvature(c):
    with pytest.raises(ValueError, match="curvature"):
        PoincareBall(c)


def test_points_outside_ball_are_named():
    """Validation is explicit (check_point) and done by the entry points, not by the maths."""
    ball = PoincareBall(0.1)
    x = torch.zeros(5, 3)
    x[1, 0] = 3.2  # radius is 3.1623
    x[4, 2] = -ball.radius  # exactly on the boundary
    with pytest.raises(ValueError, match=r"x rows \[1, 4\] lie on or outside"):
        ball.check_point(x)
    with pytest.raises(ValueError, match=r"y rows \[1, 4\]"):
        PoincareDistance(c=0.1)(torch.zeros(5, 3), x)
    with pytest.raises(ValueError, match=r"x rows \[1, 4\]"):
        PoincareDistance(c=0.1).pairwise_distance(x, torch.zeros(5, 3))
    assert torch.isfinite(ball.pairwise_dist(x, torch.zeros(2, 3))).all()  # no check


def test_non_finite_rows_are_named():
    ball = PoincareBall(0.1)
    x = torch.zeros(4, 3)
    x[2, 1] = float("nan")
    x[3, 0] = float("inf")
    with pytest.raises(ValueError, match=r"rows \[2, 3\] contain NaN or inf"):
        ball.check_point(x)
    with pytest.raises(ValueError, match=r"rows \[2, 3\] contain NaN or inf"):
        ToPoincare()(x)
    with pytest.raises(ValueError, match=r"rows \[2, 3\] contain NaN or inf"):
        PoincareDistance()(x)
    ToPoincare(check_inputs=False)(x)  # the flag turns the check (and its host sync) off


def test_pairwise_dist_shape_errors():
    ball = PoincareBall(0.1)
    with pytest.raises(ValueError, match="2-D"):
        ball.pairwise_dist(torch.zeros(3), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="dimension mismatch"):
        ball.pairwise_dist(torch.zeros(3, 2), torch.zeros(3, 3))


def test_unchecked_maths_clamps_instead_of_raising():
    """Without validation, artanh is clamped at 1 - 1e-5: d0 = (2/√c) artanh(1 - 1e-5) = 38.6."""
    x = torch.full((2, 2), 5.0, dtype=torch.float64)
    d0 = PoincareBall(0.1).dist0(x)
    expected = 2 / math.sqrt(0.1) * math.atanh(1 - 1e-5)
    torch.testing.assert_close(d0, torch.full((2,), expected, dtype=torch.float64))
    assert expected == pytest.approx(38.6, abs=0.05)
