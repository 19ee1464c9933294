"""HIERLoss and its functional core hier_triplet_loss."""

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses
from pytorch_metric_learning.reducers import DoNothingReducer

import pml_hyper.losses.hier_loss as hier_module
import pml_hyper.losses.hier_triplet as hier_triplet_module
from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss
from pml_hyper.losses.hier_loss import hier_triplet_loss
from pml_hyper.regularizers import HIERRegularizer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "pa_plus_hier.py"


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def features(n_classes=12, dim=16, seed=0, dtype=torch.float32):
    """Euclidean features of ``n_classes`` classes × 2 views (before ToPoincare), labels."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(2)
    centers = torch.randn(n_classes, dim, generator=g, dtype=dtype)
    x = 0.4 * (centers[labels] + 0.7 * torch.randn(len(labels), dim, generator=g, dtype=dtype))
    return x.requires_grad_(), labels


def small_loss(dim=16, seed=0, **kwargs):
    kwargs = {"num_proxies": 24, "topk": 5, "triplets_per_anchor": 20, **kwargs}
    return HIERLoss(dim, generator=gen(seed), **kwargs)


# ---------------------------------------------------------------- functional core


def oracle_part(dist, triplets, noise_ij, noise_ijk, tau, margin):
    """docs/hier.md#hinge step by step, plain autograd (straight-through hard Gumbel-softmax)."""
    d_i, d_j, d_k = (dist[x] for x in triplets.unbind(1))

    def st_gumbel_hard(logits, noise):
        soft = torch.softmax(logits + noise, dim=1)
        index = soft.argmax(dim=1)
        return F.one_hot(index, soft.shape[1]).to(soft) - soft.detach() + soft, index

    pi_ij, lca_ij = st_gumbel_hard(-torch.maximum(d_i, d_j) / tau, noise_ij)
    pi_ijk, lca_ijk = st_gumbel_hard(-torch.maximum(d_k, torch.maximum(d_i, d_j)) / tau, noise_ijk)

    def to_lca(d, pi):
        return (d * pi).sum(1)

    hinge = (
        F.relu(to_lca(d_i, pi_ij) - to_lca(d_i, pi_ijk) + margin)
        + F.relu(to_lca(d_j, pi_ij) - to_lca(d_j, pi_ijk) + margin)
        + F.relu(to_lca(d_k, pi_ijk) - to_lca(d_k, pi_ij) + margin)
    )
    return (hinge * (lca_ij != lca_ijk)).mean(), lca_ij, lca_ijk


def core_case(seed=0, n=10, num_proxies=16, num_triplets=300):
    """float64 distances with duplicate rows, and triplets with i = j, k = i and k = j."""
    g = torch.Generator().manual_seed(seed)
    dist = 1 + 8 * torch.rand(n, num_proxies, generator=g, dtype=torch.float64)
    dist[3] = dist[2]
    triplets = torch.randint(0, n, (num_triplets, 3), generator=g)
    triplets[:20, 1] = triplets[:20, 0]
    triplets[20:40, 2] = triplets[20:40, 0]
    triplets[40:60, 2] = triplets[40:60, 1]
    triplets[60:80, :2] = torch.tensor([2, 3])
    noise = -torch.log(-torch.log(torch.rand(2, num_triplets, num_proxies, generator=g).double()))
    return dist, triplets, noise[0], noise[1]


@pytest.mark.parametrize("chunk_elements", [None, 48])
@pytest.mark.parametrize("tau, margin", [(0.1, 0.1), (1.0, 0.5)])
def test_core_matches_autograd_oracle(monkeypatch, chunk_elements, tau, margin):
    if chunk_elements is not None:
        monkeypatch.setattr(hier_triplet_module, "CHUNK_ELEMENTS", chunk_elements)
    dist, triplets, noise_ij, noise_ijk = core_case()
    weights = torch.rand(dist.shape, dtype=dist.dtype, generator=gen(1))

    d_ref = dist.clone().requires_grad_()
    ref, ref_ij, ref_ijk = oracle_part(d_ref, triplets, noise_ij, noise_ijk, tau, margin)
    (ref * 3.0 + (d_ref * weights).sum()).backward()

    d = dist.clone().requires_grad_()
    part = hier_triplet_loss(d, triplets, noise_ij, noise_ijk, tau, margin)
    (part.loss * 3.0 + (d * weights).sum()).backward()

    assert 0.05 < (part.lca_ij == part.lca_ijk).double().mean() < 0.95
    assert torch.equal(part.lca_ij, ref_ij) and torch.equal(part.lca_ijk, ref_ijk)
    torch.testing.assert_close(part.loss, ref, rtol=1e-13, atol=0)
    torch.testing.assert_close(d.grad, d_ref.grad, rtol=0, atol=1e-13 * d_ref.grad.abs().max())


