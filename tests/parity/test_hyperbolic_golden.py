"""Parity of the Poincaré-ball operations with the papers' code (golden.md, hier_golden.pt ops)."""

import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.manifolds import PoincareBall

OPS = ["ops_float64", "ops_float32"]
TOPOINCARE = {
    "topoincare_riem_clip": {"riemannian": True, "clip_r": 2.3},
    "topoincare_noriem_clip": {"riemannian": False, "clip_r": 2.3},
    "topoincare_riem_noclip": {"riemannian": True, "clip_r": None},
}


def tolerances(ops_key: str, gradient: bool) -> float:
    """golden.md, op tolerances: relative-to-max tolerance of outputs / gradients per dtype."""
    if ops_key == "ops_float64":
        return 1e-10 if gradient else 1e-12
    return 1e-4 if gradient else 1e-5


def assert_close_to_max(actual, ref, rel):
    torch.testing.assert_close(actual, ref, rtol=rel, atol=rel * ref.abs().max().item())


@pytest.fixture(params=OPS)
def ops(request, hier_golden):
    return request.param, hier_golden[request.param]


@pytest.mark.parametrize("variant", sorted(TOPOINCARE))
def test_to_poincare_official_matches_golden(ops, variant):
    key, o = ops
    u = o["u"].clone().requires_grad_()
    z = ToPoincare(c=o["c"], official=True, **TOPOINCARE[variant])(u)
    (z * o["w_out"]).sum().backward()
    assert z.dtype == o["u"].dtype
    assert_close_to_max(z, o[variant]["out"], tolerances(key, False))
    assert_close_to_max(u.grad, o[variant]["grad_u_of_sum_out_times_w"], tolerances(key, True))


@pytest.mark.parametrize("variant", sorted(TOPOINCARE))
def test_to_poincare_exact_mode_within_official_epsilon(ops, variant):
    """Exact clip factor vs r/(‖u‖ + 1e-5): ~1e-5 rel. (docs/hyperbolic.md#official-distance)."""
    _, o = ops
    u = o["u"].clone().requires_grad_()
    z = ToPoincare(c=o["c"], **TOPOINCARE[variant])(u)
    (z * o["w_out"]).sum().backward()
    assert_close_to_max(z, o[variant]["out"], 5e-5)
    assert_close_to_max(u.grad, o[variant]["grad_u_of_sum_out_times_w"], 5e-5)


def test_row_ops_official_match_golden(ops):
    key, o = ops
    ball = PoincareBall(o["c"], official=True)
    out_tol = tolerances(key, False)
    u = o["u"].clone().requires_grad_()
    e = ball.expmap0(u)
    (e * o["w_out"]).sum().backward()
    assert_close_to_max(e, o["expmap0"]["out"], out_tol)
    assert_close_to_max(u.grad, o["expmap0"]["grad"], tolerances(key, True))
    assert_close_to_max(ball.project(ball.expmap0(o["u"])), o["project_expmap0"], out_tol)
    z = o["topoincare_riem_clip"]["out"]
    assert_close_to_max(ball.logmap0(z), o["logmap0_of_topoincare_out"], out_tol)
    assert_close_to_max(ball.dist0(z), o["dist0_of_topoincare_out"], out_tol)
    x, y = o["dist_matrix"]["x"][:16], o["dist_matrix"]["y"][:16]
    assert_close_to_max(ball.mobius_add(x, y), o["mobius_add_rows"], out_tol)
    assert_close_to_max(ball.dist(x, y), o["dist_rows"], out_tol)


@pytest.mark.parametrize("official", [True, False])
def test_distance_matrix_and_gradients(ops, official):
    key, o = ops
    ref = o["dist_matrix"]
    x = ref["x"].clone().requires_grad_()
    y = ref["y"].clone().requires_grad_()
    d = PoincareBall(o["c"], official=official).pairwise_dist(x, y)
    (d * ref["W"]).sum().backward()
    out_tol = tolerances(key, False) if official else 5e-5
    grad_tol = tolerances(key, True) if official else 5e-5
    assert_close_to_max(d, ref["D"], out_tol)
    assert_close_to_max(x.grad, ref["grad_x"], grad_tol)
    assert_close_to_max(y.grad, ref["grad_y"], grad_tol)


def test_self_distance_matrix(ops):
    """Self-distances: exact zeros on the diagonal, finite gradients equal to the official ones."""
    key, o = ops
    ref = o["dist_matrix_self"]
    x = ref["x"].clone().requires_grad_()
    d = PoincareBall(o["c"], official=True).pairwise_dist(x)
    (d * ref["W"]).sum().backward()
    assert torch.equal(d.diagonal(), torch.zeros_like(d.diagonal()))
    assert torch.isfinite(x.grad).all()
    assert_close_to_max(x.grad, ref["grad_x"], tolerances(key, True))
    off_diagonal = ~torch.eye(len(d), dtype=torch.bool)
    assert_close_to_max(d[off_diagonal], ref["D"][off_diagonal], tolerances(key, False))


@pytest.mark.parametrize("case", ["hier_small_f64", "hier_small_f32", "hier_medium_f32"])
def test_ntxent_with_poincare_distance_is_hyp(hier_golden, case):
    """NTXentLoss(0.2, PoincareDistance(0.1)) = PML golden = Hyp/2, IPC = 2 (docs/hier.md#hyp)."""
    rec = hier_golden[case]
    hyp = rec["sup"]["Hyp_hyp_metric_repo"]
    float64 = rec["z_ball"].dtype == torch.float64
    z = rec["z_ball"].clone().requires_grad_()
    loss = NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1, official=True))(
        z, rec["labels"]
    )
    loss.backward()
    loss_rtol = 1e-9 if float64 else 1e-5
    grad_tol = 1e-9 if float64 else 1e-4
    torch.testing.assert_close(loss, hyp["pml_NTXent_poincare_loss"], rtol=loss_rtol, atol=0)
    torch.testing.assert_close(2 * loss, hyp["loss"], rtol=loss_rtol, atol=0)
    assert_close_to_max(z.grad, hyp["pml_NTXent_grad_z_ball"], grad_tol)
