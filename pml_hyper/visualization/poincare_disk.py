"""The Poincaré-disk picture of a learned hierarchy: samples hang under hierarchical proxies."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from ..manifolds import PoincareBall

LOGGER = logging.getLogger(__name__)


def _points(x, name: str, ball: PoincareBall) -> torch.Tensor:
    x = torch.as_tensor(x).detach().to("cpu", torch.float64)
    if x.dim() != 2 or len(x) == 0:
        raise ValueError(f"{name} must be a non-empty (N, D) array, got shape {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        rows = torch.nonzero(~torch.isfinite(x).all(dim=1))[:10, 0].tolist()
        raise ValueError(f"{name} hold NaN or inf (rows {rows})")
    ball.check_point(x, name)
    return x


def tree_links(
    embeddings: torch.Tensor, proxies: torch.Tensor, c: float = 0.1
) -> tuple[np.ndarray, np.ndarray]:
    """The parent of every sample and proxy: its nearest proxy (Poincaré distance) that lies
    closer to the origin (norm below ``1 − 1e-6`` times its own, so rounding never decides);
    −1 where no proxy does.

    Returns:
        ``(sample_parent (N,), proxy_parent (P,))`` int64 indices into ``proxies``.
    """
    ball = PoincareBall(c=c)
    x, p = _points(embeddings, "embeddings", ball), _points(proxies, "proxies", ball)
    if x.shape[1] != p.shape[1]:
        raise ValueError(f"embeddings have dim {x.shape[1]}, proxies {p.shape[1]}")
    p_norm = p.norm(dim=1)

    def parents(points: torch.Tensor) -> np.ndarray:
        dist = ball.pairwise_dist(points, p)
        closer = p_norm[None, :] < points.norm(dim=1)[:, None] * (1 - 1e-6)
        dist[~closer] = float("inf")
        best = dist.argmin(dim=1)
        best[torch.isinf(dist.min(dim=1).values)] = -1
        return best.numpy().astype(np.int64)

    return parents(x), parents(p)


def poincare_disk(
    embeddings: torch.Tensor,
    labels=None,
    proxies: torch.Tensor | None = None,
    c: float = 0.1,
    level_names: Sequence[str] | None = None,
    max_points: int = 2000,
    seed: int = 0,
):
    """Draw points of the ball of curvature −c on the Poincaré disk; returns a matplotlib Figure.

    The points (and proxies) are embedded in 2-D by UMAP with the exact Poincaré distance as
    input (precomputed) and the hyperboloid as output metric, then mapped to the unit disk
    (``(x, y) / (1 + z)``) and centred by a disk isometry. Samples are coloured by label.
    Proxies are open markers; every sample is linked to its nearest proxy closer to the origin
    and every proxy to its nearest proxy closer to the origin (:func:`tree_links`), which draws
    the learned tree.

    Args:
        embeddings: ``(N, D)`` points of the ball.
        labels: ``(N,)`` ints, or None (one colour).
        proxies: ``(P, D)`` points of the ball (e.g. HIER's ``loss.proxies``), or None.
        c: curvature −c of the ball, > 0.
        level_names: names for the labels' values, used in the legend (≤ 20 shown).
        max_points: samples above this are subsampled uniformly (seeded).
        seed: seed of the subsample and of UMAP.
    """
    if isinstance(c, bool) or not isinstance(c, (int, float)) or not c > 0:
        raise ValueError(f"c must be a positive float, got {c!r}")
    ball = PoincareBall(c=float(c))
    x = _points(embeddings, "embeddings", ball)
    y = None
    if labels is not None:
        y = np.asarray(torch.as_tensor(labels).cpu()).reshape(-1)
        if len(y) != len(x):
            raise ValueError(f"{len(y)} labels for {len(x)} embeddings")
    p = None if proxies is None else _points(proxies, "proxies", ball)
    if p is not None and p.shape[1] != x.shape[1]:
        raise ValueError(f"embeddings have dim {x.shape[1]}, proxies {p.shape[1]}")
    if len(x) > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(len(x), max_points, replace=False))
        x = x[torch.from_numpy(keep)]
        y = None if y is None else y[keep]
    points = x if p is None else torch.cat([x, p])
    if len(points) < 4:
        raise ValueError(f"poincare_disk needs at least 4 points, got {len(points)}")
    disk = _umap_disk(ball.pairwise_dist(points).numpy(), seed)
    return _draw(disk, len(x), y, p, x, ball.c, level_names)


def _umap_disk(dist: np.ndarray, seed: int) -> np.ndarray:
    import umap

    dist = np.maximum(dist, dist.T)
    np.fill_diagonal(dist, 0.0)
    LOGGER.info("poincare_disk: UMAP on %d points", len(dist))
    print(f"poincare_disk: UMAP on {len(dist)} points ...", flush=True)
    reducer = umap.UMAP(
        n_neighbors=min(15, len(dist) - 1),
        metric="precomputed",
        output_metric="hyperboloid",
        random_state=seed,
        n_jobs=1,
        init="random",
    )
    xy = reducer.fit_transform(dist)
    z = np.sqrt(1 + (xy**2).sum(axis=1))
    disk = xy / (1 + z)[:, None]
    # centre the picture: the disk isometry z -> (z - a) / (1 - conj(a) z), a the mean point
    w = disk[:, 0] + 1j * disk[:, 1]
    a = w.mean()
    w = (w - a) / (1 - np.conj(a) * w)
    disk = np.stack([w.real, w.imag], axis=1)
    if not np.isfinite(disk).all():
        raise RuntimeError("poincare_disk: UMAP returned non-finite coordinates")
    return disk


def _draw(disk, n, y, p, x, c, level_names):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.collections import LineCollection
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 6))
    ax = figure.add_subplot()
    ax.add_patch(matplotlib.patches.Circle((0, 0), 1, fill=False, color="0.4", lw=1))
    samples, proxy_xy = disk[:n], disk[n:]
    if p is not None:
        sample_parent, proxy_parent = tree_links(x, p, c)
        segments = [(samples[i], proxy_xy[j]) for i, j in enumerate(sample_parent) if j >= 0]
        segments += [(proxy_xy[i], proxy_xy[j]) for i, j in enumerate(proxy_parent) if j >= 0]
        ax.add_collection(LineCollection(segments, colors="0.6", linewidths=0.4, zorder=1))
    if y is None:
        ax.scatter(samples[:, 0], samples[:, 1], s=6, zorder=2)
    else:
        classes = np.unique(y)
        colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, max(len(classes), 2)))
        for k, label in enumerate(classes):
            at = y == label
            name = level_names[label] if level_names is not None else str(label)
            ax.scatter(*samples[at].T, s=6, color=colours[k], zorder=2, label=name)
        if len(classes) <= 20:
            ax.legend(fontsize=6, loc="upper right", markerscale=2)
    if p is not None:
        ax.scatter(*proxy_xy.T, s=40, facecolors="none", edgecolors="k", zorder=3)
    ax.set_xlim(-1.05, 1.05)
    ax.set_ylim(-1.05, 1.05)
    ax.set_aspect("equal")
    ax.axis("off")
    return figure
