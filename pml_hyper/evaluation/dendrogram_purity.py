"""Dendrogram purity of the average-linkage tree of embeddings (Heller & Ghahramani, 2005)."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch

from ..manifolds import PoincareBall
from ..utils.checks import check_finite

DISTANCES = ("poincare", "cosine")
MAX_POINTS = 10_000
"""Default tree-size limit: the condensed distances take 4·N² bytes, and scipy's linkage a copy."""
MAX_PAIRS = 1_000_000
"""Default pair limit: exact up to this many same-label pairs, else this many sampled pairs."""
BLOCK_ELEMENTS = 1 << 22
"""Distances computed per block of rows (times 8 bytes, times a few temporaries)."""


@dataclass(frozen=True)
class PurityResult:
    """What :func:`dendrogram_purity` computed (``details=True``).

    Attributes:
        value: the dendrogram purity, or its estimate.
        exact: True when every same-label pair of the tree's points was counted.
        pairs: the pairs counted (``total_pairs`` when exact, else the sample size).
        total_pairs: the same-label pairs among the tree's points.
        points: the tree's leaves (N, or ``max_points`` when the points were subsampled).
        std_error: the standard error of the pair-sampled estimate; 0 when exact.
    """

    value: float
    exact: bool
    pairs: int
    total_pairs: int
    points: int
    std_error: float


