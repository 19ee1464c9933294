"""Worker of the two-process gloo test (tests/training/test_distributed_loss_wrapper.py).

A top-level module, so that spawned processes can unpickle ``worker`` (a site-packages ``tests``
package shadows this repository's ``tests`` namespace).
"""

import torch
import torch.distributed as dist
from pytorch_metric_learning.losses import (
    ContrastiveLoss,
    CrossBatchMemory,
    MultipleLosses,
    ProxyAnchorLoss,
)

from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss, HISTLoss
from pml_hyper.training import DistributedLossWrapper

WORLD_SIZE = 2
BATCH = 16  # global batch; each rank gets BATCH // WORLD_SIZE
IN_FEATURES, DIM, CLASSES = 6, 8, 4


# recipe -> DistributedLossWrapper(paper_world_size=...)
PAPER_WORLD_SIZE = {"pa_paper2": 2}


def model_for(recipe: str) -> torch.nn.Module:
    torch.manual_seed(0)
    linear = torch.nn.Linear(IN_FEATURES, DIM, dtype=torch.float64)
    if recipe == "pa_hier":
        return torch.nn.Sequential(linear, ToPoincare(c=0.1, clip_r=2.3))
    return linear


def loss_for(recipe: str) -> torch.nn.Module:
    torch.manual_seed(1)
    if recipe == "hist":
        loss = HISTLoss(CLASSES, DIM, hidden_size=8)
    elif recipe == "pa_paper2":
        loss = ProxyAnchorLoss(CLASSES, DIM)
    elif recipe == "ref_emb":
        loss = ContrastiveLoss(pos_margin=0.1, neg_margin=0.9)
    elif recipe == "xbm":
        loss = CrossBatchMemory(ContrastiveLoss(neg_margin=0.9), DIM, memory_size=2 * BATCH)
    else:
        generator = torch.Generator().manual_seed(2)
        hier = HIERLoss(DIM, num_proxies=8, topk=3, triplets_per_anchor=5, generator=generator)
        loss = MultipleLosses([ProxyAnchorLoss(CLASSES, DIM), hier], weights=[1.0, 0.5])
    return loss.double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(BATCH, IN_FEATURES, generator=generator, dtype=torch.float64)
    return data, torch.arange(BATCH) % CLASSES


def compute(recipe: str, model, wrapper, rank: int | None) -> torch.Tensor:
    """The recipe's loss on this rank's share of the data (``rank=None``: all of it, one
    process). ``ref_emb``: references are a second batch; ``xbm``: two iterations through the
    memory, the first enqueueing only half of each rank's batch."""
    data, labels = batch()
    world = 1 if rank is None else WORLD_SIZE

    def part(t: torch.Tensor) -> torch.Tensor:
        if rank is None:
            return t
        return t.view(WORLD_SIZE, -1, *t.shape[1:])[rank]

    if recipe == "ref_emb":
        ref_data, ref_labels = data.flip(0)[:12] * 0.5, labels.flip(0)[:12]
        return wrapper(
            model(part(data)), part(labels), None, model(part(ref_data)), part(ref_labels)
        )
    if recipe == "xbm":
        mask = (torch.arange(BATCH) % 4 < 2).view(WORLD_SIZE, -1)
        mask = mask.reshape(-1) if world == 1 else mask[rank]
        first = wrapper(model(part(data)), part(labels), enqueue_mask=mask)
        second = wrapper(model(part(data.roll(1, 1))), part((labels + 1) % CLASSES))
        return first + second
    return wrapper(model(part(data)), part(labels))


def grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in module.named_parameters() if p.grad is not None}


def _numpy(tensors: dict[str, torch.Tensor]) -> dict:
    """numpy arrays travel by pickling; tensors would be shared with the exiting process."""
    return {name: t.numpy() for name, t in tensors.items()}


def worker(rank: int, port: int, recipes: list[str], queue) -> None:
    """For each recipe, put (recipe, rank, loss, model grads after DDP, loss grads before
    ``synchronize_gradients``, model weights after one SGD step) on ``queue``."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        for recipe in recipes:
            model = torch.nn.parallel.DistributedDataParallel(model_for(recipe))
            wrapper = DistributedLossWrapper(
                loss_for(recipe), paper_world_size=PAPER_WORLD_SIZE.get(recipe)
            )
            loss = compute(recipe, model, wrapper, rank)
            loss.backward()
            loss_grads = grads(wrapper.loss)
            wrapper.synchronize_gradients()
            params = list(model.parameters()) + list(wrapper.parameters())
            torch.optim.SGD(params, lr=0.1).step()
            weights = {n: p.detach().clone() for n, p in model.module.named_parameters()}
            queue.put(
                (
                    recipe,
                    rank,
                    loss.item(),
                    _numpy(grads(model.module)),
                    _numpy(loss_grads),
                    _numpy(weights),
                )
            )
    finally:
        dist.destroy_process_group()