def test_core_float32_and_no_grad():
    dist, triplets, noise_ij, noise_ijk = core_case(seed=2)
    ref = hier_triplet_loss(dist, triplets, noise_ij, noise_ijk)
    part = hier_triplet_loss(dist.float(), triplets, noise_ij.float(), noise_ijk.float())
    assert part.loss.dtype == torch.float32 and not part.loss.requires_grad
    torch.testing.assert_close(part.loss.double(), ref.loss, rtol=1e-5, atol=0)


@pytest.mark.parametrize(
    "change, match",
    [
        ({"dist": torch.rand(5)}, "dist"),
        ({"triplets": torch.zeros(0, 3, dtype=torch.long)}, "T >= 1"),
        ({"triplets": torch.zeros(4, 2, dtype=torch.long)}, "triplets"),
        ({"triplets": torch.zeros(4, 3)}, "integer"),
        ({"triplets": torch.full((4, 3), 7)}, r"\[0, 5\)"),
        ({"noise_ij": torch.zeros(3, 6)}, "noise_ij"),
        ({"tau": 0.0}, "tau"),
    ],
)
def test_core_rejects_bad_input(change, match):
    args = {
        "dist": torch.rand(5, 6),
        "triplets": torch.zeros(4, 3, dtype=torch.long),
        "noise_ij": torch.zeros(4, 6),
        "noise_ijk": torch.zeros(4, 6),
        "tau": 0.1,
    }
    with pytest.raises(ValueError, match=match):
        hier_triplet_loss(**{**args, **change})


# ---------------------------------------------------------------- the loss


def test_same_seed_same_loss_and_gradients_other_seed_other_draws():
    def run(loss):
        x, labels = features()
        value = loss(ToPoincare()(x), labels)
        value.backward()
        return value.detach(), x.grad, loss.lcas.grad

    first = run(small_loss(seed=3))
    again = run(small_loss(seed=3))
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)

    other = small_loss(seed=4)
    other.load_state_dict(small_loss(seed=3).state_dict())
    third = run(other)
    assert not torch.equal(first[0], third[0])
    assert not torch.equal(first[1], third[1])


def test_global_rng_without_generator():
    torch.manual_seed(0)
    a = HIERLoss(16, num_proxies=24, topk=5)
    torch.manual_seed(0)
    b = HIERLoss(16, num_proxies=24, topk=5)
    assert torch.equal(a.lcas, b.lcas)
    x, labels = features()
    z = ToPoincare()(x)
    torch.manual_seed(1)
    value_a = a(z, labels)
    torch.manual_seed(1)
    assert torch.equal(value_a, b(z, labels))


def test_loss_parts_and_stats():
    x, labels = features()
    loss = small_loss(collect_stats=True, reducer=DoNothingReducer())
    parts = loss(ToPoincare()(x), labels)
    assert set(parts) == {"sample_triplet_loss", "proxy_triplet_loss"}
    for part in parts.values():
        assert part["reduction_type"] == "already_reduced" and part["losses"] > 0
    assert loss.num_sample_triplets > 0 and loss.num_sample_triplets % 20 == 0
    assert loss.num_proxy_triplets > 0 and loss.num_proxy_triplets % 20 == 0
    assert 0 <= loss.num_proxy_collisions < loss.num_proxy_triplets

    total = small_loss(collect_stats=True)(ToPoincare()(x), labels)
    expected = parts["sample_triplet_loss"]["losses"] + parts["proxy_triplet_loss"]["losses"]
    torch.testing.assert_close(total, expected)


def test_indices_tuple_replaces_the_sample_miner():
    x, labels = features()
    z = ToPoincare()(x)
    triplets = (torch.tensor([0, 2, 4]), torch.tensor([1, 3, 5]), torch.tensor([6, 7, 8]))
    loss = small_loss(collect_stats=True)
    loss(z, labels, indices_tuple=triplets)
    assert loss.num_sample_triplets == 3

    pairs = (torch.tensor([0, 0]), torch.tensor([1, 1]), torch.tensor([0, 0]), torch.tensor([6, 9]))
    loss(z, None, indices_tuple=pairs)
    assert loss.num_sample_triplets == 4

    empty = tuple(torch.zeros(0, dtype=torch.long) for _ in range(3))
    parts = small_loss(reducer=DoNothingReducer())(z, labels, indices_tuple=empty)
    assert parts["sample_triplet_loss"]["losses"] == 0
    assert parts["proxy_triplet_loss"]["losses"] > 0


