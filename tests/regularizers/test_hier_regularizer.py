"""HIERRegularizer: label-free HIER in a PML loss's embedding_regularizer slot."""

import pytest
import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.reducers import MultipleReducers

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss
from pml_hyper.regularizers import HIERRegularizer

SMALL = {"num_proxies": 24, "topk": 5, "triplets_per_anchor": 20}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def batch(n_classes=12, dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(2)
    centers = torch.randn(n_classes, dim, generator=g)
    return centers[labels] + 0.7 * torch.randn(len(labels), dim, generator=g), labels


def test_trains_inside_triplet_margin_loss():
    torch.manual_seed(0)
    x, labels = batch()
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), ToPoincare(c=0.1))
    regularizer = HIERRegularizer(16, generator=gen(0), **SMALL)
    loss_fn = losses.TripletMarginLoss(
        margin=0.1,
        distance=PoincareDistance(c=0.1),
        embedding_regularizer=regularizer,
        embedding_reg_weight=0.5,
    )
    assert [name for name, _ in loss_fn.named_parameters()] == ["embedding_regularizer.hier.lcas"]
    assert regularizer.lcas is regularizer.hier.lcas

    optimizer = torch.optim.AdamW(
        [{"params": model.parameters()}, *regularizer.param_groups(lr=1e-2)], lr=1e-2
    )
    start = regularizer.lcas.detach().clone()
    history = []
    for _ in range(25):
        value = loss_fn(model(x), labels)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        history.append(value.item())
    assert all(torch.isfinite(torch.tensor(history)))
    assert sum(history[-5:]) < sum(history[:5])
    assert not torch.equal(regularizer.lcas.detach(), start)


def test_is_label_free_hier():
    x, _ = batch()
    z = ToPoincare()(x)
    regularizer = HIERRegularizer(16, generator=gen(2), **SMALL)
    assert isinstance(regularizer.reducer, MultipleReducers)
    twin = HIERLoss(16, generator=gen(2), **SMALL)
    parts = twin.hier_losses(z, labels=None)
    expected = sum(part["losses"] for part in parts.values())
    torch.testing.assert_close(regularizer(z), expected, rtol=0, atol=0)


def test_stats_and_param_groups():
    x, _ = batch()
    regularizer = HIERRegularizer(16, collect_stats=True, generator=gen(0), **SMALL)
    regularizer(ToPoincare()(x))
    assert regularizer.hier.num_sample_triplets > 0
    assert regularizer.param_groups(lr=1e-4)[0]["lr"] == pytest.approx(5e-3)


def test_distance_is_refused():
    with pytest.raises(ValueError, match="distance"):
        HIERRegularizer(16, distance=PoincareDistance())


def test_wraps_a_given_hier_loss_or_builds_one_from_its_keywords():
    hier = HIERLoss(16, generator=gen(3), **SMALL)
    wrapped = HIERRegularizer(hier)
    assert wrapped.hier is hier and wrapped.lcas is hier.lcas
    built = HIERRegularizer(16, generator=gen(3), **SMALL)
    assert built.hier.num_proxies == SMALL["num_proxies"] and built.hier.topk == SMALL["topk"]
    z = ToPoincare()(batch()[0])
    torch.testing.assert_close(wrapped(z), built(z))
    with pytest.raises(TypeError, match="takes no HIERLoss keywords"):
        HIERRegularizer(hier, topk=3)
    with pytest.raises(TypeError, match="HIERLoss or an embedding size"):
        HIERRegularizer("16")
