"""The demo's budget study: budgets parse or fail clearly, and a tiny study fine-tunes on the
training classes, scores the validation classes and writes its JSON."""

import json

import pytest

from pml_hyper.training import demo_budget
from pml_hyper.training.demo_budget import main, parse_budget, run_budgets


def test_parse_budget():
    assert parse_budget("20x96") == (20, 96, None)
    assert parse_budget("10x64v4") == (10, 64, 4)
    for bad in ("20", "0x96", "20x4", "x96", "20x96px", "-1x96", "10x96v1", "10x96v"):
        with pytest.raises(ValueError, match="EPOCHSxSIZE"):
            parse_budget(bad)


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--budgets", "10"], "EPOCHSxSIZE"), (["--seeds", "0"], "--seeds must be >= 1")],
)
def test_cli_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_tiny_study_scores_validation_classes(tmp_path, monkeypatch):
    evaluated = []
    runner_init = demo_budget.DemoRunner.__init__

    def spy(self, config, evaluate_on="test", **kwargs):
        evaluated.append(evaluate_on)
        runner_init(self, config, evaluate_on, **kwargs)

    monkeypatch.setattr(demo_budget.DemoRunner, "__init__", spy)
    out = tmp_path / "budget.json"
    report = run_budgets(["Hyp"], ["1x32", "2x32v4"], seeds=1, max_classes=16, output=out)
    assert evaluated == ["val", "val"]
    assert json.loads(out.read_text()) == report
    assert report["complete"] and set(report["pretrained_val"]) == {"32"}
    rows = report["results"]
    assert [(r["epochs"], r["image_size"], r["images_per_class"]) for r in rows] == [
        (1, 32, 2),
        (2, 32, 4),
    ]
    assert rows[1]["steps"] == 2 * rows[0]["steps"] > 0  # the same batch, views or not
    for row in rows:
        assert 0.0 <= row["val_recall_at_1_mean"] <= 1.0 and row["seconds_mean"] > 0
        assert "subgroup/recall_at_1" in row["runs"][0]["val"]
