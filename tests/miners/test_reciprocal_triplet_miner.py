"""ReciprocalTripletMiner: mutual top-k sets, draw distribution, PML compatibility, golden sets."""

import warnings

import pytest
import torch
from pytorch_metric_learning import losses
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from scipy.stats import chi2

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.miners import ReciprocalTripletMiner

GOLDEN_CASES = ["hier_small_f64", "hier_small_f32", "hier_medium_f32"]


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def clustered_batch(n_classes=12, ipc=2, dim=8, spread=0.7, seed=0):
    """Ball points of ``n_classes`` classes × ``ipc`` views, labels [0, 0, 1, 1, ...]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(ipc)
    centers = torch.randn(n_classes, dim, generator=g)
    u = centers[labels] + spread * torch.randn(len(labels), dim, generator=g)
    return ToPoincare(c=0.1)(u), labels


def oracle_sets(dist, labels, topk, bonus=1.0, anchor_as_negative=False):
    """Pos/Neg index sets per anchor, straight from docs/hier.md#mining with Python loops."""
    n = len(dist)
    sim = torch.exp(-dist.double())
    if labels is not None:
        sim = sim + bonus * (labels[:, None] == labels[None, :]).double()
    top = [set(sim[a].topk(topk).indices.tolist()) for a in range(n)]
    pos, neg = [], []
    for a in range(n):
        mutual = {b for b in range(n) if b in top[a] and a in top[b]}
        pos.append(mutual - {a})
        others = set(range(n)) - mutual - {a}
        neg.append(others | {a} if anchor_as_negative else others)
    return pos, neg


def test_triplets_follow_mutual_topk_sets_and_counts():
    z, labels = clustered_batch()
    miner = ReciprocalTripletMiner(topk=5, triplets_per_anchor=40, generator=gen(0))
    a, p, n = miner(z, labels)
    pos, neg = oracle_sets(PoincareDistance()(z), labels, topk=5)

    qualifying = [x for x in range(len(z)) if len(pos[x]) >= 2]
    assert 0 < len(qualifying) < len(z)
    assert torch.equal(a, torch.tensor(qualifying).repeat_interleave(40))
    for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        assert positive in pos[anchor]
        assert negative in neg[anchor]
        assert negative != anchor
    for x in (a, p, n):
        assert x.dtype == torch.int64


def test_draws_are_uniform_with_replacement():
    """Per anchor, positives and negatives are uniform over Pos_a and Neg_a (pooled χ² test);
    t ≫ |Pos_a|, so all t draws landing in Pos_a also shows they are with replacement."""
    z, labels = clustered_batch(n_classes=10)
    t = 600
    miner = ReciprocalTripletMiner(topk=6, triplets_per_anchor=t, generator=gen(1))
    a, p, n = miner(z, labels)
    pos, neg = oracle_sets(PoincareDistance()(z), labels, topk=6)

    for drawn, sets in ((p, pos), (n, neg)):
        stat, dof = 0.0, 0
        for anchor in a.unique().tolist():
            support = sorted(sets[anchor])
            values = drawn[a == anchor]
            observed = torch.tensor([(values == s).sum().item() for s in support], dtype=float)
            assert observed.sum() == t, "a draw fell outside the anchor's set"
            expected = t / len(support)
            stat += ((observed - expected) ** 2 / expected).sum().item()
            dof += len(support) - 1
        assert dof > 0
        assert chi2.sf(stat, dof) > 1e-3, (stat, dof)


def test_same_class_bonus_makes_partners_mutual():
    # Wide clusters: without the bonus many same-class partners are not mutual neighbours.
    z, labels = clustered_batch(n_classes=16, spread=3.0, seed=3)
    dist = PoincareDistance()(z)
    partner = torch.arange(len(z)) ^ 1

    with_bonus = ReciprocalTripletMiner(topk=4)
    pos, _ = with_bonus.candidate_sets(dist, labels)
    assert pos[torch.arange(len(z)), partner].all()

    without = ReciprocalTripletMiner(topk=4, same_class_bonus=0.0)
    pos_nb, _ = without.candidate_sets(dist, labels)
    assert not pos_nb[torch.arange(len(z)), partner].all()
    pos_none, _ = with_bonus.candidate_sets(dist, None)
    assert torch.equal(pos_nb, pos_none)

    # The bonus lets partners in, but positives are not label-consistent: other classes too.
    a, p, _ = ReciprocalTripletMiner(topk=4, generator=gen(0))(z, labels)
    assert (labels[a] == labels[p]).any() and (labels[a] != labels[p]).any()


