"""benchmarks.speed.gpu_suite: its pieces against independent computations, and the whole
suite end to end at tiny sizes on the CPU (the GPU run itself needs the device)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import CosineSimilarity
from pytorch_metric_learning.utils.inference import CustomKNN

from benchmarks.speed.gpu import evaluation, measure, training
from benchmarks.speed.knn_speed import make_clustered
from pml_hyper.evaluation import RecallAtK
from pml_hyper.knn import HyperbolicKNN
from pml_hyper.layers import ToPoincare

ROOT = Path(__file__).resolve().parents[2]

CPU = torch.device("cpu")
K_VALUES = (1, 2, 10, 100)


@pytest.mark.parametrize("metric", ["cosine", "hyperbolic"])
def test_dense_recall_equals_recall_at_k(metric):
    features, labels = make_clustered(600, 16, seed=3)
    features = features.double()
    if metric == "cosine":
        x, knn, chunk = features, CustomKNN(CosineSimilarity()), 250
        query = F.normalize(features, dim=1)
    else:
        x = ToPoincare(c=0.1, clip_r=2.3, riemannian=False)(features)
        knn, chunk, query = HyperbolicKNN(c=0.1), 128, x
    expected = RecallAtK(K_VALUES, knn_func=knn, include=(), device=CPU)
    expected = expected.get_accuracy(query, labels, include=[f"recall_at_{k}" for k in K_VALUES])
    got = evaluation.dense_recall(x, labels, K_VALUES, metric, chunk)
    assert got == pytest.approx(expected, abs=1e-12)
    assert 0 < got["recall_at_1"] < got["recall_at_100"] <= 1


def test_floor_takes_the_slower_of_compute_and_memory():
    ceilings = {"bf16_matmul_flops_per_s": 1e12, "fp32_matmul_flops_per_s": 1e11}
    ceilings["copy_bytes_per_s"] = 1e9
    compute = measure.floor(1e12, 1e8, "bf16", ceilings)
    assert compute["floor_s"] == pytest.approx(1.0) and compute["bound"] == "compute"
    memory = measure.floor(1e9, 5e9, "bf16", ceilings)
    assert memory["floor_s"] == pytest.approx(5.0) and memory["bound"] == "memory"
    # tf32 is measured on CUDA only; elsewhere the fp32 rate stands in
    assert measure.floor(1e11, 0, "tf32", ceilings)["floor_s"] == pytest.approx(1.0)
    measured = measure.with_floor({"median_s": 3.0}, compute)
    assert measured["measured_over_floor"] == pytest.approx(3.0)


def test_reference_loss_equals_ours_for_hist_with_the_same_parameters():
    config = training.recipe_config("hist_cub_r50", tiny=True)
    classes = training.num_classes_of(config, tiny=True)
    torch.manual_seed(0)
    ours = training.combine_losses(config, training.build_loss_terms(config, classes))
    reference = training.ReferenceLoss(config, classes)
    reference.terms[0].load_state_dict(ours.state_dict())
    ours.double(), reference.double()
    g = torch.Generator().manual_seed(1)
    embeddings = torch.randn(8, config["model"]["embedding_size"], generator=g).double()
    labels = torch.randint(0, classes, (8,), generator=g)
    expected = ours(embeddings, labels)
    assert reference(embeddings, labels).item() == pytest.approx(expected.item(), rel=1e-9)


def test_reference_loss_swaps_only_the_papers_losses():
    config = training.recipe_config("hier_cub_r50", tiny=True)
    reference = training.ReferenceLoss(config, num_classes=20)
    proxy_anchor, hier = reference.terms
    assert type(proxy_anchor).__name__ == "ProxyAnchorLoss"
    assert isinstance(hier, training.HIERReference) and hier.lcas.shape == (32, 32)
    assert (hier.topk, hier.triplets_per_anchor) == (20, 50)
    assert reference.weights == [1.0, 0.5]


def test_synthetic_batch_follows_the_sampler():
    hier = training.recipe_config("hier_cub_r50", tiny=True)
    images, labels = training.synthetic_batch(hier, 20, CPU, seed=0)
    assert images.shape == (24, 3, 32, 32)
    counts = torch.unique(labels, return_counts=True)[1]
    assert len(counts) == 12 and (counts == 2).all()
    hist = training.recipe_config("hist_cub_r50", tiny=True)
    images, labels = training.synthetic_batch(hist, 20, CPU, seed=0)
    assert images.shape == (8, 3, 32, 32) and labels.max() < 20


def test_tiny_suite_end_to_end_and_render(tmp_path):
    out, md = tmp_path / "suite.json", tmp_path / "RESULTS.md"
    command = [sys.executable, "-m", "benchmarks.speed.gpu_suite", "--device", "cpu", "--tiny"]
    command += ["--warmup", "1", "--repeats", "2", "--out", str(out), "--results-md", str(md)]
    proc = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())

    assert result["tiny"] and result["device"] == "cpu"
    assert result["ceilings"]["fp32_matmul_flops_per_s"] > 0
    assert result["ceilings"]["copy_bytes_per_s"] > 0
    assert [r["recipe"] for r in result["training"]] == list(training.TRAINING_RECIPES)
    for row in result["training"]:
        variants = row["variants"]
        assert set(variants) == {"ours", "backbone_only", "reference"}
        for v in variants.values():
            assert v["median_s"] > 0 and v["flops"] > 0 and v["floor_s"] > 0
            assert v["images_per_s"] == pytest.approx(row["batch"] / v["median_s"])
        # the loss adds work: ours counts more FLOPs than the backbone alone
        assert variants["ours"]["flops"] > variants["backbone_only"]["flops"]
        ratio = variants["reference"]["median_s"] / variants["ours"]["median_s"]
        assert row["speedup"] == pytest.approx(ratio)
    assert result["input_pipeline"]["cpu"]["images_per_s"] > 0
    decode = result["input_pipeline"]["device_decode"]
    assert decode["decoder"] == "libjpeg, one process" and decode["images_per_s"] > 0
    assert {(r["loss"], r["precision"]) for r in result["loss"]} == {
        (loss, p) for loss in ("hist", "hier") for p in ("fp32", "bf16")
    }
    for row in result["loss"]:
        assert row["ours"]["median_s"] > 0 and row["reference"]["median_s"] > 0
    hist_fp32 = next(r for r in result["loss"] if r["loss"] == "hist" and r["precision"] == "fp32")
    assert hist_fp32["loss_agrees"]
    assert [r["metric"] for r in result["evaluation"]] == ["cosine", "hyperbolic"]
    for row in result["evaluation"]:
        assert row["max_abs_recall_diff"] <= 2 / row["N"]
        assert 0 < row["ours"]["recalls"]["recall_at_1"] <= 1

    markdown = md.read_text()
    assert "tiny sizes, a smoke run" in markdown
    for recipe in training.TRAINING_RECIPES:
        assert f"| {recipe} |" in markdown
    assert proc.stdout.strip() == markdown.strip()

    again = tmp_path / "again.md"
    render = [sys.executable, "-m", "benchmarks.speed.gpu_suite", "--render", str(out)]
    proc = subprocess.run(
        [*render, "--results-md", str(again)], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert again.read_text() == markdown
