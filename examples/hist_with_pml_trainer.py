"""Train with HISTLoss in PML's ``MetricLossOnly`` trainer, test, and log with ``HookContainer``.

A tiny CNN learns 16x16 coloured stripe/checker patterns (generated on the fly, nothing is
downloaded). Training and validation classes are disjoint, as in CUB/Cars/SOP. Runs in seconds on
a CPU::

    python examples/hist_with_pml_trainer.py --out runs/hist_example

Logs (CSV + SQLite, via record-keeper) and checkpoints go to ``--out`` (a temporary folder by
default). The record keeper is built directly, so the example does not need tensorboard
(``logging_presets.get_record_keeper`` silently returns nothing without it).
"""

import argparse
import colorsys
import math
import tempfile
from pathlib import Path

import record_keeper
import torch
from pytorch_metric_learning import testers, trainers
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils import common_functions as c_f
from pytorch_metric_learning.utils import logging_presets
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import CustomKNN
from torch import nn

from pml_hyper.losses import HISTLoss


def pattern_images(
    classes: range, per_class: int, size: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, size, size) images and (N,) labels; a class is a colour x stripe direction x freq."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    directions = [xx, yy, xx + yy, xx - yy]
    images, labels = [], []
    for c in classes:
        rgb = torch.tensor(colorsys.hsv_to_rgb((c * 0.618) % 1.0, 0.8, 0.9))
        freq = 1 + (c // len(directions)) % 3
        base = directions[c % len(directions)].float() * (2 * math.pi * freq / size)
        phase = 2 * math.pi * torch.rand(per_class, 1, 1, generator=generator)
        pattern = 0.5 + 0.5 * torch.sin(base + phase)
        noise = 0.4 * torch.randn(per_class, 3, size, size, generator=generator)
        images.append(rgb.view(1, 3, 1, 1) * pattern.unsqueeze(1) + noise)
        labels.append(torch.full((per_class,), c))
    return torch.cat(images), torch.cat(labels)


class AllLRsHookContainer(logging_presets.HookContainer):
    """PML's HookContainer logs only ``param_groups[0]["lr"]``; log every group's lr."""

    def optimizer_custom_attr_func(self, optimizer):
        return {
            f"lr_{group.get('name', i)}": group["lr"]
            for i, group in enumerate(optimizer.param_groups)
        }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None, help="log folder (default: temp dir)")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=20, help="iterations per epoch")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--train-classes", type=int, default=12)
    parser.add_argument("--val-classes", type=int, default=12)
    parser.add_argument("--images-per-class", type=int, default=32)
    parser.add_argument("--embedding-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    """Train, test and log; returns the last validation accuracies and the log folder."""
    args = parse_args(argv)
    if args.out is None:
        args.out = Path(tempfile.mkdtemp(prefix="hist_example_"))
    torch.manual_seed(args.seed)
    generator = torch.Generator().manual_seed(args.seed)
    n_train, n_val = args.train_classes, args.val_classes
    train_set = torch.utils.data.TensorDataset(
        *pattern_images(range(n_train), args.images_per_class, 16, generator)
    )
    val_set = torch.utils.data.TensorDataset(
        *pattern_images(range(n_train, n_train + n_val), args.images_per_class, 16, generator)
    )

    d = args.embedding_size
    trunk = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    # HIST's embedding head: Linear, then LayerNorm without affine; the loss gets the raw output.
    embedder = nn.Sequential(nn.Linear(32, d), nn.LayerNorm(d, elementwise_affine=False))
    loss = HISTLoss(num_classes=n_train, embedding_size=d, hidden_size=d, tau=32.0, alpha=0.9)

    lr, weight_decay = 1e-3, 1e-4
    optimizers = {
        "trunk_optimizer": torch.optim.Adam(trunk.parameters(), lr=lr, weight_decay=weight_decay),
        "embedder_optimizer": torch.optim.Adam(
            embedder.parameters(), lr=lr, weight_decay=weight_decay
        ),
        # One optimizer, two groups: prototypes at lr_ds, the HGNN at lr * lr_hgnn_factor.
        "metric_loss_optimizer": torch.optim.Adam(
            loss.param_groups(lr=lr, lr_ds=0.1, lr_hgnn_factor=10.0, weight_decay=weight_decay)
        ),
    }

    keeper = record_keeper.RecordKeeper(
        record_writer=record_keeper.RecordWriter(str(args.out / "logs")),
        attributes_to_search_for=c_f.list_of_recordable_attributes_list_names(),
    )
    hooks = AllLRsHookContainer(keeper, primary_metric="precision_at_1", log_freq=1)
    tester = testers.GlobalEmbeddingSpaceTester(
        end_of_testing_hook=hooks.end_of_testing_hook,
        dataloader_num_workers=0,
        accuracy_calculator=AccuracyCalculator(
            include=("precision_at_1",), k=1, knn_func=CustomKNN(LpDistance())
        ),
    )
    end_of_epoch_hook = hooks.end_of_epoch_hook(
        tester, {"val": val_set}, str(args.out / "models"), test_interval=1
    )
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk, "embedder": embedder},
        optimizers=optimizers,
        batch_size=args.batch_size,
        loss_funcs={"metric_loss": loss},
        dataset=train_set,
        iterations_per_epoch=args.iterations,
        dataloader_num_workers=0,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
    )
    trainer.train(num_epochs=args.epochs)

    accuracies = tester.all_accuracies["val"]
    precision_at_1 = accuracies[tester.accuracies_keyname("precision_at_1")]
    losses = hooks.get_loss_history(["total_loss"])["total_loss"]
    print(f"total loss: first {losses[0]:.3f}, last {losses[-1]:.3f} ({len(losses)} iterations)")
    print(f"val precision_at_1 after {args.epochs} epochs: {precision_at_1:.3f}")
    print(f"logs in {args.out}")
    return {"accuracies": accuracies, "loss_history": losses, "out": args.out}


if __name__ == "__main__":
    main()
