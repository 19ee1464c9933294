"""PoincareDistance inside PML losses, miners and utilities (docs/pml.md#distances)."""

import math

import pytest
import torch
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils.inference import MatchFinder

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.manifolds import PoincareBall


def clustered_ball_points(n_classes=6, per_class=5, dim=8, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(n_classes, dim, generator=g, dtype=dtype)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    u = centers[labels] + 0.3 * torch.randn(len(labels), dim, generator=g, dtype=dtype)
    return ToPoincare(riemannian=False)(u), labels


def test_defaults_follow_hyperbolic_needs():
    d = PoincareDistance()
    assert d.normalize_embeddings is False
    assert d.is_inverted is False
    assert d.c == 0.1
    assert "c" in d._record_these
    assert PoincareDistance(normalize_embeddings=True).normalize_embeddings is True
    with pytest.raises(ValueError, match="is_inverted"):
        PoincareDistance(is_inverted=True)


def test_matrix_and_pairwise_agree_with_ball(dtype):
    x, _ = clustered_ball_points(dtype=dtype)
    y = x.flip(0)
    dist = PoincareDistance(c=0.1)
    mat = dist(x, y)
    assert mat.shape == (len(x), len(y)) and mat.dtype == dtype
    torch.testing.assert_close(mat, PoincareBall(0.1).pairwise_dist(x, y))
    torch.testing.assert_close(dist.pairwise_distance(x, y), mat.diagonal())
    torch.testing.assert_close(dist(x), dist(x, x))


def test_power_is_applied():
    x, _ = clustered_ball_points()
    torch.testing.assert_close(PoincareDistance(power=2)(x), PoincareDistance()(x) ** 2)


def test_triplet_loss_and_miner_train_with_poincare_distance():
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(8).repeat_interleave(4)
    data = torch.randn(8, 16, generator=g)[labels] + 0.8 * torch.randn(32, 16, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), ToPoincare(c=0.1))
    distance = PoincareDistance(c=0.1)
    miner = miners.TripletMarginMiner(margin=0.5, type_of_triplets="semihard", distance=distance)
    loss_fn = losses.TripletMarginLoss(margin=0.5, distance=distance)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        emb = model(data)
        loss = loss_fn(emb, labels, miner(emb, labels))
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append(loss_fn(model(data), labels).item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert history[-1] < 0.5 * history[0]


def test_ntxent_gradient_finite_for_duplicates():
    x, labels = clustered_ball_points()
    x = torch.cat([x, x[:3]]).detach().requires_grad_()
    labels = torch.cat([labels, labels[:3]])
    loss = losses.NTXentLoss(temperature=0.2, distance=PoincareDistance())(x, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


def test_match_finder_uses_distance_threshold():
    x, _ = clustered_ball_points()
    finder = MatchFinder(distance=PoincareDistance(), threshold=1e-6)
    assert finder.is_match(x[:5], x[:5]).all()
    assert not finder.is_match(x[:5], x[5:10]).any()


def test_bf16_autocast_within_one_percent():
    x, labels = clustered_ball_points(dim=32)
    exact = PoincareDistance()(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mat = PoincareDistance()(x.bfloat16())
        loss = losses.TripletMarginLoss(distance=PoincareDistance())(x, labels)
    assert mat.dtype == torch.float32
    off = ~torch.eye(len(x), dtype=torch.bool)
    assert torch.isfinite(mat).all() and torch.isfinite(loss)
    assert ((mat - exact).abs()[off] / exact[off]).max() < 1e-2


def test_bad_input():
    dist = PoincareDistance()
    with pytest.raises(ValueError, match="2D"):
        dist(torch.zeros(2, 3, 4))
    bad = torch.zeros(4, 3)
    bad[2] = float("nan")
    with pytest.raises(ValueError, match=r"rows \[2\] contain NaN"):
        dist(bad)
    outside = torch.zeros(4, 3)
    outside[0, 0] = 10.0
    with pytest.raises(ValueError, match="outside the Poincaré ball"):
        dist(torch.zeros(2, 3), outside)
    with pytest.raises(ValueError, match="outside"):
        dist.pairwise_distance(outside, outside)


def test_warns_once_on_l2_normalized_inputs_in_a_pml_loss():
    """``normalize_embeddings=True`` puts every point on the unit sphere, inside the ball for
    c = 0.1: the distance warns once instead of silently computing on the sphere."""
    import warnings

    x, labels = clustered_ball_points()
    distance = PoincareDistance(c=0.1, normalize_embeddings=True)
    loss_fn = losses.ContrastiveLoss(distance=distance)
    with pytest.warns(UserWarning, match="norm 1"):
        loss_fn(x, labels)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(x, labels)  # once
        losses.ContrastiveLoss(distance=PoincareDistance(c=0.1))(x, labels)  # not normalised
        unit = torch.nn.functional.normalize(x)
        PoincareDistance(c=0.1, check_inputs=False)(unit)  # checks off: silent


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("frac", [1 - 1e-4, 1 - 1e-6, 1 - 1e-7])
def test_near_boundary_distances_are_finite_with_exact_diagonal(dtype, frac):
    """Points at ``frac`` of the radius: the Gram-form denominator cancels there; the distance
    stays finite, self-distances are exactly 0, and gradients are finite."""
    g = torch.Generator().manual_seed(0)
    u = torch.nn.functional.normalize(torch.randn(200, 16, generator=g, dtype=torch.float64))
    x = (u * frac / math.sqrt(0.1)).to(dtype)
    assert (0.1 * x.pow(2).sum(1) < 1).all()  # inside the ball in this dtype
    x.requires_grad_()
    d = PoincareDistance(c=0.1)(x)
    assert torch.isfinite(d).all()
    assert torch.equal(d.diagonal(), torch.zeros(200, dtype=dtype))
    assert (d + torch.eye(200, dtype=dtype) > 0).all()
    rows = PoincareDistance(c=0.1).pairwise_distance(x, x.flip(0))
    assert torch.isfinite(rows).all()
    (grad,) = torch.autograd.grad(d.sum() + rows.sum(), x)
    assert torch.isfinite(grad).all()


def test_stable_denominator_matches_gram_form_in_float64():
    x, _ = clustered_ball_points(dtype=torch.float64)
    exact = PoincareBall(0.1).pairwise_dist(x, x.flip(0))
    e = torch.cdist(x, x.flip(0))
    gram = PoincareBall(0.1)._denominator(
        x @ x.flip(0).T, x.pow(2).sum(1, keepdim=True), x.flip(0).pow(2).sum(1).unsqueeze(0)
    )
    torch.testing.assert_close(exact, PoincareBall(0.1)._distance_from_parts(e, gram))
