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


def brute_force_purity(geometry, x, y):
    """From the definition: the leaf set of every tree node; per same-label pair, the smallest
    node holding both; its fraction of leaves with that label; averaged over the pairs."""
    n = len(x)
    merges = linkage(squareform(reference_distances(geometry, x), checks=False), "average")
    leaves = [{i} for i in range(n)]
    for a, b, _, _ in merges:
        leaves.append(leaves[int(a)] | leaves[int(b)])
    y = y.tolist()
    purities = []
    for i, j in itertools.combinations(range(n), 2):
        if y[i] != y[j]:
            continue
        lca = min((s for s in leaves if i in s and j in s), key=len)
        purities.append(sum(y[m] == y[i] for m in lca) / len(lca))
    return float(np.mean(purities))


@pytest.mark.parametrize("geometry", ["poincare", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_matches_brute_force(geometry, seed):
    x, y = make_data(geometry, seed=seed)
    got = dendrogram_purity(x, y, distance=geometry, c=C)
    expected = brute_force_purity(geometry, x, y)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got < 1


def test_perfect_tree_and_sampled_estimate():
    y = torch.arange(400) % 4
    x = torch.nn.functional.one_hot(y, 4).double() + 0.01 * torch.randn(400, 4)
    assert dendrogram_purity(x, y, distance="cosine") == pytest.approx(1.0)
    xs, ys = make_data("cosine", n=300, seed=3)
    exact = dendrogram_purity(xs, ys, distance="cosine")
    sampled = dendrogram_purity(xs, ys, distance="cosine", max_points=200, seed=0)
    assert sampled == dendrogram_purity(xs, ys, distance="cosine", max_points=200, seed=0)
    keep = np.sort(np.random.default_rng(0).choice(300, 200, replace=False))
    assert sampled == pytest.approx(brute_force_purity("cosine", xs[keep], ys[keep]), abs=1e-12)
    assert abs(sampled - exact) < 0.1


def test_bad_input():
    x, y = make_data("poincare", n=10)
    with pytest.raises(ValueError, match="9 labels for 10 embeddings"):
        dendrogram_purity(x, y[:9])
    bad = x.clone()
    bad[4] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(rows \[4\]\)"):
        dendrogram_purity(bad, y)
    with pytest.raises(ValueError):
        dendrogram_purity(x * 100, y, c=C)  # outside the ball
    with pytest.raises(ValueError, match="distance must be one of"):
        dendrogram_purity(x, y, distance="l2")
    with pytest.raises(ValueError, match="two points with the same label"):
        dendrogram_purity(x, torch.arange(10))