def test_mutuality_is_symmetric():
    z, labels = clustered_batch(seed=5)
    pos, neg = ReciprocalTripletMiner(topk=5).candidate_sets(PoincareDistance()(z), labels)
    assert torch.equal(pos, pos.T)
    assert not (pos & neg).any()
    assert not pos.diagonal().any() and not neg.diagonal().any()


def test_anchor_as_negative_reproduces_official_sets():
    z, labels = clustered_batch(seed=2)
    miner = ReciprocalTripletMiner(
        topk=5, triplets_per_anchor=400, anchor_as_negative=True, generator=gen(2)
    )
    a, p, n = miner(z, labels)
    pos, neg = oracle_sets(PoincareDistance()(z), labels, topk=5, anchor_as_negative=True)
    for anchor, negative in zip(a.tolist(), n.tolist(), strict=True):
        assert negative in neg[anchor]
    # The anchor itself is drawn as a negative at rate ≈ 1/|Neg_a|.
    self_rate = (a == n).double().mean().item()
    expected = sum(1 / len(neg[x]) for x in a.unique().tolist()) / len(a.unique())
    assert self_rate == pytest.approx(expected, rel=0.2)
    assert not (a == p).any()


def test_ref_emb_uses_rows_and_columns():
    z, labels = clustered_batch(seed=4)
    queries, q_labels = z[:10], labels[:10]
    miner = ReciprocalTripletMiner(topk=4, triplets_per_anchor=30, generator=gen(0))
    a, p, n = miner(queries, q_labels, z, labels)
    sim = torch.exp(-PoincareDistance()(queries, z)) + (q_labels[:, None] == labels).float()
    row_top = sim.topk(4, dim=1).indices
    col_top = sim.topk(4, dim=0).indices
    for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        assert positive in row_top[anchor] and anchor in col_top[:, positive]
        assert not (negative in row_top[anchor] and anchor in col_top[:, negative])
    assert a.max() < 10 and p.max() < len(z)


def test_no_mutual_neighbour_gives_empty_tuple():
    z, labels = clustered_batch()
    a, p, n = ReciprocalTripletMiner(topk=1)(z, labels)
    assert len(a) == len(p) == len(n) == 0 and a.dtype == torch.int64


def test_topk_too_large_is_clamped_with_warning():
    z, labels = clustered_batch(n_classes=4)
    miner = ReciprocalTripletMiner(topk=50, generator=gen(0))
    with pytest.warns(UserWarning, match="topk=50"):
        a, p, n = miner(z, labels)
    pos, neg = oracle_sets(PoincareDistance()(z), labels, topk=len(z) - 1)
    for anchor, positive, negative in zip(a.tolist(), p.tolist(), n.tolist(), strict=True):
        assert positive in pos[anchor] and negative in neg[anchor]


def test_generator_determinism():
    z, labels = clustered_batch()
    first = ReciprocalTripletMiner(topk=5, generator=gen(7))(z, labels)
    again = ReciprocalTripletMiner(topk=5, generator=gen(7))(z, labels)
    other = ReciprocalTripletMiner(topk=5, generator=gen(8))(z, labels)
    assert all(torch.equal(x, y) for x, y in zip(first, again, strict=True))
    assert torch.equal(first[0], other[0])
    assert not all(torch.equal(x, y) for x, y in zip(first[1:], other[1:], strict=True))


@pytest.mark.parametrize("anchor_as_negative", [False, True])
@pytest.mark.parametrize(
    "loss",
    [
        losses.TripletMarginLoss(margin=0.1, distance=PoincareDistance()),
        losses.MultiSimilarityLoss(),
        losses.NTXentLoss(temperature=0.2, distance=PoincareDistance()),
    ],
    ids=["triplet", "multisimilarity", "ntxent"],
)
def test_pml_losses_accept_the_triplets(loss, anchor_as_negative):
    z, labels = clustered_batch()
    z.requires_grad_()
    miner = ReciprocalTripletMiner(topk=5, anchor_as_negative=anchor_as_negative, generator=gen(0))
    value = loss(z, labels, miner(z, labels))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(z.grad).all()


