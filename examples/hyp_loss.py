"""Hyp (Ermolov et al., CVPR 2022) as a PML loss: NTXentLoss with the Poincaré distance.

A linear head followed by ``ToPoincare(c=0.1, clip_r=2.3, riemannian=False)`` is trained with
``NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1))`` on random two-view data (each
class seen twice per batch, as in Hyp's sampler). With two views per class this PML loss equals
half the Hyp paper's loss (docs/hier.md#hyp).

    python examples/hyp_loss.py
"""

import argparse

import torch
from pytorch_metric_learning.losses import NTXentLoss

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare


def two_view_batch(n_classes: int, dim: int, g: torch.Generator):
    """Two noisy views of ``n_classes`` random prototypes: (2n, dim) features, (2n,) labels."""
    prototypes = torch.randn(n_classes, dim, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(2)
    features = prototypes[labels] + 1.5 * torch.randn(2 * n_classes, dim, generator=g)
    return features, labels


def main(steps: int = 30, n_classes: int = 64, in_dim: int = 64, emb_dim: int = 16) -> list:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(in_dim, emb_dim), ToPoincare(c=0.1, clip_r=2.3, riemannian=False)
    )
    loss_fn = NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    features, labels = two_view_batch(n_classes, in_dim, g)
    history = []
    for step in range(steps):
        loss = loss_fn(model(features), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
        if step % 10 == 0 or step == steps - 1:
            hyp = 2 * loss.item()
            print(f"step {step:3d}: PML NTXent (Poincaré) = {loss.item():.4f}, Hyp = {hyp:.4f}")
    return history


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    main(parser.parse_args().steps)
