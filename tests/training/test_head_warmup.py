"""Head warm-up on cached backbone features: it trains the head and the loss's parameters
(never the backbone), lowers the loss, runs once before epoch 1 (not again on resume), and
its setting is validated."""

import pytest
import torch

from pml_hyper.training import Runner, build_config
from pml_hyper.training.config import ConfigError
from pml_hyper.training.head_warmup import pooled_features, warm_up_head


def _params(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("recipe", ["pa_hier", "hist", "hyp"])
def test_warm_up_trains_head_and_loss_not_backbone(make_config, recipe):
    raw = make_config(recipe, epochs=1)
    raw["schedule"]["head_warmup_steps"] = 30
    runner = Runner(build_config(raw))
    try:
        backbone, head = _params(runner.model.backbone), _params(runner.model.head)
        loss = _params(runner.loss)
        losses = warm_up_head(runner)
    finally:
        runner.lock.release()
    assert len(losses) == 30 and all(map(torch.isfinite, torch.tensor(losses)))
    assert sum(losses[-5:]) < sum(losses[:5])
    for name, value in _params(runner.model.backbone).items():
        torch.testing.assert_close(value, backbone[name], atol=0, rtol=0)
    assert any(not torch.equal(v, head[k]) for k, v in _params(runner.model.head).items())
    if loss:  # proxies (PA, HIER) or HIST's hypergraph network
        assert any(not torch.equal(v, loss[k]) for k, v in _params(runner.loss).items())


def test_pooled_features_are_the_models_in_eval_mode(make_config):
    runner = Runner(build_config(make_config("hyp", epochs=1)))
    runner.lock.release()
    model = runner.model.train()
    features = pooled_features(model, runner.train_set, batch_size=7)
    assert model.training  # restored
    model.eval()
    images = torch.stack([runner.train_set[i][0] for i in range(len(runner.train_set))])
    with torch.no_grad():
        torch.testing.assert_close(features, model.features(images))


def test_run_warms_up_once_and_resume_matches(make_config, capsys):
    raw = make_config("pa_hier", epochs=2)
    raw["schedule"]["head_warmup_steps"] = 20
    whole = Runner(build_config(dict(raw, name="whole"))).run()
    assert capsys.readouterr().out.count("head warm-up: 20 steps") == 1
    one_epoch = {**raw["schedule"], "epochs": 1}
    Runner(build_config(dict(raw, name="split", schedule=one_epoch))).run()
    assert capsys.readouterr().out.count("head warm-up: 20 steps") == 1
    resumed = Runner(build_config(dict(raw, name="split")), resume=True).run()
    assert "head warm-up" not in capsys.readouterr().out
    assert resumed["history"] == whole["history"]
    no_warmup = {**raw["schedule"], "head_warmup_steps": 0}
    without = Runner(build_config(dict(raw, name="none", schedule=no_warmup))).run()
    assert without["history"] != whole["history"]


@pytest.mark.parametrize("value", ["-1", "1.5", "true", "many"])
def test_head_warmup_steps_is_a_non_negative_integer(value):
    assert build_config({})["schedule"]["head_warmup_steps"] == 0
    with pytest.raises(ConfigError, match="schedule.head_warmup_steps"):
        build_config({}, [f"schedule.head_warmup_steps={value}"])
