"""DistributedLossWrapper with two gloo processes on the CPU: loss-parameter and model gradients
equal the single-process gradients on the concatenated batch (docs/pml.md#distributed)."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from pytorch_metric_learning.losses import ProxyAnchorLoss

from pml_hyper.training import DistributedLossWrapper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RECIPES = ["hist", "pa_hier"]


@pytest.fixture(scope="module")
def two_rank_results() -> dict[str, list[tuple]]:
    """Run every recipe on two spawned gloo ranks once; results per recipe, rank order."""
    # spawned workers unpickle ddp_worker.worker by module name
    pythonpath = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", pythonpath)
        queue = mp.get_context("spawn").SimpleQueue()
        mp.start_processes(
            ddp_worker.worker,
            args=(_free_port(), RECIPES, queue),
            nprocs=ddp_worker.WORLD_SIZE,
            start_method="spawn",
        )
    results: dict[str, list[tuple]] = {recipe: [] for recipe in RECIPES}
    for recipe, _rank, value, *dicts in sorted(
        queue.get() for _ in range(len(RECIPES) * ddp_worker.WORLD_SIZE)
    ):
        tensors = [{k: torch.from_numpy(v) for k, v in d.items()} for d in dicts]
        results[recipe].append((value, *tensors))
    return results


@pytest.mark.parametrize("recipe", RECIPES)
def test_two_gloo_ranks_match_single_process(recipe, two_rank_results):
    """HIST (distributions, HGNN) and PA + 0.5·HIER in MultipleLosses (PA proxies, HIER lcas)."""
    model, loss_fn = ddp_worker.model_for(recipe), ddp_worker.loss_for(recipe)
    data, labels = ddp_worker.batch()
    expected = loss_fn(model(data), labels)
    expected.backward()
    model_grads, loss_grads = ddp_worker.grads(model), ddp_worker.grads(loss_fn)
    assert loss_grads, "the loss has no parameter gradient"

    for value, got_model, got_loss, _ in two_rank_results[recipe]:
        assert value == pytest.approx(expected.item(), abs=1e-10)
        assert got_model.keys() == model_grads.keys()
        for name, grad in model_grads.items():
            torch.testing.assert_close(got_model[name], grad, atol=1e-6, rtol=0)
        assert got_loss.keys() == loss_grads.keys()
        for name, grad in loss_grads.items():
            torch.testing.assert_close(got_loss[name], grad, atol=1e-6, rtol=0, msg=name)
    (*_, weights0), (*_, weights1) = two_rank_results[recipe]
    for name, weight in weights0.items():
        torch.testing.assert_close(weight, weights1[name], atol=0, rtol=0)


def test_without_process_group_calls_the_loss():
    loss_fn = ProxyAnchorLoss(4, 8)
    embeddings, labels = torch.randn(8, 8), torch.arange(8) % 4
    wrapped = DistributedLossWrapper(loss_fn)(embeddings, labels)
    assert wrapped.item() == pytest.approx(loss_fn(embeddings, labels).item())


def test_rejects_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DistributedLossWrapper(lambda e, y: e.sum())
