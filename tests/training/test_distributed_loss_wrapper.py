"""DistributedLossWrapper with two gloo processes on the CPU: loss-parameter and model gradients
equal the single-process gradients on the concatenated batch (docs/pml.md#distributed)."""

import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from pytorch_metric_learning.losses import ContrastiveLoss, CrossBatchMemory, ProxyAnchorLoss

from pml_hyper.training import DistributedLossWrapper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import ddp_worker  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


RECIPES = ["hist", "pa_hier", "pa_paper2", "ref_emb", "xbm"]


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


def _single_process(recipe: str, paper_world_size: int | None = None):
    """Loss value, model and loss-parameter gradients of one process on the whole batch."""
    model, loss_fn = ddp_worker.model_for(recipe), ddp_worker.loss_for(recipe)
    wrapper = DistributedLossWrapper(loss_fn, paper_world_size=paper_world_size)
    expected = ddp_worker.compute(recipe, model, wrapper, None)
    expected.backward()
    return expected, ddp_worker.grads(model), ddp_worker.grads(loss_fn)


@pytest.mark.parametrize("recipe", ["hist", "pa_hier", "ref_emb", "xbm"])
def test_two_gloo_ranks_match_single_process(recipe, two_rank_results):
    """HIST (distributions, HGNN), PA + 0.5·HIER in MultipleLosses (PA proxies, HIER lcas), a
    loss with ref_emb/ref_labels, and CrossBatchMemory with an enqueue_mask."""
    expected, model_grads, loss_grads = _single_process(recipe)
    if recipe in ("hist", "pa_hier"):
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


def test_paper_world_size_on_two_gloo_ranks(two_rank_results):
    """paper_world_size=2: the model gets half the full-batch gradient, the proxies all of it."""
    expected, model_grads, loss_grads = _single_process("pa_paper2")
    for value, got_model, got_loss, _ in two_rank_results["pa_paper2"]:
        assert value == pytest.approx(expected.item(), abs=1e-10)
        for name, grad in model_grads.items():
            torch.testing.assert_close(got_model[name], grad / 2, atol=1e-9, rtol=0)
        for name, grad in loss_grads.items():
            torch.testing.assert_close(got_loss[name], grad, atol=1e-9, rtol=0)


@pytest.mark.parametrize("paper_world_size", [2, 3])
def test_paper_world_size_in_one_process(paper_world_size):
    """One process standing in for P GPUs: model gradient ratio 1/P, loss parameters exact."""
    value, model_grads, loss_grads = _single_process("pa_paper2")
    scaled_value, scaled_model, scaled_loss = _single_process("pa_paper2", paper_world_size)
    assert scaled_value.item() == pytest.approx(value.item(), abs=1e-12)
    assert model_grads and loss_grads
    for name, grad in model_grads.items():
        torch.testing.assert_close(scaled_model[name], grad / paper_world_size, rtol=1e-12, atol=0)
    for name, grad in loss_grads.items():
        torch.testing.assert_close(scaled_loss[name], grad, rtol=0, atol=0)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_paper_world_size(bad):
    with pytest.raises(ValueError, match="paper_world_size"):
        DistributedLossWrapper(ProxyAnchorLoss(4, 8), paper_world_size=bad)


def test_ref_emb_and_enqueue_mask_are_accepted_in_one_process():
    embeddings, labels = torch.randn(8, 8), torch.arange(8) % 4
    ref, ref_labels = torch.randn(6, 8), torch.arange(6) % 4
    loss = ContrastiveLoss()
    wrapped = DistributedLossWrapper(loss)(embeddings, labels, None, ref, ref_labels)
    assert wrapped.item() == pytest.approx(loss(embeddings, labels, None, ref, ref_labels).item())
    memory = DistributedLossWrapper(CrossBatchMemory(ContrastiveLoss(), 8, memory_size=16))
    mask = torch.arange(8) < 4
    assert torch.isfinite(memory(embeddings, labels, enqueue_mask=mask))
    with pytest.raises(ValueError, match="CrossBatchMemory"):
        memory(embeddings, labels, None, ref, ref_labels)
    with pytest.raises(ValueError, match="enqueue_mask"):
        DistributedLossWrapper(loss)(embeddings, labels, enqueue_mask=mask)


def test_without_process_group_calls_the_loss():
    loss_fn = ProxyAnchorLoss(4, 8)
    embeddings, labels = torch.randn(8, 8), torch.arange(8) % 4
    wrapped = DistributedLossWrapper(loss_fn)(embeddings, labels)
    assert wrapped.item() == pytest.approx(loss_fn(embeddings, labels).item())


def test_rejects_non_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        DistributedLossWrapper(lambda e, y: e.sum())


def test_runner_applies_paper_world_size(make_config):
    from pml_hyper.training import Runner, build_config

    default = Runner(build_config(make_config("pa_hier", epochs=1)))
    assert not isinstance(default.trainer.loss_funcs["metric_loss"], DistributedLossWrapper)
    default.lock.release()  # a built Runner holds its run folder until run() ends
    config = build_config(make_config("pa_hier", epochs=1), ["distributed.paper_world_size=2"])
    wrapped = Runner(config).trainer.loss_funcs["metric_loss"]
    assert isinstance(wrapped, DistributedLossWrapper) and wrapped.paper_world_size == 2
