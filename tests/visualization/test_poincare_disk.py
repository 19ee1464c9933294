import numpy as np
import pytest
import torch

pytest.importorskip("umap")
pytest.importorskip("matplotlib")

from pml_hyper.visualization import poincare_disk, tree_links  # noqa: E402

C = 0.1


def two_level_tree(seed=0):
    """2 root proxies near the origin, 3 child proxies each farther out, 500 samples farther
    still around the children."""
    g = torch.Generator().manual_seed(seed)
    roots = torch.nn.functional.normalize(torch.randn(2, 4, generator=g), dim=1)
    roots = roots * torch.tensor([[0.3], [0.4]])
    children = torch.cat([r + 0.5 * torch.randn(3, 4, generator=g) for r in roots])
    children = 1.5 * torch.nn.functional.normalize(children, dim=1)
    child = torch.randint(6, (500,), generator=g)
    samples = children[child] * 1.3 + 0.1 * torch.randn(500, 4, generator=g)
    proxies = torch.cat([roots, children]).double()
    return samples.double(), child, proxies


def test_links_follow_the_norm_order():
    samples, _, proxies = two_level_tree()
    sample_parent, proxy_parent = tree_links(samples, proxies, c=C)
    p_norm, x_norm = proxies.norm(dim=1), samples.norm(dim=1)
    assert proxy_parent[:2].tolist() == [-1, 0]  # the innermost proxy has no parent
    assert set(proxy_parent[2:].tolist()) <= {0, 1}
    assert (sample_parent >= 0).all()
    assert (p_norm[sample_parent] < x_norm).all()
    for i, j in enumerate(proxy_parent):
        if j >= 0:
            assert p_norm[j] < p_norm[i]


def test_figure_is_written(tmp_path):
    samples, labels, proxies = two_level_tree()
    figure = poincare_disk(samples, labels, proxies=proxies, c=C)
    ax = figure.axes[0]
    (links,) = ax.collections[:1]
    assert len(links.get_segments()) == 500 + 7  # all but the innermost proxy are linked
    points = np.concatenate([col.get_offsets() for col in ax.collections[1:]])
    assert len(points) == 500 + 8 and (np.linalg.norm(points, axis=1) < 1).all()
    out = tmp_path / "disk.png"
    figure.savefig(out)
    assert out.stat().st_size > 10_000


def test_bad_input():
    samples, labels, proxies = two_level_tree()
    with pytest.raises(ValueError, match="499 labels for 500 embeddings"):
        poincare_disk(samples, labels[:499])
    with pytest.raises(ValueError, match="c must be a positive"):
        poincare_disk(samples, c=0)
    bad = samples.clone()
    bad[7] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf \(rows \[7\]\)"):
        poincare_disk(bad)
    with pytest.raises(ValueError):
        poincare_disk(samples * 10, c=C)  # outside the ball
    with pytest.raises(ValueError, match="non-empty"):
        poincare_disk(samples[:0])
