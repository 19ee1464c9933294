"""Worker of the two-process gloo test (tests/training/test_distributed_loss_wrapper.py).

A top-level module, so that spawned processes can unpickle ``worker`` (a site-packages ``tests``
package shadows this repository's ``tests`` namespace).
"""

import torch
import torch.distributed as dist
from pytorch_metric_learning.losses import MultipleLosses, ProxyAnchorLoss

from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss, HISTLoss
from pml_hyper.training import DistributedLossWrapper

WORLD_SIZE = 2
BATCH = 16  # global batch; each rank gets BATCH // WORLD_SIZE
IN_FEATURES, DIM, CLASSES = 6, 8, 4


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
    else:
        generator = torch.Generator().manual_seed(2)
        hier = HIERLoss(DIM, num_proxies=8, topk=3, triplets_per_anchor=5, generator=generator)
        loss = MultipleLosses([ProxyAnchorLoss(CLASSES, DIM), hier], weights=[1.0, 0.5])
    return loss.double()


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(3)
    data = torch.randn(BATCH, IN_FEATURES, generator=generator, dtype=torch.float64)
    return data, torch.arange(BATCH) % CLASSES


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
            wrapper = DistributedLossWrapper(loss_for(recipe))
            data, labels = batch()
            local = slice(rank * BATCH // WORLD_SIZE, (rank + 1) * BATCH // WORLD_SIZE)
            loss = wrapper(model(data[local]), labels[local])
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
