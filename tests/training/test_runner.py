"""CPU smoke runs of each recipe family on synthetic data, NaN handling, data-root errors."""

import json

import pytest
import torch
import yaml

from pml_hyper.cli import main
from pml_hyper.training import NonFiniteLossError, Runner, build_config
from pml_hyper.training import runner as runner_module
from pml_hyper.training.optim import make_optimizer


@pytest.mark.parametrize("recipe", ["hist", "pa_hier", "hyp"])
def test_smoke_run_learns_and_writes_outputs(recipe, make_config):
    config = build_config(make_config(recipe), ["output.plots=true"])
    runner = Runner(config)
    results = runner.run()
    losses = [h["loss"] for h in results["history"]]
    assert results["status"] == "finished" and results["epochs_completed"] == 3
    assert losses[-1] < losses[0]
    assert set(results["best"]["metrics"]) == {"recall_at_1", "recall_at_2", "recall_at_4"}
    for name in ("results.json", "last.pt", "best.pt", "curves.png", "config.yaml"):
        assert (runner.out_dir / name).is_file(), name
    assert json.loads((runner.out_dir / "results.json").read_text())["status"] == "finished"


def test_cli_train_then_evaluate(make_config, tmp_path, capsys):
    config_file = tmp_path / "hist.yaml"
    config_file.write_text(yaml.safe_dump(make_config("hist", epochs=2)))
    assert main(["train", str(config_file), "--set", "schedule.warmup_epochs=0"]) == 0
    checkpoint = tmp_path / "smoke_hist" / "best.pt"
    assert main(["evaluate", str(checkpoint), "--data-root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    best = json.loads((tmp_path / "smoke_hist" / "results.json").read_text())["best"]
    assert f"recall_at_1: {100 * best['metrics']['recall_at_1']:.2f}" in out


def test_cli_evaluate_reads_only_the_weights_and_needs_no_root(make_config, tmp_path, capsys):
    config_file = tmp_path / "hist.yaml"
    config_file.write_text(yaml.safe_dump(make_config("hist", epochs=2)))
    assert main(["train", str(config_file), "--set", "schedule.warmup_epochs=0"]) == 0
    state = torch.load(tmp_path / "smoke_hist" / "best.pt", weights_only=True)
    weights = tmp_path / "weights.pt"
    torch.save({key: state[key] for key in ("epoch", "models", "config")}, weights)
    capsys.readouterr()
    assert main(["evaluate", str(weights)]) == 0
    best = json.loads((tmp_path / "smoke_hist" / "results.json").read_text())["best"]
    expected = "".join(f"{name}: {100 * v:.2f}\n" for name, v in best["metrics"].items())
    assert capsys.readouterr().out == expected
    assert main(["evaluate", str(weights), "--set", "data.dataset=cub200"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_checkpoints_best_copies_last_and_config_written_once(make_config, monkeypatch):
    runner = Runner(build_config(make_config("hist")))
    saved: dict[int, bytes] = {}
    save = runner.trainer.save_checkpoint

    def save_and_record(path, **extra):
        assert path == runner.out_dir / "last.pt"
        save(path, **extra)
        saved[runner.trainer.epoch] = path.read_bytes()

    dumps = []
    dump_config = runner_module.dump_config

    def dump_and_count(config):
        dumps.append(config)
        return dump_config(config)

    monkeypatch.setattr(runner.trainer, "save_checkpoint", save_and_record)
    monkeypatch.setattr(runner_module, "dump_config", dump_and_count)
    results = runner.run()
    assert sorted(saved) == [1, 2, 3] and len(dumps) == 1
    assert (runner.out_dir / "best.pt").read_bytes() == saved[results["best"]["epoch"]]
    assert not list(runner.out_dir.glob("*.partial"))
    state = torch.load(runner.out_dir / "last.pt", weights_only=True)
    assert set(state) == {
        *("epoch", "position", "models", "loss_funcs", "optimizers", "lr_schedulers"),
        *("iterations_per_epoch", "scaler", "rng", "bookkeeper", "config"),
    }
    assert state["position"] is None  # taken at an epoch's end
    assert state["bookkeeper"]["history"] == results["history"][: state["epoch"]]


def test_proxies_stay_float32_under_bf16(make_config):
    config = build_config(make_config("pa_hier", epochs=1), ["precision.amp=bf16"])
    runner = Runner(config)
    runner.run()
    assert all(p.dtype == torch.float32 for t in runner.loss_terms for p in t.parameters())


def test_warmup_freezes_backbone_then_restores(make_config):
    runner = Runner(build_config(make_config("hist", epochs=2)))
    before = [p.detach().clone() for p in runner.model.backbone.parameters()]
    head_before = [p.detach().clone() for p in runner.model.head.parameters()]
    runner.trainer.train(1, 1)
    assert all(
        torch.equal(a, p) for a, p in zip(before, runner.model.backbone.parameters(), strict=True)
    )
    assert not all(
        torch.equal(a, p) for a, p in zip(head_before, runner.model.head.parameters(), strict=True)
    )
    assert all(p.requires_grad for p in runner.model.backbone.parameters())


def test_nan_loss_stops_and_keeps_last_good_checkpoint(make_config):
    runner = Runner(build_config(make_config("hist")))
    trainer = runner.trainer

    class NaNFromEpoch2(torch.nn.Module):
        def __init__(self, loss):
            super().__init__()
            self.loss = loss

        def forward(self, embeddings, labels, indices_tuple=None):
            value = self.loss(embeddings, labels, indices_tuple)
            return value * float("nan") if trainer.epoch >= 2 else value

    trainer.loss_funcs["metric_loss"] = NaNFromEpoch2(trainer.loss_funcs["metric_loss"])
    with pytest.raises(NonFiniteLossError, match="epoch 2, iteration 0"):
        runner.run()
    results = json.loads((runner.out_dir / "results.json").read_text())
    assert results["status"] == "failed" and "non-finite" in results["error"]
    assert torch.load(runner.out_dir / "last.pt", weights_only=True)["epoch"] == 1


def test_missing_data_root_is_a_clear_error(tmp_path):
    config = build_config({"data": {"dataset": "cub200", "root": str(tmp_path / "nowhere")}})
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Runner(config)
    with pytest.raises(ValueError, match="--data-root"):
        Runner(build_config({"data": {"dataset": "cub200"}}))


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
        ),
    ],
)
def test_optimizer_is_fused_exactly_when_every_parameter_is_on_cuda(device):
    config = build_config({"optimizer": {"name": "adamw"}})
    params = [torch.nn.Parameter(torch.randn(3, device=device)) for _ in range(2)]
    optimizer = make_optimizer(config, [{"params": params}])
    assert bool(optimizer.defaults["fused"]) == (device == "cuda")
    params[0].grad, params[1].grad = torch.ones_like(params[0]), torch.ones_like(params[1])
    before = params[0].detach().clone()
    optimizer.step()
    assert not torch.equal(params[0].detach(), before)
