"""Hyperbolic retrieval with PML's AccuracyCalculator and pml_hyper's exact HyperbolicKNN.

Synthetic hierarchical data (super-classes → classes → samples) is mapped into the Poincaré ball;
retrieval metrics are computed with the exact hyperbolic kNN and, for comparison, with PML's
brute-force CustomKNN(PoincareDistance) — the two give identical numbers.

    python examples/hyperbolic_knn.py
"""

import argparse
import time

import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN

from pml_hyper.distances import PoincareDistance
from pml_hyper.knn import HyperbolicKNN
from pml_hyper.layers import ToPoincare


def hierarchical_embeddings(n_super: int, n_sub: int, per_class: int, dim: int, seed: int = 0):
    """Tangent vectors with a two-level hierarchy, mapped into the ball by ToPoincare."""
    g = torch.Generator().manual_seed(seed)
    supers = torch.randn(n_super, dim, generator=g)
    classes = supers.repeat_interleave(n_sub, 0) + 0.6 * torch.randn(
        n_super * n_sub, dim, generator=g
    )
    labels = torch.arange(n_super * n_sub).repeat_interleave(per_class)
    u = classes[labels] + 1.2 * torch.randn(len(labels), dim, generator=g)
    return ToPoincare(c=0.1, clip_r=2.3, riemannian=False)(u), labels


def main(n_super: int = 10, n_sub: int = 10, per_class: int = 10, dim: int = 64) -> dict:
    embeddings, labels = hierarchical_embeddings(n_super, n_sub, per_class, dim)
    include = ("precision_at_1", "r_precision", "mean_average_precision_at_r")
    results = {}
    for name, knn in [
        ("HyperbolicKNN", HyperbolicKNN(c=0.1)),
        ("CustomKNN(PoincareDistance)", CustomKNN(PoincareDistance(c=0.1), batch_size=1024)),
    ]:
        calculator = AccuracyCalculator(include=include, k="max_bin_count", knn_func=knn)
        start = time.perf_counter()
        acc = calculator.get_accuracy(embeddings, labels, ref_includes_query=True)
        elapsed = time.perf_counter() - start
        results[name] = acc
        print(f"{name:>28}: " + ", ".join(f"{k}={v:.4f}" for k, v in acc.items()), end="")
        print(f"  ({elapsed:.2f} s)")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-super", type=int, default=10)
    parser.add_argument("--n-sub", type=int, default=10)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    main(args.n_super, args.n_sub, args.per_class, args.dim)