def test_index_range_is_checked_only_for_triplets_from_outside(monkeypatch):
    checks = []

    def spy(*args, **kwargs):
        checks.append(kwargs["check_indices"])
        return hier_triplet_loss(*args, **kwargs)

    monkeypatch.setattr(hier_module, "hier_triplet_loss", spy)
    x, labels = features()
    z = ToPoincare()(x)
    small_loss()(z, labels)
    assert checks == [False, False]  # mined sample and proxy triplets are valid by construction
    outside = (torch.tensor([0]), torch.tensor([1]), torch.tensor([len(z)]))
    with pytest.raises(ValueError, match="triplet indices must lie"):
        small_loss()(z, labels, indices_tuple=outside)
    assert checks[2] is True


def test_no_mutual_neighbour_gives_zero_loss_with_graph():
    x, labels = features()
    loss = small_loss(topk=1, collect_stats=True)
    value = loss(ToPoincare()(x), labels)
    assert value.item() == 0 and value.requires_grad
    value.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert loss.num_sample_triplets == 0 and loss.num_proxy_triplets == 0


def test_multiple_losses_with_proxy_anchor():
    x, labels = features()
    z = ToPoincare()(x)
    pa = losses.ProxyAnchorLoss(12, 16, margin=0.1, alpha=32)
    hier = small_loss(seed=5)
    combined = losses.MultipleLosses([pa, hier], weights=[1, 0.5])
    value = combined(z, labels)
    value.backward()

    twin = small_loss(seed=5)
    expected = pa(z, labels) + 0.5 * twin(z, labels)
    torch.testing.assert_close(value, expected)
    names = {name for name, _ in combined.named_parameters()}
    assert names == {"losses.0.proxies", "losses.1.lcas"}
    for p in (x.grad, pa.proxies.grad, hier.lcas.grad):
        assert torch.isfinite(p).all() and p.abs().sum() > 0


def test_hyp_plus_hier_on_flattened_views():
    """docs/hier.md#combination: the official SupCon/Hyp+HIER crashes on (n, IPC, D) embeddings."""
    x, labels = features()
    views = ToPoincare(riemannian=False)(x).view(12, 2, 16)
    hyp = losses.NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1))
    combined = losses.MultipleLosses([hyp, small_loss()], weights=[1, 0.5])
    value = combined(views.flatten(0, 1), labels)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="flatten"):
        small_loss().hier_losses(views, labels.view(12, 2))


def test_bf16_autocast_keeps_proxies_and_hyperbolic_math_in_float32(monkeypatch):
    seen = []

    def spy(dist, *args, **kwargs):
        seen.append((dist.dtype, torch.is_autocast_enabled("cpu")))
        return hier_triplet_loss(dist, *args, **kwargs)

    monkeypatch.setattr(hier_module, "hier_triplet_loss", spy)
    x, labels = features()
    linear = torch.nn.Linear(16, 16)
    loss = small_loss()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        u = linear(x)
        assert u.dtype == torch.bfloat16
        z = ToPoincare()(u).to(torch.bfloat16)
        value = loss(z, labels)
    value.float().backward()
    assert torch.isfinite(value)
    assert seen == [(torch.float32, False)] * 2
    assert loss.lcas.dtype == torch.float32 and loss.lcas.grad.dtype == torch.float32
    assert torch.isfinite(loss.lcas.grad).all() and torch.isfinite(linear.weight.grad).all()


def test_float64_module():
    x, labels = features(dtype=torch.float64)
    loss = small_loss().double()
    value = loss(ToPoincare()(x), labels)
    value.backward()
    assert value.dtype == torch.float64 and loss.lcas.grad.dtype == torch.float64


@pytest.mark.parametrize(
    "embeddings, labels, match",
    [
        (torch.zeros(6, 15), torch.arange(6), "shape"),
        (torch.full((6, 16), 0.9), torch.arange(6), "outside"),
        (torch.full((6, 16), float("nan")), torch.arange(6), "NaN"),
        (torch.zeros(6, 16), None, "cannot both be None"),
    ],
)
def test_bad_input(embeddings, labels, match):
    with pytest.raises(ValueError, match=match):
        small_loss()(embeddings, labels)