def test_records_hyperparameters_and_stats():
    z, labels = clustered_batch()
    miner = ReciprocalTripletMiner(topk=5, triplets_per_anchor=7, collect_stats=True)
    a, _, _ = miner(z, labels)
    assert {"topk", "triplets_per_anchor", "same_class_bonus"} <= set(miner._record_these)
    assert miner.num_triplets == len(a) and miner.num_anchors == len(a) // 7
    assert isinstance(miner.distance, PoincareDistance)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topk": 0},
        {"topk": 2.5},
        {"triplets_per_anchor": 0},
        {"same_class_bonus": -1.0},
        {"distance": CosineSimilarity()},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        ReciprocalTripletMiner(**kwargs)


def test_other_distances_and_square_check():
    z, labels = clustered_batch()
    a, _, _ = ReciprocalTripletMiner(topk=5, distance=LpDistance(), generator=gen(0))(z, labels)
    assert len(a) > 0
    with pytest.raises(ValueError, match="square"):
        ReciprocalTripletMiner().candidate_sets(torch.rand(3, 4))


def test_generator_on_another_device_is_rejected():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA to build a generator on another device")
    miner = ReciprocalTripletMiner(topk=2, generator=torch.Generator(device="cuda"))
    with pytest.raises(ValueError, match="generator"):
        miner.mine_from_distances(torch.rand(5, 5))


@pytest.mark.parametrize("name", GOLDEN_CASES)
def test_golden_mining_sets(hier_golden, name):
    """golden.md, replay, "mining check without the draws", with the official negative sets."""
    case = hier_golden[name]
    cfg = case["config"]
    batch, dist = cfg["B"], case["all_dist_matrix"]
    miner = ReciprocalTripletMiner(
        topk=cfg["topk"], triplets_per_anchor=cfg["t_per_anchor"], anchor_as_negative=True
    )
    parts = [
        (dist[:batch, :batch], case["labels"], case["hier"]["triplets_samples"]),
        (dist[batch:, batch:], None, case["hier"]["triplets_proxies"]),
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for block, labels, recorded in parts:
            pos, neg = miner.candidate_sets(block, labels)
            a, p, n = recorded.unbind(1)
            assert pos[a, p].all() and neg[a, n].all()
            anchors, counts = torch.unique_consecutive(a, return_counts=True)
            assert torch.equal(anchors, (pos.sum(1) >= 2).nonzero().squeeze(1))
            assert (counts == cfg["t_per_anchor"]).all()
            mined_a, mined_p, mined_n = miner.mine_from_distances(block, labels)
            assert torch.equal(mined_a, a)
            assert pos[mined_a, mined_p].all() and neg[mined_a, mined_n].all()


def test_tuple_miner_use_warns_once_and_same_class_positives_is_label_consistent():
    """As PML's ``tuple_miner`` with 8 images per class and topk = 20, many default "positives"
    are from other classes; the miner says so once, and ``same_class_positives`` fixes it."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(6).repeat_interleave(8)
    u = torch.randn(6, 8, generator=g)[labels] + 1.5 * torch.randn(48, 8, generator=g)
    z = ToPoincare(c=0.1)(u)
    default = ReciprocalTripletMiner(topk=20, triplets_per_anchor=10, generator=gen(1))
    loss_fn = losses.TripletMarginLoss(margin=0.1, distance=PoincareDistance())
    with pytest.warns(UserWarning, match="not label-consistent"):
        a, p, n = default(z, labels)
    assert (labels[a] != labels[p]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss_fn(z, labels, default(z, labels))  # once per miner
        consistent = ReciprocalTripletMiner(
            topk=20, triplets_per_anchor=10, same_class_positives=True, generator=gen(1)
        )
        a, p, n = consistent(z, labels)
        assert len(a) > 0
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()
        loss_fn(z, labels, (a, p, n))
        # With a separate reference set too.
        a, p, n = consistent(z[:24], labels[:24], z, labels)
        assert (labels[a] == labels[p]).all() and (labels[a] != labels[n]).all()
        # HIERLoss's own use (mine, not forward) stays silent.
        default.mine(z, labels, z, labels)
    with pytest.raises(ValueError, match="needs labels"):
        consistent.mine_from_distances(PoincareDistance()(z), None)
