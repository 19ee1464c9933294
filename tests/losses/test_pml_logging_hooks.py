"""pml_hyper's recipes through PML's trainer, preset logging hooks and tester for one epoch.

PML's ``MultipleLosses`` given a list names its members ``0``, ``1``, ...; the record-keeper then
builds SQLite table names such as ``0_ProxyAnchorLoss__parameters`` and fails at the end of the
epoch. The dict form names them, which is what pml_hyper's recipes use.
"""

import pytest
import torch
from pytorch_metric_learning import losses, trainers
from pytorch_metric_learning.utils import logging_presets

from pml_hyper.distances import PoincareDistance
from pml_hyper.layers import ToPoincare
from pml_hyper.losses import HIERLoss, HISTLoss
from pml_hyper.training.builders import combine_losses
from pml_hyper.utils import make_tester

record_keeper_module = pytest.importorskip("record_keeper")
pytest.importorskip("torch.utils.tensorboard")

CLASSES, DIM, FEATURES = 4, 8, 12


def tiny_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(8)
    x = torch.randn(CLASSES, FEATURES, generator=g)[labels] + 0.3 * torch.randn(
        len(labels), FEATURES, generator=g
    )
    return torch.utils.data.TensorDataset(x, labels)


def recipe(name):
    g = torch.Generator().manual_seed(0)
    if name == "hist":
        head = torch.nn.Sequential(torch.nn.Linear(FEATURES, DIM), torch.nn.LayerNorm(DIM))
        return head, HISTLoss(CLASSES, DIM, hidden_size=8)
    hier = HIERLoss(DIM, num_proxies=8, topk=4, triplets_per_anchor=4, generator=g)
    if name == "pa+hier":
        head = torch.nn.Sequential(
            torch.nn.Linear(FEATURES, DIM), ToPoincare(c=0.1, riemannian=True)
        )
        pa = losses.ProxyAnchorLoss(CLASSES, DIM)
        # The runner's combination of the recipe's terms (PA + 0.5·HIER).
        terms = [{"type": "ProxyAnchorLoss", "weight": 1.0}, {"type": "HIERLoss", "weight": 0.5}]
        return head, combine_losses({"loss": {"terms": terms}}, [pa, hier])
    head = torch.nn.Sequential(torch.nn.Linear(FEATURES, DIM), ToPoincare(c=0.1))
    hyp = losses.NTXentLoss(temperature=0.2, distance=PoincareDistance(c=0.1))
    return head, losses.MultipleLosses(
        {"hyp": hyp, "hier": hier}, weights={"hyp": 1.0, "hier": 0.5}
    )


@pytest.mark.parametrize("name", ["pa+hier", "hist", "hyp+hier"])
def test_metric_loss_only_with_preset_hooks_and_tester(tmp_path, name):
    trunk, loss = recipe(name)
    params = list(trunk.parameters()) + list(loss.parameters())
    record_keeper, _, _ = logging_presets.get_record_keeper(
        str(tmp_path / "logs"), str(tmp_path / "tb")
    )
    hooks = logging_presets.get_hook_container(record_keeper)
    train, val = tiny_data(0), tiny_data(1)
    tester = make_tester(
        trunk,
        batch_size=16,
        dataloader_num_workers=0,
        end_of_testing_hook=hooks.end_of_testing_hook,
    )
    end_of_epoch_hook = hooks.end_of_epoch_hook(
        tester, {"val": val}, str(tmp_path / "models"), test_interval=1, patience=None
    )
    trainer = trainers.MetricLossOnly(
        models={"trunk": trunk},
        optimizers={"trunk_optimizer": torch.optim.Adam(params, lr=1e-3)},
        batch_size=16,
        loss_funcs={"metric_loss": loss},
        dataset=train,
        sampler=None,
        dataloader_num_workers=0,
        end_of_iteration_hook=hooks.end_of_iteration_hook,
        end_of_epoch_hook=end_of_epoch_hook,
    )
    trainer.train(num_epochs=1)
    assert hooks.get_best_epoch_and_accuracy(tester, "val")[0] == 1
    assert any((tmp_path / "logs").iterdir())  # the record-keeper wrote its logs


def test_combine_losses_names_repeated_terms():
    terms = [{"type": "NTXentLoss", "weight": 1.0}] * 3 + [{"type": "HIERLoss", "weight": 0.5}]
    modules = [losses.NTXentLoss() for _ in range(3)] + [HIERLoss(DIM, num_proxies=8)]
    combined = combine_losses({"loss": {"terms": terms}}, modules)
    assert list(combined.losses) == ["ntxentloss", "ntxentloss_2", "ntxentloss_3", "hierloss"]
    assert combined.weights["hierloss"] == 0.5
