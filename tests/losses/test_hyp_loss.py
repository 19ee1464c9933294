import math

import pytest
import torch
from pytorch_metric_learning.losses import NTXentLoss

from pml_hyper.distances import PoincareDistance
from pml_hyper.losses import HypLoss
from pml_hyper.manifolds import PoincareBall


def ball_points(n, dim=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    return 0.8 * x / (1 + x.norm(dim=1, keepdim=True)) * math.sqrt(10)  # inside radius √10


def brute_force(z, labels, tau=0.2, c=0.1):
    """The definition, one anchor and one term at a time (Python loops, float64)."""
    ball = PoincareBall(c)
    classes = sorted(set(labels.tolist()))
    members = {k: [i for i in range(len(labels)) if labels[i] == k] for k in classes}
    num_views = len(members[classes[0]])
    total = 0.0
    for i in range(num_views):
        for j in range(num_views):
            if i == j:
                continue
            ce = 0.0
            for a in classes:
                xa = z[members[a][i]]
                terms = []
                for b in classes:
                    terms.append(-ball.dist(xa[None], z[members[b][j]][None])[0] / tau)
                for b in classes:
                    if b != a:
                        terms.append(-ball.dist(xa[None], z[members[b][i]][None])[0] / tau)
                positive = terms[classes.index(a)]
                ce = ce - positive + torch.logsumexp(torch.stack(terms), 0)
            total = total + ce / len(classes)
    return total


@pytest.mark.parametrize("ipc, n", [(3, 4), (9, 3)])
def test_matches_the_definition_for_more_than_two_views(ipc, n):
    g = torch.Generator().manual_seed(ipc)
    labels = torch.arange(n).repeat_interleave(ipc)[torch.randperm(n * ipc, generator=g)] * 7
    z = ball_points(n * ipc, seed=ipc).requires_grad_()
    loss = HypLoss(temperature=0.2, c=0.1)(z, labels)
    loss.backward()
    z_ref = z.detach().clone().requires_grad_()
    expected = brute_force(z_ref, labels)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(z.grad, z_ref.grad, rtol=1e-8, atol=1e-12)
    ntxent = NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1))(z.detach(), labels)
    assert not torch.isclose(loss, 2 * ntxent, rtol=1e-3)  # not NTXent for IPC > 2


@pytest.mark.parametrize("case", ["hier_small_f64", "hier_small_f32", "hier_medium_f32"])
def test_golden_hyp_for_two_views(hier_golden, case):
    rec = hier_golden[case]
    hyp = rec["sup"]["Hyp_hyp_metric_repo"]
    float64 = rec["z_ball"].dtype == torch.float64
    z = rec["z_ball"].clone().requires_grad_()
    loss = HypLoss(temperature=hyp["tau"], c=0.1, official=True)(z, rec["labels"])
    loss.backward()
    torch.testing.assert_close(loss, hyp["loss"], rtol=1e-9 if float64 else 1e-5, atol=0)
    scale = hyp["grad_z_ball"].abs().max()
    assert (z.grad - hyp["grad_z_ball"]).abs().max() <= (1e-9 if float64 else 1e-4) * scale


def test_two_views_is_twice_ntxent():
    labels = torch.arange(5).repeat(2)
    z = ball_points(10, seed=3)
    ntxent = NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1))(z, labels)
    torch.testing.assert_close(HypLoss()(z, labels), 2 * ntxent, rtol=1e-10, atol=0)


def test_spherical_variant_uses_cosine_logits():
    labels = torch.arange(4).repeat(2)
    z = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ntxent = NTXentLoss(temperature=0.1)(z, labels)  # cosine similarity by default
    torch.testing.assert_close(HypLoss(temperature=0.1, c=0.0)(z, labels), 2 * ntxent)


@pytest.mark.parametrize(
    "labels, match",
    [
        (torch.tensor([0, 0, 1, 1, 1, 2]), "equally often"),
        (torch.tensor([0, 1, 2, 3, 4, 5]), "at least 2 views"),
        (torch.zeros(6), "1-D integer"),
    ],
)
def test_bad_labels(labels, match):
    with pytest.raises(ValueError, match=match):
        HypLoss()(ball_points(6), labels)


def test_bad_arguments():
    with pytest.raises(ValueError, match="temperature"):
        HypLoss(temperature=0)
    with pytest.raises(ValueError, match="c must be"):
        HypLoss(c=-1)
    with pytest.raises(ValueError, match="needs labels"):
        HypLoss()(ball_points(4))