def test_ref_emb_is_not_supported():
    x, labels = features()
    z = ToPoincare()(x)
    with pytest.raises(ValueError, match="ref_emb"):
        small_loss()(z, labels, ref_emb=z.detach().clone(), ref_labels=labels)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"num_proxies": 0},
        {"embedding_size": 2.0},
        {"tau": 0.0},
        {"clip_r": None},
        {"topk": 0},
        {"distance": PoincareDistance()},
    ],
)
def test_bad_hyperparameters(kwargs):
    kwargs = {"embedding_size": 16, **kwargs}
    with pytest.raises(ValueError):
        HIERLoss(**kwargs)


def test_parameters_and_initialisation():
    loss = HIERLoss(128, num_proxies=2048, generator=gen(0))
    assert [name for name, _ in loss.named_parameters()] == ["lcas"]
    assert isinstance(loss.lcas, torch.nn.Parameter) and loss.lcas.dtype == torch.float32
    assert loss.lcas.shape == (2048, 128)
    # docs/hier.md#proxies: θ = N(0, I)/√D · 0.9·r, tangent norm ≈ 2.07, ~4.5 % clipped at D = 128.
    norms = loss.lcas.detach().norm(dim=1)
    assert norms.mean().item() == pytest.approx(0.9 * 2.3, rel=0.01)
    assert 0.025 < (norms > 2.3).double().mean().item() < 0.07

    groups = loss.param_groups(lr=1e-4, weight_decay=0.01)
    assert groups == [{"name": "lcas", "params": [loss.lcas], "lr": 5e-3, "weight_decay": 0.01}]
    with_reg = HIERLoss(16, num_proxies=8, embedding_regularizer=HIERRegularizer(16, num_proxies=8))
    assert [g["name"] for g in with_reg.param_groups(lr=1.0)] == ["lcas", "other"]

    for name in ("embedding_size", "num_proxies", "margin", "tau", "c", "clip_r", "topk"):
        assert name in loss._record_these


def test_example_improves_recall():
    spec = importlib.util.spec_from_file_location("pa_plus_hier", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(steps=50)
    assert result["recall_at_1_after"] > 2 * result["recall_at_1_before"]


def test_reducer_with_no_effect_raises():
    """Both parts are already reduced: a PML reducer would be silently ignored."""
    from pytorch_metric_learning.reducers import (
        AvgNonZeroReducer,
        MeanReducer,
        SumReducer,
        ThresholdReducer,
    )

    for reducer in (SumReducer(), AvgNonZeroReducer(), ThresholdReducer(low=0.1)):
        with pytest.raises(ValueError, match=f"ignores reducer={type(reducer).__name__}"):
            HIERLoss(16, num_proxies=8, reducer=reducer)
    g = torch.Generator().manual_seed(0)
    z = ToPoincare()(torch.randn(12, 16, generator=g))
    labels = torch.arange(6).repeat_interleave(2)
    value = small_loss(reducer=MeanReducer())(z, labels)
    parts = small_loss(reducer=DoNothingReducer())(z, labels)
    torch.testing.assert_close(
        value, parts["sample_triplet_loss"]["losses"] + parts["proxy_triplet_loss"]["losses"]
    )


def test_distance_comes_from_pml_default_distance():
    loss = HIERLoss(16, num_proxies=8, c=0.3)
    assert isinstance(loss.get_default_distance(), PoincareDistance)
    assert loss.distance.c == 0.3 and loss.distance.normalize_embeddings is False
    assert loss.miner.distance is loss.distance


def test_input_check_is_under_the_loss_flag():
    outside = torch.zeros(12, 16)
    outside[3, 0] = 5.0
    labels = torch.arange(6).repeat_interleave(2)
    with pytest.raises(ValueError, match=r"HIERLoss embeddings rows \[3\]"):
        small_loss()(outside, labels)
    assert small_loss().check_inputs and not small_loss(check_inputs=False).check_inputs


@pytest.mark.parametrize("official", [False, True])
def test_one_ball_for_distance_proxies_and_checks(official, dtype):
    loss = small_loss(c=0.05, official=official).to(dtype)
    assert loss.distance.ball is loss.to_poincare.ball is loss.ball
    assert (loss.ball.c_raw, loss.ball.official) == (0.05, official)
    x, labels = features(dtype=dtype)
    assert torch.isfinite(loss(ToPoincare(c=0.05)(x), labels))
    assert loss.distance.ball is loss.to_poincare.ball is loss.ball
