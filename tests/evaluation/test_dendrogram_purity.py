import itertools

import numpy as np
import pytest
import torch
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from pml_hyper.evaluation import dendrogram_purity
from pml_hyper.layers import ToPoincare

C = 0.1


def make_data(geometry, n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(5, (n,), generator=g)
    x = torch.randn(5, 4, generator=g, dtype=torch.float64)[y]
    x = x + 0.8 * torch.randn(n, 4, generator=g, dtype=torch.float64)
    if geometry == "poincare":
        x = ToPoincare(c=C, clip_r=2.3, riemannian=False)(0.5 * x)
    return x, y


def reference_distances(geometry, x):
    if geometry == "poincare":
        sq = torch.cdist(x, x).square()
        den = (1 - C * x.square().sum(1))[:, None] * (1 - C * x.square().sum(1))[None, :]
        d = torch.acosh((1 + 2 * C * sq / den).clamp_min(1)) / C**0.5
    else:
        u = torch.nn.functional.normalize(x, dim=1)
        d = (1 - u @ u.T).clamp_min(0)
    d = d.numpy().copy()
    np.fill_diagonal(d, 0)
    return (d + d.T) / 2


def brute_force_pair_purities(geometry, x, y):
    """From the definition: the leaf set of every tree node; per same-label pair, the smallest
    node holding both; its fraction of leaves with that label. ``{label: [purity, ...]}``."""
    n = len(x)
    merges = linkage(squareform(reference_distances(geometry, x), checks=False), "average")
    leaves = [{i} for i in range(n)]
    for a, b, _, _ in merges:
        leaves.append(leaves[int(a)] | leaves[int(b)])
    y = y.tolist()
    purities = {}
    for i, j in itertools.combinations(range(n), 2):
        if y[i] != y[j]:
            continue
        lca = min((s for s in leaves if i in s and j in s), key=len)
        purities.setdefault(y[i], []).append(sum(y[m] == y[i] for m in lca) / len(lca))
    return purities


def brute_force_purity(geometry, x, y):
    """The mean over all same-label pairs."""
    return float(np.mean(sum(brute_force_pair_purities(geometry, x, y).values(), [])))


@pytest.mark.parametrize("geometry", ["poincare", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exact_matches_brute_force(geometry, seed, dtype):
    x, y = make_data(geometry, seed=seed)
    x = x.to(dtype)
    got = dendrogram_purity(x, y, distance=geometry, c=C, details=True)
    expected = brute_force_purity(geometry, x.double(), y)
    assert got.exact and got.std_error == 0 and got.points == 60
    assert got.pairs == got.total_pairs == sum(n * (n - 1) // 2 for n in torch.bincount(y).tolist())
    assert got.value == pytest.approx(expected, abs=1e-12)
    assert dendrogram_purity(x, y, distance=geometry, c=C) == got.value
    assert 0 < got.value < 1


def test_perfect_tree():
    y = torch.arange(400) % 4
    x = torch.nn.functional.one_hot(y, 4).double() + 0.01 * torch.randn(400, 4)
    assert dendrogram_purity(x, y, distance="cosine") == pytest.approx(1.0)
    assert dendrogram_purity(x, y, distance="cosine", max_pairs=500) == pytest.approx(1.0)


@pytest.mark.parametrize("geometry", ["poincare", "cosine"])
def test_pair_sampled_estimate(geometry):
    """Above the pair limit: within a few standard errors of the brute-force value, and the
    same for the same seed."""
    x, y = make_data(geometry, n=150, seed=3)
    expected = brute_force_purity(geometry, x, y)
    sampled = dendrogram_purity(x, y, distance=geometry, c=C, max_pairs=800, details=True)
    assert not sampled.exact and sampled.pairs == 800 and sampled.total_pairs > 800
    assert 0 < sampled.std_error < 0.05
    assert abs(sampled.value - expected) < 4 * sampled.std_error
    again = dendrogram_purity(x, y, distance=geometry, c=C, max_pairs=800, seed=0, details=True)
    assert again == sampled
    other = dendrogram_purity(x, y, distance=geometry, c=C, max_pairs=800, seed=1)
    assert other != sampled.value


def test_pairs_sampled_uniformly_not_per_label():
    """One large clean class (most pairs, purity 1) and many small mixed ones: a per-label
    sample would weigh the small ones as much as the large one and miss by far."""
    g = torch.Generator().manual_seed(0)
    big = torch.tensor([5.0, 0, 0, 0]) + 0.05 * torch.randn(60, 4, generator=g)
    small = torch.tensor([0, 5.0, 0, 0]) + 1.0 * torch.randn(60, 4, generator=g)
    x = torch.cat([big, small]).double()
    y = torch.cat([torch.zeros(60, dtype=torch.long), 1 + torch.arange(60) % 20])
    expected = brute_force_purity("cosine", x, y)
    sampled = dendrogram_purity(x, y, distance="cosine", max_pairs=1000, details=True)
    assert not sampled.exact
    assert abs(sampled.value - expected) < 4 * sampled.std_error
    per_label = np.mean([np.mean(p) for p in brute_force_pair_purities("cosine", x, y).values()])
    assert abs(per_label - expected) > 20 * sampled.std_error


def test_point_subsample_above_tree_limit():
    x, y = make_data("cosine", n=300, seed=3)
    with pytest.warns(RuntimeWarning, match="300 points exceed max_points=200"):
        sampled = dendrogram_purity(x, y, distance="cosine", max_points=200, details=True)
    assert sampled.points == 200 and sampled.exact
    keep = np.sort(np.random.default_rng(0).choice(300, 200, replace=False))
    assert sampled.value == pytest.approx(brute_force_purity("cosine", x[keep], y[keep]), abs=1e-12)
    assert abs(sampled.value - dendrogram_purity(x, y, distance="cosine")) < 0.1


def test_bad_input():
    x, y = make_data("poincare", n=10)
    with pytest.raises(ValueError, match="9 labels for 10 embeddings"):
        dendrogram_purity(x, y[:9])
    bad = x.clone()
    bad[4] = float("nan")
    bad[7, 1] = float("inf")
    with pytest.raises(ValueError, match=r"embeddings rows \[4, 7\] contain NaN or inf"):
        dendrogram_purity(bad, y)
    with pytest.raises(ValueError):
        dendrogram_purity(x * 100, y, c=C)  # outside the ball
    with pytest.raises(ValueError, match="distance must be one of"):
        dendrogram_purity(x, y, distance="l2")
    with pytest.raises(ValueError, match="two points with the same label; all 10 labels differ"):
        dendrogram_purity(x, torch.arange(10))
    for name in ("max_points", "max_pairs"):
        with pytest.raises(ValueError, match=f"{name} must be an int >= 2"):
            dendrogram_purity(x, y, **{name: 1})