def condensed_distances(embeddings: torch.Tensor, distance: str, c: float = 0.1) -> np.ndarray:
    """Condensed float64 distances (``scipy``'s ``pdist`` layout, N(N−1)/2 entries), Poincaré
    (ball of curvature −c) or cosine (1 − cos), computed in blocks of rows."""
    x = torch.as_tensor(embeddings).detach().to("cpu", torch.float64)
    if distance == "poincare":
        ball = PoincareBall(c=c)
        ball.check_point(x, "embeddings")
        block_distances = ball.pairwise_dist
    elif distance == "cosine":
        norms = x.norm(dim=1)
        if (norms == 0).any():
            raise ValueError(
                f"dendrogram_purity: zero embeddings (rows {torch.nonzero(norms == 0)[:10, 0]})"
                " have no cosine distance"
            )
        x = x / norms[:, None]

        def block_distances(rows, points):
            return (1 - rows @ points.T).clamp_min(0)
    else:
        raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
    n = len(x)
    out = np.empty(n * (n - 1) // 2)
    block = max(1, BLOCK_ELEMENTS // max(n, 1))
    start = 0
    for first in range(0, n, block):
        rows = block_distances(x[first : first + block], x).numpy()
        for offset, row in enumerate(rows):
            tail = row[first + offset + 1 :]
            out[start : start + len(tail)] = tail
            start += len(tail)
    return out


def _exact_purity(merges: np.ndarray, y: np.ndarray) -> float:
    """Sum over all same-label pairs of their LCA's purity, by merging per-cluster label counts
    smaller into larger (O(N log N) dictionary updates): a merge of clusters holding n_l and n_r
    points of label k adds the n_l·n_r pairs whose LCA it is, each of purity (n_l + n_r)/size."""
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
    return score


def _sample_pairs(
    y: np.ndarray, counts: np.ndarray, size: int, rng: np.random.Generator
) -> np.ndarray:
    """``(size, 2)`` same-label pairs of distinct points, i.i.d. uniform over all such pairs:
    a pair index uniform in [0, total), its label by the cumulative pair counts, then an
    ordered pair of distinct members of that label."""
    cumulative = np.cumsum(counts * (counts - 1) // 2)
    label = np.searchsorted(cumulative, rng.integers(0, cumulative[-1], size), side="right")
    members = np.argsort(y, kind="stable")
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])[label]
    i = rng.integers(0, counts[label])
    j = rng.integers(0, counts[label] - 1)
    j = j + (j >= i)
    return np.stack([members[first + i], members[first + j]], axis=1)


def _pair_purities(merges: np.ndarray, y: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Each pair's LCA purity, vectorised. In the dendrogram's leaf order (left child first)
    every node's leaves are a contiguous range; the gap between neighbouring leaves belongs to
    the merge that joined them, and a pair's LCA is the latest merge over the gaps between its
    two leaves (a range maximum, from a sparse table). Its label count is a range count of
    (label, position) keys."""
    n = len(y)
    children = merges[:, :2].astype(np.int64)
    size = np.concatenate([np.ones(n, np.int64), merges[:, 3].astype(np.int64)])
    start = np.zeros(2 * n - 1, np.int64)
    for t in range(n - 2, -1, -1):  # parents (later merges) before their children
        a, b = children[t]
        start[a] = start[n + t]
        start[b] = start[n + t] + size[a]
    gap_merge = np.empty(n - 1, np.int64)
    gap_merge[start[children[:, 1]] - 1] = np.arange(n - 1)
    table = [gap_merge]
    while 2 * (width := 1 << (len(table) - 1)) <= n - 1:
        table.append(np.maximum(table[-1][:-width], table[-1][width:]))
    low, high = np.sort(start[pairs], axis=1).T  # leaf positions, low < high
    level = np.floor(np.log2(high - low)).astype(np.int64)
    lca = np.empty(len(pairs), np.int64)
    for k in np.unique(level):
        at = level == k
        lca[at] = np.maximum(table[k][low[at]], table[k][high[at] - (1 << k)])
    node = n + lca
    keys = np.sort(y * n + start[:n])
    label = y[pairs[:, 0]] * n
    count = np.searchsorted(keys, label + start[node] + size[node]) - np.searchsorted(
        keys, label + start[node]
    )
    return count / size[node]


def dendrogram_purity(
    embeddings: torch.Tensor,
    labels,
    distance: str = "poincare",
    c: float = 0.1,
    max_points: int = MAX_POINTS,
    max_pairs: int = MAX_PAIRS,
    seed: int = 0,
    details: bool = False,
) -> float | PurityResult:
    """Dendrogram purity of the average-linkage tree of ``embeddings`` w.r.t. ``labels``.

    DP = mean, over all pairs (i, j) of distinct points with the same label, of the fraction of
    the leaves under their lowest common ancestor that carry that label (Heller & Ghahramani,
    "Bayesian Hierarchical Clustering", ICML 2005). 1 means every class is a subtree.

    The tree is built on all N points up to ``max_points``: O(N²) time and memory (the
    condensed float64 distances take 4·N² bytes and scipy's linkage copies them, about 0.8 GB
    at the default 10,000). Above, with a ``RuntimeWarning``, it is built on ``max_points``
    points drawn uniformly without replacement (seeded), and DP is that tree's.

    DP is exact (every same-label pair) when the tree's points have at most ``max_pairs``
    same-label pairs. Above, it is estimated from ``max_pairs`` pairs sampled i.i.d. uniformly
    over all same-label pairs (not per label; ``numpy`` generator seeded with ``seed``), so the
    estimate is unbiased with a standard error of at most 0.5/√max_pairs. ``details=True``
    returns a :class:`PurityResult` saying which was used.

    Args:
        embeddings: ``(N, D)``; points of the ball for ``"poincare"``.
        labels: ``(N,)`` ints, e.g. one level of a dataset's ``hierarchy``.
        distance: ``"poincare"`` (hyperbolic heads) or ``"cosine"``.
        c: the ball's curvature −c, for ``"poincare"``.
        max_points: the tree-size limit.
        max_pairs: the pair limit of the exact computation, and the sample size above it.
        seed: seed of the point subsample and of the pair sample.
        details: return a :class:`PurityResult` instead of the value.
    """
    from scipy.cluster.hierarchy import linkage

    x = torch.as_tensor(embeddings)
    y = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
    if x.dim() != 2:
        raise ValueError(f"embeddings must be (N, D), got shape {tuple(x.shape)}")
    if len(y) != len(x):
        raise ValueError(f"{len(y)} labels for {len(x)} embeddings")
    check_finite(x, "embeddings")
    for name, limit in (("max_points", max_points), ("max_pairs", max_pairs)):
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 2:
            raise ValueError(f"{name} must be an int >= 2, got {limit!r}")
    rng = np.random.default_rng(seed)
    if len(x) > max_points:
        warnings.warn(
            f"dendrogram_purity: {len(x)} points exceed max_points={max_points} (the tree "
            f"takes O(N²) memory); using a seeded uniform subsample of {max_points} points",
            RuntimeWarning,
            stacklevel=2,
        )
        keep = np.sort(rng.choice(len(x), max_points, replace=False))
        x, y = x[torch.from_numpy(keep)], y[keep]
    _, y = np.unique(y, return_inverse=True)
    y = y.reshape(-1).astype(np.int64)
    counts = np.bincount(y)
    total = int((counts * (counts - 1) // 2).sum())
    if total == 0:
        raise ValueError(
            "dendrogram_purity needs at least two points with the same label; all "
            f"{len(y)} labels differ"
        )
    merges = linkage(condensed_distances(x, distance, c), method="average")
    if total <= max_pairs:
        result = PurityResult(
            float(_exact_purity(merges, y) / total), True, total, total, len(y), 0.0
        )
    else:
        pairs = _sample_pairs(y, counts, max_pairs, rng)
        purities = _pair_purities(merges, y, pairs)
        error = float(purities.std(ddof=1) / np.sqrt(len(purities)))
        result = PurityResult(float(purities.mean()), False, max_pairs, total, len(y), error)
    return result if details else result.value
