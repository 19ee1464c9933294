"""Config loading: defaults, unknown keys, type errors, --set overrides, CLI errors."""

import pytest

from pml_hyper.cli import main
from pml_hyper.training import ConfigError, build_config, load_config


def test_defaults_and_yaml_floats(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("name: x\noptimizer:\n  lr: 1e-4\n")
    config = load_config(path)
    assert config["optimizer"]["lr"] == pytest.approx(1e-4)
    assert config["schedule"]["epochs"] == 10
    assert config["loss"]["terms"][0]["type"] == "ProxyAnchorLoss"


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"optimiser": {}}, "'optimiser'"),
        ({"optimizer": {"learning_rate": 1}}, "'optimizer.learning_rate'"),
        ({"loss": {"terms": [{"type": "HISTLoss", "kwarg": {}}]}}, "'loss.terms.0.kwarg'"),
    ],
)
def test_unknown_key_is_named(raw, key):
    with pytest.raises(ConfigError, match=f"unknown config key {key}"):
        build_config(raw)


def test_wrong_type_is_named():
    with pytest.raises(ConfigError, match="schedule.epochs must be an integer"):
        build_config({"schedule": {"epochs": 2.5}})
    with pytest.raises(ConfigError, match="precision.channels_last must be true or false"):
        build_config({"precision": {"channels_last": "yes"}})


def test_set_overrides():
    raw = {"loss": {"terms": [{"type": "ProxyAnchorLoss"}, {"type": "HIERLoss"}]}}
    config = build_config(
        raw, ["schedule.epochs=3", "loss.terms.1.weight=0.5", "loss.terms.1.kwargs.topk=5"]
    )
    assert config["schedule"]["epochs"] == 3
    assert config["loss"]["terms"][1]["weight"] == 0.5
    assert config["loss"]["terms"][1]["kwargs"] == {"topk": 5}
    with pytest.raises(ConfigError, match="unknown config key 'schedule.epoch'"):
        build_config({}, ["schedule.epoch=3"])
    with pytest.raises(ConfigError, match="key=value"):
        build_config({}, ["schedule.epochs"])


def test_cli_reports_config_errors(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  backbon: resnet50\n")
    assert main(["train", str(path)]) == 2
    assert "unknown config key 'model.backbon'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["0", "-2", "1.5", "true", "often"])
def test_checkpoint_every_iterations_is_a_positive_integer(value):
    assert build_config({})["output"]["checkpoint_every_iterations"] is None
    assert (
        build_config({}, ["output.checkpoint_every_iterations=3"])["output"][
            "checkpoint_every_iterations"
        ]
        == 3
    )
    with pytest.raises(ConfigError, match="output.checkpoint_every_iterations"):
        build_config({}, [f"output.checkpoint_every_iterations={value}"])
