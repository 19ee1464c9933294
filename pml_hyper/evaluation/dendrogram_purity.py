"""Dendrogram purity of the average-linkage tree of embeddings (Heller & Ghahramani, 2005)."""

from __future__ import annotations

import numpy as np
import torch

from ..manifolds import PoincareBall

DISTANCES = ("poincare", "cosine")


def pairwise_distances(embeddings: torch.Tensor, distance: str, c: float = 0.1) -> np.ndarray:
    """``(N, N)`` float64 distances: Poincaré (ball of curvature −c) or cosine (1 − cos)."""
    x = torch.as_tensor(embeddings).detach().to("cpu", torch.float64)
    if distance == "poincare":
        ball = PoincareBall(c=c)
        ball.check_point(x, "embeddings")
        dist = ball.pairwise_dist(x)
    elif distance == "cosine":
        norms = x.norm(dim=1)
        if (norms == 0).any():
            raise ValueError(
                f"dendrogram_purity: zero embeddings (rows {torch.nonzero(norms == 0)[:10, 0]})"
                " have no cosine distance"
            )
        x = x / norms[:, None]
        dist = (1 - x @ x.T).clamp_min(0)
    else:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    dist = dist.numpy().copy()
    np.fill_diagonal(dist, 0.0)
    return np.maximum(dist, dist.T)


def dendrogram_purity(
    embeddings: torch.Tensor,
    labels,
    distance: str = "poincare",
    c: float = 0.1,
    max_points: int = 2000,
    seed: int = 0,
) -> float:
    """Dendrogram purity of the average-linkage tree of ``embeddings`` w.r.t. ``labels``.

    DP = mean, over all pairs (i, j) of distinct points with the same label, of the fraction of
    the leaves under their lowest common ancestor that carry that label (Heller & Ghahramani,
    "Bayesian Hierarchical Clustering", ICML 2005). 1 means every class is a subtree.

    Exact for ``N <= max_points``. Above, a sampled estimate: the tree and DP are computed on
    ``max_points`` points drawn uniformly without replacement (``numpy`` generator seeded with
    ``seed``), so every same-label pair is equally likely to be counted.

    Args:
        embeddings: ``(N, D)``; points of the ball for ``"poincare"``.
        labels: ``(N,)`` ints, e.g. one level of a dataset's ``hierarchy``.
        distance: ``"poincare"`` (hyperbolic heads) or ``"cosine"``.
        c: the ball's curvature −c, for ``"poincare"``.
        max_points: the size limit of the exact computation.
        seed: seed of the subsample above the limit.
    """
    from scipy.cluster.hierarchy import linkage
    from scipy.spatial.distance import squareform

    x = torch.as_tensor(embeddings)
    y = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
    if x.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    if len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} embeddings")
    if not torch.isfinite(x).all():
        rows = torch.nonzero(~torch.isfinite(x).all(dim=1))[:10, 0].tolist()
        raise ValueError(f"embeddings hold NaN or inf (rows {rows})")
    if not (isinstance(max_points, int) and max_points >= 2):
        raise ValueError(f"max_points must be an int >= 2, got {max_points!r}")
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x, y = x[torch.from_numpy(keep)], y[keep]
    _, y = np.unique(y, return_inverse=True)
    counts = np.bincount(y)
    total_pairs = int((counts * (counts - 1) // 2).sum())
    if total_pairs == 0:
        raise ValueError("dendrogram_purity needs at least two points with the same label")
    dist = pairwise_distances(x, distance, c)
    merges = linkage(squareform(dist, checks=False), method="average")
    # class counts per cluster, as {class: count}; leaves 0..n-1, merge t makes cluster n+t
    clusters: list[dict[int, int] | None] = [{int(k): 1} for k in y]
    score = 0.0
    for a, b, _, size in merges:
        left, right = clusters[int(a)], clusters[int(b)]
        clusters[int(a)] = clusters[int(b)] = None
        if len(left) > len(right):
            left, right = right, left
        for k, n_left in left.items():
            n_right = right.get(k, 0)
            if n_right:
                score += n_left * n_right * (n_left + n_right) / size
            right[k] = n_left + n_right
        clusters.append(right)
    return score / total_pairs
