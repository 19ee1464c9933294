"""Per-level Recall@K, dendrogram purity and disk.png of training runs, and
`pml-hyper visualize CHECKPOINT` (tiny synthetic runs with a two-level hierarchy)."""

import json

import pytest
import torch

from pml_hyper.cli import main
from pml_hyper.training.config import ConfigError, build_config
from pml_hyper.training.hierarchy_report import checkpoint_proxies, hier_proxies
from pml_hyper.training.runner import Runner
from pml_hyper.training.trainer import load_checkpoint

PNG = b"\x89PNG\r\n\x1a\n"


def two_level(make_config, recipe, epochs=2, **output):
    raw = make_config(recipe, epochs=epochs)
    raw["data"]["synthetic"]["coarse_classes"] = 2  # 6 test classes in 3 coarse groups
    raw["output"].update(output)
    return raw


def test_every_level_is_evaluated_and_purity_reported_at_the_end(make_config):
    raw = two_level(make_config, "hyp", epochs=2, plots=True)
    runner = Runner(build_config(raw))
    results = runner.run()
    names = ["recall_at_1", "recall_at_2", "recall_at_4"]
    for entry in results["history"]:
        metrics = entry["metrics"]
        assert list(metrics)[:3] == names  # the class-level keys are unchanged
        for name in names:  # a neighbour of the same class shares its coarse group
            assert metrics[f"coarse/{name}"] >= metrics[name]
    assert "coarse/dendrogram_purity" not in results["history"][0]["metrics"]
    purity = results["last"]["coarse/dendrogram_purity"]
    assert 0 < purity <= 1
    saved = json.loads((runner.out_dir / "results.json").read_text())
    assert saved["last"]["coarse/dendrogram_purity"] == pytest.approx(purity)
    assert (runner.out_dir / "curves.png").read_bytes()[:8] == PNG


def test_hierarchy_off_and_flat_data_add_no_keys(make_config):
    raw = two_level(make_config, "hist", epochs=1)
    raw["eval"]["hierarchy"] = False
    assert set(Runner(build_config(raw)).run()["last"]) == {
        "recall_at_1",
        "recall_at_2",
        "recall_at_4",
    }
    flat = make_config("hist", epochs=1)
    flat["name"] = "flat"
    assert not any("/" in k for k in Runner(build_config(flat)).run()["last"])


def test_unknown_purity_level_is_a_config_error(make_config):
    raw = two_level(make_config, "hist", epochs=1)
    raw["eval"]["purity_level"] = "genus"
    with pytest.raises(ConfigError, match="'genus' is not a level.*class, coarse"):
        Runner(build_config(raw))
    flat = make_config("hist", epochs=1)
    flat["eval"]["purity_level"] = "coarse"
    with pytest.raises(ConfigError, match="has no label hierarchy"):
        Runner(build_config(flat))


def test_disk_png_with_hier_proxies_and_visualize_checkpoint(make_config, tmp_path, capsys):
    pytest.importorskip("umap")
    runner = Runner(build_config(two_level(make_config, "pa_hier", epochs=1, disk_plot=True)))
    runner.run()
    assert (runner.out_dir / "disk.png").read_bytes()[:8] == PNG
    state = load_checkpoint(runner.out_dir / "best.pt")
    saved = checkpoint_proxies(runner.config, state)
    assert saved.shape == (8, 16)  # HIERLoss num_proxies, embedding size
    torch.testing.assert_close(saved, hier_proxies(runner.loss_terms))

    out = tmp_path / "ckpt.png"
    argv = ["visualize", str(runner.out_dir), "--split", "test", "--level", "coarse"]
    assert main([*argv, "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    printed = capsys.readouterr().out
    assert "embedding the test split (48 images)" in printed  # 6 classes x 8 images
    assert "UMAP on 56 points" in printed  # 48 samples + 8 proxies
    assert main([*argv[:2], "--split", "train", "--out", str(tmp_path / "x.png")]) == 2
    assert "no split 'train'; its evaluation splits are test" in capsys.readouterr().err
    assert main([*argv[:2], "--level", "genus", "--out", str(tmp_path / "x.png")]) == 2
    assert "no level 'genus'" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_visualize_refuses_a_euclidean_checkpoint_and_mixed_inputs(make_config, tmp_path, capsys):
    runner = Runner(build_config(make_config("hist", epochs=1)))
    runner.run()
    out = str(tmp_path / "x.png")
    assert main(["visualize", str(runner.out_dir), "--out", out]) == 2
    assert "needs a hyperbolic head" in capsys.readouterr().err
    argv = ["visualize", str(runner.out_dir), "--embeddings", "e.pt", "--out", out]
    assert main(argv) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["visualize", "--out", out]) == 2
    assert not (tmp_path / "x.png").exists()


def test_resume_may_change_the_reporting_keys_and_recomputes_purity(make_config):
    raw = two_level(make_config, "hist", epochs=1)
    first = Runner(build_config(raw)).run()
    raw["eval"]["purity_level"] = "coarse"  # the default level, now named
    raw["output"]["disk_plot"] = True  # a Euclidean head draws no disk
    runner = Runner(build_config(raw), resume=True)
    again = runner.run()  # nothing left to train: the purity comes from the loaded model
    assert again["epochs_completed"] == 1
    assert again["last"]["coarse/dendrogram_purity"] == pytest.approx(
        first["last"]["coarse/dendrogram_purity"]
    )
    assert not (runner.out_dir / "disk.png").exists()
